"""``somnray bench soak``: N clients scoring nights against ``somnray serve`` for T minutes.

The benchmark starts the service itself — ``somnray serve`` in a child process, on a fresh local
Ray instance with its own temp folder and a free port — with a model bundle (the full-size
``coresleep``, random weights: speed and memory do not depend on them) and one synthetic
Sleep-EDF-like night, then runs ``clients`` threads that each post the night to ``POST /v1/score``
again and again for ``minutes``.  Meanwhile it samples the resident memory (RSS) of every process
of the service — the CLI, Ray's own processes and each Serve replica, named by role — every
``sample_s`` seconds.

It writes, next to the other results:

* ``soak.png`` — RSS of each role over time (and the total), with the answers per second;
* ``soak-samples.json`` — every RSS sample and every answer (time, status, latency);
* ``soak.json`` and the ``soak`` section of ``docs/benchmarks.md`` — answers by status, latency
  percentiles, throughput, and each role's RSS at the start, its peak and at the end.

After the clients stop, the service is stopped (SIGTERM, as a service manager would) and the
processes it had started are counted as they exit: any still alive 30 s later is reported and
killed.  Nothing of the clients' answers is asserted here: it is a measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .bench_score import _make_bundle, _night
from .bench_service import EXIT_TIMEOUT_S, served
from .benchreport import BenchResult, rss_by_role

def _client(url: str, body: bytes, until: float, answers: list, lock: threading.Lock, index: int) -> None:
    import requests

    with requests.Session() as session:
        n = 0
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                r = session.post(f"{url}/v1/score", timeout=300, data={"recording_id": f"soak-{index}-{n}"},
                                 files={"file": ("night.edf", body, "application/octet-stream")})
                status = r.status_code
                if status == 503:  # the service asked to come back later: do as it says
                    time.sleep(float(r.headers.get("Retry-After", "1")))
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                answers.append((t0, status, time.monotonic() - t0))
            n += 1


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))  # linear interpolation between the closest ranks


def plot(samples: list[dict[str, Any]], answers: list[tuple[float, Any, float]], start: float,
         path: Path) -> None:
    """RSS per role over time (top) and answers per 10 s by status (bottom), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    minutes = [(s["t"] - start) / 60 for s in samples]
    roles = sorted({r for s in samples for r in s["rss_mib"]},
                   key=lambda r: -max(s["rss_mib"].get(r, 0.0) for s in samples))
    for role in roles:
        top.plot(minutes, [s["rss_mib"].get(role, 0.0) for s in samples], label=role, linewidth=1)
    top.plot(minutes, [sum(s["rss_mib"].values()) for s in samples], label="total", color="black",
             linewidth=2)
    top.set_ylabel("RSS (MiB)")
    top.set_title("somnray serve under load: resident memory per process")
    top.legend(fontsize=7, ncol=3, loc="upper left")
    top.grid(alpha=0.3)
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for t0, status, _ in answers:
        counts[str(status)][int((t0 - start) // 10)] += 1
    for status, per_bin in sorted(counts.items()):
        bins = sorted(per_bin)
        bottom.plot([(b * 10 + 5) / 60 for b in bins], [per_bin[b] / 10 for b in bins], label=status)
    bottom.set_xlabel("minutes")
    bottom.set_ylabel("answers / s")
    bottom.legend(fontsize=7)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(clients: int = 32, minutes: float = 30.0, *, hours: float = 1.0, model: str = "coresleep",
        sample_s: float = 5.0, results: str | os.PathLike = "bench-results") -> BenchResult:
    """Start the service, soak it, stop it; the results (module docstring).

    Parameters
    ----------
    clients : int
        Concurrent clients, each posting one night after the other.
    minutes : float
        How long the clients post.
    hours : float
        Length of the synthetic night each request uploads.
    model : str
        Registered architecture of the served bundle (random weights).
    sample_s : float
        Seconds between RSS samples.
    results : path
        Folder of ``soak.png`` and ``soak-samples.json``.
    """
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="somnray-soak-"))
    try:
        bundle = _make_bundle(work / "bundle", "sleep-edf", model)
        [psg] = _night(work / "night", hours)
        body = Path(psg).read_bytes()
        with served(bundle) as service:
            answers: list[tuple[float, Any, float]] = []
            samples: list[dict[str, Any]] = []
            lock = threading.Lock()
            start = time.monotonic()
            until = start + minutes * 60
            threads = [threading.Thread(target=_client, args=(service.url, body, until, answers, lock, i),
                                        daemon=True) for i in range(clients)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                samples.append({"t": time.monotonic(), "rss_mib": rss_by_role(service.proc.pid)})
                time.sleep(sample_s)
            for t in threads:
                t.join()
            samples.append({"t": time.monotonic(), "rss_mib": rss_by_role(service.proc.pid)})
        stopped = service.stopped
        plot(samples, answers, start, out / "soak.png")
        (out / "soak-samples.json").write_text(json.dumps({
            "start": start, "samples": samples,
            "answers": [{"t": t - start, "status": s, "latency_s": d} for t, s, d in answers]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _result(clients, minutes, hours, model, samples, answers, stopped, out)


def _result(clients: int, minutes: float, hours: float, model: str, samples: list[dict[str, Any]],
            answers: list[tuple[float, Any, float]], stopped: dict[str, Any], out: Path) -> BenchResult:
    """The summary table: RSS per role (start, peak, end), then the answers."""
    roles = sorted({r for s in samples for r in s["rss_mib"]})
    half = samples[len(samples) // 2]
    rows: list[dict[str, object]] = []
    for role in roles + ["total"]:
        series = [sum(s["rss_mib"].values()) if role == "total" else s["rss_mib"].get(role, 0.0)
                  for s in samples]
        rows.append({"process": role, "RSS start MiB": series[0], "RSS peak MiB": max(series),
                     "RSS halfway MiB": series[len(samples) // 2], "RSS end MiB": series[-1]})
    ok = [d for _, s, d in answers if s == 200]
    by_status: dict[str, int] = defaultdict(int)
    for _, s, _ in answers:
        by_status[str(s)] += 1
    wall = minutes * 60
    notes = [
        f"{clients} clients posting a {hours:g}-h synthetic Sleep-EDF night (EEG + EOG, 100 Hz) to "
        f"`somnray serve` (full-size `{model}`, random weights, fp32 or bf16 as `auto` picks, the "
        f"CLI's defaults) for {minutes:g} min; RSS sampled every few seconds over every process "
        "the service started (`soak.png`, `soak-samples.json`).",
        "Answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
        + f"; {len(ok) / wall:.2f} scored nights/s.",
        (f"Latency of the 200 answers: p50 {_percentile(ok, 50):.2f} s, p95 {_percentile(ok, 95):.2f} s, "
         f"p99 {_percentile(ok, 99):.2f} s, max {max(ok):.2f} s." if ok else "No 200 answer."),
        f"Stopping the service (SIGTERM) took {stopped['stop_s']:.1f} s; processes still running "
        f"{EXIT_TIMEOUT_S:.0f} s later: {', '.join(stopped['left_running']) or 'none'}.",
        f"Halfway sample at {(half['t'] - samples[0]['t']) / 60:.1f} min: a total RSS at the end "
        "close to the halfway one means memory reached a plateau, not a leak.",
    ]
    return BenchResult("soak", f"Soak: {clients} clients against somnray serve for {minutes:g} min",
                       rows, notes)
