"""The model registry: the ``ml_model_publish`` table and the serving decisions that follow it.

Pure SQLAlchemy Core, no Airflow import. Works on SQLite and on MySQL/MariaDB; the project creates
its own tables (idempotently, :meth:`ModelRegistry.create_tables`).

Two tables (both names take an optional prefix):

``ml_model_publish``
    One row per published model version: name, version, bundle URI, framework, metrics (JSON text),
    fitted-spec URI, checksum, status, created_at, dag_id, run_id. Writing this row is the commit
    point of a publish. ``(model_name, version)`` is unique, and so is ``(model_name, dag_id,
    run_id)``: a retried publish of the same Airflow run returns the existing row.

``ml_model_serving``
    An append-only log of serving decisions: every publish adds a ``publish`` event, every
    rollback a ``rollback`` event naming the version to serve. :meth:`ModelRegistry.current` is the
    version named by the newest event, so a rollback takes effect at once and a later publish
    supersedes it. :meth:`ModelRegistry.watermark` (the newest event id) lets a poll loop detect any
    change with one tiny indexed query.

Errors are :class:`RegistryError`; their messages name the model and version, and show a database
URL only with its password masked.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from airflow_ml_provider.ml import db
from airflow_ml_provider.ml.db import mask_url

__all__ = [
    "ModelRecord",
    "ModelRegistry",
    "RegistryError",
    "ServingEvent",
    "UnknownModelError",
    "mask_url",
    "normalize_url",
    "publish_model",
    "url_from_connection",
    "validate_model_name",
]

PUBLISH_TABLE = "ml_model_publish"
SERVING_TABLE = "ml_model_serving"

STATUS_PUBLISHED = "published"
ACTION_PUBLISH = "publish"
ACTION_ROLLBACK = "rollback"

#: Model names: a letter or digit, then letters, digits, ``_``, ``-`` and ``.`` (no ``..``), <= 128.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MAX_ATTEMPTS = 12
#: What a write retries on (a read also retries once on a dropped connection); see ml/db.py.
_WRITE_RETRY_ON = (db.LOCKED, db.CONFLICT, db.MISSING_TABLE)
_READ_RETRY_ON = (db.LOCKED, db.DISCONNECTED)


class RegistryError(Exception):
    """A registry operation failed. The message names the model/version; passwords are masked."""


class UnknownModelError(RegistryError, LookupError):
    """The model, or the version of a model, is not in the registry."""


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


def normalize_url(url: str | sa.engine.URL) -> sa.engine.URL:
    """Parse a SQLAlchemy URL (:func:`airflow_ml_provider.ml.db.normalize_url`): ``mysql://`` and
    ``mariadb://`` become ``mysql+pymysql://`` with ``charset=utf8mb4``."""
    try:
        return db.normalize_url(url)
    except db.DatabaseURLError as exc:
        raise RegistryError(str(exc).replace("database URL", "registry URL")) from None


def url_from_connection(conn_type: str | None, **fields: Any) -> sa.engine.URL:
    """The registry's URL from Airflow-style connection fields (see
    :func:`airflow_ml_provider.ml.db.url_from_connection`)."""
    try:
        return db.url_from_connection(conn_type, what="the model registry", **fields)
    except db.DatabaseURLError as exc:
        raise RegistryError(str(exc)) from None


def validate_model_name(name: Any) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`RegistryError` naming it."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise RegistryError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (no '/', no '..')"
        )
    return name


def _validate_version(version: Any) -> int:
    if isinstance(version, int) and not isinstance(version, bool):
        value = version
    elif isinstance(version, str) and version.strip().isdigit():
        value = int(version.strip())
    else:
        raise RegistryError(f"invalid model version {version!r}: must be a positive integer")
    if value < 1:
        raise RegistryError(f"invalid model version {version!r}: must be a positive integer")
    return value


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """One row of ``ml_model_publish``."""

    id: int
    name: str
    version: int
    bundle_uri: str
    framework: str
    metrics: dict[str, Any] = field(default_factory=dict)
    spec_uri: str | None = None
    checksum: str | None = None
    status: str = STATUS_PUBLISHED
    created_at: _dt.datetime | None = None
    dag_id: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "bundle_uri": self.bundle_uri,
            "framework": self.framework,
            "metrics": self.metrics,
            "spec_uri": self.spec_uri,
            "checksum": self.checksum,
            "status": self.status,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class ServingEvent:
    """One row of ``ml_model_serving``: a decision about which version a model serves."""

    id: int
    name: str
    version: int
    action: str
    created_at: _dt.datetime | None = None
    created_by: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "action": self.action,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
            "reason": self.reason,
        }


def _json_safe(value: Any) -> Any:
    """Metrics to strict JSON: numpy scalars/arrays to Python, NaN and +-inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    tolist = getattr(value, "tolist", None)  # numpy scalar or array
    if callable(tolist):
        return _json_safe(tolist())
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    raise RegistryError(f"metric value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def dumps_metrics(metrics: Mapping[str, Any] | None) -> str:
    if metrics is None:
        return "{}"
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"metrics must be a mapping, got {type(metrics).__name__}")
    return json.dumps(_json_safe(metrics), sort_keys=True, allow_nan=False, ensure_ascii=False)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _to_db_time(value: _dt.datetime) -> _dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(_dt.UTC).replace(tzinfo=None)
    return value


def _from_db_time(value: Any) -> _dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = _dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def build_metadata(table_prefix: str = "") -> tuple[sa.MetaData, sa.Table, sa.Table]:
    """The SQLAlchemy tables (``<prefix>ml_model_publish``, ``<prefix>ml_model_serving``)."""
    if table_prefix and not re.match(r"^[A-Za-z0-9_]{1,32}$", table_prefix):
        raise RegistryError(f"invalid table prefix {table_prefix!r}: use up to 32 letters, digits or '_'")
    md = sa.MetaData()
    pub_name = f"{table_prefix}{PUBLISH_TABLE}"
    srv_name = f"{table_prefix}{SERVING_TABLE}"
    publish = sa.Table(
        pub_name,
        md,
        sa.Column("id", db.big_id(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("bundle_uri", sa.Text, nullable=False),
        sa.Column("framework", sa.String(64), nullable=False),
        sa.Column("metrics", db.long_text(), nullable=False),
        sa.Column("spec_uri", sa.Text, nullable=True),
        sa.Column("checksum", sa.String(128), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", db.datetime6(), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("run_id", sa.String(250), nullable=True),
        sa.UniqueConstraint("model_name", "version", name=f"uq_{pub_name}_version"),
        sa.UniqueConstraint("model_name", "dag_id", "run_id", name=f"uq_{pub_name}_run"),
        **db.MYSQL_TABLE_KW,
    )
    serving = sa.Table(
        srv_name,
        md,
        sa.Column("id", db.big_id(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("created_at", db.datetime6(), nullable=False),
        sa.Column("created_by", sa.String(250), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Index(f"ix_{srv_name}_model", "model_name", "id"),
        **db.MYSQL_TABLE_KW,
    )
    return md, publish, serving


def engine_options(url: str | sa.engine.URL) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` (:func:`airflow_ml_provider.ml.db.engine_options`):
    server databases get a <= 5 s connect timeout and pre-ping; SQLite waits 30 s on a lock."""
    return db.engine_options(normalize_url(url))


def create_registry_engine(url: str | sa.engine.URL) -> sa.engine.Engine:
    """An engine for the registry (:func:`airflow_ml_provider.ml.db.create_engine`)."""
    parsed = normalize_url(url)
    try:
        return db.create_engine(parsed)
    except db.DatabaseURLError as exc:
        raise RegistryError(str(exc).replace("cannot use database", "cannot use registry URL")) from None


class ModelRegistry:
    """The model registry on a SQLAlchemy URL or engine.

    :param url_or_engine: a SQLAlchemy URL (``sqlite:////path/reg.db``,
        ``mysql+pymysql://user:pw@host/db``; ``mysql://`` is accepted) or an ``Engine``.
    :param table_prefix: optional prefix for both table names.
    """

    def __init__(self, url_or_engine: str | sa.engine.URL | sa.engine.Engine, table_prefix: str = "") -> None:
        if isinstance(url_or_engine, sa.engine.Engine):
            self.engine = url_or_engine
        else:
            self.engine = create_registry_engine(url_or_engine)
        self.url = self.engine.url
        self.table_prefix = table_prefix
        self.metadata, self.publish_table, self.serving_table = build_metadata(table_prefix)
        self._tables_ok = False

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"ModelRegistry({self.masked_url!r})"

    def _error(self, what: str, exc: BaseException) -> RegistryError:
        kind = db.classify(exc)
        if kind in (db.UNREACHABLE, db.DISCONNECTED) or (
            isinstance(exc, sa_exc.OperationalError) and kind not in (db.MISSING_TABLE, db.LOCKED)
        ):
            prefix = f"cannot reach the model registry at {self.masked_url}"
        else:
            prefix = f"model registry {self.masked_url}"
        return RegistryError(db.scrub(f"{prefix}: {what}: {db.driver_message(exc)}", self.url))

    def dispose(self) -> None:
        self.engine.dispose()

    def create_tables(self) -> None:
        """Create both tables and their indexes if missing (safe to call concurrently)."""
        try:
            # Another process may create a table between the check and the CREATE: then again.
            db.retry(lambda: self.metadata.create_all(self.engine, checkfirst=True), on=(db.TABLE_EXISTS,),
                     attempts=3)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error("creating tables", exc) from None
        self._tables_ok = True

    def _read(self, what: str, fn, empty):
        def attempt():
            with self.engine.connect() as conn:
                return fn(conn)

        try:
            return db.retry(attempt, on=_READ_RETRY_ON, attempts=3)
        except sa_exc.SQLAlchemyError as exc:
            if db.is_missing_table(exc):  # nothing has ever been published here
                return empty
            raise self._error(what, exc) from None

    # -- row mapping -----------------------------------------------------------------------------

    def _record(self, row: Any) -> ModelRecord:
        m = row._mapping
        try:
            metrics = json.loads(m["metrics"]) if m["metrics"] else {}
        except ValueError:
            metrics = {"_unparseable": m["metrics"]}
        return ModelRecord(
            id=int(m["id"]),
            name=m["model_name"],
            version=int(m["version"]),
            bundle_uri=m["bundle_uri"],
            framework=m["framework"],
            metrics=metrics,
            spec_uri=m["spec_uri"],
            checksum=m["checksum"],
            status=m["status"],
            created_at=_from_db_time(m["created_at"]),
            dag_id=m["dag_id"],
            run_id=m["run_id"],
        )

    def _event(self, row: Any) -> ServingEvent:
        m = row._mapping
        return ServingEvent(
            id=int(m["id"]),
            name=m["model_name"],
            version=int(m["version"]),
            action=m["action"],
            created_at=_from_db_time(m["created_at"]),
            created_by=m["created_by"],
            reason=m["reason"],
        )

    # -- queries ---------------------------------------------------------------------------------

    def _next_version(self, conn: sa.Connection, name: str) -> int:
        t = self.publish_table
        top = conn.execute(sa.select(sa.func.max(t.c.version)).where(t.c.model_name == name)).scalar()
        return int(top or 0) + 1

    def next_version(self, name: str) -> int:
        """The version the next publish of ``name`` gets (1 for a new model)."""
        validate_model_name(name)
        return self._read("reading versions", lambda c: self._next_version(c, name), 1)

    def _find_run(self, conn: sa.Connection, name: str, dag_id: str, run_id: str) -> ModelRecord | None:
        t = self.publish_table
        row = conn.execute(
            sa.select(t).where(t.c.model_name == name, t.c.dag_id == dag_id, t.c.run_id == run_id)
        ).first()
        return self._record(row) if row is not None else None

    def find_run(self, name: str, dag_id: str, run_id: str) -> ModelRecord | None:
        """The version that run ``(dag_id, run_id)`` published for ``name``, if any."""
        validate_model_name(name)
        return self._read("looking up a run", lambda c: self._find_run(c, name, dag_id, run_id), None)

    def _get(self, conn: sa.Connection, name: str, version: int) -> ModelRecord | None:
        t = self.publish_table
        row = conn.execute(sa.select(t).where(t.c.model_name == name, t.c.version == version)).first()
        return self._record(row) if row is not None else None

    def get(self, name: str, version: int) -> ModelRecord:
        """Version ``version`` of ``name``; :class:`UnknownModelError` names what is missing."""
        validate_model_name(name)
        version = _validate_version(version)
        record = self._read("reading a version", lambda c: self._get(c, name, version), None)
        if record is None:
            versions = self.versions(name)
            if not versions:
                raise UnknownModelError(self._unknown_model_message(name))
            raise UnknownModelError(
                f"model {name!r} has no version {version} (versions: {_format_versions(versions)})"
            )
        return record

    def versions(self, name: str) -> list[int]:
        """The published versions of ``name``, ascending."""
        validate_model_name(name)
        t = self.publish_table
        return self._read(
            "reading versions",
            lambda c: [
                int(v)
                for v in c.execute(
                    sa.select(t.c.version).where(t.c.model_name == name).order_by(t.c.version)
                ).scalars()
            ],
            [],
        )

    def names(self) -> list[str]:
        """Every model name in the registry, sorted."""
        t = self.publish_table
        return self._read(
            "listing models",
            lambda c: list(
                c.execute(sa.select(t.c.model_name).distinct().order_by(t.c.model_name)).scalars()
            ),
            [],
        )

    def _unknown_model_message(self, name: str) -> str:
        known = self.names()
        hint = f"known models: {', '.join(known[:20])}" if known else "the registry has no models yet"
        return f"unknown model {name!r} ({hint})"

    def list(self, name: str | None = None) -> list[ModelRecord]:
        """Every published version (of ``name``, or of all models), by name then version."""
        t = self.publish_table
        query = sa.select(t).order_by(t.c.model_name, t.c.version)
        if name is not None:
            validate_model_name(name)
            query = query.where(t.c.model_name == name)
        return self._read("listing models", lambda c: [self._record(r) for r in c.execute(query)], [])

    def _current_event(self, conn: sa.Connection, name: str) -> ServingEvent | None:
        s = self.serving_table
        row = conn.execute(
            sa.select(s).where(s.c.model_name == name).order_by(s.c.id.desc()).limit(1)
        ).first()
        return self._event(row) if row is not None else None

    def current(self, name: str) -> ModelRecord | None:
        """The version the online service must serve now: the one named by the newest serving
        event (a publish, or a rollback). ``None`` when nothing has been published."""
        validate_model_name(name)

        def fn(conn: sa.Connection) -> ModelRecord | None:
            return self._current(conn, name)

        return self._read("reading the current version", fn, None)

    def _current(self, conn: sa.Connection, name: str) -> ModelRecord | None:
        # One round trip: the publish row whose version the newest serving event names.
        t, s = self.publish_table, self.serving_table
        newest = (
            sa.select(s.c.version)
            .where(s.c.model_name == name)
            .order_by(s.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        row = conn.execute(sa.select(t).where(t.c.model_name == name, t.c.version == newest)).first()
        return self._record(row) if row is not None else None

    def current_many(self, names: Iterable[str]) -> dict[str, ModelRecord | None]:
        """:meth:`current` for several models in one connection."""
        names = [validate_model_name(n) for n in names]

        def fn(conn: sa.Connection) -> dict[str, ModelRecord | None]:
            out: dict[str, ModelRecord | None] = {}
            for n in names:
                out[n] = self._current(conn, n)
            return out

        return self._read("reading the current versions", fn, {n: None for n in names})

    def watermark(self, names: Iterable[str] | None = None) -> int:
        """The newest serving-event id (for ``names``, or overall); 0 when there is none.

        Any publish or rollback raises it, so a poll loop only needs to re-read
        :meth:`current` when this number changes. One indexed ``MAX(id)`` query.
        """
        s = self.serving_table
        query = sa.select(sa.func.max(s.c.id))
        if names is not None:
            names = [validate_model_name(n) for n in names]
            query = query.where(s.c.model_name.in_(names))
        return self._read("polling", lambda c: int(c.execute(query).scalar() or 0), 0)

    def events(
        self, name: str | None = None, after_id: int = 0, limit: int | None = None
    ) -> list[ServingEvent]:
        """Serving events (publishes and rollbacks), oldest first, with id > ``after_id``."""
        s = self.serving_table
        query = sa.select(s).where(s.c.id > int(after_id)).order_by(s.c.id)
        if name is not None:
            validate_model_name(name)
            query = query.where(s.c.model_name == name)
        if limit is not None:
            query = query.limit(int(limit))
        return self._read("reading serving events", lambda c: [self._event(r) for r in c.execute(query)], [])

    # -- writes ----------------------------------------------------------------------------------

    def publish(
        self,
        *,
        name: str,
        version: int | None = None,
        bundle_uri: str,
        framework: str,
        metrics: Mapping[str, Any] | None = None,
        spec_uri: str | None = None,
        checksum: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        status: str = STATUS_PUBLISHED,
        created_by: str | None = None,
    ) -> ModelRecord:
        """Insert the publish row (the commit point of a publish) and its serving event.

        ``version=None`` takes the next free version. With ``dag_id`` and ``run_id`` the call is
        idempotent: if that run already published ``name``, the existing record comes back and
        nothing is written, also when two publishers race (a unique constraint decides).
        An explicit ``version`` that another run already holds raises :class:`RegistryError`.
        """
        validate_model_name(name)
        if version is not None:
            version = _validate_version(version)
        if not bundle_uri or not isinstance(bundle_uri, str):
            raise RegistryError(f"model {name!r}: bundle_uri must be a non-empty string")
        if not framework or not isinstance(framework, str) or len(framework) > 64:
            raise RegistryError(f"model {name!r}: framework must be a non-empty string of <= 64 characters")
        if (dag_id is None) != (run_id is None):
            raise RegistryError(f"model {name!r}: give both dag_id and run_id, or neither")
        for label, value in (("dag_id", dag_id), ("run_id", run_id), ("created_by", created_by)):
            if value is not None and len(str(value)) > 250:
                raise RegistryError(f"model {name!r}: {label} is longer than 250 characters")
        metrics_text = dumps_metrics(metrics)
        event_by = created_by or (f"{dag_id}/{run_id}" if dag_id else None)
        event_by = event_by[:250] if event_by else None
        if not self._tables_ok:
            self.create_tables()

        t, s = self.publish_table, self.serving_table

        def attempt() -> ModelRecord:
            try:
                with self.engine.begin() as conn:
                    if dag_id is not None:
                        existing = self._find_run(conn, name, dag_id, run_id)
                        if existing is not None:
                            return existing
                    target = version if version is not None else self._next_version(conn, name)
                    now = _to_db_time(_utcnow())
                    result = conn.execute(
                        t.insert().values(
                            model_name=name,
                            version=target,
                            bundle_uri=bundle_uri,
                            framework=framework,
                            metrics=metrics_text,
                            spec_uri=spec_uri,
                            checksum=checksum,
                            status=status,
                            created_at=now,
                            dag_id=dag_id,
                            run_id=run_id,
                        )
                    )
                    new_id = int(result.inserted_primary_key[0])
                    conn.execute(
                        s.insert().values(
                            model_name=name,
                            version=target,
                            action=ACTION_PUBLISH,
                            created_at=now,
                            created_by=event_by,
                            reason=None,
                        )
                    )
                    row = conn.execute(sa.select(t).where(t.c.id == new_id)).first()
                    return self._record(row)
            except sa_exc.IntegrityError:
                # Lost a race: either the same run committed first (return its row) or another
                # run took this version number (try the next one, unless the caller pinned it).
                if dag_id is not None:
                    existing = self.find_run(name, dag_id, run_id)
                    if existing is not None:
                        return existing
                if version is not None:
                    holder = self._read("reading a version", lambda c: self._get(c, name, version), None)
                    if holder is not None:
                        who = f" (published by {holder.dag_id}/{holder.run_id})" if holder.dag_id else ""
                        raise RegistryError(f"model {name!r} version {version} already exists{who}") from None
                raise

        def before_retry(exc: BaseException) -> None:
            if db.is_missing_table(exc):  # dropped since create_tables: create again, then retry
                self._tables_ok = False
                self.create_tables()

        try:
            return db.retry(attempt, on=_WRITE_RETRY_ON, attempts=_MAX_ATTEMPTS, before_retry=before_retry)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error(f"publishing {name!r}", exc) from None

    def rollback(
        self, name: str, to_version: int, by: str | None = None, reason: str | None = None
    ) -> ServingEvent:
        """Make the service serve ``to_version`` of ``name`` (until the next publish or rollback).

        Writes a ``rollback`` row to ``ml_model_serving``; the service follows it within one poll.
        :class:`UnknownModelError` if the model or version does not exist.
        """
        validate_model_name(name)
        to_version = _validate_version(to_version)
        self.get(name, to_version)  # raises UnknownModelError naming model/version
        if by is not None and len(str(by)) > 250:
            raise RegistryError("rollback: 'by' is longer than 250 characters")
        s = self.serving_table

        def attempt() -> ServingEvent:
            with self.engine.begin() as conn:
                result = conn.execute(
                    s.insert().values(
                        model_name=name,
                        version=to_version,
                        action=ACTION_ROLLBACK,
                        created_at=_to_db_time(_utcnow()),
                        created_by=by,
                        reason=reason,
                    )
                )
                new_id = int(result.inserted_primary_key[0])
                row = conn.execute(sa.select(s).where(s.c.id == new_id)).first()
                return self._event(row)

        try:
            return db.retry(attempt, on=(db.LOCKED,), attempts=_MAX_ATTEMPTS)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error(f"rolling back {name!r}", exc) from None


def _format_versions(versions: list[int]) -> str:
    if len(versions) <= 20:
        return ", ".join(str(v) for v in versions)
    return ", ".join(str(v) for v in versions[:10]) + f", ... {versions[-1]} ({len(versions)} in all)"


# ---------------------------------------------------------------------------------------------
# The whole publish protocol: bundle to storage, then the registry row (the commit point)
# ---------------------------------------------------------------------------------------------


def publish_model(
    registry: ModelRegistry,
    local_bundle_dir: str,
    storage_root: str,
    name: str,
    *,
    dag_id: str | None = None,
    run_id: str | None = None,
    created_by: str | None = None,
) -> ModelRecord:
    """Publish a built bundle: write it atomically to ``<root>/models/<name>/<version>/`` and insert
    the registry row (the commit point). Safe to retry.

    * If ``(name, dag_id, run_id)`` is already in the registry, that record is returned.
    * The version directory doubles as a lock: a directory holding the same checksum is reused
      (a retry after a crash between upload and insert); a directory with a different checksum
      belongs to another publisher, so the next version number is tried. Nothing is overwritten.
    """
    from airflow_ml_provider.ml import bundle as _bundle

    validate_model_name(name)
    if dag_id is not None and run_id is not None:
        existing = registry.find_run(name, dag_id, run_id)
        if existing is not None:
            return existing
    loaded = _bundle.load_bundle(local_bundle_dir, verify=True)
    version = registry.next_version(name)
    for _ in range(_MAX_ATTEMPTS):
        try:
            uri = _bundle.publish_bundle(local_bundle_dir, storage_root, name, version)
        except _bundle.BundleConflictError:
            version += 1  # taken by another publisher (committed or in flight): never overwrite
            continue
        try:
            return registry.publish(
                name=name,
                version=version,
                bundle_uri=uri,
                framework=loaded.framework,
                metrics=loaded.metrics,
                spec_uri=_bundle.spec_uri(uri),
                checksum=loaded.checksum,
                dag_id=dag_id,
                run_id=run_id,
                created_by=created_by,
            )
        except RegistryError:
            if dag_id is not None and run_id is not None:
                existing = registry.find_run(name, dag_id, run_id)
                if existing is not None:
                    return existing
            holder = registry._read("reading a version", lambda c, v=version: registry._get(c, name, v), None)
            if holder is not None:  # another run committed this version first
                version += 1
                continue
            raise
    raise RegistryError(f"model {name!r}: could not find a free version after {_MAX_ATTEMPTS} attempts")
