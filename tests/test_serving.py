"""The online model service in-process: API, validation, auth, metrics, hot swap, rollback, parity.

The models are real (feature library + xgboost trainer + bundle + SQLite registry); requests go
through the real ASGI app (a direct ASGI driver, so any method, path and raw body can be sent).
"""

from __future__ import annotations

import json
import shutil
import struct
from typing import ClassVar

import numpy as np
import pytest

from airflow_ml_provider.ml.features import NumericTransformer, Option
from airflow_ml_provider.ml.registry import ModelRegistry
from airflow_ml_provider.serving import ModelManager, create_app
from tests.test_serving_support import (
    EXAMPLE_MODEL,
    MODEL,
    SPEC_YAML,
    build_example_model,
    build_model,
    call,
    predict_body,
    publish,
    row_dicts,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three different builds of the model (different seeds -> different scores)."""
    root = tmp_path_factory.mktemp("serving-models")
    return [build_model(root / f"m{i}", seed=i, rounds=10 + 5 * i) for i in range(3)]


@pytest.fixture
def env(tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    return reg, tmp_path / "store"


def _app(reg, tmp_path, **kw):
    manager = ModelManager(reg, [MODEL], poll_seconds=0.2, keep_versions=kw.pop("keep_versions", 3),
                           cache_dir=tmp_path / "cache")
    return create_app(None, [MODEL], manager=manager, manage_lifecycle=False, **kw), manager


def _f32_bits(values) -> list[int]:
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in values]


# ---------------------------------------------------------------------------------------------------
# Parity: the service's predictions equal the training run's, bit for bit (xgboost)
# ---------------------------------------------------------------------------------------------------


def test_parity_with_training_run_bit_identical(env, tmp_path):
    """The example model (the example DAG's feature spec on the audio data set): the service's scores
    for the raw validation rows equal the training run's offline scores, bit for bit."""
    reg, store = env
    built = build_example_model(tmp_path / "example")
    publish(reg, built.bundle_dir, store, name=EXAMPLE_MODEL)
    manager = ModelManager(reg, [EXAMPLE_MODEL], poll_seconds=1, cache_dir=tmp_path / "cache")
    app = create_app(None, [EXAMPLE_MODEL], manager=manager, manage_lifecycle=False)
    assert manager.poll_once() == {EXAMPLE_MODEL: 1}
    url = f"/v1/models/{EXAMPLE_MODEL}:predict"
    rows = row_dicts(built.valid_frame)
    assert len(rows) == len(built.offline) >= 1000
    assert any(r["user_age"] is None for r in rows)  # missing values travel as JSON null
    # The whole validation split in batches (transform_rows) ...
    served = []
    for i in range(0, len(rows), 100):
        status, _, body = call(app, "POST", url, predict_body(rows[i:i + 100]))
        assert status == 200, body
        assert body["model_version"] == 1
        served.extend(body["predictions"])
    # ... JSON floats parsed back to float32 carry the training run's exact bits.
    assert _f32_bits(served) == _f32_bits(built.offline.astype(np.float32))
    # ... and one row per request (transform_row) gives the same bits.
    singles = []
    for row in rows[:100]:
        status, _, body = call(app, "POST", url, predict_body([row]))
        assert status == 200, body
        singles.append(body["predictions"][0])
    assert _f32_bits(singles) == _f32_bits(built.offline[:100])
    # The columnar TF-Serving form too.
    cols = {k: [r[k] for r in rows[:5]] for k in rows[0]}
    status, _, body = call(app, "POST", url, json.dumps({"inputs": cols}).encode())
    assert status == 200 and _f32_bits(body["predictions"]) == _f32_bits(built.offline[:5])
    manager.close()


# ---------------------------------------------------------------------------------------------------
# Hot swap, pinning, failures, rollback, status, metrics
# ---------------------------------------------------------------------------------------------------


def test_hot_swap_pin_corrupt_and_rollback(models, env, tmp_path):
    reg, store = env
    rows = row_dicts(models[0].valid_frame)[:3]
    frame = models[0].valid_frame.iloc[:3]
    expected = {v: m.predictor.predict(m.fitted.transform(frame)) for v, m in zip((1, 2), models)}
    publish(reg, models[0].bundle_dir, store)
    app, manager = _app(reg, tmp_path, keep_versions=3)

    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))
    assert status == 503 and "no version loaded" in body["error"]
    assert call(app, "GET", "/readyz")[0] == 503

    manager.poll_once()
    assert call(app, "GET", "/readyz")[0] == 200
    old = manager.get(MODEL)  # a request in flight holds this reference
    publish(reg, models[1].bundle_dir, store)
    manager.poll_once()
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))
    assert status == 200 and body["model_version"] == 2
    assert _f32_bits(body["predictions"]) == _f32_bits(expected[2])
    # The in-flight reference still computes with version 1.
    assert old.version == 1 and _f32_bits(old.predict(rows)) == _f32_bits(expected[1])
    # Pinned versions.
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}/versions/1:predict", predict_body(rows))
    assert status == 200 and body["model_version"] == 1
    assert _f32_bits(body["predictions"]) == _f32_bits(expected[1])
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}/versions/7:predict", predict_body(rows))
    assert status == 404 and "version 7" in body["error"] and "1, 2" in body["error"]

    # A corrupt bundle: never served, old version keeps serving, error in status + metrics.
    bad = publish(reg, models[2].bundle_dir, store, corrupt=True)
    assert bad.version == 3
    manager.poll_once()
    manager.poll_once()  # retried only after the back-off: one failure counted
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))
    assert status == 200 and body["model_version"] == 2
    status, _, body = call(app, "GET", f"/v1/models/{MODEL}")
    assert status == 200
    by_version = {e["version"]: e for e in body["model_version_status"]}
    assert by_version["3"]["state"] == "END" and "checksum" in by_version["3"]["status"]["error_message"]
    assert by_version["2"]["load_seconds"] > 0
    assert by_version["2"] == {"version": "2", "state": "AVAILABLE", "current": True,
                               "status": {"error_code": "OK", "error_message": ""},
                               "load_seconds": by_version["2"]["load_seconds"]}
    assert by_version["1"]["state"] == "AVAILABLE" and by_version["1"]["current"] is False
    _, _, metrics = call(app, "GET", "/metrics")
    text = metrics.decode()
    assert f'airflow_ml_serving_load_failures_total{{model="{MODEL}"}} 1.0' in text
    assert f'airflow_ml_serving_loaded_version{{model="{MODEL}"}} 2.0' in text
    assert f'airflow_ml_serving_swaps_total{{model="{MODEL}"}} 2.0' in text
    assert f'airflow_ml_serving_requests_total{{code="200",model="{MODEL}"}}' in text
    assert f'airflow_ml_serving_request_latency_seconds_count{{model="{MODEL}"}}' in text

    # Rollback to version 1 (cached): served after one poll, no load.
    reg.rollback(MODEL, 1)
    manager.poll_once()
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))
    assert body["model_version"] == 1 and _f32_bits(body["predictions"]) == _f32_bits(expected[1])
    assert f'airflow_ml_serving_swaps_total{{model="{MODEL}"}} 3.0' in call(app, "GET", "/metrics")[2].decode()
    # A later good publish supersedes the rollback.
    publish(reg, models[2].bundle_dir, store)
    manager.poll_once()
    assert call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))[2]["model_version"] == 4
    manager.close()


def test_rollback_to_evicted_version_reloads(models, env, tmp_path):
    reg, store = env
    app, manager = _app(reg, tmp_path, keep_versions=1)
    for m in models:
        publish(reg, m.bundle_dir, store)
        manager.poll_once()
    assert sorted(manager._versions[MODEL]) == [3]  # LRU of one: only the served version stays
    reg.rollback(MODEL, 1)
    manager.poll_once()
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict",
                           predict_body(row_dicts(models[0].valid_frame)[:2]))
    assert status == 200 and body["model_version"] == 1
    assert _f32_bits(body["predictions"]) == _f32_bits(models[0].offline[:2])
    manager.close()


def test_registry_down_keeps_serving(models, env, tmp_path):
    reg, store = env
    publish(reg, models[0].bundle_dir, store)
    app, manager = _app(reg, tmp_path)
    manager.poll_once()
    # The registry file disappears (database gone): polls fail, the service keeps answering.
    manager.registry = ModelRegistry(f"sqlite:///{tmp_path / 'nowhere' / 'missing.db'}")
    manager.poll_once()
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict",
                           predict_body(row_dicts(models[0].valid_frame)[:1]))
    assert status == 200 and body["model_version"] == 1
    text = call(app, "GET", "/metrics")[2].decode()
    assert "airflow_ml_serving_registry_poll_failures_total 1.0" in text
    manager.close()


def test_missing_bundle_keeps_old_version(models, env, tmp_path):
    reg, store = env
    publish(reg, models[0].bundle_dir, store)
    _, manager = _app(reg, tmp_path)
    manager.poll_once()
    rec = publish(reg, models[1].bundle_dir, store)
    shutil.rmtree(rec.bundle_uri.replace("file://", ""))
    manager.poll_once()
    assert manager.get(MODEL).version == 1
    entry = next(e for e in manager.status(MODEL) if e["version"] == "2")
    assert entry["state"] == "END" and "version 2" in entry["status"]["error_message"]
    manager.close()


def test_bundle_whose_model_and_spec_disagree_is_refused(models, env, tmp_path):
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.features import FeatureSpec, fit
    from tests.test_serving_support import make_frame

    reg, store = env
    other = fit(FeatureSpec.from_yaml(SPEC_YAML.replace("top_k: 6", "top_k: 3")), make_frame(300, 5))
    assert other.feature_names != models[0].fitted.feature_names
    build_bundle(tmp_path / "mixed", model_dir=models[0].bundle_dir / "model", fitted_spec=other,
                 framework="xgboost")
    publish(reg, models[0].bundle_dir, store)
    _, manager = _app(reg, tmp_path)
    manager.poll_once()
    publish(reg, tmp_path / "mixed", store)
    assert manager.poll_once() == {MODEL: 1}
    entry = next(e for e in manager.status(MODEL) if e["version"] == "2")
    assert "trained on other features than the bundle's fitted spec" in entry["status"]["error_message"]
    manager.close()


@pytest.mark.hdfs
def test_serves_bundles_from_hdfs(models, env, tmp_path, hdfs_root):
    """Bundles on the real HDFS (WebHDFS): fetched, verified, served; a damaged copy is refused."""
    reg, _ = env
    publish(reg, models[0].bundle_dir, hdfs_root)
    app, manager = _app(reg, tmp_path)
    assert manager.poll_once() == {MODEL: 1}
    assert manager.get(MODEL).uri.startswith("webhdfs://")
    rows = row_dicts(models[0].valid_frame)[:20]
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))
    assert status == 200 and _f32_bits(body["predictions"]) == _f32_bits(models[0].offline[:20])
    publish(reg, models[1].bundle_dir, hdfs_root, corrupt=True)
    assert manager.poll_once() == {MODEL: 1}
    entry = next(e for e in manager.status(MODEL) if e["version"] == "2")
    assert entry["state"] == "END" and "checksum mismatch" in entry["status"]["error_message"]
    manager.close()


class Shift(NumericTransformer):
    """A custom transformer (referenced from the spec by dotted path)."""

    name = "serving_test_shift"
    version = 1
    options: ClassVar[dict] = {"by": Option("number", default=1.0)}

    def transform_batch(self, x):
        return x + self.opts["by"]

    def transform_value(self, x):
        return x + self.opts["by"]


def test_custom_transformer_changes_only_through_a_new_bundle(env, tmp_path, monkeypatch):
    reg, store = env
    spec = SPEC_YAML.replace("  - name: hour\n    dtype: numeric\n",
                             '  - name: hour\n    dtype: numeric\n    transforms: ["tests.test_serving:Shift": {by: 2}]\n')
    assert "Shift" in spec
    a = build_model(tmp_path / "a", seed=0, rounds=5, n=600, spec_yaml=spec)
    publish(reg, a.bundle_dir, store)
    app, manager = _app(reg, tmp_path, keep_versions=1)
    manager.poll_once()
    rows = row_dicts(a.valid_frame)[:3]
    before = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))[2]
    assert before["model_version"] == 1 and _f32_bits(before["predictions"]) == _f32_bits(a.offline[:3])

    # The transformer's code changes in place (a new version installed): nothing changes silently.
    monkeypatch.setattr(Shift, "version", 2)
    manager.poll_once()
    assert call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))[2] == before
    # It reaches the service inside a new bundle fitted with it.
    b = build_model(tmp_path / "b", seed=0, rounds=5, n=600, spec_yaml=spec)
    publish(reg, b.bundle_dir, store)
    manager.poll_once()
    assert call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))[2]["model_version"] == 2
    # An old bundle whose recorded transformer version is not the installed one is refused on load
    # (version 1 was evicted: keep_versions=1), and version 2 keeps serving.
    reg.rollback(MODEL, 1)
    manager.poll_once()
    assert manager.get(MODEL).version == 2
    entry = next(e for e in manager.status(MODEL) if e["version"] == "1")
    assert entry["state"] == "END"
    assert "tests.test_serving:Shift' version 1 was used to fit this spec, but version 2 is installed" in \
        entry["status"]["error_message"]
    manager.close()


# ---------------------------------------------------------------------------------------------------
# Bad input: 4xx with a message, never 5xx
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served(models, env, tmp_path):
    reg, store = env
    publish(reg, models[0].bundle_dir, store)
    app, manager = _app(reg, tmp_path, max_body_bytes=4096)
    manager.poll_once()
    yield app, row_dicts(models[0].valid_frame)[:5]
    manager.close()


def test_bad_input_gets_4xx_naming_the_problem(served):
    app, rows = served
    url = f"/v1/models/{MODEL}:predict"

    def err(body, **kw):
        status, _, parsed = call(app, "POST", kw.pop("path", url), body, **kw)
        assert 400 <= status < 500, (status, parsed)
        assert isinstance(parsed, dict) and parsed["error"], parsed
        return status, parsed["error"]

    assert err(b'{"instances": [')[1].startswith("malformed JSON")
    assert err(b"\xff\xfe")[1].startswith("malformed JSON")
    assert "malformed JSON" in err(b'{"instances": [{"age": NaN}]}')[1]
    assert "empty request body" in err(b"")[1]
    assert "JSON object" in err(b"[1, 2]")[1]
    assert 'missing "instances"' in err(b'{"signature_name": "x"}')[1]
    assert "unknown key 'instance'" in err(b'{"instance": []}')[1]
    assert "is empty" in err(b'{"instances": []}')[1]
    assert "instance 1 must be an object" in err(predict_body([rows[0], 3]))[1]
    assert "list of objects" in err(b'{"instances": {"age": 3}}')[1]

    # Missing feature with on_missing: error -> 400 naming the feature and the instance.
    no_vip = [dict(rows[0]), {k: v for k, v in rows[1].items() if k != "is_vip"}]
    status, msg = err(predict_body(no_vip))
    assert status == 400 and "instance 1" in msg and "is_vip" in msg
    # Missing feature with a default: served.
    no_age = {k: v for k, v in rows[0].items() if k != "age"}
    assert call(app, "POST", url, predict_body([no_age]))[0] == 200
    # Wrong type.
    status, msg = err(predict_body([{**rows[0], "plays_7d": "lots"}]))
    assert status == 400 and "instance 0" in msg and "plays_7d" in msg
    status, msg = err(predict_body([{**rows[0], "hour": [1, 2]}]))
    assert "hour" in msg
    # Too large: by Content-Length before reading, and by counting a streamed body.
    big = predict_body([rows[0]] * 200)
    assert len(big) > 4096
    status, hdrs, parsed = call(app, "POST", url, big)
    assert status == 413 and "4096" in parsed["error"] and hdrs["x-test-chunks-read"] == "0"
    chunks = [big[i:i + 1000] for i in range(0, len(big), 1000)]
    status, hdrs, parsed = call(app, "POST", url, chunks)
    assert status == 413 and "4096" in parsed["error"] and hdrs["x-test-chunks-read"] == "5"
    assert err(b"{}", headers={"content-length": "abc"})[0] == 400
    # Unknown model, version, route, method.
    assert "unknown model 'nope'" in err(predict_body(rows), path="/v1/models/nope:predict")[1]
    assert err(predict_body(rows), path=f"/v1/models/{MODEL}/versions/x:predict")[0] == 404
    assert err(predict_body(rows), path=f"/v1/models/{MODEL}:classify")[0] == 404
    assert err(b"", path="/v2/whatever")[0] == 404
    status, hdrs, _ = call(app, "GET", url)
    assert status == 405 and hdrs["allow"] == "POST"
    # Still serving.
    assert call(app, "POST", url, predict_body(rows))[0] == 200
    assert call(app, "GET", "/healthz")[0] == 200
    text = call(app, "GET", "/metrics")[2].decode()
    assert 'airflow_ml_serving_requests_total{code="404",model="_unknown"} 1.0' in text
    assert f'airflow_ml_serving_requests_total{{code="413",model="{MODEL}"}} 2.0' in text


def test_metadata_endpoint(served):
    app, _ = served
    status, _, body = call(app, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "version": "1"}
    assert set(body["metadata"]["input_columns"]) == {"age", "plays_7d", "avg_listen_sec", "hour", "is_vip",
                                                      "city", "device"}
    assert body["metadata"]["framework"] == "xgboost" and body["metadata"]["spec_hash"]


def test_bearer_token(models, env, tmp_path):
    reg, store = env
    publish(reg, models[0].bundle_dir, store)
    app, manager = _app(reg, tmp_path, token="s3cret")
    manager.poll_once()
    url = f"/v1/models/{MODEL}:predict"
    body = predict_body(row_dicts(models[0].valid_frame)[:1])
    status, hdrs, parsed = call(app, "POST", url, body)
    assert status == 401 and "missing bearer token" in parsed["error"] and hdrs["www-authenticate"].startswith("Bearer")
    assert call(app, "POST", url, body, headers={"authorization": "Bearer wrong"})[0] == 401
    assert call(app, "GET", "/metrics")[0] == 401
    assert call(app, "GET", f"/v1/models/{MODEL}")[0] == 401
    ok = {"authorization": "Bearer s3cret"}
    assert call(app, "POST", url, body, headers=ok)[0] == 200
    assert call(app, "GET", "/metrics", headers=ok)[0] == 200
    assert call(app, "GET", "/healthz")[0] == 200  # probes stay open
    assert call(app, "GET", "/readyz")[0] == 200
    manager.close()


# ---------------------------------------------------------------------------------------------------
# Fuzz: 10,000 requests, no 5xx, still healthy
# ---------------------------------------------------------------------------------------------------


def _fuzz_requests(rows: list[dict], n: int, seed: int):
    rng = np.random.default_rng(seed)
    keys = list(rows[0])
    weird_values = [None, True, False, 0, -1, 1e308, -1e308, 10**40, -(10**400), 1e-320, "", "x", "NaN",
                    "Infinity", "1e999", "\u00e9\u4e2d\U0001f600", "\x00", [], [1, "a"], {}, {"a": 1},
                    [[[]]], 3.5, 2**63, "hangzhou", "web", 12]
    paths = [f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/1:predict",
             f"/v1/models/{MODEL}/versions/0:predict", f"/v1/models/{MODEL}/versions/-1:predict",
             f"/v1/models/{MODEL}/versions/99999999999999999999999:predict", "/v1/models/:predict",
             "/v1/models/x/y/z:predict", f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/metadata",
             f"/v1/models/{MODEL}/versions/1", "/v1/models/", "/", "/metrics", "/v1/models/%00:predict",
             f"/v1/models/{MODEL}::predict", f"/v1/models/{MODEL}:predict:predict", "/v1/models/\udcff:predict"]
    methods = ["POST"] * 8 + ["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]
    for _ in range(n):
        kind = rng.integers(0, 10)
        path = paths[0] if rng.random() < 0.6 else paths[rng.integers(len(paths))]
        method = "POST" if rng.random() < 0.8 else methods[rng.integers(len(methods))]
        headers = {}
        if kind <= 4:  # mutated instances
            batch = []
            for _ in range(int(rng.integers(0, 4))):
                row = dict(rows[rng.integers(len(rows))])
                for _ in range(int(rng.integers(0, 4))):
                    op = rng.integers(0, 3)
                    k = keys[rng.integers(len(keys))]
                    if op == 0:
                        row.pop(k, None)
                    elif op == 1:
                        row[k] = weird_values[rng.integers(len(weird_values))]
                    else:
                        row["extra_" + str(rng.integers(5))] = weird_values[rng.integers(len(weird_values))]
                batch.append(row if rng.random() > 0.05 else weird_values[rng.integers(len(weird_values))])
            body = json.dumps({"instances": batch}).encode()
        elif kind == 5:  # structural
            top = weird_values[rng.integers(len(weird_values))]
            body = json.dumps(top if rng.random() < 0.5 else {"instances": top, "inputs": top}).encode()
        elif kind == 6:  # columnar
            col = {k: [weird_values[rng.integers(len(weird_values))] for _ in range(int(rng.integers(0, 3)))]
                   for k in keys if rng.random() < 0.8}
            body = json.dumps({"inputs": col}).encode()
        elif kind == 7:  # raw bytes / truncated JSON
            good = predict_body(rows[:2])
            body = good[: rng.integers(0, len(good))] if rng.random() < 0.5 else bytes(
                rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8))
        elif kind == 8:  # nesting and literals
            depth = int(rng.integers(1, 2000))
            body = (b'{"instances": ' + b"[" * depth + b"]" * depth + b"}") if rng.random() < 0.5 else \
                b'{"instances": [{"age": ' + [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0"][rng.integers(5)] + b"}]}"
        else:  # headers
            body = predict_body(rows[:1])
            headers = {"content-length": ["-1", "abc", str(10**30), "0", ""][rng.integers(5)],
                       "authorization": "Bearer x", "content-type": "text/plain"}
        yield method, path, body, headers


def test_fuzz_10000_requests_no_5xx(served):
    import asyncio

    from tests.test_serving_support import asgi_call

    app, rows = served
    counts: dict[int, int] = {}

    async def run():
        failures = []
        for method, path, body, headers in _fuzz_requests(rows, 10_000, seed=20260101):
            status, _, data = await asgi_call(app, method, path, body, headers or None,
                                              content_length="content-length" not in headers)
            counts[status] = counts.get(status, 0) + 1
            if status >= 500 or (status >= 400 and b'"error"' not in data):
                failures.append((status, method, path, body[:200], data[:300]))
        return failures

    failures = asyncio.run(run())
    assert not failures, failures[:5]
    assert sum(counts.values()) == 10_000
    assert counts.get(200, 0) > 500 and counts.get(400, 0) > 500, counts  # the fuzz reached both paths
    assert call(app, "GET", "/healthz")[0] == 200
    status, _, body = call(app, "POST", f"/v1/models/{MODEL}:predict", predict_body(rows))
    assert status == 200 and len(body["predictions"]) == len(rows)


# ---------------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", ""], "--models is empty"),
        (["--models", "a b"], "invalid model name"),
        (["--models", "m", "--port", "0"], "--port 0"),
        (["--models", "m", "--poll-seconds", "0"], "--poll-seconds"),
        (["--models", "m", "--workers", "0"], "--workers"),
        (["--models", "m", "--max-body-bytes", "0"], "--max-body-bytes"),
    ],
)
def test_cli_rejects_bad_options(argv, message, tmp_path, capsys):
    from airflow_ml_provider.cli import main

    rc = main(["serve", "--registry", f"sqlite:///{tmp_path / 'r.db'}", *argv])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err


def test_cli_unreachable_registry(capsys):
    from airflow_ml_provider.cli import main

    rc = main(["serve", "--registry", "mysql+pymysql://u:hunter2@127.0.0.1:1/x", "--models", "m"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot read the model registry" in err and "hunter2" not in err


def test_cli_registry_from_a_connection_id(tmp_path, monkeypatch):
    """--registry takes an Airflow connection id (here from AIRFLOW_CONN_<ID>, no Airflow import)."""
    import argparse

    from airflow_ml_provider.cli import CLIError, build_parser
    from airflow_ml_provider.cli.serve import build_config

    db = tmp_path / "reg.db"
    monkeypatch.setenv("AIRFLOW_CONN_ML_REGISTRY_TEST", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    args = build_parser().parse_args(["serve", "--registry", "ml_registry_test", "--models", "a,b", "--workers", "2"])
    assert isinstance(args, argparse.Namespace)
    config = build_config(args)
    assert config["registry"].startswith("sqlite:///") and config["registry"].endswith(str(db))
    assert config["models"] == ["a", "b"]
    monkeypatch.setenv("AIRFLOW_CONN_ML_REGISTRY_TEST", "{not json")
    with pytest.raises(CLIError, match="AIRFLOW_CONN_ML_REGISTRY_TEST is not valid JSON"):
        build_config(args)


def test_lifespan_loads_before_serving_and_stops_polling(models, env, tmp_path, monkeypatch):
    """ASGI lifespan: startup loads the current versions and starts the poll thread; shutdown stops it.
    Built by the factory `--workers N` uses (config from the environment)."""
    import asyncio

    from airflow_ml_provider.serving.app import CONFIG_ENV, TOKEN_ENV, create_app_from_env

    reg, store = env
    publish(reg, models[0].bundle_dir, store)
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"registry": str(reg.url.render_as_string(hide_password=False)),
                                               "models": [MODEL], "poll_seconds": 0.2, "keep_versions": 2,
                                               "max_body_bytes": 1234, "cache_dir": str(tmp_path / "c")}))
    monkeypatch.setenv(TOKEN_ENV, "tok")
    app = create_app_from_env()
    assert app.max_body_bytes == 1234 and app.manager.keep_versions == 2

    async def lifespan():
        inbox: asyncio.Queue = asyncio.Queue()
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0.01)
        assert sent[-1]["type"] == "lifespan.startup.complete"
        assert app.manager.polling and app.manager.served_versions() == {MODEL: 1}
        # The poll thread follows a new publish on its own.
        publish(reg, models[1].bundle_dir, store)
        for _ in range(200):
            if app.manager.served_versions() == {MODEL: 2}:
                break
            await asyncio.sleep(0.05)
        assert app.manager.served_versions() == {MODEL: 2}
        await inbox.put({"type": "lifespan.shutdown"})
        await task
        assert sent[-1]["type"] == "lifespan.shutdown.complete"

    asyncio.run(lifespan())
    assert not app.manager.polling
    assert call(app, "GET", "/metrics")[0] == 401  # the token came from the environment
