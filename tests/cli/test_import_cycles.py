"""No module-level import cycle among onnxguard's modules (imports inside functions do not count), the command
line's included: ``app`` lives in ``onnxguard.cli.app``, each verb module imports it from there, and
``onnxguard.cli`` imports the verbs without any of them importing it back."""

from __future__ import annotations

import ast
from pathlib import Path

import onnxguard

SRC = Path(onnxguard.__file__).parent.parent


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (SRC / "onnxguard").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.parse(p.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c imports a and a.b first ...
                    cand = ".".join(parts[:i])
                    ancestor = m.startswith(cand + ".")  # ... but m's own packages are already being imported
                    if cand in mods and cand != m and (cand == t or not ancestor):
                        graph[m].add(cand)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_onnxguard_modules():
    graph = _graph(_modules())
    # a variant's manifest record comes from accuracy.parity, not from build (not even lazily)
    assert "onnxguard.build" not in (SRC / "onnxguard" / "speed" / "select.py").read_text(encoding="utf-8")
    assert _cycles(graph) == []


def test_the_graph_sees_the_command_lines_registration():
    """The verbs are edges of the graph (so a verb importing ``onnxguard.cli`` back would be a cycle found)."""
    graph = _graph(_modules())
    assert {"onnxguard.cli.app", "onnxguard.cli.build", "onnxguard.cli.render"} <= graph["onnxguard.cli"]
    assert "onnxguard.cli.app" in graph["onnxguard.cli.build"] and "onnxguard.cli" not in graph["onnxguard.cli.build"]
    assert _cycles({**graph, "onnxguard.cli.build": graph["onnxguard.cli.build"] | {"onnxguard.cli"}}) != []
