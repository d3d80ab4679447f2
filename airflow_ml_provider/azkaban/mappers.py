"""Per-job-type mappers: the intermediate model (:mod:`.model`) -> a render plan (:class:`DagPlan`).

Each Azkaban job becomes exactly one task whose task_id is the job name; a node embedding a flow
becomes a TaskGroup named after it. Job types with a mapping: ``command``, ``noop``,
``javaprocess`` (alias ``java``), ``hive``, ``flow``; any other type becomes a task that fails at
run time showing the original properties, plus an ``unknown-job-type`` warning. No job is dropped.

Static job properties handled by Airflow itself (``retries``, ``retry.backoff``,
``*.emails``) are checked here so that bad values are reported at migration time; the values
themselves are applied at DAG parse time by :func:`airflow_ml_provider.azkaban.runtime.job`.

Pure: no Airflow import.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.azkaban.conditions import ConditionError, parse_condition
from airflow_ml_provider.azkaban.model import ERROR, STRUCTURAL_KEYS, WARNING, Flow, Node, Problem, Project
from airflow_ml_provider.azkaban.quartz import QuartzError, convert_quartz

__all__ = [
    "KNOWN_TYPES",
    "DagPlan",
    "GroupPlan",
    "MigrateKind",
    "ScheduleSpec",
    "TaskPlan",
    "plan_flow",
]

#: job types with a run-time implementation in runtime.py
KNOWN_TYPES = frozenset({"command", "noop", "javaprocess", "java", "hive"})
_ID_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


class MigrateKind:
    """Problem kinds added by the migration (besides the reader's :class:`.model.Kind`)."""

    UNKNOWN_JOB_TYPE = "unknown-job-type"
    JOB_PROPS = "job-props"
    SCHEDULE = "schedule"
    INVALID_SCHEDULE = "invalid-schedule"
    DISABLED_JOB = "disabled-job"
    CONDITION = "condition"
    RENAMED = "renamed"
    TRIGGER = "trigger"
    RENDER = "render"


@dataclass
class TaskPlan:
    """One task: ``job(name, job_type, props, inherited=..., condition=...)``."""

    name: str
    job_type: str
    props: dict[str, str]
    inherited: dict[str, str]
    condition: str | None = None
    ref_prefix: str | None = None  # for conditions moved onto the first jobs of an embedded flow
    source_file: str = ""
    job_dir: str = ""  # the defining file's directory, relative to the project root


@dataclass
class GroupPlan:
    """A TaskGroup (an embedded flow) or the DAG's top level."""

    name: str
    members: list[TaskPlan | GroupPlan] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    # for embedded flows: the own properties of each embedding node, outermost first (Azkaban
    # passes them down as the sub-flow's input properties, above the flow's parameters)
    embedding_props: list[dict[str, str]] | None = None
    flow_name: str = ""


@dataclass
class ScheduleSpec:
    """Where the schedule came from and its Airflow form."""

    quartz: str
    cron: str | None
    timezone: str | None = None
    origin: str = ""


@dataclass
class DagPlan:
    """Everything :mod:`.render` needs for one DAG file."""

    dag_id: str
    flow_name: str
    project: str
    source_file: str
    flow_version: str
    root: GroupPlan
    flow_props: dict[str, str] = field(default_factory=dict)
    schedule: ScheduleSpec | None = None
    disabled: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def task_ids(self) -> list[str]:
        out: list[str] = []

        def walk(group: GroupPlan, prefix: str) -> None:
            for m in group.members:
                if isinstance(m, GroupPlan):
                    walk(m, f"{prefix}{m.name}.")
                else:
                    out.append(prefix + m.name)

        walk(self.root, "")
        return out

    def group_ids(self) -> list[str]:
        out: list[str] = []

        def walk(group: GroupPlan, prefix: str) -> None:
            for m in group.members:
                if isinstance(m, GroupPlan):
                    out.append(prefix + m.name)
                    walk(m, f"{prefix}{m.name}.")

        walk(self.root, "")
        return out

    @property
    def task_count(self) -> int:
        return len(self.task_ids())


def _clean(props: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in props.items() if k not in STRUCTURAL_KEYS}


def _problem(
    kind: str,
    plan_flow: str,
    message: str,
    *,
    file: str = "",
    node: str | None = None,
    severity: str = WARNING,
) -> Problem:
    return Problem(kind=kind, file=file, message=message, flow=plan_flow, node=node, severity=severity)


def _check_static_props(node: Node, task_id: str, flow: str, problems: list[Problem]) -> None:
    merged = node.merged_props()
    for key in ("retries", "retry.backoff"):
        value = merged.get(key)
        if value is None or not value.strip():
            continue
        if not re.fullmatch(r"\s*\d+\s*", value):
            problems.append(
                _problem(
                    MigrateKind.JOB_PROPS,
                    flow,
                    f"job {task_id!r}: {key}={value!r} is not a whole number; Airflow's default is used",
                    file=node.source_file,
                    node=task_id,
                )
            )


def _map_group(
    flow: Flow,
    group_name: str,
    prefix: str,
    dag_flow: str,
    problems: list[Problem],
    stack: tuple[int, ...],
    embedding: list[dict[str, str]] | None = None,
) -> GroupPlan:
    group = GroupPlan(name=group_name, flow_name=flow.name, embedding_props=embedding)
    try:
        order = flow.topological_order()
    except Exception:  # noqa: BLE001 - a cycle is reported by the reader; keep file order
        order = list(flow.nodes)
    for name in order:
        node = flow.nodes[name]
        task_id = prefix + name
        if not _ID_OK.match(name):
            problems.append(
                _problem(
                    MigrateKind.RENAMED,
                    dag_flow,
                    f"job name {name!r} has characters Airflow task ids do not allow "
                    "(letters, digits, '_', '-', '.')",
                    file=node.source_file,
                    node=task_id,
                    severity=ERROR,
                )
            )
            continue
        condition = node.condition
        if condition:
            try:
                parse_condition(condition)
            except ConditionError as exc:
                problems.append(
                    _problem(
                        MigrateKind.CONDITION,
                        dag_flow,
                        f"job {task_id!r}: {exc}",
                        file=node.source_file,
                        node=task_id,
                        severity=ERROR,
                    )
                )
                continue
        if node.is_flow:
            sub = node.embedded_flow
            if sub is None or id(sub) in stack:
                problems.append(
                    _problem(
                        MigrateKind.RENDER,
                        dag_flow,
                        f"embedded flow node {task_id!r} cannot be converted (its flow is missing or cyclic)",
                        file=node.source_file,
                        node=task_id,
                        severity=ERROR,
                    )
                )
                continue
            child = _map_group(
                sub,
                name,
                f"{task_id}.",
                dag_flow,
                problems,
                (*stack, id(sub)),
                [*(embedding or []), _clean(node.props)],
            )
            if condition:
                # Azkaban evaluates the condition of the embedding node once; here each first job
                # of the embedded flow checks it, against the same parents.
                for member in child.members:
                    if isinstance(member, TaskPlan) and member.name in sub.roots():
                        member.condition = condition
                        member.ref_prefix = prefix
                problems.append(
                    _problem(
                        MigrateKind.CONDITION,
                        dag_flow,
                        f"condition on embedded flow {task_id!r} is checked by each of its first jobs",
                        file=node.source_file,
                        node=task_id,
                    )
                )
            group.members.append(child)
            continue
        job_type = (node.type or "").strip()
        if job_type not in KNOWN_TYPES:
            problems.append(
                _problem(
                    MigrateKind.UNKNOWN_JOB_TYPE,
                    dag_flow,
                    f"job {task_id!r} has type {job_type!r}, which has no Airflow mapping: the task fails at "
                    "run time showing the job's properties",
                    file=node.source_file,
                    node=task_id,
                )
            )
        if job_type == "command" and not any(
            k == "command" or re.fullmatch(r"command\.\d+", k) for k in node.merged_props()
        ):
            problems.append(
                _problem(
                    MigrateKind.JOB_PROPS,
                    dag_flow,
                    f"command job {task_id!r} has no 'command' property: it fails at run time",
                    file=node.source_file,
                    node=task_id,
                )
            )
        _check_static_props(node, task_id, dag_flow, problems)
        group.members.append(
            TaskPlan(
                name=name,
                job_type=job_type,
                props=_clean(node.props),
                inherited=_clean(node.inherited_props),
                condition=condition or None,
                source_file=node.source_file,
                job_dir=posixpath.dirname(node.source_file),
            )
        )
    mapped = {m.name for m in group.members}
    group.edges = [
        (e.upstream, e.downstream) for e in flow.edges if e.upstream in mapped and e.downstream in mapped
    ]
    return group


def _disabled_ids(entries: Sequence[Any], prefix: str = "") -> list[str]:
    """Azkaban ``disabledJobs``: names, or ``{"id": embedded, "children": [...]}`` for embedded flows."""
    out: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            out.append(prefix + entry)
        elif isinstance(entry, Mapping):
            ident = str(entry.get("id") or entry.get("name") or "")
            children = entry.get("children")
            if children:
                out.extend(_disabled_ids(children, f"{prefix}{ident}."))
            elif ident:
                out.append(prefix + ident)
    return out


def _reader_rejected_trigger(project: Project, flow_name: str) -> bool:
    """True when the reader already reported the flow's trigger as an error (no double report)."""
    return any(p.kind == "invalid-trigger" and p.is_error for p in project.flow_problems(flow_name))


def plan_flow(
    project: Project,
    flow_name: str,
    *,
    dag_id_prefix: str = "",
    schedule: Mapping[str, Any] | None = None,
) -> DagPlan:
    """Map one top-level flow to a :class:`DagPlan`.

    :param schedule: this flow's entry of ``--schedules`` (see :mod:`.schedules`):
        ``{"cron": ..., "timezone": ..., "disabled": [...], "flow_params": {...}}``.
    The plan's ``problems`` hold the migration's own findings (the reader's are in
    ``project.problems``); an error there means no DAG is written for the flow.
    """
    flow = project.flows[flow_name]
    problems: list[Problem] = []
    dag_id = f"{dag_id_prefix}{flow_name}"
    if not _ID_OK.match(dag_id) or len(dag_id) > 250:
        problems.append(
            _problem(
                MigrateKind.RENAMED,
                flow_name,
                f"dag_id {dag_id!r} is not a valid Airflow dag_id (letters, digits, '_', '-', '.'; at most 250)",
                file=flow.source_file,
                severity=ERROR,
            )
        )
    root = _map_group(flow, "", "", flow_name, problems, (id(flow),))
    plan = DagPlan(
        dag_id=dag_id,
        flow_name=flow_name,
        project=project.name,
        source_file=flow.source_file,
        flow_version=project.flow_version,
        root=root,
        flow_props=dict(flow.flow_props),
        problems=problems,
    )

    # schedule: --schedules wins over a Flow 2.0 trigger
    quartz, origin, tz = None, "", None
    if schedule and schedule.get("cron"):
        quartz, origin, tz = str(schedule["cron"]), "--schedules", schedule.get("timezone")
    elif flow.trigger is not None and flow.trigger.cron and not _reader_rejected_trigger(project, flow_name):
        quartz, origin = flow.trigger.cron, f"trigger in {flow.source_file}"
        if flow.trigger.dependencies:
            names = ", ".join(str(d.name) for d in flow.trigger.dependencies)
            problems.append(
                _problem(
                    MigrateKind.TRIGGER,
                    flow_name,
                    f"trigger dependencies ({names}) have no Airflow equivalent here; only the cron schedule "
                    "is kept (consider Airflow assets or sensors)",
                    file=flow.source_file,
                )
            )
    if quartz is not None:
        try:
            conv = convert_quartz(quartz)
        except QuartzError as exc:
            problems.append(
                _problem(
                    MigrateKind.INVALID_SCHEDULE,
                    flow_name,
                    f"{exc} ({origin})",
                    file=flow.source_file,
                    severity=ERROR,
                )
            )
        else:
            plan.schedule = ScheduleSpec(quartz, conv.cron, str(tz) if tz else None, origin)
            for warning in conv.warnings:
                problems.append(_problem(MigrateKind.SCHEDULE, flow_name, warning, file=flow.source_file))

    if schedule:
        wanted = _disabled_ids(schedule.get("disabled") or [])
        tasks = set(plan.task_ids())
        groups = set(plan.group_ids())
        disabled: list[str] = []
        for ident in wanted:
            if ident in tasks:
                disabled.append(ident)
            elif ident in groups:  # a whole embedded flow: disable every job in it
                disabled.extend(t for t in plan.task_ids() if t.startswith(ident + "."))
            else:
                problems.append(
                    _problem(
                        MigrateKind.DISABLED_JOB,
                        flow_name,
                        f"disabledJobs names {ident!r}, which is not a job of flow {flow_name!r}; ignored",
                        file=flow.source_file,
                    )
                )
        plan.disabled = list(dict.fromkeys(disabled))
        params = schedule.get("flow_params") or {}
        plan.flow_props.update({str(k): str(v) for k, v in params.items()})
    return plan
