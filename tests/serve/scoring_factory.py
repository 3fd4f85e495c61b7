"""Model bundles and damaged recordings for the scoring tests.

Imported by name (`from scoring_factory import ...`): tests/serve is on sys.path (no package)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from somnray.models import create_model
from somnray.models.bundle import save_bundle

#: Window length the test bundles claim to have been trained with.
TEST_LENGTH = 11


def make_run(run_dir: Path, model: str = "coresleep_tiny", profile: str = "sleep-edf",
             seed: int = 0) -> Path:
    """A training-run folder holding ``model/`` (random weights of ``model``); returns the run."""
    torch.manual_seed(seed)
    net = create_model(model)
    save_bundle(net, Path(run_dir) / "model", name=model, sequence_length=TEST_LENGTH,
                extra={"profile": profile, "run_uri": str(run_dir)})
    return Path(run_dir)


def copy_cohort(src: Path, dst: Path) -> Path:
    """A writable copy of a (read-only, session-cached) synthetic cohort folder."""
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep_bytes: int = 4000) -> None:
    """Cut an EDF file short, as an interrupted upload would."""
    data = path.read_bytes()[:keep_bytes]
    path.write_bytes(data)


def identifying_hits(folder: Path, strings: tuple[str, ...]) -> list[str]:
    """``file: string`` for every identifying string found in any file below ``folder``."""
    hits = []
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        blob = f.read_bytes()
        hits += [f"{f}: {s}" for s in strings if s.encode() in blob]
    return hits
