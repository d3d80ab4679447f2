"""Item2vec: audio-item embeddings from users' play histories (gensim Word2Vec).

Each user's plays, ordered by time, form one "sentence" of item ids; Word2Vec learns a vector
per audio item such that items played close together get close vectors. Typical uses: "more like
this" lists (nearest items), recall candidates for a ranking model, item features for another model.

sample -> train -> publish:

* ``sample`` -- the play events (user, item, time, category) from the SQL source, split by user
  (a user's whole history lands in one split): 90 % train, 10 % validation;
* ``train`` -- :class:`~airflow_ml_provider.operators.train.Word2VecTrainOperator`: groups the events
  into one time-ordered sequence per user, trains the embeddings, and measures them on the
  validation users: the next-item hit rate@k (is the next play among the k items nearest to the
  current one?) next to the most-popular-items baseline -- in the log, in ``evaluation.json``
  beside the model and in the XCom;
* ``publish`` -- :class:`~airflow_ml_provider.operators.publish.PublishModelOperator`: when the hit
  rate is at least ``min_hit_rate_ratio`` x the popularity baseline's (trigger form; default 0.9:
  not clearly worse than recommending the most popular items), the vectors and the vocabulary are
  published as an **embedding bundle** (no fitted spec; checksummed like every bundle) under the
  model name ``MODEL_NAME`` (``audio_item2vec``, or ``$AIRFLOW_ML_ITEM2VEC_MODEL``) with a registry
  row like any model; otherwise the publish is skipped (the run still succeeds).

The online service (``airflow-ml serve --models audio_item2vec``) hot-swaps it like any model and
answers ``POST /v1/models/audio_item2vec:predict`` ``{"instances": ["17", "42"]}`` with the item
vectors and ``POST /v1/models/audio_item2vec:similar`` ``{"item": "17", "k": 10, "exclude": [...]}``
with the nearest items by cosine (docs/serving.md). The model directory
(``<storage>/runs/item2vec/<run>/train/``: ``vectors.npy``, ``vocabulary.json``, ``word2vec.bin``,
``metadata.json``, ``evaluation.json``) also loads offline with
``airflow_ml_provider.ml.trainers.load_predictor("word2vec", dir)`` (``.similar(item)``,
``.vectors(items)``; numpy only).

What to expect on the synthetic data set: a user's plays are independent draws (35 % from the
favourite category, the rest by popularity), with no sequential pattern. The embeddings do learn
the categories -- measured once on the demo's 60,000 events with the defaults below (training
10 s on 2 cores), the mean cosine similarity of two items of one category is 0.57 against 0.25
for items of different categories -- but the next-item hit rate@10 stays at the popularity
baseline (0.032 against 0.031 over 5,321 pairs): there is no "next" to predict. On real
histories, with sessions and series, that is the figure to watch.

Locations as in ``xgboost_recommendation`` (``AIRFLOW_ML_HOME``, ``AIRFLOW_ML_SOURCE_CONN_ID``,
``AIRFLOW_ML_STORAGE``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_ml_provider.disabled_tasks import disabled_tasks_param
from airflow_ml_provider.ml import settings
from airflow_ml_provider.operators.publish import PublishModelOperator
from airflow_ml_provider.operators.sample import SampleOperator
from airflow_ml_provider.operators.train import Word2VecTrainOperator

ML_HOME = settings.resolve().home  # [ml] home, $AIRFLOW_ML_HOME, else ~/airflow-ml (docs/configuration.md)
SOURCE_CONN_ID = os.environ.get("AIRFLOW_ML_SOURCE_CONN_ID") or "ml_audio_sqlite"
MODEL_NAME = os.environ.get("AIRFLOW_ML_ITEM2VEC_MODEL") or "audio_item2vec"
if SOURCE_CONN_ID == "ml_audio_sqlite":
    os.environ.setdefault(
        "AIRFLOW_CONN_ML_AUDIO_SQLITE",
        json.dumps({"conn_type": "sqlite", "host": os.path.join(ML_HOME, "audio.db")}),
    )

#: one row per play event; :start_ts and :min_listened are bound parameters
PLAY_HISTORY_QUERY = """
SELECT e.user_id, e.item_id, e.event_ts, i.category_id
FROM play_events e
JOIN audio_items i ON i.item_id = e.item_id
WHERE e.event_ts >= :start_ts AND e.listened_30s >= :min_listened
""".strip()

with DAG(
    dag_id="item2vec",
    description="play histories -> Word2Vec item embeddings (item2vec), next-item hit rate, embedding bundle",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["ml", "word2vec", "embeddings"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    max_active_runs=1,
    params={
        "min_event_ts": Param(0, type="integer", title="Events from (epoch seconds)"),
        "only_listened": Param(False, type="boolean", title="Only plays listened > 30 s",
                               description="Keep only engaged plays in the histories."),
        "seed": Param(42, type="integer", title="Seed"),
        "vector_size": Param(32, type="integer", minimum=2, maximum=1024, title="Vector size"),
        "window": Param(10, type="integer", minimum=1, maximum=50, title="Context window"),
        "epochs": Param(20, type="integer", minimum=1, maximum=200, title="Epochs"),
        "min_count": Param(2, type="integer", minimum=1, title="Minimum plays per item"),
        "sg": Param(1, type="integer", enum=[0, 1], title="Skip-gram (1) or CBOW (0)"),
        "negative": Param(5, type="integer", minimum=0, maximum=50, title="Negative samples"),
        "eval_k": Param(10, type="integer", minimum=1, maximum=500, title="k of the hit rate@k"),
        "min_hit_rate_ratio": Param(0.9, type="number", minimum=0, title="Publish gate: hit rate / popularity's",
                                    description="Publish only when the next-item hit rate is at least this "
                                                "multiple of the most-popular-items baseline's (0: always)."),
        "disabled_tasks": disabled_tasks_param(),
    },
) as dag:
    sample = SampleOperator(
        task_id="sample",
        conn_id=SOURCE_CONN_ID,
        sql=PLAY_HISTORY_QUERY,
        parameters={"start_ts": "{{ params.min_event_ts }}",
                    "min_listened": "{{ 1 if params.only_listened else 0 }}"},
        seed="{{ params.seed }}",
        split_by="group",
        group_column="user_id",
        split_ratios=(0.9, 0.1, 0.0),
    )
    train = Word2VecTrainOperator(
        task_id="train",
        group_column="user_id",
        item_column="item_id",
        order_column="event_ts",
        vector_size="{{ params.vector_size }}",
        window="{{ params.window }}",
        epochs="{{ params.epochs }}",
        min_count="{{ params.min_count }}",
        sg="{{ params.sg }}",
        negative="{{ params.negative }}",
        seed="{{ params.seed }}",
        w2v_params={"sample": 0.0},  # a small catalogue: every item is frequent, do not down-sample
        eval_k="{{ params.eval_k }}",
    )
    publish = PublishModelOperator(
        task_id="publish",
        model_name=MODEL_NAME,
        input_task_id=None,  # embeddings have no evaluate task: the training task measured them
        train_task_id="train",
        preprocess_task_id=None,  # and no fitted spec: an embedding bundle
        min_hit_rate_ratio="{{ params.min_hit_rate_ratio }}",
    )
    sample >> train >> publish
