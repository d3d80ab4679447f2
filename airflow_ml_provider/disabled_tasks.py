"""Disabling task nodes per run (a scheduler's "prohibit execution" switch).

A run is triggered with the ``disabled_tasks`` param: a list of task ids (optional in the trigger
form; empty by default). Every operator of this provider (and every task of a migrated Azkaban DAG)
checks it first:

* an id that is not a task of the DAG fails the task at once (:class:`AirflowFailException`, no
  retry) with a message naming the id and the DAG's task ids -- so a mistyped id fails the run at
  its start instead of being ignored;
* a disabled task logs why and does no work. The ML operators
  (:class:`~airflow_ml_provider.operators.base.MLBaseOperator`) then end **skipped** (pink in the
  grid, so one sees at a glance that it did not run); their trigger rule is ``none_failed``, so
  downstream ML tasks still run and read the skipped task's latest output. Other callers of
  :func:`skip_if_disabled` (the Azkaban runtime) end successfully, as Azkaban's disabled jobs do.

Only ``airflow.sdk`` is imported, lazily, so this module is cheap to import from DAG files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DISABLED_TASKS_PARAM = "disabled_tasks"

__all__ = [
    "DISABLED_TASKS_PARAM",
    "check_disabled_ids",
    "disabled_task_ids",
    "disabled_tasks_param",
    "skip_if_disabled",
]


def disabled_tasks_param(default: Iterable[str] = ()) -> Any:
    """A typed, optional ``Param`` for a DAG's ``params``: a list of task ids in the trigger form.

    The schema type includes ``null``, so the trigger form does not mark the field required.
    """
    from airflow.sdk import Param

    return Param(
        list(default),
        type=["array", "null"],
        items={"type": "string"},
        title="Disabled tasks",
        description="Optional. Task ids to skip in this run: each ends skipped without running, and "
        "downstream tasks proceed (using the skipped task's latest output). An unknown id fails the run.",
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


def _dag_task_ids(context: Mapping[str, Any]) -> list[str] | None:
    dag = context.get("dag")
    if dag is None:
        task = context.get("task")
        dag = getattr(task, "dag", None) if task is not None else None
    ids = getattr(dag, "task_ids", None) if dag is not None else None
    return sorted(ids) if ids else None


def check_disabled_ids(context: Mapping[str, Any]) -> set[str]:
    """The disabled ids of this run; raises ``AirflowFailException`` naming any id that is not a
    task of the DAG (with the DAG's task ids), so a typo fails the run at its first task."""
    disabled = disabled_task_ids(context)
    known = _dag_task_ids(context)
    if disabled and known is not None:
        unknown = sorted(disabled - set(known))
        if unknown:
            from airflow.sdk.exceptions import AirflowFailException

            dag_id = getattr(context.get("dag"), "dag_id", None) or "this DAG"
            names = ", ".join(repr(u) for u in unknown)
            raise AirflowFailException(
                f"{DISABLED_TASKS_PARAM}: unknown task id{'s' if len(unknown) > 1 else ''} {names}: "
                f"{dag_id} has the tasks {', '.join(known)}"
            )
    return disabled


def skip_if_disabled(context: Mapping[str, Any], task_id: str, log: Any, *, skip: bool = False) -> bool:
    """Check the run's ``disabled_tasks`` (see :func:`check_disabled_ids`) and whether ``task_id``
    is one of them.

    :param skip: raise ``AirflowSkipException`` for a disabled task (the task ends *skipped*);
        otherwise log and return True (the caller returns without work; the task ends successful).
    :return: False when the task is not disabled.
    """
    if task_id not in check_disabled_ids(context):
        return False
    message = (
        f"Task {task_id} is disabled for this run (listed in the {DISABLED_TASKS_PARAM!r} param): "
        + ("skipped without running." if skip else "marked successful without running.")
    )
    log.info(message)
    if skip:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(message)
    return True
