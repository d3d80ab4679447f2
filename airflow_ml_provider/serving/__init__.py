"""The online model service: a TensorFlow-Serving-style REST API with hot swap (see docs/serving.md).

Pure core: no Airflow import. ``create_app`` builds the ASGI app; ``ModelManager`` loads, warms up,
caches and atomically swaps model versions as the registry changes.
"""

from airflow_ml_provider.serving.app import ServingApp, create_app
from airflow_ml_provider.serving.errors import APIError, ModelLoadError
from airflow_ml_provider.serving.manager import LoadedModel, ModelManager, load_model

__all__ = ["APIError", "LoadedModel", "ModelLoadError", "ModelManager", "ServingApp", "create_app", "load_model"]
