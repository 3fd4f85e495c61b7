"""Tests of ``somnray evaluate`` (somnray.train.evaluate, somnray.train.scenarios, jobs/cmd_evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from somnray.core.errors import ConfigError
from somnray.core.storage import resolve
from somnray.models import create_model
from somnray.models.bundle import save_bundle
from somnray.scoring import scorer as scorer_module
from somnray.train import evaluate as ev
from somnray.train.metrics import compute_metrics
from somnray.train.scenarios import DEFAULT_RATES, apply_scenario, default_scenarios, missing, only, resolve_scenarios

pytestmark = pytest.mark.integration  # the dataset is prepared with Ray Data

LENGTH = 10
TWO_MODALITY_SCENARIOS = (["all", "eeg_only", "eog_only"] + [missing(r).name for r in DEFAULT_RATES]
                          + ["noisy_eeg", "noisy_eog", "flat_eeg", "flat_eog"])


# ------------------------------------------------------------------------------------------------
# fixtures: a small prepared cohort and tiny models trained for a few steps in-process
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module (and its module fixtures) on one torch thread."""


@pytest.fixture(scope="module")
def dataset(ray_local, synth_cohort, tmp_path_factory) -> str:
    """4 Sleep-EDF-like nights of 1 h (2 subjects), prepared, with a 2-fold split file."""
    from run_factory import prepared_cohort

    from somnray.data.dataset import PreparedDataset
    from somnray.data.splits import kfold_split

    uri = prepared_cohort(tmp_path_factory, synth_cohort, n_nights=4, hours=1.0)
    prepared = PreparedDataset.open(uri)
    if "cv2" not in prepared.splits():
        prepared.write_splits(kfold_split(prepared.entries(), 2, seed=0, n_val_subjects=0), name="cv2")
    return uri


def _train(name: str, dataset: str, seed: int, steps: int = 3) -> torch.nn.Module:
    """A tiny model after a few Adam steps on windows of every recording (no Ray)."""
    from somnray.data.dataset import PreparedDataset
    from somnray.train.inputs import concat_windows, cut_windows, evaluation_starts, to_sleep_batch

    torch.manual_seed(seed)
    model = create_model(name)
    mods = model.modalities
    parts = [cut_windows(rec, mods, evaluation_starts(rec["n_epochs"], LENGTH), LENGTH, recording_index=i)
             for i, rec in enumerate(PreparedDataset.open(dataset).iter())]
    windows = concat_windows(parts, mods, LENGTH)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        take = slice(4 * step, 4 * step + 4)
        batch = to_sleep_batch({k: v[take] for k, v in windows.items()}, mods)
        loss = model.loss(model(batch.signals, batch.present), batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _run(tmp_path: Path, model: torch.nn.Module, name: str, dataset: str, split: dict | None) -> str:
    """A run folder ``<run>/model/`` holding the model's bundle, as training exports it."""
    run = tmp_path / f"run-{name}-{len(list(tmp_path.iterdir()))}"
    extra = {"dataset_uri": dataset, "run_uri": str(run)}
    if split is not None:
        extra["split"] = split
    save_bundle(model, run / "model", name=name, sequence_length=LENGTH, extra=extra)
    return f"file://{run}"


@pytest.fixture(scope="module")
def models(dataset) -> dict[str, torch.nn.Module]:
    """Two different trained two-modality models and a one-modality one."""
    return {"coresleep_tiny": _train("coresleep_tiny", dataset, seed=0),
            "core_tiny": _train("core_tiny", dataset, seed=1),
            "mc2sleepnet_tiny": _train("mc2sleepnet_tiny", dataset, seed=2)}


@pytest.fixture(scope="module")
def runs(models, dataset, tmp_path_factory) -> dict[str, str]:
    """Run folders: fold 0 and fold 1 of the 2-fold split for coresleep_tiny, fold 0 for the others."""
    tmp = tmp_path_factory.mktemp("runs")
    fold = lambda i: {"name": "cv2", "fold": i}  # noqa: E731
    return {"core0": _run(tmp, models["coresleep_tiny"], "coresleep_tiny", dataset, fold(0)),
            "core1": _run(tmp, models["coresleep_tiny"], "coresleep_tiny", dataset, fold(1)),
            "other0": _run(tmp, models["core_tiny"], "core_tiny", dataset, fold(0)),
            "mc2": _run(tmp, models["mc2sleepnet_tiny"], "mc2sleepnet_tiny", dataset, None)}


def evaluate(runs: list[str], dataset: str, **options) -> ev.EvaluationReport:
    """``evaluate_run`` of run URIs (several are folds) with these options."""
    return ev.evaluate_run([ev.EvaluationRun(r) for r in runs], dataset, ev.EvaluationOptions(**options))


@pytest.fixture(scope="module")
def report(runs, dataset) -> ev.EvaluationReport:
    """The default evaluation of the fold-0 coresleep_tiny run, in-process, written beside the run."""
    return evaluate([runs["core0"]], dataset, workers=1)


class PredictSpy:
    """Wraps the scorer's ``predict_night`` and records what each call passed to the model."""

    def __init__(self):
        self.calls: list[tuple[str, frozenset, np.ndarray]] = []
        self.real = scorer_module.predict_night

    def __call__(self, model, signals, present, **kwargs):
        self.calls.append((type(model).__name__, frozenset(signals), np.array(present, copy=True)))
        return self.real(model, signals, present, **kwargs)


# ------------------------------------------------------------------------------------------------
# scenarios (pure)
# ------------------------------------------------------------------------------------------------
def test_default_scenarios_follow_the_model_modalities() -> None:
    """Two modalities get the full grid; a one-modality model only gets 'all' and noise."""
    assert [s.name for s in default_scenarios(("eeg", "eog"))] == TWO_MODALITY_SCENARIOS
    assert [s.name for s in default_scenarios(("eeg",))] == ["all", "noisy_eeg"]


def test_bad_scenarios_are_all_reported_at_once() -> None:
    """Unknown names, foreign modalities and modality-dropping on a 1-modality model: one error."""
    with pytest.raises(ConfigError) as info:
        resolve_scenarios(["eog_only", "missing_0.2", "sideways", "noisy_ecg"], ("eeg",))
    text = "\n".join(info.value.errors)
    assert len(info.value.errors) == 4
    assert "eog" in text and "several modalities" in text and "sideways" in text and "ecg" in text
    named = resolve_scenarios(["all", "missing", "noisy_eog_snr-5", "missing_iid_0.3"], ("eeg", "eog"))
    assert [s.name for s in named][:2] == ["all", "missing_0"]
    assert named[-2].snr_db == -5.0 and named[-1].protocol == "iid"


def test_only_scenario_drops_other_signals_and_rate_zero_is_identity() -> None:
    """eeg_only leaves EOG out of the signals and the mask; missing_0 changes nothing."""
    rng = np.random.default_rng(0)
    signals = {"eeg": rng.standard_normal((60, 3000)), "eog": rng.standard_normal((60, 3000))}
    present = np.ones((60, 2), bool)
    sig, mask = apply_scenario(only("eeg"), signals, present, ("eeg", "eog"), 3)
    assert set(sig) == {"eeg"} and mask[:, 0].all() and not mask[:, 1].any()
    sig, mask = apply_scenario(missing(0.0), signals, present, ("eeg", "eog"), 3)
    assert mask.all() and sig["eog"] is signals["eog"]
    _, half = apply_scenario(missing(0.5), signals, present, ("eeg", "eog"), 3)
    assert half.any(axis=1).all() and abs((~half).mean() - 0.5) < 1e-9


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def test_report_has_every_scenario_and_is_written_beside_the_run(report, runs) -> None:
    """Default scenarios of a 2-modality model; report.md/json and figures under <run>/evaluation/<dataset>."""
    assert report.scenario_names == TWO_MODALITY_SCENARIOS
    run = resolve(runs["core0"])
    folder = run.join("evaluation", report.dataset)
    assert set(report.written) >= {"report.md", "report.json", "missing_rate.png"}
    assert all(v.startswith(folder.uri) for v in report.written.values())
    md = folder.join("report.md").read_text()
    for name in TWO_MODALITY_SCENARIOS:
        assert f"| {name} |" in md
        assert folder.join(f"confusion_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Scenario | Epochs | Acc | κ | MF1 | W | N1 | N2 | N3 | REM |" in md
    # Calibration per scenario: these bundles have no temperature, so calibrated = uncalibrated.
    assert "## Calibration" in md and "not fitted (T = 1)" in md
    assert folder.join("reliability.png").read_bytes()[:4] == b"\x89PNG"
    for name in TWO_MODALITY_SCENARIOS:
        c = report.calibration(name)
        assert c["ece"] == c["ece_uncalibrated"] and c["n_epochs"] == report.pooled(name).n_epochs
    doc = json.loads(folder.join("report.json").read_text())
    assert set(doc["pooled"]) == set(TWO_MODALITY_SCENARIOS)
    assert doc["folds"][0]["split_source"].startswith("the run's training split")
    assert "cv2" in doc["folds"][0]["split_source"]


def test_scored_recordings_are_the_test_part_of_the_run_split(report, dataset) -> None:
    """With no --split, the run's recorded split (cv2 fold 0) decides the test recordings."""
    from somnray.data.dataset import PreparedDataset

    (fold,) = report.folds
    expected = PreparedDataset.open(dataset).split("cv2")[0].test
    assert tuple(r.recording_id for r in fold.recordings) == tuple(sorted(expected))


def test_metrics_equal_compute_metrics_on_concatenated_predictions(report) -> None:
    """Per scenario, the pooled metrics are compute_metrics of all recordings' predictions."""
    for name in report.scenario_names:
        labels, preds = report.predictions(name)
        assert len(labels) == report.pooled(name).n_epochs + int((labels == -1).sum())
        assert report.pooled(name) == compute_metrics(labels, preds)


def test_missing_rate_zero_equals_all(report) -> None:
    """missing_0 gives exactly the predictions of 'all'."""
    for rec in report.folds[0].recordings:
        np.testing.assert_array_equal(rec.predictions["missing_0"], rec.predictions["all"])
    assert report.pooled("missing_0") == report.pooled("all")


def test_eeg_only_really_passes_no_eog(runs, dataset, monkeypatch) -> None:
    """Under eeg_only the model receives no EOG signal and an all-absent EOG mask column."""
    spy = PredictSpy()
    monkeypatch.setattr(scorer_module, "predict_night", spy)
    evaluate([runs["core0"]], dataset, scenarios=["eeg_only"], workers=1, write=False)
    assert spy.calls
    for _, keys, present in spy.calls:
        assert keys == {"eeg"}
        assert present[:, 0].any() and not present[:, 1].any()


def test_fixed_masks_are_identical_across_evaluations_and_models(runs, dataset, monkeypatch) -> None:
    """missing_0.3 masks (and noise) repeat across two evaluations and two different models."""
    def masks(run: str) -> list[tuple[str, np.ndarray]]:
        spy = PredictSpy()
        monkeypatch.setattr(scorer_module, "predict_night", spy)
        evaluate([run], dataset, scenarios=["missing_0.3"], workers=1, write=False)
        return [(model, present) for model, _, present in spy.calls]

    first, again, other = masks(runs["core0"]), masks(runs["core0"]), masks(runs["other0"])
    assert len(first) == len(other) >= 1
    for (_, a), (_, b), (_, c) in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        assert 0.2 < (~a).mean() < 0.4  # the rate is over slots, M = 2
    assert first[0][0] == other[0][0] == "CoReSleep"  # two different models of the same class


def test_folds_pool_and_report_mean_and_std(runs, dataset, tmp_path) -> None:
    """Two runs (folds) give pooled = summed confusion matrices and a mean ± std table."""
    rep = evaluate([runs["core0"], runs["core1"]], dataset, scenarios=["all", "eeg_only"],
                   workers=1, out_uri=f"file://{tmp_path / 'cv'}")
    assert len(rep.folds) == 2
    ids = [r.recording_id for f in rep.folds for r in f.recordings]
    assert len(ids) == len(set(ids)) == 4  # the two test parts cover the cohort once
    for name in ("all", "eeg_only"):
        summed = sum(np.asarray(f.metrics[name].confusion) for f in rep.folds)
        np.testing.assert_array_equal(np.asarray(rep.pooled(name).confusion), summed)
        accs = [f.metrics[name].accuracy for f in rep.folds]
        assert rep.summaries[name].mean["accuracy"] == pytest.approx(np.mean(accs))
    md = (tmp_path / "cv" / "report.md").read_text()
    assert "## Per fold, mean ± std" in md and "±" in md


def test_one_modality_model_gets_only_meaningful_scenarios(runs, dataset) -> None:
    """MC²SleepNet (EEG only) is scored under all + noisy_eeg; eog_only is refused."""
    rep = evaluate([runs["mc2"]], dataset, workers=1, write=False)
    assert rep.scenario_names == ["all", "noisy_eeg"]
    assert "manifest" in rep.folds[0].selection.source or "every" in rep.folds[0].selection.source
    with pytest.raises(ConfigError, match="several modalities"):
        evaluate([runs["mc2"]], dataset, scenarios=["eeg_only"], workers=1, write=False)


def test_explicit_split_and_bad_inputs(runs, dataset, tmp_path) -> None:
    """--split all scores every recording; a bad run, dataset or split is a ConfigError naming it."""
    rep = evaluate([runs["core0"]], dataset, split="all", scenarios=["all"], workers=1, write=False)
    assert len(rep.folds[0].recordings) == 4 and "--split all" in rep.folds[0].selection.source
    with pytest.raises(ConfigError, match="no trained model"):
        evaluate([str(tmp_path / "nothing")], dataset, workers=1)
    with pytest.raises(ConfigError, match="manifest.json"):
        evaluate([runs["core0"]], str(tmp_path), workers=1)
    with pytest.raises(ConfigError, match="no split file"):
        evaluate([runs["core0"]], dataset, split="nope", workers=1)


def test_a_model_in_memory_is_evaluated_like_its_run(report, runs, dataset, models) -> None:
    """EvaluationRun(scorer=...) scores exactly as the run URI does, names no URI and writes nothing."""
    from somnray.scoring.scorer import Scorer

    loaded = Scorer.load(runs["core0"], device="cpu", precision="fp32")
    in_memory = Scorer.from_model(models["coresleep_tiny"], loaded.info, device="cpu", precision="fp32")
    rep = ev.evaluate_run([ev.EvaluationRun(scorer=in_memory)], dataset, ev.EvaluationOptions(workers=1))
    assert rep.folds[0].run == "<in-memory bundle>" and rep.written == {}
    for got, want in zip(rep.folds[0].recordings, report.folds[0].recordings):
        assert got.recording_id == want.recording_id
        np.testing.assert_array_equal(got.predictions["all"], want.predictions["all"])
    with pytest.raises(ValueError, match="exactly one"):
        ev.EvaluationRun()


def test_ray_actor_pool_matches_in_process(report, runs, dataset) -> None:
    """Scoring on a Ray Data actor pool gives the same predictions as the in-process loop."""
    rep = evaluate([runs["core0"]], dataset, scenarios=["all", "eog_only", "missing_0.5", "noisy_eeg"],
                   workers=2, write=False)
    for got, want in zip(rep.folds[0].recordings, report.folds[0].recordings):
        assert got.recording_id == want.recording_id
        for name in rep.scenario_names:
            np.testing.assert_array_equal(got.predictions[name], want.predictions[name])


def test_report_is_written_to_s3(runs, dataset, tmp_uri) -> None:
    """The report goes through somnray.core.storage, so an s3:// target works."""
    out = tmp_uri("s3", "eval")
    rep = evaluate([runs["core0"]], dataset, scenarios=["all", "eeg_only"], workers=1, out_uri=out)
    doc = json.loads(resolve(out).join("report.json").read_text())
    assert doc["format"] == ev.REPORT_FORMAT and set(doc["pooled"]) == {"all", "eeg_only"}
    assert resolve(out).join("confusion_eeg_only.png").exists() and rep.written["report.md"].startswith("s3://")


def test_cli_prints_the_table(runs, dataset, capsys) -> None:
    """`somnray evaluate` prints the scenario table (exit 0) and fails cleanly on a bad run (exit 1)."""
    from somnray.jobs.cli import main

    assert main(["evaluate", runs["core0"], "--data", dataset, "--scenarios", "all", "eeg_only",
                 "--workers", "1", "--stride", "5"]) == 0
    out = capsys.readouterr().out
    assert "| Scenario | Epochs | Acc | κ | MF1 |" in out and "| eeg_only |" in out and "report:" in out
    assert main(["evaluate", runs["core0"] + "-missing", "--data", dataset, "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "somnray evaluate: error:" in err and "no trained model" in err
