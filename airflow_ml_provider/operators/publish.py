"""PublishModelOperator: bundle the model and commit it to storage and the model registry.

The bundle (:mod:`airflow_ml_provider.ml.bundle`) holds the model files, the fitted feature spec,
the metrics, the charts and the metadata (framework and library versions, training data URI,
dag_id, run_id, params) with a sha256 checksum per file. It is written atomically to
``<storage_root>/models/<name>/<version>/``; then the registry row is inserted -- that insert is the
commit point (:func:`airflow_ml_provider.ml.registry.publish_model`). A retry of the same run finds
its row (unique on model, dag_id, run_id) and publishes nothing new: no second version, no
duplicate row.

Gates: when the evaluation task reports a failed gate, the task raises ``AirflowSkipException``:
the publish is **skipped** (not failed), the reasons are in the log, and the run still succeeds.
When the evaluation task produced nothing in this run (it was disabled), the model is published
without gates (``require_evaluation=False``, the default: a disabled step is the operator's explicit
choice) or skipped (``require_evaluation=True``).

Each publish emits an Airflow **Asset event** for :func:`model_asset` ``(name)``
(name ``ml-model-<name>``, URI ``x-ml-model://<name>``), with the version and bundle URI in its ``extra``, so other DAGs can be
scheduled on "a new model was published"::

    @dag(schedule=[model_asset("audio_listen_30s")])
    def refresh_recommendations(): ...

XCom (``return_value``)::

    {"name": ..., "version": n, "uri": <bundle uri>, "checksum": ..., "registry_id": n,
     "evaluated": bool}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from airflow_ml_provider.operators.base import MLBaseOperator, default_registry

__all__ = ["PublishModelOperator", "model_asset"]


def model_asset(name: str) -> Asset:
    """The Airflow Asset updated each time model ``name`` is published."""
    return Asset(name=f"ml-model-{name}", uri=f"x-ml-model://{name}", group="ml-model")


class PublishModelOperator(MLBaseOperator):
    """Bundle and publish a model: storage first, then the registry row (the commit point).

    :param model_name: the registry name of the model.
    :param input_task_id: the evaluation task (its XCom has the gate, metrics and charts).
    :param train_task_id: the training task, used when the evaluation task produced nothing.
    :param fitted_spec_uri: the fitted spec, overriding the one from upstream XComs.
    :param registry: the model registry: a SQLAlchemy URL or an Airflow connection id; default
        ``$AIRFLOW_ML_REGISTRY`` or SQLite under ``$AIRFLOW_ML_HOME``.
    :param require_evaluation: skip the publish when the evaluation task produced nothing in this
        run (default False: publish without gates, with a warning).
    :param extra_metadata: more metadata recorded in the bundle (templated).
    :param storage_root: where ``models/<name>/<version>/`` is written.
    """

    template_fields: Sequence[str] = (
        "model_name", "input_task_id", "train_task_id", "fitted_spec_uri", "registry", "extra_metadata",
        "storage_root",
    )
    ui_color = "#dcf3fc"

    def __init__(
        self,
        *,
        model_name: str,
        input_task_id: str | None = "evaluate",
        train_task_id: str | None = "train",
        fitted_spec_uri: str | None = None,
        registry: str | None = None,
        require_evaluation: bool = False,
        extra_metadata: dict[str, Any] | None = None,
        storage_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [model_asset(model_name)])
        super().__init__(**kwargs)
        self.storage_root = storage_root
        self.model_name = model_name
        self.input_task_id = input_task_id
        self.train_task_id = train_task_id
        self.fitted_spec_uri = fitted_spec_uri
        self.registry = registry
        self.require_evaluation = require_evaluation
        self.extra_metadata = extra_metadata

    def run(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_ml_provider.hooks.registry import resolve_registry_url
        from airflow_ml_provider.ml import storage
        from airflow_ml_provider.ml.bundle import build_bundle
        from airflow_ml_provider.ml.registry import ModelRegistry, publish_model

        ev = self._this_run_xcom(context, self.input_task_id)
        if ev is None:
            if self.require_evaluation:
                raise AirflowSkipException(
                    f"Not publishing {self.model_name!r}: the evaluation task {self.input_task_id!r} produced no "
                    "result in this run (disabled?) and require_evaluation=True"
                )
            self.log.warning(
                "The evaluation task %r produced no result in this run (disabled?): publishing %r WITHOUT gates "
                "or metrics (set require_evaluation=True to skip instead).", self.input_task_id, self.model_name,
            )
            train = self.upstream(context, self.train_task_id)
        else:
            gate = ev.get("gate") or {}
            if not gate.get("passed", False):
                reasons = "; ".join(gate.get("reasons") or ["unknown reason"])
                raise AirflowSkipException(f"Not publishing {self.model_name!r}: gate failed: {reasons}")
            train = ev.get("train") or {}
        prep = train.get("preprocess") or {}
        sample = prep.get("sample") or {}
        spec_uri = self.fitted_spec_uri or prep.get("fitted_spec")
        if not spec_uri and train.get("task") == "embedding":
            raise ValueError(
                f"PublishModelOperator({self.task_id}): {train.get('framework')} embeddings have no fitted feature "
                "spec, and a model bundle needs one (the online service scores feature vectors); use the model "
                f"directory written by the training task instead: {train.get('uri')}"
            )
        if not spec_uri:
            raise ValueError(f"PublishModelOperator({self.task_id}): no fitted spec (set fitted_spec_uri)")
        dag_id = context["dag"].dag_id if context.get("dag") is not None else self.dag_id
        run_id = context.get("run_id") or context["dag_run"].run_id
        storage_root = self.resolved_storage_root()
        metadata = {
            "model_name": self.model_name,
            "dag_id": dag_id,
            "run_id": run_id,
            "task": train.get("task"),
            "params": train.get("params"),
            "best_iteration": train.get("best_iteration"),
            "model_source_uri": train.get("uri"),
            "training_data_uri": sample.get("train") or prep.get("train"),
            "feature_tables_uri": prep.get("uri"),
            "spec_hash": prep.get("spec_hash"),
            "spec_source": prep.get("spec_source"),
            "evaluated": ev is not None,
            "gate": (ev or {}).get("gate"),
            **(self.extra_metadata or {}),
        }
        registry = ModelRegistry(resolve_registry_url(self.registry or default_registry()))
        existing = registry.find_run(self.model_name, dag_id, run_id)
        if existing is not None:
            self.log.info("This run already published %s version %s (a retry): nothing new is written.",
                          existing.name, existing.version)
        with self.workdir("publish") as tmp:
            model_dir = self.fetch_dir(train["uri"], tmp)
            spec_path = self.fetch_file(spec_uri, tmp)
            metrics: Any = {}
            charts: Any = None
            if ev is not None:
                metrics = self.fetch_file(ev["metrics_uri"], tmp)
                if ev.get("charts_uri"):
                    charts = self.fetch_dir(ev["charts_uri"], tmp)
            bundle_dir = Path(tmp) / "bundle"
            manifest = build_bundle(bundle_dir, model_dir=model_dir, fitted_spec=spec_path,
                                    framework=train.get("framework") or "xgboost", metrics=metrics, charts=charts,
                                    metadata=metadata)
            self.log.info("Built bundle %s (checksum %s)", bundle_dir, manifest.get("checksum"))
            try:
                record = publish_model(registry, str(bundle_dir), storage_root, self.model_name,
                                       dag_id=dag_id, run_id=run_id, created_by=f"{dag_id}/{self.task_id}")
            finally:
                registry.dispose()
        self.log.info("Published %s version %s at %s (registry %s)", record.name, record.version,
                      storage.mask_uri(record.bundle_uri), registry.masked_url)
        event_extra = {"name": record.name, "version": record.version, "uri": record.bundle_uri,
                       "checksum": record.checksum}
        outlet_events = context.get("outlet_events")
        if outlet_events is not None:
            for asset in self.outlets or []:
                if isinstance(asset, Asset):
                    outlet_events[asset].extra = event_extra
        return {
            "name": record.name,
            "version": record.version,
            "uri": record.bundle_uri,
            "checksum": record.checksum,
            "registry_id": record.id,
            "evaluated": ev is not None,
        }

    def _this_run_xcom(self, context: Any, task_id: str | None) -> dict[str, Any] | None:
        """The XCom of ``task_id`` in this run only (no fallback: an old evaluation judges an old model)."""
        if not task_id:
            return None
        ti = context.get("ti") or context.get("task_instance")
        return ti.xcom_pull(task_ids=task_id) or None if ti is not None else None
