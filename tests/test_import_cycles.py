"""No import cycles inside `reliscale`, counting the imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "platform" / "reliscale"


def module_sources(root: Path = PKG) -> dict[str, str]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text()
    return out


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the `reliscale` modules it imports anywhere in its body (a `from pkg import x`
    counts as an import of `pkg.x` when that is a module)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for mod, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in sources else node.module
                           for a in node.names]
            else:
                continue
            graph[mod].update(t for t in targets if t in sources and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_through_a_function_level_import():
    sources = {
        "reliscale.a": "from reliscale.b import f\n",
        "reliscale.b": "def f():\n    from reliscale import c\n",
        "reliscale.c": "import reliscale.a\n",
        "reliscale.d": "from reliscale.a import x\n",
    }
    assert cycles(import_graph(sources)) == [["reliscale.a", "reliscale.b", "reliscale.c"]]


def test_reliscale_has_no_import_cycles():
    graph = import_graph(module_sources())
    assert len(graph) > 40
    assert cycles(graph) == []
