"""The scoring service end to end: Ray Serve on the session's local cluster, real HTTP on 127.0.0.1.

One application is deployed for the module (a tiny CoRe-Sleep bundle, synthetic Sleep-EDF-like
nights of 1 h); every test talks to it with ``requests``.  Registry and config logic without Ray
are tested at the bottom.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from loopback import free_port  # tests/ is on sys.path (conftest.py)

from somnray.serve.config import ServeConfig
from somnray.serve.jobs import FAILED, SUCCEEDED, CohortJobs

TOKEN = "test-token-4c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 12 * 1024 * 1024
LENGTH = 10  # the bundle's window length, in epochs
STAGES = ("W", "N1", "N2", "N3", "REM")


@dataclass
class Service:
    url: str
    app_name: str
    bundle: Path
    psg: Path
    psg_no_eog: Path
    manifest: Path
    out_root: Path

    def score(self, path: Path | None = None, *, data: bytes | None = None, headers=AUTH,
              timeout: float = 60, **fields) -> requests.Response:
        content = data if data is not None else (path or self.psg).read_bytes()
        return requests.post(f"{self.url}/v1/score", headers=headers, timeout=timeout,
                             files={"file": ("night.edf", content, "application/octet-stream")},
                             data=fields)


@pytest.fixture(scope="module")
def service(ray_local, synth_cohort, tmp_path_factory):
    """The app deployed once for the module (token required, two storage roots)."""
    from ray import serve

    from somnray.data.synth import ArtefactConfig
    from somnray.models import create_model
    from somnray.models.bundle import save_bundle
    from somnray.serve.app import build_app

    root = tmp_path_factory.mktemp("serve-app")
    bundle = save_bundle(create_model("coresleep_tiny"), root / "bundle", name="coresleep_tiny",
                         sequence_length=LENGTH, extra={"profile": "sleep-edf"})
    cohort = synth_cohort("sleep-edf", n_nights=2, hours=1.0)
    no_eog = synth_cohort("sleep-edf", n_nights=1, hours=1.0, seed=11,
                          artefacts=ArtefactConfig(missing_eog_fraction=1.0))
    out_root = root / "outputs"
    port = free_port()
    config = ServeConfig(
        run_uri=str(bundle), port=port, token=TOKEN, max_upload_bytes=MAX_UPLOAD,
        storage_roots=(str(cohort.path), f"file://{out_root}"),
        # Nothing reserved by the replicas: the cohort job's Ray Data tasks need the 2 CPUs.
        model_num_cpus=0, preprocess_num_cpus=0, ingress_num_cpus=0,
        max_batch_windows=64, batch_wait_timeout_s=0.05, cohort_workers=1,
        # fp32 so that answers can be compared with local scoring (auto picks bf16 on AMX CPUs).
        device="cpu", precision="fp32")
    app_name = "somnray-test"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(config), name=app_name, route_prefix="/")
        yield Service(url=f"http://127.0.0.1:{port}", app_name=app_name, bundle=bundle,
                      psg=cohort.path / cohort.entries[0].psg,
                      psg_no_eog=no_eog.path / no_eog.entries[0].psg,
                      manifest=cohort.manifest, out_root=out_root)
    finally:
        serve.shutdown()


class _Answer:
    """The parts of an http.client answer the 4xx checks read (``requests.Response``-like)."""

    def __init__(self, status: int, body: bytes, headers):
        self.status_code, self.text, self.headers = status, body.decode(errors="replace"), headers

    def json(self):
        return json.loads(self.text)


def _declare_large_body(service: Service) -> _Answer:
    """POST a short body that declares a Content-Length above the limit (refused unread)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(service.url.rsplit(":", 1)[1]), timeout=60)
    try:
        conn.putrequest("POST", "/v1/score")
        conn.putheader("Authorization", AUTH["Authorization"])
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(MAX_UPLOAD + 1))
        conn.endheaders(b"--x\r\n")
        resp = conn.getresponse()
        return _Answer(resp.status, resp.read(), dict(resp.getheaders()))
    finally:
        conn.close()


# -- scoring ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_score_returns_hypnogram_consistent_with_stats_and_local_scoring(service):
    """An uploaded night gets one stage per epoch, statistics matching them, and the probabilities
    the model gives when scored locally without Serve (so cross-request batching changes nothing)."""
    from somnray.scoring.scorer import Scorer
    from somnray.serve.inference import score_recording

    t0 = time.perf_counter()
    r = service.score(recording_id="night-a")
    latency = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    doc = r.json()
    n = doc["n_epochs"]
    assert n == 120 and doc["recording_id"] == "night-a"
    assert len(doc["hypnogram"]) == len(doc["stages"]) == len(doc["probabilities"]) == n
    probs = np.asarray(doc["probabilities"])
    assert probs.shape == (n, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert doc["stages"] == probs.argmax(axis=1).tolist()
    assert doc["hypnogram"] == [STAGES[s] for s in doc["stages"]]
    stats = doc["sleep_statistics"]
    stages = np.asarray(doc["stages"])
    assert stats["tst_min"] == pytest.approx(0.5 * np.isin(stages, [1, 2, 3, 4]).sum())
    assert stats["wake_min"] == pytest.approx(0.5 * (stages == 0).sum())
    assert stats["rem_min"] == pytest.approx(0.5 * (stages == 4).sum())
    assert set(doc["availability"]) == {"eeg", "eog"} and all(doc["availability"]["eeg"])
    assert set(doc["quality"]) >= {"unscored", "missing_modality", "low_confidence"}
    assert doc["modalities_used"][0] == "eeg+eog"
    assert doc["model"]["name"] == "coresleep_tiny"

    local = score_recording(Scorer.load(str(service.bundle), device="cpu", precision="fp32"),
                            service.psg, recording_id="night-a")
    np.testing.assert_allclose(probs, local.probabilities, atol=2e-4)
    # Lineage: the same weights and profile as local scoring, the upload's own SHA-256.
    assert doc["model"]["weights_sha256"] == local.model.weights_sha256 and doc["model"]["registered_model"] is None
    assert doc["lineage"]["input_sha256"] == hashlib.sha256(Path(service.psg).read_bytes()).hexdigest()
    assert doc["lineage"] == local.lineage
    print(f"\n[serve latency] one request: {latency * 1000:.0f} ms")


@pytest.mark.integration
def test_recording_without_eog_is_scored_and_flagged(service):
    """A night whose file has no EOG is scored from the EEG, every epoch flagged missing_modality."""
    r = service.score(service.psg_no_eog)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["recording_id"].startswith("upload-")  # generated, never from the file or header
    assert not any(doc["availability"]["eog"]) and all(doc["availability"]["eeg"])
    assert all(doc["quality"]["missing_modality"])
    assert set(doc["modalities_used"]) == {"eeg"}
    assert -1 not in doc["stages"]


@pytest.mark.integration
def test_bad_requests_get_4xx_and_service_keeps_serving(service):
    """Not EDF, truncated, missing channels, too large (declared or streamed), bad fields and bad
    tokens get the right 4xx with a message, and a good request afterwards still succeeds."""
    good = service.psg.read_bytes()
    cases = {
        "not edf": (service.score(data=b"this is not an EDF file" * 100), 422),
        # Cut inside the first data record: with complete records left it would be scored.
        "truncated": (service.score(data=good[: int(good[184:192]) + 100]), 422),
        "missing channels": (service.score(channel_map=json.dumps({"eeg": "Nope", "eog": "Nada"})), 422),
        "unknown profile": (service.score(profile="no-such-profile"), 400),
        "bad channel_map": (service.score(channel_map="{eeg: C4"), 400),
        "unused modality": (service.score(channel_map=json.dumps({"ecg": "ECG"})), 400),
        "bad stride": (service.score(stride=str(LENGTH + 1)), 400),
        "bad id": (service.score(recording_id="../escape"), 400),
        "too large": (_declare_large_body(service), 413),
        "no token": (service.score(headers={}), 401),
        "wrong token": (service.score(headers={"Authorization": "Bearer wrong"}), 401),
    }
    for name, (resp, expected) in cases.items():
        assert resp.status_code == expected, f"{name}: {resp.status_code} {resp.text[:300]}"
        detail = resp.json()["detail"]
        assert isinstance(detail, str) and detail and "Traceback" not in detail, name
    assert cases["no token"][0].headers["WWW-Authenticate"] == "Bearer"
    assert "upload " in cases["not edf"][0].json()["detail"]
    assert "no-such-profile" in cases["unknown profile"][0].json()["detail"]

    # A client that sends no Content-Length (chunked) is cut off by counting what arrives.
    def chunks():
        block = b"x" * (1024 * 1024)
        for _ in range(MAX_UPLOAD // len(block) + 4):
            yield block
    boundary = "somnraytestboundary"
    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.edf\"\r\n"
               f"Content-Type: application/octet-stream\r\n\r\n").encode()
        yield from chunks()
        yield f"\r\n--{boundary}--\r\n".encode()
    try:
        r = requests.post(f"{service.url}/v1/score", data=body(), timeout=60,
                          headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413, r.text[:300]
    except requests.ConnectionError:
        pass  # the server may close the connection while the client is still sending: also a cut-off
    r = service.score()
    assert r.status_code == 200, r.text


@pytest.mark.integration
def test_sixteen_concurrent_clients_all_succeed(service):
    """16 clients scoring at once all get complete 200 answers."""
    def one(i: int) -> tuple[int, int, float]:
        t0 = time.perf_counter()
        r = service.score(recording_id=f"concurrent-{i}", timeout=120)
        return r.status_code, len(r.json().get("stages", [])), time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    wall = time.perf_counter() - t0
    assert [(code, n) for code, n, _ in results] == [(200, 120)] * 16
    slowest = max(dt for *_, dt in results)
    print(f"\n[serve latency] 16 concurrent requests: wall {wall * 1000:.0f} ms, "
          f"slowest {slowest * 1000:.0f} ms")


@pytest.mark.integration
def test_model_deployment_batches_windows_across_requests(service):
    """Nights sent to the model deployment together share forward passes, and each still gets
    exactly the probabilities it gets alone; the replica runs on its node's two CPUs."""
    from ray import serve

    from somnray.data.profiles import load_profile
    from somnray.serve.app import PreparedNight
    from somnray.scoring.scorer import Scorer
    from somnray.serve.inference import prepare_for_scoring, scoring_profile

    model = Scorer.load(str(service.bundle), device="cpu", precision="fp32")
    rec = prepare_for_scoring(model, service.psg, recording_id="b0",
                              profile=scoring_profile(model, load_profile("sleep-edf")))
    available = np.stack([rec.available[m] for m in model.modalities], axis=1)
    signals = {m: rec.signals[m] for m in model.modalities}
    handle = serve.get_deployment_handle("StageModel", app_name=service.app_name)
    described = handle.describe.remote().result()
    # One model replica on the test's 2-CPU node: both cores score, although it reserves 0 CPUs.
    assert described["threads"] == 2
    before = described["batching"]
    # Same signals under 4 ids, with different strides: 12 or 111 windows each.
    nights = [PreparedNight(f"b{i}", rec.epoch_index, signals, available) for i in range(4)]
    responses = [handle.score.remote(n, stride) for n, stride in zip(nights, (None, None, None, 1))]
    results = [r.result() for r in responses]
    after = handle.describe.remote().result()["batching"]
    assert after["max_recordings_in_a_pass"] >= 2
    # 12 + 12 + 12 + 111 windows in chunks of at most 64: 5 chunks, 5 passes if run one by one.
    assert after["windows"] - before["windows"] == 3 * 12 + 111
    assert after["forward_passes"] - before["forward_passes"] < 5
    alone = handle.score.remote(nights[0], None).result()
    for res in results[:3]:
        np.testing.assert_allclose(res.night.probabilities, alone.night.probabilities, atol=1e-5)
    assert [r.night.recording_id for r in results] == ["b0", "b1", "b2", "b3"]


# -- cohort jobs -----------------------------------------------------------------------------------
@pytest.mark.integration
def test_cohort_job_runs_to_success_and_writes_outputs(service):
    """A cohort job started over HTTP is followed to `succeeded` with done == total and every
    night's outputs written; unknown job ids get 404."""
    out = f"file://{service.out_root}/job1"
    r = requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                      json={"manifest_uri": str(service.manifest), "output_uri": out})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["status_url"] == f"/v1/cohorts/{job_id}"
    deadline = time.monotonic() + 300  # generous: a shared 2-core machine may be busy
    while True:
        st = requests.get(f"{service.url}/v1/cohorts/{job_id}", headers=AUTH, timeout=30)
        assert st.status_code == 200, st.text
        doc = st.json()
        if doc["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert doc["status"] == "succeeded", doc
    assert doc["done"] == doc["total"] == 2 and doc["failed"] == 0 and doc["rejects"] == []
    written = sorted(p.name for p in (service.out_root / "job1").rglob("*_sleep_stats.json"))
    assert len(written) == 2
    assert (service.out_root / "job1" / "cohort_summary.csv").exists()

    missing = requests.get(f"{service.url}/v1/cohorts/cohort-doesnotexist", headers=AUTH, timeout=30)
    assert missing.status_code == 404
    assert requests.get(f"{service.url}/v1/cohorts/{job_id}", timeout=30).status_code == 401


@pytest.mark.integration
def test_cohort_uris_outside_storage_roots_are_refused(service, tmp_path):
    """Manifest or output URIs outside the configured roots get 403 naming the URI; malformed or
    missing ones 400; unknown body fields 422."""
    def post(body):
        return requests.post(f"{service.url}/v1/cohorts", headers=AUTH, json=body, timeout=30)

    outside = f"file://{tmp_path}/elsewhere"
    r = post({"manifest_uri": str(service.manifest), "output_uri": outside})
    assert r.status_code == 403 and outside in r.json()["detail"]
    r = post({"manifest_uri": "/etc/passwd", "output_uri": f"file://{service.out_root}/x"})
    assert r.status_code == 403 and "/etc/passwd" in r.json()["detail"]
    sneaky = f"file://{service.out_root}/../../etc"
    assert post({"manifest_uri": str(service.manifest), "output_uri": sneaky}).status_code == 403
    r = post({"manifest_uri": "s3:/bucket", "output_uri": f"file://{service.out_root}/x"})
    assert r.status_code == 400
    r = post({"manifest_uri": str(service.manifest.parent / "nope.csv"),
              "output_uri": f"file://{service.out_root}/x"})
    assert r.status_code == 400 and "does not exist" in r.json()["detail"]
    assert post({"manifest_uri": str(service.manifest), "output_uri": f"file://{service.out_root}/x",
                 "typo": 1}).status_code == 422


def _wait_for_job(service: Service, job_id: str, seconds: float = 75) -> requests.Response:
    """The job's status answer once it is no longer running (or the deadline passed)."""
    deadline = time.monotonic() + seconds
    while True:
        st = requests.get(f"{service.url}/v1/cohorts/{job_id}", headers=AUTH, timeout=30)
        if st.json()["status"] != "running" or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


@pytest.mark.integration
def test_cohort_rows_reaching_outside_the_roots_fail_the_job_unread(service, tmp_path):
    """A manifest inside a root whose rows name /etc/passwd, a ../ escape, a %-encoded escape, a
    symlink out of the root and a credentials file as profile fails before anything is opened: the
    status lists each row with one message and quotes nothing of the files outside."""
    from somnray.serve.cohort import OUTSIDE_ROOTS

    canary = "AKIA-SVCSEC-HTTP-CANARY"
    (tmp_path / "credentials").write_text(f"[default]\naws_access_key_id = {canary}\n")
    (tmp_path / "night.edf").write_bytes(service.psg.read_bytes())
    attacks = service.out_root / f"attacks-{tmp_path.name}"
    attacks.mkdir(parents=True)
    os.symlink(tmp_path / "night.edf", attacks / "link.edf")
    escape = os.path.relpath(tmp_path / "night.edf", attacks)
    (attacks / "manifest.csv").write_text(
        "recording_id,subject_id,psg,profile\n"
        f"passwd,s1,/etc/passwd,\ndots,s2,{escape},\nencoded,s3,{escape.replace('..', '%2e%2e')},\n"
        f"link,s4,link.edf,\ncreds,s5,link.edf,{tmp_path / 'credentials'}\n")
    r = requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                      json={"manifest_uri": str(attacks / "manifest.csv"),
                            "output_uri": f"file://{attacks}/scored"})
    assert r.status_code == 202, r.text
    st = _wait_for_job(service, r.json()["job_id"])
    doc = st.json()
    assert doc["status"] == "failed" and doc["done"] == 0, doc
    encoded = f"{attacks}/{escape.replace('..', '%2e%2e')}"
    assert doc["error"].splitlines()[1:] == [
        f"  - recording 'passwd': psg '/etc/passwd': {OUTSIDE_ROOTS}",
        f"  - recording 'dots': psg '{tmp_path / 'night.edf'}': {OUTSIDE_ROOTS}",
        f"  - recording 'encoded': psg '{encoded}': {OUTSIDE_ROOTS}",
        f"  - recording 'link': psg '{attacks / 'link.edf'}': {OUTSIDE_ROOTS}",
        f"  - recording 'creds': psg '{attacks / 'link.edf'}': {OUTSIDE_ROOTS}",
        f"  - recording 'creds': profile '{tmp_path / 'credentials'}': not a shipped profile "
        f"(generic, shhs, shhs-5463, shhs-5463-amplitude, sleep-edf, sleep-edf-20, sleep-edf-78) and {OUTSIDE_ROOTS}"]
    assert canary not in st.text and "root:" not in st.text
    assert not (attacks / "scored").exists()


@pytest.mark.integration
def test_cohort_uris_escaping_by_encoding_or_link_are_refused_alike(service, tmp_path):
    """A %-encoded ../ and a manifest symlinked out of the root get the 403 an outside path gets,
    whether the target exists or not."""
    def post(manifest: str, output: str) -> requests.Response:
        return requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                             json={"manifest_uri": manifest, "output_uri": output})

    links = service.out_root / f"links-{tmp_path.name}"
    links.mkdir(parents=True)
    (tmp_path / "m.csv").write_text(service.manifest.read_text())
    os.symlink(tmp_path / "m.csv", links / "there.csv")
    os.symlink(tmp_path / "missing.csv", links / "nowhere.csv")
    out = f"file://{links}/out"
    encoded = f"file://{service.out_root}/%2e%2e/elsewhere"
    answers = {uri: post(uri, out) for uri in (str(links / "there.csv"), str(links / "nowhere.csv"))}
    answers[encoded] = post(str(service.manifest), encoded)
    for uri, r in answers.items():
        name = "output_uri" if uri == encoded else "manifest_uri"
        assert (r.status_code, r.json()["detail"]) == (
            403, f"{name} {uri!r} is outside the storage roots this service may use"), r.text


@pytest.mark.integration
def test_answers_name_no_server_path_or_configuration(service, tmp_path):
    """/healthz, a score answer and a 403 say nothing of the bundle's path or the storage roots:
    the model is named by a fingerprint of its weights."""
    health = requests.get(f"{service.url}/healthz", timeout=30)
    scored = service.score(recording_id="no-paths")
    forbidden = requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                              json={"manifest_uri": str(service.manifest),
                                    "output_uri": f"file://{tmp_path}/out"})
    assert health.status_code == 200 and scored.status_code == 200 and forbidden.status_code == 403
    fingerprint = health.json()["model"]["checkpoint_uri"]
    assert fingerprint.startswith("sha256:") and len(fingerprint) == len("sha256:") + 16
    assert scored.json()["model"]["checkpoint_uri"] == fingerprint
    assert forbidden.json()["detail"] == (f"output_uri 'file://{tmp_path}/out' is outside the storage "
                                          "roots this service may use")
    for answer in (health, scored, forbidden):
        for server_path in (service.bundle, service.out_root, service.manifest.parent):
            assert str(server_path) not in answer.text, (server_path, answer.text)


# -- privacy ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_answers_outputs_and_logs_carry_no_edf_header_fields(service, ray_local):
    """The EDF's fake patient/recording header strings reach no answer, no cohort output and no
    Ray or Serve log; an upload without ``recording_id`` gets a generated ``upload-<uuid>`` id, not a header field."""
    from scoring_factory import identifying_hits

    from somnray.data.synth import SYNTH_IDENTIFYING_STRINGS

    upload = service.psg.read_bytes()
    assert any(s.encode() in upload for s in SYNTH_IDENTIFYING_STRINGS)  # not vacuous
    answers = [service.score(), service.score(recording_id="night-p")]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert answers[0].json()["recording_id"].startswith("upload-")
    assert answers[1].json()["recording_id"] == "night-p"
    bad = service.score(data=upload[:4000])  # a truncated header: the error text must not echo it
    assert bad.status_code in (400, 422), bad.text
    out = f"file://{service.out_root}/privacy"
    r = requests.post(f"{service.url}/v1/cohorts", headers=AUTH, timeout=30,
                      json={"manifest_uri": str(service.manifest), "output_uri": out})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 300  # generous: a shared 2-core machine may be busy
    while (st := requests.get(f"{service.url}/v1/cohorts/{r.json()['job_id']}", headers=AUTH,
                              timeout=30)).json()["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert st.json()["status"] == "succeeded", st.text
    for text in [a.text for a in answers] + [bad.text, st.text]:
        assert not [s for s in SYNTH_IDENTIFYING_STRINGS if s in text]
    assert identifying_hits(service.out_root / "privacy", SYNTH_IDENTIFYING_STRINGS) == []
    assert identifying_hits(ray_local.logs_dir, SYNTH_IDENTIFYING_STRINGS) == []


# -- health and description ------------------------------------------------------------------------
@pytest.mark.integration
def test_every_replica_port_listens_on_loopback_only(service, ray_local):
    """No Serve replica of a loopback service listens beyond 127.0.0.1 (Ray's internal gRPC port included)."""
    import ipaddress

    import psutil
    from ray.util.state import list_actors

    # The session's own cluster by address: without one the State API looks for a cluster on the
    # machine and refuses when another Ray instance runs beside the tests.
    replicas = [a for a in list_actors(address=ray_local.address, filters=[("state", "=", "ALIVE")],
                                       detail=True, limit=1000)
                if a.class_name.startswith(f"ServeReplica:{service.app_name}:")]
    assert {a.class_name.rsplit(":", 1)[1] for a in replicas} == {"ScoringIngress", "Preprocessor", "StageModel",
                                                                  "CohortJobs"}
    listening = {(a.class_name, c.laddr.ip, c.laddr.port) for a in replicas
                 for c in psutil.Process(a.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening, "the replicas were expected to hold their inter-deployment gRPC ports"
    def loopback(ip: str) -> bool:  # Ray's own servers bind 127.0.0.1 on dual-stack sockets: ::ffff:127.0.0.1
        addr = ipaddress.ip_address(ip)
        return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)

    assert all(loopback(ip) for _, ip, _ in listening), sorted(listening)
    assert service.score(recording_id="after-port-check").status_code == 200


def test_loopback_hosts_are_recognised():
    """The rebinding applies to loopback hosts only, never to a routable or all-interfaces one."""
    from somnray.serve.loopback import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.2.3", "192.168.0.4", "example.org"]))


@pytest.mark.integration
def test_healthz_and_openapi_describe_the_service(service):
    """/healthz (no token) reports the loaded model; /openapi.json documents every route, the
    multipart upload and the bearer scheme."""
    r = requests.get(f"{service.url}/healthz", timeout=30)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "ok" and doc["model"]["name"] == "coresleep_tiny"
    assert doc["model"]["sequence_length"] == LENGTH and doc["model"]["modalities"] == ["eeg", "eog"]
    assert doc["model"]["threads"] == 2  # the test node's two CPUs
    spec = requests.get(f"{service.url}/openapi.json", timeout=30).json()
    assert spec["info"]["title"] == "somnray scoring service" and spec["info"]["description"]
    assert {"/healthz", "/v1/score", "/v1/cohorts", "/v1/cohorts/{job_id}"} <= set(spec["paths"])
    upload = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(upload["schema"]["properties"]) == {"file", "profile", "channel_map", "recording_id", "stride"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert {"413", "422", "401"} <= set(spec["paths"]["/v1/score"]["post"]["responses"])


# -- without Ray -------------------------------------------------------------------------------
def test_config_storage_roots_and_token(monkeypatch, tmp_path):
    """Storage roots are canonical prefixes (no '..' escape, no sibling-prefix match); the token
    comes from the config, else from the named environment variable."""
    cfg = ServeConfig(run_uri="x", storage_roots=(str(tmp_path / "data"), "s3://bucket/cohorts/"))
    assert cfg.allowed_uri(f"file://{tmp_path}/data/m.csv")
    assert cfg.allowed_uri(str(tmp_path / "data"))
    assert cfg.allowed_uri("s3://bucket/cohorts/a/manifest.csv")
    assert not cfg.allowed_uri(f"{tmp_path}/data-other/m.csv")
    assert not cfg.allowed_uri(f"{tmp_path}/data/../secret")
    assert not cfg.allowed_uri("s3://bucket/cohorts/../private/x")
    assert not cfg.allowed_uri("s3://other/cohorts/x")
    assert not ServeConfig(run_uri="x").allowed_uri(str(tmp_path))
    monkeypatch.setenv("MY_TOKEN_VAR", "from-env")
    assert ServeConfig(run_uri="x", token_env="MY_TOKEN_VAR").resolved_token() == "from-env"
    assert ServeConfig(run_uri="x", token="given", token_env="MY_TOKEN_VAR").resolved_token() == "given"
    monkeypatch.delenv("SOMNRAY_SERVE_TOKEN", raising=False)
    assert ServeConfig(run_uri="x").resolved_token() is None
    from somnray.core.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        ServeConfig.from_mapping({"run_uri": "x", "port": 0, "colour": "red"})
    assert len(err.value.errors) == 2


def test_job_registry_counts_progress_limits_jobs_and_records_failures():
    """The registry reports progress from the callback, refuses jobs beyond its limit, lists the
    nights flagged for domain shift, and marks a job whose run raised as failed with the error."""
    release = threading.Event()

    class Result:
        total, scored, skipped, rejected = 3, 2, 0, 1
        rejects = [{"recording_id": "n3", "reason": "no EEG", "error_type": "RecordingError"}]
        domain_shifts = [{"recording_id": "n1", "reasons": ["eeg sampled at 256 Hz; training saw 100 Hz"]}]
        out_uri = "file:///out"

    def runner(run_uri, manifest, out, options):
        if manifest == "boom":
            raise ValueError("manifest is empty")
        options.progress_callback(1, 0, 3)
        release.wait(10)
        return Result()

    jobs = CohortJobs("file:///run", max_running=1, runner=runner)
    job = jobs.submit("m.csv", "file:///out")
    deadline = time.monotonic() + 5
    while jobs.status(job)["done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.status(job)["status"] == "running" and jobs.status(job)["total"] == 3
    assert jobs.submit("m2.csv", "file:///out2") is None  # over the limit
    release.set()
    while jobs.status(job)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    st = jobs.status(job)
    assert st["status"] == SUCCEEDED and st["done"] == st["total"] == 3 and st["failed"] == 1
    assert st["rejects"] == [{"recording_id": "n3", "reason": "no EEG"}]
    assert st["domain_shifts"] == Result.domain_shifts
    bad = jobs.submit("boom", "file:///out3")
    while jobs.status(bad)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.status(bad)["status"] == FAILED and "manifest is empty" in jobs.status(bad)["error"]
    assert jobs.status("nope") is None


def test_domain_shift_thresholds_of_the_service_are_validated():
    """ServeConfig.domain_shift takes DomainThresholds fields (defaults filled in) and refuses
    unknown keys and bad values; `somnray serve --domain-shift` parses KEY=VALUE options."""
    from somnray.core.errors import ConfigError
    from somnray.jobs.cli import build_parser

    config = ServeConfig(run_uri="x", domain_shift={"amplitude_factor": 5, "ignore": ["band"]})
    assert config.domain_shift == {"amplitude_factor": 5.0, "band_power_distance": 2.0, "ignore": ["band"]}
    with pytest.raises(ConfigError, match="amplitude_factor must be a number >= 1"):
        ServeConfig.from_mapping({"run_uri": "x", "domain_shift": {"amplitude_factor": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        ServeConfig.from_mapping({"run_uri": "x", "domain_shift": {"colour": 1}})
    args = build_parser().parse_args(["serve", "file:///runs/x", "--domain-shift", "band_power_distance=3"])
    assert args.domain_shift == ["band_power_distance=3"]


def test_serve_cli_parses_flags_and_fails_fast_without_a_bundle(tmp_path, capsys):
    """`somnray serve` takes repeatable storage roots and stops with status 1 (a bad input, like every
    command), naming the URI, when the run holds no model bundle (before starting Ray)."""
    from somnray.jobs.cli import build_parser, main

    args = build_parser().parse_args(["serve", "file:///runs/x", "--port", "9001", "--storage-root",
                                      "file:///a", "--storage-root", "s3://b/c", "--max-upload-mb", "2"])
    assert args.storage_roots == ["file:///a", "s3://b/c"] and args.port == 9001
    assert args.host == "127.0.0.1" and args.token_env == "SOMNRAY_SERVE_TOKEN"
    assert main(["serve", str(tmp_path / "no-run")]) == 1
    err = capsys.readouterr().err
    assert "no model bundle" in err and "no-run" in err
    assert main(["serve", str(tmp_path), "--profile", "nope"]) == 1


def test_night_from_answer_reads_back_the_score_answer():
    """A POST /v1/score answer, through JSON, gives back its night: stages, availability, flags, model,
    domain-shift check (whose reasons are also a warning of the answer)."""
    from night_factory import night_from_stages, realistic_stages
    from somnray.scoring.domain import CheckResult, DomainCheck
    from somnray.serve.app import ScoreResult, _score_answer, night_from_answer

    stages = realistic_stages(1.0)
    available = np.ones((stages.size, 2), dtype=bool)
    available[10:20, 1] = False
    shift = DomainCheck(checks=(CheckResult("native_sfreq", "eeg", "shift", "eeg sampled at 256 Hz; training saw 100 Hz"),))
    night = night_from_stages(stages, available=available, quality={"artefact": stages == 2}, domain_shift=shift)
    answer = json.loads(json.dumps(_score_answer(ScoreResult(night, ["a warning"]))))
    assert answer["warnings"] == ["a warning", "domain shift: eeg sampled at 256 Hz; training saw 100 Hz"]
    back = night_from_answer(answer)
    assert back.domain_shift == shift
    assert back.recording_id == night.recording_id and back.modalities == night.modalities
    assert back.model == night.model and back.epoch_s == night.epoch_s
    np.testing.assert_array_equal(back.epoch_index, night.epoch_index)
    np.testing.assert_array_equal(back.stages, night.stages)
    np.testing.assert_array_equal(back.available, night.available)
    np.testing.assert_allclose(back.probabilities, night.probabilities, atol=1e-5)
    assert list(back.modalities_used) == list(night.modalities_used)
    assert set(back.quality) == set(night.quality)
    for name, flags in night.quality.items():
        np.testing.assert_array_equal(back.quality[name], flags)


@pytest.mark.integration
def test_channel_map_with_alternatives_and_a_derivation_over_http(service):
    """A request's channel map falls back past a missing label and derives the EOG; the answer names both."""
    resp = service.score(recording_id="mapped", channel_map=json.dumps({
        "eeg": ["C4-A1", "EEG Pz-Oz"], "eog": {"signal": "EOG horizontal", "reference": "EEG Fpz-Cz"}}))
    assert resp.status_code == 200, resp.text[:300]
    doc = resp.json()
    assert doc["channels"] == {"eeg": "EEG Pz-Oz", "eog": "EOG horizontal - EEG Fpz-Cz"}
    assert all(doc["availability"]["eeg"]) and all(doc["availability"]["eog"])
    bad = service.score(channel_map=json.dumps({"eog": {"signal": "E1", "ref": "E2"}}))
    assert bad.status_code == 400
    assert bad.json()["detail"] == (
        "channel_map: 1 problem(s):\n  - channel_map['eog']: a derivation is an object "
        "{\"signal\": \"<EDF label>\", \"reference\": \"<EDF label>\"}, got {'signal': 'E1', 'ref': 'E2'}")
