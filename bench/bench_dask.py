"""XGBoost on a Dask cluster (2 local workers) vs single-process training, same 2M rows (issue 12).

The same feature tables (2,000,000 x 30 training rows in row groups of 250,000; 200,000 validation
and test rows), the same params (hist, depth 6, 50 rounds), the same total threads (2):

* single process: ``get_trainer("xgboost")`` on the table read into memory, ``nthread=2``;
* Dask: ``train_on_dask(..., cluster="local:2")``: a LocalCluster of 2 worker processes x 1 thread,
  started and closed inside the timing (what ``XGBoostTrainOperator(cluster="local:2")`` costs);
* external memory: ``train_external_memory`` (ExtMemQuantileDMatrix over 250,000-row batches).

Printed: wall time (table read + matrix + training + save), test AUC, and the ratio to single
process. On one 2-core machine Dask does not win (it adds process start-up, partition transfer and
a per-round allreduce); it exists to use more machines than one and more memory than one has.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS, COLS, TEST_ROWS, ROUNDS, ROW_GROUP = 2_000_000, 30, 200_000, 50, 250_000
PARAMS = {"num_boost_round": ROUNDS, "max_depth": 6, "eta": 0.2, "eval_metric": ["logloss", "auc"]}


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, COLS)).astype(np.float32)
    logit = 1.2 * X[:, 0] + X[:, 1] * X[:, 2] - 0.7 * np.abs(X[:, 3]) + 0.4 * X[:, 4] * (X[:, 5] > 0)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return X, y


def main() -> None:
    from airflow_ml_provider.ml.feature_table import read_feature_table, write_feature_table
    from airflow_ml_provider.ml.metrics import compute_metrics
    from airflow_ml_provider.ml.trainers import get_trainer
    from airflow_ml_provider.ml.trainers.xgboost_dask import train_external_memory, train_on_dask

    quiet = lambda _msg: None  # noqa: E731
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {}
        for split, n in (("train", ROWS), ("valid", TEST_ROWS), ("test", TEST_ROWS)):
            X, y = _data(rng, n)
            paths[split] = write_feature_table(tmp / f"{split}.parquet", X, y, row_group_size=ROW_GROUP)
            del X, y
        test = read_feature_table(paths["test"])

        def auc(res) -> float:
            return float(compute_metrics(test.y, res.predictor.predict(test.X), task="binary")["auc"])

        rows = []
        t = time.perf_counter()
        res = get_trainer("xgboost").train(read_feature_table(paths["train"]), read_feature_table(paths["valid"]),
                                           {**PARAMS, "nthread": 2}, tmp / "single", log=quiet)
        rows.append(("single process (nthread=2)", time.perf_counter() - t, auc(res)))
        t = time.perf_counter()
        res = train_on_dask(paths["train"], paths["valid"], {**PARAMS, "nthread": 1}, tmp / "dask", "local:2",
                            threads_per_worker=1, memory_limit="6GiB", log=quiet)
        rows.append(("Dask, 2 local workers x 1 thread", time.perf_counter() - t, auc(res)))
        t = time.perf_counter()
        res = train_external_memory(paths["train"], paths["valid"], {**PARAMS, "nthread": 2}, tmp / "ext",
                                    tmp / "cache", batch_rows=ROW_GROUP, log=quiet)
        rows.append(("external memory (nthread=2)", time.perf_counter() - t, auc(res)))

    base = rows[0][1]
    print(f"XGBoost, {ROWS:,} x {COLS} training rows, {ROUNDS} rounds, depth 6, test AUC on {TEST_ROWS:,} rows "
          f"({os.cpu_count()} cores)")
    print(f"{'':36s} {'seconds':>9s} {'test AUC':>9s} {'time vs single':>15s}")
    for name, seconds, a in rows:
        print(f"{name:36s} {seconds:9.1f} {a:9.4f} {seconds / base:14.2f}x")
    print(f"AUC difference Dask - single: {rows[1][2] - rows[0][2]:+.4f}; "
          f"external memory - single: {rows[2][2] - rows[0][2]:+.4f}")


if __name__ == "__main__":
    main()
