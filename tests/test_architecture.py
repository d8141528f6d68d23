"""The house keeps its shape: data flows one way (docs/architecture.md), rooms stay a size a reader can
hold, and no module imports one above it — function-local and type-checking imports included.

The import graph is computed from the source with ``ast`` (every ``import`` statement anywhere in a
module), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "warmstart"

#: who may import whom: a module may import only modules of a strictly lower rank, or modules of its
#: own package (without a cycle). Keys are module-name prefixes; the longest match wins.
RANKS = {
    "warmstart._redact": 0, "warmstart._retry": 0, "warmstart._fs": 0, "warmstart._units": 0,
    "warmstart._io": 0, "warmstart.progress": 0, "warmstart.snapshot": 0,
    "warmstart.errors": 1,
    "warmstart.config": 2, "warmstart.refs": 2, "warmstart._urls": 2, "warmstart._proxy": 2,
    "warmstart._http": 3,
    "warmstart.load": 4,
    "warmstart.cache": 5,
    "warmstart.transfer": 6, "warmstart.sources": 6, "warmstart.ingest": 6,
    "warmstart.pipeline": 7,
    "warmstart.weights": 8, "warmstart.oci_push": 8,
    "warmstart.conversion": 9, "warmstart.compiled": 9,
    "warmstart.api": 10,
    "warmstart.agent": 11, "warmstart.vllm_plugin": 11,
    "warmstart.agent.client": 9,  # standard library only: api delegates pulls through it
    "warmstart.cli": 12,
    "warmstart": 13,  # the package's __init__: re-exports the API lazily
}
MAX_FILE, MAX_CLASS, MAX_FUNCTION = 400, 250, 80


def _modules() -> dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


MODULES = _modules()


def _targets(mod: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = mod.split(".")
        if MODULES[mod].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module or ""
    subs = [f"{pkg}.{a.name}" for a in node.names if f"{pkg}.{a.name}" in MODULES]
    # `from . import x` of a submodule imports x (and its package's __init__, which is its own module)
    return subs if subs and len(subs) == len(node.names) else [pkg, *subs]


def _owner(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(mod, node):
                    if t == "warmstart" or t.startswith("warmstart."):
                        t = _owner(t)
                        if t != mod and t in MODULES:
                            out.add(t)
        edges[mod] = out
    return edges


def _rank(mod: str) -> int:
    best = max((k for k in RANKS if mod == k or mod.startswith(k + ".")), key=len, default=None)
    assert best is not None, f"{mod} has no rank: add its package to RANKS in {__file__} and to docs/architecture.md"
    return RANKS[best]


def _package(mod: str) -> str:
    best = max((k for k in RANKS if mod == k or mod.startswith(k + ".")), key=len)
    return best


def test_every_module_has_a_rank():
    for mod in MODULES:
        _rank(mod)


def test_no_upward_import():
    edges = _edges()
    bad = []
    for a, targets in edges.items():
        for b in targets:
            same = _package(a) == _package(b) and a != "warmstart"
            if not same and _rank(b) >= _rank(a):
                bad.append(f"{a} (rank {_rank(a)}) imports {b} (rank {_rank(b)})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_room_sizes(mod):
    path = MODULES[mod]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_FILE, f"{path.name}: {lines} lines (at most {MAX_FILE}); split it by responsibility"
    for node in ast.walk(ast.parse(text)):
        n = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef):
            assert n <= MAX_CLASS, f"{mod}.{node.name}: {n} lines (at most {MAX_CLASS})"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert n <= MAX_FUNCTION, f"{mod}.{node.name}: {n} lines (at most {MAX_FUNCTION})"


def test_the_checker_sees_a_function_local_upward_import(tmp_path, monkeypatch):
    """The graph counts imports inside functions: a cache module reaching up to api is found."""
    fake = dict(MODULES)
    p = tmp_path / "evil.py"
    p.write_text("def f():\n    from .. import api\n    return api\n")
    fake["warmstart.cache.evil"] = p
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    edges = _edges()
    assert "warmstart.api" in edges["warmstart.cache.evil"]
    with pytest.raises(AssertionError, match="cache.evil"):
        test_no_upward_import()
