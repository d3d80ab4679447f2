"""The ML pages of the Airflow UI: models (versions, charts, comparison, rollback), the dictionary
(search, edit, history) and a DAG run's "ML model" tab.

A FastAPI app mounted by :class:`~airflow_ml_provider.plugins.ml_plugin.AirflowMLPlugin` at ``/ml``
in Airflow's API server. Pages are Jinja2 templates (``plugins/templates``, autoescaped) with one
small stylesheet (``plugins/static/ml.css``); charts are the bundle's PNGs (served from the
bundle, checked against its manifest) and SVG drawn here (:mod:`~airflow_ml_provider.plugins.svg`).
Nothing is loaded from the internet. Who may do what: :mod:`airflow_ml_provider.plugins.auth`.

Where the data lives is decided by :mod:`airflow_ml_provider.plugins.views` (the registry and
dictionary resolution functions). The dictionary is changed through the same
:class:`~airflow_ml_provider.dictionary_store.DictionaryStore` methods as ``airflow-ml dictionary``
(same validation, same history rows), with the signed-in user's name as the author.

HTML routes: ``GET /ml/models``, ``GET /ml/models/{name}`` (``?v=`` charts of a version, ``?a=&b=``
the comparison), ``POST /ml/models/{name}/serve`` (form: ``version``, ``reason``),
``GET /ml/models/{name}/versions/{v}/charts/{file}.png``, ``GET /ml/models/{name}/metric.svg``,
``GET /ml/models/{name}/trend.svg``, ``GET /ml/models/{name}/roc.svg?a=&b=``,
``GET /ml/dictionary`` (``?q=`` search, ``?by=`` author), ``GET /ml/dictionary/key?key=``,
``POST /ml/dictionary/set``, ``POST /ml/dictionary/delete``, ``GET /ml/runs/{dag_id}/{run_id}``.

JSON routes: ``GET /ml/api/models``, ``GET /ml/api/models/{name}``,
``POST /ml/api/models/{name}/rollback`` (``{"version": n, "reason": "..."}``), ``GET /ml/api/dictionary``,
``PUT /ml/api/dictionary/{key}`` (``{"value": "...", "description": "..."}``),
``DELETE /ml/api/dictionary/{key}``, ``GET /ml/api/dictionary/{key}/history``,
``GET /ml/api/runs/{dag_id}/{run_id}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from airflow_ml_provider.plugins import auth, svg

HERE = Path(__file__).parent
#: Metrics tried in this order to pick a model's "main" metric (the first one it has).
MAIN_METRICS = ("auc", "rmse", "hit_rate", "average_precision", "r2", "mae", "logloss", "accuracy")
#: Metrics shown as columns of the versions table (when any version has them); all are in the details.
TABLE_METRICS = ("auc", "ks", "logloss", "average_precision", "precision", "recall", "f1", "accuracy",
                 "rmse", "mae", "r2", "hit_rate", "n")
#: Metrics where smaller is better (a negative delta is an improvement), and where larger is; the
#: deltas of other metrics (counts, thresholds, rates) are shown uncoloured.
LOWER_IS_BETTER = {"logloss", "rmse", "mae", "mape"}
HIGHER_IS_BETTER = {"auc", "ks", "average_precision", "precision", "recall", "f1", "accuracy", "r2", "hit_rate"}
MASK = "***"


# ---------------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------------


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # every page: a value can never become markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["when"] = lambda v: (v or "")[:19].replace("T", " ")
    env.filters["q"] = lambda v: quote(str(v), safe="")
    return env


_ENV = None


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    base = request.scope.get("root_path", "").rstrip("/")  # "/ml" (after any Airflow base path)
    airflow_base = base[: -len("/ml")] if base.endswith("/ml") else ""
    text = _ENV.get_template(template).render(base=base, airflow=airflow_base, **context)
    return HTMLResponse(text, status_code=status_code)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.6g}"


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------


def _open_registry():
    from airflow_ml_provider.plugins import views

    return views._open_registry()


def numeric_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    return {
        str(k): v
        for k, v in (metrics or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def main_metric(records: list[Any]) -> str | None:
    names: set[str] = set()
    for r in records:
        names.update(numeric_metrics(r.metrics))
    for m in MAIN_METRICS:
        if m in names:
            return m
    return sorted(names)[0] if names else None


def _registry_call(fn, *args):
    from airflow_ml_provider.ml.registry import RefusedVersionError, RegistryError, UnknownModelError

    try:
        return fn(*args)
    except UnknownModelError as exc:
        raise HTTPException(404, str(exc)) from None
    except RefusedVersionError as exc:  # a model service refused to load that version
        raise HTTPException(409, str(exc)) from None
    except RegistryError as exc:
        raise HTTPException(400 if "invalid" in str(exc) else 503, str(exc)) from None


def models_list() -> list[dict[str, Any]]:
    """One row per model: served and latest version, when, main metric, the trend across versions."""
    registry = _open_registry()
    try:
        records = _registry_call(registry.list)
        by_name: dict[str, list[Any]] = {}
        for r in records:
            by_name.setdefault(r.name, []).append(r)
        current = _registry_call(registry.current_many, list(by_name))
    finally:
        registry.dispose()
    out = []
    for name, recs in by_name.items():
        recs.sort(key=lambda r: r.version)
        cur = current.get(name)
        metric = main_metric(recs)
        latest = recs[-1]
        out.append({
            "name": name,
            "serving_version": cur.version if cur else None,
            "latest_version": latest.version,
            "latest_at": latest.created_at.isoformat() if latest.created_at else None,
            "framework": (cur or latest).framework,
            "main_metric": metric,
            "main_value": numeric_metrics((cur or latest).metrics).get(metric) if metric else None,
            "trend": [numeric_metrics(r.metrics).get(metric) for r in recs] if metric else [],
            "versions": [r.version for r in recs],
        })
    return out


def _chart_names(bundle_uri: str) -> tuple[list[str], dict[str, str]]:
    """(chart file names, {name: sha256}) of a published bundle, from its manifest."""
    from airflow_ml_provider.ml.bundle import BundleError, read_remote_manifest

    try:
        manifest = read_remote_manifest(bundle_uri)
    except BundleError:
        return [], {}
    files = manifest.get("files") or {}
    sums = {k.split("/", 1)[1]: str(v.get("sha256")) for k, v in files.items()
            if k.startswith("charts/") and k.endswith(".png") and k.count("/") == 1 and isinstance(v, dict)}
    return sorted(sums), sums


def model_page_data(name: str, selected: int | None, a: int | None, b: int | None) -> dict[str, Any]:
    registry = _open_registry()
    try:
        records = _registry_call(registry.list, name)
        if not records:
            raise HTTPException(404, _registry_call(registry._unknown_model_message, name))
        current = _registry_call(registry.current, name)
        events = _registry_call(registry.events, name)
    finally:
        registry.dispose()
    records.sort(key=lambda r: r.version)
    by_version = {r.version: r for r in records}
    publishers = {e.version: e.created_by for e in events if e.action == "publish"}
    refusals = {e.version: e for e in events if e.action == "refused"}  # a model service could not load it
    metric = main_metric(records)
    present = set()
    for r in records:
        present.update(numeric_metrics(r.metrics))
    columns = [m for m in TABLE_METRICS if m in present]
    serving = current.version if current else None
    versions = []
    for r in reversed(records):
        versions.append({
            "version": r.version,
            "created_at": r.created_at.isoformat() if r.created_at else None,
            "framework": r.framework,
            "status": "refused" if r.version in refusals else r.status,
            "refused": (f"refused by {refusals[r.version].created_by or 'a model service'}: "
                        f"{refusals[r.version].reason}") if r.version in refusals else None,
            "serving": r.version == serving,
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "published_by": publishers.get(r.version),
            "metrics": numeric_metrics(r.metrics),
            "checksum": r.checksum,
            "bundle_uri": r.bundle_uri,
        })
    if selected is None or selected not in by_version:
        selected = serving if serving in by_version else records[-1].version
    charts, _ = _chart_names(by_version[selected].bundle_uri)
    # the comparison: two chosen versions; by default the served one and the newest other one
    others = [v for v in sorted(by_version, reverse=True) if v != serving]
    if a not in by_version:
        a = serving if serving is not None else records[0].version
    if b not in by_version or b == a:
        b = next((v for v in sorted(by_version, reverse=True) if v != a), a)
    ma, mb = numeric_metrics(by_version[a].metrics), numeric_metrics(by_version[b].metrics)
    compare = []
    for m in [*[c for c in TABLE_METRICS if c in ma or c in mb], *sorted((set(ma) | set(mb)) - set(TABLE_METRICS))]:
        va, vb = ma.get(m), mb.get(m)
        delta = vb - va if va is not None and vb is not None else None
        better = None
        if delta and m in LOWER_IS_BETTER:
            better = delta < 0
        elif delta and m in HIGHER_IS_BETTER:
            better = delta > 0
        compare.append({"metric": m, "a": va, "b": vb, "delta": delta, "better": better})
    return {
        "name": name,
        "serving": serving,
        "latest": records[-1].version,
        "main_metric": metric,
        "columns": columns,
        "versions": versions,
        "selected": selected,
        "charts": charts,
        "a": a,
        "b": b,
        "compare": compare,
        "others": others,
        "events": [e.to_dict() for e in reversed(events)],
        "dag_ids": {r.version: r.dag_id for r in records},
    }


def chart_bytes(name: str, version: int, chart: str) -> bytes:
    """A chart PNG of a published bundle, checked against the bundle manifest's sha256."""
    from airflow_ml_provider.ml import storage

    registry = _open_registry()
    try:
        record = _registry_call(registry.get, name, version)
    finally:
        registry.dispose()
    names, sums = _chart_names(record.bundle_uri)
    if chart not in names:
        raise HTTPException(404, f"model {name!r} version {version} has no chart {chart!r}")
    try:
        data = storage.read_bytes(storage.join(record.bundle_uri, "charts", chart))
    except storage.StorageError as exc:
        raise HTTPException(503, str(exc)) from None
    if hashlib.sha256(data).hexdigest() != sums[chart]:
        raise HTTPException(500, f"chart {chart} of {name!r} version {version} does not match its bundle manifest")
    return data


def metric_svg(name: str, metric: str | None, small: bool) -> str:
    registry = _open_registry()
    try:
        records = sorted(_registry_call(registry.list, name), key=lambda r: r.version)
    finally:
        registry.dispose()
    if not records:
        raise HTTPException(404, f"unknown model {name!r}")
    metric = metric or main_metric(records)
    if not metric:
        return svg.message_svg("no numeric metrics", 420, 60)
    values = [numeric_metrics(r.metrics).get(metric) for r in records]
    if small:
        return svg.sparkline(values)
    return svg.line_chart([(metric, [r.version for r in records], values)], title=f"{metric} by version",
                          x_label="version", y_label=metric, integer_x=True)


def roc_svg(name: str, a: int, b: int) -> str:
    from airflow_ml_provider.ml import storage
    from airflow_ml_provider.ml.charts import read_roc_points

    registry = _open_registry()
    try:
        recs = [_registry_call(registry.get, name, v) for v in dict.fromkeys((a, b))]
    finally:
        registry.dispose()
    series, missing = [], []
    for r in recs:
        names, _ = _chart_names(r.bundle_uri)
        points = None
        if "roc.png" in names:
            try:
                points = read_roc_points(storage.read_bytes(storage.join(r.bundle_uri, "charts", "roc.png")))
            except storage.StorageError:
                points = None
        if points is None:
            missing.append(r.version)
            continue
        auc = numeric_metrics(r.metrics).get("auc")
        label = f"v{r.version}" + (f" (AUC {auc:.4f})" if auc is not None else "")
        series.append((label, points["fpr"], points["tpr"]))
    if not series:
        return svg.message_svg(f"no ROC curve stored for version(s) {', '.join(map(str, missing))}", 480, 60)
    title = "ROC curves" + (f" (none stored for v{', v'.join(map(str, missing))})" if missing else "")
    return svg.line_chart(series, title=title, x_label="false positive rate", y_label="true positive rate",
                          x_range=(0, 1), y_range=(0, 1), diagonal=True, markers=False, width=480, height=400)


def serve_version(name: str, version: Any, reason: str, user: Any) -> dict[str, Any]:
    """Roll back (or forward) ``name`` to ``version``: a serving-log row with the user and reason."""
    try:
        version = int(str(version).strip())
    except ValueError:
        raise HTTPException(400, f"invalid model version {version!r}: must be a positive integer") from None
    reason = (reason or "").strip()
    if not reason:
        raise HTTPException(400, "a reason is required to change the served version")
    if len(reason) > 2000:
        raise HTTPException(400, f"the reason is too long: {len(reason)} characters, the limit is 2000")
    registry = _open_registry()
    try:
        record = _registry_call(registry.get, name, version)
        if not auth.can_edit_dag(user, record.dag_id):
            raise HTTPException(
                403, f"serving another version of {name!r} needs edit permission on DAG {record.dag_id!r}"
            )
        event = _registry_call(registry.rollback, name, version, auth.user_name(user), reason)
    finally:
        registry.dispose()
    return event.to_dict()


# ---------------------------------------------------------------------------------------------
# the dictionary
# ---------------------------------------------------------------------------------------------


@dataclass
class _Dictionary:
    store: Any
    prefix: str


def _open_dictionary() -> _Dictionary:
    from airflow_ml_provider.dictionary_store import DEFAULT_TABLE, DictionaryError, DictionaryStore
    from airflow_ml_provider.plugins import views

    location = views._dictionary_location()  # the one resolution (ml/settings.py), as the CLI's
    if location is None:
        raise HTTPException(404, views.NO_DICTIONARY)
    url, table, prefix = location.url, location.table or DEFAULT_TABLE, location.key_prefix or ""
    try:
        store = DictionaryStore(url, table)
    except DictionaryError as exc:
        raise HTTPException(503, str(exc)) from None
    return _Dictionary(store, prefix)


def is_sensitive(key: str) -> bool:
    """Airflow's secrets-masker rule for Variable names (``password``, ``secret``, ``token``...)."""
    try:
        from airflow.sdk._shared.secrets_masker import should_hide_value_for_key
    except ImportError:  # older Airflow 3 releases
        from airflow.sdk.execution_time.secrets_masker import should_hide_value_for_key
    return bool(should_hide_value_for_key(key))


def _dict_call(fn, *args, **kwargs):
    from airflow_ml_provider.dictionary_store import (
        DictionaryError,
        DictionaryTableMissing,
        DictionaryValidationError,
    )

    try:
        return fn(*args, **kwargs)
    except DictionaryValidationError as exc:
        raise HTTPException(400, str(exc)) from None
    except DictionaryTableMissing:
        raise
    except DictionaryError as exc:
        raise HTTPException(503, str(exc)) from None


def full_key(prefix: str, key: str) -> str:
    """The stored key of a Variable name: validated as ``airflow-ml dictionary`` validates it."""
    from airflow_ml_provider.dictionary_store import validate_key

    return _dict_call(validate_key, prefix + (key or ""))


def _entry_row(entry: Any, prefix: str) -> dict[str, Any]:
    row = entry.to_dict()
    row["key"] = entry.key[len(prefix):]
    row["sensitive"] = is_sensitive(row["key"])
    if row["sensitive"]:
        row["value"] = MASK
    return row


def dictionary_rows(q: str = "", by: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """Entries (values of sensitive keys masked), filtered by ``q`` (key or description, any case)
    and ``by`` (last author); and every author, for the filter."""
    from airflow_ml_provider.dictionary_store import DictionaryTableMissing

    d = _open_dictionary()
    try:
        try:
            entries = _dict_call(d.store.list, d.prefix or None)
        except DictionaryTableMissing:
            entries = []  # nothing set yet: the first write creates the tables
    finally:
        d.store.dispose()
    rows = [_entry_row(e, d.prefix) for e in entries]
    authors = sorted({r["updated_by"] for r in rows if r["updated_by"]})
    needle = (q or "").strip().lower()
    if needle:
        rows = [r for r in rows if needle in r["key"].lower() or needle in (r["description"] or "").lower()]
    if by:
        rows = [r for r in rows if r["updated_by"] == by]
    return rows, authors


def dictionary_key(key: str, limit: int = 200) -> dict[str, Any]:
    """One key (masked if sensitive) and its history, newest first (old -> new, masked alike)."""
    from airflow_ml_provider.dictionary_store import DictionaryTableMissing

    d = _open_dictionary()
    try:
        stored = full_key(d.prefix, key)
        try:
            entry = _dict_call(d.store.get, stored)
            history = _dict_call(d.store.history, stored, limit=limit)
        except DictionaryTableMissing:
            entry, history = None, []
    finally:
        d.store.dispose()
    sensitive = is_sensitive(key)
    changes = []
    for h in history:
        row = h.to_dict()
        row["key"] = key
        if sensitive:
            row["old_value"] = None if h.old_value is None else MASK
            row["new_value"] = None if h.new_value is None else MASK
        changes.append(row)
    return {
        "key": key,
        "sensitive": sensitive,
        "entry": _entry_row(entry, d.prefix) if entry is not None else None,
        "history": changes,
    }


def set_key(key: str, value: str | None, description: str | None, user: Any, *, create: bool) -> dict[str, Any]:
    """Create or change a key through :meth:`DictionaryStore.set` (the CLI's code path).

    Needs Variable ``POST`` (create) or ``PUT`` (change). For a sensitive key an empty ``value``
    keeps the stored one (the page never receives it, so it cannot send it back).
    """
    from airflow_ml_provider.dictionary_store import DictionaryTableMissing

    d = _open_dictionary()
    try:
        stored = full_key(d.prefix, key)
        try:
            existing = _dict_call(d.store.get, stored)
        except DictionaryTableMissing:
            existing = None
        method = "POST" if existing is None else "PUT"
        if not auth.can_variable(user, method, key):
            raise HTTPException(403, f"{'creating' if existing is None else 'changing'} dictionary key {key!r} "
                                     f"needs Variable {'create' if existing is None else 'edit'} permission")
        if create and existing is not None:
            raise HTTPException(409, f"dictionary key {key!r} already exists: edit it instead")
        if value is None or (value == "" and existing is not None and is_sensitive(key)):
            if existing is None:
                raise HTTPException(400, f"a value is required for the new key {key!r}")
            value = existing.value
        if description is not None:
            description = description.replace("\r\n", "\n").strip() or None
        value = value.replace("\r\n", "\n")
        if existing is None:
            _dict_call(d.store.create_tables)
        change = _dict_call(d.store.set, stored, value, description=description, updated_by=auth.user_name(user))
    finally:
        d.store.dispose()
    return {"key": key, "action": change.action}


def delete_key(key: str, user: Any) -> dict[str, Any]:
    from airflow_ml_provider.dictionary_store import DictionaryTableMissing

    if not auth.can_variable(user, "DELETE", key):
        raise HTTPException(403, f"deleting dictionary key {key!r} needs Variable delete permission")
    d = _open_dictionary()
    try:
        stored = full_key(d.prefix, key)
        try:
            deleted = _dict_call(d.store.delete, stored, updated_by=auth.user_name(user))
        except DictionaryTableMissing:
            deleted = None
    finally:
        d.store.dispose()
    if deleted is None:
        raise HTTPException(404, f"dictionary key {key!r} not found")
    return {"key": key, "action": "deleted"}


# ---------------------------------------------------------------------------------------------
# a DAG run: what it published, or why not
# ---------------------------------------------------------------------------------------------


def _gate_of(value: Any) -> tuple[bool, list[str]] | None:
    """(passed, reasons) from an evaluate XCom (flat record, or the older nested ``gate``)."""
    if not isinstance(value, Mapping):
        return None
    if "gate_passed" in value:
        return bool(value.get("gate_passed")), [str(r) for r in value.get("gate_reasons") or []]
    gate = value.get("gate")
    if isinstance(gate, Mapping) and "passed" in gate:
        return bool(gate.get("passed")), [str(r) for r in gate.get("reasons") or []]
    return None


def run_data(dag_id: str, run_id: str) -> dict[str, Any]:
    """The model versions a run published; otherwise its gate results and task states."""
    import sqlalchemy as sa

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalar(sa.select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            raise HTTPException(404, f"no run {run_id!r} of DAG {dag_id!r}")
        run_state = str(run.state.value if hasattr(run.state, "value") else run.state)
        conf = dict(run.conf or {})
        tis = session.execute(
            sa.select(TaskInstance.task_id, TaskInstance.state, TaskInstance.map_index)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.task_id)
        ).all()
        xcoms = session.scalars(
            sa.select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == "return_value"
            )
        ).all()
        values = {}
        for x in xcoms:
            try:
                values[x.task_id] = XComModel.deserialize_value(x)
            except Exception:  # noqa: BLE001, S112 - a value of another serializer: not ours
                continue
    states = [{"task_id": t, "state": str(getattr(s, "value", s) or "none")} for t, s, _ in tis]
    gates = []
    for task_id, value in sorted(values.items()):
        g = _gate_of(value)
        if g is not None:
            gates.append({"task_id": task_id, "passed": g[0], "reasons": g[1],
                          "model_name": value.get("model_name")})
    registry = _open_registry()
    try:
        published = [r for r in _registry_call(registry.list) if r.dag_id == dag_id and r.run_id == run_id]
        serving = _registry_call(registry.current_many, sorted({r.name for r in published}))
    finally:
        registry.dispose()
    disabled = conf.get("disabled_tasks") or []
    reasons: list[str] = []
    if not published:
        for g in gates:
            if not g["passed"]:
                reasons.append(f"gate failed ({g['task_id']}): " + ("; ".join(g["reasons"]) or "no reason given"))
        for s in states:
            if s["state"] == "failed":
                reasons.append(f"task {s['task_id']} failed")
            elif s["state"] == "upstream_failed":
                reasons.append(f"task {s['task_id']} did not run: an upstream task failed")
        if disabled:
            reasons.append("disabled in this run: " + ", ".join(map(str, disabled)))
        if run_state in ("queued", "running"):
            reasons.append(f"the run is {run_state}: nothing published yet")
        if not reasons:
            reasons.append("this run published no model version (no publish task, or it was skipped)")
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": run_state,
        "published": [
            {**r.to_dict(), "serving_now": (serving.get(r.name) is not None and serving[r.name].version == r.version),
             "metrics": numeric_metrics(r.metrics)}
            for r in published
        ],
        "gates": gates,
        "tasks": states,
        "disabled_tasks": disabled,
        "reasons": reasons,
    }


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------


def _int_or_none(value: str | None) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise HTTPException(400, f"invalid version {value!r}: must be an integer") from None


def create_app() -> FastAPI:
    """The FastAPI app; every route but the stylesheet needs a signed-in Airflow user."""
    from fastapi.staticfiles import StaticFiles

    from airflow_ml_provider.plugins import views

    user_dep = Depends(auth.signed_in)
    app = FastAPI(title="Airflow ML", description="Published models, the dictionary table, DAG runs' models")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException):
        path = request.url.path
        wants_html = "/api/" not in path and not path.endswith((".svg", ".png"))
        if exc.status_code == 401 and wants_html:
            return RedirectResponse(auth.login_url(request), status_code=302)
        if not wants_html:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return render(request, "error.html", status_code=exc.status_code, status=exc.status_code,
                      detail=str(exc.detail), user=None)

    # -- JSON -----------------------------------------------------------------------------------

    @app.get("/api/models")
    async def api_models(user=user_dep) -> list[dict[str, Any]]:
        return await asyncio.to_thread(views.models_overview)

    @app.get("/api/models/{name}")
    async def api_model(name: str, user=user_dep) -> dict[str, Any]:
        return await asyncio.to_thread(views.model_detail, name)

    @app.post("/api/models/{name}/rollback")
    async def api_rollback(name: str, request: Request, user=user_dep) -> dict[str, Any]:
        auth.check_same_origin(request)
        body = await _json_body(request)
        return await asyncio.to_thread(serve_version, name, body.get("version"), str(body.get("reason") or ""), user)

    @app.get("/api/dictionary")
    async def api_dictionary(user=user_dep) -> list[dict[str, Any]]:
        _need_variable(user, "GET")
        rows, _ = await asyncio.to_thread(dictionary_rows)
        return [{k: r[k] for k in ("key", "value", "description", "updated_at", "updated_by")} for r in rows]

    @app.put("/api/dictionary/{key:path}")
    async def api_set(key: str, request: Request, user=user_dep) -> dict[str, Any]:
        auth.check_same_origin(request)
        body = await _json_body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise HTTPException(400, f"invalid value for key {key!r}: must be a string")
        desc = body.get("description")
        if desc is not None and not isinstance(desc, str):
            raise HTTPException(400, f"invalid description for key {key!r}: must be a string")
        return await asyncio.to_thread(set_key, key, value, desc, user, create=False)

    @app.delete("/api/dictionary/{key:path}")
    async def api_delete(key: str, request: Request, user=user_dep) -> dict[str, Any]:
        auth.check_same_origin(request)
        return await asyncio.to_thread(delete_key, key, user)

    @app.get("/api/dictionary-history/{key:path}")
    async def api_history(key: str, user=user_dep) -> dict[str, Any]:
        _need_variable(user, "GET", key)
        return await asyncio.to_thread(dictionary_key, key)

    @app.get("/api/runs/{dag_id}/{run_id:path}")
    async def api_run(dag_id: str, run_id: str, user=user_dep) -> dict[str, Any]:
        _need_dag_read(user, dag_id)
        return await asyncio.to_thread(run_data, dag_id, run_id)

    # -- HTML: models ---------------------------------------------------------------------------

    @app.get("/models", response_class=HTMLResponse)
    async def models_page(request: Request, user=user_dep):
        models = await asyncio.to_thread(models_list)
        loc = await asyncio.to_thread(views._registry_location)
        return render(request, "models.html", models=models, user=auth.user_name(user),
                      where=f"{loc.masked} (set by {loc.source})")

    @app.get("/models/{name}", response_class=HTMLResponse)
    async def model_page(request: Request, name: str, v: str | None = None, a: str | None = None,
                         b: str | None = None, user=user_dep):
        data = await asyncio.to_thread(model_page_data, name, _int_or_none(v), _int_or_none(a), _int_or_none(b))
        editable = [x["version"] for x in data["versions"] if auth.can_edit_dag(user, x["dag_id"])]
        return render(request, "model.html", m=data, editable=editable, user=auth.user_name(user),
                      message=request.query_params.get("done", ""))

    @app.post("/models/{name}/serve")
    async def model_serve(request: Request, name: str, version: str = Form(...), reason: str = Form(""),
                          user=user_dep):
        auth.check_same_origin(request)
        event = await asyncio.to_thread(serve_version, name, version, reason, user)
        done = quote(f"now serving version {event['version']} (serving-log entry {event['id']})")
        return RedirectResponse(f"{request.scope.get('root_path', '')}/models/{quote(name)}?done={done}",
                                status_code=303)

    @app.get("/models/{name}/versions/{version}/charts/{chart}")
    async def model_chart(name: str, version: int, chart: str, user=user_dep):
        data = await asyncio.to_thread(chart_bytes, name, version, chart)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/models/{name}/metric.svg")
    async def model_metric_svg(name: str, metric: str | None = None, small: int = 0, user=user_dep):
        text = await asyncio.to_thread(metric_svg, name, metric, bool(small))
        return Response(text, media_type="image/svg+xml")

    @app.get("/models/{name}/roc.svg")
    async def model_roc_svg(name: str, a: int, b: int, user=user_dep):
        text = await asyncio.to_thread(roc_svg, name, a, b)
        return Response(text, media_type="image/svg+xml")

    # -- HTML: dictionary -----------------------------------------------------------------------

    @app.get("/dictionary", response_class=HTMLResponse)
    async def dictionary_page(request: Request, q: str = "", by: str = "", user=user_dep):
        _need_variable(user, "GET")
        rows, authors = await asyncio.to_thread(dictionary_rows, q, by)
        return render(request, "dictionary.html", rows=rows, authors=authors, q=q, by=by,
                      can_create=auth.can_variable(user, "POST"), can_edit=auth.can_variable(user, "PUT"),
                      can_delete=auth.can_variable(user, "DELETE"), user=auth.user_name(user),
                      message=request.query_params.get("done", ""))

    @app.get("/dictionary/key", response_class=HTMLResponse)
    async def dictionary_key_page(request: Request, key: str, user=user_dep):
        _need_variable(user, "GET", key)
        data = await asyncio.to_thread(dictionary_key, key)
        return render(request, "dictionary_key.html", d=data, can_edit=auth.can_variable(user, "PUT", key),
                      can_delete=auth.can_variable(user, "DELETE", key), user=auth.user_name(user),
                      message=request.query_params.get("done", ""))

    @app.post("/dictionary/set")
    async def dictionary_set(request: Request, key: str = Form(...), value: str = Form(""),
                             description: str = Form(""), create: str = Form(""), user=user_dep):
        auth.check_same_origin(request)
        result = await asyncio.to_thread(set_key, key, value, description, user, create=bool(create))
        done = quote(f"{result['action']} {key}")
        return RedirectResponse(f"{request.scope.get('root_path', '')}/dictionary/key?key={quote(key)}&done={done}",
                                status_code=303)

    @app.post("/dictionary/delete")
    async def dictionary_delete(request: Request, key: str = Form(...), user=user_dep):
        auth.check_same_origin(request)
        await asyncio.to_thread(delete_key, key, user)
        return RedirectResponse(f"{request.scope.get('root_path', '')}/dictionary?done={quote('deleted ' + key)}",
                                status_code=303)

    # -- HTML: a DAG run ------------------------------------------------------------------------

    @app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse)
    async def run_page(request: Request, dag_id: str, run_id: str, user=user_dep):
        _need_dag_read(user, dag_id)
        data = await asyncio.to_thread(run_data, dag_id, run_id)
        return render(request, "run.html", r=data, user=auth.user_name(user))

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return body


def _need_variable(user: Any, method: str, key: str | None = None) -> None:
    if not auth.can_variable(user, method, key):
        raise HTTPException(403, "the dictionary serves Airflow Variables: this needs Variable read permission")


def _need_dag_read(user: Any, dag_id: str) -> None:
    if not auth.can_read_dag(user, dag_id):
        raise HTTPException(403, f"this needs read permission on DAG {dag_id!r}")
