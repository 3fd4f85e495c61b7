"""One night: the signals of every channel of a recording, simulated from its hypnogram.

Each stage is a mixture of latent cortical rhythms (1/f background, delta, theta, alpha, spindles,
K-complexes, vertex waves, sawtooth waves), eye movements (saccades, slow rolling movements, blinks)
and muscle tone, with per-subject gains, per-night and per-epoch amplitude jitter and
channel-specific mixing.  :func:`simulate_night` plans the night once and renders each channel at
its native rate from that plan.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .channels import SynthChannel
from .codes import EPOCH_S
from .hypnogram import Hypnogram
from .physiology import (_ALPHA_UV, _BACKGROUND_GAIN, _BLINK_RATE, _DELTA_UV, _EMG_TONE_UV, _HEART_RATE_DELTA,
                         _KCOMPLEX_RATE, _MOVEMENT_RATE, _RC_MT, _RC_N1, _RC_REM, _RC_W, _RENDER_CLASS,
                         _RESP_RATE_DELTA, _SACCADE_RATE, _SAWTOOTH_RATE, _SLOW_EYE_UV, _SPINDLE_RATE, _THETA_UV,
                         _TWITCH_RATE, _VERTEX_RATE)
from .respiratory import _APNEA, _DESATURATION, _RESPIRATORY, RespiratoryEvent
from .seeding import _as_rng, _child_rng
from .signals import (_aperiodic, _bump, _draw_times, _ecg_template, _gauss, _hann, _highband, _kcomplex_template,
                      _per_sample, _render_events, _resample, _saccade_template, _shaped_noise, _t, _vertex_template)
from .subjects import SubjectTraits

__all__ = ["simulate_night"]

# Latent cortical sources are simulated once per night at this rate (all their content is below
# 30 Hz) and resampled to each channel's native rate with a polyphase filter.
_LATENT_FS = 100


class _Night:
    """The rate-independent plan of one night (per-epoch amplitudes, event times) and a cache of its
    latent sources at :data:`_LATENT_FS`.  Channels are rendered from it by :func:`simulate_night`.
    """

    def __init__(self, hypnogram: Hypnogram, subject: SubjectTraits, base: int,
                 respiratory_events: Sequence[RespiratoryEvent]):
        self.hyp = hypnogram
        self.subject = subject
        self.base = base
        self.events = list(respiratory_events)
        self.n_epochs = hypnogram.n_epochs
        self.duration_s = float(hypnogram.duration_s)
        self.rc = _RENDER_CLASS[hypnogram.rk]
        self._cache: dict[object, np.ndarray] = {}
        rng = _child_rng(base, "plan")
        n_ep = self.n_epochs

        def per_epoch(table: np.ndarray, jitter: float = 0.2) -> np.ndarray:
            # Stage value × per-night factor × per-epoch jitter: stages overlap in amplitude.
            return table[self.rc] * np.exp(rng.normal(0.0, 0.12)) * np.exp(rng.normal(0.0, jitter, n_ep))

        self.delta_uv = per_epoch(_DELTA_UV)
        self.theta_uv = per_epoch(_THETA_UV)
        self.alpha_uv = per_epoch(_ALPHA_UV, 0.3) * subject.alpha_gain
        self.background = per_epoch(_BACKGROUND_GAIN, 0.1)
        self.slow_eye_uv = per_epoch(_SLOW_EYE_UV, 0.35)
        self.emg_tone_uv = per_epoch(_EMG_TONE_UV, 0.3) * subject.emg_gain
        self.heart_rate = subject.heart_rate_bpm + _HEART_RATE_DELTA[self.rc] + rng.normal(0, 1.5, n_ep)
        self.resp_rate = subject.resp_rate_bpm + _RESP_RATE_DELTA[self.rc] + rng.normal(0, 0.4, n_ep)
        self.resp_rate[self.rc == _RC_REM] += rng.normal(0, 1.5, int((self.rc == _RC_REM).sum()))
        # Drowsiness blurs the W/N1 boundary as it does for human scorers: wake epochs next to N1
        # lose alpha and gain slow eye movements, N1 epochs next to wake keep some alpha.
        is_w, is_n1 = self.rc == _RC_W, self.rc == _RC_N1
        near_n1 = np.convolve(is_n1, np.ones(5), mode="same") > 0
        near_w = np.convolve(is_w, np.ones(3), mode="same") > 0
        drowsy = is_w & near_n1 & (rng.random(n_ep) < 0.7)
        self.alpha_uv[drowsy] *= rng.uniform(0.25, 0.7, int(drowsy.sum()))
        self.slow_eye_uv[drowsy] = _SLOW_EYE_UV[_RC_N1] * rng.uniform(0.3, 0.8, int(drowsy.sum()))
        # Slow rolling eye movements come and go: many N1 epochs have none.
        no_sem = is_n1 & (rng.random(n_ep) < 0.4)
        self.slow_eye_uv[no_sem] *= 0.15
        light = is_n1 & near_w
        self.alpha_uv[light] = _ALPHA_UV[_RC_W] * subject.alpha_gain * rng.uniform(0.3, 0.6, int(light.sum()))

        # Discrete events: (times in s, weights).  Templates are applied at render time, per rate.
        self.spindles = self._amplitudes(rng, _draw_times(rng, _SPINDLE_RATE[self.rc]), 22.0, 0.25)
        self.spindle_len = rng.choice([0.7, 1.0, 1.5], size=self.spindles[0].size)
        self.kcomplexes = self._amplitudes(rng, _draw_times(rng, _KCOMPLEX_RATE[self.rc]), 110.0, 0.25)
        self.vertex = self._amplitudes(rng, _draw_times(rng, _VERTEX_RATE[self.rc]), 55.0, 0.25)
        self.sawtooth = self._amplitudes(rng, _draw_times(rng, _SAWTOOTH_RATE[self.rc]), 25.0, 0.25)
        # REM saccades cluster in phasic epochs; in wake they follow gaze shifts in both directions.
        phasic = (self.rc == _RC_REM) & (rng.random(n_ep) < 0.55)
        rem_rate = np.where(self.rc == _RC_REM, np.where(phasic, 14.0, 1.0), 0.0)
        wake_sacc = self._amplitudes(rng, _draw_times(rng, _SACCADE_RATE[self.rc]), 90.0, 0.4)
        rem_sacc = self._amplitudes(rng, _draw_times(rng, rem_rate), 150.0, 0.4)
        times = np.concatenate([wake_sacc[0], rem_sacc[0]])
        signs = rng.choice([-1.0, 1.0], size=times.size)
        self.saccades = (times, np.concatenate([wake_sacc[1], rem_sacc[1]]) * signs)
        self.blinks = self._amplitudes(rng, _draw_times(rng, _BLINK_RATE[self.rc]), 150.0, 0.3)
        self.twitches = self._amplitudes(rng, _draw_times(rng, _TWITCH_RATE[self.rc]), 15.0, 0.4)
        self.movements = self._amplitudes(rng, _draw_times(rng, _MOVEMENT_RATE[self.rc]), 1.0, 0.4)
        self.movement_len = rng.choice([2.0, 4.0, 8.0], size=self.movements[0].size)
        self.mt_tone = np.where(self.rc == _RC_MT, 1.0, 0.0)
        # Body position changes with some of the movements.
        moves = self.movements[0]
        keep = rng.random(moves.size) < 0.5
        self.position_times = np.sort(moves[keep])
        self.position_values = rng.integers(0, 4, size=self.position_times.size + 1).astype(np.float64)
        # Lights: off shortly before sleep onset, on at the end of the final wake period.
        first_sleep = np.flatnonzero(hypnogram.aasm > 0)
        onset_s = float(first_sleep[0] * EPOCH_S) if first_sleep.size else self.duration_s / 2
        self.lights_off_s = onset_s * float(rng.uniform(0.3, 0.8))
        self.lights_on_s = self.duration_s - float(rng.uniform(60.0, 300.0))
        # Heart beats: integrate the instantaneous rate (with respiratory sinus arrhythmia).
        grid = np.arange(0.0, self.duration_s, 0.05)
        hr = np.interp(grid, (np.arange(n_ep) + 0.5) * EPOCH_S, self.heart_rate)
        hr += 3.0 * np.sin(2 * np.pi * grid * subject.resp_rate_bpm / 60.0)
        self.hr_grid, self.hr_curve = grid, hr
        phase = np.concatenate([[0.0], np.cumsum(hr / 60.0 * 0.05)])[:-1] + rng.random()
        beats = np.arange(math.ceil(phase[0]), math.floor(phase[-1]) + 1)
        self.beat_times = np.interp(beats, phase, grid)

    @staticmethod
    def _amplitudes(rng: np.random.Generator, times: np.ndarray, mean: float,
                    sd_log: float) -> tuple[np.ndarray, np.ndarray]:
        return times, mean * np.exp(rng.normal(0.0, sd_log, times.size))

    # ---- envelopes and latent sources --------------------------------------------------------------

    def n_samples(self, fs: float) -> int:
        """Samples of a channel sampled at ``fs`` over the whole night."""
        return int(round(self.duration_s * fs))

    def emg_envelope(self, fs: int) -> np.ndarray:
        """Chin-muscle activity (RMS µV) over time: tone by stage + REM twitches + movements."""
        key = ("emg_env", fs)
        if key not in self._cache:
            n = self.n_samples(fs)
            env = _per_sample(self.emg_tone_uv, n, fs, smooth_s=4)
            env += _render_events(*self.twitches, _hann(0.2, fs), n, fs)
            times, weights = self.movements
            for length in (2.0, 4.0, 8.0):
                sel = self.movement_len == length
                env += _render_events(times[sel], weights[sel] * 60.0 * self.subject.emg_gain,
                                      _hann(length, fs), n, fs)
            env += _per_sample(self.mt_tone * 50.0 * self.subject.emg_gain, n, fs, smooth_s=1)
            self._cache[key] = env
        return self._cache[key]

    def shared_noise(self, kind: str, fs: int, rng: np.random.Generator) -> np.ndarray:
        """A channel's own ``background`` (1/f) or ``muscle`` noise at ``fs``.

        One realisation per rate is simulated and each channel takes it circularly shifted by a
        random offset of minutes to hours: the channels' noises are then uncorrelated at every lag
        that matters, for one FFT per rate instead of one per channel.
        """
        key = (kind, fs)
        if key not in self._cache:
            n = self.n_samples(fs)
            shape = (_aperiodic(self.subject.aperiodic_exponent, fs) if kind == "background"
                     else _highband(20.0 if kind == "muscle" else 15.0, fs))
            self._cache[key] = _shaped_noise(_child_rng(self.base, f"noise/{kind}/{fs}"), n, fs, shape)
        noise = self._cache[key]
        return np.roll(noise, int(rng.integers(noise.size)))

    def latent(self, name: str) -> np.ndarray:
        """A latent source at :data:`_LATENT_FS` (µV; ``ecg`` in mV)."""
        if name not in self._cache:
            self._cache[name] = self._make_latent(name)
        return self._cache[name]

    def _make_latent(self, name: str) -> np.ndarray:
        fs = _LATENT_FS
        n = self.n_samples(fs)
        rng = _child_rng(self.base, f"latent/{name}")
        s = self.subject
        if name == "delta":
            return _shaped_noise(rng, n, fs, _bump(0.9, 0.45)) * _per_sample(self.delta_uv, n, fs)
        if name == "theta":
            return _shaped_noise(rng, n, fs, _bump(s.theta_hz, 0.9)) * _per_sample(self.theta_uv, n, fs)
        if name == "alpha":
            # Alpha waxes and wanes with eye closure over tens of seconds.
            slow = _shaped_noise(rng, int(self.duration_s), 1.0, _bump(0.0, 0.03))
            modulation = np.repeat(0.3 + 1.4 / (1.0 + np.exp(-2.5 * slow)), fs).astype(np.float32)
            return (_shaped_noise(rng, n, fs, _bump(s.alpha_hz, 0.6)) * modulation
                    * _per_sample(self.alpha_uv, n, fs))
        if name == "spindle":
            carrier = _shaped_noise(rng, n, fs, _bump(s.spindle_hz, 0.5)) * np.float32(np.sqrt(2.0))
            times, weights = self.spindles
            env = np.zeros(n, dtype=np.float32)
            for length in (0.7, 1.0, 1.5):
                sel = self.spindle_len == length
                env += _render_events(times[sel], weights[sel], _hann(length, fs), n, fs)
            return carrier * env
        if name == "kcomplex":
            return _render_events(*self.kcomplexes, _kcomplex_template(fs), n, fs)
        if name == "vertex":
            return _render_events(*self.vertex, _vertex_template(fs), n, fs)
        if name == "sawtooth":
            env = _render_events(*self.sawtooth, _hann(2.5, fs), n, fs)
            inside = np.flatnonzero(env)  # the wave only exists inside bursts
            frac = (inside / fs * s.sawtooth_hz) % 1.0
            rise = 0.15  # fast rise, slow fall: the "sawtooth" shape
            wave = np.where(frac < rise, frac / rise, (1.0 - frac) / (1.0 - rise)) * 2.0 - 1.0
            env[inside] *= wave.astype(np.float32)
            return env
        if name == "eye":
            saccades = _render_events(*self.saccades, _saccade_template(fs), n, fs)
            rolling = _shaped_noise(rng, n, fs, _bump(0.3, 0.15)) * _per_sample(self.slow_eye_uv, n, fs, 10)
            return (saccades + rolling) * np.float32(s.eog_gain)
        if name == "blink":
            t = _t(0.5, fs)
            return _render_events(*self.blinks, _gauss(t, 0.2, 0.07), n, fs) * np.float32(s.eog_gain)
        if name == "movement":
            env = self.emg_envelope(fs) / np.float32(max(s.emg_gain, 1e-3))
            env = np.maximum(env - _per_sample(self.emg_tone_uv / s.emg_gain, n, fs, 4), 0.0)
            return _shaped_noise(rng, n, fs, _bump(1.0, 1.5)) * env * np.float32(1.5)
        if name == "ecg":
            return self.ecg(fs)
        raise ValueError(f"unknown latent source {name!r}")

    def ecg(self, fs: int) -> np.ndarray:
        """ECG (mV) at ``fs``: one P-QRS-T complex per beat."""
        key = ("ecg", fs)
        if key not in self._cache:
            n = self.n_samples(fs)
            weights = 1.0 + 0.05 * np.sin(2 * np.pi * self.beat_times * self.subject.resp_rate_bpm / 60.0)
            self._cache[key] = _render_events(np.maximum(self.beat_times - 0.3, 0.0), weights,
                                              _ecg_template(fs), n, fs)
        return self._cache[key]

    def breathing(self, fs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Breathing waveform at ``fs`` and the airflow/effort attenuation of scored events."""
        n = self.n_samples(fs)
        t = np.arange(n) / fs
        rate = np.interp(t, (np.arange(self.n_epochs) + 0.5) * EPOCH_S, self.resp_rate)
        phase = 2 * np.pi * np.cumsum(rate / 60.0 / fs)
        wave = np.sin(phase) + 0.25 * np.sin(2 * phase + 0.7)
        flow = np.ones(n)
        effort = np.ones(n)
        for ev in self.events:
            if ev.event_type != _RESPIRATORY or ev.concept == _DESATURATION:
                continue
            sl = slice(int(ev.start_s * fs), int(ev.end_s * fs))
            flow[sl] = 0.05 if ev.concept == _APNEA else 0.4  # obstructive: no flow, effort goes on
            effort[sl] = 1.2 if ev.concept == _APNEA else 0.6
        return wave, flow, effort


def _render_exg(ch: SynthChannel, night: _Night, rng: np.random.Generator) -> np.ndarray:
    mixed = np.zeros(night.n_samples(_LATENT_FS), dtype=np.float32)
    for source, weight in ch.mix:
        mixed += np.float32(weight) * night.latent(source)
    n = night.n_samples(ch.fs)
    x = _resample(mixed, _LATENT_FS, ch.fs, n)
    x = x + night.shared_noise("background", ch.fs, rng) * _per_sample(night.background * ch.background_uv, n, ch.fs)
    if ch.muscle:
        x = x + night.shared_noise("muscle", ch.fs, rng) * night.emg_envelope(ch.fs) * np.float32(ch.muscle)
    # Electrode impedance and placement differ per subject and channel.
    gain = night.subject.eeg_gain * float(np.exp(_child_rng(night.base, f"gain/{ch.label}").normal(0.0, 0.1)))
    return x * np.float32(gain)


def _render(ch: SynthChannel, night: _Night) -> np.ndarray:
    rng = _child_rng(night.base, f"channel/{ch.label}")
    n = night.n_samples(ch.fs)
    if ch.kind == "exg":
        return _render_exg(ch, night, rng)
    if ch.kind == "emg":
        return night.shared_noise("emg", ch.fs, rng) * night.emg_envelope(ch.fs)
    if ch.kind == "emg_envelope":
        # The SC recorder stored the chin EMG as a rectified, smoothed 1-Hz envelope.
        fs_raw = _LATENT_FS
        raw = night.shared_noise("emg", fs_raw, rng) * night.emg_envelope(fs_raw)
        per_second = np.sqrt(np.mean(np.square(raw.reshape(-1, fs_raw), dtype=np.float64), axis=1))
        return np.repeat(per_second, ch.fs).astype(np.float32)[:n] if ch.fs > 1 else per_second.astype(np.float32)
    if ch.kind == "ecg":
        wander = 0.08 * _shaped_noise(rng, n, ch.fs, _bump(0.0, 0.3))
        return night.ecg(ch.fs) + wander + 0.01 * rng.standard_normal(n, dtype=np.float32)
    if ch.kind in ("airflow", "effort"):
        wave, flow, effort = night.breathing(ch.fs)
        if ch.kind == "airflow":
            scale = 0.55 * ch.physical_range[1]
            return (wave * flow * scale + 0.05 * scale * rng.standard_normal(n)).astype(np.float32)
        return (0.5 * wave * effort + 0.02 * rng.standard_normal(n)).astype(np.float32)
    if ch.kind == "spo2":
        t = np.arange(n) / ch.fs
        spo2 = night.subject.spo2_baseline + 0.4 * _shaped_noise(rng, n, ch.fs, _bump(0.0, 0.01))
        for ev in night.events:
            if ev.concept == _DESATURATION and ev.spo2_nadir is not None and ev.spo2_baseline is not None:
                drop = ev.spo2_baseline - ev.spo2_nadir
                spo2 = spo2 - drop * _gauss(t, ev.start_s + ev.duration_s / 2, ev.duration_s / 3)
        return np.clip(np.round(spo2, 1), 50.0, 100.0).astype(np.float32)
    if ch.kind == "heart_rate":
        t = (np.arange(n) + 0.5) / ch.fs
        return np.round(np.interp(t, night.hr_grid, night.hr_curve)).astype(np.float32)
    if ch.kind == "position":
        t = np.arange(n) / ch.fs
        return night.position_values[np.searchsorted(night.position_times, t)].astype(np.float32)
    if ch.kind == "light":
        t = np.arange(n) / ch.fs
        return ((t < night.lights_off_s) | (t >= night.lights_on_s)).astype(np.float32)
    if ch.kind == "temperature":
        t = np.arange(n) / ch.fs
        curve = 37.1 - 0.6 * np.sin(np.pi * np.clip(t / night.duration_s, 0.0, 1.0))
        return (curve + 0.03 * _shaped_noise(rng, n, ch.fs, _bump(0.0, 0.005))).astype(np.float32)
    if ch.kind == "marker":
        x = np.zeros(n, dtype=np.float32)
        x[int(night.lights_off_s * ch.fs):int(night.lights_off_s * ch.fs) + 2] = 1000.0  # lights-off press
        return x
    raise ValueError(f"channel {ch.label!r}: unknown kind {ch.kind!r}")


def simulate_night(hypnogram: Hypnogram, channels: Sequence[SynthChannel],
                   rng: np.random.Generator | int | None = 0, subject: SubjectTraits | None = None,
                   respiratory_events: Sequence[RespiratoryEvent] = ()) -> dict[str, np.ndarray]:
    """Simulate the signals of one night.

    Parameters
    ----------
    hypnogram : Hypnogram
        The stages the signals must show.
    channels : sequence of SynthChannel
        What to simulate, e.g. :data:`SLEEP_EDF_CHANNELS`; each at its native rate.
    rng : numpy.random.Generator or int
        Random source or seed (one integer is drawn from it; every channel then has its own stream).
    subject : SubjectTraits, optional
        The subject's traits (drawn from ``rng`` when omitted); reuse them for nights of one subject.
    respiratory_events : sequence of RespiratoryEvent
        Apneas/hypopneas/desaturations shaping the airflow, effort and SpO2 channels.

    Returns
    -------
    dict of str to numpy.ndarray
        Channel label → float32 samples (``hypnogram.duration_s × fs`` of them), in the channel's
        physical unit, not yet clipped to its physical range.
    """
    rng = _as_rng(rng)
    base = int(rng.integers(2**62))
    if subject is None:
        subject = SubjectTraits.draw(_child_rng(base, "subject"))
    night = _Night(hypnogram, subject, base, respiratory_events)
    return {ch.label: _render(ch, night) for ch in channels}
