"""Keep a loopback-only scoring service on loopback: the replicas' internal gRPC port included.

Ray Serve 2.60 replicas start an inter-deployment gRPC server bound to ``[::]:0`` (every
interface; the address is hard-coded in ``ray/serve/_private/replica.py``), whatever the HTTP
options say. For a service on a shared host that is a port anyone on the network can reach.

When the service listens on a loopback address, every deployment of the app calls
:func:`bind_replica_grpc_to_loopback` in its constructor, which Serve runs in the replica's process
before it starts that server (``Replica.initialize``: the user callable first, then
``_on_initialized``); the server is then bound to ``127.0.0.1:0``. (A ``worker_process_setup_hook``
in the deployments' runtime env would be the natural place, but Ray 2.60 honours that field only
in a job-level runtime env.)
Nothing changes for a service on a routable address (a Kubernetes pod, a cluster spanning
hosts): there the port is needed across nodes, and the pod network or a firewall is what limits it.

The rebinding touches one private name of Ray (``add_port_to_grpc_server`` as the replica module
imported it). If a Ray release no longer has it, a warning is logged and Ray's binding stays as
it is, so serving never breaks because of it.
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger(__name__)

#: The address Ray 2.60 binds the replicas' inter-deployment gRPC server to.
_ANY_INTERFACE = "[::]:0"
_LOOPBACK = "127.0.0.1:0"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) only reaches this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_replica_grpc_to_loopback() -> bool:
    """Bind this process's Serve replica internal gRPC server to 127.0.0.1 (call in a deployment's constructor).

    Returns
    -------
    bool
        True when the binding was redirected, False when this Ray has no such binding to redirect
        (a warning is logged and Ray's own binding stays).
    """
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover - ray[serve] is a dependency
        return False
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None:
        log.warning("somnray: this Ray Serve has no replica add_port_to_grpc_server; the replicas' internal "
                    "gRPC port keeps Ray's own binding (see docs/serving.md)")
        return False
    if getattr(original, "_somnray_loopback", False):
        return True

    def add_port(server, address: str):
        # Only the all-interfaces binding is redirected; any other address Ray chooses stays.
        return original(server, _LOOPBACK if address == _ANY_INTERFACE else address)

    add_port._somnray_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
    return True


def restrict_replica_ports(host: str) -> None:
    """In a replica's constructor: keep its internal gRPC port on loopback if the service's ``host`` is."""
    if is_loopback(host):
        bind_replica_grpc_to_loopback()


__all__ = ["bind_replica_grpc_to_loopback", "is_loopback", "restrict_replica_ports"]
