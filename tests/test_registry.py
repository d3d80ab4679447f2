"""The model registry on SQLite and on the real MariaDB: versions, idempotent publish, rollback."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from airflow_ml_provider.hooks.registry import resolve_registry_url
from airflow_ml_provider.ml.registry import (
    ModelRegistry,
    RegistryError,
    UnknownModelError,
    engine_options,
    mask_url,
    normalize_url,
    url_from_connection,
)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def reg_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    return request.getfixturevalue("mariadb_url")


@pytest.fixture
def reg(reg_url):
    registry = ModelRegistry(reg_url)
    registry.create_tables()
    yield registry
    registry.dispose()


def _publish(reg, name="churn", run="r1", dag="train_dag", **kw):
    kw.setdefault("bundle_uri", f"file:///store/models/{name}/{run}")
    kw.setdefault("framework", "xgboost")
    return reg.publish(name=name, dag_id=dag, run_id=run, **kw)


def _count(reg, table) -> int:
    with reg.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


# -- schema -----------------------------------------------------------------------------------


def test_create_tables_is_idempotent_and_has_the_columns(reg):
    reg.create_tables()
    reg.create_tables()
    cols = {c["name"] for c in sa.inspect(reg.engine).get_columns("ml_model_publish")}
    assert {
        "id",
        "model_name",
        "version",
        "bundle_uri",
        "framework",
        "metrics",
        "spec_uri",
        "checksum",
        "status",
        "created_at",
        "dag_id",
        "run_id",
    } <= cols
    assert "ml_model_serving" in sa.inspect(reg.engine).get_table_names()


@pytest.mark.mariadb
def test_mysql_schema_uses_utf8mb4_and_microsecond_datetimes(mariadb_url):
    reg = ModelRegistry(mariadb_url)
    reg.create_tables()
    db = sa.engine.make_url(mariadb_url).database
    with reg.engine.connect() as conn:
        precision = conn.execute(
            sa.text(
                "SELECT DATETIME_PRECISION FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA=:db AND TABLE_NAME='ml_model_publish' AND COLUMN_NAME='created_at'"
            ),
            {"db": db},
        ).scalar()
        collation = conn.execute(
            sa.text(
                "SELECT TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA=:db AND TABLE_NAME='ml_model_publish'"
            ),
            {"db": db},
        ).scalar()
    assert precision == 6
    assert collation.startswith("utf8mb4")
    # sub-second timestamps survive the round trip
    a = _publish(reg, run="a")
    b = _publish(reg, run="b")
    assert a.created_at <= b.created_at
    assert any(r.created_at.microsecond for r in (a, b)) or a.created_at.second != b.created_at.second
    reg.dispose()


def test_table_prefix(reg_url):
    reg = ModelRegistry(reg_url, table_prefix="team1_")
    reg.create_tables()
    names = set(sa.inspect(reg.engine).get_table_names())
    assert {"team1_ml_model_publish", "team1_ml_model_serving"} <= names
    assert _publish(reg).version == 1
    with pytest.raises(RegistryError, match="invalid table prefix"):
        ModelRegistry(reg_url, table_prefix="x; drop")
    reg.dispose()


# -- publish and versions ---------------------------------------------------------------------


def test_version_numbering_per_model(reg):
    assert reg.next_version("churn") == 1
    versions = [_publish(reg, run=f"r{i}").version for i in range(3)]
    assert versions == [1, 2, 3]
    assert reg.next_version("churn") == 4
    assert _publish(reg, name="ltv", run="r0").version == 1  # numbering is per model
    assert reg.versions("churn") == [1, 2, 3]
    assert [r.version for r in reg.list("churn")] == [1, 2, 3]
    assert [(r.name, r.version) for r in reg.list()] == [("churn", 1), ("churn", 2), ("churn", 3), ("ltv", 1)]
    assert reg.names() == ["churn", "ltv"]


def test_publish_stores_every_field(reg):
    rec = reg.publish(
        name="churn",
        bundle_uri="webhdfs://hdfs_default@/ml/models/churn/1",
        framework="xgboost",
        metrics={"auc": 0.8125},
        spec_uri="webhdfs://hdfs_default@/ml/models/churn/1/fitted_spec.json",
        checksum="ab" * 32,
        dag_id="xgboost_recommendation",
        run_id="manual__2026-01-01T00:00:00+00:00",
    )
    got = reg.get("churn", 1)
    assert got == rec
    assert got.bundle_uri == "webhdfs://hdfs_default@/ml/models/churn/1"
    assert got.spec_uri.endswith("/fitted_spec.json")
    assert got.checksum == "ab" * 32
    assert got.status == "published"
    assert got.dag_id == "xgboost_recommendation"
    assert got.run_id == "manual__2026-01-01T00:00:00+00:00"
    assert got.created_at.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - got.created_at).total_seconds()) < 60


def test_metrics_json_round_trip(reg):
    metrics = {
        "auc": np.float32(0.75),
        "logloss": 0.4123456789012345,
        "confusion_matrix": np.array([[50, 3], [7, 40]]),
        "n": np.int64(100),
        "nan_metric": float("nan"),
        "inf_metric": float("inf"),
        "note": "ünïcödé ✓ 中文",
        "nested": {"at_threshold": {"0.5": {"precision": 0.9}}},
        "flag": True,
    }
    rec = _publish(reg, metrics=metrics)
    got = reg.get("churn", rec.version).metrics
    assert got == {
        "auc": 0.75,
        "logloss": 0.4123456789012345,
        "confusion_matrix": [[50, 3], [7, 40]],
        "n": 100,
        "nan_metric": None,
        "inf_metric": None,
        "note": "ünïcödé ✓ 中文",
        "nested": {"at_threshold": {"0.5": {"precision": 0.9}}},
        "flag": True,
    }
    # stored as strict JSON text
    with reg.engine.connect() as conn:
        raw = conn.execute(sa.select(reg.publish_table.c.metrics)).scalar()
    assert json.loads(raw) == got
    with pytest.raises(RegistryError, match="not JSON-serialisable"):
        _publish(reg, run="r2", metrics={"bad": object()})


def test_retried_publish_returns_the_same_row(reg):
    first = _publish(reg, run="run-1", checksum="c1")
    again = _publish(reg, run="run-1", checksum="c1", bundle_uri="file:///elsewhere")
    assert again == first
    assert reg.find_run("churn", "train_dag", "run-1") == first
    assert reg.find_run("churn", "train_dag", "run-2") is None
    assert _count(reg, reg.publish_table) == 1
    assert _count(reg, reg.serving_table) == 1
    # another run gets the next version
    assert _publish(reg, run="run-2").version == 2


def test_explicit_version_taken_by_another_run_is_an_error(reg):
    _publish(reg, run="a", version=5)
    assert reg.next_version("churn") == 6
    with pytest.raises(RegistryError, match=r"'churn' version 5 already exists \(published by train_dag/a\)"):
        _publish(reg, run="b", version=5)
    assert _count(reg, reg.publish_table) == 1


def test_two_concurrent_publishers_of_the_same_run_write_one_row(reg_url):
    ModelRegistry(reg_url).create_tables()
    n = 6
    barrier = threading.Barrier(n)
    results, errors = [], []

    def worker():
        reg = ModelRegistry(reg_url)  # its own engine and connection, like another process
        try:
            barrier.wait()
            results.append(_publish(reg, run="same-run"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            reg.dispose()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == n
    assert len({r.id for r in results}) == 1
    assert {r.version for r in results} == {1}
    reg = ModelRegistry(reg_url)
    assert len(reg.list("churn")) == 1
    assert _count(reg, reg.serving_table) == 1


def test_concurrent_publishers_of_different_runs_get_distinct_versions(reg_url):
    ModelRegistry(reg_url).create_tables()
    n = 6
    barrier = threading.Barrier(n)
    results, errors = [], []

    def worker(i):
        reg = ModelRegistry(reg_url)
        try:
            barrier.wait()
            results.append(_publish(reg, run=f"run-{i}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            reg.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(r.version for r in results) == list(range(1, n + 1))
    assert sorted(r.run_id for r in results) == sorted(f"run-{i}" for i in range(n))


# -- serving decisions ------------------------------------------------------------------------


def test_rollback_current_and_a_later_publish(reg):
    assert reg.current("churn") is None
    for i in range(3):
        _publish(reg, run=f"r{i}")
    assert reg.current("churn").version == 3
    mark = reg.watermark(["churn"])

    event = reg.rollback("churn", 1, by="alice", reason="auc drop")
    assert (event.name, event.version, event.action, event.created_by, event.reason) == (
        "churn",
        1,
        "rollback",
        "alice",
        "auc drop",
    )
    assert reg.current("churn").version == 1
    assert reg.current("churn").run_id == "r0"
    assert reg.watermark(["churn"]) > mark

    # roll forward again to a newer, still-published version
    reg.rollback("churn", 2)
    assert reg.current("churn").version == 2

    # a later publish supersedes the rollback
    rec = _publish(reg, run="r3")
    assert rec.version == 4
    assert reg.current("churn").version == 4
    assert [e.action for e in reg.events("churn")] == [
        "publish",
        "publish",
        "publish",
        "rollback",
        "rollback",
        "publish",
    ]
    # a retried publish of an older run does not move the served version
    _publish(reg, run="r1")
    assert reg.current("churn").version == 4


def test_rollback_to_unknown_version_or_model(reg):
    _publish(reg, run="a")
    _publish(reg, run="b")
    with pytest.raises(UnknownModelError, match=r"model 'churn' has no version 7 \(versions: 1, 2\)"):
        reg.rollback("churn", 7)
    with pytest.raises(UnknownModelError, match=r"unknown model 'nope' \(known models: churn\)"):
        reg.rollback("nope", 1)
    with pytest.raises(RegistryError, match="invalid model version"):
        reg.rollback("churn", 0)
    assert reg.current("churn").version == 2
    assert [e.action for e in reg.events("churn")] == ["publish", "publish"]


def test_watermark_is_per_model_and_cheap(reg):
    assert reg.watermark() == 0
    assert reg.watermark(["churn"]) == 0
    _publish(reg, name="churn", run="a")
    w_churn = reg.watermark(["churn"])
    assert w_churn > 0
    _publish(reg, name="ltv", run="a")
    assert reg.watermark(["churn"]) == w_churn  # another model's publish does not wake churn
    assert reg.watermark(["churn", "ltv"]) > w_churn
    assert reg.watermark() == reg.watermark(["churn", "ltv"])
    reg.rollback("churn", 1)
    assert reg.watermark(["churn"]) > w_churn
    assert [e.name for e in reg.events(after_id=w_churn)] == ["ltv", "churn"]
    assert reg.current_many(["churn", "ltv", "absent"]) == {
        "churn": reg.get("churn", 1),
        "ltv": reg.get("ltv", 1),
        "absent": None,
    }
    start = time.perf_counter()
    for _ in range(20):
        reg.watermark(["churn", "ltv"])
    assert (time.perf_counter() - start) / 20 < 0.05


def test_reads_before_any_table_exists(reg_url):
    reg = ModelRegistry(reg_url)  # no create_tables()
    assert reg.list() == []
    assert reg.current("churn") is None
    assert reg.watermark(["churn"]) == 0
    assert reg.next_version("churn") == 1
    with pytest.raises(UnknownModelError, match="the registry has no models yet"):
        reg.get("churn", 1)
    # a publish creates the tables itself
    assert reg.publish(name="churn", bundle_uri="/x", framework="linear").version == 1
    reg.dispose()


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a..b", ".hidden", "x" * 129, "sp ace", None, 7])
def test_invalid_model_names_are_refused(reg, bad):
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.publish(name=bad, bundle_uri="/x", framework="xgboost")
    assert _count(reg, reg.publish_table) == 0


def test_publish_argument_checks(reg):
    with pytest.raises(RegistryError, match="bundle_uri"):
        reg.publish(name="m", bundle_uri="", framework="xgboost")
    with pytest.raises(RegistryError, match="framework"):
        reg.publish(name="m", bundle_uri="/x", framework="")
    with pytest.raises(RegistryError, match="both dag_id and run_id"):
        reg.publish(name="m", bundle_uri="/x", framework="xgboost", dag_id="d")
    with pytest.raises(RegistryError, match="run_id is longer than 250"):
        reg.publish(name="m", bundle_uri="/x", framework="xgboost", dag_id="d", run_id="r" * 251)
    # the longest ids Airflow allows fit (and the event's created_by is cut to its column)
    rec = reg.publish(name="m", bundle_uri="/x", framework="xgboost", dag_id="d" * 250, run_id="r" * 250)
    assert (rec.dag_id, rec.run_id) == ("d" * 250, "r" * 250)
    assert reg.events("m")[0].created_by == ("d" * 250 + "/" + "r" * 250)[:250]


# -- URLs, errors, the hook -------------------------------------------------------------------


def test_url_helpers():
    assert normalize_url("mysql://u:p@h:3306/db").drivername == "mysql+pymysql"
    assert normalize_url("mariadb://u@h/db").drivername == "mysql+pymysql"
    assert normalize_url("mysql://u@h/db").query["charset"] == "utf8mb4"
    assert normalize_url("mysql+pymysql://u@h/db?charset=latin1").query["charset"] == "latin1"
    assert normalize_url("sqlite:////tmp/x.db").drivername == "sqlite"
    assert mask_url("mysql+pymysql://u:s3cr%40t@h/db") == "mysql+pymysql://u:***@h/db"
    assert "s3cret" not in mask_url("garbage://u:s3cret@")
    with pytest.raises(RegistryError, match="not a valid SQLAlchemy URL"):
        normalize_url("::nonsense::")
    url = url_from_connection("mysql", host="db", login="ml", password="p@ss/word", schema="reg", port=3307)
    assert url.drivername == "mysql+pymysql"
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "db",
        3307,
        "ml",
        "p@ss/word",
        "reg",
    )
    assert url_from_connection("sqlite", host="/tmp/r.db").database == "/tmp/r.db"
    assert url_from_connection("ml_registry", host="db", schema="reg").render_as_string() == (
        "mysql+pymysql://db/reg?charset=utf8mb4"
    )
    assert (
        url_from_connection("postgres", extra={"sqlalchemy_url": "sqlite:////tmp/a.db"}).database
        == "/tmp/a.db"
    )
    with pytest.raises(RegistryError, match="connection type 'http' is not supported"):
        url_from_connection("http", host="x")


def test_resolve_registry_url_from_env_connections(monkeypatch, tmp_path):
    assert resolve_registry_url("mysql://root@127.0.0.1/x").startswith("mysql+pymysql://root@127.0.0.1/x")
    monkeypatch.setenv("AIRFLOW_CONN_REG_MYSQL", "mysql://ml:pw%2Fx@db.local:3307/registry")
    url = sa.engine.make_url(resolve_registry_url("reg_mysql"))
    assert (url.drivername, url.host, url.port, url.username, url.password, url.database) == (
        "mysql+pymysql",
        "db.local",
        3307,
        "ml",
        "pw/x",
        "registry",
    )
    db = tmp_path / "reg.db"
    monkeypatch.setenv("AIRFLOW_CONN_REG_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    assert resolve_registry_url("reg_sqlite") == f"sqlite:///{db}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_REG_EXTRA",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": f"sqlite:///{db}"}}),
    )
    assert resolve_registry_url("reg_extra") == f"sqlite:///{db}"
    monkeypatch.setenv("AIRFLOW_CONN_REG_BAD", "{not json")
    with pytest.raises(RegistryError, match="AIRFLOW_CONN_REG_BAD is not valid JSON"):
        resolve_registry_url("reg_bad")


def test_unreachable_database_error_masks_the_password():
    reg = ModelRegistry("mysql://root:TopSecret99@127.0.0.1:1/nodb")
    assert reg.engine.dialect.name == "mysql"
    start = time.perf_counter()
    with pytest.raises(RegistryError) as info:
        reg.publish(name="m", bundle_uri="/x", framework="xgboost")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "TopSecret99" not in message
    assert "cannot reach the model registry at mysql+pymysql://root:***@127.0.0.1:1/nodb" in message
    with pytest.raises(RegistryError) as info:
        reg.list()
    assert "TopSecret99" not in str(info.value)


def test_mysql_engine_has_a_short_connect_timeout():
    options = engine_options("mysql://root@127.0.0.1/x")
    assert 0 < options["connect_args"]["connect_timeout"] <= 5
    assert options["pool_pre_ping"] is True
    assert "connect_timeout" not in engine_options("sqlite:////tmp/x.db")["connect_args"]


def test_hook_builds_a_registry_from_an_airflow_connection(monkeypatch, tmp_path):
    db = tmp_path / "hook.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_ML_REGISTRY_TEST",
        json.dumps({"conn_type": "sqlite", "host": str(db), "extra": {"table_prefix": "h_"}}),
    )
    from airflow_ml_provider.hooks.registry import ModelRegistryHook

    hook = ModelRegistryHook(registry_conn_id="ml_registry_test")
    assert hook.get_uri() == f"sqlite:///{db}"
    reg = hook.get_registry()
    assert reg.publish_table.name == "h_ml_model_publish"
    reg.publish(name="m", bundle_uri="/b", framework="linear", dag_id="d", run_id="r")
    assert ModelRegistry(f"sqlite:///{db}", table_prefix="h_").current("m").version == 1
    assert hook.test_connection() == (True, "Connection successfully tested")
    assert ModelRegistryHook.__module__ == "airflow_ml_provider.hooks.registry"
    from airflow.sdk import BaseHook

    assert issubclass(ModelRegistryHook, BaseHook)
    # a connection id nobody defined is named (Airflow looked it up: env, secrets, metadata DB)
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_REGISTRY_CONN", raising=False)
    with pytest.raises(RegistryError, match="Airflow connection 'no_such_registry_conn' is not defined"):
        resolve_registry_url("no_such_registry_conn")


def test_the_provider_registers_the_ml_registry_connection_type():
    from airflow_ml_provider.get_provider_info import get_provider_info

    assert {
        "hook-class-name": "airflow_ml_provider.hooks.registry.ModelRegistryHook",
        "connection-type": "ml_registry",
    } in get_provider_info()["connection-types"]


def test_registry_modules_import_neither_airflow_nor_heavy_libraries():
    """The service and the CLI import these; Airflow is only imported to resolve a connection id."""
    import subprocess
    import sys

    code = (
        "import sys, airflow_ml_provider.ml.registry, airflow_ml_provider.ml.bundle, "
        "airflow_ml_provider.hooks.registry, airflow_ml_provider.cli.models; "
        "print(sorted(m for m in ('airflow', 'xgboost', 'tensorflow', 'gensim', 'sklearn') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
