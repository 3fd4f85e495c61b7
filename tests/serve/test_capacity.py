"""The scoring service's capacity: cohort jobs beside the replicas on 2 CPUs, cancelling a job,
and an overloaded ingress answering 503 with Retry-After.

One application is deployed for the module on the session's 2-CPU cluster with the replicas' CPU
settings left at their defaults (what ``somnray serve`` uses), so the replicas hold CPUs that a
cohort job's tasks and actors must not wait for.  Registry and config logic without Ray are
tested at the bottom.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from loopback import free_port  # tests/ is on sys.path (conftest.py)
from scoring_factory import copy_cohort  # tests/serve is on sys.path

from somnray.serve.config import ServeConfig
from somnray.serve.jobs import CANCELLED, RUNNING, CohortJobs, cohort_cpu_share

TOKEN = "capacity-token-77"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Scoring requests the ingress runs at once in this module's service, and that may wait.
SCORING_SLOTS, WAITING = 2, 1


@dataclass
class Service:
    url: str
    port: int
    app_name: str
    root: Path
    manifest: Path
    psg: Path


@pytest.fixture(scope="module")
def service(ray_local, synth_cohort, tmp_path_factory):
    """The app with default replica CPUs, 2 scoring slots and 1 waiting place, one storage root
    holding a cohort."""
    from ray import serve

    from somnray.models import create_model
    from somnray.models.bundle import save_bundle
    from somnray.serve.app import build_app

    root = tmp_path_factory.mktemp("capacity")
    bundle = save_bundle(create_model("coresleep_tiny"), root / "bundle", name="coresleep_tiny",
                         sequence_length=10, extra={"profile": "sleep-edf"})
    cohort = copy_cohort(synth_cohort("sleep-edf", n_nights=2, hours=1.0).path, root / "cohort")
    port = free_port()
    config = ServeConfig(run_uri=str(bundle), port=port, token=TOKEN, storage_roots=(str(root),),
                         max_concurrent_requests=SCORING_SLOTS, max_waiting_requests=WAITING,
                         device="cpu", precision="fp32")
    assert config.replica_cpus() == pytest.approx(1.1)  # the defaults under test
    app_name = "somnray-capacity"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(config), name=app_name, route_prefix="/")
        yield Service(url=f"http://127.0.0.1:{port}", port=port, app_name=app_name, root=root,
                      manifest=cohort / "manifest.csv",
                      psg=next(p for p in sorted(cohort.rglob("*.edf")) if "PSG" in p.name))
    finally:
        serve.shutdown()


def _follow(service: Service, job_id: str, until, deadline_s: float = 240) -> dict:
    """Poll the job's status until ``until(doc)`` holds (or the deadline passes); the last status."""
    deadline = time.monotonic() + deadline_s
    while True:
        r = requests.get(f"{service.url}/v1/cohorts/{job_id}", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        if until(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


# -- cohort jobs -----------------------------------------------------------------------------------
@pytest.mark.integration
def test_cancelled_job_stops_its_work_on_the_cluster(service, ray_local):
    """A job stuck on a recording that never arrives (a FIFO nobody writes) shows no progress since
    its start; DELETE answers it `cancelled` at once and its actor leaves the cluster."""
    from ray.util.state import list_actors

    fifo = service.root / "cohort" / "never-written.edf"
    os.mkfifo(fifo)
    stuck = service.root / "cohort" / "stuck.csv"
    stuck.write_text("recording_id,subject_id,psg,hypnogram,profile,split\n"
                     "stuck-1,s1,never-written.edf,,sleep-edf,\n")
    try:
        r = requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                          json={"manifest_uri": str(stuck), "output_uri": f"file://{service.root}/out-stuck"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        doc = _follow(service, job_id, lambda d: d["total"] == 1, deadline_s=120)
        assert doc["status"] == RUNNING and doc["total"] == 1 and doc["done"] == 0, doc
        # Stuck is visible: nothing finished since the run began.
        assert doc["started_at"] >= doc["submitted_at"] and doc["last_progress_at"] >= doc["started_at"]

        gone = requests.delete(f"{service.url}/v1/cohorts/{job_id}", headers=AUTH, timeout=30)
        assert gone.status_code == 200, gone.text
        assert gone.json()["status"] == CANCELLED and gone.json()["finished_at"] is not None
        assert requests.get(f"{service.url}/v1/cohorts/{job_id}", headers=AUTH,
                            timeout=30).json()["status"] == CANCELLED
        missing = requests.delete(f"{service.url}/v1/cohorts/cohort-nosuchjob", headers=AUTH, timeout=30)
        assert missing.status_code == 404 and missing.json()["detail"] == "no cohort job 'cohort-nosuchjob'"
        assert requests.delete(f"{service.url}/v1/cohorts/{job_id}", timeout=30).status_code == 401
        _cli_sees_the_cancelled_job(service, job_id)

        def alive_runs() -> list:
            return [a for a in list_actors(address=ray_local.address, filters=[("state", "=", "ALIVE")],
                                           limit=1000) if a.class_name == "CohortRun"]
        deadline = time.monotonic() + 60
        while alive_runs() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert alive_runs() == []
    finally:
        # Whatever still waits on the FIFO gets end-of-file and lets go.
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody has it open for reading
            pass


def _cli_sees_the_cancelled_job(service: Service, job_id: str) -> None:
    """`somnray cohorts` reads the job as cancelled (exit 1) and names an unknown one's 404."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "CAPACITY_TOKEN": TOKEN}
    cli = [sys.executable, "-m", "somnray.jobs", "cohorts"]
    status = subprocess.run([*cli, "status", job_id, "--url", service.url, "--token-env", "CAPACITY_TOKEN"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 1 and json.loads(status.stdout)["status"] == CANCELLED, status.stderr
    again = subprocess.run([*cli, "cancel", "cohort-nosuchjob", "--url", service.url, "--token-env",
                            "CAPACITY_TOKEN"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stderr == (
        f"somnray cohorts: error: {service.url}/v1/cohorts/cohort-nosuchjob: 404 no cohort job "
        "'cohort-nosuchjob'\n")


@pytest.mark.integration
def test_cohort_job_finishes_beside_replicas_holding_cpus(service):
    """With the replicas' default CPUs on a 2-CPU cluster, a cohort job runs on what they leave
    free and finishes, its progress times in order."""
    out = service.root / "out-ok"
    r = requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                      json={"manifest_uri": str(service.manifest), "output_uri": f"file://{out}"})
    assert r.status_code == 202, r.text
    doc = _follow(service, r.json()["job_id"], lambda d: d["status"] != RUNNING)
    assert doc["status"] == "succeeded", doc
    assert doc["done"] == doc["total"] == 2 and doc["failed"] == 0
    assert doc["submitted_at"] <= doc["started_at"] <= doc["last_progress_at"] <= doc["finished_at"]
    assert len(list(out.rglob("*_sleep_stats.json"))) == 2


# -- backpressure ----------------------------------------------------------------------------------
def _held_upload(service: Service) -> tuple[socket.socket, bytes]:
    """Start a POST /v1/score whose body stops halfway; returns the socket and the rest to send."""
    boundary = "capacityboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"n.edf\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + service.psg.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=60)
    sock.sendall((f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                 + body[:len(body) // 2])
    return sock, body[len(body) // 2:]


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body of the HTTP answer on ``sock``."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body.decode(errors="replace")


@pytest.mark.integration
def test_overloaded_ingress_answers_503_with_retry_after_at_once(service):
    """With every scoring slot held by an upload that has not finished arriving and the waiting
    place taken, one more upload is answered 503 with Retry-After while the others still wait,
    cohort-job requests are still answered (separate capacity), and the held and waiting uploads
    are all scored once their bodies arrive."""
    import json

    held = [_held_upload(service) for _ in range(SCORING_SLOTS + WAITING + 1)]
    try:
        # No upload can finish while its body is incomplete, so the only answer that can come is
        # the refusal of the one upload beyond the slots (whichever reached the ingress last).
        readable, _, _ = select.select([s for s, _ in held], [], [], 120)
        assert len(readable) == 1, f"{len(readable)} answers while every upload is incomplete"
        status, headers, body = _answer(readable[0])
        assert status == 503 and headers["retry-after"] == "5", (status, headers, body)
        assert json.loads(body)["detail"] == (
            f"the service is busy: {SCORING_SLOTS} scoring requests are in progress and {WAITING} waiting "
            "on this replica (ServeConfig.max_concurrent_requests); retry in 5 s")
        other = requests.get(f"{service.url}/v1/cohorts/cohort-notajob", headers=AUTH, timeout=30)
        assert other.status_code == 404, other.text  # cohort calls have their own slots

        waiting = [(s, rest) for s, rest in held if s is not readable[0]]
        assert select.select([s for s, _ in waiting], [], [], 0)[0] == []
        for sock, rest in waiting:
            sock.sendall(rest)
        answers = [_answer(sock) for sock, _ in waiting]
        assert [a[0] for a in answers] == [200] * (SCORING_SLOTS + WAITING), [a[2][:300] for a in answers]
    finally:
        for sock, _ in held:
            sock.close()


# -- without Ray -------------------------------------------------------------------------------
def test_cohort_cpu_share_splits_what_the_replicas_leave():
    """A job's CPU share is the cluster minus the replicas, per job slot, never negative."""
    assert cohort_cpu_share(2.0, 1.1, 2) == pytest.approx(0.45)
    assert cohort_cpu_share(8.0, 2.0, 3) == pytest.approx(2.0)
    assert cohort_cpu_share(1.0, 1.5, 2) == 0.0


def test_pool_plan_fits_one_prepare_task_and_the_actors_in_the_budget():
    """A budget below two CPUs is split so that a prepare task and every actor fit in it; two or
    more CPUs keep a whole CPU for preparing, one actor per CPU sharing the rest."""
    from somnray.serve.cohort import _plan_pool

    small = _plan_pool(None, 10, {"CPU": 2.0}, cpus=0.45)
    assert small.actors == 1 and small.prepare_cpus + small.actors * small.actor_cpus <= 0.45
    assert small.prepare_cpus > 0 and small.actor_cpus > 0
    plan = _plan_pool(None, 10, {"CPU": 2.0})
    assert (plan.actors, plan.actor_cpus, plan.prepare_cpus) == (2, 0.5, 1.0)
    many = _plan_pool(3, 10, {"CPU": 8.0}, cpus=1.5)
    assert many.prepare_cpus + many.actors * many.actor_cpus <= 1.5
    assert _plan_pool(None, 10, {"CPU": 8.0, "GPU": 2}).actors == 2


def test_cpu_actors_thread_over_the_whole_budget():
    """On CPUs the actors' torch threads use every CPU of the run, the one kept for preparing
    included (it is busy a few percent of the time): one actor per CPU with one thread by default,
    fewer actors with more threads each when capped; never fewer than one; GPUs keep Ray's."""
    from somnray.serve.cohort import _plan_pool

    two = _plan_pool(None, 10, {"CPU": 2.0})
    assert (two.actors, two.threads) == (2, 1)
    assert _plan_pool(1, 10, {"CPU": 2.0}).threads == 2
    eight = _plan_pool(None, 10, {"CPU": 8.0})
    assert eight.actors * eight.threads == 8
    assert _plan_pool(None, 10, {"CPU": 2.0}, cpus=0.45).threads == 1
    assert _plan_pool(None, 10, {"CPU": 8.0, "GPU": 2}).threads is None


def test_registry_cancels_a_running_job_and_ignores_its_late_result():
    """Cancelling a running job marks it cancelled at once, frees its slot, and the result its run
    returns later does not turn it into a success; finished and unknown jobs are left alone."""
    release = threading.Event()

    class Result:
        total, scored, skipped, rejected, rejects, out_uri = 1, 1, 0, 0, [], "file:///out"
        domain_shifts: list = []

    def runner(run_uri, manifest, out, options):
        release.wait(10)
        return Result()

    jobs = CohortJobs("file:///run", max_running=1, runner=runner)
    job = jobs.submit("m.csv", "file:///out")
    assert jobs.submit("m2.csv", "file:///out2") is None
    st = jobs.cancel(job)
    assert st["status"] == CANCELLED and st["finished_at"] >= st["started_at"]
    second = jobs.submit("m2.csv", "file:///out2")  # the slot is free again
    assert second is not None
    release.set()
    deadline = time.monotonic() + 10
    while jobs.status(second)["status"] == RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.status(second)["status"] == "succeeded"
    assert jobs.status(job)["status"] == CANCELLED
    assert jobs.cancel(second)["status"] == "succeeded"
    assert jobs.cancel("nope") is None


def test_cohorts_cli_names_a_service_that_does_not_answer(capsys):
    """`somnray cohorts` against a port nobody listens on: one line naming the URL, exit 1."""
    from somnray.jobs.cli import main

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["cohorts", "cancel", "cohort-1", "--url", url]) == 1
    # Only the command's own lines: the session's Ray workers may log to this process's stderr too.
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("somnray ")]
    assert err == [f"somnray cohorts: error: {url}/v1/cohorts/cohort-1: the service did not answer "
                   "([Errno 111] Connection refused); is somnray serve running there?"]


def test_serve_cli_defaults_are_the_config_defaults():
    """`somnray serve`'s replica, job and backpressure flags default to ServeConfig's own defaults."""
    from somnray.jobs.cli import build_parser

    args = build_parser().parse_args(["serve", "runs/r"])
    fields = ServeConfig.model_fields
    pairs = {"model_cpus": "model_num_cpus", "model_threads": "model_threads", "preprocess_cpus": "preprocess_num_cpus",
             "ingress_cpus": "ingress_num_cpus", "cohort_cpus": "cohort_num_cpus",
             "max_cohort_jobs": "max_cohort_jobs", "max_concurrent_requests": "max_concurrent_requests",
             "max_waiting_requests": "max_waiting_requests",
             "max_queued_requests": "ingress_max_queued_requests", "retry_after": "retry_after_s"}
    assert {flag: getattr(args, flag) for flag in pairs} == {f: fields[c].default for f, c in pairs.items()}


def test_model_replicas_use_their_nodes_cpus_unless_told():
    """A CPU model replica gets the node's CPUs divided by the model replicas, at least one thread;
    --model-threads overrides (Ray alone would give a replica reserving 0.5 CPU one thread)."""
    default = ServeConfig(run_uri="x")
    assert default.model_threads is None
    assert [default.model_replica_threads(cpus) for cpus in (1, 2, 3, 8)] == [1, 2, 3, 8]
    two = ServeConfig(run_uri="x", model_replicas=2)
    assert [two.model_replica_threads(cpus) for cpus in (1, 2, 3, 8)] == [1, 1, 1, 4]
    told = ServeConfig(run_uri="x", model_replicas=2, model_threads=3)
    assert told.model_replica_threads(8) == 3
    from somnray.jobs.cli import build_parser

    assert build_parser().parse_args(["serve", "runs/r", "--model-threads", "5"]).model_threads == 5


def test_config_refuses_a_zero_queue_limit():
    """A queue limit of 0 is refused with what is allowed (Serve takes -1 or at least 1)."""
    from somnray.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        ServeConfig.from_mapping({"run_uri": "x", "ingress_max_queued_requests": 0})
    assert err.value.errors == ["ingress_max_queued_requests: must be at least 1, "
                                "or -1 for no limit, got 0"]
