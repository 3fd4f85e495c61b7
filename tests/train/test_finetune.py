"""Fine-tuning from another model without Ray: source checks, learning-rate groups, config rules, the CLI."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from prepared_factory import write_dataset  # tests/train is on sys.path (no package)

from somnray.core.errors import ConfigError
from somnray.jobs import cli
from somnray.models import create_model
from somnray.models.bundle import load_bundle, save_bundle
from somnray.scoring.bundles import register_bundle, weights_sha256
from somnray.train.config import OptimConfig, load_experiment
from somnray.train.finetune import check_source, finetune_overrides
from somnray.train.inputs import apply_training_statistics, compute_training_statistics
from somnray.train.loop import start_from_weights
from somnray.train.optim import build_optimizer, group_base_lrs, learning_rate_groups


def _bundle(folder: Path, model: str = "coresleep_tiny", summary_modalities=("eeg", "eog"), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    summary = {m: {"n_epochs": 10} for m in summary_modalities}
    return save_bundle(create_model(model), folder, name=model, sequence_length=11, data_summary=summary)


def _config(tmp_path: Path, source: Path, model: str = "coresleep_tiny", extra: str = ""):
    path = tmp_path / "ft.yaml"
    path.write_text(textwrap.dedent(f"""
        data: {{dataset: {tmp_path / 'data'}, split: manifest, sequence_length: 11}}
        model: {{name: {model}}}
        storage: {{uri: {tmp_path / 'runs'}, name: ft}}
        phases:
          - {{name: finetune, init_from: {source}{extra}}}
        """))
    return load_experiment(path).phases[0]


def test_source_that_fits_passes_and_a_missing_modality_is_allowed(tmp_path: Path, caplog) -> None:
    """An EEG+EOG source fine-tuned on EEG-only data is accepted, and the log says it goes without eog."""
    source = _bundle(tmp_path / "src")
    phase = _config(tmp_path, source)
    checked = check_source(phase, ["eeg"])
    assert checked.seen_modalities == ("eeg", "eog") and checked.info.model == "coresleep_tiny"
    assert "this phase has no eog, so it fine-tunes (and the model will score) without eog" in caplog.text


def test_a_modality_the_source_never_saw_is_an_error_naming_it(tmp_path: Path) -> None:
    """A source trained on EEG only cannot be fine-tuned on EOG: the error names eog and the fix."""
    source = _bundle(tmp_path / "src", summary_modalities=("eeg",))
    phase = _config(tmp_path, source)
    with pytest.raises(ConfigError) as err:
        check_source(phase, ["eeg", "eog"])
    assert err.value.errors == [
        "modality 'eog': the source model never saw it in training (it was trained on ['eeg']); "
        "leave it out with data.modalities=['eeg']"]


def test_another_architecture_or_a_missing_bundle_is_refused(tmp_path: Path) -> None:
    """A source of another architecture names both; a folder without a bundle says so."""
    source = _bundle(tmp_path / "src", model="cimsleepnet_tiny")
    with pytest.raises(ConfigError) as err:
        check_source(_config(tmp_path, source), ["eeg", "eog"])
    assert err.value.errors == ["the source is a 'cimsleepnet_tiny' model; this phase builds 'coresleep_tiny' "
                                "(set model.name=cimsleepnet_tiny)"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model bundle"):
        check_source(_config(tmp_path, tmp_path / "empty"), ["eeg"])


def test_finetune_overrides_take_architecture_and_window_from_the_source(tmp_path: Path) -> None:
    """finetune_overrides names the source's model, overrides, window length, the source and the data."""
    source = _bundle(tmp_path / "src")
    assert finetune_overrides(str(source), "store/x", ["heads"]) == [
        "model.name=coresleep_tiny", "model.overrides={}", "data.sequence_length=11",
        f"phases.0.init_from={source}", "data.dataset=store/x", 'phases.0.freeze=["heads"]']


def test_learning_rate_groups_give_the_smallest_named_group_its_rate() -> None:
    """group_lr {all: 1e-5, heads: 1e-3}: heads at 1e-3, every other parameter at 1e-5, frozen ones out."""
    model = create_model("mc2sleepnet_tiny")
    model.freeze(["sequence"])
    cfg = OptimConfig(lr=1e-4, group_lr={"all": 1e-5, "heads": 1e-3})
    groups = learning_rate_groups(model.named_parameters(), model.parameter_groups(), cfg)
    assert [(g["group"], g["lr"]) for g in groups] == [("all", 1e-5), ("heads", 1e-3)]
    heads = set(model.parameter_groups()["heads"])
    named = dict(model.named_parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(named[n]) for n in heads}
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    opt = build_optimizer(groups, cfg)
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    assert group_base_lrs(opt.param_groups, cfg) == [1e-5, 1e-3]


def test_config_checks_group_lr_and_init_from(tmp_path: Path) -> None:
    """Unknown or frozen group_lr groups are errors; a first phase may start from a URI, not from 'previous'."""
    source = _bundle(tmp_path / "src")
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, source, extra=", freeze: [heads], optim: {group_lr: {heads: 0.001, hedas: 0.01}}")
    text = "\n".join(err.value.errors)
    assert "phases[0].optim.group_lr: unknown parameter groups 'hedas'; did you mean 'heads'?" in text
    assert "['heads'] are frozen in this phase: a learning rate for them would have no effect" in text
    phase = _config(tmp_path, source, extra=", init_statistics: refit")
    assert phase.init_from == str(source) and phase.init_statistics == "refit"


def test_finetune_cli_refuses_an_unseen_modality_before_training(tmp_path: Path, capsys, monkeypatch) -> None:
    """somnray finetune with an EEG-only source and --set data.modalities=[eeg,eog]: exit 1 naming eog."""
    import somnray.core.session as session

    started = []
    monkeypatch.setattr(session, "ensure_ray", lambda *a, **k: started.append(1))
    data = tmp_path / "data"
    write_dataset(data)
    source = _bundle(tmp_path / "src", summary_modalities=("eeg",))
    code = cli.main(["finetune", str(source), "--data", str(data), "--run-uri", str(tmp_path / "runs" / "ft"),
                     "--set", "data.modalities=[eeg, eog]", "--set", "data.split=manifest"])
    err = capsys.readouterr().err
    assert code == 1 and "modality 'eog': the source model never saw it in training" in err, err
    assert json.loads((source / "model.json").read_text())["model"] == "coresleep_tiny"


def test_init_statistics_keep_retains_the_sources_and_refit_fits_the_new_split(tmp_path: Path) -> None:
    """keep: the source bundle's spectrogram statistics survive; refit: the new training split's replace them."""
    write_dataset(tmp_path / "data")
    source_model = create_model("coresleep_tiny")
    n_bins = source_model.front_end["eeg"].n_bins
    for i, modality in enumerate(("eeg", "eog")):  # statistics no real split would give
        source_model.set_spectrogram_statistics(modality, torch.full((n_bins,), -40.0 - i), torch.full((n_bins,), 9.0))
    save_bundle(source_model, tmp_path / "src", name="coresleep_tiny", sequence_length=11)
    state = load_bundle(tmp_path / "src")[0].state_dict()
    stats = compute_training_statistics(create_model("coresleep_tiny"), str(tmp_path / "data"),
                                        ["r00", "r01", "r02", "r03"], ("eeg", "eog"))
    names = sorted(stats.fitted)
    assert names == ["front_end.eeg.bin_mean", "front_end.eeg.bin_std", "front_end.eog.bin_mean",
                     "front_end.eog.bin_std"]
    started = {}
    for mode in ("keep", "refit"):
        model = create_model("coresleep_tiny")
        apply_training_statistics(model, stats)  # as every worker does before loading the start weights
        assert start_from_weights(model, state, stats, mode) == ([] if mode == "keep" else names)
        started[mode] = model.state_dict()
    for name in names:
        assert torch.equal(started["keep"][name], state[name])
        assert torch.allclose(started["refit"][name], torch.as_tensor(stats.fitted[name]))
        assert not torch.allclose(started["refit"][name], state[name])
    # Either way every trained weight is the source's.
    for name, value in state.items():
        if name not in names:
            assert torch.equal(started["keep"][name], value) and torch.equal(started["refit"][name], value)


def test_finetune_freeze_flag_reaches_the_first_phase(tmp_path: Path, monkeypatch) -> None:
    """--freeze A B replaces the recipe's frozen groups, bare --freeze freezes nothing, no flag keeps the recipe's."""
    import somnray.jobs.cmd_train as cmd_train

    trained = []
    monkeypatch.setattr(cmd_train, "train_and_report", lambda cfg, source: trained.append(cfg) or 0)
    write_dataset(tmp_path / "data")
    source = _bundle(tmp_path / "src")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        data: {{dataset: unset, split: manifest, sequence_length: 21}}
        model: {{name: coresleep}}
        storage: {{uri: {tmp_path / 'runs'}, name: ft}}
        phases:
          - {{name: finetune, init_from: unset, freeze: [front_end]}}
        """))
    common = ["finetune", str(source), "--data", str(tmp_path / "data"), "--recipe", str(recipe)]
    for flag, frozen in ((["--freeze", "inner_eeg", "heads"], ("inner_eeg", "heads")), (["--freeze"], ()),
                         ([], ("front_end",))):
        assert cli.main(common + flag) == 0
        phase = trained.pop().phases[0]
        assert phase.freeze == frozen, flag
        assert phase.init_from == str(source) and phase.model.name == "coresleep_tiny"
    assert cli.main(common + ["--freeze", "hedas"]) == 1 and not trained


# slow: a Ray Train run with MLflow logging (~2 min idle, 5 loaded); the registry's own tests stay
# in the default tier.
@pytest.mark.integration
@pytest.mark.slow
def test_finetune_from_a_registered_alias_starts_from_its_weights_and_records_the_version(
        tmp_path: Path, ray_local, mlflow_server, monkeypatch, capsys) -> None:
    """somnray finetune models:/NAME@champion: workers start from that version's weights without the
    driver's model cache (as on another node), and the run, model.json and card record the version."""
    import somnray.train.driver as driver

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("SOMNRAY_MODEL_CACHE", str(cache))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    name = f"ft-source-{tmp_path.name[-8:]}"
    for seed in (1, 2):
        register_bundle(str(_bundle(tmp_path / f"v{seed}", seed=seed)), name)
    assert cli.main(["models", "alias", name, "2", "champion"]) == 0
    registered = load_bundle(tmp_path / "v2")[0].state_dict()
    sha = weights_sha256(tmp_path / "v2")

    resolve_sources = driver.init_sources

    def resolve_then_drop_the_cache(cfg):  # a worker on another node has no copy of the driver's cache
        sources = resolve_sources(cfg)
        shutil.rmtree(cache)
        return sources

    monkeypatch.setattr(driver, "init_sources", resolve_then_drop_the_cache)
    data = tmp_path / "data"
    write_dataset(data)
    groups = create_model("coresleep_tiny").parameter_groups()
    run = tmp_path / "runs" / "ft"
    code = cli.main(["finetune", f"models:/{name}@champion", "--data", str(data), "--run-uri", str(run),
                     "--freeze", *[g for g in groups if g != "heads"],
                     "--set", "data.split=manifest", "--set", "data.shuffle_buffer=8",
                     *[f"--set=optim.{k}" for k in ("batch_size=4", "max_steps=2", "validate_every=2",
                                                     "warmup_steps=0", "lr=1.0e-3")],
                     "--set", "deepspeed.precision=fp32", "--set", "scaling.use_gpu=false"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]

    source = {"uri": f"models:/{name}@champion", "checkpoint_uri": f"models:/{name}/2",
              "registered_model": {"name": name, "version": "2", "uri": f"models:/{name}/2"},
              "model": "coresleep_tiny", "weights_sha256": sha}
    assert json.loads((run / "finetune" / "init_source.json").read_text()) == source
    bundle = run / "model"
    assert json.loads((bundle / "model.json").read_text())["extra"]["init_sources"] == {"finetune": source}
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["recipe"]["phases"][0]["init_from"] == f"models:/{name}@champion"
    assert card["recipe"]["phases"][0]["source"] == source
    starts_from = f"models:/{name}@champion = `models:/{name}/2`, weights `{sha[:12]}`"
    assert starts_from in (bundle / "MODEL_CARD.md").read_text()

    tuned = load_bundle(bundle)[0].state_dict()
    heads = set(groups["heads"])
    # Frozen weights and the kept statistics buffers are version 2's exactly; the heads trained on.
    assert all(torch.equal(tuned[k], v) for k, v in registered.items() if k not in heads)
    assert any(not torch.equal(tuned[k], registered[k]) for k in heads)
