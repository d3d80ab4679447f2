"""Importing the provider, its operator modules or the example DAG loads no heavy ML library.

DAG files must parse fast: xgboost, tensorflow, gensim and sklearn are imported only inside
``execute`` / the functions that need them. Checked in a fresh interpreter through ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("xgboost", "tensorflow", "gensim", "sklearn")
MODULES = [
    "airflow_ml_provider",
    "airflow_ml_provider.operators",
    "airflow_ml_provider.operators.base",
    "airflow_ml_provider.operators.sample",
    "airflow_ml_provider.operators.preprocess",
    "airflow_ml_provider.operators.train",
    "airflow_ml_provider.operators.evaluate",
    "airflow_ml_provider.operators.publish",
    "airflow_ml_provider.disabled_tasks",
    "airflow_ml_provider.ml.sampling",
    "airflow_ml_provider.ml.datasets.audio",
]

_PROBE = r"""
import importlib, importlib.util, json, sys
for name in sys.argv[2:]:
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("dag_under_test", name)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        importlib.import_module(name)
heavy = json.loads(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
print(json.dumps({m: m in sys.modules for m in ("numpy", "pandas", "pyarrow")}))
"""


def _probe(*targets: str) -> tuple[list[str], dict[str, bool]]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), *targets],
        capture_output=True, text=True, timeout=300, cwd=str(REPO),
        env={**__import__("os").environ, "AIRFLOW_ML_HOME": "/nonexistent-airflow-ml-home"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-2]), json.loads(lines[-1])


DAG_FILE = str(REPO / "dags" / "xgboost_recommendation.py")


def test_provider_operator_modules_and_example_dag_import_no_heavy_library():
    # the DAG file first, alone: it must not even load the data stack (it is parsed often)
    heavy, light = _probe(DAG_FILE, *MODULES[:1])
    assert heavy == []
    assert light == {"numpy": False, "pandas": False, "pyarrow": False}
    heavy, _ = _probe(*MODULES)
    assert heavy == []


def test_operator_modules_do_load_when_used():
    # the probe itself is not vacuous: it does see xgboost once something imports it
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), "xgboost"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "xgboost" in json.loads(proc.stdout.strip().splitlines()[-2])
