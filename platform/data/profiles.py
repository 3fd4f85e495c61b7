"""Cohort profiles: every per-cohort quirk (channel aliases, derivations, filters, annotation
format, label map, wake trimming, file pairing) as one validated, frozen object.

A profile is a YAML file.  Several ship with somnray (``sleep-edf`` and its ``sleep-edf-20`` /
``sleep-edf-78`` cassette subsets, ``shhs`` and ``shhs-5463``, and ``generic``, the annotated
template to copy for a new cohort); any other YAML path works the same way, and a profile may
``extends:`` another one.  Loading
validates the whole file and reports every problem at once in one :class:`ConfigError`, so a user
fixes a new profile in one round instead of one error at a time.  See ``docs/profiles.md``.

Nothing below :func:`load_profile` sees the raw mapping: readers and preprocessing take the typed
objects defined here.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from somnray.core.config import parse_yaml, validation_lines
from somnray.core.errors import ConfigError

__all__ = [
    "AnnotationSpec",
    "AvailabilitySpec",
    "ChannelAlternative",
    "ChannelSpec",
    "CohortProfile",
    "PairingSpec",
    "ReadingSpec",
    "TrimSpec",
    "list_profiles",
    "load_profile",
    "normalize_label",
]

_PROFILE_PACKAGE = "somnray.data"
_PROFILE_FOLDER = "profiles"


def normalize_label(label: str) -> str:
    """Reduce an EDF signal label to lower-case letters and digits.

    Sites spell one channel ``EOG(L)``, ``EOG L`` or ``EOGL`` (MATLAB's ``edfread`` even strips the
    punctuation itself); comparing the reduced forms makes aliases match all of them.
    """
    return re.sub(r"[^0-9a-z]", "", label.lower())


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt option silently ignored is a wrong dataset later.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelAlternative(_Strict):
    """One way to find a modality's signal: a label, optionally minus a reference.

    Parameters
    ----------
    aliases : list of str
        EDF signal labels tried in order; the first present wins.  Matching ignores case, spaces
        and punctuation (``EOG(L)`` = ``EOG L`` = ``EOGL``).
    reference : list of str, optional
        Aliases of a reference channel subtracted from the channel (a bipolar derivation such as
        SHHS's EOG(L) − EOG(R), or C3 − A2 from monopolar electrodes).  Both are brought to a
        common rate before the subtraction.
    """

    aliases: list[str] = Field(min_length=1)
    reference: list[str] | None = None

    @field_validator("aliases", "reference")
    @classmethod
    def _non_empty_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must list at least one label (or be omitted)")
        bad = [v for v in value if not normalize_label(v)]
        if bad:
            raise ValueError(f"labels {bad} contain no letter or digit, so they can never match")
        return value


class ChannelSpec(ChannelAlternative):
    """How one canonical modality is found (and derived) in a PSG file.

    Parameters
    ----------
    aliases, reference
        The primary signal (see :class:`ChannelAlternative`).
    fallbacks : list of ChannelAlternative
        Tried in order when the primary signal is missing or unusable (not found, no reference,
        an unscalable header, too slow, no usable epoch): C4-A1, else C3-A2, ...  The signal
        actually used is recorded in the recording's ``channels`` info.
    combine : {"first", "average"}
        ``first``: the first usable alternative; ``average``: the per-epoch mean of every usable
        alternative (an epoch is available when at least one of them is).
    required : bool
        Missing (or unusable) → the recording is rejected; otherwise the modality is absent.
    band : (float, float), optional
        Zero-phase FIR band-pass edges in Hz, applied at 100 Hz; a lower edge of 0 gives a
        low-pass.  None = no filter.
    min_sfreq : float, optional
        Lowest acceptable native rate in Hz.  A slower signal (Sleep-EDF SC's 1-Hz EMG envelope)
        is not the physiological signal the modality stands for: absent with a warning when the
        channel is optional, a rejection when it is required.
    band_fit : {"strict", "auto"}
        A band whose upper edge is at/above the native Nyquist frequency: ``strict`` makes the
        channel unusable (the band is a protocol the data must meet); ``auto`` clips the upper
        edge to 0.9 × the native Nyquist frequency, with a warning.
    """

    fallbacks: list[ChannelAlternative] = Field(default_factory=list)
    combine: Literal["first", "average"] = "first"
    required: bool = True
    band: tuple[float, float] | None = None
    min_sfreq: float | None = Field(default=None, gt=0)
    band_fit: Literal["strict", "auto"] = "strict"

    @field_validator("band")
    @classmethod
    def _ordered_band(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None:
            low, high = value
            if low < 0 or high <= low:
                raise ValueError(f"must be (low, high) with 0 <= low < high in Hz, got {list(value)}")
            if high >= 50:
                raise ValueError(
                    f"upper edge {high} Hz is at/above 50 Hz, the Nyquist frequency of the 100-Hz "
                    "output; lower it (e.g. 45)")
        return value


class AnnotationSpec(_Strict):
    """Where the scoring is and how its labels map to classes.

    Parameters
    ----------
    format : {"edf_annotations", "nsrr_xml", "csv", "tsv", "embedded", "edf_signal"}
        ``edf_annotations``: a separate EDF+ file of annotations (Sleep-EDF ``*-Hypnogram.edf``);
        ``embedded``: EDF+ annotations inside the PSG file itself; ``nsrr_xml``: NSRR XML
        (``ScoredEvent`` with ``EventType`` ``Stages|Stages``); ``csv``/``tsv``: a table;
        ``edf_signal``: a signal whose sample values are stage codes, in a separate EDF file or,
        without one, in the PSG itself (``signal`` names it).
    label_map : dict of str to int
        Every stage label string the source uses → 0 W, 1 N1, 2 N2, 3 N3, 4 REM, or -1
        (movement/unscored: kept in the sequence, ignored by losses).  Labels are compared after
        stripping surrounding whitespace; an unlisted label rejects the recording, listing it.
        Numeric codes (R&K ``0``–``5``, ``edf_signal`` values) may be written as plain YAML
        integers; they are compared as text.
    ignore : list of str
        Glob patterns (``fnmatch``) of annotation texts that are not stages (arousals, lights
        off, ...) and are skipped rather than rejected.
    event_type : str
        NSRR XML only: the ``EventType`` of stage events.
    table_layout : {"events", "epochs"}
        CSV/TSV only: ``events`` = one row per run (onset, duration, stage columns, seconds from
        the PSG start); ``epochs`` = one stage per row, each row the next ``label_period``.
    onset_column, duration_column, stage_column : str
        CSV/TSV column names (used when ``header`` is true).
    delimiter : str, optional
        CSV/TSV only: the column separator; default ``,`` for csv and a tab for tsv.
    header : bool
        CSV/TSV only: whether the first row names the columns.  Without a header the columns are
        taken by position: onset, duration, stage (``events``) or stage alone (``epochs``).
    min_coverage : float
        Reject the recording when the hypnogram covers less than this fraction of the signal's
        epochs (usually a PSG paired with the wrong hypnogram).
    label_period : int
        Seconds between two labels of the scoring (5, 10, 15, 20, 30, 60, ...): stage onsets and
        durations must be multiples of it.  Labels are mapped onto the 30-s epochs by majority
        of duration (see :func:`somnray.data.hypnograms.hypnogram_to_epochs`).
    min_purity : float
        An epoch whose majority stage covers less than this fraction of its 30 s, or whose two
        largest stages tie, is unscored (-1).
    max_overrun_s : float, optional
        Seconds of labels past the end of the signal that are dropped with a warning; more
        rejects the recording (a hypnogram read at the wrong period, or another night's).
        None: any overrun is dropped with a warning.
    signal : str, optional
        ``edf_signal`` only: the label of the hypnogram signal (matching ignores case, spaces
        and punctuation, as channel aliases do).
    """

    format: Literal["edf_annotations", "nsrr_xml", "csv", "tsv", "embedded", "edf_signal"]
    label_map: dict[str, int] = Field(min_length=1)
    ignore: list[str] = Field(default_factory=list)
    event_type: str = "Stages|Stages"
    table_layout: Literal["events", "epochs"] = "events"
    onset_column: str = "onset"
    duration_column: str = "duration"
    stage_column: str = "stage"
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    header: bool = True
    min_coverage: float = Field(default=0.5, ge=0, le=1)
    label_period: int = Field(default=30, ge=1)
    min_purity: float = Field(default=0.5, ge=0, le=1)
    max_overrun_s: float | None = Field(default=60.0, ge=0)
    signal: str | None = Field(default=None, min_length=1)

    @field_validator("label_map", mode="before")
    @classmethod
    def _numeric_codes_as_text(cls, value):
        # YAML reads `0: 0` as an int key; stage codes are compared with the text the files hold.
        if isinstance(value, dict):
            return {(str(k) if isinstance(k, int) and not isinstance(k, bool) else k): v
                    for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _signal_named(self) -> AnnotationSpec:
        if self.format == "edf_signal" and self.signal is None:
            raise ValueError("format 'edf_signal' needs annotations.signal: the label of the "
                             "signal that holds the stage codes")
        return self

    @field_validator("label_map")
    @classmethod
    def _classes_in_range(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v not in (-1, 0, 1, 2, 3, 4)}
        if bad:
            raise ValueError(
                f"classes must be 0 W, 1 N1, 2 N2, 3 N3, 4 REM or -1 (unscored); got {bad}")
        stripped = [k.strip() for k in value]
        dupes = sorted({k for k in stripped if stripped.count(k) > 1})
        if dupes:
            raise ValueError(f"labels {dupes} appear twice once surrounding whitespace is removed")
        return value

    def lookup(self) -> dict[str, int]:
        """The label map keyed by whitespace-stripped labels (how readers compare them)."""
        return {k.strip(): v for k, v in self.label_map.items()}


class TrimSpec(_Strict):
    """Which wake epochs at the ends of the night are dropped (docs/models.md §4.5).

    Parameters
    ----------
    rule : {"none", "edges", "shhs_code", "shhs_paper"}
        ``edges``: keep wake only up to ``edge_minutes`` before the first and after the last sleep
        epoch (DeepSleepNet/AttnSleep/SleePyCo, used for Sleep-EDF); ``shhs_code``: the rule
        SleepTransformer's scripts apply (used by CoRe-Sleep and MC²SleepNet on SHHS);
        ``shhs_paper``: the rule as CoRe-Sleep's paper states it.
    edge_minutes : float
        Margin of the ``edges`` rule.
    unscored : {"keep", "drop"}
        What happens to unscored and movement epochs (-1) inside the kept span: ``keep`` leaves
        them in the sequence (masked out of the loss, so neighbouring windows keep their real
        time context); ``drop`` cuts them out, as the pipelines of several papers do, so the
        remaining epochs are concatenated (``epoch_index`` then has gaps).
    """

    rule: Literal["none", "edges", "shhs_code", "shhs_paper"] = "none"
    edge_minutes: float = Field(default=30.0, ge=0)
    unscored: Literal["keep", "drop"] = "keep"


class PairingSpec(_Strict):
    """How recordings are discovered in a folder and paired with their hypnograms.

    Parameters
    ----------
    psg_glob : str
        Glob of PSG file names (``*-PSG.edf``).
    hypnogram_glob : str, optional
        Glob of hypnogram file names; None when the annotations are embedded in the PSG.
    key_regex : str
        Applied (``re.match``) to both file names; group 1 is the key that pairs a PSG with its
        hypnogram (Sleep-EDF: the first 6 characters, ``SC4ssN``).
    subject_regex : str
        Applied to the PSG file name; group 1 is the subject id (splits are subject-wise).
    recording_id_regex : str, optional
        Applied to the PSG file name; group 1 is the recording id.  Default: the pairing key.
    """

    psg_glob: str = Field(min_length=1)
    hypnogram_glob: str | None = None
    key_regex: str
    subject_regex: str
    recording_id_regex: str | None = None

    @field_validator("key_regex", "subject_regex", "recording_id_regex")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc})") from None
        if compiled.groups < 1:
            raise ValueError(f"needs a capturing group (group 1 is used); got {value!r}")
        return value


class AvailabilitySpec(_Strict):
    """Thresholds of the per-epoch availability mask (see ``preprocess.availability``).

    Parameters
    ----------
    flat_lsb : float
        An epoch whose standard deviation is below this many quantisation steps of the channel
        (its EDF physical range over its digital range) is flat: a disconnected or switched-off
        input.  Counting in steps makes the threshold independent of the channel's units.
    clip_fraction : float
        An epoch with more than this fraction of its samples at the channel's physical minimum or
        maximum is clipped (amplifier saturation).
    """

    flat_lsb: float = Field(default=1.0, ge=0)
    clip_fraction: float = Field(default=0.1, gt=0, le=1)


class ReadingSpec(_Strict):
    """How forgiving reading a PSG file is.

    Parameters
    ----------
    truncated : {"keep", "reject"}
        A file that ends inside its data records (a download cut short): ``keep`` prepares its
        complete records, with a warning and ``truncated: true`` in the recording's info;
        ``reject`` rejects the recording.
    """

    truncated: Literal["keep", "reject"] = "keep"


class CohortProfile(_Strict):
    """Everything somnray needs to know about one cohort's files (one YAML file).

    Parameters
    ----------
    name : str
        Profile name (stored with the prepared dataset).
    description : str
        What the cohort is and where its conventions come from.
    channels : dict of str to ChannelSpec
        Keyed by canonical modality: ``eeg``, ``eog``, ``emg`` (and e.g. ``eeg2``, ``ecg``).
    annotations : AnnotationSpec
        Scoring format and label map.
    trimming : TrimSpec
        Wake trimming rule.
    normalization : {"zscore", "robust", "none"}
        Per-recording, per-modality scaling; statistics come from available epochs only.
    pairing : PairingSpec
        File discovery and pairing.
    require_all_stages : bool
        Reject recordings lacking any of the five stages (CoRe-Sleep's 5,463 SHHS subset).
    availability : AvailabilitySpec
        Flat/clipped epoch thresholds.
    reading : ReadingSpec
        What a truncated file becomes.
    """

    name: str = Field(min_length=1)
    description: str = ""
    channels: dict[str, ChannelSpec] = Field(min_length=1)
    annotations: AnnotationSpec
    trimming: TrimSpec = Field(default_factory=TrimSpec)
    normalization: Literal["zscore", "robust", "none"] = "zscore"
    pairing: PairingSpec
    require_all_stages: bool = False
    availability: AvailabilitySpec = Field(default_factory=AvailabilitySpec)
    reading: ReadingSpec = Field(default_factory=ReadingSpec)

    @field_validator("channels")
    @classmethod
    def _modality_names(cls, value: dict[str, ChannelSpec]) -> dict[str, ChannelSpec]:
        bad = [k for k in value if not re.fullmatch(r"[a-z][a-z0-9_]*", k)]
        if bad:
            raise ValueError(
                f"modality names {bad} must be lower-case identifiers (eeg, eog, emg, eeg2, ...); "
                "they become column names")
        return value

    @model_validator(mode="after")
    def _one_required(self) -> CohortProfile:
        if not any(c.required for c in self.channels.values()):
            raise ValueError("channels: at least one modality must be required, or a recording "
                             "with none of them would be accepted with no signal at all")
        return self

    @property
    def modalities(self) -> list[str]:
        """Canonical modality names in profile order."""
        return list(self.channels)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with somnray (usable as ``load_profile(name)``)."""
    folder = resources.files(_PROFILE_PACKAGE).joinpath(_PROFILE_FOLDER)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _resolve(name_or_path: str | os.PathLike, relative_to: Path | None = None) -> tuple[str, str, Path | None]:
    """Return (source name for messages, YAML text, folder of the file or None when shipped).

    A relative path is looked up beside ``relative_to`` first (the folder of a profile that
    ``extends`` it), then from the working directory.
    """
    text_name = os.fspath(name_or_path)
    shipped = list_profiles()
    if text_name in shipped:
        ref = resources.files(_PROFILE_PACKAGE).joinpath(_PROFILE_FOLDER, f"{text_name}.yaml")
        return f"profile {text_name!r} ({ref})", ref.read_text(encoding="utf-8"), None
    path = Path(text_name).expanduser()
    if relative_to is not None and not path.is_absolute() and (relative_to / path).is_file():
        path = relative_to / path
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8"), path.resolve().parent
    raise ConfigError(text_name, [
        f"no such profile: not a shipped profile name ({', '.join(shipped)}) and no file at this path"])


def _merged(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _raw_profile(name_or_path: str | os.PathLike, relative_to: Path | None = None,
                 seen: tuple[str, ...] = ()) -> tuple[str, dict]:
    """The profile's mapping with every ``extends`` chain resolved (the child's keys win)."""
    source, text, folder = _resolve(name_or_path, relative_to)
    if source in seen:
        raise ConfigError(source, [f"extends: circular chain {' -> '.join((*seen, source))}"])
    raw = parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping of profile keys, got {type(raw).__name__}"])
    parent = raw.pop("extends", None)
    if parent is None:
        return source, raw
    if not isinstance(parent, str) or not parent:
        raise ConfigError(source, ["extends: expected the name of a shipped profile or a YAML path"])
    _, base = _raw_profile(parent, folder, (*seen, source))
    return source, _merged(base, raw)


def load_profile(name_or_path: str | os.PathLike) -> CohortProfile:
    """Load and validate a cohort profile.

    A profile may start from another one with ``extends: NAME_OR_PATH`` (a shipped profile name, or
    a YAML path relative to the extending file): its keys are laid over the base's, mappings merged
    key by key (``channels: {eeg: {band: [0.3, 35]}}`` changes only the EEG band) and every other
    value replaced.

    Parameters
    ----------
    name_or_path : str or path-like
        A shipped profile name (see :func:`list_profiles`) or the path of a YAML file.

    Returns
    -------
    CohortProfile
        The frozen, validated profile.

    Raises
    ------
    ConfigError
        The name is unknown, the YAML does not parse, an ``extends`` chain is circular, or the
        content is invalid; every validation problem is listed as a ``field.path: message`` line.
    """
    source, raw = _raw_profile(name_or_path)
    try:
        return CohortProfile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, validation_lines(
            exc, unknown_key="unknown key (check the spelling against docs/profiles.md)")) from None
