"""Labels and canary traffic (issue 13, point 3).

* the registry's serving log: ``label``/``unlabel``/``canary``/``promote``/``abort`` events and the
  state they add up to (``serving_state``), refusals of unknown/served/refused versions, an older
  ``ml_model_serving`` table without the new columns;
* the split (serving/routing.py) over 10,000 decisions;
* the CLI as a real ``airflow-ml`` subprocess against a temporary SQLite registry;
* the in-process app: label routes, the canary's share, per-version metrics, eviction;
* two real ``airflow-ml serve`` processes (replicas) on one registry following a label, a canary,
  a promote and an abort within one poll, with the share over 10,000 real HTTP requests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from airflow_ml_provider.ml.registry import ModelRegistry, RegistryError, UnknownModelError
from airflow_ml_provider.serving import ModelManager, create_app
from airflow_ml_provider.serving.routing import BLOCK, CanarySplit
from tests.test_serving_support import MODEL, build_model, call, predict_body, publish, row_dicts

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent


def _fake_publish(reg: ModelRegistry, n: int, name: str = "m") -> None:
    for i in range(n):
        reg.publish(name=name, bundle_uri=f"file:///nowhere/{name}/{i + 1}", framework="xgboost")


# ---------------------------------------------------------------------------------------------------
# The registry's serving log
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def reg(tmp_path):
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.create_tables()
    yield registry
    registry.dispose()


def test_label_and_canary_events_and_state(reg):
    _fake_publish(reg, 3)
    state = reg.serving_state("m")
    assert state.current.version == 3 and state.labels == {} and state.canary is None
    mark = reg.watermark(["m"])

    ev = reg.set_label("m", "stable", 1, by="alice", reason="known good")
    assert (ev.action, ev.version, ev.label, ev.created_by, ev.reason) == ("label", 1, "stable", "alice", "known good")
    assert reg.watermark(["m"]) > mark  # the poll loop sees it
    reg.set_label("m", "beta", 2)
    reg.set_label("m", "stable", 2)  # moving a label
    reg.set_label("m", "stable", 1)
    ev = reg.start_canary("m", 2, 12.5, by="bob")
    assert (ev.action, ev.version, ev.percent, ev.created_by) == ("canary", 2, 12.5, "bob")

    state = reg.serving_state("m")
    assert {k: r.version for k, r in state.labels.items()} == {"stable": 1, "beta": 2}
    assert state.canary.version == 2 and state.canary_percent == 12.5
    assert state.labels["stable"].bundle_uri == "file:///nowhere/m/1"
    assert reg.current("m").version == 3  # labels and canary leave the served version alone
    assert state.watermark == reg.watermark(["m"])

    ev = reg.remove_label("m", "beta", by="carol")
    assert (ev.action, ev.version, ev.label) == ("unlabel", 2, "beta")
    assert set(reg.serving_state("m").labels) == {"stable"}

    ev = reg.promote("m", by="dave", reason="metrics fine")
    assert (ev.action, ev.version) == ("promote", 2)
    state = reg.serving_state("m")
    assert state.current.version == 2 and state.canary is None and reg.current("m").version == 2

    reg.start_canary("m", 3, 50)
    ev = reg.abort_canary("m", reason="latency")
    assert (ev.action, ev.version, ev.reason) == ("abort", 3, "latency")
    state = reg.serving_state("m")
    assert state.current.version == 2 and state.canary is None

    # a publish (or rollback) while a canary runs ends it: the served version changed outright
    reg.start_canary("m", 1, 30)
    assert reg.serving_state("m").canary.version == 1
    _fake_publish(reg, 1)
    state = reg.serving_state("m")
    assert state.current.version == 4 and state.canary is None
    reg.start_canary("m", 1, 30)
    reg.rollback("m", 3)
    assert reg.serving_state("m").canary is None and reg.current("m").version == 3
    # a later publish after a promote is served; labels stay
    assert {k: r.version for k, r in reg.serving_state("m").labels.items()} == {"stable": 1}

    actions = [e.action for e in reg.events("m")]
    assert actions == ["publish"] * 3 + ["label"] * 4 + ["canary", "unlabel", "promote", "canary", "abort",
                                                        "canary", "publish", "canary", "rollback"]
    as_dict = [e.to_dict() for e in reg.events("m") if e.action in ("label", "canary")]
    assert as_dict[0]["label"] == "stable" and as_dict[-1]["percent"] == 30.0


def test_refusals_name_the_problem(reg):
    _fake_publish(reg, 2)
    with pytest.raises(UnknownModelError, match=r"model 'm' has no version 7 \(versions: 1, 2\)"):
        reg.set_label("m", "stable", 7)
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        reg.start_canary("nope", 1, 10)
    with pytest.raises(UnknownModelError, match="has no version 9"):
        reg.start_canary("m", 9, 10)
    with pytest.raises(RegistryError, match="version 2 is already the served version"):
        reg.start_canary("m", 2, 10)
    for bad in (0, -1, 100.5, "x", float("nan")):
        with pytest.raises(RegistryError, match="invalid canary percent"):
            reg.start_canary("m", 1, bad)
    for bad in ("", "1abc", "a/b", "x" * 65, "stable label"):
        with pytest.raises(RegistryError, match="invalid label"):
            reg.set_label("m", bad, 1)
    with pytest.raises(RegistryError, match="has no label 'gone' \\(labels: none\\)"):
        reg.remove_label("m", "gone")
    with pytest.raises(RegistryError, match="has no canary running; nothing to promote"):
        reg.promote("m")
    with pytest.raises(RegistryError, match="has no canary running; nothing to abort"):
        reg.abort_canary("m")
    # a version a model service refused to load: labels and canaries refuse to point at it
    reg.record_refusal("m", 1, reason="checksum mismatch", instance="host:1")
    with pytest.raises(RegistryError, match="refused to load it"):
        reg.set_label("m", "stable", 1)
    with pytest.raises(RegistryError, match="refused to load it"):
        reg.start_canary("m", 1, 10)
    # nothing was written by any refused call
    assert [e.action for e in reg.events("m")] == ["publish", "publish", "refused"]
    assert reg.current("m").version == 2


def test_older_serving_table_gets_the_new_columns(tmp_path):
    """A registry created before labels and canary: reads work, the first label adds the columns."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text(
            "CREATE TABLE ml_model_serving (id INTEGER PRIMARY KEY AUTOINCREMENT, model_name VARCHAR(128) "
            "NOT NULL, version INTEGER NOT NULL, action VARCHAR(32) NOT NULL, created_at DATETIME NOT NULL, "
            "created_by VARCHAR(250), reason TEXT)"))
    engine.dispose()
    old = ModelRegistry(url)  # a reader that never creates tables (like the service)
    assert old.events() == [] and old.serving_state("m").current is None
    writer = ModelRegistry(url)
    _fake_publish(writer, 2)
    assert old.serving_state("m").current.version == 2 and old.serving_state("m").labels == {}
    writer.set_label("m", "stable", 1)
    assert old.serving_state("m").labels["stable"].version == 1  # the reader sees the new columns
    assert [e.label for e in old.events("m")] == [None, None, "stable"]
    cols = {c["name"] for c in sa.inspect(sa.create_engine(url)).get_columns("ml_model_serving")}
    assert {"label", "percent"} <= cols


@pytest.mark.mariadb
def test_mariadb_registry_label_and_canary(mariadb_url):
    """The same events on the real MariaDB (Float and VARCHAR columns, the grouped label query)."""
    reg = ModelRegistry(mariadb_url)
    reg.create_tables()
    _fake_publish(reg, 3)
    reg.set_label("m", "stable", 1)
    reg.set_label("m", "stable", 2)
    reg.start_canary("m", 1, 33.3)
    state = reg.serving_state("m")
    assert {k: r.version for k, r in state.labels.items()} == {"stable": 2}
    assert state.canary.version == 1 and abs(state.canary_percent - 33.3) < 1e-9
    reg.promote("m")
    assert reg.current("m").version == 1 and reg.serving_state("m").canary is None
    reg.dispose()


# ---------------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0.1, 1, 5, 12.5, 33.3, 50, 90, 100])
def test_split_share_over_10000_requests(percent):
    split = CanarySplit(percent)
    hits = sum(split.take() for _ in range(10_000))
    assert abs(hits / 100 - percent) <= 2.0  # the acceptance bound
    assert hits == round(percent * BLOCK / 100) * (10_000 // BLOCK)  # in fact exact per block of 1,000
    # any window of 10,000 (not aligned with a block) is within a block's deviation
    split.take()
    hits = sum(split.take() for _ in range(10_000))
    assert abs(hits / 100 - percent) <= 2.0


def test_split_is_not_a_lock_step_pattern():
    """A client alternating two kinds of request must not send one kind to the canary only (as a
    plain counter at 50 % would)."""
    split = CanarySplit(50, seed=1)
    decisions = [split.take() for _ in range(20_000)]
    odd = decisions[1::2]
    assert 0.45 < sum(odd) / len(odd) < 0.55
    with pytest.raises(ValueError):
        CanarySplit(0)


# ---------------------------------------------------------------------------------------------------
# The CLI: a real `airflow-ml` subprocess on a temporary SQLite registry
# ---------------------------------------------------------------------------------------------------


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("airflow-ml")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "airflow_ml_provider.cli"]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "USER": "tester", **(env or {})})


def test_cli_label_canary_promote_abort(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = ModelRegistry(url)
    _fake_publish(reg, 3, name="churn")
    r = "--registry"

    p = _cli("models", "label", "churn", "stable", "--version", "2", r, url, "--reason", "known good")
    assert p.returncode == 0, p.stderr
    assert "label 'stable' -> version 2" in p.stdout and "next poll" in p.stdout
    p = _cli("models", "canary", "churn", "--version", "1", "--percent", "12.5", r, url)
    assert p.returncode == 0, p.stderr
    assert "canary version 1 gets 12.5% of unpinned requests (version 3 the rest)" in p.stdout
    p = _cli("models", "show", "churn", r, url)
    shown = json.loads(p.stdout)
    assert shown["labels"] == {"stable": 2} and shown["canary"] == {"version": 1, "percent": 12.5}
    assert shown["serving_version"] == 3
    p = _cli("models", "show", "churn", "--format", "table", r, url)
    assert re.search(r"labels\s+stable=v2", p.stdout) and re.search(r"canary\s+version 1 at 12.5%", p.stdout)

    p = _cli("models", "promote", "churn", r, url, "--by", "alice")
    assert p.returncode == 0, p.stderr
    assert "canary version 1 promoted, now serving it (was version 3)" in p.stdout
    p = _cli("models", "canary", "churn", "--version", "3", "--percent", "50", r, url)
    assert p.returncode == 0, p.stderr
    p = _cli("models", "abort", "churn", r, url, "--reason", "p99 up")
    assert p.returncode == 0 and "canary version 3 aborted, 100% of requests to version 1" in p.stdout
    p = _cli("models", "label", "churn", "stable", "--remove", r, url)
    assert p.returncode == 0 and "label 'stable' removed (it named version 2)" in p.stdout

    events = reg.events("churn")
    assert [(e.action, e.version) for e in events[3:]] == [
        ("label", 2), ("canary", 1), ("promote", 1), ("canary", 3), ("abort", 3), ("unlabel", 2)]
    assert events[3].reason == "known good" and events[4].created_by == "tester"
    assert events[5].created_by == "alice" and events[7].reason == "p99 up"
    assert reg.current("churn").version == 1

    # bad input: one line naming the problem, exit 1, nothing written
    before = reg.watermark()
    for argv, message in [
        (("label", "churn", "stable", "--version", "9"), "model 'churn' has no version 9 (versions: 1, 2, 3)"),
        (("label", "churn", "a/b", "--version", "1"), "invalid label 'a/b'"),
        (("label", "churn", "stable", "--remove"), "model 'churn' has no label 'stable' (labels: none)"),
        (("canary", "churn", "--version", "1", "--percent", "10"), "version 1 is already the served version"),
        (("canary", "churn", "--version", "2", "--percent", "0"), "invalid canary percent '0'"),
        (("canary", "churn", "--version", "2", "--percent", "abc"), "invalid canary percent 'abc'"),
        (("canary", "churn", "--version", "x", "--percent", "5"), "invalid version 'x'"),
        (("canary", "nope", "--version", "1", "--percent", "5"), "unknown model 'nope'"),
        (("promote", "churn"), "model 'churn' has no canary running; nothing to promote"),
        (("abort", "churn"), "model 'churn' has no canary running; nothing to abort"),
    ]:
        p = _cli("models", *argv, r, url)
        assert p.returncode == 1, (argv, p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr and p.stdout == "", (argv, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = _cli("models", "label", "churn", "stable", r, url)  # neither --version nor --remove
    assert p.returncode == 2 and "--version" in p.stderr
    assert reg.watermark() == before
    reg.dispose()


# ---------------------------------------------------------------------------------------------------
# In-process: the real app and manager on real bundles
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary-models")
    return [build_model(root / f"m{i}", seed=i, rounds=6 + 3 * i, n=600) for i in range(4)]


def _scores(built, frame) -> np.ndarray:
    """A build's offline scores for some rows (the training code path), as float32."""
    return np.float32(built.predictor.predict(built.fitted.transform(frame)))


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in metrics")


def test_in_process_labels_canary_metrics_and_eviction(models, tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    store = tmp_path / "store"
    for m in models[:3]:
        publish(reg, m.bundle_dir, store)
    manager = ModelManager(reg, [MODEL], poll_seconds=0.2, keep_versions=1, cache_dir=tmp_path / "cache")
    app = create_app(None, [MODEL], manager=manager, manage_lifecycle=False)
    rows = row_dicts(models[0].valid_frame.iloc[:2])
    body = predict_body(rows)
    expected = {v: _scores(models[v - 1], models[0].valid_frame.iloc[:2]) for v in (1, 2, 3)}
    try:
        manager.poll_once()
        status, _, doc = call(app, "POST", f"/v1/models/{MODEL}/labels/stable:predict", body)
        assert status == 404 and "has no label 'stable' (labels: none)" in doc["error"]

        reg.set_label(MODEL, "stable", 1)
        reg.set_label(MODEL, "old", 2)
        manager.poll_once()
        status, _, doc = call(app, "POST", f"/v1/models/{MODEL}/labels/stable:predict", body)
        assert status == 200 and doc["model_version"] == 1
        assert np.array_equal(np.float32(doc["predictions"]), expected[1])
        status, _, doc = call(app, "GET", f"/v1/models/{MODEL}/labels/old")
        assert status == 200 and [e["version"] for e in doc["model_version_status"]] == ["2"]
        assert doc["model_version_status"][0]["labels"] == ["old"]
        status, _, doc = call(app, "GET", f"/v1/models/{MODEL}/labels/stable/metadata")
        assert status == 200 and doc["model_spec"]["version"] == "1"
        # keep_versions=1, yet the labelled versions stay loaded next to the served one
        assert manager.loaded_versions(MODEL) == [1, 2, 3]

        reg.start_canary(MODEL, 2, 25)
        manager.poll_once()
        seen = {1: 0, 2: 0, 3: 0}
        for _ in range(2000):
            status, _, doc = call(app, "POST", f"/v1/models/{MODEL}:predict", body)
            assert status == 200
            seen[doc["model_version"]] += 1
            assert np.array_equal(np.float32(doc["predictions"]), expected[doc["model_version"]])
        assert seen[1] == 0 and abs(seen[2] / 2000 * 100 - 25) <= 2.0, seen
        # pinned and labelled requests are never re-routed
        for _ in range(50):
            assert call(app, "POST", f"/v1/models/{MODEL}/versions/3:predict", body)[2]["model_version"] == 3
            assert call(app, "POST", f"/v1/models/{MODEL}/labels/stable:predict", body)[2]["model_version"] == 1
        status, _, doc = call(app, "GET", f"/v1/models/{MODEL}")
        entry = {e["version"]: e for e in doc["model_version_status"]}
        assert entry["2"]["canary_percent"] == 25.0 and entry["3"]["current"] is True
        _, _, metrics = call(app, "GET", "/metrics")
        metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
        v = "airflow_ml_serving_version_requests_total"
        assert _metric(metrics, v, model=MODEL, version="2", route="canary") == seen[2]
        assert _metric(metrics, v, model=MODEL, version="3", route="stable") == seen[3]
        assert _metric(metrics, v, model=MODEL, version="3", route="pinned") == 50
        assert _metric(metrics, v, model=MODEL, version="1", route="label") == 51
        assert _metric(metrics, "airflow_ml_serving_version_request_latency_seconds_count",
                       model=MODEL, version="2") == seen[2]
        assert _metric(metrics, "airflow_ml_serving_canary_percent", model=MODEL) == 25.0
        assert _metric(metrics, "airflow_ml_serving_canary_version", model=MODEL) == 2.0

        reg.promote(MODEL)
        manager.poll_once()
        assert {call(app, "POST", f"/v1/models/{MODEL}:predict", body)[2]["model_version"] for _ in range(100)} == {2}
        reg.start_canary(MODEL, 3, 100)
        manager.poll_once()
        assert {call(app, "POST", f"/v1/models/{MODEL}:predict", body)[2]["model_version"] for _ in range(20)} == {3}
        reg.abort_canary(MODEL)
        manager.poll_once()
        assert {call(app, "POST", f"/v1/models/{MODEL}:predict", body)[2]["model_version"] for _ in range(100)} == {2}
        _, _, metrics = call(app, "GET", "/metrics")
        metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
        assert _metric(metrics, "airflow_ml_serving_canary_percent", model=MODEL) == 0.0

        reg.remove_label(MODEL, "old")
        reg.remove_label(MODEL, "stable")
        manager.poll_once()
        status, _, doc = call(app, "POST", f"/v1/models/{MODEL}/labels/stable:predict", body)
        assert status == 404
        assert manager.loaded_versions(MODEL) == [2]  # unlabelled versions are evicted again (keep 1)
    finally:
        manager.close()
        reg.dispose()


def test_canary_whose_bundle_cannot_load_keeps_everything_on_the_served_version(models, tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    store = tmp_path / "store"
    publish(reg, models[0].bundle_dir, store)
    publish(reg, models[1].bundle_dir, store, corrupt=True)  # version 2: a damaged copy
    reg.rollback(MODEL, 1)
    manager = ModelManager(reg, [MODEL], poll_seconds=0.2, cache_dir=tmp_path / "cache")
    app = create_app(None, [MODEL], manager=manager, manage_lifecycle=False)
    body = predict_body(row_dicts(models[0].valid_frame.iloc[:1]))
    try:
        manager.poll_once()
        reg.start_canary(MODEL, 2, 50)
        reg.set_label(MODEL, "next", 2)
        manager.poll_once()
        assert {call(app, "POST", f"/v1/models/{MODEL}:predict", body)[2]["model_version"] for _ in range(200)} == {1}
        status, headers, doc = call(app, "POST", f"/v1/models/{MODEL}/labels/next:predict", body)
        assert status == 503 and "names version 2, which is not loaded" in doc["error"]
    finally:
        manager.close()
        reg.dispose()


# ---------------------------------------------------------------------------------------------------
# Two real `airflow-ml serve` processes (replicas) on one registry
# ---------------------------------------------------------------------------------------------------

POLL = 0.5
SLACK = 3.0  # process scheduling on a shared, busy 2-core machine


@pytest.mark.slow
def test_two_live_replicas_follow_label_canary_promote_abort(models, tmp_path):
    import httpx

    from tests.test_serving_live import Server

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = ModelRegistry(url)
    reg.create_tables()
    store = tmp_path / "store"
    for m in models[:3]:
        publish(reg, m.bundle_dir, store)
    rows = row_dicts(models[0].valid_frame.iloc[:2])
    expected = {v: _scores(models[v - 1], models[0].valid_frame.iloc[:2]) for v in (1, 2, 3, 4)}
    replicas = [Server(url, tmp_path, "--keep-versions", "1") for _ in range(2)]
    clients: list[httpx.Client] = []
    try:
        for s in replicas:
            s.wait_ready()
        clients = [httpx.Client(base_url=s.base, timeout=10) for s in replicas]

        def predict(c: httpx.Client, path: str = "") -> int:
            r = c.post(f"/v1/models/{MODEL}{path}:predict", json={"instances": rows})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert np.array_equal(np.float32(doc["predictions"]), expected[doc["model_version"]])
            return doc["model_version"]

        def wait_all(check, what: str, since: float, budget: float) -> list[float]:
            """Seconds until ``check(client)`` holds on every replica (each within ``budget``)."""
            took = []
            for c in clients:
                while not check(c):
                    assert time.monotonic() - since < budget + 30, f"{what}: not followed ({c.base_url})"
                    time.sleep(0.02)
                took.append(time.monotonic() - since)
            for i, t in enumerate(took):
                assert t <= budget, f"{what}: replica {i} followed after {t:.2f} s > {budget:.2f} s"
            return took

        def load_seconds(c: httpx.Client, version: int) -> float:
            doc = c.get(f"/v1/models/{MODEL}/versions/{version}").json()
            return max(float(e.get("load_seconds") or 0) for e in doc["model_version_status"])

        assert {predict(c) for c in clients for _ in range(5)} == {3}

        # a label: needs version 1 loaded first (one poll + its load)
        t0 = time.monotonic()
        assert _cli("models", "label", MODEL, "stable", "--version", "1", "--registry", url).returncode == 0

        def labelled(c):
            r = c.post(f"/v1/models/{MODEL}/labels/stable:predict", json={"instances": rows})
            return r.status_code == 200 and r.json()["model_version"] == 1

        took = wait_all(labelled, "label", t0, budget=POLL + 30)
        for c, t in zip(clients, took):  # one poll plus the load of version 1
            assert t <= POLL + load_seconds(c, 1) + SLACK, (t, load_seconds(c, 1))
        assert all(predict(c, "/labels/stable") == 1 for c in clients)
        r = clients[0].get(f"/v1/models/{MODEL}/labels/stable")
        assert [e["version"] for e in r.json()["model_version_status"]] == ["1"]

        # a canary at 20 %
        t0 = time.monotonic()
        assert _cli("models", "canary", MODEL, "--version", "2", "--percent", "20",
                    "--registry", url).returncode == 0

        def canary_on(c):
            doc = c.get(f"/v1/models/{MODEL}").json()["model_version_status"]
            return any(e["version"] == "2" and e.get("canary_percent") == 20.0 for e in doc)

        took = wait_all(canary_on, "canary", t0, budget=POLL + 30)
        for c, t in zip(clients, took):
            assert t <= POLL + load_seconds(c, 2) + SLACK, (t, load_seconds(c, 2))
        counts = {}
        for _ in range(10_000):
            v = predict(clients[0])
            counts[v] = counts.get(v, 0) + 1
        assert set(counts) == {2, 3}, counts
        share = counts[2] / 10_000 * 100
        assert abs(share - 20) <= 2.0, counts  # the acceptance bound (over real HTTP)
        other = {}
        for _ in range(1000):
            v = predict(clients[1])
            other[v] = other.get(v, 0) + 1
        assert set(other) == {2, 3} and abs(other[2] / 10 - 20) <= 5.0, other  # the replica follows too
        metrics = clients[0].get("/metrics").text
        assert _metric(metrics, "airflow_ml_serving_version_requests_total", model=MODEL, version="2",
                       route="canary") == counts[2]
        assert _metric(metrics, "airflow_ml_serving_version_requests_total", model=MODEL, version="3",
                       route="stable") >= counts[3]
        assert {predict(c, "/labels/stable") for c in clients for _ in range(20)} == {1}

        # promote: version 2 is loaded, so within one poll
        t0 = time.monotonic()
        assert _cli("models", "promote", MODEL, "--registry", url).returncode == 0
        wait_all(lambda c: all(predict(c) == 2 for _ in range(20)), "promote", t0, budget=POLL + SLACK)
        assert {predict(c) for c in clients for _ in range(100)} == {2}

        # a new version as canary, then abort
        publish(reg, models[3].bundle_dir, store)  # version 4: a publish serves it at once ...
        wait_all(lambda c: predict(c) == 4, "publish", time.monotonic(), budget=POLL + 30)
        assert _cli("models", "rollback", MODEL, "--to", "2", "--registry", url).returncode == 0
        wait_all(lambda c: all(predict(c) == 2 for _ in range(10)), "rollback", time.monotonic(), POLL + SLACK)
        t0 = time.monotonic()
        assert _cli("models", "canary", MODEL, "--version", "4", "--percent", "50", "--registry", url).returncode == 0
        wait_all(lambda c: 4 in {predict(c) for _ in range(30)}, "canary 4", t0, budget=POLL + SLACK)  # loaded
        t0 = time.monotonic()
        assert _cli("models", "abort", MODEL, "--registry", url).returncode == 0
        wait_all(lambda c: all(predict(c) == 2 for _ in range(40)), "abort", t0, budget=POLL + SLACK)
        assert {predict(c) for c in clients for _ in range(200)} == {2}

        # the label goes: 404 on both replicas
        t0 = time.monotonic()
        assert _cli("models", "label", MODEL, "stable", "--remove", "--registry", url).returncode == 0
        wait_all(lambda c: c.post(f"/v1/models/{MODEL}/labels/stable:predict",
                                  json={"instances": rows}).status_code == 404, "unlabel", t0, POLL + SLACK)
    finally:
        for c in clients:
            c.close()
        for s in replicas:
            s.stop()
        reg.dispose()
    for s in replicas:
        log = s.log_path.read_text()
        assert "labels stable=v1; canary none" in log and "canary version 2 at 20%" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]


# ---------------------------------------------------------------------------------------------------
# Shadow mode: a version scores a copy of the traffic, only the served version answers
# ---------------------------------------------------------------------------------------------------


def test_shadow_events_and_refusals(reg):
    _fake_publish(reg, 3)
    with pytest.raises(RegistryError, match="no shadow running; nothing to stop"):
        reg.stop_shadow("m")
    with pytest.raises(RegistryError, match="already the served version"):
        reg.start_shadow("m", 3)
    with pytest.raises(UnknownModelError, match="has no version 8"):
        reg.start_shadow("m", 8)
    ev = reg.start_shadow("m", 2, 40, by="eve")
    assert (ev.action, ev.version, ev.percent, ev.created_by) == ("shadow", 2, 40.0, "eve")
    reg.start_canary("m", 1, 10)
    state = reg.serving_state("m")
    assert state.shadow.version == 2 and state.shadow_percent == 40.0 and state.canary.version == 1
    assert state.to_dict()["shadow"] == {"version": 2, "percent": 40.0}
    ev = reg.stop_shadow("m")
    assert (ev.action, ev.version) == ("unshadow", 2)
    state = reg.serving_state("m")
    assert state.shadow is None and state.canary.version == 1 and state.current.version == 3


def test_cli_shadow(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = ModelRegistry(url)
    _fake_publish(reg, 2, name="churn")
    p = _cli("models", "shadow", "churn", "--version", "1", "--registry", url)
    assert p.returncode == 0, p.stderr
    assert "shadow version 1 scores a copy of 100% of unpinned requests (answers unchanged)" in p.stdout
    assert json.loads(_cli("models", "show", "churn", "--registry", url).stdout)["shadow"] == {
        "version": 1, "percent": 100.0}
    p = _cli("models", "shadow", "churn", "--stop", "--registry", url)
    assert p.returncode == 0 and "shadow version 1 stopped" in p.stdout
    p = _cli("models", "shadow", "churn", "--stop", "--registry", url)
    assert p.returncode == 1 and "has no shadow running" in p.stderr and "Traceback" not in p.stderr
    assert [e.action for e in reg.events("churn")][2:] == ["shadow", "unshadow"]
    reg.dispose()


def test_in_process_shadow_scores_copies_without_changing_answers(models, tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    store = tmp_path / "store"
    for m in models[:2]:
        publish(reg, m.bundle_dir, store)
    manager = ModelManager(reg, [MODEL], poll_seconds=0.2, keep_versions=1, cache_dir=tmp_path / "cache")
    app = create_app(None, [MODEL], manager=manager, manage_lifecycle=False)
    frame = models[0].valid_frame.iloc[:3]
    body = predict_body(row_dicts(frame))
    served = _scores(models[1], frame)
    shadow_scores = _scores(models[0], frame)
    want_diff = float(np.mean(np.abs(np.float64(shadow_scores) - np.float64(served))))

    def metrics_text() -> str:
        out = call(app, "GET", "/metrics")[2]
        return out.decode() if isinstance(out, bytes) else out

    def wait_shadow(n: int) -> str:
        deadline = time.monotonic() + 60
        while True:
            text = metrics_text()
            try:
                done = sum(_metric(text, "airflow_ml_serving_shadow_requests_total", model=MODEL, version="1",
                                   outcome=o) for o in ("ok",))
            except AssertionError:
                done = 0
            if done >= n or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    try:
        manager.poll_once()
        reg.start_shadow(MODEL, 1, 100)
        manager.poll_once()
        assert manager.loaded_versions(MODEL) == [1, 2]  # the shadow stays loaded (keep_versions=1)
        for _ in range(200):
            status, _, doc = call(app, "POST", f"/v1/models/{MODEL}:predict", body)
            assert status == 200 and doc["model_version"] == 2  # answers only from the served version
            assert np.array_equal(np.float32(doc["predictions"]), served)
        # pinned and labelled requests are not copied
        for _ in range(20):
            assert call(app, "POST", f"/v1/models/{MODEL}/versions/2:predict", body)[0] == 200
        text = wait_shadow(200)
        ok = _metric(text, "airflow_ml_serving_shadow_requests_total", model=MODEL, version="1", outcome="ok")
        try:
            dropped = _metric(text, "airflow_ml_serving_shadow_requests_total", model=MODEL, version="1",
                              outcome="dropped")
        except AssertionError:
            dropped = 0
        assert ok + dropped == 200 and ok > 0, (ok, dropped)
        diff_sum = _metric(text, "airflow_ml_serving_shadow_abs_diff_sum", model=MODEL, version="1")
        assert diff_sum == pytest.approx(want_diff * ok, rel=1e-6)  # the shadow really scored v1
        status, _, doc = call(app, "GET", f"/v1/models/{MODEL}")
        entry = {e["version"]: e for e in doc["model_version_status"]}
        assert entry["1"]["shadow_percent"] == 100.0 and entry["2"]["current"] is True

        reg.stop_shadow(MODEL)
        manager.poll_once()
        for _ in range(50):
            assert call(app, "POST", f"/v1/models/{MODEL}:predict", body)[2]["model_version"] == 2
        after = _metric(metrics_text(), "airflow_ml_serving_shadow_requests_total", model=MODEL, version="1",
                        outcome="ok")
        assert after == ok
        assert manager.loaded_versions(MODEL) == [2]
    finally:
        manager.close()
        reg.dispose()


def test_unchanged_watermark_skips_the_full_poll(models, tmp_path):
    """Every label/canary/shadow change raises the watermark the manager checks first; while it does
    not move (and everything is loaded), a poll is that one query."""

    class CountingRegistry:
        """The manager's view of the registry: counts its per-model reads."""

        full_reads = 0

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, attr):
            return getattr(self._inner, attr)

        def serving_state(self, name):
            CountingRegistry.full_reads += 1
            return self._inner.serving_state(name)

    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    for m in models[:2]:
        publish(reg, m.bundle_dir, tmp_path / "store")
    manager = ModelManager(CountingRegistry(reg), [MODEL], poll_seconds=0.2, cache_dir=tmp_path / "cache")
    try:
        assert manager.poll_once() == {MODEL: 2}
        reads = CountingRegistry.full_reads
        for _ in range(5):
            manager.poll_once()
        assert CountingRegistry.full_reads == reads  # nothing changed: no per-model reads
        for change in (lambda: reg.set_label(MODEL, "stable", 1), lambda: reg.start_canary(MODEL, 1, 30),
                       lambda: reg.start_shadow(MODEL, 1), lambda: reg.stop_shadow(MODEL),
                       lambda: reg.abort_canary(MODEL), lambda: reg.remove_label(MODEL, "stable")):
            change()
            manager.poll_once()
            assert CountingRegistry.full_reads == reads + 1, "a change must trigger a full read"
            reads += 1
            manager.poll_once()
            assert CountingRegistry.full_reads == reads
        routes = manager.routes(MODEL)
        assert routes.label_versions == {} and routes.canary is None and routes.shadow is None
        reg.start_canary(MODEL, 1, 30)
        reg.promote(MODEL)
        assert manager.poll_once() == {MODEL: 1}
    finally:
        manager.close()
        reg.dispose()
