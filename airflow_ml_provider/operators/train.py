"""XGBoostTrainOperator: train an XGBoost model on the preprocessed feature tables.

Input: the feature tables of :class:`~airflow_ml_provider.operators.preprocess.PreprocessOperator`
(its XCom, from ``input_task_id``), or explicit ``train_uri`` / ``valid_uri``. The tables are read
zero-copy into a float32 matrix and handed to ``xgboost.train`` through
:mod:`airflow_ml_provider.ml.trainers.xgboost` -- the same calls a plain script makes, so training
through the operator costs about the same (see ``bench/bench_pipeline.py``).

Every iteration's eval metrics are logged (``[12/200] valid-auc=0.8123 valid-logloss=0.51``).
The model directory (``model.ubj`` + ``metadata.json``: params, library versions, feature names,
best iteration, eval history) is written to the output URI.

XCom (``return_value``)::

    {"uri": <model dir>, "framework": "xgboost", "task": "binary", "best_iteration": n,
     "final_metrics": {"valid-auc": ...}, "train_seconds": s, "preprocess": <preprocess XCom>}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow_ml_provider.operators.base import MLBaseOperator

__all__ = ["XGBoostTrainOperator"]


class XGBoostTrainOperator(MLBaseOperator):
    """Train XGBoost on feature tables.

    :param input_task_id: the preprocessing task whose XCom names the feature tables.
    :param train_uri: the training feature table, overriding ``input_task_id``.
    :param valid_uri: the validation feature table (early stopping and eval metrics).
    :param objective: e.g. ``binary:logistic`` (default), ``reg:squarederror``.
    :param eta: learning rate.
    :param max_depth: maximum tree depth.
    :param num_boost_round: boosting rounds.
    :param early_stopping_rounds: stop when the last eval metric has not improved for this many rounds.
    :param eval_metric: one metric or a list (``["logloss", "auc"]``); the last drives early stopping.
    :param tree_method: ``hist`` (default), ``approx``, ``exact``.
    :param device: ``cpu`` or ``cuda`` (``cuda:1``...), passed to XGBoost unchanged.
    :param nthread: threads (default: XGBoost's choice).
    :param seed: random seed.
    :param booster_params: any further booster params (``subsample``, ``colsample_bytree``, ``lambda``...).
    :param log_every: log every N rounds.
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the model directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "input_task_id", "train_uri", "valid_uri", "objective", "eta", "max_depth", "num_boost_round",
        "early_stopping_rounds", "eval_metric", "tree_method", "device", "nthread", "seed", "booster_params",
        "log_every", "storage_root", "output_uri",
    )
    template_fields_renderers = {"booster_params": "json"}
    ui_color = "#fce4e4"

    def __init__(
        self,
        *,
        input_task_id: str | None = "preprocess",
        train_uri: str | None = None,
        valid_uri: str | None = None,
        objective: str = "binary:logistic",
        eta: float | str = 0.1,
        max_depth: int | str = 6,
        num_boost_round: int | str = 100,
        early_stopping_rounds: int | str | None = None,
        eval_metric: str | Sequence[str] | None = None,
        tree_method: str = "hist",
        device: str | None = None,
        nthread: int | str | None = None,
        seed: int | str = 0,
        booster_params: Mapping[str, Any] | str | None = None,
        log_every: int | str = 1,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage_root = storage_root
        self.output_uri = output_uri
        self.input_task_id = input_task_id
        self.train_uri = train_uri
        self.valid_uri = valid_uri
        self.objective = objective
        self.eta = eta
        self.max_depth = max_depth
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.eval_metric = eval_metric
        self.tree_method = tree_method
        self.device = device
        self.nthread = nthread
        self.seed = seed
        self.booster_params = booster_params
        self.log_every = log_every

    def trainer_params(self) -> dict[str, Any]:
        """The flat params dict of :mod:`airflow_ml_provider.ml.trainers.xgboost`."""
        p: dict[str, Any] = {
            "objective": self.objective or "binary:logistic",
            "eta": self.as_float("eta", self.eta),
            "max_depth": self.as_int("max_depth", self.max_depth),
            "num_boost_round": self.as_int("num_boost_round", self.num_boost_round, allow_none=False),
            "early_stopping_rounds": self.as_int("early_stopping_rounds", self.early_stopping_rounds),
            "tree_method": self.tree_method or "hist",
            "seed": self.as_int("seed", self.seed, allow_none=False),
            "log_every": self.as_int("log_every", self.log_every, allow_none=False),
        }
        if p["early_stopping_rounds"] == 0:
            p["early_stopping_rounds"] = None
        metric = self.as_obj("eval_metric", self.eval_metric)
        if metric:
            p["eval_metric"] = metric
        if self.device:
            p["device"] = self.device
        nthread = self.as_int("nthread", self.nthread)
        if nthread:
            p["nthread"] = nthread
        extra = self.as_obj("booster_params", self.booster_params) or {}
        if not isinstance(extra, Mapping):
            raise ValueError(f"XGBoostTrainOperator({self.task_id}): booster_params must be a mapping, got {type(extra).__name__}")
        for k, v in extra.items():
            p[str(k)] = v
        return {k: v for k, v in p.items() if v is not None}

    def run(self, context: Any) -> dict[str, Any]:
        from airflow_ml_provider.ml.feature_table import read_feature_table
        from airflow_ml_provider.ml.trainers import get_trainer

        params = self.trainer_params()
        prep = None
        train_uri, valid_uri = self.train_uri, self.valid_uri
        if not train_uri:
            prep = self.upstream(context, self.input_task_id)
            train_uri, valid_uri = prep.get("train"), prep.get("valid")
        if not train_uri:
            raise ValueError(f"XGBoostTrainOperator({self.task_id}): no training table (set train_uri or input_task_id)")
        out_uri = self.resolved_output_uri(context)
        with self.workdir("train") as tmp:
            train = read_feature_table(self.fetch_file(train_uri, tmp))
            valid = read_feature_table(self.fetch_file(valid_uri, tmp)) if valid_uri else None
            if valid is not None and valid.n_rows == 0:
                valid = None
            if valid is None and params.get("early_stopping_rounds"):
                self.log.warning("No validation table: early stopping is off")
                params.pop("early_stopping_rounds")
            local = f"{tmp}/model"
            result = get_trainer("xgboost").train(train, valid, params, local, log=self.log.info)
            self.publish_dir(local, out_uri)
        final = {
            f"{data}-{metric}": values[-1]
            for data, metrics in (result.history or {}).items()
            for metric, values in metrics.items()
            if values
        }
        return {
            "uri": out_uri,
            "framework": result.framework,
            "task": result.task,
            "best_iteration": result.best_iteration,
            "final_metrics": final,
            "train_seconds": (result.extra or {}).get("train_seconds"),
            "params": {k: v for k, v in result.params.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
            "preprocess": prep if prep is not None else {"train": train_uri, "valid": valid_uri},
        }
