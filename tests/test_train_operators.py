"""TrainModelOperator (tensorflow, linear, gbdt) and Word2VecTrainOperator, with the real trainers.

* in-process ``execute`` on a small preprocessed sample of the audio data set: each framework
  trains, then the unchanged EvaluateOperator and PublishModelOperator evaluate and publish it --
  the bundle (verified) and the registry row record the framework and its library versions, and
  the published model re-scores the test split exactly as the evaluation did;
* Word2Vec on generated play histories with hidden categories: items of a category end up
  nearer to each other than to other items, and beat the popularity baseline on held-out users;
* the example DAG files parse without heavy imports; one real ``airflow dags test`` of
  ``tensorflow_recommendation`` publishes a bundle and a registry row.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from airflow_ml_provider.ml.bundle import load_bundle
from airflow_ml_provider.ml.datasets.audio import TRAINING_QUERY, load_audio_dataset
from airflow_ml_provider.ml.records import RECORD_KEYS
from airflow_ml_provider.ml.registry import ModelRegistry
from airflow_ml_provider.operators.evaluate import EvaluateOperator
from airflow_ml_provider.operators.preprocess import PreprocessOperator
from airflow_ml_provider.operators.publish import PublishModelOperator
from airflow_ml_provider.operators.sample import SampleOperator
from airflow_ml_provider.operators.train import TrainModelOperator, Word2VecTrainOperator, XGBoostTrainOperator

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
SPEC = DAGS / "specs" / "audio_recommendation.yaml"

HYPERPARAMS = {
    "tensorflow": {"hidden_units": "16,8", "epochs": "4", "batch_size": 128, "learning_rate": 0.005, "seed": 3,
                   "early_stopping_rounds": 0},
    "linear": {"C": "0.5", "max_iter": 300},
    "gbdt": {"max_iter": "40", "learning_rate": 0.2, "early_stopping_rounds": 5, "seed": 1},
}
MODEL_FILE = {"tensorflow": "model.keras", "linear": "model.json", "gbdt": "model.pkl"}
LIBRARY = {"tensorflow": "tensorflow", "linear": "scikit-learn", "gbdt": "scikit-learn"}


def library_version(versions: dict, library: str) -> str | None:
    """The recorded version of ``library`` (TensorFlow installs as tensorflow or tensorflow-cpu)."""
    found = [v for k, v in versions.items() if k == library or k.startswith(f"{library}-")]
    return found[0] if found else None


class FakeTI:
    def __init__(self, xcoms: dict):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids):
        return self.xcoms.get(task_ids)


class FakeDag:
    def __init__(self, dag_id: str):
        self.dag_id = dag_id
        self.fileloc = str(DAGS / "x.py")
        self.template_searchpath = None


def ctx(xcoms: dict, run_id: str = "run_1", dag_id: str = "unit_train", params: dict | None = None) -> dict:
    return {"params": params or {}, "run_id": run_id, "ti": FakeTI(xcoms), "dag": FakeDag(dag_id)}


def model_meta(record: dict) -> dict:
    """The model directory's metadata.json (params, history...): what the flat XCom points to."""
    return json.loads((Path(record["uri"]) / "metadata.json").read_text())


def final_metrics(meta: dict) -> dict:
    """``{"valid-auc": last value, ...}`` from a model's recorded history."""
    return {f"{data}-{metric}": values[-1] for data, metrics in meta["history"].items()
            for metric, values in metrics.items() if values}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ml_train")
    load_audio_dataset(home / "audio.db", events=5_000, users=500, items=250, hosts=60)
    keys = ("AIRFLOW_ML_HOME", "AIRFLOW_CONN_UNIT_TRAIN_AUDIO", "AIRFLOW_ML_STORAGE", "AIRFLOW_ML_REGISTRY")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["AIRFLOW_ML_HOME"] = str(home)
    os.environ["AIRFLOW_CONN_UNIT_TRAIN_AUDIO"] = json.dumps({"conn_type": "sqlite", "host": str(home / "audio.db")})
    os.environ.pop("AIRFLOW_ML_STORAGE", None)
    os.environ.pop("AIRFLOW_ML_REGISTRY", None)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def prepared(home):
    """sample -> preprocess, in-process; the XComs."""
    x: dict = {}
    c = ctx(x)
    x["sample"] = SampleOperator(task_id="sample", conn_id="unit_train_audio", sql=TRAINING_QUERY,
                                 parameters={"start_ts": 0}, split_by="group", group_column="user_id").execute(c)
    x["preprocess"] = PreprocessOperator(task_id="preprocess", spec=str(SPEC)).execute(c)
    return x


# -- TrainModelOperator -> EvaluateOperator -> PublishModelOperator, per framework ---------------


@pytest.mark.parametrize("framework", ["tensorflow", "linear", "gbdt"])
def test_train_evaluate_publish(framework, home, prepared):
    from airflow_ml_provider.ml.feature_table import read_feature_table
    from airflow_ml_provider.ml.metrics import auc_score
    from airflow_ml_provider.ml.trainers import load_predictor

    x = dict(prepared)
    c = ctx(x, run_id=f"run_{framework}")
    train = TrainModelOperator(task_id="train", framework=framework, hyperparams=HYPERPARAMS[framework]).execute(c)
    x["train"] = train
    # the same flat record as XGBoostTrainOperator's: the evaluation and publish steps read it
    assert tuple(train) == RECORD_KEYS["train"]
    assert (train["framework"], train["task"]) == (framework, "binary")
    prep = prepared["preprocess"]
    assert (train["spec_hash"], train["train_uri"], train["valid_uri"]) == (prep["spec_hash"], prep["train"],
                                                                           prep["valid"])
    model_dir = Path(train["uri"])
    assert model_dir == home / "storage" / "runs" / "unit_train" / f"run_{framework}" / "train"
    assert (model_dir / MODEL_FILE[framework]).stat().st_size > 0
    meta = model_meta(train)
    assert meta["framework"] == framework and library_version(meta["library_versions"], LIBRARY[framework])
    final = final_metrics(meta)
    assert train["final_metric"].startswith("valid-") and train["final_metric_value"] == final[train["final_metric"]]
    if framework == "tensorflow":
        assert meta["params"]["hidden_units"] == [16, 8] and meta["extra"]["epochs_run"] == 4
        assert len(final) == 4 and 0.5 < final["valid-auc"] <= 1
    if framework == "gbdt":
        assert meta["params"]["max_iter"] == 40 and meta["params"]["early_stopping_rounds"] == 5
        assert train["best_iteration"] is not None and "valid-logloss" in final
    if framework == "linear":
        assert meta["params"]["C"] == 0.5 and "valid-auc" in final

    x["evaluate"] = EvaluateOperator(task_id="evaluate", model_name=f"unit_{framework}", min_metrics={"auc": 0.6},
                                     champion=False).execute(c)
    ev = x["evaluate"]
    assert ev["gate_passed"] is True, ev["gate_reasons"]
    assert 0.6 < ev["auc"] < 1.0
    charts = {p.name for p in Path(ev["charts_uri"]).iterdir()}
    assert "roc.png" in charts and "feature_importance.png" in charts

    registry = f"sqlite:///{home}/registry_{framework}.db"
    out = PublishModelOperator(task_id="publish", model_name=f"unit_{framework}", registry=registry).execute(c)
    rec = ModelRegistry(registry).current(f"unit_{framework}")
    assert (rec.version, rec.framework, rec.run_id, rec.bundle_uri) == (1, framework, f"run_{framework}", out["uri"])
    bundle = load_bundle(rec.bundle_uri, verify=True)
    assert bundle.framework == framework and bundle.checksum == rec.checksum
    assert bundle.metadata["framework"] == framework
    assert library_version(bundle.metadata["library_versions"], LIBRARY[framework])
    assert bundle.metadata["params"] == meta["params"]
    assert (bundle.model_dir / MODEL_FILE[framework]).is_file()
    assert rec.metrics["auc"] == pytest.approx(ev["auc"])
    # the published model re-scores the test split as the evaluation did
    test = read_feature_table(prepared["preprocess"]["test"])
    scores = load_predictor(rec.framework, bundle.model_dir).predict(test.X)
    assert auc_score(test.y, scores) == pytest.approx(ev["auc"], abs=1e-9)


def test_xgboost_through_train_model_operator_matches_the_xgboost_operator(home, prepared):
    x = dict(prepared)
    c = ctx(x, run_id="xgb")
    generic = TrainModelOperator(task_id="generic", framework="xgb",
                                 hyperparams={"num_boost_round": 12, "eval_metric": ["logloss", "auc"], "nthread": 2,
                                              "eta": 0.1, "max_depth": 6, "seed": 0})
    special = XGBoostTrainOperator(task_id="special", num_boost_round=12, eval_metric=["logloss", "auc"], nthread=2)
    assert isinstance(special, TrainModelOperator)
    a, b = generic.execute(c), special.execute(c)
    assert set(a) == set(b) and a["framework"] == b["framework"] == "xgboost"
    # the same booster params give the same model
    assert (a["final_metric"], a["final_metric_value"]) == (b["final_metric"], b["final_metric_value"])
    assert model_meta(a)["history"] == model_meta(b)["history"]


def test_hyperparams_are_templated(home, prepared):
    from airflow.sdk import DAG

    with DAG("unit_render", schedule=None, render_template_as_native_obj=True) as dag:
        op = TrainModelOperator(task_id="train", framework="{{ params.fw }}",
                                hyperparams={"hidden_units": "{{ params.units }}", "epochs": "{{ params.epochs }}"})
    assert "hyperparams" in TrainModelOperator.template_fields and "framework" in TrainModelOperator.template_fields
    op.render_template_fields({"params": {"fw": "tf", "units": [4, 2], "epochs": 2}}, jinja_env=dag.get_template_env())
    assert op.framework_name() == "tensorflow"
    assert op.trainer_params() == {"hidden_units": [4, 2], "epochs": 2}
    as_json = TrainModelOperator(task_id="t2", framework="gbdt", hyperparams='{"max_iter": 5, "early_stopping_rounds": "0"}')
    assert as_json.trainer_params() == {"max_iter": 5}  # JSON text; 0 disables early stopping


def test_bad_framework_and_hyperparams_are_named(home, prepared):
    from airflow_ml_provider.ml.trainers import TrainerError

    with pytest.raises(ValueError, match=r"TrainModelOperator\(t\): unknown framework 'pytorch'; use one of xgboost"):
        TrainModelOperator(task_id="t", framework="pytorch")
    with pytest.raises(ValueError, match="use Word2VecTrainOperator"):
        TrainModelOperator(task_id="t", framework="word2vec")
    op = TrainModelOperator(task_id="t", framework="linear", hyperparams={"C": 1.0, "learning_rate": 0.1})
    with pytest.raises(TrainerError, match=r"linear: unknown param\(s\) \['learning_rate'\]"):
        op.execute(ctx(dict(prepared), run_id="bad_param"))
    op = TrainModelOperator(task_id="t", framework="tensorflow", hyperparams=["epochs", 2])
    with pytest.raises(ValueError, match="hyperparams must be a mapping, got list"):
        op.execute(ctx(dict(prepared), run_id="bad_type"))
    # no partial output after a failed training
    assert not (home / "storage" / "runs" / "unit_train" / "bad_param").exists()


def test_disabled_training_tasks_do_nothing(home, prepared):
    from airflow.sdk.exceptions import AirflowSkipException

    ops = [TrainModelOperator(task_id="train", framework="tensorflow", hyperparams={"no_such_param": 1}),
           Word2VecTrainOperator(task_id="embed", sequence_column="missing", train_uri="/no/such/file.parquet")]
    for op in ops:
        c = ctx(dict(prepared), run_id="disabled", params={"disabled_tasks": ["train", "embed"]})
        with pytest.raises(AirflowSkipException):  # the bad arguments above would fail if anything ran
            op.execute(c)
    assert not (home / "storage" / "runs" / "unit_train" / "disabled").exists()


def test_early_stopping_without_validation_is_turned_off(home, prepared):
    out = TrainModelOperator(
        task_id="t", framework="gbdt", train_uri=prepared["preprocess"]["train"],
        hyperparams={"max_iter": 5, "early_stopping_rounds": 3},
    ).execute(ctx({}, run_id="no_valid"))
    params = model_meta(out)["params"]
    assert params["early_stopping_rounds"] is None and params["max_iter"] == 5
    assert (out["train_uri"], out["valid_uri"], out["spec_hash"]) == (prepared["preprocess"]["train"], None, None)
    final = final_metrics(model_meta(out))  # no validation table: no valid-* metric
    assert out["final_metric"] is None if not final else out["final_metric"].startswith("train-")


# -- Word2Vec ----------------------------------------------------------------------------------

N_CATEGORIES, ITEMS_PER_CATEGORY = 5, 12


def _play_histories(n_users: int, seed: int) -> dict[str, list]:
    """Events of users who each play mostly (85 %) items of their favourite category, rows shuffled."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        fav = u % N_CATEGORIES
        for t in range(16):
            cat = fav if rng.random() < 0.85 else int(rng.integers(N_CATEGORIES))
            users.append(u)
            items.append(cat * ITEMS_PER_CATEGORY + int(rng.integers(ITEMS_PER_CATEGORY)))
            ts.append(1_700_000_000 + u * 1000 + t * 10)
    order = rng.permutation(len(users))  # the order column, not the file, must order the histories
    return {"user_id": [users[i] for i in order], "item_id": [items[i] for i in order],
            "event_ts": [ts[i] for i in order]}


@pytest.fixture(scope="module")
def w2v(home, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("w2v")
    pq.write_table(pa.table(_play_histories(400, seed=1)), d / "train.parquet")
    pq.write_table(pa.table(_play_histories(60, seed=2)), d / "valid.parquet")
    x = {"sample": {"train": str(d / "train.parquet"), "valid": str(d / "valid.parquet"), "test": None}}
    op = Word2VecTrainOperator(task_id="embed", group_column="user_id", item_column="item_id",
                               order_column="event_ts", vector_size="16", window=3, epochs="15", min_count=1,
                               seed=7, w2v_params={"sample": 0.0}, eval_k=5)
    out = op.execute(ctx(x, run_id="w2v"))
    return out, x


def test_word2vec_items_of_a_category_cluster(w2v):
    from airflow_ml_provider.ml.trainers import load_predictor

    out, _ = w2v
    assert (out["framework"], out["task"]) == ("word2vec", "embedding")
    assert out["vocabulary_size"] == N_CATEGORIES * ITEMS_PER_CATEGORY and out["sentences"] == 400
    params = model_meta(out)["params"]
    assert params["vector_size"] == 16 and params["epochs"] == 15 and params["sample"] == 0.0
    p = load_predictor("word2vec", out["uri"])
    items = [str(i) for i in range(N_CATEGORIES * ITEMS_PER_CATEGORY)]
    unit = p.unit[[p.index[i] for i in items]]
    cat = np.arange(len(items)) // ITEMS_PER_CATEGORY
    sims = unit @ unit.T
    same = (cat[:, None] == cat[None, :]) & ~np.eye(len(items), dtype=bool)
    other = cat[:, None] != cat[None, :]
    assert sims[same].mean() > sims[other].mean() + 0.3, (sims[same].mean(), sims[other].mean())
    # nearest neighbours: nearly all of the same category
    precision = np.mean([
        np.mean([int(j) // ITEMS_PER_CATEGORY == int(i) // ITEMS_PER_CATEGORY for j, _ in p.similar(i, topn=5)])
        for i in items
    ])
    assert precision > 0.9, precision


def test_word2vec_is_measured_on_held_out_users(w2v):
    out, x = w2v
    assert tuple(out) == RECORD_KEYS["word2vec"]
    ev = json.loads(Path(out["evaluation_uri"]).read_text())
    assert ev["k"] == 5 == out["eval_k"] and ev["data_uri"] == x["sample"]["valid"] == out["valid_uri"]
    assert ev["pairs"] == ev["pairs_total"] > 60 * 10 and ev["coverage"] == 1.0
    # within-category pairs are 0.85^2 ~ 72 % of all; 5 nearest of the 11 same-category items ~ 0.33
    assert ev["hit_rate"] > 0.25 and ev["hit_rate"] > 3 * ev["popularity_hit_rate"]
    assert (out["hit_rate"], out["popularity_hit_rate"]) == (ev["hit_rate"], ev["popularity_hit_rate"])
    assert "train-loss" in final_metrics(model_meta(out))
    assert sorted(p.name for p in Path(out["uri"]).iterdir()) == [
        "evaluation.json", "metadata.json", "vectors.npy", "vocabulary.json", "word2vec.bin"]


def test_word2vec_from_a_sequence_column_and_errors(home, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    seqs = [["a", "b", "c"], ["b", "c"], ["z"], None, ["c", "a", "b", "a"]]
    pq.write_table(pa.table({"history": seqs, "user": [1, 2, 3, 4, 5]}), tmp_path / "seq.parquet")
    op = Word2VecTrainOperator(task_id="w", input_task_id=None, train_uri=str(tmp_path / "seq.parquet"),
                               sequence_column="history", vector_size=4, epochs=1)
    out = op.execute(ctx({}, run_id="w2v_seq"))
    assert out["sentences"] == 3 and out["vocabulary_size"] == 3  # ["z"] is too short, None skipped
    assert out["evaluation_uri"] is None and out["valid_uri"] is None and out["hit_rate"] is None
    bad = Word2VecTrainOperator(task_id="w", input_task_id=None, train_uri=str(tmp_path / "seq.parquet"),
                                group_column="user", item_column="item_id")
    with pytest.raises(ValueError, match=r"column 'item_id' \(item_column\) is missing; columns: \['history', 'user'\]"):
        bad.execute(ctx({}, run_id="w2v_bad"))
    with pytest.raises(ValueError, match="set sequence_column, or group_column and item_column"):
        Word2VecTrainOperator(task_id="w", group_column="user")
    clash = Word2VecTrainOperator(task_id="w", sequence_column="history", w2v_params={"epochs": 3})
    with pytest.raises(ValueError, match=r"w2v_params repeats \['epochs'\]"):
        clash.trainer_params()
    assert not (home / "storage" / "runs" / "unit_train" / "w2v_bad").exists()


def test_word2vec_is_not_evaluated_but_published_as_an_embedding_bundle(home, w2v):
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_ml_provider.ml.trainers import load_predictor

    out, x = w2v
    xcoms = {**x, "train": out}
    with pytest.raises(ValueError, match="word2vec embedding .* no score to evaluate"):
        EvaluateOperator(task_id="evaluate", model_name="unit_w2v", champion=False).execute(ctx(xcoms, run_id="w2v_ev"))
    registry = f"sqlite:///{home}/w2v_registry.db"
    # a hit-rate gate the embeddings fail: skipped, nothing published
    strict = PublishModelOperator(task_id="publish", model_name="unit_w2v", input_task_id=None,
                                  preprocess_task_id=None, registry=registry, min_hit_rate_ratio=1000)
    with pytest.raises(AirflowSkipException, match=r"gate failed: next-item hit rate@5 .* < 1000.0 x the most-popular"):
        strict.execute(ctx(xcoms, run_id="w2v_gate"))
    assert ModelRegistry(registry).list() == []
    # gates they pass (at least the popularity baseline): an embedding bundle, registered like any model
    pub = PublishModelOperator(task_id="publish", model_name="unit_w2v", input_task_id=None,
                               preprocess_task_id=None, registry=registry, min_hit_rate=0.1, min_hit_rate_ratio="1.0")
    rec = pub.execute(ctx(xcoms, run_id="w2v_pub"))
    assert tuple(rec) == RECORD_KEYS["publish"] and rec["version"] == 1 and rec["evaluated"] is True
    [row] = ModelRegistry(registry).list()
    assert (row.name, row.version, row.framework, row.checksum) == ("unit_w2v", 1, "word2vec", rec["checksum"])
    bundle = load_bundle(Path(rec["uri"]))
    assert bundle.kind == "embedding" and bundle.fitted_spec_path is None
    assert bundle.metrics["hit_rate"] == out["hit_rate"] and bundle.metrics["pairs"] > 0
    assert bundle.metadata["training_data_uri"] == x["sample"]["train"]
    assert {"model/vectors.npy", "model/vocabulary.json"} <= set(bundle.manifest["files"])
    served = load_predictor("word2vec", bundle.model_dir)
    trained = load_predictor("word2vec", Path(out["uri"]))
    assert served.items == trained.items and np.array_equal(served.vectors_, trained.vectors_)


def test_build_sequences_orders_by_time():
    from airflow_ml_provider.ml.item2vec import build_sequences

    table = {"u": [2, 1, 2, 1, 1, 3, None], "i": [20.0, 10.0, 21.0, 12.0, 11.0, 30.0, 99.0],
             "t": [5, 3, 1, 2, 1, 1, 0]}
    assert build_sequences(table, group_column="u", item_column="i", order_column="t") == [
        ["11", "12", "10"], ["21", "20"]]  # user 3 has one play: too short; the NULL user dropped
    assert build_sequences(table, group_column="u", item_column="i", min_length=1)[-1] == ["30"]


# -- conventions, DAG files --------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TrainModelOperator, Word2VecTrainOperator], ids=lambda c: c.__name__)
def test_operator_conventions(cls):
    sig = inspect.signature(cls.__init__)
    own = [p for name, p in sig.parameters.items() if name not in ("self", "kwargs")]
    assert own and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in own)
    assert "params" not in sig.parameters  # BaseOperator.params is the DAG's Params
    for p in own:
        assert f":param {p.name}:" in (cls.__doc__ or ""), f"{cls.__name__} does not document {p.name}"
        assert p.annotation is not inspect.Parameter.empty
        assert p.name in cls.template_fields
    assert inspect.getmodule(cls).__doc__


_PROBE = r"""
import importlib.util, json, sys
modules = []
for i, path in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"dag_file_{i}", path)
    modules.append(importlib.util.module_from_spec(spec))
    spec.loader.exec_module(modules[-1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} &
                        {"xgboost", "tensorflow", "gensim", "sklearn", "numpy", "pandas", "pyarrow"})))
dags = [d for m in modules for d in vars(m).values() if type(d).__name__ == "DAG"]
for d in dags:
    d.params.validate()  # the trigger form's defaults satisfy their own schemas
print(json.dumps({d.dag_id: sorted(d.task_dict) for d in dags}))
"""


def test_dag_files_parse_without_heavy_imports():
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAGS / "model_zoo.py"), str(DAGS / "item2vec.py")],
        capture_output=True, text=True, timeout=300, cwd=str(REPO),
        env={**os.environ, "AIRFLOW_ML_HOME": "/nonexistent-airflow-ml-home"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    heavy, dags = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert heavy == []
    pipeline = ["evaluate", "preprocess", "publish", "sample", "train"]
    assert dags == {"tensorflow_recommendation": pipeline, "linear_recommendation": pipeline,
                    "gbdt_recommendation": pipeline, "item2vec": ["publish", "sample", "train"]}


# -- one real Airflow run ----------------------------------------------------------------------


@pytest.mark.airflow
@pytest.mark.slow
def test_tensorflow_dag_end_to_end_in_airflow(run_dag, tmp_path):
    home = tmp_path / "ml_home"
    load_audio_dataset(home / "audio.db", events=4_000, users=400, items=200, hosts=50)
    env = {"AIRFLOW_ML_HOME": str(home), "AIRFLOW_ML_STORAGE": "", "AIRFLOW_ML_REGISTRY": "",
           "AIRFLOW_ML_SOURCE_CONN_ID": "", "AIRFLOW_ML_MODEL_NAME": "", "AIRFLOW_ML_FEATURE_SPEC": ""}
    conf = {"epochs": 3, "hidden_units": [16], "batch_size": 128, "learning_rate": 0.005, "seed": 5}
    res = run_dag(DAGS, "tensorflow_recommendation", conf=conf, env=env)
    assert res.returncode == 0, res.output[-6000:]
    assert res.states == dict.fromkeys(["sample", "preprocess", "train", "evaluate", "publish"], "success"), \
        res.output[-6000:]
    assert "[epoch 3/3]" in res.output  # per-epoch progress in the task log

    reg = ModelRegistry(f"sqlite:///{home / 'registry.db'}")
    [rec] = reg.list("audio_listen_30s_tensorflow")
    assert (rec.version, rec.framework, rec.dag_id, rec.run_id) == (1, "tensorflow", "tensorflow_recommendation",
                                                                    res.run_id)
    assert rec.bundle_uri == str(home / "storage" / "models" / "audio_listen_30s_tensorflow" / "1")
    bundle = load_bundle(rec.bundle_uri, verify=True)
    assert bundle.checksum == rec.checksum and bundle.framework == "tensorflow"
    meta = bundle.metadata
    assert (meta["dag_id"], meta["run_id"], meta["evaluated"]) == ("tensorflow_recommendation", res.run_id, True)
    assert library_version(meta["library_versions"], "tensorflow") and meta["library_versions"]["keras"]
    # the trigger-form values reached the trainer, typed (native rendering)
    assert meta["params"]["hidden_units"] == [16] and meta["params"]["epochs"] == 3 and meta["params"]["seed"] == 5
    assert (bundle.model_dir / "model.keras").is_file() and (bundle.root / "charts" / "roc.png").is_file()
    assert 0.6 < bundle.metrics["auc"] == pytest.approx(rec.metrics["auc"])


def test_item2vec_dag_tasks_on_the_audio_data(home, monkeypatch):
    """The item2vec DAG's own tasks (its SQL, its trigger-form defaults) in-process on the audio data set."""
    import importlib.util

    monkeypatch.setenv("AIRFLOW_ML_SOURCE_CONN_ID", "unit_train_audio")
    spec = importlib.util.spec_from_file_location("item2vec_dag_under_test", DAGS / "item2vec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    params = dag.params.dump()
    assert params["vector_size"] == 32 and params["only_listened"] is False
    assert params["min_hit_rate_ratio"] == 0.9
    params["min_hit_rate_ratio"] = 0  # publish whatever the hit rate (the gate is tested above)
    x: dict = {}
    for task_id in ("sample", "train", "publish"):
        task = dag.get_task(task_id)
        c = {**ctx(x, run_id="item2vec_run", dag_id="item2vec", params=params), "dag": dag}
        task.render_template_fields(c, jinja_env=dag.get_template_env())
        x[task_id] = task.execute(c)
    assert x["sample"]["rows_test"] == 0 and x["sample"]["rows_valid"] > 0
    out = x["train"]
    assert out["train_uri"] == x["sample"]["train"] and out["valid_uri"] == x["sample"]["valid"]
    params = model_meta(out)["params"]
    assert params["vector_size"] == 32 and params["min_count"] == 2 and params["window"] == 10
    ev = json.loads(Path(out["evaluation_uri"]).read_text())
    # the synthetic plays have no sequential pattern: the hit rate is measured, not expected to beat popularity
    assert ev["pairs"] > 100 and 0 < ev["hit_rate"] < 0.5 and 0 < ev["popularity_hit_rate"] < 0.5, ev
    # published as an embedding bundle under the DAG's model name, in the ML home's registry
    [row] = ModelRegistry(f"sqlite:///{home / 'registry.db'}").list(module.MODEL_NAME)
    assert (row.version, row.framework, row.dag_id, row.run_id) == (x["publish"]["version"], "word2vec", "item2vec",
                                                                    "item2vec_run")
    bundle = load_bundle(row.bundle_uri)
    assert bundle.kind == "embedding" and bundle.metrics["hit_rate"] == ev["hit_rate"]

    # items of one category (users favour one) are nearer to each other than to other items
    import sqlite3

    from airflow_ml_provider.ml.trainers import load_predictor

    p = load_predictor("word2vec", out["uri"])
    category = dict(sqlite3.connect(home / "audio.db").execute("SELECT item_id, category_id FROM audio_items"))
    cats = np.array([category[int(i)] for i in p.items])
    sims = p.unit @ p.unit.T
    same = (cats[:, None] == cats[None, :]) & ~np.eye(len(cats), dtype=bool)
    assert sims[same].mean() > sims[cats[:, None] != cats[None, :]].mean() + 0.1
