"""One trainer adapter per framework: xgboost, tensorflow, word2vec, linear, gbdt.

``get_trainer(name).train(train, valid, params, out_dir, log=print) -> TrainResult`` and
``load_predictor(framework, model_dir) -> Predictor``. Importing this package imports no
heavy library (xgboost, tensorflow, gensim, sklearn); each adapter imports its framework
inside its functions. See docs/trainers.md.
"""

from airflow_ml_provider.ml.trainers.base import (
    METADATA_FILE,
    Dataset,
    Predictor,
    Trainer,
    TrainerError,
    TrainResult,
    available_trainers,
    get_trainer,
    load_predictor,
    read_metadata,
)

__all__ = [
    "METADATA_FILE",
    "Dataset",
    "Predictor",
    "TrainResult",
    "Trainer",
    "TrainerError",
    "available_trainers",
    "get_trainer",
    "load_predictor",
    "read_metadata",
]
