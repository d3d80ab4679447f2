"""Where everything is: the ONE place that resolves the platform's locations (pure core).

Operators, :class:`~airflow_ml_provider.hooks.registry.ModelRegistryHook`, the ``airflow-ml`` CLI, the
UI plugin, the secrets backend and ``airflow-ml serve`` all ask this module, so they agree on the
model registry, the artifact storage, the dictionary database and the model service. See
docs/configuration.md for the table of settings.

Every setting is decided by the first layer that gives it a value:

1. an **explicit argument** (an operator parameter, ``--registry``, a hook's connection id...);
2. Airflow's configuration, section **[ml]** (``airflow.cfg`` or ``AIRFLOW__ML__<OPTION>``), read
   through Airflow's own ``airflow.configuration.conf`` -- only when Airflow is importable, and
   imported inside :func:`resolve`, never when this module is imported;
3. the environment variable **AIRFLOW_ML_<NAME>**;
4. the **embedded default** under the ML home: ``sqlite:///<home>/registry.db`` and
   ``<home>/storage`` (the home itself defaults to ``~/airflow-ml``).

The dictionary database has one more layer between 1 and 2: the keyword arguments of the
``DictionaryTableBackend`` when Airflow is configured to use it (``[workers] secrets_backend_kwargs``,
else ``[secrets] backend_kwargs``), so the CLI and the UI read the table the backend serves.
It has an embedded default (``sqlite:///<home>/dictionary.db``) only when that backend is enabled;
otherwise it is "not configured" (``Settings.dictionary is None``).

Each value comes with the layer that decided it (:attr:`Settings.sources`), so the CLI and the UI
can say where a value came from. Registry and dictionary values are SQLAlchemy URLs or Airflow
connection ids; :func:`registry_location` / :func:`dictionary_location` turn them into a URL plus the
table names (a connection's extra may hold ``table_prefix``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKEND_CLASS",
    "OPTIONS",
    "DictionaryLocation",
    "RegistryLocation",
    "Settings",
    "SettingsError",
    "dictionary_location",
    "open_registry",
    "registry_location",
    "resolve",
]

#: The secrets backend class whose kwargs name the dictionary database.
BACKEND_CLASS = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"
DEFAULT_DICTIONARY_TABLE = "ml_dictionary"
DEFAULT_SERVICE_URL = "http://127.0.0.1:8501"

#: setting -> ([ml] option, environment variable)
OPTIONS: dict[str, tuple[str, str]] = {
    "home": ("home", "AIRFLOW_ML_HOME"),
    "storage": ("storage", "AIRFLOW_ML_STORAGE"),
    "registry": ("registry_conn", "AIRFLOW_ML_REGISTRY"),
    "dictionary": ("dictionary_conn", "AIRFLOW_ML_DICTIONARY"),
    "dictionary_table": ("dictionary_table", "AIRFLOW_ML_DICTIONARY_TABLE"),
    "dictionary_key_prefix": ("dictionary_key_prefix", "AIRFLOW_ML_DICTIONARY_KEY_PREFIX"),
    "service_url": ("service_url", "AIRFLOW_ML_SERVICE_URL"),
}

# where the secrets backend is configured: (section, backend option, kwargs option, per-key env prefix)
_BACKEND_PLACES = (
    ("workers", "secrets_backend", "secrets_backend_kwargs", "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__"),
    ("secrets", "backend", "backend_kwargs", "AIRFLOW__SECRETS__BACKEND_KWARG__"),
)
# backend kwarg -> setting
_BACKEND_KWARGS = {
    "sql_alchemy_conn": "dictionary",
    "table": "dictionary_table",
    "key_prefix": "dictionary_key_prefix",
}

ARGUMENT = "argument"
DEFAULT = "default"


class SettingsError(ValueError):
    """A setting cannot be read (e.g. backend kwargs that are not JSON); the message names it."""


@dataclass(frozen=True)
class Settings:
    """The resolved locations. ``sources[name]`` says which layer decided each value:
    ``"argument"``, ``"AIRFLOW__ML__STORAGE"`` / ``"[ml] storage"`` (the Airflow config, as an
    environment variable or from ``airflow.cfg``), ``"AIRFLOW_ML_STORAGE"``, ``"[secrets] backend_kwargs"``
    (dictionary only) or ``"default"``."""

    home: str
    storage: str
    registry: str
    dictionary: str | None
    dictionary_table: str
    dictionary_key_prefix: str
    service_url: str
    sources: Mapping[str, str] = field(default_factory=dict)
    #: True when the DictionaryTableBackend is enabled in Airflow's configuration.
    dictionary_backend_enabled: bool = False

    def source(self, name: str) -> str:
        return self.sources.get(name, DEFAULT)

    def describe(self) -> list[str]:
        """``name = value (source)`` lines, passwords masked (for ``--help``-style output and logs)."""
        from airflow_ml_provider.ml.db import mask_url

        lines = []
        for name in OPTIONS:
            value = getattr(self, name)
            shown = mask_url(value) if name in ("registry", "dictionary") and value else value
            lines.append(f"{name} = {shown if shown is not None else '(not configured)'} ({self.source(name)})")
        return lines

    # -- the derived locations ---------------------------------------------------------------

    def registry_location(self, **kwargs: Any) -> RegistryLocation:
        return registry_location(self, **kwargs)

    def dictionary_location(self, **kwargs: Any) -> DictionaryLocation | None:
        return dictionary_location(self, **kwargs)


# ------------------------------------------------------------------------------------------------
# reading the layers


class _Missing:
    pass


_AUTO: Any = _Missing()


def _airflow_conf() -> Any:
    """Airflow's ``conf`` when Airflow is importable, else None (imported here, never at module import)."""
    try:
        from airflow.configuration import conf
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - a broken airflow.cfg: say so rather than ignore it
        raise SettingsError(f"cannot read Airflow's configuration: {type(exc).__name__}: {exc}") from None
    return conf


def _conf_get(conf: Any, section: str, option: str) -> str | None:
    if conf is None:
        return None
    try:
        value = conf.get(section, option, fallback=None)
    except Exception as exc:  # noqa: BLE001 - e.g. a failing _CMD / _SECRET variant
        raise SettingsError(f"cannot read [{section}] {option} from Airflow's configuration: {exc}") from None
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _conf_source(section: str, option: str) -> str:
    var = f"AIRFLOW__{section.upper()}__{option.upper()}"
    return var if os.environ.get(var) else f"[{section}] {option}"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _backend_kwargs(conf: Any) -> tuple[dict[str, Any], str | None, bool]:
    """(kwargs, source, enabled) of the DictionaryTableBackend in Airflow's configuration."""
    for section, backend_opt, kwargs_opt, env_prefix in _BACKEND_PLACES:
        if _conf_get(conf, section, backend_opt) != BACKEND_CLASS:
            continue
        raw = _conf_get(conf, section, kwargs_opt) or ""
        try:
            kwargs = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise SettingsError(f"[{section}] {kwargs_opt} is not valid JSON: {exc.msg} (column {exc.colno})") \
                from None
        if not isinstance(kwargs, dict):
            raise SettingsError(f"[{section}] {kwargs_opt} must be a JSON object")
        for name, value in os.environ.items():  # per-key variables override the JSON, as in Airflow
            if name.startswith(env_prefix) and len(name) > len(env_prefix):
                kwargs[name[len(env_prefix):].lower()] = value
        return kwargs, f"[{section}] {kwargs_opt}", True
    return {}, None, False


def resolve(
    *,
    home: str | None = None,
    storage: str | None = None,
    registry: str | None = None,
    dictionary: str | None = None,
    dictionary_table: str | None = None,
    dictionary_key_prefix: str | None = None,
    service_url: str | None = None,
    backend_in_use: bool = False,
    airflow_conf: Any = _AUTO,
) -> Settings:
    """Resolve every location (see the module doc for the order). Arguments that are None (or
    empty) do not count as given. ``backend_in_use``: the caller is the DictionaryTableBackend (so the
    dictionary's embedded default applies). ``airflow_conf`` replaces Airflow's ``conf`` (None: ignore
    Airflow)."""
    conf = _airflow_conf() if airflow_conf is _AUTO else airflow_conf
    given = {
        "home": home,
        "storage": storage,
        "registry": registry,
        "dictionary": dictionary,
        "dictionary_table": dictionary_table,
        "dictionary_key_prefix": dictionary_key_prefix,
        "service_url": service_url,
    }
    values: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    backend, backend_source, backend_enabled = _backend_kwargs(conf)
    backend_enabled = backend_enabled or backend_in_use

    for name, (option, env_var) in OPTIONS.items():
        explicit = given[name]
        if explicit is not None and (str(explicit).strip() or name == "dictionary_key_prefix"):
            values[name], sources[name] = str(explicit).strip(), ARGUMENT
            continue
        kwarg = next((k for k, s in _BACKEND_KWARGS.items() if s == name), None)
        # the backend's table and key prefix belong to the database the backend serves
        follows_backend = name == "dictionary" or sources.get("dictionary") == backend_source or (
            sources.get("dictionary") == DEFAULT and backend_enabled)
        if kwarg is not None and follows_backend and backend.get(kwarg) not in (None, ""):
            values[name], sources[name] = str(backend[kwarg]).strip(), str(backend_source)
            continue
        from_conf = _conf_get(conf, "ml", option)
        if from_conf is not None:
            values[name], sources[name] = from_conf, _conf_source("ml", option)
            continue
        from_env = _env(env_var)
        if from_env is not None:
            values[name], sources[name] = from_env, env_var
            continue
        values[name], sources[name] = None, DEFAULT

    home_dir = os.path.expanduser(values["home"] or os.path.join("~", "airflow-ml"))
    if sources["dictionary"] == DEFAULT and backend_enabled:
        values["dictionary"] = embedded_dictionary_url(home_dir)
    return Settings(
        home=home_dir,
        storage=values["storage"] or os.path.join(home_dir, "storage"),
        registry=values["registry"] or f"sqlite:///{os.path.join(home_dir, 'registry.db')}",
        dictionary=values["dictionary"],
        dictionary_table=values["dictionary_table"] or DEFAULT_DICTIONARY_TABLE,
        dictionary_key_prefix=values["dictionary_key_prefix"] or "",
        service_url=(values["service_url"] or DEFAULT_SERVICE_URL).rstrip("/"),
        sources=sources,
        dictionary_backend_enabled=backend_enabled,
    )


def embedded_dictionary_url(home: str) -> str:
    """The embedded default dictionary database: SQLite in the ML home."""
    return f"sqlite:///{os.path.join(home, 'dictionary.db')}"


# ------------------------------------------------------------------------------------------------
# connections


def _airflow_connection(conn_id: str) -> Any:
    """Look a connection up through Airflow (env, secrets backends, metadata DB)."""
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        raise LookupError(
            f"{conn_id!r} is not a URL, Airflow is not installed and AIRFLOW_CONN_{conn_id.upper()} is not set"
        ) from None
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as first:  # noqa: BLE001 - outside a task the SDK may not see the metastore
        try:
            from airflow.models.connection import Connection

            return Connection.get_connection_from_secrets(conn_id)
        except Exception:  # noqa: BLE001
            raise LookupError(f"Airflow connection {conn_id!r} is not defined ({first})") from None


def fields_of_connection(conn: Any) -> dict[str, Any]:
    extra = getattr(conn, "extra_dejson", None)
    if extra is None:
        raw = getattr(conn, "extra", None) or {}
        try:
            extra = json.loads(raw) if isinstance(raw, str) and raw else (raw if isinstance(raw, dict) else {})
        except ValueError:
            extra = {}
    return {
        "conn_type": getattr(conn, "conn_type", None),
        "host": getattr(conn, "host", None),
        "port": getattr(conn, "port", None),
        "login": getattr(conn, "login", None),
        "password": getattr(conn, "password", None),
        "schema": getattr(conn, "schema", None),
        "extra": dict(extra or {}),
    }


def connection_fields(
    conn_id: str, get_connection: Callable[[str], Any] | None = None, *, use_airflow: bool = True
) -> dict[str, Any]:
    """The fields of connection ``conn_id``: ``AIRFLOW_CONN_<ID>`` when set (no Airflow import), else
    ``get_connection(conn_id)`` (a hook's), else Airflow's lookup (unless ``use_airflow=False``).

    :raises LookupError: the connection is not defined (or cannot be looked up here); named.
    :raises ConnectionEnvError: ``AIRFLOW_CONN_<ID>`` is malformed; named.
    """
    from airflow_ml_provider.ml.connections import env_connection

    fields = env_connection(conn_id)
    if fields is not None:
        return fields
    if get_connection is not None:
        return fields_of_connection(get_connection(conn_id))
    if not use_airflow:
        raise LookupError(f"{conn_id!r} is not a URL and AIRFLOW_CONN_{conn_id.upper()} is not set")
    return fields_of_connection(_airflow_connection(conn_id))


# ------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class RegistryLocation:
    """The model registry: its SQLAlchemy URL (may hold a password: show :attr:`masked`), the
    table prefix, what was given (URL or connection id) and which layer gave it."""

    url: str
    table_prefix: str
    given: str
    source: str

    @property
    def masked(self) -> str:
        from airflow_ml_provider.ml.db import mask_url

        return mask_url(self.url)

    @property
    def tables(self) -> tuple[str, str]:
        from airflow_ml_provider.ml.registry import PUBLISH_TABLE, SERVING_TABLE

        return f"{self.table_prefix}{PUBLISH_TABLE}", f"{self.table_prefix}{SERVING_TABLE}"


def registry_location(
    settings: Settings | None = None,
    *,
    registry: str | None = None,
    table_prefix: str | None = None,
    get_connection: Callable[[str], Any] | None = None,
) -> RegistryLocation:
    """The registry's URL and table prefix. ``registry`` (URL or connection id) overrides the
    settings; a connection's extra may give ``sqlalchemy_url`` and ``table_prefix``; an explicit
    ``table_prefix`` wins over the extra.

    :raises RegistryError: a connection that is undefined or unusable, a bad URL (named, masked).
    """
    from airflow_ml_provider.ml.connections import ConnectionEnvError
    from airflow_ml_provider.ml.db import DatabaseURLError, normalize_url, url_from_connection
    from airflow_ml_provider.ml.registry import RegistryError

    if registry is not None and str(registry).strip():
        given, source = str(registry).strip(), ARGUMENT
    else:
        settings = settings if settings is not None else resolve()
        given, source = settings.registry, settings.source("registry")
    prefix = ""
    try:
        if "://" in given:
            url = normalize_url(given)
        else:
            fields = connection_fields(given, get_connection)
            prefix = str((fields.get("extra") or {}).get("table_prefix") or "")
            url = url_from_connection(fields.pop("conn_type"), **fields, what="the model registry")
    except (DatabaseURLError, ConnectionEnvError, LookupError) as exc:
        raise RegistryError(str(exc).strip("'\"")) from None
    if table_prefix is not None:
        prefix = table_prefix
    if source == DEFAULT and url.get_backend_name() == "sqlite" and url.database:
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    return RegistryLocation(url.render_as_string(hide_password=False), prefix, given, source)


def open_registry(
    registry: str | None = None,
    *,
    table_prefix: str | None = None,
    settings: Settings | None = None,
    get_connection: Callable[[str], Any] | None = None,
) -> Any:
    """A :class:`~airflow_ml_provider.ml.registry.ModelRegistry` on the resolved registry."""
    from airflow_ml_provider.ml.registry import ModelRegistry

    loc = registry_location(settings, registry=registry, table_prefix=table_prefix, get_connection=get_connection)
    return ModelRegistry(loc.url, table_prefix=loc.table_prefix)


# ------------------------------------------------------------------------------------------------
# the dictionary


@dataclass(frozen=True)
class DictionaryLocation:
    """The dictionary database: URL (may hold a password: show :attr:`masked`), table, key prefix."""

    url: str
    table: str
    key_prefix: str
    given: str
    source: str

    @property
    def masked(self) -> str:
        from airflow_ml_provider.ml.db import mask_url

        return mask_url(self.url)


def dictionary_location(
    settings: Settings | None = None,
    *,
    use_airflow_connections: bool = True,
) -> DictionaryLocation | None:
    """The dictionary's URL, table and key prefix, or None when no dictionary is configured.

    The database may be a SQLAlchemy URL or a connection id (its extra may hold ``table_prefix``:
    the table is then ``<table_prefix>ml_dictionary`` unless a table is set).

    :raises SettingsError: an undefined or unusable connection, a bad URL (named, masked).
    """
    from airflow_ml_provider.ml.connections import ConnectionEnvError
    from airflow_ml_provider.ml.db import DatabaseURLError, make_url, url_from_connection

    settings = settings if settings is not None else resolve()
    given = settings.dictionary
    if not given:
        return None
    table = settings.dictionary_table
    try:
        if "://" in given:
            url = make_url(given)
        else:
            fields = connection_fields(given, use_airflow=use_airflow_connections)
            prefix = str((fields.get("extra") or {}).get("table_prefix") or "")
            if prefix and settings.source("dictionary_table") == DEFAULT:
                table = f"{prefix}{DEFAULT_DICTIONARY_TABLE}"
            url = url_from_connection(fields.pop("conn_type"), **fields, what="the dictionary")
    except (DatabaseURLError, ConnectionEnvError, LookupError) as exc:
        raise SettingsError(f"dictionary ({settings.source('dictionary')}): {str(exc).strip(chr(39))}") from None
    if settings.source("dictionary") == DEFAULT and url.get_backend_name() == "sqlite" and url.database:
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    return DictionaryLocation(
        url.render_as_string(hide_password=False), table, settings.dictionary_key_prefix, given,
        settings.source("dictionary"),
    )
