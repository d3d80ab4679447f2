"""Database URLs in messages: one place that hides passwords (pure core, no Airflow import).

Used by the model registry, the dictionary table and the CLI, so an error about an unreachable
database names it as ``mysql+pymysql://ml:***@db:3306/ml`` and never shows the password.
"""

from __future__ import annotations


import sqlalchemy as sa

from airflow_ml_provider.ml.storage import mask_uri


def mask_url(url: str | sa.engine.URL | sa.Engine | None) -> str:
    """The URL as text with its password replaced by ``***`` (never raises)."""
    if url is None:
        return ""
    if isinstance(url, sa.Engine):
        url = url.url
    if isinstance(url, sa.engine.URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.engine.make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a parseable URL: mask anything shaped like user:password@
        return mask_uri(url)


__all__ = ["mask_url"]
