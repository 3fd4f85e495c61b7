"""Prepared synthetic cohorts and experiment YAML for the training integration tests.

A prepared cohort costs a few seconds of Ray Data work, so each one is made once per pytest
session (cached here, keyed by its arguments) and shared by every test file that asks for it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

_PREPARED: dict[tuple, str] = {}


def prepared_cohort(tmp_path_factory: Any, synth_cohort: Any, *, n_nights: int = 8, hours: float = 3.0,
                    seed: int = 0, out_uri: str | None = None) -> str:
    """URI of a prepared Sleep-EDF-like synthetic cohort (made once per session and arguments).

    ``out_uri`` prepares into another store (e.g. an S3 bucket); default a session temp folder.
    Call with Ray already initialised (the ``ray_local`` fixture).
    """
    key = (n_nights, hours, seed, out_uri)
    if key not in _PREPARED:
        from somnray.data import prepare_cohort
        from somnray.data.profiles import load_profile

        cohort = synth_cohort("sleep-edf", n_nights=n_nights, hours=hours, seed=seed)
        out = out_uri or f"file://{tmp_path_factory.mktemp('prepared')}"
        result = prepare_cohort(str(cohort.manifest), load_profile("sleep-edf"), out, num_workers=2,
                                progress=False)
        assert result.rejected == 0, result
        _PREPARED[key] = result.dataset_uri
    return _PREPARED[key]


def write_config(path: Path, *, dataset: str, storage_uri: str, name: str, model: str = "coresleep_tiny",
                 extra: str = "", **sections: Any) -> Path:
    """Write an experiment YAML; ``sections`` replace the defaults below, ``extra`` is appended."""
    doc: dict[str, Any] = {
        "seed": 1,
        "data": {"dataset": dataset, "split": {"kind": "kfold", "n_folds": 4, "fold": 0, "n_val_subjects": 1},
                 "sequence_length": 11, "shuffle_buffer": 64},
        "model": {"name": model},
        "optim": {"optimizer": "adamw", "lr": 2.0e-3, "batch_size": 8, "max_steps": 6, "validate_every": 3},
        "deepspeed": {"zero_stage": 0, "precision": "fp32"},
        "scaling": {"num_workers": 1, "use_gpu": False, "max_failures": 0},
        "storage": {"uri": storage_uri, "name": name},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False) + textwrap.dedent(extra))
    return path
