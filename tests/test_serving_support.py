"""Shared helpers of the serving tests (no tests here): a small model built through the core APIs,
publishing versions of it, and a direct ASGI driver.

Everything is real: the feature library fits the spec, the xgboost trainer trains, ml.bundle builds
and publishes the bundle to file:// storage, ml.registry records it.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "audio_ctr"

CITIES = ["beijing", "shanghai", "guangzhou", "shenzhen", "hangzhou", "chengdu", "wuhan", "xian"]
DEVICES = ["android", "ios", "car", "smart_speaker", "web"]

SPEC_YAML = """
version: 1
label: listened_30s
on_missing: default
user_features:
  - name: age
    dtype: numeric
    transforms:
      - fill_missing: {strategy: median}
      - standardize
  - name: plays_7d
    dtype: numeric
    transforms: [log1p]
  - name: is_vip
    dtype: numeric
    on_missing: error
  - name: city
    dtype: categorical
    transforms:
      - one_hot: {top_k: 6}
item_features:
  - name: avg_listen_sec
    dtype: numeric
    transforms: [clip: {min: 0, max: 600}, standardize]
  - name: device
    dtype: categorical
    transforms: [one_hot]
features:
  - name: hour
    dtype: numeric
cross_features:
  - name: city_x_device
    inputs: [city, device]
    transforms: [hashed_cross: {buckets: 16}]
"""


def make_frame(n: int, seed: int):
    """Raw training rows with a learnable label (pandas DataFrame)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.integers(16, 70, n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    plays = rng.poisson(6, n)
    avg = rng.gamma(2.0, 40.0, n).round(3)
    hour = rng.integers(0, 24, n)
    vip = rng.integers(0, 2, n)
    city = rng.choice(CITIES, n)
    device = rng.choice(DEVICES, n)
    logit = (0.02 * (np.nan_to_num(age, nan=30) - 35) + 0.25 * np.log1p(plays) + 0.01 * (avg - 80)
             + 0.6 * vip - 0.4 * (device == "web") + 0.3 * (city == "hangzhou") + 0.2 * (hour >= 20))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({
        "age": age, "plays_7d": plays, "avg_listen_sec": avg, "hour": hour, "is_vip": vip,
        "city": city, "device": device, "listened_30s": y,
    })


def row_dicts(frame) -> list[dict[str, Any]]:
    """DataFrame rows -> JSON-ready dicts (NaN -> None; numpy scalars -> Python)."""
    cols = [c for c in frame.columns if c not in ("listened_30s", "label")]
    out = []
    for values in frame[cols].itertuples(index=False, name=None):
        row = {}
        for c, v in zip(cols, values):
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            row[c] = v
        out.append(row)
    return out


@dataclass
class BuiltModel:
    bundle_dir: Path
    fitted: Any
    predictor: Any
    valid_frame: Any
    valid_X: np.ndarray
    offline: np.ndarray  # the training run's predictions on the validation split


def build_model(workdir: Path, *, seed: int = 0, rounds: int = 20, n: int = 1500,
                spec_yaml: str = SPEC_YAML) -> BuiltModel:
    """Fit the spec, train xgboost and build a bundle in ``workdir/bundle`` (all real core APIs)."""
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.feature_table import Dataset
    from airflow_ml_provider.ml.features import FeatureSpec, fit
    from airflow_ml_provider.ml.trainers import get_trainer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frame = make_frame(n, seed)
    cut = int(n * 0.8)
    train_df, valid_df = frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    spec = FeatureSpec.from_yaml(spec_yaml)
    fitted = fit(spec, train_df)
    Xt = fitted.transform(train_df)
    Xv = fitted.transform(valid_df)
    yt = train_df["listened_30s"].to_numpy(np.float32)
    yv = valid_df["listened_30s"].to_numpy(np.float32)
    names = list(fitted.feature_names)
    result = get_trainer("xgboost").train(
        Dataset(X=Xt, y=yt, feature_names=names), Dataset(X=Xv, y=yv, feature_names=names),
        {"num_boost_round": rounds, "max_depth": 4, "seed": seed, "nthread": 1, "log_every": 1000},
        workdir / "model", log=lambda *_: None,
    )
    offline = np.asarray(result.predictor.predict(Xv))
    bundle_dir = workdir / "bundle"
    build_bundle(bundle_dir, model_dir=workdir / "model", fitted_spec=fitted, framework="xgboost",
                 metrics={"seed": seed}, metadata={"seed": seed})
    return BuiltModel(bundle_dir, fitted, result.predictor, valid_df, Xv, offline)


REPO = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = REPO / "dags" / "specs" / "audio_recommendation.yaml"
EXAMPLE_MODEL = "audio_recommendation"


def example_frame(workdir: Path, *, events: int = 6000, seed: int = 7):
    """The example DAG's training rows: the synthetic audio-platform data set through TRAINING_QUERY."""
    import sqlite3

    import pandas as pd

    from airflow_ml_provider.ml.datasets.audio import TRAINING_QUERY, load_audio_dataset

    db = Path(workdir) / "audio.db"
    load_audio_dataset(db, seed=seed, users=800, items=400, hosts=100, events=events, days=30)
    with sqlite3.connect(db) as conn:
        return pd.read_sql_query(TRAINING_QUERY.replace(":start_ts", "?"), conn, params=(0,))


def build_example_model(workdir: Path, *, events: int = 6000, rounds: int = 30, seed: int = 7) -> BuiltModel:
    """The example model (dags/specs/audio_recommendation.yaml on the audio data set), through the
    core APIs, with an 80/20 train/validation split."""
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.feature_table import Dataset
    from airflow_ml_provider.ml.features import FeatureSpec, fit
    from airflow_ml_provider.ml.trainers import get_trainer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frame = example_frame(workdir, events=events, seed=seed)
    order = np.random.default_rng(seed).permutation(len(frame))
    cut = int(len(frame) * 0.8)
    train_df = frame.iloc[order[:cut]].reset_index(drop=True)
    valid_df = frame.iloc[order[cut:]].reset_index(drop=True)
    fitted = fit(FeatureSpec.from_yaml(EXAMPLE_SPEC.read_text()), train_df)
    names = list(fitted.feature_names)
    Xt, Xv = fitted.transform(train_df), fitted.transform(valid_df)
    result = get_trainer("xgboost").train(
        Dataset(X=Xt, y=fitted.labels(train_df), feature_names=names),
        Dataset(X=Xv, y=fitted.labels(valid_df), feature_names=names),
        {"num_boost_round": rounds, "max_depth": 6, "eta": 0.2, "seed": 0, "nthread": 1, "log_every": 1000},
        workdir / "model", log=lambda *_: None,
    )
    offline = np.asarray(result.predictor.predict(Xv))
    bundle_dir = workdir / "bundle"
    build_bundle(bundle_dir, model_dir=workdir / "model", fitted_spec=fitted, framework="xgboost")
    raw = valid_df.drop(columns=[fitted.label])
    return BuiltModel(bundle_dir, fitted, result.predictor, raw, Xv, offline)


def publish(registry, bundle_dir: Path, store: Path | str, name: str = MODEL, *, corrupt: bool = False):
    """Publish a built bundle under ``store`` (a local directory, or a URI such as webhdfs://...)
    and commit the registry row.

    ``corrupt=True`` tampers with the model file after the upload (the registry keeps the true
    checksum), as a damaged copy on HDFS would be.
    """
    from airflow_ml_provider.ml import storage
    from airflow_ml_provider.ml.bundle import load_bundle, publish_bundle

    version = registry.next_version(name)
    local = load_bundle(bundle_dir)
    root = store.as_uri() if isinstance(store, Path) else store
    uri = publish_bundle(bundle_dir, root, name, version)
    if corrupt:
        victim = min(f for f in storage.list_dir(storage.join(uri, "model")) if not f.endswith("metadata.json"))
        victim_uri = storage.join(uri, "model", victim)
        data = bytearray(storage.read_bytes(victim_uri))
        data[len(data) // 2] ^= 0xFF
        storage.remove(victim_uri)
        storage.write_bytes_atomic(victim_uri, bytes(data))
    return registry.publish(name=name, version=version, bundle_uri=uri, framework="xgboost",
                            checksum=local.checksum)


# --------------------------------------------------------------------------------------------------
# A direct ASGI driver: any method, raw path, raw bytes, streamed chunks
# --------------------------------------------------------------------------------------------------


async def asgi_call(app, method: str = "GET", path: str = "/", body: bytes | list[bytes] = b"",
                    headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None,
                    content_length: bool = True) -> tuple[int, dict[str, str], bytes]:
    chunks = body if isinstance(body, list) else [body]
    raw_headers: list[tuple[bytes, bytes]]
    if isinstance(headers, list):
        raw_headers = list(headers)
    else:
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_length and not isinstance(body, list) and not any(k == b"content-length" for k, _ in raw_headers):
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogateescape"),
             "query_string": b"", "root_path": "", "headers": raw_headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    state = {"read": 0}
    sent: list[dict] = []

    async def receive():
        if state["read"] < len(queue):
            state["read"] += 1
            return queue[state["read"] - 1]
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    call_state = {"chunks_read": state["read"]}
    hdrs["x-test-chunks-read"] = str(call_state["chunks_read"])
    return start["status"], hdrs, data


def call(app, *args, **kwargs) -> tuple[int, dict[str, str], Any]:
    """Synchronous :func:`asgi_call`; the body is parsed as JSON when it is JSON."""
    status, headers, data = asyncio.run(asgi_call(app, *args, **kwargs))
    try:
        parsed = json.loads(data) if headers.get("content-type", "").startswith("application/json") else data
    except ValueError:
        parsed = data
    return status, headers, parsed


def predict_body(instances) -> bytes:
    return json.dumps({"instances": instances}).encode()
