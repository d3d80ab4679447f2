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

Embeddings (a ``word2vec`` training task, ``task == "embedding"``, e.g. the item2vec DAG) are
published as an ``embedding`` bundle (:data:`airflow_ml_provider.ml.bundle.KIND_EMBEDDING`: the
vectors and the vocabulary, no fitted spec) straight from the training task (set
``input_task_id=None``, ``preprocess_task_id=None``); the metrics are the training task's
``evaluation.json`` (next-item hit rate@k and the most-popular baseline), and the gates
``min_hit_rate`` / ``min_hit_rate_ratio`` judge them: a failed gate skips the publish like a failed
evaluation gate. The model service answers ``:predict`` (item ids -> vectors) and ``:similar``
(nearest items) for it (docs/serving.md).

Each publish emits an Airflow **Asset event** for :func:`model_asset` ``(name)``
(name ``ml-model-<name>``, URI ``x-ml-model://<name>``), with the version and bundle URI in its ``extra``, so other DAGs can be
scheduled on "a new model was published"::

    @dag(schedule=[model_asset("audio_listen_30s")])
    def refresh_recommendations(): ...

Inputs, each read from the task that produced it (no task embeds its upstream's record): the gate,
the judged model and its metrics from the evaluation task (``input_task_id``); the model from the
training task (``train_task_id``) when there is no evaluation; the fitted spec and the lineage
(training data, feature tables, spec source) from the preprocessing task (``preprocess_task_id``).
Framework, task, params and best iteration come from the model directory's ``metadata.json``. The
fitted spec must be the one the model's features came from (same ``spec_hash``); the bundle records
it under ``metadata["spec_hash"]`` (:data:`airflow_ml_provider.ml.bundle.SPEC_HASH_KEY`), the key
the model service checks.

XCom (``return_value``): the flat ``publish`` record of :mod:`airflow_ml_provider.ml.records`::

    {"name": ..., "version": n, "uri": <bundle uri>, "checksum": ..., "registry_id": n,
     "evaluated": bool}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from airflow_ml_provider.operators.base import MLBaseOperator

__all__ = ["PublishModelOperator", "model_asset"]


def model_asset(name: str) -> Asset:
    """The Airflow Asset updated each time model ``name`` is published."""
    return Asset(name=f"ml-model-{name}", uri=f"x-ml-model://{name}", group="ml-model")


class PublishModelOperator(MLBaseOperator):
    """Bundle and publish a model: storage first, then the registry row (the commit point).

    :param model_name: the registry name of the model.
    :param input_task_id: the evaluation task (its XCom has the gate, metrics and charts).
    :param train_task_id: the training task, used when the evaluation task produced nothing.
    :param preprocess_task_id: the preprocessing task: the fitted spec and the lineage (training
        data and feature tables) recorded in the bundle (default ``preprocess``).
    :param fitted_spec_uri: the fitted spec, overriding the preprocessing task's.
    :param registry: the model registry: a SQLAlchemy URL or an Airflow connection id; default
        the registry setting (``[ml] registry_conn``, ``$AIRFLOW_ML_REGISTRY``, else SQLite under the ML
        home; docs/configuration.md). A connection's extra may set ``table_prefix``.
    :param require_evaluation: skip the publish when the evaluation task produced nothing in this
        run (default False: publish without gates, with a warning).
    :param extra_metadata: more metadata recorded in the bundle (templated).
    :param storage_root: where ``models/<name>/<version>/`` is written.
    :param min_hit_rate: embeddings only: skip the publish when the training task's next-item hit
        rate@k is below this (or was not measured). Default None: no such gate.
    :param min_hit_rate_ratio: embeddings only: skip the publish when the hit rate is below this
        multiple of the most-popular-items baseline's (e.g. 1.0: at least as good as popularity) or
        was not measured. Default None: no such gate.
    :param approval_task_id: a human-in-the-loop approval task (Airflow's ``ApprovalOperator``) between
        evaluation and publish: when the gate failed and that task's response in this run is
        ``Approve``, the model is published anyway, the approval recorded in the bundle's metadata
        (a ``Reject`` skips this task before it runs). Default None: a failed gate always skips.
    """

    template_fields: Sequence[str] = (
        "model_name", "input_task_id", "train_task_id", "preprocess_task_id", "fitted_spec_uri", "registry", "extra_metadata",
        "storage_root", "min_hit_rate", "min_hit_rate_ratio", "approval_task_id",
    )
    ui_color = "#dcf3fc"
    record_kind = "publish"  # the keys of its XCom: airflow_ml_provider.ml.records.RECORD_KEYS

    def __init__(
        self,
        *,
        model_name: str,
        input_task_id: str | None = "evaluate",
        train_task_id: str | None = "train",
        preprocess_task_id: str | None = "preprocess",
        fitted_spec_uri: str | None = None,
        registry: str | None = None,
        require_evaluation: bool = False,
        extra_metadata: dict[str, Any] | None = None,
        storage_root: str | None = None,
        min_hit_rate: float | str | None = None,
        min_hit_rate_ratio: float | str | None = None,
        approval_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [model_asset(model_name)])
        super().__init__(**kwargs)
        self.storage_root = storage_root
        self.model_name = model_name
        self.input_task_id = input_task_id
        self.train_task_id = train_task_id
        self.preprocess_task_id = preprocess_task_id
        self.fitted_spec_uri = fitted_spec_uri
        self.registry = registry
        self.require_evaluation = require_evaluation
        self.extra_metadata = extra_metadata
        self.min_hit_rate = min_hit_rate
        self.min_hit_rate_ratio = min_hit_rate_ratio
        self.approval_task_id = approval_task_id

    def run(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_ml_provider.ml import storage
        from airflow_ml_provider.ml.bundle import SPEC_HASH_KEY, build_bundle
        from airflow_ml_provider.ml.records import check_same_spec, make_record
        from airflow_ml_provider.ml.registry import publish_model
        from airflow_ml_provider.ml.trainers import read_metadata

        name = f"PublishModelOperator({self.task_id})"
        embedding: dict[str, Any] | None = None  # the training record of embeddings (no fitted spec)
        ev = self._this_run_xcom(context, self.input_task_id)
        approval: Any = None  # the approval task's response, when a failed gate was approved
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
            model_uri, model_task, spec_hash = train["uri"], self.train_task_id, train.get("spec_hash")
            if train.get("task") == "embedding":
                embedding = train
                failed = self._embedding_gate_failures(train)
                if failed:
                    raise AirflowSkipException(f"Not publishing {self.model_name!r}: gate failed: {'; '.join(failed)}")
        else:
            if not ev.get("gate_passed", False):
                reasons = "; ".join(ev.get("gate_reasons") or ["unknown reason"])
                approval = self._this_run_xcom(context, self.approval_task_id) if self.approval_task_id else None
                if not approval or "Approve" not in (approval.get("chosen_options") or []):
                    raise AirflowSkipException(f"Not publishing {self.model_name!r}: gate failed: {reasons}")
                who = approval.get("responded_by_user") or {}
                self.log.warning("Gate failed (%s) but %s approved the publish in task %r: publishing.", reasons,
                                 (who.get("name") if isinstance(who, dict) else who) or "a user", self.approval_task_id)
            model_uri, model_task, spec_hash = ev["model_uri"], self.input_task_id, ev.get("spec_hash")
        prep: dict[str, Any] = {}
        spec_uri = self.fitted_spec_uri
        if embedding is not None:
            spec_uri = None  # an embedding bundle has no fitted spec
        elif not spec_uri:
            prep = self.upstream(context, self.preprocess_task_id) or {}
            spec_uri = prep.get("fitted_spec_uri")
            check_same_spec(name, model_task, spec_hash, self.preprocess_task_id, prep.get("spec_hash"))
        if not spec_uri and embedding is None:
            raise ValueError(f"{name}: no fitted spec (set fitted_spec_uri or preprocess_task_id)")
        dag_id = context["dag"].dag_id if context.get("dag") is not None else self.dag_id
        run_id = context.get("run_id") or context["dag_run"].run_id
        storage_root = self.resolved_storage_root()
        registry = self.open_registry()  # ml/settings.py: self.registry, else the setting; keeps table_prefix
        existing = registry.find_run(self.model_name, dag_id, run_id)
        if existing is not None:
            self.log.info("This run already published %s version %s (a retry): nothing new is written.",
                          existing.name, existing.version)
        with self.workdir("publish") as tmp:
            model_dir = self.fetch_dir(model_uri, tmp)
            model_meta = read_metadata(model_dir)
            spec_path = self.fetch_file(spec_uri, tmp) if spec_uri else None
            metrics: Any = {}
            charts: Any = None
            gate: Any = None
            if embedding is not None:
                metrics, gate = self._embedding_metrics(embedding, tmp)
            if ev is not None:
                metrics = self.fetch_file(ev["metrics_uri"], tmp)
                if ev.get("charts_uri"):
                    charts = self.fetch_dir(ev["charts_uri"], tmp)
                gate = json.loads(Path(self.fetch_file(ev["gate_uri"], tmp)).read_text(encoding="utf-8"))
            metadata = {
                "model_name": self.model_name,
                "dag_id": dag_id,
                "run_id": run_id,
                "task": model_meta.get("task"),
                "params": model_meta.get("params"),
                "best_iteration": model_meta.get("best_iteration"),
                "model_source_uri": model_uri,
                "training_data_uri": prep.get("raw_train_uri") or prep.get("train")
                or (embedding or {}).get("train_uri"),
                "feature_tables_uri": prep.get("uri"),
                "spec_source": prep.get("spec_source"),
                "evaluated": ev is not None or bool(embedding and embedding.get("hit_rate") is not None),
                "gate": gate,
                **({"approval": {"task_id": self.approval_task_id, "chosen_options": approval.get("chosen_options"),
                                 "responded_by": approval.get("responded_by_user"),
                                 "responded_at": str(approval.get("responded_at"))}} if approval else {}),
                **(self.extra_metadata or {}),
            }
            if spec_hash:
                # build_bundle records the spec file's own hash under this key; given here, it must match
                metadata[SPEC_HASH_KEY] = spec_hash
            bundle_dir = Path(tmp) / "bundle"
            manifest = build_bundle(bundle_dir, model_dir=model_dir, fitted_spec=spec_path,
                                    framework=model_meta.get("framework") or "xgboost", metrics=metrics,
                                    charts=charts, metadata=metadata,
                                    kind="embedding" if embedding is not None else "model")
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
        return make_record(
            "publish",
            name=record.name,
            version=record.version,
            uri=record.bundle_uri,
            checksum=record.checksum,
            registry_id=record.id,
            evaluated=ev is not None or bool(embedding and embedding.get("hit_rate") is not None),
        )

    def _embedding_gate_failures(self, train: dict[str, Any]) -> list[str]:
        """The reasons the embeddings of training record ``train`` fail the hit-rate gates (none: pass)."""
        out = []
        hit, pop, k = train.get("hit_rate"), train.get("popularity_hit_rate"), train.get("eval_k")
        floor = self.as_float("min_hit_rate", self.min_hit_rate)
        ratio = self.as_float("min_hit_rate_ratio", self.min_hit_rate_ratio)
        if (floor is not None or ratio is not None) and hit is None:
            return [f"the training task {self.train_task_id!r} measured no next-item hit rate (no validation "
                    "sequences in the vocabulary?), and a hit-rate gate is set"]
        if floor is not None and hit < floor:
            out.append(f"next-item hit rate@{k} {hit:.4f} < min_hit_rate {floor}")
        if ratio is not None and pop is not None and hit < ratio * pop:
            out.append(f"next-item hit rate@{k} {hit:.4f} < {ratio} x the most-popular baseline {pop:.4f}")
        return out

    def _embedding_metrics(self, train: dict[str, Any], tmp: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The bundle's metrics (the training task's evaluation.json) and the gate's record."""
        metrics: dict[str, Any] = {}
        if train.get("evaluation_uri"):
            loaded = json.loads(Path(self.fetch_file(train["evaluation_uri"], tmp)).read_text(encoding="utf-8"))
            metrics.update(loaded if isinstance(loaded, dict) else {})
        for key in ("vocabulary_size", "sentences", "eval_k", "hit_rate", "popularity_hit_rate"):
            metrics.setdefault(key, train.get(key))
        gate = {"passed": True, "min_hit_rate": self.as_float("min_hit_rate", self.min_hit_rate),
                "min_hit_rate_ratio": self.as_float("min_hit_rate_ratio", self.min_hit_rate_ratio),
                "hit_rate": train.get("hit_rate"), "popularity_hit_rate": train.get("popularity_hit_rate")}
        return metrics, gate

    def _this_run_xcom(self, context: Any, task_id: str | None) -> dict[str, Any] | None:
        """The XCom of ``task_id`` in this run only (no fallback: an old evaluation judges an old model)."""
        if not task_id:
            return None
        ti = context.get("ti") or context.get("task_instance")
        return ti.xcom_pull(task_ids=task_id) or None if ti is not None else None
