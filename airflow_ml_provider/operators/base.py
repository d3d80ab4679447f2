"""The common base of this provider's ML operators.

:class:`MLBaseOperator` gives every operator of the pipeline the same behaviour:

* **disabled tasks.** Before any work it checks the run's ``disabled_tasks`` param
  (:mod:`airflow_ml_provider.disabled_tasks`). A disabled task logs why, does nothing, pushes no
  XCom, emits no asset event, and ends **skipped**; ML tasks default to the ``none_failed`` trigger
  rule, so downstream tasks proceed. An unknown task id in the param fails the task.
* **URIs through XCom.** ``execute`` returns a small JSON dict of URIs and facts (pushed as the
  ``return_value`` XCom); data never travels through XCom.
* **the "latest output" pointer.** After a successful run the task writes its XCom value to
  ``<storage_root>/runs/<dag_id>/latest/<task_id>.json``. When an upstream task pushed nothing in
  this run (it was disabled), :meth:`MLBaseOperator.upstream` falls back to that pointer -- the
  upstream's output from its last successful run -- and logs so. Without one the task fails with
  a message saying which upstream to enable.
* **locations.** ``storage_root`` (templated) defaults to the platform's storage setting, and the
  registry to its registry setting, both resolved by :mod:`airflow_ml_provider.ml.settings` when the
  task runs (``[ml] storage`` / ``AIRFLOW_ML_STORAGE``, else ``<ML home>/storage``; see
  docs/configuration.md). Each task writes its output under
  ``<storage_root>/runs/<dag_id>/<run_id>/<task_id>/`` unless ``output_uri`` is set.

Heavy libraries are imported inside ``execute`` only; importing this module is cheap.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_ml_provider.disabled_tasks import skip_if_disabled
from airflow_ml_provider.ml import settings

__all__ = ["MLBaseOperator", "default_storage_root", "default_registry", "ml_home", "safe_path_part"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# Thin wrappers over the one settings owner (ml/settings.py); called when tasks run, never at parse time.


def ml_home() -> str:
    """The ML home (``[ml] home``, ``$AIRFLOW_ML_HOME``, else ``~/airflow-ml``)."""
    return settings.resolve().home


def default_storage_root() -> str:
    """The artifact storage root (``[ml] storage``, ``$AIRFLOW_ML_STORAGE``, else ``<home>/storage``)."""
    return settings.resolve().storage


def default_registry() -> str:
    """The registry as configured (URL or connection id; ``[ml] registry_conn``, ``$AIRFLOW_ML_REGISTRY``,
    else SQLite in the home). Prefer :meth:`MLBaseOperator.open_registry`, which keeps its table prefix."""
    return settings.resolve().registry


def safe_path_part(text: str) -> str:
    """A run id or task id made safe as one path segment on every storage (HDFS forbids ':')."""
    return _UNSAFE.sub("_", str(text)).strip("._") or "_"


class MLBaseOperator(BaseOperator):
    """Base class of the ML pipeline operators: disabled-task check, URIs, upstream outputs.

    Subclasses implement :meth:`run` (not ``execute``) and take ``storage_root`` and
    ``output_uri`` as keyword arguments.

    :param storage_root: where artifacts go (``file:///...``, a local path, or
        ``webhdfs://<conn_id>@/path``); default: the storage setting (``[ml] storage``,
        ``$AIRFLOW_ML_STORAGE``, else ``<ML home>/storage``; docs/configuration.md).
    :param output_uri: this task's output directory; default
        ``<storage_root>/runs/<dag_id>/<run_id>/<task_id>``.
    """

    template_fields: Sequence[str] = ("storage_root", "output_uri")
    ui_color = "#e8f4ea"

    # No __init__ here: every level of __init__ costs Airflow a deep copy of the DAG's params at
    # parse time. Subclasses take ``storage_root`` / ``output_uri`` themselves.
    storage_root: str | None = None
    output_uri: str | None = None

    # -- the template method -------------------------------------------------------------------

    def _hook_apply_defaults(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        # Airflow's operator metaclass calls this hook with the constructor's kwargs (cheaper than one
        # more __init__ level). A disabled upstream ends *skipped*, so ML tasks default to the
        # ``none_failed`` trigger rule: they still run after it (reading its latest output). An explicit
        # trigger_rule, or one in the DAG's default_args, wins.
        if "trigger_rule" not in kwargs and "trigger_rule" not in (kwargs.get("default_args") or {}):
            kwargs["trigger_rule"] = "none_failed"
        return args, kwargs

    def execute(self, context: Any) -> Any:
        # a disabled task raises AirflowSkipException here (ends skipped: no XCom, no asset event);
        # an unknown id in disabled_tasks fails the task (see airflow_ml_provider.disabled_tasks)
        skip_if_disabled(context, self.task_id, self.log, skip=True)
        result = self.run(context)
        if result is not None:
            self._write_latest(context, result)
        return result

    def run(self, context: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- locations -----------------------------------------------------------------------------

    def resolved_storage_root(self) -> str:
        return str(self.storage_root or settings.resolve().storage)

    def open_registry(self, registry: str | None = None):
        """The :class:`~airflow_ml_provider.ml.registry.ModelRegistry` named by ``registry`` (a URL or a
        connection id; default: this operator's ``registry`` attribute, else the registry setting),
        with the table prefix of the connection's extra."""
        registry = registry if registry is not None else getattr(self, "registry", None)
        location = settings.registry_location(registry=registry or None)
        self.log.info("Model registry: %s (%s)", location.masked, location.source)
        from airflow_ml_provider.ml.registry import ModelRegistry

        return ModelRegistry(location.url, table_prefix=location.table_prefix)

    def run_dir_uri(self, context: Any) -> str:
        from airflow_ml_provider.ml import storage

        dag_id = _dag_id(context, self)
        run_id = _run_id(context)
        return storage.join(self.resolved_storage_root(), "runs", safe_path_part(dag_id), safe_path_part(run_id))

    def resolved_output_uri(self, context: Any) -> str:
        from airflow_ml_provider.ml import storage

        if self.output_uri:
            return str(self.output_uri)
        return storage.join(self.run_dir_uri(context), safe_path_part(self.task_id))

    def latest_pointer_uri(self, context: Any, task_id: str) -> str:
        from airflow_ml_provider.ml import storage

        return storage.join(
            self.resolved_storage_root(), "runs", safe_path_part(_dag_id(context, self)), "latest",
            f"{safe_path_part(task_id)}.json",
        )

    def _write_latest(self, context: Any, result: Any) -> None:
        from airflow_ml_provider.ml import storage

        try:
            payload = json.dumps({"run_id": _run_id(context), "task_id": self.task_id, "output": result},
                                 sort_keys=True, default=str).encode()
            storage.write_bytes_atomic(self.latest_pointer_uri(context, self.task_id), payload)
        except Exception as exc:  # noqa: BLE001 - the pointer is a convenience; the run's XCom is what counts
            self.log.warning("Could not record the latest output of %s: %s", self.task_id, exc)

    # -- inputs --------------------------------------------------------------------------------

    def upstream(self, context: Any, task_id: str | None, *, required: bool = True) -> dict[str, Any] | None:
        """The XCom ``return_value`` of ``task_id`` in this run, else its latest output (see module doc)."""
        if not task_id:
            return None
        from airflow_ml_provider.ml import storage

        ti = context.get("ti") or context.get("task_instance")
        value = ti.xcom_pull(task_ids=task_id) if ti is not None else None
        if value:
            return value
        pointer = self.latest_pointer_uri(context, task_id)
        try:
            found = storage.exists(pointer)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("Cannot check %s: %s", pointer, exc)
            found = False
        if found:
            data = json.loads(storage.read_bytes(pointer))
            self.log.info(
                "Upstream task %s produced no output in this run (disabled?); using its latest output, "
                "from run %s (%s).", task_id, data.get("run_id"), pointer,
            )
            return data.get("output")
        if required:
            raise ValueError(
                f"upstream task {task_id!r} produced no output in this run (is it in disabled_tasks?) and has "
                f"no earlier output at {storage.mask_uri(pointer)}: enable it for this run"
            )
        return None

    # -- local working copies ------------------------------------------------------------------

    @staticmethod
    def local_path(uri: str) -> str | None:
        """The local filesystem path of a ``file://`` URI or a plain path, else None."""
        text = str(uri)
        if text.startswith("file://"):
            return text[len("file://"):]
        if "://" not in text:
            return text
        return None

    def fetch_file(self, uri: str, workdir: str) -> str:
        """A local path for the file at ``uri`` (the file itself when local, else a download)."""
        local = self.local_path(uri)
        if local is not None:
            return local
        from airflow_ml_provider.ml import storage

        dest = Path(tempfile.mkdtemp(dir=workdir)) / Path(str(uri).rstrip("/")).name
        dest.write_bytes(storage.read_bytes(uri))
        return str(dest)

    def fetch_dir(self, uri: str, workdir: str) -> str:
        """A local path for the directory at ``uri`` (itself when local, else a download)."""
        local = self.local_path(uri)
        if local is not None:
            return local
        from airflow_ml_provider.ml import storage

        return str(storage.get_dir(uri, Path(tempfile.mkdtemp(dir=workdir)) / "d"))

    def publish_dir(self, local_dir: str | Path, uri: str) -> str:
        """Put a finished local directory at ``uri`` atomically, replacing an earlier try's output."""
        from airflow_ml_provider.ml import storage

        if storage.exists(uri):
            self.log.info("Replacing the output of an earlier try at %s", storage.mask_uri(uri))
            storage.remove(uri, recursive=True)
        storage.put_dir_atomic(local_dir, uri)
        return str(uri)

    @staticmethod
    def workdir(prefix: str) -> tempfile.TemporaryDirectory:
        return tempfile.TemporaryDirectory(prefix=f"aml-{prefix}-")

    # -- typed coercion of rendered templates --------------------------------------------------

    def as_float(self, name: str, value: Any, *, allow_none: bool = True) -> float | None:
        if value is None or (isinstance(value, str) and value.strip() in ("", "None", "null")):
            if allow_none:
                return None
            raise ValueError(f"{type(self).__name__}({self.task_id}): {name} is required")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}({self.task_id}): {name} must be a number, got {value!r}") from None

    def as_int(self, name: str, value: Any, *, allow_none: bool = True) -> int | None:
        f = self.as_float(name, value, allow_none=allow_none)
        if f is None:
            return None
        if not float(f).is_integer():
            raise ValueError(f"{type(self).__name__}({self.task_id}): {name} must be an integer, got {value!r}")
        return int(f)

    def as_obj(self, name: str, value: Any) -> Any:
        """A rendered template holding JSON (lists, dicts) back as an object."""
        if isinstance(value, str):
            text = value.strip()
            if text[:1] in ("[", "{"):
                try:
                    return json.loads(text)
                except ValueError:
                    import ast

                    try:
                        return ast.literal_eval(text)
                    except (ValueError, SyntaxError):
                        raise ValueError(
                            f"{type(self).__name__}({self.task_id}): {name} is not valid JSON: {text[:80]!r}"
                        ) from None
            if text in ("", "None", "null"):
                return None
        return value


def _dag_id(context: Mapping[str, Any], op: BaseOperator) -> str:
    dag = context.get("dag")
    if dag is not None and getattr(dag, "dag_id", None):
        return dag.dag_id
    ti = context.get("ti")
    if ti is not None and getattr(ti, "dag_id", None):
        return ti.dag_id
    return getattr(op, "dag_id", None) or "no_dag"


def _run_id(context: Mapping[str, Any]) -> str:
    if context.get("run_id"):
        return str(context["run_id"])
    dag_run = context.get("dag_run")
    if dag_run is not None and getattr(dag_run, "run_id", None):
        return dag_run.run_id
    return "manual"


def copy_tree(src: str | Path, dst: str | Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
