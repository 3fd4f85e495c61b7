"""Registry-wide model tests: every registered model has a case, builds, runs forward/backward with
finite outputs, and gives every trainable parameter a gradient (timm's ``tests/test_models.py``
habit); plus the registry's error messages and the pure-PyTorch import rule of ``somnray.models``."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import textwrap

import pytest
import torch

from somnray.models import ModelOutput, SleepBatch, create_model, is_model, list_models

from model_cases import CASES  # tests/models is on sys.path (rootdir-relative, no package)

MODELS = list_models()



def _batch(case: dict, seed: int = 0) -> SleepBatch:
    gen = torch.Generator().manual_seed(seed)
    mods, b, length = tuple(case["modalities"]), case["batch"], case["length"]
    signals = {m: torch.randn(b, length, 3000, generator=gen) for m in mods}
    present = torch.ones(b, length, len(mods), dtype=torch.bool)
    labels = torch.randint(0, 5, (b, length), generator=gen)
    labels[0, 0] = -1  # an unscored epoch must be ignored, not break the loss
    return SleepBatch(signals, present, labels, mods)


def test_every_registered_model_has_a_case():
    """Each registered model has an entry in model_cases.CASES, and no case names a missing model."""
    missing = sorted(set(MODELS) - set(CASES))
    stale = sorted(set(CASES) - set(MODELS))
    assert not missing, f"registered models without a test case in tests/models/model_cases.py: {missing}"
    assert not stale, f"test cases for models that are not registered: {stale}"


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    """Forward gives finite (B, L, 5) logits, the loss is finite, and every trainable parameter
    (except the case's documented ``no_grad`` patterns) receives a finite gradient."""
    case = CASES[name]
    torch.manual_seed(0)
    model = create_model(name)
    assert model.modalities == tuple(case["modalities"]), "the case must use the model's default modalities"
    assert model.num_parameters() > 0
    if not case.get("forward", True):
        pytest.skip(f"{name}: instantiation only (forward disabled in model_cases)")
    batch = _batch(case)
    model.train()
    out = model(batch.signals, batch.present)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (case["batch"], case["length"], 5)
    assert torch.isfinite(out.logits).all()
    terms = model.loss(out, batch)
    assert "total" in terms and torch.isfinite(terms["total"])
    terms["total"].backward()
    exempt = tuple(case.get("no_grad", ()))
    no_grad, bad = [], []
    for pname, p in model.named_parameters():
        if not p.requires_grad or any(fnmatch.fnmatch(pname, pat) for pat in exempt):
            continue
        if p.grad is None:
            no_grad.append(pname)
        elif not torch.isfinite(p.grad).all():
            bad.append(pname)
    assert not no_grad, f"{name}: parameters without a gradient: {no_grad[:10]}"
    assert not bad, f"{name}: non-finite gradients in {bad[:10]}"
    # The exemptions must stay honest: an exempt pattern that no longer matches anything is stale.
    names = [n for n, _ in model.named_parameters()]
    for pat in exempt:
        assert any(fnmatch.fnmatch(n, pat) for n in names), f"{name}: no_grad pattern {pat!r} matches nothing"


@pytest.mark.parametrize("name", MODELS)
def test_unknown_keyword_is_passed_through_and_rejected(name):
    """create_model forwards keyword overrides to the model, so a misspelt option fails loudly."""
    with pytest.raises(TypeError):
        create_model(name, definitely_not_an_option=1)


def test_overrides_reach_the_model():
    """create_model(name, **overrides) builds the variant with the overridden values."""
    model = create_model("coresleep_tiny", modalities=("eeg",), d_model=16, n_heads=4)
    assert model.modalities == ("eeg",)
    assert model.d_model == 16
    assert model.inner["eeg"].layers[0].self_attn.n_heads == 4


def test_unknown_name_lists_closest_matches():
    """An unknown name raises ValueError naming the closest registered models."""
    with pytest.raises(ValueError, match="unknown model 'coresleeep'.*'coresleep'"):
        create_model("coresleeep")
    assert not is_model("coresleeep") and is_model("coresleep")


def test_list_models_pattern():
    """list_models filters by a shell-style pattern and returns sorted names."""
    tiny = list_models("*_tiny")
    assert tiny == sorted(tiny) and "coresleep_tiny" in tiny
    assert all(n.endswith("_tiny") for n in tiny)


def test_models_package_imports_no_platform_dependencies():
    """Importing somnray.models and every module in it pulls in none of ray, deepspeed, mne, fsspec."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import somnray.models as pkg
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)
        pkg.list_models()
        banned = ("ray", "deepspeed", "mne", "fsspec")
        hits = sorted(m for m in sys.modules if m.split(".")[0] in banned)
        print("LOADED:" + ",".join(hits))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = result.stdout.strip().rsplit("LOADED:", 1)[-1]
    assert loaded == "", f"somnray.models imported platform dependencies: {loaded}"
