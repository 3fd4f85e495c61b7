"""``somnray bench prepare``: cohort preparation throughput against a plain MNE script.

The baseline is what a lab would write without somnray: a loop over the EDF files that, per night,
reads the file with MNE, picks the channels, resamples them to 100 Hz, band-pass filters them and
cuts 30-s epochs (``baseline_mne``).  somnray prepares the same nights with its Ray Data pipeline
(which also reads the hypnogram, checks alignment, trims, normalises, and writes Parquet) with one
and with two concurrent workers.  All three run in this process tree on the same files; the result
is nights per minute.  Targets (issue 2): one worker no slower than the baseline, two workers at
least 1.7× the baseline on a 2-core machine.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .benchreport import BenchResult, stopwatch

#: Channels, filters and the derivation the baseline applies per profile (the same the profiles do).
_BASELINE = {
    "shhs": {"pick": ["EEG", "EOG(L)", "EOG(R)", "EMG"],
             "bands": {"EEG": (0.3, 40.0), "EOG(L)": (0.3, 23.0), "EOG(R)": (0.3, 23.0), "EMG": (10.0, 49.0)}},
    "sleep-edf": {"pick": ["EEG Fpz-Cz", "EOG horizontal"], "bands": {}},
}


def baseline_mne(psg_paths: list[str], profile: str) -> int:
    """Read, pick, resample, filter and epoch each file with MNE; return the number of epochs."""
    import mne

    spec = _BASELINE[profile]
    total = 0
    for path in psg_paths:
        raw = mne.io.read_raw_edf(path, include=spec["pick"], preload=True, verbose="error")
        raw.resample(100.0, verbose="error")
        for ch, (lo, hi) in spec["bands"].items():
            raw.filter(lo, hi, picks=[ch], fir_design="firwin", verbose="error")
        epochs = mne.make_fixed_length_epochs(raw, duration=30.0, preload=True, verbose="error")
        total += len(epochs.get_data())
    return total


def run(nights: int = 8, hours: float = 8.0, profile: str = "shhs", seed: int = 0) -> BenchResult:
    """Synthesise ``nights`` nights and time the baseline and somnray with 1 and 2 workers."""
    import ray

    from somnray.core.session import ensure_ray
    from somnray.data import prepare_cohort
    from somnray.data.profiles import load_profile
    from somnray.data.synth import synthesize_cohort

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = Path(tempfile.mkdtemp(prefix="somnray-bench-prepare-"))
    cohort = work / "cohort"
    entries = synthesize_cohort(profile, cohort, n_nights=nights, seed=seed, hours=hours)
    psgs = [e.psg if os.path.isabs(e.psg) else str(cohort / e.psg) for e in entries]
    prof = load_profile(profile)

    rows = []
    with stopwatch() as t:
        n_epochs = baseline_mne(psgs, profile)
    base_rate = nights / (t["s"] / 60)
    rows.append({"configuration": "plain MNE script (1 process)", "wall s": t["s"],
                 "nights/min": base_rate, "× baseline": 1.0, "epochs": n_epochs})

    started_here = not ray.is_initialized()
    if started_here:
        ensure_ray(2, include_dashboard=False, temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
                   log_to_driver=False)
    try:
        for workers in (1, 2):
            out = work / f"store-{workers}"
            with stopwatch() as t:
                result = prepare_cohort(str(cohort / "manifest.csv"), prof, f"file://{out}",
                                        num_workers=workers, progress=False)
            rate = nights / (t["s"] / 60)
            rows.append({"configuration": f"somnray prepare, {workers} worker{'s' * (workers > 1)}",
                         "wall s": t["s"], "nights/min": rate, "× baseline": rate / base_rate,
                         "epochs": result.n_epochs if hasattr(result, "n_epochs") else ""})
    finally:
        if started_here:
            ray.shutdown()
    one, two = rows[1]["× baseline"], rows[2]["× baseline"]
    notes = [f"{nights} synthetic {profile} nights of {hours:g} h (real EDF files written by `somnray synth`).",
             "Baseline: mne.io.read_raw_edf → pick → resample to 100 Hz → FIR band-pass → 30-s epochs.",
             "somnray also reads the hypnogram, checks alignment, trims wake, flags unusable epochs, "
             "normalises and writes one Parquet file per night; Ray start-up is excluded.",
             f"Target 1 worker ≥ 1.0× baseline: {'met' if one >= 1.0 else 'NOT met'} ({one:.2f}×); "
             f"2 workers ≥ 1.7×: {'met' if two >= 1.7 else 'NOT met'} ({two:.2f}×)."]
    return BenchResult("prepare", "Prepare: cohort throughput (nights per minute)", rows, notes)
