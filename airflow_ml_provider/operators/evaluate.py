"""EvaluateOperator: metrics, charts and the publish gates of a trained model.

Scores the model of the training task (``input_task_id``) on a feature table (the ``test`` split of
the preprocessing task ``preprocess_task_id`` by default), writes ``metrics.json`` and PNG charts (ROC, PR, KS, lift, gain, feature importance)
beside it, and decides whether the model may be published:

* **minimum / maximum metrics** -- from the operator's ``min_metrics`` / ``max_metrics``, overridden
  by Airflow Variables (which the dictionary-table secrets backend serves from MySQL in
  production; see :func:`gate_variable_names`):

  - ``ml.<model>.gates`` -- one JSON variable:
    ``{"min": {"auc": 0.7}, "max": {"logloss": 0.6}, "compare_on": "auc", "min_improvement": 0.0,
    "champion": true}``;
  - ``ml.<model>.min_<metric>`` / ``ml.<model>.max_<metric>`` -- one number each
    (``ml.audio_listen_30s.min_auc = 0.72``), which win over the JSON variable;
  - ``ml.<model>.min_improvement`` -- the champion/challenger margin.

* **champion/challenger** -- the model the registry currently serves (``ModelRegistry.current(model)``)
  is loaded from its bundle (fetched and verified against the registry's checksum) and RE-SCORED on
  this run's rows: on the same feature table when its fitted spec is this run's (same
  ``spec_hash``), else on this run's raw split (from ``sample_task_id``'s record, or
  ``raw_data_uri``) transformed with the bundle's own fitted spec -- the same rows either way (the
  labels are checked equal). The new model must beat it on ``compare_on`` (``auc`` for binary,
  ``rmse`` for regression) by MORE than ``min_improvement``: a tie (an identical re-run) does not
  publish a new version unless ``publish_on_tie``. Both sets of metrics are recorded: the
  ``champion_*`` keys of the record, ``champion_metrics.json`` and the ``champion`` entry of
  ``gate.json``. A champion that cannot be re-scored (bundle gone, unreadable) is compared through
  the metrics recorded when it was published, with a warning and ``champion_rescored: false``.

The outcome is pushed in the XCom; the evaluate task itself succeeds either way. The publish task
reads it and **skips** (it does not fail) when a gate failed, with the reasons in its log.

The model and the feature table must come from the same fitted spec: the training task's record
names the ``spec_hash`` of the spec its features came from, and a preprocessing output with another
hash (``train`` disabled in a run where ``preprocess`` ran and fitted a different spec) is refused
with a message saying so.

XCom (``return_value``): the flat ``evaluate`` record of :mod:`airflow_ml_provider.ml.records`::

    {"uri": <dir>, "model_name": ..., "model_uri": <the model judged>, "data_uri": <table scored>,
     "spec_hash": <its fitted spec's content hash or null>, "task": "binary"|"regression",
     "n_rows": n, "auc", "ks", "logloss" (binary), "rmse", "mae", "r2" (regression; null otherwise),
     "metrics_uri": <metrics.json>, "charts_uri": <charts dir|null>, "gate_uri": <gate.json>,
     "gate_passed": bool, "gate_reasons": [...], "champion_version": n|null,
     "champion_rescored": bool, "champion_auc", "champion_ks", "champion_logloss", "champion_rmse",
     "champion_mae", "champion_r2" (the champion on these rows), "champion_metrics_uri": <json|null>}

Every metric, each gate check and the gate configuration are in ``metrics.json`` and ``gate.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_ml_provider.operators.base import MLBaseOperator

__all__ = ["EvaluateOperator", "gate_variable_names"]

_GATE_METRICS = ("auc", "ks", "logloss", "precision", "recall", "f1", "accuracy", "average_precision",
                 "rmse", "mae", "r2", "mape")


#: the metrics the evaluate record carries (null when not the model's task); all are in metrics.json
_RECORD_METRICS = ("auc", "ks", "logloss", "rmse", "mae", "r2")

_EMBEDDING_MESSAGE = (
    "{op}: the model is a word2vec embedding (item vectors, no score to evaluate on a feature table); "
    "Word2VecTrainOperator measures it itself (next-item hit rate@k on its validation sequences)"
)


def gate_variable_names(model_name: str, prefix: str = "ml") -> dict[str, str]:
    """The Airflow Variable keys the gates of ``model_name`` are read from."""
    names = {"gates": f"{prefix}.{model_name}.gates", "min_improvement": f"{prefix}.{model_name}.min_improvement",
             "publish_on_tie": f"{prefix}.{model_name}.publish_on_tie"}
    for m in _GATE_METRICS:
        names[f"min_{m}"] = f"{prefix}.{model_name}.min_{m}"
        names[f"max_{m}"] = f"{prefix}.{model_name}.max_{m}"
    return names


class EvaluateOperator(MLBaseOperator):
    """Evaluate a trained model: metrics JSON, PNG charts, gates (minimums + champion/challenger).

    :param model_name: the registry name of the model (also names the gate Variables).
    :param input_task_id: the training task whose XCom names the model.
    :param preprocess_task_id: the preprocessing task whose XCom names the feature tables (default
        ``preprocess``).
    :param model_uri: the model directory, overriding ``input_task_id``.
    :param data_uri: the feature table to score, overriding the ``split`` of the preprocessing output.
    :param split: which split to score: ``test`` (default) or ``valid``.
    :param task: ``binary`` or ``regression``; default: the model's.
    :param threshold: the decision threshold for precision/recall/F1 and the confusion matrix.
    :param min_metrics: default minimums (``{"auc": 0.7}``); Variables override them.
    :param max_metrics: default maximums (``{"logloss": 0.7}``); Variables override them.
    :param compare_on: the champion/challenger metric (default ``auc`` / ``rmse``).
    :param min_improvement: the challenger must beat the champion by MORE than this (default 0:
        strictly better; negative: a tolerance).
    :param publish_on_tie: an improvement of exactly ``min_improvement`` (by default: equal metrics,
        e.g. an identical re-run) passes; default False.
    :param champion: compare with the currently published model (default True).
    :param rescore_champion: re-score the champion's bundle on this run's rows (default True); False
        compares with the metrics recorded when it was published (another, older test set).
    :param sample_task_id: the sampling task whose record names this run's raw splits (default
        ``sample``): the champion's own fitted spec transforms them when it differs from this run's.
    :param raw_data_uri: the raw split to transform for the champion, overriding ``sample_task_id``.
    :param registry: the model registry: a SQLAlchemy URL or an Airflow connection id; default
        the registry setting (``[ml] registry_conn``, ``$AIRFLOW_ML_REGISTRY``, else SQLite under the ML
        home; docs/configuration.md). A connection's extra may set ``table_prefix``.
    :param variable_prefix: prefix of the gate Variables (default ``ml``).
    :param charts: draw the PNG charts (default True).
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the output directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "model_name", "input_task_id", "preprocess_task_id", "model_uri", "data_uri", "split", "task", "threshold", "min_metrics",
        "max_metrics", "compare_on", "min_improvement", "publish_on_tie", "champion", "rescore_champion",
        "sample_task_id", "raw_data_uri", "registry", "variable_prefix", "storage_root", "output_uri",
    )
    template_fields_renderers = {"min_metrics": "json", "max_metrics": "json"}
    ui_color = "#ece4fc"
    record_kind = "evaluate"  # the keys of its XCom: airflow_ml_provider.ml.records.RECORD_KEYS

    def __init__(
        self,
        *,
        model_name: str,
        input_task_id: str | None = "train",
        preprocess_task_id: str | None = "preprocess",
        model_uri: str | None = None,
        data_uri: str | None = None,
        split: str = "test",
        task: str | None = None,
        threshold: float | str = 0.5,
        min_metrics: Mapping[str, Any] | str | None = None,
        max_metrics: Mapping[str, Any] | str | None = None,
        compare_on: str | None = None,
        min_improvement: float | str = 0.0,
        publish_on_tie: bool | str = False,
        champion: bool | str = True,
        rescore_champion: bool | str = True,
        sample_task_id: str | None = "sample",
        raw_data_uri: str | None = None,
        registry: str | None = None,
        variable_prefix: str = "ml",
        charts: bool = True,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage_root = storage_root
        self.output_uri = output_uri
        self.model_name = model_name
        self.input_task_id = input_task_id
        self.preprocess_task_id = preprocess_task_id
        self.model_uri = model_uri
        self.data_uri = data_uri
        self.split = split
        self.task = task
        self.threshold = threshold
        self.min_metrics = min_metrics
        self.max_metrics = max_metrics
        self.compare_on = compare_on
        self.min_improvement = min_improvement
        self.publish_on_tie = publish_on_tie
        self.champion = champion
        self.rescore_champion = rescore_champion
        self.sample_task_id = sample_task_id
        self.raw_data_uri = raw_data_uri
        self.registry = registry
        self.variable_prefix = variable_prefix
        self.charts = charts

    # -- gates ---------------------------------------------------------------------------------

    def gate_config(self) -> dict[str, Any]:
        """Minimums, maximums, compare_on, min_improvement, publish_on_tie, champion: operator args < Variables."""
        cfg: dict[str, Any] = {
            "min": dict(self.as_obj("min_metrics", self.min_metrics) or {}),
            "max": dict(self.as_obj("max_metrics", self.max_metrics) or {}),
            "compare_on": self.compare_on or None,
            "min_improvement": self.as_float("min_improvement", self.min_improvement) or 0.0,
            "publish_on_tie": _as_bool(self.publish_on_tie),
            "champion": _as_bool(self.champion),
        }
        names = gate_variable_names(self.model_name, self.variable_prefix)
        raw = _variable(names["gates"])
        if raw is not None:
            try:
                data = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError as exc:
                raise ValueError(f"Airflow Variable {names['gates']!r} is not valid JSON: {exc}") from None
            if not isinstance(data, Mapping):
                raise ValueError(f"Airflow Variable {names['gates']!r} must be a JSON object")
            unknown = sorted(set(data) - {"min", "max", "compare_on", "min_improvement", "publish_on_tie", "champion"})
            if unknown:
                raise ValueError(f"Airflow Variable {names['gates']!r}: unknown key(s) {unknown}; "
                                 "known: min, max, compare_on, min_improvement, publish_on_tie, champion")
            cfg["min"].update(data.get("min") or {})
            cfg["max"].update(data.get("max") or {})
            for key in ("compare_on", "min_improvement", "publish_on_tie", "champion"):
                if key in data:
                    cfg[key] = data[key]
            self.log.info("Gates from Variable %s: %s", names["gates"], data)
        for m in _GATE_METRICS:
            for kind in ("min", "max"):
                value = _variable(names[f"{kind}_{m}"])
                if value is not None:
                    self.log.info("Gate from Variable %s = %s", names[f"{kind}_{m}"], value)
                    # a minimum on a loss is written 'logloss>=' so the gates module accepts it
                    key = m if kind == "max" or m not in ("logloss", "rmse", "mae", "mape") else f"{m}>="
                    cfg[kind][key] = value
        mi = _variable(names["min_improvement"])
        if mi is not None:
            cfg["min_improvement"] = mi
        tie = _variable(names["publish_on_tie"])
        if tie is not None:
            cfg["publish_on_tie"] = tie
        cfg["min_improvement"] = float(cfg["min_improvement"] or 0.0)
        cfg["publish_on_tie"] = _as_bool(cfg["publish_on_tie"])
        cfg["champion"] = _as_bool(cfg["champion"])
        return cfg

    def champion_metrics(self, cfg: Mapping[str, Any]) -> tuple[dict[str, Any] | None, Any]:
        if not cfg["champion"]:
            return None, None
        reg = self.open_registry()  # ml/settings.py: self.registry, else the setting; keeps table_prefix
        try:
            record = reg.current(self.model_name)
        finally:
            reg.dispose()
        if record is None:
            return None, None
        return dict(record.metrics or {}), record

    # -- run -----------------------------------------------------------------------------------

    def run(self, context: Any) -> dict[str, Any]:
        import numpy as np

        from airflow_ml_provider.ml import storage
        from airflow_ml_provider.ml.feature_table import read_feature_table
        from airflow_ml_provider.ml.gates import evaluate_gates
        from airflow_ml_provider.ml.metrics import compute_metrics
        from airflow_ml_provider.ml.records import check_same_spec, make_record
        from airflow_ml_provider.ml.trainers import load_predictor

        model_uri, data_uri, spec_hash = self.model_uri, self.data_uri, None
        if not model_uri:
            train = self.upstream(context, self.input_task_id)
            if train.get("task") == "embedding":
                raise ValueError(_EMBEDDING_MESSAGE.format(op=f"EvaluateOperator({self.task_id})"))
            model_uri, spec_hash = train["uri"], train.get("spec_hash")
        if not data_uri:
            prep = self.upstream(context, self.preprocess_task_id)
            data_uri = prep.get(self.split) or prep.get("valid")
            check_same_spec(f"EvaluateOperator({self.task_id})", self.input_task_id, spec_hash,
                            self.preprocess_task_id, prep.get("spec_hash"))
            spec_hash = spec_hash or prep.get("spec_hash")
        if not data_uri:
            raise ValueError(f"EvaluateOperator({self.task_id}): no {self.split} feature table to score (set data_uri)")
        threshold = self.as_float("threshold", self.threshold, allow_none=False)
        out_uri = self.resolved_output_uri(context)
        with self.workdir("evaluate") as tmp:
            model_dir = self.fetch_dir(model_uri, tmp)
            predictor = load_predictor(None, model_dir)
            if getattr(predictor, "task", None) == "embedding":
                raise ValueError(_EMBEDDING_MESSAGE.format(op=f"EvaluateOperator({self.task_id})"))
            ds = read_feature_table(self.fetch_file(data_uri, tmp))
            if ds.y is None:
                raise ValueError(f"EvaluateOperator({self.task_id}): {data_uri} has no label column")
            if ds.n_rows == 0:
                raise ValueError(f"EvaluateOperator({self.task_id}): {data_uri} has no rows")
            scores = np.asarray(predictor.predict(ds.X))
            task = self.task or getattr(predictor, "task", None) or "binary"
            metrics = compute_metrics(ds.y, scores, task=task, threshold=threshold)
            metrics["task"] = task
            metrics["n_rows"] = int(ds.n_rows)
            metrics["data_uri"] = data_uri
            local = Path(tmp) / "out"
            local.mkdir()
            try:
                importance = predictor.feature_importance()
            except Exception:  # noqa: BLE001 - not every model has one
                importance = {}
            chart_files = self._charts(ds.y, scores, task, importance, local / "charts") if self.charts else []
            (local / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2, sort_keys=True))
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.log.info("Metrics on %s (%d rows): %s", self.split, ds.n_rows,
                          ", ".join(f"{k}={v:.6g}" for k, v in sorted(numeric.items())))

            cfg = self.gate_config()
            champ, record = self.champion_metrics(cfg)
            champion: dict[str, Any] | None = None
            if record is not None:
                self.log.info("Champion: %s version %s (%s)", record.name, record.version, record.bundle_uri)
                champion = {"version": record.version, "bundle_uri": record.bundle_uri, "rescored": False,
                            "how": None, "error": None, "recorded_metrics": champ, "metrics": None}
                if _as_bool(self.rescore_champion):
                    rescored = self.rescore(context, record, ds, spec_hash, task, threshold, tmp, champion)
                    if rescored is not None:
                        champ = rescored
                        champion.update(rescored=True, metrics=rescored)
                        (local / "champion_metrics.json").write_text(
                            json.dumps(_json_safe(champion), indent=2, sort_keys=True))
            result = evaluate_gates(
                metrics, cfg["min"], champion_metrics=champ, compare_on=cfg["compare_on"],
                min_improvement=cfg["min_improvement"], maximums=cfg["max"], allow_tie=cfg["publish_on_tie"],
            )
            for line in result.checks:
                self.log.info("gate: %s", line)
            if result.passed:
                self.log.info("All gates passed: the model may be published.")
            else:
                self.log.warning("Gates FAILED, the model will not be published: %s", "; ".join(result.reasons))
            gate = {"passed": bool(result.passed), "reasons": list(result.reasons), "checks": list(result.checks),
                    "champion_version": record.version if record is not None else None, "config": cfg,
                    "champion": champion, "challenger_metrics": numeric}
            (local / "gate.json").write_text(json.dumps(_json_safe(gate), indent=2, sort_keys=True))
            self.publish_dir(local, out_uri)
        return make_record(
            "evaluate",
            uri=out_uri,
            model_name=self.model_name,
            model_uri=model_uri,
            data_uri=data_uri,
            spec_hash=spec_hash,
            task=task,
            n_rows=int(ds.n_rows),
            **{m: numeric.get(m) for m in _RECORD_METRICS},
            metrics_uri=storage.join(out_uri, "metrics.json"),
            charts_uri=storage.join(out_uri, "charts") if chart_files else None,
            gate_uri=storage.join(out_uri, "gate.json"),
            gate_passed=bool(result.passed),
            gate_reasons=[str(r) for r in result.reasons],
            champion_version=record.version if record is not None else None,
            champion_rescored=bool(champion and champion["rescored"]),
            **{f"champion_{m}": _number_or_none((champ or {}).get(m)) for m in _RECORD_METRICS},
            champion_metrics_uri=(storage.join(out_uri, "champion_metrics.json")
                                  if champion and champion["rescored"] else None),
        )

    # -- the champion on this run's rows ---------------------------------------------------------

    def rescore(self, context: Any, record: Any, ds: Any, spec_hash: str | None, task: str, threshold: float,
                tmp: str, info: dict[str, Any]) -> dict[str, Any] | None:
        """The champion's metrics on the rows of ``ds`` (this run's split), or None (with a warning
        and ``info["error"]``) when its bundle cannot be loaded or the rows cannot be rebuilt."""
        import numpy as np

        from airflow_ml_provider.ml.bundle import fetch_bundle, load_bundle
        from airflow_ml_provider.ml.metrics import compute_metrics
        from airflow_ml_provider.ml.trainers import load_predictor

        try:
            local = fetch_bundle(record.bundle_uri, Path(tmp) / "champion", expected_checksum=record.checksum)
            bundle = load_bundle(local, verify=True)
            predictor = load_predictor(bundle.framework, bundle.model_dir)
            if spec_hash and bundle.spec_hash == spec_hash:
                X = ds.X
                info["how"] = "the same feature table (the champion's fitted spec is this run's)"
            else:
                X = self._champion_features(context, bundle.fitted_spec_path, ds)
                info["how"] = (f"this run's raw {self.split} split transformed with the champion's own fitted spec "
                               f"{bundle.spec_hash}")
            scores = np.asarray(predictor.predict(X))
            metrics = compute_metrics(ds.y, scores, task=task, threshold=threshold)
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to the recorded metrics, loudly
            info["error"] = f"{type(exc).__name__}: {exc}"
            self.log.warning("Could not re-score champion version %s on this run's rows (%s): comparing with the "
                             "metrics recorded when it was published, on its own older test set.",
                             record.version, info["error"])
            return None
        metrics["task"] = task
        metrics["n_rows"] = int(ds.n_rows)
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log.info("Champion version %s re-scored on the same %d rows (%s): %s", record.version, ds.n_rows,
                      info["how"], ", ".join(f"{k}={v:.6g}" for k, v in sorted(numeric.items())))
        return metrics

    def _champion_features(self, context: Any, spec_path: Path, ds: Any) -> Any:
        """This run's raw split transformed with the champion's fitted spec; refuses other rows."""
        import numpy as np
        import pandas as pd
        import pyarrow.parquet as pq

        from airflow_ml_provider.ml.features import FittedSpec

        raw_uri = self.raw_data_uri
        if not raw_uri:
            sample = self.upstream(context, self.sample_task_id, required=False) or {}
            raw_uri = sample.get(self.split)
        if not raw_uri:
            raise ValueError(f"the champion was fitted with another feature spec and there is no raw {self.split} "
                             "split to transform (set raw_data_uri or sample_task_id)")
        with self.workdir("champion-raw") as tmp:
            path = self.fetch_file(raw_uri, tmp)
            df = pd.read_csv(path) if path.lower().endswith((".csv", ".csv.gz")) else pq.read_table(path).to_pandas()
        fitted = FittedSpec.load(spec_path)
        y = fitted.labels(df) if fitted.label is not None and fitted.label in df.columns else None
        if len(df) != ds.n_rows or (y is not None and not np.array_equal(y, np.asarray(ds.y, np.float32),
                                                                         equal_nan=True)):
            raise ValueError(f"the raw split {raw_uri} ({len(df)} rows) is not the scored table's {ds.n_rows} rows")
        return fitted.transform(df)

    def _charts(self, y: Any, scores: Any, task: str, importance: Mapping[str, float], out: Path) -> list[str]:
        """Draw the PNG charts into ``out``; returns their file names."""
        try:
            from airflow_ml_provider.ml import charts
        except ImportError:
            self.log.warning("airflow_ml_provider.ml.charts is not available: no charts")
            return []
        out.mkdir(parents=True, exist_ok=True)
        written = charts.write_charts(out, y, scores, importance=importance or None, task=task)
        names = [Path(p).name for p in written]
        self.log.info("Charts: %s", ", ".join(names))
        return names


def _variable(key: str) -> Any:
    from airflow.sdk import Variable

    try:
        return Variable.get(key, default=None)
    except Exception as exc:  # noqa: BLE001 - KeyError / AirflowRuntimeError when absent
        if type(exc).__name__ in ("KeyError", "AirflowRuntimeError", "VariableNotFound"):
            return None
        raise


def _number_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _json_safe(value: Any) -> Any:
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return _json_safe(value.item())
        except (TypeError, ValueError):
            return str(value)
    return value
