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


#: One line for ``somnray --help``.
HELP = "train a model from an experiment config (Ray Train + DeepSpeed)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``somnray train`` (also parsed by ``somnray submit train``)."""
    from somnray.jobs.cli import positive_int

    p.add_argument("config", metavar="CONFIG", help="experiment YAML (see somnray.train.config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. optim.lr=3e-4 or phases.1.optim.max_steps=500 "
                        "(repeatable; values are YAML)")
    p.add_argument("--run-uri", default=None, metavar="URI",
                   help="run folder (default <storage.uri>/<storage.name> of the config); its last "
                        "component becomes storage.name")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="Ray Train workers of every phase (scaling.num_workers)")


def cli_overrides(config: str, overrides: list[str], run_uri: str | None, workers: int | None) -> list[str]:
    """The ``--set`` assignments equivalent to the command's options (``--run-uri``, ``--workers``).

    ``--workers`` also replaces a ``scaling.num_workers`` that a phase sets itself (in the file or
    through ``--set``), so one flag scales the whole recipe.
    """
    out = list(overrides)
    if run_uri is not None:
        from somnray.core.storage import resolve

        loc = resolve(run_uri)
        out += [f"storage.uri={loc.parent.uri}", f"storage.name={loc.name}"]
    if workers is not None:
        out.append(f"scaling.num_workers={workers}")
        out += [f"phases.{i}.scaling.num_workers={workers}" for i in _phases_setting_workers(config, overrides)]
    return out


def _phases_setting_workers(config: str, overrides: list[str]) -> list[int]:
    """Indices of the phases that set ``scaling.num_workers`` themselves, ``--set`` applied.

    The document is read and overridden by the experiment loader's own functions; a file they
    cannot read gives no index (:func:`~somnray.train.config.load_experiment` then reports why).
    """
    from somnray.core.config import read_yaml_file
    from somnray.core.errors import ConfigError
    from somnray.train.config import apply_overrides

    try:
        _, raw = read_yaml_file(config, "config")
    except ConfigError:
        return []
    if not isinstance(raw, dict):
        return []
    phases = apply_overrides(raw, overrides)[0].get("phases")
    return [i for i, phase in enumerate(phases if isinstance(phases, list) else [])
            if isinstance(phase, dict) and isinstance(phase.get("scaling"), dict)
            and "num_workers" in phase["scaling"]]


def run(args: argparse.Namespace) -> int:
    """Validate, train, export; returns 0 (a failed training raises :class:`CommandFailed`, status 3)."""
    from somnray.train.config import load_experiment

    cfg = load_experiment(args.config, cli_overrides(args.config, args.overrides, args.run_uri, args.workers))
    return train_and_report(cfg, args.config)


def train_and_report(cfg, source: str) -> int:
    """Train a loaded :class:`~somnray.train.config.ExperimentConfig` and print its outcome (``somnray
    train`` and ``somnray finetune``); ``source`` names the config in messages. Returns 0."""
    from somnray.jobs.cli import EXIT_TRAINING_FAILED, KNOWN_FAILURES, CommandFailed
    from somnray.train.driver import init_sources, run_experiment
    from somnray.train.tracking import check_sinks_available

    for phase in cfg.phases:  # a configured sink that is not installed fails now, not mid-run
        check_sinks_available(phase.logging, f"{source} (phase {phase.name})")
    init_sources(cfg)  # a source model that does not fit its phase fails before Ray starts, too

    from somnray.core.session import ensure_ray, shutdown_ray

    names = " → ".join(p.name for p in cfg.phases)
    print(f"run {cfg.run_uri}: {len(cfg.phases)} phase(s) {names}", flush=True)
    started = ensure_ray()
    failure = None
    try:
        results = run_experiment(cfg)
    except KNOWN_FAILURES:
        raise
    except Exception as exc:  # a failed Ray Train run: the cause is in the worker logs above
        failure = exc
    finally:
        # Disconnecting flushes the forwarded worker output, so the URI below really is last; a
        # session this process did not start (a caller's, a test's) is left alone.
        if started:
            shutdown_ray()
    if failure is not None:
        print(cfg.run_uri)
        raise CommandFailed(f"training failed: {failure.__class__.__name__}: {failure}",
                            EXIT_TRAINING_FAILED) from failure
    for r in results:
        m = r.metrics
        print(f"phase {r.name}: best at step {int(m.get('step', 0))}: val accuracy {m.get('val_accuracy', float('nan')):.3f}, "
              f"macro-F1 {m.get('val_macro_f1', float('nan')):.3f}, κ {m.get('val_kappa', float('nan')):.3f}")
    print(f"model bundle: {cfg.run_uri}/model")
    print(cfg.run_uri)
    return 0
