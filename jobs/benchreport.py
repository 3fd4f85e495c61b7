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
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator


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
