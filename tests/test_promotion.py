"""Trustworthy promotion (issue 12, point 3): the champion re-scored on the challenger's rows, ties.

In-process pipelines (sample -> preprocess -> train -> evaluate -> publish) on the audio data set in
SQLite, one registry:

* two publishes; the second run's evaluate record carries the champion's metrics on ITS test rows,
  equal to a direct re-score of version 1 (its bundle, fetched from the registry) on run 2's test
  feature table -- not the metrics version 1 recorded on its own test set;
* a run with another feature spec: the champion is re-scored on run 2's raw test split transformed
  with version 1's own fitted spec, and that equals the direct re-score too;
* an identical re-run ties the champion: no new version by default; ``publish_on_tie=True`` publishes;
* a champion whose bundle is gone is compared through its recorded metrics, with a warning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from airflow_ml_provider.ml.bundle import fetch_bundle, load_bundle
from airflow_ml_provider.ml.datasets.audio import TRAINING_QUERY, load_audio_dataset
from airflow_ml_provider.ml.feature_table import read_feature_table
from airflow_ml_provider.ml.features import FittedSpec
from airflow_ml_provider.ml.metrics import compute_metrics
from airflow_ml_provider.ml.registry import ModelRegistry
from airflow_ml_provider.ml.trainers import load_predictor
from airflow_ml_provider.operators.evaluate import EvaluateOperator
from airflow_ml_provider.operators.preprocess import PreprocessOperator
from airflow_ml_provider.operators.publish import PublishModelOperator
from airflow_ml_provider.operators.sample import SampleOperator
from airflow_ml_provider.operators.train import XGBoostTrainOperator

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "dags" / "specs" / "audio_recommendation.yaml"


class FakeTI:
    def __init__(self, xcoms: dict):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids):
        return self.xcoms.get(task_ids)


class FakeDag:
    def __init__(self, dag_id: str):
        self.dag_id = dag_id
        self.fileloc = str(REPO / "dags" / "x.py")
        self.template_searchpath = None


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("promotion")
    load_audio_dataset(home / "audio.db", events=6_000, users=600, items=300, hosts=80)
    keys = ("AIRFLOW_ML_HOME", "AIRFLOW_CONN_PROMO_AUDIO", "AIRFLOW_ML_STORAGE", "AIRFLOW_ML_REGISTRY")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["AIRFLOW_ML_HOME"] = str(home)
    os.environ["AIRFLOW_CONN_PROMO_AUDIO"] = json.dumps({"conn_type": "sqlite", "host": str(home / "audio.db")})
    os.environ.pop("AIRFLOW_ML_STORAGE", None)
    os.environ.pop("AIRFLOW_ML_REGISTRY", None)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pipeline(home: Path, model: str, run_id: str, *, seed: int = 1, rounds: int = 15, spec: Path = SPEC,
             publish_on_tie: bool = False) -> dict:
    """One run in-process; returns the XComs (publish: the record, or the skip reason)."""
    from airflow.sdk.exceptions import AirflowSkipException

    x: dict = {}
    c = {"params": {}, "run_id": run_id, "ti": FakeTI(x), "dag": FakeDag(f"promo_{model}")}
    reg = f"sqlite:///{home / f'{model}.db'}"
    x["sample"] = SampleOperator(task_id="sample", conn_id="promo_audio", sql=TRAINING_QUERY, parameters={"start_ts": 0},
                                 split_by="group", group_column="user_id", seed=seed, ratio=0.9).execute(c)
    x["preprocess"] = PreprocessOperator(task_id="preprocess", spec=str(spec)).execute(c)
    x["train"] = XGBoostTrainOperator(task_id="train", num_boost_round=rounds, eval_metric=["logloss", "auc"],
                                      nthread=1, seed=seed).execute(c)
    x["evaluate"] = EvaluateOperator(task_id="evaluate", model_name=model, registry=reg, min_metrics={"auc": 0.5},
                                     publish_on_tie=publish_on_tie, charts=False).execute(c)
    try:
        x["publish"] = PublishModelOperator(task_id="publish", model_name=model, registry=reg).execute(c)
    except AirflowSkipException as exc:
        x["publish"] = str(exc)
    return x


def _bundle(home: Path, model: str, version: int):
    rec = ModelRegistry(f"sqlite:///{home / f'{model}.db'}").get(model, version)
    return load_bundle(fetch_bundle(rec.bundle_uri, home / "direct-cache", expected_checksum=rec.checksum))


def direct_rescore(home: Path, model: str, version: int, X: np.ndarray, y: np.ndarray) -> dict:
    """Version ``version`` scored here by hand: registry row -> bundle -> predictor -> metrics."""
    bundle = _bundle(home, model, version)
    scores = load_predictor(bundle.framework, bundle.model_dir).predict(X)
    return compute_metrics(y, scores, task="binary")


def direct_rescore_raw(home: Path, model: str, version: int, raw_uri: str) -> tuple[dict, int]:
    """The same, on a RAW split transformed with that version's own fitted spec (from its bundle)."""
    fitted = FittedSpec.load(_bundle(home, model, version).fitted_spec_path)
    raw = pq.read_table(raw_uri).to_pandas()
    X = fitted.transform(raw)
    return direct_rescore(home, model, version, X, fitted.labels(raw)), X


def test_champion_is_rescored_on_the_challengers_rows(home):
    first = pipeline(home, "rows", "run_1", seed=1)
    assert first["publish"]["version"] == 1
    assert first["evaluate"]["champion_version"] is None and first["evaluate"]["champion_rescored"] is False
    second = pipeline(home, "rows", "run_2", seed=2, rounds=25)  # another sample: other test rows, refitted spec
    ev = second["evaluate"]
    assert ev["champion_version"] == 1 and ev["champion_rescored"] is True
    direct, _ = direct_rescore_raw(home, "rows", 1, second["sample"]["test"])
    assert ev["champion_auc"] == direct["auc"] and ev["champion_logloss"] == direct["logloss"]
    assert ev["champion_ks"] == direct["ks"]
    assert direct["n"] == ev["n_rows"]  # the rows the challenger was scored on
    # not the metrics version 1 recorded on its own (other) test rows
    recorded = ModelRegistry(f"sqlite:///{home / 'rows.db'}").get("rows", 1).metrics
    assert recorded["auc"] == first["evaluate"]["auc"] != ev["champion_auc"]
    # both sets recorded: champion_metrics.json and gate.json; the gate compared with the re-score
    champ = json.loads(Path(ev["champion_metrics_uri"]).read_text())
    assert champ["metrics"]["auc"] == direct["auc"] and champ["metrics"]["n_rows"] == ev["n_rows"]
    assert champ["recorded_metrics"]["auc"] == recorded["auc"]
    assert "raw test split transformed with the champion's own fitted spec" in champ["how"]
    gate = json.loads(Path(ev["gate_uri"]).read_text())
    assert gate["champion"]["metrics"]["auc"] == direct["auc"] and gate["challenger_metrics"]["auc"] == ev["auc"]
    compared = f"vs champion {format(direct['auc'], '.4g')}"
    failed = f"champion {format(direct['auc'], '.4g')}"
    assert any(compared in line or failed in line for line in gate["checks"]), gate["checks"]
    assert ev["gate_passed"] is (ev["auc"] > direct["auc"])


def test_same_fitted_spec_rescores_on_the_same_feature_table(home):
    first = pipeline(home, "table", "run_1", seed=7, rounds=10)
    assert first["publish"]["version"] == 1
    second = pipeline(home, "table", "run_2", seed=7, rounds=30)  # same rows, same fitted spec, another model
    assert second["preprocess"]["spec_hash"] == first["preprocess"]["spec_hash"]
    ev = second["evaluate"]
    test = read_feature_table(second["preprocess"]["test"])
    direct = direct_rescore(home, "table", 1, test.X, test.y)
    assert ev["champion_rescored"] is True
    assert ev["champion_auc"] == direct["auc"] and ev["champion_logloss"] == direct["logloss"]
    assert "same feature table" in json.loads(Path(ev["champion_metrics_uri"]).read_text())["how"]


def test_champion_with_another_spec_is_rescored_through_its_own_spec(home, tmp_path):
    first = pipeline(home, "other_spec", "run_1", seed=3)
    assert first["publish"]["version"] == 1
    spec2 = tmp_path / "spec2.yaml"
    spec2.write_text(SPEC.read_text().replace("top_k: 20", "top_k: 7"))
    second = pipeline(home, "other_spec", "run_2", seed=3, spec=spec2)  # same rows, another spec
    assert second["preprocess"]["spec_hash"] != first["preprocess"]["spec_hash"]
    ev = second["evaluate"]
    assert ev["champion_rescored"] is True
    direct, X = direct_rescore_raw(home, "other_spec", 1, second["sample"]["test"])
    assert not np.array_equal(X, read_feature_table(second["preprocess"]["test"]).X, equal_nan=True)  # another spec
    assert ev["champion_auc"] == direct["auc"] and ev["champion_logloss"] == direct["logloss"]
    # same rows as run 1's evaluation: the re-score through the champion's spec reproduces its record
    assert ev["champion_auc"] == first["evaluate"]["auc"]


def test_identical_rerun_ties_and_does_not_publish_unless_configured(home):
    first = pipeline(home, "ties", "run_1", seed=5)
    assert first["publish"]["version"] == 1
    again = pipeline(home, "ties", "run_2", seed=5)  # the same data, spec and params: the same model
    ev = again["evaluate"]
    assert ev["champion_rescored"] is True and ev["champion_auc"] == ev["auc"]
    assert ev["gate_passed"] is False
    assert "ties champion" in ev["gate_reasons"][0] and "publish_on_tie" in ev["gate_reasons"][0]
    assert "gate failed" in again["publish"]
    reg = ModelRegistry(f"sqlite:///{home / 'ties.db'}")
    assert reg.versions("ties") == [1]
    allowed = pipeline(home, "ties", "run_3", seed=5, publish_on_tie=True)
    assert allowed["evaluate"]["gate_passed"] is True
    assert allowed["publish"]["version"] == 2 and reg.versions("ties") == [1, 2]


def test_unreadable_champion_falls_back_to_its_recorded_metrics(home):
    reg = ModelRegistry(f"sqlite:///{home / 'gone.db'}")
    reg.create_tables()
    reg.publish(name="gone", bundle_uri=str(home / "no-such-bundle"), framework="xgboost", metrics={"auc": 0.999})
    out = pipeline(home, "gone", "run_1", seed=6)
    ev = out["evaluate"]
    assert ev["champion_version"] == 1 and ev["champion_rescored"] is False
    assert ev["champion_auc"] == 0.999 and ev["champion_metrics_uri"] is None
    assert ev["gate_passed"] is False and "does not beat champion 0.999" in ev["gate_reasons"][0]
    gate = json.loads(Path(ev["gate_uri"]).read_text())
    assert gate["champion"]["error"] and gate["champion"]["rescored"] is False
