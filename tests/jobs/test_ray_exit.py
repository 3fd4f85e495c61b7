"""A local Ray instance somnray starts leaves no process behind when the program exits or is
stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import psutil
import pytest

#: Starts a local instance the way every somnray command does, waits until the raylet's agents
#: run, prints the ids of every process of the instance, then exits normally (``exit``) or waits
#: for a signal (``wait``).
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
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.integration
@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_program_end_ends_every_process_of_its_local_ray_instance(ending):
    """When a program that started a local instance exits, or a service manager stops it with
    SIGTERM, its GCS, raylet, dashboard and the agents the raylet started are all gone by the time
    the program has ended (none keeps a port open); SIGTERM ends it with status 143, not an abort."""
    temp_dir = tempfile.mkdtemp(prefix="rexit", dir="/tmp")  # short: Unix socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, temp_dir, "exit" if ending == "exit" else "wait"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the instance and its agents run
        assert line, proc.stderr.read()[-3000:]
        doc = json.loads(line)
        if ending == "sigterm":
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == (0 if ending == "exit" else 128 + signal.SIGTERM), err[-3000:]
        assert doc["agents"] == 2, doc  # the dashboard agent and the runtime-env agent ran
        left = [pid for pid in doc["roots"] + doc["tree"] if _alive(pid)]
        assert left == [], [" ".join(psutil.Process(p).cmdline())[:200] for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
