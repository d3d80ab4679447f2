"""Flow 2.0 loader: one ``.project`` file plus ``.flow`` YAML files (recursive directories).

The rules, as Azkaban's ``DirectoryYamlFlowLoader`` / ``NodeBeanLoader`` apply them:

* the project holds exactly one ``.project`` file whose ``azkaban-flow-version`` is ``2.0``;
* every ``.flow`` file, in any directory, is one flow named after the file (without ``.flow``);
  two flow files with the same name are an error;
* a flow file is a mapping with ``config`` (flow-level properties), ``nodes`` and optionally
  ``trigger``; each node has ``name``, ``type``, and optionally ``config``, ``dependsOn``,
  ``condition``; a node of ``type: flow`` holds its own ``config`` and ``nodes`` (nested to any
  depth); any other key is an error (Azkaban's YAML binding rejects unknown properties);
* ``.properties`` files are ignored in 2.0.

The structural checks (duplicates, undefined dependencies, cycles, conditions, triggers) are in
:mod:`airflow_ml_provider.azkaban.validate`. Pure: no Airflow import.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import PurePosixPath
from typing import Any

import yaml

from airflow_ml_provider.azkaban.archive import ProjectFiles
from airflow_ml_provider.azkaban.model import (
    FLOW_TYPE,
    WARNING,
    Flow,
    Kind,
    Node,
    Problem,
    PropsFile,
    Trigger,
    TriggerDependency,
)
from airflow_ml_provider.ml.safeyaml import SafeYamlLoader

__all__ = ["FLOW_VERSION_KEY", "java_string", "load_flow2", "parse_flow_yaml", "read_project_file"]

FLOW_VERSION_KEY = "azkaban-flow-version"
_NODE_KEYS = frozenset({"name", "type", "config", "dependsOn", "condition", "nodes", "trigger"})
_FLOW_KEYS = _NODE_KEYS

try:  # the C parser is much faster; the constructor stays Python so line marks work
    _BaseLoader: type = yaml.CSafeLoader  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - libyaml missing
    _BaseLoader = yaml.SafeLoader


class _LineDict(dict):
    """A mapping that remembers the 1-based line where it starts."""

    line: int | None = None


class _LineLoader(SafeYamlLoader):  # the project's one YAML loader: aliases, nesting bounded
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            ) from exc
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class FlowYamlError(ValueError):
    """A ``.flow`` / ``.project`` file that is not valid YAML; ``line`` is 1-based."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(message)


#: the most values a parsed file may expand to once aliases are followed (anchor "bombs")
MAX_EXPANDED_VALUES = 1_000_000


def _expanded_size_ok(data: Any, limit: int) -> bool:
    """False when following aliases would visit more than ``limit`` values (or loops forever)."""
    count = 0
    stack = [data]
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return False
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


def parse_flow_yaml(text: str) -> Any:
    """Parse YAML keeping mapping lines (``obj.line``). Raises :class:`FlowYamlError`, also for
    a document whose aliases expand past :data:`MAX_EXPANDED_VALUES` values or refer to themselves."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        col = f", column {mark.column + 1}" if mark is not None else ""
        msg = (
            f"invalid YAML: {what}"
            + (f" ({context})" if context else "")
            + (f" at line {line}{col}" if line else "")
        )
        raise FlowYamlError(msg, line) from exc
    if not _expanded_size_ok(data, MAX_EXPANDED_VALUES):
        raise FlowYamlError(
            f"invalid YAML: aliases expand past {MAX_EXPANDED_VALUES} values (or refer to themselves)"
        )
    return data


def java_string(value: Any) -> str:
    """Render a YAML scalar the way Azkaban's Java code sees it as a property value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(java_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{java_string(k)}={java_string(v)}" for k, v in value.items()) + "}"
    return str(value)


def _read_text(reader: ProjectFiles, rel: str, problems: list[Problem]) -> str | None:
    try:
        data = reader.read_bytes(rel)
    except OSError as exc:
        problems.append(Problem(Kind.INVALID_FLOW, rel, f"cannot read file: {exc.strerror or exc}"))
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Problem(Kind.INVALID_YAML, rel, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
        return None


def read_project_file(reader: ProjectFiles, rel: str, problems: list[Problem]) -> bool:
    """Check one ``.project`` file; returns True when it declares ``azkaban-flow-version: 2.0``."""
    text = _read_text(reader, rel, problems)
    if text is None:
        return False
    try:
        data = parse_flow_yaml(text)
    except FlowYamlError as exc:
        problems.append(Problem(Kind.INVALID_YAML, rel, str(exc), line=exc.line))
        return False
    if data is None or (isinstance(data, dict) and FLOW_VERSION_KEY not in data):
        problems.append(
            Problem(
                Kind.FLOW_VERSION,
                rel,
                f"{FLOW_VERSION_KEY} is not specified (expected '{FLOW_VERSION_KEY}: 2.0')",
            )
        )
        return False
    if not isinstance(data, dict):
        problems.append(Problem(Kind.FLOW_VERSION, rel, f"expected a mapping with '{FLOW_VERSION_KEY}: 2.0'"))
        return False
    version = data[FLOW_VERSION_KEY]
    # Azkaban compares with the double 2.0: YAML 2.0 (a float) matches, the integer 2 does not
    if not (isinstance(version, float) and version == 2.0) and not (
        isinstance(version, str) and version.strip() == "2.0"
    ):
        problems.append(
            Problem(
                Kind.FLOW_VERSION,
                rel,
                f"invalid {FLOW_VERSION_KEY} {java_string(version)!r} (only 2.0 is supported in a .project file)",
                line=data.line,
            )
        )
        return False
    return True


def load_flow2(reader: ProjectFiles, flow_files: list[str], problems: list[Problem]) -> dict[str, Flow]:
    """Load every ``.flow`` file; returns the top-level flows by name (file order)."""
    flows: dict[str, Flow] = {}
    for rel in flow_files:
        name = PurePosixPath(rel).name[: -len(".flow")]
        text = _read_text(reader, rel, problems)
        if text is None:
            continue
        try:
            data = parse_flow_yaml(text)
        except FlowYamlError as exc:
            problems.append(Problem(Kind.INVALID_YAML, rel, str(exc), flow=name, line=exc.line))
            continue
        if data is None:
            problems.append(Problem(Kind.INVALID_FLOW, rel, "the flow file is empty", flow=name))
            continue
        if not isinstance(data, dict):
            problems.append(
                Problem(
                    Kind.INVALID_FLOW, rel, "a flow file must be a mapping with 'nodes:'", flow=name, line=1
                )
            )
            continue
        if name in flows:
            problems.append(
                Problem(
                    Kind.DUPLICATE_FLOW,
                    rel,
                    f"duplicate flow name {name!r}: also defined in {flows[name].source_file}",
                    flow=name,
                )
            )
            continue
        builder = _Builder(rel, name, problems)
        flows[name] = builder.flow(data, name, (), chain=())
    return flows


class _Builder:
    def __init__(self, rel: str, top: str, problems: list[Problem]) -> None:
        self.rel = rel
        self.top = top
        self.problems = problems

    def problem(
        self,
        kind: str,
        message: str,
        *,
        node: str | None = None,
        line: int | None = None,
        severity: str = "error",
    ) -> None:
        self.problems.append(
            Problem(kind, self.rel, message, flow=self.top, node=node, line=line, severity=severity)
        )

    def config(self, raw: Any, where: str, line: int | None) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(Kind.INVALID_FLOW, f"{where}: 'config' must be a mapping of properties", line=line)
            return {}
        return {java_string(k): java_string(v) for k, v in raw.items()}

    def flow(self, data: dict, name: str, path: tuple[str, ...], chain: tuple[PropsFile, ...]) -> Flow:
        line = getattr(data, "line", None)
        where = "flow " + ":".join((self.top, *path)) if path else f"flow {name!r}"
        if not path:
            for key in data:
                if key not in _FLOW_KEYS:
                    self.problem(Kind.INVALID_FLOW, f"{where}: unknown key {key!r}", line=line)
        flow_props = self.config(data.get("config"), where, line)
        scope = ":".join((self.top, *path))
        chain = (*chain, PropsFile(self.rel, flow_props, scope))
        inherited: dict[str, str] = {}
        for link in chain:
            inherited.update(link.props)
        flow = Flow(name=name, flow_props=flow_props, source_file=self.rel, line=line)
        if not path and data.get("trigger") is not None:
            flow.trigger = self.trigger(data["trigger"])
        raw_nodes = data.get("nodes")
        if raw_nodes is None:
            raw_nodes = []
            if not path:
                self.problem(Kind.INVALID_FLOW, f"{where} has no 'nodes:' list", line=line)
        if not isinstance(raw_nodes, list):
            self.problem(Kind.INVALID_FLOW, f"{where}: 'nodes' must be a list", line=line)
            raw_nodes = []
        for raw in raw_nodes:
            node = self.node(raw, path, chain, inherited)
            if node is None:
                continue
            if node.name in flow.nodes:
                first = flow.nodes[node.name]
                self.problem(
                    Kind.DUPLICATE_NODE,
                    f"duplicate node name {node.name!r} in {where} (first defined at line {first.line})",
                    node=".".join((*path, node.name)),
                    line=node.line,
                )
                continue
            flow.nodes[node.name] = node
        return flow

    def node(
        self, raw: Any, path: tuple[str, ...], chain: tuple[PropsFile, ...], inherited: dict[str, str]
    ) -> Node | None:
        if not isinstance(raw, dict):
            self.problem(
                Kind.INVALID_FLOW, f"each entry of 'nodes' must be a mapping, got {java_string(raw)!r}"
            )
            return None
        line = getattr(raw, "line", None)
        raw_name = raw.get("name")
        if raw_name is None or java_string(raw_name).strip() == "":
            self.problem(Kind.MISSING_NAME, "a node has no 'name'", line=line)
            return None
        name = java_string(raw_name).strip()
        dotted = ".".join((*path, name))
        for key in raw:
            if key not in _NODE_KEYS:
                self.problem(Kind.INVALID_FLOW, f"node {name!r}: unknown key {key!r}", node=dotted, line=line)
        raw_type = raw.get("type")
        type_ = java_string(raw_type).strip() if raw_type is not None else ""
        deps_raw = raw.get("dependsOn")
        deps: list[str] = []
        if deps_raw is not None:
            if isinstance(deps_raw, list):
                deps = list(dict.fromkeys(java_string(d).strip() for d in deps_raw if d is not None))
            else:
                self.problem(
                    Kind.INVALID_FLOW,
                    f"node {name!r}: 'dependsOn' must be a list of node names",
                    node=dotted,
                    line=line,
                )
        cond = raw.get("condition")
        condition = java_string(cond).strip() if cond is not None and java_string(cond).strip() else None
        node = Node(
            name=name,
            type=type_ or None,
            props=self.config(raw.get("config"), f"node {name!r}", line),
            inherited_props=inherited,
            props_chain=chain,
            depends_on=deps,
            condition=condition,
            source_file=self.rel,
            line=line,
        )
        if raw.get("trigger") is not None:
            self.problem(
                Kind.INVALID_FLOW,
                f"node {name!r}: 'trigger' is only read at the top of a flow file; ignored",
                node=dotted,
                line=line,
                severity=WARNING,
            )
        if node.type == FLOW_TYPE:
            node.flow_name = name
            sub = dict(raw)
            sub.pop("dependsOn", None)
            sub.pop("condition", None)
            sub_data = _LineDict(sub)
            sub_data.line = line
            if raw.get("nodes") is None:
                self.problem(
                    Kind.INVALID_FLOW, f"embedded flow {name!r} has no 'nodes:'", node=dotted, line=line
                )
            node.embedded_flow = self.flow(sub_data, name, (*path, name), chain)
        elif raw.get("nodes") is not None:
            self.problem(
                Kind.INVALID_FLOW,
                f"node {name!r} has 'nodes:' but type {node.type!r}; only type: flow embeds nodes (ignored)",
                node=dotted,
                line=line,
                severity=WARNING,
            )
        return node

    def trigger(self, raw: Any) -> Trigger | None:
        if not isinstance(raw, dict):
            self.problem(Kind.INVALID_TRIGGER, "'trigger' must be a mapping")
            return None
        line = getattr(raw, "line", None)
        schedule = raw.get("schedule")
        cron = stype = None
        if isinstance(schedule, dict):
            cron = java_string(schedule.get("value")).strip() if schedule.get("value") is not None else None
            stype = java_string(schedule.get("type")).strip() if schedule.get("type") is not None else None
        mw = raw.get("maxWaitMins")
        max_wait: int | None = None
        if mw is not None:
            try:
                max_wait = int(mw)
            except (TypeError, ValueError):
                max_wait = None
        deps_raw = raw.get("triggerDependencies") or []
        deps: list[TriggerDependency] = []
        if isinstance(deps_raw, list):
            for d in deps_raw:
                if isinstance(d, dict):
                    params = d.get("params")
                    deps.append(
                        TriggerDependency(
                            name=java_string(d["name"]) if d.get("name") is not None else None,
                            type=java_string(d["type"]) if d.get("type") is not None else None,
                            params=dict(params) if isinstance(params, dict) else {},
                        )
                    )
        return Trigger(
            cron=cron,
            schedule_type=stype,
            max_wait_mins=max_wait,
            dependencies=deps,
            raw=_plain(raw),
            line=line,
        )


def _plain(value: Any) -> Any:
    """Strip the line-tracking dict subclass (plain dicts / lists for JSON reports)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
