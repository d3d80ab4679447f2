"""Airflow hook for the model registry, and registry URL resolution for the CLI and the service.

* :class:`ModelRegistryHook` turns an Airflow connection into a SQLAlchemy URL and a
  :class:`~airflow_ml_provider.ml.registry.ModelRegistry`. Supported connections: ``mysql``
  (``mysql+pymysql://login:password@host:port/schema``), ``sqlite`` (the database file in *host*,
  as Airflow's SQLite connection keeps it), or any connection whose extra holds
  ``{"sqlalchemy_url": "..."}``. An extra ``table_prefix`` prefixes the registry table names.
* :func:`resolve_registry_url` takes either a SQLAlchemy URL (anything containing ``://``) or an
  Airflow connection id. A connection id is read from ``AIRFLOW_CONN_<ID>`` (URI or JSON form)
  when that variable is set, otherwise through Airflow's connection lookup -- Airflow is imported
  only then, so the ``airflow-ml`` CLI and the model service stay light when given a URL.

This module does not import Airflow at import time: ``ModelRegistryHook`` is created on first
access (it subclasses ``airflow.sdk.BaseHook``).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.connections import ConnectionEnvError, parse_connection_env
from airflow_ml_provider.ml.registry import (
    ModelRegistry,
    RegistryError,
    mask_url,
    normalize_url,
    url_from_connection,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["ModelRegistryHook", "connection_url", "open_registry", "resolve_registry_url"]  # noqa: F822 - lazy

DEFAULT_CONN_ID = "ml_registry_default"


def connection_url(conn: Any) -> sa.engine.URL:
    """The SQLAlchemy URL of an Airflow ``Connection`` (or any object with the same attributes)."""
    extra = getattr(conn, "extra_dejson", None)
    if extra is None:
        raw = getattr(conn, "extra", None) or {}
        extra = json.loads(raw) if isinstance(raw, str) and raw else (raw if isinstance(raw, dict) else {})
    return url_from_connection(
        getattr(conn, "conn_type", None),
        host=getattr(conn, "host", None),
        login=getattr(conn, "login", None),
        password=getattr(conn, "password", None),
        schema=getattr(conn, "schema", None),
        port=getattr(conn, "port", None),
        extra=extra,
    )


def _url_from_env_value(conn_id: str, value: str) -> sa.engine.URL:
    """Parse an ``AIRFLOW_CONN_<ID>`` value (Airflow URI or JSON form)."""
    try:
        fields = parse_connection_env(conn_id, value)
    except ConnectionEnvError as exc:
        raise RegistryError(str(exc)) from None
    return url_from_connection(fields.pop("conn_type"), **fields)


def _airflow_connection(conn_id: str) -> Any:
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        raise RegistryError(
            f"{conn_id!r} is not a URL, Airflow is not installed and AIRFLOW_CONN_{conn_id.upper()} is not set"
        ) from None
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as first:  # noqa: BLE001 - outside a task the SDK may not see the metastore
        try:
            from airflow.models.connection import Connection

            return Connection.get_connection_from_secrets(conn_id)
        except Exception:  # noqa: BLE001
            raise RegistryError(f"Airflow connection {conn_id!r} is not defined ({first})") from None


def resolve_registry_url(url_or_conn_id: str) -> str:
    """A SQLAlchemy URL for the registry from a URL or an Airflow connection id.

    ``mysql://`` becomes ``mysql+pymysql://``. The result may contain a password: show it only
    through :func:`~airflow_ml_provider.ml.registry.mask_url`.
    """
    value = (url_or_conn_id or "").strip()
    if not value:
        raise RegistryError("no registry given: pass a SQLAlchemy URL or an Airflow connection id")
    if "://" in value:
        url = normalize_url(value)
    else:
        env = os.environ.get(f"AIRFLOW_CONN_{value.upper()}")
        url = _url_from_env_value(value, env) if env else connection_url(_airflow_connection(value))
    return url.render_as_string(hide_password=False)


def open_registry(url_or_conn_id: str, table_prefix: str | None = None) -> ModelRegistry:
    """A :class:`ModelRegistry` for a URL or connection id (connection extra may set ``table_prefix``)."""
    url = resolve_registry_url(url_or_conn_id)
    return ModelRegistry(url, table_prefix=table_prefix or "")


def _make_hook_class() -> type:
    from airflow.sdk import BaseHook

    class ModelRegistryHook(BaseHook):
        """Interact with the model registry (``ml_model_publish``) through an Airflow connection.

        :param registry_conn_id: a ``mysql`` or ``sqlite`` connection, or any connection whose
            extra holds ``sqlalchemy_url``. Extra ``table_prefix`` prefixes the table names.
        """

        conn_name_attr = "registry_conn_id"
        default_conn_name = DEFAULT_CONN_ID
        conn_type = "ml_registry"
        hook_name = "ML Model Registry"

        def __init__(self, registry_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.registry_conn_id = registry_conn_id
            self._registry: ModelRegistry | None = None

        def get_uri(self) -> str:
            """The registry's SQLAlchemy URL (contains the password: do not log it)."""
            if "://" in self.registry_conn_id:
                return resolve_registry_url(self.registry_conn_id)
            conn = self.get_connection(self.registry_conn_id)
            return connection_url(conn).render_as_string(hide_password=False)

        def _table_prefix(self) -> str:
            if "://" in self.registry_conn_id:
                return ""
            conn = self.get_connection(self.registry_conn_id)
            return str((conn.extra_dejson or {}).get("table_prefix") or "")

        def get_registry(self, create_tables: bool = True) -> ModelRegistry:
            """The :class:`ModelRegistry` (tables created unless ``create_tables=False``)."""
            if self._registry is None:
                registry = ModelRegistry(self.get_uri(), table_prefix=self._table_prefix())
                self.log.info("Model registry: %s", mask_url(registry.url))
                if create_tables:
                    registry.create_tables()
                self._registry = registry
            return self._registry

        def get_conn(self) -> ModelRegistry:
            return self.get_registry()

        def test_connection(self) -> tuple[bool, str]:
            try:
                registry = ModelRegistry(self.get_uri(), table_prefix=self._table_prefix())
                registry.watermark()
                registry.dispose()
            except Exception as exc:  # noqa: BLE001 - reported to the UI
                return False, str(exc)
            return True, "Connection successfully tested"

        @classmethod
        def get_ui_field_behaviour(cls) -> dict[str, Any]:
            return {
                "hidden_fields": [],
                "relabeling": {"schema": "Database"},
                "placeholders": {
                    "extra": '{"sqlalchemy_url": "mysql+pymysql://user:pw@host:3306/db", "table_prefix": ""}',
                    "host": "MySQL host, or the SQLite database file",
                },
            }

    ModelRegistryHook.__module__ = __name__
    ModelRegistryHook.__qualname__ = "ModelRegistryHook"
    return ModelRegistryHook


def __getattr__(name: str) -> Any:
    if name == "ModelRegistryHook":
        cls = _make_hook_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
