"""Training operators: XGBoost, any feature-table framework, and Word2Vec item embeddings.

* :class:`TrainModelOperator` -- ``framework="xgboost" | "tensorflow" | "linear" | "gbdt"`` with a
  flat ``hyperparams`` dict (templated), trained through :mod:`airflow_ml_provider.ml.trainers`.
* :class:`XGBoostTrainOperator` -- the XGBoost specialisation of :class:`TrainModelOperator`, with
  the usual XGBoost parameters as typed arguments (and in the trigger form of the example DAG).
* :class:`Word2VecTrainOperator` -- item2vec: gensim Word2Vec over item sequences (e.g. each user's
  play history in time order) from a sample table; no feature spec, no label.

Input of the first two: the feature tables of
:class:`~airflow_ml_provider.operators.preprocess.PreprocessOperator` (its XCom, from
``input_task_id``), or explicit ``train_uri`` / ``valid_uri``. The tables are read zero-copy into a
float32 matrix and handed to the framework's trainer -- for XGBoost the same ``xgboost.train``
calls a plain script makes, so training through the operator costs about the same (see
``bench/bench_pipeline.py``).

Beyond one process (XGBoost only): ``XGBoostTrainOperator(cluster="tcp://scheduler:8786")`` (or
``"local:N"``) trains with ``xgboost.dask`` on a Dask cluster whose workers read the feature tables
partition by partition; ``external_memory=True`` trains on this node with XGBoost's external memory
(tables larger than RAM). Same model directory either way (docs/trainers.md).

Progress is logged per iteration / epoch (``[12/200] valid-auc=0.8123 valid-logloss=0.51``). The
model directory (the framework's model files + ``metadata.json``: params, library versions,
feature names, best iteration, eval history) is written atomically to the output URI.

XCom (``return_value``) of :class:`TrainModelOperator` and :class:`XGBoostTrainOperator` -- the
flat ``train`` record of :mod:`airflow_ml_provider.ml.records`, what
:class:`~airflow_ml_provider.operators.evaluate.EvaluateOperator` and
:class:`~airflow_ml_provider.operators.publish.PublishModelOperator` read, whatever the framework::

    {"uri": <model dir>, "framework": "xgboost", "task": "binary", "best_iteration": n,
     "final_metric": "valid-auc", "final_metric_value": 0.74, "train_seconds": s,
     "spec_hash": <content hash of the fitted spec the features came from, or null>,
     "train_uri": <feature table>, "valid_uri": <feature table or null>}

``final_metric`` is the metric that drives early stopping (the last eval metric, on the validation
table when there is one) and ``final_metric_value`` its last logged value; the whole history, the
effective params and the library versions are in the model directory's ``metadata.json``.
:class:`Word2VecTrainOperator` returns the ``word2vec`` record (see its docstring).

Heavy libraries (xgboost, tensorflow, scikit-learn, gensim, pandas) are imported inside
``execute`` only: importing this module is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_ml_provider.operators.base import MLBaseOperator

__all__ = ["FEATURE_TABLE_FRAMEWORKS", "TrainModelOperator", "Word2VecTrainOperator", "XGBoostTrainOperator"]

#: the frameworks TrainModelOperator trains on feature tables (word2vec has its own operator)
FEATURE_TABLE_FRAMEWORKS = ("xgboost", "tensorflow", "linear", "gbdt")
_ALIASES = {"xgb": "xgboost", "tf": "tensorflow", "keras": "tensorflow", "lr": "linear"}


def _final_metric(history: Mapping[str, Mapping[str, Sequence[float]]] | None) -> tuple[str | None, Any]:
    """The metric that drives early stopping and its last value: the last metric of the validation
    history (else of the last data set), as ``("valid-auc", 0.74)``; ``(None, None)`` without history."""
    history = history or {}
    data = "valid" if history.get("valid") else next(reversed([d for d, m in history.items() if m]), None)
    if data is None:
        return None, None
    name, values = list(history[data].items())[-1]
    return f"{data}-{name}", (values[-1] if values else None)


class TrainModelOperator(MLBaseOperator):
    """Train a model of any feature-table framework on the preprocessed feature tables.

    ``hyperparams`` is the flat params dict of the framework's trainer (docs/trainers.md lists
    them); values may be templates (``{"epochs": "{{ params.epochs }}"}``) or a JSON string. The
    tensorflow, linear and gbdt trainers refuse an unknown key by name. ``early_stopping_rounds``
    of 0 disables early stopping; without a validation table it is turned off with a warning.

    :param framework: ``xgboost``, ``tensorflow``, ``linear`` or ``gbdt`` (aliases ``xgb``, ``tf``,
        ``keras``, ``lr``). For Word2Vec use :class:`Word2VecTrainOperator`.
    :param hyperparams: the trainer's params, e.g. ``{"hidden_units": [64, 32], "epochs": 5}``.
    :param input_task_id: the preprocessing task whose XCom names the feature tables.
    :param train_uri: the training feature table, overriding ``input_task_id``.
    :param valid_uri: the validation feature table (early stopping and eval metrics).
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the model directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "framework", "hyperparams", "input_task_id", "train_uri", "valid_uri", "storage_root", "output_uri",
    )
    template_fields_renderers = {"hyperparams": "json"}
    ui_color = "#fce4e4"
    record_kind = "train"  # the keys of its XCom: airflow_ml_provider.ml.records.RECORD_KEYS

    def __init__(
        self,
        *,
        framework: str,
        hyperparams: Mapping[str, Any] | str | None = None,
        input_task_id: str | None = "preprocess",
        train_uri: str | None = None,
        valid_uri: str | None = None,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(framework, str) and "{{" not in framework:
            self._check_framework(framework)  # a typo fails when the DAG is parsed, not at run time
        self.framework = framework
        self.hyperparams = hyperparams
        self.input_task_id = input_task_id
        self.train_uri = train_uri
        self.valid_uri = valid_uri
        self.storage_root = storage_root
        self.output_uri = output_uri

    # -- what subclasses specialise ------------------------------------------------------------

    def _check_framework(self, value: Any) -> str:
        key = str(value or "").strip().lower()
        key = _ALIASES.get(key, key)
        if key in ("word2vec", "w2v"):
            raise ValueError(
                f"{type(self).__name__}({self.task_id}): word2vec learns item embeddings from sequences, "
                "not from feature tables: use Word2VecTrainOperator"
            )
        if key not in FEATURE_TABLE_FRAMEWORKS:
            raise ValueError(
                f"{type(self).__name__}({self.task_id}): unknown framework {value!r}; "
                f"use one of {', '.join(FEATURE_TABLE_FRAMEWORKS)}"
            )
        return key

    def framework_name(self) -> str:
        """The (rendered) framework, validated."""
        return self._check_framework(self.framework)

    def trainer_params(self) -> dict[str, Any]:
        """The flat params dict handed to ``get_trainer(framework).train``."""
        params = self.as_obj("hyperparams", self.hyperparams) or {}
        if not isinstance(params, Mapping):
            raise ValueError(
                f"{type(self).__name__}({self.task_id}): hyperparams must be a mapping, got {type(params).__name__}"
            )
        out = {str(k): v for k, v in params.items()}
        esr = out.get("early_stopping_rounds")
        if esr is not None and str(esr).strip() in ("0", "0.0", "", "None", "null"):
            out.pop("early_stopping_rounds")  # 0 disables early stopping, as in the XGBoost operator
        return out

    def train_tables(self, framework: str, params: dict[str, Any], train_uri: str, valid_uri: str | None,
                     tmp: str, local: str) -> Any:
        """Train without loading the tables into this process (Dask, external memory): the
        ``TrainResult``, or None to train in memory (the default)."""
        return None

    # -- the shared training run ---------------------------------------------------------------

    def run(self, context: Any) -> dict[str, Any]:
        from airflow_ml_provider.ml.feature_table import read_feature_table
        from airflow_ml_provider.ml.records import make_record
        from airflow_ml_provider.ml.trainers import get_trainer

        framework = self.framework_name()
        params = self.trainer_params()
        name = type(self).__name__
        prep = None
        train_uri, valid_uri = self.train_uri, self.valid_uri
        if not train_uri:
            prep = self.upstream(context, self.input_task_id)
            train_uri, valid_uri = prep.get("train"), prep.get("valid")
        if not train_uri:
            raise ValueError(f"{name}({self.task_id}): no training table (set train_uri or input_task_id)")
        out_uri = self.resolved_output_uri(context)
        self.log.info("Training %s on %s (validation: %s)", framework, train_uri, valid_uri or "none")
        with self.workdir("train") as tmp:
            local = f"{tmp}/model"
            result = self.train_tables(framework, params, train_uri, valid_uri, tmp, local)
            if result is None:
                train = read_feature_table(self.fetch_file(train_uri, tmp))
                valid = read_feature_table(self.fetch_file(valid_uri, tmp)) if valid_uri else None
                if valid is not None and valid.n_rows == 0:
                    valid = None
                if valid is None and params.get("early_stopping_rounds"):
                    self.log.warning("No validation table: early stopping is off")
                    params.pop("early_stopping_rounds")
                result = get_trainer(framework).train(train, valid, params, local, log=self.log.info)
            self.publish_dir(local, out_uri)
        metric, value = _final_metric(result.history)
        return make_record(
            "train",
            uri=out_uri,
            framework=result.framework,
            task=result.task,
            best_iteration=result.best_iteration,
            final_metric=metric,
            final_metric_value=value,
            train_seconds=(result.extra or {}).get("train_seconds"),
            spec_hash=(prep or {}).get("spec_hash"),
            train_uri=train_uri,
            valid_uri=valid_uri,
        )


class XGBoostTrainOperator(TrainModelOperator):
    """Train XGBoost on feature tables (``TrainModelOperator`` with typed XGBoost arguments).

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
    :param cluster: train with ``xgboost.dask`` on a Dask cluster: a scheduler address
        (``tcp://scheduler:8786``; the workers must read the feature tables' URIs and have this package
        installed), or ``"local:N"`` / ``N`` for a LocalCluster of N worker processes started and closed
        by the task. Default None: one process (docs/trainers.md, "Beyond one process").
    :param cluster_options: for a local cluster: ``{"threads_per_worker": 1, "memory_limit": "4GiB"}``.
    :param external_memory: train on this node with XGBoost's external memory (``ExtMemQuantileDMatrix``
        over batches streamed from the tables): for tables larger than RAM. ``tree_method`` must be ``hist``.
    :param partition_rows: rows per Dask partition / external-memory batch (default 262144).
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the model directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "input_task_id", "train_uri", "valid_uri", "objective", "eta", "max_depth", "num_boost_round",
        "early_stopping_rounds", "eval_metric", "tree_method", "device", "nthread", "seed", "booster_params",
        "log_every", "cluster", "cluster_options", "external_memory", "partition_rows", "storage_root", "output_uri",
    )
    template_fields_renderers = {"booster_params": "json", "cluster_options": "json"}

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
        cluster: str | int | None = None,
        cluster_options: Mapping[str, Any] | str | None = None,
        external_memory: bool | str = False,
        partition_rows: int | str | None = None,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Straight to BaseOperator.__init__, not TrainModelOperator.__init__: every level of operator
        # __init__ makes Airflow deep-copy the DAG's params at parse time (see operators/base.py).
        super(TrainModelOperator, self).__init__(**kwargs)
        self.framework = "xgboost"
        self.hyperparams = None
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
        self.cluster = cluster
        self.cluster_options = cluster_options
        self.external_memory = external_memory
        self.partition_rows = partition_rows

    def framework_name(self) -> str:
        return "xgboost"

    def train_tables(self, framework: str, params: dict[str, Any], train_uri: str, valid_uri: str | None,
                     tmp: str, local: str) -> Any:
        """Dask (``cluster``) or external-memory (``external_memory``) training; None: in memory."""
        cluster = self.cluster if self.cluster not in (None, "", "None", "none", 0, "0") else None
        ext = str(self.external_memory).strip().lower() in ("1", "true", "yes", "on")
        if cluster is None and not ext:
            return None
        if cluster is not None and ext:
            raise ValueError(f"XGBoostTrainOperator({self.task_id}): cluster and external_memory exclude each other")
        from airflow_ml_provider.ml.trainers import xgboost_dask

        rows = self.as_int("partition_rows", self.partition_rows) or xgboost_dask.DEFAULT_PARTITION_ROWS
        if cluster is not None:
            opts = self.as_obj("cluster_options", self.cluster_options) or {}
            if not isinstance(opts, Mapping) or set(opts) - {"threads_per_worker", "memory_limit"}:
                raise ValueError(f"XGBoostTrainOperator({self.task_id}): cluster_options takes threads_per_worker "
                                 f"and memory_limit, got {opts!r}")
            # the workers read the tables themselves: URIs, not this task's local copies
            return xgboost_dask.train_on_dask(
                train_uri, valid_uri, params, local, cluster, partition_rows=rows,
                threads_per_worker=opts.get("threads_per_worker"), memory_limit=opts.get("memory_limit", "auto"),
                log=self.log.info)
        return xgboost_dask.train_external_memory(
            self.fetch_file(train_uri, tmp), self.fetch_file(valid_uri, tmp) if valid_uri else None, params,
            local, f"{tmp}/xgb-cache", batch_rows=rows, log=self.log.info)

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


class Word2VecTrainOperator(MLBaseOperator):
    """Train item embeddings (item2vec) with gensim Word2Vec on item sequences.

    The sequences come from a sample table (Parquet or CSV, e.g. a
    :class:`~airflow_ml_provider.operators.sample.SampleOperator` split): either a list column
    (``sequence_column``), or one event per row grouped by ``group_column`` (e.g. ``user_id``)
    into sequences of ``item_column`` (e.g. ``item_id``) ordered by ``order_column`` (e.g.
    ``event_ts``). With a validation table, the next-item hit rate@``eval_k`` of the embeddings is
    measured on its sequences, next to the most-popular-items baseline, logged, written to
    ``evaluation.json`` in the model directory and pushed in the XCom.

    XCom: the flat ``word2vec`` record of :mod:`airflow_ml_provider.ml.records`: ``uri`` (the model
    directory), ``framework`` (``word2vec``), ``task`` (``embedding``), ``train_seconds``,
    ``train_uri``, ``valid_uri``, ``vocabulary_size``, ``sentences``, ``eval_k``, ``hit_rate``,
    ``popularity_hit_rate`` (null without evaluation) and ``evaluation_uri`` (``evaluation.json``, or
    null). The effective params are in the model directory's ``metadata.json``.

    :param input_task_id: the sampling task whose XCom names the tables (default ``sample``).
    :param split: which table of that XCom to train on (default ``train``).
    :param valid_split: which table to evaluate on (default ``valid``; None: no evaluation).
    :param train_uri: the training table, overriding ``input_task_id``.
    :param valid_uri: the evaluation table, overriding ``valid_split``.
    :param sequence_column: a list column holding one sequence of item ids per row.
    :param group_column: the column whose values make one sequence each (e.g. ``user_id``).
    :param item_column: the item id column (e.g. ``item_id``).
    :param order_column: the column ordering events inside a sequence (e.g. ``event_ts``).
    :param min_sequence_length: sequences shorter than this are dropped (default 2).
    :param vector_size: embedding dimension (default 64).
    :param window: context window (default 5).
    :param min_count: drop items seen fewer times (default 1).
    :param epochs: training epochs (default 5).
    :param sg: 1 = skip-gram (default), 0 = CBOW.
    :param negative: negative samples (default 5).
    :param seed: random seed (default 0).
    :param workers: threads (default 1, which makes a seeded run reproducible).
    :param w2v_params: further trainer params (``alpha``, ``sample``, ``max_vocab_size``).
    :param eval_k: the k of the hit rate@k (default 10).
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the model directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "input_task_id", "split", "valid_split", "train_uri", "valid_uri", "sequence_column", "group_column",
        "item_column", "order_column", "min_sequence_length", "vector_size", "window", "min_count", "epochs",
        "sg", "negative", "seed", "workers", "w2v_params", "eval_k", "storage_root", "output_uri",
    )
    template_fields_renderers = {"w2v_params": "json"}
    ui_color = "#fcefe4"
    record_kind = "word2vec"  # the keys of its XCom: airflow_ml_provider.ml.records.RECORD_KEYS

    def __init__(
        self,
        *,
        input_task_id: str | None = "sample",
        split: str = "train",
        valid_split: str | None = "valid",
        train_uri: str | None = None,
        valid_uri: str | None = None,
        sequence_column: str | None = None,
        group_column: str | None = None,
        item_column: str | None = None,
        order_column: str | None = None,
        min_sequence_length: int | str = 2,
        vector_size: int | str = 64,
        window: int | str = 5,
        min_count: int | str = 1,
        epochs: int | str = 5,
        sg: int | str = 1,
        negative: int | str = 5,
        seed: int | str = 0,
        workers: int | str = 1,
        w2v_params: Mapping[str, Any] | str | None = None,
        eval_k: int | str = 10,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not sequence_column and not (group_column and item_column):
            raise ValueError(
                f"Word2VecTrainOperator({self.task_id}): set sequence_column, or group_column and item_column"
            )
        self.input_task_id = input_task_id
        self.split = split
        self.valid_split = valid_split
        self.train_uri = train_uri
        self.valid_uri = valid_uri
        self.sequence_column = sequence_column
        self.group_column = group_column
        self.item_column = item_column
        self.order_column = order_column
        self.min_sequence_length = min_sequence_length
        self.vector_size = vector_size
        self.window = window
        self.min_count = min_count
        self.epochs = epochs
        self.sg = sg
        self.negative = negative
        self.seed = seed
        self.workers = workers
        self.w2v_params = w2v_params
        self.eval_k = eval_k
        self.storage_root = storage_root
        self.output_uri = output_uri

    def trainer_params(self) -> dict[str, Any]:
        """The flat params dict of :mod:`airflow_ml_provider.ml.trainers.word2vec`."""
        p: dict[str, Any] = {"sentences_column": "sentences"}
        for key in ("vector_size", "window", "min_count", "epochs", "sg", "negative", "seed", "workers"):
            p[key] = self.as_int(key, getattr(self, key), allow_none=False)
        extra = self.as_obj("w2v_params", self.w2v_params) or {}
        if not isinstance(extra, Mapping):
            raise ValueError(
                f"Word2VecTrainOperator({self.task_id}): w2v_params must be a mapping, got {type(extra).__name__}"
            )
        clash = sorted(set(extra) & set(p))
        if clash:
            raise ValueError(
                f"Word2VecTrainOperator({self.task_id}): w2v_params repeats {clash}; set them as arguments"
            )
        p.update({str(k): v for k, v in extra.items()})
        return p

    def _sequences(self, path: str, uri: str) -> list[list[str]]:
        import pyarrow.parquet as pq

        from airflow_ml_provider.ml.item2vec import SequenceError, build_sequences

        cols = [c for c in (self.sequence_column, self.group_column, self.item_column, self.order_column) if c]
        if path.lower().endswith((".csv", ".csv.gz")):
            import pandas as pd

            table: Any = pd.read_csv(path)
        else:
            names = pq.read_schema(path).names
            # only the needed columns; all of them when one is missing, so the error lists them
            table = pq.read_table(path, columns=cols if all(c in names for c in cols) else None)
        try:
            return build_sequences(
                table, sequence_column=self.sequence_column or None, group_column=self.group_column or None,
                item_column=self.item_column or None, order_column=self.order_column or None,
                min_length=self.as_int("min_sequence_length", self.min_sequence_length, allow_none=False),
                where=f"Word2VecTrainOperator({self.task_id}): {uri}",
            )
        except SequenceError as exc:
            raise ValueError(str(exc)) from None

    def run(self, context: Any) -> dict[str, Any]:
        import logging

        logging.getLogger("gensim").setLevel(logging.WARNING)
        from airflow_ml_provider.ml import storage
        from airflow_ml_provider.ml.feature_table import Dataset
        from airflow_ml_provider.ml.item2vec import next_item_hit_rate
        from airflow_ml_provider.ml.records import make_record
        from airflow_ml_provider.ml.trainers import get_trainer

        params = self.trainer_params()
        eval_k = self.as_int("eval_k", self.eval_k, allow_none=False)
        train_uri, valid_uri = self.train_uri, self.valid_uri
        if not train_uri:
            upstream = self.upstream(context, self.input_task_id)
            train_uri = upstream.get(self.split or "train")
            if not valid_uri and self.valid_split:
                valid_uri = upstream.get(self.valid_split)
        if not train_uri:
            raise ValueError(
                f"Word2VecTrainOperator({self.task_id}): no {self.split!r} table (set train_uri or input_task_id)"
            )
        out_uri = self.resolved_output_uri(context)
        with self.workdir("word2vec") as tmp:
            sentences = self._sequences(self.fetch_file(train_uri, tmp), train_uri)
            if not sentences:
                raise ValueError(
                    f"Word2VecTrainOperator({self.task_id}): {train_uri} holds no sequence of at least "
                    f"{self.min_sequence_length} items"
                )
            n_events = sum(len(s) for s in sentences)
            self.log.info("%d sequences (%d items in all, mean length %.1f) from %s", len(sentences), n_events,
                          n_events / len(sentences), train_uri)
            local = f"{tmp}/model"
            result = get_trainer("word2vec").train(
                Dataset.from_sentences(sentences), None, params, local, log=self.log.info
            )
            evaluation: dict[str, Any] | None = None
            if valid_uri:
                held_out = self._sequences(self.fetch_file(valid_uri, tmp), valid_uri)
                evaluation = next_item_hit_rate(result.predictor, held_out, k=eval_k)
                evaluation["data_uri"] = valid_uri
                if evaluation["hit_rate"] is None:
                    self.log.warning("No next-item pair of %s is in the vocabulary: no evaluation", valid_uri)
                else:
                    self.log.info(
                        "Next-item hit rate@%d on %s: %.4f (most-popular baseline %.4f) over %d pairs "
                        "(%.0f%% of pairs in the vocabulary)", eval_k, valid_uri, evaluation["hit_rate"],
                        evaluation["popularity_hit_rate"], evaluation["pairs"], 100 * (evaluation["coverage"] or 0),
                    )
                with open(f"{local}/evaluation.json", "w") as fh:
                    json.dump(evaluation, fh, indent=2, sort_keys=True)
            self.publish_dir(local, out_uri)
        scored = evaluation is not None and evaluation["hit_rate"] is not None
        return make_record(
            "word2vec",
            uri=out_uri,
            framework=result.framework,
            task=result.task,
            train_seconds=(result.extra or {}).get("train_seconds"),
            train_uri=train_uri,
            valid_uri=valid_uri,
            vocabulary_size=len(result.predictor),
            sentences=len(sentences),
            eval_k=eval_k,
            hit_rate=evaluation["hit_rate"] if scored else None,
            popularity_hit_rate=evaluation["popularity_hit_rate"] if scored else None,
            evaluation_uri=storage.join(out_uri, "evaluation.json") if evaluation is not None else None,
        )
