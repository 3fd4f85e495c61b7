"""Imports every architecture module so that their ``@register_model`` builders run."""

# Each import registers that paper's variants.  Keep one line per paper.
from . import cimsleepnet  # noqa: F401
from . import mc2sleepnet  # noqa: F401
from . import coresleep  # noqa: F401
