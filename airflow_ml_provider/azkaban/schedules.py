"""Read the ``--schedules`` JSON: Azkaban schedules (kept outside the project zip).

Accepted shapes (what Azkaban's ``/schedule?ajax=fetchSchedule`` and ``fetchSchedules`` return,
or a list assembled from them):

* ``{"schedule": {...}}`` (one schedule),
* ``{"schedules": [...]}`` or ``{"items": [...]}`` or a bare list of schedules,
* ``{"<flow>": {...}, ...}`` (a mapping by flow name; each value a schedule, or a whole
  ``fetchSchedule`` response ``{"schedule": {...}}``, which does not name its flow).

Each schedule: the flow name in ``flowId`` / ``flowName`` / ``flow``; the Quartz expression in
``cronExpression`` / ``cron``; optional ``timezone`` / ``timeZone``; optional ``projectName``
(other projects' schedules are ignored); optional ``executionOptions`` with ``disabledJobs``
(names, or ``{"id": embedded_flow, "children": [...]}``) and ``flowParameters``.

Pure: no Airflow import.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_ml_provider.ml import safejson

__all__ = ["SchedulesError", "load_schedules", "parse_schedules"]


class SchedulesError(ValueError):
    """A --schedules file that cannot be used; the message names the file and the entry."""


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in d and d[key] not in (None, ""):
            return d[key]
    return None


def _entries(data: Any, source: str) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(data, list):
        return [(f"[{i}]", e) for i, e in enumerate(data)]
    if not isinstance(data, Mapping):
        raise SchedulesError(f"{source}: expected a JSON object or list, got {type(data).__name__}")
    if isinstance(data.get("schedule"), Mapping):
        return [("schedule", data["schedule"])]
    for key in ("schedules", "items"):
        if isinstance(data.get(key), list):
            return [(f"{key}[{i}]", e) for i, e in enumerate(data[key])]
    out = []
    for name, entry in data.items():
        if isinstance(entry, Mapping):
            if isinstance(entry.get("schedule"), Mapping):  # {"flow": <fetchSchedule response>}
                entry = entry["schedule"]
            entry = dict(entry)
            entry.setdefault("flowId", name)
            out.append((str(name), entry))
        else:
            raise SchedulesError(f"{source}: entry {name!r} is not an object")
    return out


def parse_schedules(data: Any, *, source: str = "<schedules>", project: str | None = None) -> dict[str, dict]:
    """``{flow: {"cron", "timezone", "disabled", "flow_params"}}`` from parsed JSON.

    :raises SchedulesError: a missing flow name or cron expression, or a wrong type; the message
        names the file and the entry.
    """
    result: dict[str, dict] = {}
    for where, entry in _entries(data, source):
        if not isinstance(entry, Mapping):
            raise SchedulesError(f"{source}: {where} is not an object")
        proj = _first(entry, "projectName", "project")
        if project is not None and proj is not None and str(proj) != project:
            continue
        flow = _first(entry, "flowId", "flowName", "flow")
        if flow is None:
            raise SchedulesError(f"{source}: {where} has no flow name (flowId, flowName or flow)")
        cron = _first(entry, "cronExpression", "cron")
        if cron is None:
            raise SchedulesError(f"{source}: {where} (flow {flow!r}) has no cronExpression")
        if not isinstance(cron, str):
            raise SchedulesError(f"{source}: {where} (flow {flow!r}): cronExpression must be a string")
        options = entry.get("executionOptions") or {}
        if not isinstance(options, Mapping):
            raise SchedulesError(f"{source}: {where} (flow {flow!r}): executionOptions must be an object")
        disabled = options.get("disabledJobs") or entry.get("disabledJobs") or []
        if not isinstance(disabled, list):
            raise SchedulesError(f"{source}: {where} (flow {flow!r}): disabledJobs must be a list")
        params = options.get("flowParameters") or {}
        if not isinstance(params, Mapping):
            raise SchedulesError(f"{source}: {where} (flow {flow!r}): flowParameters must be an object")
        if str(flow) in result:
            raise SchedulesError(f"{source}: flow {flow!r} has more than one schedule")
        result[str(flow)] = {
            "cron": cron.strip(),
            "timezone": _first(entry, "timezone", "timeZone", "timezoneId"),
            "disabled": disabled,
            "flow_params": dict(params),
        }
    return result


def load_schedules(path: str | Path, *, project: str | None = None) -> dict[str, dict]:
    """Read and parse a --schedules JSON file (see :func:`parse_schedules`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SchedulesError(f"{p}: cannot read the schedules file: {exc.strerror or exc}") from None
    try:  # safejson: deep nesting and oversized numbers are named too (line, key), never a bare error
        data = safejson.loads(text, source=str(p), allow_duplicate_keys=True)
    except safejson.JSONInputError as exc:
        raise SchedulesError(str(exc)) from None
    return parse_schedules(data, source=str(p), project=project)
