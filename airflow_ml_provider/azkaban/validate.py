"""Validation of a loaded Azkaban project: cycles, dependencies, names, conditions, triggers.

Pure (no Airflow). Each finding is a :class:`~airflow_ml_provider.azkaban.model.Problem` naming
the file and the problem.
"""

from __future__ import annotations

import re as _re
from collections.abc import Mapping, Sequence

from airflow_ml_provider.azkaban.model import (
    ERROR,
    WARNING,
    Flow,
    Kind,
    Node,
    Problem,
    Project,
    Trigger,
)

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


# --------------------------------------------------------------------------------------------
# project validation
# --------------------------------------------------------------------------------------------
__all__ += ["DEFAULT_MAX_XMS", "DEFAULT_MAX_XMX", "check_condition", "parse_mem", "validate_project"]

#: Azkaban's default server limits (job.max.Xms / job.max.Xmx)
DEFAULT_MAX_XMS = "1G"
DEFAULT_MAX_XMX = "2G"
#: Azkaban clamps a trigger's maxWaitMins to 10 days
MAX_TRIGGER_WAIT_MINS = 10 * 24 * 60
RESERVED_NODE_NAMES = frozenset({"ROOT"})

_MEM = _re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*$")
_VAR = _re.compile(r"\$\{[^}]*\}")


def parse_mem(text: str) -> int | None:
    """``"2G"`` -> bytes (k/m/g/t are powers of 1024; no suffix = bytes); ``None`` if unparseable."""
    m = _MEM.match(text)
    if not m:
        return None
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[m.group(2).lower()]
    return int(m.group(1)) * (1024**power)


def validate_project(
    project: Project, *, max_xms: str = DEFAULT_MAX_XMS, max_xmx: str = DEFAULT_MAX_XMX
) -> None:
    """Check a loaded project and append every finding to ``project.problems``.

    Errors: dependency cycles (with the path), conditions that reference an unknown job or a
    descendant, that have an empty operand, that cannot be parsed or that combine two status
    macros, reserved node names, trigger rules (2.0). Warnings: Xms/Xmx above the server limits,
    no flow at all. (Duplicates, undefined / self dependencies and missing types are reported by
    the loaders, which see the files.)
    """
    problems = project.problems
    if project.flow_version == "1.0":
        _validate_flow1(project, problems)
    else:
        for flow in project.flows.values():
            _validate_flow2_level(flow, flow.name, (), problems)
            if flow.trigger is not None:
                _validate_trigger(flow, flow.trigger, problems)
    _check_memory(project, problems, max_xms, max_xmx)
    if not project.flows and not project.has_errors:
        problems.append(
            Problem(Kind.NO_FLOWS, "", "the project defines no flow; nothing to convert", severity=WARNING)
        )


# ----- Flow 1.0 --------------------------------------------------------------------------------
def _validate_flow1(project: Project, problems: list[Problem]) -> None:
    jobs = project.jobs
    graph = {name: [d for d in node.depends_on if d in jobs and d != name] for name, node in jobs.items()}
    for cycle in find_cycles(graph):
        first = jobs[cycle[0]]
        problems.append(
            Problem(
                Kind.CYCLE,
                first.source_file,
                f"dependency cycle: {' -> '.join(cycle)} (each job depends on the next)",
                node=cycle[0],
                line=first.key_lines.get("dependencies"),
            )
        )
    for flow in project.flows.values():
        for node in flow.nodes.values():
            if node.condition is not None:
                for msg in check_condition(flow, node):
                    problems.append(
                        Problem(
                            Kind.INVALID_CONDITION,
                            node.source_file,
                            msg,
                            flow=flow.name,
                            node=node.name,
                            line=node.key_lines.get("condition"),
                        )
                    )


# ----- Flow 2.0 --------------------------------------------------------------------------------
def _validate_flow2_level(flow: Flow, top: str, path: tuple[str, ...], problems: list[Problem]) -> None:
    where = "flow " + ":".join((top, *path))
    names = set(flow.nodes)
    for node in flow.nodes.values():
        dotted = ".".join((*path, node.name))
        if node.name in RESERVED_NODE_NAMES:
            problems.append(
                Problem(
                    Kind.RESERVED_NAME,
                    node.source_file,
                    f"node name {node.name!r} is reserved by Azkaban (in {where})",
                    flow=top,
                    node=dotted,
                    line=node.line,
                )
            )
        if node.type is None:
            problems.append(
                Problem(
                    Kind.MISSING_TYPE,
                    node.source_file,
                    f"node {node.name!r} in {where} has no type (add e.g. 'type: command')",
                    flow=top,
                    node=dotted,
                    line=node.line,
                )
            )
        for dep in node.depends_on:
            if dep == node.name:
                problems.append(
                    Problem(
                        Kind.SELF_DEPENDENCY,
                        node.source_file,
                        f"node {node.name!r} in {where} depends on itself",
                        flow=top,
                        node=dotted,
                        line=node.line,
                    )
                )
            elif dep not in names:
                problems.append(
                    Problem(
                        Kind.UNDEFINED_DEPENDENCY,
                        node.source_file,
                        f"node {node.name!r} in {where} depends on {dep!r}, which is not defined in that flow",
                        flow=top,
                        node=dotted,
                        line=node.line,
                    )
                )
        if node.condition is not None:
            for msg in check_condition(flow, node):
                problems.append(
                    Problem(
                        Kind.INVALID_CONDITION,
                        node.source_file,
                        msg,
                        flow=top,
                        node=dotted,
                        line=node.line,
                    )
                )
    graph = {n.name: [d for d in n.depends_on if d in names and d != n.name] for n in flow.nodes.values()}
    for cycle in find_cycles(graph):
        first = flow.nodes[cycle[0]]
        problems.append(
            Problem(
                Kind.CYCLE,
                first.source_file,
                f"dependency cycle in {where}: {' -> '.join(cycle)} (each node depends on the next)",
                flow=top,
                node=".".join((*path, cycle[0])),
                line=first.line,
            )
        )
    for node in flow.nodes.values():
        if node.embedded_flow is not None:
            _validate_flow2_level(node.embedded_flow, top, (*path, node.name), problems)


def _validate_trigger(flow: Flow, trigger: Trigger, problems: list[Problem]) -> None:
    def err(msg: str, severity: str = ERROR) -> None:
        problems.append(
            Problem(
                Kind.INVALID_TRIGGER,
                flow.source_file,
                f"flow {flow.name!r} trigger: {msg}",
                flow=flow.name,
                severity=severity,
                line=trigger.line,
            )
        )

    raw = trigger.raw
    schedule = raw.get("schedule")
    if not isinstance(schedule, dict):
        err("'schedule' is missing (expected schedule: {type: cron, value: <Quartz cron>})")
    else:
        if trigger.schedule_type != "cron":
            err(f"schedule type must be 'cron', got {trigger.schedule_type!r}")
        extra = sorted(str(k) for k in schedule if k not in ("type", "value"))
        if extra:
            err(f"schedule must contain only 'type' and 'value' (found {', '.join(extra)})")
        if not trigger.cron:
            err("schedule value (the Quartz cron expression) is missing")
        else:
            quartz_error = _quartz_error(trigger.cron)
            if quartz_error:
                err(quartz_error)
            elif trigger.cron.split()[0] != "0":
                err(
                    f"the seconds field of cron {trigger.cron!r} must be 0 "
                    "(Azkaban rejects trigger schedules more frequent than once a minute)"
                )
    deps_raw = raw.get("triggerDependencies") or []
    if not isinstance(deps_raw, list):
        err("'triggerDependencies' must be a list")
        deps_raw = []
    seen_names: set[str] = set()
    seen_defs: list[tuple[object, object]] = []
    for i, d in enumerate(deps_raw, 1):
        if not isinstance(d, dict):
            err(f"trigger dependency #{i} must be a mapping")
            continue
        name, type_ = d.get("name"), d.get("type")
        if name is None:
            err(f"trigger dependency #{i} has no name")
        if type_ is None:
            err(f"trigger dependency #{i} ({name or 'unnamed'}) has no type")
        if name is not None:
            if name in seen_names:
                err(f"duplicate trigger dependency name {name!r}")
            seen_names.add(name)
        definition = (type_, d.get("params"))
        if type_ is not None and definition in seen_defs:
            err(f"trigger dependency {name!r} repeats the type and params of an earlier one")
        seen_defs.append(definition)
    mw = raw.get("maxWaitMins")
    if mw is None:
        if deps_raw:
            err("maxWaitMins is required when triggerDependencies are defined")
        trigger.max_wait_mins = None
    else:
        try:
            value = int(mw)
            if isinstance(mw, bool) or (isinstance(mw, float) and mw != value):
                raise ValueError
        except (TypeError, ValueError):
            err(f"maxWaitMins must be a whole number of minutes, got {mw!r}")
            return
        if value < 1:
            err(f"maxWaitMins must be at least 1 minute, got {value}")
        elif value > MAX_TRIGGER_WAIT_MINS:
            err(
                f"maxWaitMins {value} is more than 10 days; clamped to {MAX_TRIGGER_WAIT_MINS} as Azkaban does",
                WARNING,
            )
            trigger.max_wait_mins = MAX_TRIGGER_WAIT_MINS
        else:
            trigger.max_wait_mins = value


def _quartz_error(cron: str) -> str | None:
    try:
        from airflow_ml_provider.azkaban.quartz import QuartzError, parse_quartz
    except ImportError:  # pragma: no cover - quartz.py is part of the package
        n = len(cron.split())
        return None if n in (6, 7) else f"invalid Quartz cron {cron!r}: expected 6 or 7 fields, got {n}"
    try:
        parse_quartz(cron)
    except QuartzError as exc:
        return str(exc)
    return None


# ----- conditions -------------------------------------------------------------------------------
_EMPTY_PARENS = _re.compile(r"\(\s*\)")


def check_condition(flow: Flow, node: Node) -> list[str]:
    """Messages for what is wrong with ``node.condition`` inside ``flow`` (empty when valid).

    Azkaban's rules: the condition parses; at most one status macro; no empty operand; every
    ``${job:param}`` names a job of the same flow that is not the node itself nor a descendant.
    """
    text = node.condition or ""
    prefix = f"condition of {node.name!r} ({text})"
    if _EMPTY_PARENS.search(text):
        return [f"{prefix}: operand is an empty string ('()')"]
    try:
        from airflow_ml_provider.azkaban.conditions import ConditionError, parse_condition
    except ImportError:  # pragma: no cover - conditions.py is part of the package
        return []
    try:
        cond = parse_condition(text)
    except ConditionError as exc:
        reason = str(exc)
        if "more than one" in reason:
            return [f"{prefix}: cannot combine more than one condition-on-job-status macro"]
        if reason.startswith("condition "):
            return [
                f"condition of {node.name!r}: cannot resolve the condition: {reason[len('condition ') :]}"
            ]
        return [f"{prefix}: cannot resolve the condition: {reason}"]
    out = []
    descendants: set[str] | None = None
    for job in cond.referenced_jobs():
        if job == node.name:
            out.append(f"{prefix}: refers to the job itself ({job!r})")
        elif job not in flow.nodes:
            out.append(f"{prefix}: {job!r} doesn't exist in the flow")
        else:
            if descendants is None:
                descendants = flow.descendants(node.name)
            if job in descendants:
                out.append(f"{prefix}: should not define a condition on its descendant node {job!r}")
    return out


# ----- memory settings -------------------------------------------------------------------------
def _check_memory(project: Project, problems: list[Problem], max_xms: str, max_xmx: str) -> None:
    limits = {"Xms": (max_xms, parse_mem(max_xms)), "Xmx": (max_xmx, parse_mem(max_xmx))}
    seen: set[int] = set()
    for flow in project.flows.values():
        for path, node in flow.walk():
            if id(node) in seen:
                continue
            seen.add(id(node))
            for key, (limit_text, limit) in limits.items():
                value = node.get(key)
                if value is None or limit is None or _VAR.search(value):
                    continue
                size = parse_mem(value)
                dotted = ".".join(path) if project.flow_version == "2.0" else node.name
                if size is None:
                    problems.append(
                        Problem(
                            Kind.JOB_PROPS,
                            node.source_file,
                            f"job {node.name!r}: cannot read {key}={value!r} as a memory size",
                            flow=flow.name if project.flow_version == "2.0" else None,
                            node=dotted,
                            severity=WARNING,
                            line=node.key_lines.get(key, node.line),
                        )
                    )
                elif size > limit:
                    problems.append(
                        Problem(
                            Kind.JOB_PROPS,
                            node.source_file,
                            f"job {node.name!r}: {key} value {value} exceeds Azkaban's allowed limit "
                            f"(max {key} = {limit_text}); Azkaban would reject it, the migration keeps it",
                            flow=flow.name if project.flow_version == "2.0" else None,
                            node=dotted,
                            severity=WARNING,
                            line=node.key_lines.get(key, node.line),
                        )
                    )
