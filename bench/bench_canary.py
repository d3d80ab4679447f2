"""Canary traffic split of `airflow-ml serve` (issue 13): the share and the cost of routing.

One run, on loopback: two versions of a model are published to an SQLite registry, `airflow-ml
serve` (one worker, CPU 0) serves version 2; ``wrk`` (CPU 1, 8 connections) sends single-row
requests with a canary of version 1 at 10 % and at 50 % (`ModelRegistry.start_canary`, what
`airflow-ml models canary` writes). The share is read from the service's own per-version counters
(``version_requests_total{route="canary"|"stable"}``) before and after each run, over all the
requests of the run (at least 10,000; the run is repeated until there are).

Prints, per percentage: requests, canary share, its distance from P (target: within +-2 points over
10,000 requests); then req/s and p99 with a 50 % canary against the same service without one (the
baseline), in alternating runs: the cost of the split and of serving two versions at once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.bench_serving import _free_port, _load, _pin, _post, _wait, _wrk

REPO = Path(__file__).resolve().parent.parent
MIN_REQUESTS = 10_000


def _counts(base: str, model: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"canary": 0.0, "stable": 0.0}
    for line in text.splitlines():
        if line.startswith("airflow_ml_serving_version_requests_total{") and f'model="{model}"' in line:
            route = re.search(r'route="(\w+)"', line).group(1)
            if route in out:
                out[route] += float(line.rsplit(" ", 1)[1])
    return out


def _canary_percent(base: str, model: str) -> float | None:
    """The canary share the service applies now (None: no canary)."""
    with urllib.request.urlopen(f"{base}/v1/models/{model}", timeout=10) as r:
        doc = json.loads(r.read())
    return next((e["canary_percent"] for e in doc["model_version_status"] if "canary_percent" in e), None)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from airflow_ml_provider.ml.registry import ModelRegistry
    from tests.test_serving_support import MODEL, build_model, publish, row_dicts

    work = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    proc = None
    try:
        built = [build_model(work / f"m{i}", seed=i, rounds=30, n=2000) for i in range(2)]
        url = f"sqlite:///{work / 'registry.db'}"
        reg = ModelRegistry(url)
        reg.create_tables()
        for b in built:
            publish(reg, b.bundle_dir, work / "store")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [*_pin(0), sys.executable, "-m", "airflow_ml_provider.cli", "serve", "--registry", url, "--models", MODEL,
             "--port", str(port), "--poll-seconds", "0.5", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        _wait(f"{base}/readyz", proc)
        predict = f"{base}/v1/models/{MODEL}:predict"
        bodies = [json.dumps({"instances": [r]}).encode() for r in row_dicts(built[0].valid_frame)[:64]]
        assert _post(predict, bodies[0])["model_version"] == 2
        print(f"load average {_load()} on {os.cpu_count()} CPUs; server on CPU 0, wrk on CPU 1")

        def run(label: str) -> tuple[dict, dict]:
            before = _counts(base, MODEL)
            runs = []
            while True:
                runs.append(_wrk(predict, bodies, work, label))
                after = _counts(base, MODEL)
                n = sum(after.values()) - sum(before.values())
                if n >= MIN_REQUESTS:
                    break
            best = max(runs, key=lambda r: r["rps"])
            return best, {k: after[k] - before[k] for k in after}

        def set_canary(percent: float | None) -> None:
            state = reg.serving_state(MODEL)
            if percent is None:
                if state.canary is not None:
                    reg.abort_canary(MODEL)
            else:
                reg.start_canary(MODEL, 1, percent)
            deadline = time.monotonic() + 30
            while _canary_percent(base, MODEL) != percent:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not follow the canary change ({percent})")
                time.sleep(0.1)

        print(f"{'':28}{'requests':>10}{'canary %':>10}{'|diff|':>8}")
        for percent in (10.0, 50.0):
            set_canary(percent)
            _, counts = run(f"canary_{int(percent)}")
            n = counts["canary"] + counts["stable"]
            share = 100 * counts["canary"] / n
            ok = "ok" if abs(share - percent) <= 2.0 else "OUT OF BOUNDS"
            print(f"{f'canary v1 at {percent:g}%':28}{n:>10.0f}{share:>10.2f}{abs(share - percent):>8.2f}  {ok}")
        # The cost of the split: the same service with and without a 50 % canary, alternating
        # runs (best of each), so background load on a shared machine hits both alike.
        best: dict[str, dict] = {}
        for _ in range(3):
            for label, percent in (("no canary", None), ("canary 50%", 50.0)):
                set_canary(percent)
                r = _wrk(predict, bodies, work, label.replace(" ", "_").replace("%", ""))
                if label not in best or r["rps"] > best[label]["rps"]:
                    best[label] = r
        print(f"{'':28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}   (single-row, wrk best of 3)")
        for label in ("no canary", "canary 50%"):
            r = best[label]
            print(f"{label:28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['rps'] / best['no canary']['rps']:>7.2f}")
        reg.dispose()
        print(f"target: share within +-2 points of P over >= {MIN_REQUESTS} requests; load average now {_load()}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
