"""``somnray tune``: a hyperparameter search around the training job, with Ray Tune.

    somnray tune CONFIG SPACE [--samples N] [--scheduler asha|fifo|pbt] [--metric val_macro_f1 --mode max]
                 [--perturbation-steps N] [--storage URI] [--name NAME] [--set key.sub=value ...]
    somnray tune --resume URI

CONFIG is an experiment config (as for training), SPACE a search-space YAML naming config fields
and their distributions (see ``docs/tuning.md`` and ``jobs/configs/space_*.yaml``). Both are
validated together before Ray starts. The search folder ``<storage>/<name>`` (default:
``<storage.uri>/<storage.name>-tune``) receives every trial's run, the leaderboard (Markdown +
CSV), a plot of the metric against each searched parameter, and ``best/``: the winning trial as
a run folder with its config and model bundle. The last line printed is that folder's URI, ready
for ``somnray evaluate <search>/best --data ...``.

``--scheduler pbt`` runs population-based training: at every perturbation interval the weakest
trials continue from a strong trial's checkpoint with perturbed loss weights, missing-modality
settings and optimizer hyperparameters (see ``docs/tuning.md``).

``--resume URI`` completes an interrupted search from its folder (``Tuner.restore``): finished
trials are kept, unfinished ones continue from their latest Ray Train checkpoints.
"""

from __future__ import annotations

import argparse
import sys


#: One line for ``somnray --help``.
HELP = "search curricula, loss weights and other hyperparameters with Ray Tune"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray tune`` (also parsed by ``somnray submit tune``)."""
    p.add_argument("config", nargs="?", help="experiment config YAML")
    p.add_argument("space", nargs="?", help="search-space YAML")
    p.add_argument("--resume", metavar="URI", help="complete the interrupted search in this folder")
    p.add_argument("--samples", type=int, default=8, help="trials to draw (default 8)")
    p.add_argument("--scheduler", default="asha", choices=["asha", "pbt", "fifo"],
                   help="asha: early-stop weak trials (default); fifo: run all to the end; "
                        "pbt: population-based training")
    p.add_argument("--metric", default="val_macro_f1",
                   help="validation metric to optimise: val_macro_f1 (default), val_kappa, val_accuracy, val_loss")
    p.add_argument("--mode", choices=["max", "min"], help="default: min for val_loss, else max")
    p.add_argument("--search", dest="search_alg", default="random", choices=["random", "optuna"],
                   help="random/grid variants (default) or Optuna TPE (needs optuna installed)")
    p.add_argument("--max-concurrent", type=int, help="trials at a time (default: what the cluster fits)")
    p.add_argument("--data-cpus", type=float, default=1.0,
                   help="CPUs kept free for Ray Data when packing trials (default 1)")
    p.add_argument("--grace-steps", type=int, help="ASHA grace period in optimizer steps (default validate_every)")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA halving rate (default 2)")
    p.add_argument("--perturbation-steps", type=int,
                   help="PBT perturbation interval in optimizer steps (default 2 x validate_every)")
    p.add_argument("--quantile-fraction", type=float, default=0.25,
                   help="PBT: bottom fraction of trials that clone a top one (default 0.25, at most 0.5)")
    p.add_argument("--resample-probability", type=float, default=0.25,
                   help="PBT: probability of drawing a perturbed value anew (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--storage", metavar="URI", help="where the search folder goes (default the config's storage.uri)")
    p.add_argument("--name", help="search folder name (default <storage.name>-tune)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment-config field (repeatable), e.g. optim.max_steps=500")


def run(args: argparse.Namespace) -> int:
    """Run or resume a search; prints the ``best/`` URI last. Returns 0."""
    from somnray.core.errors import ConfigError
    from somnray.jobs.cli import CommandFailed

    problems = argument_problems(args)
    if problems:
        raise ConfigError("arguments", problems)
    outcome = _resume(args.resume) if args.resume else _new(args)
    _summary(outcome)
    if outcome.best_uri is None:
        raise CommandFailed("no trial produced a checkpoint on the last phase (see the leaderboard)")
    print(outcome.best_uri)
    return 0


def argument_problems(args: argparse.Namespace) -> list[str]:
    """What argparse cannot check: a new search (CONFIG SPACE) or a resumed one (--resume), one of them."""
    if args.resume and (args.config or args.space):
        return ["give CONFIG SPACE for a new search, or --resume URI, not both"]
    if not args.resume and not (args.config and args.space):
        return ["give CONFIG and SPACE (or --resume URI)"]
    return []


def _new(args: argparse.Namespace):
    from somnray.core.errors import ConfigError
    from somnray.core.session import ensure_ray
    from somnray.train.config import load_experiment
    from somnray.tune.search import SearchSettings, run_search
    from somnray.tune.space import load_space

    cfg = load_experiment(args.config, args.overrides)
    space = load_space(args.space, cfg)
    settings = SearchSettings(metric=args.metric, mode=args.mode, scheduler=args.scheduler,
                              num_samples=args.samples, search_alg=args.search_alg,
                              max_concurrent=args.max_concurrent, data_cpus=args.data_cpus,
                              grace_steps=args.grace_steps, reduction_factor=args.reduction_factor,
                              perturbation_steps=args.perturbation_steps, quantile_fraction=args.quantile_fraction,
                              resample_probability=args.resample_probability, seed=args.seed)
    problems = settings.problems(space, cfg)
    if problems:
        raise ConfigError("search settings", problems)
    ensure_ray()
    return run_search(cfg, space, settings, storage=args.storage, name=args.name)


def _resume(uri: str):
    from somnray.core.session import ensure_ray
    from somnray.tune.search import read_search, resume_search

    read_search(uri)  # a clear error before Ray starts if this is not a search folder
    ensure_ray()
    return resume_search(uri)


def _summary(outcome) -> None:
    print(f"\nsearch: {outcome.search_uri}")
    for rec in outcome.leaderboard[:5]:
        value = f"{rec.value:.4f}" if rec.value is not None else "-"
        print(f"  {rec.trial_id}  {rec.status:8s}  {value}  {rec.params}")
    for kind, uri in outcome.report_files.items():
        print(f"{kind}: {uri}")


def main(argv: list[str] | None = None) -> int:
    """``python -m somnray.jobs.cmd_tune ...``: ``somnray -v tune ...`` (info logging)."""
    from somnray.jobs.cli import main as cli_main

    return cli_main(["-v", "tune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
