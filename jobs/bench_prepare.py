"""``somnray bench prepare``: cohort preparation throughput against a plain MNE script.

The baseline is what a lab would write without somnray: a loop over the EDF files that, per night,
reads the file with MNE, picks the channels, resamples them to 100 Hz, band-pass filters them and
cuts 30-s epochs (``baseline_mne``).  somnray prepares the same nights with its Ray Data pipeline
(which also reads the hypnogram, checks alignment, trims, normalises, and writes Parquet) with one
and with two concurrent workers.  All three run in this process tree on the same files; the result
is nights per minute.  Every configuration is timed warm, in rounds of random order (see
:func:`run`).
"""

from __future__ import annotations

import os
import random
import statistics
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


def run(nights: int = 8, hours: float = 8.0, profile: str = "shhs", seed: int = 0, rounds: int = 3
        ) -> BenchResult:
    """Synthesise ``nights`` nights and time the baseline and somnray with 1 and 2 workers.

    Every configuration is warm before it is timed: the baseline's imports and first-call costs
    are paid by an untimed pass over one night, and Ray's worker processes are started by an
    untimed two-worker prepare of two nights, so neither worker count pays Ray's start-up.  The
    three configurations then run ``rounds`` times, each round in a new random order, and the
    median wall time of each is reported.
    """
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
    warm_cohort = work / "warm"
    synthesize_cohort(profile, warm_cohort, n_nights=2, seed=seed + 1, hours=min(hours, 1.0))

    started_here = not ray.is_initialized()
    if started_here:
        ensure_ray(2, include_dashboard=False, temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
                   log_to_driver=False)

    def somnray(workers: int, run_no: int) -> None:
        # a new store each run: a rerun into the same one would skip every prepared night
        result = prepare_cohort(str(cohort / "manifest.csv"), prof, f"file://{work / f'store-{workers}-{run_no}'}",
                                num_workers=workers, progress=False)
        if result.prepared != nights:
            raise RuntimeError(f"prepare benchmark prepared {result.prepared} of {nights} nights: {result.rejects}")

    times: dict[str, list[float]] = {"baseline": [], "somnray-1": [], "somnray-2": []}
    order = random.Random(seed)
    try:
        baseline_mne(psgs[:1], profile)  # warm-up: imports and first-call costs, untimed
        prepare_cohort(str(warm_cohort / "manifest.csv"), prof, f"file://{work / 'store-warm'}",
                       num_workers=2, progress=False)  # warm-up: Ray workers started, untimed
        for run_no in range(rounds):
            for name in order.sample(list(times), len(times)):
                with stopwatch() as t:
                    baseline_mne(psgs, profile) if name == "baseline" else somnray(int(name[-1]), run_no)
                times[name].append(t["s"])
    finally:
        if started_here:
            ray.shutdown()
    base_s = statistics.median(times["baseline"])
    rows = []
    for name, label in (("baseline", "plain MNE script (1 process)"), ("somnray-1", "somnray prepare, 1 worker"),
                        ("somnray-2", "somnray prepare, 2 workers")):
        med = statistics.median(times[name])
        rows.append({"configuration": label, "median wall s": med, "nights/min": nights / (med / 60),
                     "× baseline": base_s / med,
                     "runs": ", ".join(f"{x:.1f}" for x in times[name])})
    one, two = rows[1]["× baseline"], rows[2]["× baseline"]
    notes = [f"{nights} synthetic {profile} nights of {hours:g} h (real EDF files written by `somnray synth`); "
             f"{rounds} round(s), each in a new random order (seed {seed}); every configuration warm "
             "(untimed baseline pass and untimed 2-worker prepare first), median reported.",
             "Baseline: mne.io.read_raw_edf → pick → resample to 100 Hz → FIR band-pass → 30-s epochs.",
             "somnray also reads the hypnogram, checks alignment, trims wake, flags unusable epochs, "
             "normalises and writes one Parquet file per night; Ray start-up is excluded.",
             f"1 worker {one:.2f}× the baseline, 2 workers {two:.2f}×."]
    return BenchResult("prepare", "Prepare: cohort throughput (nights per minute)", rows, notes)
