"""The one scorer (somnray.scoring): loading by run or bundle URI, and one prediction for every path.

Evaluation, cohort scoring and the Serve app all predict through :class:`Scorer`; these tests
check that it gives what each path computed before it existed (a direct ``predict_night`` call
in fp32) and that the evaluation path, the serving path and the Serve app's batched windows give
the same probabilities for the same night.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from somnray.core.errors import ConfigError
from somnray.data import schema
from somnray.data.prepared import PreparedRecording
from somnray.models import create_model
from somnray.models.bundle import save_bundle
from somnray.models.inference import average_windows, predict_night, window_index
from somnray.scoring.actors import ScoringActor
from somnray.scoring.scorer import Scorer

LENGTH = 11
N_EPOCHS = 37  # not a multiple of LENGTH: the last window is aligned to the end


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module (and its module fixtures) on one torch thread."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training-run folder holding ``model/``: random coresleep_tiny weights, windows of 11."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_bundle(create_model("coresleep_tiny"), run / "model", name="coresleep_tiny",
                sequence_length=LENGTH, extra={"profile": "sleep-edf", "run_uri": str(run)})
    return run


@pytest.fixture(scope="module")
def scorer(run_dir) -> Scorer:
    """The run's model on CPU in fp32 (what evaluation uses and tests compare against)."""
    return Scorer.load(str(run_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def night() -> PreparedRecording:
    """A prepared night of 37 epochs, EEG + EOG, EOG unusable in a few epochs.

    Its signals are float16-exact, so the stored dataset row (float16) holds the same values.
    """
    rng = np.random.default_rng(7)
    signals = {m: rng.standard_normal((N_EPOCHS, 3000)).astype(np.float16).astype(np.float32)
               for m in ("eeg", "eog")}
    eog = np.ones(N_EPOCHS, bool)
    eog[5:9] = False
    return PreparedRecording(recording_id="night-1", subject_id="s1", cohort="sleep-edf", signals=signals,
                             available={"eeg": np.ones(N_EPOCHS, bool), "eog": eog},
                             labels=rng.integers(0, 5, N_EPOCHS).astype(np.int8),
                             epoch_index=np.arange(N_EPOCHS, dtype=np.int32))


def _inputs(rec: PreparedRecording) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return dict(rec.signals), np.stack([rec.available[m] for m in ("eeg", "eog")], axis=1)


# -- loading ---------------------------------------------------------------------------------------
def test_load_from_run_or_bundle_folder(run_dir):
    """A run URI resolves to <run>/model/, a bundle folder is used as it is, both as file:// too."""
    a = Scorer.load(str(run_dir), precision="fp32")
    b = Scorer.load(f"file://{run_dir}/model", precision="fp32")
    assert a.uri == b.uri == f"file://{run_dir}/model"
    assert a.length == LENGTH and a.modalities == ("eeg", "eog")
    assert a.info.model == "coresleep_tiny" and a.info.extra["profile"] == "sleep-edf"
    assert not a.model.training
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


def test_load_rejects_a_folder_without_a_bundle(tmp_path):
    """A folder with neither model.json nor model/ is a ConfigError naming both places looked at."""
    with pytest.raises(ConfigError, match="no model bundle") as err:
        Scorer.load(str(tmp_path))
    assert "model/ subfolder" in str(err.value)


def test_load_rejects_a_damaged_bundle(tmp_path):
    """Weights that do not fit the model named in model.json are a ConfigError, not a crash."""
    torch.manual_seed(0)
    save_bundle(create_model("coresleep_tiny"), tmp_path, name="coresleep_tiny", sequence_length=LENGTH)
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="do not fit"):
        Scorer.load(str(tmp_path))


def test_device_precision_and_batch_size_are_chosen_at_load(run_dir):
    """The policy's choices are recorded on the scorer; a bad batch size or precision is refused."""
    s = Scorer.load(str(run_dir), device="cpu", precision="bf16", batch_size=3)
    assert s.device == torch.device("cpu") and s.precision == "bf16" and s.batch_size == 3
    assert Scorer.load(str(run_dir), device="cpu", precision="fp32").autocast_dtype is None
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        Scorer.load(str(run_dir), batch_size=0)
    with pytest.raises(ConfigError, match="fp16"):
        Scorer.load(str(run_dir), device="cpu", precision="fp16")


@pytest.mark.parametrize("native_bf16, probe_says, expected", [
    (False, torch.bfloat16, "fp32"),  # no native bf16: never probed, fp32
    (True, torch.bfloat16, "bf16"),   # native and measured faster: bf16
    (True, None, "fp32"),             # native but not faster here: fp32
])
def test_auto_precision_on_cpu_is_measured_once_per_model(run_dir, monkeypatch, native_bf16, probe_says, expected):
    """'auto' on CPU probes the model only where bf16 is native, takes the probe's answer, and caches it."""
    from somnray.scoring import scorer as scorer_module

    probes = []

    def fake_probe(run, *args, **kwargs):
        run(None)  # the probe runs real forward passes of the loaded model
        probes.append(1)
        return probe_says

    monkeypatch.setattr(scorer_module, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(scorer_module, "faster_autocast", fake_probe)
    monkeypatch.setattr(scorer_module, "_MEASURED_AUTOCAST", {})
    first = Scorer.load(str(run_dir), device="cpu", precision="auto")
    second = Scorer.load(str(run_dir), device="cpu", precision="auto")
    assert first.precision == second.precision == expected
    assert len(probes) == (1 if native_bf16 else 0)
    assert Scorer.load(str(run_dir), device="cpu", precision="fp32").precision == "fp32"  # named: no probe
    assert len(probes) == (1 if native_bf16 else 0)


# -- predicting ------------------------------------------------------------------------------------
def test_predict_is_what_evaluation_and_serving_computed_before(scorer, night):
    """Scorer.predict equals the direct predict_night calls evaluation (batch 16) and serving
    (batch 8, device, autocast) made before the scorer existed, for strides L and 1."""
    signals, present = _inputs(night)
    for stride in (None, 1):
        got = scorer.predict(signals, present, stride=stride)
        serving_before = predict_night(scorer.model, signals, present, length=LENGTH, stride=stride,
                                       batch_size=8, device=torch.device("cpu"), autocast_dtype=None)
        np.testing.assert_array_equal(got, serving_before)
        evaluation_before = predict_night(scorer.model, signals, present, length=LENGTH, stride=stride,
                                          batch_size=16)
        np.testing.assert_allclose(got, evaluation_before, atol=1e-6)
    assert got.shape == (N_EPOCHS, 5) and np.allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_evaluation_serving_and_batched_windows_agree_on_one_night(scorer, night):
    """The same night through evaluation (stored row, scenario 'all'), serving (score_prepared) and
    the Serve app's batched windows gives the same probabilities and stages."""
    from somnray.serve.inference import score_prepared
    from somnray.train.evaluate import EvalSpec, recording_inputs, score_scenarios
    from somnray.train.scenarios import resolve_scenarios

    arrays = schema.row_to_arrays(schema.record_to_row(night))  # what evaluation reads back
    served = score_prepared(scorer, night)
    evaluated = scorer.predict(*recording_inputs(arrays, scorer.modalities))
    np.testing.assert_array_equal(evaluated, served.probabilities)
    spec = EvalSpec(dataset_uri="unused", modalities=scorer.modalities, stride=None,
                    scenarios=resolve_scenarios(["all"], scorer.modalities), columns=())
    scores = score_scenarios(scorer, arrays, spec, recording_index=0)
    np.testing.assert_array_equal(scores.predictions["all"], served.stages)
    np.testing.assert_array_equal(scores.labels, night.labels)

    # The Serve app cuts the windows itself and batches them across requests.
    signals, present = _inputs(night)
    idx = window_index(N_EPOCHS, LENGTH)
    windows = scorer.predict_windows({m: x[idx] for m, x in signals.items()}, present[idx])
    assert windows.shape == (len(idx), LENGTH, 5) and windows.dtype == np.float32
    np.testing.assert_allclose(average_windows(N_EPOCHS, [(idx, windows)]), served.probabilities, atol=1e-6)


def test_stride_is_checked_against_the_window_length(scorer, night):
    """A stride outside [1, L] is a ConfigError named after the option it came from."""
    signals, present = _inputs(night)
    with pytest.raises(ConfigError, match=r"stride must be in \[1, 11\]") as err:
        scorer.predict(signals, present, stride=LENGTH + 1)
    assert err.value.source == "stride"
    with pytest.raises(ConfigError) as err:
        scorer.check_stride(0, "--stride")
    assert err.value.source == "--stride"
    scorer.check_stride(None)
    scorer.check_stride(LENGTH)


def test_night_without_a_modality_is_predicted_from_the_rest(scorer, night):
    """Leaving EOG out of the signals (all-false mask column) scores every epoch from EEG alone."""
    present = np.zeros((N_EPOCHS, 2), bool)
    present[:, 0] = True
    probs = scorer.predict({"eeg": night.signals["eeg"]}, present)
    assert probs.shape == (N_EPOCHS, 5) and np.isfinite(probs).all()


# -- in memory, and in Ray actors ----------------------------------------------------------------------
def test_from_model_and_weights_round_trip(scorer, night):
    """A model in memory, and one rebuilt from its weights (what actors get), predict identically."""
    signals, present = _inputs(night)
    expected = scorer.predict(signals, present)
    weights = scorer.weights()
    assert weights.uri == scorer.uri and all(not t.requires_grad for t in weights.state.values())
    rebuilt = Scorer.from_weights(weights, device="cpu", precision="fp32", batch_size=scorer.batch_size)
    assert rebuilt.uri == scorer.uri and rebuilt.length == LENGTH
    np.testing.assert_array_equal(rebuilt.predict(signals, present), expected)
    in_memory = Scorer.from_model(create_model("coresleep_tiny"), scorer.info, device="cpu", precision="fp32")
    in_memory.model.load_state_dict(scorer.model.state_dict())
    assert in_memory.uri is None
    np.testing.assert_array_equal(in_memory.predict(signals, present), expected)


def test_scoring_actor_runs_its_task_on_every_row(scorer):
    """The Ray Data actor builds its scorer from the weights and maps each row through the task."""
    seen = []

    def task(actor_scorer: Scorer, row: dict) -> dict:
        seen.append(actor_scorer)
        return {"recording_id": str(row["recording_id"]), "length": actor_scorer.length}

    actor = ScoringActor(scorer.weights(), task, device="cpu", precision="fp32", batch_size=4, threads=1)
    out = actor({"recording_id": np.array(["a", "b"]), "recording_index": np.array([0, 1])})
    assert out == {"recording_id": ["a", "b"], "length": [LENGTH, LENGTH]}
    assert seen[0] is seen[1] is actor.scorer and actor.scorer.batch_size == 4
    assert actor({"recording_id": np.array([])}) == {}
