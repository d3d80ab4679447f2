"""Benchmark: Airflow Variables from the dictionary table vs Airflow's own metastore Variables.

Everything is measured inside ONE real Airflow task (``airflow dags test``), in the same run:

* 1,000 ``Variable.get`` calls served by DictionaryTableBackend on the real MariaDB
  (configured through ``AIRFLOW__WORKERS__SECRETS_BACKEND[_KWARGS]``);
* the same 1,000 calls for a Variable that lives in Airflow's metastore (set by the task through
  the Task SDK, read back through the execution API, as every task does) -- the baseline;
* their ratio (target: the dictionary >= 100x faster);
* the time Airflow takes to build its secrets-backend chain (this backend included, its driver
  imported) -- in a real worker the supervisor does this before it forks the task process;
* the cold first lookup: the task's first ``Variable.get``, which connects to MariaDB and loads
  the dictionary in one query (target <= 20 ms); and a reload after the cache is cleared
  (connect + query), the median of 5.

Needs MariaDB on 127.0.0.1:3306 (root, empty password). Takes about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

MARIADB_HOST = os.environ.get("AIRFLOW_ML_TEST_MYSQL_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("AIRFLOW_ML_TEST_MYSQL_PORT", "3306"))
N_CALLS = 1000
N_KEYS = 500  # a realistic dictionary: the one query loads all of it

BENCH_DAG = """
import json, os, statistics, time
from airflow.sdk import dag, task, Variable

N = {n_calls}

@dag(dag_id="bench_dictionary", schedule=None, catchup=False)
def bench_dictionary():
    @task
    def measure():
        from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

        t0 = time.perf_counter()
        ensure_secrets_backend_loaded()   # a real worker's supervisor does this before forking the task
        chain = time.perf_counter() - t0

        t0 = time.perf_counter()
        first = Variable.get("bench_key")               # cold: connect + one query + Airflow's path
        cold = time.perf_counter() - t0

        t0 = time.perf_counter()
        for _ in range(N):
            value = Variable.get("bench_key")
        ours = time.perf_counter() - t0

        Variable.set("bench_metastore_key", "metastore-value")  # Airflow's own Variable
        Variable.get("bench_metastore_key")                     # warm the API client up
        t0 = time.perf_counter()
        for _ in range(N):
            meta = Variable.get("bench_metastore_key")
        baseline = time.perf_counter() - t0

        from airflow_ml_provider.secrets.dictionary import DictionaryTableBackend, _SNAPSHOTS
        loads = sum(s.loads for s in _SNAPSHOTS.values())
        first_load = sum(s.load_seconds for s in _SNAPSHOTS.values())
        reloads = []
        for _ in range(5):                                      # connect + query, backend built
            DictionaryTableBackend.clear_cache()
            t0 = time.perf_counter()
            Variable.get("bench_key")
            reloads.append(time.perf_counter() - t0)
        with open(os.environ["BENCH_OUT"], "w") as fh:
            json.dump({{"chain_s": chain, "cold_s": cold, "ours_s": ours, "baseline_s": baseline, "first": first,
                       "value": value, "meta": meta, "loads_before_reloads": loads, "first_load_s": first_load,
                       "reload_median_s": statistics.median(reloads)}}, fh)

    measure()

bench_dictionary()
"""


def _admin(sql: str) -> None:
    import pymysql

    conn = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _precompile() -> None:
    """Write the package's bytecode, as ``pip install`` does (this machine may set
    PYTHONDONTWRITEBYTECODE=1, which would make every cold import recompile the sources)."""
    import compileall

    import airflow_ml_provider

    compileall.compile_dir(str(Path(airflow_ml_provider.__file__).parent), quiet=1)


def main() -> None:
    from airflow_ml_provider.dictionary_store import DictionaryStore

    _precompile()
    venv_bin = Path(sys.executable).parent
    db = "bench_dict_" + uuid.uuid4().hex[:10]
    _admin(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    url = f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{db}"
    try:
        store = DictionaryStore(url)
        store.create_tables()
        entries = [(f"setting_{i:04d}", f"value-{i}", None) for i in range(N_KEYS - 1)]
        entries.append(("bench_key", "dictionary-value", "benchmark key"))
        store.import_entries(entries, updated_by="bench")
        store.dispose()

        with tempfile.TemporaryDirectory(prefix="bench_dictionary_") as tmp:
            home = Path(tmp) / "airflow_home"
            dags = Path(tmp) / "dags"
            dags.mkdir(parents=True)
            home.mkdir()
            (dags / "bench_dictionary.py").write_text(BENCH_DAG.format(n_calls=N_CALLS))
            out = Path(tmp) / "result.json"
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
            env.update(
                {
                    "AIRFLOW_HOME": str(home),
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
                    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                    "AIRFLOW__WORKERS__SECRETS_BACKEND": "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend",
                    "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
                        {"sql_alchemy_conn": url, "cache_ttl_seconds": 300}
                    ),
                    "BENCH_OUT": str(out),
                    "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                }
            )
            t0 = time.perf_counter()
            proc = subprocess.run(
                [str(venv_bin / "airflow"), "db", "migrate"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError("airflow db migrate failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"(metadata DB migrated in {time.perf_counter() - t0:.1f} s)", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [str(venv_bin / "airflow"), "dags", "test", "bench_dictionary"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError("the benchmark DAG failed:\n" + (proc.stdout + proc.stderr)[-6000:])
            print(f"(one `airflow dags test` run: {time.perf_counter() - t0:.1f} s)", flush=True)
            r = json.loads(out.read_text())
    finally:
        _admin(f"DROP DATABASE IF EXISTS `{db}`")

    assert r["first"] == r["value"] == "dictionary-value" and r["meta"] == "metastore-value", r
    assert r["loads_before_reloads"] == 1, r
    ours, base = r["ours_s"], r["baseline_s"]
    ratio = base / ours
    cold_ms = r["cold_s"] * 1000
    print(f"{N_CALLS:,} Variable.get calls inside one task ({N_KEYS} keys in the dictionary, MariaDB):")
    print(
        f"  dictionary backend        : {ours * 1000:9.2f} ms  ({ours / N_CALLS * 1e6:8.2f} us/call)  "
        f"[{r['loads_before_reloads']} query in total]"
    )
    print(f"  Airflow metastore (base)  : {base * 1000:9.2f} ms  ({base / N_CALLS * 1e3:8.3f} ms/call)")
    print(
        f"  ratio                     : {ratio:9.0f}x faster  (target >= 100x: {'met' if ratio >= 100 else 'NOT met'})"
    )
    print(
        f"secrets-backend chain built   : {r['chain_s'] * 1000:6.2f} ms  (Airflow builds its backends, this one "
        f"included, driver imported; in a worker the supervisor does it before forking the task process)"
    )
    print(
        f"cold first lookup in the task : {cold_ms:6.2f} ms  (first Variable.get: connect + one query + "
        f"Airflow's Variable.get path; target <= 20 ms: {'met' if cold_ms <= 20 else 'NOT met'})"
    )
    print(
        f"  of which the dictionary load: {r['first_load_s'] * 1000:6.2f} ms  (connect + one query of {N_KEYS} keys)"
    )
    print(
        f"reload after cache clear      : {r['reload_median_s'] * 1000:6.2f} ms  (Variable.get: connect + one query, median of 5)"
    )


if __name__ == "__main__":
    main()
