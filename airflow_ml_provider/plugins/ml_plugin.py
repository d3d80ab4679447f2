"""Airflow UI plugin: the ML pages (models, dictionary) and a DAG run's "ML model" tab.

Registered through the ``airflow.plugins`` entry point and listed in ``get_provider_info``. The pages
are a FastAPI app (:mod:`airflow_ml_provider.plugins.pages`) mounted at ``/ml`` in the API server,
every route behind Airflow's own authentication (:mod:`airflow_ml_provider.plugins.auth`).

Menu entries (``external_views``):

* Browse -> "ML models" (``/ml/models``) and "ML dictionary" (``/ml/dictionary``);
* Admin -> "Variables (ML dictionary)": Admin -> Variables lists only Variables stored in Airflow's
  own database, while DAGs read the dictionary table's keys as Variables through the secrets backend;
  this entry sits next to it and leads to the dictionary;
* a tab "ML model" on every DAG run (destination ``dag_run``): which model version the run
  published, or why it did not (gate reasons, failed or disabled tasks).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_ml_provider.plugins.pages import create_app


class AirflowMLPlugin(AirflowPlugin):
    """Adds the ML pages to the Airflow UI."""

    name = "airflow_ml"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/ml", "name": "Airflow ML"}]
    external_views = [
        {"name": "ML models", "href": "ml/models", "destination": "nav", "category": "browse",
         "url_route": "ml-models"},
        {"name": "ML dictionary", "href": "ml/dictionary", "destination": "nav", "category": "browse",
         "url_route": "ml-dictionary"},
        {"name": "Variables (ML dictionary)", "href": "ml/dictionary", "destination": "nav", "category": "admin",
         "url_route": "ml-dictionary-variables"},
        {"name": "ML model", "href": "ml/runs/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
         "url_route": "ml-model"},
    ]
