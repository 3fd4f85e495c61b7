"""Shared plumbing of ``somnray bench``: machine facts, timing, and the results page.

Each benchmark returns a :class:`BenchResult`; this module renders it as a Markdown section and
replaces that section (between ``<!-- bench:NAME -->`` markers) in ``docs/benchmarks.md``, so the
page always shows the latest run of every benchmark without hand editing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator


#: CPU flags that decide which arithmetic is fast (bf16 and int8 kernels, vector width).
ARITHMETIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def machine_summary() -> dict[str, str]:
    """Facts that make a benchmark number interpretable (no host names or user names)."""
    import torch

    from somnray.scoring.device import cpu_flags, cpu_model

    arithmetic = [f for f in ARITHMETIC_FLAGS if f in cpu_flags()]
    info = {
        "cpu": cpu_model(),
        "cpu_flags": " ".join(arithmetic) or "none of " + " ".join(ARITHMETIC_FLAGS),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        info["memory_gib"] = f"{mem / 2**30:.0f}"
    except (ValueError, OSError):  # pragma: no cover - not every OS exposes these
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` holds the wall time in seconds."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start


def process_role(cmdline: list[str]) -> str:
    """A short, stable name for a process of the service, from its command line.

    Serve replicas and Ray actors carry their role in their process title (``ray::ServeReplica:
    somnray:StageModel``); Ray's daemons are named by their executable or module.
    """
    if not cmdline:
        return "other"
    title = cmdline[0]
    if title.startswith("ray::"):
        # The title names the method running now (StageModel.handle_request...): keep the actor.
        name = title[len("ray::"):].split()[0].rsplit(":", 1)[-1].split(".")[0]
        return "idle worker" if name == "IDLE" else name
    if title.startswith("ray-dashboard-"):  # the dashboard's module processes, one per module
        return "dashboard modules"
    text = " ".join(cmdline)
    for marker, role in (("somnray.jobs serve", "somnray serve"), ("gcs_server", "gcs_server"),
                         ("multiprocessing.forkserver", "dashboard modules"),
                         ("raylet", "raylet"), ("dashboard/agent.py", "dashboard agent"),
                         ("runtime_env/agent", "runtime_env agent"), ("dashboard.py", "dashboard"),
                         ("log_monitor", "log_monitor"), ("monitor.py", "monitor"),
                         ("default_worker.py", "idle worker")):
        if marker in text:
            return role
    return os.path.basename(title) or "other"


def process_tree(pid: int) -> list[Any]:
    """``pid`` and every process it started, alive now (empty once it has exited)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_by_role(pid: int) -> dict[str, float]:
    """RSS in MiB per role over the process tree of ``pid`` (several processes of one role add)."""
    import psutil

    rss: dict[str, float] = defaultdict(float)
    for proc in process_tree(pid):
        try:
            rss[process_role(proc.cmdline())] += proc.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited between the listing and the read
    return dict(rss)


@contextmanager
def peak_memory(pid: int | None = None, every_s: float = 0.5) -> Iterator[dict[str, float]]:
    """``with peak_memory() as m: ...`` then ``m["root_mib"]`` and ``m["total_mib"]``.

    The peak resident memory of process ``pid`` (default: this one, e.g. a cohort's driver) and
    of its whole tree — for a local Ray instance that includes every daemon and worker it started —
    sampled every ``every_s`` seconds on a background thread while the block runs.
    """
    import psutil

    pid = os.getpid() if pid is None else pid
    peaks = {"root_mib": 0.0, "total_mib": 0.0}
    done = threading.Event()

    def sample() -> None:
        while True:
            total = 0.0
            for proc in process_tree(pid):
                try:
                    rss = proc.memory_info().rss / 2**20
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # exited between the listing and the read
                total += rss
                if proc.pid == pid:
                    peaks["root_mib"] = max(peaks["root_mib"], rss)
            peaks["total_mib"] = max(peaks["total_mib"], total)
            if done.wait(every_s):
                return

    thread = threading.Thread(target=sample, name="peak-memory", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()


@dataclass
class BenchResult:
    """One benchmark run.

    Parameters
    ----------
    name : str
        Benchmark name (``prepare``, ``models``, ...), the section key in the results page.
    title : str
        Section heading.
    table : list of dict
        Rows of the result table (same keys in every row).
    notes : list of str
        Sentences printed under the table: set-up, targets and whether they were met.
    """

    name: str
    title: str
    table: list[dict[str, object]]
    notes: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=machine_summary)
    when: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def markdown(self) -> str:
        """The result as a Markdown section."""
        lines = [f"## {self.title}", "", f"Run {self.when} on " +
                 ", ".join(f"{k} {v}" for k, v in self.machine.items()) + ".", ""]
        if self.table:
            cols = list(self.table[0])
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("| " + " | ".join("---" for _ in cols) + " |")
            for row in self.table:
                lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
            lines.append("")
        lines.extend(f"{n}" if n.startswith("-") else f"- {n}" for n in self.notes)
        return "\n".join(lines).rstrip() + "\n"

    def save(self, results_dir: str | os.PathLike, docs_page: str | os.PathLike | None) -> Path:
        """Write ``<results_dir>/<name>.json`` and update the section in ``docs_page``."""
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        if docs_page is not None:
            update_section(Path(docs_page), self.name, self.markdown())
        return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def update_section(page: Path, name: str, body: str) -> None:
    """Replace (or append) the ``<!-- bench:name -->`` section of ``page`` with ``body``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body}{end}"
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
