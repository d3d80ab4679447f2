"""The layers stay visible: the pure core imports no Airflow, and nothing imports heavy ML
libraries at module level (they load inside the functions that use them)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("xgboost", "tensorflow", "keras", "gensim", "sklearn")

CHECK = r"""
import importlib, json, pkgutil, sys
import airflow_ml_provider
roots = {roots}
skip = set({skip})
names = []
for root in roots:
    mod = importlib.import_module(root)
    names.append(root)
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, root + "."):
            if info.name not in skip:
                names.append(info.name)
for name in names:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}})
print(json.dumps({{"modules": names, "loaded": loaded}}))
"""


def _run(roots: list[str], skip: list[str] = ()) -> dict:
    code = CHECK.format(roots=roots, skip=list(skip))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pure_core_imports_no_airflow_and_no_heavy_library():
    out = _run(
        [
            "airflow_ml_provider.ml",
            "airflow_ml_provider.azkaban",
            "airflow_ml_provider.dictionary_store",
            "airflow_ml_provider.properties",
            "airflow_ml_provider.serving",
        ],
        skip=["airflow_ml_provider.azkaban.runtime"],
    )
    assert "airflow_ml_provider.ml.features.fitted" in out["modules"]
    assert "airflow_ml_provider.azkaban.render" in out["modules"]
    assert "airflow" not in out["loaded"], "the pure core imported Airflow"
    assert not set(HEAVY) & set(out["loaded"]), set(HEAVY) & set(out["loaded"])


def test_airflow_adapters_import_no_heavy_library():
    out = _run(
        [
            "airflow_ml_provider.operators",
            "airflow_ml_provider.hooks",
            "airflow_ml_provider.secrets",
            "airflow_ml_provider.fs",
            "airflow_ml_provider.plugins",
            "airflow_ml_provider.azkaban.runtime",
            "airflow_ml_provider.cli",
        ],
        skip=["airflow_ml_provider.cli.__main__"],  # runs the command line
    )
    assert "airflow" in out["loaded"]
    assert not set(HEAVY) & set(out["loaded"]), set(HEAVY) & set(out["loaded"])
