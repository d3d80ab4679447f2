"""The ML pipeline operators: sample -> preprocess -> train -> evaluate -> publish.

Import the operators from their modules (``airflow_ml_provider.operators.sample`` ...) or from here;
the names are resolved lazily, so importing this package loads no operator (and no Airflow) until
one is used. No operator module imports xgboost, tensorflow, gensim or sklearn at import time.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "MLBaseOperator": "airflow_ml_provider.operators.base",
    "SampleOperator": "airflow_ml_provider.operators.sample",
    "PreprocessOperator": "airflow_ml_provider.operators.preprocess",
    "XGBoostTrainOperator": "airflow_ml_provider.operators.train",
    "TrainModelOperator": "airflow_ml_provider.operators.train",
    "Word2VecTrainOperator": "airflow_ml_provider.operators.train",
    "EvaluateOperator": "airflow_ml_provider.operators.evaluate",
    "PublishModelOperator": "airflow_ml_provider.operators.publish",
    "model_asset": "airflow_ml_provider.operators.publish",
}

__all__ = [
    "EvaluateOperator",
    "MLBaseOperator",
    "PreprocessOperator",
    "PublishModelOperator",
    "SampleOperator",
    "TrainModelOperator",
    "Word2VecTrainOperator",
    "XGBoostTrainOperator",
    "model_asset",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
