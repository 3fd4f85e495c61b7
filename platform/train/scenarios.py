"""Missing-modality evaluation scenarios: what a trained model is shown at test time.

A scenario turns one prepared recording (its signals and availability mask) into the input the
model scores. Every scenario is a pure, seeded function of the recording and its index, so two
models evaluated on the same dataset see exactly the same masks and the same noise
(docs/models.md §1.5, §2.5, §4.7):

``all``
    Every modality the model consumes, as recorded.
``<m>_only``
    Only modality ``m``: the others are marked absent **and** their signals are not passed at
    all (CoRe-Sleep Table I "EEG only" / "EOG only"; CIMSleepNet Table 2 "completely missing").
``missing_<r>``
    CIMSleepNet's random partial missing at rate ``r`` over modality slots, removed in chunks of
    25 epochs (:func:`somnray.train.missing.drop_partial_chunks`); ``missing_iid_<r>`` drops
    each slot independently instead. The mask is fixed per recording, drawn from the base seed
    (2024) and the recording id by the function training uses
    (:func:`somnray.train.missing.recording_drop_keys`), whatever the split, run or model: a
    model trained at rate ``r`` with ``missing.seed`` 2024 saw these very masks. ``missing_0``
    is ``all``.
``noisy_<m>``
    Additive Gaussian noise on every epoch of ``m`` at a signal-to-noise ratio (default 0 dB;
    ``noisy_<m>_snr<dB>`` for another), the mask left on: the model is not told.
``flat_<m>``
    ``m`` detached: every epoch a flat line at its mean, the mask left on.

Models with one modality (MC²SleepNet) only get ``all`` and ``noisy_<m>`` by default: dropping
their only input leaves nothing to score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from somnray.core.errors import ConfigError

from .missing import DEFAULT_BASE_SEED, corrupt_signals, mask_at, recording_drop_keys, recording_rng

#: Missing rates of the Fig.-4-style curve (docs/models.md §1.1.1).
DEFAULT_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
#: Signal-to-noise ratio of ``noisy_<m>`` when none is given, in dB (noise as strong as the signal).
DEFAULT_SNR_DB = 0.0
#: Chunk length of the partial-missing protocol, in epochs (CIMSleepNet).
DEFAULT_CHUNK_EPOCHS = 25

ScenarioKind = Literal["all", "only", "missing", "noisy", "flat"]

_RATE = r"(?P<rate>\d+(?:\.\d+)?)"
_PATTERNS = (
    ("all", re.compile(r"^all$")),
    ("only", re.compile(r"^(?P<m>[a-z0-9]+)_only$")),
    ("missing", re.compile(rf"^missing_(?P<iid>iid_)?{_RATE}$")),
    ("noisy", re.compile(r"^noisy_(?P<m>[a-z0-9]+)(?:_snr(?P<snr>[+-]?\d+(?:\.\d+)?))?$")),
    ("flat", re.compile(r"^flat_(?P<m>[a-z0-9]+)$")),
)
#: Group names accepted wherever scenario names are (expanded against the model's modalities).
GROUPS = ("default", "only", "missing", "noisy", "flat")


@dataclass(frozen=True)
class Scenario:
    """One evaluation scenario (see the module docstring).

    Attributes
    ----------
    name : str
        Canonical name (``all``, ``eeg_only``, ``missing_0.3``, ``missing_iid_0.3``, ``noisy_eog``,
        ``noisy_eog_snr-5``, ``flat_eeg``); file names and report rows use it.
    kind : {"all", "only", "missing", "noisy", "flat"}
        What is done to the recording.
    modality : str, optional
        The modality kept (``only``) or corrupted (``noisy``, ``flat``).
    rate : float
        Missing rate of ``missing`` scenarios.
    protocol : {"chunks", "iid"}
        How ``missing`` slots are drawn.
    snr_db : float, optional
        Signal-to-noise ratio of ``noisy`` scenarios.
    """

    name: str
    kind: ScenarioKind
    modality: str | None = None
    rate: float = 0.0
    protocol: Literal["chunks", "iid"] = "chunks"
    snr_db: float | None = None

    def to_dict(self) -> dict:
        """Plain data for ``report.json``."""
        return {"name": self.name, "kind": self.kind, "modality": self.modality, "rate": self.rate,
                "protocol": self.protocol if self.kind == "missing" else None, "snr_db": self.snr_db}


def _fmt(value: float) -> str:
    return f"{value:g}"


def all_modalities() -> Scenario:
    """The ``all`` scenario."""
    return Scenario("all", "all")


def only(modality: str) -> Scenario:
    """``<modality>_only``: the other modalities absent and not passed."""
    return Scenario(f"{modality}_only", "only", modality=modality)


def missing(rate: float, protocol: Literal["chunks", "iid"] = "chunks") -> Scenario:
    """Random partial missing at ``rate`` (CIMSleepNet chunks, or i.i.d. slots)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"missing rate must lie in [0, 1], got {rate}")
    prefix = "missing_" if protocol == "chunks" else "missing_iid_"
    return Scenario(f"{prefix}{_fmt(rate)}", "missing", rate=float(rate), protocol=protocol)


def noisy(modality: str, snr_db: float = DEFAULT_SNR_DB) -> Scenario:
    """Gaussian noise at ``snr_db`` on every epoch of ``modality`` (mask left on)."""
    suffix = "" if snr_db == DEFAULT_SNR_DB else f"_snr{_fmt(snr_db)}"
    return Scenario(f"noisy_{modality}{suffix}", "noisy", modality=modality, snr_db=float(snr_db))


def flat(modality: str) -> Scenario:
    """``modality`` detached: flat lines, mask left on."""
    return Scenario(f"flat_{modality}", "flat", modality=modality)


def default_scenarios(modalities: Sequence[str]) -> tuple[Scenario, ...]:
    """The scenarios that make sense for a model consuming ``modalities`` (in this order).

    Several modalities: ``all``, each ``<m>_only``, ``missing_<r>`` for r in
    :data:`DEFAULT_RATES`, ``noisy_<m>`` and ``flat_<m>`` for each modality. One modality:
    ``all`` and ``noisy_<m>``.
    """
    mods = tuple(modalities)
    if len(mods) < 2:
        return (all_modalities(), *(noisy(m) for m in mods))
    return (all_modalities(), *(only(m) for m in mods), *(missing(r) for r in DEFAULT_RATES),
            *(noisy(m) for m in mods), *(flat(m) for m in mods))


def _group(name: str, modalities: Sequence[str]) -> list[Scenario]:
    many = len(modalities) > 1
    if name == "default":
        return list(default_scenarios(modalities))
    if name == "only":
        return [only(m) for m in modalities] if many else []
    if name == "missing":
        return [missing(r) for r in DEFAULT_RATES] if many else []
    if name == "noisy":
        return [noisy(m) for m in modalities]
    return [flat(m) for m in modalities]  # "flat"


def parse_scenario(text: str, modalities: Sequence[str]) -> Scenario:
    """One scenario name, checked against the model's ``modalities``.

    Raises
    ------
    ValueError
        Unknown form, a modality the model does not consume, or a scenario that leaves a
        one-modality model without input.
    """
    name = text.strip().lower()
    mods = tuple(modalities)
    for kind, pattern in _PATTERNS:
        found = pattern.match(name)
        if not found:
            continue
        groups = found.groupdict()
        modality = groups.get("m")
        if modality is not None and modality not in mods:
            raise ValueError(f"scenario {text!r}: the model consumes {list(mods)}, not {modality!r}")
        if kind in ("only", "missing") and len(mods) < 2:
            raise ValueError(f"scenario {text!r} needs a model with several modalities; this one "
                             f"consumes only {list(mods)} (use 'all' or 'noisy_{mods[0]}')")
        if kind == "all":
            return all_modalities()
        if kind == "only":
            return only(modality)
        if kind == "missing":
            rate = float(groups["rate"])
            if rate > 1.0:
                raise ValueError(f"scenario {text!r}: the missing rate must lie in [0, 1], got {rate}")
            return missing(rate, "iid" if groups.get("iid") else "chunks")
        if kind == "noisy":
            return noisy(modality, float(groups["snr"]) if groups.get("snr") else DEFAULT_SNR_DB)
        return flat(modality)
    raise ValueError(f"unknown scenario {text!r}; use all, <m>_only, missing_<rate>, missing_iid_<rate>, "
                     f"noisy_<m>[_snr<dB>], flat_<m> (m in {list(mods)}) or a group {list(GROUPS)}")


def resolve_scenarios(requested: Iterable[str | Scenario] | None, modalities: Sequence[str],
                      source: str = "--scenarios") -> tuple[Scenario, ...]:
    """Scenario names and groups → distinct :class:`Scenario` objects, in the order given.

    ``None`` gives :func:`default_scenarios`. Every bad name is reported at once.

    Raises
    ------
    ConfigError
        Naming ``source`` and each rejected scenario.
    """
    if requested is None:
        return default_scenarios(modalities)
    out: dict[str, Scenario] = {}
    errors = []
    for item in requested:
        if isinstance(item, Scenario):
            found = [item]
        elif str(item).strip().lower() in GROUPS:
            found = _group(str(item).strip().lower(), modalities)
        else:
            try:
                found = [parse_scenario(str(item), modalities)]
            except ValueError as exc:
                errors.append(str(exc))
                continue
        for scenario in found:
            out.setdefault(scenario.name, scenario)
    if errors:
        raise ConfigError(source, errors)
    if not out:
        raise ConfigError(source, [f"no scenario selected for a model consuming {list(modalities)}"])
    return tuple(out.values())


def apply_scenario(scenario: Scenario, signals: Mapping[str, np.ndarray], present: np.ndarray,
                   modalities: Sequence[str], recording: int | str, *, base_seed: int = DEFAULT_BASE_SEED,
                   chunk_epochs: int = DEFAULT_CHUNK_EPOCHS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What the model is given for one recording under ``scenario``.

    Parameters
    ----------
    scenario : Scenario
        The scenario.
    signals : mapping of str to ndarray
        ``(n, 3000)`` per modality the recording has (absent ones left out).
    present : ndarray
        ``(n, M)`` bool availability, columns in ``modalities`` order.
    modalities : sequence of str
        The model's modalities.
    recording : str or int
        The recording id (or an integer key); with ``base_seed`` it seeds the masks and the
        noise, so they are identical across models, runs and splits.
    base_seed : int
        Base seed of the fixed per-recording masks (CIMSleepNet: 2024).
    chunk_epochs : int
        Chunk length of ``missing`` scenarios.

    Returns
    -------
    tuple
        New ``signals`` dict (only modalities to pass) and new ``(n, M)`` mask; the inputs are
        not modified.
    """
    mods = tuple(modalities)
    mask = np.array(present, dtype=bool, copy=True)
    sig = {m: x for m, x in signals.items() if m in mods}
    if scenario.kind == "all":
        return sig, mask
    if scenario.kind == "only":
        keep = mods.index(scenario.modality)
        mask[:, [c for c in range(len(mods)) if c != keep]] = False
        return {m: x for m, x in sig.items() if m == scenario.modality}, mask
    if scenario.kind == "missing":
        kind = "partial_iid" if scenario.protocol == "iid" else "partial_chunks"
        keys = recording_drop_keys(mask, kind, base_seed, recording, chunk_epochs=chunk_epochs)
        return sig, mask_at(mask, keys, scenario.rate)
    rng = recording_rng(base_seed, recording)
    # noisy / flat: every epoch of the modality is corrupted; the mask stays as recorded.
    col = mods.index(scenario.modality)
    slots = np.zeros_like(mask)
    slots[:, col] = True
    if scenario.kind == "noisy":
        return corrupt_signals(sig, slots, mods, rng, snr_db=scenario.snr_db), mask
    return corrupt_signals(sig, slots, mods, rng, flatline_prob=1.0), mask


__all__ = ["DEFAULT_CHUNK_EPOCHS", "DEFAULT_RATES", "DEFAULT_SNR_DB", "GROUPS", "Scenario", "all_modalities",
           "apply_scenario", "default_scenarios", "flat", "missing", "noisy", "only", "parse_scenario",
           "resolve_scenarios"]
