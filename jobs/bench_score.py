"""``somnray bench score``: scoring speed and memory against YASA's automatic staging.

Every comparison is like for like, so a skeptic can rerun it:

* **Warm against warm.**  Each contestant runs in a fresh process of its own
  (:mod:`somnray.jobs.bench_contestants`) that makes one untimed call first (YASA's numba JIT,
  torch's first-call kernel choice) and then times the whole path — EDF read included on both
  sides — several times; the table reports the median and the spread of every timed call.
* **Same threads, set before any import.**  ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` are in each contestant's environment when its
  interpreter starts (and torch gets ``set_num_threads``): numpy, torch, numba and LightGBM all run
  on the same cores.
* **Order randomised.**  Contestants run in rounds, each round in a freshly shuffled order (the seed
  is in the notes), so slow drift of the machine's load does not favour whoever runs first.
* **The machine recorded**: CPU model and the flags that decide the arithmetic (AVX2, AVX-512,
  AVX512-BF16, VNNI, AMX), threads, the precision each somnray run used and the library versions.

The nights are synthetic (real EDF files written by :mod:`somnray.data.synth`), scored by the
full-size ``coresleep`` (the paper's model, random weights: speed does not depend on them):

1. a Sleep-EDF-like night (EEG Fpz-Cz + EOG horizontal at 100 Hz): somnray in fp32, bf16 and
   ``auto``, and through ``somnray serve`` (``POST /v1/score`` of the EDF, its model replica on the
   same threads; started before the race and warmed like the others), against YASA
   ``SleepStaging`` on EEG + EOG;
2. an SHHS-like night (EEG C4-A1 and EMG at 125 Hz, EOG at 50 Hz): somnray ``auto`` (EEG + EOG)
   against YASA on EEG + EOG and on EEG + EOG + EMG;
3. **cohort throughput** — :func:`somnray.serve.cohort.score_cohort` with the CLI's defaults on
   4, 32 and 128 one-hour nights, each on a fresh local Ray instance (nights per minute, Ray
   start-up excluded, actor start-up included), against the one-thread single-night rate × CPUs,
   with the peak memory of the driver and of all the run's processes;
4. **peak memory** — the resident set size of a fresh process that loads the model and scores a
   24-hour recording.  Target: ≤ 2 GB.

bf16 rows carry their stage agreement with fp32 on the same night.  With random weights the
logits are nearly uniform, so a flip is far likelier than with trained weights: this agreement is a
pessimistic bound; the tests check ≥ 99 % on every trained architecture.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from .bench_service import served
from .benchreport import BenchResult, peak_memory, stopwatch

#: Epochs of the "full night" of the single-night cases (≈ 8.3 h).
NIGHT_EPOCHS = 1000
#: CoRe-Sleep's sequence length (docs/models.md §2.1: L = 21).
CORESLEEP_LENGTH = 21
TARGET_RSS_GB = 2.0
#: Thread-count variables every contestant gets before its interpreter starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
#: The signal labels YASA is given on each synthetic night.
YASA_CHANNELS = {
    "sleep-edf": {"eeg": "EEG Fpz-Cz", "eog": "EOG horizontal"},
    "shhs": {"eeg": "EEG", "eog": "EOG(L)", "emg": "EMG"},
}


def _make_bundle(folder: Path, profile: str, model: str = "coresleep") -> Path:
    import torch

    from somnray.models import create_model
    from somnray.models.bundle import save_bundle

    torch.manual_seed(0)
    save_bundle(create_model(model), folder, name=model, sequence_length=CORESLEEP_LENGTH,
                extra={"profile": profile, "note": "random weights for benchmarking"})
    return folder


def _night(folder: Path, hours: float, n_nights: int = 1, seed: int = 0, profile: str = "sleep-edf") -> list[str]:
    from somnray.data.synth import synthesize_cohort

    entries = synthesize_cohort(profile, folder, n_nights=n_nights, seed=seed, hours=hours)
    return [str(folder / e.psg) for e in entries]


def contestant_env(threads: int) -> dict[str, str]:
    """The environment a contestant process starts with: this one's, threads pinned."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def run_contestant(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one contestant (:mod:`.bench_contestants`) in a fresh process; its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "somnray.jobs.bench_contestants", json.dumps(spec)],
                          env=contestant_env(int(spec["threads"])), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark contestant {spec['name']!r} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def race(contestants: list[dict[str, Any]], *, rounds: int, seed: int) -> dict[str, dict[str, Any]]:
    """Every contestant once per round, each round in a new random order; all timed calls pooled.

    Returns
    -------
    dict
        Contestant name → its last result with ``times`` holding every timed call of every round.
    """
    order = random.Random(seed)
    pooled: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for spec in order.sample(contestants, len(contestants)):
            result = run_contestant(spec)
            times = pooled.get(spec["name"], {}).get("times", []) + result["times"]
            pooled[spec["name"]] = {**result, "times": times}
    return pooled


def _row(name: str, result: dict[str, Any], per: int = NIGHT_EPOCHS) -> dict[str, Any]:
    times = result["times"]
    median = statistics.median(times)
    detail = [f"{len(times)} timed calls, {min(times):.2f}–{max(times):.2f} s"]
    if "agreement" in result:
        detail.append(f"stage agreement with fp32 {result['agreement']:.1%} (random weights)")
    return {"case": name, "epochs": result["epochs"], "median s": median,
            f"s per {per:,} epochs": median * per / result["epochs"], "detail": "; ".join(detail)}


def single_nights(work: Path, *, threads: int, rounds: int, repeats: int, hours: float, seed: int
                  ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The two like-for-like single-night races (module docstring, cases 1 and 2)."""
    rows: list[dict[str, Any]] = []
    facts: dict[str, str] = {}
    for profile in ("sleep-edf", "shhs"):
        bundle = _make_bundle(work / f"bundle-{profile}", profile)
        [psg] = _night(work / f"night-{profile}", hours, profile=profile)
        base = {"psg": psg, "threads": threads, "repeats": repeats}
        precisions = ("fp32", "bf16", "auto") if profile == "sleep-edf" else ("auto",)
        contestants = [{**base, "kind": "somnray", "name": f"somnray coresleep {p} (EEG+EOG)",
                        "bundle": str(bundle), "precision": p} for p in precisions]
        yasa = YASA_CHANNELS[profile]
        for n in range(2, len(yasa) + 1):
            channels = dict(list(yasa.items())[:n])
            label = "+".join(m.upper() for m in channels)
            contestants.append({**base, "kind": "yasa", "name": f"YASA SleepStaging ({label})",
                                "channels": channels})
        if importlib.util.find_spec("yasa") is None:
            contestants = [c for c in contestants if c["kind"] != "yasa"]
            facts["yasa"] = "not installed (pip install 'somnray[bench]')"
        with contextlib.ExitStack() as stack:
            if profile == "sleep-edf":
                # The service path, warm: one model replica with the same threads, started before
                # the race (start-up not timed) and idle while the others run.
                service = stack.enter_context(served(bundle, ["--model-threads", str(threads)],
                                                     env=contestant_env(threads)))
                contestants.append({**base, "kind": "serve", "url": service.url, "precision": "auto",
                                    "name": "somnray serve POST /v1/score, auto (EEG+EOG)"})
            results = race(contestants, rounds=rounds, seed=seed)
        for spec in contestants:
            r = results[spec["name"]]
            name = spec["name"]
            if spec.get("precision") == "auto":
                name = name.replace(" auto ", f" auto→{r['precision']} ")
            rows.append({"night": profile, **_row(name, r)})
            facts.update({k: str(v) for k, v in r.items() if k in ("torch", "yasa", "lightgbm")})
    return rows, facts


def time_cohort(bundle: Path, manifest: Path, out: Path, n_nights: int,
                workers: int | None = None) -> dict[str, float]:
    """Wall time, nights per minute and peak memory of ``score_cohort`` over ``manifest``.

    ``workers`` None lets the run size its actors and threads from the cluster, as the CLI does.
    Memory is the peak RSS of this process (the run's driver) and of everything it started (the
    local Ray instance's daemons, actors and tasks), sampled twice a second.
    """
    from somnray.serve.cohort import score_cohort
    from somnray.serve.config import CohortScoringOptions

    with peak_memory() as mem, stopwatch() as t:
        result = score_cohort(str(bundle), str(manifest), str(out),
                              CohortScoringOptions(workers=workers, progress=False))
    if result.scored != n_nights:
        raise RuntimeError(f"cohort benchmark scored {result.scored} of {n_nights} nights: "
                           f"{result.rejects}")
    return {"wall_s": t["s"], "nights_per_min": 60.0 * n_nights / t["s"],
            "driver_gb": mem["root_mib"] * 2**20 / 1e9, "total_gb": mem["total_mib"] * 2**20 / 1e9}


def sub_manifest(manifest: Path, n: int) -> Path:
    """A manifest of the first ``n`` nights of ``manifest``, beside it (its relative paths hold)."""
    lines = manifest.read_text().splitlines()
    if n > len(lines) - 1:
        raise ValueError(f"{manifest.name} lists {len(lines) - 1} nights, fewer than {n}")
    out = manifest.with_name(f"manifest-{n}.csv")
    out.write_text("\n".join(lines[: n + 1]) + "\n")
    return out


def cohort_scaling(work: Path, bundle: Path, *, threads: int, sizes: Sequence[int], hours: float = 1.0,
                   repeats: int = 3) -> tuple[list[dict[str, Any]], list[str]]:
    """Cohort throughput against the one-thread single-night rate × CPUs (target ≥ 80 %).

    The reference is what scoring nights one by one on every CPU would give: one night scored
    warm in one process with one thread (EDF read included; the median of ``repeats`` timed calls
    after an untimed one), times the CPUs.  Each cohort then runs on a fresh local Ray instance of
    ``threads`` CPUs with the CLI's defaults (actors and threads sized by the run), Ray start-up
    excluded, actor start-up and model load included.  The extra nights of each size over the
    next smaller one, divided by the extra time, give the rate once started (the fixed start-up
    cancels), which is what the target is about.

    Returns
    -------
    rows, notes
        A row for the reference and one per cohort size; notes with the rate between sizes and
        its cost (CPU-seconds per 1,000 epochs) that the cluster projection in docs/cluster.md uses.
    """
    import ray

    from somnray.core.session import ensure_ray

    cohort = work / "cohort"
    psgs = _night(cohort, hours, n_nights=max(sizes), seed=1)
    one = run_contestant({"name": "one thread", "kind": "somnray", "psg": psgs[0], "threads": 1,
                          "repeats": repeats, "bundle": str(bundle), "precision": "auto"})
    single_s = statistics.median(one["times"])
    reference = 60.0 / single_s * threads  # nights per minute were every CPU scoring at that rate
    per_night = int(one["epochs"])
    rows = [{"night": f"1 × {hours:.2g} h", "case": f"reference: one night, 1 thread ({one['precision']})",
             "epochs": per_night, "median s": single_s,
             f"s per {NIGHT_EPOCHS:,} epochs": single_s * NIGHT_EPOCHS / per_night,
             "detail": f"× {threads} CPUs = {reference:.2f} nights/min; {len(one['times'])} timed calls"}]
    notes = []
    previous: tuple[int, float] | None = None
    for n in sorted(sizes):
        ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Unix socket paths are limited
        ensure_ray(threads, include_dashboard=False, temp_dir=ray_tmp, log_to_driver=False)
        try:
            r = time_cohort(bundle, sub_manifest(cohort / "manifest.csv", n), work / f"scored-{n}", n)
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        share = r["nights_per_min"] / reference
        detail = [f"{r['nights_per_min']:.2f} nights/min = {share:.0%} of the reference"]
        if previous is not None:
            # The nights this cohort has over the previous one, over the extra time they took:
            # start-up (Ray Data's plan, actor start, model load) costs both runs alike and cancels.
            marginal = 60.0 * (n - previous[0]) / (r["wall_s"] - previous[1])
            detail.append(f"nights {previous[0] + 1}–{n} at {marginal:.2f} nights/min = "
                          f"{marginal / reference:.0%} (target ≥ 80 %)")
            notes.append(f"Nights {previous[0] + 1}–{n}: {marginal / reference:.0%} of the reference "
                         f"({threads * 60.0 / marginal / per_night * NIGHT_EPOCHS:.1f} CPU-seconds per "
                         "1,000 epochs once started).")
        detail.append(f"peak RSS driver {r['driver_gb']:.2f} GB, all processes {r['total_gb']:.2f} GB "
                      "(one run)")
        rows.append({"night": f"{n} × {hours:.2g} h", "case": "somnray score cohort (CLI defaults)",
                     "epochs": n * per_night, "median s": r["wall_s"], f"s per {NIGHT_EPOCHS:,} epochs": None,
                     "detail": "; ".join(detail)})
        previous = (n, r["wall_s"])
    return rows, notes


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


def run(quick: bool = False, threads: int = 2, rounds: int | None = None, repeats: int | None = None,
        cohort_sizes: Sequence[int] | None = None, rss_hours: float | None = None, seed: int = 0) -> BenchResult:
    """Run every measurement (module docstring) and return the results table.

    Parameters
    ----------
    quick : bool
        Smoke-run sizes: a 1-hour night, one round, 2 one-hour cohort nights, a 4-hour memory probe.
    threads : int
        CPU threads of every contestant, the memory probe and the Ray instance.
    rounds, repeats : int, optional
        Rounds of the single-night races (each in a new random order) and timed calls per
        contestant per round (after its untimed warm-up call).
    cohort_sizes : sequence of int, optional
        One-hour nights of each throughput case (default 4, 32 and 128; ``--quick`` 2).
    rss_hours : float, optional
        Length of the memory-probe recording (24 h by default).
    seed : int
        Seed of the contestants' order.
    """
    rounds = rounds or (1 if quick else 3)
    repeats = repeats or (1 if quick else 2)
    night_hours = 1.0 if quick else NIGHT_EPOCHS * 30 / 3600
    cohort_sizes = tuple(cohort_sizes or ((2,) if quick else (4, 32, 128)))
    rss_hours = rss_hours or (4.0 if quick else 24.0)

    work = Path(tempfile.mkdtemp(prefix="somnray-bench-score-"))
    rows, versions = single_nights(work, threads=threads, rounds=rounds, repeats=repeats,
                                   hours=night_hours, seed=seed)
    bundle = work / "bundle-sleep-edf"

    cohort_rows, cohort_notes = cohort_scaling(work, bundle, threads=threads, sizes=cohort_sizes,
                                               repeats=repeats + 1)
    rows.extend(cohort_rows)

    [long_psg] = _night(work / "long", rss_hours, seed=2)
    mem = peak_rss(bundle, long_psg, threads=threads)
    rows.append({"night": f"{rss_hours:g} h", "case": "peak RSS, fresh process", "epochs": mem["epochs"],
                 "median s": None, f"s per {NIGHT_EPOCHS:,} epochs": None,
                 "detail": f"{mem['peak_gb']:.2f} GB peak ({mem['model_loaded_gb']:.2f} GB after "
                           "imports + model load)"})

    notes = [
        f"Single nights: {night_hours:.2g} h synthetic nights, full-size `coresleep` (random weights), "
        f"window L = {CORESLEEP_LENGTH}, stride L; every contestant in its own process with "
        f"{threads} threads set before import, one untimed warm-up call, then {repeats} timed call(s) "
        f"per round × {rounds} round(s) in random order (seed {seed}); EDF read included on both "
        "sides; the median is reported.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        f"Cohort throughput: a fresh local Ray instance of {threads} CPUs per cohort of one-hour "
        "nights, actors and threads sized by the run (the CLI's defaults), model load included; "
        "reading and preparing run as separate tasks.  Reference: one night scored warm in one "
        f"process with one thread, × {threads} CPUs.",
        *cohort_notes,
        f"Target peak RSS ≤ {TARGET_RSS_GB:g} GB for a 24-h recording: "
        + (f"{'met' if mem['peak_gb'] <= TARGET_RSS_GB else 'NOT met'} ({mem['peak_gb']:.2f} GB)."
           if rss_hours >= 24 else f"not measured in --quick mode ({rss_hours:g}-h probe)."),
    ]
    if quick:
        notes.append("--quick: smaller sizes, for a smoke run; not the reference numbers.")
    shutil.rmtree(work, ignore_errors=True)  # synthetic EDFs: a 24-h night is ~100 MB
    return BenchResult("score", "Score: one night against YASA, cohort throughput, memory", rows, notes)
