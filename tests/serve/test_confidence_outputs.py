"""Per-epoch confidence, margin and entropy, the calibrated low-confidence flag and the night's
confidence summary in every output (epochs Parquet, statistics JSON, cohort summary, HTTP answer)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from night_factory import MODEL  # tests/serve is on sys.path

from somnray.core import storage
from somnray.models import create_model
from somnray.models.bundle import save_bundle
from somnray.scoring.calibration import Calibration, epoch_uncertainty
from somnray.scoring.scorer import Scorer
from somnray.serve.inference import ModelSpec, scored_night
from somnray.serve.outputs import read_epochs, summarize_cohort, write_night_outputs, write_rejected_night
from somnray.serve.scored import ScoredNight

#: Four scored epochs of top probability 0.9, 0.6, 0.45, 0.75 and one epoch without any signal.
PROBS = np.array([[0.9, 0.05, 0.03, 0.01, 0.01], [0.1, 0.6, 0.2, 0.05, 0.05], [0.2, 0.2, 0.45, 0.1, 0.05],
                  [0.05, 0.05, 0.05, 0.1, 0.75], [np.nan] * 5], dtype=np.float32)
FITTED = {"fitted": True, "temperature": 1.7, "threshold_source": "calibration", "reason": None}


def _night(threshold: float = 0.7, calibration: dict | None = None) -> ScoredNight:
    available = np.ones((5, 2), bool)
    available[4] = False
    return ScoredNight("cal-night", np.arange(5), PROBS, ("eeg", "eog"), available, MODEL,
                       low_confidence_threshold=threshold, calibration=dict(calibration or FITTED))


def test_epochs_parquet_has_uncertainty_columns_and_the_calibrated_flag(tmp_path) -> None:
    """confidence/margin/entropy per epoch (null without output); the flag uses the night's threshold;
    the metadata records the threshold and the calibration."""
    uris = write_night_outputs(_night(), tmp_path)
    table, meta = read_epochs(uris["epochs"])
    types = {f.name: str(f.type) for f in pq.read_table(storage.resolve(uris["epochs"]).path).schema}
    assert types["confidence"] == types["margin"] == types["entropy"] == "float"
    expected = epoch_uncertainty(PROBS)
    for name in ("confidence", "margin", "entropy"):
        values = table.column(name).to_pylist()
        assert values[4] is None
        np.testing.assert_allclose(values[:4], expected[name][:4], rtol=1e-6)
    np.testing.assert_allclose(table.column("confidence").to_pylist()[:4], [0.9, 0.6, 0.45, 0.75], rtol=1e-6)
    np.testing.assert_allclose(table.column("margin").to_pylist()[:4], [0.85, 0.4, 0.25, 0.65], rtol=1e-5)
    assert table.column("flag_low_confidence").to_pylist() == [False, True, True, False, False]
    assert meta["low_confidence_threshold"] == 0.7 and meta["calibration"] == FITTED


def test_stats_json_and_cohort_summary_carry_the_confidence_summary(tmp_path) -> None:
    """The statistics JSON's confidence section (mean, fraction flagged, expected errors over scored
    epochs) and the cohort summary's three columns, null for a rejected night."""
    uris = write_night_outputs(_night(), tmp_path)
    doc = json.loads(storage.read_text(uris["stats"]))
    c = doc["confidence"]
    assert c["n_scored_epochs"] == 4 and c["low_confidence_threshold"] == 0.7 and c["calibration"] == FITTED
    assert c["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.45 + 0.75) / 4, abs=1e-6)
    assert c["low_confidence_fraction"] == pytest.approx(0.5)
    assert c["expected_errors"] == pytest.approx(0.1 + 0.4 + 0.55 + 0.25, abs=1e-3)
    write_rejected_night("bad-night", "no EEG", tmp_path)
    summary = summarize_cohort(tmp_path)
    table = pq.read_table(storage.resolve(summary["parquet"]).path)
    rows = {r["recording_id"]: r for r in table.to_pylist()}
    for col in ("mean_confidence", "low_confidence_fraction", "expected_errors"):
        assert str(table.schema.field(col).type) == "double"
        assert rows["cal-night"][col] == pytest.approx(c[col]) and rows["bad-night"][col] is None
    header = storage.read_text(summary["csv"]).splitlines()[0].split(",")
    after_lineage = header.index("stride") + 1
    assert header[after_lineage:after_lineage + 3] == ["mean_confidence", "low_confidence_fraction", "expected_errors"]


def test_a_night_without_calibration_says_so() -> None:
    """A night built without calibration records T = 1, the 0.5 default, and fitted False."""
    night = ScoredNight("plain", np.arange(5), PROBS, ("eeg", "eog"), np.ones((5, 2), bool), MODEL)
    assert night.low_confidence_threshold == 0.5
    assert night.calibration == {"fitted": False, "temperature": 1.0, "threshold_source": "default", "reason": None}
    assert night.quality["low_confidence"].tolist() == [False, False, True, False, False]


def test_scored_nights_take_the_bundles_threshold_and_calibration(tmp_path, one_torch_thread) -> None:
    """ModelSpec.of a calibrated bundle's scorer: its nights use the bundle's threshold and record its
    temperature; an uncalibrated bundle's nights record T = 1, the 0.5 fallback and why."""
    torch.manual_seed(0)
    model = create_model("coresleep_tiny")
    fitted = Calibration(temperature=1.7, method="temperature", n_epochs=500, ece_before=0.2, ece_after=0.02,
                         low_confidence_threshold=0.7, threshold_rule={"flag_error_rate": 0.5})
    save_bundle(model, tmp_path / "cal", name="coresleep_tiny", sequence_length=5, calibration=fitted.to_dict())
    save_bundle(model, tmp_path / "old", name="coresleep_tiny", sequence_length=5)
    available = np.ones((5, 2), bool)
    spec = ModelSpec.of(Scorer.load(str(tmp_path / "cal"), device="cpu", precision="fp32"))
    night = scored_night(spec, "n1", np.arange(5), np.nan_to_num(PROBS, nan=0.2), available)
    assert night.low_confidence_threshold == 0.7 and night.calibration == FITTED
    assert night.quality["low_confidence"].tolist()[:4] == [False, True, True, False]
    old = scored_night(ModelSpec.of(Scorer.load(str(tmp_path / "old"), device="cpu", precision="fp32")),
                       "n2", np.arange(5), np.nan_to_num(PROBS, nan=0.2), available)
    assert old.low_confidence_threshold == 0.5 and old.calibration["fitted"] is False
    assert old.calibration["temperature"] == 1.0 and "exported before calibration" in old.calibration["reason"]


def test_http_answer_has_per_epoch_uncertainty_and_the_summary() -> None:
    """The Serve app's answer lists confidence, margin and entropy per epoch and the night's
    confidence summary (the app's rows are always finite: every epoch is in a window)."""
    from somnray.serve.app import ScoreResponse, ScoreResult, _score_answer

    night = _night()
    night = ScoredNight(night.recording_id, night.epoch_index, np.nan_to_num(PROBS, nan=0.2), night.modalities,
                        night.available, MODEL, low_confidence_threshold=0.7, calibration=FITTED)
    answer = _score_answer(ScoreResult(night))
    ScoreResponse.model_validate(answer)
    assert answer["confidence"] == pytest.approx([0.9, 0.6, 0.45, 0.75, 0.2], abs=1e-5)
    assert answer["margin"][4] == 0.0 and answer["entropy"][4] == pytest.approx(1.0)
    assert answer["confidence_summary"]["low_confidence_threshold"] == 0.7
    assert answer["confidence_summary"]["calibration"]["temperature"] == 1.7
    json.dumps(answer, allow_nan=False)
