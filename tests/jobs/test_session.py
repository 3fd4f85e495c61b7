"""The local Ray instance names its own dashboard to every worker, so Ray's own State API calls
(Ray Train's placement-group cleaner) never scan the machine for "the" Ray instance."""

from __future__ import annotations

import socket

from somnray.core.session import API_SERVER_ENV, own_dashboard


def test_own_dashboard_names_a_free_loopback_port_to_every_worker_and_keeps_other_variables() -> None:
    """The runtime environment gains RAY_API_SERVER_ADDRESS for the chosen port (free on 127.0.0.1);
    the variables it already had stay, and a caller's own API address wins."""
    port, env = own_dashboard({"env_vars": {"SOMNRAY_MODEL_MODULES": "my_plugin"}, "working_dir": "."})
    assert env["env_vars"] == {API_SERVER_ENV: f"http://127.0.0.1:{port}", "SOMNRAY_MODEL_MODULES": "my_plugin"}
    assert env["working_dir"] == "."
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nobody took it
    _, mine = own_dashboard({"env_vars": {API_SERVER_ENV: "http://10.0.0.1:8265"}})
    assert mine["env_vars"][API_SERVER_ENV] == "http://10.0.0.1:8265"
    assert own_dashboard(None)[1]["env_vars"].keys() == {API_SERVER_ENV}
