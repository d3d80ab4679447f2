"""Airflow hook for the model registry, and registry URL resolution for the CLI and the service.

* :class:`ModelRegistryHook` turns an Airflow connection into a SQLAlchemy URL and a
  :class:`~airflow_ml_provider.ml.registry.ModelRegistry`. Supported connections: ``mysql``
  (``mysql+pymysql://login:password@host:port/schema``), ``sqlite`` (the database file in *host*,
  as Airflow's SQLite connection keeps it), or any connection whose extra holds
  ``{"sqlalchemy_url": "..."}``. An extra ``table_prefix`` prefixes the registry table names.
  Without a connection id the hook uses the platform's registry setting (``[ml] registry_conn``,
  ``$AIRFLOW_ML_REGISTRY``, else the embedded SQLite registry; see docs/configuration.md).
* :func:`resolve_registry_url` and :func:`open_registry` are thin names for
  :mod:`airflow_ml_provider.ml.settings`, the one owner of that resolution.

This module does not import Airflow at import time: ``ModelRegistryHook`` is created on first
access (it subclasses ``airflow.sdk.BaseHook``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml import settings
from airflow_ml_provider.ml.registry import ModelRegistry, url_from_connection

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["ModelRegistryHook", "connection_url", "open_registry", "resolve_registry_url"]  # noqa: F822 - lazy

DEFAULT_CONN_ID = "ml_registry_default"


def connection_url(conn: Any) -> sa.engine.URL:
    """The SQLAlchemy URL of an Airflow ``Connection`` (or any object with the same attributes)."""
    fields = settings.fields_of_connection(conn)
    return url_from_connection(fields.pop("conn_type"), **fields)


def resolve_registry_url(url_or_conn_id: str | None = None) -> str:
    """A SQLAlchemy URL for the registry from a URL or an Airflow connection id (None: the setting).

    ``mysql://`` becomes ``mysql+pymysql://``. The result may contain a password: show it only
    through :func:`~airflow_ml_provider.ml.db.mask_url`.
    """
    return settings.registry_location(registry=url_or_conn_id).url


def open_registry(url_or_conn_id: str | None = None, table_prefix: str | None = None) -> ModelRegistry:
    """A :class:`ModelRegistry` for a URL or connection id (None: the setting); the connection's extra
    may set ``table_prefix``, an explicit ``table_prefix`` wins."""
    return settings.open_registry(url_or_conn_id, table_prefix=table_prefix)


def _make_hook_class() -> type:
    from airflow.sdk import BaseHook

    class ModelRegistryHook(BaseHook):
        """Interact with the model registry (``ml_model_publish``) through an Airflow connection.

        :param registry_conn_id: a ``mysql`` or ``sqlite`` connection, or any connection whose
            extra holds ``sqlalchemy_url`` (a SQLAlchemy URL is accepted too). Extra ``table_prefix``
            prefixes the table names. Default: the registry setting (docs/configuration.md).
        """

        conn_name_attr = "registry_conn_id"
        default_conn_name = DEFAULT_CONN_ID
        conn_type = "ml_registry"
        hook_name = "ML Model Registry"

        def __init__(self, registry_conn_id: str | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.registry_conn_id = registry_conn_id
            self._registry: ModelRegistry | None = None
            self._location: settings.RegistryLocation | None = None

        def location(self) -> settings.RegistryLocation:
            """Where the registry is: URL, table prefix, and the layer that named it."""
            if self._location is None:
                self._location = settings.registry_location(
                    registry=self.registry_conn_id, get_connection=self.get_connection
                )
            return self._location

        def get_uri(self) -> str:
            """The registry's SQLAlchemy URL (contains the password: do not log it)."""
            return self.location().url

        def _table_prefix(self) -> str:
            return self.location().table_prefix

        def get_registry(self, create_tables: bool = True) -> ModelRegistry:
            """The :class:`ModelRegistry` (tables created unless ``create_tables=False``)."""
            if self._registry is None:
                location = self.location()
                registry = ModelRegistry(location.url, table_prefix=location.table_prefix)
                self.log.info("Model registry: %s (%s)", location.masked, location.source)
                if create_tables:
                    registry.create_tables()
                self._registry = registry
            return self._registry

        def get_conn(self) -> ModelRegistry:
            return self.get_registry()

        def test_connection(self) -> tuple[bool, str]:
            try:
                location = self.location()
                registry = ModelRegistry(location.url, table_prefix=location.table_prefix)
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
