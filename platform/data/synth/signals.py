"""Signal building blocks, all vectorised over the whole night.

Shaped Gaussian noise, spectral shapes of the latent rhythms, per-epoch envelopes, Poisson event
times, event rendering, waveform templates (K-complex, vertex wave, saccade, ECG complex) and
resampling: the pieces :mod:`somnray.data.synth.night` assembles into channels.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import numpy as np
from scipy import fft as sfft
from scipy import signal as ssig
from scipy.ndimage import uniform_filter1d

from .codes import EPOCH_S

def _shaped_noise(rng: np.random.Generator, n: int, fs: float,
                  amplitude: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gaussian noise of ``n`` samples with spectral amplitude ``amplitude(f)``, unit RMS.

    Only the bins below ``amplitude.f_max`` (when the shape has one) are drawn: a delta-band source
    of an 8-h night then costs one inverse FFT rather than millions of random numbers.
    """
    nfft = sfft.next_fast_len(n, real=True)
    m = nfft // 2 + 1
    f_max = getattr(amplitude, "f_max", None)
    used = m if f_max is None else min(m, int(np.ceil(f_max * nfft / fs)) + 1)
    freqs = np.arange(used, dtype=np.float64) * (fs / nfft)
    spectrum = np.zeros(m, dtype=np.complex64)
    spectrum[:used] = (rng.standard_normal(used, dtype=np.float32)
                       + 1j * rng.standard_normal(used, dtype=np.float32)) * amplitude(freqs).astype(np.float32)
    spectrum[0] = 0.0  # no DC offset
    # Parseval: the RMS of the irfft follows from the spectrum (irfft divides by nfft).
    power = 2.0 * float(np.sum(np.abs(spectrum[:used].astype(np.complex128)) ** 2))
    rms = math.sqrt(power) / nfft
    x = sfft.irfft(spectrum, nfft)[:n]
    return (x / np.float32(rms) if rms > 0 else x).astype(np.float32, copy=False)


def _bump(center: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    def amp(f: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((f - center) / width) ** 2)
    amp.f_max = center + 6.0 * width  # type: ignore[attr-defined]  # exp(-18): nothing left above
    return amp


def _aperiodic(exponent: float, fs: float) -> Callable[[np.ndarray], np.ndarray]:
    # 1/f^exponent power with the recorder's 0.3-Hz high-pass and a gentle roll-off near Nyquist,
    # plus a small beta bump (15–30 Hz) that real background activity has.
    def amp(f: np.ndarray) -> np.ndarray:
        f_safe = np.maximum(f, 0.3)
        a = f_safe ** (-exponent / 2.0) / (1.0 + (0.3 / np.maximum(f, 1e-3)) ** 2)
        a += 0.08 * np.exp(-0.5 * ((f - 21.0) / 5.0) ** 2)
        return a / (1.0 + (f / (0.42 * fs)) ** 8)
    return amp


def _highband(low: float, fs: float) -> Callable[[np.ndarray], np.ndarray]:
    # Muscle activity: broadband above ~low Hz, rolled off just below Nyquist.
    return lambda f: 1.0 / (1.0 + (low / np.maximum(f, 1e-3)) ** 6) / (1.0 + (f / (0.45 * fs)) ** 8)


def _per_sample(values: np.ndarray, n: int, fs: int, smooth_s: int = 3) -> np.ndarray:
    """Per-epoch values → a per-sample envelope with transitions of ``smooth_s`` seconds.

    The envelope changes once a second: amplitude steps that small and that slow are invisible
    in the signal, and repeating is ten times faster than interpolating hours of samples.
    """
    per_second = np.repeat(np.asarray(values, dtype=np.float32), EPOCH_S)
    if smooth_s > 1:
        per_second = uniform_filter1d(per_second, size=smooth_s, mode="nearest")
    return np.repeat(per_second, fs)[:n]


def _draw_times(rng: np.random.Generator, rates: np.ndarray) -> np.ndarray:
    """Event times (s) of a Poisson process whose expected count per epoch is ``rates``."""
    counts = rng.poisson(rates)
    epochs = np.repeat(np.arange(rates.size), counts)
    return (epochs + rng.random(epochs.size)) * EPOCH_S


def _render_events(times_s: np.ndarray, weights: np.ndarray, template: np.ndarray, n: int,
                   fs: float) -> np.ndarray:
    """Place ``template`` (scaled by ``weights``) starting at each event time; ``n`` samples out."""
    times_s = np.asarray(times_s, dtype=np.float64)
    if times_s.size == 0:
        return np.zeros(n, dtype=np.float32)
    # Events are sparse: summing shifted copies directly beats an FFT convolution of the night.
    idx = (times_s * fs).astype(np.int64)[:, None] + np.arange(template.size)
    values = np.asarray(weights, dtype=np.float64)[:, None] * template[None, :]
    inside = idx < n
    return np.bincount(idx[inside], weights=values[inside], minlength=n)[:n].astype(np.float32)


def _t(duration_s: float, fs: float) -> np.ndarray:
    return np.arange(int(round(duration_s * fs))) / fs


def _gauss(t: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sd) ** 2)


def _kcomplex_template(fs: float) -> np.ndarray:
    # A sharp negative wave followed by a slower positive one (EEG convention: negative is up).
    t = _t(1.3, fs)
    w = -_gauss(t, 0.3, 0.07) + 0.6 * _gauss(t, 0.68, 0.16)
    return w / np.ptp(w)


def _vertex_template(fs: float) -> np.ndarray:
    t = _t(0.5, fs)
    w = -_gauss(t, 0.12, 0.035) + 0.35 * _gauss(t, 0.28, 0.06)
    return w / np.ptp(w)


def _saccade_template(fs: float, time_constant_s: float = 1.0) -> np.ndarray:
    # A step of eye position (30-ms rise) seen through the EOG amplifier's first-order high-pass.
    t = _t(5.0 * time_constant_s, fs)
    return (1.0 - np.exp(-t / 0.03)) * np.exp(-t / time_constant_s)


def _hann(duration_s: float, fs: float) -> np.ndarray:
    return np.hanning(max(3, int(round(duration_s * fs))))


def _ecg_template(fs: float) -> np.ndarray:
    # P, Q, R, S, T waves (mV); the R peak sits 0.3 s after the template start.
    t = _t(0.8, fs)
    return (0.12 * _gauss(t, 0.14, 0.025) - 0.10 * _gauss(t, 0.28, 0.008) + 1.0 * _gauss(t, 0.30, 0.009)
            - 0.25 * _gauss(t, 0.325, 0.01) + 0.30 * _gauss(t, 0.55, 0.045))


def _resample(x: np.ndarray, fs_from: int, fs_to: int, n_out: int) -> np.ndarray:
    if fs_from == fs_to:
        return x[:n_out]
    ratio = Fraction(fs_to, fs_from)
    y = ssig.resample_poly(x, ratio.numerator, ratio.denominator)
    return y[:n_out].astype(np.float32)
