"""Validation of a loaded Azkaban project: cycles, dependencies, names, conditions, triggers.

Pure (no Airflow). Each finding is a :class:`~airflow_ml_provider.azkaban.model.Problem` naming
the file and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["find_cycles"]


def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of ``graph`` (node -> nodes it depends on).

    Each cycle is a path whose first node is repeated at the end, following dependency order
    from a dependent to its dependency: ``{"a": ["b"], "b": ["a"]}`` gives ``[["a", "b", "a"]]``.
    Self-loops give ``[x, x]``. Deterministic: components and start nodes follow ``graph``'s order.
    Iterative (no recursion limit on 10,000-node graphs).
    """
    order = {n: i for i, n in enumerate(graph)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, i = work[-1]
            succ = [w for w in graph.get(v, ()) if w in order]
            if i < len(succ):
                work[-1] = (v, i + 1)
                w = succ[i]
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in graph.get(v, ()):
                    sccs.append(comp)
    cycles = []
    for comp in sccs:
        members = set(comp)
        first = min(comp, key=order.__getitem__)
        cycles.append(_cycle_in(graph, members, first))
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


def _cycle_in(graph: Mapping[str, Sequence[str]], members: set[str], first: str) -> list[str]:
    """A shortest cycle through ``first`` inside one strongly connected component (BFS)."""
    if first in graph.get(first, ()):
        return [first, first]
    parent: dict[str, str] = {}
    queue = [first]
    seen = {first}
    head = 0
    while head < len(queue):
        v = queue[head]
        head += 1
        for w in graph.get(v, ()):
            if w not in members:
                continue
            if w == first:
                path = [v]
                while path[-1] != first:
                    path.append(parent[path[-1]])
                path.reverse()
                return [*path, first]
            if w not in seen:
                seen.add(w)
                parent[w] = v
                queue.append(w)
    return [first, first]  # unreachable for a real component
