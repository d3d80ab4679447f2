"""XGBoost beyond one process's memory: on a Dask cluster, or one node with external memory.

Two ways to train the ``xgboost`` framework on feature tables that do not fit (or should not be
loaded) in one process; both take the same flat params as :mod:`airflow_ml_provider.ml.trainers.xgboost`
and end in :func:`~airflow_ml_provider.ml.trainers.xgboost.save_trained`, so the model directory
(model file + ``metadata.json``), the bundle and the online service are exactly those of
single-process training.

* :func:`train_on_dask` -- ``xgboost.dask`` on a Dask cluster. ``cluster`` is a scheduler address
  (``tcp://scheduler:8786``: a team's own cluster), or ``"local:N"`` / an int ``N`` for a
  ``distributed.LocalCluster`` of N worker processes started and closed around the training. The
  feature tables are split into partitions along their Parquet row groups (a row group larger than
  ``partition_rows`` is split into row ranges); each partition is a ``dask.array`` chunk that a
  WORKER reads from the table's URI (so the workers must reach the storage: a shared disk, or
  ``webhdfs://`` with the connection in their environment, and have this package installed).
  ``DaskDMatrix`` (``dmatrix="dmatrix"``) or ``DaskQuantileDMatrix`` (``dmatrix="quantile"``)
  feeds ``xgboost.dask.train``.
* :func:`train_external_memory` -- one node, tables larger than RAM: an ``xgboost.DataIter`` over
  batches of ``batch_rows`` rows streamed from the Parquet file(s) feeds an
  ``ExtMemQuantileDMatrix`` (xgboost >= 3.0; its pages are cached on disk under ``cache_dir``), so
  memory holds one batch plus XGBoost's compressed histogram pages, not the table.

Batches and partitions are decoded with :func:`airflow_ml_provider.ml.feature_table.table_to_dataset`,
so every feature-table layout it reads (``fixed_size_binary`` or ``fixed_size_list<float32>``) works.

Heavy imports (xgboost, dask, distributed) happen inside the functions. Pure core: no Airflow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from airflow_ml_provider.ml.trainers.base import LogFn, TrainerError, TrainResult, prepare_out_dir

__all__ = [
    "Partition",
    "iter_feature_batches",
    "open_cluster",
    "parse_cluster",
    "read_partition",
    "table_partitions",
    "train_external_memory",
    "train_on_dask",
]

#: default rows per Dask partition / external-memory batch
DEFAULT_PARTITION_ROWS = 262_144


@dataclass(frozen=True)
class Partition:
    """Rows ``[start, stop)`` of row group ``row_group`` of the feature table at ``uri``."""

    uri: str
    row_group: int
    start: int
    stop: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start


def _open(uri: str):
    from airflow_ml_provider.ml import storage

    fs, path = storage.filesystem_for(uri)
    return fs.open(path, "rb")


def _columns(pf) -> list[str]:
    from airflow_ml_provider.ml.feature_table import FEATURES_COLUMN, LABEL_COLUMN

    return [c for c in (FEATURES_COLUMN, LABEL_COLUMN) if c in pf.schema_arrow.names]


def table_partitions(uris: str | Sequence[str], partition_rows: int = DEFAULT_PARTITION_ROWS,
                     min_partitions: int = 1, *, allow_empty: bool = False) -> tuple[list[Partition], list[str]]:
    """The partitions of one or more feature tables (same feature names) and those names.

    Reads only the Parquet footers. A row group is split into row ranges of at most
    ``partition_rows`` rows, and into at least ``min_partitions`` pieces overall (so N workers each
    get data even from a one-row-group table).
    """
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.feature_table import FeatureTableError, table_to_dataset

    uris = [uris] if isinstance(uris, str) else list(uris)
    groups: list[tuple[str, int, int]] = []
    names: list[str] | None = None
    for uri in uris:
        try:
            with _open(uri) as fh:
                pf = pq.ParquetFile(fh)
                # the footer's schema through the public reader: names, and a check it is a feature table
                empty = pf.schema_arrow.empty_table()
                these = table_to_dataset(empty, uri).feature_names
                groups += [(uri, i, pf.metadata.row_group(i).num_rows) for i in range(pf.metadata.num_row_groups)]
        except FileNotFoundError:
            raise FeatureTableError(f"{uri}: feature table not found") from None
        if names is not None and these != names:
            raise FeatureTableError(f"{uri}: feature names differ from those of {uris[0]}")
        names = these
    total = sum(n for _, _, n in groups)
    if total == 0 and allow_empty:
        return [], list(names or [])
    if total == 0:
        raise TrainerError(f"no rows in {', '.join(uris)}")
    size = max(1, min(int(partition_rows), -(-total // max(1, int(min_partitions)))))
    parts = [Partition(uri, rg, a, min(a + size, n)) for uri, rg, n in groups for a in range(0, n, size)]
    return parts, list(names or [])


def read_partition(part: Partition) -> tuple[np.ndarray, np.ndarray | None]:
    """``(X, y)`` of one partition: float32 ``(rows, d)`` and the label (None without one).

    Runs on a Dask worker: reads one row group of the table and keeps only the partition's rows
    (copied, so the row group's buffer is freed).
    """
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.feature_table import table_to_dataset

    with _open(part.uri) as fh:
        pf = pq.ParquetFile(fh)
        table = pf.read_row_group(part.row_group, columns=_columns(pf))
    ds = table_to_dataset(table, f"{part.uri} row group {part.row_group}")
    if part.start == 0 and part.stop == ds.n_rows:
        return ds.X, (None if ds.y is None else np.asarray(ds.y, dtype=np.float32))
    # a copy of the rows, so the row group's buffer is freed
    X = np.array(ds.X[part.start:part.stop], dtype=np.float32, order="C")
    y = None if ds.y is None else np.array(ds.y[part.start:part.stop], dtype=np.float32)
    return X, y


def iter_feature_batches(uris: str | Sequence[str], batch_rows: int = DEFAULT_PARTITION_ROWS) -> Iterator[Any]:
    """Stream :class:`~airflow_ml_provider.ml.feature_table.Dataset` batches of at most
    ``batch_rows`` rows from one or more feature tables (``ParquetFile.iter_batches``: a row
    group is decoded in pieces, never the whole table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.feature_table import table_to_dataset

    for uri in [uris] if isinstance(uris, str) else list(uris):
        with _open(uri) as fh:
            pf = pq.ParquetFile(fh, pre_buffer=False)
            for i, batch in enumerate(pf.iter_batches(batch_size=int(batch_rows), columns=_columns(pf))):
                table = pa.Table.from_batches([batch])
                yield table_to_dataset(table, f"{uri} batch {i}")


def _non_empty(uris: list[str], log: LogFn) -> list[str]:
    """The validation tables, or none when they hold no rows (as in-memory training treats them)."""
    if uris and not table_partitions(uris, allow_empty=True)[0]:
        log(f"the validation table(s) {', '.join(uris)} have no rows: no validation")
        return []
    return uris


# -- Dask ---------------------------------------------------------------------------------------


def parse_cluster(cluster: Any) -> tuple[str, Any]:
    """``("local", N)`` for an int / ``"local:N"`` / ``"N"``, ``("address", text)`` for a scheduler
    address; a clear error otherwise."""
    if isinstance(cluster, bool):
        raise TrainerError(f"cluster must be a Dask scheduler address or 'local:N', got {cluster!r}")
    if isinstance(cluster, int):
        n = cluster
    else:
        text = str(cluster or "").strip()
        if not text:
            raise TrainerError("cluster is empty: give a Dask scheduler address (tcp://host:8786) or 'local:N'")
        if text.lower() == "local":
            n = 2
        elif text.lower().startswith("local:") or text.isdigit():
            try:
                n = int(text.split(":", 1)[-1])
            except ValueError:
                raise TrainerError(f"cluster {text!r}: 'local:N' needs a whole number of workers") from None
        elif "://" in text or ":" in text:
            return "address", text
        else:
            raise TrainerError(f"cluster {text!r}: expected a Dask scheduler address (tcp://host:8786) or 'local:N'")
    if n < 1:
        raise TrainerError(f"cluster: a local cluster needs at least 1 worker, got {n}")
    return "local", n


class open_cluster:  # noqa: N801 - a context manager used like a function
    """``with open_cluster(cluster, ...) as client:`` -- a ``distributed.Client`` to a scheduler
    address, or to a LocalCluster of N worker processes that is closed (workers stopped) on exit."""

    def __init__(self, cluster: Any, *, threads_per_worker: int | None = None, memory_limit: Any = "auto",
                 log: LogFn = print) -> None:
        self.kind, self.target = parse_cluster(cluster)
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_limit
        self.log = log
        self._cluster = None
        self._client = None

    def __enter__(self):
        from distributed import Client, LocalCluster

        if self.kind == "local":
            threads = self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.target)
            self.log(f"starting a Dask LocalCluster: {self.target} worker processes x {threads} thread(s)")
            self._cluster = LocalCluster(n_workers=self.target, threads_per_worker=threads, processes=True,
                                         memory_limit=self.memory_limit, dashboard_address=":0")
            self._client = Client(self._cluster)
        else:
            self.log(f"connecting to the Dask scheduler at {self.target}")
            try:
                self._client = Client(self.target, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise TrainerError(f"cannot reach the Dask scheduler at {self.target}: {exc}") from None
        return self._client

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


def _dask_arrays(parts: list[Partition], n_features: int, has_label: bool):
    import dask
    import dask.array as da

    xs, ys = [], []
    for p in parts:
        d = dask.delayed(read_partition, pure=True)(p)
        xs.append(da.from_delayed(d[0], shape=(p.n_rows, n_features), dtype=np.float32))
        if has_label:
            ys.append(da.from_delayed(d[1], shape=(p.n_rows,), dtype=np.float32))
    return da.concatenate(xs, axis=0), (da.concatenate(ys, axis=0) if has_label else None)


def _has_label(uri: str) -> bool:
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.feature_table import LABEL_COLUMN

    with _open(uri) as fh:
        return LABEL_COLUMN in pq.ParquetFile(fh).schema_arrow.names


def _log_history(history: Mapping[str, Mapping[str, Sequence[float]]], every: int, total: int, log: LogFn) -> None:
    rounds = max((len(v) for m in history.values() for v in m.values()), default=0)
    for i in range(rounds):
        if (i + 1) % every == 0 or i + 1 == rounds:
            parts = [f"{d}-{m}={v[i]:.6g}" for d, ms in history.items() for m, v in ms.items() if len(v) > i]
            log(f"[{i + 1}/{total}] {' '.join(parts)}")


def train_on_dask(
    train_uris: str | Sequence[str],
    valid_uris: str | Sequence[str] | None,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    cluster: Any,
    *,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    threads_per_worker: int | None = None,
    memory_limit: Any = "auto",
    log: LogFn = print,
) -> TrainResult:
    """Train with ``xgboost.dask`` on ``cluster`` (see the module docstring) and save the model.

    :param train_uris: the training feature table(s): URIs the workers can read.
    :param valid_uris: validation table(s) (eval metrics, early stopping), or None.
    :param params: the flat xgboost params (``dmatrix="quantile"`` for ``DaskQuantileDMatrix``).
    :param cluster: ``tcp://host:8786`` (an existing scheduler), or ``"local:N"`` / ``N``.
    :param partition_rows: at most this many rows per Dask partition.
    :param threads_per_worker: threads of each LocalCluster worker (default: cores / N).
    :param memory_limit: memory limit of each LocalCluster worker (``"2GiB"``; default ``auto``).
    """
    import xgboost as xgb
    from xgboost import dask as dxgb

    from airflow_ml_provider.ml.trainers.xgboost import build_params, save_trained

    booster_params, opt = build_params(params or {})
    valid_uris = _non_empty([valid_uris] if isinstance(valid_uris, str) else list(valid_uris or []), log)
    if opt["early_stopping_rounds"] and not valid_uris:
        log("No validation table: early stopping is off")
        opt["early_stopping_rounds"] = None
    if not _has_label(train_uris if isinstance(train_uris, str) else list(train_uris)[0]):
        raise TrainerError("training data has no label column")
    out = prepare_out_dir(out_dir)
    with open_cluster(cluster, threads_per_worker=threads_per_worker, memory_limit=memory_limit, log=log) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        parts, names = table_partitions(train_uris, partition_rows, min_partitions=n_workers)
        X, y = _dask_arrays(parts, len(names), True)
        quantile = opt["dmatrix"] == "quantile"
        kw: dict[str, Any] = {"missing": opt["missing"]}
        dtrain = (dxgb.DaskQuantileDMatrix if quantile else dxgb.DaskDMatrix)(client, X, y, **kw)
        evals = [(dtrain, "train")] if opt["eval_train"] else []
        n_valid = 0
        if valid_uris:
            vparts, vnames = table_partitions(valid_uris, partition_rows, min_partitions=n_workers)
            if vnames != names:
                raise TrainerError(f"validation data has {len(vnames)} features, training data {len(names)}")
            vX, vy = _dask_arrays(vparts, len(names), True)
            n_valid = sum(p.n_rows for p in vparts)
            dvalid = (dxgb.DaskQuantileDMatrix(client, vX, vy, ref=dtrain, **kw) if quantile
                      else dxgb.DaskDMatrix(client, vX, vy, **kw))
            evals.append((dvalid, "valid"))
        n_train = sum(p.n_rows for p in parts)
        log(f"xgboost {xgb.__version__} on Dask ({n_workers} workers): {n_train} x {len(names)} train rows in "
            f"{len(parts)} partitions{f', {n_valid} valid rows' if n_valid else ''}; params {booster_params}, "
            f"rounds={opt['num_boost_round']}, early_stopping_rounds={opt['early_stopping_rounds']}")
        t0 = time.perf_counter()
        output = dxgb.train(client, booster_params, dtrain, num_boost_round=opt["num_boost_round"], evals=evals,
                            early_stopping_rounds=opt["early_stopping_rounds"], verbose_eval=False)
        seconds = time.perf_counter() - t0
    history = output["history"]
    _log_history(history, opt["log_every"], opt["num_boost_round"], log)
    return save_trained(output["booster"], history, booster_params, opt, names, out, seconds, log,
                        extra={"trained_on": "dask", "dask_workers": n_workers, "partitions": len(parts),
                               "train_rows": n_train})


# -- one node, external memory -----------------------------------------------------------------


def _data_iter(uris: list[str], batch_rows: int, cache_prefix: str):
    import xgboost as xgb

    class FeatureTableIter(xgb.DataIter):
        """Feeds XGBoost one streamed batch of the feature tables at a time."""

        def __init__(self) -> None:
            self._it: Iterator[Any] | None = None
            self.rows = 0
            super().__init__(cache_prefix=cache_prefix, release_data=True)

        def next(self, input_data) -> bool:
            if self._it is None:
                self._it = iter_feature_batches(uris, batch_rows)
                self.rows = 0
            ds = next(self._it, None)
            if ds is None:
                return False
            if ds.y is None:
                raise TrainerError(f"{uris[0]}: no label column")
            self.rows += ds.n_rows
            input_data(data=ds.X, label=np.asarray(ds.y, dtype=np.float32))
            return True

        def reset(self) -> None:
            self._it = None

    return FeatureTableIter()


def train_external_memory(
    train_uris: str | Sequence[str],
    valid_uris: str | Sequence[str] | None,
    params: Mapping[str, Any],
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    batch_rows: int = DEFAULT_PARTITION_ROWS,
    log: LogFn = print,
) -> TrainResult:
    """Train on one node with XGBoost's external memory (``ExtMemQuantileDMatrix`` over a
    ``DataIter`` of streamed batches) and save the model; ``tree_method`` must be ``hist``.

    :param cache_dir: where XGBoost writes its page cache (removed by the caller; needs about the
        size of the compressed histogram pages, a fraction of the table).
    :param batch_rows: rows per streamed batch.
    """
    import xgboost as xgb

    from airflow_ml_provider.ml.trainers.xgboost import _make_callback, build_params, save_trained

    booster_params, opt = build_params(params or {})
    if booster_params.get("tree_method", "hist") != "hist":
        raise TrainerError("external-memory training needs tree_method 'hist', "
                           f"got {booster_params.get('tree_method')!r}")
    if not hasattr(xgb, "ExtMemQuantileDMatrix"):  # pragma: no cover - xgboost < 3.0
        raise TrainerError(f"external-memory training needs xgboost >= 3.0 (installed: {xgb.__version__})")
    train_uris = [train_uris] if isinstance(train_uris, str) else list(train_uris)
    valid_uris = _non_empty([valid_uris] if isinstance(valid_uris, str) else list(valid_uris or []), log)
    if opt["early_stopping_rounds"] and not valid_uris:
        log("No validation table: early stopping is off")
        opt["early_stopping_rounds"] = None
    _, names = table_partitions(train_uris)  # footers only: feature names, and a check the tables are readable
    out = prepare_out_dir(out_dir)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {"missing": opt["missing"]}
    if opt["nthread"] is not None:
        kw["nthread"] = opt["nthread"]
    it = _data_iter(train_uris, batch_rows, str(cache / "train"))
    dtrain = xgb.ExtMemQuantileDMatrix(it, **kw)
    evals = [(dtrain, "train")] if opt["eval_train"] else []
    if valid_uris:
        _, vnames = table_partitions(valid_uris)
        if vnames != names:
            raise TrainerError(f"validation data has {len(vnames)} features, training data {len(names)}")
        evals.append((xgb.ExtMemQuantileDMatrix(_data_iter(valid_uris, batch_rows, str(cache / "valid")),
                                                ref=dtrain, **kw), "valid"))
    log(f"xgboost {xgb.__version__} external memory: {dtrain.num_row()} x {dtrain.num_col()} train rows in batches "
        f"of {batch_rows} (page cache {cache}); params {booster_params}, rounds={opt['num_boost_round']}, "
        f"early_stopping_rounds={opt['early_stopping_rounds']}")
    history: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    booster = xgb.train(booster_params, dtrain, num_boost_round=opt["num_boost_round"], evals=evals,
                        early_stopping_rounds=opt["early_stopping_rounds"], evals_result=history,
                        verbose_eval=False, callbacks=[_make_callback(log, opt["log_every"], opt["num_boost_round"])])
    seconds = time.perf_counter() - t0
    return save_trained(booster, history, booster_params, opt, names, out, seconds, log,
                        extra={"trained_on": "external_memory", "batch_rows": int(batch_rows),
                               "train_rows": int(dtrain.num_row())})
