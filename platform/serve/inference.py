"""Score one recording with a trained model: load once, prepare an unscored night, predict.

Both scoring paths use this module: the Ray Serve app (one uploaded night,
:func:`score_recording`) and cohort batch inference (:mod:`somnray.serve.cohort`, whose actors
hold one :class:`ScoringModel` each and call :func:`score_prepared` on nights prepared by Ray
Data tasks).

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

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from somnray.core.errors import ConfigError, RecordingError
from somnray.core.storage import StorageLocation, resolve
from somnray.data.prepared import PreparedRecording
from somnray.data.profiles import ChannelSpec, CohortProfile, load_profile
from somnray.data.readers import PathOrData, read_psg
from somnray.data.recording import prepare_psg
from somnray.models.base import SleepStagingModel
from somnray.models.bundle import INFO_FILE, WEIGHTS_FILE, BundleInfo, load_bundle
from somnray.models.inference import predict_night

from .scored import NOT_SCORED, ModelInfo, ScoredNight, check_recording_id

log = logging.getLogger(__name__)

#: Profile used when neither the caller nor the bundle names one.
DEFAULT_PROFILE = "generic"
#: Windows per forward pass: large enough to amortise per-call overhead, small enough that a
#: 24-hour night (2,880 epochs) never holds more than a few hundred MB of activations.
DEFAULT_BATCH_SIZE = 8

MissingPolicy = Literal["drop", "impute", "require"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


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


# -- device and precision ------------------------------------------------------------------------
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles, where bf16 matmuls are several times faster than fp32.

    Without AMX (or at least AVX512-BF16) bf16 autocast on CPU is *slower* than fp32, so it is
    only chosen automatically when the hardware supports it natively.
    """
    probe = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            return bool(probe())
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        return "amx_bf16" in line.split()
    return False


def choose_device(device: Device | str = "auto") -> torch.device:
    """``"auto"``: CUDA when a GPU is visible, else CPU; otherwise the device named."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError("device", [f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r} ({exc})"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", [f"device {device!r} was asked for but no CUDA GPU is visible"])
    return dev


def choose_autocast(device: torch.device, precision: Precision | str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``"auto"`` picks bf16 on GPUs that support it and on CPUs with AMX, fp32 elsewhere.
    """
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_amx() else None
    if precision not in choices:
        raise ConfigError("precision", [f"precision must be one of ['auto', 'fp32', 'bf16', 'fp16'], "
                                        f"got {precision!r}"])
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision", ["precision 'fp16' is for GPUs; use 'bf16' or 'fp32' on CPU"])
    return choices[precision]


# -- loading -------------------------------------------------------------------------------------
def bundle_location(run_or_bundle_uri: str | StorageLocation,
                    storage_options: Mapping[str, Any] | None = None) -> StorageLocation:
    """The bundle folder of a run URI (``<run>/model/``) or of a bundle folder itself.

    Raises
    ------
    ConfigError
        Neither the URI nor ``<uri>/model`` holds ``model.json`` and ``model.pt``.
    """
    root = resolve(run_or_bundle_uri, storage_options)
    for candidate in (root, root.join("model")):
        if candidate.join(INFO_FILE).exists() and candidate.join(WEIGHTS_FILE).exists():
            return candidate
    raise ConfigError(root.uri, [
        f"no model bundle: neither {INFO_FILE} + {WEIGHTS_FILE} in this folder nor in its model/ "
        "subfolder; give a training run URI (which exports <run>/model/) or a bundle folder"])


@contextlib.contextmanager
def _local_bundle(loc: StorageLocation) -> Iterator[str]:
    if loc.is_local:
        yield loc.path
        return
    tmp = tempfile.mkdtemp(prefix="somnray-bundle-")
    try:
        for name in (INFO_FILE, WEIGHTS_FILE):
            loc.fs.get_file(loc.join(name).path, os.path.join(tmp, name))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class ModelSpec:
    """What preparing a night for a model needs to know, without the weights.

    Small and picklable: the cohort run ships it to the Ray Data tasks that read and prepare
    recordings, while only the actors hold the model itself.
    """

    name: str
    modalities: tuple[str, ...]
    policy: MissingPolicy
    profile_name: str
    length: int


@dataclass
class ScoringModel:
    """A trained model loaded once, with everything scoring needs to feed it.

    Build with :meth:`load`.  Holds the module (eval mode, on ``device``), its bundle info, the
    window length, the modalities in ``present``-column order, the default cohort profile name,
    the autocast dtype and the family's missing-modality policy.
    """

    model: SleepStagingModel
    info: BundleInfo
    uri: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def length(self) -> int:
        """Window length ``L``: the sequence length the model was trained with."""
        return int(self.info.sequence_length)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The model's modalities, in the column order of ``present``."""
        return tuple(self.model.modalities)

    @property
    def profile_name(self) -> str:
        """The cohort profile the training data was prepared with (``generic`` if unknown).

        Training's export records it as ``extra["cohort_profile"]``; ``extra["profile"]`` is
        accepted too (hand-made bundles).
        """
        extra = self.info.extra
        return str(extra.get("cohort_profile") or extra.get("profile") or DEFAULT_PROFILE)

    @property
    def policy(self) -> MissingPolicy:
        """How the model handles a missing modality (:func:`missing_modality_policy`)."""
        return missing_modality_policy(self.model)

    @property
    def model_info(self) -> ModelInfo:
        """What every output records about the model."""
        return ModelInfo(name=self.info.model, checkpoint_uri=self.uri)

    @property
    def spec(self) -> ModelSpec:
        """The weight-free description used to prepare nights (:class:`ModelSpec`)."""
        return ModelSpec(name=self.info.model, modalities=self.modalities, policy=self.policy,
                         profile_name=self.profile_name, length=self.length)

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: the arithmetic scoring runs in."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    @classmethod
    def load(cls, run_or_bundle_uri: str | StorageLocation, *, device: Device | str = "auto",
             precision: Precision | str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
             storage_options: Mapping[str, Any] | None = None) -> "ScoringModel":
        """Load the bundle of a training run (``<run>/model/``) or a bundle folder.

        Parameters
        ----------
        run_or_bundle_uri : str or StorageLocation
            Local path, ``file://`` or remote URI; remote bundles are downloaded to a temporary
            folder and removed once loaded.
        device : {"auto", "cpu", "cuda"} or str
            ``"auto"``: CUDA when available, else CPU.
        precision : {"auto", "fp32", "bf16", "fp16"}
            ``"auto"``: bf16 autocast on bf16-capable GPUs and AMX CPUs, fp32 elsewhere.
        batch_size : int
            Windows per forward pass.
        storage_options : mapping, optional
            fsspec options of a remote URI.

        Raises
        ------
        ConfigError
            No bundle at the URI, a malformed bundle, a bad device or precision.
        """
        if batch_size < 1:
            raise ConfigError("batch_size", [f"batch_size must be >= 1, got {batch_size}"])
        loc = bundle_location(run_or_bundle_uri, storage_options)
        dev = choose_device(device)
        autocast = choose_autocast(dev, precision)
        with _local_bundle(loc) as folder:
            try:
                model, info = load_bundle(folder, map_location="cpu")
            except (ValueError, FileNotFoundError) as exc:
                raise ConfigError(loc.uri, [str(exc)]) from exc
        model = model.to(dev).eval()
        # The bundle's own folder, not <run>: it is what every output records as the checkpoint.
        uri = loc.uri.rstrip("/")
        log.info("loaded %s from %s on %s (%s)", info.model, uri, dev,
                 {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast])
        return cls(model=model, info=info, uri=uri, device=dev, autocast_dtype=autocast,
                   batch_size=batch_size)


# -- profiles for scoring ------------------------------------------------------------------------
def scoring_profile(model: ScoringModel | ModelSpec, profile: CohortProfile | str | None = None,
                    channel_map: Mapping[str, str] | None = None) -> CohortProfile:
    """The cohort profile a night is prepared with for ``model``.

    Starts from ``profile`` (default: the bundle's profile), keeps only the model's modalities
    (nothing else is read or filtered), overrides aliases with ``channel_map`` and sets each
    channel's ``required`` flag from the model family: a model that copes with a missing modality
    needs none in particular (:func:`prepare_for_scoring` then checks that one is there).

    Parameters
    ----------
    channel_map : mapping of str to str, optional
        Canonical modality → the exact EDF signal label for this call.  It replaces the profile's
        aliases and drops its reference derivation (the label names the final signal); a channel
        named this way is required (asking for a label the file lacks is an error, not a
        silently missing modality).

    Raises
    ------
    ConfigError
        ``channel_map`` names a modality the model does not use or gives an empty label; the
        model uses a modality neither the profile nor ``channel_map`` says how to find while it
        cannot do without it.
    """
    spec_ = model.spec if isinstance(model, ScoringModel) else model
    base = profile if isinstance(profile, CohortProfile) else load_profile(profile or spec_.profile_name)
    channel_map = dict(channel_map or {})
    errors = [f"channel_map: modality {m!r} is not used by model {spec_.name!r} "
              f"(it uses {list(spec_.modalities)})" for m in channel_map if m not in spec_.modalities]
    errors += [f"channel_map[{m!r}]: the EDF label must be a non-empty string, got {lbl!r}"
               for m, lbl in channel_map.items() if not isinstance(lbl, str) or not lbl.strip()]
    if errors:
        raise ConfigError("channel_map", errors)
    policy = spec_.policy
    channels: dict[str, ChannelSpec] = {}
    for m in spec_.modalities:
        spec = base.channels.get(m)
        if m in channel_map:
            label = channel_map[m].strip()
            spec = (spec.model_copy(update={"aliases": [label], "reference": None}) if spec is not None
                    else ChannelSpec(aliases=[label]))
        if spec is None:
            if policy == "require":
                errors.append(f"model {spec_.name!r} needs modality {m!r} but profile "
                              f"{base.name!r} has no channel for it; add it to the profile or pass "
                              f"channel_map={{{m!r}: '<EDF label>'}}")
            continue
        required = policy == "require" or m in channel_map
        channels[m] = spec.model_copy(update={"required": required})
    if errors:
        raise ConfigError(f"profile {base.name!r}", errors)
    # model_copy skips validation: the "one required channel" rule is enforced per night instead.
    return base.model_copy(update={"channels": channels})


def prepare_for_scoring(model: ScoringModel | ModelSpec, psg: PathOrData, *, recording_id: str,
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
        data = read_psg(psg, source=source)
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
                                     f"{data.labels}; pass channel_map to name the EDF signals",
                             recording_id)
    return rec


# -- scoring -------------------------------------------------------------------------------------
def score_prepared(model: ScoringModel, rec: PreparedRecording, *, stride: int | None = None
                   ) -> ScoredNight:
    """Stage a prepared (unscored) night.

    Builds the model's batch from the record — modalities the recording lacks are left out, so
    the model uses what is there — runs :func:`somnray.models.inference.predict_night`, and
    labels each epoch with the inputs its stage came from.

    Parameters
    ----------
    model : ScoringModel
    rec : PreparedRecording
        From :func:`prepare_for_scoring` (or the data pipeline).
    stride : int, optional
        Window stride in epochs (default: the window length; 1 averages every window position).

    Returns
    -------
    ScoredNight
        With ``modalities_used`` per epoch and an ``imputed_modality`` quality flag for models
        that imagine missing inputs.

    Raises
    ------
    RecordingError
        The night has no epoch, or the stride is outside ``[1, L]``.
    """
    n = rec.n_epochs
    if n == 0:
        raise RecordingError("scoring", "the recording has no epoch to score", rec.recording_id)
    if stride is not None and not 1 <= stride <= model.length:
        raise ConfigError("stride", [f"stride must be in [1, {model.length}] (the model's window "
                                     f"length), got {stride}"])
    mods = model.modalities
    available = np.zeros((n, len(mods)), dtype=bool)
    signals: dict[str, np.ndarray] = {}
    for j, m in enumerate(mods):
        x = rec.signals.get(m)
        if x is None:
            continue
        mask = np.asarray(rec.available[m], dtype=bool)
        if not mask.any():
            continue  # a modality with no usable epoch is as absent as a missing channel
        signals[m] = x
        available[:, j] = mask
    if model.policy == "require":
        lacking = [m for m in mods if m not in signals]
        if lacking:
            raise RecordingError("scoring", f"model {model.info.model!r} needs modalities "
                                            f"{list(mods)} but {lacking} is absent", rec.recording_id)
    t0 = time.perf_counter()
    probs = predict_night(model.model, signals, available, length=model.length, stride=stride,
                          batch_size=model.batch_size, device=model.device,
                          autocast_dtype=model.autocast_dtype)
    log.debug("scored %s: %d epochs in %.2f s", rec.recording_id, n, time.perf_counter() - t0)
    used = modalities_used_labels(mods, available, model.policy)
    quality: dict[str, np.ndarray] = {}
    if model.policy == "impute":
        quality["imputed_modality"] = available.any(axis=1) & ~available.all(axis=1)
    return ScoredNight(recording_id=rec.recording_id, epoch_index=rec.epoch_index,
                       probabilities=probs, modalities=mods, available=available,
                       model=model.model_info, modalities_used=used, quality=quality)


def score_recording(model: ScoringModel, psg_path: PathOrData, *, recording_id: str,
                    profile: CohortProfile | str | None = None,
                    channel_map: dict[str, str] | None = None, psg_source: str | None = None,
                    stride: int | None = None) -> ScoredNight:
    """Score one EDF/EDF+/BDF night.

    Parameters
    ----------
    model : ScoringModel
        Loaded once (:meth:`ScoringModel.load`).
    psg_path : str, path-like, bytes or binary file
        Local path, fsspec URI, or the file's content (an HTTP upload).
    recording_id : str
        The only name the result and its outputs carry (never EDF header fields).
    profile : CohortProfile or str, optional
        Cohort profile (name or YAML path); default the bundle's profile, else ``generic``.
    channel_map : dict of str to str, optional
        Modality → EDF signal label, overriding the profile's aliases for this call.
    psg_source : str, optional
        Name of the file in error messages (the user's URI or upload name).
    stride : int, optional
        Window stride in epochs (default: the model's window length).

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
    prof = scoring_profile(model, profile, channel_map)
    rec = prepare_for_scoring(model, psg_path, recording_id=recording_id, profile=prof,
                              psg_source=psg_source)
    return score_prepared(model, rec, stride=stride)


__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_PROFILE", "ModelSpec", "ScoringModel", "bundle_location", "choose_autocast",
    "choose_device", "cpu_has_amx", "missing_modality_policy", "modalities_used_labels",
    "prepare_for_scoring", "score_prepared", "score_recording", "scoring_profile",
]
