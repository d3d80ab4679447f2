"""Where the UI plugin's data lives, and the JSON views the pages build on.

The pages and routes themselves (Jinja2 templates, auth, rollback, dictionary edits) are in
:mod:`airflow_ml_provider.plugins.pages`; this module resolves the registry and the dictionary
database for them and gives the registry overview of ``GET /ml/api/models*``. Values of keys that look
sensitive (Airflow's rules: ``password``, ``secret``, ``token``...) are shown as ``***``.

Where the data lives is decided by :mod:`airflow_ml_provider.ml.settings`, as for the operators, the
CLI and the service (docs/configuration.md):

* registry: ``[ml] registry_conn``, ``$AIRFLOW_ML_REGISTRY``, else ``$AIRFLOW_ML_HOME/registry.db``;
* dictionary: the DictionaryTableBackend's kwargs when Airflow uses it, else ``[ml] dictionary_conn``,
  else ``$AIRFLOW_ML_DICTIONARY``, else (backend enabled) ``$AIRFLOW_ML_HOME/dictionary.db``. When no
  dictionary is configured the JSON route answers 404 and the page says how to set one up.

The HTML pages never show raw JSON errors: a problem (registry unreachable...) is shown on the page.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

def _registry_location():
    from airflow_ml_provider.ml import settings
    from airflow_ml_provider.ml.registry import RegistryError

    try:
        return settings.registry_location()
    except (RegistryError, settings.SettingsError) as exc:
        raise HTTPException(503, f"model registry: {exc}") from None


def _open_registry():
    from airflow_ml_provider.ml.registry import ModelRegistry

    location = _registry_location()
    return ModelRegistry(location.url, table_prefix=location.table_prefix)


def _dictionary_location():
    """The dictionary's location, or None when none is configured."""
    from airflow_ml_provider.ml import settings

    try:
        return settings.dictionary_location()
    except settings.SettingsError as exc:
        raise HTTPException(503, str(exc)) from None


NO_DICTIONARY = (
    "No dictionary database is configured. Enable the secrets backend "
    "(AIRFLOW__SECRETS__BACKEND=airflow_ml_provider.secrets.dictionary.DictionaryTableBackend; it then uses "
    "$AIRFLOW_ML_HOME/dictionary.db), or name a database with [ml] dictionary_conn "
    "(AIRFLOW__ML__DICTIONARY_CONN) or AIRFLOW_ML_DICTIONARY. See docs/configuration.md."
)


def models_overview() -> list[dict[str, Any]]:
    """One entry per model: the version being served and every published version."""
    from airflow_ml_provider.ml.registry import RegistryError

    registry = _open_registry()
    try:
        out = []
        for name in registry.names():
            current = registry.current(name)
            out.append(
                {
                    "name": name,
                    "serving_version": current.version if current else None,
                    "versions": registry.versions(name),
                    "current": current.to_dict() if current else None,
                }
            )
        return out
    except RegistryError as exc:
        raise HTTPException(503, str(exc)) from None
    finally:
        registry.dispose()


def model_detail(name: str) -> dict[str, Any]:
    from airflow_ml_provider.ml.registry import RegistryError

    registry = _open_registry()
    try:
        records = registry.list(name)
        if not records:
            raise HTTPException(404, f"unknown model {name!r}")
        current = registry.current(name)
        return {
            "name": name,
            "serving_version": current.version if current else None,
            "versions": [r.to_dict() for r in records],
        }
    except RegistryError as exc:
        raise HTTPException(503, str(exc)) from None
    finally:
        registry.dispose()


def dictionary_entries() -> list[dict[str, Any]]:
    try:
        from airflow.sdk._shared.secrets_masker import should_hide_value_for_key
    except ImportError:  # older Airflow 3 releases
        from airflow.sdk.execution_time.secrets_masker import should_hide_value_for_key

    from airflow_ml_provider.dictionary_store import (
        DictionaryError,
        DictionaryStore,
        DictionaryTableMissing,
    )

    location = _dictionary_location()
    if location is None:
        raise HTTPException(404, NO_DICTIONARY)
    try:
        store = DictionaryStore(location.url, location.table)
    except DictionaryError as exc:
        raise HTTPException(503, str(exc)) from None
    try:
        entries = store.list(location.key_prefix or None)
    except DictionaryTableMissing:
        entries = []  # nothing set yet: `airflow-ml dictionary init` or the first `set` creates it
    except DictionaryError as exc:
        raise HTTPException(503, str(exc)) from None
    finally:
        store.dispose()
    rows = []
    for entry in entries:
        row = entry.to_dict()
        if should_hide_value_for_key(entry.key):
            row["value"] = "***"
        rows.append(row)
    return rows

