"""Scored nights, per-night output files and the cohort summary: every file is read back."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import mne
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from night_factory import MODEL, night_from_stages, realistic_night  # tests/serve is on sys.path

from somnray.core import storage
from somnray.core.errors import ConfigError, RecordingError
from somnray.serve import outputs
from somnray.serve.outputs import (
    EVENTS_COLUMNS,
    PROB_COLUMNS,
    read_epochs,
    read_stats_documents,
    rejected_row,
    stage_runs,
    summarize_cohort,
    summary_row,
    write_cohort_summary,
    write_night_outputs,
    write_rejected_night,
)
from somnray.serve.scored import ModelInfo, ScoredNight, modalities_used_from_available
from somnray.serve.stats import compute_sleep_stats, timeline

W, N1, N2, N3, R, U = 0, 1, 2, 3, 4, -1
# Runs: W W | N2 N2 N2 | ? | R R | (gap: epochs 8, 9 missing) | R | W
GAPPY = dict(stages=[W, W, N2, N2, N2, U, R, R, R, W], epoch_index=[0, 1, 2, 3, 4, 5, 6, 7, 10, 11])


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- ScoredNight ------------------------------------------------------------------------------------
def test_default_stages_and_flags():
    """Stages default to the argmax, -1 where no modality or no finite probabilities; flags follow."""
    probs = np.array([[0.9, 0.1, 0, 0, 0], [0.1, 0.45, 0.4, 0.05, 0], [0, 0, 0, 0, 1],
                      [np.nan] * 5], dtype=np.float32)
    avail = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=bool)
    night = ScoredNight("n1", np.arange(4), probs, ("eeg", "eog"), avail, MODEL)
    assert night.stages.tolist() == [W, N1, U, U]
    assert night.stages.dtype == np.int8
    assert night.quality["unscored"].tolist() == [False, False, True, True]
    assert night.quality["missing_modality"].tolist() == [False, True, True, False]
    assert night.quality["low_confidence"].tolist() == [False, True, False, False]
    assert night.modalities_used.tolist() == ["eeg+eog", "eeg", "none", "none"]
    assert night.stage_names == ["W", "N1", "UNS", "UNS"]


def test_scorer_supplied_labels_and_flags_are_kept():
    """Explicit stages, modalities_used labels and extra quality flags pass through unchanged."""
    night = night_from_stages([W, N2], modalities_used=["eeg+eog(imputed)", "eeg"],
                              quality={"artifact": [True, False]}, start_offset_s=15.0)
    assert night.modalities_used.tolist() == ["eeg+eog(imputed)", "eeg"]
    assert night.quality["artifact"].tolist() == [True, False]
    assert set(night.quality) == {"unscored", "missing_modality", "low_confidence", "artifact"}
    assert night.onset_s.tolist() == [15.0, 45.0]


@pytest.mark.parametrize("change, fragment", [
    ({"probabilities": np.full((3, 5), 2.0, np.float32)}, "softmax outputs, not logits"),
    ({"probabilities": np.full((3, 5), 0.1, np.float32)}, "sum to 1"),
    ({"probabilities": np.full((3, 4), 0.25, np.float32)}, "shape"),
    ({"epoch_index": np.array([0, 2, 2])}, "strictly increasing"),
    ({"available": np.ones((3, 1), bool)}, "available must have shape"),
    ({"stages": np.array([0, 7, 1])}, "-1..4"),
    ({"stages": np.array([0, 1])}, "stages must have shape"),
    ({"modalities_used": ["eeg"]}, "modalities_used"),
    ({"quality": {"missing_modality": [True] * 3}}, "standard flags"),
    ({"recording_id": "../escape"}, "cannot name output files"),
    ({"recording_id": ".hidden"}, "cannot name output files"),
    ({"recording_id": "a/b"}, "cannot name output files"),
    ({"recording_id": ""}, "cannot name output files"),
])
def test_invalid_nights_are_rejected(change, fragment):
    """Inconsistent shapes, logits, bad codes and unsafe ids raise RecordingError naming the problem."""
    args = dict(recording_id="n1", epoch_index=np.arange(3),
                probabilities=np.full((3, 5), 0.2, np.float32), modalities=("eeg", "eog"),
                available=np.ones((3, 2), bool), model=MODEL)
    args.update(change)
    with pytest.raises(RecordingError, match=fragment):
        ScoredNight(**args)


def test_modalities_used_from_available():
    """Labels join the present modalities in canonical order; nothing present is 'none'."""
    avail = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    assert modalities_used_from_available(("eeg", "eog", "emg"), avail).tolist() == [
        "eeg+emg", "none", "eog"]


def test_night_stats_use_the_contiguous_timeline():
    """Gaps in epoch_index count as unscored time; lights-off is relative to the recording start."""
    night = night_from_stages(**GAPPY, start_offset_s=60.0)
    s = night.sleep_stats()
    assert s.n_tib_epochs == 12 and s.n_unscored_epochs == 3   # epoch 5 and the gap 8-9
    assert s.sol_min == 1.0
    # lights-off at 120 s from the recording start = epoch 2 of the night's grid
    assert night.sleep_stats(lights_off_s=120.0).sol_min == 0.0


# -- per-night files --------------------------------------------------------------------------------
def test_stage_runs_merge_equal_contiguous_epochs():
    """Runs merge equal consecutive stages, split at index gaps, and keep unscored as their own run."""
    night = night_from_stages(**GAPPY)
    assert stage_runs(night) == [(0.0, 60.0, W), (60.0, 90.0, N2), (150.0, 30.0, U),
                                 (180.0, 60.0, R), (300.0, 30.0, R), (330.0, 30.0, W)]


def test_epochs_parquet_reads_back(tmp_path):
    """The per-epoch Parquet has the documented columns, dtypes, values and model metadata."""
    night = realistic_night()
    uris = write_night_outputs(night, tmp_path)
    table = pq.read_table(storage.resolve(uris["epochs"]).path)
    assert table.column_names == [
        "epoch", "onset_s", "stage", "stage_name", *PROB_COLUMNS, "confidence", "margin", "entropy", "available_eeg",
        "available_eog", "available_emg", "modalities_used", "flag_unscored",
        "flag_missing_modality", "flag_low_confidence"]
    types = {f.name: str(f.type) for f in table.schema}
    assert types["stage"] == "int8" and types["prob_REM"] == "float"
    assert types["available_eog"] == "bool" and types["epoch"] == "int32"
    df = table.to_pandas()
    assert df["stage"].tolist() == night.stages.tolist()
    np.testing.assert_allclose(df[list(PROB_COLUMNS)].to_numpy(), night.probabilities)
    assert df["available_eog"].to_numpy().tolist() == night.available[:, 1].tolist()
    assert df["onset_s"].iloc[3] == 90.0
    assert set(df.loc[df["stage"] == U, "stage_name"]) == {"UNS"}
    assert df["flag_unscored"].sum() == 4
    _, meta = read_epochs(uris["epochs"])
    assert meta["model"] == MODEL.to_dict() and meta["recording_id"] == "psg-0001"
    assert table.schema.metadata[b"somnray_version"] == b"9.9.9"


def test_unscored_probabilities_are_null(tmp_path):
    """Epochs without model output keep null probabilities in Parquet (not NaN, not zero)."""
    night = night_from_stages([W, U, R])
    table, _ = read_epochs(write_night_outputs(night, tmp_path)["epochs"])
    assert table.column("prob_W").to_pylist()[1] is None
    assert table.column("prob_W").null_count == 1
    assert table.column("prob_REM").to_pylist()[2] == pytest.approx(0.8)


def test_hypnogram_csv_reads_back(tmp_path):
    """The hypnogram CSV has epoch,onset_s,stage rows with W/N1/N2/N3/REM/UNS names."""
    night = night_from_stages([W, N1, N2, N3, R, U], start_offset_s=15.0)
    uris = write_night_outputs(night, tmp_path)
    rows = list(csv.reader(io.StringIO(storage.read_text(uris["hypnogram"]))))
    assert rows[0] == ["epoch", "onset_s", "stage"]
    assert rows[1:] == [["0", "15", "W"], ["1", "45", "N1"], ["2", "75", "N2"], ["3", "105", "N3"],
                        ["4", "135", "REM"], ["5", "165", "UNS"]]


def test_edf_annotations_read_back_with_mne(tmp_path):
    """The EDF+ file holds merged stage runs MNE reads with the expected onsets and texts."""
    night = night_from_stages(**GAPPY)
    uris = write_night_outputs(night, tmp_path)
    path = storage.resolve(uris["annotations"]).path
    ann = mne.read_annotations(path)
    assert ann.onset.tolist() == [0.0, 60.0, 150.0, 180.0, 300.0, 330.0]
    assert ann.duration.tolist() == [60.0, 90.0, 30.0, 60.0, 30.0, 30.0]
    assert list(ann.description) == ["Sleep stage W", "Sleep stage N2", "Sleep stage ?",
                                     "Sleep stage R", "Sleep stage R", "Sleep stage W"]


def test_edf_header_is_anonymous_edf_plus(tmp_path):
    """A valid EDF+C header with the EDF+ anonymous fields, 30-s data records (EDFbrowser refuses
    records of duration 0), a Hypnogram signal and the annotation signal."""
    import edfio

    night = night_from_stages([W, N2, R])
    raw = open(storage.resolve(write_night_outputs(night, tmp_path)["annotations"]).path, "rb").read()
    assert raw[:8] == b"0       "
    assert raw[8:88].decode().rstrip() == "X X X X"
    assert raw[88:168].decode().rstrip() == "Startdate X X X X"
    assert raw[168:184] == b"01.01.8500.00.00"
    assert raw[192:236].decode().rstrip() == "EDF+C"
    assert int(raw[236:244]) == 3 and float(raw[244:252]) == 30.0 and int(raw[252:256]) == 2
    assert [raw[256:272].decode().rstrip(), raw[272:288].decode().rstrip()] == ["Hypnogram", "EDF Annotations"]
    assert int(raw[184:192]) == 256 * 3 and len(raw) > 256 * 3
    edf = edfio.read_edf(io.BytesIO(raw))
    assert [a.text for a in edf.annotations] == ["Sleep stage W", "Sleep stage N2", "Sleep stage R"]
    assert night.recording_id.encode() not in raw[:256 * 3]


def test_edf_hypnogram_signal_follows_the_epoch_grid(tmp_path):
    """The 1-Hz Hypnogram trace holds each second's stage code, -1 before the first epoch, in gaps
    and for unscored epochs, whatever the start offset; MNE reads it as a channel."""
    night = night_from_stages(**GAPPY, start_offset_s=15.0)
    path = storage.resolve(write_night_outputs(night, tmp_path)["annotations"]).path
    raw = mne.io.read_raw_edf(path, verbose="error")
    assert raw.ch_names == ["Hypnogram"] and raw.info["sfreq"] == 1.0
    trace = np.round(raw.get_data()[0]).astype(int)
    assert trace.size == 13 * 30  # 15 s offset + 12 epoch positions, padded to whole records
    assert (trace[:15] == -1).all()
    per_epoch = trace[15:15 + 12 * 30].reshape(12, 30)
    assert (per_epoch == per_epoch[:, :1]).all()  # constant within each epoch
    assert per_epoch[:, 0].tolist() == [W, W, N2, N2, N2, U, R, R, U, U, R, W]
    assert (trace[15 + 12 * 30:] == -1).all()


def test_edf_annotations_read_back_by_the_generic_profile(tmp_path):
    """somnray's own hypnogram reader maps the EDF+ output back to the scored stages."""
    from somnray.data.profiles import load_profile
    from somnray.data.hypnograms import hypnogram_to_epochs, read_hypnogram

    night = night_from_stages(**GAPPY)
    path = storage.resolve(write_night_outputs(night, tmp_path)["annotations"]).path
    spec = load_profile("generic").annotations.model_copy(update={"format": "edf_annotations"})
    hyp = read_hypnogram(path, spec)
    labels, _ = hypnogram_to_epochs(hyp, 12, spec.label_map, path)
    assert labels.tolist() == night.hypnogram().tolist()


def test_bids_events_and_sidecar(tmp_path):
    """events.tsv has exactly the BIDS columns, n/a for unscored; the sidecar describes each."""
    night = night_from_stages([W, N2, U, R], confidence=0.7, start_offset_s=30.0)
    uris = write_night_outputs(night, tmp_path)
    df = pd.read_csv(io.StringIO(storage.read_text(uris["events"])), sep="\t",
                     keep_default_na=False)
    assert tuple(df.columns) == EVENTS_COLUMNS
    assert df["onset"].tolist() == [30, 60, 90, 120] and set(df["duration"]) == {30}
    assert df["trial_type"].tolist() == ["Sleep stage W", "Sleep stage N2", "Sleep stage ?",
                                         "Sleep stage R"]
    assert df["stage"].tolist() == ["W", "N2", "UNS", "REM"]
    assert df["value"].tolist() == [0, 2, -1, 4]
    assert df["probability"].tolist() == ["0.7000", "0.7000", "n/a", "0.7000"]
    sidecar = json.loads(storage.read_text(uris["events_sidecar"]))
    assert set(EVENTS_COLUMNS) <= set(sidecar)
    assert sidecar["onset"]["Units"] == "s" and sidecar["ScoringModel"]["name"] == "coresleep_tiny"


def test_stats_json_is_consistent_with_the_epoch_table(tmp_path):
    """The statistics JSON equals statistics recomputed from the per-epoch Parquet file."""
    night = realistic_night()
    uris = write_night_outputs(night, tmp_path)
    doc = json.loads(storage.read_text(uris["stats"]))
    table, meta = read_epochs(uris["epochs"])
    df = table.to_pandas()
    again = compute_sleep_stats(timeline(df["epoch"].to_numpy(), df["stage"].to_numpy()),
                                epoch_s=meta["epoch_s"])
    assert doc["stats"] == again.to_dict()
    assert doc["status"] == "ok" and doc["recording_id"] == "psg-0001"
    assert doc["n_epochs"] == len(df)
    assert doc["modalities"]["available_fraction"]["eog"] == pytest.approx(df["available_eog"].mean())
    assert sum(doc["modalities"]["used_epochs"].values()) == len(df)
    assert doc["modalities"]["used_epochs"]["none"] == 4
    assert doc["quality"]["flag_epochs"]["unscored"] == int(df["flag_unscored"].sum())
    assert doc["model"]["checkpoint_uri"] == MODEL.checkpoint_uri
    assert set(doc["files"]) == set(uris)


def test_lights_off_and_on_reach_the_statistics(tmp_path):
    """Lights-off/on given to the writer are recorded and used for the statistics."""
    night = night_from_stages([W, W, W, N2, N2, W, W])
    doc = json.loads(storage.read_text(
        write_night_outputs(night, tmp_path, lights_off_s=60, lights_on_s=150)["stats"]))
    assert (doc["lights_off_s"], doc["lights_on_s"]) == (60, 150)
    assert doc["stats"]["tib_min"] == 1.5 and doc["stats"]["sol_min"] == 0.5


def test_write_night_outputs_layout_and_idempotence(tmp_path):
    """All files land in <out>/<id>/ named by the id; a rerun rewrites identical bytes, no litter."""
    night = night_from_stages([W, N1, N2, R, W], recording_id="sub-07_night-2")
    uris = write_night_outputs(night, tmp_path, plots=True)
    assert set(uris) == {"epochs", "hypnogram", "annotations", "events", "events_sidecar",
                         "stats", "plot"}
    folder = tmp_path / "sub-07_night-2"
    expected = sorted(f"sub-07_night-2{s}" for s in outputs.OUTPUT_SUFFIXES.values())
    assert _files(folder) == expected
    assert all(u.startswith(f"file://{folder}/") for u in uris.values())
    before = {f: (folder / f).read_bytes() for f in expected}
    write_night_outputs(night, f"file://{tmp_path}", plots=True)
    assert _files(folder) == expected                     # no temporary files left behind
    for f in expected:
        if not f.endswith(".png"):  # PNG metadata carries the matplotlib version only, but be lenient
            assert (folder / f).read_bytes() == before[f], f
    assert _files(tmp_path) == ["sub-07_night-2"]


def test_failed_write_leaves_previous_files_intact(tmp_path, monkeypatch):
    """A write that fails midway keeps the previous complete files and leaves no temporary file."""
    first = night_from_stages([W, N2, N2, R])
    uris = write_night_outputs(first, tmp_path)
    folder = tmp_path / first.recording_id
    before = {f: (folder / f).read_bytes() for f in _files(folder)}

    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # epochs and hypnogram go through, the EDF+ file fails
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    second = night_from_stages([W, W, W, W])
    with pytest.raises(OSError, match="disk full"):
        write_night_outputs(second, tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert _files(folder) == sorted(before)              # the temporary file was removed
    changed = {f for f in before if (folder / f).read_bytes() != before[f]}
    assert changed == {f"{first.recording_id}_epochs.parquet", f"{first.recording_id}_hypnogram.csv"}
    # The statistics JSON (written last) still describes the first, complete run.
    doc = json.loads(storage.read_text(uris["stats"]))
    assert doc["stats"]["tst_min"] == 1.5


def test_render_error_writes_nothing(tmp_path, monkeypatch):
    """When one file cannot be rendered, no file of the night is touched."""
    night = night_from_stages([W, N2, R])
    write_night_outputs(night, tmp_path)
    folder = tmp_path / night.recording_id
    before = {f: (folder / f).read_bytes() for f in _files(folder)}

    def broken(_night):
        raise RuntimeError("edf encoder failed")

    monkeypatch.setattr(outputs, "edf_annotations_bytes", broken)
    with pytest.raises(RuntimeError):
        write_night_outputs(night_from_stages([W, W, W]), tmp_path)
    assert {f: (folder / f).read_bytes() for f in _files(folder)} == before


def test_empty_night_is_refused(tmp_path):
    """A night without epochs is refused (it must be recorded as rejected instead)."""
    night = night_from_stages([])
    with pytest.raises(RecordingError, match="write_rejected_night"):
        write_night_outputs(night, tmp_path)
    assert not (tmp_path / night.recording_id).exists()


# -- cohort -----------------------------------------------------------------------------------------
def test_rejected_night_replaces_stale_outputs(tmp_path):
    """Rejecting a night removes its earlier outputs and records the reason as its status."""
    write_night_outputs(night_from_stages([W, N2]), tmp_path)
    uri = write_rejected_night("night-01", "no EEG channel among ['C4-A1']", tmp_path)
    assert _files(tmp_path / "night-01") == ["night-01_sleep_stats.json"]
    doc = json.loads(storage.read_text(uri))
    assert doc["status"] == "rejected" and doc["stats"] is None
    assert "no EEG channel" in doc["reason"]


def test_cohort_summary_reads_back(tmp_path):
    """write_cohort_summary writes one CSV/Parquet row per recording with stats and fractions."""
    for rid, stages in (("a", [W, N2, N2, R]), ("b", [W, W, N3, U])):
        write_night_outputs(night_from_stages(stages, recording_id=rid), tmp_path)
    docs = read_stats_documents(tmp_path)
    rows = [summary_row(d) for d in docs] + [rejected_row("c", "unreadable EDF header")]
    uris = write_cohort_summary(rows, tmp_path)
    table = pq.read_table(storage.resolve(uris["parquet"]).path)
    df = table.to_pandas()
    assert df["recording_id"].tolist() == ["a", "b", "c"]
    assert df["status"].tolist() == ["ok", "ok", "rejected"]
    assert df["tst_min"].iloc[0] == 1.5 and df["n_epochs"].iloc[1] == 4
    assert df["available_eeg"].tolist()[:2] == [1.0, 0.75]
    assert df["flag_unscored"].iloc[1] == 0.25
    assert pd.isna(df["tst_min"].iloc[2]) and df["reason"].iloc[2] == "unreadable EDF header"
    assert str(table.schema.field("n_awakenings").type) == "int64"
    assert len(set(table.column_names)) == len(table.column_names)
    csv_df = pd.read_csv(io.StringIO(storage.read_text(uris["csv"])))
    assert csv_df.columns.tolist() == table.column_names
    assert csv_df["sleep_efficiency_pct"].iloc[0] == pytest.approx(75.0)


def test_lineage_reaches_every_output_and_the_summary(tmp_path):
    """Weights hash, registered version, input/profile hashes and stride land in JSON, Parquet, CSV."""
    model = ModelInfo("coresleep_tiny", "models:/sleep/3", "9.9.9", weights_sha256="ab" * 32,
                      registered_model={"name": "sleep", "version": "3", "uri": "models:/sleep/3"})
    lineage = {"input_sha256": "cd" * 32, "stride": 5, "profile_sha256": "ef" * 32,
               "training_dataset": {"name": "sleep-edf-0123456789ab", "version": "0123456789ab"}}
    night = ScoredNight("n1", np.arange(3), np.full((3, 5), 0.2, np.float32), ("eeg",),
                        np.ones((3, 1), bool), model, lineage=lineage)
    uris = write_night_outputs(night, tmp_path)
    doc = json.loads(storage.read_text(uris["stats"]))
    assert doc["lineage"] == lineage and doc["model"] == model.to_dict()
    assert doc["model"]["weights_sha256"] == "ab" * 32 and doc["model"]["registered_model"]["version"] == "3"
    _, meta = read_epochs(uris["epochs"])
    assert meta["lineage"] == lineage and meta["model"]["weights_sha256"] == "ab" * 32
    assert ModelInfo.from_dict(doc["model"]) == model
    table = pq.read_table(storage.resolve(summarize_cohort(tmp_path)["parquet"]).path)
    row = table.to_pylist()[0]
    assert (row["model_weights_sha256"], row["model_registered"], row["input_sha256"], row["stride"]) == \
        ("ab" * 32, "models:/sleep/3", "cd" * 32, 5)
    assert str(table.schema.field("stride").type) == "int64"



def test_domain_shift_reaches_every_output_and_the_summary(tmp_path):
    """A night's domain-shift check lands in the statistics JSON (flag, reasons, checks), the
    per-epoch Parquet (flag_domain_shift on every epoch, the check in the metadata) and the cohort
    summary (domain_shift, domain_shift_reasons); a night built without a check has none of them."""
    from somnray.scoring.domain import CheckResult, DomainCheck

    reason = "eeg amplitude 10× the training median"
    shifted = DomainCheck(checks=(CheckResult("amplitude", "eeg", "shift", reason, value=10.0, limit=3.0),
                                  CheckResult("band_power", "eeg", "ok", "eeg spectrum", value=0.3, limit=2.0)))
    quiet = DomainCheck(checks=(CheckResult("amplitude", "eeg", "ok", "eeg amplitude 1×", value=1.0, limit=3.0),))
    for rid, check in (("a", shifted), ("b", quiet)):
        night = ScoredNight(rid, np.arange(3), np.full((3, 5), 0.2, np.float32), ("eeg",),
                            np.ones((3, 1), bool), ModelInfo("m", "ckpt"), domain_shift=check)
        uris = write_night_outputs(night, tmp_path)
        doc = json.loads(storage.read_text(uris["stats"]))
        assert doc["domain_shift"] == check.to_dict()
        assert doc["domain_shift"]["flag"] is check.flag and doc["domain_shift"]["reasons"] == check.reasons
        table, meta = read_epochs(uris["epochs"])
        assert table.column("flag_domain_shift").to_pylist() == [check.flag] * 3
        assert meta["domain_shift"]["checks"][0]["check"] == "amplitude"
    plain = write_night_outputs(night_from_stages([W, N2]), tmp_path / "plain")
    assert json.loads(storage.read_text(plain["stats"]))["domain_shift"] is None
    assert "flag_domain_shift" not in read_epochs(plain["epochs"])[0].column_names
    uris = summarize_cohort(tmp_path)
    table = pq.read_table(storage.resolve(uris["parquet"]).path)
    rows = {r["recording_id"]: r for r in table.to_pylist()}
    assert (rows["a"]["domain_shift"], rows["a"]["domain_shift_reasons"]) == (True, reason)
    assert (rows["b"]["domain_shift"], rows["b"]["domain_shift_reasons"]) == (False, None)
    assert str(table.schema.field("domain_shift").type) == "bool"
    csv_rows = storage.read_text(uris["csv"]).splitlines()
    assert "domain_shift,domain_shift_reasons" in csv_rows[0] and csv_rows[1].endswith(f"True,{reason}")


def test_summarize_cohort_rebuilds_from_stats_json(tmp_path):
    """summarize_cohort finds every night's JSON (ok, rejected, damaged) and ignores foreign files."""
    write_night_outputs(night_from_stages([W, N2, R], recording_id="n2"), tmp_path)
    write_night_outputs(night_from_stages([W, N1, W], recording_id="n1"), tmp_path)
    write_rejected_night("n3", "hypnogram covers 10 % of the signal", tmp_path)
    (tmp_path / "n4").mkdir()
    (tmp_path / "n4" / "n4_sleep_stats.json").write_text("{not json")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "other_sleep_stats.json").write_text("{}")   # not <id>/<id>_...
    uris = summarize_cohort(f"file://{tmp_path}", plots=True)
    df = pq.read_table(storage.resolve(uris["parquet"]).path).to_pandas()
    assert df["recording_id"].tolist() == ["n1", "n2", "n3", "n4"]
    assert df["status"].tolist() == ["ok", "ok", "rejected", "error"]
    assert "unreadable" in df["reason"].iloc[3]
    assert df["tst_min"].iloc[0] == 0.5
    assert (tmp_path / "cohort_summary.png").stat().st_size > 10_000


def test_duplicate_ids_in_summary_are_refused(tmp_path):
    """Two rows with one recording id are an error, not a silent overwrite."""
    with pytest.raises(ConfigError, match="more than once"):
        write_cohort_summary([rejected_row("a", "x"), rejected_row("a", "y")], tmp_path)


# -- object storage ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_outputs_on_s3(tmp_uri):
    """Every output and the cohort summary are written to and read back from an S3 server."""
    out = tmp_uri("s3", "scoring")
    night = realistic_night()
    uris = write_night_outputs(night, out, plots=True)
    assert all(u.startswith(out + "/psg-0001/psg-0001_") for u in uris.values())
    table, meta = read_epochs(uris["epochs"])
    assert table.num_rows == night.n_epochs and meta["model"]["name"] == "coresleep_tiny"
    with storage.local_copy(uris["annotations"]) as path:
        assert len(mne.read_annotations(path)) == len(stage_runs(night))
    summary = summarize_cohort(out)
    df = pq.read_table(io.BytesIO(storage.resolve(summary["parquet"]).read_bytes())).to_pandas()
    assert df["recording_id"].tolist() == ["psg-0001"]
    assert df["tst_min"].iloc[0] == night.sleep_stats().to_dict()["tst_min"]
    # the S3 listing holds exactly the night's files and the summaries
    names = sorted(loc.name for loc in storage.resolve(out).find())
    assert len(names) == len(uris) + 2


_EDFBROWSER_TOOLS = ("edfbrowser", "Xvfb", "xwininfo")


@pytest.mark.integration
@pytest.mark.skipif(not all(shutil.which(t) for t in _EDFBROWSER_TOOLS),
                    reason="needs EDFbrowser, Xvfb and xwininfo (apt-get install edfbrowser xvfb x11-utils)")
def test_edf_annotations_open_in_edfbrowser(tmp_path):
    """EDFbrowser (on a virtual X display) opens the EDF+ output as a file, with no error dialog."""
    import subprocess
    import time

    night = night_from_stages(**GAPPY)
    path = storage.resolve(write_night_outputs(night, tmp_path)["annotations"]).path
    # Xvfb picks a free display itself and writes its number to the pipe once it accepts clients:
    # no guessed display number another test run may hold, no sleep standing in for "ready".
    ready, ready_w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(ready_w), "-screen", "0", "1280x800x24"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(ready_w,))
    os.close(ready_w)
    viewer = None
    try:
        with os.fdopen(ready) as pipe:
            number = pipe.readline().strip()
        assert number.isdigit(), f"Xvfb did not start (exit status {xvfb.poll()})"
        env = {**os.environ, "DISPLAY": f":{number}", "XDG_RUNTIME_DIR": str(tmp_path)}
        viewer = subprocess.Popen(["edfbrowser", path], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=tmp_path)
        titles: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tree = subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True).stdout
            titles = [line.split('"')[1] for line in tree.splitlines() if line.count('"') >= 2]
            if any(t.endswith("- EDFbrowser") for t in titles) or "Error" in titles:
                break
            time.sleep(0.5)
        assert "Error" not in titles, titles
        assert f"{os.path.basename(path)} - EDFbrowser" in titles, titles
    finally:
        for proc in (viewer, xvfb):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=10)
