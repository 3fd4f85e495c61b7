"""``somnray demo``: the main job on the embedded default, end to end, on one machine.

It runs what a new user would run against a real cohort, on data it makes itself:

1. writes a small synthetic Sleep-EDF-like cohort (real EDF+ files and hypnograms);
2. prepares it with Ray Data into a local Parquet store (``file://``);
3. ingests the bundled real Sleep-EDF fragment (SC4001, 5 minutes) through a user-written profile
   YAML, the way a lab adds a cohort somnray does not ship;
4. draws subject-wise splits.

Everything lands under ``--out`` (default ``./demo-output``); the summary printed at the end says
where.  No cluster, no object store and no network are needed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: The bundled real recording (copied from ../shared/data; ODC-By licence, see its README).
FRAGMENT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "fixtures" / "sleep-edf-sc4001"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="run the whole workflow on generated data, locally",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-output", help="folder for everything the demo writes")
    p.add_argument("--nights", type=int, default=8, help="synthetic nights (two per subject)")
    p.add_argument("--hours", type=float, default=4.0, help="length of each synthetic night")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    p.set_defaults(func=run)


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
    """Run the demo; returns 0 when every step succeeded."""
    from somnray.data.manifest import ManifestEntry, format_manifest_csv
    from somnray.data.pipeline import ensure_ray, prepare_cohort, read_manifest
    from somnray.data.profiles import load_profile
    from somnray.data.splits import kfold_split, save_splits
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
    manifest = read_manifest(result.dataset_uri)
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
            recording_id="SC4001E0-fragment", subject_id="00",
            psg=str(FRAGMENT_DIR / "short_psg.edf"), hypnogram=str(FRAGMENT_DIR / "SC4001EC-Hypnogram.edf"))]))
        frag = prepare_cohort(str(frag_manifest), load_profile(profile_path), store, num_workers=1,
                              progress=False)
        fragment_uri = frag.dataset_uri
        print(f"   profile {profile_path.name}: {frag.prepared} prepared, {frag.rejected} rejected")
        print(f"   dataset: {fragment_uri}")
        _done(t)

    t = _step("4. subject-wise k-fold cross-validation splits")
    folds = kfold_split(entries, k=min(4, max(2, len(entries) // 2)), seed=args.seed, n_val_subjects=1)
    save_splits(result.dataset_uri, folds, name="kfold")
    for s in folds:
        print(f"   fold {s.fold}: train {len(s.train)}, val {len(s.val)}, test {len(s.test)} recordings")
    _done(t)

    print(f"\nsomnray demo finished in {time.perf_counter() - total:.0f} s.")
    print(f"prepared dataset: {result.dataset_uri}")
    if fragment_uri:
        print(f"real fragment:    {fragment_uri}")
    return 0 if result.rejected == 0 else 2
