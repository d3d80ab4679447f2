"""End to end with the real Airflow 3 (``airflow dags test``) and the real MariaDB.

* A DAG renders ``{{ var.value.x }}`` / ``{{ var.json.x }}`` and calls ``Variable.get`` in a task, all
  served from the dictionary (configured with AIRFLOW__WORKERS__SECRETS_BACKEND[_KWARGS]); the value
  is changed through the ``airflow-ml`` CLI and the next run sees it without any restart.
* Fault: a TCP proxy between the backend and MariaDB is cut while a task runs (configured with
  AIRFLOW__SECRETS__BACKEND[_KWARGS], which workers fall back to): the task keeps the old value
  with a warning while the grace lasts, then ``Variable.get`` raises an error naming the key and
  the database, password masked -- it is not swallowed into "variable not found".
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from airflow_ml_provider.dictionary_store import DictionaryStore
from tests.fixtures.airflow import VENV_BIN
from tests.fixtures.mariadb import MARIADB_HOST, MARIADB_PORT
from tests.tcp_proxy import TcpProxy
from tests.test_dictionary_backend import mariadb_user_url  # noqa: F401 - a fixture

BACKEND = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"

READ_DAG = """
import json, logging, os
from airflow.sdk import dag, task, Variable

@dag(dag_id="ml_dictionary_e2e", schedule=None, catchup=False)
def ml_dictionary_e2e():
    @task
    def read(rendered, rendered_json):
        from airflow.sdk.log import redact
        from airflow_ml_provider.secrets import dictionary as backend_module

        got = [Variable.get("min_auc") for _ in range(200)]
        secret = Variable.get("db_password")
        airflow_own_secret = Variable.get("api_token")       # Airflow's own: an env-var Variable
        doc = {
            "rendered": rendered,
            "rendered_json": rendered_json,
            "get": got[-1],
            "json": Variable.get("model_cfg", deserialize_json=True),
            "env_only": Variable.get("only_in_env"),        # not in the dictionary: env var
            "default": Variable.get("nowhere", default="fallback"),
            "loads": sum(s.loads for s in backend_module._SNAPSHOTS.values()),
            "secret_len": len(secret),
            "log_line_dictionary_secret": redact(f"connecting with {secret}"),
            "log_line_airflow_secret": redact(f"connecting with {airflow_own_secret}"),
            "log_line_plain": redact("switch is " + Variable.get("feature_switch")),
        }
        with open(os.environ["ML_DICT_OUT"], "w") as fh:
            json.dump(doc, fh)
        # what a careless task writes to its log
        print(f"dictionary secret: connecting with {secret}")
        logging.getLogger("airflow.task").info("airflow env-var secret: %s", airflow_own_secret)
        print("not sensitive: switch is " + Variable.get("feature_switch"))

    read("{{ var.value.min_auc }}", "{{ var.json.model_cfg.threshold }}")

ml_dictionary_e2e()
"""

# Runs one task instance the way a real worker does: supervise_task() forks a task process that
# re-parses the DAG and talks to the execution API (here Airflow's in-process API on the metadata
# DB); the supervisor writes the task log file, masked by Airflow's secrets masker.
SUPERVISE = """
import sys
from airflow.executors.workloads.task import ExecuteTask
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor, supervise_task
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

dag_id, task_id, log_path = sys.argv[1:4]
with create_session() as session:
    run = session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id.desc()).first()
    ti = session.query(TaskInstance).filter_by(dag_id=dag_id, task_id=task_id, run_id=run.run_id).one()
    ti.state = TaskInstanceState.QUEUED
    session.flush()
    workload = ExecuteTask.make(ti)
client = InProcessTestSupervisor._api_client(True)
rc = supervise_task(
    ti=workload.ti, bundle_info=workload.bundle_info, dag_rel_path=workload.dag_rel_path,
    token=workload.token, client=client, log_path=log_path,
)
print("SUPERVISED_RC", rc)
sys.exit(rc)
"""

FAULT_DAG = """
import json, os, time
from pathlib import Path
from airflow.sdk import dag, task, Variable

@dag(dag_id="ml_dictionary_fault", schedule=None, catchup=False)
def ml_dictionary_fault():
    @task
    def survive_outage():
        work = Path(os.environ["ML_DICT_WORK"])
        doc = {"before": Variable.get("min_auc")}
        (work / "loaded").write_text("1")
        deadline = time.monotonic() + 60
        while not (work / "cut").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)                                     # past cache_ttl_seconds=1
        t0 = time.monotonic()
        doc["during_grace"] = Variable.get("min_auc")      # stale snapshot + warning
        doc["during_grace_s"] = time.monotonic() - t0
        time.sleep(4)                                       # past stale_grace_seconds=4
        t0 = time.monotonic()
        try:
            Variable.get("min_auc")
            doc["after_grace"] = "no error"
        except Exception as exc:
            doc["after_grace"] = f"{type(exc).__name__}: {exc}"
        doc["after_grace_s"] = time.monotonic() - t0
        (work / "out.json").write_text(json.dumps(doc))

    @task
    def lookup_after_grace():
        Variable.get("min_auc")                             # raises: the task fails clearly

    survive_outage() >> lookup_after_grace()

ml_dictionary_fault()
"""


def _airflow_ml(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "airflow-ml"), "dictionary", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_dag_reads_the_dictionary_and_sees_a_change_on_the_next_run(
    run_dag, airflow_home, mariadb_url, tmp_path
):
    from tests.fixtures.airflow import airflow_base_env

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "ml_dictionary_e2e.py").write_text(READ_DAG)
    out = tmp_path / "out.json"
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
        # a long TTL: the next run sees the change because it is a new task process, not by expiry
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
            {"sql_alchemy_conn": mariadb_url, "cache_ttl_seconds": 3600}
        ),
        "AIRFLOW_VAR_MIN_AUC": "0.01",  # the dictionary comes first, this must not be seen
        "AIRFLOW_VAR_ONLY_IN_ENV": "from-env",
        "AIRFLOW_VAR_API_TOKEN": "airflow-own-token-value",
        "ML_DICT_OUT": str(out),
    }
    store = DictionaryStore(mariadb_url)
    store.create_tables()
    store.set("min_auc", "0.75", description="minimum AUC of the CTR model")
    store.set("model_cfg", '{"threshold": 0.5, "features": ["age", "city"]}')
    store.set("db_password", "Dict-S3cret-Value-42")
    store.set("feature_switch", "enabled-v2")

    first = run_dag(dags, "ml_dictionary_e2e", env=env)
    first.assert_ok()
    assert first.states == {"read": "success"}
    doc = json.loads(out.read_text())
    assert doc["rendered"] == "0.75"  # {{ var.value.min_auc }}
    assert doc["rendered_json"] == "0.5"  # {{ var.json.model_cfg.threshold }}
    assert doc["get"] == "0.75"  # Variable.get in the task
    assert doc["json"] == {"threshold": 0.5, "features": ["age", "city"]}
    assert doc["env_only"] == "from-env"  # lookup order: dictionary, then env vars
    assert doc["default"] == "fallback"
    assert doc["loads"] == 1  # one query for ~210 lookups (templates included)
    assert doc["secret_len"] == len("Dict-S3cret-Value-42")
    # masking: Airflow's masker hides the dictionary secret exactly like its own env-var secret
    assert doc["log_line_dictionary_secret"] == "connecting with ***"
    assert doc["log_line_airflow_secret"] == "connecting with ***"
    assert doc["log_line_plain"] == "switch is enabled-v2"  # a non-sensitive key is not masked

    # change it through the CLI, which reads the same Airflow configuration as the workers
    cli_env = {**airflow_base_env(airflow_home), **env}
    proc = _airflow_ml(["set", "min_auc", "0.85", "--by", "e2e-test"], cli_env)
    assert (proc.returncode, proc.stdout) == (0, "updated min_auc\n"), proc.stderr
    out.unlink()

    second = run_dag(dags, "ml_dictionary_e2e", env=env)
    second.assert_ok()
    assert second.run_id != first.run_id
    doc = json.loads(out.read_text())
    assert (doc["rendered"], doc["get"]) == ("0.85", "0.85")

    # The same task once more as a real worker runs it (a forked task process under the
    # supervisor, which writes the task log file): values served, secrets masked in the log.
    out.unlink()
    log_file = tmp_path / "task.log"
    full_env = {**airflow_base_env(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags), **env}
    proc = subprocess.run(
        [sys.executable, "-c", SUPERVISE, "ml_dictionary_e2e", "read", str(log_file)],
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    doc = json.loads(out.read_text())
    assert (doc["rendered"], doc["get"], doc["loads"]) == ("0.85", "0.85", 1)
    log = log_file.read_text()
    assert "dictionary secret: connecting with ***" in log
    assert "airflow env-var secret: ***" in log  # Airflow's own Variable, masked the same way
    assert "not sensitive: switch is enabled-v2" in log
    assert "Dict-S3cret-Value-42" not in log
    assert "airflow-own-token-value" not in log

    change = store.history("min_auc")[0]
    assert (change.old_value, change.new_value, change.changed_by) == ("0.75", "0.85", "e2e-test")
    store.dispose()


def test_outage_mid_run_stale_grace_then_clear_error(run_dag, mariadb_user_url, tmp_path):  # noqa: F811
    url, password = mariadb_user_url
    store = DictionaryStore(url)
    store.create_tables()
    store.set("min_auc", "0.75")
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "ml_dictionary_fault.py").write_text(FAULT_DAG)
    work = tmp_path / "work"
    work.mkdir()

    with TcpProxy(MARIADB_HOST, MARIADB_PORT) as proxy:
        env = {
            # only [secrets] is set: task processes fall back to it
            "AIRFLOW__SECRETS__BACKEND": BACKEND,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                {
                    "sql_alchemy_conn": proxy.url(url),
                    "cache_ttl_seconds": 1,
                    "stale_grace_seconds": 4,
                    "connect_timeout": 1,
                }
            ),
            "ML_DICT_WORK": str(work),
        }
        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(r=run_dag(dags, "ml_dictionary_fault", env=env))
        )
        runner.start()
        deadline = time.monotonic() + 300
        while not (work / "loaded").exists() and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (work / "loaded").exists(), "the task never loaded the dictionary"
        proxy.close()  # cut the database connection mid-run
        store.set("min_auc", "0.99")  # a change the cut-off task cannot see
        (work / "cut").write_text("1")
        runner.join(timeout=300)
    run = result["r"]
    doc = json.loads((work / "out.json").read_text())
    assert doc["before"] == "0.75"
    assert doc["during_grace"] == "0.75"  # the stale snapshot, served ...
    assert (
        "is unreachable" in run.output and "serving the snapshot loaded" in run.output
    )  # ... with a warning
    assert doc["during_grace_s"] < 2.0  # refused at once; never more than the 1 s connect timeout
    error = doc["after_grace"]
    assert error.startswith("DictionaryBackendUnavailable: cannot look up Variable 'min_auc'")
    assert f":***@127.0.0.1:{proxy.port}/" in error  # names the database, password masked
    assert "older than stale_grace_seconds=4" in error
    assert doc["after_grace_s"] < 2.0
    assert password not in run.output
    # uncaught, the error fails the task (it is not turned into "variable not found")
    assert run.states == {"survive_outage": "success", "lookup_after_grace": "failed"}
    assert "DictionaryBackendUnavailable" in run.output
    assert "Variable min_auc not found" not in run.output
    store.dispose()
