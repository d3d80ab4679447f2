"""The "ML" pages of the Airflow UI: published models and the dictionary table.

A FastAPI app mounted by :class:`~airflow_ml_provider.plugins.ml_plugin.AirflowMLPlugin` at ``/ml``
in Airflow's API server. Airflow does not authenticate plugin apps, so every route here depends on
Airflow's own auth: ``/ml/models`` and ``/ml/api/models*`` need a signed-in user, and the dictionary
routes need read access to Variables (the dictionary serves Variables). Values of keys that look
sensitive (Airflow's rules: ``password``, ``secret``, ``token``...) are shown as ``***``.

Where the data lives is decided by :mod:`airflow_ml_provider.ml.settings`, as for the operators, the
CLI and the service (docs/configuration.md):

* registry: ``[ml] registry_conn``, ``$AIRFLOW_ML_REGISTRY``, else ``$AIRFLOW_ML_HOME/registry.db``;
* dictionary: the DictionaryTableBackend's kwargs when Airflow uses it, else ``[ml] dictionary_conn``,
  else ``$AIRFLOW_ML_DICTIONARY``, else (backend enabled) ``$AIRFLOW_ML_HOME/dictionary.db``. When no
  dictionary is configured the JSON route answers 404 and the page says how to set one up.

The HTML pages never show raw JSON errors: a problem (registry unreachable...) is shown on the page.

Routes (JSON): ``GET /ml/api/models``, ``GET /ml/api/models/{name}``, ``GET /ml/api/dictionary``;
(HTML): ``GET /ml/models``, ``GET /ml/dictionary``.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

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


def _page(title: str, header: list[str], rows: list[list[Any]], note: str = "", *, empty_text: str = "Nothing here yet.",
          problem: str | None = None, status: int = 200) -> HTMLResponse:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    empty = "" if rows else f'<p class="empty">{html.escape(empty_text)}</p>'
    if problem is not None:
        empty = f'<p class="problem">{html.escape(problem)}</p>'
        head = body = ""
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" if head else ""
    return HTMLResponse(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}}.note{{color:#555}}.problem{{color:#a00}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="note">{html.escape(note)}</p>
{table}{empty}</body></html>""",
        status_code=status,
    )


def create_app() -> FastAPI:
    """The FastAPI app, every route behind Airflow's authentication."""
    from airflow.api_fastapi.core_api.security import requires_access_variable, requires_authenticated

    signed_in = [Depends(requires_authenticated())]
    can_read_variables = [Depends(requires_access_variable("GET"))]
    app = FastAPI(title="Airflow ML", description="Published models and the dictionary table")

    @app.get("/api/models", dependencies=signed_in)
    async def api_models() -> list[dict[str, Any]]:
        return await asyncio.to_thread(models_overview)

    @app.get("/api/models/{name}", dependencies=signed_in)
    async def api_model(name: str) -> dict[str, Any]:
        return await asyncio.to_thread(model_detail, name)

    @app.get("/api/dictionary", dependencies=can_read_variables)
    async def api_dictionary() -> list[dict[str, Any]]:
        return await asyncio.to_thread(dictionary_entries)

    @app.get("/models", dependencies=signed_in, response_class=HTMLResponse)
    async def models_page() -> HTMLResponse:
        header = ["model", "serving", "versions", "framework", "metrics", "bundle", "published"]
        try:
            location = await asyncio.to_thread(_registry_location)
            models = await asyncio.to_thread(models_overview)
        except HTTPException as exc:
            return _page("Published models", header, [], "", problem=str(exc.detail), status=exc.status_code)
        where = f"From the model registry at {location.masked} (set by {location.source})."
        rows = []
        for m in models:
            cur = m["current"] or {}
            metrics = cur.get("metrics") or {}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            rows.append([m["name"], m["serving_version"], ", ".join(map(str, m["versions"])),
                         cur.get("framework"), shown, cur.get("bundle_uri"), cur.get("created_at")])
        return _page("Published models", header, rows, where,
                     empty_text="No model has been published yet: run a DAG that ends with PublishModelOperator.")

    @app.get("/dictionary", dependencies=can_read_variables, response_class=HTMLResponse)
    async def dictionary_page() -> HTMLResponse:
        header = ["key", "value", "description", "updated", "by"]
        try:
            location = await asyncio.to_thread(_dictionary_location)
            if location is None:
                return _page("Dictionary table", header, [], "", problem=NO_DICTIONARY)
            entries = await asyncio.to_thread(dictionary_entries)
        except HTTPException as exc:
            return _page("Dictionary table", header, [], "", problem=str(exc.detail), status=exc.status_code)
        rows = [[e["key"], e["value"], e["description"], e["updated_at"], e["updated_by"]] for e in entries]
        where = (f"Table {location.table!r} at {location.masked} (set by {location.source})"
                 + (f", key prefix {location.key_prefix!r}" if location.key_prefix else "")
                 + ". Served to DAGs as Airflow Variables; change with `airflow-ml dictionary set`.")
        return _page("Dictionary table", header, rows, where,
                     empty_text="The dictionary is empty: add a key with `airflow-ml dictionary set KEY VALUE`.")

    return app
