"""Per-stage physiology of the signal model: render classes and amplitude and event-rate tables.

Each R&K code is drawn as one of seven render classes (W, N1, N2, S3, S4, REM, movement time); the
tables give, per class, the amplitudes of the latent rhythms, the rates of discrete events (spindles,
K-complexes, saccades, …), muscle tone, heart and breathing rates and the apnea rate factor.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []  # helpers of the package's other modules only

# Render class of each R&K code: the index into the per-stage amplitude tables below.  "?" epochs
# are drawn as wake (in real files they are mostly lights-on or electrode-handling periods).
_RC_W, _RC_N1, _RC_N2, _RC_S3, _RC_S4, _RC_REM, _RC_MT = range(7)
_RENDER_CLASS = np.array([0, 1, 2, 3, 4, 5, 6, 0, 0, 0], dtype=np.intp)


def _table(w: float, n1: float, n2: float, s3: float, s4: float, rem: float, mt: float) -> np.ndarray:
    return np.array([w, n1, n2, s3, s4, rem, mt], dtype=np.float64)


# Per render class (W, N1, N2, S3, S4, REM, movement time).  Amplitudes are RMS µV of the latent
# rhythm at a central site before subject gains; event rates are expected counts per 30-s epoch.
# Values follow the AASM/R&K stage definitions: posterior alpha in relaxed wake, theta and vertex
# waves in N1, spindles and K-complexes in N2, > 75 µV peak-to-peak delta in N3 (S4: > 50 % of the
# epoch), low-voltage mixed theta with sawtooth waves, rapid eye movements and atonia in REM.
_DELTA_UV = _table(6.0, 9.0, 16.0, 36.0, 50.0, 8.0, 10.0)
_THETA_UV = _table(5.0, 12.0, 9.0, 8.0, 8.0, 11.0, 6.0)
_ALPHA_UV = _table(15.0, 4.0, 2.5, 1.5, 1.5, 3.5, 5.0)
_BACKGROUND_GAIN = _table(1.1, 1.0, 0.95, 0.95, 0.95, 0.85, 1.1)
_SPINDLE_RATE = _table(0.0, 0.2, 2.5, 1.0, 0.5, 0.0, 0.0)
_KCOMPLEX_RATE = _table(0.0, 0.1, 1.0, 0.4, 0.2, 0.0, 0.0)
_VERTEX_RATE = _table(0.0, 1.5, 0.3, 0.0, 0.0, 0.0, 0.0)
_SAWTOOTH_RATE = _table(0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0)
_SACCADE_RATE = _table(6.0, 0.3, 0.0, 0.0, 0.0, 0.0, 4.0)  # REM saccades are drawn per phasic epoch
_BLINK_RATE = _table(5.0, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0)
_SLOW_EYE_UV = _table(8.0, 55.0, 6.0, 0.0, 0.0, 3.0, 0.0)
_EMG_TONE_UV = _table(14.0, 8.0, 5.5, 5.0, 5.0, 1.6, 40.0)
_TWITCH_RATE = _table(0.0, 0.0, 0.1, 0.0, 0.0, 2.0, 0.0)
_MOVEMENT_RATE = _table(0.25, 0.02, 0.0, 0.0, 0.0, 0.0, 3.0)
_HEART_RATE_DELTA = _table(6.0, 2.0, -2.0, -5.0, -6.0, 3.0, 10.0)  # bpm around the subject's mean
_RESP_RATE_DELTA = _table(1.5, 0.5, -0.5, -1.0, -1.2, 1.5, 2.0)  # breaths/min
_APNEA_RATE_FACTOR = _table(0.0, 1.0, 1.0, 0.3, 0.2, 1.6, 0.0)
