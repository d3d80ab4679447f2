"""The example DAG end to end with the real Airflow (``airflow dags test``).

* SQLite + local storage: the full run publishes a verified bundle, a registry row and an asset
  event; a second run with a failing gate (an Airflow Variable) and ``disabled_tasks=["sample"]``
  skips the publish without failing, re-uses the last sample, and writes nothing new.
* MariaDB (the sample source and the registry) + the real HDFS (the storage, through an Airflow
  ``webhdfs`` connection id).

The data set is small and the rounds few, so each run costs what Airflow costs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from airflow_ml_provider.ml.bundle import fetch_bundle, load_bundle
from airflow_ml_provider.ml.datasets.audio import load_audio_dataset
from airflow_ml_provider.ml.registry import ModelRegistry

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
DAG_ID = "xgboost_recommendation"
MODEL = "audio_listen_30s"
FAST = {"num_boost_round": 25, "early_stopping_rounds": 5, "nthread": 2, "sample_ratio": 0.8}
TASKS = ("sample", "preprocess", "train", "evaluate", "publish")


@pytest.fixture(scope="module")
def ml_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ml_home")
    load_audio_dataset(home / "audio.db", events=8_000, users=800, items=400, hosts=100)
    return home


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {"AIRFLOW_ML_HOME": str(home), "AIRFLOW_ML_STORAGE": "", "AIRFLOW_ML_REGISTRY": "",
           "AIRFLOW_ML_SOURCE_CONN_ID": "", "AIRFLOW_ML_MODEL_NAME": "", "AIRFLOW_ML_FEATURE_SPEC": ""}
    env.update(extra)
    return env


def _asset_events(airflow_home: Path, name: str) -> list[dict]:
    con = sqlite3.connect(str(airflow_home / "airflow.db"))
    try:
        rows = con.execute(
            "SELECT e.extra, e.source_run_id, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = ? ORDER BY e.id", (name,)
        ).fetchall()
    finally:
        con.close()
    return [{"extra": json.loads(r[0] or "{}"), "run_id": r[1], "task_id": r[2]} for r in rows]


@pytest.fixture(scope="module")
def first_run(ml_home, airflow_home, tmp_path_factory):
    """One full run on SQLite + local disk, shared by the tests below."""
    import subprocess
    import sys

    from tests.fixtures.airflow import airflow_base_env, latest_run_states

    env = airflow_base_env(airflow_home)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    env.update(_env(ml_home))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID, "--conf", json.dumps(FAST)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    run_id, states = latest_run_states(airflow_home / "airflow.db", DAG_ID)
    return {"returncode": proc.returncode, "output": proc.stdout + proc.stderr, "run_id": run_id, "states": states}


def test_full_run_publishes_a_verified_bundle_and_a_registry_row(first_run, ml_home, airflow_home):
    assert first_run["returncode"] == 0, first_run["output"][-6000:]
    assert first_run["states"] == dict.fromkeys(TASKS, "success"), first_run["output"][-6000:]
    run_id = first_run["run_id"]

    reg = ModelRegistry(f"sqlite:///{ml_home / 'registry.db'}")
    records = reg.list(MODEL)
    assert len(records) == 1
    rec = records[0]
    assert (rec.version, rec.dag_id, rec.run_id, rec.framework) == (1, DAG_ID, run_id, "xgboost")
    assert rec.bundle_uri == str(ml_home / "storage" / "models" / MODEL / "1")
    assert reg.current(MODEL).version == 1

    bundle = load_bundle(rec.bundle_uri, verify=True)  # every file checked against its sha256
    assert bundle.checksum == rec.checksum
    files = {p.relative_to(bundle.root).as_posix() for p in bundle.root.rglob("*") if p.is_file()}
    assert {"model/model.ubj", "model/metadata.json", "fitted_spec.json", "metrics.json", "metadata.json",
            "manifest.json", "charts/roc.png", "charts/pr.png", "charts/ks.png", "charts/lift.png",
            "charts/gain.png"} <= files
    for png in bundle.charts:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # metrics: computed on the test split, the same in the bundle and the registry row
    assert bundle.metrics["auc"] == pytest.approx(rec.metrics["auc"])
    assert 0.6 < bundle.metrics["auc"] < 1.0
    cm = bundle.metrics["confusion_matrix"]
    assert sum(cm.values()) == bundle.metrics["n_rows"] > 100
    meta = bundle.metadata
    assert (meta["dag_id"], meta["run_id"], meta["framework"]) == (DAG_ID, run_id, "xgboost")
    assert meta["library_versions"]["xgboost"]
    assert meta["training_data_uri"].endswith("/sample/train.parquet")
    assert Path(meta["training_data_uri"]).is_file()
    assert meta["evaluated"] is True and meta["gate"]["passed"] is True

    # the bundle's model + fitted spec score the raw test split like the evaluation did
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.features import FittedSpec
    from airflow_ml_provider.ml.metrics import auc_score
    from airflow_ml_provider.ml.trainers import load_predictor

    raw_test = pq.read_table(Path(meta["training_data_uri"]).with_name("test.parquet")).to_pandas()
    fitted = FittedSpec.load(bundle.fitted_spec_path)
    scores = load_predictor("xgboost", bundle.model_dir).predict(fitted.transform(raw_test))
    assert auc_score(raw_test["label"].to_numpy(), scores) == pytest.approx(bundle.metrics["auc"], abs=1e-6)

    # the Asset event for "a new model was published"
    events = _asset_events(airflow_home, f"ml-model-{MODEL}")
    assert [e["run_id"] for e in events] == [run_id]
    assert events[0]["extra"]["version"] == 1 and events[0]["extra"]["uri"] == rec.bundle_uri
    # the task log shows the per-iteration progress of training
    assert "valid-auc=" in first_run["output"]


def test_failed_gate_skips_publish_and_disabled_task_is_honoured(first_run, ml_home, run_dag, airflow_home):
    assert first_run["returncode"] == 0, first_run["output"][-4000:]
    conf = {**FAST, "disabled_tasks": ["sample"]}
    res = run_dag(DAGS, DAG_ID, conf=conf, env=_env(ml_home, **{"AIRFLOW_VAR_ML.AUDIO_LISTEN_30S.MIN_AUC": "0.995"}))
    assert res.returncode == 0, res.output[-6000:]
    assert res.states == {"sample": "skipped", "preprocess": "success", "train": "success",
                          "evaluate": "success", "publish": "skipped"}, res.output[-6000:]
    # disabled: no work, the reason in the log, downstream used the last sample
    assert "Task sample is disabled for this run" in res.output
    run_dir = ml_home / "storage" / "runs" / DAG_ID
    runs = sorted(p.name for p in run_dir.iterdir() if p.name != "latest")
    assert len(runs) == 2
    second = next(p for p in runs if p != _safe(first_run["run_id"]))
    assert not (run_dir / second / "sample").exists()
    assert (run_dir / second / "preprocess" / "train.parquet").is_file()
    assert "using its latest output, from run " + first_run["run_id"] in res.output
    # gate: reason in the log, nothing published, no asset event
    assert "Gate from Variable ml.audio_listen_30s.min_auc = 0.995" in res.output
    assert "Not publishing 'audio_listen_30s': gate failed: auc" in res.output
    assert "minimum 0.995" in res.output
    gate = json.loads((run_dir / second / "evaluate" / "gate.json").read_text())
    assert gate["passed"] is False and "auc" in gate["reasons"][0]
    reg = ModelRegistry(f"sqlite:///{ml_home / 'registry.db'}")
    assert [r.version for r in reg.list(MODEL)] == [1]
    assert not (ml_home / "storage" / "models" / MODEL / "2").exists()
    assert len(_asset_events(airflow_home, f"ml-model-{MODEL}")) == 1


def _safe(run_id: str) -> str:
    from airflow_ml_provider.operators.base import safe_path_part

    return safe_path_part(run_id)


@pytest.mark.mariadb
@pytest.mark.hdfs
def test_mariadb_source_and_registry_with_real_hdfs(run_dag, mariadb_url, hdfs, tmp_path, monkeypatch):
    """The production shape: play events in MariaDB, the registry in MariaDB, artifacts on HDFS."""
    import uuid

    from airflow_ml_provider.ml import storage

    load_audio_dataset(mariadb_url, events=6_000, users=600, items=300, hosts=80)
    db = mariadb_url.rsplit("/", 1)[1]
    hdfs_dir = f"/tests/pipeline-{uuid.uuid4().hex[:10]}"
    # the feature spec comes from HDFS (the resource center), not from the DAG folder
    spec_uri = f"{hdfs.base_uri}{hdfs_dir}/resources/audio_spec.yaml"
    storage.write_bytes_atomic(spec_uri, (DAGS / "specs" / "audio_recommendation.yaml").read_bytes())
    env = _env(
        tmp_path,
        AIRFLOW_ML_SOURCE_CONN_ID="ml_audio_mysql",
        AIRFLOW_CONN_ML_AUDIO_MYSQL=json.dumps(
            {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": db}
        ),
        AIRFLOW_ML_REGISTRY=mariadb_url,
        AIRFLOW_ML_STORAGE=f"webhdfs://hdfs_pipeline@{hdfs_dir}",
        AIRFLOW_CONN_HDFS_PIPELINE=json.dumps({"conn_type": "webhdfs", "host": "127.0.0.1", "port": hdfs.http_port}),
        AIRFLOW_ML_FEATURE_SPEC=f"webhdfs://hdfs_pipeline@{hdfs_dir}/resources/audio_spec.yaml",
    )
    res = run_dag(DAGS, DAG_ID, conf={**FAST, "split_by": "time"}, env=env)
    monkeypatch.setenv("AIRFLOW_CONN_HDFS_PIPELINE", env["AIRFLOW_CONN_HDFS_PIPELINE"])  # to read it back here
    assert res.returncode == 0, res.output[-6000:]
    assert res.states == dict.fromkeys(TASKS, "success"), res.output[-6000:]

    reg = ModelRegistry(mariadb_url)
    try:
        records = reg.list(MODEL)
        assert len(records) == 1
        rec = records[0]
        assert rec.run_id == res.run_id and rec.dag_id == DAG_ID
        assert rec.bundle_uri == f"webhdfs://hdfs_pipeline@{hdfs_dir}/models/{MODEL}/1"
        local = fetch_bundle(rec.bundle_uri, tmp_path / "cache", expected_checksum=rec.checksum)
    finally:
        reg.dispose()
    bundle = load_bundle(local, verify=True)
    assert bundle.metrics["auc"] == pytest.approx(rec.metrics["auc"]) and bundle.metrics["auc"] > 0.55
    assert bundle.metadata["training_data_uri"].startswith(f"webhdfs://hdfs_pipeline@{hdfs_dir}/runs/")
    assert (bundle.root / "charts" / "roc.png").is_file()
    assert bundle.metadata["spec_source"] == f"webhdfs://hdfs_pipeline@{hdfs_dir}/resources/audio_spec.yaml"
    # nothing of the run was written to local disk
    assert not (tmp_path / "storage").exists()


BAD_SQL_DAG = '''
from datetime import datetime
from airflow.sdk import DAG
from airflow_ml_provider.operators.sample import SampleOperator

with DAG(dag_id="ml_bad_sql", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    SampleOperator(task_id="bad_sql", conn_id="ml_bad_db", sql="SELECT user_id, nope FROM play_events")
    SampleOperator(task_id="bad_column", conn_id="ml_bad_db", sql="SELECT * FROM play_events",
                   split_by="group", group_column="uid")
'''


def test_bad_sql_and_missing_column_fail_the_task_in_airflow(run_dag, ml_home, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "ml_bad_sql.py").write_text(BAD_SQL_DAG)
    res = run_dag(dags, "ml_bad_sql", env=_env(
        ml_home, AIRFLOW_CONN_ML_BAD_DB=json.dumps({"conn_type": "sqlite", "host": str(ml_home / "audio.db")})))
    assert res.states == {"bad_sql": "failed", "bad_column": "failed"}, res.output[-4000:]
    assert "SampleOperator(bad_sql): the query on connection 'ml_bad_db' failed: OperationalError: no such column: nope" \
        in res.output
    assert "column 'uid' (group_column) is not in the sampled data" in res.output
    assert not (ml_home / "storage" / "runs" / "ml_bad_sql").exists()  # no partial output


def test_retried_publish_in_airflow_makes_no_duplicate(first_run, ml_home, airflow_home):
    """`airflow tasks test ... publish <run>`: the publish of the first run again, with its real XComs."""
    import subprocess
    import sys

    from tests.fixtures.airflow import airflow_base_env

    assert first_run["returncode"] == 0, first_run["output"][-4000:]
    env = airflow_base_env(airflow_home)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    env.update(_env(ml_home))
    reg = ModelRegistry(f"sqlite:///{ml_home / 'registry.db'}")
    before = [(r.version, r.run_id, r.checksum) for r in reg.list(MODEL)]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "tasks", "test", DAG_ID, "publish", first_run["run_id"]],
        env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "This run already published audio_listen_30s version 1 (a retry): nothing new is written." in out
    assert [(r.version, r.run_id, r.checksum) for r in reg.list(MODEL)] == before
    assert sorted(p.name for p in (ml_home / "storage" / "models" / MODEL).iterdir()) == ["1"]
    load_bundle(ml_home / "storage" / "models" / MODEL / "1", verify=True)
