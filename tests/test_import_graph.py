"""The pack's own import graph, lazy (function-level) imports included: no circles, and the layers run
one way: flux2/ (engine) <- runner/ (headless executor, graph pricing) <- nodes/ (ComfyUI) <- cli.py."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".cache", ".venv", "tests", "bench", "scripts", "loopback", "docs", "web"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts)}
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
                if candidate in modules and candidate != name:
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
