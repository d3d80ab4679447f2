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
    "ServingState",
    "validate_label",
    "UnknownModelError",
    "RefusedVersionError",
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
#: A model service refused to load a version (checksum mismatch, load or warm-up error): the event
#: names the service instance (``created_by``) and the reason; the version's row gets
#: :data:`STATUS_REFUSED`. Rollbacks, labels and canaries refuse to point at such a version.
ACTION_REFUSED = "refused"
STATUS_REFUSED = "refused"
#: Labels and canary traffic (issue 13): ``label``/``unlabel`` name a version under a label;
#: ``canary`` sends a percentage of unpinned requests to a version until ``promote`` (the canary
#: version becomes the served one) or ``abort`` (back to 100% on the served version).
ACTION_LABEL = "label"
ACTION_UNLABEL = "unlabel"
ACTION_CANARY = "canary"
ACTION_PROMOTE = "promote"
ACTION_ABORT = "abort"
#: Shadow mode: ``shadow`` has a version score a copy of ``percent`` % of the unpinned requests
#: (answers still come from the served version / the canary) until ``unshadow``.
ACTION_SHADOW = "shadow"
ACTION_UNSHADOW = "unshadow"
#: The events that name the version the service serves (:meth:`ModelRegistry.current`). Every other
#: kind (labels, canary, refusals...) is recorded in the same log but leaves the served version alone.
SERVED_ACTIONS = (ACTION_PUBLISH, ACTION_ROLLBACK, ACTION_PROMOTE)
#: The events that start or end a canary: a publish or rollback after a ``canary`` ends it too
#: (the served version was changed outright).
_CANARY_ACTIONS = (ACTION_CANARY, ACTION_PROMOTE, ACTION_ABORT, ACTION_PUBLISH, ACTION_ROLLBACK)
#: Label names: TF Serving's version labels (``/v1/models/m/labels/stable``): a letter, then letters,
#: digits, ``_`` or ``-``; at most 64.
_LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")

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


class RefusedVersionError(RegistryError):
    """A model service refused to load this version: nothing may point at it."""


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
    #: the label of a ``label``/``unlabel`` event
    label: str | None = None
    #: the share of unpinned requests (0-100] of a ``canary`` event
    percent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "action": self.action,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
            "reason": self.reason,
        }
        if self.label is not None:
            out["label"] = self.label
        if self.percent is not None:
            out["percent"] = self.percent
        return out


@dataclass(frozen=True)
class ServingState:
    """What the service must do for one model (:meth:`ModelRegistry.serving_state`).

    ``current``: the served version (unpinned requests, except the canary's share).
    ``labels``: label -> the record it names. ``canary``/``canary_percent``: the version that gets
    ``canary_percent`` % of unpinned requests, or None. ``watermark``: the newest event id of the model.
    """

    current: ModelRecord | None
    labels: dict[str, ModelRecord] = field(default_factory=dict)
    canary: ModelRecord | None = None
    canary_percent: float = 0.0
    watermark: int = 0
    #: the shadow version (scores a copy of ``shadow_percent`` % of unpinned requests; never answers)
    shadow: ModelRecord | None = None
    shadow_percent: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": self.current.version if self.current else None,
            "labels": {k: r.version for k, r in sorted(self.labels.items())},
            "canary": ({"version": self.canary.version, "percent": self.canary_percent}
                       if self.canary is not None else None),
            "watermark": self.watermark,
            "shadow": ({"version": self.shadow.version, "percent": self.shadow_percent}
                       if self.shadow is not None else None),
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
        # label/unlabel: the label; canary: the percentage (added by create_tables to older tables)
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("percent", sa.Float, nullable=True),
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
        self._add_routing_columns()
        self._tables_ok = True

    #: Columns of ml_model_serving that tables created before labels and canary lack.
    _ROUTING_COLUMNS = ("label", "percent")

    def _routing_columns_present(self, conn: sa.Connection | None = None) -> bool:
        """Whether ``ml_model_serving`` has the ``label`` and ``percent`` columns (cached once true).

        A table created before labels and canary existed lacks them until :meth:`create_tables`
        adds them (every label/canary write calls it); until then no such event can exist, and
        reads select the older columns only.
        """
        if getattr(self, "_routing_ok", False):
            return True

        def check(c: sa.Connection) -> bool:
            try:
                names = {col["name"].lower() for col in sa.inspect(c).get_columns(self.serving_table.name)}
            except sa_exc.NoSuchTableError:
                return False
            return all(col in names for col in self._ROUTING_COLUMNS)

        if conn is not None:
            ok = check(conn)
        else:
            with self.engine.connect() as c:
                ok = check(c)
        self._routing_ok = ok
        return ok

    def _add_routing_columns(self) -> None:
        """ALTER an older ``ml_model_serving`` to add ``label`` and ``percent`` (idempotent)."""
        if self._routing_columns_present():
            return
        s = self.serving_table
        preparer = self.engine.dialect.identifier_preparer
        for col in self._ROUTING_COLUMNS:
            ddl_type = s.c[col].type.compile(dialect=self.engine.dialect)
            stmt = sa.text(f"ALTER TABLE {preparer.format_table(s)} ADD COLUMN {preparer.quote(col)} {ddl_type} NULL")
            try:
                with self.engine.begin() as conn:
                    conn.execute(stmt)
            except sa_exc.SQLAlchemyError as exc:
                self._routing_ok = False
                with self.engine.connect() as conn:  # another process added it meanwhile: fine
                    names = {c["name"].lower() for c in sa.inspect(conn).get_columns(s.name)}
                if col not in names:
                    raise self._error(f"adding column {col!r} to {s.name}", exc) from None
        self._routing_ok = False
        self._routing_columns_present()

    def _event_query(self, conn: sa.Connection) -> sa.Select:
        """``SELECT`` of ml_model_serving's columns (without label/percent on an older table)."""
        s = self.serving_table
        if self._routing_columns_present(conn):
            return sa.select(s)
        return sa.select(*[c for c in s.c if c.name not in self._ROUTING_COLUMNS])

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
            label=m.get("label"),
            percent=float(m["percent"]) if m.get("percent") is not None else None,
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

    def find_checksum(self, name: str, checksum: str) -> ModelRecord | None:
        """The lowest version of ``name`` whose bundle has checksum ``checksum``, if any."""
        validate_model_name(name)
        return self._read("looking up a checksum", lambda c: self._find_checksum(c, name, checksum), None)

    def _find_checksum(self, conn: sa.Connection, name: str, checksum: str) -> ModelRecord | None:
        t = self.publish_table
        row = conn.execute(
            sa.select(t).where(t.c.model_name == name, t.c.checksum == checksum).order_by(t.c.version).limit(1)
        ).first()
        return self._record(row) if row is not None else None

    # -- refused versions (a model service could not load them) ----------------------------------

    def refusals(self, name: str) -> dict[int, ServingEvent]:
        """The versions of ``name`` a model service refused to load: version -> the newest
        ``refused`` event (its ``created_by`` is the service instance, ``reason`` the cause)."""
        validate_model_name(name)
        s = self.serving_table
        cols = [s.c.id, s.c.model_name, s.c.version, s.c.action, s.c.created_at, s.c.created_by, s.c.reason]
        query = sa.select(*cols).where(s.c.model_name == name, s.c.action == ACTION_REFUSED).order_by(s.c.id)
        return self._read("reading refused versions",
                          lambda c: {e.version: e for e in (self._event(r) for r in c.execute(query))}, {})

    def refused_versions(self, name: str) -> list[int]:
        """The versions of ``name`` a model service refused to load, ascending."""
        return sorted(self.refusals(name))

    def is_refused(self, name: str, version: int) -> ServingEvent | None:
        """The newest ``refused`` event of ``name`` version ``version``, or None if no service refused it."""
        return self.refusals(name).get(_validate_version(version))

    def check_not_refused(self, name: str, version: int, what: str = "point at") -> None:
        """Raise :class:`RefusedVersionError` (naming the service and its reason) if a model service
        refused ``version`` of ``name``. Rollback, label and canary call this before writing."""
        event = self.is_refused(name, version)
        if event is not None:
            raise RefusedVersionError(refusal_message(name, event, what))

    def record_refusal(self, name: str, version: int, *, reason: str, instance: str | None = None) -> ServingEvent:
        """Record that a model service (``instance``, e.g. ``host:pid``) refused to load ``version``
        of ``name`` because of ``reason``: a ``refused`` serving event, and the row's status becomes
        :data:`STATUS_REFUSED`. The served version is unchanged (a refusal is not a serving decision)."""
        validate_model_name(name)
        version = _validate_version(version)
        if not self._tables_ok:
            self.create_tables()
        t, s = self.publish_table, self.serving_table
        by = str(instance)[:250] if instance else None
        text = str(reason or "refused")[:4000]

        def attempt() -> ServingEvent:
            with self.engine.begin() as conn:
                now = _to_db_time(_utcnow())
                result = conn.execute(s.insert().values(model_name=name, version=version, action=ACTION_REFUSED,
                                                        created_at=now, created_by=by, reason=text))
                conn.execute(t.update().where(t.c.model_name == name, t.c.version == version)
                             .values(status=STATUS_REFUSED))
                new_id = int(result.inserted_primary_key[0])
            return ServingEvent(id=new_id, name=name, version=version, action=ACTION_REFUSED,
                                created_at=_from_db_time(now), created_by=by, reason=text)

        try:
            return db.retry(attempt, on=_WRITE_RETRY_ON, attempts=_MAX_ATTEMPTS)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error(f"recording that version {version} of {name!r} was refused", exc) from None

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
            self._event_query(conn).where(s.c.model_name == name).order_by(s.c.id.desc()).limit(1)
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
            .where(s.c.model_name == name, s.c.action.in_(SERVED_ACTIONS))
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
        if name is not None:
            validate_model_name(name)

        def fn(c: sa.Connection) -> list[ServingEvent]:
            query = self._event_query(c).where(s.c.id > int(after_id)).order_by(s.c.id)
            if name is not None:
                query = query.where(s.c.model_name == name)
            if limit is not None:
                query = query.limit(int(limit))
            return [self._event(r) for r in c.execute(query)]

        return self._read("reading serving events", fn, [])

    def serving_state(self, name: str) -> ServingState:
        """The served version, the labels and the canary of ``name``, read in one connection.

        * ``current``: as :meth:`current` (the newest ``publish``, ``rollback`` or ``promote``).
        * ``labels``: per label, its newest ``label``/``unlabel`` event; a ``label`` names the version.
        * ``canary``: the newest of ``canary``/``promote``/``abort``/``publish``/``rollback``, when
          it is a ``canary`` (a publish or a rollback ends a canary, as promote and abort do).
        """
        validate_model_name(name)
        t, s = self.publish_table, self.serving_table

        def fn(conn: sa.Connection) -> ServingState:
            current = self._current(conn, name)
            mark = int(conn.execute(sa.select(sa.func.max(s.c.id)).where(s.c.model_name == name)).scalar() or 0)
            if not self._routing_columns_present(conn):
                return ServingState(current=current, watermark=mark)
            newest_per_label = (
                sa.select(sa.func.max(s.c.id))
                .where(s.c.model_name == name, s.c.action.in_((ACTION_LABEL, ACTION_UNLABEL)))
                .group_by(s.c.label)
            )
            label_rows = conn.execute(
                sa.select(s.c.label, s.c.version).where(s.c.id.in_(newest_per_label), s.c.action == ACTION_LABEL)
            ).all()
            canary_row = conn.execute(
                sa.select(s.c.action, s.c.version, s.c.percent)
                .where(s.c.model_name == name, s.c.action.in_(_CANARY_ACTIONS))
                .order_by(s.c.id.desc()).limit(1)
            ).first()
            canary_version = None
            if canary_row is not None and canary_row.action == ACTION_CANARY and canary_row.percent:
                canary_version = int(canary_row.version)
            shadow_row = conn.execute(
                sa.select(s.c.action, s.c.version, s.c.percent)
                .where(s.c.model_name == name, s.c.action.in_((ACTION_SHADOW, ACTION_UNSHADOW)))
                .order_by(s.c.id.desc()).limit(1)
            ).first()
            shadow_version = None
            if shadow_row is not None and shadow_row.action == ACTION_SHADOW and shadow_row.percent:
                shadow_version = int(shadow_row.version)
            wanted = {int(r.version) for r in label_rows} | ({canary_version} if canary_version else set())
            wanted |= {shadow_version} if shadow_version else set()
            records: dict[int, ModelRecord] = {}
            if wanted:
                for row in conn.execute(sa.select(t).where(t.c.model_name == name, t.c.version.in_(wanted))):
                    rec = self._record(row)
                    records[rec.version] = rec
            labels = {r.label: records[int(r.version)] for r in label_rows if int(r.version) in records}
            canary = records.get(canary_version) if canary_version else None
            shadow = records.get(shadow_version) if shadow_version else None
            return ServingState(current=current, labels=labels, canary=canary,
                                canary_percent=float(canary_row.percent) if canary is not None else 0.0,
                                watermark=mark, shadow=shadow,
                                shadow_percent=float(shadow_row.percent) if shadow is not None else 0.0)

        return self._read("reading the serving state", fn, ServingState(current=None))

    def serving_states(self, names: Iterable[str]) -> dict[str, ServingState]:
        """:meth:`serving_state` for several models."""
        return {n: self.serving_state(n) for n in names}

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
        reuse_checksum: bool = False,
    ) -> ModelRecord:
        """Insert the publish row (the commit point of a publish) and its serving event.

        ``version=None`` takes the next free version. With ``dag_id`` and ``run_id`` the call is
        idempotent: if that run already published ``name``, the existing record comes back and
        nothing is written, also when two publishers race (a unique constraint decides).
        With ``reuse_checksum=True`` (what :func:`publish_model` passes) a version of ``name``
        that already holds ``checksum`` is returned instead, in the same transaction: one bundle is
        never two versions.
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
                    if reuse_checksum and checksum:
                        same = self._find_checksum(conn, name, checksum)
                        if same is not None:
                            return same
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
        self.check_not_refused(name, to_version, "roll back to")  # RefusedVersionError naming why
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
                row = conn.execute(self._event_query(conn).where(s.c.id == new_id)).first()
                return self._event(row)

        try:
            return db.retry(attempt, on=(db.LOCKED,), attempts=_MAX_ATTEMPTS)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error(f"rolling back {name!r}", exc) from None

    # -- labels and canary -------------------------------------------------------------------------

    def _append_event(self, name: str, version: int, action: str, *, by: str | None, reason: str | None,
                      label: str | None = None, percent: float | None = None) -> ServingEvent:
        """Append one routing event (after :meth:`create_tables` added the label/percent columns)."""
        if by is not None and len(str(by)) > 250:
            raise RegistryError(f"{action}: 'by' is longer than 250 characters")
        if not self._tables_ok or not self._routing_columns_present():
            self.create_tables()
        s = self.serving_table

        def attempt() -> ServingEvent:
            with self.engine.begin() as conn:
                result = conn.execute(
                    s.insert().values(model_name=name, version=version, action=action,
                                      created_at=_to_db_time(_utcnow()), created_by=by, reason=reason,
                                      label=label, percent=percent)
                )
                new_id = int(result.inserted_primary_key[0])
                return self._event(conn.execute(sa.select(s).where(s.c.id == new_id)).first())

        try:
            return db.retry(attempt, on=(db.LOCKED,), attempts=_MAX_ATTEMPTS)
        except sa_exc.SQLAlchemyError as exc:
            raise self._error(f"recording {action} of {name!r}", exc) from None

    def _routable(self, name: str, version: Any, what: str) -> int:
        """``version`` as an int, refusing an unknown version (and one the service refused to load,
        when the registry records such refusals)."""
        validate_model_name(name)
        version = _validate_version(version)
        self.get(name, version)  # UnknownModelError naming the model and its versions
        self.check_not_refused(name, version, what)  # RefusedVersionError: a service could not load it
        return version

    def set_label(self, name: str, label: str, version: int, by: str | None = None,
                  reason: str | None = None) -> ServingEvent:
        """Point ``label`` of ``name`` at ``version`` (``/v1/models/NAME/labels/LABEL:predict``).

        Writes a ``label`` event; moving a label is another ``label`` event. :class:`UnknownModelError`
        for an unknown version."""
        label = validate_label(label)
        version = self._routable(name, version, f"point label {label!r} at")
        return self._append_event(name, version, ACTION_LABEL, by=by, reason=reason, label=label)

    def remove_label(self, name: str, label: str, by: str | None = None,
                     reason: str | None = None) -> ServingEvent:
        """Remove ``label`` of ``name`` (an ``unlabel`` event naming the version it pointed at)."""
        validate_model_name(name)
        label = validate_label(label)
        state = self.serving_state(name)
        if label not in state.labels:
            known = ", ".join(sorted(state.labels)) or "none"
            raise RegistryError(f"model {name!r} has no label {label!r} (labels: {known})")
        return self._append_event(name, state.labels[label].version, ACTION_UNLABEL, by=by, reason=reason,
                                  label=label)

    def start_canary(self, name: str, version: int, percent: float, by: str | None = None,
                     reason: str | None = None) -> ServingEvent:
        """Send ``percent`` % (0 < percent <= 100) of the unpinned requests of ``name`` to ``version``.

        Replaces a running canary. Refused for an unknown version and for the served version."""
        version = self._routable(name, version, "start a canary on")
        percent = validate_percent(percent)
        current = self.current(name)
        if current is not None and current.version == version:
            raise RegistryError(f"model {name!r} version {version} is already the served version; "
                                "a canary needs another version")
        return self._append_event(name, version, ACTION_CANARY, by=by, reason=reason, percent=percent)

    def _running_canary(self, name: str, what: str) -> ServingState:
        validate_model_name(name)
        state = self.serving_state(name)
        if state.canary is None:
            if state.current is None:
                raise UnknownModelError(self._unknown_model_message(name))
            raise RegistryError(f"model {name!r} has no canary running; nothing to {what} "
                                f"(serving version {state.current.version})")
        return state

    def promote(self, name: str, by: str | None = None, reason: str | None = None) -> ServingEvent:
        """Make the canary version the served version (a ``promote`` event); the canary ends."""
        state = self._running_canary(name, "promote")
        self.check_not_refused(name, state.canary.version, "promote")  # refused since the canary began
        return self._append_event(name, state.canary.version, ACTION_PROMOTE, by=by, reason=reason)

    def abort_canary(self, name: str, by: str | None = None, reason: str | None = None) -> ServingEvent:
        """End the canary: 100% of unpinned requests go to the served version again (an ``abort``
        event naming the canary version)."""
        state = self._running_canary(name, "abort")
        return self._append_event(name, state.canary.version, ACTION_ABORT, by=by, reason=reason)

    def start_shadow(self, name: str, version: int, percent: float = 100.0, by: str | None = None,
                     reason: str | None = None) -> ServingEvent:
        """Shadow mode: ``version`` scores a copy of ``percent`` % of the unpinned requests of
        ``name``; only the served version (or the canary) answers. Replaces a running shadow."""
        version = self._routable(name, version, "shadow")
        percent = validate_percent(percent)
        current = self.current(name)
        if current is not None and current.version == version:
            raise RegistryError(f"model {name!r} version {version} is already the served version; "
                                "a shadow needs another version")
        return self._append_event(name, version, ACTION_SHADOW, by=by, reason=reason, percent=percent)

    def stop_shadow(self, name: str, by: str | None = None, reason: str | None = None) -> ServingEvent:
        """End shadow mode (an ``unshadow`` event naming the shadow version)."""
        validate_model_name(name)
        state = self.serving_state(name)
        if state.shadow is None:
            if state.current is None:
                raise UnknownModelError(self._unknown_model_message(name))
            raise RegistryError(f"model {name!r} has no shadow running; nothing to stop")
        return self._append_event(name, state.shadow.version, ACTION_UNSHADOW, by=by, reason=reason)


def validate_label(label: Any) -> str:
    """Return ``label`` if it is a valid label name, else raise :class:`RegistryError` naming it."""
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise RegistryError(f"invalid label {label!r}: use 1-64 letters, digits, '_' or '-', starting with a letter")
    return label


def validate_percent(percent: Any) -> float:
    """A canary share: a number with 0 < percent <= 100 (routing resolution: 0.1 point)."""
    try:
        value = float(percent)
    except (TypeError, ValueError):
        raise RegistryError(f"invalid canary percent {percent!r}: must be a number in (0, 100]") from None
    if not math.isfinite(value) or not 0 < value <= 100:
        raise RegistryError(f"invalid canary percent {percent!r}: must be in (0, 100] (use abort to end a canary)")
    return value


def refusal_message(name: str, event: ServingEvent, what: str = "point at") -> str:
    """``cannot roll back to model 'm' version 3: the model service host:123 refused to load it
    at <time>: <reason>``."""
    who = f"the model service {event.created_by}" if event.created_by else "a model service"
    when = f" at {event.created_at.strftime('%Y-%m-%d %H:%M:%S')} UTC" if event.created_at else ""
    return (f"cannot {what} model {event.name!r} version {event.version}: {who} refused to load it{when}: "
            f"{event.reason or 'no reason given'}")


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
    * One bundle is never two versions: if a version of ``name`` already holds this bundle's
      checksum, that record is returned.
    * Crash safety: a publisher killed between the upload and the insert leaves its version
      directory unregistered. Its retry finds that directory (an unregistered version holding the
      same checksum) and registers it -- also when other publishes took later versions meanwhile.
      Temporary uploads of killed publishers (:func:`airflow_ml_provider.ml.storage.remove_stale_temps`:
      dead owner process on this host, or older than ``STALE_TEMP_SECONDS``) are removed first.
    * The version directory doubles as a lock: a directory with a different checksum belongs to
      another publisher (committed or in flight), so the next version number is tried. Nothing is
      overwritten, and no version directory is ever deleted.
    """
    from airflow_ml_provider.ml import bundle as _bundle
    from airflow_ml_provider.ml import storage

    validate_model_name(name)
    if dag_id is not None and run_id is not None:
        existing = registry.find_run(name, dag_id, run_id)
        if existing is not None:
            return existing
    loaded = _bundle.load_bundle(local_bundle_dir, verify=True)
    models_uri = storage.join(storage_root, "models", name)
    storage.remove_stale_temps(models_uri)
    same = registry.find_checksum(name, loaded.checksum)
    if same is not None:  # this very bundle is a version already (a retry after the insert, or a re-publish)
        return same
    orphan = _own_orphan_version(registry, storage_root, models_uri, name, loaded.checksum)
    version = orphan if orphan is not None else registry.next_version(name)
    for _ in range(_MAX_VERSION_PROBES):
        try:
            uri = _bundle.publish_bundle(local_bundle_dir, storage_root, name, version)
        except _bundle.BundleConflictError:
            version += 1  # taken by another publisher (committed or in flight): never overwrite
            continue
        try:
            record = registry.publish(
                name=name,
                version=version,
                bundle_uri=uri,
                framework=loaded.framework,
                metrics=loaded.metrics,
                # an embedding bundle has no fitted spec: no spec_uri rather than one naming nothing
                spec_uri=_bundle.spec_uri(uri) if loaded.fitted_spec_path is not None else None,
                checksum=loaded.checksum,
                dag_id=dag_id,
                run_id=run_id,
                created_by=created_by,
                reuse_checksum=True,
            )
        except RegistryError:
            record = None
            if dag_id is not None and run_id is not None:
                record = registry.find_run(name, dag_id, run_id)
            if record is None:
                holder = registry._read("reading a version", lambda c, v=version: registry._get(c, name, v), None)
                if holder is None:
                    raise
                if holder.checksum != loaded.checksum:  # another run committed this version first
                    version += 1
                    continue
                record = holder  # a concurrent publisher of the same bundle committed it first
        if record.version != version:
            # A concurrent publisher of the same run (or bundle) committed another version first:
            # no publish_model will ever register the directory written here (the run, or the
            # checksum, is a version already), so it is removed rather than left as an orphan.
            try:
                storage.remove(uri, recursive=True)
            except storage.StorageError:  # best effort: a leftover is harmless, never registered
                pass
        return record
    raise RegistryError(f"model {name!r}: could not find a free version after {_MAX_VERSION_PROBES} attempts")


#: How many version numbers one publish tries before giving up (each taken one is another
#: publisher's bundle, committed or in flight, or the orphan of a killed publisher never retried).
_MAX_VERSION_PROBES = 64


def _own_orphan_version(registry: ModelRegistry, storage_root: Any, models_uri: str, name: str,
                        checksum: str) -> int | None:
    """The lowest unregistered version directory of ``name`` that holds the bundle ``checksum``:
    what a publisher killed between upload and insert left behind (None if there is none)."""
    from airflow_ml_provider.ml import bundle as _bundle
    from airflow_ml_provider.ml import storage

    fs, path = storage.filesystem_for(models_uri)
    try:
        entries = fs.ls(path.rstrip("/"), detail=False)
    except Exception:  # noqa: BLE001 - no directory yet (first publish), or unreadable: no orphan
        return None
    on_disk = sorted(int(base) for base in (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
                     if base.isascii() and base.isdigit() and 0 < len(base) <= 9 and int(base) > 0)
    if not on_disk:
        return None
    registered = set(registry.versions(name))
    for version in on_disk:
        if version in registered:
            continue
        try:
            manifest = _bundle.read_remote_manifest(_bundle.bundle_uri(storage_root, name, version))
        except _bundle.BundleError:
            continue  # unreadable: not ours to judge
        if manifest.get("checksum") == checksum:
            return version
    return None
