"""The recommendation pipeline with other frameworks: TensorFlow, logistic regression, GBDT.

The same job as ``xgboost_recommendation`` -- "will this user listen to this audio item for more
than 30 seconds", from the synthetic audio-platform data set and the same feature spec
(``specs/audio_recommendation.yaml``) -- with the training step swapped for
:class:`~airflow_ml_provider.operators.train.TrainModelOperator`. One DAG per framework:

=============================  =================================================================
``tensorflow_recommendation``  a Keras wide & deep network (tensorflow-cpu)
``linear_recommendation``      logistic regression (scikit-learn; the model is stored as JSON)
``gbdt_recommendation``        scikit-learn HistGradientBoosting
=============================  =================================================================

sample -> preprocess -> train -> evaluate -> publish, exactly as the XGBoost DAG: the evaluation
(metrics, charts, gates, champion/challenger) and the publish (bundle + registry row + asset
event) are the same operators for every framework. Each DAG's trigger form shows that
framework's hyperparameters as typed Params; they reach the trainer through ``hyperparams``.

Each framework publishes under its own model name, ``<AIRFLOW_ML_MODEL_NAME>_<framework>``
(default ``audio_listen_30s_tensorflow`` ...), so each competes with its own champion.

Locations are the XGBoost DAG's (environment variables; the defaults give SQLite + local disk):
``AIRFLOW_ML_HOME`` (default ``~/airflow-ml``), ``AIRFLOW_ML_SOURCE_CONN_ID`` (the SQL connection
holding the play events; unset: ``ml_audio_sqlite`` = ``$AIRFLOW_ML_HOME/audio.db``),
``AIRFLOW_ML_STORAGE``, ``AIRFLOW_ML_REGISTRY``, ``AIRFLOW_ML_MODEL_NAME``,
``AIRFLOW_ML_FEATURE_SPEC``. See docs/pipeline.md.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param

from airflow_ml_provider.disabled_tasks import disabled_tasks_param
from airflow_ml_provider.ml import settings
from airflow_ml_provider.ml.datasets import SQL_DIR
from airflow_ml_provider.operators.evaluate import EvaluateOperator
from airflow_ml_provider.operators.preprocess import PreprocessOperator
from airflow_ml_provider.operators.publish import PublishModelOperator
from airflow_ml_provider.operators.sample import SampleOperator
from airflow_ml_provider.operators.train import TrainModelOperator

ML_HOME = settings.resolve().home  # [ml] home, $AIRFLOW_ML_HOME, else ~/airflow-ml (docs/configuration.md)
MODEL_NAME = os.environ.get("AIRFLOW_ML_MODEL_NAME") or "audio_listen_30s"
FEATURE_SPEC = os.environ.get("AIRFLOW_ML_FEATURE_SPEC") or "specs/audio_recommendation.yaml"
SOURCE_CONN_ID = os.environ.get("AIRFLOW_ML_SOURCE_CONN_ID") or "ml_audio_sqlite"
if SOURCE_CONN_ID == "ml_audio_sqlite":
    # the embedded default, as in xgboost_recommendation.py: the SQLite file the demo generates
    os.environ.setdefault(
        "AIRFLOW_CONN_ML_AUDIO_SQLITE",
        json.dumps({"conn_type": "sqlite", "host": os.path.join(ML_HOME, "audio.db")}),
    )

#: per framework: (description, trigger-form Params, hyperparams templated from those Params)
FRAMEWORKS: dict[str, tuple[str, dict[str, Param], dict[str, Any]]] = {
    "tensorflow": (
        "a Keras wide & deep network (tensorflow-cpu)",
        {
            "hidden_units": Param([64, 32], type="array", items={"type": "integer", "minimum": 1},
                                  title="Hidden units", description="Sizes of the deep tower's layers."),
            "dropout": Param(0.0, type="number", minimum=0.0, maximum=0.9, title="Dropout"),
            "epochs": Param(5, type="integer", minimum=1, maximum=500, title="Epochs"),
            "batch_size": Param(256, type="integer", minimum=1, title="Batch size"),
            "learning_rate": Param(0.001, type="number", minimum=0.000001, maximum=1.0, title="Learning rate"),
            "early_stopping_rounds": Param(2, type="integer", minimum=0, title="Early stopping patience (epochs)",
                                           description="0 disables early stopping."),
        },
        {
            "hidden_units": "{{ params.hidden_units }}",
            "dropout": "{{ params.dropout }}",
            "epochs": "{{ params.epochs }}",
            "batch_size": "{{ params.batch_size }}",
            "learning_rate": "{{ params.learning_rate }}",
            "early_stopping_rounds": "{{ params.early_stopping_rounds }}",
            "seed": "{{ params.seed }}",
        },
    ),
    "linear": (
        "logistic regression (scikit-learn)",
        {
            "C": Param(1.0, type="number", exclusiveMinimum=0.0, title="C (inverse L2 strength)"),
            "penalty": Param("l2", type="string", enum=["l2", "l1", "none"], title="Penalty"),
            "max_iter": Param(500, type="integer", minimum=1, title="Solver iterations"),
        },
        {
            "C": "{{ params.C }}",
            "penalty": "{{ params.penalty }}",
            "max_iter": "{{ params.max_iter }}",
            "seed": "{{ params.seed }}",
        },
    ),
    "gbdt": (
        "gradient-boosted trees (scikit-learn HistGradientBoosting)",
        {
            "learning_rate": Param(0.1, type="number", minimum=0.0001, maximum=1.0, title="Learning rate"),
            "max_iter": Param(100, type="integer", minimum=1, maximum=5000, title="Boosting iterations"),
            "max_leaf_nodes": Param(31, type="integer", minimum=2, title="Leaves per tree"),
            "min_samples_leaf": Param(20, type="integer", minimum=1, title="Minimum samples per leaf"),
            "early_stopping_rounds": Param(10, type="integer", minimum=0, title="Early stopping rounds",
                                           description="0 disables early stopping."),
        },
        {
            "learning_rate": "{{ params.learning_rate }}",
            "max_iter": "{{ params.max_iter }}",
            "max_leaf_nodes": "{{ params.max_leaf_nodes }}",
            "min_samples_leaf": "{{ params.min_samples_leaf }}",
            "early_stopping_rounds": "{{ params.early_stopping_rounds }}",
            "seed": "{{ params.seed }}",
        },
    ),
}


def recommendation_dag(framework: str) -> DAG:
    """sample -> preprocess -> train (``framework``) -> evaluate -> publish."""
    description, form, hyperparams = FRAMEWORKS[framework]
    model_name = f"{MODEL_NAME}_{framework}"
    with DAG(
        dag_id=f"{framework}_recommendation",
        template_searchpath=[SQL_DIR],  # audio_training.sql
        description=f"sample -> preprocess -> train -> evaluate -> publish ({description}, listened > 30 s)",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        tags=["ml", framework, "recommendation"],
        doc_md=__doc__,
        render_template_as_native_obj=True,
        max_active_runs=1,
        params={
            "sample_ratio": Param(1.0, type="number", minimum=0.0001, maximum=1.0, title="Sampling ratio",
                                  description="Keep each play event with this probability."),
            "seed": Param(42, type="integer", title="Seed", description="Seed of the sample, the split and the model."),
            "split_by": Param("group", type="string", enum=["group", "random", "time"], title="Split",
                              description="group: by user id (a user never spans two splits); random; "
                              "time: by event time (older -> train, newer -> test)."),
            "min_event_ts": Param(0, type="integer", title="Events from (epoch seconds)",
                                  description="Only play events at or after this time (a bound parameter)."),
            **form,
            "disabled_tasks": disabled_tasks_param(),
        },
    ) as dag:
        sample = SampleOperator(
            task_id="sample",
            conn_id=SOURCE_CONN_ID,
            sql="audio_training.sql",  # in SQL_DIR (template_searchpath)
            parameters={"start_ts": "{{ params.min_event_ts }}"},
            ratio="{{ params.sample_ratio }}",
            seed="{{ params.seed }}",
            split_by="{{ params.split_by }}",
            split_ratios=(0.8, 0.1, 0.1),
            group_column="user_id",
            time_column="event_ts",
            key_column="event_id",
        )
        preprocess = PreprocessOperator(task_id="preprocess", spec=FEATURE_SPEC, keep_columns=["event_id", "user_id"])
        train = TrainModelOperator(task_id="train", framework=framework, hyperparams=hyperparams)
        evaluate = EvaluateOperator(task_id="evaluate", model_name=model_name, split="test", min_metrics={"auc": 0.6})
        publish = PublishModelOperator(task_id="publish", model_name=model_name)
        sample >> preprocess >> train >> evaluate >> publish
    return dag


tensorflow_recommendation = recommendation_dag("tensorflow")
linear_recommendation = recommendation_dag("linear")
gbdt_recommendation = recommendation_dag("gbdt")
