"""Is a night like the ones the model was trained on?  The domain-shift check of scoring.

A model scores any night it is given, with confident-looking probabilities, even one recorded
at another rate, with another derivation, at ten times the amplitude or with a channel of pure
noise.  This module compares a prepared night with what the model's bundle records of its
training data (``model.json``: the cohort profile and ``data_summary``, from
:mod:`somnray.data.signal_summary`) and says, with a short human reason per finding, when the
night lies outside.  It is pure (numpy and dicts): the serving code computes it for each night
and writes it into every output (``docs/domain-shift.md``).

Checks, per modality the model uses and the night has:

``native_sfreq``
    The rate the signal was recorded at is one the training recordings had.
``signal``
    The EDF signal (or derivation) is one the training recordings used; for bundles that do not
    record those, one the training profile maps (aliases, references, fallbacks).
``band``
    The band-pass applied is the training one.
``amplitude``
    The physical amplitude scale (what the profile's normalisation divided by, in µV) lies within
    the training recordings' 1st-99th percentile widened by :attr:`DomainThresholds.amplitude_factor`.
``band_power``
    The night's mean relative band powers (delta … beta of the prepared signal) are within
    :attr:`DomainThresholds.band_power_distance` of the training mean, in units of the training
    epochs' spread (an RMS z-score over the five bands): a channel of noise, a misplaced electrode
    or another derivation's spectrum.

and once per night, ``normalization``: the prepared signals are normalised as in training.

The scoring profile (another profile, ``--channel-map``) is compared through what it did to the
night: the signal it picked, the band it applied, the normalisation.  A check whose training side
the bundle does not record (bundles exported before the check existed) is ``skipped``, with
why; the night is then flagged on the other checks only.  Reasons name modalities, signal labels,
rates and numbers only: never a file name, path or EDF header field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from somnray.core.errors import ConfigError
from somnray.data.profiles import normalize_label
from somnray.data.recording import channels_used
from somnray.data.signal_summary import BANDS, summarize_epochs, to_microvolts

#: Every check, in the order it is reported.
CHECKS = ("normalization", "native_sfreq", "signal", "band", "amplitude", "band_power")
#: Most epochs of a night the band-power check reads (evenly spaced): a mean over 1,024 epochs is
#: as good as over a whole day's 2,880, at a third of the FFTs.
NIGHT_EPOCHS = 1024
#: Smallest training spread of a band's share used as the z-score's unit: a band whose share
#: barely varies in training must not turn a difference of 0.001 into a shift.
MIN_BAND_SPREAD = 0.02
#: Names listed in a reason before it says how many more there are.
_LISTED = 3

Status = Literal["ok", "shift", "skipped"]


@dataclass(frozen=True)
class DomainThresholds:
    """How far a night may lie from the training data before it is flagged.

    Parameters
    ----------
    amplitude_factor : float
        A night's amplitude scale is a shift below the training 1st percentile divided by this,
        or above the 99th percentile times this.  Default 3: a gain or unit error is a factor of
        10 or 1,000, while a night's EEG amplitude varies with age, electrode impedance and sleep
        architecture within about ×2 of the cohort's range; 3 leaves room for that.
    band_power_distance : float
        Most RMS z-score of the night's mean relative band powers against the training mean,
        in units of the training epochs' spread per band (at least :data:`MIN_BAND_SPREAD`).
        Default 2: a night's mean is an average over hundreds of epochs, so a night of the
        training kind sits inside one epoch-spread of the mean (0.17-0.86 measured on synthetic
        nights of held-out and new subjects, ``docs/domain-shift.md``), while a channel of white
        noise lies at 5.4-5.8; 2 is about the geometric middle of the two.
    ignore : tuple of str
        Checks (names of :data:`CHECKS`) that are reported but never flag a night, e.g.
        ``native_sfreq`` for a model known to be rate-robust.
    """

    amplitude_factor: float = 3.0
    band_power_distance: float = 2.0
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.amplitude_factor, (int, float)) and self.amplitude_factor >= 1):
            problems.append(f"amplitude_factor must be a number >= 1, got {self.amplitude_factor!r}")
        if not (isinstance(self.band_power_distance, (int, float)) and self.band_power_distance > 0):
            problems.append(f"band_power_distance must be a number > 0, got {self.band_power_distance!r}")
        unknown = sorted(set(self.ignore) - set(CHECKS))
        if unknown:
            problems.append(f"ignore: unknown check(s) {unknown}; the checks are {list(CHECKS)}")
        if problems:
            raise ConfigError("domain-shift thresholds", problems)
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any] | None) -> "DomainThresholds":
        """Thresholds from a mapping (a config file, the Serve config); missing keys keep defaults.

        Raises
        ------
        ConfigError
            An unknown key or an invalid value (every problem at once).
        """
        doc = dict(doc or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError("domain-shift thresholds", [f"unknown key(s) {unknown}; expected {sorted(known)}"])
        if isinstance(doc.get("ignore"), str):
            doc["ignore"] = [x.strip() for x in doc["ignore"].split(",") if x.strip()]
        if "ignore" in doc:
            doc["ignore"] = tuple(doc["ignore"])
        return cls(**doc)

    @classmethod
    def parse(cls, values: Sequence[str]) -> "DomainThresholds":
        """Thresholds from ``KEY=VALUE`` strings (``somnray score --domain-shift``).

        ``amplitude_factor=5``, ``band_power_distance=2``, ``ignore=native_sfreq,band``.

        Raises
        ------
        ConfigError
            A string that is not ``KEY=VALUE``, an unknown key or an invalid value.
        """
        doc: dict[str, Any] = {}
        problems = []
        for value in values:
            key, sep, raw = value.partition("=")
            key = key.strip()
            if not sep or not key:
                problems.append(f"{value!r}: expected KEY=VALUE, e.g. amplitude_factor=5")
            elif key == "ignore":
                doc[key] = raw
            else:
                try:
                    doc[key] = float(raw)
                except ValueError:
                    problems.append(f"{value!r}: {key} must be a number")
        if problems:
            raise ConfigError("--domain-shift", problems)
        return cls.from_mapping(doc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the outputs record)."""
        doc = asdict(self)
        doc["ignore"] = list(self.ignore)
        return doc


@dataclass(frozen=True)
class CheckResult:
    """One comparison of a night with the training data.

    Parameters
    ----------
    check : str
        One of :data:`CHECKS`.
    modality : str or None
        The modality compared (None: the whole night).
    status : {"ok", "shift", "skipped"}
        ``shift``: the night lies outside (``detail`` is the reason); ``skipped``: the bundle or
        the night lacks what the check needs (``detail`` says what).
    detail : str
        A short human sentence: the reason of a shift, what was compared, or why it was skipped.
    value : float, optional
        The number compared (ratio to the training median, band-power distance), when there is one.
    limit : float, optional
        The threshold it was compared with.
    ignored : bool
        A shift of a check in :attr:`DomainThresholds.ignore`: reported, not flagged.
    """

    check: str
    modality: str | None
    status: Status
    detail: str
    value: float | None = None
    limit: float | None = None
    ignored: bool = False

    @property
    def flags(self) -> bool:
        """Whether this result flags the night."""
        return self.status == "shift" and not self.ignored

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "CheckResult":
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: doc.get(f.name) for f in fields(cls) if f.name in doc})


@dataclass(frozen=True)
class DomainCheck:
    """The domain-shift check of one night: every comparison and the thresholds used.

    Attributes
    ----------
    checks : tuple of CheckResult
    thresholds : DomainThresholds
    """

    checks: tuple[CheckResult, ...] = ()
    thresholds: DomainThresholds = field(default_factory=DomainThresholds)

    @property
    def flag(self) -> bool:
        """Whether the night lies outside the training domain (some check that is not ignored)."""
        return any(c.flags for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """The reason of each flagging check, in :data:`CHECKS` order."""
        return [c.detail for c in self.checks if c.flags]

    @property
    def skipped(self) -> list[str]:
        """Why checks were skipped (``check (modality): why``)."""
        return [f"{c.check}{f' ({c.modality})' if c.modality else ''}: {c.detail}"
                for c in self.checks if c.status == "skipped"]

    def to_dict(self) -> dict[str, Any]:
        """``{flag, reasons, skipped, checks, thresholds}``: what every output records."""
        return {"flag": self.flag, "reasons": self.reasons, "skipped": self.skipped,
                "checks": [c.to_dict() for c in self.checks], "thresholds": self.thresholds.to_dict()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "DomainCheck":
        """Inverse of :meth:`to_dict` (``flag``, ``reasons`` and ``skipped`` are derived again)."""
        return cls(checks=tuple(CheckResult.from_dict(c) for c in doc.get("checks") or ()),
                   thresholds=DomainThresholds.from_mapping(doc.get("thresholds")))


# -- the two sides ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingDomain:
    """What a bundle records of its training data: the cohort profile and ``data_summary``.

    Build with :meth:`of` from a ``BundleInfo``; small and picklable.
    """

    profile: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, info: Any) -> "TrainingDomain":
        """The training domain of a :class:`~somnray.models.bundle.BundleInfo`."""
        return cls(profile=info.profile, summary=dict(info.data_summary or {}))

    def channel(self, modality: str) -> Mapping[str, Any] | None:
        """The training profile's channel entry of ``modality`` (None: not recorded)."""
        return ((self.profile or {}).get("channels") or {}).get(modality)


@dataclass(frozen=True)
class NightSummary:
    """What the check reads of a prepared night.

    Build with :meth:`of`.  ``info`` is the night's ``PreparedRecording.info`` (rates, signals,
    bands, amplitude scales, normalisation); ``band_power`` the mean relative band power of each
    modality's available prepared epochs.
    """

    info: Mapping[str, Any]
    band_power: Mapping[str, Mapping[str, float] | None]

    @classmethod
    def of(cls, info: Mapping[str, Any], signals: Mapping[str, np.ndarray | None],
           available: Mapping[str, np.ndarray], modalities: Sequence[str]) -> "NightSummary":
        """Summarise the ``modalities`` of a prepared night (``PreparedRecording`` fields)."""
        power: dict[str, Mapping[str, float] | None] = {}
        for m in modalities:
            x = signals.get(m)
            if x is None:
                continue
            usable = np.flatnonzero(np.asarray(available.get(m, np.ones(len(x), bool)), dtype=bool))
            if not len(usable):
                continue
            if len(usable) > NIGHT_EPOCHS:
                usable = usable[np.linspace(0, len(usable) - 1, NIGHT_EPOCHS).round().astype(int)]
            shares = summarize_epochs(np.asarray(x[usable], dtype=np.float32))["relative_band_power"]
            power[m] = None if any(v is None for v in shares.values()) else shares
        return cls(info=info, band_power=power)


# -- the checks -------------------------------------------------------------------------------
def _names(values: Sequence[Any], unit: str = "") -> str:
    shown = [f"{v:g}{unit}" if isinstance(v, float) else str(v) for v in values[:_LISTED]]
    more = f" and {len(values) - _LISTED} more" if len(values) > _LISTED else ""
    return ", ".join(shown) + more


def _band_text(band: Sequence[float] | None) -> str:
    return "none" if band is None else f"{band[0]:g}-{band[1]:g} Hz"


def _signal_key(name: str) -> str:
    # "E1 - E2" and "E1-E2" are one derivation: compare the normalised parts.
    return "-".join(normalize_label(part) for part in name.split(" - "))


def _profile_signals(channel: Mapping[str, Any]) -> list[str]:
    """Every signal name a training profile's channel entry maps (aliases × references, fallbacks)."""
    names = []
    for alt in [channel, *(channel.get("fallbacks") or [])]:
        refs = alt.get("reference") or [None]
        names += [a if r is None else f"{a} - {r}" for a in alt.get("aliases") or [] for r in refs]
    return names


def _check_normalization(night: NightSummary, training: TrainingDomain) -> CheckResult:
    ours = night.info.get("normalization")
    theirs = (training.profile or {}).get("normalization")
    if ours is None or theirs is None:
        return CheckResult("normalization", None, "skipped",
                           "the bundle records no training profile" if theirs is None
                           else "the night records no normalisation")
    if ours != theirs:
        return CheckResult("normalization", None, "shift",
                           f"signals normalised with '{ours}'; training with '{theirs}'")
    return CheckResult("normalization", None, "ok", f"normalised with '{ours}' as in training")


def _check_rate(m: str, facts: Mapping[str, Any], training: TrainingDomain) -> CheckResult:
    rates = ((training.summary.get(m) or {}).get("reading") or {}).get("native_sfreq")
    rate = float(facts["native_sfreq"])
    if not rates:
        return CheckResult("native_sfreq", m, "skipped", "the bundle records no training sampling rates")
    if not any(math.isclose(rate, float(r), rel_tol=1e-6) for r in rates):
        return CheckResult("native_sfreq", m, "shift",
                           f"{m} sampled at {rate:g} Hz; training saw {_names([float(r) for r in rates])} Hz",
                           value=rate)
    return CheckResult("native_sfreq", m, "ok", f"{m} sampled at {rate:g} Hz as in training", value=rate)


def _check_signal(m: str, used: str, training: TrainingDomain) -> CheckResult:
    recorded = ((training.summary.get(m) or {}).get("reading") or {}).get("signals")
    channel = training.channel(m)
    known = list(recorded) if recorded else (_profile_signals(channel) if channel else [])
    if not known:
        return CheckResult("signal", m, "skipped", "the bundle records neither the training signals "
                                                   "nor a profile channel for this modality")
    # An average of alternatives matches when every signal it averages does.
    parts = used[len("mean("):-1].split(", ") if used.startswith("mean(") else [used]
    keys = {_signal_key(k) for k in known}
    if all(_signal_key(p) in keys for p in parts):
        return CheckResult("signal", m, "ok", f"{m} read from {used} as in training")
    where = "training" if recorded else "the training profile maps"
    return CheckResult("signal", m, "shift", f"{m} derivation {used} vs {where} {_names(known)}")


def _check_band(m: str, facts: Mapping[str, Any], training: TrainingDomain) -> CheckResult:
    reading = (training.summary.get(m) or {}).get("reading") or {}
    channel = training.channel(m)
    if "bands" in reading:
        bands = reading["bands"]
    elif channel is not None:
        bands = [channel.get("band")]
    else:
        return CheckResult("band", m, "skipped", "the bundle records no training band-pass")
    band = facts.get("band")

    def same(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return all(abs(float(x) - float(y)) <= 0.05 for x, y in zip(a, b))

    if any(same(band, b) for b in bands):
        return CheckResult("band", m, "ok", f"{m} band-pass {_band_text(band)} as in training")
    return CheckResult("band", m, "shift", f"{m} band-pass {_band_text(band)} vs training "
                                           f"{_names([_band_text(b) for b in bands])}")


def _check_amplitude(m: str, night: NightSummary, training: TrainingDomain,
                     thresholds: DomainThresholds) -> CheckResult:
    ours = (night.info.get("amplitude") or {}).get(m)
    theirs = (training.summary.get(m) or {}).get("amplitude")
    if theirs is None:
        return CheckResult("amplitude", m, "skipped", "the bundle records no training amplitude scale")
    if ours is None:
        return CheckResult("amplitude", m, "skipped", "the night records no amplitude scale")
    if ours.get("statistic") != theirs.get("statistic"):
        return CheckResult("amplitude", m, "skipped", f"the night's amplitude is a {ours.get('statistic')}, "
                                                      f"training's a {theirs.get('statistic')}")
    scale = to_microvolts(ours["scale"], ours.get("unit"))
    if scale is None:
        return CheckResult("amplitude", m, "skipped", f"unit {ours.get('unit')!r} is not a voltage")
    q = theirs["quantiles"]
    median, low, high = float(q["0.5"]), float(q["0.01"]), float(q["0.99"])
    factor = thresholds.amplitude_factor
    ratio = scale / median if median > 0 else math.inf
    text = (f"{m} amplitude {ratio:.3g}× the training median ({scale:.3g} µV; training 1st-99th "
            f"percentile {low:.3g}-{high:.3g} µV over {theirs['n_recordings']} night(s), limit ×{factor:g} beyond)")
    outside = scale > high * factor or scale < low / factor
    return CheckResult("amplitude", m, "shift" if outside else "ok", text, value=round(ratio, 4),
                       limit=factor)


def _check_band_power(m: str, night: NightSummary, training: TrainingDomain,
                      thresholds: DomainThresholds) -> CheckResult:
    summary = training.summary.get(m) or {}
    mean, spread = summary.get("relative_band_power"), summary.get("relative_band_power_std")
    if not mean or not spread or any(mean.get(b) is None or spread.get(b) is None for b in BANDS):
        return CheckResult("band_power", m, "skipped", "the bundle records no training band powers")
    ours = night.band_power.get(m)
    if ours is None:
        return CheckResult("band_power", m, "skipped", "the night has no usable epoch with power")
    z = {b: (ours[b] - mean[b]) / max(float(spread[b]), MIN_BAND_SPREAD) for b in BANDS}
    distance = float(np.sqrt(np.mean([v * v for v in z.values()])))
    worst = sorted(BANDS, key=lambda b: -abs(z[b]))[:2]
    limit = thresholds.band_power_distance
    shares = ", ".join(f"{b} {ours[b]:.2f} vs {mean[b]:.2f}" for b in worst)
    text = (f"{m} spectrum unlike training: band-power distance {distance:.2f} training spreads "
            f"(limit {limit:g}); {shares}")
    return CheckResult("band_power", m, "shift" if distance > limit else "ok", text,
                       value=round(distance, 4), limit=limit)


def check_night(night: NightSummary, training: TrainingDomain, modalities: Sequence[str],
                thresholds: DomainThresholds | None = None) -> DomainCheck:
    """Compare a night with the training data, modality by modality.

    Parameters
    ----------
    night : NightSummary
        The prepared night (:meth:`NightSummary.of`).
    training : TrainingDomain
        The bundle's record of its training data (:meth:`TrainingDomain.of`).
    modalities : sequence of str
        The model's modalities; those the night lacks are not compared (a missing modality is
        flagged per epoch elsewhere).
    thresholds : DomainThresholds, optional
        Default :class:`DomainThresholds`.

    Returns
    -------
    DomainCheck
        ``flag`` and ``reasons`` of the night, every check's result.
    """
    thresholds = thresholds or DomainThresholds()
    results = [_check_normalization(night, training)]
    facts = night.info.get("channels") or {}
    used = channels_used(night.info)
    by_check: dict[str, list[CheckResult]] = {c: [] for c in CHECKS[1:]}
    for m in modalities:
        if m not in facts:
            continue
        by_check["native_sfreq"].append(_check_rate(m, facts[m], training))
        by_check["signal"].append(_check_signal(m, used[m], training))
        by_check["band"].append(_check_band(m, facts[m], training))
        by_check["amplitude"].append(_check_amplitude(m, night, training, thresholds))
        by_check["band_power"].append(_check_band_power(m, night, training, thresholds))
    results += [r for c in CHECKS[1:] for r in by_check[c]]
    results = [CheckResult(**{**asdict(r), "ignored": True}) if r.check in thresholds.ignore and r.status == "shift"
               else r for r in results]
    return DomainCheck(checks=tuple(results), thresholds=thresholds)


__all__ = ["CHECKS", "MIN_BAND_SPREAD", "NIGHT_EPOCHS", "CheckResult", "DomainCheck", "DomainThresholds",
           "NightSummary", "TrainingDomain", "check_night"]
