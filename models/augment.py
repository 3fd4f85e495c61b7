"""Batched, seedable signal augmentations for contrastive learning (MC²SleepNet §4.1, SleePyCo).

MC²SleepNet (Na et al., 2024, §4.1.2 and docs/models.md §3.4) augments the two views before the
InfoNCE loss: the raw view with *one* randomly chosen operation among amplitude scaling, amplitude
(DC) shift, additive Gaussian noise, band-stop filtering, time shift and zero-masking, the
spectrogram view with additive Gaussian noise only. The operation parameters are SleePyCo's
(``gist-ailab/SleePyCo`` ``transform.py``), where each operation fires with probability 0.5.

Everything here runs in torch on whole batches (one row = one 30-s epoch), draws every random
number from an optional :class:`torch.Generator` (seeded runs are reproducible) and keeps the
input's shape and dtype.

Units. SleePyCo works on signals in µV; somnray's signals are z-scored per recording (unit
standard deviation). Scaling, time shift, zero-masking and band-stop are unit-free. The DC shift
is not: SleePyCo's ±10 µV is converted with a typical recording standard deviation of 20 µV for a
Fpz-Cz or C4-A1 EEG, i.e. ±0.5 std (``dc_shift_std``). The noise level σ ~ U(0, 0.2) is kept as a
number *in std units*: read literally in µV it would be ~1 % of the signal and leave the view
unchanged, which is not the purpose of a contrastive augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import SAMPLING_RATE_HZ

#: Names of the raw-view operations, in the order of the random choice.
RAW_OPERATIONS = ("scale", "dc_shift", "noise", "band_stop", "time_shift", "zero_mask")


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None,
             device: torch.device) -> Tensor:
    """``n`` draws of U(low, high) in float32 on ``device`` (drawn on the generator's device)."""
    where = generator.device if generator is not None else device
    return (torch.rand(n, generator=generator, device=where) * (high - low) + low).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)


@dataclass(frozen=True)
class RawAugmentation:
    """Parameters of the raw-signal augmentation (defaults: SleePyCo's, in z-scored units).

    Parameters
    ----------
    p_apply : float
        Probability that the chosen operation is applied to an epoch (SleePyCo: 0.5).
    operations : tuple of str
        Operations to choose from (a subset of :data:`RAW_OPERATIONS`).
    scale_range : tuple of float
        Amplitude factor range (SleePyCo: U(0.5, 2)).
    dc_shift_std : tuple of float
        Additive offset range in recording standard deviations (SleePyCo's ±10 µV ≈ ±0.5 std).
    noise_std_range : tuple of float
        Range of the Gaussian noise σ in standard deviations (SleePyCo: U(0, 0.2)).
    band_stop_low_hz : tuple of float
        Range of the stop band's lower edge in Hz (SleePyCo: U(0.5, 30)).
    band_stop_width_hz : float
        Width of the stop band in Hz (SleePyCo: 2 Hz, so the centre is the lower edge + 1 Hz).
    time_shift_s : float
        Maximal shift in seconds either way, the vacated samples set to zero (SleePyCo: 300
        samples at 100 Hz).
    zero_mask_s : float
        Maximal length in seconds of a zeroed stretch (SleePyCo: 300 samples at 100 Hz).
    sfreq : float
        Sampling rate of the signals in Hz.
    """

    p_apply: float = 0.5
    operations: tuple[str, ...] = field(default=RAW_OPERATIONS)
    scale_range: tuple[float, float] = (0.5, 2.0)
    dc_shift_std: tuple[float, float] = (-0.5, 0.5)
    noise_std_range: tuple[float, float] = (0.0, 0.2)
    band_stop_low_hz: tuple[float, float] = (0.5, 30.0)
    band_stop_width_hz: float = 2.0
    time_shift_s: float = 3.0
    zero_mask_s: float = 3.0
    sfreq: float = float(SAMPLING_RATE_HZ)

    def __post_init__(self) -> None:
        unknown = [op for op in self.operations if op not in RAW_OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(f"operations must be a non-empty subset of {list(RAW_OPERATIONS)}, "
                             f"got {list(self.operations)}")
        if not 0.0 <= self.p_apply <= 1.0:
            raise ValueError(f"p_apply must lie in [0, 1], got {self.p_apply}")
        if self.band_stop_low_hz[1] + self.band_stop_width_hz > self.sfreq / 2:
            raise ValueError(f"band_stop_low_hz={self.band_stop_low_hz} with width "
                             f"{self.band_stop_width_hz} Hz reaches past Nyquist ({self.sfreq / 2} Hz)")


def augment_raw(x: Tensor, generator: torch.Generator | None = None,
                config: RawAugmentation = RawAugmentation()) -> Tensor:
    """Apply one randomly chosen raw-signal operation to every epoch of ``x``.

    Parameters
    ----------
    x : Tensor
        ``(..., S)`` epochs; every leading index is augmented independently.
    generator : torch.Generator, optional
        Source of every random draw (the global generator when None).
    config : RawAugmentation
        Operation parameters.

    Returns
    -------
    Tensor
        Augmented copy with the shape and dtype of ``x``.
    """
    lead, n_samples = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, n_samples).float()  # (N, S): one epoch per row
    n, device = flat.shape[0], flat.device
    if n == 0:
        return x.clone()
    # Every per-epoch draw is made up front for all rows, so the stream of random numbers does not
    # depend on which operation a row got.
    choice = (_uniform(n, 0.0, 1.0, generator, device) * len(config.operations)).long()
    choice = choice.clamp_max(len(config.operations) - 1)
    fire = _uniform(n, 0.0, 1.0, generator, device) < config.p_apply
    value = _uniform(n, 0.0, 1.0, generator, device)  # each op maps this to its own range
    position = _uniform(n, 0.0, 1.0, generator, device)  # zero-mask start
    out = flat.clone()
    for op_index, op in enumerate(config.operations):
        rows = torch.nonzero(fire & (choice == op_index)).flatten()
        if rows.numel() == 0:
            continue
        out[rows] = _APPLY[op](flat[rows], value[rows], position[rows], generator, config)
    return out.to(x.dtype).reshape(*lead, n_samples)


def _lerp(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _scale(x: Tensor, u: Tensor, _pos: Tensor, _gen, cfg: RawAugmentation) -> Tensor:
    return x * _lerp(u, cfg.scale_range)[:, None]


def _dc_shift(x: Tensor, u: Tensor, _pos: Tensor, _gen, cfg: RawAugmentation) -> Tensor:
    return x + _lerp(u, cfg.dc_shift_std)[:, None]


def _noise(x: Tensor, u: Tensor, _pos: Tensor, gen, cfg: RawAugmentation) -> Tensor:
    sigma = _lerp(u, cfg.noise_std_range)[:, None]
    return x + sigma * _normal(tuple(x.shape), gen, x.device)


def _band_stop(x: Tensor, u: Tensor, _pos: Tensor, _gen, cfg: RawAugmentation) -> Tensor:
    # Ideal band-stop by zeroing FFT bins: a zero-phase stand-in for SleePyCo's IIR notch
    # (scipy.signal.iirnotch centred on low + width/2, quality = centre / width).
    n_samples = x.shape[-1]
    spectrum = torch.fft.rfft(x, dim=-1)  # (n, S/2 + 1)
    freqs = torch.fft.rfftfreq(n_samples, d=1.0 / cfg.sfreq).to(x.device)  # (S/2 + 1,)
    low = _lerp(u, cfg.band_stop_low_hz)[:, None]
    stop = (freqs >= low) & (freqs <= low + cfg.band_stop_width_hz)  # (n, S/2 + 1)
    return torch.fft.irfft(spectrum.masked_fill(stop, 0), n=n_samples, dim=-1)


def _time_shift(x: Tensor, u: Tensor, _pos: Tensor, _gen, cfg: RawAugmentation) -> Tensor:
    n_samples = x.shape[-1]
    max_shift = int(round(cfg.time_shift_s * cfg.sfreq))
    # Integer shift in [-max, max]; positive delays the signal (scipy.ndimage.shift, cval=0).
    shift = (u * (2 * max_shift + 1)).long().clamp_max(2 * max_shift) - max_shift  # (n,)
    source = torch.arange(n_samples, device=x.device)[None, :] - shift[:, None]  # (n, S)
    inside = (source >= 0) & (source < n_samples)
    shifted = torch.gather(x, 1, source.clamp(0, n_samples - 1))
    return shifted * inside


def _zero_mask(x: Tensor, u: Tensor, pos: Tensor, _gen, cfg: RawAugmentation) -> Tensor:
    n_samples = x.shape[-1]
    max_len = min(int(round(cfg.zero_mask_s * cfg.sfreq)), n_samples)
    length = (u * (max_len + 1)).long().clamp_max(max_len)  # (n,) in [0, max_len]
    start = (pos * (n_samples - length + 1)).long().clamp_max(n_samples - length)  # (n,)
    t = torch.arange(n_samples, device=x.device)[None, :]
    masked = (t >= start[:, None]) & (t < (start + length)[:, None])
    return x.masked_fill(masked, 0.0)


_APPLY = {"scale": _scale, "dc_shift": _dc_shift, "noise": _noise, "band_stop": _band_stop,
          "time_shift": _time_shift, "zero_mask": _zero_mask}


def augment_spectrogram(spec: Tensor, generator: torch.Generator | None = None,
                        noise_std: float = 0.1) -> Tensor:
    """Additive Gaussian noise on a normalised spectrogram (MC²SleepNet's "random noise").

    Parameters
    ----------
    spec : Tensor
        ``(..., F, K)`` per-bin z-scored log-spectrogram.
    generator : torch.Generator, optional
        Source of the noise (the global generator when None).
    noise_std : float
        Standard deviation of the noise, in normalised units (docs/models.md §3.4 [D]: 0.1).

    Returns
    -------
    Tensor
        Noisy copy with the shape and dtype of ``spec``.
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    noise = _normal(tuple(spec.shape), generator, spec.device)
    return (spec.float() + noise_std * noise).to(spec.dtype)


__all__ = ["RAW_OPERATIONS", "RawAugmentation", "augment_raw", "augment_spectrogram"]
