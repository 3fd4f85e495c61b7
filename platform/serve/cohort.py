"""Score a whole cohort as Ray Data batch inference: thousands of nights through an actor pool.

::

    entries (manifest / folder / EDF files)
      │ ray.data.from_items                      one block per recording
      ▼
    read + prepare (task per recording, 1 CPU)   prepare_for_scoring → packed PreparedRecording
      │ map_with_scorer(ScoreAndWriteNight)       somnray.scoring's actor pool (size=workers)
      ▼
    score + write (actor: the model loaded once) score_prepared → write_night_outputs
      │                                          (rejects: write_rejected_night)
      ▼
    status rows → driver: progress bar, progress_callback, cohort summary

Guarantees
----------
* One bad recording never stops the cohort: any exception while reading, preparing, scoring or
  writing one night becomes a ``rejected`` status, recorded in the night's statistics JSON.
* Resumable: a night whose ``<id>_sleep_stats.json`` says ``status: ok`` is skipped, and every
  file is written atomically with the statistics JSON last, so a rerun after a crash writes
  exactly one complete output set per recording.  Rejected nights are retried on every run, and
  so is a night whose outputs came from other weights (a different ``weights_sha256``): a rerun
  with another model re-scores it and says how many it did.
* Traceable: every night's outputs record the weights' SHA-256 (and the registered model version),
  the input file's SHA-256, the profile's, the training data's version and the stride.
* Private: outputs and logs name recordings by manifest id only; EDF patient/recording header
  fields are never read into results (see :mod:`somnray.data.readers`).

The same function runs from the CLI (``somnray score``) and from the Serve app's cohort jobs;
how it runs is a :class:`~somnray.serve.config.CohortScoringOptions`.

Test hook: with ``SOMNRAY_SCORE_FAULT_AFTER=N`` in the driver's environment, each scoring actor
raises :class:`InjectedFault` (which is *not* turned into a reject) when it is about to write its
``N+1``-th night, simulating a crash mid-run.  Tests use it to prove that a rerun completes the
cohort with exactly one output set per recording; it has no other use.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import pickle
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from somnray.core.constants import STATUS_OK, STATUS_REJECTED, STATUS_SKIPPED
from somnray.core.errors import ConfigError, ServingError, reject_reason
from somnray.core.storage import StorageLocation, StorageRoots, relative_uri, resolve, worker_storage_options
from somnray.data.discovery import check_entries, discover, load_manifest
from somnray.data.manifest import ManifestEntry
from somnray.data.profiles import CohortProfile, list_profiles

from somnray.scoring.domain import DomainThresholds
from somnray.scoring.scorer import Scorer

from .config import CohortScoringOptions, ProgressCallback
from .inference import (ModelSpec, input_sha256, prepare_for_scoring, profile_sha256, score_prepared,
                        scoring_profile)
from .outputs import read_stats_documents, summarize_cohort, write_night_outputs, write_rejected_night

log = logging.getLogger(__name__)

#: Environment variable of the crash-injection test hook (module docstring).
FAULT_ENV = "SOMNRAY_SCORE_FAULT_AFTER"
#: What a confined run says of a location outside its storage roots, whether it exists or not.
OUTSIDE_ROOTS = "no such file or folder under the storage roots"
#: File suffixes accepted as a single recording.
PSG_SUFFIXES = (".edf", ".bdf", ".rec")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")

#: Memory a read + prepare task reserves (a 24-h night needs about 0.5 GB above the worker).  It
#: also keeps the tasks a separate operator: Ray Data fuses a map into the next one when their
#: resource requests match, and fused into the scoring actors, reading and preparing would run
#: serially inside them (holding the GPU while an EDF is parsed) instead of feeding the pool.
PREPARE_MEMORY = 512 * 2**20


class CohortScoringError(ServingError):
    """The cohort run itself failed (not one recording): what was written stays; rerun to resume."""


class InjectedFault(RuntimeError):
    """Raised by the ``SOMNRAY_SCORE_FAULT_AFTER`` test hook to simulate a crash."""


# -- inputs --------------------------------------------------------------------------------------
#: How a single PSG file's recording id is chosen (``somnray score --id-from``).
ID_FROM = ("name", "hash")


def content_id(loc: StorageLocation) -> str:
    """``sha256-<12 hex>`` of a file's content: an id that says nothing of the file's name."""
    digest = hashlib.sha256()
    with loc.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256-{digest.hexdigest()[:12]}"


def _single_file_entry(loc: StorageLocation, profile: CohortProfile, id_from: str = "name"
                       ) -> tuple[ManifestEntry, str]:
    """A manifest entry for one PSG file and the name records give it.

    ``id_from="name"``: the id comes from the profile's pairing rules (or the file's stem) and
    records name the file; ``"hash"``: both are :func:`content_id`, so no output carries the
    file name (which may be a patient's).
    """
    if id_from == "hash":
        rid = content_id(loc)
        return ManifestEntry(recording_id=rid, subject_id=rid, psg=loc.uri, profile=profile.name), rid
    pairing = profile.pairing
    name = loc.name
    m = re.match(pairing.recording_id_regex or pairing.key_regex, name)
    stem = os.path.splitext(name)[0]
    rid = m.group(1) if m else re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "recording"
    sm = re.match(pairing.subject_regex, name)
    return ManifestEntry(recording_id=rid, subject_id=sm.group(1) if sm else rid, psg=loc.uri,
                         profile=profile.name), name


def collect_recordings(inputs: str | Sequence[str], profile: CohortProfile, *,
                       storage_options: Mapping[str, Any] | None = None, id_from: str = "name"
                       ) -> list[tuple[ManifestEntry, str]]:
    """The recordings named by ``inputs`` (manifests, folders, single EDF/BDF files), each with the
    name records and messages give its file.

    Folders are paired with ``profile`` (hypnograms are found but not needed).  A file is named
    relative to its manifest's folder, or to the input folder, never by absolute path; a single
    file by its name, or by its content hash with ``id_from="hash"``.  Every problem — a missing
    input, an unknown file type, repeated recording ids across inputs — is reported at once.

    Raises
    ------
    ConfigError
        Nothing to score, or any input is unusable.
    """
    if id_from not in ID_FROM:
        raise ConfigError("--id-from", [f"must be one of {list(ID_FROM)}, got {id_from!r}"])
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [os.fspath(inputs)]
    found: list[tuple[ManifestEntry, str]] = []
    errors: list[str] = []
    for uri in inputs:
        try:
            loc = resolve(uri, storage_options)
            if not loc.exists():
                errors.append(f"{uri}: no such file or folder")
            elif loc.isdir():
                found.extend((e, relative_uri(e.psg, loc)) for e in _quiet_discover(loc, profile, storage_options))
            elif loc.name.lower().endswith(MANIFEST_SUFFIXES):
                found.extend((e, relative_uri(e.psg, loc.parent))
                             for e in load_manifest(loc.uri, profile, storage_options))
            elif loc.name.lower().endswith(PSG_SUFFIXES):
                found.append(_single_file_entry(loc, profile, id_from))
            else:
                errors.append(f"{uri}: not a recording (.edf/.bdf), a manifest (.csv/.parquet) "
                              "or a folder")
        except ConfigError as exc:
            errors.extend(f"{exc.source}: {e}" for e in exc.errors)
    errors.extend(check_entries([e for e, _ in found]))
    if not found and not errors:
        errors.append("no recording found in the inputs")
    if errors:
        raise ConfigError(", ".join(map(str, inputs)), errors)
    return found


def collect_entries(inputs: str | Sequence[str], profile: CohortProfile, *,
                    storage_options: Mapping[str, Any] | None = None, id_from: str = "name"
                    ) -> list[ManifestEntry]:
    """The recordings named by ``inputs`` (:func:`collect_recordings` without the names)."""
    return [e for e, _ in collect_recordings(inputs, profile, storage_options=storage_options,
                                             id_from=id_from)]


def _quiet_discover(loc: StorageLocation, profile: CohortProfile,
                    storage_options: Mapping[str, Any] | None) -> list[ManifestEntry]:
    # Discovery warns that a PSG without its hypnogram "will be rejected": true for preparing a
    # training set, false for scoring, which never reads hypnograms.
    disc_log = logging.getLogger("somnray.data.discovery")
    level = disc_log.level
    disc_log.setLevel(logging.ERROR)
    try:
        return discover(loc.uri, profile, storage_options)
    finally:
        disc_log.setLevel(level)


# -- confinement (the service's cohort jobs) ------------------------------------------------------
def confine_inputs(inputs: Sequence[str], out_uri: str, roots: StorageRoots,
                   storage_options: Mapping[str, Any] | None = None) -> tuple[list[str], str]:
    """The inputs and output as the locations they really name, all under ``roots``.

    Raises
    ------
    ConfigError
        Any of them lies outside the roots (one line each; the same words whether it exists).
    """
    errors, located = [], []
    for uri in inputs:
        loc = roots.locate(uri, storage_options)
        if loc is None:
            errors.append(f"input {uri!r}: {OUTSIDE_ROOTS}")
        else:
            located.append(loc.uri)
    out = roots.locate(out_uri, storage_options)
    if out is None:
        errors.append(f"output {out_uri!r}: not under the storage roots")
    if errors:
        raise ConfigError("cohort job", errors)
    return located, out.uri  # type: ignore[union-attr]


def confine_profile(name: str, roots: StorageRoots,
                    storage_options: Mapping[str, Any] | None = None) -> str | None:
    """A shipped profile name as it is, a profile file under ``roots`` as its real path, else None.

    Nothing outside the roots is opened or even tested for existence.
    """
    if name in list_profiles():
        return name
    loc = roots.locate(name, storage_options)
    # load_profile reads local files only; a remote profile would be "no such profile" anyway.
    return loc.path if loc is not None and loc.is_local and os.path.isfile(loc.path) else None


def confine_entries(entries: Sequence[ManifestEntry], roots: StorageRoots,
                    storage_options: Mapping[str, Any] | None = None) -> list[ManifestEntry]:
    """``entries`` with every PSG, hypnogram and profile file checked against ``roots``.

    Returns the entries rewritten to the real locations (symbolic links resolved), so that what
    is opened later is what was checked.

    Raises
    ------
    ConfigError
        One line per row naming a location outside the roots, before any of them is opened.
    """
    errors: list[str] = []
    confined: list[ManifestEntry] = []
    for e in entries:
        psg = roots.locate(e.psg, storage_options)
        hyp = roots.locate(e.hypnogram, storage_options) if e.hypnogram else None
        profile = confine_profile(e.profile, roots, storage_options) if e.profile else None
        row = f"recording {e.recording_id!r}"
        if psg is None:
            errors.append(f"{row}: psg {e.psg!r}: {OUTSIDE_ROOTS}")
        if e.hypnogram and hyp is None:
            errors.append(f"{row}: hypnogram {e.hypnogram!r}: {OUTSIDE_ROOTS}")
        if e.profile and profile is None:
            errors.append(f"{row}: profile {e.profile!r}: not a shipped profile "
                          f"({', '.join(list_profiles())}) and {OUTSIDE_ROOTS}")
        if psg is not None:
            confined.append(dataclasses.replace(e, psg=psg.uri, hypnogram=hyp.uri if hyp else None,
                                                profile=profile))
    if errors:
        raise ConfigError("manifest", errors)
    return confined


# -- the per-recording steps (plain functions; Ray only maps them) --------------------------------
def _status(recording_id: str, status: str, *, reason: str = "", error_type: str = "",
            n_epochs: int = 0, seconds: float = 0.0, payload: bytes = b"",
            warnings: str = "[]", input_sha256: str = "", profile_sha256: str = "",
            domain_shift: str = "[]") -> dict[str, Any]:
    # Fixed, flat columns: Ray Data builds Arrow blocks from the rows, which must unify (so the
    # night's warnings and domain-shift reasons travel as JSON text, not as lists that may be empty).
    return {"recording_id": recording_id, "status": status, "reason": reason,
            "error_type": error_type, "n_epochs": int(n_epochs), "seconds": float(seconds),
            "payload": payload, "warnings": warnings, "input_sha256": input_sha256,
            "profile_sha256": profile_sha256, "domain_shift": domain_shift}


def prepare_entry_for_scoring(entry: Mapping[str, Any], *, spec: ModelSpec,
                              profiles: Mapping[str, CohortProfile],
                              storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and prepare one recording for scoring; never raises for a bad recording.

    Returns a status row whose ``payload`` is the pickled :class:`PreparedRecording` (status
    ``prepared``, with the SHA-256 of the input file and of its profile for the lineage) or empty
    with a ``reason`` (status ``rejected``).  The pickle only travels between this cohort run's
    own Ray workers.
    """
    t0 = time.monotonic()
    # Messages name the file as records do (relative, or a content hash), never by absolute path.
    rid, source = entry["recording_id"], entry.get("source") or entry["psg"]
    try:
        loc = resolve(entry["psg"], storage_options)
        # Remote files are read into memory (the reader takes bytes): no temp file to clean up.
        data = loc.path if loc.is_local else loc.read_bytes()
        profile = profiles[entry["profile_key"]]
        rec = prepare_for_scoring(spec, data, recording_id=rid, profile=profile, psg_source=source)
        payload = pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL)
        return _status(rid, "prepared", n_epochs=rec.n_epochs, seconds=time.monotonic() - t0,
                       payload=payload, warnings=json.dumps(list(rec.info.get("warnings") or [])),
                       input_sha256=input_sha256(data), profile_sha256=profile_sha256(profile))
    except Exception as exc:
        reason, etype = reject_reason(exc, source)
        return _status(rid, STATUS_REJECTED, reason=reason, error_type=etype,
                       seconds=time.monotonic() - t0)


class ScoreAndWriteNight:
    """Scoring task of the actors (:func:`somnray.scoring.actors.map_with_scorer`).

    Called with the actor's scorer and one status row from :func:`prepare_entry_for_scoring`:
    scores the prepared night and writes its outputs, or records a rejected one; returns the
    night's final status row.  Each actor holds its own copy, so ``written`` counts per actor
    (what the ``SOMNRAY_SCORE_FAULT_AFTER`` test hook needs).  ``lights`` maps a recording id to
    its manifest's (lights-off, lights-on) seconds, which the sleep statistics start and end at;
    ``domain`` the thresholds of each night's domain-shift check, whose reasons the status row
    carries (``domain_shift``, JSON text: empty when the night is like the training ones).
    """

    def __init__(self, out_uri: str, *, plots: bool, stride: int | None,
                 storage_options: Mapping[str, Any] | None, fault_after: int | None = None,
                 lights: Mapping[str, tuple[float | None, float | None]] | None = None,
                 domain: DomainThresholds | None = None):
        self.out_uri = out_uri
        self.domain = domain
        self.lights = dict(lights or {})
        self.plots = plots
        self.stride = stride
        self.storage_options = dict(storage_options or {})
        self.fault_after = fault_after
        self.written = 0

    def __call__(self, scorer: Scorer, row: dict[str, Any]) -> dict[str, Any]:
        """Score and write one night (or record its rejection); the night's status row."""
        rid = str(row["recording_id"])
        t0 = time.monotonic()
        seconds = float(row["seconds"])
        if self.fault_after is not None and self.written >= self.fault_after:
            raise InjectedFault(f"{FAULT_ENV}={self.fault_after}: simulated crash before writing {rid}")
        if row["status"] != STATUS_REJECTED:
            try:
                rec = pickle.loads(bytes(row["payload"]))
                night = score_prepared(scorer, rec, stride=self.stride, input_digest=row["input_sha256"] or None,
                                       profile_digest=row["profile_sha256"] or None, domain=self.domain)
                lights_off, lights_on = self.lights.get(rid, (None, None))
                write_night_outputs(night, self.out_uri, plots=self.plots, lights_off_s=lights_off,
                                    lights_on_s=lights_on, storage_options=self.storage_options)
                self.written += 1
                shift = night.domain_shift.reasons if night.domain_shift is not None else []
                return _status(rid, STATUS_OK, n_epochs=night.n_epochs,
                               seconds=seconds + time.monotonic() - t0, warnings=row["warnings"],
                               domain_shift=json.dumps(shift))
            except Exception as exc:
                reason, etype = reject_reason(exc, rid)
                row = {**row, "reason": reason, "error_type": etype}
        reason, etype = str(row["reason"]), str(row["error_type"])
        try:
            write_rejected_night(rid, reason, self.out_uri, storage_options=self.storage_options)
            self.written += 1
        except Exception as exc:  # the reject still reaches the driver through the status row
            reason = f"{reason} (and its rejection could not be recorded: {type(exc).__name__}: {exc})"
        return _status(rid, STATUS_REJECTED, reason=reason, error_type=etype,
                       seconds=seconds + time.monotonic() - t0)


# -- the cohort ----------------------------------------------------------------------------------
@dataclass
class CohortScoreResult:
    """Outcome of :func:`score_cohort`.

    Attributes
    ----------
    out_uri : str
        The output root (one folder per recording, plus the cohort summary).
    total : int
        Recordings in the inputs.
    scored, skipped, rejected : int
        Scored by this run; already scored by an earlier run; not scorable.
    rescored : int
        Of ``scored``: nights an earlier run had scored with other weights (a different
        ``weights_sha256``), scored again with this model.
    rejects : list of dict
        ``recording_id``, ``reason`` and ``error_type`` of each rejected recording.
    warnings : list of dict
        ``recording_id`` and ``warning``, one per warning a night scored by this run got while it
        was read and prepared.
    domain_shifts : list of dict
        ``recording_id`` and ``reasons`` (list of str) of each night scored by this run that lies
        outside the model's training data (its ``domain_shift`` flag).
    summary : dict of str to str
        URIs of ``cohort_summary.csv`` / ``.parquet`` (/ ``.png``).
    seconds : float
        Wall time of the run.
    """

    out_uri: str
    total: int
    scored: int
    skipped: int
    rejected: int
    rejects: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    rescored: int = 0
    domain_shifts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every recording has outputs, 2 when some were rejected."""
        return 2 if self.rejected else 0



def _fault_after() -> int | None:
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(FAULT_ENV, [f"must be a whole number of nights, got {raw!r}"]) from None
    if value < 0:
        raise ConfigError(FAULT_ENV, [f"must be >= 0, got {value}"])
    return value


@dataclass(frozen=True)
class _PoolPlan:
    """Resources of one run: the scoring actors and each read + prepare task."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    prepare_cpus: float
    #: torch threads per actor (None: what Ray gives it, e.g. on GPUs).
    threads: int | None = None


def _plan_pool(workers: int | None, n_todo: int, cluster: Mapping[str, float],
               cpus: float | None = None) -> _PoolPlan:
    """Actors and CPUs fitting ``cpus`` (default: the ``cluster``'s CPUs) next to the prepare tasks.

    One prepare task and the actors always fit in the budget together, so the run makes progress
    on any budget: with two CPUs or more a prepare task gets a whole one and the actors share the
    rest; below two, the budget is split half and half (a CPU is a scheduling share, not a core).

    On CPUs the default is one actor per CPU of the budget, each with one torch thread (threads
    ``budget // actors`` whatever the count): separate processes scale better than threads of one
    process — measured on 2 CPUs, 128 one-hour nights, two one-thread actors scored 90.7 nights/min
    once started against 82.6 for one two-thread actor — and reading and preparing a night costs a
    few percent of scoring it, so the CPU reserved for it would otherwise sit mostly idle.  Each
    actor holds a copy of the model: ``workers`` caps them where memory is short.
    """
    gpus = int(cluster.get("GPU", 0))
    budget = float(cluster.get("CPU", 1.0)) if cpus is None else float(cpus)
    if workers is None:
        # GPUs: one actor per GPU.  CPUs: one actor per CPU (docstring); the prepare tasks share.
        workers = gpus if gpus else max(1, int(budget))
    workers = max(1, min(workers, n_todo))
    prepare = min(1.0, budget / 2)
    if gpus:
        return _PoolPlan(workers, 1.0, 1.0, prepare)
    # Ray counts CPUs in units of 1e-4; rounded down so that the actors never exceed their share.
    per_actor = max(1e-4, min(1.0, math.floor((budget - prepare) / workers * 1e4) / 1e4))
    return _PoolPlan(workers, per_actor, 0.0, prepare, threads=max(1, int(budget // workers)))


class _Tally:
    """Counts of a cohort run as status rows arrive, the rejects, and the progress reports."""

    def __init__(self, total: int, skipped: int, callback: ProgressCallback | None):
        self.total = total
        self.counts: Counter[str] = Counter({STATUS_SKIPPED: skipped})
        self.rejects: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []
        self.domain_shifts: list[dict[str, Any]] = []
        self.callback = callback

    @property
    def done(self) -> int:
        """Nights with outputs: scored now or earlier."""
        return self.counts[STATUS_OK] + self.counts[STATUS_SKIPPED]

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one night's final status row (and keep its reason when rejected)."""
        self.counts[row["status"]] += 1
        if row["status"] == STATUS_REJECTED:
            self.rejects.append({"recording_id": row["recording_id"], "reason": row["reason"],
                                 "error_type": row["error_type"]})
            log.warning("rejected %s: %s", row["recording_id"], row["reason"])
        self.warnings.extend({"recording_id": row["recording_id"], "warning": w}
                             for w in json.loads(row.get("warnings") or "[]"))
        reasons = json.loads(row.get("domain_shift") or "[]")
        if reasons:
            self.domain_shifts.append({"recording_id": row["recording_id"], "reasons": reasons})
        self.report()

    def report(self) -> None:
        """Tell the progress callback, if any."""
        if self.callback is not None:
            try:
                self.callback(self.done, self.counts[STATUS_REJECTED], self.total)
            except Exception as exc:  # a broken observer must not fail the cohort
                log.warning("progress_callback failed: %s", exc)


def plan_rows(input_uri: str | Sequence[str], spec: ModelSpec, options: CohortScoringOptions
              ) -> tuple[list[dict[str, Any]], dict[str, CohortProfile]]:
    """One row per recording (id, subject, PSG, its recorded name, profile key, lights) and the
    scoring profile of each key: how ``somnray score`` (and ``somnray review``, which re-prepares
    scored nights from the same inputs) reads its inputs.

    Raises
    ------
    ConfigError
        Unusable inputs, or profiles the model cannot be scored with (every problem at once).
    """
    profile = options.profile
    roots = options.storage_roots
    if roots is not None and isinstance(profile, (str, os.PathLike)):
        confined = confine_profile(os.fspath(profile), roots, options.storage_options)
        if confined is None:
            raise ConfigError("profile", [f"{os.fspath(profile)!r}: not a shipped profile and "
                                          f"{OUTSIDE_ROOTS}"])
        profile = confined
    base = spec.resolve_profile(profile)
    found = collect_recordings(input_uri, base, storage_options=options.storage_options,
                               id_from=options.id_from)
    names = {e.recording_id: name for e, name in found}
    entries = [e for e, _ in found]
    if roots is not None:
        entries = confine_entries(entries, roots, options.storage_options)
    profiles: dict[str, CohortProfile] = {}
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for e in entries:
        # An explicit profile wins; otherwise a manifest row's own profile, else the default.
        key = base.name if profile is not None or not e.profile else e.profile
        if key not in profiles:
            try:
                profiles[key] = scoring_profile(spec, base if key == base.name else key, options.channel_map)
            except ConfigError as exc:
                errors.extend(f"{exc.source}: {x}" for x in exc.errors)
                profiles[key] = base
        rows.append({"recording_id": e.recording_id, "subject_id": e.subject_id, "psg": e.psg,
                     "source": names[e.recording_id],
                     "profile_key": key, "lights": (e.lights_off, e.lights_on)})
    if errors:
        raise ConfigError("profiles", sorted(set(errors)))
    return rows, profiles


def _score_on_ray(scorer: Scorer, spec: ModelSpec, todo: list[dict[str, Any]],
                  profiles: dict[str, CohortProfile], out: StorageLocation,
                  options: CohortScoringOptions, tally: _Tally, fault_after: int | None) -> None:
    """Prepare (tasks) and score + write (actors) the ``todo`` rows, counting each into ``tally``.

    Raises
    ------
    CohortScoringError
        The run itself failed; what was written stays.
    """
    import ray
    from ray.data import ExecutionResources
    from tqdm.auto import tqdm

    from somnray.core.session import ensure_ray
    from somnray.scoring.actors import map_with_scorer

    ensure_ray()
    opts = worker_storage_options([out.uri, *(r["psg"] for r in todo)], options.storage_options)
    plan = _plan_pool(options.workers, len(todo), ray.cluster_resources(), options.cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on the driver
    # The manifest's lights times go to the actors that write the statistics, not through the rows.
    lights = {r["recording_id"]: r["lights"] for r in todo if r["lights"] != (None, None)}
    ds = ray.data.from_items([{k: v for k, v in r.items() if k != "lights"} for r in todo],
                             override_num_blocks=len(todo))
    ds = ds.map(prepare_entry_for_scoring, num_cpus=plan.prepare_cpus, memory=PREPARE_MEMORY,
                fn_kwargs={"spec": spec, "profiles": profiles, "storage_options": opts})
    task = ScoreAndWriteNight(out.uri, plots=options.plots, stride=options.stride,
                              storage_options=opts, fault_after=fault_after, lights=lights,
                              domain=options.domain)
    ds = map_with_scorer(ds, scorer, task, actors=plan.actors, device=options.device,
                         precision=options.precision, threads=options.threads_per_worker or plan.threads,
                         num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus)
    if options.cpus is not None:
        # Ray Data budgets by the whole cluster: beside a service whose replicas hold CPUs it
        # would wait for CPUs that never come free (backpressured:tasks(ResourceBudget)).
        ds.context.execution_options.resource_limits = ExecutionResources.for_limits(cpu=options.cpus)
    skipped = tally.counts[STATUS_SKIPPED]
    with tqdm(total=tally.total, initial=skipped, desc=f"score {spec.name}", unit="night",
              disable=not options.progress) as bar:
        rows = iter(ds.iter_rows())
        failure: str | None = None
        try:
            for row in rows:
                tally.add(row)
                bar.update(1)
                bar.set_postfix(ok=tally.done, rejected=tally.counts[STATUS_REJECTED], refresh=False)
        except Exception as exc:  # noqa: BLE001 - re-raised below, without its traceback
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        if failure is not None:
            # The scoring actors die when the last reference to them goes.  The executor's
            # failure traceback holds such references in its frames, so it must not outlive
            # this function: a caller keeping it (a job registry, pytest.raises) would keep
            # the actors' CPUs, and the next cohort run on the cluster would wait for ever.
            del rows, ds
            gc.collect()
            raise CohortScoringError(f"cohort scoring stopped after {sum(tally.counts.values())} "
                                     f"night(s) of {tally.total - skipped}: {failure}")


def score_cohort(run_uri: str, input_uri: str | Sequence[str], out_uri: str,
                 options: CohortScoringOptions | None = None) -> CohortScoreResult:
    """Score every recording of a cohort with the model of a training run.

    Parameters
    ----------
    run_uri : str
        A training run (its ``model/`` bundle), a bundle folder, or a registered model version
        (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``).
    input_uri : str or sequence of str
        Manifests (CSV/Parquet), folders (paired by the profile) and single EDF/BDF files.
    out_uri : str
        Output root: ``<out>/<recording_id>/...`` per night plus ``cohort_summary.*``.
    options : CohortScoringOptions, optional
        Profile, stride, workers, device, precision, plots, progress (defaults: see the class).

    Returns
    -------
    CohortScoreResult

    Raises
    ------
    ConfigError
        No model bundle, unknown profile, unusable inputs: nothing is written.
    CohortScoringError
        The run itself failed midway; rerun to resume.
    InjectedFault
        Only under the ``SOMNRAY_SCORE_FAULT_AFTER`` test hook.
    """
    options = options or CohortScoringOptions()
    started = time.monotonic()
    fault_after = _fault_after()
    if options.workers is not None and options.workers < 1:
        raise ConfigError("--workers", [f"must be >= 1, got {options.workers}"])
    if options.cpus is not None and options.cpus <= 0:
        raise ConfigError("cpus", [f"must be > 0, got {options.cpus}"])
    # Loaded on the driver: a bad bundle fails here, before any cluster work; the weight-free
    # spec tells the prepare tasks which channels the model needs, and the actors get the weights
    # from it through the object store (each then picks its own device and precision).
    if options.storage_roots is not None:
        inputs = [input_uri] if isinstance(input_uri, (str, os.PathLike)) else list(input_uri)
        input_uri, out_uri = confine_inputs([os.fspath(u) for u in inputs], out_uri,
                                            options.storage_roots, options.storage_options)
    scorer = Scorer.load(run_uri, device="cpu", precision="fp32", storage_options=options.storage_options)
    scorer.check_stride(options.stride, "--stride")
    spec = ModelSpec.of(scorer)
    rows, profiles = plan_rows(input_uri, spec, options)

    out = resolve(out_uri, options.storage_options)
    out.makedirs()
    done_ids, other_model = scored_before(out, scorer.weights_sha256)
    todo = [r for r in rows if r["recording_id"] not in done_ids]
    rescored = sum(r["recording_id"] in other_model for r in todo)
    tally = _Tally(len(rows), len(rows) - len(todo), options.progress_callback)
    log.info("scoring %d recording(s) (%d already scored) with %s into %s",
             len(todo), len(rows) - len(todo), spec.name, out.uri)
    if rescored:
        log.warning("re-scoring %d night(s) whose outputs came from another model (other weights "
                    "than %s)", rescored, scorer.weights_sha256)
    tally.report()
    if todo:
        _score_on_ray(scorer, spec, todo, profiles, out, options, tally, fault_after)

    summary = summarize_cohort(out, plots=options.plots)
    return CohortScoreResult(out_uri=out.uri, total=tally.total, scored=tally.counts[STATUS_OK],
                             skipped=tally.counts[STATUS_SKIPPED], rejected=tally.counts[STATUS_REJECTED],
                             rejects=sorted(tally.rejects, key=lambda r: r["recording_id"]),
                             warnings=sorted(tally.warnings, key=lambda w: w["recording_id"]),
                             summary=summary, seconds=time.monotonic() - started, rescored=rescored,
                             domain_shifts=sorted(tally.domain_shifts, key=lambda d: d["recording_id"]))


def scored_before(out: StorageLocation, weights_sha256: str | None) -> tuple[set[str], set[str]]:
    """Nights of ``out`` an earlier run scored: ``(with these weights, with other weights)``.

    A night counts as scored with these weights when its statistics JSON says ``ok`` and records
    the same ``weights_sha256``; one scored by other weights, or whose outputs do not say which
    (older outputs), is to be scored again.  A model from memory (no hash) keeps every ``ok`` night.
    """
    same, other = set(), set()
    for doc in read_stats_documents(out):
        if doc.get("status") != STATUS_OK:
            continue
        recorded = (doc.get("model") or {}).get("weights_sha256")
        if weights_sha256 is None or recorded == weights_sha256:
            same.add(doc["recording_id"])
        else:
            other.add(doc["recording_id"])
    return same, other


__all__ = ["FAULT_ENV", "OUTSIDE_ROOTS", "CohortScoreResult", "CohortScoringError", "InjectedFault",
           "ID_FROM", "ScoreAndWriteNight", "collect_entries", "collect_recordings", "confine_entries",
           "content_id", "confine_inputs", "confine_profile", "plan_rows", "prepare_entry_for_scoring", "score_cohort",
           "scored_before"]
