"""Per-recording scoring outputs and the cohort summary, written through :mod:`somnray.core.storage`.

Every night gets one folder ``<out>/<recording_id>/`` holding (``docs/outputs.md`` describes each
column):

=========================================  =======================================================
file                                       content
=========================================  =======================================================
``<id>_epochs.parquet``                    one row per scored epoch: stage, probabilities,
                                           confidence, margin, entropy, modality availability,
                                           what was used, quality flags
``<id>_hypnogram.csv``                     ``epoch,onset_s,stage`` with stage names
``<id>_annotations.edf``                   EDF+C with only an annotation signal ("Sleep stage N2"
                                           events, equal consecutive stages merged), anonymous
``<id>_events.tsv`` + ``<id>_events.json`` BIDS-style events (one per epoch) and their sidecar
``<id>_sleep_stats.json``                  AASM statistics, modalities, quality counts, confidence,
                                           model
``<id>_hypnogram.png``                     hypnogram + hypnodensity picture (when asked)
=========================================  =======================================================

Files are named by the manifest ``recording_id`` only, never by EDF header fields.  Each file is
rendered in memory and written atomically (readers see the old or the new file, never a part), and
the statistics JSON is written last: its presence marks a night whose outputs are complete, which
is what :func:`summarize_cohort` reads to rebuild the cohort table after a resumed run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from somnray.core.constants import STAGES
from somnray.core.errors import ConfigError, RecordingError
from somnray.core.storage import StorageLocation, resolve
from somnray.core.version import somnray_version

from .scored import UNCERTAINTY_COLUMNS, ModelInfo, ScoredNight, check_recording_id
from .stats import UNSCORED, SleepStats

log = logging.getLogger(__name__)

#: Version of the layout of the files below; bumped when a column or key changes meaning.
OUTPUT_SCHEMA_VERSION = 1
#: ``schema`` value of the per-night statistics JSON.
STATS_SCHEMA = f"somnray.sleep_stats/{OUTPUT_SCHEMA_VERSION}"

#: File name suffix of each output kind (the file is ``<recording_id><suffix>``).
OUTPUT_SUFFIXES: dict[str, str] = {
    "epochs": "_epochs.parquet",
    "hypnogram": "_hypnogram.csv",
    "annotations": "_annotations.edf",
    "events": "_events.tsv",
    "events_sidecar": "_events.json",
    "plot": "_hypnogram.png",
    "stats": "_sleep_stats.json",
}
#: Cohort summary file names, in the output root.
COHORT_FILES = {"csv": "cohort_summary.csv", "parquet": "cohort_summary.parquet",
                "plot": "cohort_summary.png"}

#: EDF+ annotation text of each stage code ("Sleep stage ?" for unscored): the spelling of
#: Sleep-EDF/EDFbrowser exports that the shipped ``generic`` cohort profile reads back.
EDF_STAGE_TEXT = {0: "Sleep stage W", 1: "Sleep stage N1", 2: "Sleep stage N2",
                  3: "Sleep stage N3", 4: "Sleep stage R", UNSCORED: "Sleep stage ?"}
#: Per-epoch probability columns, in class order.
PROB_COLUMNS = tuple(f"prob_{name}" for name in STAGES)
#: Columns of the BIDS events TSV, in order.
EVENTS_COLUMNS = ("onset", "duration", "trial_type", "stage", "value", "probability")


def output_name(recording_id: str, kind: str) -> str:
    """File name of output ``kind`` (a key of :data:`OUTPUT_SUFFIXES`) of a recording."""
    if kind not in OUTPUT_SUFFIXES:
        raise ConfigError("output kind", [f"unknown kind {kind!r}; expected one of {list(OUTPUT_SUFFIXES)}"])
    return check_recording_id(recording_id) + OUTPUT_SUFFIXES[kind]


def night_folder(out_uri: str | StorageLocation, recording_id: str,
                 storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The folder ``<out>/<recording_id>/`` of a night."""
    return resolve(out_uri, storage_options).join(check_recording_id(recording_id))


def _fmt_seconds(x: float) -> str:
    # Fixed-point, no exponent, no trailing zeros: "30", "30.5", "86400".
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# -- per-epoch table -----------------------------------------------------------------------------
def _night_metadata(night: ScoredNight) -> dict[str, Any]:
    return {
        "schema_version": OUTPUT_SCHEMA_VERSION,
        "recording_id": night.recording_id,
        "epoch_s": night.epoch_s,
        "start_offset_s": night.start_offset_s,
        "modalities": list(night.modalities),
        "stage_codes": {**{name: code for code, name in enumerate(STAGES)}, "UNS": UNSCORED},
        "low_confidence_threshold": night.low_confidence_threshold,
        "calibration": dict(night.calibration),
        "model": night.model.to_dict(),
        "lineage": dict(night.lineage),
        "domain_shift": _domain_shift(night),
    }


def _domain_shift(night: ScoredNight) -> dict[str, Any] | None:
    return None if night.domain_shift is None else night.domain_shift.to_dict()


def epochs_table(night: ScoredNight) -> pa.Table:
    """The per-epoch table of a night (the content of ``<id>_epochs.parquet``).

    Key/value metadata: ``somnray`` (JSON: recording id, epoch length, modalities, stage codes,
    low-confidence threshold, calibration, model, lineage, domain-shift check) and
    ``somnray_version``.  A night whose domain was checked gets ``flag_domain_shift``, the night's
    flag repeated on every epoch.
    """
    cols: dict[str, pa.Array] = {
        "epoch": pa.array(night.epoch_index, pa.int32()),
        "onset_s": pa.array(night.onset_s, pa.float64()),
        "stage": pa.array(night.stages, pa.int8()),
        "stage_name": pa.array(night.stage_names, pa.string()),
    }
    for j, name in enumerate(PROB_COLUMNS):
        cols[name] = pa.array(night.probabilities[:, j], pa.float32(), from_pandas=True)
    uncertainty = night.uncertainty()
    for name in UNCERTAINTY_COLUMNS:
        cols[name] = pa.array(uncertainty[name], pa.float32(), from_pandas=True)
    for j, m in enumerate(night.modalities):
        cols[f"available_{m}"] = pa.array(night.available[:, j], pa.bool_())
    cols["modalities_used"] = pa.array(night.modalities_used.astype(str).tolist(), pa.string())
    for flag, values in night.quality.items():
        cols[f"flag_{flag}"] = pa.array(values, pa.bool_())
    if night.domain_shift is not None:
        cols["flag_domain_shift"] = pa.array(np.full(night.n_epochs, night.domain_shift.flag), pa.bool_())
    table = pa.table(cols)
    meta = {b"somnray": json.dumps(_night_metadata(night)).encode(),
            b"somnray_version": night.model.somnray_version.encode()}
    return table.replace_schema_metadata(meta)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_epochs(uri: str | StorageLocation,
                storage_options: Mapping[str, Any] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Read a ``<id>_epochs.parquet`` back: the table and its ``somnray`` metadata dict."""
    loc = resolve(uri, storage_options)
    try:
        table = pq.read_table(io.BytesIO(loc.read_bytes()))
        meta = json.loads((table.schema.metadata or {})[b"somnray"])
    except (pa.ArrowInvalid, KeyError, ValueError) as exc:
        raise ConfigError(loc.uri, [f"not a somnray per-epoch Parquet file ({exc})"]) from exc
    return table, meta


def epochs_probabilities(table: pa.Table) -> np.ndarray:
    """``(n, 5)`` float64 class probabilities of a per-epoch table (NaN rows where null)."""
    return np.stack([np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float64)
                     for c in PROB_COLUMNS], axis=1)


def epochs_uncertainty(table: pa.Table) -> dict[str, np.ndarray]:
    """``confidence``, ``margin`` and ``entropy`` of every epoch of a per-epoch table (float64).

    The table's own columns when it has all three (the scorer wrote them, calibrated); for
    outputs written before scorers recorded them, the scorer's definitions
    (:func:`somnray.scoring.calibration.epoch_uncertainty`) applied to ``prob_W`` … ``prob_REM``.
    Unscored epochs get NaN.
    """
    if all(c in table.column_names for c in UNCERTAINTY_COLUMNS):
        return {c: np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float64)
                for c in UNCERTAINTY_COLUMNS}
    from somnray.scoring.calibration import epoch_uncertainty

    return {k: v.astype(np.float64) for k, v in epoch_uncertainty(epochs_probabilities(table)).items()}


# -- hypnogram CSV -------------------------------------------------------------------------------
def hypnogram_csv(night: ScoredNight) -> str:
    """``epoch,onset_s,stage`` rows (stage names W N1 N2 N3 REM, UNS for unscored)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("epoch", "onset_s", "stage"))
    for idx, onset, name in zip(night.epoch_index.tolist(), night.onset_s.tolist(), night.stage_names):
        w.writerow((idx, _fmt_seconds(onset), name))
    return out.getvalue()


# -- EDF+ annotations ----------------------------------------------------------------------------
def stage_runs(night: ScoredNight) -> list[tuple[float, float, int]]:
    """``(onset_s, duration_s, stage)`` of each run of equal stages on contiguous epochs.

    A gap in ``epoch_index`` ends a run (nothing is claimed about epochs that were not scored);
    unscored epochs form runs of their own (stage -1).
    """
    runs: list[tuple[float, float, int]] = []
    if night.n_epochs == 0:
        return runs
    idx, st = night.epoch_index, night.stages.astype(np.int64)
    breaks = np.flatnonzero((np.diff(st) != 0) | (np.diff(idx) != 1)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [idx.size]))
    for s, e in zip(starts.tolist(), ends.tolist()):
        onset = night.start_offset_s + float(idx[s]) * night.epoch_s
        runs.append((onset, float(e - s) * night.epoch_s, int(st[s])))
    return runs


#: Sampling rate of the EDF+ file's ``Hypnogram`` signal: one stage value a second, so that any
#: whole-second start offset of the epoch grid is represented exactly.
HYPNOGRAM_SIGNAL_HZ = 1


def hypnogram_signal(night: ScoredNight) -> tuple[np.ndarray, float]:
    """The night as a 1-Hz stage-code trace from the recording start, and its record length.

    Second ``t`` gets the stage (0 W … 4 REM) of the scored epoch covering ``t + 0.5``; -1 where no
    scored epoch covers it (before the first epoch, in gaps, unscored epochs). The trace is padded
    with -1 to whole data records of ``epoch_s`` seconds.
    """
    record_s = float(night.epoch_s)
    end_s = night.start_offset_s + float(night.epoch_index[-1] + 1) * night.epoch_s
    n_records = int(math.ceil(end_s / record_s - 1e-9))
    per_record = int(round(record_s * HYPNOGRAM_SIGNAL_HZ))
    t = (np.arange(n_records * per_record) + 0.5) / HYPNOGRAM_SIGNAL_HZ
    position = np.floor((t - night.start_offset_s) / night.epoch_s).astype(np.int64)
    by_position = np.full(int(night.epoch_index[-1]) + 1, UNSCORED, dtype=np.int64)
    by_position[night.epoch_index] = night.stages.astype(np.int64)
    inside = (position >= 0) & (position < by_position.size)
    trace = np.where(inside, by_position[np.clip(position, 0, by_position.size - 1)], UNSCORED)
    return trace.astype(np.float64), record_s


def edf_annotations_bytes(night: ScoredNight,
                          marks: Sequence[tuple[float, float, str]] = ()) -> bytes:
    """An EDF+C file of the night's stages: stage annotations plus a ``Hypnogram`` signal.

    ``marks`` are further ``(onset_s, duration_s, text)`` annotations written after the stages
    (``somnray review`` marks the epochs a technician should look at this way).

    The annotations (one per run of equal stages, :func:`stage_runs`) are what MNE, somnray's
    ``edf_annotations`` reader and EDFbrowser's annotation list read. The ``Hypnogram`` signal
    (:func:`hypnogram_signal`, stage codes -1..4 at 1 Hz, 30-s data records) is there because
    EDFbrowser refuses to open an annotation-only file with data records of duration 0 (the
    Sleep-EDF hypnogram layout; it only imports those onto a PSG): with it, the file opens on
    its own and shows the hypnogram as a trace.

    The header is anonymous as the EDF+ specification prescribes for unknown fields: patient
    ``X X X X``, recording ``Startdate X X X X``, start date 01.01.85 and start time 00.00.00
    (nothing is copied from the scored recording). Onsets are therefore seconds from the
    recording start.
    """
    from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording

    anns = [EdfAnnotation(onset, duration, EDF_STAGE_TEXT[stage])
            for onset, duration, stage in stage_runs(night)]
    anns += [EdfAnnotation(onset, duration, text) for onset, duration, text in marks]
    if not anns:
        raise RecordingError("EDF+ annotations", "the night has no epochs to annotate",
                             night.recording_id)
    trace, record_s = hypnogram_signal(night)
    signal = EdfSignal(trace, HYPNOGRAM_SIGNAL_HZ, label="Hypnogram", physical_dimension="stage",
                       physical_range=(UNSCORED, 4), digital_range=(UNSCORED, 4),
                       prefiltering="-1 unscored 0 W 1 N1 2 N2 3 N3 4 REM")
    # EDF+ onsets cannot be negative; a start offset only ever moves epochs later.
    edf = Edf([signal], patient=Patient(), recording=Recording(), data_record_duration=record_s,
              annotations=anns)
    buf = io.BytesIO()
    edf.write(buf)
    return buf.getvalue()


# -- BIDS events ---------------------------------------------------------------------------------
def bids_events_tsv(night: ScoredNight) -> str:
    """BIDS-style events: one row per scored epoch (``n/a`` marks a missing value)."""
    out = io.StringIO()
    w = csv.writer(out, delimiter="\t", lineterminator="\n")
    w.writerow(EVENTS_COLUMNS)
    maxp = night.probabilities.max(axis=1) if night.n_epochs else np.zeros(0)
    for onset, code, name, p in zip(night.onset_s.tolist(), night.stages.tolist(),
                                    night.stage_names, maxp.tolist()):
        prob = "n/a" if code == UNSCORED or not math.isfinite(p) else f"{p:.4f}"
        w.writerow((_fmt_seconds(onset), _fmt_seconds(night.epoch_s), EDF_STAGE_TEXT[code],
                    name, code, prob))
    return out.getvalue()


def bids_events_sidecar(night: ScoredNight) -> dict[str, Any]:
    """The JSON sidecar describing each column of :func:`bids_events_tsv`."""
    return {
        "onset": {"LongName": "Epoch onset",
                  "Description": "Onset of the 30-s scoring epoch, in seconds from the start of "
                                 "the recording.", "Units": "s"},
        "duration": {"LongName": "Epoch duration", "Description": "Length of the scoring epoch.",
                     "Units": "s"},
        "trial_type": {"LongName": "Sleep stage annotation",
                       "Description": "Sleep stage in the EDF+ annotation spelling (AASM stages).",
                       "Levels": {text: f"stage code {code}" for code, text in EDF_STAGE_TEXT.items()}},
        "stage": {"LongName": "Sleep stage",
                  "Description": "Short stage name (AASM).",
                  "Levels": {"W": "wake", "N1": "NREM stage 1", "N2": "NREM stage 2",
                             "N3": "NREM stage 3 (slow-wave sleep)", "REM": "REM sleep",
                             "UNS": "unscored: no usable signal or no model output"}},
        "value": {"LongName": "Stage code",
                  "Description": "Integer stage code: 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored."},
        "probability": {"LongName": "Stage probability",
                        "Description": "Model probability of the stage given (the maximum class "
                                       "probability of the epoch, calibrated when the model has a "
                                       "fitted temperature); n/a for unscored epochs.",
                        "Units": "1"},
        "GeneratedBy": [{"Name": "somnray", "Version": night.model.somnray_version,
                         "Description": f"automatic sleep staging with model {night.model.name}"}],
        "ScoringModel": night.model.to_dict(),
    }


# -- statistics JSON -----------------------------------------------------------------------------
def stats_document(night: ScoredNight, stats: SleepStats | None = None, *,
                   lights_off_s: float | None = None, lights_on_s: float | None = None,
                   files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The content of ``<id>_sleep_stats.json`` (see ``docs/outputs.md``)."""
    if stats is None:
        stats = night.sleep_stats(lights_off_s=lights_off_s, lights_on_s=lights_on_s)
    return {
        "schema": STATS_SCHEMA,
        "recording_id": night.recording_id,
        "status": "ok",
        "reason": None,
        "epoch_s": night.epoch_s,
        "start_offset_s": night.start_offset_s,
        "n_epochs": night.n_epochs,
        "lights_off_s": lights_off_s,
        "lights_on_s": lights_on_s,
        "stats": stats.to_dict(),
        "modalities": {
            "names": list(night.modalities),
            "available_fraction": {m: round(v, 6) for m, v in night.available_fraction().items()},
            "used_epochs": night.modalities_used_counts(),
            "channels": dict(night.channels),
        },
        "quality": {
            "low_confidence_threshold": night.low_confidence_threshold,
            "flag_epochs": {k: int(v.sum()) for k, v in night.quality.items()},
        },
        "confidence": night.confidence_summary(),
        "model": night.model.to_dict(),
        "lineage": dict(night.lineage),
        "domain_shift": _domain_shift(night),
        "files": dict(files or {}),
    }


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()


# -- one night -----------------------------------------------------------------------------------
def write_night_outputs(night: ScoredNight, out_uri: str | StorageLocation, *, plots: bool = False,
                        lights_off_s: float | None = None, lights_on_s: float | None = None,
                        storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write every output of a night to ``<out_uri>/<recording_id>/``.

    Parameters
    ----------
    night : ScoredNight
        The scoring.
    out_uri : str or StorageLocation
        Output root (local folder, ``file://``, ``s3://bucket/prefix``, ...).
    plots : bool
        Also write the hypnogram/hypnodensity PNG.
    lights_off_s, lights_on_s : float, optional
        Lights-off/on in seconds from the recording start, for the statistics.
    storage_options : mapping, optional
        fsspec options of a remote ``out_uri``.

    Returns
    -------
    dict of str to str
        URI of each file written, keyed by kind (see :data:`OUTPUT_SUFFIXES`).

    Notes
    -----
    Idempotent: a rerun overwrites each file atomically.  All files are rendered before the
    first one is written, so a rendering error leaves the previous outputs untouched; the
    statistics JSON is written last and marks the set as complete.
    """
    folder = night_folder(out_uri, night.recording_id, storage_options)
    if night.n_epochs == 0:
        raise RecordingError("scored night", "no epochs were scored: record the night with "
                             "write_rejected_night instead", night.recording_id)
    stats = night.sleep_stats(lights_off_s=lights_off_s, lights_on_s=lights_on_s)
    rendered: dict[str, bytes] = {
        "epochs": _parquet_bytes(epochs_table(night)),
        "hypnogram": hypnogram_csv(night).encode(),
        "annotations": edf_annotations_bytes(night),
        "events": bids_events_tsv(night).encode(),
        "events_sidecar": _json_bytes(bids_events_sidecar(night)),
    }
    if plots:
        from .plots import night_png

        rendered["plot"] = night_png(night, stats=stats)
    names = {kind: output_name(night.recording_id, kind) for kind in (*rendered, "stats")}
    rendered["stats"] = _json_bytes(stats_document(night, stats, lights_off_s=lights_off_s,
                                                   lights_on_s=lights_on_s, files=names))
    uris: dict[str, str] = {}
    for kind, data in rendered.items():  # "stats" was inserted last: it is written last
        loc = folder.join(names[kind])
        loc.atomic_write_bytes(data)
        uris[kind] = loc.uri
    log.info("wrote %d outputs of %s to %s", len(uris), night.recording_id, folder.uri)
    return uris


def write_rejected_night(recording_id: str, reason: str, out_uri: str | StorageLocation, *,
                         storage_options: Mapping[str, Any] | None = None) -> str:
    """Record that a recording could not be scored; returns the statistics-JSON URI.

    The night's ``<id>_sleep_stats.json`` gets ``status: "rejected"`` and the reason, and any
    outputs of an earlier successful run are removed so the folder never contradicts its status.
    ``reason`` must not contain EDF header fields (pass the :class:`RecordingError` reason).
    """
    folder = night_folder(out_uri, recording_id, storage_options)
    for kind in OUTPUT_SUFFIXES:
        if kind != "stats":
            folder.join(output_name(recording_id, kind)).remove()
    doc = {"schema": STATS_SCHEMA, "recording_id": recording_id, "status": "rejected",
           "reason": str(reason), "stats": None, "modalities": None, "quality": None,
           "model": None, "files": {}}
    loc = folder.join(output_name(recording_id, "stats"))
    loc.atomic_write_bytes(_json_bytes(doc))
    return loc.uri


# -- cohort summary ------------------------------------------------------------------------------
_STATS_FIELDS = tuple(f.name for f in fields(SleepStats))
_HEAD = ("recording_id", "status", "reason", "n_epochs")
_TAIL = ("modalities_used_main", "model_name", "model_checkpoint_uri", "somnray_version",
         "model_weights_sha256", "model_registered", "input_sha256", "stride")
#: Per-night confidence columns (the statistics JSON's ``confidence`` section).
_CONFIDENCE = ("mean_confidence", "low_confidence_fraction", "expected_errors")
#: The night's domain-shift flag and its reasons (``; ``-joined), after the lineage.
_DOMAIN = ("domain_shift", "domain_shift_reasons")


def summary_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One flat cohort-summary row from a statistics document (:func:`stats_document`).

    Columns: ``recording_id``, ``status``, ``reason``, ``n_epochs``, every statistic,
    ``available_<m>`` (fraction of epochs), ``flag_<f>`` (fraction of epochs flagged),
    ``modalities_used_main`` (most frequent label), model name / checkpoint / somnray version,
    and the lineage: ``model_weights_sha256``, ``model_registered`` (``models:/NAME/VERSION``),
    ``input_sha256``, ``stride``; ``mean_confidence``, ``low_confidence_fraction`` and
    ``expected_errors`` (null for nights scored before they were recorded); then ``domain_shift``
    (the night lies outside the model's training data; null when not checked) and
    ``domain_shift_reasons``.
    """
    row: dict[str, Any] = {"recording_id": doc["recording_id"], "status": doc.get("status", "ok"),
                           "reason": doc.get("reason"), "n_epochs": doc.get("n_epochs")}
    stats = doc.get("stats") or {}
    row.update({k: stats.get(k) for k in _STATS_FIELDS})
    mods = doc.get("modalities") or {}
    for m, frac in (mods.get("available_fraction") or {}).items():
        row[f"available_{m}"] = frac
    n = doc.get("n_epochs") or 0
    for flag, count in ((doc.get("quality") or {}).get("flag_epochs") or {}).items():
        row[f"flag_{flag}"] = round(count / n, 6) if n else None
    used = mods.get("used_epochs") or {}
    row["modalities_used_main"] = next(iter(used), None)
    model = doc.get("model") or {}
    row["model_name"] = model.get("name")
    row["model_checkpoint_uri"] = model.get("checkpoint_uri")
    row["somnray_version"] = model.get("somnray_version")
    row["model_weights_sha256"] = model.get("weights_sha256")
    row["model_registered"] = (model.get("registered_model") or {}).get("uri")
    lineage = doc.get("lineage") or {}
    row["input_sha256"] = lineage.get("input_sha256")
    row["stride"] = lineage.get("stride")
    confidence = doc.get("confidence") or {}
    row.update({k: confidence.get(k) for k in _CONFIDENCE})
    domain = doc.get("domain_shift") or {}
    row["domain_shift"] = domain.get("flag")
    row["domain_shift_reasons"] = "; ".join(domain.get("reasons") or []) or None
    return row


def rejected_row(recording_id: str, reason: str) -> dict[str, Any]:
    """A cohort-summary row for a recording that was not scored."""
    return summary_row({"recording_id": recording_id, "status": "rejected", "reason": reason})


def _columns(rows: list[Mapping[str, Any]]) -> list[str]:
    keys: set[str] = set().union(*(r.keys() for r in rows)) if rows else set()
    known = [*_HEAD, *_STATS_FIELDS]
    avail = sorted(k for k in keys if k.startswith("available_"))
    flags = sorted(k for k in keys if k.startswith("flag_"))
    extra = sorted(keys - set(known) - set(avail) - set(flags) - set(_TAIL) - set(_DOMAIN) - set(_CONFIDENCE))
    return [*known, *avail, *flags, *_TAIL, *_CONFIDENCE, *_DOMAIN, *extra]


def _column_type(name: str) -> pa.DataType | None:
    if name == "stride":
        return pa.int64()
    if name == "domain_shift":
        return pa.bool_()
    if name in ("recording_id", "status", "reason", "domain_shift_reasons", *_TAIL):
        return pa.string()
    if name.startswith(("available_", "flag_")) or name in _CONFIDENCE:
        return pa.float64()
    if name in _STATS_FIELDS:
        ann = SleepStats.__dataclass_fields__[name].type
        return pa.int64() if str(ann).startswith("int") else pa.float64()
    if name == "n_epochs":
        return pa.int64()
    return None  # caller-added column: let Arrow infer


def cohort_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """The cohort summary as an Arrow table (one row per recording, sorted by id)."""
    rows = sorted((dict(r) for r in rows), key=lambda r: str(r.get("recording_id")))
    ids = [r.get("recording_id") for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError("cohort summary", [f"recording_id(s) {dup} appear more than once"])
    arrays, names = [], []
    for col in _columns(rows):
        values = [r.get(col) for r in rows]
        arrays.append(pa.array(values, type=_column_type(col)))
        names.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def _csv_text(table: pa.Table) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow(["" if v is None else v for v in row.values()])
    return out.getvalue()


def write_cohort_summary(rows: Iterable[Mapping[str, Any]], out_uri: str | StorageLocation, *,
                         plots: bool = False,
                         storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write ``cohort_summary.csv`` and ``cohort_summary.parquet`` (and the PNG when asked).

    Parameters
    ----------
    rows : iterable of mapping
        One row per recording, as built by :func:`summary_row` / :func:`rejected_row`.
    out_uri : str or StorageLocation
        Output root (the folder holding the per-recording folders).
    plots : bool
        Also write ``cohort_summary.png`` (distributions over the nights scored ``ok``).

    Returns
    -------
    dict of str to str
        URIs keyed ``csv``, ``parquet`` (and ``plot``).
    """
    root = resolve(out_uri, storage_options)
    table = cohort_table(rows)
    meta = {b"somnray": json.dumps({"schema_version": OUTPUT_SCHEMA_VERSION}).encode(),
            b"somnray_version": somnray_version().encode()}
    rendered = {"csv": _csv_text(table).encode(),
                "parquet": _parquet_bytes(table.replace_schema_metadata(meta))}
    if plots:
        from .plots import cohort_png

        rendered["plot"] = cohort_png(table.to_pylist())
    uris = {}
    for kind, data in rendered.items():
        loc = root.join(COHORT_FILES[kind])
        loc.atomic_write_bytes(data)
        uris[kind] = loc.uri
    return uris


def read_stats_documents(out_uri: str | StorageLocation, *,
                         storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every ``<out>/<id>/<id>_sleep_stats.json`` below ``out_uri``, parsed, sorted by id.

    A file that cannot be parsed yields a document with ``status: "error"`` and the reason, so
    one damaged file does not hide the rest of the cohort.
    """
    root = resolve(out_uri, storage_options)
    suffix = OUTPUT_SUFFIXES["stats"]
    docs = []
    for loc in root.find(suffix):
        rid = loc.parent.name
        # Only <root>/<id>/<id>_sleep_stats.json: anything else is not one of our nights.
        if loc.name != rid + suffix or loc.parent.parent.path.rstrip("/") != root.path.rstrip("/"):
            continue
        try:
            doc = json.loads(loc.read_text())
            found = doc.get("recording_id") if isinstance(doc, dict) else None
            if found != rid:
                raise ValueError(f"recording_id {found!r} does not match its folder {rid!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable statistics file (%s)", loc.uri, exc)
            doc = {"recording_id": rid, "status": "error",
                   "reason": f"unreadable {posixpath.basename(loc.path)}: {exc}"}
        docs.append(doc)
    return docs


def summarize_cohort(out_uri: str | StorageLocation, *, plots: bool = False,
                     storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Rebuild the cohort summary from the per-recording statistics JSONs under ``out_uri``.

    Used at the end of a cohort run and after a resumed one: the table always reflects every
    night whose outputs are complete, whichever run wrote them.
    """
    docs = read_stats_documents(out_uri, storage_options=storage_options)
    return write_cohort_summary([summary_row(d) for d in docs], out_uri, plots=plots,
                                storage_options=storage_options)


__all__ = [
    "COHORT_FILES", "EDF_STAGE_TEXT", "EVENTS_COLUMNS", "OUTPUT_SUFFIXES", "PROB_COLUMNS",
    "ModelInfo", "ScoredNight", "bids_events_sidecar", "bids_events_tsv", "cohort_table",
    "edf_annotations_bytes", "epochs_probabilities", "epochs_table", "epochs_uncertainty", "hypnogram_csv", "night_folder", "output_name",
    "read_epochs", "read_stats_documents", "rejected_row", "stage_runs", "stats_document",
    "summarize_cohort", "summary_row", "write_cohort_summary", "write_night_outputs",
    "write_rejected_night",
]
