"""Airflow UI plugin: "ML models" and "ML dictionary" pages in the Browse menu.

Registered through the ``airflow.plugins`` entry point and listed in ``get_provider_info``. The pages
are a FastAPI app (:mod:`airflow_ml_provider.plugins.views`) mounted at ``/ml`` in the API server,
protected by Airflow's own authentication.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_ml_provider.plugins.views import create_app


class AirflowMLPlugin(AirflowPlugin):
    """Adds the ML pages to the Airflow UI."""

    name = "airflow_ml"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/ml", "name": "Airflow ML"}]
    external_views = [
        {"name": "ML models", "href": "ml/models", "destination": "nav", "category": "browse",
         "url_route": "ml-models"},
        {"name": "ML dictionary", "href": "ml/dictionary", "destination": "nav", "category": "browse",
         "url_route": "ml-dictionary"},
    ]
