"""The pipeline operators in-process (``execute`` with a small context), on real SQLite and MariaDB.

Covers what does not need a scheduler: bad SQL and missing columns fail with a message naming
the problem, ``disabled_tasks`` makes every operator a no-op, the gate decides the publish, a
retried publish makes no duplicate, gate Variables override the operator's thresholds, and the
operators follow the provider conventions (keyword-only typed args, template fields, docs).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path

import pytest

from airflow_ml_provider.ml.datasets.audio import TRAINING_QUERY, load_audio_dataset
from airflow_ml_provider.ml.registry import ModelRegistry
from airflow_ml_provider.ml.sampling import SamplingError
from airflow_ml_provider.operators.evaluate import EvaluateOperator, gate_variable_names
from airflow_ml_provider.operators.preprocess import PreprocessOperator
from airflow_ml_provider.operators.publish import PublishModelOperator, model_asset
from airflow_ml_provider.operators.sample import SampleOperator, SampleSourceError
from airflow_ml_provider.operators.train import XGBoostTrainOperator

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "dags" / "specs" / "audio_recommendation.yaml"
OPERATORS = [SampleOperator, PreprocessOperator, XGBoostTrainOperator, EvaluateOperator, PublishModelOperator]


class FakeTI:
    def __init__(self, xcoms: dict | None = None):
        self.xcoms = xcoms if xcoms is not None else {}

    def xcom_pull(self, task_ids):
        return self.xcoms.get(task_ids)


class FakeDag:
    def __init__(self, dag_id: str = "unit_dag", fileloc: str | None = None):
        self.dag_id = dag_id
        self.fileloc = fileloc or str(REPO / "dags" / "x.py")
        self.template_searchpath = None


def ctx(run_id="run_1", xcoms=None, params=None, dag_id="unit_dag"):
    return {"params": params or {}, "run_id": run_id, "ti": FakeTI(xcoms), "dag": FakeDag(dag_id)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """AIRFLOW_ML_HOME with the audio data set in SQLite and an Airflow connection to it."""
    home = tmp_path_factory.mktemp("ml")
    load_audio_dataset(home / "audio.db", events=5_000, users=500, items=300, hosts=80)
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_ML_HOME", "AIRFLOW_CONN_UNIT_AUDIO", "AIRFLOW_ML_STORAGE",
                                            "AIRFLOW_ML_REGISTRY")}
    os.environ["AIRFLOW_ML_HOME"] = str(home)
    os.environ["AIRFLOW_CONN_UNIT_AUDIO"] = json.dumps({"conn_type": "sqlite", "host": str(home / "audio.db")})
    os.environ.pop("AIRFLOW_ML_STORAGE", None)
    os.environ.pop("AIRFLOW_ML_REGISTRY", None)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def chain(env):
    """sample -> preprocess -> train -> evaluate, in-process; returns the XComs."""
    x: dict = {}
    c = ctx(xcoms=x)
    x["sample"] = SampleOperator(task_id="sample", conn_id="unit_audio", sql=TRAINING_QUERY,
                                 parameters={"start_ts": 0}, split_by="group", group_column="user_id").execute(c)
    x["preprocess"] = PreprocessOperator(task_id="preprocess", spec=str(SPEC), keep_columns="event_id").execute(c)
    x["train"] = XGBoostTrainOperator(task_id="train", num_boost_round="15", eval_metric=["logloss", "auc"],
                                      nthread=2).execute(c)
    x["evaluate"] = EvaluateOperator(task_id="evaluate", model_name="unit_model", min_metrics={"auc": 0.5},
                                     champion=False).execute(c)
    return x


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELEC * FROM play_events", 'near "SELEC": syntax error'),
        ("SELECT nope FROM play_events", "no such column: nope"),
        ("SELECT * FROM no_such_table", "no such table: no_such_table"),
    ],
)
def test_bad_sql_names_the_problem_sqlite(env, sql, message):
    op = SampleOperator(task_id="sample", conn_id="unit_audio", sql=sql)
    with pytest.raises(SampleSourceError) as info:
        op.execute(ctx(run_id=f"bad_{abs(hash(sql))}", dag_id="unit_misc"))
    text = str(info.value)
    assert message in text and "connection 'unit_audio'" in text
    assert not (env / "storage" / "runs" / "unit_misc" / f"bad_{abs(hash(sql))}").exists()  # no partial output


def test_missing_split_column_names_it(env):
    op = SampleOperator(task_id="sample", conn_id="unit_audio", sql="SELECT * FROM play_events",
                        split_by="group", group_column="uid")
    with pytest.raises(SamplingError, match=re.escape("column 'uid' (group_column) is not in the sampled data")):
        op.execute(ctx(run_id="missing_col", dag_id="unit_misc"))


def test_bound_parameters_not_formatted(env):
    # a value that would break (or inject into) formatted SQL is harmless as a bound parameter
    evil = "0; DROP TABLE play_events"
    op = SampleOperator(task_id="sample", conn_id="unit_audio", split_by="none",
                        sql="SELECT event_id FROM play_events WHERE network = :net", parameters={"net": evil})
    out = op.execute(ctx(run_id="bound", dag_id="unit_misc"))
    assert out["rows_train"] == 0
    op = SampleOperator(task_id="sample", conn_id="unit_audio", split_by="none",
                        sql="SELECT event_id FROM play_events WHERE network = ?", parameters=["wifi"])
    assert op.execute(ctx(run_id="bound2", dag_id="unit_misc"))["rows_train"] > 0
    import sqlite3

    assert sqlite3.connect(env / "audio.db").execute("SELECT COUNT(*) FROM play_events").fetchone()[0] == 5000


def test_union_and_join_of_sql_and_file_sources(env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = tmp_path / "extra_events.parquet"
    pq.write_table(pa.table({"event_id": [10_000_001, 10_000_002], "user_id": [1, 2]}), extra)
    users = tmp_path / "users.csv"
    users.write_text("user_id,segment\n1,heavy\n2,light\n3,new\n")
    op = SampleOperator(
        task_id="sample", split_by="none", combine="union",
        sources=[{"conn_id": "unit_audio", "sql": "SELECT event_id, user_id FROM play_events WHERE user_id <= :u",
                  "parameters": {"u": 3}},
                 {"uri": f"file://{extra}", "name": "extra file"}],
    )
    out = op.execute(ctx(run_id="union", dag_id="unit_misc"))
    table = pq.read_table(out["train"])
    import sqlite3

    n_sql = sqlite3.connect(env / "audio.db").execute("SELECT COUNT(*) FROM play_events WHERE user_id <= 3").fetchone()[0]
    assert table.num_rows == n_sql + 2 == out["rows_read"]
    assert table.column("event_id").to_pylist()[-2:] == [10_000_001, 10_000_002]
    op = SampleOperator(
        task_id="sample", split_by="none", combine="join", join_on="user_id",
        sources=[{"conn_id": "unit_audio", "sql": "SELECT event_id, user_id FROM play_events WHERE user_id <= 3"},
                 {"uri": str(users), "format": "csv"}],
    )
    joined = pq.read_table(op.execute(ctx(run_id="join", dag_id="unit_misc"))["train"])
    assert joined.num_rows == n_sql and set(joined.column_names) == {"event_id", "user_id", "segment"}
    seg = dict(zip(joined.column("user_id").to_pylist(), joined.column("segment").to_pylist()))
    assert {k: seg[k] for k in seg} == {k: {1: "heavy", 2: "light", 3: "new"}[k] for k in seg}
    bad = SampleOperator(task_id="sample", sources=[{"uri": str(tmp_path / "missing.parquet")}])
    with pytest.raises(SampleSourceError, match="missing.parquet does not exist"):
        bad.execute(ctx(run_id="nofile", dag_id="unit_misc"))


def test_spec_from_storage_uri(env, chain, tmp_path):
    from airflow_ml_provider.ml import storage

    uri = f"file://{tmp_path}/resources/spec.yaml"
    storage.write_bytes_atomic(uri, SPEC.read_bytes())
    out = PreprocessOperator(task_id="preprocess", spec=uri).execute(ctx(run_id="spec_uri", xcoms=dict(chain)))
    assert out["spec_hash"] == chain["preprocess"]["spec_hash"]
    assert out["spec_source"] == str(tmp_path / "resources" / "spec.yaml")


def test_not_a_sql_connection_is_named(env, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_HDFS", json.dumps({"conn_type": "webhdfs", "host": "localhost"}))
    op = SampleOperator(task_id="sample", conn_id="unit_hdfs", sql="SELECT 1")
    with pytest.raises(Exception, match="connection 'unit_hdfs'.*not a SQL connection|unit_hdfs"):
        op.execute(ctx(run_id="nosql", dag_id="unit_misc"))


def test_missing_spec_and_label_are_named(env, chain, tmp_path):
    op = PreprocessOperator(task_id="preprocess", spec="specs/nope.yaml")
    with pytest.raises(FileNotFoundError, match="feature spec 'specs/nope.yaml' not found"):
        op.execute(ctx(run_id="nospec", xcoms=dict(chain)))
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("label: label", "label: listened"))
    op = PreprocessOperator(task_id="preprocess", spec=str(bad))
    with pytest.raises(Exception, match="listened"):
        op.execute(ctx(run_id="nolabel", xcoms=dict(chain)))


@pytest.mark.mariadb
def test_bad_sql_names_the_problem_mariadb(mariadb_url, env, monkeypatch):
    db = mariadb_url.rsplit("/", 1)[1]
    load_audio_dataset(mariadb_url, events=500, users=50, items=40, hosts=10)
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_MYSQL", json.dumps(
        {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": db}))
    op = SampleOperator(task_id="sample", conn_id="unit_mysql", sql="SELECT nope FROM play_events",
                        parameters={"x": 1})
    with pytest.raises(SampleSourceError, match=r"connection 'unit_mysql' failed: .*Unknown column 'nope'"):
        op.execute(ctx(run_id="my_bad", dag_id="unit_mysql_dag"))
    # and the same query text as SQLite (named parameters) streams from MariaDB
    op = SampleOperator(task_id="sample", conn_id="unit_mysql", sql=TRAINING_QUERY, parameters={"start_ts": 0},
                        split_by="group", group_column="user_id", chunk_rows=128)
    out = op.execute(ctx(run_id="my_ok", dag_id="unit_mysql_dag"))
    assert out["rows_train"] + out["rows_valid"] + out["rows_test"] == out["rows_read"] == 500
    import pyarrow.parquet as pq

    assert str(pq.read_schema(out["train"]).field("item_age_days").type) == "double"  # DECIMAL -> float64


# -- disabled_tasks ----------------------------------------------------------------------------


def test_every_operator_honours_disabled_tasks(env, chain, capsys):
    ops = [
        SampleOperator(task_id="sample", conn_id="unit_audio", sql="SELEC broken"),
        PreprocessOperator(task_id="preprocess", spec="does-not-exist.yaml"),
        XGBoostTrainOperator(task_id="train"),
        EvaluateOperator(task_id="evaluate", model_name="unit_model"),
        PublishModelOperator(task_id="publish", model_name="unit_model"),
    ]
    disabled = [op.task_id for op in ops]
    from airflow.sdk.exceptions import AirflowSkipException

    for op in ops:
        c = ctx(run_id="disabled_run", params={"disabled_tasks": disabled})
        with pytest.raises(AirflowSkipException, match="is disabled for this run"):
            op.execute(c)  # no work (the broken args above would fail), no XCom: the task ends skipped
        assert op.trigger_rule == "none_failed"  # downstream ML tasks still run after a skipped one
    assert not (env / "storage" / "runs" / "unit_dag" / "disabled_run").exists()
    out = capsys.readouterr()
    assert (out.out + out.err).count("is disabled for this run") == len(ops)


def test_disabled_upstream_uses_its_latest_output(env, chain):
    # preprocess with sample disabled in this run: the XCom is None, the latest sample is used
    out = PreprocessOperator(task_id="preprocess", spec=str(SPEC)).execute(
        ctx(run_id="reuse", xcoms={"sample": None}, params={"disabled_tasks": ["sample"]})
    )
    assert out["raw_train_uri"] == chain["sample"]["train"]
    assert out["uri"].endswith("/runs/unit_dag/reuse/preprocess")
    # no earlier output at all: a clear error naming the upstream
    with pytest.raises(ValueError, match="upstream task 'sample' produced no output in this run"):
        PreprocessOperator(task_id="preprocess", spec=str(SPEC)).execute(ctx(run_id="x", dag_id="other_dag"))


# -- gates and publish -------------------------------------------------------------------------


def test_publish_skips_on_failed_gate(env, chain):
    from airflow.sdk.exceptions import AirflowSkipException

    failed = json.loads(json.dumps(chain["evaluate"]))
    failed["gate_passed"], failed["gate_reasons"] = False, ["auc 0.7 < minimum 0.99"]
    op = PublishModelOperator(task_id="publish", model_name="unit_gate", registry=f"sqlite:///{env}/gate.db")
    with pytest.raises(AirflowSkipException, match=r"gate failed: auc 0.7 < minimum 0.99"):
        op.execute(ctx(run_id="gate_run", xcoms={**chain, "evaluate": failed}))
    assert ModelRegistry(f"sqlite:///{env}/gate.db").list() == []
    assert not (env / "storage" / "models" / "unit_gate").exists()


def test_retried_publish_makes_no_duplicate(env, chain):
    reg_url = f"sqlite:///{env}/retry.db"
    op = PublishModelOperator(task_id="publish", model_name="unit_retry", registry=reg_url)
    first = op.execute(ctx(run_id="pub_run", xcoms=dict(chain)))
    again = op.execute(ctx(run_id="pub_run", xcoms=dict(chain)))  # a retry of the same run
    assert first == again
    reg = ModelRegistry(reg_url)
    assert [(r.version, r.run_id) for r in reg.list("unit_retry")] == [(1, "pub_run")]
    assert sorted(p.name for p in (env / "storage" / "models" / "unit_retry").iterdir()) == ["1"]
    # a different run is a new version
    other = op.execute(ctx(run_id="pub_run_2", xcoms=dict(chain)))
    assert other["version"] == 2
    assert [r.version for r in reg.list("unit_retry")] == [2, 1] or sorted(r.version for r in reg.list("unit_retry")) == [1, 2]


def test_publish_without_evaluation(env, chain):
    from airflow.sdk.exceptions import AirflowSkipException

    xcoms = {**chain, "evaluate": None}
    strict = PublishModelOperator(task_id="publish", model_name="unit_noeval", require_evaluation=True,
                                  registry=f"sqlite:///{env}/noeval.db")
    with pytest.raises(AirflowSkipException, match="require_evaluation=True"):
        strict.execute(ctx(run_id="ne", xcoms=xcoms))
    lax = PublishModelOperator(task_id="publish", model_name="unit_noeval", registry=f"sqlite:///{env}/noeval.db")
    out = lax.execute(ctx(run_id="ne", xcoms=xcoms))
    assert out["evaluated"] is False and out["version"] == 1
    meta = json.loads((Path(out["uri"]) / "metadata.json").read_text())
    assert meta["evaluated"] is False and meta["gate"] is None


def test_gate_variables_override_operator_thresholds(env, monkeypatch):
    names = gate_variable_names("unit_model")
    assert names["min_auc"] == "ml.unit_model.min_auc" and names["gates"] == "ml.unit_model.gates"
    op = EvaluateOperator(task_id="evaluate", model_name="unit_model", min_metrics={"auc": 0.5, "ks": 0.1},
                          max_metrics={"logloss": 0.9})
    assert op.gate_config()["min"] == {"auc": 0.5, "ks": 0.1}
    monkeypatch.setenv("AIRFLOW_VAR_ML.UNIT_MODEL.GATES",
                       json.dumps({"min": {"ks": 0.2}, "max": {"logloss": 0.7}, "min_improvement": -0.01}))
    monkeypatch.setenv("AIRFLOW_VAR_ML.UNIT_MODEL.MIN_AUC", "0.75")
    cfg = op.gate_config()
    assert cfg["min"] == {"auc": "0.75", "ks": 0.2}
    assert cfg["max"] == {"logloss": 0.7}
    assert cfg["min_improvement"] == -0.01
    monkeypatch.setenv("AIRFLOW_VAR_ML.UNIT_MODEL.GATES", json.dumps({"minimum": {"auc": 1}}))
    with pytest.raises(ValueError, match=r"ml.unit_model.gates.*unknown key\(s\) \['minimum'\]"):
        op.gate_config()


def test_evaluate_writes_metrics_charts_and_compares_with_the_champion(env, chain):
    ev = chain["evaluate"]
    metrics = json.loads(Path(ev["metrics_uri"]).read_text())
    for key in ("auc", "ks", "logloss", "precision", "recall", "f1", "confusion_matrix"):
        assert key in metrics
    assert metrics["auc"] == pytest.approx(ev["auc"]) and metrics["logloss"] == pytest.approx(ev["logloss"])
    assert ev["rmse"] is None  # a binary model: the regression metrics of the record are null
    charts = sorted(p.name for p in Path(ev["charts_uri"]).iterdir())
    assert charts == sorted(["roc.png", "pr.png", "ks.png", "lift.png", "gain.png", "feature_importance.png"])
    assert all((Path(ev["charts_uri"]) / c).stat().st_size > 1000 for c in charts)
    gate = json.loads(Path(ev["gate_uri"]).read_text())
    assert gate["passed"] is ev["gate_passed"] is True and gate["reasons"] == ev["gate_reasons"] == []
    # champion/challenger: a champion with a far better AUC blocks the challenger
    reg_url = f"sqlite:///{env}/champ.db"
    reg = ModelRegistry(reg_url)
    reg.publish(name="unit_champ", bundle_uri="/nowhere", framework="xgboost", metrics={"auc": 0.999})
    out = EvaluateOperator(task_id="evaluate", model_name="unit_champ", registry=reg_url).execute(
        ctx(run_id="champ", xcoms=dict(chain)))
    assert out["gate_passed"] is False
    assert "does not beat champion 0.999" in out["gate_reasons"][0]
    assert out["champion_version"] == 1


def test_regression_objective_end_to_end(env, chain):
    c = ctx(run_id="regression", xcoms=dict(chain))
    c["ti"].xcoms["train_reg"] = XGBoostTrainOperator(
        task_id="train_reg", objective="reg:squarederror", num_boost_round=8, eval_metric="rmse").execute(c)
    out = EvaluateOperator(task_id="evaluate_reg", model_name="unit_reg", input_task_id="train_reg",
                           max_metrics={"rmse": 0.6}, champion=False).execute(c)
    m = json.loads(Path(out["metrics_uri"]).read_text())
    assert m["task"] == "regression"
    for key in ("rmse", "mae", "r2", "mape"):
        assert key in m
    assert 0 < m["rmse"] < 0.6 and out["gate_passed"] is True
    assert out["rmse"] == pytest.approx(m["rmse"]) and out["auc"] is None
    charts = {p.name for p in Path(out["charts_uri"]).iterdir()}
    assert "pred_vs_actual.png" in charts and "residuals.png" in charts


def test_train_logs_progress_and_passes_params(env, chain):
    model_dir = Path(chain["train"]["uri"])
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["params"]["num_boost_round"] == 15
    assert meta["params"]["eval_metric"] == ["logloss", "auc"]
    assert (model_dir / "model.ubj").stat().st_size > 0
    op = XGBoostTrainOperator(task_id="t", device="cuda", eta="0.3", max_depth="4", booster_params={"subsample": 0.8})
    p = op.trainer_params()
    assert p["device"] == "cuda" and p["eta"] == 0.3 and p["max_depth"] == 4 and p["subsample"] == 0.8


# -- conventions -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", OPERATORS, ids=lambda c: c.__name__)
def test_operator_conventions(cls):
    sig = inspect.signature(cls.__init__)
    own = [p for name, p in sig.parameters.items() if name not in ("self", "kwargs")]
    assert own and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in own)
    doc = cls.__doc__ or ""
    for p in own:
        assert f":param {p.name}:" in doc, f"{cls.__name__} does not document {p.name}"
        assert p.annotation is not inspect.Parameter.empty
    assert "storage_root" in cls.template_fields
    assert inspect.getmodule(cls).__doc__


def test_model_asset_is_the_publish_outlet():
    op = PublishModelOperator(task_id="p", model_name="m1")
    assert op.outlets == [model_asset("m1")]
    assert model_asset("m1").uri == "x-ml-model://m1"  # an x- scheme: kept as is, no provider lookup
    assert model_asset("m1").name == "ml-model-m1"
