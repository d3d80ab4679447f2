"""Disabling task nodes per run (a scheduler's "prohibit execution" switch).

A run is triggered with the ``disabled_tasks`` param: a list of task ids. Every operator of this
provider (and every task of a migrated Azkaban DAG) checks it first: a disabled task logs why,
does no work, and ends successfully so that downstream tasks proceed.

Only ``airflow.sdk`` is imported, lazily, so this module is cheap to import from DAG files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DISABLED_TASKS_PARAM = "disabled_tasks"


def disabled_tasks_param(default: Iterable[str] = ()) -> Any:
    """A typed ``Param`` for a DAG's ``params``: shown in the trigger form as a list of task ids."""
    from airflow.sdk import Param

    return Param(
        list(default),
        type="array",
        items={"type": "string"},
        title="Disabled tasks",
        description="Task ids to skip in this run: each is marked successful without running, "
        "and downstream tasks proceed.",
    )


def disabled_task_ids(context: Mapping[str, Any]) -> set[str]:
    """The task ids disabled for this run (from params, or from the run's conf)."""
    value: Any = None
    params = context.get("params") or {}
    if DISABLED_TASKS_PARAM in params:
        value = params[DISABLED_TASKS_PARAM]
    if value is None:
        dag_run = context.get("dag_run")
        conf = getattr(dag_run, "conf", None) or {}
        value = conf.get(DISABLED_TASKS_PARAM)
    if not value:
        return set()
    if isinstance(value, str):
        value = [v.strip() for v in value.replace("\n", ",").split(",")]
    return {str(v) for v in value if str(v)}


def skip_if_disabled(context: Mapping[str, Any], task_id: str, log: Any) -> bool:
    """Return True (and log the reason) when ``task_id`` is disabled for this run."""
    if task_id in disabled_task_ids(context):
        log.info(
            "Task %s is disabled for this run (listed in the %r param): marked successful without running.",
            task_id,
            DISABLED_TASKS_PARAM,
        )
        return True
    return False
