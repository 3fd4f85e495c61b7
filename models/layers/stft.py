"""Log-magnitude STFT front-end, computed on the device (the spectrogram is never stored).

Both CoRe-Sleep (Kontras et al., TNSRE 2024, §II-B) and MC²SleepNet (Na et al., 2024, §3.1) feed a
Transformer with the spectrogram of each 30-s epoch: a 2-s Hamming window (200 samples at 100 Hz)
moved by 1 s, each frame zero-padded to NFFT = 256, log-magnitude ``20·log10|X|``.  That gives
29 frames × 129 bins; CoRe-Sleep drops the DC bin (128 features = ``d_model``).

The frames are cut with ``unfold`` rather than ``torch.stft``: ``torch.stft`` makes frames of
``n_fft`` samples, which gives 28 frames, whereas the papers' MATLAB/SciPy ``spectrogram`` frames
are ``win_length`` samples zero-padded to ``n_fft`` (29 frames).

Each frequency bin is normalised with a mean and standard deviation computed on the training set
(CoRe-Sleep code, docs/models.md §2.1 step 8).  The statistics are buffers, so they travel with the
checkpoint; the trainer sets them with :meth:`STFTFrontEnd.set_statistics`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import EPOCH_SAMPLES, SAMPLING_RATE_HZ


def n_frames(n_samples: int = EPOCH_SAMPLES, win_length: int = 200, hop_length: int = 100) -> int:
    """Number of STFT frames of ``win_length`` samples hopping by ``hop_length``."""
    return 1 + (n_samples - win_length) // hop_length


class STFTFrontEnd(nn.Module):
    """Per-epoch log-magnitude spectrogram with per-bin normalisation.

    Parameters
    ----------
    window_s : float
        Window length in seconds (paper: 2 s).
    hop_s : float
        Hop in seconds (paper: 1 s, i.e. 50 % overlap).
    n_fft : int
        FFT length; each frame is zero-padded to it (paper: 256 → 129 bins).
    drop_dc : bool
        Drop the DC bin (CoRe-Sleep: 128 features; MC²SleepNet keeps 129).
    normalize : bool
        Apply the per-bin statistics held in the ``bin_mean``/``bin_std`` buffers.
    sfreq : int
        Sampling rate of the input in Hz.
    floor_db : float
        Magnitudes are floored at this level before the log, so flat (absent or detached) epochs
        give a finite spectrogram instead of ``-inf`` (the CoRe-Sleep pipeline drops such epochs;
        here they stay and the availability mask decides).

    Shapes
    ------
    input ``(..., 3000)`` → output ``(..., F, K)`` with ``F = 29`` frames and ``K = 129 - drop_dc``.
    """

    def __init__(self, window_s: float = 2.0, hop_s: float = 1.0, n_fft: int = 256,
                 drop_dc: bool = False, normalize: bool = True, sfreq: int = SAMPLING_RATE_HZ,
                 floor_db: float = -120.0):
        super().__init__()
        self.win_length = int(round(window_s * sfreq))
        self.hop_length = int(round(hop_s * sfreq))
        if self.win_length > n_fft:
            raise ValueError(f"window of {window_s} s ({self.win_length} samples) is longer than "
                             f"n_fft={n_fft}")
        self.n_fft = n_fft
        self.drop_dc = drop_dc
        self.normalize = normalize
        self.floor = 10.0 ** (floor_db / 20.0)
        self.n_bins = n_fft // 2 + 1 - int(drop_dc)
        self.n_frames = n_frames(EPOCH_SAMPLES, self.win_length, self.hop_length)
        # MATLAB's hamming() is symmetric, hence periodic=False.
        self.register_buffer("window", torch.hamming_window(self.win_length, periodic=False),
                             persistent=False)
        self.register_buffer("bin_mean", torch.zeros(self.n_bins))
        self.register_buffer("bin_std", torch.ones(self.n_bins))

    def log_spectrogram(self, x: Tensor) -> Tensor:
        """Un-normalised log-magnitude spectrogram ``(..., F, K)`` in dB, computed in float32."""
        lead = x.shape[:-1]
        # FFTs have no bf16/fp16 kernels on every device, and dB values need fp32 range anyway.
        with torch.autocast(device_type=x.device.type, enabled=False):
            frames = x.reshape(-1, x.shape[-1]).float().unfold(-1, self.win_length, self.hop_length)
            # frames: (N, F, win_length)
            spec = torch.fft.rfft(frames * self.window, n=self.n_fft)  # (N, F, n_fft/2+1)
            mag_db = 20.0 * torch.log10(spec.abs().clamp_min(self.floor))
        if self.drop_dc:
            mag_db = mag_db[..., 1:]
        return mag_db.reshape(*lead, mag_db.shape[-2], mag_db.shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Normalised spectrogram ``(..., F, K)`` of epochs ``x`` ``(..., 3000)``."""
        spec = self.log_spectrogram(x)
        if self.normalize:
            spec = (spec - self.bin_mean) / self.bin_std
        return spec

    @torch.no_grad()
    def set_statistics(self, mean: Tensor, std: Tensor, min_std: float = 1e-3) -> None:
        """Set the per-bin normalisation statistics (computed on the training split).

        Parameters
        ----------
        mean, std : Tensor
            ``(K,)`` per-bin mean and standard deviation in dB.
        min_std : float
            Lower bound on ``std`` so a constant bin cannot blow up the features.
        """
        mean = torch.as_tensor(mean, dtype=self.bin_mean.dtype).reshape(-1)
        std = torch.as_tensor(std, dtype=self.bin_std.dtype).reshape(-1)
        if mean.numel() != self.n_bins or std.numel() != self.n_bins:
            raise ValueError(f"expected {self.n_bins} per-bin statistics, got mean {tuple(mean.shape)} "
                             f"and std {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("spectrogram statistics must be finite")
        self.bin_mean.copy_(mean)
        self.bin_std.copy_(std.clamp_min(min_std))

    @torch.no_grad()
    def statistics_from(self, epochs: Tensor) -> tuple[Tensor, Tensor]:
        """Per-bin mean and std of the log-spectrogram over ``epochs`` ``(N, 3000)``."""
        spec = self.log_spectrogram(epochs).reshape(-1, self.n_bins)
        return spec.mean(0), spec.std(0)

    def extra_repr(self) -> str:
        return (f"win_length={self.win_length}, hop_length={self.hop_length}, n_fft={self.n_fft}, "
                f"frames={self.n_frames}, bins={self.n_bins}, normalize={self.normalize}")


__all__ = ["STFTFrontEnd", "n_frames"]
