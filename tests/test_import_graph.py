"""The pack's own import graph, lazy (function-level) imports included: no circles, and the layers run
one way: flux2/ (engine) <- runner/ (headless executor, graph pricing) <- nodes/ (ComfyUI) <- cli/ <- bench/.
Inside the engine the rooms run one way too: flux2/net/ is below the providers; in flux2/local/ the network
code (model/) knows no files, the file formats (weights/) know no runtime."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".cache", ".venv", "tests", "scripts", "loopback", "docs", "web"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pack_files(folder: Path = ROOT):
    """The pack's .py files, not descending into the skipped folders (.venv and .cache alone hold tens of
    thousands of files: walking them cost each test here seconds)."""
    for path in sorted(folder.iterdir()):
        if path.is_dir() and path.name not in SKIP and not path.name.startswith("."):
            yield from pack_files(path)
        elif path.suffix == ".py":
            yield path


@functools.lru_cache(maxsize=1)
def _graph() -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((name, frozenset(deps)) for name, deps in _read_graph().items())


def import_graph() -> dict[str, set[str]]:
    """module -> the pack modules it imports (read once per test process; each test gets its own copy)."""
    return {name: set(deps) for name, deps in _graph()}


def _read_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in pack_files()}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".") if package else []
            base = base[:len(base) - node.level + 1] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
            for candidate in [target] + [f"{target}.{a.name}".lstrip(".") for a in node.names]:
                # `from . import sub` names the module's own package, which is imported before any of its
                # modules can be: only `sub` is a dependency.
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    deps.add(candidate)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "runner.executor" in graph["runner.pricing"] and "nodes.catalog" in graph["nodes.budget"]
    assert "flux2.local.model.params" in graph["flux2.local.weights.loading"] and "bench.local" in graph


def edges(graph: dict[str, set[str]], source: str, target: str) -> set[tuple[str, str]]:
    """Imports from modules under `source` to modules under `target` (dotted prefixes)."""
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")
    return {(m, d) for m, deps in graph.items() for d in deps if under(m, source) and under(d, target)}


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_the_old_circle():
    old = {"nodes": {"nodes.generate_nodes"}, "nodes.generate_nodes": {"nodes.budget"},
           "nodes.budget": {"runner.executor"}, "runner.executor": {"nodes"}, "flux2": set()}
    assert cycles(old) == [["nodes", "nodes.budget", "nodes.generate_nodes", "runner.executor"]]


def test_engine_and_runner_never_import_the_nodes():
    graph = import_graph()
    upward = {(m, d) for m, deps in graph.items() for d in deps
              if m.split(".")[0] in ("flux2", "runner") and d.split(".")[0] in ("nodes", "cli")}
    assert upward == set()


def test_nothing_below_imports_the_benchmarks_or_the_demo():
    graph = import_graph()
    for low in ("flux2", "runner", "nodes"):
        assert edges(graph, low, "bench") | edges(graph, low, "demo") | edges(graph, low, "cli") == set()


def test_the_benchmarks_never_import_the_cli_that_starts_them():
    assert edges(import_graph(), "bench", "cli") == set()


def test_the_network_room_knows_no_provider_and_no_local_engine():
    graph = import_graph()
    assert edges(graph, "flux2.net", "flux2.remote") | edges(graph, "flux2.net", "flux2.local") == set()


def test_model_code_imports_no_weight_files_and_no_runtime():
    graph = import_graph()
    outside = {(m, d) for m, d in edges(graph, "flux2.local.model", "flux2.local")
               if not d.startswith("flux2.local.model")}
    assert outside == set()


def test_weight_files_import_no_runtime():
    graph = import_graph()
    runtime = {(m, d) for m, d in edges(graph, "flux2.local.weights", "flux2.local")
               if not d.startswith(("flux2.local.weights", "flux2.local.model"))}
    assert runtime == set()
