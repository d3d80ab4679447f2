"""The example DAG on a live LocalExecutor deployment vs ``airflow dags test``, in the same run.

A live run is what a user gets from `make airflow`: the DAG triggered through the REST API and
executed by the real scheduler, with each task in its own process started by a LocalExecutor worker.
``airflow dags test`` runs the same DAG in one process, with no scheduler; it is the baseline.

Both use the same data (``BENCH_LIVE_EVENTS`` play events, default 60,000, as `make demo`), the
same ML home and the same airflow.cfg settings (SQLite metadata, each in its own AIRFLOW_HOME so that
the scheduler never sees the baseline's run). Alternated, ``BENCH_LIVE_ROUNDS`` rounds (default 2),
median of each. Figures:

* live: wall time from ``POST /api/v2/dags/{id}/dagRuns`` to the run's ``success`` state as the API
  reports it (polled every 0.5 s), and the run's own start->end time as the scheduler recorded it;
* baseline: wall time of the ``airflow dags test`` command (start-up and DAG parse included).

Target: live <= 2x baseline.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "xgboost_recommendation"
EVENTS = int(os.environ.get("BENCH_LIVE_EVENTS", "60000"))
ROUNDS = int(os.environ.get("BENCH_LIVE_ROUNDS", "2"))


def _airflow_local():
    spec = importlib.util.spec_from_file_location("airflow_local", REPO / "scripts" / "airflow_local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("airflow_local", module)
    spec.loader.exec_module(module)
    return module


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def main() -> None:
    al = _airflow_local()
    with tempfile.TemporaryDirectory(prefix="bench_live_") as tmp:
        stack = al.LocalStack(Path(tmp) / "live", api_port=al.free_port(), serve_port=None)
        baseline = al.LocalStack(Path(tmp) / "dags_test", ml_home=stack.ml_home, api_port=al.free_port(),
                                 serve_port=None)
        print(f"setting up: {EVENTS} play events, SQLite metadata, LocalExecutor parallelism {stack.parallelism}",
              flush=True)
        try:
            stack.start(events=EVENTS, unpause=True)
            baseline.write_config()
            baseline.write_password()
            baseline.migrate()
            live, live_recorded, base = [], [], []
            for i in range(ROUNDS):
                t0 = time.perf_counter()
                proc = baseline.run("airflow", "dags", "test", DAG_ID, timeout=1800, check=False)
                base.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise RuntimeError(f"airflow dags test failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
                t0 = time.perf_counter()
                run_id = stack.trigger(DAG_ID)
                run = stack.wait_for(f"run {run_id}", lambda rid=run_id: _finished(stack, rid), timeout=1800,
                                     interval=0.5)
                live.append(time.perf_counter() - t0)
                if run["state"] != "success":
                    raise RuntimeError(f"live run {run_id} ended {run['state']}")
                live_recorded.append(_seconds(run["start_date"], run["end_date"]))
                print(f"  round {i + 1}: dags test {base[-1]:.1f} s | live {live[-1]:.1f} s "
                      f"(scheduler start->end {live_recorded[-1]:.1f} s)", flush=True)
        finally:
            stack.stop()
            baseline.stop()
    b, lv, rec = statistics.median(base), statistics.median(live), statistics.median(live_recorded)
    print(f"airflow dags test (baseline)        : {b:6.1f} s")
    print(f"live LocalExecutor, trigger->success: {lv:6.1f} s   ratio {lv / b:.2f}x  (target <= 2x)")
    print(f"live, run start->end (scheduler)    : {rec:6.1f} s   ratio {rec / b:.2f}x")


def _finished(stack, run_id: str):
    r = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
    r.raise_for_status()
    run = r.json()
    return run if run["state"] in ("success", "failed") else None


if __name__ == "__main__":
    main()
