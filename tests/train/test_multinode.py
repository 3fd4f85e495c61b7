"""Two-node training: a ``ray.cluster_utils.Cluster`` of two nodes on 127.0.0.1, one DeepSpeed worker on each.

The cluster runs in a child process (the script below) so that the session's ``ray_local`` cluster
and this process's ``ray.init`` state are untouched. Both "nodes" are on this machine, so a local
folder is storage they share, as an NFS mount or an object store would be on a real cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from prepared_factory import write_dataset  # tests/train is on sys.path (no package)
from run_factory import write_config

SCRIPT = textwrap.dedent('''
    """Start a 2-node cluster, train 2 workers with STRICT_SPREAD, report where they ran."""
    import json, os, socket, sys, traceback
    # Both nodes keep their sessions, and Ray its "current cluster" record, in $RAY_TMPDIR/ray (set
    # by the test): apart from the test session's /tmp/ray, which a fresh machine does not even have.
    os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"), exist_ok=True)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["DS_ACCELERATOR"] = "cpu"
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from somnray.train.config import load_experiment
    from somnray.train.driver import run_experiment

    config, out = sys.argv[1], sys.argv[2]
    common = dict(node_ip_address="127.0.0.1", num_cpus=2, object_store_memory=200 * 2**20)
    # Each node: one CPU for its training worker, one for Ray Data reads (and the controller).
    # Its own dashboard port: the default 8265 is taken by any other Ray instance on the machine
    # (the test session's own), which made this test fail inside the full suite.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        common, include_dashboard=True, dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port))
    try:
        cluster.add_node(**common)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        results = run_experiment(load_experiment(config))  # scaling.placement_strategy: STRICT_SPREAD
        workers = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                              limit=100)
        json.dump({"nodes": nodes, "worker_nodes": [w.node_id for w in workers],
                   "checkpoint_uri": results[-1].checkpoint_uri, "metrics": results[-1].metrics},
                  open(out, "w"))
    except BaseException:
        # Ray's shutdown logs can bury a traceback on stderr: keep it where the test reads it.
        open(out + ".error", "w").write(traceback.format_exc())
        raise
    finally:
        ray.shutdown()
        cluster.shutdown()
''')


def _worker_errors(ray_tmp: Path, limit: int = 6000) -> str:
    """Tails of the Ray worker and raylet logs that mention an error: why a worker died, for CI's record."""
    parts = []
    for log in sorted(ray_tmp.glob("ray/session_*/logs/*")):
        if log.suffix not in (".err", ".out", ".log") or not log.is_file():
            continue
        text = log.read_text(errors="replace")
        if any(word in text for word in ("Traceback", "Error", "SIGSEGV", "killed")):
            parts.append(f"[{log.name}]\n" + text[-1500:])
    return "\n".join(parts)[-limit:]


@pytest.mark.integration
def test_two_nodes_one_worker_each_shared_checkpoints(tmp_path: Path) -> None:
    """STRICT_SPREAD puts one of the 2 workers on each node; both ranks' checkpoint shards land in shared storage."""
    data = tmp_path / "prepared"
    write_dataset(data)
    cfg = write_config(tmp_path / "exp.yaml", dataset=str(data), storage_uri=str(tmp_path / "shared"), name="mn",
                       data={"dataset": str(data), "split": "manifest", "sequence_length": 5, "shuffle_buffer": 8},
                       optim={"batch_size": 4, "max_steps": 4, "validate_every": 2},
                       deepspeed={"zero_stage": 2, "precision": "fp32"},
                       scaling={"num_workers": 2, "use_gpu": False, "max_failures": 0,
                                "placement_strategy": "STRICT_SPREAD"})
    script = tmp_path / "two_nodes.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.json"
    # A short folder under /tmp: Ray's unix sockets live in it and their paths are limited to 107 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([sys.executable, str(script), str(cfg), str(out)], capture_output=True, text=True,
                              env=env, timeout=900)
        if proc.returncode != 0:
            error = out.with_name(out.name + ".error")
            pytest.fail("two-node run failed\n--- traceback\n" + (error.read_text() if error.exists() else "")
                        + "\n--- stderr (tail)\n" + proc.stderr[-4000:]
                        + "\n--- Ray worker errors\n" + _worker_errors(Path(ray_tmp)), pytrace=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    report = json.loads(out.read_text())
    assert len(set(report["nodes"])) == 2
    assert len(report["worker_nodes"]) == 2 and set(report["worker_nodes"]) == set(report["nodes"])
    ckpt = Path(report["checkpoint_uri"].removeprefix("file://"))
    assert ckpt.is_relative_to(tmp_path / "shared" / "mn")
    # ZeRO-2 partitions the optimizer state: each rank wrote its own shard into the one checkpoint.
    shards = sorted(p.name for p in (ckpt / "state").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert (ckpt / "model.pt").is_file() and report["metrics"]["step"] in (2, 4)
    assert (tmp_path / "shared" / "mn" / "model" / "model.json").is_file()
