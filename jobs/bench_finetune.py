"""``somnray bench finetune``: a model trained at site A, scored at site B, fine-tuned on a few site-B nights.

For each architecture (its ``*_tiny`` variant and shipped tiny recipe):

1. two synthetic Sleep-EDF-like cohorts: site A (the default site) and site B (``--site b``: half
   the gain, a central derivation's EEG morphology, noise and a 0.3-30 Hz amplifier, an older
   population with less N3 and fragmented sleep), prepared with the same ``sleep-edf`` profile;
2. the model trained on site A with its tiny recipe (subject-wise split; A's test subjects held out);
3. macro-F1 on A's and B's test nights ("before");
4. ``somnray finetune``'s path: the shipped ``finetune_local.yaml`` recipe completed from the A
   run (at the tiny models' learning rate, :data:`TINY_FINETUNE_SETS`), on B's fine-tuning nights
   (two subjects: one trains, one validates; 4 labelled nights);
5. macro-F1 on the same A and B test nights ("after").

Every evaluation scores the "all" scenario (every modality present) with ``somnray evaluate``'s
code, in process. Target: site-B macro-F1 rises clearly, site-A macro-F1 does not collapse.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .benchreport import BenchResult, stopwatch

#: Architectures measured (their tiny variants, trained with jobs/configs/<name>.yaml).
MODELS = ("coresleep_tiny", "mc2sleepnet_tiny", "cimsleepnet_tiny")
#: ``--set`` of the fine-tuning recipe for the tiny models: their recipes train at 1-2e-3, so the
#: recipe's 1e-4 (meant for paper-size models) barely moves them in a few dozen steps.
TINY_FINETUNE_SETS = ("optim.lr=1e-3",)
#: The split written into both datasets: fold 0's training side trains (A) or fine-tunes (B), its
#: test side is the site's test set for every evaluation.
SPLIT = "site"


@dataclass(frozen=True)
class ShiftSizes:
    """Cohort sizes and step budgets of one measurement."""

    a_nights: int = 12
    b_nights: int = 8
    hours: float = 2.0
    train_steps: int = 150
    finetune_steps: int = 60


QUICK = ShiftSizes(a_nights=8, b_nights=8, hours=1.5, train_steps=80, finetune_steps=40)


@dataclass(frozen=True)
class ShiftRow:
    """Macro-F1 (and accuracy) of one architecture on both sites, before and after fine-tuning."""

    model: str
    a_before: float
    b_before: float
    b_after: float
    a_after: float
    b_acc_before: float
    b_acc_after: float
    finetune_nights: int
    seconds: float


def prepare_sites(root: Path, sizes: ShiftSizes) -> tuple[str, str]:
    """Synthesize and prepare sites A and B and write their splits. Returns both dataset URIs."""
    from somnray.data import prepare_cohort
    from somnray.data.dataset import PreparedDataset
    from somnray.data.profiles import load_profile
    from somnray.data.splits import kfold_split
    from somnray.data.synth import SiteConfig, synthesize_cohort

    profile = load_profile("sleep-edf")
    uris = []
    # A: three folds of subjects (one validates, one is tested); B: two folds, so that fold 0's
    # training side (one subject trains, one validates) is the small labelled local set.
    for name, nights, seed, folds in (("a", sizes.a_nights, 0, 3), ("b", sizes.b_nights, 7, 2)):
        synthesize_cohort("sleep-edf", root / f"site-{name}", nights, seed=seed, hours=sizes.hours,
                          site=SiteConfig.preset(name))
        result = prepare_cohort(str(root / f"site-{name}" / "manifest.csv"), profile,
                                f"file://{root / f'store-{name}'}", num_workers=2, progress=False)
        dataset = PreparedDataset.open(result.dataset_uri)
        dataset.write_splits(kfold_split(dataset.entries(), folds, seed=0, n_val_subjects=1), SPLIT)
        uris.append(result.dataset_uri)
    return uris[0], uris[1]


def _macro_f1(run_uri: str, data_uri: str) -> tuple[float, float]:
    """Macro-F1 and accuracy of a run on the test side of a dataset's site split (fold 0)."""
    from somnray.train.evaluate import EvaluationOptions, EvaluationRun, evaluate_run

    report = evaluate_run([EvaluationRun(run_uri)], data_uri,
                          EvaluationOptions(split=SPLIT, scenarios=["all"], write=False))
    pooled = report.pooled("all")
    return pooled.macro_f1, pooled.accuracy


def measure(model: str, a_uri: str, b_uri: str, runs: Path, sizes: ShiftSizes,
            finetune_sets: tuple[str, ...] = TINY_FINETUNE_SETS, tag: str = "site-b") -> ShiftRow:
    """Train ``model`` on A, fine-tune on B's labelled nights, and score both sites before and after.

    ``finetune_sets`` are extra ``--set`` assignments of the fine-tuning recipe (e.g.
    ``init_statistics`` or the learning rate); ``tag`` names the fine-tuned run (``<model>-<tag>``).
    """
    from somnray.data.dataset import PreparedDataset
    from somnray.train.config import load_experiment
    from somnray.train.driver import run_experiment
    from somnray.train.finetune import finetune_overrides

    configs = resources.files("somnray.jobs").joinpath("configs")
    with stopwatch() as took:
        recipe = str(configs.joinpath(f"{model}.yaml"))
        source = load_experiment(recipe, [
            f"data.dataset={a_uri}", f"data.split={{name: {SPLIT}, fold: 0}}",
            f"optim.max_steps={sizes.train_steps}", f"storage.uri={runs}", f"storage.name={model}-site-a"])
        run_experiment(source)
        a_run = source.run_uri
        a_before, _ = _macro_f1(a_run, a_uri)
        b_before, b_acc_before = _macro_f1(a_run, b_uri)
        tuned = load_experiment(str(configs.joinpath("finetune_local.yaml")), finetune_overrides(a_run, b_uri) + [
            f"data.split={{name: {SPLIT}, fold: 0}}", f"optim.max_steps={sizes.finetune_steps}",
            "optim.validate_every=10", "optim.warmup_steps=5", "scaling.use_gpu=false",
            "deepspeed.precision=fp32", f"storage.uri={runs}", f"storage.name={model}-{tag}", *finetune_sets])
        run_experiment(tuned)
        b_after, b_acc_after = _macro_f1(tuned.run_uri, b_uri)
        a_after, _ = _macro_f1(tuned.run_uri, a_uri)
    split = PreparedDataset.open(b_uri).split(SPLIT)[0]
    return ShiftRow(model, a_before, b_before, b_after, a_after, b_acc_before, b_acc_after,
                    len(split.train) + len(split.val), took["s"])


def run(models: tuple[str, ...] = MODELS, quick: bool = False, workdir: str | None = None) -> BenchResult:
    """Measure every architecture of ``models``; the table is the before/after macro-F1 per site."""
    from somnray.core.session import ensure_ray

    sizes = QUICK if quick else ShiftSizes()
    ensure_ray()
    root = Path(workdir or tempfile.mkdtemp(prefix="somnray-bench-finetune-"))
    a_uri, b_uri = prepare_sites(root, sizes)
    rows = [measure(m, a_uri, b_uri, root / "runs", sizes) for m in models]
    table = [{"model": r.model, "site A before": f"{100 * r.a_before:.1f}", "site B before": f"{100 * r.b_before:.1f}",
              "site B after": f"{100 * r.b_after:.1f}", "site A after": f"{100 * r.a_after:.1f}",
              "B accuracy before → after": f"{100 * r.b_acc_before:.1f} → {100 * r.b_acc_after:.1f}",
              "labelled B nights": r.finetune_nights, "seconds": round(r.seconds)} for r in rows]
    notes = [f"macro-F1 (%) on held-out test subjects, scenario 'all'; site A: {sizes.a_nights} synthetic "
             f"nights of {sizes.hours:g} h, site B (--site b): {sizes.b_nights}; trained {sizes.train_steps} "
             f"steps on A with each tiny recipe, then fine-tuned {sizes.finetune_steps} steps with "
             f"jobs/configs/finetune_local.yaml ({', '.join(TINY_FINETUNE_SETS)}) on B's labelled nights "
             "(one subject trains, one validates)."]
    return BenchResult(name="finetune", title="Fine-tuning across sites (site A → site B)", table=table,
                       notes=notes)
