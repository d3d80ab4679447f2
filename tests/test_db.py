"""ml/db.py, the database layer of the registry and the dictionary: errors classified by the
driver's codes on the real SQLite and the real MariaDB, dropped connections (a TCP proxy cut, a
server-side KILL), the one retry helper, engines, and password masking."""

from __future__ import annotations

import sqlite3
import threading

import pymysql
import pytest
import sqlalchemy as sa

from airflow_ml_provider.ml import db
from tests.fixtures.mariadb import _admin_connect
from tests.tcp_proxy import TcpProxy

# ---------------------------------------------------------------------------------------------
# SQLite


def _raises(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    raise AssertionError("no error raised")


def test_sqlite_errors_by_code(tmp_path):
    engine = db.create_engine(f"sqlite:///{tmp_path}/c.db")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))

    def run(sql):
        with engine.begin() as conn:
            conn.execute(sa.text(sql))

    missing = _raises(lambda: run("SELECT * FROM nope"))
    assert isinstance(missing, sa.exc.OperationalError)
    assert db.classify(missing) == db.MISSING_TABLE and db.is_missing_table(missing)
    assert db.classify(_raises(lambda: run("CREATE TABLE t (k INTEGER)"))) == db.TABLE_EXISTS
    dup = _raises(lambda: run("INSERT INTO t VALUES (1)"))
    assert db.error_code(dup) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY and db.classify(dup) == db.CONFLICT
    assert db.classify(_raises(lambda: run("SELEC 1"))) == db.OTHER  # a syntax error is no missing table


def test_sqlite_busy_is_locked(tmp_path):
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (k INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        other = sqlite3.connect(path, timeout=0.05)
        exc = _raises(lambda: other.execute("INSERT INTO t VALUES (1)"))
        assert db.error_code(exc) == sqlite3.SQLITE_BUSY
        assert db.classify(exc) == db.LOCKED
        other.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_sqlite_engine_is_wal_with_a_busy_timeout(tmp_path):
    engine = db.create_engine(f"sqlite:///{tmp_path}/w.db")
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == int(db.SQLITE_BUSY_TIMEOUT * 1000)
    # an in-memory database is one shared connection (no WAL there)
    mem = db.create_engine("sqlite://")
    with mem.begin() as conn:
        conn.execute(sa.text("CREATE TABLE x (a INTEGER)"))
    with mem.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM x")).scalar() == 0


def test_classification_reads_codes_not_messages():
    """A message that mentions a missing table does not make one; the code decides."""
    lying = pymysql.err.OperationalError(1205, "Table 'x.y' doesn't exist; no such table")
    assert db.classify(lying) == db.LOCKED
    honest = pymysql.err.ProgrammingError(1146, "whatever the server says")
    assert db.classify(honest) == db.MISSING_TABLE
    assert db.classify(RuntimeError("no such table: t")) == db.OTHER
    wrapped = sa.exc.OperationalError("SELECT 1", {}, pymysql.err.OperationalError(2013, "Lost connection"))
    assert db.error_code(wrapped) == 2013 and db.classify(wrapped) == db.DISCONNECTED


# ---------------------------------------------------------------------------------------------
# MariaDB (real server)


@pytest.mark.mariadb
def test_mariadb_errors_by_code(mariadb_url):
    engine = db.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (k INT PRIMARY KEY, v INT) ENGINE=InnoDB"))
        conn.execute(sa.text("INSERT INTO t VALUES (1, 0)"))

    def run(sql):
        with engine.begin() as conn:
            conn.execute(sa.text(sql))

    missing = _raises(lambda: run("SELECT * FROM nope"))
    assert (db.error_code(missing), db.classify(missing)) == (1146, db.MISSING_TABLE)
    exists = _raises(lambda: run("CREATE TABLE t (k INT)"))
    assert (db.error_code(exists), db.classify(exists)) == (1050, db.TABLE_EXISTS)
    dup = _raises(lambda: run("INSERT INTO t VALUES (1, 1)"))
    assert (db.error_code(dup), db.classify(dup)) == (1062, db.CONFLICT)
    engine.dispose()


@pytest.mark.mariadb
def test_mariadb_lock_wait_timeout_is_locked(mariadb_url):
    engine = db.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (k INT PRIMARY KEY, v INT) ENGINE=InnoDB"))
        conn.execute(sa.text("INSERT INTO t VALUES (1, 0)"))
    holder = engine.connect()
    tx = holder.begin()
    holder.execute(sa.text("SELECT v FROM t WHERE k = 1 FOR UPDATE"))
    try:
        with engine.connect() as other:
            other.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
            exc = _raises(lambda: other.execute(sa.text("UPDATE t SET v = 2 WHERE k = 1")))
        assert (db.error_code(exc), db.classify(exc)) == (1205, db.LOCKED)
    finally:
        tx.rollback()
        holder.close()
        engine.dispose()


@pytest.mark.mariadb
def test_mariadb_unreachable_and_dropped_connections(mariadb_url):
    url = sa.engine.make_url(mariadb_url)
    # nothing listens: could not connect at all
    refused = _raises(lambda: pymysql.connect(host="127.0.0.1", port=1, user="root", connect_timeout=2))
    assert (db.error_code(refused), db.classify(refused)) == (2003, db.UNREACHABLE)
    # a connection through a proxy that is then cut: lost
    with TcpProxy(url.host or "127.0.0.1", url.port or 3306) as proxy:
        conn = pymysql.connect(host="127.0.0.1", port=proxy.port, user=url.username or "root",
                               password=url.password or "", database=url.database, connect_timeout=5,
                               read_timeout=10)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        proxy.close()

        def query():
            with conn.cursor() as cur:
                cur.execute("SELECT 1")

        lost = _raises(query)
        assert db.error_code(lost) in (2006, 2013) and db.classify(lost) == db.DISCONNECTED


@pytest.mark.mariadb
def test_a_killed_pooled_connection_is_replaced(mariadb_url):
    """The server drops the registry's idle pooled connection: the next read still answers."""
    from airflow_ml_provider.ml.registry import ModelRegistry

    reg = ModelRegistry(mariadb_url)
    reg.publish(name="m", bundle_uri="/b", framework="linear")
    with reg.engine.connect() as conn:
        conn_id = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    admin = _admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"KILL {int(conn_id)}")
    finally:
        admin.close()
    assert reg.current("m").version == 1
    reg.dispose()


# ---------------------------------------------------------------------------------------------
# the retry helper


def _busy() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
    exc.sqlite_errorname = "SQLITE_BUSY"
    return exc


def test_retry_retries_only_the_named_kinds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _busy()
        return "done"

    seen = []
    assert db.retry(flaky, on=(db.LOCKED,), attempts=5, wait_seconds=0.001, before_retry=seen.append) == "done"
    assert len(calls) == 3 and len(seen) == 2 and all(db.classify(e) == db.LOCKED for e in seen)

    calls.clear()

    def always_busy():
        calls.append(1)
        raise _busy()

    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        db.retry(always_busy, on=(db.LOCKED,), attempts=4, wait_seconds=0.001)
    assert len(calls) == 4  # then the last error, as it was

    calls.clear()

    def missing():
        calls.append(1)
        raise pymysql.err.ProgrammingError(1146, "Table 'x.t' doesn't exist")

    with pytest.raises(pymysql.err.ProgrammingError):
        db.retry(missing, on=(db.LOCKED,), attempts=5, wait_seconds=0.001)
    assert len(calls) == 1  # not a retryable kind: at once

    calls.clear()

    class Mine(Exception):
        pass

    def custom():
        calls.append(1)
        if len(calls) < 2:
            raise Mine()
        return 7

    assert db.retry(custom, on=(), when=lambda e: isinstance(e, Mine), attempts=3, wait_seconds=0.001) == 7


def test_retry_on_real_sqlite_contention(tmp_path):
    """A writer that meets a held lock is retried until the holder lets go."""
    path = tmp_path / "contended.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (k INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    attempts = []
    released = threading.Event()

    def write():
        attempts.append(1)
        conn = sqlite3.connect(path, timeout=0.01)
        try:
            conn.execute("INSERT INTO t VALUES (1)")
            conn.commit()
        finally:
            conn.close()

    def release(exc):
        if len(attempts) == 2 and not released.is_set():  # let go after the second failure
            holder.execute("COMMIT")
            released.set()

    db.retry(write, on=(db.LOCKED,), attempts=10, wait_seconds=0.001, before_retry=release)
    assert len(attempts) == 3
    assert holder.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    holder.close()


# ---------------------------------------------------------------------------------------------
# URLs, engines, masking


def test_urls_and_masking():
    url = db.normalize_url("mysql://ml:S3cret-pw@db:3306/reg")
    assert url.drivername == "mysql+pymysql" and url.query["charset"] == "utf8mb4"
    assert db.mask_url(url) == "mysql+pymysql://ml:***@db:3306/reg?charset=utf8mb4"
    assert db.scrub("access denied for ml using S3cret-pw", url) == "access denied for ml using ***"
    with pytest.raises(db.DatabaseURLError, match="not a valid SQLAlchemy URL") as info:
        db.make_url("mysql://u:S3cret@h:notaport/d")  # unparseable, still masked
    assert "S3cret" not in str(info.value) and "u:***@h" in str(info.value)
    assert db.url_from_connection("postgres", host="h", login="u", password="p", schema="d").drivername == (
        "postgresql")
    with pytest.raises(db.DatabaseURLError, match="connection type 'http' is not supported for the dictionary"):
        db.url_from_connection("http", what="the dictionary")


def test_engine_options_per_driver():
    mysql = db.engine_options("mysql+pymysql://u@h/d", connect_timeout=3, query_timeout=7)
    assert mysql["connect_args"] == {"connect_timeout": 3, "read_timeout": 7, "write_timeout": 7}
    assert mysql["pool_pre_ping"] is True and mysql["pool_recycle"] > 0
    mysqldb = db.connect_args(sa.engine.make_url("mysql+mysqldb://u@h/d"), 2.5, 0.5)
    assert mysqldb == {"connect_timeout": 3, "read_timeout": 1, "write_timeout": 1}  # whole seconds
    assert db.engine_options("mysql+pymysql://u@h/d", pooled=False)["poolclass"] is sa.pool.NullPool
    assert "connect_timeout" not in db.engine_options("sqlite:////tmp/x.db")["connect_args"]
    with pytest.raises(db.DatabaseURLError, match="connect_timeout must be > 0 and <= 5"):
        db.create_engine("sqlite://", connect_timeout=30)
