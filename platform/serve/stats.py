"""AASM-style sleep statistics from a hypnogram (a sequence of 30-s epoch stages).

The definitions follow the AASM Manual for the Scoring of Sleep and Associated Events (v2.6,
"Parameters to be reported for polysomnography"); where the manual leaves a choice (unscored
epochs, what counts as an awakening), the choice is stated here and in ``docs/outputs.md``.

Stage codes are the platform's data contract: 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored.

Definitions (``L0``/``L1`` are the first/last epoch inside lights-off → lights-on; every epoch
counts ``epoch_s`` seconds):

* **TIB** (time in bed): every epoch from lights-off to lights-on, unscored included (clock time).
* **Unscored**: epochs with stage -1 inside TIB.  They are *excluded* from every stage-based
  quantity and reported on their own (``unscored_min``, ``n_unscored_epochs``), so
  ``tib_min = tst_min + wake_min + unscored_min``.
* **TST** (total sleep time): N1 + N2 + N3 + REM epochs inside TIB.
* **Sleep efficiency**: TST / (TIB - unscored) x 100.  With no unscored epoch this is the AASM
  TST/TIB; unscored time is left out of the denominator because nothing is known about it.
* **Sleep onset**: the first epoch of any sleep stage (AASM: the first epoch scored as any stage
  other than W).  **SOL** (sleep-onset latency) is the clock time from lights-off to it.
* **Latency to persistent sleep** (LPS, reported besides SOL, not instead of it): clock time from
  lights-off to the first run of ``persistent_sleep_epochs`` (default 20 = 10 min) consecutive
  scored sleep epochs, unscored epochs skipped over.
* **Sleep period** (SPT): from sleep onset to the last sleep epoch (the final awakening follows).
* **WASO**: wake epochs inside the sleep period.
* **REM latency**: clock time from sleep onset to the first REM epoch.
* **Awakenings**: runs of wake inside the sleep period lasting at least ``min_awakening_epochs``
  scored epochs (unscored epochs neither start, end nor break a run).
* **Stage shifts**: changes between consecutive scored stages inside TIB (unscored skipped).
* Stage percentages are of TST; W has minutes only.

Every latency and percentage is ``None`` when undefined (no sleep, REM never reached, ...).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from somnray.core.constants import EPOCH_SECONDS, STAGES
from somnray.core.errors import ConfigError

#: Stage codes of the data contract.
WAKE, N1, N2, N3, REM, UNSCORED = 0, 1, 2, 3, 4, -1
UNSCORED_NAME = "UNS"
SLEEP_STAGES = (N1, N2, N3, REM)



def stage_name(code: int) -> str:
    """Short name of a stage code (``W N1 N2 N3 REM``, ``UNS`` for -1)."""
    return STAGES[code] if 0 <= code < len(STAGES) else UNSCORED_NAME


@dataclass(frozen=True)
class SleepStats:
    """Sleep statistics of one night (see the module docstring for each definition).

    Durations are minutes, percentages are 0-100, counts are integers.  ``None`` marks a value
    that is undefined for this night (e.g. latencies when there is no sleep).
    """

    n_tib_epochs: int
    n_scored_epochs: int
    n_unscored_epochs: int
    epoch_s: float
    tib_min: float
    unscored_min: float
    tst_min: float
    spt_min: float | None
    sleep_efficiency_pct: float | None
    sol_min: float | None
    lps_min: float | None
    waso_min: float | None
    rem_latency_min: float | None
    n_awakenings: int
    n_stage_shifts: int
    wake_min: float
    n1_min: float
    n2_min: float
    n3_min: float
    rem_min: float
    n1_pct: float | None
    n2_pct: float | None
    n3_pct: float | None
    rem_pct: float | None
    sleep_onset_epoch: int | None
    final_awakening_epoch: int | None

    def to_dict(self) -> dict[str, Any]:
        """The statistics as a JSON-ready dict (plain Python numbers, units in the keys)."""
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SleepStats":
        """Inverse of :meth:`to_dict` (unknown keys are ignored, so newer files still load)."""
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ConfigError("sleep statistics", [f"missing key(s) {missing}"])
        return cls(**{k: data[k] for k in names})


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    return value


def compute_sleep_stats(
    stages: np.ndarray | list[int],
    *,
    epoch_s: float = EPOCH_SECONDS,
    lights_off_s: float | None = None,
    lights_on_s: float | None = None,
    min_awakening_epochs: int = 1,
    persistent_sleep_epochs: int = 20,
) -> SleepStats:
    """Sleep statistics of a contiguous hypnogram.

    Parameters
    ----------
    stages : array-like of int
        ``(n_epochs,)`` stage codes of consecutive epochs from the recording start (0 W, 1 N1,
        2 N2, 3 N3, 4 REM, -1 unscored).  Epoch ``i`` starts at ``i * epoch_s`` seconds.
    epoch_s : float
        Epoch length in seconds.
    lights_off_s, lights_on_s : float, optional
        Lights-off and lights-on in seconds from the recording start; default: the recording
        start and end.  Epochs starting before lights-off or ending after lights-on are left out.
    min_awakening_epochs : int
        Shortest wake run inside the sleep period that counts as an awakening (1 = any wake epoch;
        2 = the "at least one minute" convention of some laboratories).
    persistent_sleep_epochs : int
        Length of the uninterrupted sleep run that defines latency to persistent sleep.

    Returns
    -------
    SleepStats

    Raises
    ------
    ConfigError
        Stage codes outside -1..4, a non-positive epoch length, or lights-on before lights-off.
    """
    arr = np.asarray(stages)
    errors: list[str] = []
    if arr.ndim != 1:
        errors.append(f"stages must be a 1-D sequence, got shape {arr.shape}")
    elif arr.size and not np.issubdtype(arr.dtype, np.integer):
        errors.append(f"stages must be integer codes, got dtype {arr.dtype}")
    elif arr.size and (arr.min() < UNSCORED or arr.max() > REM):
        bad = sorted(set(int(v) for v in arr[(arr < UNSCORED) | (arr > REM)]))[:5]
        errors.append(f"stage codes must be in -1..4 (0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 unscored); "
                      f"found {bad}")
    if not (epoch_s > 0 and math.isfinite(epoch_s)):
        errors.append(f"epoch_s must be a positive number of seconds, got {epoch_s!r}")
    if min_awakening_epochs < 1:
        errors.append(f"min_awakening_epochs must be >= 1, got {min_awakening_epochs}")
    if persistent_sleep_epochs < 1:
        errors.append(f"persistent_sleep_epochs must be >= 1, got {persistent_sleep_epochs}")
    if errors:
        raise ConfigError("sleep statistics", errors)
    arr = arr.astype(np.int64, copy=False)

    # Lights-off/on select whole epochs; a tolerance keeps float seconds on boundaries inclusive.
    onsets = np.arange(arr.size) * float(epoch_s)
    off = 0.0 if lights_off_s is None else float(lights_off_s)
    on = arr.size * float(epoch_s) if lights_on_s is None else float(lights_on_s)
    if on < off:
        raise ConfigError("sleep statistics",
                          [f"lights_on_s ({on}) is before lights_off_s ({off})"])
    inside = (onsets >= off - 1e-6) & (onsets + epoch_s <= on + 1e-6)
    first = int(np.argmax(inside)) if inside.any() else 0
    tib = arr[inside]

    to_min = float(epoch_s) / 60.0
    n = int(tib.size)
    scored_mask = tib != UNSCORED
    sleep_mask = np.isin(tib, SLEEP_STAGES)
    n_unscored = int((~scored_mask).sum())
    n_sleep = int(sleep_mask.sum())
    counts = {code: int((tib == code).sum()) for code in (WAKE, N1, N2, N3, REM)}
    tst = n_sleep * to_min
    scored_time = (n - n_unscored) * to_min

    def pct(code: int) -> float | None:
        return 100.0 * counts[code] / n_sleep if n_sleep else None

    onset = final = None
    sol = lps = waso = rem_lat = spt = None
    n_awake = 0
    if n_sleep:
        sleep_idx = np.flatnonzero(sleep_mask)
        onset, final = int(sleep_idx[0]), int(sleep_idx[-1])
        sol = onset * to_min
        spt = (final - onset + 1) * to_min
        period = tib[onset:final + 1]
        waso = int((period == WAKE).sum()) * to_min
        rem_idx = np.flatnonzero(tib == REM)
        rem_lat = (int(rem_idx[0]) - onset) * to_min if rem_idx.size else None
        # Unscored epochs are taken out before finding runs: W ? W is one awakening, and
        # N2 ? N2 is no awakening at all.
        scored_period = period[period != UNSCORED]
        n_awake = sum(1 for code, length in _runs(scored_period)
                      if code == WAKE and length >= min_awakening_epochs)
        lps = _persistent_sleep_latency(tib, persistent_sleep_epochs, to_min)

    scored_seq = tib[scored_mask]
    shifts = int(np.count_nonzero(np.diff(scored_seq))) if scored_seq.size > 1 else 0

    return SleepStats(
        n_tib_epochs=n,
        n_scored_epochs=n - n_unscored,
        n_unscored_epochs=n_unscored,
        epoch_s=float(epoch_s),
        tib_min=n * to_min,
        unscored_min=n_unscored * to_min,
        tst_min=tst,
        spt_min=spt,
        sleep_efficiency_pct=100.0 * tst / scored_time if scored_time > 0 else None,
        sol_min=sol,
        lps_min=lps,
        waso_min=waso,
        rem_latency_min=rem_lat,
        n_awakenings=n_awake,
        n_stage_shifts=shifts,
        wake_min=counts[WAKE] * to_min,
        n1_min=counts[N1] * to_min,
        n2_min=counts[N2] * to_min,
        n3_min=counts[N3] * to_min,
        rem_min=counts[REM] * to_min,
        n1_pct=pct(N1),
        n2_pct=pct(N2),
        n3_pct=pct(N3),
        rem_pct=pct(REM),
        # Reported as positions in the input sequence, not relative to lights-off.
        sleep_onset_epoch=None if onset is None else first + onset,
        final_awakening_epoch=None if final is None else first + final,
    )


def _runs(seq: np.ndarray) -> list[tuple[int, int]]:
    """``(value, length)`` of each maximal run of equal values."""
    if seq.size == 0:
        return []
    change = np.flatnonzero(np.diff(seq)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [seq.size]))
    return [(int(seq[s]), int(e - s)) for s, e in zip(starts, ends)]


def _persistent_sleep_latency(tib: np.ndarray, run: int, to_min: float) -> float | None:
    """Clock minutes from lights-off to the first ``run`` consecutive scored sleep epochs."""
    positions = np.flatnonzero(tib != UNSCORED)
    is_sleep = np.isin(tib[positions], SLEEP_STAGES)
    streak = 0
    for k, asleep in enumerate(is_sleep):
        streak = streak + 1 if asleep else 0
        if streak == run:
            return int(positions[k - run + 1]) * to_min
    return None


def timeline(epoch_index: np.ndarray, stages: np.ndarray) -> np.ndarray:
    """Stages laid out on the recording's contiguous epoch grid, from epoch 0.

    Epochs that are missing from ``epoch_index`` (trimmed or never scored) become -1, so
    statistics count them as unscored time rather than silently closing the gap.
    """
    idx = np.asarray(epoch_index, dtype=np.int64)
    st = np.asarray(stages)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int8)
    out = np.full(int(idx.max()) + 1, UNSCORED, dtype=np.int8)
    out[idx] = st
    return out
