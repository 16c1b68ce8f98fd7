"""Fails (exit 1) on any import circle between the project's modules, naming each one.

import-linter's layer and independence contracts compare packages, so a circle inside one package
(cascade.a -> cascade.b -> cascade.a) passes them; this check looks at modules. It reads the same
import graph import-linter builds (grimp), including imports made inside functions.

    python scripts/check_import_cycles.py [PACKAGE ...]   (default: the four floors)
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("cascade", "training", "serving", "benchmarks")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan, iterative),
    plus any module that imports itself: each is at least one circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    imported = graph.find_modules_directly_imported_by(child)
                    work.append((child, iter(sorted(imported))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1 or graph.direct_import_exists(importer=node, imported=node):
                    found.append(sorted(component))
    return found


def one_circle(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, for the error message."""
    start = component[0]
    best: tuple[str, ...] | None = None
    if len(component) == 1:
        return [start, start]
    for nxt in sorted(graph.find_modules_directly_imported_by(start)):
        if nxt not in component or nxt == start:
            continue
        chain = graph.find_shortest_chain(importer=nxt, imported=start)
        if chain and (best is None or len(chain) < len(best)):
            best = chain
    return [start, *(best or ())]


def main(argv: list[str]) -> int:
    packages = argv or list(PACKAGES)
    sys.path.insert(0, str(ROOT))  # the checkout's packages, whichever directory this runs from
    graph = grimp.build_graph(*packages, cache_dir=None)
    # Only the project's own modules: grimp lists what they import from outside as squashed
    # external packages, which cannot import back.
    circles = [c for c in strongly_connected(graph)
               if all(m.split(".")[0] in packages for m in c)]
    for component in circles:
        print("import circle: " + " -> ".join(one_circle(graph, component))
              + (f"  ({len(component)} modules involved: {', '.join(component)})"
                 if len(component) > 2 else ""))
    if circles:
        print(f"{len(circles)} import circle(s) among {', '.join(packages)}")
        return 1
    print(f"no import circles among {len(graph.modules)} modules of {', '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
