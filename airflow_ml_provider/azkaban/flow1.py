"""Flow 1.0 loader: ``.job`` files plus ``.properties`` files chained per directory.

The rules, as Azkaban's ``DirectoryFlowLoader`` applies them:

* directories are read recursively (sorted here, for a stable result);
* in each directory the ``.properties`` files, sorted by name, form a chain: each one's parent
  is the previous one, the first one's parent is the chain of the enclosing directory; the last
  one is the parent of that directory's jobs and sub-directories;
* a job is a ``.job`` file; its name is the file name without ``.job``; job names are global to
  the project (a duplicate name is an error);
* every key is looked up in the job file, then up the chain, so ``type``, ``dependencies``,
  ``retries``, ``env.*``... may be inherited;
* ``dependencies`` is a comma-separated list of job names;
* a flow exists for every job no other job depends on, plus every job with ``root.node=true``;
  it holds that job and everything it transitively depends on;
* ``type=flow`` with ``flow.name=X`` embeds flow ``X`` (a flow used that way is also a flow of
  its own, hence a DAG of its own).

Pure: no Airflow import.
"""

from __future__ import annotations

import itertools
import re

from airflow_ml_provider.azkaban.archive import ProjectFiles
from airflow_ml_provider.azkaban.model import (
    ERROR,
    FLOW_TYPE,
    Flow,
    Kind,
    Node,
    Problem,
    PropsFile,
)
from airflow_ml_provider.properties import PropertiesError, iter_properties

__all__ = ["load_flow1", "split_dependencies"]

_DEP_SPLIT = re.compile(r"\s*,\s*")


def split_dependencies(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (Azkaban's comma split; duplicates dropped)."""
    if value is None:
        return []
    return list(dict.fromkeys(d.strip() for d in _DEP_SPLIT.split(value.strip()) if d.strip()))


def _read_props(
    reader: ProjectFiles, rel: str, problems: list[Problem]
) -> tuple[dict[str, str], dict[str, int]] | None:
    try:
        text = reader.read_bytes(rel).decode("iso-8859-1")
    except OSError as exc:
        problems.append(Problem(Kind.PROPERTIES, rel, f"cannot read file: {exc.strerror or exc}"))
        return None
    props: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        for key, value, line in iter_properties(text, source=rel):
            props[key] = value
            lines.setdefault(key, line)
    except PropertiesError as exc:
        problems.append(Problem(Kind.PROPERTIES, rel, exc.reason, line=exc.line))
        return None
    return props, lines


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def load_flow1(
    reader: ProjectFiles, problems: list[Problem]
) -> tuple[dict[str, Flow], dict[str, Node], list[str]]:
    """Load a Flow 1.0 project.

    :param reader: the project's files (``reader.files``: relative posix paths).
    :param problems: findings are appended here.
    :returns: ``(flows, jobs, properties_files)``; flows by name in a stable order.
    """
    # group files per directory
    by_dir: dict[str, list[str]] = {}
    subdirs: dict[str, set[str]] = {}
    for rel in reader.files:
        parent = rel.rpartition("/")[0]
        by_dir.setdefault(parent, []).append(rel)
        # register the directory chain
        child = parent
        while child:
            up = child.rpartition("/")[0]
            subdirs.setdefault(up, set()).add(child)
            child = up

    jobs: dict[str, Node] = {}
    job_files: dict[str, list[str]] = {}
    properties_files: list[str] = []

    def visit(directory: str, chain: tuple[PropsFile, ...], merged: dict[str, str]) -> None:
        entries = by_dir.get(directory, [])
        for rel in sorted(r for r in entries if r.endswith(".properties")):
            properties_files.append(rel)
            loaded = _read_props(reader, rel, problems)
            if loaded is None:
                continue
            props, _ = loaded
            chain = (*chain, PropsFile(rel, props))
            merged = {**merged, **props}
        for rel in sorted(r for r in entries if r.endswith(".job")):
            name = rel.rpartition("/")[2][: -len(".job")]
            job_files.setdefault(name, []).append(rel)
            loaded = _read_props(reader, rel, problems)
            if loaded is None:
                continue
            props, key_lines = loaded
            if name in jobs:
                continue  # duplicate: reported below
            node = Node(
                name=name,
                type=None,
                props=props,
                inherited_props=merged,
                props_chain=chain,
                source_file=rel,
                key_lines=key_lines,
            )
            type_ = node.get("type")
            node.type = type_.strip() if type_ is not None and type_.strip() else None
            node.depends_on = split_dependencies(node.get("dependencies"))
            cond = node.get("condition")
            node.condition = cond if cond is not None and cond.strip() else None
            if node.type == FLOW_TYPE:
                fname = node.get("flow.name")
                node.flow_name = fname.strip() if fname is not None and fname.strip() else None
            jobs[name] = node
        for sub in sorted(subdirs.get(directory, ())):
            visit(sub, chain, merged)

    visit("", (), {})

    # ----- per-job checks (Azkaban reports these while loading) ----------------------
    for name, paths in job_files.items():
        if len(paths) > 1:
            problems.append(
                Problem(
                    Kind.DUPLICATE_NODE,
                    paths[1],
                    f"duplicate job name {name!r}: defined in {', '.join(paths)}",
                    node=name,
                )
            )
    for node in jobs.values():
        if node.type is None:
            problems.append(
                Problem(
                    Kind.MISSING_TYPE,
                    node.source_file,
                    f"job {node.name!r} has no type (add a 'type=' line, e.g. type=command)",
                    node=node.name,
                )
            )
        dep_line = node.key_lines.get("dependencies")
        for dep in node.depends_on:
            if dep == node.name:
                problems.append(
                    Problem(
                        Kind.SELF_DEPENDENCY,
                        node.source_file,
                        f"job {node.name!r} depends on itself",
                        node=node.name,
                        line=dep_line,
                    )
                )
            elif dep not in jobs:
                problems.append(
                    Problem(
                        Kind.UNDEFINED_DEPENDENCY,
                        node.source_file,
                        f"job {node.name!r} depends on {dep!r}, which is not defined (no {dep}.job)",
                        node=node.name,
                        line=dep_line,
                    )
                )

    # ----- flows: every job nobody depends on, plus root.node=true ------------------
    depended_on: set[str] = set()
    for node in jobs.values():
        depended_on.update(node.depends_on)
    flows: dict[str, Flow] = {}
    for node in jobs.values():
        if node.name not in depended_on or _is_true(node.get("root.node")):
            flows[node.name] = _build_flow(node, jobs)

    # ----- embedded flows (type=flow + flow.name) -------------------------------------
    embeds: dict[str, list[tuple[Node, str]]] = {}
    for flow in flows.values():
        for node in flow.nodes.values():
            if node.type != FLOW_TYPE:
                continue
            if node.flow_name is None:
                problems.append(
                    Problem(
                        Kind.EMBEDDED_FLOW,
                        node.source_file,
                        f"job {node.name!r} has type=flow but no flow.name",
                        node=node.name,
                    )
                )
                continue
            target = flows.get(node.flow_name)
            if target is None:
                hint = (
                    f" ({node.flow_name!r} is a job other jobs depend on, so it is not a flow)"
                    if node.flow_name in jobs
                    else ""
                )
                problems.append(
                    Problem(
                        Kind.EMBEDDED_FLOW,
                        node.source_file,
                        f"job {node.name!r} embeds flow.name={node.flow_name!r}, but no such flow exists{hint}",
                        node=node.name,
                        line=node.key_lines.get("flow.name"),
                    )
                )
                continue
            node.embedded_flow = target
            embeds.setdefault(flow.name, []).append((node, target.name))
    _check_embedded_cycles(flows, embeds, problems)
    return flows, jobs, properties_files


def _build_flow(root_node: Node, jobs: dict[str, Node]) -> Flow:
    """The flow named after ``root_node``: it and its transitive dependencies, dependencies first."""
    ordered: dict[str, Node] = {}
    visiting: set[str] = set()
    # iterative post-order DFS following the declared dependency order
    stack: list[tuple[Node, int]] = [(root_node, 0)]
    visiting.add(root_node.name)
    while stack:
        node, i = stack[-1]
        if i < len(node.depends_on):
            stack[-1] = (node, i + 1)
            dep = jobs.get(node.depends_on[i])
            if dep is None or dep.name in ordered or dep.name in visiting:
                continue  # undefined, already placed, or a cycle (reported by validation)
            visiting.add(dep.name)
            stack.append((dep, 0))
            continue
        stack.pop()
        visiting.discard(node.name)
        ordered[node.name] = node
    return Flow(name=root_node.name, nodes=ordered, source_file=root_node.source_file, root=root_node.name)


def _check_embedded_cycles(
    flows: dict[str, Flow], embeds: dict[str, list[tuple[Node, str]]], problems: list[Problem]
) -> None:
    """One error per flow whose embedded flows lead back to a flow on the path, with the path.

    The embedding that closes a cycle is cut (``embedded_flow=None``) so the model stays finite.
    """
    graph = {name: list(dict.fromkeys(t for _, t in embeds.get(name, ()))) for name in flows}
    cyclic_edges: set[tuple[str, str]] = set()
    for start, start_flow in flows.items():
        path = _embedded_cycle_from(start, graph)
        if path is None:
            continue
        for a, b in itertools.pairwise(path):
            cyclic_edges.add((a, b))
        problems.append(
            Problem(
                Kind.CYCLE,
                start_flow.source_file,
                f"embedded flow cycle: {' -> '.join(path)} (each flow embeds the next through type=flow)",
                flow=start,
                severity=ERROR,
            )
        )
    if not cyclic_edges:
        return
    for name, pairs in embeds.items():
        for node, target in pairs:
            if (name, target) in cyclic_edges:
                node.embedded_flow = None


def _embedded_cycle_from(start: str, graph: dict[str, list[str]]) -> list[str] | None:
    """The first embedding path from ``start`` that revisits a flow on the path (DFS)."""
    path = [start]
    on_path = {start}
    iters = [iter(graph.get(start, ()))]
    done: set[str] = set()
    while iters:
        nxt = next(iters[-1], None)
        if nxt is None:
            iters.pop()
            finished = path.pop()
            on_path.discard(finished)
            done.add(finished)
            continue
        if nxt in on_path:
            return [*path, nxt]
        if nxt in done:
            continue
        path.append(nxt)
        on_path.add(nxt)
        iters.append(iter(graph.get(nxt, ())))
    return None
