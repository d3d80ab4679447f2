"""The ML pipeline: DAG parse time, training overhead of the operator, memory of sampling.

Each figure is printed beside a baseline measured in the same run, with the ratio:

1. parse time of ``dags/xgboost_recommendation.py`` in Airflow's ``DagBag`` vs a DAG of the same
   shape (five tasks, the same Params) made of ``BashOperator``s -- each parsed in a fresh
   interpreter with Airflow already imported (the provider's own imports are counted), median of
   several runs (target ratio <= 1.2);
2. XGBoost training wall time through ``XGBoostTrainOperator.execute()`` (in-process, minimal
   context, so Airflow start-up is excluded) vs a plain script doing ``pyarrow`` read ->
   ``xgboost.DMatrix`` -> ``xgboost.train`` -> ``save_model`` on the same Parquet, same threads,
   same rounds; alternated, median of 3 (target ratio <= 1.10);
3. peak memory (``VmHWM`` of a fresh subprocess, i.e. its peak RSS) of sampling 2,000,000 rows from SQLite to
   Parquet with the sampling core vs ``pandas.read_sql`` + ``to_parquet`` (target < 500 MB).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "dags" / "xgboost_recommendation.py"
PY = sys.executable

SAMPLE_ROWS = int(os.environ.get("BENCH_PIPELINE_SAMPLE_ROWS", "2000000"))
TRAIN_ROWS = int(os.environ.get("BENCH_PIPELINE_TRAIN_ROWS", "100000"))
ROUNDS = 60
THREADS = 2

BASH_DAG = '''
from datetime import datetime
from airflow.sdk import DAG, Param
from airflow.providers.standard.operators.bash import BashOperator

with DAG(
    dag_id="bash_same_shape",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "sample_ratio": Param(1.0, type="number", minimum=0.0001, maximum=1.0),
        "seed": Param(42, type="integer"),
        "split_by": Param("group", type="string", enum=["group", "random", "time"]),
        "min_event_ts": Param(0, type="integer"),
        "eta": Param(0.1, type="number"),
        "max_depth": Param(6, type="integer"),
        "num_boost_round": Param(100, type="integer"),
        "early_stopping_rounds": Param(10, type="integer"),
        "tree_method": Param("hist", type="string", enum=["hist", "approx", "exact"]),
        "device": Param("cpu", type="string", enum=["cpu", "cuda"]),
        "nthread": Param(2, type="integer"),
        "disabled_tasks": Param([], type="array", items={"type": "string"}),
    },
) as dag:
    sample = BashOperator(task_id="sample", bash_command="python sample.py {{ params.sample_ratio }}")
    preprocess = BashOperator(task_id="preprocess", bash_command="python preprocess.py")
    train = BashOperator(task_id="train", bash_command="python train.py {{ params.eta }}")
    evaluate = BashOperator(task_id="evaluate", bash_command="python evaluate.py")
    publish = BashOperator(task_id="publish", bash_command="python publish.py")
    sample >> preprocess >> train >> evaluate >> publish
'''

_PARSE_PROBE = r"""
import sys, time, json
import airflow  # Airflow start-up is not part of the DAG's parse time
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t1 = time.perf_counter()
assert not bag.import_errors, bag.import_errors
assert len(bag.dags) == 1, bag.dags
bag2 = DagBag(dag_folder=sys.argv[1])  # warm: modules already imported
t2 = time.perf_counter()
print(json.dumps({"cold": t1 - t0, "warm": t2 - t1, "tasks": len(next(iter(bag.dags.values())).tasks)}))
"""


def _parse_times(path: Path, runs: int) -> dict[str, float]:
    colds, warms = [], []
    for _ in range(runs):
        out = subprocess.run([PY, "-c", _PARSE_PROBE, str(path)], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        data = json.loads(out.stdout.strip().splitlines()[-1])
        assert data["tasks"] == 5
        colds.append(data["cold"])
        warms.append(data["warm"])
    return {"cold": statistics.median(colds), "warm": statistics.median(warms)}


def bench_parse(runs: int = 7) -> None:
    # Byte-compile our package and the DAG as `pip install` (and a DAG processor) would: Airflow's own
    # modules have their .pyc, and with PYTHONDONTWRITEBYTECODE set (as on this machine) a stale .pyc
    # of ours would be recompiled in every run and counted as parse time.
    import compileall

    compileall.compile_dir(str(REPO / "airflow_ml_provider"), quiet=1)
    compileall.compile_dir(str(DAG_FILE.parent), quiet=1, maxlevels=0)
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        bash = Path(tmp) / "bash_same_shape.py"
        bash.write_text(BASH_DAG)
        ours = _parse_times(DAG_FILE, runs)
        base = _parse_times(bash, runs)
    print(f"DAG parse (DagBag, fresh interpreter, median of {runs}):")
    print(f"  first parse : xgboost_recommendation {ours['cold'] * 1000:7.1f} ms | BashOperator DAG "
          f"{base['cold'] * 1000:7.1f} ms | ratio {ours['cold'] / base['cold']:.2f} (target <= 1.2)")
    print(f"  re-parse    : xgboost_recommendation {ours['warm'] * 1000:7.1f} ms | BashOperator DAG "
          f"{base['warm'] * 1000:7.1f} ms | ratio {ours['warm'] / base['warm']:.2f}")


def _make_training_data(tmp: Path) -> tuple[str, str]:
    import numpy as np

    from airflow_ml_provider.ml.feature_table import write_feature_table

    rng = np.random.default_rng(0)
    d = 30
    w = rng.normal(size=d)
    paths = []
    for name, n in (("train", TRAIN_ROWS), ("valid", TRAIN_ROWS // 5)):
        X = rng.normal(size=(n, d)).astype(np.float32)
        X[rng.random(X.shape) < 0.02] = np.nan
        logit = np.nan_to_num(X) @ w * 0.3 + np.sin(np.nan_to_num(X[:, 0]) * 2)
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        path = tmp / f"{name}.parquet"
        write_feature_table(path, X, y=y, feature_names=[f"f{i}" for i in range(d)])
        paths.append(str(path))
    return paths[0], paths[1]


def _plain_script(train_path: str, valid_path: str, out_dir: str) -> float:
    """What an engineer's plain script does on the same Parquet."""
    import numpy as np
    import pyarrow.parquet as pq
    import xgboost as xgb

    t0 = time.perf_counter()

    def load(path):
        table = pq.read_table(path)
        feats = table.column("features").combine_chunks()  # fixed_size_list<float32>[d]: row-major float32
        X = feats.flatten().to_numpy().reshape(-1, feats.type.list_size)
        y = table.column("label").to_numpy()
        return X, y

    X, y = load(train_path)
    Xv, yv = load(valid_path)
    dtrain = xgb.DMatrix(X, label=y, nthread=THREADS)
    dvalid = xgb.DMatrix(Xv, label=yv, nthread=THREADS)
    history: dict = {}
    booster = xgb.train(
        {"objective": "binary:logistic", "eta": 0.1, "max_depth": 6, "tree_method": "hist", "nthread": THREADS,
         "seed": 0, "eval_metric": ["logloss", "auc"]},
        dtrain, num_boost_round=ROUNDS, evals=[(dvalid, "valid")], evals_result=history, verbose_eval=False,
    )
    os.makedirs(out_dir, exist_ok=True)
    booster.save_model(os.path.join(out_dir, "model.ubj"))
    assert np.isfinite(history["valid"]["auc"][-1])
    return time.perf_counter() - t0


def _operator_run(train_path: str, valid_path: str, storage: str, i: int) -> float:
    from airflow_ml_provider.operators.train import XGBoostTrainOperator

    class _TI:
        def xcom_pull(self, task_ids):
            return None

    op = XGBoostTrainOperator(
        task_id="train", train_uri=train_path, valid_uri=valid_path, objective="binary:logistic", eta=0.1,
        max_depth=6, num_boost_round=ROUNDS, eval_metric=["logloss", "auc"], tree_method="hist", nthread=THREADS,
        storage_root=storage, log_every=1,
    )
    context = {"params": {}, "run_id": f"bench_{i}", "ti": _TI()}
    t0 = time.perf_counter()
    out = op.execute(context)
    elapsed = time.perf_counter() - t0
    assert out["final_metric"] == "valid-auc" and out["final_metric_value"] > 0.5
    return elapsed


def bench_training(runs: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        t = Path(tmp)
        train_path, valid_path = _make_training_data(t)
        # warm-up (imports, thread pools) for both paths
        _plain_script(train_path, valid_path, str(t / "warm"))
        _operator_run(train_path, valid_path, str(t / "storage"), -1)
        ours, base = [], []
        for i in range(runs):
            base.append(_plain_script(train_path, valid_path, str(t / f"plain{i}")))
            ours.append(_operator_run(train_path, valid_path, str(t / "storage"), i))
    o, b = statistics.median(ours), statistics.median(base)
    print(f"XGBoost training, {TRAIN_ROWS} x 30 rows, {ROUNDS} rounds, {THREADS} threads (median of {runs}):")
    print(f"  XGBoostTrainOperator.execute {o:6.2f} s | plain xgboost.train script {b:6.2f} s | "
          f"ratio {o / b:.2f} (target <= 1.10)")


_SAMPLE_PROBE = r"""
import json, resource, sqlite3, sys, time
mode, db, out = sys.argv[1], sys.argv[2], sys.argv[3]
from airflow_ml_provider.ml.datasets.audio import TRAINING_QUERY
sql = TRAINING_QUERY.replace(":start_ts", "0")
t0 = time.perf_counter()
con = sqlite3.connect(db)
if mode == "ours":
    from airflow_ml_provider.ml.sampling import SamplingPlan, chunks_from_cursor, run_sampling
    res = run_sampling(chunks_from_cursor(con.execute(sql), 50000),
                       SamplingPlan(split_by="group", group_column="user_id"), out)
    rows = sum(res.rows.values())
else:
    import pandas as pd
    df = pd.read_sql(sql, con)
    df.to_parquet(out + ".parquet")
    rows = len(df)
# VmHWM: this process's peak RSS (ru_maxrss would carry the forking parent's peak across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
peak_kb = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "peak_mb": peak_kb / 1024}))
"""


def bench_sampling_memory() -> None:
    from airflow_ml_provider.ml.datasets.audio import load_audio_dataset

    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        db = Path(tmp) / "audio.db"
        t0 = time.perf_counter()
        load_audio_dataset(db, events=SAMPLE_ROWS, users=200_000, items=50_000, hosts=5_000, days=90)
        gen = time.perf_counter() - t0
        results = {}
        for mode in ("ours", "pandas"):
            proc = subprocess.run([PY, "-c", _SAMPLE_PROBE, mode, str(db), str(Path(tmp) / mode)],
                                  capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    o, p = results["ours"], results["pandas"]
    assert o["rows"] == p["rows"] == SAMPLE_ROWS, (o, p)
    print(f"Sampling {SAMPLE_ROWS:,} rows (the 5-table training query) from SQLite to Parquet "
          f"(data generated in {gen:.0f} s):")
    print(f"  peak memory : sampling core {o['peak_mb']:6.0f} MB | pandas.read_sql + to_parquet {p['peak_mb']:6.0f} MB"
          f" | ratio {o['peak_mb'] / p['peak_mb']:.2f} (target < 500 MB: {'met' if o['peak_mb'] < 500 else 'MISSED'})")
    print(f"  wall time   : sampling core {o['seconds']:6.1f} s  | pandas {p['seconds']:6.1f} s | "
          f"ratio {o['seconds'] / p['seconds']:.2f}")


def main() -> None:
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    bench_parse()
    bench_training()
    bench_sampling_memory()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
