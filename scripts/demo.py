"""`make demo`: run the example ML pipeline end to end with the real Airflow, on the embedded set-up.

1. an AIRFLOW_HOME under ``.demo/airflow`` with an SQLite metadata database (migrated once);
2. the synthetic audio-platform data set generated into ``.demo/ml/audio.db`` (SQLite);
3. ``airflow dags test xgboost_recommendation`` -- sample -> preprocess -> train -> evaluate -> publish;
4. the metrics, the registry row and the published bundle's location are printed.

Re-runnable: each run is a new DAG run and publishes the next model version (the gates compare
it with the version published before). ``--events N`` sets the data set size; ``--clean`` starts
from scratch. Exit code 0 only when the run succeeded and its model is in the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"
DAG_ID = "xgboost_recommendation"
MODEL = "audio_listen_30s"


def _env(airflow_home: Path, ml_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = Path(sys.executable).parent
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home}/airflow.db",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_ML_HOME": str(ml_home),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    for key in ("AIRFLOW_ML_STORAGE", "AIRFLOW_ML_REGISTRY", "AIRFLOW_ML_SOURCE_CONN_ID", "AIRFLOW_ML_MODEL_NAME"):
        env.pop(key, None)  # the demo is the embedded default set-up
    return env


def _step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="play events to generate (default 60000)")
    parser.add_argument("--clean", action="store_true", help="delete .demo/ first")
    args = parser.parse_args(argv)
    started = time.time()
    if args.clean and DEMO.exists():
        shutil.rmtree(DEMO)
    airflow_home = DEMO / "airflow"
    ml_home = DEMO / "ml"
    airflow_home.mkdir(parents=True, exist_ok=True)
    ml_home.mkdir(parents=True, exist_ok=True)
    env = _env(airflow_home, ml_home)
    airflow = str(Path(sys.executable).parent / "airflow")

    import airflow as _airflow_pkg  # noqa: F401 - only for its version

    stamp = airflow_home / ".migrated"
    version = getattr(_airflow_pkg, "__version__", "?")
    if not stamp.exists() or stamp.read_text() != version:
        _step(f"Airflow {version}: migrating the SQLite metadata database in {airflow_home}")
        proc = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            print("demo: `airflow db migrate` failed", file=sys.stderr)
            return 1
        stamp.write_text(version)

    _step(f"Generating the synthetic audio-platform data set ({args.events} play events) into {ml_home / 'audio.db'}")
    # the same command as `make airflow` and docker-compose's ml-data service (default: $AIRFLOW_ML_HOME/audio.db)
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow-ml"), "datasets", "audio",
                           "--events", str(args.events)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr.strip(), file=sys.stderr)
        return 1
    print("   " + proc.stdout.strip())

    _step(f"airflow dags test {DAG_ID}  (sample -> preprocess -> train -> evaluate -> publish)")
    t0 = time.time()
    proc = subprocess.run([airflow, "dags", "test", DAG_ID], env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    (DEMO / "last_run.log").write_text(output)
    run_seconds = time.time() - t0
    states = _task_states(airflow_home / "airflow.db")
    print(f"   finished in {run_seconds:.1f} s; task states: {states.get('states')}")
    for line in output.splitlines():
        if any(k in line for k in ("gate:", "Metrics on", "Published ", "Not publishing", "disabled for this run")):
            text = line.split("] ", 1)[-1] if line.startswith("20") else line
            print("   | " + text.split(" [airflow.", 1)[0].strip()[:160])
    if proc.returncode != 0 or any(s not in ("success", "skipped") for s in states.get("states", {}).values()):
        print(output[-6000:], file=sys.stderr)
        print(f"demo: the DAG run failed (full log: {DEMO / 'last_run.log'})", file=sys.stderr)
        return 1

    from airflow_ml_provider.ml.bundle import load_bundle
    from airflow_ml_provider.ml.registry import ModelRegistry

    registry_url = f"sqlite:///{ml_home / 'registry.db'}"
    reg = ModelRegistry(registry_url)
    record = reg.find_run(MODEL, DAG_ID, states["run_id"]) if states.get("run_id") else None
    if record is None:
        if states.get("states", {}).get("publish") == "skipped":
            print("\nThe model did not pass its gates, so it was not published (see the log above).")
            return 0
        print("demo: the run succeeded but its model is not in the registry", file=sys.stderr)
        return 1
    bundle = load_bundle(record.bundle_uri, verify=True)

    _step("Metrics (test split)")
    for key in ("auc", "ks", "logloss", "precision", "recall", "f1", "accuracy", "n_rows"):
        if key in record.metrics and record.metrics[key] is not None:
            value = record.metrics[key]
            print(f"   {key:<10} {value:.4f}" if isinstance(value, float) else f"   {key:<10} {value}")
    cm = record.metrics.get("confusion_matrix") or {k: record.metrics.get(k) for k in ("tp", "fp", "tn", "fn")}
    print(f"   confusion  {json.dumps(cm)}")

    _step("Registry row (ml_model_publish)")
    row = record.to_dict()
    row["metrics"] = f"<{len(record.metrics)} metrics>"
    for key, value in row.items():
        print(f"   {key:<11} {value}")

    _step("Published bundle")
    print(f"   location   {record.bundle_uri}")
    print(f"   checksum   {bundle.checksum} (verified)")
    files = sorted(p.relative_to(bundle.root).as_posix() for p in Path(bundle.root).rglob("*") if p.is_file())
    print(f"   files      {', '.join(files)}")
    versions = reg.versions(MODEL)
    print(f"\nModel {MODEL!r}: versions {versions}; this run published version {record.version}.")
    print(f"Demo done in {time.time() - started:.0f} s. Airflow home: {airflow_home}; logs: {DEMO / 'last_run.log'}")
    reg.dispose()
    return 0


def _task_states(db: Path) -> dict:
    import sqlite3

    if not db.exists():
        return {}
    con = sqlite3.connect(str(db))
    try:
        row = con.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)).fetchone()
        if not row:
            return {}
        states = dict(con.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                  (DAG_ID, row[0])).fetchall())
        return {"run_id": row[0], "states": states}
    finally:
        con.close()


if __name__ == "__main__":
    sys.exit(main())
