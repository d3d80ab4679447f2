"""Per-job-type mappers: the intermediate model (:mod:`.model`) -> a render plan (:class:`DagPlan`).

Each Azkaban job becomes exactly one task whose task_id is the job name; a node embedding a flow
becomes a TaskGroup named after it. Names Airflow does not accept are mapped deterministically
(:func:`local_ids`): a character other than a letter, digit, ``_``, ``-`` (or ``.`` in a task id)
becomes ``_``, and a clash with a sibling gets ``_2``, ``_3``, ...; the original name stays the
job's ``job_name`` (``JOB_NAME``, ``${azkaban.job.id}``, logs). Job types with a mapping:
``command``, ``noop``, ``javaprocess``, ``java`` (Azkaban's JavaJob, a runner of its own),
``hive``, ``flow``; any other type becomes a task that fails at run time showing the original
properties, plus an ``unknown-job-type`` warning naming the job and the type. No job is dropped.

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
    "BUILTIN_KEYS",
    "KNOWN_TYPES",
    "DagPlan",
    "GroupPlan",
    "MigrateKind",
    "ScheduleSpec",
    "TaskPlan",
    "local_ids",
    "plan_flow",
]

#: job types with a run-time implementation in runtime.py
KNOWN_TYPES = frozenset({"command", "noop", "javaprocess", "java", "hive"})
_ID_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TASK_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
_GROUP_BAD = re.compile(r"[^A-Za-z0-9_\-]")

#: the built-in properties the run time defines (runtime.builtin_props; a test keeps them equal)
BUILTIN_KEYS = frozenset(
    {
        "azkaban.flow.flowid",
        "azkaban.flow.execid",
        "azkaban.flow.projectname",
        "azkaban.job.id",
        "azkaban.job.attempt",
        *(
            f"azkaban.flow.start.{part}"
            for part in (
                "timestamp",
                "year",
                "month",
                "day",
                "hour",
                "minute",
                "second",
                "milliseconds",
                "timezone",
            )
        ),
    }
)

#: Azkaban job-type plugins without a runner here: what the plugin does, and the Airflow way
_PLUGIN_HINTS = {
    "javajar": "runs a main class from a jar (javajar plugin); use a BashOperator running `java -jar`",
    "pig": "runs a Pig script (pig plugin: pig.script); use a BashOperator running `pig -f` or the Apache Pig provider",
    "hadoopjava": "runs a Hadoop Java job (hadoopJava plugin: job.class); use a BashOperator running `hadoop jar`",
    "hadoopshell": "runs a shell command with Hadoop tokens (hadoopShell plugin); use a BashOperator",
    "spark": "submits a Spark application (spark plugin: class, execution-jar, params); use the Apache Spark "
    "provider's SparkSubmitOperator",
    "hive2": "runs a query on HiveServer2 (hive2 plugin); use the Apache Hive provider",
    "pythonjob": "runs a Python script (pythonjob plugin)",
    "kafkapushjob": "pushes data to Kafka (kafkaPushJob plugin); use the Apache Kafka provider",
    "voldemortbuildandpush": "builds and pushes a Voldemort store; no Airflow equivalent",
    "email": "sends an e-mail; use the SMTP provider's EmailOperator",
}


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
    UNDEFINED = "undefined-property"
    EXPANSION = "expansion"
    TIMEZONE = "timezone"
    COLLISION = "collision"
    IMPORT = "import"


@dataclass
class TaskPlan:
    """One task: ``job(task_id, job_type, props, inherited=..., condition=...)``."""

    name: str  # the Azkaban job name
    job_type: str
    props: dict[str, str]
    inherited: dict[str, str]
    condition: str | None = None
    ref_prefix: str | None = None  # for conditions moved onto the first jobs of an embedded flow
    source_file: str = ""
    job_dir: str = ""  # the defining file's directory, relative to the project root
    task_id: str = ""  # the local Airflow id (the name, or a valid id made from it)
    job_ids: dict[str, str] = field(default_factory=dict)  # condition refs whose id != name

    def __post_init__(self) -> None:
        self.task_id = self.task_id or self.name


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
    group_id: str = ""  # the local TaskGroup id (the name, or a valid id made from it)

    def __post_init__(self) -> None:
        self.group_id = self.group_id or self.name


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
    timezone: str = "UTC"
    # flow parameters shown in the trigger form: keys referenced but defined nowhere (no default)
    undefined: list[str] = field(default_factory=list)
    uses_start_time: bool = False  # some job uses ${azkaban.flow.start.*}

    def tasks(self) -> list[tuple[str, TaskPlan]]:
        """``(full task id, plan)`` of every task, groups expanded."""
        out: list[tuple[str, TaskPlan]] = []

        def walk(group: GroupPlan, prefix: str) -> None:
            for m in group.members:
                if isinstance(m, GroupPlan):
                    walk(m, f"{prefix}{m.group_id}.")
                else:
                    out.append((prefix + m.task_id, m))

        walk(self.root, "")
        return out

    def task_ids(self) -> list[str]:
        return [t for t, _ in self.tasks()]

    def group_ids(self) -> list[str]:
        out: list[str] = []

        def walk(group: GroupPlan, prefix: str) -> None:
            for m in group.members:
                if isinstance(m, GroupPlan):
                    out.append(prefix + m.group_id)
                    walk(m, f"{prefix}{m.group_id}.")

        walk(self.root, "")
        return out

    def name_to_id(self) -> dict[tuple[str, ...], str]:
        """Azkaban name paths (``("embedded", "job")``) -> full Airflow ids, of tasks and groups."""
        out: dict[tuple[str, ...], str] = {}

        def walk(group: GroupPlan, names: tuple[str, ...], ids: str) -> None:
            for m in group.members:
                if isinstance(m, GroupPlan):
                    out[(*names, m.name)] = ids + m.group_id
                    walk(m, (*names, m.name), f"{ids}{m.group_id}.")
                else:
                    out[(*names, m.name)] = ids + m.task_id

        walk(self.root, (), "")
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


def local_ids(names: Sequence[str], groups: Sequence[str] = ()) -> dict[str, str]:
    """Valid Airflow ids for the sibling ``names`` (tasks) and ``groups`` (TaskGroups), by name.

    A name Airflow accepts keeps itself (task ids may hold letters, digits, ``_``, ``-``, ``.``;
    TaskGroup ids no ``.``). Any other character becomes ``_``; a result that clashes with a
    sibling's id gets ``_2``, ``_3``, ... The renamed names are handled in sorted order, so the
    mapping depends only on the set of sibling names.
    """
    ids: dict[str, str] = {}
    group_set = set(groups)
    for name in (*names, *groups):
        bad = _GROUP_BAD if name in group_set else _TASK_BAD
        if name and not bad.search(name):
            ids[name] = name
    taken = {i.lower() for i in ids.values()}
    for name in sorted(n for n in (*names, *groups) if n not in ids):
        bad = _GROUP_BAD if name in group_set else _TASK_BAD
        base = bad.sub("_", name) or "job"
        ident, n = base, 2
        while ident.lower() in taken:
            ident = f"{base}_{n}"
            n += 1
        taken.add(ident.lower())
        ids[name] = ident
    return ids


def _type_warning(task_id: str, job_type: str) -> str:
    hint = _PLUGIN_HINTS.get(job_type.lower())
    if not job_type:
        return f"job {task_id!r} has no type: the task fails at run time showing the job's properties"
    what = f" (Azkaban's {job_type} job type {hint})" if hint else ""
    return (
        f"job {task_id!r} has type {job_type!r}{what}, which has no Airflow mapping here: the task fails "
        "at run time showing the job's properties"
    )


def _map_group(
    flow: Flow,
    group_name: str,
    prefix: str,
    dag_flow: str,
    problems: list[Problem],
    stack: tuple[int, ...],
    embedding: list[dict[str, str]] | None = None,
    outer_ids: Mapping[str, str] | None = None,
) -> GroupPlan:
    """Map ``flow``'s nodes; ``prefix`` is the Airflow id prefix (``"group."``) of its tasks."""
    group = GroupPlan(name=group_name, flow_name=flow.name, embedding_props=embedding)
    try:
        order = flow.topological_order()
    except Exception:  # noqa: BLE001 - a cycle is reported by the reader; keep file order
        order = list(flow.nodes)
    flows = [n for n in order if flow.nodes[n].is_flow]
    ids = local_ids([n for n in order if n not in set(flows)], flows)
    for name in order:
        node = flow.nodes[name]
        ident = ids[name]
        task_id = prefix + ident
        if ident != name:
            problems.append(
                _problem(
                    MigrateKind.RENAMED,
                    dag_flow,
                    f"{'embedded flow' if node.is_flow else 'job'} {name!r} has characters Airflow ids do not "
                    f"allow: its Airflow id is {task_id!r} (JOB_NAME and ${{azkaban.job.id}} keep {name!r})",
                    file=node.source_file,
                    node=task_id,
                )
            )
        condition = node.condition
        cond = None
        if condition:
            try:
                cond = parse_condition(condition)
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
        job_ids = {}
        if cond is not None:
            job_ids = {r: ids[r] for r in cond.referenced_jobs() if r in ids and ids[r] != r}
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
                ids,
            )
            child.group_id = ident
            if condition:
                # Azkaban evaluates the condition of the embedding node once; here each first job
                # of the embedded flow checks it, against the same parents.
                for member in child.members:
                    if isinstance(member, TaskPlan) and member.name in sub.roots():
                        member.condition = condition
                        member.ref_prefix = prefix
                        member.job_ids = job_ids
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
                    _type_warning(task_id, job_type),
                    file=node.source_file,
                    node=task_id,
                )
            )
        merged = node.merged_props()
        if job_type == "command" and not any(
            k == "command" or re.fullmatch(r"command\.\d+", k) for k in merged
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
        if job_type == "java" and not merged.get("job.class", "").strip():
            problems.append(
                _problem(
                    MigrateKind.JOB_PROPS,
                    dag_flow,
                    f"java job {task_id!r} has no 'job.class' property (Azkaban's JavaJob runs job.class): "
                    "it fails at run time",
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
                task_id=ident,
                job_ids=job_ids,
            )
        )
    mapped = {m.name for m in group.members}
    group.edges = [
        (e.upstream, e.downstream) for e in flow.edges if e.upstream in mapped and e.downstream in mapped
    ]
    return group


def _disabled_paths(entries: Sequence[Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Azkaban ``disabledJobs``: names, or ``{"id": embedded, "children": [...]}`` for embedded flows."""
    out: list[tuple[str, ...]] = []
    for entry in entries or []:
        if isinstance(entry, str):
            out.append((*prefix, entry))
        elif isinstance(entry, Mapping):
            ident = str(entry.get("id") or entry.get("name") or "")
            children = entry.get("children")
            if children:
                out.extend(_disabled_paths(children, (*prefix, ident)))
            elif ident:
                out.append((*prefix, ident))
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
    timezone: str = "UTC",
) -> DagPlan:
    """Map one top-level flow to a :class:`DagPlan`.

    :param schedule: this flow's entry of ``--schedules`` (see :mod:`.schedules`):
        ``{"cron": ..., "timezone": ..., "disabled": [...], "flow_params": {...}}``.
    :param timezone: the Azkaban server's time zone (``--timezone``): the timetable's zone when the
        schedule names none, and the zone of the ``azkaban.flow.start.*`` built-ins.
    The plan's ``problems`` hold the migration's own findings (the reader's are in
    ``project.problems``); an error there means no DAG is written for the flow.
    """
    flow = project.flows[flow_name]
    problems: list[Problem] = []
    dag_id = f"{dag_id_prefix}{_TASK_BAD.sub('_', flow_name)}"
    if dag_id != f"{dag_id_prefix}{flow_name}":
        problems.append(
            _problem(
                MigrateKind.RENAMED,
                flow_name,
                f"flow name {flow_name!r} has characters Airflow dag ids do not allow: its dag_id is {dag_id!r}",
                file=flow.source_file,
            )
        )
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
        timezone=timezone or "UTC",
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
            # a schedule without its own zone (fetchSchedule JSON has none) runs in the server's zone
            plan.schedule = ScheduleSpec(quartz, conv.cron, str(tz) if tz else plan.timezone, origin)
            for warning in conv.warnings:
                problems.append(_problem(MigrateKind.SCHEDULE, flow_name, warning, file=flow.source_file))

    if schedule:
        wanted = _disabled_paths(schedule.get("disabled") or [])
        by_path = plan.name_to_id()
        groups = set(plan.group_ids())
        tasks = plan.task_ids()
        disabled: list[str] = []
        for path in wanted:
            ident = by_path.get(path)
            if ident is not None and ident not in groups:
                disabled.append(ident)
            elif ident is not None:  # a whole embedded flow: disable every job in it
                disabled.extend(t for t in tasks if t.startswith(ident + "."))
            else:
                problems.append(
                    _problem(
                        MigrateKind.DISABLED_JOB,
                        flow_name,
                        f"disabledJobs names {'.'.join(path)!r}, which is not a job of flow {flow_name!r}; ignored",
                        file=flow.source_file,
                    )
                )
        plan.disabled = list(dict.fromkeys(disabled))
        params = schedule.get("flow_params") or {}
        plan.flow_props.update({str(k): str(v) for k, v in params.items()})
    _check_references(plan, problems)
    return plan


def _check_references(plan: DagPlan, problems: list[Problem]) -> None:
    """Undefined ``${key}`` references (-> flow parameters of the trigger form, with a warning),
    expansion limits (:func:`.expansion.check_expansion`), use of ``azkaban.flow.start.*``."""
    from airflow_ml_provider.azkaban.expansion import VARIABLE, check_expansion

    builtins = dict.fromkeys(BUILTIN_KEYS, "0")
    undefined: dict[str, list[str]] = {}
    first_file: dict[str, str] = {}

    def walk(group: GroupPlan, prefix: str, embedding: list[dict[str, str]]) -> None:
        if group.embedding_props is not None:
            embedding = group.embedding_props
        for m in group.members:
            if isinstance(m, GroupPlan):
                walk(m, f"{prefix}{m.group_id}.", embedding)
                continue
            task_id = prefix + m.task_id
            layers = [m.inherited, plan.flow_props, builtins, *embedding, m.props]
            merged: dict[str, str] = {}
            for layer in layers:
                merged.update(layer)
            for value in merged.values():
                for key in VARIABLE.findall(value):
                    if key.startswith("azkaban.flow.start."):
                        plan.uses_start_time = True
                    if key not in merged:
                        undefined.setdefault(key, []).append(task_id)
                        first_file.setdefault(key, m.source_file)
            for message in check_expansion(layers, job=task_id):
                problems.append(
                    _problem(MigrateKind.EXPANSION, plan.flow_name, message, file=m.source_file, node=task_id)
                )

    walk(plan.root, "", [])
    for key, jobs in undefined.items():
        jobs = list(dict.fromkeys(jobs))
        shown = ", ".join(jobs[:5]) + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")
        problems.append(
            _problem(
                MigrateKind.UNDEFINED,
                plan.flow_name,
                f"${{{key}}} (used by {shown}) is defined by no property file, built-in or flow parameter: "
                "give it at run time as the flow parameter of the same name in the trigger form "
                "(or a parent job must output it)",
                file=first_file[key],
                node=jobs[0],
            )
        )
    plan.undefined = sorted(undefined)
