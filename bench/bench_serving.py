"""Online model service throughput: `airflow-ml serve` vs a bare FastAPI + XGBoost endpoint.

One run, everything on loopback:

* builds the example model (the example DAG's feature spec on the synthetic audio data set) through the core APIs (feature spec fit, xgboost trainer, bundle,
  registry) and publishes it to a file:// store with an SQLite registry;
* starts ``airflow-ml serve`` (uvicorn, one worker) pinned to CPU 0;
* starts the baseline -- a plain FastAPI endpoint calling ``Booster.inplace_predict`` on
  *pre-transformed* float features (no feature transform, no registry, no validation) -- also
  pinned to CPU 0, one at a time;
* drives each with ``wrk`` pinned to CPU 1: single-row requests (req/s, p50, p99), then 100-row
  batches (rows/s);
* a heavy request (issue 13): a ~4 MB columnar body of 1,000,000 rows, over ``--max-instances``,
  sent while another client polls ``/healthz``: the time to the refusal and the probe's worst
  latency;
* where a request spends its time, in process: parse, transform, predict, serialise (1 and 100 rows).

Prints ours, the baseline and the ratio. Targets (issue 13): single-row throughput >= 1.3x the
baseline and p99 <= the baseline's p99, while also transforming the raw features; 100-row batches
>= 1.2x the baseline's rows/s; the over-limit 4 MB body refused in under 50 ms. The machine may be
shared: the load average is printed before and after.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DURATION = int(os.environ.get("BENCH_SERVING_SECONDS", "5"))
ROUNDS_SINGLE = 3
ROUNDS_BATCH = 2
CONNECTIONS = 8
N_BODIES = 64

BASELINE_APP = '''
import sys
import numpy as np
import uvicorn
import xgboost as xgb
from fastapi import FastAPI, Request

booster = xgb.Booster()
booster.load_model(sys.argv[2])
app = FastAPI()


@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    X = np.asarray(body["instances"], dtype=np.float32)
    return {"predictions": booster.inplace_predict(X).tolist()}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''

WRK_SCRIPT = '''
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
'''


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def _wait(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not become ready in {timeout:.0f} s")


def _post(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, bodies: list[bytes], workdir: Path, label: str) -> dict:
    body_file = workdir / f"{label}.bodies"
    body_file.write_bytes(b"\n".join(bodies) + b"\n")
    script = workdir / f"{label}.lua"
    script.write_text(WRK_SCRIPT % body_file)
    cmd = [*_pin(1), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=DURATION + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        lat[pct] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"], "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else ""}


def _heavy_request(port: int, model: str, rounds: int = 5) -> dict:
    """The over-limit 4 MB columnar body, while a second client probes /healthz every ~5 ms."""
    body = json.dumps({"inputs": {"avg_listen_sec": [1.5] * 1_000_000}}, separators=(",", ":")).encode()
    head = (f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    stop = threading.Event()
    probes: list[float] = []

    def probe() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            while not stop.is_set():
                t0 = time.perf_counter()
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
                data = b""
                while not data.endswith(b"}"):
                    data += s.recv(4096)
                probes.append(time.perf_counter() - t0)
                time.sleep(0.005)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    refusals = []
    status = b""
    try:
        time.sleep(0.2)
        for _ in range(rounds):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head + body)
                t0 = time.perf_counter()  # the last byte is on the loopback; the server reads it
                data = b""
                while b"}" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                refusals.append(time.perf_counter() - t0)
                status = data.split(b"\r\n", 1)[0]
            time.sleep(0.2)
    finally:
        stop.set()
        prober.join(10)
    return {"bytes": len(body), "status": status.decode(errors="replace"),
            "refusal_ms": [r * 1e3 for r in refusals], "probe_max_ms": max(probes) * 1e3 if probes else float("nan"),
            "probe_p50_ms": statistics.median(probes) * 1e3 if probes else float("nan"), "probes": len(probes)}


def _stages(built, rows: list[dict]) -> list[tuple[str, float, float]]:
    """Microseconds per stage of the request path (in process), for 1 and 100 rows."""
    from airflow_ml_provider.ml.trainers import load_predictor
    from airflow_ml_provider.serving.app import _dumps_predictions, _has_long_digit_run, _loads
    from airflow_ml_provider.serving.manager import LoadedModel

    from airflow_ml_provider.serving.manager import set_predict_threads

    predictor = load_predictor("xgboost", built.bundle_dir / "model")
    set_predict_threads(predictor, 1)  # as the service does (--predict-threads 1)
    model = LoadedModel(name="m", version=1, uri="", spec=built.fitted, predictor=predictor, framework="xgboost")

    def per_call(fn, n: int) -> float:
        fn()
        best = float("inf")
        for _ in range(3):  # best of 3: the least disturbed by other processes
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6

    out = []
    bodies = {1: json.dumps({"instances": rows[:1]}).encode(), 100: json.dumps({"instances": rows[:100]}).encode()}
    parsed = {k: _loads(b)["instances"] for k, b in bodies.items()}
    X = {k: model.transform(v) for k, v in parsed.items()}
    y = {k: model.predict_matrix(v) for k, v in X.items()}
    for stage, fn in (
        ("long-digit scan", lambda k: _has_long_digit_run(bodies[k])),
        ("JSON parse (incl. scan)", lambda k: _loads(bodies[k])),
        ("transform (fitted spec)", lambda k: model.transform(parsed[k])),
        ("predict (xgboost)", lambda k: model.predict_matrix(X[k])),
        ("predict, library inplace_predict", lambda k: predictor._library_predict(X[k])),
        ("serialise", lambda k: _dumps_predictions(y[k].tolist(), 1)),
    ):
        out.append((stage, per_call(lambda fn=fn: fn(1), 2000), per_call(lambda fn=fn: fn(100), 300)))
    return out


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    sys.path.insert(0, str(REPO))
    from airflow_ml_provider.ml.registry import ModelRegistry
    from tests.test_serving_support import EXAMPLE_MODEL as MODEL
    from tests.test_serving_support import build_example_model, publish, row_dicts

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    ours = base = None
    try:
        t0 = time.perf_counter()
        built = build_example_model(work / "m1", events=10_000, rounds=100)
        registry_url = f"sqlite:///{work / 'registry.db'}"
        reg = ModelRegistry(registry_url)
        reg.create_tables()
        publish(reg, built.bundle_dir, work / "store", name=MODEL)
        rows = row_dicts(built.valid_frame)
        X = built.valid_X
        print(f"example model (dags/specs/audio_recommendation.yaml): xgboost, 100 rounds, depth 6, "
              f"{X.shape[1]} features from {len(built.fitted.input_columns)} raw columns "
              f"(built in {time.perf_counter() - t0:.1f} s); load average {_load()} "
              f"on {os.cpu_count()} CPUs")

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        port = _free_port()
        ours = subprocess.Popen(
            [*_pin(0), sys.executable, "-m", "airflow_ml_provider.cli", "serve", "--registry", registry_url,
             "--models", MODEL, "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        bport = _free_port()
        (work / "baseline.py").write_text(textwrap.dedent(BASELINE_APP))
        model_file = next(p for p in (work / "m1" / "model").iterdir() if p.name.startswith("model."))
        base = subprocess.Popen([*_pin(0), sys.executable, str(work / "baseline.py"), str(bport), str(model_file)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        our_url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
        base_url = f"http://127.0.0.1:{bport}/predict"
        _wait(f"http://127.0.0.1:{port}/readyz", ours)
        _wait(f"http://127.0.0.1:{bport}/docs", base)

        single_ours = [json.dumps({"instances": [r]}).encode() for r in rows[:N_BODIES]]
        single_base = [json.dumps({"instances": [X[i].tolist()]}).encode() for i in range(N_BODIES)]
        n_rows = min(len(rows), len(X))
        batches = [[(i * 100 + j) % n_rows for j in range(100)] for i in range(N_BODIES)]
        batch_ours = [json.dumps({"instances": [rows[k] for k in idx]}).encode() for idx in batches]
        batch_base = [json.dumps({"instances": X[idx].tolist()}).encode() for idx in batches]
        # Both answer the same scores for the same rows (ours from raw features).
        a = _post(our_url, batch_ours[0])["predictions"]
        b = _post(base_url, batch_base[0])["predictions"]
        assert len(a) == len(b) == 100 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6, "servers disagree"

        results: dict[str, dict] = {}
        # Alternate short runs and keep each server's best: background load on a shared machine
        # then hits both alike, and a burst of it does not decide the ratio.
        plan = [("base_single", base_url, single_base), ("ours_single", our_url, single_ours)] * ROUNDS_SINGLE
        plan += [("base_batch", base_url, batch_base), ("ours_batch", our_url, batch_ours)] * ROUNDS_BATCH
        for label, url, bodies in plan:
            r = _wrk(url, bodies, work, label)
            if label not in results or r["rps"] > results[label]["rps"]:
                results[label] = {**r, "non2xx": r["non2xx"] + results.get(label, {}).get("non2xx", 0)}
        so, sb = results["ours_single"], results["base_single"]
        bo, bb = results["ours_batch"], results["base_batch"]
        print(f"wrk: 1 thread, {CONNECTIONS} connections, best of {ROUNDS_SINGLE} (single) / {ROUNDS_BATCH} "
              f"(batch) alternating {DURATION}-s runs; servers on CPU 0, wrk on CPU 1; "
              f"load average now {_load()}")
        print(f"{'':34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'rows/s':>10}")
        for name, r, n in (("airflow-ml serve, 1 row (raw)", so, 1), ("baseline FastAPI+xgboost, 1 row", sb, 1),
                           ("airflow-ml serve, 100 rows", bo, 100), ("baseline, 100 rows", bb, 100)):
            print(f"{name:34}{r['rps']:10.0f}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}{r['rps'] * n:10.0f}"
                  + (f"  non-2xx: {r['non2xx']}" if r["non2xx"] else "") + (f"  {r['socket_errors']}" if r["socket_errors"] else ""))
        ratio = so["rps"] / sb["rps"]
        print(f"single-row throughput ratio ours/baseline: {ratio:.2f}x (target >= 1.30x) "
              f"{'OK' if ratio >= 1.3 else 'BELOW TARGET'}")
        print(f"single-row p99 ours/baseline: {so['p99_ms']:.2f} / {sb['p99_ms']:.2f} ms (target: ours <= baseline) "
              f"{'OK' if so['p99_ms'] <= sb['p99_ms'] else 'BELOW TARGET'}")
        rows_s = bo["rps"] * 100
        batch_ratio = rows_s / (bb["rps"] * 100)
        print(f"batch throughput: {rows_s:,.0f} rows/s with 100-row batches; baseline {bb['rps'] * 100:,.0f} "
              f"rows/s; ratio {batch_ratio:.2f}x (target >= 1.20x) {'OK' if batch_ratio >= 1.2 else 'BELOW TARGET'}")
        if so["non2xx"] or bo["non2xx"]:
            raise RuntimeError("the service answered non-2xx responses under load")

        heavy = _heavy_request(port, MODEL)
        refusal = statistics.median(heavy["refusal_ms"])
        print(f"heavy request: {heavy['bytes'] / 1e6:.1f} MB columnar body of 1,000,000 rows over --max-instances "
              f"-> {heavy['status']!r}; refused in {refusal:.1f} ms (median of {len(heavy['refusal_ms'])}; "
              f"{', '.join(f'{r:.1f}' for r in heavy['refusal_ms'])}) (target < 50 ms) "
              f"{'OK' if refusal < 50 else 'BELOW TARGET'}; another client's /healthz meanwhile: p50 "
              f"{heavy['probe_p50_ms']:.2f} ms, max {heavy['probe_max_ms']:.1f} ms over {heavy['probes']} probes")
        if not heavy["status"].startswith("HTTP/1.1 400"):
            raise RuntimeError(f"the over-limit body was not refused with 400: {heavy['status']!r}")

        print("where a request spends its time (in process, best of 3; us per request):")
        print(f"  {'stage':36}{'1 row':>10}{'100 rows':>10}")
        for stage, one, hundred in _stages(built, rows):
            print(f"  {stage:36}{one:10.1f}{hundred:10.1f}")
        print(f"load average at the end: {_load()} (the machine may be shared with other work)")
    finally:
        _stop(ours)
        _stop(base)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
