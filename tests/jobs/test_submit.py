"""``somnray submit`` / ``somnray jobs``: local validation (unit) and real submissions to a Ray head
node started here with ``ray start --head`` on loopback (integration)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from loopback import free_port  # tests/ is on sys.path (conftest.py)

from somnray.core.errors import ConfigError
from somnray.jobs import submit as sub
from somnray.jobs.cli import COMMAND_MODULES, main

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _wheel_cache(tmp_path_factory):
    """One wheel cache for the session, outside the user's ~/.cache."""
    saved = os.environ.get("SOMNRAY_CACHE_DIR")
    os.environ["SOMNRAY_CACHE_DIR"] = str(tmp_path_factory.mktemp("somnray-cache"))
    yield
    if saved is None:
        os.environ.pop("SOMNRAY_CACHE_DIR", None)
    else:
        os.environ["SOMNRAY_CACHE_DIR"] = saved


def _pids_using(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (our own cluster's unique temp dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@dataclass
class RayHead:
    """A ``ray start --head`` node owned by this module."""

    address: str
    temp_dir: str

    def client(self):
        """A Jobs API client for this head."""
        return sub.connect(self.address)


@pytest.fixture(scope="module")
def ray_head():
    """A 2-CPU head node on 127.0.0.1 (own ports and --temp-dir, auth off), killed by its PIDs."""
    temp_dir = tempfile.mkdtemp(prefix="rsub", dir="/tmp")  # short: Unix socket paths are limited
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", GLOO_SOCKET_IFNAME="lo",
               DS_ACCELERATOR="cpu", RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
           "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", "--disable-usage-stats"]
    log = open(os.path.join(temp_dir, "ray-start.log"), "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=temp_dir)
    head = RayHead(address=f"http://127.0.0.1:{dash}", temp_dir=temp_dir)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                # The Jobs API module loads after the dashboard answers: wait for it, not just /api/version.
                urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    text = Path(temp_dir, "ray-start.log").read_text(errors="replace")[-3000:]
                    pytest.fail(f"ray start --head did not come up: {text}")
                time.sleep(0.5)
        yield head
    finally:
        _stop_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM the head's process group, SIGKILL after 8 s, then anything still using its temp dir."""
    with _suppress():
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        with _suppress():
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    deadline = time.monotonic() + 8
    while (left := _pids_using(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _pids_using(temp_dir):
        with _suppress():
            os.kill(pid, signal.SIGKILL)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _experiment(tmp_path: Path, **changes) -> Path:
    """A small valid experiment config (tiny model), with top-level sections replaced by ``changes``."""
    raw = {
        "description": "submit test",
        "data": {"dataset": str(tmp_path / "prepared" / "ds"), "split": "manifest", "sequence_length": 4},
        "model": {"name": "coresleep_tiny"},
        "optim": {"batch_size": 2, "max_steps": 2},
        "storage": {"uri": str(tmp_path / "runs"), "name": "submit-test"},
    }
    raw.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# -- unit: packaging and validation --------------------------------------------------------------
def test_wheel_is_cached_by_source_hash_and_holds_the_mapped_packages():
    """The wheel maps platform/* into somnray.*, never ships a top-level platform, and is reused."""
    first = sub.build_wheel(REPO)
    again = sub.build_wheel(REPO)
    assert again.wheel == first.wheel or again.source_hash != first.source_hash  # others may edit files
    site = first.site
    assert (site / "somnray" / "core" / "storage.py").is_file()
    assert (site / "somnray" / "jobs" / "cli.py").is_file()
    assert (site / "somnray" / "data" / "profiles").is_dir()
    assert not (site / "platform").exists()
    assert [Path(p).name for p in first.py_modules] == ["somnray", f"somnray-{first.version}.dist-info"]


def test_source_hash_changes_with_content(tmp_path):
    """Editing a source file changes the cache key; an unrelated file outside the packages does not."""
    root = tmp_path / "checkout"
    for rel in ("pyproject.toml", "README.md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    shutil.copytree(REPO / "jobs", root / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in sub._package_dirs(REPO):
        (root / folder).mkdir(parents=True, exist_ok=True)
    before = sub.source_hash(root)
    (root / "notes.txt").write_text("not part of the wheel")
    assert sub.source_hash(root) == before
    (root / "jobs" / "cli.py").write_text((root / "jobs" / "cli.py").read_text() + "\n# edit\n")
    assert sub.source_hash(root) != before


def test_prepare_command_stages_a_profile_file_and_absolutises_local_paths(tmp_path, monkeypatch):
    """A profile given as a path is uploaded under configs/; relative local paths become absolute."""
    from importlib import resources

    profile = tmp_path / "my-profile.yaml"
    profile.write_text(resources.files("somnray.data").joinpath("profiles", "sleep-edf.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    cmd = sub.prepare_command("prepare", ["cohort/manifest.csv", "--profile", str(profile),
                                          "--out", "store", "--workers", "2"])
    assert cmd.argv == (str(tmp_path / "cohort" / "manifest.csv"), "--profile", "configs/my-profile.yaml",
                        "--out", str(tmp_path / "store"), "--workers", "2")
    assert cmd.uploads == {"configs/my-profile.yaml": profile.resolve()}
    assert len(cmd.warnings) == 2  # both local paths must be visible to the cluster
    assert sub.entrypoint_for(cmd).startswith("python -m somnray.jobs prepare ")


def test_prepare_command_reports_every_problem_at_once():
    """An unknown profile and a malformed URI are both reported in one ConfigError."""
    with pytest.raises(ConfigError) as info:
        sub.prepare_command("prepare", ["s3:/bucket/manifest.csv", "--profile", "no-such-cohort",
                                        "--out", "s3://B/x"])
    text = "\n".join(info.value.errors)
    assert "no-such-cohort" in text and "no such profile" in text
    assert "INPUT" in text and "two slashes" in text
    assert "--out" in text and "bucket name" in text


class _HeadWithoutAgentYet:
    """A Jobs API client whose head answers "no agent" ``refusals`` times, then queues the job."""

    def __init__(self, refusals: int, message: str = sub.NO_AGENT + ", please try again later."):
        self.refusals, self.message, self.calls = refusals, message, 0

    def get_address(self) -> str:
        return "http://127.0.0.1:1"

    def submit_job(self, **kwargs) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(f"Request failed with status code 500: {self.message}")
        return "raysubmit_test"


def test_a_head_whose_job_agent_is_not_up_yet_gets_the_job_once_it_is(monkeypatch):
    """"No available agent" (a fresh or busy head) is retried until the agent answers; any other refusal is not."""
    monkeypatch.setattr(sub, "AGENT_RETRY_S", 0.0)
    cmd = sub.prepare_command("score", ["s3://runs/r1", "s3://data/a.edf", "--out", "s3://out/x"])
    client = _HeadWithoutAgentYet(refusals=3)
    assert sub.submit(cmd, use_installed=True, client=client).submission_id == "raysubmit_test" and client.calls == 4
    other = _HeadWithoutAgentYet(refusals=1, message="runtime_env is invalid")
    with pytest.raises(sub.SubmitError, match="refused the job: .*runtime_env is invalid"):
        sub.submit(cmd, use_installed=True, client=other)
    assert other.calls == 1
    monkeypatch.setattr(sub, "AGENT_WAIT_S", 0.0)
    with pytest.raises(sub.SubmitError, match="No available agent"):
        sub.submit(cmd, use_installed=True, client=_HeadWithoutAgentYet(refusals=5))


def test_score_arguments_are_parsed_as_uris():
    """score keeps s3:// URIs, and a typo'd URI is refused before submission."""
    cmd = sub.prepare_command("score", ["s3://runs/r1", "s3://data/a.edf", "s3://data/b.edf",
                                        "--out", "s3://out/scored"]) if "score" in COMMAND_MODULES else None
    if cmd is not None:
        assert cmd.argv[:4] == ("s3://runs/r1", "s3://data/a.edf", "s3://data/b.edf", "--out")
        assert cmd.uploads == {}
    with pytest.raises(ConfigError) as info:
        sub.prepare_command("score", ["s3://runs/r1", "s3:/data/a.edf", "--out", "s3://out/x"])
    assert any("two slashes" in e for e in info.value.errors)


def test_score_accepts_a_registered_model():
    """score submits models:/NAME@ALIAS as it is (the job resolves it), not as a malformed URI."""
    cmd = sub.prepare_command("score", ["models:/sleep@champion", "s3://data/a.edf", "--out", "s3://out/x"])
    assert cmd.argv[:2] == ("models:/sleep@champion", "s3://data/a.edf")


def test_malformed_experiment_lists_every_error(tmp_path):
    """A bad experiment config is refused with each of its errors (and no --set is lost)."""
    config = _experiment(tmp_path, model={"name": "no_such_model"}, optim={"lr": -1.0, "batch_size": 2})
    with pytest.raises(ConfigError) as info:
        sub.prepare_command("train", [str(config), "--set", "seed=-3"])
    text = "\n".join(info.value.errors)
    assert "model.name" in text and "no_such_model" in text
    assert "optim.lr" in text
    assert "seed" in text


def test_relative_local_paths_in_a_config_are_refused(tmp_path):
    """A relative dataset path would resolve against the job's temporary working directory."""
    config = _experiment(tmp_path, data={"dataset": "prepared/ds", "split": "manifest", "sequence_length": 4})
    with pytest.raises(ConfigError) as info:
        sub.prepare_command("train", [str(config)])
    assert any("relative local path" in e for e in info.value.errors)


def test_submit_options_may_follow_the_workflow_arguments():
    """--address/--wait after the workflow's own arguments go to submit; the rest passes through."""
    from somnray.jobs.cli import build_parser
    from somnray.jobs.cmd_submit import split_submit_options

    args = build_parser().parse_args(["submit", "--env", "A=1", "prepare", "m.csv", "--profile", "shhs",
                                      "--address", "http://h:8265", "--out", "s3://b/p", "--wait",
                                      "--env", "B=2"])
    merged, rest = split_submit_options(args)
    assert merged.address == "http://h:8265" and merged.wait and not merged.follow
    assert merged.env == ["A=1", "B=2"]
    assert rest == ["m.csv", "--profile", "shhs", "--out", "s3://b/p"]


@pytest.mark.parametrize("command, argv", [
    ("prepare", ["s3://b/m.csv", "--profile", "shhs", "--out", "s3://b/p", "--workers", "3", "--limit", "5",
                 "--no-progress"]),
    ("train", ["exp.yaml", "--set", "optim.lr=3e-4", "--set", "seed=2", "--run-uri", "s3://b/runs/r",
               "--workers", "2"]),
    ("tune", ["exp.yaml", "space.yaml", "--samples", "4", "--scheduler", "pbt", "--mode", "min",
              "--reduction-factor", "3.5", "--storage", "s3://b/s", "--set", "optim.max_steps=8"]),
    ("tune", ["--resume", "s3://b/s/search"]),
    ("score", ["s3://b/runs/r", "s3://b/a.edf", "s3://b/b.edf", "--out", "s3://b/o", "--plots", "--stride", "1",
               "--device", "cpu", "--precision", "fp32", "--workers", "2"]),
])
def test_command_line_is_written_back_from_the_commands_own_parser(command, argv):
    """The cluster's command line, rebuilt from the parsed values, parses back to them with the command's own parser."""
    from somnray.jobs.cli import build_parser

    parser = sub.command_parser(command)
    args = parser.parse_args(argv)
    again = sub.command_line(parser, args)
    assert parser.parse_args(again) == args
    local = build_parser().parse_args([command, *again])
    assert {k: v for k, v in vars(local).items() if k in vars(args)} == vars(args)


def test_arguments_the_command_refuses_are_refused_before_submission(tmp_path):
    """An option `somnray train` does not take, or a --workers the batch cannot split, stops the submission."""
    config = _experiment(tmp_path)
    with pytest.raises(ConfigError, match="unrecognized arguments: --bogus"):
        sub.prepare_command("train", [str(config), "--bogus", "1"])
    with pytest.raises(ConfigError) as info:
        sub.prepare_command("train", [str(config), "--workers", "3"])
    assert any("multiple of scaling.num_workers" in e for e in info.value.errors)
    cmd = sub.prepare_command("train", [str(config), "--workers", "2", "--run-uri", "s3://bucket/runs/r2"])
    assert cmd.argv == ("configs/experiment.yaml", "--run-uri", "s3://bucket/runs/r2", "--workers", "2")
    assert "run folder s3://bucket/runs/r2" in cmd.summary


def test_env_items_are_validated(monkeypatch):
    """--env takes KEY=VALUE or a KEY set locally; anything else is an error naming the item."""
    monkeypatch.setenv("SOMNRAY_TEST_VAR", "x")
    assert sub.parse_env(["A=1", "SOMNRAY_TEST_VAR"]) == {"A": "1", "SOMNRAY_TEST_VAR": "x"}
    monkeypatch.delenv("SOMNRAY_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match="SOMNRAY_UNSET_VAR"):
        sub.parse_env(["SOMNRAY_UNSET_VAR"])
    with pytest.raises(ConfigError, match="1BAD"):
        sub.parse_env(["1BAD=2"])


def test_explicit_address_wins_over_ray_address(monkeypatch):
    """An unreachable --address fails naming it, even with RAY_ADDRESS pointing elsewhere."""
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:1")
    port = free_port()
    with pytest.raises(sub.SubmitError, match=f"127.0.0.1:{port}"):
        sub.connect(f"http://127.0.0.1:{port}")
    assert os.environ["RAY_ADDRESS"] == "http://127.0.0.1:1"


# -- integration: a real head node ---------------------------------------------------------------
@pytest.mark.integration
def test_malformed_config_is_refused_before_submission(ray_head, tmp_path, capsys):
    """Exit 1 with every config error printed, and the cluster's job list is unchanged."""
    client = ray_head.client()
    before = len(client.list_jobs())
    config = _experiment(tmp_path, model={"name": "no_such_model"}, optim={"lr": -1.0, "batch_size": 2})
    code, out, err = _run_cli(capsys, "submit", "train", str(config), "--address", ray_head.address)
    assert code == 1
    assert "model.name" in err and "optim.lr" in err and "nothing was submitted" in err
    assert "submitted" not in out
    assert len(client.list_jobs()) == before


@dataclass
class SubmittedPrepare:
    """The prepare job the integration tests share (its outputs feed the train and score jobs)."""

    job_id: str
    out: str
    err: str
    cohort: Path
    store: Path


def _follow(capsys, address: str, job_id: str) -> tuple[str, str]:
    """``somnray jobs logs --follow``: the job's whole log (stdout) and the final status (stderr)."""
    code, out, err = _run_cli(capsys, "jobs", "logs", job_id, "--follow", "--address", address)
    assert code == 0, f"job {job_id} failed:\n{out}\n{err}"
    return out, err


@pytest.fixture(scope="module")
def submitted_prepare(ray_head, tmp_path_factory) -> SubmittedPrepare:
    """Synthesise 3 subjects × 2 nights, fix the manifest's split by subject, submit ``prepare``."""
    from importlib import resources

    import pandas as pd

    tmp_path = tmp_path_factory.mktemp("submit-prepare")
    cohort = tmp_path / "cohort"
    assert main(["synth", "--profile", "sleep-edf", "--nights", "6", "--hours", "1", "--out", str(cohort)]) == 0
    manifest = pd.read_csv(cohort / "manifest.csv", dtype=str)
    parts = dict(zip(sorted(manifest["subject_id"].unique()), ("train", "val", "test")))
    manifest["split"] = manifest["subject_id"].map(parts)
    manifest.to_csv(cohort / "manifest.csv", index=False)
    profile = tmp_path / "sleep-edf-copy.yaml"  # a profile given as a path: uploaded with the job
    profile.write_text(resources.files("somnray.data").joinpath("profiles", "sleep-edf.yaml").read_text())
    store = tmp_path / "store"

    # A module fixture has no capsys: capture the CLI's output directly.
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(["submit", "prepare", str(cohort / "manifest.csv"), "--profile", str(profile),
                     "--out", str(store), "--no-progress", "--address", ray_head.address])
    assert code == 0, buf_err.getvalue()
    job_id = buf_out.getvalue().strip().splitlines()[-1]
    assert job_id.startswith("raysubmit_")
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(["jobs", "logs", job_id, "--follow", "--address", ray_head.address])
    assert code == 0, f"prepare job failed:\n{buf_out.getvalue()}\n{buf_err.getvalue()}"
    return SubmittedPrepare(job_id, buf_out.getvalue(), buf_err.getvalue(), cohort, store)


@pytest.mark.integration
def test_submit_prepare_follow_logs_and_succeed(ray_head, submitted_prepare, capsys):
    """A prepare job ships the wheel, runs on the cluster, streams its logs and SUCCEEDS."""
    job_id = submitted_prepare.job_id
    assert "6 recording(s): 6 prepared" in submitted_prepare.out
    assert "SUCCEEDED" in submitted_prepare.err

    client = ray_head.client()
    info = client.get_job_info(job_id)
    assert str(info.status.value) == "SUCCEEDED"
    # The code came from the shipped wheel (uploaded to the cluster), not from the checkout.
    assert all(uri.startswith("gcs://") for uri in info.runtime_env["py_modules"])
    assert info.metadata["somnray_command"] == "prepare"
    manifests = list(submitted_prepare.store.glob("*/manifest.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text())["counts"]["prepared"] == 6

    code, out, _ = _run_cli(capsys, "jobs", "status", job_id, "--address", ray_head.address)
    assert code == 0 and "SUCCEEDED" in out
    code, out, _ = _run_cli(capsys, "jobs", "list", "--json", "--address", ray_head.address)
    assert job_id in {row["submission_id"] for row in json.loads(out)}


@pytest.mark.integration
def test_submit_train_then_score_follow_logs_and_succeed(ray_head, submitted_prepare, tmp_path, capsys):
    """A tiny training job (Ray Train + DeepSpeed on the head's 2 CPUs) and a scoring job of its
    model both run from the shipped wheel, stream their logs and SUCCEED; their outputs exist."""
    [dataset] = [p.parent for p in submitted_prepare.store.glob("*/manifest.json")]
    runs = tmp_path / "runs"
    config = _experiment(
        tmp_path, data={"dataset": str(dataset), "split": "manifest", "sequence_length": 5},
        optim={"batch_size": 4, "max_steps": 4, "validate_every": 2},
        # Two workers of half a CPU each leave a CPU of the 2-CPU head for Ray Data's reads.
        scaling={"num_workers": 2, "cpus_per_worker": 0.5, "use_gpu": False, "max_failures": 0},
        storage={"uri": str(runs), "name": "submitted-tiny"})
    code, out, err = _run_cli(capsys, "submit", "train", str(config), "--set", "optim.lr=0.002",
                              "--env", "DS_ACCELERATOR=cpu", "--address", ray_head.address)
    assert code == 0, err
    train_id = out.strip().splitlines()[-1]
    log, status = _follow(capsys, ray_head.address, train_id)
    assert "SUCCEEDED" in status
    run_uri = log.strip().splitlines()[-1]  # `somnray train` prints the run's URI last
    assert run_uri.endswith("submitted-tiny"), log[-2000:]
    run = Path(run_uri.removeprefix("file://"))
    assert (run / "model" / "model.pt").is_file() and (run / "model" / "model.json").is_file()
    info = ray_head.client().get_job_info(train_id)
    assert info.metadata["somnray_command"] == "train"
    # The --set override travelled with the submission into the run's resolved config.
    assert yaml.safe_load((run / "config.yaml").read_text())["phases"][0]["optim"]["lr"] == 0.002

    night = sorted(submitted_prepare.cohort.glob("*-PSG.edf"))[-1]
    scored = tmp_path / "scored"
    code, out, err = _run_cli(capsys, "submit", "score", run_uri, str(night), "--out", str(scored),
                              "--workers", "1", "--no-progress", "--address", ray_head.address)
    assert code == 0, err
    score_id = out.strip().splitlines()[-1]
    log, status = _follow(capsys, ray_head.address, score_id)
    assert "SUCCEEDED" in status
    [night_dir] = [p for p in scored.iterdir() if p.is_dir()]
    assert night_dir.name == night.name.split("-")[0]  # named by recording id
    assert (night_dir / f"{night_dir.name}_hypnogram.csv").is_file()
    assert (scored / "cohort_summary.csv").is_file()


@pytest.mark.integration
def test_jobs_stop_and_unknown_id(ray_head, capsys):
    """A running job can be stopped; an unknown job id is an error naming it."""
    client = ray_head.client()
    job_id = client.submit_job(entrypoint="sleep 60")
    code, out, _ = _run_cli(capsys, "jobs", "stop", job_id, "--address", ray_head.address)
    assert code == 0 and job_id in out
    assert sub.wait(client, job_id, poll_s=0.5, timeout_s=60) == "STOPPED"
    code, _, err = _run_cli(capsys, "jobs", "status", "raysubmit_doesnotexist", "--address", ray_head.address)
    assert code == 1 and "raysubmit_doesnotexist" in err
