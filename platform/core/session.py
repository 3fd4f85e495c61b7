"""The one way somnray connects to Ray.

Every entry point (prepare, train, tune, evaluate, score, serve, the benchmarks) calls
:func:`ensure_ray`, so the rules live here once:

* ``RAY_ADDRESS`` set: join that cluster (a ``ray start`` head, a KubeRay pod, a submitted job).
* otherwise: start a local instance that listens on, and advertises, 127.0.0.1 only.  Ray binds
  every interface and advertises the machine's address by default, even when 127.0.0.1 is passed
  somewhere; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and an explicit node address keep it on
  loopback.
* token authentication: Ray 2.60 turns it on by default for new clusters; a client of such a
  cluster needs ``RAY_AUTH_MODE=token`` and the token, which Ray reads from its own environment
  variables and files. somnray passes the caller's environment through untouched.
* a local instance it starts is stopped at exit, every process of it: :func:`shutdown_ray` (also
  registered with ``atexit``) ends the agents Ray's raylet started, which would otherwise keep
  listening for a minute or more after the raylet is gone.
* a local instance's dashboard gets a free loopback port, named to every worker in
  ``RAY_API_SERVER_ADDRESS`` (:func:`own_dashboard`): Ray's own actors query the State API
  without an address, which fails when a second Ray instance runs on the machine.
* the variables in :data:`FORWARDED_ENV` (the architecture plugin modules) join the session's
  runtime environment, so every task and actor of the session sees them as the driver does:
  Ray Train workers, Ray Data actors, and Serve replicas (``serve.run`` gives them the job's
  runtime environment). Ray workers do not inherit the driver's environment: they are started
  by the node's raylet, which on a cluster (or a local instance started earlier) never saw it.
  Inside a job submitted with ``somnray submit`` the job's own runtime environment already
  carries them (``--env``).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from typing import Any

from .constants import MODEL_MODULES_ENV

#: Driver environment variables every worker of a session must see.
FORWARDED_ENV: tuple[str, ...] = (MODEL_MODULES_ENV,)
#: Set by Ray in the driver of a submitted job (``ray._private.runtime_env.constants``).
_SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: Seconds the processes of a stopped local instance get to exit before they are terminated.
EXIT_GRACE_S = 5.0

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None, *, include_dashboard: bool = True,
               temp_dir: str | None = None, log_to_driver: bool = True,
               runtime_env: dict[str, Any] | None = None) -> bool:
    """Connect to Ray once per process.

    Parameters
    ----------
    num_cpus : int, optional
        CPUs of a local instance (default: all); ignored when joining a cluster.
    include_dashboard : bool
        Start the dashboard of a local instance (on 127.0.0.1).  Ray Train and the State API need
        it; benchmarks leave it off to measure only the work.
    temp_dir : str, optional
        Session folder of a local instance (default: Ray's).  Keep it short: Unix socket paths are
        limited to about 100 characters.
    log_to_driver : bool
        Forward worker output to this process.
    runtime_env : dict, optional
        Ray runtime environment for every task and actor of the session; the variables of
        :data:`FORWARDED_ENV` set here are added to its ``env_vars``.

    Returns
    -------
    bool
        True when this call started or joined Ray (the caller owns the session and may shut it
        down), False when Ray was already initialised.
    """
    import ray

    if ray.is_initialized():
        return False
    runtime_env = session_runtime_env(runtime_env)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, runtime_env=runtime_env)
        _exit_cleanly_on_sigterm()
        return True
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    dashboard_port, runtime_env = own_dashboard(runtime_env) if include_dashboard else (None, runtime_env)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard,
             dashboard_host="127.0.0.1", dashboard_port=dashboard_port, _node_ip_address="127.0.0.1",
             _temp_dir=temp_dir, log_to_driver=log_to_driver, runtime_env=runtime_env)
    # Registered after ray.init, so it runs before Ray's own exit hook (atexit runs last-in first).
    atexit.register(shutdown_ray)
    _exit_cleanly_on_sigterm()
    return True


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM end this process through ``sys.exit``: ``finally`` blocks and ``atexit`` run.

    Ray's core worker installs a crash handler that turns SIGTERM into a stack dump and an abort,
    so a service manager stopping a driver would skip every clean-up and leave its local instance
    (Serve's controller and replicas, the agents, the dashboard) running.  A handler can only be
    set from the main thread; elsewhere Ray's stays.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # the shell's convention for "ended by signal N"


def shutdown_ray() -> None:
    """``ray.shutdown()``, then end what is left of a local instance this process started.

    ``ray.shutdown`` stops the processes the driver started (GCS, raylet, dashboard), but the
    raylet's own children — the dashboard agent and the runtime-env agent — notice only a minute or
    more later and keep their ports meanwhile.  Their ids are taken before the shutdown, from this
    instance's own process tree, so nothing else on the machine is touched.  Joining a cluster
    (``RAY_ADDRESS``) leaves its processes alone; without Ray initialised this does nothing.
    """
    import ray

    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)
    started = [info.process.pid for infos in (node.all_processes.values() if node is not None else ())
               for info in infos if info.process is not None]
    descendants = _descendants(started)
    ray.shutdown()
    _end(descendants)


def _descendants(pids: list[int]) -> list[Any]:
    """Every live process below ``pids`` (psutil handles, so a reused id is never mistaken)."""
    import psutil

    found = []
    for pid in pids:
        try:
            found.extend(psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def _end(processes: list[Any]) -> None:
    """Wait up to :data:`EXIT_GRACE_S` for ``processes`` to exit, then terminate, then kill them."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=EXIT_GRACE_S)
    for proc in alive:
        log.info("ending Ray process %d (%s), left after shutdown", proc.pid, proc.name())
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(alive, timeout=EXIT_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=EXIT_GRACE_S)


def node_cpus() -> float:
    """CPUs Ray gives the node this process runs on (the machine's count outside a Ray worker).

    A node's ``CPU`` resource is what the cluster was started with (``--num-cpus``, a pod's
    request), which is what work placed on it should size itself by, not the host's core count.
    """
    import ray

    if ray.is_initialized():
        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id and node.get("Alive"):
                return float(node.get("Resources", {}).get("CPU", 1.0))
    return float(os.cpu_count() or 1)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), for a server somnray starts itself."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Where Ray's State API looks first for the dashboard it asks (``ray.dashboard.utils``).
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def own_dashboard(runtime_env: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """A free loopback port for a local instance's dashboard, and ``runtime_env`` naming it.

    Ray's own actors ask the State API about the cluster without an address (Ray Train's
    ``PlacementGroupCleaner``, which removes a finished run's placement group): the API then
    scans the machine for Ray instances and fails when it finds two ("Found multiple active Ray
    instances"). The cleaner's thread dies, placement groups of finished trials stay reserved,
    and a population-based search on a small machine waits for ever for CPUs. With
    ``RAY_API_SERVER_ADDRESS`` in every worker's environment the API asks this instance's
    dashboard instead, whatever else runs on the machine. Pass the port as ``dashboard_port`` and
    the environment as ``runtime_env`` to ``ray.init``; the driver's own environment is left
    alone (a client in it may talk to another cluster).
    """
    port = free_loopback_port()
    merged = dict(runtime_env or {})
    merged["env_vars"] = {API_SERVER_ENV: f"http://127.0.0.1:{port}", **merged.get("env_vars", {})}
    return port, merged


def session_runtime_env(runtime_env: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """``runtime_env`` with the :data:`FORWARDED_ENV` variables of this process in its ``env_vars``.

    For callers that start Ray themselves (``ray.init(runtime_env=session_runtime_env())``); a
    variable ``runtime_env`` sets already wins. Inside a submitted job it is returned unchanged:
    the job's runtime environment reaches every worker, and Ray refuses a driver runtime
    environment that sets one of the job's variables again.
    """
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if not forwarded or _SUBMITTED_JOB_ENV in os.environ:
        return runtime_env
    merged = dict(runtime_env or {})
    merged["env_vars"] = {**forwarded, **merged.get("env_vars", {})}
    return merged
