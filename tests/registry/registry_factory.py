"""Small model bundles to register (imported by name: tests/registry is on sys.path, no package)."""

from __future__ import annotations

from pathlib import Path

import torch

from somnray.models import create_model
from somnray.models.bundle import save_bundle

#: Window length the test bundles claim to have been trained with.
BUNDLE_LENGTH = 11


def make_bundle_run(run_dir: Path, seed: int = 0, card: bool = True) -> Path:
    """A run folder with ``model/`` (random coresleep_tiny weights, sleep-edf) and, optionally, a card."""
    torch.manual_seed(seed)
    bundle = save_bundle(create_model("coresleep_tiny"), Path(run_dir) / "model", name="coresleep_tiny",
                         sequence_length=BUNDLE_LENGTH,
                         extra={"profile": "sleep-edf", "dataset_uri": "/data/store/sleep-edf-0123456789ab"})
    if card:
        (bundle / "MODEL_CARD.md").write_text("# coresleep_tiny\n\nA test model.\n")
    return Path(run_dir)
