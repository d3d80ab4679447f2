"""The intermediate model of an Azkaban project (pure; no Airflow import).

``loader.load_project(source)`` reads a project directory or ``.zip`` into a :class:`Project`.
The mappers / renderer turn it into Airflow DAG files; the run-time helpers use
:func:`resolve_static_props` to reproduce Azkaban's property precedence.

Shape::

    Project(name, flow_version "1.0"|"2.0", flows {name: Flow}, resource_files, problems, ...)
      Flow(name, nodes {name: Node} (ordered), flow_props, trigger, source_file, ...)
        Node(name, type, props, inherited_props, props_chain, depends_on, condition,
             embedded_flow (a Flow, for type=flow), source_file, line, ...)
    Problem(kind, file, message, flow, node, severity, line)

Everything here is plain data: treat it as read-only. In Flow 1.0 the same :class:`Node`
(and the same embedded :class:`Flow`) object may appear in several flows, because Azkaban
builds every flow from the one shared set of ``.job`` files.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Self

__all__ = [
    "ERROR",
    "FLOW_TYPE",
    "STATUS_MACROS",
    "STRUCTURAL_KEYS",
    "WARNING",
    "CycleError",
    "Edge",
    "Flow",
    "Kind",
    "Node",
    "Problem",
    "Project",
    "ProjectCounts",
    "PropsFile",
    "Trigger",
    "TriggerDependency",
    "resolve_static_props",
]

#: the job type of a node that embeds another flow
FLOW_TYPE = "flow"
#: Flow 1.0 keys that describe the graph rather than configure the job
STRUCTURAL_KEYS = frozenset({"type", "dependencies", "condition", "flow.name", "root.node"})
#: condition macros on the parents' statuses (Azkaban's conditionOnJobStatus)
STATUS_MACROS = ("all_success", "all_failed", "all_done", "one_success", "one_failed")

ERROR = "error"
WARNING = "warning"


class Kind:
    """The ``Problem.kind`` values (stable strings, used in reports and ``--strict``)."""

    ARCHIVE = "archive"  # unsafe or unreadable zip / directory
    PROPERTIES = "properties"  # unreadable .job / .properties (bad \\uXXXX escape, I/O)
    INVALID_YAML = "invalid-yaml"  # .flow / .project is not YAML
    INVALID_FLOW = "invalid-flow"  # YAML parses, but the structure is wrong (nodes not a list, ...)
    FLOW_VERSION = "flow-version"  # .project without azkaban-flow-version: 2.0
    PROJECT_FILE = "project-file"  # more than one .project file
    MISSING_TYPE = "missing-type"  # job without type
    MISSING_NAME = "missing-name"  # 2.0 node without name
    RESERVED_NAME = "reserved-name"  # a 2.0 node called ROOT
    DUPLICATE_NODE = "duplicate-node"  # two jobs / nodes with the same name
    DUPLICATE_FLOW = "duplicate-flow"  # two .flow files with the same name
    UNDEFINED_DEPENDENCY = "undefined-dependency"
    SELF_DEPENDENCY = "self-dependency"
    CYCLE = "cycle"  # dependency cycle or embedded-flow cycle
    EMBEDDED_FLOW = "embedded-flow"  # type=flow without flow.name, or naming an unknown flow
    INVALID_CONDITION = "invalid-condition"
    INVALID_TRIGGER = "invalid-trigger"
    JOB_PROPS = "job-props"  # e.g. Xms/Xmx over Azkaban's limit (warning)
    NO_FLOWS = "no-flows"  # the project defines no flow (warning)


@dataclass(frozen=True)
class Problem:
    """One finding of the loader / validator.

    :param kind: one of :class:`Kind`.
    :param file: the project-relative file (posix) the problem is in (``""`` for the whole project).
    :param message: what is wrong, naming the key / node / dependency.
    :param flow: the top-level flow it concerns (``None``: decided by :meth:`Project.flow_problems`).
    :param node: the job / node it concerns, if any (for embedded nodes, dotted ``a.b``).
    :param severity: ``"error"`` or ``"warning"``.
    :param line: the 1-based line in ``file`` when known.
    """

    kind: str
    file: str
    message: str
    flow: str | None = None
    node: str | None = None
    severity: str = ERROR
    line: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def location(self) -> str:
        where = self.file or "<project>"
        return f"{where}:{self.line}" if self.line is not None else where

    def __str__(self) -> str:
        return f"{self.location()}: {self.severity}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "flow": self.flow,
            "node": self.node,
            "message": self.message,
        }


@dataclass(frozen=True)
class PropsFile:
    """One link of a node's inherited chain.

    Flow 1.0: a ``.properties`` file (``file``) of the job's directory or an ancestor directory.
    Flow 2.0: the ``config`` of an enclosing flow (``file`` is the ``.flow`` file, ``scope`` the
    flow path such as ``"embedded_flow:embedded_flow1"``).
    """

    file: str
    props: Mapping[str, str]
    scope: str = ""


class Edge(NamedTuple):
    """``upstream`` must finish before ``downstream`` (``downstream`` depends on ``upstream``)."""

    upstream: str
    downstream: str


@dataclass
class Node:
    """One Azkaban job (or a node embedding a flow).

    :param name: the job name (Flow 1.0: the ``.job`` file name without extension).
    :param type: the job type (``command``, ``noop``, ``flow``, ...); ``None`` when missing
        (always reported as a ``missing-type`` error). In 1.0 it may come from a ``.properties`` file.
    :param props: the node's own properties, in file order, all values strings.
        Flow 1.0: every key of the ``.job`` file (``type`` and ``dependencies`` included).
        Flow 2.0: the node's ``config`` map (YAML scalars rendered as Java would: ``true``, ``5``).
    :param inherited_props: the merged inherited chain (lowest precedence).
        Flow 1.0: the directory's ``.properties`` chain. Flow 2.0: the ``config`` of the enclosing
        flows, outermost first.
    :param props_chain: the same chain, link by link, lowest precedence first.
    :param depends_on: names of the parents in this flow, in declaration order, de-duplicated.
    :param condition: the raw ``condition`` string, or ``None``.
    :param embedded_flow: for ``type: flow`` nodes, the embedded :class:`Flow` (1.0: the flow named by
        ``flow.name``; 2.0: the nested ``nodes``), nested to any depth; ``None`` when it could not be
        resolved (a problem is reported).
    :param flow_name: 1.0: the ``flow.name`` value; 2.0: the node's own name for flow nodes.
    :param source_file: project-relative posix path of the defining file.
    :param line: the 1-based line where the node is defined (2.0), ``None`` for ``.job`` files.
    :param key_lines: line of each own key (1.0 ``.job`` files), for error messages.
    """

    name: str
    type: str | None
    props: dict[str, str] = field(default_factory=dict)
    inherited_props: dict[str, str] = field(default_factory=dict)
    props_chain: tuple[PropsFile, ...] = ()
    depends_on: list[str] = field(default_factory=list)
    condition: str | None = None
    embedded_flow: Flow | None = None
    flow_name: str | None = None
    source_file: str = ""
    line: int | None = None
    key_lines: dict[str, int] = field(default_factory=dict)

    @property
    def is_flow(self) -> bool:
        """True for a node that embeds a flow (``type: flow``)."""
        return self.type == FLOW_TYPE

    @property
    def config(self) -> dict[str, str]:
        """The own properties minus the graph keys (:data:`STRUCTURAL_KEYS`)."""
        return {k: v for k, v in self.props.items() if k not in STRUCTURAL_KEYS}

    def merged_props(self) -> dict[str, str]:
        """Inherited chain overridden by the own properties (no flow parameters, no outputs)."""
        merged = dict(self.inherited_props)
        merged.update(self.props)
        return merged

    def get(self, key: str, default: str | None = None) -> str | None:
        """Look a key up as Azkaban's ``Props.get`` does: own properties, then the inherited chain."""
        if key in self.props:
            return self.props[key]
        return self.inherited_props.get(key, default)


class CycleError(ValueError):
    """The graph has a cycle; ``cycle`` is the path, first node repeated at the end."""

    def __init__(self, cycle: list[str], flow: str = "") -> None:
        self.cycle = cycle
        self.flow = flow
        super().__init__(f"cycle: {' -> '.join(cycle)}" + (f" in flow {flow}" if flow else ""))


@dataclass(frozen=True)
class TriggerDependency:
    """One Flow 2.0 trigger dependency (e.g. a ``dali-dataset``); Airflow has no direct equivalent."""

    name: str | None
    type: str | None
    params: Mapping[str, Any]


@dataclass
class Trigger:
    """A Flow 2.0 ``trigger:`` block.

    :param cron: the raw Quartz cron expression (``schedule.value``), e.g. ``"0 0 1 ? * *"``.
    :param schedule_type: ``schedule.type`` (Azkaban only accepts ``cron``).
    :param max_wait_mins: ``maxWaitMins`` (clamped to 14400 = 10 days, as Azkaban does), or ``None``.
    :param dependencies: ``triggerDependencies``.
    :param raw: the whole block as parsed from YAML.
    """

    cron: str | None
    schedule_type: str | None = "cron"
    max_wait_mins: int | None = None
    dependencies: list[TriggerDependency] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass
class Flow:
    """One Azkaban flow: a DAG of :class:`Node` objects.

    :param name: Flow 1.0: the name of the final job; Flow 2.0: the ``.flow`` file name without
        extension (or the node name, for an embedded flow).
    :param nodes: the nodes in a stable order (1.0: dependencies first; 2.0: file order).
    :param flow_props: flow-level config (2.0 ``config:``); ``{}`` for 1.0 flows.
    :param trigger: the 2.0 ``trigger:`` block, if any.
    :param source_file: project-relative posix path (``.flow`` file; for 1.0 the final job's ``.job``).
    :param root: 1.0: the job whose name the flow carries.
    """

    name: str
    nodes: dict[str, Node] = field(default_factory=dict)
    flow_props: dict[str, str] = field(default_factory=dict)
    trigger: Trigger | None = None
    source_file: str = ""
    line: int | None = None
    root: str | None = None

    # ----- graph helpers -------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self.nodes[name]

    @property
    def edges(self) -> list[Edge]:
        """Edges between nodes of this flow (this level only), in node order; dangling
        dependencies (undefined names) are left out. Each (upstream, downstream) pair once."""
        out: list[Edge] = []
        for node in self.nodes.values():
            for dep in node.depends_on:
                if dep in self.nodes:
                    out.append(Edge(dep, node.name))
        return out

    @property
    def node_count(self) -> int:
        """Nodes at this level (an embedded flow counts as one node), as Azkaban counts them."""
        return len(self.nodes)

    @property
    def edge_count(self) -> int:
        """Edges at this level, as Azkaban counts them."""
        return len(self.edges)

    def upstream(self, name: str) -> list[str]:
        """The parents of ``name`` that exist in this flow."""
        return [d for d in self.nodes[name].depends_on if d in self.nodes]

    def downstream(self, name: str) -> list[str]:
        """The children of ``name`` in this flow."""
        return [n.name for n in self.nodes.values() if name in n.depends_on]

    def roots(self) -> list[str]:
        """Nodes without parents in this flow."""
        return [n for n in self.nodes if not self.upstream(n)]

    def leaves(self) -> list[str]:
        """Nodes no other node of this flow depends on."""
        has_child = {e.upstream for e in self.edges}
        return [n for n in self.nodes if n not in has_child]

    def ancestors(self, name: str) -> set[str]:
        """Every node ``name`` transitively depends on (in this flow)."""
        seen: set[str] = set()
        stack = list(self.upstream(name))
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(self.upstream(cur))
        return seen

    def descendants(self, name: str) -> set[str]:
        """Every node that transitively depends on ``name`` (in this flow)."""
        children: dict[str, list[str]] = {}
        for e in self.edges:
            children.setdefault(e.upstream, []).append(e.downstream)
        seen: set[str] = set()
        stack = list(children.get(name, ()))
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(children.get(cur, ()))
        return seen

    def find_cycle(self) -> list[str] | None:
        """A dependency cycle at this level as a path (``[a, b, a]``), or ``None``."""
        cycles = self.find_cycles(limit=1)
        return cycles[0] if cycles else None

    def find_cycles(self, limit: int | None = None) -> list[list[str]]:
        """Distinct dependency cycles at this level (one per strongly connected component)."""
        from airflow_ml_provider.azkaban.validate import find_cycles  # local: avoids an import cycle

        graph = {n.name: [d for d in n.depends_on if d in self.nodes] for n in self.nodes.values()}
        cycles = find_cycles(graph)
        return cycles[:limit] if limit is not None else cycles

    def topological_order(self) -> list[str]:
        """Node names, parents before children; ties keep node order. Raises :class:`CycleError`."""
        index = {name: i for i, name in enumerate(self.nodes)}
        indegree = {name: len(set(self.upstream(name))) for name in self.nodes}
        children: dict[str, list[str]] = {name: [] for name in self.nodes}
        for e in set(self.edges):
            children[e.upstream].append(e.downstream)
        heap = [(index[n], n) for n, d in indegree.items() if d == 0]
        heapq.heapify(heap)
        order: list[str] = []
        while heap:
            _, cur = heapq.heappop(heap)
            order.append(cur)
            for child in children[cur]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    heapq.heappush(heap, (index[child], child))
        if len(order) != len(self.nodes):
            cycle = self.find_cycle() or sorted(set(self.nodes) - set(order))
            raise CycleError(cycle, self.name)
        return order

    # ----- nesting helpers -----------------------------------------------------------
    def walk(self, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Node]]:
        """Every node, depth first, embedded flows included, with its path from this flow:
        ``(("embedded_flow1", "shell_end"), node)``. The Airflow task id is ``".".join(path)``.
        Stops at an embedded flow that is already on the path (a reported cycle)."""
        yield from self._walk(prefix, frozenset())

    def _walk(
        self, prefix: tuple[str, ...], on_path: frozenset[int]
    ) -> Iterator[tuple[tuple[str, ...], Node]]:
        on_path = on_path | {id(self)}
        for node in self.nodes.values():
            path = (*prefix, node.name)
            yield path, node
            sub = node.embedded_flow
            if sub is not None and id(sub) not in on_path:
                yield from sub._walk(path, on_path)

    def task_ids(self) -> list[str]:
        """Dotted ids of the nodes that become Airflow tasks (embedded-flow nodes become groups)."""
        return [".".join(p) for p, n in self.walk() if not (n.is_flow and n.embedded_flow is not None)]

    @property
    def task_count(self) -> int:
        return len(self.task_ids())

    def embedded_flows(self, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Flow]]:
        """Every embedded flow below this one with its path of embedding node names."""
        for path, node in self.walk(prefix):
            if node.is_flow and node.embedded_flow is not None:
                yield path, node.embedded_flow

    def all_node_names(self) -> set[str]:
        """Dotted names of every node, embedded ones included."""
        return {".".join(p) for p, _ in self.walk()}


@dataclass(frozen=True)
class ProjectCounts:
    """Counts as Azkaban's loaders report them (see the corpus EXPECTED.md)."""

    errors: int
    warnings: int
    flows: int  # 1.0: flows; 2.0: flows incl. embedded ones ("parent:child")
    jobs: int  # 1.0: distinct .job files; 2.0: nodes over all flows incl. embedded ones
    edges: int  # edges over the same flows
    properties_files: int


@dataclass
class Project:
    """A loaded Azkaban project.

    :param name: the directory / zip name.
    :param flow_version: ``"1.0"`` (``.job`` files) or ``"2.0"`` (``.project`` + ``.flow``).
    :param flows: the top-level flows, one Airflow DAG each, by name.
    :param resource_files: project-relative posix paths of every other file (scripts, jars, ...)
        to copy beside the DAGs; read them from :attr:`root`.
    :param problems: every error and warning found.
    :param root: the directory holding the project files (for a zip: a private temporary
        directory, removed by :meth:`close` / at exit).
    :param jobs: 1.0: every job by name (also those in no flow); 2.0: ``{}``.
    :param properties_files: the ``.properties`` files read (1.0) or ignored (2.0).
    """

    name: str
    flow_version: str
    flows: dict[str, Flow] = field(default_factory=dict)
    resource_files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    root: Path | None = None
    source: str = ""
    jobs: dict[str, Node] = field(default_factory=dict)
    properties_files: list[str] = field(default_factory=list)
    project_files: list[str] = field(default_factory=list)
    flow_files: list[str] = field(default_factory=list)
    _cleanup: Any = field(default=None, repr=False, compare=False)

    # ----- problems --------------------------------------------------------------------
    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def has_errors(self) -> bool:
        return any(p.severity == ERROR for p in self.problems)

    def flow_problems(self, flow_name: str) -> list[Problem]:
        """Problems that concern flow ``flow_name``: those naming it, project-wide ones
        (no flow, no node), and node problems about a node inside it (embedded ones included)."""
        flow = self.flows.get(flow_name)
        names: set[str] = set()
        if flow is not None:
            names = {p[-1] for p, _ in flow.walk()} | flow.all_node_names()
            names |= {f.name for _, f in flow.embedded_flows()}
        out = []
        for p in self.problems:
            if p.flow is not None:
                if p.flow == flow_name:
                    out.append(p)
            elif p.node is None or p.node in names:
                out.append(p)
        return out

    def flow_ok(self, flow_name: str) -> bool:
        """True when no error concerns the flow (a DAG may be written for it)."""
        return not any(p.is_error for p in self.flow_problems(flow_name))

    # ----- counting, as EXPECTED.md does ---------------------------------------------
    def azkaban_flows(self) -> dict[str, Flow]:
        """Flows under the names Azkaban gives them: 2.0 embedded flows appear as
        ``parent:child`` (``a:b:c`` deeper); 1.0 flows are listed once each."""
        out: dict[str, Flow] = {}
        for name, flow in self.flows.items():
            out[name] = flow
            if self.flow_version == "2.0":
                for path, sub in flow.embedded_flows():
                    out[":".join((name, *path))] = sub
        return out

    def counts(self) -> ProjectCounts:
        flows = self.azkaban_flows()
        if self.flow_version == "1.0":
            jobs = len(self.jobs)
            edges = len({e for f in self.flows.values() for e in f.edges})
        else:
            jobs = sum(f.node_count for f in flows.values())
            edges = sum(f.edge_count for f in flows.values())
        return ProjectCounts(
            errors=len(self.errors),
            warnings=len(self.warnings),
            flows=len(flows),
            jobs=jobs,
            edges=edges,
            properties_files=len(self.properties_files),
        )

    # ----- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        """Remove the temporary extraction directory of a zip (no-op for directories)."""
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_static_props(
    node: Node,
    flow_params: Mapping[str, str] | None = None,
    upstream_outputs: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Resolve a job's properties with Azkaban's precedence (lowest to highest):

    1. the inherited chain (1.0: the directory's ``.properties`` files; 2.0: enclosing flows' config),
    2. ``flow_params``: the flow parameters and built-ins (for a job inside an embedded flow: the
       resolved properties of the embedding node, see :func:`embedded_flow_params`),
    3. ``upstream_outputs``: the merged outputs of the direct parents (run time only),
    4. the job's own properties (``.job`` file / ``config``).

    Values are not ``${...}``-substituted here. Pure; returns a new dict.
    """
    resolved: dict[str, str] = dict(node.inherited_props)
    if flow_params:
        resolved.update(flow_params)
    if upstream_outputs:
        resolved.update(upstream_outputs)
    resolved.update(node.props)
    return resolved


def embedded_flow_params(
    embedding_node: Node,
    flow_params: Mapping[str, str] | None = None,
    upstream_outputs: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The "flow parameters" seen by the jobs of an embedded flow: the embedding node's own
    resolved properties (Azkaban passes them down as the sub-flow's input properties)."""
    return resolve_static_props(embedding_node, flow_params, upstream_outputs)


__all__.append("embedded_flow_params")
