"""Pure preprocessing steps over numpy arrays: no file IO, no Ray, each unit-tested.

``recording.prepare_recording`` chains them; the Ray Data pipeline only calls that.  Times are in
seconds and rates in Hz; sample counts are derived from them in one place per function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from fractions import Fraction
from typing import Literal

import numpy as np
from scipy import signal as sps

from somnray.core.constants import EPOCH_SECONDS, SAMPLING_RATE_HZ
from somnray.core.errors import RecordingError

__all__ = [
    "availability",
    "bandpass",
    "check_alignment",
    "check_filter_rate",
    "derive_channel",
    "design_bandpass",
    "epoch",
    "fit_band",
    "map_labels",
    "normalization_stats",
    "normalize",
    "resample",
    "trim_wake",
]


_WAKE = 0


# --------------------------------------------------------------------------------------------
# Rates, resampling, derivations


def _rational(sfreq_out: float, sfreq_in: float) -> tuple[int, int]:
    # Rates in EDF headers are ratios of small integers (samples per record / record seconds);
    # limiting the denominators recovers them exactly from their float form.
    ratio = Fraction(sfreq_out).limit_denominator(10_000) / Fraction(sfreq_in).limit_denominator(10_000)
    ratio = ratio.limit_denominator(10_000)
    return ratio.numerator, ratio.denominator


def resample(x: np.ndarray, sfreq_in: float, sfreq_out: float = SAMPLING_RATE_HZ) -> np.ndarray:
    """Polyphase resampling by the rational factor ``sfreq_out / sfreq_in``.

    Parameters
    ----------
    x : ndarray
        1-D signal without NaN (fill gaps first: a NaN spreads over the filter length).
    sfreq_in, sfreq_out : float
        Rates in Hz (125→100 is 4/5, 50→100 is 2/1, 256→100 is 25/64).

    Returns
    -------
    ndarray
        float64, ``ceil(len(x) * up / down)`` samples; a copy when the rates are equal.
    """
    if sfreq_in <= 0 or sfreq_out <= 0:
        raise ValueError(f"sampling rates must be positive, got sfreq_in={sfreq_in}, sfreq_out={sfreq_out}")
    x = np.asarray(x, dtype=np.float64)
    up, down = _rational(sfreq_out, sfreq_in)
    if up == down:
        return x.copy()
    # padtype="line" extends the signal's trend past both ends, which avoids the edge transient a
    # zero pad causes on a signal with a DC offset.
    return sps.resample_poly(x, up, down, padtype="line")


def derive_channel(x: np.ndarray, sfreq: float, reference: np.ndarray, reference_sfreq: float
                   ) -> tuple[np.ndarray, float]:
    """Bipolar derivation ``x − reference`` at the higher of the two rates.

    Parameters
    ----------
    x, reference : ndarray
        The two signals, each at its own native rate.
    sfreq, reference_sfreq : float
        Their rates in Hz.

    Returns
    -------
    derived : ndarray
        float64 difference.
    sfreq : float
        Its rate (the higher input rate; the slower signal is up-sampled, never the reverse, so
        no content of the faster one is discarded before the subtraction).
    """
    rate = max(sfreq, reference_sfreq)
    a = resample(x, sfreq, rate)
    b = resample(reference, reference_sfreq, rate)
    # Both signals span the same records; lengths may differ by a rounding sample only.
    if abs(len(a) - len(b)) > max(2, int(0.001 * max(len(a), len(b)))):
        raise ValueError(
            f"cannot derive: the signals last {len(a) / rate:g} s and {len(b) / rate:g} s")
    n = min(len(a), len(b))
    return a[:n] - b[:n], rate


# --------------------------------------------------------------------------------------------
# Filtering


def check_filter_rate(native_sfreq: float, band: tuple[float, float] | None = None,
                      min_sfreq: float | None = None) -> None:
    """Raise when a signal recorded at ``native_sfreq`` cannot carry what the profile asks.

    Raises
    ------
    ValueError
        The rate is below ``min_sfreq``, or the band's upper edge is at/above the native Nyquist
        frequency (up-sampling cannot create the missing frequencies).
    """
    if min_sfreq is not None and native_sfreq < min_sfreq:
        raise ValueError(
            f"native sampling rate {native_sfreq:g} Hz is below the profile's min_sfreq "
            f"{min_sfreq:g} Hz")
    if band is not None and band[1] >= native_sfreq / 2:
        raise ValueError(
            f"band-pass upper edge {band[1]:g} Hz is at/above the Nyquist frequency "
            f"{native_sfreq / 2:g} Hz of the native rate {native_sfreq:g} Hz; lower the band's "
            f"upper edge below {native_sfreq / 2:g} Hz or set band: null")


# A band clipped to fit a slow recording ends at this fraction of its native Nyquist frequency, so
# the filter's transition band (2 Hz or more, see _transition) stays below it.
BAND_FIT_NYQUIST_FRACTION = 0.9


def fit_band(band: tuple[float, float], native_sfreq: float) -> tuple[float, float]:
    """The band with its upper edge clipped below the native Nyquist frequency when it is not.

    The upper edge becomes ``BAND_FIT_NYQUIST_FRACTION`` × Nyquist (rounded down to 0.1 Hz):
    a 50-Hz recording asked for 0.3-35 Hz gets 0.3-22.5 Hz.

    Raises
    ------
    ValueError
        The lower edge is not below the clipped upper edge.
    """
    low, high = float(band[0]), float(band[1])
    nyquist = native_sfreq / 2
    if high < nyquist:
        return (low, high)
    fitted = math.floor(BAND_FIT_NYQUIST_FRACTION * nyquist * 10) / 10
    if low >= fitted:
        raise ValueError(
            f"band {[low, high]} Hz cannot fit the native rate {native_sfreq:g} Hz: its lower edge "
            f"is not below {fitted:g} Hz, {BAND_FIT_NYQUIST_FRACTION:g} × the Nyquist frequency")
    return (low, fitted)


def _transition(edge: float, room: float) -> float:
    # MNE's default transition bandwidth rule (mne.filter, "auto"): 25 % of the edge frequency,
    # at least 2 Hz, but never wider than the room available below/above the edge.
    return min(max(0.25 * edge, 2.0), room)


def design_bandpass(sfreq: float, band: tuple[float, float], numtaps: int | None = None) -> np.ndarray:
    """Linear-phase FIR taps (Hamming window, −6 dB at the band edges, odd length).

    A lower edge of 0 gives a low-pass.  Without ``numtaps`` the length follows MNE's rule,
    3.3 / (narrowest transition band) seconds, e.g. 1101 taps at 100 Hz for a 0.3-Hz edge.
    """
    low, high = float(band[0]), float(band[1])
    nyquist = sfreq / 2
    if not 0 <= low < high:
        raise ValueError(f"band must be (low, high) with 0 <= low < high, got {band}")
    if high >= nyquist:
        raise ValueError(
            f"band-pass upper edge {high:g} Hz is at/above the Nyquist frequency {nyquist:g} Hz "
            f"of the {sfreq:g}-Hz signal")
    widths = [_transition(high, nyquist - high)]
    if low > 0:
        widths.append(_transition(low, low))
    if numtaps is None:
        numtaps = int(math.ceil(3.3 / min(widths) * sfreq))
    numtaps |= 1  # odd: a whole-sample delay, so the delay compensation below is exact
    if low == 0:
        return sps.firwin(numtaps, high, window="hamming", fs=sfreq)
    return sps.firwin(numtaps, [low, high], pass_zero=False, window="hamming", fs=sfreq)


def bandpass(x: np.ndarray, sfreq: float, band: tuple[float, float], *,
             native_sfreq: float | None = None, min_sfreq: float | None = None,
             numtaps: int | None = None) -> np.ndarray:
    """Zero-phase FIR band-pass.

    A linear-phase FIR applied once with its delay removed is zero-phase; unlike ``filtfilt`` it
    keeps the designed magnitude response.  The ends are padded by reflection to limit edge
    transients.

    Parameters
    ----------
    x : ndarray
        1-D signal at ``sfreq``.
    sfreq : float
        Rate of ``x`` (100 Hz in the pipeline).
    band : (float, float)
        Edges in Hz (−6 dB points); lower edge 0 = low-pass.
    native_sfreq : float, optional
        The rate the signal was recorded at, when ``x`` was resampled: the band is checked against
        its Nyquist frequency too.
    min_sfreq : float, optional
        Lowest acceptable native rate.
    numtaps : int, optional
        Filter length; default from the transition-band rule of :func:`design_bandpass`.

    Raises
    ------
    ValueError
        Band above a Nyquist frequency, a rate below ``min_sfreq``, or a signal shorter than the
        filter.
    """
    check_filter_rate(native_sfreq if native_sfreq is not None else sfreq, band, min_sfreq)
    taps = design_bandpass(sfreq, band, numtaps)
    x = np.asarray(x, dtype=np.float64)
    pad = len(taps) // 2
    if len(x) <= pad:
        raise ValueError(
            f"signal of {len(x)} samples ({len(x) / sfreq:g} s) is too short for the "
            f"{len(taps)}-tap filter of band {tuple(band)} Hz")
    padded = np.pad(x, pad, mode="reflect")
    return sps.oaconvolve(padded, taps, mode="same")[pad:pad + len(x)]


# --------------------------------------------------------------------------------------------
# Epochs and labels


def epoch(x: np.ndarray, sfreq: float = SAMPLING_RATE_HZ, epoch_s: float = EPOCH_SECONDS) -> np.ndarray:
    """Cut a signal into consecutive epochs, dropping the incomplete tail.

    Returns
    -------
    ndarray
        ``(n_epochs, sfreq * epoch_s)``, e.g. ``(n, 3000)`` at 100 Hz.
    """
    per_epoch = sfreq * epoch_s
    if per_epoch <= 0 or abs(per_epoch - round(per_epoch)) > 1e-9:
        raise ValueError(
            f"{epoch_s:g}-s epochs at {sfreq:g} Hz are not a whole number of samples ({per_epoch:g})")
    per_epoch = int(round(per_epoch))
    x = np.asarray(x)
    n = len(x) // per_epoch
    return np.ascontiguousarray(x[: n * per_epoch].reshape(n, per_epoch))


def map_labels(labels: Sequence[str], label_map: Mapping[str, int]) -> np.ndarray:
    """Map source label strings to int8 classes (keys compared whitespace-stripped).

    Raises
    ------
    ValueError
        Some labels are not in the map; the message lists them and the known ones.
    """
    lookup = {k.strip(): int(v) for k, v in label_map.items()}
    unknown = sorted({lbl.strip() for lbl in labels} - set(lookup))
    if unknown:
        raise ValueError(f"unknown stage label(s) {unknown}; known labels: {sorted(lookup)}")
    return np.array([lookup[lbl.strip()] for lbl in labels], dtype=np.int8)


TrimRule = Literal["none", "edges", "shhs_code", "shhs_paper"]


def _leading_wake(scored: np.ndarray) -> int:
    not_wake = np.flatnonzero(scored != _WAKE)
    return len(scored) if len(not_wake) == 0 else int(not_wake[0])


def trim_wake(labels: np.ndarray, rule: TrimRule, edge_minutes: float = 30.0,
              epoch_s: float = EPOCH_SECONDS) -> slice:
    """Which contiguous span of epochs to keep (docs/models.md §4.5).

    Unscored epochs (-1) stay in the sequence; the rules look at scored epochs only, as the
    papers' pipelines did after deleting them.

    Parameters
    ----------
    labels : ndarray
        ``(n,)`` classes, -1 unscored.
    rule : {"none", "edges", "shhs_code", "shhs_paper"}
        ``edges``: keep from ``edge_minutes`` before the first sleep epoch to ``edge_minutes``
        after the last one (an empty span when there is no sleep at all).
        ``shhs_code`` (SleepTransformer's scripts): if wake outnumbers every other class, take the
        leading and trailing wake runs; if together they exceed the second-largest class count,
        remove the excess, from the leading run first and the rest from the trailing run.
        ``shhs_paper`` (CoRe-Sleep's text): if wake outnumbers every other class, remove
        (#W − #second)/2 epochs from each end, but only wake epochs: each end loses at most its
        wake run (the paper does not say; cutting sleep would contradict its purpose).
    edge_minutes : float
        Margin of ``edges``.
    epoch_s : float
        Epoch length, to turn the margin into epochs.

    Returns
    -------
    slice
        Over the original epoch axis.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if rule == "none":
        return slice(0, n)
    if rule == "edges":
        sleep = np.flatnonzero(labels > _WAKE)
        if len(sleep) == 0:
            return slice(0, 0)
        margin = int(round(edge_minutes * 60 / epoch_s))
        return slice(max(0, int(sleep[0]) - margin), min(n, int(sleep[-1]) + margin + 1))
    if rule not in ("shhs_code", "shhs_paper"):
        raise ValueError(f"unknown trimming rule {rule!r}; expected none, edges, shhs_code or shhs_paper")
    scored_at = np.flatnonzero(labels >= 0)
    scored = labels[scored_at]
    counts = np.bincount(scored.astype(np.int64), minlength=5) if len(scored) else np.zeros(5, int)
    second = int(counts[1:].max())
    if len(scored) == 0 or counts[_WAKE] <= second:
        return slice(0, n)
    evening = _leading_wake(scored)
    morning = _leading_wake(scored[::-1]) if evening < len(scored) else 0
    if rule == "shhs_code":
        excess = evening + morning - second
        if excess <= 0:
            return slice(0, n)
        cut_start = min(excess, evening)
        cut_end = excess - cut_start
    else:
        half = (int(counts[_WAKE]) - second) // 2
        cut_start, cut_end = min(half, evening), min(half, morning)
    if cut_start + cut_end >= len(scored):
        return slice(0, 0)
    # Cutting k scored epochs from an end also drops the unscored epochs among them.
    start = 0 if cut_start == 0 else int(scored_at[cut_start])
    stop = n if cut_end == 0 else int(scored_at[len(scored) - cut_end - 1]) + 1
    return slice(start, stop)


# --------------------------------------------------------------------------------------------
# Availability and normalisation


def availability(epochs: np.ndarray, *, flat_std: float = 0.0,
                 rails: tuple[float, float] | None = None, clip_fraction: float = 0.1,
                 rail_tolerance: float = 0.0) -> np.ndarray:
    """Per-epoch usability of one channel.

    Parameters
    ----------
    epochs : ndarray
        ``(n, samples)`` in physical units (at the native rate, so the rails are exact).
    flat_std : float
        An epoch with standard deviation at or below this is flat (disconnected); 0 catches
        exactly constant epochs only.
    rails : (float, float), optional
        The amplifier's physical minimum and maximum.
    clip_fraction : float
        More than this fraction of samples at a rail = clipped.
    rail_tolerance : float
        A sample within this distance of a rail counts as at the rail (half a quantisation
        step absorbs the float rounding of the digital-to-physical conversion).

    Returns
    -------
    ndarray
        ``(n,)`` bool, True where the epoch is usable: no NaN, not flat, not clipped.
    """
    epochs = np.asarray(epochs, dtype=np.float64)
    if epochs.ndim != 2:
        raise ValueError(f"epochs must be (n_epochs, samples), got shape {epochs.shape}")
    has_nan = np.isnan(epochs).any(axis=1)
    filled = np.where(np.isnan(epochs), 0.0, epochs)
    usable = ~has_nan & (filled.std(axis=1) > flat_std)
    if rails is not None and epochs.shape[1]:
        low, high = rails
        at_rail = (filled <= low + rail_tolerance) | (filled >= high - rail_tolerance)
        usable &= at_rail.mean(axis=1) <= clip_fraction
    return usable


def normalization_stats(epochs: np.ndarray, available: np.ndarray,
                        method: Literal["zscore", "robust"]) -> tuple[float, float] | None:
    """Centre and scale of one modality of one recording, from its available epochs only.

    ``zscore``: mean and standard deviation; ``robust``: median and IQR / 1.349 (equal to the
    standard deviation for Gaussian data, insensitive to artefact bursts; the standard deviation
    when the IQR is 0).  In the signal's physical unit: the scale is what :func:`normalize`
    divides by, and the recording's amplitude that the prepared signals no longer show.

    Returns
    -------
    tuple of float or None
        ``(centre, scale)``; None when no available epoch holds a finite sample.  The scale may
        be 0 or non-finite (a constant signal): :func:`normalize` then leaves the data unscaled.
    """
    if method not in ("zscore", "robust"):
        raise ValueError(f"unknown normalization statistic {method!r}; expected zscore or robust")
    epochs = np.asarray(epochs, dtype=np.float64)
    good = epochs[np.asarray(available, dtype=bool)]
    good = good[np.isfinite(good)]
    if good.size == 0:
        return None
    if method == "zscore":
        return float(good.mean()), float(good.std())
    q25, centre, q75 = (float(v) for v in np.percentile(good, [25, 50, 75]))
    scale = (q75 - q25) / 1.349
    return centre, scale if scale > 0 else float(good.std())


def normalize(epochs: np.ndarray, available: np.ndarray,
              method: Literal["zscore", "robust", "none"],
              stats: tuple[float, float] | None = None) -> np.ndarray:
    """Scale one modality of one recording with statistics of its available epochs only.

    ``zscore`` and ``robust`` subtract the centre and divide by the scale of
    :func:`normalization_stats`; ``none`` returns the data unchanged.  Flat, clipped or NaN
    epochs would bias the statistics, hence the mask.  With no available epoch, or zero spread,
    the data are returned centred but unscaled.

    Parameters
    ----------
    stats : (float, float), optional
        ``(centre, scale)`` already computed with :func:`normalization_stats` for ``method``
        (the caller records the scale); default: computed here.

    Returns
    -------
    ndarray
        float64, same shape as ``epochs``.
    """
    epochs = np.asarray(epochs, dtype=np.float64)
    if method == "none":
        return epochs.copy()
    if method not in ("zscore", "robust"):
        raise ValueError(f"unknown normalization {method!r}; expected zscore, robust or none")
    stats = stats if stats is not None else normalization_stats(epochs, available, method)
    if stats is None:
        return epochs.copy()
    centre, scale = stats
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return (epochs - centre) / scale


# --------------------------------------------------------------------------------------------
# Alignment


def check_alignment(psg_start: datetime | None, hyp_start: datetime | None, source: str,
                    tolerance_s: float = 1.0) -> None:
    """Reject a hypnogram whose declared start differs from the PSG's.

    Only the difference is reported, never the times themselves (dates identify people).
    Nothing is checked when either side has no start time (NSRR XML, CSV).

    Raises
    ------
    RecordingError
        ``|hyp_start − psg_start| > tolerance_s``.
    """
    if psg_start is None or hyp_start is None:
        return
    diff = (hyp_start - psg_start).total_seconds()
    if abs(diff) > tolerance_s:
        raise RecordingError(
            source, f"hypnogram start time differs from the PSG start time by {diff:+g} s "
            f"(tolerance {tolerance_s:g} s): it is the scoring of another recording, or one "
            "of the two clocks was shifted")
