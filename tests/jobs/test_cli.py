"""The ``somnray`` command line's one exit-status mapping (``somnray.jobs.cli.main``): a known failure
of any command exits 1 with one message on stderr and no traceback (``--debug`` adds it), a cohort
run that rejected recordings exits 2, a failed training 3, an argument error 1."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from somnray.core.errors import ConfigError
from somnray.jobs.cli import COMMAND_MODULES, EXIT_ERROR, EXIT_PARTIAL, EXIT_TRAINING_FAILED, main

#: Arguments each command's parser accepts; the tests below replace ``run`` or fail before any I/O.
MINIMAL_ARGV: dict[str, list[str]] = {
    "demo": [],
    "synth": ["--profile", "sleep-edf", "--nights", "1", "--out", "cohort"],
    "inspect": ["night.edf"],
    "prepare": ["manifest.csv", "--profile", "sleep-edf", "--out", "store"],
    "split": ["store/ds", "--kfold", "2"],
    "train": ["experiment.yaml"],
    "finetune": ["runs/r", "--data", "store/ds"],
    "evaluate": ["runs/r", "--data", "store/ds"],
    "score": ["runs/r", "night.edf", "--out", "scored"],
    "review": ["agreement", "scored"],
    "bench": ["models"],
    "tune": ["experiment.yaml", "space.yaml"],
    "serve": ["runs/r"],
    "cohorts": ["status", "cohort-0"],
    "models": ["list"],
    "submit": ["train", "experiment.yaml"],
    "jobs": ["list"],
}


def _assert_one_message(err: str, command: str) -> list[str]:
    """``err`` is one ``somnray <command>: error:`` message (a config's problems below it), no traceback."""
    lines = err.rstrip("\n").splitlines()
    assert lines and lines[0].startswith(f"somnray {command}: error: "), err
    assert all(line.startswith("  - ") or line == "nothing was submitted." for line in lines[1:]), err
    assert "Traceback" not in err
    return lines


def _experiment(tmp_path: Path) -> Path:
    """A small valid experiment config (tiny model); its dataset is never read here."""
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"dataset": str(tmp_path / "prepared"), "split": "manifest", "sequence_length": 4},
        "model": {"name": "coresleep_tiny"},
        "optim": {"batch_size": 2, "max_steps": 2},
        "storage": {"uri": str(tmp_path / "runs"), "name": "cli-test"},
    }), encoding="utf-8")
    return path


def test_minimal_argv_covers_every_command():
    """Every registered command has arguments below, so the mapping tests cover all of them."""
    assert set(MINIMAL_ARGV) == set(COMMAND_MODULES)


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_command_maps_a_config_error_to_exit_1_and_one_message(command, monkeypatch, capsys):
    """Whatever the command, a ConfigError it raises exits 1 with its problems listed, no traceback."""
    module = importlib.import_module(f"somnray.jobs.cmd_{command}")

    def fail(args):
        raise ConfigError("x.yaml", ["first problem", "second problem"])

    monkeypatch.setattr(module, "run", fail)
    assert main([command, *MINIMAL_ARGV[command]]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"somnray {command}: error: x.yaml: 2 problem(s):\n  - first problem\n  - second problem\n"


@pytest.mark.parametrize("error", [FileNotFoundError("no such file: night.edf"),
                                   PermissionError("permission denied: store/")])
def test_os_errors_exit_1_with_one_line(error, monkeypatch, capsys):
    """A missing or unreadable file is the user's to fix: one line, exit 1, no traceback."""
    module = importlib.import_module("somnray.jobs.cmd_score")

    def fail(args):
        raise error

    monkeypatch.setattr(module, "run", fail)
    assert main(["score", *MINIMAL_ARGV["score"]]) == EXIT_ERROR
    assert capsys.readouterr().err == f"somnray score: error: {error}\n"


@pytest.mark.parametrize("argv, message", [
    (["synth", "--profile", "sleep-edf", "--nights", "0", "--out", "{tmp}/cohort"], "n_nights must be a positive"),
    (["prepare", "{tmp}/manifest.csv", "--profile", "no-such-profile", "--out", "{tmp}/store"], "no such profile"),
    (["split", "{tmp}/no-dataset", "--kfold", "2"], "not a prepared dataset"),
    (["train", "{tmp}/no-such.yaml"], "no such config file"),
    (["evaluate", "{tmp}/no-run", "--data", "{tmp}/no-dataset"], None),
    (["score", "{tmp}/no-run", "{tmp}/night.edf", "--out", "{tmp}/scored"], "no model bundle"),
    (["review", "queue", "{tmp}", "--inputs", "{tmp}/night.edf"], "no scored night here"),
    (["review", "agreement", "{tmp}"], "no corrections yet"),
    (["tune"], "give CONFIG and SPACE"),
    (["tune", "{tmp}/a.yaml", "{tmp}/b.yaml", "--resume", "{tmp}"], "not both"),
    (["serve", "{tmp}/no-run"], "no model bundle"),
    (["serve", "{tmp}", "--profile", "nope"], "not a shipped profile"),
    (["submit", "train", "{tmp}/no-such.yaml", "--address", "http://127.0.0.1:9"], "nothing was submitted"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_config_or_input_exits_1_with_one_message(argv, message, tmp_path, capsys):
    """Real bad inputs of each command (tune, serve and synth exited 2 before): exit 1, one message."""
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR, err
    _assert_one_message(err, argv[0])
    if message is not None:
        assert message in err


def test_debug_prints_the_traceback_before_the_message(tmp_path, capsys):
    """``somnray --debug`` shows where a known failure was raised, then the same one-line message."""
    assert main(["--debug", "train", str(tmp_path / "no-such.yaml")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "load_experiment" in err
    assert err.rstrip().splitlines()[-2].startswith("somnray train: error: ")
    assert err.rstrip().endswith("  - no such config file")


def test_argument_errors_exit_1(capsys):
    """argparse's usage errors exit 1 too (its own 2 would read as "some recordings rejected")."""
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == EXIT_ERROR
    assert "the following arguments are required: CONFIG" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "x.yaml", "--workers", "0"])
    assert info.value.code == EXIT_ERROR
    assert "--workers: must be >= 1, got 0" in capsys.readouterr().err


def test_prepare_with_rejects_exits_2(monkeypatch, capsys):
    """A cohort run that rejected some recordings exits 2, lists them, and prints the dataset last."""
    from somnray.data import PrepareResult, pipeline

    result = PrepareResult(dataset_uri="file:///store/sleep-edf-0123", version="0123", total=2, prepared=1,
                           skipped=0, rejected=1, pending=0,
                           rejects=[{"recording_id": "r2", "reason": "not an EDF/BDF file"}])
    monkeypatch.setattr(pipeline, "prepare_cohort", lambda *a, **k: result)
    assert main(["prepare", *MINIMAL_ARGV["prepare"]]) == EXIT_PARTIAL
    out, err = capsys.readouterr()
    assert "  rejected r2: not an EDF/BDF file" in out and out.splitlines()[-1] == result.dataset_uri
    assert err == ""


def test_failed_training_exits_3_with_the_run_uri_last(tmp_path, monkeypatch, capsys):
    """A training run that fails after it started exits 3: one message, the run URI still printed last."""
    from somnray.core import session
    from somnray.train import driver

    def crash(cfg):
        raise RuntimeError("worker died")

    monkeypatch.setattr(session, "ensure_ray", lambda *a, **k: None)
    monkeypatch.setattr(driver, "run_experiment", crash)
    assert main(["train", str(_experiment(tmp_path))]) == EXIT_TRAINING_FAILED
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1].endswith("/runs/cli-test")
    assert _assert_one_message(err, "train") == ["somnray train: error: training failed: RuntimeError: worker died"]
