"""``somnray demo``: the main job on the embedded default, end to end, on one machine.

It runs what a new user would run against a real cohort, on data it makes itself:

1. writes a small synthetic Sleep-EDF-like cohort (real EDF+ files and hypnograms);
2. prepares it with Ray Data into a local Parquet store (``file://``);
3. ingests the bundled real Sleep-EDF fragment (SC4001, 5 minutes) through a user-written profile
   YAML, the way a lab adds a cohort somnray does not ship;
4. draws subject-wise splits;
5. trains a tiny CoRe-Sleep (``jobs/configs/coresleep_tiny.yaml``) with Ray Train + DeepSpeed on
   two workers;
6. evaluates it under the missing-modality scenarios (all, EEG only, EOG only, missing rate r,
   noisy channels);
7. starts the Ray Serve scoring app on 127.0.0.1, uploads one night to ``POST /v1/score`` and
   draws its hypnogram and hypnodensity.

Everything lands under ``--out`` (default ``./demo-output``); the summary printed at the end says
where.  No cluster, no object store and no network are needed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

#: The bundled real recording: a fragment of PhysioNet Sleep-EDF SC4001 (ODC-By licence, see its README).
FRAGMENT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "fixtures" / "sleep-edf-sc4001"


#: One line for ``somnray --help``.
HELP = "run the whole workflow on generated data, locally"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray demo``."""
    p.add_argument("--out", default="demo-output", help="folder for everything the demo writes")
    p.add_argument("--nights", type=int, default=8, help="synthetic nights (two per subject)")
    p.add_argument("--hours", type=float, default=4.0, help="length of each synthetic night")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the tiny recipe's)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")


def _step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)


def _fragment_profile(out: Path) -> Path:
    """A user profile: the shipped Sleep-EDF profile without wake trimming.

    The fragment is 10 epochs of wake; the shipped rule (keep 30 min of wake around sleep) would
    rightly reject it as having no sleep, so this is the case for a cohort-specific profile.
    """
    import yaml

    from somnray.data.profiles import load_profile

    doc = load_profile("sleep-edf").model_dump(mode="json")
    doc["name"] = "sleep-edf-untrimmed"
    doc["description"] = "Sleep-EDF, all epochs kept (no wake trimming): for short fragments."
    doc["trimming"] = {"rule": "none", "edge_minutes": 30}
    path = out / "sleep-edf-untrimmed.yaml"
    path.write_text("# A user profile written by `somnray demo`: see docs/profiles.md\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0, or 2 when some synthetic recordings were rejected."""
    from somnray.core.session import ensure_ray
    from somnray.data import prepare_cohort
    from somnray.data.dataset import PreparedDataset
    from somnray.data.manifest import ManifestEntry, format_manifest_csv
    from somnray.data.profiles import load_profile
    from somnray.data.splits import kfold_split
    from somnray.data.synth import synthesize_cohort

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = f"file://{out / 'store'}"
    total = time.perf_counter()

    t = _step(f"1. synthesise {args.nights} Sleep-EDF-like nights of {args.hours:g} h")
    cohort = out / "cohort"
    entries = synthesize_cohort("sleep-edf", cohort, n_nights=args.nights, seed=args.seed, hours=args.hours)
    print(f"   {len(entries)} recordings + hypnograms in {cohort}")
    _done(t)

    t = _step("2. prepare the cohort with Ray Data (local Ray, local Parquet store)")
    ensure_ray()
    result = prepare_cohort(str(cohort / "manifest.csv"), load_profile("sleep-edf"), store,
                            num_workers=2, progress=True)
    manifest = PreparedDataset.open(result.dataset_uri).manifest
    print(f"   {result.prepared} prepared, {result.skipped} already there, {result.rejected} rejected")
    print(f"   class histogram: {json.dumps(manifest.get('class_histogram', {}))}")
    print(f"   dataset: {result.dataset_uri}")
    _done(t)

    fragment_uri = None
    if FRAGMENT_DIR.exists():
        t = _step("3. ingest the real Sleep-EDF fragment (SC4001, 5 min) with a user profile")
        profile_path = _fragment_profile(out)
        frag_manifest = out / "fragment-manifest.csv"
        frag_manifest.write_text(format_manifest_csv([ManifestEntry(
            recording_id="SC4001E0-fragment", subject_id="SC400",
            psg=str(FRAGMENT_DIR / "short_psg.edf"), hypnogram=str(FRAGMENT_DIR / "SC4001EC-Hypnogram.edf"))]))
        frag = prepare_cohort(str(frag_manifest), load_profile(profile_path), store, num_workers=1,
                              progress=False)
        fragment_uri = frag.dataset_uri
        print(f"   profile {profile_path.name}: {frag.prepared} prepared, {frag.rejected} rejected")
        print(f"   dataset: {fragment_uri}")
        _done(t)

    t = _step("4. subject-wise k-fold cross-validation splits")
    folds = kfold_split(entries, k=min(4, max(2, len(entries) // 2)), seed=args.seed, n_val_subjects=1)
    PreparedDataset.at(result.dataset_uri).write_splits(folds, name="kfold")
    for s in folds:
        print(f"   fold {s.fold}: train {len(s.train)}, val {len(s.val)}, test {len(s.test)} recordings")
    _done(t)

    t = _step(f"5. train a tiny CoRe-Sleep with Ray Train + DeepSpeed ({args.workers} workers)")
    run_uri = _train(out, result.dataset_uri, args)
    print(f"   run: {run_uri}")
    _done(t)

    t = _step("6. evaluate under the missing-modality scenarios")
    from somnray.train.evaluate import EvaluationOptions, EvaluationRun, evaluate_run

    report = evaluate_run([EvaluationRun(run_uri)], result.dataset_uri, EvaluationOptions(workers=1))
    table = report.to_markdown()
    _done(t)

    t = _step("7. score one night through the Ray Serve app (POST /v1/score on 127.0.0.1)")
    picture = _score_over_http(out, run_uri, cohort / entries[0].psg)
    _done(t)

    print(f"\n{table}")
    print(f"\nsomnray demo finished in {time.perf_counter() - total:.0f} s.")
    print(f"prepared dataset: {result.dataset_uri}")
    if fragment_uri:
        print(f"real fragment:    {fragment_uri}")
    print(f"trained run:      {run_uri}")
    print(f"hypnogram:        {picture}")
    return 0 if result.rejected == 0 else 2


def _train(out: Path, dataset_uri: str, args: argparse.Namespace) -> str:
    """Train the shipped tiny CoRe-Sleep recipe on the prepared dataset; returns the run URI."""
    from somnray.train.config import load_experiment
    from somnray.train.driver import run_experiment

    recipe = Path(__file__).resolve().parent / "configs" / "coresleep_tiny.yaml"
    # Ray Data reads the windows on the same CPUs: leave it one, or the workers starve it.
    cpus = os.cpu_count() or 2
    per_worker = max(0.25, min(1.0, (cpus - 1) / args.workers))
    overrides = [f"data.dataset={dataset_uri}", f"storage.uri=file://{out / 'runs'}",
                 "storage.name=coresleep-tiny", f"scaling.num_workers={args.workers}",
                 f"scaling.cpus_per_worker={per_worker:g}", f"data.split.seed={args.seed}"]
    if args.steps:
        overrides.append(f"optim.max_steps={args.steps}")
    cfg = load_experiment(recipe, overrides)
    for phase in run_experiment(cfg):
        metrics = {k: round(v, 3) for k, v in phase.metrics.items()
                   if k in ("val_accuracy", "val_macro_f1", "val_kappa") and isinstance(v, float)}
        print(f"   phase {phase.name}: best validation {metrics}")
    return cfg.run_uri


def _score_over_http(out: Path, run_uri: str, psg: Path) -> Path:
    """Serve the run on loopback, score ``psg`` over HTTP, write its outputs and picture."""
    from somnray.core.session import free_loopback_port

    import requests
    from ray import serve

    from somnray.serve.app import build_app, night_from_answer
    from somnray.serve.config import ServeConfig
    from somnray.serve.outputs import write_night_outputs

    config = ServeConfig(run_uri=run_uri, host="127.0.0.1", port=free_loopback_port())
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(build_app(config), name="somnray-demo", route_prefix="/")
        with psg.open("rb") as f:
            reply = requests.post(f"http://127.0.0.1:{config.port}/v1/score", timeout=300,
                                  files={"file": ("night.edf", f, "application/octet-stream")},
                                  data={"recording_id": "demo-night", "profile": "sleep-edf"})
        reply.raise_for_status()
        doc = reply.json()
    finally:
        serve.shutdown()
    stats = doc["sleep_statistics"]
    print(f"   {doc['n_epochs']} epochs scored; TST {stats['tst_min']:.0f} min, "
          f"sleep efficiency {stats['sleep_efficiency_pct']:.0f} %, "
          f"REM latency {stats['rem_latency_min']} min")
    written = write_night_outputs(night_from_answer(doc), f"file://{out / 'scored'}", plots=True)
    return Path(written["plot"].removeprefix("file://"))
