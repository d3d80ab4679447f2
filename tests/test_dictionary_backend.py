"""DictionaryTableBackend: one query per process, TTL refresh, stale-grace fallback, clear errors,
bounded waits (a TCP proxy between the backend and the real MariaDB is cut mid-run), and both
Airflow configuration places ([workers] secrets_backend and [secrets] backend)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

from airflow_ml_provider.dictionary_store import DictionaryStore, DictionaryValidationError
from airflow_ml_provider.secrets.dictionary import DictionaryBackendUnavailable, DictionaryTableBackend
from tests.fixtures.airflow import airflow_base_env
from tests.fixtures.mariadb import MARIADB_HOST, MARIADB_PORT, _admin_connect
from tests.tcp_proxy import TcpProxy

BACKEND = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"


@pytest.fixture(autouse=True)
def _fresh_snapshots():
    DictionaryTableBackend.clear_cache()
    yield
    DictionaryTableBackend.clear_cache()


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dictionary.db"
    return request.getfixturevalue("mariadb_url")


@pytest.fixture
def store(db_url):
    s = DictionaryStore(db_url)
    s.create_tables()
    yield s
    s.dispose()


class _Cursor:
    def __init__(self, cursor, spy):
        object.__setattr__(self, "_cursor", cursor)
        object.__setattr__(self, "_spy", spy)

    def execute(self, sql, *args, **kwargs):
        self._spy.record(sql)
        return self._cursor.execute(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def __setattr__(self, name, value):
        setattr(self._cursor, name, value)


class _Connection(_Cursor):
    def cursor(self, *args, **kwargs):
        return _Cursor(self._cursor.cursor(*args, **kwargs), self._spy)

    def execute(self, sql, *args, **kwargs):  # sqlite3's shortcut
        self._spy.record(sql)
        return self._cursor.execute(sql, *args, **kwargs)


class QueryCounter:
    """Counts the statements reading the dictionary table that reach the database drivers
    (pymysql, sqlite3), whichever way the backend talks to them."""

    def __init__(self, monkeypatch, table: str = "ml_dictionary") -> None:
        import sqlite3

        import pymysql

        self.table = table
        self.statements: list[str] = []
        self.connections = 0
        for module in (pymysql, sqlite3):
            real = module.connect

            def connect(*args, _real=real, **kwargs):
                self.connections += 1
                return _Connection(_real(*args, **kwargs), self)

            monkeypatch.setattr(module, "connect", connect)
        self._monkeypatch = monkeypatch

    def record(self, sql) -> None:
        text = str(sql)
        if self.table in text and text.lstrip().upper().startswith("SELECT"):
            self.statements.append(text)


@pytest.fixture
def query_counter(monkeypatch):
    return QueryCounter(monkeypatch)


def test_one_query_then_memory(store, db_url, query_counter):
    store.import_entries([(f"k{i}", f"v{i}", None) for i in range(300)])
    counter = query_counter
    if True:
        backend = DictionaryTableBackend(sql_alchemy_conn=db_url)
        assert backend.get_variable("k7") == "v7"
        for i in range(300):
            assert backend.get_variable(f"k{i}") == f"v{i}"
        assert backend.get_variable("not_there") is None  # Airflow falls through to env / metastore
        # a second instance with the same settings (Airflow may build several) shares the snapshot
        assert DictionaryTableBackend(sql_alchemy_conn=db_url).get_variable("k1") == "v1"
    assert len(counter.statements) == 1
    assert counter.connections == 1


def test_invalid_lookup_keys_fall_through(store, db_url):
    backend = DictionaryTableBackend(sql_alchemy_conn=db_url)
    assert backend.get_variable("") is None
    assert backend.get_variable("x" * 300) is None
    assert backend.get_conn_value("any_conn") is None
    assert backend.get_connection("any_conn") is None
    assert backend.get_config("core__x") is None


def test_key_prefix_scopes_the_keys(store, db_url, query_counter):
    store.set("prod.min_auc", "0.8")
    store.set("staging.min_auc", "0.6")
    store.set("min_auc", "0.1")
    store.set("prod_min_auc", "LIKE wildcard must not match this")
    counter = query_counter
    if True:
        prod = DictionaryTableBackend(sql_alchemy_conn=db_url, key_prefix="prod.")
        assert prod.get_variable("min_auc") == "0.8"
        assert prod.get_variable("staging.min_auc") is None
        assert prod.get_variable("_min_auc") is None
        staging = DictionaryTableBackend(sql_alchemy_conn=db_url, key_prefix="staging.")
        assert staging.get_variable("min_auc") == "0.6"
    assert len(counter.statements) == 2  # one per prefix
    assert all("LIKE" in s for s in counter.statements)  # only the keys under the prefix are loaded


def test_cache_ttl_refresh(store, db_url):
    store.set("ratio", "0.1")
    backend = DictionaryTableBackend(sql_alchemy_conn=db_url, cache_ttl_seconds=0.5)
    assert backend.get_variable("ratio") == "0.1"
    store.set("ratio", "0.2")
    store.set("added", "yes")
    assert backend.get_variable("ratio") == "0.1"  # still the snapshot
    time.sleep(0.6)
    assert backend.get_variable("ratio") == "0.2"
    assert backend.get_variable("added") == "yes"
    store.delete("added")
    time.sleep(0.6)
    assert backend.get_variable("added") is None


def test_kwargs_from_per_key_env_vars_are_strings(store, db_url):
    # AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__CACHE_TTL_SECONDS=... arrives as a raw string
    backend = DictionaryTableBackend(
        sql_alchemy_conn=db_url, cache_ttl_seconds="30", stale_grace_seconds="5.5", connect_timeout="2"
    )
    assert (backend.cache_ttl_seconds, backend.stale_grace_seconds, backend.connect_timeout) == (30, 5.5, 2)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"sql_alchemy_conn": ""}, "sql_alchemy_conn must be a SQLAlchemy URL"),
        ({"sql_alchemy_conn": "no_such_dict_conn"}, "AIRFLOW_CONN_NO_SUCH_DICT_CONN is not set"),
        ({"sql_alchemy_conn": "sqlite://", "connect_timeout": 30}, "connect_timeout must be between"),
        (
            {"sql_alchemy_conn": "sqlite://", "cache_ttl_seconds": "soon"},
            "cache_ttl_seconds must be a number",
        ),
        ({"sql_alchemy_conn": "sqlite://", "table": "x; DROP TABLE y"}, "invalid dictionary table name"),
        ({"sql_alchemy_conn": "sqlite://", "tabel": "x"}, r"unknown argument\(s\) \['tabel'\]"),
    ],
)
def test_bad_backend_kwargs(kwargs, problem):
    with pytest.raises(DictionaryValidationError, match=problem):
        DictionaryTableBackend(**kwargs)


def test_without_kwargs_the_backend_follows_the_settings(tmp_path, monkeypatch):
    """No sql_alchemy_conn: [ml] dictionary_conn, else AIRFLOW_ML_DICTIONARY, else the embedded default."""
    for name in list(os.environ):
        if name.startswith(("AIRFLOW__ML__", "AIRFLOW_ML_", "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__WORKERS__SECRETS")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_ML_HOME", str(tmp_path / "home"))
    embedded = f"sqlite:///{tmp_path}/home/dictionary.db"
    backend = DictionaryTableBackend()
    assert (backend.sql_alchemy_conn, backend.source) == (embedded, "default")
    assert backend.get_variable("k") is None  # table created in the embedded database
    DictionaryStore(embedded).set("k", "embedded")
    DictionaryTableBackend.clear_cache()
    assert DictionaryTableBackend().get_variable("k") == "embedded"

    env_url = f"sqlite:///{tmp_path}/env.db"
    store = DictionaryStore(env_url, "t_env")
    store.create_tables()
    store.set("p.k", "from-env")
    monkeypatch.setenv("AIRFLOW_ML_DICTIONARY", env_url)
    monkeypatch.setenv("AIRFLOW_ML_DICTIONARY_TABLE", "t_env")
    monkeypatch.setenv("AIRFLOW_ML_DICTIONARY_KEY_PREFIX", "p.")
    backend = DictionaryTableBackend()
    assert (backend.sql_alchemy_conn, backend.table, backend.key_prefix) == (env_url, "t_env", "p.")
    assert backend.get_variable("k") == "from-env"

    cfg_url = f"sqlite:///{tmp_path}/cfg.db"
    DictionaryStore(cfg_url).create_tables()
    DictionaryStore(cfg_url).set("k", "from-config")
    monkeypatch.setenv("AIRFLOW__ML__DICTIONARY_CONN", cfg_url)  # [ml] beats AIRFLOW_ML_*
    monkeypatch.delenv("AIRFLOW_ML_DICTIONARY_TABLE")
    monkeypatch.delenv("AIRFLOW_ML_DICTIONARY_KEY_PREFIX")
    backend = DictionaryTableBackend()
    assert (backend.sql_alchemy_conn, backend.source) == (cfg_url, "AIRFLOW__ML__DICTIONARY_CONN")
    assert backend.get_variable("k") == "from-config"
    # explicit kwargs beat every setting
    assert DictionaryTableBackend(sql_alchemy_conn=embedded).get_variable("k") == "embedded"


def test_missing_table_is_created_and_empty(tmp_path):
    url = f"sqlite:///{tmp_path}/new.db"
    backend = DictionaryTableBackend(sql_alchemy_conn=url)
    assert backend.get_variable("x") is None
    assert "ml_dictionary" in sa.inspect(sa.create_engine(url)).get_table_names()


# ---------------------------------------------------------------------------------------------
# faults: a TCP proxy between the backend and the real MariaDB


@pytest.fixture
def mariadb_user_url(mariadb_url):
    """``mariadb_url`` for a user with a password (to show the password never leaks)."""
    db = mariadb_url.rsplit("/", 1)[1]
    user, password = "h3_" + uuid.uuid4().hex[:8], "Pw-" + uuid.uuid4().hex
    conn = _admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
            cur.execute(f"GRANT ALL ON `{db}`.* TO '{user}'@'%'")
    finally:
        conn.close()
    yield f"mysql+pymysql://{user}:{password}@{MARIADB_HOST}:{MARIADB_PORT}/{db}", password
    conn = _admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    finally:
        conn.close()


def test_stale_grace_then_clear_error_when_db_cut(mariadb_user_url, caplog):
    url, password = mariadb_user_url
    store = DictionaryStore(url)
    store.create_tables()
    store.set("min_auc", "0.75")
    with TcpProxy(MARIADB_HOST, MARIADB_PORT) as proxy:
        backend = DictionaryTableBackend(
            sql_alchemy_conn=proxy.url(url), cache_ttl_seconds=0.2, stale_grace_seconds=2, connect_timeout=1
        )
        assert backend.get_variable("min_auc") == "0.75"
        loaded = time.monotonic()
        proxy.close()  # the database goes away mid-run
        store.set("min_auc", "0.99")  # (changed behind the cut: the backend cannot see it)
        time.sleep(0.3)  # the snapshot is now past its TTL: a refresh is due and fails

        caplog.set_level(logging.WARNING, logger="airflow_ml_provider.secrets.dictionary")
        t0 = time.monotonic()
        assert backend.get_variable("min_auc") == "0.75"  # stale snapshot, within grace
        assert time.monotonic() - t0 < 1.5
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "unreachable" in warnings[0] and "serving the snapshot loaded" in warnings[0]
        assert password not in warnings[0] and ":***@127.0.0.1" in warnings[0]
        # lookups during the retry interval answer from memory without another connect attempt
        connects = proxy.connections
        for _ in range(100):
            assert backend.get_variable("min_auc") == "0.75"
        assert proxy.connections == connects

        time.sleep(max(0.0, 2.2 - (time.monotonic() - loaded)))  # past the grace
        t0 = time.monotonic()
        with pytest.raises(DictionaryBackendUnavailable) as info:
            backend.get_variable("min_auc")
        assert time.monotonic() - t0 < 2.0  # bounded by the 1 s connect timeout
    message = str(info.value)
    assert "'min_auc'" in message
    assert f":***@127.0.0.1:{proxy.port}/" in message  # names the database ...
    assert password not in message  # ... with the password masked
    assert "older than stale_grace_seconds=2" in message
    assert info.value.key == "min_auc" and password not in info.value.database
    # Airflow re-raises this class instead of silently trying the next backend
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

    assert isinstance(info.value, AirflowSecretsBackendAccessDenied)
    store.dispose()


def test_lookup_never_hangs_on_a_silent_server(mariadb_url):
    # the proxy accepts the TCP connection and never answers: a hung server
    with TcpProxy(MARIADB_HOST, MARIADB_PORT, blackhole=True) as proxy:
        backend = DictionaryTableBackend(sql_alchemy_conn=proxy.url(mariadb_url), connect_timeout=1)
        t0 = time.monotonic()
        with pytest.raises(DictionaryBackendUnavailable, match="no snapshot is held") as info:
            backend.get_variable("min_auc")
        first = time.monotonic() - t0
        assert 0.8 < first < 3.0, first
        assert "'min_auc'" in str(info.value)
        # within the retry interval the next lookup fails at once instead of waiting again
        t0 = time.monotonic()
        with pytest.raises(DictionaryBackendUnavailable):
            backend.get_variable("other_key")
        assert time.monotonic() - t0 < 0.2


def test_db_back_after_outage_is_picked_up(mariadb_url):
    store = DictionaryStore(mariadb_url)
    store.create_tables()
    store.set("x", "1")
    proxy = TcpProxy(MARIADB_HOST, MARIADB_PORT)
    backend = DictionaryTableBackend(
        sql_alchemy_conn=proxy.url(mariadb_url),
        cache_ttl_seconds=0.1,
        stale_grace_seconds=60,
        connect_timeout=1,
    )
    assert backend.get_variable("x") == "1"
    port = proxy.port
    proxy.close()
    time.sleep(0.15)
    store.set("x", "2")
    assert backend.get_variable("x") == "1"  # stale, within grace
    # the database comes back on the same address
    revived = None
    for _ in range(20):
        try:
            revived = TcpProxy(MARIADB_HOST, MARIADB_PORT, port=port)
            break
        except OSError:
            time.sleep(0.1)
    assert revived is not None
    try:
        time.sleep(0.15)  # the failed refresh backs off for min(ttl, 5 s) = 0.1 s
        assert backend.get_variable("x") == "2"
    finally:
        revived.close()
    store.dispose()


# ---------------------------------------------------------------------------------------------
# both configuration places, through Airflow's own loaders (fresh processes)

_SERVER_SIDE = r"""
import json
from airflow.configuration import ensure_secrets_loaded
from airflow.models.variable import Variable
Variable.set("only_in_metastore", "from-metastore")
Variable.set("in_both", "metastore-loses")
backends = ensure_secrets_loaded()
print(json.dumps({
    "backends": [type(b).__name__ for b in backends],
    "dict": Variable.get("min_auc"),
    "json": Variable.get("model_cfg", deserialize_json=True),
    "env": Variable.get("only_in_env"),
    "metastore": Variable.get("only_in_metastore"),
    "in_both": Variable.get("in_both"),
    "env_vs_dict": Variable.get("env_and_dict"),
    "missing": Variable.get("nowhere", default_var="default"),
}))
"""

_WORKER_SIDE = r"""
import json
from airflow.sdk.configuration import ensure_secrets_loaded
from airflow.sdk.execution_time.secrets import DEFAULT_SECRETS_SEARCH_PATH_WORKERS
backends = ensure_secrets_loaded(default_backends=DEFAULT_SECRETS_SEARCH_PATH_WORKERS)
b = backends[0]
print(json.dumps({
    "backends": [type(x).__name__ for x in backends],
    "dict": b.get_variable("min_auc"),
    "ttl": b.cache_ttl_seconds,
    "prefix": b.key_prefix,
}))
"""


def _run_python(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_secrets_backend_config_on_the_server_side(airflow_home, tmp_path):
    """[secrets] backend: what the API server uses; lookup order dictionary -> env -> metastore."""
    url = f"sqlite:///{tmp_path}/dictionary.db"
    store = DictionaryStore(url)
    store.create_tables()
    store.set("min_auc", "0.75")
    store.set("model_cfg", '{"threshold": 0.5}')
    store.set("in_both", "dictionary-wins")
    store.set("env_and_dict", "dictionary-wins")
    env = airflow_base_env(airflow_home)
    env.update(
        {
            "AIRFLOW__SECRETS__BACKEND": BACKEND,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                {"sql_alchemy_conn": url, "cache_ttl_seconds": 30}
            ),
            "AIRFLOW_VAR_ONLY_IN_ENV": "from-env",
            "AIRFLOW_VAR_ENV_AND_DICT": "env-loses",
        }
    )
    out = _run_python(_SERVER_SIDE, env)
    assert out["backends"] == ["DictionaryTableBackend", "EnvironmentVariablesBackend", "MetastoreBackend"]
    assert out["dict"] == "0.75"
    assert out["json"] == {"threshold": 0.5}
    assert out["env"] == "from-env"
    assert out["metastore"] == "from-metastore"
    assert out["in_both"] == "dictionary-wins"
    assert out["env_vs_dict"] == "dictionary-wins"
    assert out["missing"] == "default"


def test_workers_secrets_backend_config_and_per_key_env_kwargs(tmp_path):
    """[workers] secrets_backend with JSON kwargs, overridden per key by
    AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__<NAME> (raw strings)."""
    url = f"sqlite:///{tmp_path}/dictionary.db"
    store = DictionaryStore(url)
    store.create_tables()
    store.set("team_a.min_auc", "0.9")
    env = airflow_base_env(tmp_path / "home")
    env.update(
        {
            "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
                {"sql_alchemy_conn": url, "cache_ttl_seconds": 5}
            ),
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__CACHE_TTL_SECONDS": "42",
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__KEY_PREFIX": "team_a.",
        }
    )
    out = _run_python(_WORKER_SIDE, env)
    assert out["backends"] == [
        "DictionaryTableBackend",
        "EnvironmentVariablesBackend",
        "ExecutionAPISecretsBackend",
    ]
    assert out["dict"] == "0.9"
    assert out["ttl"] == 42.0
    assert out["prefix"] == "team_a."


def test_forked_process_reloads_its_own_snapshot(store, db_url):
    """A task process forked from one that holds a snapshot (the supervisor) loads afresh."""
    import multiprocessing

    store.set("ratio", "0.1")
    backend = DictionaryTableBackend(sql_alchemy_conn=db_url, cache_ttl_seconds=3600)
    assert backend.get_variable("ratio") == "0.1"
    store.set("ratio", "0.2")
    assert backend.get_variable("ratio") == "0.1"  # this process: its snapshot, TTL not reached

    def child(queue):
        queue.put((backend.get_variable("ratio"), backend._snapshot().loads))

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    value, loads = queue.get(timeout=60)
    proc.join(timeout=60)
    assert value == "0.2"  # the child saw the change: it loaded its own snapshot
    assert loads == 2  # the inherited load + its own single query
    assert backend.get_variable("ratio") == "0.1"


def test_bad_key_prefix():
    with pytest.raises(DictionaryValidationError, match="control character"):
        DictionaryTableBackend(sql_alchemy_conn="sqlite://", key_prefix="a\nb")
