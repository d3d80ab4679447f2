"""The pipeline's gates read their thresholds from the dictionary table (MariaDB) through the
DictionaryTableBackend: a strict minimum skips the publish; after the value is changed with
`airflow-ml dictionary set`, the next run publishes -- no restart, no redeploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ml_provider.dictionary_store import DictionaryStore
from airflow_ml_provider.ml.datasets.audio import load_audio_dataset
from airflow_ml_provider.ml.registry import ModelRegistry
from tests.fixtures.airflow import airflow_base_env, latest_run_states

pytestmark = [pytest.mark.airflow, pytest.mark.mariadb, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "xgboost_recommendation"
MODEL = "audio_listen_30s"
FAST = {"num_boost_round": 20, "early_stopping_rounds": 5, "nthread": 2}
BACKEND = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"


def _run(airflow_home: Path, ml_home: Path, dict_url: str) -> tuple[int, str, dict]:
    env = airflow_base_env(airflow_home)
    kwargs = json.dumps({"sql_alchemy_conn": dict_url, "cache_ttl_seconds": 0})
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW_ML_HOME": str(ml_home),
            "AIRFLOW_ML_STORAGE": "",
            "AIRFLOW_ML_REGISTRY": "",
            "AIRFLOW_ML_SOURCE_CONN_ID": "",
            "AIRFLOW_ML_MODEL_NAME": "",
            "AIRFLOW_ML_FEATURE_SPEC": "",
            "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": kwargs,
            "AIRFLOW__SECRETS__BACKEND": BACKEND,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": kwargs,
        }
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID, "--conf", json.dumps(FAST)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    _, states = latest_run_states(airflow_home / "airflow.db", DAG_ID)
    return proc.returncode, proc.stdout + proc.stderr, states


def test_gate_threshold_from_the_dictionary_table(airflow_home, mariadb_url, tmp_path):
    ml_home = tmp_path / "ml"
    ml_home.mkdir()
    load_audio_dataset(ml_home / "audio.db", events=6_000, users=600, items=300, hosts=80)
    store = DictionaryStore(mariadb_url)
    store.create_tables()
    store.set(f"ml.{MODEL}.min_auc", "0.995", description="deliberately unreachable")

    rc, out, states = _run(airflow_home, ml_home, mariadb_url)
    assert rc == 0, out[-6000:]
    assert states["evaluate"] == "success" and states["publish"] == "skipped", states
    assert "minimum 0.995" in out, out[-4000:]
    registry = ModelRegistry(f"sqlite:///{ml_home / 'registry.db'}")
    registry.create_tables()
    assert registry.list(MODEL) == []

    # change the threshold through the CLI, as an operator would; the next run sees it
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "airflow-ml"), "dictionary", "set", f"ml.{MODEL}.min_auc", "0.5",
         "--sql-alchemy-conn", mariadb_url],
        capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    rc, out, states = _run(airflow_home, ml_home, mariadb_url)
    assert rc == 0, out[-6000:]
    assert states["publish"] == "success", states
    assert "minimum 0.5" in out, out[-4000:]
    [record] = registry.list(MODEL)
    assert record.version == 1 and record.metrics["auc"] >= 0.5
    assert [h.new_value for h in store.history(f"ml.{MODEL}.min_auc")][:2] == ["0.5", "0.995"]
