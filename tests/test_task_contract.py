"""The flat task contract: each task's XCom is one flat record with the documented keys.

* The example DAG's own tasks (``dags/xgboost_recommendation.py``, rendered from its trigger form)
  run in-process: every ``return_value`` is a dict of scalars and short lists of scalars, with
  exactly the keys of its kind in ``RECORD_KEYS`` -- which must equal the table in docs/pipeline.md.
* The values chain by task id, not by nesting; the latest-output fallback of a disabled upstream
  works on flat records; a model and features of another fitted spec are refused.
* The model service loads the published bundle and checks its spec hash under the one documented
  key, ``metadata["spec_hash"]``: a wrong hash there is refused; the retired key names are not read.
* One real ``airflow dags test`` run: the XComs in Airflow's metadata DB are the same flat records,
  and a second run with ``disabled_tasks=["sample"]`` still chains through them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_ml_provider.ml.bundle import SPEC_HASH_KEY, bundle_checksum, load_bundle
from airflow_ml_provider.ml.datasets.audio import load_audio_dataset
from airflow_ml_provider.ml.records import MAX_LIST_ITEMS, RECORD_KEYS, RecordError, make_record
from airflow_ml_provider.ml.registry import ModelRegistry

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
DOC = REPO / "docs" / "pipeline.md"
DAG_ID = "xgboost_recommendation"
MODEL = "contract_model"
TASKS = ("sample", "preprocess", "train", "evaluate", "publish")
FAST = {"num_boost_round": 15, "early_stopping_rounds": 5, "nthread": 2}
SCALARS = (str, int, float, bool, type(None))


class FakeTI:
    def __init__(self, xcoms: dict):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids):
        return self.xcoms.get(task_ids)


def assert_flat(task_id: str, record: object) -> None:
    """A dict of scalars and short lists of scalars: nothing nested, no other task's record inside."""
    assert isinstance(record, dict), (task_id, record)
    for key, value in record.items():
        assert isinstance(key, str), (task_id, key)
        if isinstance(value, list):
            assert len(value) <= MAX_LIST_ITEMS, (task_id, key, len(value))
            assert all(isinstance(v, SCALARS) for v in value), (task_id, key, value)
        else:
            assert isinstance(value, SCALARS), (task_id, key, type(value).__name__)
    assert json.loads(json.dumps(record, allow_nan=False)) == record  # strict JSON, as XCom stores it


def documented_keys() -> dict[str, tuple[str, ...]]:
    """The record table of docs/pipeline.md: ``{kind: (key, ...)}`` in table order."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The task contract", 1)[1].split("\n## ", 1)[0]
    keys: dict[str, list[str]] = {}
    for kind, key in re.findall(r"^\| `([a-z0-9]+)` \| `([a-z0-9_]+)` \|", section, flags=re.M):
        keys.setdefault(kind, []).append(key)
    return {k: tuple(v) for k, v in keys.items()}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("contract")
    load_audio_dataset(home / "audio.db", events=4_000, users=400, items=200, hosts=60)
    values = {
        "AIRFLOW_ML_HOME": str(home),
        "AIRFLOW_ML_STORAGE": str(home / "storage"),
        "AIRFLOW_ML_REGISTRY": f"sqlite:///{home / 'registry.db'}",
        "AIRFLOW_ML_SOURCE_CONN_ID": "contract_audio",
        "AIRFLOW_CONN_CONTRACT_AUDIO": json.dumps({"conn_type": "sqlite", "host": str(home / "audio.db")}),
        "AIRFLOW_ML_MODEL_NAME": MODEL,
    }
    saved = {k: os.environ.get(k) for k in (*values, "AIRFLOW_ML_FEATURE_SPEC")}
    os.environ.update(values)
    os.environ.pop("AIRFLOW_ML_FEATURE_SPEC", None)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def pipeline(home):
    """The example DAG's five tasks, rendered from its trigger form and executed in order."""
    spec = importlib.util.spec_from_file_location("xgboost_dag_under_contract", DAGS / "xgboost_recommendation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    params = {**dag.params.dump(), **FAST}
    x: dict = {}
    for task_id in TASKS:
        task = dag.get_task(task_id)
        c = {"params": params, "run_id": "contract_run_1", "ti": FakeTI(x), "dag": dag}
        task.render_template_fields(c, jinja_env=dag.get_template_env())
        x[task_id] = task.execute(c)
    return dag, x


# -- the records -------------------------------------------------------------------------------


def test_the_documented_table_is_the_code(pipeline):
    assert documented_keys() == dict(RECORD_KEYS)
    from airflow_ml_provider.operators import evaluate, preprocess, publish, sample, train

    kinds = {cls.record_kind for mod in (sample, preprocess, train, evaluate, publish)
             for cls in vars(mod).values() if isinstance(cls, type) and getattr(cls, "record_kind", None)}
    assert kinds == set(RECORD_KEYS)  # every record kind belongs to an operator, and back


def test_every_task_returns_one_flat_record_with_exactly_the_documented_keys(pipeline):
    dag, x = pipeline
    doc = documented_keys()
    for task_id in TASKS:
        kind = dag.get_task(task_id).record_kind
        assert kind == task_id  # the example DAG names its tasks after their kind
        assert tuple(x[task_id]) == doc[kind], task_id
        assert_flat(task_id, x[task_id])
    # no record holds another task's record, or any part of one, as a value
    for task_id, record in x.items():
        assert not any(isinstance(v, dict) for v in record.values()), task_id


def test_records_chain_by_task_id(pipeline, home):
    _, x = pipeline
    s, p, t, e, pub = (x[k] for k in TASKS)
    assert p["raw_train_uri"] == s["train"] and p["rows_train"] <= s["rows_train"] + s["rows_valid"] + s["rows_test"]
    assert (t["train_uri"], t["valid_uri"], t["spec_hash"]) == (p["train"], p["valid"], p["spec_hash"])
    assert p["spec_hash"].startswith("sha256:")
    assert (e["model_uri"], e["data_uri"], e["spec_hash"]) == (t["uri"], p["test"], p["spec_hash"])
    assert e["gate_passed"] is True and e["gate_reasons"] == [] and 0.5 < e["auc"] < 1 and e["rmse"] is None
    assert json.loads(Path(e["gate_uri"]).read_text())["passed"] is True
    rec = ModelRegistry(os.environ["AIRFLOW_ML_REGISTRY"]).current(MODEL)
    assert (pub["name"], pub["version"], pub["uri"], pub["checksum"]) == (MODEL, 1, rec.bundle_uri, rec.checksum)
    bundle = load_bundle(pub["uri"])
    meta = bundle.metadata
    assert meta[SPEC_HASH_KEY] == p["spec_hash"] == bundle.spec_hash
    assert (meta["training_data_uri"], meta["feature_tables_uri"], meta["model_source_uri"]) == (
        s["train"], p["uri"], t["uri"])
    assert meta["best_iteration"] == t["best_iteration"] and meta["params"]["num_boost_round"] == 15
    assert meta["gate"]["passed"] is True and meta["evaluated"] is True
    # the latest-output pointers hold the same flat records
    latest = home / "storage" / "runs" / DAG_ID / "latest"
    for task_id in TASKS:
        assert json.loads((latest / f"{task_id}.json").read_text())["output"] == x[task_id]


def test_make_record_refuses_nesting_unknown_and_missing_keys():
    ok = make_record("publish", name="m", version=1, uri="/b", checksum="c", registry_id=1, evaluated=True)
    assert ok == {"name": "m", "version": 1, "uri": "/b", "checksum": "c", "registry_id": 1, "evaluated": True}
    values = dict(ok)
    with pytest.raises(RecordError, match=r"publish record: key 'uri': a task record is flat; a dict value"):
        make_record("publish", **{**values, "uri": {"train": "/x"}})
    with pytest.raises(RecordError, match=r"publish record: missing key\(s\) \['checksum'\]; unknown key\(s\) \['sample'\]"):
        make_record("publish", **{k: v for k, v in values.items() if k != "checksum"}, sample={})
    with pytest.raises(RecordError, match=rf"a list of {MAX_LIST_ITEMS + 1} items"):
        make_record("publish", **{**values, "name": list(range(MAX_LIST_ITEMS + 1))})
    with pytest.raises(RecordError, match=r"key 'name'\[0\]: dict value is not a scalar"):
        make_record("publish", **{**values, "name": [{"a": 1}]})
    assert make_record("publish", **{**values, "checksum": float("nan")})["checksum"] is None


# -- disabled upstreams and lineage ------------------------------------------------------------


def _ctx(dag, run_id: str, xcoms: dict) -> dict:
    return {"params": {}, "run_id": run_id, "ti": FakeTI(xcoms), "dag": dag}


def test_disabled_upstreams_fall_back_to_their_latest_flat_record(pipeline):
    from airflow_ml_provider.operators.evaluate import EvaluateOperator
    from airflow_ml_provider.operators.preprocess import PreprocessOperator

    dag, x = pipeline
    spec = DAGS / "specs" / "audio_recommendation.yaml"
    # sample disabled: preprocess reads the last sample record
    prep = PreprocessOperator(task_id="preprocess", spec=str(spec)).execute(_ctx(dag, "contract_run_2", {}))
    assert prep["raw_train_uri"] == x["sample"]["train"] and prep["uri"] != x["preprocess"]["uri"]
    assert prep["spec_hash"] == x["preprocess"]["spec_hash"]  # same sample, same spec: same fitted spec
    assert_flat("preprocess", prep)
    # preprocess and train disabled: evaluate judges the last model on the last feature tables
    ev = EvaluateOperator(task_id="evaluate", model_name=MODEL, champion=False).execute(
        _ctx(dag, "contract_run_3", {}))
    assert (ev["model_uri"], ev["spec_hash"]) == (x["train"]["uri"], x["preprocess"]["spec_hash"])
    assert ev["data_uri"] == prep["test"]  # the latest preprocess output, of the same fitted spec
    assert tuple(ev) == RECORD_KEYS["evaluate"]


def test_a_model_and_features_of_another_fitted_spec_are_refused(pipeline, tmp_path):
    from airflow_ml_provider.operators.evaluate import EvaluateOperator
    from airflow_ml_provider.operators.preprocess import PreprocessOperator
    from airflow_ml_provider.operators.publish import PublishModelOperator

    dag, x = pipeline
    other_spec = tmp_path / "other.yaml"
    text = (DAGS / "specs" / "audio_recommendation.yaml").read_text()
    assert "top_k: 20" in text
    other_spec.write_text(text.replace("top_k: 20", "top_k: 7", 1))
    # a new preprocess output (own storage: the DAG's latest pointers stay as they are)
    other = PreprocessOperator(task_id="preprocess", spec=str(other_spec), storage_root=str(tmp_path / "s"),
                               train_uri=x["sample"]["train"], test_uri=x["sample"]["test"]).execute(
        _ctx(dag, "contract_other", {}))
    assert other["spec_hash"] != x["preprocess"]["spec_hash"]
    # train disabled in this run: the last model, of the other spec, with these features
    message = (r"the model of task 'train' was trained on features of fitted spec sha256:[0-9a-f]+, but task "
               r"'preprocess' provides fitted spec sha256:[0-9a-f]+ .*disable 'preprocess' too, or enable 'train'")
    with pytest.raises(RecordError, match=message):
        EvaluateOperator(task_id="evaluate", model_name=MODEL, champion=False).execute(
            _ctx(dag, "contract_mixed", {"preprocess": other}))
    # publish without evaluation: the same check before anything is written
    with pytest.raises(RecordError, match=message):
        PublishModelOperator(task_id="publish", model_name="contract_mixed").execute(
            _ctx(dag, "contract_mixed", {"preprocess": other}))
    assert ModelRegistry(os.environ["AIRFLOW_ML_REGISTRY"]).list("contract_mixed") == []


# -- the bundle's spec hash, as the service reads it -------------------------------------------


def _copy_with_metadata(src: Path, dst: Path, change) -> str:
    """A copy of a bundle with ``change(metadata)`` applied and a consistent manifest; its checksum."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    change(meta)
    data = json.dumps(meta, sort_keys=True, indent=2).encode()
    (dst / "metadata.json").write_bytes(data)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["metadata.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["checksum"] = bundle_checksum({k: v["sha256"] for k, v in manifest["files"].items()})
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return manifest["checksum"]


def test_the_service_checks_the_spec_hash_under_the_documented_key_only(pipeline, tmp_path, caplog):
    from airflow_ml_provider.serving.manager import ModelLoadError, load_model

    _, x = pipeline
    rec = ModelRegistry(os.environ["AIRFLOW_ML_REGISTRY"]).current(MODEL)
    model = load_model(MODEL, rec, tmp_path)
    assert model.version == 1 and model.spec.content_hash == x["preprocess"]["spec_hash"]
    assert model.manifest[SPEC_HASH_KEY] == model.spec.content_hash

    src = Path(rec.bundle_uri)
    wrong = "sha256:" + "0" * 64
    checksum = _copy_with_metadata(src, tmp_path / "wrong", lambda m: m.update({SPEC_HASH_KEY: wrong}))
    with pytest.raises(ModelLoadError, match=r"version 2 .*content hash sha256:[0-9a-f]{64} does not match the one "
                                             r"the bundle's metadata.json records under 'spec_hash' \(sha256:0{64}\)"):
        load_model(MODEL, SimpleNamespace(bundle_uri=str(tmp_path / "wrong"), version=2, checksum=checksum), tmp_path)

    # the retired names are not read: a wrong hash there changes nothing (no spec_hash: not checked, warned)
    def retired(meta):
        meta.pop(SPEC_HASH_KEY)
        meta.update({"fitted_spec_hash": wrong, "spec_content_hash": wrong, "feature_spec_hash": wrong,
                     "fitted_spec": {"content_hash": wrong}})

    checksum = _copy_with_metadata(src, tmp_path / "retired", retired)
    with caplog.at_level("WARNING", logger="airflow_ml_provider.serving"):
        loaded = load_model(MODEL, SimpleNamespace(bundle_uri=str(tmp_path / "retired"), version=3,
                                                   checksum=checksum), tmp_path)
    assert loaded.version == 3
    assert "names no 'spec_hash': the fitted spec's content hash is not checked" in caplog.text


# -- the real Airflow ----------------------------------------------------------------------------


def _xcoms(db: Path, dag_id: str, run_id: str) -> dict[str, object]:
    con = sqlite3.connect(str(db))
    try:
        rows = con.execute("SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
                           (dag_id, run_id)).fetchall()
    finally:
        con.close()
    out = {}
    for task_id, value in rows:
        if isinstance(value, bytes):
            value = value.decode()
        out[task_id] = json.loads(value) if isinstance(value, str) else value
    return out


@pytest.mark.airflow
@pytest.mark.slow
def test_real_airflow_run_pushes_the_flat_records(run_dag, airflow_home, tmp_path):
    from airflow_ml_provider.serving.manager import load_model

    ml = tmp_path / "ml"
    load_audio_dataset(ml / "audio.db", events=4_000, users=400, items=200, hosts=60)
    env = {"AIRFLOW_ML_HOME": str(ml), "AIRFLOW_ML_STORAGE": "", "AIRFLOW_ML_REGISTRY": "",
           "AIRFLOW_ML_SOURCE_CONN_ID": "", "AIRFLOW_ML_MODEL_NAME": MODEL, "AIRFLOW_ML_FEATURE_SPEC": ""}
    res = run_dag(DAGS, DAG_ID, conf=FAST, env=env)
    assert res.returncode == 0, res.output[-6000:]
    assert res.states == dict.fromkeys(TASKS, "success"), res.output[-6000:]
    xcoms = _xcoms(airflow_home / "airflow.db", DAG_ID, res.run_id)
    assert set(xcoms) == set(TASKS)
    for task_id in TASKS:
        assert tuple(xcoms[task_id]) == RECORD_KEYS[task_id], task_id
        assert_flat(task_id, xcoms[task_id])
    assert xcoms["train"]["spec_hash"] == xcoms["preprocess"]["spec_hash"] == xcoms["evaluate"]["spec_hash"]

    # the service (same registry) loads what was published, checking the spec hash under spec_hash
    rec = ModelRegistry(f"sqlite:///{ml / 'registry.db'}").current(MODEL)
    assert (rec.bundle_uri, rec.version) == (xcoms["publish"]["uri"], xcoms["publish"]["version"])
    model = load_model(MODEL, rec, tmp_path)
    assert load_bundle(rec.bundle_uri).metadata[SPEC_HASH_KEY] == model.spec.content_hash \
        == xcoms["preprocess"]["spec_hash"]

    # sample disabled: no sample XCom in this run, preprocess chains through the latest sample record
    again = run_dag(DAGS, DAG_ID, conf={**FAST, "disabled_tasks": ["sample"]}, env=env)
    assert again.returncode == 0, again.output[-6000:]
    assert again.states["sample"] in ("success", "skipped") and again.states["evaluate"] == "success", \
        again.output[-6000:]
    second = _xcoms(airflow_home / "airflow.db", DAG_ID, again.run_id)
    assert "sample" not in second
    assert second["preprocess"]["raw_train_uri"] == xcoms["sample"]["train"]
    for task_id, record in second.items():
        assert tuple(record) == RECORD_KEYS[task_id], task_id
        assert_flat(task_id, record)
