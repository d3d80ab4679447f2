"""Airflow Variables served from the dictionary table (``ml_dictionary``).

Point Airflow at it in ``airflow.cfg`` (both places; ``[workers]`` is what task processes read,
``[secrets]`` what the API server and the other server components read, and workers fall back to
it when ``[workers] secrets_backend`` is empty)::

    [workers]
    secrets_backend = airflow_ml_provider.secrets.dictionary.DictionaryTableBackend
    secrets_backend_kwargs = {"sql_alchemy_conn": "mysql+pymysql://user:pw@db/ml", "cache_ttl_seconds": 60}

    [secrets]
    backend = airflow_ml_provider.secrets.dictionary.DictionaryTableBackend
    backend_kwargs = {"sql_alchemy_conn": "mysql+pymysql://user:pw@db/ml", "cache_ttl_seconds": 60}

Without ``sql_alchemy_conn`` (or ``table`` / ``key_prefix``) the backend uses the dictionary
settings of :mod:`airflow_ml_provider.ml.settings`, as the CLI and the UI do: ``[ml] dictionary_conn``
(``AIRFLOW__ML__DICTIONARY_CONN``), else ``$AIRFLOW_ML_DICTIONARY``, else the embedded
``$AIRFLOW_ML_HOME/dictionary.db`` (docs/configuration.md). So ``backend =
airflow_ml_provider.secrets.dictionary.DictionaryTableBackend`` alone is a working set-up.

Lookup order: this backend first, then environment variables (``AIRFLOW_VAR_*``), then Airflow's
metastore (through the API server in a task). A key that is not in the dictionary returns None, so
Airflow falls through to the next source.

Caching: a process loads the whole dictionary (or the keys under ``key_prefix``) in ONE query at
its first lookup and answers every later lookup from memory. The snapshot is reloaded after
``cache_ttl_seconds`` (long-lived processes) and in every new process (a task run), so a change is
seen by the next task run without a restart. If the database cannot be reached, a snapshot
younger than ``stale_grace_seconds`` keeps being served with a warning; otherwise the lookup raises
:class:`DictionaryBackendUnavailable`, which names the key and the database (password masked).
Masking of sensitive-looking keys is done by Airflow itself when the value is returned, exactly as
for its own Variables.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.dictionary_store import (
    MAX_CONNECT_TIMEOUT,
    MAX_KEY_LENGTH,
    DictionaryError,
    DictionaryStore,
    DictionaryTableMissing,
    DictionaryValidationError,
    load_snapshot,
    mask_url,
    preload_driver,
    validate_key,
    validate_table_name,
)

try:  # Airflow 3 (task SDK): the base every worker- and server-side backend derives from.
    from airflow.sdk.bases.secrets_backend import BaseSecretsBackend
except ImportError:  # pragma: no cover - older Airflow
    from airflow.secrets import BaseSecretsBackend  # type: ignore[no-redef]

try:
    # The one exception Airflow's Variable lookup does not swallow: every other exception a backend
    # raises is logged and the lookup falls through to env vars / the metastore, which would hide an
    # outage (or serve an out-of-date metastore value) instead of failing the task clearly.
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied as _NoFallThrough
except ImportError:  # pragma: no cover - task-sdk < 1.2.2

    class _NoFallThrough(PermissionError):  # type: ignore[no-redef]
        pass


log = logging.getLogger(__name__)

DEFAULT_CACHE_TTL_SECONDS = 60.0
DEFAULT_STALE_GRACE_SECONDS = 300.0
DEFAULT_CONNECT_TIMEOUT = 3.0
#: After a failed refresh, wait this long (at most) before trying the database again, so a
#: dead database costs one connect timeout per interval rather than one per lookup.
MAX_RETRY_INTERVAL = 5.0


class DictionaryBackendUnavailable(_NoFallThrough):
    """The dictionary cannot answer and no fresh-enough snapshot is held.

    Raised from ``get_variable``; Airflow propagates it to the caller (``Variable.get`` or the
    template) instead of silently trying the next secrets backend.
    """

    def __init__(self, message: str, *, key: str, database: str) -> None:
        super().__init__(message)
        self.key = key
        self.database = database


@dataclass
class _Snapshot:
    values: dict[str, str] | None = None
    loaded_at: float = 0.0  # time.monotonic() of the last successful load
    pid: int = 0  # the process that loaded it (a forked child reloads)
    failed_at: float | None = None
    last_error: str | None = None
    loads: int = 0
    load_seconds: float = 0.0  # how long the last successful load took (connect + one query)
    lock: threading.Lock = field(default_factory=threading.Lock)


# One snapshot per (database, table, prefix), shared by every backend instance of the process.
_SNAPSHOTS: dict[tuple[str, str, str], _Snapshot] = {}
_SNAPSHOTS_LOCK = threading.Lock()


def _number(name: str, value: Any, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    """Backend kwargs may arrive as strings (AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__<NAME>)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DictionaryValidationError(
            f"DictionaryTableBackend: {name} must be a number of seconds, got {value!r}"
        ) from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise DictionaryValidationError(f"DictionaryTableBackend: {name} must be {bound}, got {value!r}")
    return number


class DictionaryTableBackend(BaseSecretsBackend):
    """Serve Airflow Variables from the dictionary table.

    :param sql_alchemy_conn: SQLAlchemy URL of the database holding the table
        (``mysql+pymysql://user:pw@host:3306/db`` or ``sqlite:////path/dictionary.db``); default:
        the dictionary setting (``[ml] dictionary_conn``, ``$AIRFLOW_ML_DICTIONARY``, else
        ``$AIRFLOW_ML_HOME/dictionary.db``; a connection id is read from ``AIRFLOW_CONN_<ID>``).
    :param table: the dictionary table (a plain identifier); default ``[ml] dictionary_table``,
        else ``ml_dictionary``.
    :param key_prefix: if set, Variable ``x`` is the row ``<key_prefix>x`` and only the rows under
        the prefix are loaded (e.g. ``prod.`` and ``staging.`` sharing one table); default
        ``[ml] dictionary_key_prefix``, else none.
    :param cache_ttl_seconds: age after which a process reloads its snapshot (default 60).
    :param stale_grace_seconds: while the database is unreachable, keep serving a snapshot
        this young, with a warning (default 300); past it, lookups raise.
    :param connect_timeout: seconds before a connection attempt fails, at most 5 (default 3).
    :param query_timeout: seconds before a read on an open connection fails (MySQL drivers);
        default: the connect timeout.
    """

    def __init__(
        self,
        sql_alchemy_conn: str | None = None,
        table: str | None = None,
        key_prefix: str | None = None,
        cache_ttl_seconds: float | str = DEFAULT_CACHE_TTL_SECONDS,
        stale_grace_seconds: float | str = DEFAULT_STALE_GRACE_SECONDS,
        connect_timeout: float | str = DEFAULT_CONNECT_TIMEOUT,
        query_timeout: float | str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise DictionaryValidationError(
                f"DictionaryTableBackend: unknown argument(s) {sorted(unknown)}; expected sql_alchemy_conn, "
                "table, key_prefix, cache_ttl_seconds, stale_grace_seconds, connect_timeout, query_timeout"
            )
        if sql_alchemy_conn is not None and (not isinstance(sql_alchemy_conn, str) or not sql_alchemy_conn.strip()):
            raise DictionaryValidationError(
                "DictionaryTableBackend: sql_alchemy_conn must be a SQLAlchemy URL (or leave it out to use "
                "[ml] dictionary_conn / AIRFLOW_ML_DICTIONARY / $AIRFLOW_ML_HOME/dictionary.db)"
            )
        location = self._location(sql_alchemy_conn, table, key_prefix)
        self.sql_alchemy_conn = location.url
        self.source = location.source
        self.database = mask_url(self.sql_alchemy_conn)
        self.table = validate_table_name(location.table)
        self.key_prefix = location.key_prefix or ""
        if self.key_prefix:
            if any(ord(c) < 32 or ord(c) == 127 for c in self.key_prefix):
                raise DictionaryValidationError(
                    f"DictionaryTableBackend: key_prefix {self.key_prefix!r} contains a control character"
                )
            if len(self.key_prefix) >= MAX_KEY_LENGTH:
                raise DictionaryValidationError(
                    f"DictionaryTableBackend: key_prefix is longer than {MAX_KEY_LENGTH - 1} characters"
                )
        self.cache_ttl_seconds = _number("cache_ttl_seconds", cache_ttl_seconds)
        self.stale_grace_seconds = _number("stale_grace_seconds", stale_grace_seconds)
        self.connect_timeout = _number(
            "connect_timeout", connect_timeout, minimum=0.001, maximum=MAX_CONNECT_TIMEOUT
        )
        # Every read on the connection (the server greeting included) is bounded too: by default by
        # the connect timeout, so a server that accepts and then stays silent cannot hang a lookup.
        self.query_timeout = (
            self.connect_timeout
            if query_timeout is None
            else _number("query_timeout", query_timeout, minimum=0.001)
        )
        self._store: DictionaryStore | None = None  # built at the first lookup: creating a backend is free
        self._cache_key = (self.sql_alchemy_conn, self.table, self.key_prefix)
        # The driver import (~30 ms for pymysql) happens here, when Airflow builds its backends: in a
        # worker the supervisor does that before forking the task process, which inherits the module.
        preload_driver(self.sql_alchemy_conn)

    @staticmethod
    def _location(sql_alchemy_conn: str | None, table: str | None, key_prefix: str | None):
        """The database, table and key prefix: these kwargs, else ml/settings.py's dictionary settings."""
        from airflow_ml_provider.ml import settings

        try:
            # Airflow builds this backend while it loads its configuration: read [ml] through the
            # finished ``conf`` object, and a connection id only from AIRFLOW_CONN_<ID> (looking it up
            # through Airflow's secrets backends from inside one would recurse).
            resolved = settings.resolve(
                dictionary=sql_alchemy_conn, dictionary_table=table, dictionary_key_prefix=key_prefix,
                backend_in_use=True,
            )
            location = settings.dictionary_location(resolved, use_airflow_connections=False)
        except settings.SettingsError as exc:
            raise DictionaryValidationError(f"DictionaryTableBackend: {exc}") from None
        assert location is not None
        return location

    # -- Airflow's interface ----------------------------------------------------------------

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        """The value of Variable ``key``, or None when the dictionary does not hold it."""
        full_key = self.key_prefix + key if isinstance(key, str) else key
        try:
            validate_key(full_key)
        except DictionaryValidationError:
            return None  # a key the dictionary cannot hold: let Airflow look elsewhere
        return self._values_for(key).get(full_key)

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        return None  # the dictionary holds Variables only

    def get_config(self, key: str) -> str | None:
        return None

    # -- the snapshot -----------------------------------------------------------------------

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every snapshot held by this process (the next lookup reloads)."""
        with _SNAPSHOTS_LOCK:
            _SNAPSHOTS.clear()

    @property
    def store(self) -> DictionaryStore:
        if self._store is None:
            self._store = DictionaryStore(
                self.sql_alchemy_conn,
                self.table,
                connect_timeout=self.connect_timeout,
                query_timeout=self.query_timeout,
                pooled=False,  # one short connection per load; nothing idles in task processes
            )
        return self._store

    def _load(self) -> dict[str, str]:
        try:
            return load_snapshot(
                self.sql_alchemy_conn,
                self.table,
                self.key_prefix or None,
                connect_timeout=self.connect_timeout,
                query_timeout=self.query_timeout,
            )
        except DictionaryTableMissing:
            self.store.create_tables()  # the project creates its tables itself; empty for now
            return {}

    def _snapshot(self) -> _Snapshot:
        snap = _SNAPSHOTS.get(self._cache_key)
        if snap is None:
            with _SNAPSHOTS_LOCK:
                snap = _SNAPSHOTS.setdefault(self._cache_key, _Snapshot())
        return snap

    def _fresh(self, snap: _Snapshot, now: float) -> bool:
        return (
            snap.values is not None
            and snap.pid == os.getpid()
            and now - snap.loaded_at < self.cache_ttl_seconds
        )

    def _values_for(self, key: str) -> dict[str, str]:
        snap = self._snapshot()
        if self._fresh(snap, time.monotonic()):
            return snap.values  # type: ignore[return-value]
        with snap.lock:
            now = time.monotonic()
            if self._fresh(snap, now):
                return snap.values  # type: ignore[return-value]
            retry_interval = min(self.cache_ttl_seconds, MAX_RETRY_INTERVAL)
            recently_failed = snap.failed_at is not None and now - snap.failed_at < retry_interval
            if not recently_failed:
                started = time.perf_counter()
                try:
                    values = self._load()
                except DictionaryError as exc:
                    snap.failed_at = time.monotonic()
                    snap.last_error = str(exc)
                    return self._fallback(snap, key, warn=True)
                snap.values = values
                snap.loaded_at = time.monotonic()
                snap.pid = os.getpid()
                snap.failed_at = None
                snap.last_error = None
                snap.loads += 1
                snap.load_seconds = time.perf_counter() - started
                log.debug(
                    "Loaded %d dictionary keys from %s in %.1f ms",
                    len(values),
                    self.database,
                    snap.load_seconds * 1e3,
                )
                return values
            return self._fallback(snap, key, warn=False)

    def _fallback(self, snap: _Snapshot, key: str, *, warn: bool) -> dict[str, str]:
        age = time.monotonic() - snap.loaded_at
        if snap.values is not None and age <= self.stale_grace_seconds:
            if warn:
                log.warning(
                    "Dictionary database %s is unreachable (%s); serving the snapshot loaded %.1f s ago "
                    "(stale_grace_seconds=%g) for Variable %r.",
                    self.database,
                    snap.last_error,
                    age,
                    self.stale_grace_seconds,
                    key,
                )
            return snap.values
        held = (
            f"the snapshot held is {age:.1f} s old, older than stale_grace_seconds={self.stale_grace_seconds:g}"
            if snap.values is not None
            else "no snapshot is held"
        )
        raise DictionaryBackendUnavailable(
            f"cannot look up Variable {key!r} in dictionary table {self.table!r} at {self.database}: "
            f"{snap.last_error}; {held}",
            key=key,
            database=self.database,
        )

    def __repr__(self) -> str:
        return (
            f"DictionaryTableBackend({self.database!r}, table={self.table!r}, key_prefix={self.key_prefix!r})"
        )
