"""The package's import graph: no cycle, and the layers of DESIGN.md point one way.

Every module of `densekit` is parsed with `ast` (nothing is imported, so this runs in well under a
second); every `import` / `from ... import` counts, at module level and inside functions alike
(a function-level import is a deferred edge, not a missing one). `from pkg import name` is an edge
to `pkg.name` when that is a module, else to `pkg`. Parent packages are not implicit edges: a
package's `__init__` importing its own submodules is the normal shape, not a cycle.

Layers (DESIGN.md): cli -> (integrations, eval, mining, retriever) -> index -> bottom, the bottom
being data, io, paths, errors, progress and the shared primitives that sit beside them (protocols:
the Retriever protocol; negatives: the negatives-file schema; distributed: torchrun handling;
faults: fault-injection points; chunking: splitting documents into passages and their ids).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "densekit"

BOTTOM = {
    "densekit",
    "densekit.data",
    "densekit.io",
    "densekit.paths",
    "densekit.errors",
    "densekit.progress",
    "densekit.protocols",
    "densekit.negatives",
    "densekit.distributed",
    "densekit.faults",
    "densekit.serialize",
    "densekit.chunking",
}
ABOVE_INDEX = ("densekit.retriever", "densekit.mining", "densekit.eval", "densekit.cli", "densekit.integrations")

# eval modules that drive retrievers and may therefore import densekit.retriever; the trainer imports
# eval (harness: dev-set evaluation), so these drivers must never be imported from densekit.retriever.
EVAL_DRIVERS = {
    "densekit.eval.reproduce": "builds the dense and BM25 retrievers whose published scores it grades",
    "densekit.eval.mteb": "wraps an Encoder as an MTEB model",
    "densekit.eval.config": "EvalConfig carries the retriever composition (SearchOptions) it evaluates",
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """`{module: {densekit modules it imports}}` for every module of the package."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import densekit.x.y as z` of a non-module name
                    target = target.rpartition(".")[0]
                if target.startswith("densekit") and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected component with more than one module (Tarjan): its sorted members and one
    shortest cycle through the first of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(sorted(c), _cycle_through(graph, set(c))) for c in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component: a -> b -> ... -> a."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first, so the printed cycle is a shortest one through `start`
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a strongly connected component


def _edges(graph: dict[str, set[str]], source, target) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if source(a) for b in targets if target(b))


def _in(*prefixes: str):
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [(["a", "b", "c"], ["a", "b", "c", "a"])]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "densekit.retriever.hybrid" in graph["densekit.mining.sources"]  # module level
    assert "densekit.eval.harness" in graph["densekit.retriever.train.trainer"]  # inside a function
    assert "densekit.data" in graph["densekit.negatives"]


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(
        f"{' -> '.join(cycle)}  (all of: {', '.join(members)})" for members, cycle in cycles
    )


def test_bottom_layer_imports_only_the_bottom_layer() -> None:
    graph = import_graph()
    bad = _edges(graph, lambda m: m in BOTTOM, lambda m: m not in BOTTOM)
    assert not bad, "bottom-layer modules importing upper layers:\n" + "\n".join(bad)


def test_index_imports_nothing_above_it() -> None:
    graph = import_graph()
    bad = _edges(graph, _in("densekit.index"), _in(*ABOVE_INDEX))
    assert not bad, "densekit.index importing upper layers:\n" + "\n".join(bad)
    outside = _edges(graph, _in("densekit.index"), lambda m: m not in BOTTOM and not _in("densekit.index")(m))
    assert not outside, "densekit.index importing beyond data/io/paths/errors/progress:\n" + "\n".join(outside)


def test_eval_imports_retriever_only_from_its_drivers() -> None:
    graph = import_graph()
    bad = _edges(graph, lambda m: _in("densekit.eval")(m) and m not in EVAL_DRIVERS, _in("densekit.retriever"))
    assert not bad, "eval modules (not drivers) importing densekit.retriever:\n" + "\n".join(bad)
    back = _edges(graph, _in("densekit.retriever", "densekit.index", "densekit.mining"), lambda m: m in EVAL_DRIVERS)
    assert not back, "lower layers importing eval's retriever drivers (a package cycle):\n" + "\n".join(back)
    for module in EVAL_DRIVERS:
        assert module in graph, f"{module} is listed as an eval driver but does not exist"


def test_mining_never_imports_the_trainer() -> None:
    """The trainer re-mines through densekit.mining (retriever.train.remine); mining uses the encoder,
    fusion and reranker of densekit.retriever but never the trainer, so that edge points one way."""
    graph = import_graph()
    bad = _edges(graph, _in("densekit.mining"), _in("densekit.retriever.train"))
    assert not bad, "mining importing the trainer (it imports mining to re-mine):\n" + "\n".join(bad)


def test_only_the_cli_imports_the_cli() -> None:
    graph = import_graph()
    bad = _edges(graph, lambda m: not _in("densekit.cli")(m), _in("densekit.cli"))
    assert not bad, "library modules importing the CLI:\n" + "\n".join(bad)


def test_integrations_sit_above_retriever_index_eval_and_mining() -> None:
    """The framework faces (LangChain, LlamaIndex, Haystack, the HTTP service) use the library; the
    library never imports them, so a missing framework extra cannot break `densekit.retriever` & co."""
    graph = import_graph()
    below = ("densekit.retriever", "densekit.index", "densekit.eval", "densekit.mining")
    bad = _edges(graph, lambda m: m in BOTTOM or _in(*below)(m), _in("densekit.integrations"))
    assert not bad, "library layers importing densekit.integrations:\n" + "\n".join(bad)
