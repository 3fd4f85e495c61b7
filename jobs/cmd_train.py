"""``somnray train``: run an experiment config (every phase of its recipe) with Ray Train + DeepSpeed.

Example::

    somnray train jobs/configs/coresleep_shhs.yaml --set data.dataset=s3://bucket/prepared/shhs-<version> \\
        --set optim.lr=3e-4 --workers 4 --run-uri s3://bucket/runs/coresleep-try2

The config is loaded and validated completely before Ray starts: a malformed config exits with
status 1 and every problem listed. Then the command connects to Ray (``RAY_ADDRESS`` if set, else a
local, loopback-only instance), trains each phase in order, printing one line per validation
(step, training losses by term, validation accuracy / macro-F1 / Cohen's κ), and exports the run's
model bundle to ``<run>/model/``. Rerunning the same command resumes: finished phases are skipped
and an unfinished one continues from its latest checkpoint.

Exit status: 0 trained, 1 bad config or input, 3 training failed. The last line printed is the
run's URI (``<storage.uri>/<storage.name>``), for scripts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train", help="train a model from an experiment config (Ray Train + DeepSpeed)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="experiment YAML (see somnray.train.config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. optim.lr=3e-4 or phases.1.optim.max_steps=500 "
                        "(repeatable; values are YAML)")
    p.add_argument("--run-uri", default=None, metavar="URI",
                   help="run folder (default <storage.uri>/<storage.name> of the config); its last "
                        "component becomes storage.name")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray Train workers of every phase (scaling.num_workers)")
    p.set_defaults(func=run)


def cli_overrides(config: str, overrides: list[str], run_uri: str | None, workers: int | None) -> list[str]:
    """The ``--set`` assignments equivalent to the command's options (``--run-uri``, ``--workers``).

    ``--workers`` also replaces a ``scaling.num_workers`` that a phase sets itself, so one flag
    scales the whole recipe.
    """
    out = list(overrides)
    if run_uri is not None:
        from somnray.core.storage import resolve

        loc = resolve(run_uri)
        out += [f"storage.uri={loc.parent.uri}", f"storage.name={loc.name}"]
    if workers is not None:
        out.append(f"scaling.num_workers={workers}")
        try:
            import yaml

            raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None  # load_experiment reports the unreadable file
        phases = raw.get("phases") if isinstance(raw, dict) else None
        for i, phase in enumerate(phases if isinstance(phases, list) else []):
            if isinstance(phase, dict) and isinstance(phase.get("scaling"), dict) \
                    and "num_workers" in phase["scaling"]:
                out.append(f"phases.{i}.scaling.num_workers={workers}")
    return out


def run(args: argparse.Namespace) -> int:
    """Validate, train, export; returns the exit status."""
    from somnray.core.errors import SomnrayError
    from somnray.train.config import load_experiment
    from somnray.train.tracking import check_sinks_available

    if args.workers is not None and args.workers < 1:
        print(f"somnray train: error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 1
    try:
        overrides = cli_overrides(args.config, args.overrides, args.run_uri, args.workers)
        cfg = load_experiment(args.config, overrides)
        for phase in cfg.phases:  # a configured sink that is not installed fails now, not mid-run
            check_sinks_available(phase.logging, f"{args.config} (phase {phase.name})")
    except SomnrayError as exc:
        print(f"somnray train: error: {exc}", file=sys.stderr)
        return 1

    import ray

    from somnray.core.session import ensure_ray
    from somnray.train.driver import run_experiment

    names = " → ".join(p.name for p in cfg.phases)
    print(f"run {cfg.run_uri}: {len(cfg.phases)} phase(s) {names}", flush=True)
    ensure_ray()
    try:
        results = run_experiment(cfg)
    except (SomnrayError, FileNotFoundError, PermissionError) as exc:
        print(f"somnray train: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failed Ray Train run: the cause is in the worker logs above
        print(f"somnray train: training failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        print(cfg.run_uri)
        return 3
    finally:
        # Disconnecting flushes the forwarded worker output, so the URI below really is last.
        ray.shutdown()
    for r in results:
        m = r.metrics
        print(f"phase {r.name}: best at step {int(m.get('step', 0))}: val accuracy {m.get('val_accuracy', float('nan')):.3f}, "
              f"macro-F1 {m.get('val_macro_f1', float('nan')):.3f}, κ {m.get('val_kappa', float('nan')):.3f}")
    print(f"model bundle: {cfg.run_uri}/model")
    print(cfg.run_uri)
    return 0
