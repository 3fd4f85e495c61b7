"""A local Ray instance somnray starts leaves no process behind when the program exits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import psutil
import pytest

#: Starts a local instance the way every somnray command does, waits until the raylet's agents
#: run, prints the ids of every process of the instance, and exits normally (atexit shuts down).
_DRIVER = """
import json, sys, time
import psutil, ray
from somnray.core.session import ensure_ray

ensure_ray(1, temp_dir=sys.argv[1])
node = ray._private.worker._global_node
roots = [i.process.pid for infos in node.all_processes.values() for i in infos if i.process]
deadline = time.monotonic() + 120
while True:
    tree = [p for r in roots for p in psutil.Process(r).children(recursive=True)]
    agents = [p for p in tree if "agent" in " ".join(p.cmdline()).lower()]
    if len(agents) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps({"roots": roots, "tree": [p.pid for p in tree], "agents": len(agents)}), flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.integration
def test_program_exit_ends_every_process_of_its_local_ray_instance():
    """When a program that started a local instance exits, its GCS, raylet, dashboard and the agents
    the raylet started are all gone by the time the program has exited (none keeps a port open)."""
    temp_dir = tempfile.mkdtemp(prefix="rexit", dir="/tmp")  # short: Unix socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    try:
        proc = subprocess.run([sys.executable, "-c", _DRIVER, temp_dir], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        assert doc["agents"] == 2, doc  # the dashboard agent and the runtime-env agent ran
        left = [pid for pid in doc["roots"] + doc["tree"] if _alive(pid)]
        assert left == [], [" ".join(psutil.Process(p).cmdline())[:200] for p in left]
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
