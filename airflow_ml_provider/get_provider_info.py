"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Describe what this provider adds to Airflow."""
    return {
        "package-name": "airflow-ml-provider",
        "name": "Airflow ML",
        "description": "Low-code machine learning on Airflow: sampling, features, training, "
        "evaluation, publishing, model serving, a MySQL dictionary table and Azkaban migration.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "Airflow ML",
                "external-doc-url": "https://pypi.org/project/airflow-ml-provider/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "Airflow ML",
                "python-modules": [
                    "airflow_ml_provider.operators.sample",
                    "airflow_ml_provider.operators.preprocess",
                    "airflow_ml_provider.operators.train",
                    "airflow_ml_provider.operators.evaluate",
                    "airflow_ml_provider.operators.publish",
                ],
            }
        ],
        "hooks": [
            {"integration-name": "Airflow ML", "python-modules": ["airflow_ml_provider.hooks.registry"]}
        ],
        "filesystems": ["airflow_ml_provider.fs.webhdfs"],
        "secrets-backends": ["airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"],
        "plugins": [
            {"name": "airflow_ml", "plugin-class": "airflow_ml_provider.plugins.ml_plugin.AirflowMLPlugin"}
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_ml_provider.hooks.registry.ModelRegistryHook",
                "connection-type": "ml_registry",
            },
        ],
    }
