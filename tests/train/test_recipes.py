"""Every shipped training recipe (jobs/configs/*.yaml) loads, validates and documents itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from somnray.train.config import load_experiment

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
#: Training recipes: every YAML except the Ray Tune search spaces (``space_*.yaml``, not experiments).
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("space_"))
#: CoRe-Sleep Table I variants, documented as ``--set model.name=...`` lines of coresleep_shhs.yaml.
TABLE_I_VARIANTS = ("early", "midlate", "core", "early_al", "midlate_al", "core_al", "early_ms",
                    "midlate_ms", "core_ms", "coresleep_early", "coresleep_midlate")
EXPECTED = {"coresleep_shhs", "coresleep_tiny", "mc2sleepnet_shhs", "mc2sleepnet_sleepedf78", "mc2sleepnet_tiny",
            "cimsleepnet_sleepedf20", "cimsleepnet_tiny"}


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_the_expected_recipes_are_shipped() -> None:
    """Each paper recipe and its tiny demo is in jobs/configs."""
    assert EXPECTED <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads_and_validates(path: Path) -> None:
    """load_experiment accepts the file (registry checks included) without any training."""
    cfg = load_experiment(path)
    assert cfg.phases and cfg.description


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_header_says_what_and_how(path: Path) -> None:
    """The opening comment names the exact `somnray train` command and the paper/target numbers."""
    header = _header(path)
    assert header, f"{path.name} must open with a comment block"
    assert f"somnray train jobs/configs/{path.name}" in header
    assert "--set data.dataset=" in header
    assert re.search(r"\b(paper|target)\b", header, re.IGNORECASE)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.endswith("_tiny")],
                         ids=lambda p: p.stem)
def test_tiny_recipes_use_tiny_models(path: Path) -> None:
    """Demo recipes train *_tiny models for a small step budget on CPU."""
    cfg = load_experiment(path)
    for phase in cfg.phases:
        assert phase.model.name.endswith("_tiny")
        assert phase.optim.max_steps <= 200 and phase.scaling.use_gpu is False


@pytest.mark.parametrize("variant", TABLE_I_VARIANTS)
def test_coresleep_table_i_variants_load(variant: str) -> None:
    """Each documented Table I ablation is one --set model.name=... away and validates."""
    path = CONFIGS / "coresleep_shhs.yaml"
    assert f"--set model.name={variant} " in _header(path)
    cfg = load_experiment(path, [f"model.name={variant}", f"storage.name=coresleep-shhs-{variant}"])
    assert cfg.phases[0].model.name == variant and not cfg.phases[0].loss_weights


def test_paper_protocol_values() -> None:
    """The paper recipes carry the papers' optimiser, window, batch and phase settings."""
    core = load_experiment(CONFIGS / "coresleep_shhs.yaml").phases[0]
    assert (core.data.sequence_length, core.optim.batch_size, core.optim.lr, core.optim.eps) == (21, 16, 1e-4, 1e-7)
    assert (core.optim.warmup_steps, core.optim.validate_every, core.optim.patience, core.seed) == (20000, 400, 250, 28)
    assert core.data.split.test_fraction == 0.3 and core.data.split.n_val_subjects == 100
    for name in ("mc2sleepnet_shhs", "mc2sleepnet_tiny"):
        pre, fine = load_experiment(CONFIGS / f"{name}.yaml").phases
        assert pre.model.overrides["phase"] == "pretrain" and pre.model.overrides["mask_ratio"] == 0.5
        assert pre.loss_weights == {"contrastive": 1.0, "raw": 1.0, "spec": 0.1, "concat": 0.1}
        assert fine.init_from == "previous" and fine.freeze == ("epoch_level",)
        assert fine.model.overrides["phase"] == "finetune" and fine.missing.kind == "none"
        assert fine.loss_weights == {"contrastive": 0.0, "raw": 1.0, "spec": 1.0, "concat": 1.0}
    # Sleep-EDF-78 'Γ' rows: the pre-training step only; '+': the SHHS model, fine-tuned on EDF-78
    [edf] = load_experiment(CONFIGS / "mc2sleepnet_sleepedf78.yaml").phases
    assert edf.data.split.n_folds == 10 and edf.optim.lr == 5e-4 and edf.optim.batch_size == 32
    assert edf.model.overrides["phase"] == "pretrain" and edf.model.overrides["mask_ratio"] == 0.5
    [plus] = load_experiment(CONFIGS / "mc2sleepnet_sleepedf78_plus.yaml").phases
    assert plus.model.overrides["phase"] == "finetune" and plus.freeze == ("epoch_level",)
    assert plus.init_from not in (None, "previous") and plus.init_statistics == "keep"
    assert plus.loss_weights == {"contrastive": 0.0, "raw": 1.0, "spec": 1.0, "concat": 1.0}
    assert plus.data.split.n_folds == 10 and plus.missing.kind == "none"
    cim = load_experiment(CONFIGS / "cimsleepnet_sleepedf20.yaml").phases[0]
    assert (cim.data.sequence_length, cim.optim.batch_size, cim.optim.amsgrad, cim.data.split.n_folds) == (25, 64, True, 20)
    assert cim.missing.kind == "partial_chunks" and cim.missing.rate == 0.5 and cim.optim.step_milestones == (250,)
    assert cim.missing.seed == 2024 and cim.missing.validation == "masked"  # selects on masked validation data
    assert cim.model.overrides["kl_reduction"] == "sum"  # explicit: the summed KL scales with the micro-batch
