"""The cohort preparation pipeline on Ray Data: manifest → one Parquet file per recording.

The layout of what it writes, and every read and write of it, belong to
:class:`~somnray.data.dataset.PreparedDataset`; this module only runs the preparation: one Ray Data
task per manifest entry (:func:`prepare_entry`), progress, and the ``manifest.json`` summary of the
run.  A run is resumable: a recording whose Parquet file exists is skipped, and rejects are
retried on the next run (a transient error or a fixed file then succeeds).

:func:`prepare_entry` is a plain function that can be called (and is tested) without Ray.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from somnray.core.constants import (
    EPOCH_SECONDS,
    SAMPLING_RATE_HZ,
    STAGE_NAMES,
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_SKIPPED,
)
from somnray.core.errors import ConfigError, RecordingError, reject_reason
from somnray.core.session import ensure_ray
from somnray.core.storage import resolve, worker_storage_options
from somnray.core.version import somnray_version

from . import schema
from .dataset import DATA_FORMAT_VERSION, PreparedDataset
from .discovery import input_folder, load_manifest, recorded_entry
from .manifest import LIGHTS_COLUMNS, SPLITS, ManifestEntry

log = logging.getLogger(__name__)


# -- one recording ----------------------------------------------------------------------------------
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
    """Prepare one manifest entry into its recording file of the dataset.

    Never raises for a bad recording: a :class:`RecordingError` or any other exception becomes a
    ``rejected`` status (and a reject file), so one bad night never stops a cohort.

    Parameters
    ----------
    entry : mapping
        :meth:`ManifestEntry.as_dict` of the recording; optional ``psg_name`` and
        ``hypnogram_name`` are how messages and reject files name its files (default: the URIs).
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
    dataset = PreparedDataset.at(dataset_uri, storage_options)
    if dataset.has_recording(rid):
        try:
            return _status(entry, STATUS_SKIPPED, dataset.summary(rid), seconds=time.monotonic() - t0)
        except Exception as exc:  # unreadable footer: not ours or damaged → prepare it again
            log.warning("%s: existing file unreadable (%s); preparing it again",
                        dataset.recording_uri(rid), exc)

    psg_name = entry.get("psg_name") or entry["psg"]
    source = psg_name
    try:
        hyp_uri = entry.get("hypnogram")
        hyp_name = entry.get("hypnogram_name") or hyp_uri
        # embedded and edf_signal scorings may live inside the PSG itself
        if not hyp_uri and profile.annotations.format not in ("embedded", "edf_signal"):
            raise RecordingError(
                psg_name, f"no hypnogram paired with this PSG, and profile {profile.name!r} "
                f"expects separate {profile.annotations.format} hypnograms "
                f"(pairing.hypnogram_glob {profile.pairing.hypnogram_glob!r})", rid)
        psg_loc = resolve(entry["psg"], storage_options)
        hyp_loc = resolve(hyp_uri, storage_options) if hyp_uri else None
        with psg_loc.local_copy() as psg_path:
            if hyp_loc is not None:
                source = hyp_name
                with hyp_loc.local_copy() as hyp_path:
                    source = psg_name
                    rec = prepare_recording(psg_path, hyp_path, profile, recording_id=rid,
                                            subject_id=entry["subject_id"], psg_source=psg_name,
                                            hypnogram_source=hyp_name)
            else:
                rec = prepare_recording(psg_path, None, profile, recording_id=rid,
                                        subject_id=entry["subject_id"], psg_source=psg_name,
                                        hypnogram_source=None)
        summary = dataset.write_recording(rec, profile.modalities)
    except Exception as exc:
        # Unexpected errors are rejected too, with their type, so one bug in one night is visible
        # in the manifest instead of killing a thousand-night run.
        reason, etype = reject_reason(exc, source)
        err_source = exc.source if isinstance(exc, RecordingError) else source
        doc = {"recording_id": rid, "subject_id": entry["subject_id"], "reason": reason,
               "error_type": etype, "source": err_source, "psg": psg_name,
               "hypnogram": entry.get("hypnogram_name") or entry.get("hypnogram"),
               "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            dataset.write_reject(doc)
        except Exception as wexc:  # the reject still reaches manifest.json through the status row
            log.warning("%s: could not write the reject file of %s (%s)", dataset.uri, rid, wexc)
        return _status(entry, STATUS_REJECTED, reason=reason, error_type=etype, source=err_source,
                       seconds=time.monotonic() - t0)
    dataset.clear_reject(rid)  # a previous attempt may have failed; this one succeeded
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
    def warnings(self) -> list[dict[str, str]]:
        """``recording_id`` and ``warning``, one per warning of a recording in the dataset."""
        return [{"recording_id": r["recording_id"], "warning": w}
                for r in self.manifest.get("recordings", []) for w in r["warnings"]]

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
                   limit: int | None = None, hypnogram: str | None = None) -> PrepareResult:
    """Prepare every recording of a cohort into a versioned Parquet dataset.

    Parameters
    ----------
    input_uri : str
        A manifest (CSV/Parquet), a folder of recordings (paired by the profile), or one EDF/BDF
        file.
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
    hypnogram : str, optional
        The scoring file when ``input_uri`` is one EDF/BDF file (default: the file the profile's
        pairing rules pair with it, if any).

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
    entries = load_manifest(input_uri, profile, storage_options, hypnogram=hypnogram)
    _check_profiles(entries, profile, str(input_uri))
    # Records name the cohort's files relative to its folder, never by absolute path.
    folder = input_folder(input_uri, storage_options)
    recorded = {e.recording_id: recorded_entry(e, folder) for e in entries}
    dataset = PreparedDataset.create(out_uri, profile, entries, storage_options,
                                     recorded=list(recorded.values()))
    version = dataset.version
    log.info("preparing %d recording(s) of %s into %s", len(entries), profile.name, dataset.uri)

    done = set(dataset.recording_ids())
    already = [e for e in entries if e.recording_id in done]
    fresh = [e for e in entries if e.recording_id not in done]
    todo_fresh = fresh if limit is None else fresh[:limit]
    todo = already + todo_fresh
    pending = len(fresh) - len(todo_fresh)

    statuses = _run(todo, recorded, profile, dataset, storage_options, num_workers, progress) if todo else []

    doc = manifest_document(list(recorded.values()), statuses, profile, version, dataset, pending,
                        time.monotonic() - started)
    dataset.write_manifest(doc)
    c = doc["counts"]
    return PrepareResult(dataset_uri=dataset.uri, version=version, total=c["total"],
                         prepared=c["prepared"], skipped=c["skipped"], rejected=c["rejected"],
                         pending=c["pending"], rejects=doc["rejected"], manifest=doc)


def _run(todo: Sequence[ManifestEntry], recorded: Mapping[str, ManifestEntry], profile,
         dataset: PreparedDataset, storage_options: Mapping[str, Any] | None,
         num_workers: int | None, progress: bool) -> list[dict[str, Any]]:
    import ray
    from tqdm.auto import tqdm

    ensure_ray()
    uris = [dataset.uri] + [u for e in todo for u in (e.psg, e.hypnogram) if u]
    worker_opts = worker_storage_options(uris, storage_options)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # One block per recording, so the recordings spread over the task pool instead of queueing
    # behind each other in a few large blocks.
    # Lights times matter to scoring only; leaving them out keeps every row's columns the same.
    rows = [{**{k: v for k, v in e.as_dict().items() if k not in LIGHTS_COLUMNS},
             "psg_name": recorded[e.recording_id].psg, "hypnogram_name": recorded[e.recording_id].hypnogram}
            for e in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(todo))
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


def manifest_document(entries: Sequence[ManifestEntry], statuses: Sequence[Mapping[str, Any]], profile,
                      version: str, dataset: PreparedDataset, pending: int, seconds: float
                      ) -> dict[str, Any]:
    """The ``manifest.json`` of a dataset (``docs/data-contract.md``) from its entries and the
    status rows of its recordings (``recording_id``, ``subject_id``, ``split``, ``status``, the
    footer ``summary`` as JSON, and ``reason``/``source``/``error_type`` of a reject).

    Every writer of a prepared dataset (``somnray prepare``, ``somnray review``) builds it here.
    """
    from .recording import channels_used  # as prepare_entry: the data core only when needed

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
        rec_info = summ.get("info") or {}
        # The signal each modality was read from: with fallbacks it differs between recordings.
        recordings.append({"recording_id": s["recording_id"], "subject_id": s["subject_id"],
                           "n_epochs": n, "status": s["status"],
                           "warnings": list(rec_info.get("warnings") or []),
                           "channels": channels_used(rec_info)})
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
