"""Channels: what each signal of a simulated recording is and how it is stored in the EDF.

:class:`SynthChannel` describes one signal (kind, native rate, mixture of latent sources, EDF header
fields); the montages of the three cohort profiles are :data:`SLEEP_EDF_CHANNELS`,
:data:`SHHS_CHANNELS` and :data:`GENERIC_CHANNELS`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GENERIC_CHANNELS", "SHHS_CHANNELS", "SLEEP_EDF_CHANNELS", "SynthChannel"]


@dataclass(frozen=True)
class SynthChannel:
    """One signal of a simulated recording and how it is stored in the EDF.

    Parameters
    ----------
    label : str
        EDF signal label, as the real cohort spells it.
    kind : str
        What is simulated: ``exg`` (EEG or EOG: a mixture of latent sources), ``emg``,
        ``emg_envelope`` (1-s RMS of chin EMG), ``ecg``, ``airflow``, ``effort``, ``spo2``,
        ``heart_rate``, ``position``, ``light``, ``temperature`` or ``marker``.
    fs : int
        Native sampling rate in Hz.
    modality : str, optional
        Canonical modality the channel feeds (``eeg``, ``eeg2``, ``eog``, ``emg``, ``ecg``); used to
        report which modality an artefact makes unavailable.
    mix : tuple of (str, float)
        For ``exg``: weight of each latent source (``delta``, ``theta``, ``alpha``, ``spindle``,
        ``kcomplex``, ``vertex``, ``sawtooth``, ``eye``, ``blink``, ``movement``, ``ecg``).
    background_uv : float
        For ``exg``: RMS of the channel's own 1/f background (independent between channels).
    muscle : float
        For ``exg``: fraction of the chin-EMG envelope that leaks in as high-frequency noise.
    unit, physical_range, digital_range, transducer, prefilter
        EDF header fields; samples outside the physical range are clipped (amplifier saturation).
    """

    label: str
    kind: str
    fs: int
    modality: str | None = None
    mix: tuple[tuple[str, float], ...] = ()
    background_uv: float = 0.0
    muscle: float = 0.0
    unit: str = "uV"
    physical_range: tuple[float, float] = (-500.0, 500.0)
    digital_range: tuple[int, int] = (-32768, 32767)
    transducer: str = ""
    prefilter: str = ""


# Source weights by electrode site.  Frontal leads see eye movements and more delta, parietal
# leads most of the alpha; mastoid-referenced central leads pick up the ECG.
_FRONTAL = (("delta", 1.15), ("theta", 0.9), ("alpha", 0.45), ("spindle", 0.7), ("kcomplex", 1.1),
            ("vertex", 0.9), ("sawtooth", 0.8), ("eye", 0.12), ("blink", 0.35), ("movement", 0.7))
_PARIETAL = (("delta", 0.7), ("theta", 0.8), ("alpha", 1.5), ("spindle", 0.7), ("kcomplex", 0.5),
             ("vertex", 0.5), ("sawtooth", 0.6), ("eye", 0.02), ("blink", 0.03), ("movement", 0.5))
_CENTRAL = (("delta", 1.0), ("theta", 1.0), ("alpha", 0.85), ("spindle", 1.0), ("kcomplex", 1.0),
            ("vertex", 1.0), ("sawtooth", 1.0), ("eye", 0.05), ("blink", 0.1), ("movement", 0.6),
            ("ecg", 4.0))


def _eog_mix(eye: float, blink: float) -> tuple[tuple[str, float], ...]:
    # Common-mode content (frontal delta, K-complexes, blinks) is the same in left and right
    # electrodes, so it cancels in their difference while the eye dipole (opposite signs) adds up.
    return (("eye", eye), ("blink", blink), ("delta", 0.35), ("kcomplex", 0.3), ("theta", 0.15),
            ("alpha", 0.1), ("movement", 0.9))


_SC_EEG = dict(physical_range=(-250.0, 250.0), digital_range=(-2048, 2047),
               transducer="Ag-AgCl electrodes", prefilter="HP:0.5Hz LP:100Hz [enhanced cassette BW]")

#: Sleep-EDF Expanded, sleep-cassette study (12-bit samples and header texts as in the SC files).
SLEEP_EDF_CHANNELS: tuple[SynthChannel, ...] = (
    SynthChannel("EEG Fpz-Cz", "exg", 100, "eeg", _FRONTAL, 8.0, 0.5, **_SC_EEG),
    SynthChannel("EEG Pz-Oz", "exg", 100, "eeg2", _PARIETAL, 7.0, 0.15, **_SC_EEG),
    SynthChannel("EOG horizontal", "exg", 100, "eog", _eog_mix(1.0, 0.25), 5.0, 0.3, unit="uV",
                 physical_range=(-600.0, 600.0), digital_range=(-2048, 2047),
                 transducer="Ag-AgCl electrodes", prefilter="HP:0.5Hz LP:100Hz [enhanced cassette BW]"),
    SynthChannel("Resp oro-nasal", "airflow", 1, None, unit="", physical_range=(-2048.0, 2047.0),
                 digital_range=(-2048, 2047), transducer="Oral-nasal thermistors", prefilter="HP:0.03Hz LP:0.9Hz"),
    SynthChannel("EMG submental", "emg_envelope", 1, "emg", unit="uV", physical_range=(0.0, 200.0),
                 digital_range=(-2048, 2047), transducer="Ag-AgCl electrodes",
                 prefilter="HP:16Hz Rectification LP:0.7Hz"),
    SynthChannel("Temp rectal", "temperature", 1, None, unit="DegC", physical_range=(34.0, 40.0),
                 digital_range=(-2048, 2047), transducer="Rectal thermistor", prefilter="LP:0.1Hz (first order)"),
    SynthChannel("Event marker", "marker", 1, None, unit="", physical_range=(-2048.0, 2047.0),
                 digital_range=(-2048, 2047), transducer="Marker button", prefilter="No filtering"),
)

_SHHS_EXG = dict(unit="uV", physical_range=(-250.0, 250.0), transducer="", prefilter="")

#: SHHS-1 (NSRR), in the channel order of the visit-1 EDFs.
SHHS_CHANNELS: tuple[SynthChannel, ...] = (
    SynthChannel("SaO2", "spo2", 1, None, unit="%", physical_range=(0.0, 100.0)),
    SynthChannel("H.R.", "heart_rate", 1, None, unit="bpm", physical_range=(0.0, 250.0)),
    SynthChannel("EEG(sec)", "exg", 125, "eeg2", _CENTRAL, 8.0, 0.3, **_SHHS_EXG),
    SynthChannel("ECG", "ecg", 125, "ecg", unit="mV", physical_range=(-2.5, 2.5)),
    SynthChannel("EMG", "emg", 125, "emg", unit="uV", physical_range=(-250.0, 250.0)),
    SynthChannel("EOG(L)", "exg", 50, "eog", _eog_mix(0.5, 0.5), 5.0, 0.2, **_SHHS_EXG),
    SynthChannel("EOG(R)", "exg", 50, "eog", _eog_mix(-0.5, 0.5), 5.0, 0.2, **_SHHS_EXG),
    SynthChannel("EEG", "exg", 125, "eeg", _CENTRAL, 8.0, 0.3, **_SHHS_EXG),
    SynthChannel("THOR RES", "effort", 10, None, unit="", physical_range=(-1.0, 1.0)),
    SynthChannel("POSITION", "position", 1, None, unit="", physical_range=(0.0, 3.0)),
    SynthChannel("LIGHT", "light", 1, None, unit="", physical_range=(0.0, 1.0)),
)

#: A generic AASM montage (mastoid-referenced derivations, chin EMG at a higher rate).
GENERIC_CHANNELS: tuple[SynthChannel, ...] = (
    SynthChannel("C4-M1", "exg", 256, "eeg", _CENTRAL, 8.0, 0.3, unit="uV", physical_range=(-400.0, 400.0)),
    SynthChannel("E1-M2", "exg", 256, "eog", _eog_mix(0.5, 0.5), 5.0, 0.2, unit="uV",
                 physical_range=(-400.0, 400.0)),
    SynthChannel("Chin1-Chin2", "emg", 512, "emg", unit="uV", physical_range=(-300.0, 300.0)),
)

_PROFILE_CHANNELS: dict[str, tuple[SynthChannel, ...]] = {
    "sleep-edf": SLEEP_EDF_CHANNELS, "shhs": SHHS_CHANNELS, "generic": GENERIC_CHANNELS,
}
