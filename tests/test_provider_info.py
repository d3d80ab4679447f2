"""The provider metadata lists only things that exist, and Airflow's ProvidersManager finds them."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

from airflow_ml_provider.get_provider_info import get_provider_info


def _import_dotted(path: str):
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def test_every_listed_module_and_class_imports():
    info = get_provider_info()
    assert info["package-name"] == "airflow-ml-provider"
    paths = [m for group in info["operators"] + info["hooks"] for m in group["python-modules"]]
    paths += info["filesystems"] + info["secrets-backends"]
    paths += [p["plugin-class"] for p in info["plugins"]]
    paths += [c["hook-class-name"] for c in info["connection-types"]]
    assert len(paths) >= 10
    for path in paths:
        assert _import_dotted(path) is not None, path
    fs = importlib.import_module(info["filesystems"][0])
    assert fs.schemes == ["webhdfs"] and callable(fs.get_fs)


def test_airflow_providers_manager_sees_the_provider(tmp_path):
    code = (
        "import json\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "pm = ProvidersManager()\n"
        "out = {'provider': 'airflow-ml-provider' in pm.providers,\n"
        "       'fs': list(pm.filesystem_module_names),\n"
        "       'secrets': list(pm.secrets_backend_class_names),\n"
        "       'hooks': 'ml_registry' in pm.hooks}\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["provider"] is True
    assert "airflow_ml_provider.fs.webhdfs" in out["fs"]
    assert "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend" in out["secrets"]
    assert out["hooks"] is True
