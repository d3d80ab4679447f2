"""The real service (`airflow-ml serve` -> uvicorn, in a subprocess on a loopback port) under load.

Swap under load: client threads keep a constant load while five new versions are published, one of
them corrupt. Then a rollback (through the registry, as `airflow-ml models rollback` does) must be
served within one poll. Registry: the real MariaDB (a fresh database per test).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from airflow_ml_provider.ml.registry import ModelRegistry
from tests.test_serving_support import MODEL, build_model, publish, row_dicts

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow, pytest.mark.mariadb]

REPO = Path(__file__).resolve().parent.parent
POLL = 0.5
SLACK = 1.0  # request latency and thread scheduling on a shared, busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`airflow-ml serve` in a subprocess (the serving tests' one starter); stopped, by PID, in ``stop``."""

    def __init__(self, registry_url: str, workdir: Path, *extra: str, env: dict | None = None,
                 poll: float = POLL):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_ml_provider.cli", "serve", "--registry", registry_url, "--models", MODEL,
             "--port", str(self.port), "--poll-seconds", str(poll), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log()}"
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout} s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _scores(built, frame) -> list[float]:
    """The offline scores of one build for the test rows (the training code path)."""
    return built.predictor.predict(built.fitted.transform(frame)).tolist()


def test_swap_under_load_five_versions_one_corrupt_then_rollback(tmp_path, mariadb_url):
    import httpx

    built = [build_model(tmp_path / f"m{i}", seed=i, rounds=8 + 2 * i, n=800) for i in range(6)]
    frame = built[0].valid_frame.iloc[:4]
    rows = row_dicts(frame)
    body = json.dumps({"instances": rows}).encode()
    store = tmp_path / "store"
    reg = ModelRegistry(mariadb_url)
    reg.create_tables()

    published: dict[int, float] = {}  # version -> commit time (monotonic)
    expected: dict[int, list[float]] = {}  # version -> its scores for `rows` (offline)
    rec = publish(reg, built[0].bundle_dir, store)
    published[rec.version] = time.monotonic()
    expected[rec.version] = _scores(built[0], frame)

    server = Server(mariadb_url, tmp_path, "--keep-versions", "6", "--max-body-bytes", "3000",
                    env={"AIRFLOW_ML_SERVE_TOKEN": "tok"})
    auth = {"authorization": "Bearer tok"}
    try:
        server.wait_ready()
        stop = threading.Event()
        results: list[tuple[float, float, int, int | None, list | None]] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(base_url=server.base, timeout=10, headers=auth) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        r = c.post(f"/v1/models/{MODEL}:predict", content=body,
                                   headers={"content-type": "application/json"})
                        status = r.status_code
                        data = r.json() if status == 200 else None
                    except httpx.HTTPError as exc:  # a dropped connection is a failed request
                        status, data = -1, {"error": repr(exc)}
                    t1 = time.monotonic()
                    with lock:
                        results.append((t0, t1, status, data and data.get("model_version"),
                                        data and data.get("predictions")))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        corrupt_version = None
        for i in range(1, 6):
            corrupt = i == 3
            rec = publish(reg, built[i].bundle_dir, store, corrupt=corrupt)
            published[rec.version] = time.monotonic()
            if corrupt:
                corrupt_version = rec.version
            else:
                expected[rec.version] = _scores(built[i], frame)
            time.sleep(1.5)
        # `airflow-ml models rollback` to version 2 (still loaded): must be served within one poll.
        from airflow_ml_provider.cli import main as cli

        assert cli(["models", "rollback", MODEL, "--to", "2", "--registry", mariadb_url, "--reason", "test"]) == 0
        rollback_at = time.monotonic()
        time.sleep(POLL + SLACK + 1.5)  # then 1.5 s of requests that must all get version 2
        stop.set()
        for t in threads:
            t.join(15)

        status_doc = httpx.get(f"{server.base}/v1/models/{MODEL}", headers=auth).json()["model_version_status"]
        metrics = httpx.get(f"{server.base}/metrics", headers=auth).text
        _check_limits_and_auth(server, row_dicts(built[0].valid_frame), auth)
        health = httpx.get(f"{server.base}/healthz")
    finally:
        server.stop()
    log = server.log_path.read_text()

    assert len(results) > 200, f"too little load: {len(results)} requests"
    failed = [r for r in results if r[2] != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}\n{log[-3000:]}"

    good = sorted(expected)
    assert corrupt_version == 4 and good == [1, 2, 3, 5, 6]
    served_versions = {r[3] for r in results}
    assert corrupt_version not in served_versions
    assert served_versions == set(good), served_versions

    load_seconds = {int(e["version"]): e.get("load_seconds") or 0.0 for e in status_doc}
    for t0, t1, _, version, preds in results:
        # The scores are that version's offline scores: the response really came from it.
        assert np.array_equal(np.float32(preds), np.float32(expected[version]))
        # Valid at that moment: published before the answer, and not yet superseded when the
        # request started (allowing the service its poll interval + load time to notice).
        assert published[version] <= t1
        later = [v for v in good if published[v] > published[version]]
        if later and t1 < rollback_at:
            nxt = min(later, key=lambda v: published[v])
            assert t0 <= published[nxt] + POLL + load_seconds.get(nxt, 0) + SLACK, (version, nxt)
    # Each good version is served within poll interval + its load time.
    for v in good[1:]:
        first = min(t1 for _, t1, _, ver, _ in results if ver == v and t1 >= published[v])
        assert first - published[v] <= POLL + load_seconds[v] + SLACK, (v, first - published[v], load_seconds[v])
    # The rollback to the cached version 2: within one poll (no load needed).
    after = [t1 for t0, t1, _, ver, _ in results if t0 > rollback_at + POLL + SLACK]
    assert after and all(ver == 2 for t0, _, _, ver, _ in results if t0 > rollback_at + POLL + SLACK)
    first_rb = min(t1 for t0, t1, _, ver, _ in results if ver == 2 and t0 >= rollback_at)
    assert first_rb - rollback_at <= POLL + SLACK

    # The corrupt version: an ERROR log line, a load failure metric, END in the status.
    assert f"model '{MODEL}' version 4" in log and "checksum mismatch" in log
    assert f'airflow_ml_serving_load_failures_total{{model="{MODEL}"}} 1.0' in metrics
    entry = next(e for e in status_doc if e["version"] == "4")
    assert entry["state"] == "END" and "checksum" in entry["status"]["error_message"]
    assert health.status_code == 200


def _check_limits_and_auth(server: Server, rows: list[dict], auth: dict) -> None:
    """Over a real socket: the token from the environment, 413 on Content-Length and on a chunked body."""
    import httpx

    predict = f"{server.base}/v1/models/{MODEL}:predict"
    r = httpx.post(predict, json={"instances": rows[:1]})
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert httpx.post(predict, json={"instances": rows[:1]}, headers={"authorization": "Bearer no"}).status_code == 401
    r = httpx.post(predict, json={"instances": rows[:2]}, headers=auth)
    assert r.status_code == 200 and r.json()["model_version"] == 2
    r = httpx.post(predict, json={"instances": rows[:50]}, headers=auth)
    assert r.status_code == 413 and "limit of 3000 bytes" in r.json()["error"]

    def chunks():
        data = json.dumps({"instances": rows[:50]}).encode()
        for i in range(0, len(data), 500):
            yield data[i:i + 500]

    r = httpx.post(predict, content=chunks(), headers=auth)  # Transfer-Encoding: chunked
    assert r.status_code == 413 and "limit of 3000 bytes" in r.json()["error"]
    r = httpx.post(predict, content=b'{"instances": [', headers=auth)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    assert httpx.get(f"{server.base}/metrics").status_code == 401
    assert httpx.get(f"{server.base}/readyz").status_code == 200  # probes need no token
