"""Summary statistics of prepared signals, per modality: what a model's training data looked like.

A bundle records them for its training split (``model.json`` ``data_summary``) so that new
recordings can later be compared with what the model saw (the domain-shift check,
:mod:`somnray.scoring.domain`). Prepared signals are normalised per recording (the profile's
``normalization``), so :func:`summarize_epochs` describes the model's inputs, not volts: the
spread of epoch RMS across a night (deep sleep is louder than wake relative to the night's own
scale) and the share of power in the classic EEG bands, which normalisation leaves unchanged.
:func:`summarize_reading` adds what normalisation hides, from the recordings' own facts
(``PreparedRecording.info``): the native rates, signals and band-pass each modality was read
with, and the distribution of its physical amplitude scale over the recordings.

Pure numpy on ``(n, 3000)`` epochs at 100 Hz, and on info dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from somnray.core.constants import SAMPLING_RATE_HZ

from .recording import channels_used

#: Quantiles of the per-epoch RMS that are recorded.
RMS_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Frequency bands (Hz, half-open) whose share of the 0.5-30 Hz power is recorded.
BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 12.0), "sigma": (12.0, 16.0),
    "beta": (16.0, 30.0)}
#: Quantiles of the per-recording physical amplitude scale that are recorded.
AMPLITUDE_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
#: Microvolts per unit of the EDF physical dimensions amplitudes are compared in (lower case).
MICROVOLTS_PER_UNIT = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}


def summarize_epochs(epochs: np.ndarray) -> dict[str, Any]:
    """Epoch-RMS quantiles and mean relative band powers of ``(n, samples)`` epochs at 100 Hz.

    Returns
    -------
    dict
        ``n_epochs``; ``rms_quantiles`` (quantile → RMS in normalised units);
        ``relative_band_power`` (band → mean share of the 0.5-30 Hz power, summing to 1) and
        ``relative_band_power_std`` (its spread over epochs); None when every epoch is flat.
    """
    x = np.asarray(epochs, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"expected a non-empty (n, samples) array of epochs, got shape {x.shape}")
    x = x - x.mean(axis=1, keepdims=True)
    rms = np.sqrt((x ** 2).mean(axis=1))
    freqs = np.fft.rfftfreq(x.shape[1], d=1.0 / SAMPLING_RATE_HZ)
    power = np.abs(np.fft.rfft(x * np.hanning(x.shape[1]), axis=1)) ** 2
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in BANDS.values()], axis=1)
    total = bands.sum(axis=1, keepdims=True)
    share = bands[total[:, 0] > 0] / total[total[:, 0] > 0]
    flat = not len(share)  # flat epochs only: no band has any power to share
    share = np.zeros((1, len(BANDS))) if flat else share
    return {
        "n_epochs": int(len(x)),
        "rms_quantiles": {f"{q:g}": round(float(v), 6) for q, v in zip(RMS_QUANTILES, np.quantile(rms, RMS_QUANTILES))},
        "relative_band_power": {b: None if flat else round(float(v), 6) for b, v in zip(BANDS, share.mean(axis=0))},
        "relative_band_power_std": {b: None if flat else round(float(v), 6) for b, v in zip(BANDS, share.std(axis=0))},
    }


def summarize_modalities(epochs: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """:func:`summarize_epochs` per modality (a modality without epochs is left out)."""
    return {m: summarize_epochs(x) for m, x in epochs.items() if len(x)}


def to_microvolts(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` (an EDF physical dimension: ``uV``, ``mV``, ``V``, ...) as µV; None
    when the unit is not a voltage somnray knows."""
    factor = MICROVOLTS_PER_UNIT.get(str(unit or "").strip().lower())
    return None if factor is None else float(value) * factor


def _band(value: Any) -> list[float] | None:
    return None if value is None else [float(v) for v in value]


def summarize_reading(infos: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per modality, how recordings were read: the facts each ``PreparedRecording.info`` records.

    Parameters
    ----------
    infos : iterable of mapping
        ``info`` of prepared recordings (``somnray.data.recording.prepare_psg``), e.g. from their
        file footers.  Recordings prepared before the amplitude scale was recorded count for the
        reading facts only.

    Returns
    -------
    dict
        Modality → ``reading`` (``n_recordings``; the sorted distinct ``native_sfreq``,
        ``signals`` as :func:`~somnray.data.recording.channels_used` names them, ``bands``
        applied and ``units``) and, when the recordings carry it in a common voltage,
        ``amplitude`` (``statistic``, ``unit`` ``uV``, ``n_recordings``, ``quantiles`` of
        :data:`AMPLITUDE_QUANTILES`): the physical scale the normalisation divided by.
    """
    reading: dict[str, dict[str, Any]] = {}
    scales: dict[str, list[float]] = {}
    statistics: dict[str, set[str]] = {}
    convertible: dict[str, bool] = {}
    for info in infos:
        used = channels_used(info)
        for m, facts in (info.get("channels") or {}).items():
            r = reading.setdefault(m, {"n_recordings": 0, "native_sfreq": set(), "signals": set(),
                                       "bands": set(), "units": set()})
            r["n_recordings"] += 1
            r["native_sfreq"].add(float(facts["native_sfreq"]))
            r["signals"].add(used[m])
            r["bands"].add(None if facts.get("band") is None else tuple(_band(facts["band"])))
            r["units"].add(str(facts.get("unit") or ""))
        for m, amp in (info.get("amplitude") or {}).items():
            uv = to_microvolts(amp["scale"], amp.get("unit"))
            convertible[m] = convertible.get(m, True) and uv is not None
            if uv is not None:
                scales.setdefault(m, []).append(uv)
                statistics.setdefault(m, set()).add(str(amp["statistic"]))
    out: dict[str, dict[str, Any]] = {}
    for m, r in reading.items():
        bands = sorted(r["bands"], key=lambda b: (b is not None, b or ()))
        out[m] = {"reading": {"n_recordings": r["n_recordings"], "native_sfreq": sorted(r["native_sfreq"]),
                              "signals": sorted(r["signals"]), "bands": [_band(b) for b in bands],
                              "units": sorted(r["units"])}}
        values = scales.get(m)
        # One statistic in one voltage, or nothing: mixed ones would compare unlike with unlike.
        if values and convertible.get(m) and len(statistics[m]) == 1:
            out[m]["amplitude"] = {
                "statistic": next(iter(statistics[m])), "unit": "uV", "n_recordings": len(values),
                "quantiles": {f"{q:g}": round(float(v), 6)
                              for q, v in zip(AMPLITUDE_QUANTILES, np.quantile(values, AMPLITUDE_QUANTILES))}}
    return out


__all__ = ["AMPLITUDE_QUANTILES", "BANDS", "MICROVOLTS_PER_UNIT", "RMS_QUANTILES", "summarize_epochs",
           "summarize_modalities", "summarize_reading", "to_microvolts"]
