"""Who is signed in, and what they may do, for the ML pages (Airflow's own auth manager decides).

Airflow does not authenticate plugin FastAPI apps, so every route of
:mod:`airflow_ml_provider.plugins.pages` depends on :func:`signed_in`, which is Airflow's
``airflow.api_fastapi.core_api.security.get_user``: the JWT of the ``Authorization: Bearer`` header,
else the UI's ``_token`` cookie (set by Airflow's login page). No valid token: 401 (the HTML pages
redirect to Airflow's login page instead); a forged token: 403.

Permissions (asked of the configured auth manager, so the simple auth manager, FAB or Keycloak
decide the same way as for Airflow's own pages):

=========================================  ==============================================
action                                     Airflow permission
=========================================  ==============================================
see the models pages                       any signed-in user
see a DAG run's "ML model" tab             DAG read (``GET``) on that DAG
roll back / promote a model version        DAG edit (``PUT``) on the DAG that published
                                           the version to serve
see the dictionary and its history         Variable read (``GET``)
create / edit / delete a dictionary key    Variable ``POST`` / ``PUT`` / ``DELETE``
=========================================  ==============================================

With the simple auth manager that means: viewers see models; users (and above) may roll back;
ops and admins read and write the dictionary.

Writes also refuse a request whose ``Origin`` (or ``Sec-Fetch-Site``) says it came from another
site: the session cookie alone must not let another site's form change the registry.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

__all__ = [
    "can_edit_dag",
    "can_read_dag",
    "can_variable",
    "check_same_origin",
    "login_url",
    "signed_in",
    "user_name",
]


async def signed_in(request: Request) -> Any:
    """The signed-in user (a FastAPI dependency): Airflow's ``get_user`` (header, else cookie)."""
    from fastapi.security import HTTPBearer

    from airflow.api_fastapi.core_api.security import get_user

    bearer = await HTTPBearer(auto_error=False)(request)
    return await get_user(request, None, bearer)


def user_name(user: Any) -> str:
    """The name recorded in the serving log and the dictionary history."""
    for attr in ("get_name", "get_id"):
        fn = getattr(user, attr, None)
        if callable(fn):
            try:
                value = fn()
            except Exception:  # noqa: BLE001, S112 - a user class without that field
                continue
            if value:
                return str(value)[:128]
    return "unknown"


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def can_variable(user: Any, method: str, key: str | None = None) -> bool:
    """Whether ``user`` may ``method`` (GET, POST, PUT, DELETE) the Variable ``key`` (or any)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import VariableDetails

    return bool(_auth_manager().is_authorized_variable(method=method, details=VariableDetails(key=key), user=user))


def _can_dag(user: Any, method: str, dag_id: str | None) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    details = DagDetails(id=dag_id) if dag_id else None
    return bool(_auth_manager().is_authorized_dag(method=method, details=details, user=user))


def can_read_dag(user: Any, dag_id: str | None) -> bool:
    return _can_dag(user, "GET", dag_id)


def can_edit_dag(user: Any, dag_id: str | None) -> bool:
    """DAG edit (``PUT``) -- the permission a rollback needs (on the DAG that published the version)."""
    return _can_dag(user, "PUT", dag_id)


def check_same_origin(request: Request) -> None:
    """403 when a write comes from another site (``Origin`` host differs, or ``Sec-Fetch-Site``
    is ``cross-site``). Requests without those headers (API clients) pass."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        raise HTTPException(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
        if urlsplit(origin).netloc.lower() != host.split(",")[0].strip().lower():
            raise HTTPException(403, f"request from another origin ({origin}) refused")
    elif origin == "null":
        raise HTTPException(403, "request from an opaque origin refused")


def login_url(request: Request) -> str:
    """Airflow's login page, coming back to this page afterwards."""
    try:
        return str(_auth_manager().get_url_login(next_url=str(request.url)))
    except Exception:  # noqa: BLE001 - an auth manager without a login page
        return "/auth/login"
