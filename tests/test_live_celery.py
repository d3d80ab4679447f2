"""The example pipeline on a live CeleryExecutor deployment.

Airflow's metadata and the Celery results in PostgreSQL (127.0.0.1:5432, a fresh database created
and dropped here), Redis (127.0.0.1:6379, an empty database number of its own) as the broker, the
model registry and the dictionary table on MariaDB (a fresh database). The test starts api-server,
scheduler, dag-processor and ``airflow celery worker`` (concurrency 2), triggers the example DAG
through the REST API, and checks that the run succeeded and that every task instance was executed
by that Celery worker. Everything started is stopped by PID, also on failure.
"""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.live import DAG_ID, MODEL, live_stack
from tests.fixtures.services import port_open, require_service

pytestmark = [pytest.mark.live, pytest.mark.airflow, pytest.mark.mariadb, pytest.mark.slow]

PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)


@pytest.fixture(scope="module")
def postgres_db():
    require_service(port_open(*PG), f"PostgreSQL not reachable on {PG[0]}:{PG[1]}")
    import psycopg2

    name = "airflow_t_" + uuid.uuid4().hex[:10]
    admin = psycopg2.connect(host=PG[0], port=PG[1], user="postgres", dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgres@{PG[0]}:{PG[1]}/{name}"
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.close()


@pytest.fixture(scope="module")
def redis_db():
    """An empty Redis database number (1-15), flushed after the test."""
    require_service(port_open(*REDIS), f"Redis not reachable on {REDIS[0]}:{REDIS[1]}")
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis(host=REDIS[0], port=REDIS[1], db=number, socket_timeout=5)
        if client.dbsize() == 0:
            break
    else:
        pytest.fail("no empty Redis database number on 127.0.0.1:6379")
    yield number
    client.flushdb()
    client.close()


def test_celery_worker_runs_the_pipeline(tmp_path_factory, postgres_db, redis_db, mariadb_url):
    import sqlalchemy as sa

    config = {
        "celery": {
            "broker_url": f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
            "result_backend": f"db+postgresql+psycopg2://{postgres_db}",
        },
        # the ML platform's registry in MariaDB ([ml] of airflow.cfg: every component reads it)
        "ml": {"registry_conn": mariadb_url},
    }
    home = tmp_path_factory.mktemp("live_celery")
    with live_stack(home, executor="CeleryExecutor", parallelism=2, serve_port=None,
                    sql_alchemy_conn=f"postgresql+psycopg2://{postgres_db}", config=config,
                    dictionary_url=mariadb_url, dictionary={f"ml.{MODEL}.min_auc": "0.55"}) as stack:
        stack.unpause(DAG_ID)
        run_id = stack.trigger(DAG_ID)
        run = stack.wait_run(DAG_ID, run_id, timeout=600)
        tis = stack.task_instances(DAG_ID, run_id)
        states = {t: ti["state"] for t, ti in tis.items()}
        assert run["state"] == "success", (states, (stack.logs / "celery-worker.log").read_text()[-4000:])
        assert set(states.values()) == {"success"}, states

        # every task instance went through the Celery queue and the worker of this test ran it
        worker_log = (stack.logs / "celery-worker.log").read_text(errors="replace")
        for task_id, ti in tis.items():
            assert ti["queue"] == "default", ti
            assert ti["id"] in worker_log, f"{task_id} ({ti['id']}) not in the Celery worker's log"
        assert "execute_workload" in worker_log and "succeeded" in worker_log, worker_log[-3000:]
        # Airflow's metadata is in PostgreSQL: the task instances are there
        engine = sa.create_engine(f"postgresql+psycopg2://{postgres_db}")
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT task_id, state FROM task_instance WHERE run_id = :r"),
                                    {"r": run_id}).all()
        finally:
            engine.dispose()
        assert dict(rows) == states

    # the model and the gate Variable came from MariaDB
    from airflow_ml_provider.ml.registry import ModelRegistry

    registry = ModelRegistry(mariadb_url)
    try:
        record = registry.find_run(MODEL, DAG_ID, run_id)
    finally:
        registry.dispose()
    assert record is not None, f"run {run_id} published nothing to the MariaDB registry"
    engine = sa.create_engine(mariadb_url)
    try:
        with engine.connect() as conn:
            keys = [r[0] for r in conn.execute(sa.text("SELECT `key` FROM ml_dictionary")).all()]
    finally:
        engine.dispose()
    assert f"ml.{MODEL}.min_auc" in keys
