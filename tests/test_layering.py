"""The package layering of somnray, checked on the source: who may import whom, and no cycles.

These are the seams docs/architecture.md draws; a change that crosses one fails here with the
offending import named, instead of showing up later as a tangle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Source folder of each somnray package (the pyproject.toml mapping).
PACKAGES = {"core": "platform/core", "data": "platform/data", "models": "models", "scoring": "platform/scoring",
            "train": "platform/train", "tune": "platform/tune", "serve": "platform/serve", "review": "platform/review",
            "jobs": "jobs"}
#: What each package may import of the others (itself always).
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "scoring": {"core", "data", "models"},
    "train": {"core", "data", "models", "scoring"},
    "tune": {"core", "data", "models", "train"},
    "serve": {"core", "data", "models", "scoring"},
    # train only for its metrics (agreement): no Ray Train or DeepSpeed is imported.
    "review": {"core", "data", "models", "scoring", "serve", "train"},
    "jobs": set(PACKAGES),
}
#: Architecture modules: only the registry's own import of them is allowed.
ARCHITECTURES = ("somnray.models.coresleep", "somnray.models.mc2sleepnet", "somnray.models.cimsleepnet")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        root = REPO / folder
        if not root.is_dir():
            continue
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join(["somnray", pkg, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every somnray module ``name`` imports (top level or inside a function), with the line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import module" imports the module when it is one
            found += [(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod, node.lineno) for a in node.names]
    return [(m, line) for m, line in found if m.startswith("somnray.")]


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


GRAPH = {name: [(_resolve(t), line) for t, line in _imports(name, path)] for name, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[1]


def test_packages_import_only_the_layers_below_them() -> None:
    """core imports no other somnray package; data and models only core; train/serve never tune or each other."""
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
           for m, targets in GRAPH.items() for t, line in targets
           if t and _package(t) != _package(m) and _package(t) not in ALLOWED[_package(m)]]
    assert not bad, "\n".join(bad)


def test_only_somnray_data_touches_its_pipeline_errors_or_storage_internals() -> None:
    """Outside platform/data nothing imports somnray.data's pipeline (nor the old errors/storage homes)."""
    banned = ("somnray.data.pipeline", "somnray.data.errors", "somnray.data.storage")
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m, targets in GRAPH.items()
           for t, line in targets if t in banned and _package(m) != "data"]
    assert not bad, "\n".join(bad)


def test_the_platform_never_names_a_concrete_architecture() -> None:
    """No platform module imports an architecture module (they are reached through the registry)."""
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m, targets in GRAPH.items()
           for t, line in targets if t in ARCHITECTURES and _package(m) != "models"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    """The module import graph (function-level imports included) has no cycle."""
    edges = defaultdict(set)
    for m, targets in GRAPH.items():
        for t, _ in targets:
            # a package's __init__ re-exporting its own submodules is not a cycle of design
            if t and t != m and not m.startswith(t + ".") and not t.startswith(m + "."):
                edges[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(MODULES):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("needle", ["recordings/"])
def test_the_prepared_layout_is_spelled_in_one_module(needle: str) -> None:
    """The folder name of prepared recordings appears in one platform module: the dataset's owner."""
    owners = sorted(str(p.relative_to(REPO)) for m, p in MODULES.items()
                    if _package(m) not in ("jobs", "models") and needle in p.read_text(encoding="utf-8"))
    assert len(owners) == 1, owners
