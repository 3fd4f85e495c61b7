"""Prepare one recording: read → pick/derive channels → 100 Hz → band-pass → 30-s epochs → labels →
alignment checks → wake trimming → availability mask → normalisation.

This is the unit of work the Ray Data pipeline maps over a cohort manifest, and the function the
scoring service calls on one uploaded night.  Every way a recording can be bad ends as a
:class:`~somnray.core.errors.RecordingError` naming the file (the user's URI) and the problem, so the
cohort run can list rejected recordings and why; nothing identifying (EDF patient/recording
fields, dates) reaches the result or the messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from somnray.core.constants import EPOCH_SECONDS, SAMPLING_RATE_HZ, STAGES
from somnray.core.errors import RecordingError

from .prepared import PreparedRecording
from .preprocess import (
    availability,
    bandpass,
    check_alignment,
    check_filter_rate,
    derive_channel,
    epoch,
    fit_band,
    normalization_stats,
    normalize,
    resample,
    trim_wake,
)
from .profiles import ChannelAlternative, ChannelSpec, CohortProfile, normalize_label
from .hypnograms import (
    Hypnogram,
    hypnogram_from_annotations,
    hypnogram_from_signal,
    hypnogram_to_epochs,
    read_hypnogram,
)
from .readers import PSG, ChannelData, PathOrData, read_psg

__all__ = ["AMPLITUDE_STATISTICS", "channels_used", "prepare_psg", "prepare_recording", "find_channel"]

#: Name of the amplitude scale recorded per modality (``info["amplitude"][m]["statistic"]``), by
#: the normalisation statistic it comes from.
AMPLITUDE_STATISTICS = {"zscore": "std", "robust": "iqr/1.349"}


def find_channel(psg: PSG, aliases: list[str]) -> str | None:
    """The file's label of the first alias present (case, spaces and punctuation ignored)."""
    by_key: dict[str, str] = {}
    for label in psg.signals:
        by_key.setdefault(normalize_label(label), label)
    for alias in aliases:
        hit = by_key.get(normalize_label(alias))
        if hit is not None:
            return hit
    return None


def _native_epochs(x: np.ndarray, sfreq: float, n_epochs: int) -> np.ndarray:
    """``(n_epochs, samples)`` view of a signal at its own rate, NaN-padded if it is short.

    When 30 s is not a whole number of samples at ``sfreq`` each epoch takes the floor of it,
    starting at its exact time (at most one sample per epoch is left out).
    """
    per_epoch = sfreq * EPOCH_SECONDS
    width = int(np.floor(per_epoch + 1e-9))
    need = int(np.ceil(n_epochs * per_epoch - 1e-9))
    if len(x) < need:
        x = np.concatenate([x, np.full(need - len(x), np.nan)])
    if abs(per_epoch - width) < 1e-9:
        return epoch(x[: n_epochs * width], sfreq, EPOCH_SECONDS)
    starts = np.floor(np.arange(n_epochs) * per_epoch + 1e-9).astype(np.int64)
    return x[starts[:, None] + np.arange(width)[None, :]]


@dataclass
class _Flags:
    """Why epochs of one channel are unusable (each ``(n_epochs,)`` bool)."""

    usable: np.ndarray
    nan: np.ndarray
    flat: np.ndarray
    clipped: np.ndarray


def _channel_flags(ch: ChannelData, n_epochs: int, profile: CohortProfile) -> _Flags:
    spec = profile.availability
    ep = _native_epochs(ch.data, ch.sfreq, n_epochs)
    step = ch.resolution or 0.0
    flat_std = spec.flat_lsb * step
    usable = availability(ep, flat_std=flat_std, rails=ch.physical_range,
                          clip_fraction=spec.clip_fraction, rail_tolerance=0.5 * step)
    not_flat = availability(ep, flat_std=flat_std)
    nan = np.isnan(ep).any(axis=1)
    return _Flags(usable, nan, ~not_flat & ~nan, not_flat & ~usable)


def _why_unusable(flags: list[_Flags], channel: ChannelData, n_epochs: int, flat_lsb: float) -> str:
    nan = np.logical_or.reduce([f.nan for f in flags])
    flat = np.logical_or.reduce([f.flat for f in flags])
    clipped = np.logical_or.reduce([f.clipped for f in flags])
    if np.isnan(channel.data).all():
        return "every sample is NaN"
    if flat.all():
        return (f"it is flat in all {n_epochs} epochs (standard deviation below {flat_lsb:g} "
                "quantisation step(s): disconnected or switched off?)")
    if clipped.all():
        return f"it is clipped at the amplifier's range in all {n_epochs} epochs"
    return (f"no epoch is usable ({int(nan.sum())} with NaN, {int(flat.sum())} flat, "
            f"{int(clipped.sum())} clipped, of {n_epochs})")


@dataclass
class _Prepared:
    epochs: np.ndarray  # (n_epochs, 3000) float64, physical units, filtered
    available: np.ndarray  # (n_epochs,) bool
    facts: dict[str, Any]


class _Unusable(Exception):
    """One alternative of a modality cannot be used; the message says why."""


def _prepare_alternative(psg: PSG, modality: str, spec: ChannelSpec, alt: ChannelAlternative,
                         n_epochs: int, profile: CohortProfile, warnings: list[str]) -> _Prepared:
    """One alternative of a modality at 100 Hz, or :class:`_Unusable` saying why not."""
    label = find_channel(psg, alt.aliases)
    if label is None:
        raise _Unusable(f"not found: no signal matches its aliases {alt.aliases}; "
                        f"the file has signals {psg.labels}")
    ref_label = None
    if alt.reference:
        ref_label = find_channel(psg, alt.reference)
        if ref_label is None:
            raise _Unusable(f"(signal '{label}') lacks its reference: no signal matches "
                            f"{alt.reference}; the file has signals {psg.labels}")
    parts = [(label, psg.signals[label])] + ([(ref_label, psg.signals[ref_label])] if ref_label else [])
    for part_label, ch in parts:
        if ch.unusable:
            raise _Unusable(f"(signal '{part_label}') is unusable: {ch.unusable}")
        try:
            check_filter_rate(ch.sfreq, spec.band if spec.band_fit == "strict" else None,
                              spec.min_sfreq)
        except ValueError as exc:
            raise _Unusable(f"(signal '{part_label}'): {exc}") from None
    native = min(ch.sfreq for _, ch in parts)
    band = spec.band
    if band is not None and spec.band_fit == "auto":
        # The band applies to the derived signal, at the slower of its two rates: name both parts.
        shown = _derivation_name(label, ref_label)
        try:
            band = fit_band(band, native)
        except ValueError as exc:
            raise _Unusable(f"(signal '{shown}'): {exc}") from None
        if band != tuple(spec.band):
            warnings.append(
                f"channel '{modality}' (signal '{shown}'): band-pass upper edge {spec.band[1]:g} Hz "
                f"is at/above the Nyquist frequency {native / 2:g} Hz of the native rate "
                f"{native:g} Hz; the band is clipped to [{band[0]:g}, {band[1]:g}] Hz "
                "(band_fit: auto)")

    # Availability at the native rate, where NaN runs and rail values are exact.
    flags = [_channel_flags(ch, n_epochs, profile) for _, ch in parts]
    usable = np.logical_and.reduce([f.usable for f in flags])

    filled = [np.where(np.isnan(ch.data), 0.0, ch.data) for _, ch in parts]
    if ref_label is None:
        x, rate = filled[0], parts[0][1].sfreq
    else:
        x, rate = derive_channel(filled[0], parts[0][1].sfreq, filled[1], parts[1][1].sfreq)
        # Two usable electrodes can still cancel out (shorted or identical inputs).
        step = max(ch.resolution or 0.0 for _, ch in parts)
        usable &= availability(_native_epochs(x, rate, n_epochs),
                               flat_std=profile.availability.flat_lsb * step)
    if not usable.any():
        raise _Unusable(f"(signal '{label}') carries no usable signal: "
                        f"{_why_unusable(flags, parts[0][1], n_epochs, profile.availability.flat_lsb)}")

    x = resample(x, rate, SAMPLING_RATE_HZ)
    if band is not None:
        try:
            x = bandpass(x, SAMPLING_RATE_HZ, band, native_sfreq=native)
        except ValueError as exc:
            raise _Unusable(f"(signal '{label}'): {exc}") from None
    epochs = _native_epochs(x, SAMPLING_RATE_HZ, n_epochs)
    short = np.isnan(epochs).any(axis=1)  # the signal ended before the last record
    usable &= ~short
    epochs[short] = 0.0

    facts: dict[str, Any] = {"label": label, "native_sfreq": parts[0][1].sfreq,
                             "unit": parts[0][1].unit, "band": list(band) if band else None}
    if ref_label is not None:
        facts.update(reference=ref_label, reference_sfreq=parts[1][1].sfreq)
    return _Prepared(epochs, usable, facts)


def _average(found: list[tuple[int, _Prepared]]) -> _Prepared:
    """Per-epoch mean of the alternatives available in each epoch (``combine: average``)."""
    mask = np.stack([p.available for _, p in found])  # (k, n_epochs)
    total = sum(np.where(p.available[:, None], p.epochs, 0.0) for _, p in found)
    count = mask.sum(axis=0)
    epochs = total / np.maximum(count, 1)[:, None]
    facts = dict(found[0][1].facts, averaged=[_signal_name(p.facts) for _, p in found])
    return _Prepared(epochs, count > 0, facts)


def _derivation_name(label: str, reference: str | None = None) -> str:
    """How a signal is shown: its label, or ``label - reference`` for a derivation."""
    return f"{label} - {reference}" if reference is not None else label


def _signal_name(facts: dict[str, Any]) -> str:
    """How the used signal is shown (:func:`_derivation_name` of its facts)."""
    return _derivation_name(facts["label"], facts.get("reference"))


def channels_used(info: dict[str, Any]) -> dict[str, str]:
    """Modality → the signal a prepared recording used, as outputs show it.

    ``C4-A1``; ``E1 - E2`` for a derivation; ``mean(C4-A1, C3-A2)`` for an average of
    alternatives.  Absent modalities are left out.
    """
    used = {}
    for modality, facts in (info.get("channels") or {}).items():
        averaged = facts.get("averaged")
        used[modality] = f"mean({', '.join(averaged)})" if averaged else _signal_name(facts)
    return used


def _prepare_modality(psg: PSG, modality: str, spec: ChannelSpec, n_epochs: int,
                      profile: CohortProfile, source: str, warnings: list[str]) -> _Prepared | None:
    """One modality at 100 Hz, or None when an optional modality is absent/unusable.

    The primary signal and then each fallback are tried in order; with ``combine: average`` every
    usable one is kept and averaged.
    """
    problems: list[str] = []
    found: list[tuple[int, _Prepared]] = []
    for k, alt in enumerate([spec, *spec.fallbacks]):
        try:
            found.append((k, _prepare_alternative(psg, modality, spec, alt, n_epochs, profile,
                                                  warnings)))
        except _Unusable as exc:
            problems.append(str(exc) if k == 0 else f"fallback {k} {exc}")
            continue
        if spec.combine == "first":
            break
    if not found:
        problem = "; ".join(problems)
        if spec.required:
            raise RecordingError(source, f"required channel '{modality}' {problem}")
        warnings.append(f"optional channel '{modality}' {problem}; the modality is absent")
        return None
    if len(found) > 1:
        return _average(found)
    k, prepared = found[0]
    if k > 0:
        # Only set when a fallback stands in, so recordings that use the primary signal keep the
        # facts they always had.
        prepared.facts["fallback"] = k
        warnings.append(f"channel '{modality}': {'; '.join(problems)}; fallback {k} "
                        f"'{_signal_name(prepared.facts)}' is used")
    return prepared


def _labels(psg: PSG, hyp: Hypnogram | None, n_epochs: int, profile: CohortProfile,
            hyp_source: str, warnings: list[str]) -> np.ndarray | None:
    if hyp is None:
        return None
    check_alignment(psg.start, hyp.start, hyp_source)
    spec = profile.annotations
    labels, warns = hypnogram_to_epochs(hyp, n_epochs, spec.label_map, hyp_source,
                                        min_coverage=spec.min_coverage, label_period=spec.label_period,
                                        min_purity=spec.min_purity, max_overrun_s=spec.max_overrun_s)
    warnings.extend(warns)
    return labels


def _trim(labels: np.ndarray, profile: CohortProfile, source: str) -> slice:
    if not (labels >= 0).any():
        raise RecordingError(source, f"no scored epoch: all {len(labels)} epochs are unscored or "
                                     "movement (-1)")
    rule = profile.trimming.rule
    keep = trim_wake(labels, rule, profile.trimming.edge_minutes, EPOCH_SECONDS)
    kept = labels[keep]
    if rule == "edges" and not (kept > 0).any():
        n_wake = int((labels == 0).sum())
        raise RecordingError(
            source, f"no sleep epoch: all {n_wake} scored epochs are wake, and trimming rule "
            f"'edges' keeps wake only within {profile.trimming.edge_minutes:g} min of sleep; "
            "use trimming rule 'none' to keep wake-only recordings")
    if not (kept >= 0).any():
        raise RecordingError(
            source, f"no scored epoch left after trimming rule '{rule}' ({len(labels)} epochs before)")
    if profile.require_all_stages:
        missing = [STAGES[c] for c in range(5) if not (kept == c).any()]
        if missing:
            raise RecordingError(
                source, f"stage(s) {missing} never occur after trimming, and the profile requires "
                "all five (require_all_stages: true)")
    return keep


def _together(problems: list[RecordingError]) -> RecordingError:
    """One error listing every problem; those of another file than the first are prefixed by it."""
    first = problems[0].source
    return RecordingError.of_problems(
        first, [r if p.source == first else f"{p.source}: {r}" for p in problems for r in p.problems])


def prepare_psg(psg: PSG, hypnogram: Hypnogram | None, profile: CohortProfile, *,
                recording_id: str, subject_id: str, psg_source: str = "<psg>",
                hypnogram_source: str | None = None) -> PreparedRecording:
    """Prepare an already-read recording (see :func:`prepare_recording`).

    With ``hypnogram`` None the recording is unscored (for scoring with a trained model): every
    label is -1 and no trimming or stage check applies.
    """
    hyp_source = hypnogram_source or psg_source
    warnings: list[str] = list(psg.warnings)
    n_epochs = int(psg.duration_s // EPOCH_SECONDS)
    if n_epochs == 0:
        raise RecordingError(psg_source, f"the recording lasts {psg.duration_s:g} s, shorter than "
                                         f"one {EPOCH_SECONDS:g}-s epoch")
    # Channels and labels fail independently: collect their problems so one run reports all.
    problems: list[RecordingError] = []
    prepared: dict[str, _Prepared | None] = {}
    for modality, spec in profile.channels.items():
        try:
            prepared[modality] = _prepare_modality(psg, modality, spec, n_epochs, profile,
                                                   psg_source, warnings)
        except RecordingError as exc:
            problems.append(exc)
    try:
        labels = _labels(psg, hypnogram, n_epochs, profile, hyp_source, warnings)
    except RecordingError as exc:
        problems.append(exc)
    if problems:
        raise _together(problems)
    scored = labels is not None
    if labels is None:
        labels = np.full(n_epochs, -1, dtype=np.int8)
        keep = slice(0, n_epochs)
    else:
        keep = _trim(labels, profile, hyp_source)
    span = keep
    n_dropped = 0
    if scored and profile.trimming.unscored == "drop":
        # An index array instead of a slice: the epochs left are no longer contiguous.
        index = np.arange(n_epochs)[keep]
        scored_index = index[labels[index] >= 0]
        n_dropped = len(index) - len(scored_index)
        keep = scored_index
    kept_labels = labels[keep]
    n_kept = len(kept_labels)

    signals: dict[str, np.ndarray | None] = {}
    available: dict[str, np.ndarray] = {}
    channels: dict[str, Any] = {}
    amplitude: dict[str, Any] = {}
    # The physical scale normalisation divides by is recorded, since the prepared signals no longer
    # show it (a gain or unit error is invisible after it); normalization "none" records the
    # standard deviation, the z-score's scale.
    statistic = "robust" if profile.normalization == "robust" else "zscore"
    for modality, prep in prepared.items():
        if prep is None:
            signals[modality] = None
            available[modality] = np.zeros(n_kept, dtype=bool)
            continue
        mask = prep.available[keep]
        stats = normalization_stats(prep.epochs[keep], mask, statistic)
        signals[modality] = normalize(prep.epochs[keep], mask, profile.normalization,
                                      stats=stats).astype(np.float32)
        available[modality] = mask.copy()
        channels[modality] = dict(prep.facts, epochs_unavailable=int((~mask).sum()))
        if stats is not None and np.isfinite(stats[1]) and stats[1] > 0:
            amplitude[modality] = {"scale": float(stats[1]), "unit": prep.facts["unit"],
                                   "statistic": AMPLITUDE_STATISTICS[statistic]}

    counts = np.bincount(kept_labels[kept_labels >= 0].astype(np.int64), minlength=5)
    info: dict[str, Any] = {
        "duration_s": float(psg.duration_s),
        "scored": scored,
        "n_epochs_signal": n_epochs,
        "n_epochs": n_kept,
        "epochs_trimmed_start": int(span.start),
        "epochs_trimmed_end": int(n_epochs - span.stop),
        "epochs_unscored": int((kept_labels < 0).sum()),
        "class_counts": {STAGES[c]: int(counts[c]) for c in range(5)},
        "native_sfreq": {m: f["native_sfreq"] for m, f in channels.items()},
        "channels": channels,
        "amplitude": amplitude,
        "absent": [m for m, p in prepared.items() if p is None],
        "trimming": profile.trimming.rule,
        "normalization": profile.normalization,
        "warnings": warnings,
    }
    if psg.truncated:
        # Only set when true, so the info of every complete file stays as it was.
        info["truncated"] = True
    if profile.trimming.unscored == "drop":  # only then: other profiles' outputs stay byte-identical
        info["epochs_unscored_dropped"] = n_dropped
    return PreparedRecording(
        recording_id=recording_id,
        subject_id=subject_id,
        cohort=profile.name,
        signals=signals,
        available=available,
        labels=kept_labels.astype(np.int8),
        epoch_index=np.arange(n_epochs, dtype=np.int32)[keep],
        info=info,
    )


def _name(path: PathOrData | None) -> str | None:
    if path is None:
        return None
    if isinstance(path, (bytes, bytearray)):
        return "<bytes>"
    if hasattr(path, "read"):
        return str(getattr(path, "name", "<stream>"))
    return os.fspath(path)


def _read_scoring(psg: PSG, hypnogram_path: PathOrData | None, profile: CohortProfile,
                  psg_source: str, hyp_source: str) -> Hypnogram | None:
    """The night's stage runs: from the hypnogram file, or from the PSG itself for the formats
    that live there; None when there is no scoring (a night to score)."""
    spec = profile.annotations
    if hypnogram_path is not None:
        return read_hypnogram(hypnogram_path, spec, source=hyp_source)
    if spec.format == "embedded":
        hyp = hypnogram_from_annotations(psg.annotations, spec, psg.start)
        if len(hyp) == 0:
            raise RecordingError(psg_source, "the profile reads stages from the PSG's embedded "
                                             "EDF+ annotations, but the file has none")
        return hyp
    if spec.format == "edf_signal":
        return hypnogram_from_signal(psg, spec, psg_source)
    return None


def prepare_recording(psg_path: PathOrData, hypnogram_path: PathOrData | None,
                      profile: CohortProfile, *, recording_id: str, subject_id: str,
                      psg_source: str | None = None,
                      hypnogram_source: str | None = None) -> PreparedRecording:
    """Read and prepare one night for training or scoring.

    Parameters
    ----------
    psg_path : str, path-like, bytes or binary file
        The EDF/EDF+/BDF file (local path, fsspec URI, or its content).
    hypnogram_path : str, path-like, bytes or binary file, optional
        The scoring file in the profile's annotation format.  None with format ``embedded`` uses
        the PSG's own EDF+ annotations, with ``edf_signal`` the PSG's own stage-code signal; None
        otherwise prepares an unscored recording (labels -1, no trimming).
    profile : CohortProfile
        Channels, filters, labels, trimming and normalisation of the cohort.
    recording_id, subject_id : str
        Manifest ids: the only names the result carries.
    psg_source, hypnogram_source : str, optional
        The user's URIs for messages; default to the paths.

    Returns
    -------
    PreparedRecording
        float32 ``(n, 3000)`` signals per modality (None when absent), availability masks, int8
        labels, kept epoch indices, and non-identifying facts in ``info`` (``info["warnings"]``).

    Raises
    ------
    RecordingError
        With ``recording_id`` set, for: a file that is not EDF or is truncated/corrupt; a missing
        or unusable (all-NaN, flat, too slow for its filter) required channel; a hypnogram whose
        start differs, that covers too little of the signal or runs too far past it, has labels
        off the ``label_period`` grid or unknown labels; no sleep/scored epoch left after
        trimming; ``require_all_stages`` unmet.  The channels' and the scoring's problems are
        independent, so they come together in one error (``N problems: (1) ...; (2) ...``).
    """
    psg_source = psg_source or _name(psg_path) or "<psg>"
    hyp_source = hypnogram_source or _name(hypnogram_path) or psg_source
    try:
        psg = read_psg(psg_path, source=psg_source, truncated=profile.reading.truncated)
        try:
            hyp = _read_scoring(psg, hypnogram_path, profile, psg_source, hyp_source)
        except RecordingError as hyp_problem:
            # An unreadable scoring leaves the signals to check: report their problems with it.
            try:
                prepare_psg(psg, None, profile, recording_id=recording_id, subject_id=subject_id,
                            psg_source=psg_source)
            except RecordingError as channel_problems:
                raise _together([channel_problems, hyp_problem]) from None
            raise
        return prepare_psg(psg, hyp, profile, recording_id=recording_id, subject_id=subject_id,
                           psg_source=psg_source, hypnogram_source=hyp_source)
    except RecordingError as exc:
        if exc.recording_id is None:
            raise RecordingError(exc.source, exc.reason, recording_id) from exc
        raise
