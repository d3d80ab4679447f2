"""Airflow connections given as ``AIRFLOW_CONN_<ID>`` environment variables, read without Airflow.

The storage layer (``webhdfs://<conn_id>@/path``) and the registry URL resolution both accept an
Airflow connection id; when ``AIRFLOW_CONN_<ID>`` is set they parse it here (URI or JSON form, as
Airflow does), so the CLI and the model service need not import Airflow.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


class ConnectionEnvError(ValueError):
    """An ``AIRFLOW_CONN_<ID>`` value that is neither a connection URI nor valid JSON."""


def env_connection(conn_id: str) -> dict[str, Any] | None:
    """The fields of ``AIRFLOW_CONN_<CONN_ID>`` (see :func:`parse_connection_env`), or None if unset."""
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    return parse_connection_env(conn_id, value) if value else None


def parse_connection_env(conn_id: str, value: str) -> dict[str, Any]:
    """Parse an ``AIRFLOW_CONN_<ID>`` value into ``conn_type, host, port, login, password, schema, extra``.

    :raises ConnectionEnvError: the value is neither a connection URI nor valid JSON (named in the message).
    """
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    value = value.strip()
    if value.startswith("{"):
        try:
            data = json.loads(value)
        except ValueError as exc:
            raise ConnectionEnvError(f"{var} is not valid JSON: {exc}") from None
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra) if extra else {}
            except ValueError:
                raise ConnectionEnvError(f"{var}: 'extra' is not valid JSON") from None
        return {
            "conn_type": data.get("conn_type"),
            "host": data.get("host"),
            "port": data.get("port"),
            "login": data.get("login"),
            "password": data.get("password"),
            "schema": data.get("schema"),
            "extra": extra,
        }
    parts = urlsplit(value)
    if not parts.scheme:
        raise ConnectionEnvError(f"{var} is neither a connection URI nor JSON")
    extra: dict[str, Any] = dict(parse_qsl(parts.query))
    if "__extra__" in extra:
        try:
            extra = json.loads(extra["__extra__"])
        except ValueError:
            raise ConnectionEnvError(f"{var}: '__extra__' is not valid JSON") from None
    path = unquote(parts.path)
    return {
        "conn_type": parts.scheme.replace("-", "_"),
        "host": unquote(parts.hostname) if parts.hostname else None,
        "port": parts.port,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "schema": path[1:] if path.startswith("/") else path or None,
        "extra": extra,
    }
