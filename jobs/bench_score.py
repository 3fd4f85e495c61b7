"""``somnray bench score``: scoring speed and memory against YASA's automatic staging.

Four measurements in one run, on synthetic Sleep-EDF-like nights (EEG Fpz-Cz + EOG horizontal
at 100 Hz, real EDF files written by :mod:`somnray.data.synth`):

1. **One night, end to end** — reading the EDF, preparing it (pick, filter, epochs, availability,
   normalisation) and scoring it with the full-size ``coresleep`` (the paper's model, random
   weights: speed does not depend on them) on ``threads`` CPU cores, in the automatic precision
   (bf16 on AMX CPUs) and in fp32.  Target (issue): ≤ 5 s for a ≈ 1,000-epoch night on 2 cores.
2. **YASA** ``SleepStaging`` (LightGBM on hand-made features, Vallat & Walker 2021) on the same
   file: MNE read + features + prediction.  Installed with the ``bench`` extra; its classifiers
   ship inside the package, so nothing is downloaded.
3. **Cohort throughput** — :func:`somnray.serve.cohort.score_cohort` on a local Ray instance with 1
   and 2 scoring actors (nights per minute, Ray start-up excluded, actor start-up included).
4. **Peak memory** — the resident set size of a fresh process that loads the model and scores a
   24-hour recording (``ru_maxrss``).  Target: ≤ 2 GB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .benchreport import BenchResult, stopwatch

#: Epochs of the "full night" of the single-night case (≈ 8.3 h, the issue's 1,000 epochs).
NIGHT_EPOCHS = 1000
#: CoRe-Sleep's sequence length (docs/models.md §2.1: L = 21).
CORESLEEP_LENGTH = 21
TARGET_NIGHT_S = 5.0
TARGET_RSS_GB = 2.0


def _make_bundle(folder: Path, model: str = "coresleep") -> Path:
    import torch

    from somnray.models import create_model
    from somnray.models.bundle import save_bundle

    torch.manual_seed(0)
    save_bundle(create_model(model), folder, name=model, sequence_length=CORESLEEP_LENGTH,
                extra={"profile": "sleep-edf", "note": "random weights for benchmarking"})
    return folder


def _night(folder: Path, hours: float, n_nights: int = 1, seed: int = 0) -> list[str]:
    from somnray.data.synth import synthesize_cohort

    entries = synthesize_cohort("sleep-edf", folder, n_nights=n_nights, seed=seed, hours=hours)
    return [str(folder / e.psg) for e in entries]


def time_somnray(bundle: Path, psg: str, *, threads: int, precision: str, repeats: int
                 ) -> dict[str, float]:
    """Cold (first) and best warm wall time of ``score_recording`` on ``psg``, plus its split."""
    import torch

    from somnray.scoring.scorer import Scorer
    from somnray.serve.inference import prepare_for_scoring, score_prepared, score_recording, scoring_profile

    torch.set_num_threads(threads)
    with stopwatch() as load:
        model = Scorer.load(str(bundle), device="cpu", precision=precision)
    with stopwatch() as cold:
        night = score_recording(model, psg, recording_id="bench")
    warm, prep, infer = [], [], []
    profile = scoring_profile(model)
    for _ in range(repeats):
        t0 = time.perf_counter()
        rec = prepare_for_scoring(model, psg, recording_id="bench", profile=profile)
        t1 = time.perf_counter()
        score_prepared(model, rec)
        t2 = time.perf_counter()
        warm.append(t2 - t0)
        prep.append(t1 - t0)
        infer.append(t2 - t1)
    best = min(range(repeats), key=lambda i: warm[i])
    return {"load_s": load["s"], "cold_s": cold["s"], "warm_s": warm[best],
            "prepare_s": prep[best], "model_s": infer[best], "epochs": night.n_epochs,
            "precision": model.precision}


def time_yasa(psg: str, *, threads: int) -> dict[str, float] | str:
    """Wall time of YASA's SleepStaging on ``psg`` (MNE read included), or why it could not run."""
    try:
        import mne
        import yasa
    except ImportError as exc:
        return f"YASA not installed ({exc}); pip install 'somnray[bench]'"
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    with stopwatch() as t:
        raw = mne.io.read_raw_edf(psg, include=["EEG Fpz-Cz", "EOG horizontal"], preload=True,
                                  verbose="error")
        staging = yasa.SleepStaging(raw, eeg_name="EEG Fpz-Cz", eog_name="EOG horizontal")
        stages = staging.predict()
    return {"warm_s": t["s"], "epochs": len(stages), "version": yasa.__version__}


def time_cohort(bundle: Path, cohort: Path, out: Path, workers: int, n_nights: int) -> dict[str, float]:
    """Nights per minute of ``score_cohort`` with ``workers`` actors."""
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    with stopwatch() as t:
        result = score_cohort(str(bundle), str(cohort / "manifest.csv"), str(out),
                              CohortScoringOptions(workers=workers, progress=False))
    if result.scored != n_nights:
        raise RuntimeError(f"cohort benchmark scored {result.scored} of {n_nights} nights: "
                           f"{result.rejects}")
    return {"wall_s": t["s"], "nights_per_min": 60.0 * n_nights / t["s"]}


_RSS_CHILD = """
import json, resource, sys, torch
from somnray.scoring.scorer import Scorer
from somnray.serve.inference import score_recording

def peak_bytes():
    # VmHWM is this process's own high-water mark.  ru_maxrss is not: Linux carries it over
    # execve, so a child of a large parent would report the parent's size.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

torch.set_num_threads(int(sys.argv[3]))
model = Scorer.load(sys.argv[1], device="cpu")
base = peak_bytes()
night = score_recording(model, sys.argv[2], recording_id="rss")
print(json.dumps({"base": base, "peak": peak_bytes(), "epochs": night.n_epochs}))
"""


def peak_rss(bundle: Path, psg: str, *, threads: int) -> dict[str, float]:
    """Peak RSS (GB) of a fresh process scoring ``psg``, and its peak once the model is loaded."""
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(bundle), psg, str(threads)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_gb": doc["peak"] / 1e9, "model_loaded_gb": doc["base"] / 1e9,
            "epochs": doc["epochs"]}


def run(quick: bool = False, threads: int = 2, repeats: int | None = None,
        cohort_nights: int | None = None, rss_hours: float | None = None) -> BenchResult:
    """Run every measurement (module docstring) and return the results table.

    Parameters
    ----------
    quick : bool
        Smoke-run sizes: a 2-hour night, 2 one-hour cohort nights, a 4-hour memory probe.
    threads : int
        CPU threads of the single-night and memory cases (the issue's 2 cores).
    repeats : int, optional
        Warm repetitions of the single-night case (best is reported).
    cohort_nights : int, optional
        Nights of the throughput case.
    rss_hours : float, optional
        Length of the memory-probe recording (24 h by default).
    """
    import ray

    from somnray.core.session import ensure_ray

    repeats = repeats or (1 if quick else 3)
    night_hours = 2.0 if quick else NIGHT_EPOCHS * 30 / 3600
    cohort_nights = cohort_nights or (2 if quick else 4)
    cohort_hours = 1.0 if quick else night_hours
    rss_hours = rss_hours or (4.0 if quick else 24.0)

    work = Path(tempfile.mkdtemp(prefix="somnray-bench-score-"))
    bundle = _make_bundle(work / "bundle")
    [psg] = _night(work / "night", night_hours)
    rows: list[dict[str, object]] = []

    somn = {p: time_somnray(bundle, psg, threads=threads, precision=p, repeats=repeats)
            for p in ("auto", "fp32")}
    for r in somn.values():
        rows.append({"case": f"somnray coresleep, one night ({r['precision']})",
                     "epochs": r["epochs"], "seconds": r["warm_s"],
                     "detail": f"prepare {r['prepare_s']:.2f} s + model {r['model_s']:.2f} s; "
                               f"first call {r['cold_s']:.2f} s; load {r['load_s']:.2f} s"})
    yasa_res = time_yasa(psg, threads=threads)
    if isinstance(yasa_res, str):
        rows.append({"case": "YASA SleepStaging, one night", "epochs": "", "seconds": None,
                     "detail": yasa_res})
    else:
        rows.append({"case": f"YASA {yasa_res['version']} SleepStaging, one night",
                     "epochs": yasa_res["epochs"], "seconds": yasa_res["warm_s"],
                     "detail": "MNE read + features + LightGBM (EEG + EOG)"})

    cohort = work / "cohort"
    _night(cohort, cohort_hours, n_nights=cohort_nights, seed=1)
    started_here = not ray.is_initialized()
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Unix socket paths are limited
    if started_here:
        ensure_ray(threads, include_dashboard=False, temp_dir=ray_tmp, log_to_driver=False)
    try:
        for workers in (1, 2):
            r = time_cohort(bundle, cohort, work / f"scored-{workers}", workers, cohort_nights)
            rows.append({"case": f"somnray score cohort, {workers} actor{'s' * (workers > 1)}",
                         "epochs": int(cohort_hours * 120) * cohort_nights, "seconds": r["wall_s"],
                         "detail": f"{r['nights_per_min']:.2f} nights/min"})
    finally:
        if started_here:
            ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    [long_psg] = _night(work / "long", rss_hours, seed=2)
    mem = peak_rss(bundle, long_psg, threads=threads)
    rows.append({"case": f"peak RSS, {rss_hours:g}-h recording", "epochs": mem["epochs"],
                 "seconds": None,
                 "detail": f"{mem['peak_gb']:.2f} GB peak ({mem['model_loaded_gb']:.2f} GB after "
                           "imports + model load)"})

    auto = somn["auto"]
    per_1000 = auto["warm_s"] * NIGHT_EPOCHS / auto["epochs"]
    notes = [
        f"Synthetic Sleep-EDF-like nights (EEG Fpz-Cz + EOG horizontal, 100 Hz); full-size "
        f"`coresleep` (random weights), window L = {CORESLEEP_LENGTH}, stride L, {threads} torch "
        f"threads; best of {repeats} warm run(s), preprocessing included.",
        f"Target ≤ {TARGET_NIGHT_S:g} s per 1,000-epoch night on 2 cores: "
        f"{'met' if per_1000 <= TARGET_NIGHT_S else 'NOT met'} ({per_1000:.2f} s, "
        f"{auto['precision']}).",
        "Cohort throughput: local Ray with "
        f"{threads} CPUs, {cohort_nights} nights of {cohort_hours:.2g} h; actors load the model "
        "once; reading/preparing runs as separate 1-CPU tasks.",
        f"Target peak RSS ≤ {TARGET_RSS_GB:g} GB for a 24-h recording: "
        + (f"{'met' if mem['peak_gb'] <= TARGET_RSS_GB else 'NOT met'} ({mem['peak_gb']:.2f} GB)."
           if rss_hours >= 24 else f"not measured in --quick mode ({rss_hours:g}-h probe)."),
    ]
    if quick:
        notes.append("--quick: smaller sizes, for a smoke run; not the reference numbers.")
    shutil.rmtree(work, ignore_errors=True)  # synthetic EDFs: a 24-h night is ~100 MB
    return BenchResult("score", "Score: one night vs YASA, cohort throughput, memory", rows, notes)
