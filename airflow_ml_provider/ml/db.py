"""The one database layer of the model registry and the dictionary table (pure core, no Airflow).

* **URLs**: :func:`make_url` / :func:`normalize_url` (``mysql://`` -> ``mysql+pymysql://``, utf8mb4),
  :func:`url_from_connection` (Airflow-style connection fields -> URL), and the ONE password masker:
  :func:`mask_url` for URLs and :func:`scrub` for driver messages that may echo a password.
* **engines**: :func:`create_engine` -- pre-ping and recycling on server databases, connect and
  read/write timeouts in each driver's own terms, SQLite in WAL mode with a busy timeout.
* **types**: the MySQL/MariaDB variants both schemas use (:func:`datetime6`, :func:`long_text`,
  :func:`utf8_bin_string`, :func:`utf8_bin_text`, :data:`MYSQL_TABLE_KW`).
* **errors**: :func:`classify` sorts a failure by the DRIVER's error code (pymysql/MySQLdb
  ``args[0]``, SQLite ``sqlite_errorcode``, PostgreSQL SQLSTATE), not by its message text. SQLite
  reports a missing table with the generic ``SQLITE_ERROR`` code only, so that one case also reads
  the message's fixed prefix ``no such table``.
* **retries**: :func:`retry`, the one retry helper (tenacity), for lock conflicts, lost connections
  and lost races.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL

__all__ = [
    "CONFLICT",
    "DISCONNECTED",
    "LOCKED",
    "MISSING_TABLE",
    "MYSQL_TABLE_KW",
    "OTHER",
    "TABLE_EXISTS",
    "UNREACHABLE",
    "DatabaseURLError",
    "classify",
    "connect_args",
    "create_engine",
    "datetime6",
    "driver_error",
    "error_code",
    "is_missing_table",
    "long_text",
    "make_url",
    "mask_url",
    "normalize_url",
    "retry",
    "scrub",
    "url_from_connection",
    "utf8_bin_string",
    "utf8_bin_text",
]

T = TypeVar("T")

#: The longest a connection attempt may take, in seconds (a lookup must never hang).
MAX_CONNECT_TIMEOUT = 5.0
DEFAULT_QUERY_TIMEOUT = 30.0
#: How long SQLite waits for a lock before SQLITE_BUSY, in seconds.
SQLITE_BUSY_TIMEOUT = 30.0


class DatabaseURLError(ValueError):
    """A database URL or connection that cannot be used; the message masks any password."""


# ------------------------------------------------------------------------------------------------
# URLs and password masking (the one place)


def mask_url(url: str | URL | sa.Engine | None) -> str:
    """The URL as text with its password replaced by ``***`` (never raises)."""
    if url is None:
        return ""
    if isinstance(url, sa.Engine):
        url = url.url
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.engine.make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a parseable URL: mask anything shaped like user:password@
        from airflow_ml_provider.ml.storage import mask_uri

        return mask_uri(str(url))


def scrub(text: str, url: str | URL | sa.Engine | None) -> str:
    """``text`` (e.g. a driver's message) with the URL's password replaced by ``***``."""
    if isinstance(url, sa.Engine):
        url = url.url
    if isinstance(url, str):
        try:
            url = sa.engine.make_url(url)
        except Exception:  # noqa: BLE001
            return text
    password = getattr(url, "password", None)
    if password and len(str(password)) >= 3:  # shorter ones would mangle ordinary words
        text = text.replace(str(password), "***")
    return text


def make_url(url: str | URL) -> URL:
    """Parse a SQLAlchemy URL; :class:`DatabaseURLError` (password masked) if it is not one."""
    if isinstance(url, URL):
        return url
    text = str(url).strip()
    if not text:
        raise DatabaseURLError("empty database URL")
    try:
        return sa.engine.make_url(text)
    except Exception as exc:  # noqa: BLE001 - ArgumentError, ValueError...
        raise DatabaseURLError(
            f"not a valid SQLAlchemy URL: {mask_url(text)!r} ({exc.__class__.__name__})"
        ) from None


def normalize_url(url: str | URL) -> URL:
    """:func:`make_url`, with ``mysql://`` / ``mariadb://`` as ``mysql+pymysql://`` and
    ``charset=utf8mb4`` on MySQL URLs that name no charset."""
    parsed = make_url(url)
    if parsed.drivername in ("mysql", "mariadb", "mariadb+pymysql"):
        parsed = parsed.set(drivername="mysql+pymysql")
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def url_from_connection(
    conn_type: str | None,
    *,
    host: str | None = None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
    what: str = "the database",
) -> URL:
    """Turn the fields of an Airflow-style connection into a SQLAlchemy URL.

    * ``extra["sqlalchemy_url"]`` (any conn type) wins;
    * ``mysql`` / ``mariadb`` / ``ml_registry``: ``mysql+pymysql://login:password@host:port/schema``;
    * ``postgres``: ``postgresql://login:password@host:port/schema``;
    * ``sqlite``: the database file is ``host`` (Airflow's convention) or else ``schema``;
      an empty path means an in-memory database.
    """
    extra = dict(extra or {})
    if extra.get("sqlalchemy_url"):
        return normalize_url(str(extra["sqlalchemy_url"]))
    kind = (conn_type or "").lower().replace("-", "_")
    if kind in ("mysql", "mariadb", "mysql+pymysql", "ml_registry"):
        query = {"charset": str(extra.get("charset") or "utf8mb4")}
        if extra.get("unix_socket"):
            query["unix_socket"] = str(extra["unix_socket"])
        return URL.create(
            "mysql+pymysql",
            username=login or None,
            password=password or None,
            host=host or "localhost",
            port=int(port) if port else None,
            database=schema or None,
            query=query,
        )
    if kind in ("postgres", "postgresql"):
        return URL.create(
            "postgresql",
            username=login or None,
            password=password or None,
            host=host or "localhost",
            port=int(port) if port else None,
            database=schema or None,
        )
    if kind == "sqlite":
        path = host or schema or ""
        return URL.create("sqlite", database=path or None)
    raise DatabaseURLError(
        f"connection type {conn_type!r} is not supported for {what} "
        "(use a mysql or sqlite connection, or put 'sqlalchemy_url' in the connection extra)"
    )


# ------------------------------------------------------------------------------------------------
# engines


def connect_args(url: URL, connect_timeout: float = MAX_CONNECT_TIMEOUT,
                 query_timeout: float = DEFAULT_QUERY_TIMEOUT) -> dict[str, Any]:
    """The DBAPI ``connect()`` arguments that bound connecting and each read/write, per driver."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend in ("mysql", "mariadb"):
        if driver == "pymysql":
            return {"connect_timeout": connect_timeout, "read_timeout": query_timeout,
                    "write_timeout": query_timeout}
        if driver in ("mysqldb", "mysqlclient"):  # whole seconds only
            return {"connect_timeout": max(1, math.ceil(connect_timeout)),
                    "read_timeout": max(1, math.ceil(query_timeout)),
                    "write_timeout": max(1, math.ceil(query_timeout))}
        if driver == "mysqlconnector":
            return {"connection_timeout": max(1, math.ceil(connect_timeout))}
        return {}
    if backend == "postgresql":
        if driver in ("psycopg2", "psycopg"):
            return {"connect_timeout": max(1, math.ceil(connect_timeout))}
        return {}
    if backend == "sqlite":
        # The driver's "timeout" is SQLite's busy timeout: how long a writer waits for the lock.
        return {"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
    return {}


def engine_options(url: str | URL, *, connect_timeout: float = MAX_CONNECT_TIMEOUT,
                   query_timeout: float = DEFAULT_QUERY_TIMEOUT, pooled: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``sqlalchemy.create_engine`` (see :func:`create_engine`)."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"connect_args": connect_args(parsed, connect_timeout, query_timeout)}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = sa.pool.StaticPool  # one shared in-memory database
        elif not pooled:
            kwargs["poolclass"] = sa.pool.NullPool
        return kwargs
    if pooled:
        kwargs["pool_pre_ping"] = True  # a connection the server dropped is replaced, not used
        kwargs["pool_recycle"] = 1800  # below MySQL's default wait_timeout of 8 h, and proxies' idle cuts
    else:
        kwargs["poolclass"] = sa.pool.NullPool
    return kwargs


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        # WAL: readers do not block the writer (the service polls while a DAG publishes).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    finally:
        cursor.close()


def create_engine(
    url: str | URL,
    *,
    connect_timeout: float = MAX_CONNECT_TIMEOUT,
    query_timeout: float = DEFAULT_QUERY_TIMEOUT,
    pooled: bool = True,
) -> sa.Engine:
    """An engine whose connections time out: connecting after ``connect_timeout`` seconds (at
    most :data:`MAX_CONNECT_TIMEOUT`), each read/write after ``query_timeout`` where the driver can.
    Pooled engines pre-ping; ``pooled=False`` opens one connection per use (task processes).
    SQLite files run in WAL mode with a 30 s busy timeout.

    :raises DatabaseURLError: a bad URL, a missing driver, a bad timeout (password masked).
    """
    if not isinstance(connect_timeout, (int, float)) or not 0 < connect_timeout <= MAX_CONNECT_TIMEOUT:
        raise DatabaseURLError(
            f"connect_timeout must be > 0 and <= {MAX_CONNECT_TIMEOUT:g} seconds, got {connect_timeout!r}"
        )
    if not isinstance(query_timeout, (int, float)) or query_timeout <= 0:
        raise DatabaseURLError(f"query_timeout must be > 0 seconds, got {query_timeout!r}")
    parsed = make_url(url)
    try:
        engine = sa.create_engine(parsed, **engine_options(
            parsed, connect_timeout=float(connect_timeout), query_timeout=float(query_timeout), pooled=pooled))
    except Exception as exc:  # noqa: BLE001 - e.g. the driver is not installed
        raise DatabaseURLError(f"cannot use database {mask_url(parsed)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    return engine


# ------------------------------------------------------------------------------------------------
# column types shared by the registry and the dictionary


def datetime6() -> sa.types.TypeEngine:
    """DATETIME with microseconds on MySQL/MariaDB (their default drops them)."""
    from sqlalchemy.dialects import mysql

    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def long_text() -> sa.types.TypeEngine:
    """Text up to 16 MiB on MySQL/MariaDB (``TEXT`` stops at 64 KiB)."""
    from sqlalchemy.dialects import mysql

    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def utf8_bin_string(length: int) -> sa.types.TypeEngine:
    """VARCHAR compared case- and accent-sensitively on MySQL/MariaDB (their defaults are not)."""
    from sqlalchemy.dialects import mysql

    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")


def utf8_bin_text() -> sa.types.TypeEngine:
    from sqlalchemy.dialects import mysql

    return sa.Text().with_variant(mysql.TEXT(charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")


def big_id() -> sa.types.TypeEngine:
    """A BIGINT primary key (INTEGER on SQLite, where only that autoincrements)."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


MYSQL_TABLE_KW: dict[str, str] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_bin",
}


# ------------------------------------------------------------------------------------------------
# error classification by driver error codes

MISSING_TABLE = "missing_table"  # the table does not exist (yet)
TABLE_EXISTS = "table_exists"  # CREATE TABLE lost a race with another creator
LOCKED = "locked"  # deadlock, lock wait timeout, SQLITE_BUSY / SQLITE_LOCKED: try again
CONFLICT = "conflict"  # a unique/primary key already taken (lost a race)
DISCONNECTED = "disconnected"  # an open connection was lost (server gone away, lost during query)
UNREACHABLE = "unreachable"  # could not connect at all (refused, timeout, unknown host)
OTHER = "other"

# MySQL / MariaDB client and server error numbers (the same for pymysql and MySQLdb).
_MYSQL_CODES: dict[int, str] = {
    1146: MISSING_TABLE,  # ER_NO_SUCH_TABLE
    1050: TABLE_EXISTS,  # ER_TABLE_EXISTS_ERROR
    1205: LOCKED,  # ER_LOCK_WAIT_TIMEOUT
    1213: LOCKED,  # ER_LOCK_DEADLOCK
    1062: CONFLICT,  # ER_DUP_ENTRY
    1586: CONFLICT,  # ER_DUP_ENTRY_WITH_KEY_NAME
    2006: DISCONNECTED,  # CR_SERVER_GONE_ERROR
    2013: DISCONNECTED,  # CR_SERVER_LOST
    2055: DISCONNECTED,  # CR_SERVER_LOST_EXTENDED
    4031: DISCONNECTED,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    1927: DISCONNECTED,  # ER_CONNECTION_KILLED (MariaDB)
    2002: UNREACHABLE,  # CR_CONNECTION_ERROR (socket)
    2003: UNREACHABLE,  # CR_CONN_HOST_ERROR
    2005: UNREACHABLE,  # CR_UNKNOWN_HOST
    1040: UNREACHABLE,  # ER_CON_COUNT_ERROR (too many connections)
}
# SQLite primary result codes (``sqlite_errorcode & 0xff``).
_SQLITE_CODES: dict[int, str] = {
    5: LOCKED,  # SQLITE_BUSY
    6: LOCKED,  # SQLITE_LOCKED
    19: CONFLICT,  # SQLITE_CONSTRAINT
    14: UNREACHABLE,  # SQLITE_CANTOPEN
}
# PostgreSQL SQLSTATE codes.
_PG_CODES: dict[str, str] = {
    "42P01": MISSING_TABLE,  # undefined_table
    "42P07": TABLE_EXISTS,  # duplicate_table
    "40P01": LOCKED,  # deadlock_detected
    "40001": LOCKED,  # serialization_failure
    "55P03": LOCKED,  # lock_not_available
    "23505": CONFLICT,  # unique_violation
    "57P01": DISCONNECTED,  # admin_shutdown
    "08006": DISCONNECTED,  # connection_failure
    "08003": DISCONNECTED,  # connection_does_not_exist
    "08001": UNREACHABLE,  # sqlclient_unable_to_establish_sqlconnection
}
_SQLITE_ERROR = 1


def driver_error(exc: BaseException) -> BaseException:
    """The DBAPI driver's exception behind a SQLAlchemy one (or ``exc`` itself)."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def error_code(exc: BaseException) -> int | str | None:
    """The driver's error code: MySQL's number, SQLite's extended result code, PostgreSQL's SQLSTATE."""
    err = driver_error(exc)
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    for attr in ("sqlstate", "pgcode"):
        code = getattr(err, attr, None)
        if isinstance(code, str) and code:
            return code
    args = getattr(err, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


def classify(exc: BaseException) -> str:
    """One of :data:`MISSING_TABLE`, :data:`TABLE_EXISTS`, :data:`LOCKED`, :data:`CONFLICT`,
    :data:`DISCONNECTED`, :data:`UNREACHABLE`, :data:`OTHER` -- from the driver's error code."""
    err = driver_error(exc)
    code = error_code(err)
    if getattr(err, "sqlite_errorcode", None) is not None:
        primary = int(code) & 0xFF
        if primary == _SQLITE_ERROR:
            # SQLite has no code of its own for these: its fixed message prefixes are the only signal.
            text = str(err)
            if text.startswith("no such table"):
                return MISSING_TABLE
            if text.startswith("table") and text.endswith("already exists"):
                return TABLE_EXISTS
            return OTHER
        return _SQLITE_CODES.get(primary, OTHER)
    if isinstance(code, str):
        return _PG_CODES.get(code, OTHER)
    if isinstance(code, int):
        return _MYSQL_CODES.get(code, OTHER)
    if isinstance(exc, sa.exc.IntegrityError):
        return CONFLICT
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return DISCONNECTED
    return OTHER


def is_missing_table(exc: BaseException) -> bool:
    """The one rule for "the table does not exist (yet)"."""
    return classify(exc) == MISSING_TABLE


def driver_message(exc: BaseException) -> str:
    """The first line of the driver's message (for error messages; pass it through :func:`scrub`)."""
    lines = str(driver_error(exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# retries


def retry(
    fn: Callable[[], T],
    *,
    on: Iterable[str] = (LOCKED,),
    when: Callable[[BaseException], bool] | None = None,
    attempts: int = 5,
    wait_seconds: float = 0.02,
    max_wait_seconds: float = 1.0,
    before_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Call ``fn()``; when it raises an error that :func:`classify` puts in ``on``, call it again,
    up to ``attempts`` times in all, with a jittered exponential wait. ``when(exc)``, if given, also
    makes an error retryable. The last error is re-raised as it is; any other error at once.
    ``before_retry(exc)`` runs before each new attempt (e.g. to create a missing table)."""
    import tenacity

    kinds = frozenset(on)

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, Exception):
            return False
        return (when is not None and when(exc)) or classify(exc) in kinds

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if before_retry is not None and state.outcome is not None:
            before_retry(state.outcome.exception())

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, int(attempts))),
        wait=tenacity.wait_random_exponential(multiplier=wait_seconds, max=max_wait_seconds),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
