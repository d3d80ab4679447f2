"""Nearest items of an embedding model (``:similar``): exact top-k by cosine, in process and over HTTP.

One run:

* an embedding bundle of 100,000 items x 64 dims (random float32 vectors) is built, published
  (``ml.registry.publish_model``, file:// store, SQLite registry) and loaded by the service's
  manager exactly as ``airflow-ml serve`` loads it;
* in process: the whole request handler minus the socket (``serving.embeddings.similar_items``:
  parse, look-up, matrix-vector product, block-maximum top-k, answer) for 500 random query items, k=10,
  against two baselines on the same queries: the naive exact method (every cosine, then a full
  ``np.argsort``) and scikit-learn's ``NearestNeighbors(metric="cosine", algorithm="brute")``;
  the three must return the same items;
* over HTTP: a real ``airflow-ml serve`` process on a loopback port, one keep-alive client, 500
  sequential ``POST /v1/models/NAME:similar`` requests;
* the catalogue-size sweep (100k, 250k, 500k, 1M items x 64 dims): the p50 of one exact query, to
  name where exact search stops being fast enough (docs/serving.md).

Target (issue 13): ``:similar`` on 100,000 items x 64 dims p50 <= 5 ms. The machine may be shared:
``uptime`` is printed before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
N_ITEMS = 100_000
DIM = 64
K = 10
QUERIES = int(os.environ.get("BENCH_SIMILAR_QUERIES", "500"))
SWEEP = (100_000, 250_000, 500_000, 1_000_000)
MODEL = "bench_item2vec"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered random vectors (200 clusters), float32, like trained embeddings roughly are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim), dtype=np.float32)
    out = centres[rng.integers(200, size=n)]
    out += 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
    return out


def _model_dir(root: Path, vectors: np.ndarray) -> Path:
    d = root / "model"
    d.mkdir(parents=True)
    np.save(d / "vectors.npy", vectors)
    items = [f"item_{i}" for i in range(len(vectors))]
    (d / "vocabulary.json").write_text(json.dumps({"items": items, "counts": [1] * len(items)}))
    (d / "metadata.json").write_text(json.dumps({"framework": "word2vec", "task": "embedding"}))
    return d


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def _fmt(samples: list[float]) -> str:
    return f"p50 {_pct(samples, 50):7.3f} ms  p99 {_pct(samples, 99):7.3f} ms"


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from airflow_ml_provider.ml.bundle import build_bundle
    from airflow_ml_provider.ml.registry import ModelRegistry, publish_model
    from airflow_ml_provider.serving.embeddings import similar_items
    from airflow_ml_provider.serving.manager import ModelManager

    print(f"uptime before: {_uptime()}")
    work = Path(tempfile.mkdtemp(prefix="bench-similar-"))
    proc = None
    try:
        vectors = _vectors(N_ITEMS, DIM)
        build_bundle(work / "bundle", model_dir=_model_dir(work, vectors), framework="word2vec", kind="embedding")
        registry_url = f"sqlite:///{work / 'registry.db'}"
        reg = ModelRegistry(registry_url)
        reg.create_tables()
        publish_model(reg, str(work / "bundle"), (work / "store").as_uri(), MODEL, dag_id="bench", run_id="r1")
        manager = ModelManager(reg, [MODEL], cache_dir=work / "cache")
        started = time.perf_counter()
        manager.poll_once()
        model = manager.get(MODEL)
        print(f"{N_ITEMS:,} items x {DIM} dims: bundle loaded (fetch, checksums, normalise, warm-up) in "
              f"{time.perf_counter() - started:.2f} s")
        p = model.predictor
        rng = np.random.default_rng(1)
        queries = [p.items[i] for i in rng.integers(N_ITEMS, size=QUERIES)]
        bodies = [json.dumps({"item": q, "k": K}).encode() for q in queries]

        # ---- in process: ours (the request handler) vs the naive full sort vs sklearn brute force
        ours, ours_cpu, answers = [], [], []
        for body in bodies:
            c0, t0 = time.process_time(), time.perf_counter()
            answers.append([r["item"] for r in similar_items(model, body, 10_000)])
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.process_time() - c0)

        unit = p.unit
        naive, naive_answers = [], []
        for q in queries:
            t0 = time.perf_counter()
            row = p.index[q]
            sims = unit @ unit[row]
            order = np.argsort(-sims, kind="stable")
            naive_answers.append([p.items[i] for i in order[: K + 1] if i != row][:K])
            naive.append(time.perf_counter() - t0)
        same = sum(a == b for a, b in zip(answers, naive_answers))

        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=K + 1, metric="cosine", algorithm="brute").fit(p.vectors_)
        sk, sk_same = [], 0
        for q, mine in zip(queries[:200], answers[:200]):
            t0 = time.perf_counter()
            row = p.index[q]
            _, idx = nn.kneighbors(p.vectors_[row: row + 1])
            got = [p.items[i] for i in idx[0] if i != row][:K]
            sk.append(time.perf_counter() - t0)
            sk_same += got == mine

        print(f"\nin process, {QUERIES} queries, k={K} (parse + look-up + exact top-k + answer):")
        print(f"  ours  (matrix-vector + block top-k)    {_fmt(ours)}   (CPU time per query: p50 "
              f"{_pct(ours_cpu, 50):.2f} ms, all threads)")
        print(f"  naive (matrix-vector + full argsort)   {_fmt(naive)}   ratio p50 "
              f"{_pct(naive, 50) / _pct(ours, 50):.2f}x")
        print(f"  sklearn NearestNeighbors brute cosine  {_fmt(sk)}   ratio p50 "
              f"{_pct(sk, 50) / _pct(ours, 50):.2f}x   ({len(sk)} queries)")
        print(f"  same top-{K} as naive: {same}/{QUERIES}; as sklearn: {sk_same}/{len(sk)} "
              "(ties in float rounding may reorder equal scores)")
        manager.close()

        # ---- over HTTP: the real service
        import httpx

        port = _free_port()
        log = open(work / "serve.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_ml_provider.cli", "serve", "--registry", registry_url, "--models", MODEL,
             "--port", str(port), "--cache-dir", str(work / "serve-cache")],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow-ml serve exited: {(work / 'serve.log').read_text()[-2000:]}")
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("airflow-ml serve not ready in 120 s")
                time.sleep(0.2)
            url = f"/v1/models/{MODEL}:similar"
            for body in bodies[:20]:  # warm the connection
                client.post(url, content=body)
            http, http_same = [], 0
            cpu0 = _cpu_seconds(proc.pid)
            for body, mine in zip(bodies, answers):
                t0 = time.perf_counter()
                r = client.post(url, content=body, headers={"content-type": "application/json"})
                http.append(time.perf_counter() - t0)
                http_same += [s["item"] for s in r.json()["similar"]] == mine
            cpu1 = _cpu_seconds(proc.pid)
            health = []
            for _ in range(200):
                t0 = time.perf_counter()
                client.get("/healthz")
                health.append(time.perf_counter() - t0)
        log.close()
        print(f"\nover HTTP (airflow-ml serve, one keep-alive client, {QUERIES} sequential requests):")
        server_cpu = f"{(cpu1 - cpu0) / QUERIES * 1000:.2f} ms" if cpu0 is not None and cpu1 is not None else "n/a"
        print(f"  :similar  {_fmt(http)}   (same answers as in process: {http_same}/{QUERIES}; "
              f"server CPU per request {server_cpu})")
        print(f"  /healthz  {_fmt(health)}   (the HTTP round trip alone)")
        target = _pct(http, 50)
        print(f"  target p50 <= 5 ms on {N_ITEMS:,} x {DIM}: {'met' if target <= 5 else 'NOT met'} ({target:.2f} ms)")

        # ---- the catalogue-size sweep (in process, one exact query: product + argpartition)
        from airflow_ml_provider.ml.trainers.word2vec import Word2VecPredictor

        print(f"\nexact top-{K} by catalogue size ({DIM} dims, 100 queries each):")
        for n in SWEEP:
            vec = _vectors(n, DIM, seed=n)
            pred = Word2VecPredictor([f"i{i}" for i in range(n)], vec)
            rows = rng.integers(n, size=100)
            times, cpu = [], []
            for r in rows:
                c0, t0 = time.process_time(), time.perf_counter()
                pred.similar_to_vector(pred.vectors_[r], topn=K, exclude=[pred.items[r]])
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            print(f"  {n:>9,} items  {_fmt(times)}   CPU p50 {_pct(cpu, 50):6.2f} ms   "
                  f"({n * DIM / 1e6:.1f} M multiply-adds)")
            del vec, pred
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
        print(f"uptime after: {_uptime()}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
