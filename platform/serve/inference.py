"""Score one recording with a trained model: prepare an unscored night, predict, label the epochs.

The model itself is a :class:`somnray.scoring.scorer.Scorer` (loaded once, the one device and
precision policy, per-night prediction); this module adds what serving needs around it: the
cohort profile a night is read with, the model family's missing-modality rules and the
per-epoch labels of a :class:`~somnray.serve.scored.ScoredNight`.  The Ray Serve app (one
uploaded night) and cohort batch inference (:mod:`somnray.serve.cohort`, whose actors call
:func:`score_prepared` on nights prepared by Ray Data tasks) both use it.

What a model does with a modality the recording lacks depends on its family, and that decides
both which channels a night must have and what ``modalities_used`` reports per epoch:

============================  ==================  =============================================
family                        missing modality    a night needs
============================  ==================  =============================================
CoRe-Sleep (and ablations)    dropped: the        any one of the model's modalities
                              unimodal branch
                              scores from what
                              is there
CIMSleepNet                   imagined (MAIM)     any one of the model's modalities; the
                              and labelled        missing one is reported ``eog(imputed)``
                              ``<m>(imputed)``
MC²SleepNet, anything else    not supported       every modality of the model
============================  ==================  =============================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import numpy as np

from somnray.core.errors import ConfigError, RecordingError
from somnray.core.storage import resolve
from somnray.data.prepared import PreparedRecording
from somnray.data.profiles import ChannelAlternative, ChannelSpec, CohortProfile, load_profile
from somnray.data.readers import PathOrData, read_psg
from somnray.data.recording import channels_used, prepare_psg
from somnray.models.base import SleepStagingModel
from somnray.scoring.domain import DomainCheck, DomainThresholds, NightSummary, TrainingDomain, check_night
from somnray.scoring.scorer import Scorer

from .scored import LOW_CONFIDENCE, NOT_SCORED, ModelInfo, ScoredNight, check_recording_id, uncalibrated

log = logging.getLogger(__name__)

#: Profile used when neither the caller nor the bundle names one.
DEFAULT_PROFILE = "generic"
#: Checkpoint named in the outputs of a model that was not loaded from a bundle URI.
IN_MEMORY_MODEL = "<in-memory model>"

MissingPolicy = Literal["drop", "impute", "require"]


# -- model families ------------------------------------------------------------------------------
def missing_modality_policy(model: SleepStagingModel) -> MissingPolicy:
    """How ``model`` handles a modality a night lacks: what it declares (``model.missing_policy``).

    ``"drop"``: scores from the modalities present (CoRe-Sleep's unimodal branch);
    ``"impute"``: imagines the missing one (CIMSleepNet's MAIM); ``"require"``: needs them all.
    """
    return model.missing_policy


def modalities_used_labels(modalities: tuple[str, ...], available: np.ndarray,
                           policy: MissingPolicy) -> np.ndarray:
    """Per-epoch label of the inputs a stage came from.

    ``"eeg+eog"`` when every modality was there; ``"eeg"`` when the model dropped the missing
    one; ``"eeg+eog(imputed)"`` when it imagined it; ``"none"`` when nothing was usable.
    """
    avail = np.asarray(available, dtype=bool)
    labels = np.empty(avail.shape[0], dtype=object)
    for i, row in enumerate(avail):
        if not row.any():
            labels[i] = NOT_SCORED
        elif policy == "impute":
            labels[i] = "+".join(m if ok else f"{m}(imputed)" for m, ok in zip(modalities, row))
        else:
            labels[i] = "+".join(m for m, ok in zip(modalities, row) if ok)
    return labels


# -- what preparing and labelling a night needs to know about the model ------------------------
@dataclass(frozen=True)
class ModelSpec:
    """What preparing a night for a model and labelling its epochs need, without the weights.

    Small and picklable: the cohort run ships it to the Ray Data tasks that read and prepare
    recordings, while only the actors hold the model itself.  Build with :meth:`of`.
    """

    name: str
    modalities: tuple[str, ...]
    policy: MissingPolicy
    profile_name: str
    length: int
    checkpoint_uri: str = IN_MEMORY_MODEL
    #: The cohort profile embedded in the bundle (None: a bundle that records only a name).
    profile: CohortProfile | None = None
    weights_sha256: str | None = None
    registered_model: Mapping[str, str] | None = None
    training_dataset: Mapping[str, str | None] | None = None
    #: The bundle's ``low_confidence`` threshold and its calibration as every night records it
    #: (:meth:`~somnray.scoring.calibration.Calibration.output_metadata`).
    low_confidence_threshold: float = LOW_CONFIDENCE
    calibration: Mapping[str, Any] | None = None
    #: What the bundle records of its training data, for the domain-shift check.
    training_domain: TrainingDomain = field(default_factory=TrainingDomain)

    @classmethod
    def of(cls, scorer: Scorer) -> "ModelSpec":
        """The spec of a loaded model.

        The default cohort profile is the one the training data was prepared with: the full
        profile embedded in ``model.json`` (``profile``), so a model trained with a user's own
        profile YAML needs no ``--profile``; for bundles that record only a name, the shipped
        profile of that name (``extra["cohort_profile"]``, or ``extra["profile"]`` of hand-made
        bundles); ``generic`` when neither is there.

        Raises
        ------
        ConfigError
            The embedded profile does not validate (naming the bundle).
        """
        from pydantic import ValidationError

        extra = scorer.info.extra
        embedded = None
        if scorer.info.profile is not None:
            try:
                embedded = CohortProfile.model_validate(scorer.info.profile)
            except ValidationError as exc:
                raise ConfigError(scorer.uri or IN_MEMORY_MODEL, [
                    f"model.json profile: not a valid cohort profile ({exc.error_count()} problem(s), "
                    f"first: {exc.errors()[0]['msg']})"]) from None
        profile = embedded.name if embedded is not None else str(
            extra.get("cohort_profile") or extra.get("profile") or DEFAULT_PROFILE)
        return cls(name=scorer.info.model, modalities=scorer.modalities,
                   policy=missing_modality_policy(scorer.model), profile_name=profile,
                   length=scorer.length, checkpoint_uri=scorer.uri or IN_MEMORY_MODEL, profile=embedded,
                   weights_sha256=scorer.weights_sha256, registered_model=scorer.registered,
                   training_dataset=training_dataset(extra),
                   low_confidence_threshold=scorer.calibration.threshold,
                   calibration=scorer.calibration.output_metadata(), training_domain=TrainingDomain.of(scorer.info))

    def default_profile(self) -> CohortProfile:
        """The profile a night is read with when nobody names one: the embedded one, else by name."""
        return self.profile if self.profile is not None else load_profile(self.profile_name)

    def resolve_profile(self, profile: CohortProfile | str | None) -> CohortProfile:
        """``profile`` as a :class:`CohortProfile`: itself, a shipped name or YAML path, or (None,
        or the embedded profile's own name) the model's :meth:`default_profile`."""
        if isinstance(profile, CohortProfile):
            return profile
        if profile is None or (self.profile is not None and profile == self.profile.name):
            return self.default_profile()
        return load_profile(profile)

    @property
    def model_info(self) -> ModelInfo:
        """What every output records about the model."""
        return ModelInfo(name=self.name, checkpoint_uri=self.checkpoint_uri, weights_sha256=self.weights_sha256,
                         registered_model=dict(self.registered_model) if self.registered_model else None)


# -- lineage -------------------------------------------------------------------------------------
def training_dataset(extra: Mapping[str, Any]) -> dict[str, str | None] | None:
    """The prepared dataset a bundle was trained on, as outputs record it (None when not recorded).

    Only the dataset's folder name ``<profile>-<version>`` and its version hash: the rest of the
    URI is where the training run kept it, which may name a person or a site.
    """
    uri = extra.get("dataset_uri")
    if not uri:
        return None
    name = posixpath.basename(str(uri).rstrip("/"))
    version = name.rsplit("-", 1)[1] if "-" in name else None
    return {"name": name, "version": version}


def profile_sha256(profile: CohortProfile) -> str:
    """Hex SHA-256 of a resolved cohort profile (its canonical JSON): how a night was read."""
    blob = json.dumps(profile.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def input_sha256(psg: PathOrData) -> str:
    """Hex SHA-256 of a recording's bytes, or of the file at a path or storage URI (read in blocks)."""
    digest = hashlib.sha256()
    if isinstance(psg, (bytes, bytearray, memoryview)):
        digest.update(psg)
        return digest.hexdigest()
    with resolve(os.fspath(psg)).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def night_lineage(spec: ModelSpec, *, stride: int | None, input_digest: str | None = None,
                  profile_digest: str | None = None) -> dict[str, Any]:
    """The ``lineage`` of a scored night besides the model: input, stride, profile, training data."""
    return {"input_sha256": input_digest, "stride": int(stride or spec.length),
            "profile_sha256": profile_digest,
            "training_dataset": dict(spec.training_dataset) if spec.training_dataset else None}


# -- domain shift --------------------------------------------------------------------------------
def domain_check(spec: ModelSpec, rec: PreparedRecording,
                 thresholds: DomainThresholds | None = None) -> DomainCheck:
    """Compare a prepared night with the model's training data (:mod:`somnray.scoring.domain`).

    The night's reading facts (rates, signals, band-pass, normalisation and amplitude scale, from
    ``rec.info``) and the band powers of its prepared signals against the bundle's training
    profile and ``data_summary``; ``thresholds`` default to :class:`DomainThresholds`.
    """
    night = NightSummary.of(rec.info, rec.signals, rec.available, spec.modalities)
    return check_night(night, spec.training_domain, spec.modalities, thresholds)


# -- profiles for scoring ------------------------------------------------------------------------
#: What one channel-map entry may be, as parsed from JSON.
ChannelMapValue = Union[str, Mapping[str, str], Sequence[Union[str, Mapping[str, str]]]]


def _alternative(modality: str, value: Any) -> ChannelAlternative | str:
    """One channel-map alternative (a label, or ``{"signal", "reference"}``), or the problem."""
    where = f"channel_map[{modality!r}]"
    if isinstance(value, str):
        if not value.strip():
            return f"{where}: the EDF label must be a non-empty string, got {value!r}"
        return ChannelAlternative(aliases=[value.strip()])
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"signal", "reference"})
        signal, reference = value.get("signal"), value.get("reference")
        if unknown or not isinstance(signal, str) or not signal.strip() or not (
                reference is None or (isinstance(reference, str) and reference.strip())):
            return (f"{where}: a derivation is an object {{\"signal\": \"<EDF label>\", "
                    f"\"reference\": \"<EDF label>\"}}, got {value!r}")
        return ChannelAlternative(aliases=[signal.strip()],
                                  reference=[reference.strip()] if reference else None)
    return (f"{where}: expected an EDF label, a derivation {{\"signal\": ..., \"reference\": "
            f"...}} or a list of them (tried in order), got {value!r}")


def channel_map_alternatives(channel_map: Mapping[str, ChannelMapValue]
                             ) -> tuple[dict[str, list[ChannelAlternative]], list[str]]:
    """Parse a channel map into each modality's alternatives, in the order they are tried.

    A value is an EDF label (``"C4-A1"``), a derivation (``{"signal": "E1", "reference":
    "E2"}``), or a list of those: the first usable one is used (``["C4-A1", "C3-A2"]``).

    Returns
    -------
    alternatives : dict of str to list of ChannelAlternative
    problems : list of str
        One line per bad entry (empty when all are good).
    """
    alternatives: dict[str, list[ChannelAlternative]] = {}
    problems: list[str] = []
    for modality, value in channel_map.items():
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            problems.append(f"channel_map[{modality!r}]: an empty list names no signal")
            continue
        parsed = [_alternative(modality, item) for item in items]
        problems += [p for p in parsed if isinstance(p, str)]
        alternatives[modality] = [p for p in parsed if not isinstance(p, str)]
    return alternatives, problems


def scoring_profile(model: Scorer | ModelSpec, profile: CohortProfile | str | None = None,
                    channel_map: Mapping[str, ChannelMapValue] | None = None) -> CohortProfile:
    """The cohort profile a night is prepared with for ``model``.

    Starts from ``profile`` (default: the profile embedded in the bundle, else the shipped one it
    names; :meth:`ModelSpec.resolve_profile`), keeps only the model's modalities
    (nothing else is read or filtered), overrides aliases with ``channel_map`` and sets each
    channel's ``required`` flag from the model family: a model that copes with a missing modality
    needs none in particular (:func:`prepare_for_scoring` then checks that one is there).

    Parameters
    ----------
    channel_map : mapping, optional
        Canonical modality → how to find its signal in this call's file: an exact EDF label, a
        derivation ``{"signal": ..., "reference": ...}``, or a list of those tried in order
        (:func:`channel_map_alternatives`).  It replaces the profile's aliases, reference and
        fallbacks; a channel named this way is required (asking for a label the file lacks is an
        error, not a silently missing modality).

    Raises
    ------
    ConfigError
        ``channel_map`` names a modality the model does not use or gives a malformed entry; the
        model uses a modality neither the profile nor ``channel_map`` says how to find while it
        cannot do without it.
    """
    spec_ = model if isinstance(model, ModelSpec) else ModelSpec.of(model)
    base = spec_.resolve_profile(profile)
    channel_map = dict(channel_map or {})
    errors = [f"channel_map: modality {m!r} is not used by model {spec_.name!r} "
              f"(it uses {list(spec_.modalities)})" for m in channel_map if m not in spec_.modalities]
    mapped, problems = channel_map_alternatives(channel_map)
    errors += problems
    if errors:
        raise ConfigError("channel_map", errors)
    policy = spec_.policy
    channels: dict[str, ChannelSpec] = {}
    for m in spec_.modalities:
        spec = base.channels.get(m)
        if m in mapped:
            first, *rest = mapped[m]
            update = {"aliases": first.aliases, "reference": first.reference, "fallbacks": rest}
            spec = (spec.model_copy(update=update) if spec is not None
                    else ChannelSpec(**update))
        if spec is None:
            if policy == "require":
                errors.append(f"model {spec_.name!r} needs modality {m!r} but profile "
                              f"{base.name!r} has no channel for it; add it to the profile, or name "
                              f"its EDF signal with --channel-map {m}=LABEL (somnray score) or the "
                              f"channel_map field {{\"{m}\": \"LABEL\"}} (HTTP)")
            continue
        required = policy == "require" or m in channel_map
        channels[m] = spec.model_copy(update={"required": required})
    if errors:
        raise ConfigError(f"profile {base.name!r}", errors)
    # model_copy skips validation: the "one required channel" rule is enforced per night instead.
    return base.model_copy(update={"channels": channels})


def prepare_for_scoring(model: Scorer | ModelSpec, psg: PathOrData, *, recording_id: str,
                        profile: CohortProfile, psg_source: str | None = None) -> PreparedRecording:
    """Read and prepare an unscored night of ``psg`` with a profile from :func:`scoring_profile`.

    Stage annotations in the file (EDF+) are ignored: scoring never needs a hypnogram, so no
    label mapping, alignment check or wake trimming is applied (every epoch is kept).

    Raises
    ------
    RecordingError
        Not an EDF/BDF, truncated or corrupt, a required channel missing or unusable, or no
        modality the model can use present at all.
    """
    source = psg_source or (os.fspath(psg) if isinstance(psg, (str, os.PathLike)) else "<upload>")
    try:
        check_recording_id(recording_id)
        data = read_psg(psg, source=source, truncated=profile.reading.truncated)
        rec = prepare_psg(data, None, profile, recording_id=recording_id, subject_id=recording_id,
                          psg_source=source)
    except RecordingError as exc:
        if exc.recording_id is None:
            raise RecordingError(exc.source, exc.reason, recording_id) from exc
        raise
    wanted = [m for m in model.modalities if m in profile.channels]
    if not any(rec.signals.get(m) is not None and rec.available[m].any() for m in wanted):
        tried = "; ".join(f"{m}: aliases {profile.channels[m].aliases}" for m in wanted)
        raise RecordingError(source, f"none of the model's modalities {list(model.modalities)} is "
                                     f"present and usable ({tried}); the file has signals "
                                     f"{data.labels}; name the EDF signals with --channel-map "
                                     "(somnray score) or channel_map (HTTP)",
                             recording_id)
    return rec


# -- scoring -------------------------------------------------------------------------------------
def model_inputs(spec: ModelSpec, rec: PreparedRecording) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's inputs from a prepared night: signals of the modalities it has, and ``(n, M)`` mask.

    A modality the recording lacks, or whose epochs are all unusable, is left out of the signals
    (and its mask column is all False): the model then drops or imputes it as its family does.
    """
    mods = spec.modalities
    available = np.zeros((rec.n_epochs, len(mods)), dtype=bool)
    signals: dict[str, np.ndarray] = {}
    for j, m in enumerate(mods):
        x = rec.signals.get(m)
        mask = np.asarray(rec.available.get(m, np.zeros(rec.n_epochs, bool)), dtype=bool)
        if x is None or not mask.any():
            continue  # no usable epoch: as absent as a missing channel
        signals[m] = np.ascontiguousarray(x, dtype=np.float32)
        available[:, j] = mask
    return signals, available


def scored_night(spec: ModelSpec, recording_id: str, epoch_index: np.ndarray, probabilities: np.ndarray,
                 available: np.ndarray, channels: Mapping[str, str] | None = None,
                 lineage: Mapping[str, Any] | None = None,
                 domain_shift: DomainCheck | None = None) -> ScoredNight:
    """A :class:`ScoredNight` of per-epoch probabilities, labelled with the inputs each came from.

    ``modalities_used`` per epoch (:func:`modalities_used_labels`), an ``imputed_modality``
    quality flag for models that imagine missing inputs, the EDF signal each modality was
    read from (``channels``, from :func:`somnray.data.recording.channels_used`), the night's
    ``lineage`` (:func:`night_lineage`) and its ``domain_shift`` check (:func:`domain_check`).
    The ``low_confidence`` threshold and the calibration the night records are the bundle's
    (``spec.calibration``).
    """
    used = modalities_used_labels(spec.modalities, available, spec.policy)
    quality: dict[str, np.ndarray] = {}
    if spec.policy == "impute":
        quality["imputed_modality"] = available.any(axis=1) & ~available.all(axis=1)
    return ScoredNight(recording_id=recording_id, epoch_index=epoch_index, probabilities=probabilities,
                       modalities=spec.modalities, available=available, model=spec.model_info,
                       modalities_used=used, quality=quality, channels=dict(channels or {}),
                       lineage=dict(lineage or {}), low_confidence_threshold=spec.low_confidence_threshold,
                       calibration=dict(spec.calibration or uncalibrated()), domain_shift=domain_shift)


def score_prepared(scorer: Scorer, rec: PreparedRecording, *, stride: int | None = None,
                   input_digest: str | None = None, profile_digest: str | None = None,
                   domain: DomainThresholds | None = None) -> ScoredNight:
    """Stage a prepared (unscored) night.

    Builds the model's inputs from the record (:func:`model_inputs`: modalities the recording
    lacks are left out, so the model uses what is there), predicts with the scorer
    (:meth:`Scorer.predict <somnray.scoring.scorer.Scorer.predict>`), and labels each epoch with
    the inputs its stage came from (:func:`scored_night`), with the night's domain-shift check
    (:func:`domain_check`).

    Parameters
    ----------
    scorer : Scorer
    rec : PreparedRecording
        From :func:`prepare_for_scoring` (or the data pipeline).
    stride : int, optional
        Window stride in epochs (default: the window length; 1 averages every window position).
    input_digest, profile_digest : str, optional
        SHA-256 of the input file and of the profile it was prepared with (:func:`input_sha256`,
        :func:`profile_sha256`), recorded in the night's lineage.
    domain : DomainThresholds, optional
        Thresholds of the domain-shift check (default :class:`DomainThresholds`).

    Returns
    -------
    ScoredNight

    Raises
    ------
    RecordingError
        The night has no epoch, or lacks a modality a model that needs them all needs.
    ConfigError
        The stride is outside ``[1, L]``.
    """
    n = rec.n_epochs
    if n == 0:
        raise RecordingError("scoring", "the recording has no epoch to score", rec.recording_id)
    scorer.check_stride(stride)
    spec = ModelSpec.of(scorer)
    signals, available = model_inputs(spec, rec)
    if spec.policy == "require":
        lacking = [m for m in spec.modalities if m not in signals]
        if lacking:
            raise RecordingError("scoring", f"model {spec.name!r} needs modalities "
                                            f"{list(spec.modalities)} but {lacking} is absent", rec.recording_id)
    t0 = time.perf_counter()
    probs = scorer.predict(signals, available, stride=stride)
    log.debug("scored %s: %d epochs in %.2f s", rec.recording_id, n, time.perf_counter() - t0)
    lineage = night_lineage(spec, stride=stride, input_digest=input_digest, profile_digest=profile_digest)
    return scored_night(spec, rec.recording_id, rec.epoch_index, probs, available, channels_used(rec.info),
                        lineage, domain_check(spec, rec, domain))


def score_recording(scorer: Scorer, psg_path: PathOrData, *, recording_id: str,
                    profile: CohortProfile | str | None = None,
                    channel_map: Mapping[str, str] | None = None, psg_source: str | None = None,
                    stride: int | None = None, domain: DomainThresholds | None = None) -> ScoredNight:
    """Score one EDF/EDF+/BDF night.

    Parameters
    ----------
    scorer : Scorer
        Loaded once (:meth:`Scorer.load <somnray.scoring.scorer.Scorer.load>`).
    psg_path : str, path-like, bytes or binary file
        Local path, fsspec URI, or the file's content (an HTTP upload).
    recording_id : str
        The only name the result and its outputs carry (never EDF header fields).
    profile : CohortProfile or str, optional
        Cohort profile (name or YAML path); default the bundle's profile, else ``generic``.
    channel_map : mapping of str to str, optional
        Modality → EDF signal label, overriding the profile's aliases for this call.
    psg_source : str, optional
        Name of the file in error messages (the user's URI or upload name).
    stride : int, optional
        Window stride in epochs (default: the model's window length).
    domain : DomainThresholds, optional
        Thresholds of the night's domain-shift check (default :class:`DomainThresholds`).

    Returns
    -------
    ScoredNight

    Raises
    ------
    RecordingError
        The file is not EDF/BDF, is truncated, lacks a channel the model needs, ...; the HTTP
        layer answers 4xx.
    ConfigError
        Unknown profile, a ``channel_map`` naming a modality the model does not use, a bad stride.
    """
    prof = scoring_profile(scorer, profile, channel_map)
    rec = prepare_for_scoring(scorer, psg_path, recording_id=recording_id, profile=prof,
                              psg_source=psg_source)
    digest = input_sha256(psg_path) if isinstance(psg_path, (bytes, bytearray, str, os.PathLike)) else None
    return score_prepared(scorer, rec, stride=stride, input_digest=digest, profile_digest=profile_sha256(prof),
                          domain=domain)


__all__ = [
    "DEFAULT_PROFILE", "IN_MEMORY_MODEL", "ModelSpec", "domain_check", "input_sha256", "missing_modality_policy",
    "model_inputs", "modalities_used_labels", "night_lineage", "prepare_for_scoring", "profile_sha256",
    "score_prepared", "score_recording", "scored_night", "scoring_profile", "training_dataset",
]
