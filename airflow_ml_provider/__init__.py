"""airflow-ml-provider: an Apache Airflow provider that turns Airflow into a low-code ML platform.

Layers:

* :mod:`airflow_ml_provider.ml` -- the pure core (no Airflow import): features, trainers,
  metrics, model bundles, the model registry, storage helpers.
* :mod:`airflow_ml_provider.azkaban` -- the Azkaban -> Airflow migration (parser, model, renderer;
  only ``azkaban.runtime`` touches Airflow, at DAG run time).
* :mod:`airflow_ml_provider.operators`, ``hooks``, ``secrets``, ``fs``, ``plugins`` -- thin Airflow adapters.
* :mod:`airflow_ml_provider.serving` -- the online model service (uses the core only).
* :mod:`airflow_ml_provider.cli` -- the ``airflow-ml`` command line.

Importing this package must stay cheap: no xgboost, tensorflow, gensim or sklearn at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"
