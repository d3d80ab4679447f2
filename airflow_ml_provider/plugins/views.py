"""The "ML" pages of the Airflow UI: published models and the dictionary table.

A FastAPI app mounted by :class:`~airflow_ml_provider.plugins.ml_plugin.AirflowMLPlugin` at ``/ml``
in Airflow's API server. Airflow does not authenticate plugin apps, so every route here depends on
Airflow's own auth: ``/ml/models`` and ``/ml/api/models*`` need a signed-in user, and the dictionary
routes need read access to Variables (the dictionary serves Variables). Values of keys that look
sensitive (Airflow's rules: ``password``, ``secret``, ``token``...) are shown as ``***``.

Where the data lives:

* registry: ``$AIRFLOW_ML_REGISTRY`` or ``[ml] registry_conn`` (a SQLAlchemy URL or a connection id);
* dictionary: ``[secrets] backend_kwargs`` of the API server, when ``[secrets] backend`` is the
  DictionaryTableBackend (the same settings the backend uses there).

Routes (JSON): ``GET /ml/api/models``, ``GET /ml/api/models/{name}``, ``GET /ml/api/dictionary``;
(HTML): ``GET /ml/models``, ``GET /ml/dictionary``.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

BACKEND_CLASS = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"


def _registry_value() -> str | None:
    value = os.environ.get("AIRFLOW_ML_REGISTRY", "").strip()
    if value:
        return value
    from airflow.configuration import conf

    return (conf.get("ml", "registry_conn", fallback="") or "").strip() or None


def _open_registry():
    from airflow_ml_provider.hooks.registry import resolve_registry_url
    from airflow_ml_provider.ml.registry import ModelRegistry

    value = _registry_value()
    if not value:
        raise HTTPException(503, "no model registry configured: set AIRFLOW_ML_REGISTRY or [ml] registry_conn")
    return ModelRegistry(resolve_registry_url(value))


def _dictionary_settings() -> dict[str, Any]:
    from airflow.configuration import conf

    if (conf.get("secrets", "backend", fallback="") or "").strip() != BACKEND_CLASS:
        raise HTTPException(503, f"[secrets] backend is not {BACKEND_CLASS}")
    raw = conf.get("secrets", "backend_kwargs", fallback="") or "{}"
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(503, f"[secrets] backend_kwargs is not valid JSON: {exc.msg}") from None
    if not kwargs.get("sql_alchemy_conn"):
        raise HTTPException(503, "[secrets] backend_kwargs has no sql_alchemy_conn")
    return kwargs


def models_overview() -> list[dict[str, Any]]:
    """One entry per model: the version being served and every published version."""
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
        DEFAULT_TABLE,
        DictionaryError,
        DictionaryStore,
        DictionaryTableMissing,
    )

    settings = _dictionary_settings()
    store = DictionaryStore(settings["sql_alchemy_conn"], settings.get("table", DEFAULT_TABLE))
    try:
        entries = store.list(settings.get("key_prefix") or None)
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


def _page(title: str, header: list[str], rows: list[list[Any]], note: str = "") -> HTMLResponse:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    empty = "" if rows else '<p class="empty">Nothing here yet.</p>'
    return HTMLResponse(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}}.note{{color:#555}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="note">{html.escape(note)}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{empty}</body></html>"""
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
        models = await asyncio.to_thread(models_overview)
        rows = []
        for m in models:
            cur = m["current"] or {}
            metrics = cur.get("metrics") or {}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            rows.append([m["name"], m["serving_version"], ", ".join(map(str, m["versions"])),
                         cur.get("framework"), shown, cur.get("bundle_uri"), cur.get("created_at")])
        return _page("Published models", ["model", "serving", "versions", "framework", "metrics", "bundle",
                                          "published"], rows, "From the model registry (ml_model_publish).")

    @app.get("/dictionary", dependencies=can_read_variables, response_class=HTMLResponse)
    async def dictionary_page() -> HTMLResponse:
        entries = await asyncio.to_thread(dictionary_entries)
        rows = [[e["key"], e["value"], e["description"], e["updated_at"], e["updated_by"]] for e in entries]
        return _page("Dictionary table", ["key", "value", "description", "updated", "by"], rows,
                     "Served to DAGs as Airflow Variables; change with `airflow-ml dictionary set`.")

    return app
