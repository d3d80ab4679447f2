"""The dictionary table: run-time settings kept in a database table (pure SQLAlchemy Core).

Two tables, created by :meth:`DictionaryStore.create_tables` on MySQL/MariaDB (production) and
SQLite (the embedded default):

``ml_dictionary`` (the name is configurable, it must be a plain identifier)
    ``key`` (primary key, at most 250 characters, case-sensitive), ``value`` (text, at most
    :data:`MAX_VALUE_BYTES` bytes of UTF-8), ``description``, ``updated_at`` (UTC), ``updated_by``.
``ml_dictionary_history``
    one row per change: ``action`` (``create`` / ``update`` / ``delete``), old and new value, old
    and new description, ``changed_by``, ``changed_at`` (UTC).

``key`` is a reserved word in MySQL; the column is always quoted. Values are always bound
parameters, never spliced into SQL. This module never imports Airflow: the secrets backend
(:mod:`airflow_ml_provider.secrets.dictionary`) and the ``airflow-ml dictionary`` CLI are thin
layers over it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from airflow_ml_provider.ml import db
from airflow_ml_provider.ml.db import mask_url

__all__ = [
    "DEFAULT_TABLE",
    "EXPORT_FORMAT",
    "MAX_CONNECT_TIMEOUT",
    "MAX_DESCRIPTION_CHARS",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "Change",
    "DictionaryError",
    "DictionaryStore",
    "DictionaryTableMissing",
    "DictionaryUnavailableError",
    "DictionaryValidationError",
    "Entry",
    "HistoryRecord",
    "ImportResult",
    "create_engine",
    "dump_export",
    "load_snapshot",
    "preload_driver",
    "mask_url",
    "parse_json_entries",
    "validate_description",
    "validate_key",
    "validate_table_name",
    "validate_value",
]

DEFAULT_TABLE = "ml_dictionary"
#: Longest key (characters), the same limit as Airflow's own ``variable.key`` column.
MAX_KEY_LENGTH = 250
#: Largest value, in bytes of UTF-8: what a MySQL ``TEXT`` column holds.
MAX_VALUE_BYTES = 65_535
MAX_DESCRIPTION_CHARS = 4_000
MAX_USER_CHARS = 128
#: A lookup must never hang: the connect timeout is capped at this many seconds.
MAX_CONNECT_TIMEOUT = db.MAX_CONNECT_TIMEOUT
DEFAULT_QUERY_TIMEOUT = 10.0
#: Longest table name: the history table and its index names must stay within MySQL's 64.
MAX_TABLE_NAME = 48
EXPORT_FORMAT = "airflow-ml-dictionary"
EXPORT_VERSION = 1

_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------------------------
# errors


class DictionaryError(Exception):
    """Base class of every dictionary error; the message is meant for the user."""


class DictionaryValidationError(DictionaryError, ValueError):
    """A bad key, value, description, table name or import file; the message names it."""


class DictionaryTableMissing(DictionaryError):
    """The dictionary table does not exist (yet) in the database."""


class DictionaryUnavailableError(DictionaryError):
    """The database cannot be reached or queried. ``database`` is the URL with the password masked."""

    def __init__(self, message: str, *, database: str) -> None:
        super().__init__(message)
        self.database = database


# --------------------------------------------------------------------------------------------
# validation


def validate_table_name(name: Any) -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, ``_``); else raise."""
    if not isinstance(name, str) or not _TABLE_RE.match(name):
        raise DictionaryValidationError(
            f"invalid dictionary table name {name!r}: use letters, digits and '_' only, "
            "starting with a letter or '_'"
        )
    if len(name) > MAX_TABLE_NAME:
        raise DictionaryValidationError(
            f"invalid dictionary table name {name!r}: longer than {MAX_TABLE_NAME} characters"
        )
    return name


def validate_key(key: Any) -> str:
    """Return ``key`` if it is a valid dictionary key; else raise :class:`DictionaryValidationError`.

    A key is a non-empty string of at most :data:`MAX_KEY_LENGTH` characters, without control
    characters and without leading or trailing whitespace (MySQL ignores trailing spaces when it
    compares strings, so ``"a "`` and ``"a"`` would collide).
    """
    if not isinstance(key, str):
        raise DictionaryValidationError(f"invalid dictionary key {key!r}: must be a string")
    if not key:
        raise DictionaryValidationError("invalid dictionary key '': a key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise DictionaryValidationError(
            f"invalid dictionary key {key[:40]!r}...: {len(key)} characters, the limit is {MAX_KEY_LENGTH}"
        )
    if _CONTROL_RE.search(key):
        raise DictionaryValidationError(f"invalid dictionary key {key!r}: contains a control character")
    if key != key.strip():
        raise DictionaryValidationError(
            f"invalid dictionary key {key!r}: leading or trailing whitespace is not allowed"
        )
    return key


def validate_value(value: Any, *, key: str = "?") -> str:
    """Return ``value`` if it is a string of at most :data:`MAX_VALUE_BYTES` bytes of UTF-8."""
    if not isinstance(value, str):
        raise DictionaryValidationError(
            f"invalid value for key {key!r}: must be a string, got {type(value).__name__}"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise DictionaryValidationError(f"invalid value for key {key!r}: not valid Unicode ({exc.reason})")
    if size > MAX_VALUE_BYTES:
        raise DictionaryValidationError(
            f"value for key {key!r} is too large: {size} bytes, the limit is {MAX_VALUE_BYTES}"
        )
    return value


def validate_description(description: Any, *, key: str = "?") -> str | None:
    if description is None:
        return None
    if not isinstance(description, str):
        raise DictionaryValidationError(
            f"invalid description for key {key!r}: must be a string, got {type(description).__name__}"
        )
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise DictionaryValidationError(
            f"description for key {key!r} is too long: {len(description)} characters, "
            f"the limit is {MAX_DESCRIPTION_CHARS}"
        )
    try:
        description.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DictionaryValidationError(f"invalid description for key {key!r}: {exc.reason}")
    return description


def _validate_user(user: str | None) -> str:
    user = user if user is not None else _default_user()
    if not isinstance(user, str):
        raise DictionaryValidationError(f"invalid user name {user!r}")
    return user[:MAX_USER_CHARS]


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry, no LOGNAME: still record something
        return os.environ.get("USER") or "unknown"


# --------------------------------------------------------------------------------------------
# engines and URLs


def create_engine(
    url: str | URL,
    *,
    connect_timeout: float = MAX_CONNECT_TIMEOUT,
    query_timeout: float = DEFAULT_QUERY_TIMEOUT,
    pooled: bool = True,
) -> sa.Engine:
    """An engine whose connections time out: connecting after ``connect_timeout`` (<= 5 s) and,
    where the driver allows, reading or writing after ``query_timeout`` seconds
    (:func:`airflow_ml_provider.ml.db.create_engine`)."""
    try:
        return db.create_engine(url, connect_timeout=connect_timeout, query_timeout=query_timeout, pooled=pooled)
    except db.DatabaseURLError as exc:
        raise DictionaryValidationError(str(exc).replace("not a valid SQLAlchemy URL", "invalid SQLAlchemy URL")) \
            from None


# --------------------------------------------------------------------------------------------
# tables


def build_tables(
    table: str = DEFAULT_TABLE, metadata: sa.MetaData | None = None
) -> tuple[sa.Table, sa.Table]:
    """The dictionary table and its history table, ``<table>_history``."""
    table = validate_table_name(table)
    metadata = metadata if metadata is not None else sa.MetaData()
    mysql_opts = db.MYSQL_TABLE_KW
    main = sa.Table(
        table,
        metadata,
        sa.Column("key", db.utf8_bin_string(MAX_KEY_LENGTH), primary_key=True, quote=True),
        sa.Column("value", db.utf8_bin_text(), nullable=False),
        sa.Column("description", db.utf8_bin_text(), nullable=True),
        sa.Column("updated_at", db.datetime6(), nullable=False),
        sa.Column("updated_by", sa.String(MAX_USER_CHARS), nullable=True),
        **mysql_opts,
    )
    history = sa.Table(
        f"{table}_history",
        metadata,
        sa.Column("id", db.big_id(), primary_key=True, autoincrement=True),
        sa.Column("key", db.utf8_bin_string(MAX_KEY_LENGTH), nullable=False, quote=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("old_value", db.utf8_bin_text(), nullable=True),
        sa.Column("new_value", db.utf8_bin_text(), nullable=True),
        sa.Column("old_description", db.utf8_bin_text(), nullable=True),
        sa.Column("new_description", db.utf8_bin_text(), nullable=True),
        sa.Column("changed_by", sa.String(MAX_USER_CHARS), nullable=True),
        sa.Column("changed_at", db.datetime6(), nullable=False),
        sa.Index(f"ix_{table}_history_key", "key", "id"),
        **mysql_opts,
    )
    return main, history


# --------------------------------------------------------------------------------------------
# records


def _utcnow() -> _dt.datetime:
    # Stored naive (UTC) so SQLite and MySQL DATETIME agree; returned aware.
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None)


def _aware(value: _dt.datetime | None) -> _dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=_dt.UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    description: str | None = None
    updated_at: _dt.datetime | None = None
    updated_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "description": self.description,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class HistoryRecord:
    id: int
    key: str
    action: str
    old_value: str | None
    new_value: str | None
    old_description: str | None
    new_description: str | None
    changed_by: str | None
    changed_at: _dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "action": self.action,
            "old_value": self.old_value,
            "new_value": self.new_value,
            "old_description": self.old_description,
            "new_description": self.new_description,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
        }


@dataclass(frozen=True)
class Change:
    """What :meth:`DictionaryStore.set` did: ``created``, ``updated`` or ``unchanged``."""

    key: str
    action: str
    old_value: str | None
    new_value: str


@dataclass(frozen=True)
class ImportResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]

    @property
    def total(self) -> int:
        return len(self.created) + len(self.updated) + len(self.unchanged)


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


#: Pass as ``description`` to :meth:`DictionaryStore.set` to keep the stored description.
KEEP = _Keep()


# --------------------------------------------------------------------------------------------
# the store


class _WriteConflict(Exception):
    """Internal: a concurrent writer got there first (duplicate key, deadlock, lock wait): retry."""


#: How many times a write transaction is tried when concurrent writers collide.
WRITE_ATTEMPTS = 5


def _retrying(fn, doing: str, database: str):
    try:
        return db.retry(fn, on=(), when=lambda exc: isinstance(exc, _WriteConflict), attempts=WRITE_ATTEMPTS)
    except _WriteConflict as exc:
        raise DictionaryError(
            f"{doing}: gave up after {WRITE_ATTEMPTS} attempts because of concurrent changes in {database} "
            f"({exc.__cause__})"
        ) from None


class DictionaryStore:
    """Read and change the dictionary table.

    :param url: a SQLAlchemy URL (``mysql+pymysql://user:pw@host/db``, ``sqlite:////path.db``) or an Engine.
    :param table: the table name (a plain identifier); the history table is ``<table>_history``.
    :param connect_timeout: seconds before a connection attempt fails (at most 5).
    :param query_timeout: seconds before a read/write on an open connection fails (MySQL drivers).
    :param pooled: keep connections in a pool (CLI, API server) or open one per use (task processes).
    """

    def __init__(
        self,
        url: str | URL | sa.Engine,
        table: str = DEFAULT_TABLE,
        *,
        connect_timeout: float = MAX_CONNECT_TIMEOUT,
        query_timeout: float = DEFAULT_QUERY_TIMEOUT,
        pooled: bool = True,
    ) -> None:
        self.table_name = validate_table_name(table)
        if isinstance(url, sa.Engine):
            self.engine = url
        else:
            self.engine = create_engine(
                url, connect_timeout=connect_timeout, query_timeout=query_timeout, pooled=pooled
            )
        self.database = mask_url(self.engine.url)
        self.metadata = sa.MetaData()
        self.table, self.history_table = build_tables(self.table_name, self.metadata)

    def __repr__(self) -> str:
        return f"DictionaryStore({self.database!r}, table={self.table_name!r})"

    def dispose(self) -> None:
        self.engine.dispose()

    # -- connections ------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException, doing: str) -> DictionaryUnavailableError:
        orig = db.driver_error(exc)
        detail = db.scrub(str(orig), self.engine.url)
        return DictionaryUnavailableError(
            f"dictionary database {self.database} unavailable while {doing}: {type(orig).__name__}: {detail}",
            database=self.database,
        )

    @contextmanager
    def _begin(self, doing: str, *, write: bool = False) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except DictionaryError:
            raise
        except sa.exc.DBAPIError as exc:
            kind = db.classify(exc)
            if write and kind in (db.CONFLICT, db.LOCKED, db.DISCONNECTED):
                raise _WriteConflict() from exc  # retried by _retrying (set/import are idempotent)
            if kind == db.MISSING_TABLE:
                raise DictionaryTableMissing(
                    f"dictionary table {self.table_name!r} not found in {self.database}: "
                    "create it with `airflow-ml dictionary init`"
                ) from None
            raise self._unavailable(exc, doing) from None
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise self._unavailable(exc, doing) from None

    def create_tables(self) -> None:
        """Create the dictionary and history tables if they do not exist (idempotent)."""
        with self._begin("creating the tables") as conn:
            self.metadata.create_all(conn, checkfirst=True)

    # -- reads ------------------------------------------------------------------------------

    def load(self, prefix: str | None = None, *, create_missing: bool = False) -> dict[str, str]:
        """Every ``key -> value`` (only keys starting with ``prefix`` if given), in ONE query.

        With ``create_missing`` a missing table is created and an empty dictionary returned.
        """
        t = self.table
        query = sa.select(t.c.key, t.c.value)
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(t.c.key.like(escaped + "%", escape="\\"))
        try:
            with self._begin("loading the dictionary") as conn:
                rows = conn.execute(query).all()
        except DictionaryTableMissing:
            if create_missing:
                self.create_tables()
                return {}
            raise
        # LIKE is case-insensitive on SQLite: filter exactly here.
        return {k: v for k, v in rows if not prefix or k.startswith(prefix)}

    def get(self, key: str) -> Entry | None:
        key = validate_key(key)
        t = self.table
        with self._begin(f"reading key {key!r}") as conn:
            row = conn.execute(sa.select(t).where(t.c.key == key)).first()
        return self._entry(row) if row is not None else None

    def list(self, prefix: str | None = None) -> list[Entry]:
        t = self.table
        query = sa.select(t).order_by(t.c.key)
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(t.c.key.like(escaped + "%", escape="\\"))
        with self._begin("listing the dictionary") as conn:
            rows = conn.execute(query).all()
        entries = [self._entry(r) for r in rows if not prefix or r.key.startswith(prefix)]
        entries.sort(key=lambda e: e.key)  # code-point order whatever the collation
        return entries

    def history(
        self, key: str | None = None, *, prefix: str | None = None, limit: int | None = None
    ) -> list[HistoryRecord]:
        """Changes, newest first (of one key, or of keys under ``prefix``)."""
        h = self.history_table
        query = sa.select(h).order_by(h.c.id.desc())
        if key is not None:
            query = query.where(h.c.key == validate_key(key))
        elif prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(h.c.key.like(escaped + "%", escape="\\"))
        if limit is not None:
            query = query.limit(int(limit))
        with self._begin("reading the history") as conn:
            rows = conn.execute(query).all()
        return [
            HistoryRecord(
                id=r.id,
                key=r.key,
                action=r.action,
                old_value=r.old_value,
                new_value=r.new_value,
                old_description=r.old_description,
                new_description=r.new_description,
                changed_by=r.changed_by,
                changed_at=_aware(r.changed_at),
            )
            for r in rows
            if key is not None or not prefix or r.key.startswith(prefix)
        ]

    @staticmethod
    def _entry(row: Any) -> Entry:
        return Entry(
            key=row.key,
            value=row.value,
            description=row.description,
            updated_at=_aware(row.updated_at),
            updated_by=row.updated_by,
        )

    # -- writes -----------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: str,
        *,
        description: str | None | _Keep = KEEP,
        updated_by: str | None = None,
    ) -> Change:
        """Create or change one key, recording the change in the history table.

        ``description=KEEP`` (the default) keeps the stored description.
        """
        key = validate_key(key)
        value = validate_value(value, key=key)
        if description is not KEEP:
            description = validate_description(description, key=key)
        user = _validate_user(updated_by)

        def attempt() -> Change:
            with self._begin(f"setting key {key!r}", write=True) as conn:
                return self._set(conn, key, value, description, user, _utcnow())

        return _retrying(attempt, f"setting key {key!r}", self.database)

    def _set(
        self, conn: sa.Connection, key: str, value: str, description: Any, user: str, now: _dt.datetime
    ) -> Change:
        t, h = self.table, self.history_table
        row = conn.execute(
            sa.select(t.c.value, t.c.description).where(t.c.key == key).with_for_update()
        ).first()
        if row is None:
            new_desc = None if description is KEEP else description
            conn.execute(
                t.insert().values(key=key, value=value, description=new_desc, updated_at=now, updated_by=user)
            )
            conn.execute(
                h.insert().values(
                    key=key,
                    action="create",
                    old_value=None,
                    new_value=value,
                    old_description=None,
                    new_description=new_desc,
                    changed_by=user,
                    changed_at=now,
                )
            )
            return Change(key, "created", None, value)
        new_desc = row.description if description is KEEP else description
        if row.value == value and row.description == new_desc:
            return Change(key, "unchanged", row.value, value)
        conn.execute(
            t.update()
            .where(t.c.key == key)
            .values(value=value, description=new_desc, updated_at=now, updated_by=user)
        )
        conn.execute(
            h.insert().values(
                key=key,
                action="update",
                old_value=row.value,
                new_value=value,
                old_description=row.description,
                new_description=new_desc,
                changed_by=user,
                changed_at=now,
            )
        )
        return Change(key, "updated", row.value, value)

    def delete(self, key: str, *, updated_by: str | None = None) -> Entry | None:
        """Delete one key; returns the deleted entry, or None if there was no such key."""
        key = validate_key(key)
        user = _validate_user(updated_by)
        return _retrying(lambda: self._delete(key, user), f"deleting key {key!r}", self.database)

    def _delete(self, key: str, user: str) -> Entry | None:
        t, h = self.table, self.history_table
        with self._begin(f"deleting key {key!r}", write=True) as conn:
            row = conn.execute(sa.select(t).where(t.c.key == key).with_for_update()).first()
            if row is None:
                return None
            conn.execute(t.delete().where(t.c.key == key))
            conn.execute(
                h.insert().values(
                    key=key,
                    action="delete",
                    old_value=row.value,
                    new_value=None,
                    old_description=row.description,
                    new_description=None,
                    changed_by=user,
                    changed_at=_utcnow(),
                )
            )
        return self._entry(row)

    def import_entries(
        self,
        entries: Iterable[tuple[str, str, str | None | _Keep]],
        *,
        updated_by: str | None = None,
        source: str = "<input>",
    ) -> ImportResult:
        """Set many keys in ONE transaction: every entry is validated first, so a bad entry
        changes nothing. ``entries`` are ``(key, value, description-or-KEEP)`` triples."""
        checked: dict[str, tuple[str, Any]] = {}
        for item in entries:
            key, value, description = item
            try:
                key = validate_key(key)
                value = validate_value(value, key=key)
                if description is not KEEP:
                    description = validate_description(description, key=key)
            except DictionaryValidationError as exc:
                raise DictionaryValidationError(f"{source}: {exc}") from None
            checked[key] = (value, description)
        user = _validate_user(updated_by)

        def attempt() -> ImportResult:
            result = ImportResult([], [], [])
            now = _utcnow()
            with self._begin(f"importing {source}", write=True) as conn:
                for key, (value, description) in checked.items():
                    change = self._set(conn, key, value, description, user, now)
                    getattr(result, change.action).append(key)
            return result

        return _retrying(attempt, f"importing {source}", self.database)

    def export_entries(self, prefix: str | None = None) -> list[Entry]:
        return self.list(prefix)


# --------------------------------------------------------------------------------------------
# the snapshot load of the secrets backend: one connection, one query, nothing else


def _like_prefix(prefix: str) -> str:
    # "!" as the LIKE escape character reads the same on MySQL (whatever its sql_mode) and SQLite
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _direct_connect(url: URL, connect_timeout: float, query_timeout: float):
    """(DBAPI connection, quote character, paramstyle) for the drivers connected directly, else None.

    Going straight to the driver skips SQLAlchemy's first-connect dialect initialisation (several
    round trips: version, sql_mode, collations...), which would dominate a task's cold lookup.
    """
    backend, driver = url.get_backend_name(), url.get_driver_name()
    query = dict(url.query)
    if backend in ("mysql", "mariadb") and driver == "pymysql" and set(query) <= {"charset"}:
        import pymysql

        conn = pymysql.connect(
            host=url.host or "localhost",
            port=url.port or 3306,
            user=url.username or "",
            password=url.password or "",
            database=url.database,
            charset=query.get("charset", "utf8mb4"),
            connect_timeout=connect_timeout,
            read_timeout=query_timeout,
            write_timeout=query_timeout,
            autocommit=None,  # one SELECT: leave the server default, save a round trip
        )
        return conn, "`", "format"
    if (
        backend == "sqlite"
        and driver == "pysqlite"
        and not query
        and url.database not in (None, "", ":memory:")
    ):
        import sqlite3

        return sqlite3.connect(url.database, timeout=connect_timeout), '"', "qmark"
    return None


def preload_driver(url: str | URL) -> None:
    """Import the DBAPI driver :func:`load_snapshot` will use for ``url`` (pymysql: ~30 ms).

    The secrets backend calls this when it is built -- in a real worker that is the supervisor,
    before it forks the task process -- so a task's first lookup pays only connect + query.
    """
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        if parsed.get_backend_name() in ("mysql", "mariadb") and parsed.get_driver_name() == "pymysql":
            import pymysql  # noqa: F401
        elif parsed.get_backend_name() == "sqlite":
            import sqlite3  # noqa: F401
    except Exception:  # noqa: BLE001, S110 - a bad URL or a missing driver is reported by the first load
        pass


def load_snapshot(
    url: str | URL,
    table: str = DEFAULT_TABLE,
    prefix: str | None = None,
    *,
    connect_timeout: float = MAX_CONNECT_TIMEOUT,
    query_timeout: float = DEFAULT_QUERY_TIMEOUT,
) -> dict[str, str]:
    """Every ``key -> value`` of the table (under ``prefix``) with ONE connection and ONE query.

    ``mysql+pymysql`` and file SQLite URLs are read with the driver directly; any other URL goes
    through SQLAlchemy (:meth:`DictionaryStore.load`). The value is always a bound parameter; the
    table name is a validated identifier. Raises :class:`DictionaryTableMissing` when the table
    does not exist and :class:`DictionaryUnavailableError` (URL masked) when the database cannot
    be reached.
    """
    table = validate_table_name(table)
    parsed = url if isinstance(url, URL) else make_url(url)
    database = mask_url(parsed)
    try:
        direct = _direct_connect(parsed, connect_timeout, query_timeout)
    except Exception as exc:  # noqa: BLE001 - the driver's connect errors (refused, timeout, auth)
        detail = db.scrub(str(exc), parsed)
        raise DictionaryUnavailableError(
            f"dictionary database {database} unavailable while loading the dictionary: "
            f"{type(exc).__name__}: {detail}",
            database=database,
        ) from None
    if direct is None:
        store = DictionaryStore(
            parsed, table, connect_timeout=connect_timeout, query_timeout=query_timeout, pooled=False
        )
        try:
            return store.load(prefix)
        finally:
            store.dispose()
    conn, q, paramstyle = direct
    mark = "%s" if paramstyle == "format" else "?"
    sql = f"SELECT {q}key{q}, {q}value{q} FROM {q}{table}{q}"
    params: tuple[str, ...] = ()
    if prefix:
        sql += f" WHERE {q}key{q} LIKE {mark} ESCAPE '!'"
        params = (_like_prefix(prefix),)
    try:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    except Exception as exc:  # noqa: BLE001 - DBAPI errors differ per driver
        if db.is_missing_table(exc):
            raise DictionaryTableMissing(f"dictionary table {table!r} not found in {database}") from None
        detail = db.scrub(str(exc), parsed)
        raise DictionaryUnavailableError(
            f"dictionary database {database} unavailable while loading the dictionary: "
            f"{type(exc).__name__}: {detail}",
            database=database,
        ) from None
    finally:
        with contextlib.suppress(Exception):  # a connection the server already dropped
            conn.close()
    return {k: v for k, v in rows if not prefix or k.startswith(prefix)}


# --------------------------------------------------------------------------------------------
# import / export formats


def dump_export(entries: Iterable[Entry], *, strip_prefix: str = "") -> str:
    """The export document (JSON): ``{"format", "version", "entries": [{key, value, description}]}``.

    It carries no timestamps, so exporting, importing and exporting again gives the same bytes.
    """
    doc = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "entries": [
            {"key": e.key[len(strip_prefix) :], "value": e.value, "description": e.description}
            for e in sorted(entries, key=lambda e: e.key)
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _json_value(value: Any) -> str:
    # A plain string is stored as is; anything else as its JSON text, so {{ var.json.x }} reads it back.
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_json_entries(text: str, *, source: str = "<string>") -> list[tuple[str, str, Any]]:
    """Entries of a JSON import file.

    Two shapes are read: the export document written by :func:`dump_export`, and a flat object
    ``{"key": value}`` (what ``airflow variables export`` writes). In a flat object a non-string
    value is stored as its JSON text. Descriptions absent from the file keep the stored ones.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DictionaryValidationError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(doc, dict):
        raise DictionaryValidationError(
            f'{source}: expected a JSON object (an export document or {{"key": value}}), '
            f"got {type(doc).__name__}"
        )
    if doc.get("format") == EXPORT_FORMAT and "entries" in doc:
        version = doc.get("version")
        if version != EXPORT_VERSION:
            raise DictionaryValidationError(
                f"{source}: unsupported export version {version!r} (this version reads {EXPORT_VERSION})"
            )
        raw = doc["entries"]
        if not isinstance(raw, list):
            raise DictionaryValidationError(f"{source}: 'entries' must be a list")
        out: list[tuple[str, str, Any]] = []
        for index, item in enumerate(raw):
            where = f"{source}: entries[{index}]"
            if not isinstance(item, dict):
                raise DictionaryValidationError(f"{where}: expected an object with key and value")
            unknown = set(item) - {"key", "value", "description"}
            if unknown:
                raise DictionaryValidationError(f"{where}: unknown field(s) {sorted(unknown)}")
            if "key" not in item or "value" not in item:
                missing = "key" if "key" not in item else "value"
                raise DictionaryValidationError(f"{where}: missing field {missing!r}")
            key = item["key"]
            if not isinstance(key, str):
                raise DictionaryValidationError(f"{where}: 'key' must be a string")
            if not isinstance(item["value"], str):
                raise DictionaryValidationError(f"{where} (key {key!r}): 'value' must be a string")
            out.append((key, item["value"], item.get("description", KEEP)))
        return out
    return [(key, _json_value(value), KEEP) for key, value in doc.items()]


def entries_from_mapping(mapping: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    return [(k, v, KEEP) for k, v in mapping.items()]
