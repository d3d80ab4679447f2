"""Issue 13, points 4 and 5, against a real `airflow-ml serve` process (uvicorn on a loopback port).

* Early-stopped XGBoost: the bundle's ``model.ubj`` loaded with plain xgboost gives the service's
  scores bit for bit, and holds exactly ``best_iteration + 1`` rounds of trees.
* Slow clients: a silent connection, half a header, half a body and 40 trickling connections are
  closed within the deadline (+ a margin for a shared, busy machine); the server keeps serving.
* ``--max-connections``: one connection over the cap is answered 503 and closed.
* ``--max-instances`` before rows are built: a ~4 MB columnar body of 1,000,000 rows is refused
  quickly while another client's ``/healthz`` stays fast (the issue's 50 ms is measured in
  bench/bench_serving.py; here the bound is a generous 1 s and the figures are printed).
* The bearer scheme is case-insensitive; a wrong token or another scheme is refused.

The registry is SQLite (the point here is the HTTP layer; tests/test_serving_live.py runs the
service on MariaDB).
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_serving_live import Server as _Server
from tests.test_serving_support import MODEL, SPEC_YAML, make_frame, publish, row_dicts

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

TOKEN = "s3cret-token"


def Server(registry_url: str, workdir: Path, *extra: str) -> _Server:  # noqa: N802 - stands for the class
    """The serving tests' `airflow-ml serve` starter, with this file's token and a 1-s poll."""
    return _Server(registry_url, workdir, *extra, env={"AIRFLOW_ML_SERVE_TOKEN": TOKEN}, poll=1)
HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0
MARGIN = 4.0  # timer scheduling and process start-up on a shared, busy 2-core machine


def build_early_stopped(workdir: Path):
    """The serving tests' model, trained with early stopping so that rounds run past the best one."""
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.feature_table import Dataset
    from airflow_ml_provider.ml.features import FeatureSpec, fit
    from airflow_ml_provider.ml.trainers import get_trainer

    frame = make_frame(2000, 5)
    train_df, valid_df = frame.iloc[:1600].reset_index(drop=True), frame.iloc[1600:].reset_index(drop=True)
    fitted = fit(FeatureSpec.from_yaml(SPEC_YAML), train_df)
    names = list(fitted.feature_names)
    result = get_trainer("xgboost").train(
        Dataset(X=fitted.transform(train_df), y=train_df["listened_30s"].to_numpy(np.float32), feature_names=names),
        Dataset(X=fitted.transform(valid_df), y=valid_df["listened_30s"].to_numpy(np.float32), feature_names=names),
        {"num_boost_round": 300, "eta": 0.6, "max_depth": 5, "early_stopping_rounds": 4, "seed": 0, "nthread": 1,
         "log_every": 1000},
        workdir / "model", log=lambda *_: None)
    build_bundle(workdir / "bundle", model_dir=workdir / "model", fitted_spec=fitted, framework="xgboost")
    return result, fitted, valid_df


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from airflow_ml_provider.ml.registry import ModelRegistry

    work = tmp_path_factory.mktemp("hardening")
    result, fitted, valid_df = build_early_stopped(work)
    url = f"sqlite:///{work / 'registry.db'}"
    reg = ModelRegistry(url)
    reg.create_tables()
    record = publish(reg, work / "bundle", work / "store")
    server = Server(url, work, "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                    "--max-connections", "200")
    try:
        server.wait_ready(90)
        yield server, record, result, fitted, valid_df
    finally:
        server.stop()


def _post(server: _Server, body: bytes, auth: str | None = f"Bearer {TOKEN}", timeout: float = 30):
    import httpx

    headers = {"content-type": "application/json"}
    if auth is not None:
        headers["authorization"] = auth
    return httpx.post(f"{server.base}/v1/models/{MODEL}:predict", content=body, headers=headers, timeout=timeout)


# ------------------------------------------------------------------------------------------ point 4


def test_early_stopped_bundle_holds_exactly_the_served_trees(served, tmp_path):
    """Plain ``xgboost.Booster().load_model()`` of the *published* bundle's model.ubj + predict gives
    the service's answers bit for bit, and the file holds best_iteration + 1 trees."""
    import xgboost as xgb

    from airflow_ml_provider.ml import storage

    server, record, result, fitted, valid_df = served
    assert result.best_iteration < result.extra["num_boosted_rounds"] - 1  # trained past the best round
    local = tmp_path / "model.ubj"
    local.write_bytes(storage.read_bytes(storage.join(record.bundle_uri, "model", "model.ubj")))
    plain = xgb.Booster()
    plain.load_model(str(local))
    assert plain.num_boosted_rounds() == result.best_iteration + 1
    assert len(plain.get_dump()) == result.best_iteration + 1  # binary: one tree a round

    frame = valid_df.iloc[:200]
    rows = row_dicts(frame)
    r = _post(server, json.dumps({"instances": rows}).encode())
    assert r.status_code == 200, r.text
    service = np.asarray(r.json()["predictions"], dtype=np.float64).astype(np.float32)
    X = fitted.transform(frame)
    by_plain_xgboost = plain.predict(xgb.DMatrix(X, feature_names=plain.feature_names))
    assert np.array_equal(service, by_plain_xgboost)  # bit for bit
    assert np.array_equal(plain.inplace_predict(X), by_plain_xgboost)


# ------------------------------------------------------------------------------------------ point 5


def _closed_within(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until the server closes ``sock``; (seconds it took, what it sent). Fails after ``limit``."""
    started = time.monotonic()
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() - started < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started, data
        if not chunk:
            return time.monotonic() - started, data
        data += chunk
    raise AssertionError(f"connection still open after {limit:.1f} s (received {data[:200]!r})")


def _connect(server: _Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _request_head(length: int) -> bytes:
    return (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def test_silent_half_header_and_half_body_connections_are_closed(served):
    import httpx

    server = served[0]
    silent = _connect(server)
    half_header = _connect(server)
    half_header.sendall(_request_head(100)[:40])
    half_body = _connect(server)
    half_body.sendall(_request_head(100) + b'{"instances": [{"age"')
    results = {}
    threads = [threading.Thread(target=lambda k=k, s=s: results.__setitem__(k, _closed_within(s, 60)))
               for k, s in (("silent", silent), ("half header", half_header), ("half body", half_body))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for s in (silent, half_header, half_body):
        s.close()
    print({k: f"{v[0]:.2f} s" for k, v in results.items()})
    assert set(results) == {"silent", "half header", "half body"}, results
    # closed at the deadline: not before it (minus timer slack), well within deadline + margin
    for key, limit in (("silent", HEADER_TIMEOUT), ("half header", HEADER_TIMEOUT), ("half body", BODY_TIMEOUT)):
        seconds, data = results[key]
        assert limit - 0.3 <= seconds <= limit + MARGIN, (key, seconds)
    assert results["silent"][1] == b""  # a connection that sent nothing is just closed
    for key, flag in (("half header", b"--header-timeout"), ("half body", b"--body-timeout")):
        data = results[key][1]
        assert data.startswith(b"HTTP/1.1 408 "), (key, data)
        assert flag in data
    # the server still answers, and counted the three
    assert httpx.get(server.base + "/healthz", timeout=5).status_code == 200
    metrics = httpx.get(server.base + "/metrics", timeout=5, headers={"authorization": f"Bearer {TOKEN}"}).text
    counts = {line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in metrics.splitlines() if line.startswith("airflow_ml_serving_connections_closed_total{")}
    assert counts["header_timeout"] >= 2 and counts["body_timeout"] >= 1, counts


def test_forty_trickling_connections_are_all_closed(served):
    """20 trickle a header and 20 a body, one byte every 0.2 s: all closed within the deadline."""
    import httpx

    server = served[0]
    payload = json.dumps({"instances": [{"age": 30}] * 50}).encode()
    conns = []
    sel = selectors.DefaultSelector()
    for i in range(40):
        s = _connect(server)
        if i % 2:  # body trickler: full headers first
            s.sendall(_request_head(len(payload)))
            pending = payload
        else:
            pending = _request_head(len(payload)) + payload
        s.setblocking(False)
        conns.append({"sock": s, "pending": pending, "opened": time.monotonic(), "closed": None,
                      "kind": "body" if i % 2 else "header"})
        sel.register(s, selectors.EVENT_READ, conns[-1])
    limit = max(HEADER_TIMEOUT, BODY_TIMEOUT) + MARGIN
    started = time.monotonic()
    next_byte = started
    while time.monotonic() - started < limit + 5 and any(c["closed"] is None for c in conns):
        now = time.monotonic()
        if now >= next_byte:
            next_byte = now + 0.2
            for c in conns:
                if c["closed"] is None and c["pending"]:
                    try:
                        c["sock"].send(c["pending"][:1])
                        c["pending"] = c["pending"][1:]
                    except OSError:
                        pass  # closed by the server: the read side reports it
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            try:
                chunk = c["sock"].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                c["closed"] = time.monotonic() - c["opened"]
                sel.unregister(c["sock"])
    for c in conns:
        c["sock"].close()
    sel.close()
    closed = [c["closed"] for c in conns]
    print(f"40 tricklers closed after {min(x for x in closed if x is not None):.2f}-"
          f"{max((x for x in closed if x is not None), default=0):.2f} s")
    assert all(x is not None for x in closed), f"{sum(x is None for x in closed)} of 40 still open"
    for c in conns:
        deadline = HEADER_TIMEOUT if c["kind"] == "header" else BODY_TIMEOUT
        assert c["closed"] <= deadline + MARGIN, (c["kind"], c["closed"])
        assert c["pending"], "a trickler sent its whole request: the deadline did not cut it"
    assert httpx.get(server.base + "/healthz", timeout=5).status_code == 200


def test_keep_alive_connection_gets_a_fresh_header_deadline_per_request(served):
    """A kept-alive connection is not cut while it sends whole requests in time."""
    import httpx

    server = served[0]
    body = json.dumps({"instances": row_dicts(served[4].iloc[:1])}).encode()
    with httpx.Client(base_url=server.base, timeout=10,
                      headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}) as c:
        for _ in range(3):
            assert c.post(f"/v1/models/{MODEL}:predict", content=body).status_code == 200
            time.sleep(HEADER_TIMEOUT * 0.8)  # under the keep-alive (5 s) timeout; sums past the deadline
        assert c.post(f"/v1/models/{MODEL}:predict", content=body).status_code == 200


def test_over_limit_columnar_body_is_refused_before_rows_are_built(served):
    """~4 MB of ``"inputs"`` with 1,000,000 rows (over --max-instances 10000): refused quickly, while
    another client's /healthz stays fast."""
    import httpx

    server = served[0]
    body = json.dumps({"inputs": {"avg_listen_sec": [1.5] * 1_000_000}}, separators=(",", ":")).encode()
    assert 3_500_000 < len(body) <= 4 * 1024 * 1024
    stop = threading.Event()
    health: list[float] = []

    def probe() -> None:
        with httpx.Client(base_url=server.base, timeout=10) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                health.append(time.perf_counter() - t0)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        time.sleep(0.3)
        refusals = []
        for _ in range(3):
            with _connect(server) as s:
                s.sendall(_request_head(len(body)) + body)
                t0 = time.perf_counter()  # the whole body is in the server's hands (loopback)
                s.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                refusals.append(time.perf_counter() - t0)
            assert data.startswith(b"HTTP/1.1 400 "), data[:300]
            assert b"1000000 instances is over the limit of 10000 per request (--max-instances)" in data
        time.sleep(0.3)
    finally:
        stop.set()
        prober.join(30)
    print(f"refused in {min(refusals) * 1e3:.1f}-{max(refusals) * 1e3:.1f} ms; /healthz max "
          f"{max(health) * 1e3:.1f} ms over {len(health)} probes")
    assert max(refusals) < 1.0
    assert max(health) < 1.0


def test_max_instances_also_counts_instances_lists(served):
    server = served[0]
    r = _post(server, json.dumps({"instances": [{}] * 10_001}).encode())
    assert r.status_code == 400 and "10001 instances is over the limit of 10000" in r.json()["error"]


@pytest.mark.parametrize("auth,status", [
    (f"bearer {TOKEN}", 200), (f"BEARER {TOKEN}", 200), (f"Bearer   {TOKEN}", 200), (f"Bearer {TOKEN}", 200),
    ("bearer wrong-token", 401), (f"Basic {TOKEN}", 401), (TOKEN, 401), (None, 401),
])
def test_bearer_scheme_is_case_insensitive(served, auth, status):
    server, _, _, _, valid_df = served
    r = _post(server, json.dumps({"instances": row_dicts(valid_df.iloc[:1])}).encode(), auth=auth)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "token" in r.json()["error"] or "Bearer scheme" in r.json()["error"]


def test_connections_over_the_cap_are_refused(tmp_path, served):
    """--max-connections 4: four idle connections fill it; the fifth gets 503 and is closed; once
    they go, requests are served again."""
    import httpx

    from airflow_ml_provider.ml.registry import ModelRegistry

    _, record, _, _, valid_df = served
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = ModelRegistry(url)
    reg.create_tables()
    reg.publish(name=MODEL, version=1, bundle_uri=record.bundle_uri, framework="xgboost", checksum=record.checksum)
    server = Server(url, tmp_path, "--max-connections", "4", "--header-timeout", "60")
    try:
        server.wait_ready(90)
        held = [_connect(server) for _ in range(4)]
        time.sleep(0.3)  # the server has accepted them
        extra = _connect(server)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        seconds, data = _closed_within(extra, 10)
        extra.close()
        # 503 naming the flag (or, if the kernel reset the connection before it was read, nothing)
        assert data == b"" or (data.startswith(b"HTTP/1.1 503 ") and b"--max-connections 4" in data), data
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx.get(server.base + "/healthz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not served again after the held connections closed"
            time.sleep(0.1)
        body = json.dumps({"instances": row_dicts(valid_df.iloc[:1])}).encode()
        assert _post(server, body).status_code == 200
        assert "--max-connections" in server.log()  # logged once, at WARNING
    finally:
        server.stop()


def test_big_bodies_are_counted_before_parsing_in_process():
    """Bodies over PRECOUNT_BYTES are counted by simdjson first: the same answers as the parse path."""
    from airflow_ml_provider.serving.app import PRECOUNT_BYTES, ServingApp, _count_instances
    from airflow_ml_provider.serving.metrics import ServingMetrics

    over = json.dumps({"instances": [{"age": 30, "city": "x" * 8}] * 20_001}).encode()
    assert len(over) > PRECOUNT_BYTES and _count_instances(over) == 20_001
    columns = json.dumps({"inputs": {"age": [1.25] * 60_000, "city": ["beijing"] * 60_000}}).encode()
    assert _count_instances(columns) == 60_000
    for odd in (b'{"instances": 3}' + b" " * PRECOUNT_BYTES, b"[" + b"1," * PRECOUNT_BYTES + b"1]",
                b'{"inputs": {"a": [1, 2' + b" " * PRECOUNT_BYTES, b"\xff" * (PRECOUNT_BYTES + 1),
                json.dumps({"instances": [{"id": 2**70}] * 30_000}).encode()):
        assert _count_instances(odd) in (None, 30_000)  # unsure -> None; the parser decides

    from airflow_ml_provider.serving.errors import BadRequest

    class Manager:
        models = ("m",)
        metrics = ServingMetrics(["m"])

    app = ServingApp(Manager(), manage_lifecycle=False, max_instances=10_000)
    for body, n in ((over, 20_001), (columns, 60_000)):
        with pytest.raises(BadRequest) as err:
            app._parse_instances(body)
        assert err.value.message == f"{n} instances is over the limit of 10000 per request (--max-instances)"
    # unsure bodies still get the parser's own message
    with pytest.raises(BadRequest, match="^malformed JSON"):
        app._parse_instances(b'{"inputs": {"a": [1, 2' + b" " * PRECOUNT_BYTES)
    # a big body within the limit is parsed as usual
    rows = app._parse_instances(json.dumps({"instances": [{"age": 30, "city": "x" * 40}] * 6000}).encode())
    assert len(rows) == 6000 and rows[0] == {"age": 30, "city": "x" * 40}
