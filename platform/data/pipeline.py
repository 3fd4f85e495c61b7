"""The cohort preparation pipeline on Ray Data: manifest → one Parquet file per recording.

Layout of a prepared dataset (see ``docs/data-contract.md``)::

    <out_uri>/<profile>-<version>/
        entries.csv                  the manifest entries (with subjects), written first
        recordings/<recording_id>.parquet
        rejects/<recording_id>.json  why a recording was rejected (written as it happens)
        manifest.json                counts, class histogram, availability, rejects (written last)
        splits/<name>.json           optional, from ``somnray split``

``version`` is a short SHA-256 of (the sorted manifest entries, the profile, the data format
version): the same inputs and configuration always land in the same folder, any change lands in a
new one.  A run is resumable: a recording whose Parquet file exists is skipped, every file is
written atomically (a crash never leaves a partial file that a rerun would mistake for done), and
rejects are retried on the next run (a transient error or a fixed file then succeeds).

Ray is a thin layer here: each Ray Data task runs :func:`prepare_entry` on one manifest entry, a
plain function that can be called (and is tested) without Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow.parquet as pq

from somnray.core.constants import (
    EPOCH_SECONDS,
    SAMPLING_RATE_HZ,
    STAGE_NAMES,
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_SKIPPED,
)
from somnray.core.errors import ConfigError, RecordingError
from somnray.core.session import ensure_ray
from somnray.core.storage import StorageLocation, resolve, worker_storage_options
from somnray.core.version import somnray_version

from . import schema
from .discovery import load_manifest
from .manifest import SPLITS, ManifestEntry, format_manifest_csv, parse_manifest_csv

log = logging.getLogger(__name__)

#: Part of the dataset version hash: bump when preprocessing changes what is written for the same
#: inputs and profile (the Parquet layout has its own ``schema.FORMAT_VERSION``).
DATA_FORMAT_VERSION = f"somnray-data-{schema.FORMAT_VERSION}.1"
#: Key of the per-recording summary in each Parquet file's key/value metadata.
SUMMARY_KEY = "somnray.summary"


# -- versioning -----------------------------------------------------------------------------------
def dataset_version(entries: Sequence[ManifestEntry], profile) -> str:
    """Short (12 hex) SHA-256 of the sorted entries, the resolved profile and the format version."""
    doc = {
        "entries": sorted((e.as_dict() for e in entries), key=lambda d: d["recording_id"]),
        "profile": profile.model_dump(mode="json"),
        "format": DATA_FORMAT_VERSION,
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dataset_location(out_uri: str, profile, version: str,
                     storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """``<out_uri>/<profile.name>-<version>``."""
    return resolve(out_uri, storage_options).join(f"{profile.name}-{version}")


# -- one recording ----------------------------------------------------------------------------------
def _summary(rec) -> dict[str, Any]:
    counts = Counter(int(x) for x in rec.labels.tolist())
    mods = {}
    for m, sig in rec.signals.items():
        avail = rec.available.get(m)
        mods[m] = {"present": sig is not None,
                   "available_epochs": int(avail.sum()) if (sig is not None and avail is not None) else 0}
    return {"recording_id": rec.recording_id, "subject_id": rec.subject_id,
            "n_epochs": rec.n_epochs, "label_counts": {str(k): v for k, v in sorted(counts.items())},
            "modalities": mods, "info": rec.info}


def recording_parquet_bytes(rec, modalities: Sequence[str]) -> bytes:
    """The Parquet file of one prepared recording, with its summary in the file metadata.

    The summary (label counts, availability, non-identifying info) lets a resumed run account for
    an already-written recording by reading only the file footer.
    """
    table = schema.to_table([rec], modalities)
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema, compression="zstd", use_dictionary=False) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata({SUMMARY_KEY: json.dumps(_summary(rec), default=str)})
    return buf.getvalue()


def read_summary(loc: StorageLocation) -> dict[str, Any]:
    """The summary stored in a recording file's footer (no signal is read)."""
    with loc.open("rb") as f:
        meta = pq.read_metadata(f).metadata or {}
    raw = meta.get(SUMMARY_KEY.encode())
    if raw is None:
        raise ValueError(f"{loc.uri}: no {SUMMARY_KEY} metadata (not written by somnray)")
    return json.loads(raw)


def _status(entry: Mapping[str, Any], status: str, summary: Mapping[str, Any] | None = None,
            reason: str = "", error_type: str = "", source: str = "", seconds: float = 0.0
            ) -> dict[str, Any]:
    # Flat, fixed columns: Ray Data builds Arrow blocks from these rows, and nested dicts with
    # varying keys would not unify across blocks, so the summary travels as JSON text.
    return {
        "recording_id": entry["recording_id"],
        "subject_id": entry["subject_id"],
        "split": entry.get("split") or "",
        "status": status,
        "n_epochs": int(summary["n_epochs"]) if summary else 0,
        "summary": json.dumps(summary, default=str) if summary else "",
        "reason": reason,
        "error_type": error_type,
        "source": source,
        "seconds": float(seconds),
    }


def prepare_entry(entry: Mapping[str, Any], *, profile, dataset_uri: str,
                  storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Prepare one manifest entry into ``<dataset_uri>/recordings/<id>.parquet``.

    Never raises for a bad recording: a :class:`RecordingError` or any other exception becomes a
    ``rejected`` status (and ``rejects/<id>.json``), so one bad night never stops a cohort.

    Parameters
    ----------
    entry : mapping
        :meth:`ManifestEntry.as_dict` of the recording.
    profile : CohortProfile
        The cohort profile.
    dataset_uri : str
        The versioned dataset folder.
    storage_options : mapping, optional
        Options of the dataset's and the inputs' filesystems.

    Returns
    -------
    dict
        Status row: ``recording_id``, ``status`` (ok/skipped/rejected), ``n_epochs``, ``summary``
        (JSON), ``reason``, ``error_type``, ``source``, ``seconds``.
    """
    from .recording import prepare_recording  # the data core: MNE is imported only here

    t0 = time.monotonic()
    rid = entry["recording_id"]
    dataset = resolve(dataset_uri, storage_options)
    out = dataset.join("recordings", f"{rid}.parquet")
    reject_loc = dataset.join("rejects", f"{rid}.json")
    if out.exists():
        try:
            return _status(entry, STATUS_SKIPPED, read_summary(out), seconds=time.monotonic() - t0)
        except Exception as exc:  # unreadable footer: not ours or damaged → prepare it again
            log.warning("%s: existing file unreadable (%s); preparing it again", out.uri, exc)

    source = entry["psg"]
    try:
        hyp_uri = entry.get("hypnogram")
        if not hyp_uri and profile.annotations.format != "embedded":
            raise RecordingError(
                entry["psg"], f"no hypnogram paired with this PSG, and profile {profile.name!r} "
                f"expects separate {profile.annotations.format} hypnograms "
                f"(pairing.hypnogram_glob {profile.pairing.hypnogram_glob!r})", rid)
        psg_loc = resolve(entry["psg"], storage_options)
        hyp_loc = resolve(hyp_uri, storage_options) if hyp_uri else None
        with psg_loc.local_copy() as psg_path:
            if hyp_loc is not None:
                source = hyp_uri
                with hyp_loc.local_copy() as hyp_path:
                    source = entry["psg"]
                    rec = prepare_recording(psg_path, hyp_path, profile, recording_id=rid,
                                            subject_id=entry["subject_id"], psg_source=entry["psg"],
                                            hypnogram_source=hyp_uri)
            else:
                rec = prepare_recording(psg_path, None, profile, recording_id=rid,
                                        subject_id=entry["subject_id"], psg_source=entry["psg"],
                                        hypnogram_source=None)
        data = recording_parquet_bytes(rec, profile.modalities)
        out.atomic_write_bytes(data)
        summary = _summary(rec)
    except Exception as exc:
        if isinstance(exc, RecordingError):
            reason, err_source, etype = str(exc), exc.source, "RecordingError"
        elif isinstance(exc, FileNotFoundError):
            reason, err_source, etype = str(exc) or f"{source}: no such file", source, type(exc).__name__
        else:
            # Unexpected errors are rejected too, with their type, so one bug in one night is
            # visible in the manifest instead of killing a thousand-night run.
            reason = f"{source}: unexpected {type(exc).__name__}: {exc}"
            err_source, etype = source, type(exc).__name__
        doc = {"recording_id": rid, "subject_id": entry["subject_id"], "reason": reason,
               "error_type": etype, "source": err_source, "psg": entry["psg"],
               "hypnogram": entry.get("hypnogram"),
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            reject_loc.write_text(json.dumps(doc, indent=2) + "\n")
        except Exception as wexc:  # the reject still reaches manifest.json through the status row
            log.warning("%s: could not write reject file (%s)", reject_loc.uri, wexc)
        return _status(entry, STATUS_REJECTED, reason=reason, error_type=etype, source=err_source,
                       seconds=time.monotonic() - t0)
    if reject_loc.exists():  # a previous attempt failed; this one succeeded
        reject_loc.remove()
    return _status(entry, STATUS_OK, summary, seconds=time.monotonic() - t0)


# -- the cohort ------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    """Outcome of :func:`prepare_cohort`.

    Attributes
    ----------
    dataset_uri : str
        The versioned dataset folder.
    version : str
        Its version hash.
    total : int
        Recordings in the manifest.
    prepared, skipped, rejected, pending : int
        Written by this run; already there; rejected; not attempted (``limit``).
    rejects : list of dict
        ``recording_id``, ``reason``, ``source``, ``error_type`` per rejected recording.
    manifest : dict
        The ``manifest.json`` document.
    """

    dataset_uri: str
    version: str
    total: int
    prepared: int
    skipped: int
    rejected: int
    pending: int
    rejects: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_epochs(self) -> int:
        """Epochs in the dataset's recordings (prepared and skipped)."""
        return int(self.manifest.get("counts", {}).get("epochs", 0))

    @property
    def exit_code(self) -> int:
        """0 when every attempted recording was prepared or skipped, 2 when some were rejected."""
        return 2 if self.rejected else 0


def _check_profiles(entries: Sequence[ManifestEntry], profile, source: str) -> None:
    names = {e.profile for e in entries if e.profile}
    foreign = sorted(n for n in names if n != profile.name and
                     os.path.splitext(os.path.basename(n))[0] != profile.name)
    if foreign:
        raise ConfigError(source, [f"the manifest names profile(s) {foreign} but this run uses "
                                   f"{profile.name!r}; prepare one cohort profile per run"])


def prepare_cohort(input_uri: str, profile, out_uri: str, *, num_workers: int | None = None,
                   storage_options: Mapping[str, Any] | None = None, progress: bool = True,
                   limit: int | None = None) -> PrepareResult:
    """Prepare every recording of a cohort into a versioned Parquet dataset.

    Parameters
    ----------
    input_uri : str
        A manifest (CSV/Parquet) or a folder of recordings (paired by the profile).
    profile : CohortProfile or str
        The cohort profile, or a shipped profile name / YAML path.
    out_uri : str
        Parent of the versioned dataset folder (local path or URI).
    num_workers : int, optional
        Recordings prepared concurrently (one CPU each); default: as many as the cluster fits.
    storage_options : mapping, optional
        Filesystem options of the inputs and outputs (credentials, endpoint).
    progress : bool
        Show Ray Data's progress bars and a driver-side summary bar.
    limit : int, optional
        Prepare at most this many recordings not prepared yet (already-written ones are always
        accounted for); a later run without it completes the dataset.

    Returns
    -------
    PrepareResult
        Counts, rejects, the dataset URI and ``exit_code``.

    Raises
    ------
    ConfigError
        Unknown profile, bad URI, malformed manifest: nothing is written.
    """
    if isinstance(profile, (str, os.PathLike)):
        from .profiles import load_profile

        profile = load_profile(profile)
    if num_workers is not None and num_workers < 1:
        raise ConfigError("--workers", [f"must be >= 1, got {num_workers}"])
    if limit is not None and limit < 0:
        raise ConfigError("--limit", [f"must be >= 0, got {limit}"])
    started = time.monotonic()
    entries = load_manifest(input_uri, profile, storage_options)
    _check_profiles(entries, profile, str(input_uri))
    version = dataset_version(entries, profile)
    dataset = dataset_location(out_uri, profile, version, storage_options)
    log.info("preparing %d recording(s) of %s into %s", len(entries), profile.name, dataset.uri)

    dataset.makedirs()
    entries_loc = dataset.join("entries.csv")
    if not entries_loc.exists():
        entries_loc.write_text(format_manifest_csv(entries))

    done = {loc.name[: -len(".parquet")] for loc in dataset.join("recordings").find(".parquet")}
    already = [e for e in entries if e.recording_id in done]
    fresh = [e for e in entries if e.recording_id not in done]
    todo_fresh = fresh if limit is None else fresh[:limit]
    todo = already + todo_fresh
    pending = len(fresh) - len(todo_fresh)

    statuses = _run(todo, profile, dataset, storage_options, num_workers, progress) if todo else []

    doc = _manifest_doc(entries, statuses, profile, version, dataset, pending,
                        time.monotonic() - started)
    dataset.join("manifest.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    c = doc["counts"]
    return PrepareResult(dataset_uri=dataset.uri, version=version, total=c["total"],
                         prepared=c["prepared"], skipped=c["skipped"], rejected=c["rejected"],
                         pending=c["pending"], rejects=doc["rejected"], manifest=doc)


def _run(todo: Sequence[ManifestEntry], profile, dataset: StorageLocation,
         storage_options: Mapping[str, Any] | None, num_workers: int | None, progress: bool
         ) -> list[dict[str, Any]]:
    import ray
    from tqdm.auto import tqdm

    ensure_ray()
    uris = [dataset.uri] + [u for e in todo for u in (e.psg, e.hypnogram) if u]
    worker_opts = worker_storage_options(uris, storage_options)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # One block per recording, so the recordings spread over the task pool instead of queueing
    # behind each other in a few large blocks.
    ds = ray.data.from_items([e.as_dict() for e in todo], override_num_blocks=len(todo))
    ds = ds.map(
        prepare_entry,
        fn_kwargs={"profile": profile, "dataset_uri": dataset.uri, "storage_options": worker_opts},
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=num_workers),
    )
    statuses = []
    counts: Counter[str] = Counter()
    with tqdm(total=len(todo), desc=f"prepare {profile.name}", unit="rec", disable=not progress) as bar:
        for row in ds.iter_rows():
            row = dict(row)
            statuses.append(row)
            counts[row["status"]] += 1
            if row["status"] == STATUS_REJECTED:
                log.warning("rejected %s: %s", row["recording_id"], row["reason"])
            bar.update(1)
            bar.set_postfix(ok=counts[STATUS_OK], skipped=counts[STATUS_SKIPPED],
                            rejected=counts[STATUS_REJECTED], refresh=False)
    return statuses


def _manifest_doc(entries: Sequence[ManifestEntry], statuses: Sequence[Mapping[str, Any]], profile,
                  version: str, dataset: StorageLocation, pending: int, seconds: float
                  ) -> dict[str, Any]:
    by_status: Counter[str] = Counter(s["status"] for s in statuses)
    labels: Counter[int] = Counter()
    split_epochs: Counter[str] = Counter()
    mods = schema.order_modalities(profile.modalities)
    present = Counter()
    avail_epochs = Counter()
    total_epochs = 0
    recordings = []
    for s in sorted(statuses, key=lambda s: s["recording_id"]):
        if s["status"] == STATUS_REJECTED:
            continue
        summ = json.loads(s["summary"])
        n = int(summ["n_epochs"])
        total_epochs += n
        for k, v in summ["label_counts"].items():
            labels[int(k)] += int(v)
        if s.get("split"):
            split_epochs[s["split"]] += n
        for m in mods:
            info = summ["modalities"].get(m) or {"present": False, "available_epochs": 0}
            present[m] += int(bool(info["present"]))
            avail_epochs[m] += int(info["available_epochs"])
        warnings = (summ.get("info") or {}).get("warnings") or []
        recordings.append({"recording_id": s["recording_id"], "subject_id": s["subject_id"],
                           "n_epochs": n, "status": s["status"], "warnings": list(warnings)})
    n_ok = by_status[STATUS_OK] + by_status[STATUS_SKIPPED]
    rejected = sorted(({"recording_id": s["recording_id"], "reason": s["reason"],
                        "source": s["source"], "error_type": s["error_type"]}
                       for s in statuses if s["status"] == STATUS_REJECTED),
                      key=lambda r: r["recording_id"])
    return {
        "dataset": f"{profile.name}-{version}",
        "version": version,
        "uri": dataset.uri,
        "format": DATA_FORMAT_VERSION,
        "schema": schema.schema_metadata(mods),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "somnray_version": somnray_version(),
        "profile": profile.model_dump(mode="json"),
        "preprocessing": {
            "sampling_rate_hz": SAMPLING_RATE_HZ,
            "epoch_seconds": EPOCH_SECONDS,
            "storage_dtype": "float16",
            "normalization": profile.normalization,
            "trimming": profile.trimming.model_dump(mode="json"),
            "bands": {m: (list(c.band) if c.band else None) for m, c in profile.channels.items()},
        },
        "complete": pending == 0,
        "counts": {"total": len(entries), "prepared": by_status[STATUS_OK],
                   "skipped": by_status[STATUS_SKIPPED], "rejected": by_status[STATUS_REJECTED],
                   "pending": pending, "recordings_written": n_ok, "epochs": total_epochs},
        "class_histogram": {STAGE_NAMES[k]: labels.get(k, 0) for k in sorted(STAGE_NAMES)},
        "epochs_per_split": {p: split_epochs[p] for p in SPLITS if p in split_epochs},
        "modalities": {m: {"recordings_with_modality": present[m],
                           "recordings_fraction": (present[m] / n_ok) if n_ok else 0.0,
                           "available_epoch_fraction": (avail_epochs[m] / total_epochs)
                           if total_epochs else 0.0} for m in mods},
        "rejected": rejected,
        "recordings": recordings,
        "entries": [e.as_dict() for e in entries],
        "seconds": round(seconds, 3),
    }


# -- reading back ----------------------------------------------------------------------------------
def read_manifest(dataset_uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``manifest.json`` of a prepared dataset."""
    loc = resolve(dataset_uri, storage_options).join("manifest.json")
    if not loc.exists():
        raise ConfigError(loc.uri, ["no manifest.json: not a prepared dataset, or its preparation "
                                    "has not finished (rerun `somnray prepare` to complete it)"])
    return json.loads(loc.read_text())


def read_entries(dataset_uri: str, storage_options: Mapping[str, Any] | None = None
                 ) -> list[ManifestEntry]:
    """The manifest entries of a prepared dataset (``entries.csv``; no signal is read)."""
    loc = resolve(dataset_uri, storage_options).join("entries.csv")
    if not loc.exists():
        raise ConfigError(loc.uri, ["no entries.csv: not a prepared dataset"])
    return parse_manifest_csv(loc.read_text(), source=loc.uri)


def prepared_entries(dataset_uri: str, storage_options: Mapping[str, Any] | None = None
                     ) -> list[ManifestEntry]:
    """The entries whose recording file exists (what splits and loaders should use)."""
    ds = resolve(dataset_uri, storage_options)
    done = {loc.name[: -len(".parquet")] for loc in ds.join("recordings").find(".parquet")}
    return [e for e in read_entries(dataset_uri, storage_options) if e.recording_id in done]


def _select(dataset_uri: str, split, part: str | None,
            storage_options: Mapping[str, Any] | None) -> list[StorageLocation]:
    ds = resolve(dataset_uri, storage_options)
    files = ds.join("recordings").find(".parquet")
    if not files:
        raise ConfigError(ds.uri, ["no prepared recordings (recordings/*.parquet) found"])
    if split is None:
        return files
    if isinstance(split, str):
        if split not in SPLITS:
            raise ConfigError(ds.uri, [f"split {split!r}: expected one of {list(SPLITS)} (the "
                                       "manifest's fixed split) or a Split object with part="])
        wanted = {e.recording_id for e in read_entries(dataset_uri, storage_options)
                  if e.split == split}
    else:
        if part is None:
            raise ConfigError(ds.uri, ["a Split needs part='train', 'val' or 'test'"])
        wanted = set(split.part(part))
    return [f for f in files if f.name[: -len(".parquet")] in wanted]


def load_prepared(dataset_uri: str, split=None, part: str | None = None, *,
                  columns: Sequence[str] | None = None,
                  storage_options: Mapping[str, Any] | None = None):
    """The prepared recordings as a ``ray.data.Dataset`` (one row per recording).

    Parameters
    ----------
    dataset_uri : str
        The versioned dataset folder.
    split : Split or {"train", "val", "test"}, optional
        A :class:`~somnray.data.splits.Split` (with ``part``), or a part name of the manifest's
        fixed split column; None for every recording.
    part : {"train", "val", "test"}, optional
        Which part of a Split object.
    columns : sequence of str, optional
        Read only these columns.
    storage_options : mapping, optional
        Filesystem options.
    """
    import ray

    ensure_ray()
    files = _select(dataset_uri, split, part, storage_options)
    if not files:
        raise ConfigError(dataset_uri, [f"the split selects no prepared recording (part {part!r})"])
    fs = files[0].pyarrow_filesystem()
    return ray.data.read_parquet([f.path for f in files], filesystem=fs,
                                 columns=list(columns) if columns else None)


def iter_prepared(dataset_uri: str, split=None, part: str | None = None, *,
                  columns: Sequence[str] | None = None,
                  storage_options: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Ray-free reader: yields each recording as :func:`somnray.data.schema.row_to_arrays` dicts."""
    for loc in _select(dataset_uri, split, part, storage_options):
        yield from schema.read_recording_file(loc, columns=columns)
