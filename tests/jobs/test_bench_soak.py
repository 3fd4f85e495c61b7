"""The soak benchmark's bookkeeping: naming the service's processes, the summary and the plot."""

from __future__ import annotations

from somnray.jobs.bench_soak import _result, plot
from somnray.jobs.benchreport import process_role


def test_processes_are_named_by_role_whatever_method_runs():
    """A replica is named by its deployment whichever method its title shows; Ray's daemons and
    the dashboard's module processes by what they are."""
    assert process_role(["ray::ServeReplica:somnray:StageModel.handle_request_with_rejection"]) == "StageModel"
    assert process_role(["ray::ServeReplica:somnray:StageModel"]) == "StageModel"
    assert process_role(["ray::ProxyActor.receive_asgi_messages"]) == "ProxyActor"
    assert process_role(["ray::IDLE"]) == "idle worker"
    assert process_role(["ray-dashboard-NodeHead-0 (/v/bin/python -B -c ...)"]) == "dashboard modules"
    assert process_role(["/v/bin/python", "-m", "somnray.jobs", "serve", "run"]) == "somnray serve"
    assert process_role(["/v/ray/core/src/ray/raylet/raylet", "--x"]) == "raylet"
    assert process_role([]) == "other"


def test_summary_reports_rss_per_role_answers_and_leftovers(tmp_path):
    """The table has each role's RSS at start, peak, halfway and end plus the total; the notes count
    answers by status, give latency percentiles and name processes left after the stop."""
    samples = [{"t": 100.0 + 10 * i, "rss_mib": {"StageModel": 500.0 + 10 * i, "raylet": 30.0}} for i in range(5)]
    answers = [(101.0, 200, 1.0), (102.0, 200, 3.0), (103.0, 503, 0.01), (104.0, "ConnectionError", 0.1)]
    result = _result(4, 2.0, 1.0, "coresleep", samples, answers, {"stop_s": 2.5, "left_running": ["raylet"]},
                     tmp_path)
    rows = {r["process"]: r for r in result.table}
    assert rows["StageModel"]["RSS start MiB"] == 500.0 and rows["StageModel"]["RSS peak MiB"] == 540.0
    assert rows["StageModel"]["RSS halfway MiB"] == 520.0 and rows["total"]["RSS end MiB"] == 570.0
    text = "\n".join(result.notes)
    assert "Answers: 200: 2, 503: 1, ConnectionError: 1; 0.02 scored nights/s." in text
    assert "p50 2.00 s" in text and "processes still running 30 s later: raylet." in text
    plot(samples, answers, 100.0, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"
