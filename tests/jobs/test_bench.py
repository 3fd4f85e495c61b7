"""The benchmarks' methodology, checked without timing anything: threads, order, refusal, settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from somnray.jobs import bench_gpu, bench_score
from somnray.jobs.benchreport import machine_summary, peak_memory
from somnray.jobs.cli import main


def test_contestants_get_their_threads_before_the_interpreter_starts(monkeypatch):
    """Every thread variable is in the child's environment, so numpy/torch/numba read it at import."""
    seen = {}

    class Done:
        returncode, stderr = 0, ""
        stdout = json.dumps({"times": [1.0], "epochs": 10})

    def fake_run(cmd, env, **kwargs):
        seen.update(cmd=cmd, env=env)
        return Done()

    monkeypatch.setattr(bench_score.subprocess, "run", fake_run)
    out = bench_score.run_contestant({"name": "x", "kind": "yasa", "threads": 3})
    assert out == {"times": [1.0], "epochs": 10}
    assert seen["cmd"][:3] == [sys.executable, "-m", "somnray.jobs.bench_contestants"]
    assert {v: seen["env"][v] for v in bench_score.THREAD_VARIABLES} == dict.fromkeys(bench_score.THREAD_VARIABLES, "3")


def test_race_pools_every_round_and_shuffles_each_round(monkeypatch):
    """Each contestant runs once per round; rounds use different orders; all timed calls are kept."""
    order = []

    def fake_contestant(spec):
        order.append(spec["name"])
        return {"times": [len(order) * 1.0], "epochs": 100}

    monkeypatch.setattr(bench_score, "run_contestant", fake_contestant)
    specs = [{"name": n} for n in "abcdef"]
    pooled = bench_score.race(specs, rounds=4, seed=1)
    rounds = [order[i:i + 6] for i in range(0, 24, 6)]
    assert all(sorted(r) == list("abcdef") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # not one fixed order
    assert all(len(pooled[n]["times"]) == 4 for n in "abcdef")


def test_a_failed_contestant_is_an_error_with_its_stderr(monkeypatch):
    """A contestant that crashes stops the benchmark with its own error text, not a JSON error."""
    class Failed:
        returncode, stdout, stderr = 1, "", "ModuleNotFoundError: No module named 'yasa'"

    monkeypatch.setattr(bench_score.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError, match="contestant 'YASA' failed: ModuleNotFoundError"):
        bench_score.run_contestant({"name": "YASA", "kind": "yasa", "threads": 2})


def test_rows_report_median_spread_and_agreement():
    """A row gives the median of every timed call, its range, and the agreement of a bf16 run."""
    row = bench_score._row("somnray bf16", {"times": [3.0, 1.0, 2.0], "epochs": 500, "agreement": 0.995})
    assert row["median s"] == 2.0 and row["s per 1,000 epochs"] == 4.0
    assert row["detail"] == ("3 timed calls, 1.00–3.00 s; stage agreement with fp32 99.5% (random weights)")


def test_machine_line_names_the_cpu_and_its_arithmetic_flags():
    """Every benchmark result records the CPU model and which of the arithmetic flags it has."""
    info = machine_summary()
    assert info["cpu"] and "cpu_flags" in info
    assert info["torch"] == torch.__version__


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_bench_gpu_refuses_without_cuda(capsys):
    """Without CUDA, `somnray bench gpu` says so in one line and exits 1 before measuring anything."""
    code = main(["bench", "gpu", "--docs", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == ["somnray bench: error: no CUDA device is visible (torch.cuda.is_available() is False); "
                   "somnray bench gpu measures GPUs — run it on a machine with one"]


def test_gpu_plan_trains_bf16_zero2_one_worker_per_gpu():
    """The GPU run is the paper's MC²SleepNet batch per GPU, bf16, ZeRO-2, one Ray Train worker per GPU."""
    plan = bench_gpu.gpu_plan(4)
    exp = plan.experiment
    assert exp["deepspeed"] == {"zero_stage": 2, "precision": "bf16"}
    assert exp["scaling"]["num_workers"] == 4 and exp["scaling"]["use_gpu"] is True
    assert exp["optim"]["batch_size"] == 32 * 4 and exp["data"]["sequence_length"] == 21
    assert [c.name for c in plan.cases] == ["coresleep", "mc2sleepnet", "cimsleepnet"]
    assert [c.batch for c in plan.cases] == [16, 32, 64]


def test_gpu_plan_experiment_is_a_valid_training_config(tmp_path):
    """The experiment bench gpu would run validates as a somnray train config (with a GPU backend)."""
    import yaml

    from somnray.train.config import load_experiment
    from somnray.train.distributed import choose_backend

    exp = {**bench_gpu.gpu_plan(2).experiment, "storage": {"uri": str(tmp_path), "name": "g"}}
    exp["data"] = {**exp["data"], "dataset": str(tmp_path / "data")}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(exp))
    [phase] = load_experiment(path).phases
    assert phase.scaling.num_workers == 2 and phase.deepspeed.zero_stage == 2
    assert choose_backend("cuda") == "nccl"


def test_sub_manifest_keeps_the_header_and_the_first_nights(tmp_path):
    """A cohort size reads the first n rows of the synthetic cohort's manifest, header kept; asking
    for more nights than it lists is an error, not a silently smaller cohort."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("psg,hypnogram,subject\na.edf,a.txt,s1\nb.edf,b.txt,s2\nc.edf,c.txt,s3\n")
    two = bench_score.sub_manifest(manifest, 2)
    assert two.parent == tmp_path  # relative paths in it still resolve
    assert two.read_text() == "psg,hypnogram,subject\na.edf,a.txt,s1\nb.edf,b.txt,s2\n"
    with pytest.raises(ValueError, match="lists 3 nights, fewer than 4"):
        bench_score.sub_manifest(manifest, 4)


def test_peak_memory_counts_the_processes_a_run_starts():
    """The memory probe sums the whole process tree: a child holding ~200 MB raises the total peak
    well above this process's own while the driver's figure stays this process's."""
    hold = "import sys, time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"
    with peak_memory(every_s=0.05) as mem:
        child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "ready\n"
            own = mem["root_mib"]
            deadline = time.monotonic() + 30
            while mem["total_mib"] < own + 190 and time.monotonic() < deadline:
                time.sleep(0.05)  # wait for a sample taken while the child holds its memory
        finally:
            child.kill()
            child.wait()
    assert mem["total_mib"] >= mem["root_mib"] + 190
    assert mem["root_mib"] < mem["total_mib"]
