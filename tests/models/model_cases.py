"""Test cases for every registered model, shared by the registry-wide model tests.

One key per registered model name, mapping to the batch the tests build for it: ``modalities``
(column order of ``present``), ``batch`` (B) and ``length`` (L, epochs a sequence). Optional keys:
``no_grad`` (tuple of shell-style patterns of parameter names that legitimately receive no gradient
when every modality is present, e.g. the unimodal heads of a variant whose MS weight is 0) and
``forward`` (False: the registry tests only instantiate the model, for the biggest ones). A
registered model without an entry here fails the completeness test. Each architecture adds its own
``CASES.update({...})`` block so that concurrent edits do not clash.
"""

from __future__ import annotations

CASES: dict[str, dict] = {}

# CIMSleepNet (models/cimsleepnet.py): EEG+EOG as released; the full model at its 25-epoch context.
CASES.update({
    "cimsleepnet": {"modalities": ("eeg", "eog"), "batch": 1, "length": 25},
    "cimsleepnet_tiny": {"modalities": ("eeg", "eog"), "batch": 2, "length": 8},
})
# Table 3 ablations and the frozen-lambda variant: full size, instantiation only here (their
# behaviour is tested on the tiny widths in tests/models/test_cimsleepnet.py).
CASES.update({name: {"modalities": ("eeg", "eog"), "batch": 1, "length": 25, "forward": False}
              for name in ("cimsleepnet_no_maim", "cimsleepnet_no_smccl", "cimsleepnet_no_mcta",
                           "cimsleepnet_frozen_lambda")})

# MC²SleepNet (models/mc2sleepnet.py): one EEG channel seen as raw signal + spectrogram. The full
# model uses a short context here to keep registry-wide tests fast (the paper's L = 21 is tested in
# tests/models/test_mc2sleepnet.py).
CASES.update({
    "mc2sleepnet": {"modalities": ("eeg",), "batch": 2, "length": 3},
    "mc2sleepnet_tiny": {"modalities": ("eeg",), "batch": 2, "length": 5},
})
# The single-epoch baselines train one view's backbone, attention and head: the other view, the
# projections, the sequence level, the mask tokens and the concatenation head get no gradient.
_SEQUENCE_LEVEL = ("raw_projection.*", "spec_projection.*", "raw_sequence.*", "spec_sequence.*", "mask_token_*",
                   "concat_head.*")
CASES.update({
    "mc2sleepnet_cnn_only": {"modalities": ("eeg",), "batch": 2, "length": 3,
                             "no_grad": ("spec_backbone.*", "spec_attention.*", "spec_head.*", *_SEQUENCE_LEVEL)},
    "mc2sleepnet_tf_only": {"modalities": ("eeg",), "batch": 2, "length": 3,
                            "no_grad": ("raw_backbone.*", "raw_attention.*", "raw_head.*", *_SEQUENCE_LEVEL)},
})

# CoRe-Sleep (models/coresleep.py) and its Table I benchmarks, EEG+EOG as in the paper. Full-size
# variants run a 1 × 3-epoch batch (cheap: ~10 M parameters but only 3 epochs). Variants whose MS
# weight is 0 never train their unimodal heads while both modalities are present (those heads only
# learn from single-modality epochs, through ``ce_single``).
_UNIMODAL_HEADS = ("heads.eeg.*", "heads.eog.*")
CASES.update({
    name: {"modalities": ("eeg", "eog"), "batch": 1, "length": 3,
           **({"no_grad": _UNIMODAL_HEADS} if no_ms else {})}
    for name, no_ms in [
        ("coresleep", False), ("core", True), ("core_al", True), ("core_ms", False),
        ("coresleep_early", False), ("early", True), ("early_al", True), ("early_ms", False),
        ("coresleep_midlate", False), ("midlate", True), ("midlate_al", True), ("midlate_ms", False),
    ]
})
CASES.update({
    "coresleep_tiny": {"modalities": ("eeg", "eog"), "batch": 2, "length": 5},
    "core_tiny": {"modalities": ("eeg", "eog"), "batch": 2, "length": 5, "no_grad": _UNIMODAL_HEADS},
    "coresleep_early_tiny": {"modalities": ("eeg", "eog"), "batch": 2, "length": 5},
    "coresleep_midlate_tiny": {"modalities": ("eeg", "eog"), "batch": 2, "length": 5},
})
