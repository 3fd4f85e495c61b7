"""Imports every architecture module so that their ``@register_model`` builders run."""

# Each import registers that paper's variants.  Keep one line per paper.
