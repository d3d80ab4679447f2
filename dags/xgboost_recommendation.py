"""The classic recommendation pipeline: sample -> preprocess -> train -> evaluate -> publish.

Learns "will this user listen to this audio item for more than 30 seconds" from the synthetic
audio-platform data set (:mod:`airflow_ml_provider.ml.datasets.audio`: users, hosts, categories,
audio items, play events), and publishes the model when it passes its gates.

Trigger form: the sampling ratio, the seed, the split, the XGBoost hyperparameters, and
``disabled_tasks`` (task ids to skip in this run, e.g. ``["sample"]`` to re-use the last sample).

Locations (environment variables; the defaults give the embedded set-up, SQLite + local disk):

* ``AIRFLOW_ML_HOME`` -- default ``~/airflow-ml``: ``audio.db``, ``registry.db``, ``storage/``;
* ``AIRFLOW_ML_SOURCE_CONN_ID`` -- the Airflow SQL connection holding the play events (e.g. a MySQL
  connection in production). Unset: ``ml_audio_sqlite``, defined here as
  ``$AIRFLOW_ML_HOME/audio.db`` unless ``AIRFLOW_CONN_ML_AUDIO_SQLITE`` is already set;
* ``AIRFLOW_ML_STORAGE`` -- artifact storage (``webhdfs://hdfs_default@/ml`` in production);
* ``AIRFLOW_ML_REGISTRY`` -- the model registry (a SQLAlchemy URL or an Airflow connection id);
* ``AIRFLOW_ML_MODEL_NAME`` -- default ``audio_listen_30s``;
* ``AIRFLOW_ML_FEATURE_SPEC`` -- the feature spec: default ``specs/audio_recommendation.yaml`` beside
  this file; a storage URI (``webhdfs://hdfs_default@/resources/specs/audio.yaml``) reads it from
  storage, the platform's resource center.

Gates: ``min_metrics`` below, overridden by the Airflow Variables ``ml.<model>.gates`` (JSON) and
``ml.<model>.min_auc`` etc. (see docs/pipeline.md); plus the champion/challenger comparison.

Human approval of a failed gate (optional): with ``[ml] approval_on_gate_failure = True`` in
airflow.cfg (or ``AIRFLOW__ML__APPROVAL_ON_GATE_FAILURE=True``) the DAG gets two more tasks:
``gate_check`` (a branch) and ``approve_publish`` (Airflow's ``ApprovalOperator``). When the gate
fails and the run's ``approval_on_gate_failure`` param is on (the default then), the run waits for
a human: *Approve* (Required Actions page, or ``PATCH /api/v2/dags/<dag>/dagRuns/<run>/taskInstances/
approve_publish/-1/hitlDetails``) publishes the model anyway, the approval recorded in the bundle;
*Reject* skips the publish. Off by default: the DAG is the five tasks above.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from airflow.configuration import conf as airflow_conf
from airflow.sdk import DAG, Param

from airflow_ml_provider.disabled_tasks import disabled_tasks_param
from airflow_ml_provider.ml import settings
from airflow_ml_provider.ml.datasets import SQL_DIR
from airflow_ml_provider.operators.evaluate import EvaluateOperator
from airflow_ml_provider.operators.preprocess import PreprocessOperator
from airflow_ml_provider.operators.publish import PublishModelOperator
from airflow_ml_provider.operators.sample import SampleOperator
from airflow_ml_provider.operators.train import XGBoostTrainOperator

ML_HOME = settings.resolve().home  # [ml] home, $AIRFLOW_ML_HOME, else ~/airflow-ml (docs/configuration.md)
MODEL_NAME = os.environ.get("AIRFLOW_ML_MODEL_NAME") or "audio_listen_30s"
FEATURE_SPEC = os.environ.get("AIRFLOW_ML_FEATURE_SPEC") or "specs/audio_recommendation.yaml"
SOURCE_CONN_ID = os.environ.get("AIRFLOW_ML_SOURCE_CONN_ID") or "ml_audio_sqlite"
#: the optional human approval step (parse time: it adds tasks, see the module docstring)
APPROVAL_STEP = airflow_conf.getboolean("ml", "approval_on_gate_failure", fallback=False)
if SOURCE_CONN_ID == "ml_audio_sqlite":
    # the embedded default: the SQLite file the demo generates (a real connection of that id wins
    # only if it is given as AIRFLOW_CONN_ML_AUDIO_SQLITE; use AIRFLOW_ML_SOURCE_CONN_ID otherwise)
    os.environ.setdefault(
        "AIRFLOW_CONN_ML_AUDIO_SQLITE",
        json.dumps({"conn_type": "sqlite", "host": os.path.join(ML_HOME, "audio.db")}),
    )

with DAG(
    dag_id="xgboost_recommendation",
    template_searchpath=[SQL_DIR],  # audio_training.sql
    description="sample -> preprocess -> train -> evaluate -> publish (XGBoost, listened > 30 s)",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["ml", "xgboost", "recommendation"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    max_active_runs=1,
    params={
        "sample_ratio": Param(1.0, type="number", minimum=0.0001, maximum=1.0, title="Sampling ratio",
                              description="Keep each play event with this probability."),
        "seed": Param(42, type="integer", title="Seed", description="Seed of the sample and of the split."),
        "split_by": Param("group", type="string", enum=["group", "random", "time"], title="Split",
                          description="group: by user id (a user never spans two splits); random; "
                          "time: by event time (older -> train, newer -> test)."),
        "min_event_ts": Param(0, type="integer", title="Events from (epoch seconds)",
                              description="Only play events at or after this time (a bound parameter)."),
        "eta": Param(0.1, type="number", minimum=0.0001, maximum=1.0, title="eta (learning rate)"),
        "max_depth": Param(6, type="integer", minimum=1, maximum=16, title="max_depth"),
        "num_boost_round": Param(100, type="integer", minimum=1, maximum=5000, title="Boosting rounds"),
        "early_stopping_rounds": Param(10, type="integer", minimum=0, title="Early stopping rounds",
                                       description="0 disables early stopping."),
        "tree_method": Param("hist", type="string", enum=["hist", "approx", "exact"], title="tree_method"),
        "device": Param("cpu", type="string", enum=["cpu", "cuda"], title="Device",
                        description="cuda trains on a GPU (passed to XGBoost unchanged)."),
        "nthread": Param(2, type="integer", minimum=1, title="Threads"),
        "disabled_tasks": disabled_tasks_param(),
        **({"approval_on_gate_failure": Param(
            True, type="boolean", title="Ask for approval when a gate fails",
            description="Wait for a human to approve (publish anyway) or reject (skip) a model whose gate failed.",
        )} if APPROVAL_STEP else {}),
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
    preprocess = PreprocessOperator(
        task_id="preprocess",
        spec=FEATURE_SPEC,
        keep_columns=["event_id", "user_id"],
    )
    train = XGBoostTrainOperator(
        task_id="train",
        objective="binary:logistic",
        eta="{{ params.eta }}",
        max_depth="{{ params.max_depth }}",
        num_boost_round="{{ params.num_boost_round }}",
        early_stopping_rounds="{{ params.early_stopping_rounds }}",
        eval_metric=["logloss", "auc"],
        tree_method="{{ params.tree_method }}",
        device="{{ params.device }}",
        nthread="{{ params.nthread }}",
        seed="{{ params.seed }}",
        log_every=10,
    )
    evaluate = EvaluateOperator(
        task_id="evaluate",
        model_name=MODEL_NAME,
        split="test",
        min_metrics={"auc": 0.6},
    )
    if not APPROVAL_STEP:
        publish = PublishModelOperator(task_id="publish", model_name=MODEL_NAME)
        sample >> preprocess >> train >> evaluate >> publish
    else:
        from airflow.providers.standard.operators.hitl import ApprovalOperator
        from airflow.sdk import task

        @task.branch(task_id="gate_check", trigger_rule="none_failed")
        def gate_check(**context):
            """``approve_publish`` when the gate failed and this run asks for approval, else ``publish``."""
            ev = context["ti"].xcom_pull(task_ids="evaluate")
            if ev and not ev.get("gate_passed") and context["params"].get("approval_on_gate_failure"):
                return "approve_publish"
            return "publish"

        approve = ApprovalOperator(
            task_id="approve_publish",
            subject=f"Publish {MODEL_NAME} although its gate failed?",
            body=("Run {{ run_id }}: the gate of the new model failed: "
                  "{{ ti.xcom_pull(task_ids='evaluate')['gate_reasons'] | join('; ') }}. "
                  "AUC {{ ti.xcom_pull(task_ids='evaluate')['auc'] }} (champion on the same rows: "
                  "{{ ti.xcom_pull(task_ids='evaluate')['champion_auc'] }}). Approve publishes it, Reject skips."),
        )
        publish = PublishModelOperator(task_id="publish", model_name=MODEL_NAME, approval_task_id="approve_publish",
                                       trigger_rule="none_failed_min_one_success")
        branch = gate_check()
        sample >> preprocess >> train >> evaluate >> branch >> [approve, publish]
        approve >> publish
