"""``somnray serve`` as the benchmarks run it: started in a child process on a fresh local Ray
instance (its own temp folder, a free loopback port, no token), ready once ``/healthz`` answers, and
stopped with SIGTERM as a service manager would stop it.

Used by ``somnray bench soak`` (many clients for minutes) and ``somnray bench score`` (one client,
the service path of the single-night race).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from somnray.core.session import free_loopback_port

from .benchreport import process_role, process_tree

#: Seconds the service gets to deploy before the benchmark gives up.
STARTUP_TIMEOUT_S = 300.0
#: Seconds the stopped service's processes get to exit before they are reported and killed.
EXIT_TIMEOUT_S = 30.0


@dataclass
class Service:
    """A running ``somnray serve``: its URL and process; ``stopped`` is filled in when it stops."""

    url: str
    proc: subprocess.Popen
    stopped: dict[str, Any] = field(default_factory=dict)


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    import requests

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"somnray serve exited with status {proc.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"somnray serve did not answer /healthz within {STARTUP_TIMEOUT_S:.0f} s")


def stop_service(proc: subprocess.Popen) -> dict[str, Any]:
    """SIGTERM the service; how long it took and which of its processes outlived it (then killed)."""
    import psutil

    started = process_tree(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=EXIT_TIMEOUT_S * 4)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stop_s = time.monotonic() - t0
    gone, alive = psutil.wait_procs(started, timeout=EXIT_TIMEOUT_S)
    left = []
    for p in alive:
        try:
            left.append(process_role(p.cmdline()))
            p.kill()  # a process this benchmark started, by its id
        except psutil.NoSuchProcess:
            continue
    return {"stop_s": stop_s, "left_running": sorted(left)}


@contextmanager
def served(bundle: Path, args: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[Service]:
    """Run ``somnray serve BUNDLE --port P --device cpu ARGS…`` for the ``with`` block.

    Parameters
    ----------
    bundle : Path
        The model bundle to serve.
    args : sequence of str
        Further ``somnray serve`` options.
    env : dict, optional
        The service's environment (default: this process's); ``RAY_ADDRESS`` and the token
        variable are always removed so that it starts its own Ray instance without auth.
    """
    work = Path(tempfile.mkdtemp(prefix="somnray-serve-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Unix socket paths are limited
    port = free_loopback_port()
    env = {k: v for k, v in (os.environ if env is None else env).items()
           if k not in ("RAY_ADDRESS", "SOMNRAY_SERVE_TOKEN")}
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    log_path = work / "serve.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "somnray.jobs", "serve", str(bundle),
                                     "--port", str(port), "--device", "cpu", *args],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        service = Service(f"http://127.0.0.1:{port}", proc)
        try:
            _wait_ready(service.url, proc, log_path)
            yield service
        finally:
            service.stopped = stop_service(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
