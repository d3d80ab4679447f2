"""Every framework the pipeline trains is published, hot-swapped, rolled back and served.

For each of xgboost, tensorflow, linear, gbdt and word2vec: two small models are trained through the
real trainers, built into bundles (``ml.bundle``) and published with ``ml.registry.publish_model``
(file:// storage, SQLite registry); the service's manager and ASGI app serve version 1, swap to
version 2 after its publish (each answer names ``model_version``), then follow a registry rollback
back to version 1. Every answer equals the trainer's own predictor on the same rows (the scorers:
the fitted spec's transform of the raw rows; word2vec: the item vectors and nearest items).

``test_embedding_service_over_http`` runs the real ``airflow-ml serve`` process for the embedding
model: ``:predict``, ``:similar``, a publish and a rollback over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from airflow_ml_provider.ml.registry import ModelRegistry, publish_model
from airflow_ml_provider.serving import ModelManager, create_app
from tests.test_serving_support import SPEC_YAML, call, make_frame, predict_body, row_dicts

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent

#: two builds per framework (different params -> different answers), kept small
PARAMS = {
    "xgboost": [{"num_boost_round": 8, "max_depth": 3, "seed": 0, "nthread": 1, "log_every": 1000},
                {"num_boost_round": 15, "max_depth": 4, "seed": 1, "nthread": 1, "log_every": 1000}],
    "linear": [{"C": 0.05, "seed": 0}, {"C": 5.0, "seed": 1}],
    "gbdt": [{"max_iter": 10, "max_leaf_nodes": 8, "seed": 0}, {"max_iter": 25, "max_leaf_nodes": 15, "seed": 1}],
    "tensorflow": [{"hidden_units": "8", "epochs": 1, "batch_size": 256, "seed": 1},
                   {"hidden_units": "8,4", "epochs": 2, "batch_size": 256, "seed": 2}],
}


@pytest.fixture(scope="module")
def data():
    """Raw rows, the fitted spec and the transformed matrices (shared by every scorer)."""
    from airflow_ml_provider.ml.features import FeatureSpec, fit

    frame = make_frame(900, seed=3)
    train_df, valid_df = frame.iloc[:700].reset_index(drop=True), frame.iloc[700:].reset_index(drop=True)
    fitted = fit(FeatureSpec.from_yaml(SPEC_YAML), train_df)
    return {
        "fitted": fitted,
        "Xt": fitted.transform(train_df), "yt": train_df["listened_30s"].to_numpy(np.float32),
        "Xv": fitted.transform(valid_df), "yv": valid_df["listened_30s"].to_numpy(np.float32),
        "rows": row_dicts(valid_df.iloc[:20]), "Xq": fitted.transform(valid_df.iloc[:20]),
    }


@pytest.fixture
def env(tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    return reg, (tmp_path / "store").as_uri()


def _train_scorer(framework: str, params: dict, data: dict, workdir: Path):
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.feature_table import Dataset
    from airflow_ml_provider.ml.trainers import get_trainer

    names = list(data["fitted"].feature_names)
    result = get_trainer(framework).train(
        Dataset(X=data["Xt"], y=data["yt"], feature_names=names),
        Dataset(X=data["Xv"], y=data["yv"], feature_names=names),
        params, workdir / "model", log=lambda *_: None,
    )
    build_bundle(workdir / "bundle", model_dir=workdir / "model", fitted_spec=data["fitted"], framework=framework,
                 metrics={"framework": framework})
    return workdir / "bundle", np.asarray(result.predictor.predict(data["Xq"]))


def _equal(served, expected: np.ndarray) -> bool:
    """JSON floats are the shortest round-trip text: parsed back in the predictor's dtype, bit-equal."""
    got = np.asarray(served, dtype=np.float64).astype(expected.dtype)
    return got.shape == expected.shape and np.array_equal(got, expected)


def _serve(reg, name: str, tmp_path: Path):
    manager = ModelManager(reg, [name], poll_seconds=0.2, keep_versions=3, cache_dir=tmp_path / "cache")
    return create_app(None, [name], manager=manager, manage_lifecycle=False), manager


@pytest.mark.parametrize("framework", ["xgboost", "linear", "gbdt", "tensorflow"])
def test_scorer_bundle_publish_swap_rollback(framework, data, env, tmp_path):
    reg, store = env
    name = f"fw_{framework}"
    builds = [_train_scorer(framework, p, data, tmp_path / f"v{i + 1}") for i, p in enumerate(PARAMS[framework])]
    assert not np.array_equal(builds[0][1], builds[1][1])  # the two versions answer differently
    url = f"/v1/models/{name}:predict"
    body = predict_body(data["rows"])

    r1 = publish_model(reg, str(builds[0][0]), store, name, dag_id="d", run_id="r1")
    assert (r1.version, r1.framework) == (1, framework)
    assert r1.spec_uri and r1.spec_uri.endswith("fitted_spec.json")
    app, manager = _serve(reg, name, tmp_path)
    try:
        assert manager.poll_once() == {name: 1}
        status, _, answer = call(app, "POST", url, body)
        assert status == 200, answer
        assert answer["model_version"] == 1 and _equal(answer["predictions"], builds[0][1])

        r2 = publish_model(reg, str(builds[1][0]), store, name, dag_id="d", run_id="r2")
        assert r2.version == 2
        assert manager.poll_once() == {name: 2}  # hot swap after the publish
        status, _, answer = call(app, "POST", url, body)
        assert status == 200 and answer["model_version"] == 2 and _equal(answer["predictions"], builds[1][1])
        status, _, meta = call(app, "GET", f"/v1/models/{name}/metadata")
        assert status == 200 and meta["metadata"]["framework"] == framework

        reg.rollback(name, 1, by="test")
        assert manager.poll_once() == {name: 1}  # version 1 is still loaded: no I/O
        status, _, answer = call(app, "POST", url, body)
        assert status == 200 and answer["model_version"] == 1 and _equal(answer["predictions"], builds[0][1])
        # a scorer has no nearest items
        status, _, err = call(app, "POST", f"/v1/models/{name}:similar", json.dumps({"item": "x"}).encode())
        assert status == 400 and "not an embedding model" in err["error"]
    finally:
        manager.close()


# --------------------------------------------------------------------------------------------------
# word2vec: an embedding bundle
# --------------------------------------------------------------------------------------------------


def _histories(n_users: int, seed: int) -> list[list[str]]:
    """Play histories over 6 categories x 8 items; a user mostly plays one category."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        fav = rng.integers(6)
        cats = np.where(rng.random(12) < 0.85, fav, rng.integers(6, size=12))
        out.append([f"c{c}_i{rng.integers(8)}" for c in cats])
    return out


def _train_embedding(seed: int, dim: int, workdir: Path):
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.feature_table import Dataset
    from airflow_ml_provider.ml.trainers import get_trainer

    result = get_trainer("word2vec").train(
        Dataset.from_sentences(_histories(300, seed)), None,
        {"vector_size": dim, "window": 3, "epochs": 5, "seed": seed, "sample": 0.0}, workdir / "model",
        log=lambda *_: None,
    )
    build_bundle(workdir / "bundle", model_dir=workdir / "model", framework="word2vec", kind="embedding",
                 metrics={"hit_rate": 0.5})
    return workdir / "bundle", result.predictor


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    return [_train_embedding(seed, dim, root / f"v{i + 1}") for i, (seed, dim) in enumerate([(1, 8), (2, 12)])]


def _post(app, path: str, doc) -> tuple[int, dict]:
    status, _, body = call(app, "POST", path, json.dumps(doc).encode())
    return status, body


def test_word2vec_bundle_publish_swap_rollback(embeddings, env, tmp_path):
    from airflow_ml_provider.ml.bundle import load_bundle

    reg, store = env
    name = "fw_word2vec"
    items = ["c0_i0", "c3_i5", "c5_i7"]
    (b1, p1), (b2, p2) = embeddings
    r1 = publish_model(reg, str(b1), store, name, dag_id="d", run_id="r1")
    assert (r1.version, r1.framework) == (1, "word2vec")
    assert r1.spec_uri is None  # the registry row names no fitted spec that does not exist
    assert load_bundle(b1).kind == "embedding" and load_bundle(b1).fitted_spec_path is None
    app, manager = _serve(reg, name, tmp_path)
    try:
        assert manager.poll_once() == {name: 1}
        status, answer = _post(app, f"/v1/models/{name}:predict", {"instances": items})
        assert status == 200, answer
        assert answer["model_version"] == 1 and _equal(answer["predictions"], p1.vectors(items))
        status, sim = _post(app, f"/v1/models/{name}:similar", {"item": "c0_i0", "k": 5})
        assert status == 200 and sim["model_version"] == 1
        assert [(s["item"], np.float32(s["score"])) for s in sim["similar"]] == \
               [(i, np.float32(s)) for i, s in p1.similar("c0_i0", topn=5)]
        status, meta = call(app, "GET", f"/v1/models/{name}/metadata")[::2]
        assert status == 200 and meta["metadata"]["dim"] == 8 and meta["metadata"]["n_items"] == len(p1)

        publish_model(reg, str(b2), store, name, dag_id="d", run_id="r2")
        assert manager.poll_once() == {name: 2}
        status, answer = _post(app, f"/v1/models/{name}:predict", {"instances": items})
        assert status == 200 and answer["model_version"] == 2 and _equal(answer["predictions"], p2.vectors(items))
        assert len(answer["predictions"][0]) == 12
        # pinned to version 1 while 2 serves
        status, answer = _post(app, f"/v1/models/{name}/versions/1:predict", {"instances": items})
        assert status == 200 and answer["model_version"] == 1 and _equal(answer["predictions"], p1.vectors(items))

        reg.rollback(name, 1, by="test")
        assert manager.poll_once() == {name: 1}
        status, answer = _post(app, f"/v1/models/{name}:predict", {"instances": items})
        assert status == 200 and answer["model_version"] == 1 and _equal(answer["predictions"], p1.vectors(items))
    finally:
        manager.close()


@pytest.fixture
def w2v_app(embeddings, env, tmp_path):
    reg, store = env
    publish_model(reg, str(embeddings[0][0]), store, "emb", dag_id="d", run_id="r1")
    app, manager = _serve(reg, "emb", tmp_path)
    manager.poll_once()
    yield app, embeddings[0][1]
    manager.close()


def test_similar_is_exact_with_exclusions_and_vectors(w2v_app):
    app, p = w2v_app
    url = "/v1/models/emb:similar"
    unit = p.vectors_ / np.linalg.norm(p.vectors_, axis=1, keepdims=True)
    # brute force: every cosine, full sort
    q = unit[p.index["c2_i3"]]
    order = [p.items[i] for i in np.argsort(-(unit @ q), kind="stable") if p.items[i] != "c2_i3"]
    status, sim = _post(app, url, {"item": "c2_i3", "k": 10})
    assert status == 200 and [s["item"] for s in sim["similar"]] == order[:10]
    scores = [s["score"] for s in sim["similar"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    # exclusions (unknown ids in "exclude" are ignored)
    status, sim = _post(app, url, {"item": "c2_i3", "k": 10, "exclude": order[:3] + ["nope"]})
    assert status == 200 and [s["item"] for s in sim["similar"]] == order[3:13]
    # by vector: the query item itself is included then (nothing excludes it)
    status, sim = _post(app, url, {"vector": p.vectors_[p.index["c2_i3"]].tolist(), "k": 3})
    assert status == 200 and sim["similar"][0]["item"] == "c2_i3" and abs(sim["similar"][0]["score"] - 1) < 1e-5
    # k beyond the catalogue: every other item once
    status, sim = _post(app, url, {"item": "c2_i3", "k": 1000})
    assert status == 200 and len(sim["similar"]) == len(p) - 1


def test_similar_on_a_big_catalogue_runs_off_the_event_loop_with_the_same_answer(w2v_app, monkeypatch):
    """Over INLINE_MACS multiply-adds a query runs in a worker thread; the answer does not change."""
    import threading

    from airflow_ml_provider.serving import embeddings

    app, _ = w2v_app
    doc = {"item": "c4_i4", "k": 7, "exclude": ["c4_i5"]}
    status, inline = _post(app, "/v1/models/emb:similar", doc)
    threads = []
    real = embeddings.similar_items
    monkeypatch.setattr(embeddings, "similar_items",
                        lambda *a: (threads.append(threading.current_thread().name), real(*a))[1])
    monkeypatch.setattr(embeddings, "INLINE_MACS", 0)
    status2, offloaded = _post(app, "/v1/models/emb:similar", doc)
    assert status == status2 == 200 and offloaded == inline
    assert threads and threads[0] != threading.main_thread().name


@pytest.mark.parametrize(("path", "doc", "message"), [
    (":predict", {"instances": ["c0_i0", "no_such_item"]}, "instance 1: unknown item 'no_such_item'"),
    (":predict", {"instances": [{"a": 1}]}, "instance 0 must be an item id (a string), got a JSON object"),
    (":predict", {"instances": []}, '"instances" is empty'),
    (":predict", {"instances": "c0_i0"}, '"instances" must be a list of item ids'),
    (":predict", {"items": ["c0_i0"]}, "unknown key 'items'"),
    (":similar", {"item": "ghost"}, "\"item\": unknown item 'ghost'"),
    (":similar", {"item": "c0_i0", "vector": [1.0] * 8}, 'exactly one of "item" and "vector"'),
    (":similar", {}, 'exactly one of "item" and "vector"'),
    (":similar", {"item": "c0_i0", "k": 0}, '"k" must be an integer from 1 to 1000'),
    (":similar", {"item": "c0_i0", "k": True}, '"k" must be an integer'),
    (":similar", {"vector": [1.0] * 7}, "\"vector\" has 7 numbers; the model's vectors have 8"),
    (":similar", {"vector": [0.0] * 8}, "all zeros"),
    (":similar", {"vector": [1e300] * 8}, "beyond the float32 range"),
    (":similar", {"vector": ["a"] * 8}, '"vector"[0] must be a number'),
    (":similar", {"item": "c0_i0", "exclude": "c0_i1"}, '"exclude" must be a list'),
    (":similar", {"item": "c0_i0", "top": 3}, "unknown key 'top'"),
    (":similar", [1, 2], "must be a JSON object"),
])
def test_embedding_bad_requests_are_400_naming_the_problem(w2v_app, path, doc, message):
    app, _ = w2v_app
    status, body = _post(app, f"/v1/models/emb{path}", doc)
    assert status == 400 and message in body["error"], body
    status, _, body = call(app, "POST", f"/v1/models/emb{path}", b"{not json")
    assert status == 400 and "malformed JSON" in body["error"]
    status, _, body = call(app, "GET", f"/v1/models/emb{path}")
    assert status == 405


def test_embedding_bundle_is_checked_when_built(tmp_path):
    from airflow_ml_provider.ml.bundle import BundleError, build_bundle

    model = tmp_path / "model"
    model.mkdir()
    np.save(model / "vectors.npy", np.ones((3, 4), dtype=np.float64))
    (model / "vocabulary.json").write_text(json.dumps({"items": ["a", "b", "c"]}))
    with pytest.raises(BundleError, match=r"vectors.npy: expected a non-empty float32 \(n_items, dim\) array"):
        build_bundle(tmp_path / "b1", model_dir=model, framework="word2vec", kind="embedding")
    np.save(model / "vectors.npy", np.ones((3, 4), dtype=np.float32))
    (model / "vocabulary.json").write_text(json.dumps({"items": ["a", "b"]}))
    with pytest.raises(BundleError, match="vocabulary.json: 2 items, but vectors.npy has 3 rows"):
        build_bundle(tmp_path / "b2", model_dir=model, framework="word2vec", kind="embedding")
    with pytest.raises(BundleError, match="a model bundle needs its fitted spec"):
        build_bundle(tmp_path / "b3", model_dir=model, framework="xgboost")
    with pytest.raises(BundleError, match="unknown bundle kind 'index'"):
        build_bundle(tmp_path / "b4", model_dir=model, framework="word2vec", kind="index")
    assert not any((tmp_path / f"b{i}").exists() for i in range(1, 5))


# --------------------------------------------------------------------------------------------------
# The real process
# --------------------------------------------------------------------------------------------------


def test_embedding_service_over_http(embeddings, env, tmp_path):
    """`airflow-ml serve` (uvicorn, loopback port): :predict and :similar, then a publish and a rollback."""
    import httpx

    from tests.test_serving_live import _free_port

    reg, store = env
    (b1, p1), (b2, p2) = embeddings
    publish_model(reg, str(b1), store, "emb_live", dag_id="d", run_id="r1")
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_ml_provider.cli", "serve", "--registry", f"sqlite:///{tmp_path / 'registry.db'}", "--models", "emb_live",
             "--port", str(port), "--poll-seconds", "0.3", "--cache-dir", str(tmp_path / "cache")],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}/v1/models/emb_live"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)

        def wait_version(v: int) -> dict:
            end = time.monotonic() + 30
            while True:
                answer = httpx.post(base + ":predict", json={"instances": ["c1_i1"]}, timeout=5).json()
                if answer.get("model_version") == v or time.monotonic() > end:
                    return answer
                time.sleep(0.1)

        answer = httpx.post(base + ":predict", json={"instances": ["c1_i1", "c4_i2"]}, timeout=5).json()
        assert answer["model_version"] == 1 and _equal(answer["predictions"], p1.vectors(["c1_i1", "c4_i2"]))
        sim = httpx.post(base + ":similar", json={"item": "c1_i1", "k": 4, "exclude": ["c1_i2"]}, timeout=5).json()
        expected = [i for i, _ in p1.similar_to_vector(p1.vector("c1_i1"), topn=4, exclude=["c1_i1", "c1_i2"])]
        assert [s["item"] for s in sim["similar"]] == expected
        bad = httpx.post(base + ":predict", json={"instances": ["nope"]}, timeout=5)
        assert bad.status_code == 400 and "unknown item 'nope'" in bad.json()["error"]

        publish_model(reg, str(b2), store, "emb_live", dag_id="d", run_id="r2")
        answer = wait_version(2)
        assert answer["model_version"] == 2 and _equal(answer["predictions"], p2.vectors(["c1_i1"]))
        reg.rollback("emb_live", 1, by="test")
        answer = wait_version(1)
        assert answer["model_version"] == 1 and _equal(answer["predictions"], p1.vectors(["c1_i1"]))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("n", [1, 7, 300, 5_000, 100_003])
def test_top_k_prefilter_is_exact_with_ties(n):
    """The block-maximum prefilter of the exact top-k gives what a full sort gives (ties by row)."""
    from airflow_ml_provider.ml.trainers.word2vec import _top_rows

    rng = np.random.default_rng(n)
    for trial in range(20):
        sims = rng.standard_normal(n).astype(np.float32)
        if trial % 2:  # coarse values: many ties, also across the k-th place
            sims = np.round(sims * 3) / 3
        if trial == 19:
            sims[:] = 0  # all equal (a zero query)
        rows = np.arange(n)
        expected = rows[np.lexsort((rows, -sims))]
        for k in (1, 5, 11, 100, n):
            assert np.array_equal(_top_rows(sims, k), expected[:k]), (n, trial, k)
