"""The Airflow UI plugin: its pages are mounted in the real API server app and protected by
Airflow's authentication (plugin FastAPI apps are not protected unless the plugin does it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

client = TestClient(create_app())
out = {}
out["anon_models"] = client.get("/ml/api/models").status_code
anon = client.get("/ml/models", follow_redirects=False)
out["anon_page"] = [anon.status_code, anon.headers.get("location", "")]
out["anon_dict"] = client.get("/ml/api/dictionary").status_code
r = client.post("/auth/token", json={"username": "alice", "password": "s3cret-pw"})
out["login"] = r.status_code
token = r.json()["access_token"]
h = {"Authorization": f"Bearer {token}"}
out["models"] = client.get("/ml/api/models", headers=h).json()
out["model"] = client.get("/ml/api/models/audio_ctr", headers=h).json()
out["unknown"] = client.get("/ml/api/models/nope", headers=h).status_code
out["dictionary"] = client.get("/ml/api/dictionary", headers=h).json()
vt = client.post("/auth/token", json={"username": "bob", "password": "viewer-pw"}).json()["access_token"]
hv = {"Authorization": f"Bearer {vt}"}
out["viewer_models"] = client.get("/ml/api/models", headers=hv).status_code
out["viewer_dict"] = client.get("/ml/api/dictionary", headers=hv).status_code
page = client.get("/ml/models", headers=h)
out["page_status"] = page.status_code
out["page_has_model"] = "audio_ctr" in page.text and "0.812" in page.text
out["bad_token"] = client.get("/ml/api/models", headers={"Authorization": "Bearer forged.jwt.value"}).status_code
views = client.get("/api/v2/plugins", headers=h)
out["plugins"] = views.json() if views.status_code == 200 else views.status_code
print("RESULT " + json.dumps(out, default=str))
"""


def test_plugin_pages_are_served_and_protected(tmp_path, airflow_home):
    from airflow_ml_provider.dictionary_store import DictionaryStore
    from airflow_ml_provider.ml.registry import ModelRegistry

    reg_url = f"sqlite:///{tmp_path}/registry.db"
    registry = ModelRegistry(reg_url)
    registry.create_tables()
    registry.publish(name="audio_ctr", bundle_uri=f"file://{tmp_path}/models/audio_ctr/1", framework="xgboost",
                     metrics={"auc": 0.8123}, dag_id="d", run_id="r1")
    registry.publish(name="audio_ctr", bundle_uri=f"file://{tmp_path}/models/audio_ctr/2", framework="xgboost",
                     metrics={"auc": 0.8001}, dag_id="d", run_id="r2")
    registry.rollback("audio_ctr", 1)
    dict_url = f"sqlite:///{tmp_path}/dict.db"
    store = DictionaryStore(dict_url)
    store.create_tables()
    store.set("audio_ctr.min_auc", "0.7", description="gate")
    store.set("db_password", "hunter2")

    home = tmp_path / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"alice": "s3cret-pw", "bob": "viewer-pw"}))
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{airflow_home}/airflow.db",  # migrated once a session
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="alice:admin,bob:viewer",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET="test-secret-for-plugin",
        AIRFLOW__SECRETS__BACKEND="airflow_ml_provider.secrets.dictionary.DictionaryTableBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"sql_alchemy_conn": dict_url}),
        AIRFLOW_ML_REGISTRY=reg_url,
    )
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line.removeprefix("RESULT "))
    # anonymous and forged callers are refused
    assert out["anon_models"] in (401, 403)
    assert out["anon_page"][0] == 302 and "/auth/login" in out["anon_page"][1]  # HTML: Airflow's login page
    assert out["anon_dict"] in (401, 403)
    assert out["bad_token"] in (401, 403)
    assert out["login"] == 201
    # a signed-in user sees the registry, with the rollback applied
    [model] = out["models"]
    assert model["name"] == "audio_ctr" and model["versions"] == [1, 2] and model["serving_version"] == 1
    assert [v["version"] for v in out["model"]["versions"]] == [1, 2]
    assert out["unknown"] == 404
    assert out["page_status"] == 200 and out["page_has_model"]
    # a viewer sees models but not the dictionary (it serves Variables: needs Variable read access)
    assert out["viewer_models"] == 200
    assert out["viewer_dict"] == 403
    # the dictionary, with the sensitive value masked
    values = {e["key"]: e["value"] for e in out["dictionary"]}
    assert values == {"audio_ctr.min_auc": "0.7", "db_password": "***"}
    # the Browse menu entries are registered
    names = json.dumps(out["plugins"])
    assert "ML models" in names and "ML dictionary" in names


EMBEDDED_SCRIPT = r"""
import json
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

client = TestClient(create_app())
token = client.post("/auth/token", json={"username": "alice", "password": "s3cret-pw"}).json()["access_token"]
h = {"Authorization": f"Bearer {token}"}
out = {}
r = client.get("/ml/api/models", headers=h)
out["models"] = [r.status_code, r.json()]
page = client.get("/ml/models", headers=h)
out["models_page"] = [page.status_code, page.text]
r = client.get("/ml/api/dictionary", headers=h)
out["dictionary"] = [r.status_code, r.json()]
page = client.get("/ml/dictionary", headers=h)
out["dictionary_page"] = [page.status_code, page.text]
print("RESULT " + json.dumps(out, default=str))
"""


def _api_server_env(tmp_path, airflow_home, **extra):
    home = tmp_path / "airflow"
    home.mkdir(exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({"alice": "s3cret-pw"}))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW_ML_", "AIRFLOW__ML__", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__SECRETS"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{airflow_home}/airflow.db",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="alice:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API_AUTH__JWT_SECRET="test-secret-for-plugin",
        **extra,
    )
    return env


def _run_script(env):
    proc = subprocess.run([sys.executable, "-c", EMBEDDED_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def test_embedded_default_registry_and_unconfigured_dictionary(tmp_path, airflow_home):
    """Only AIRFLOW_ML_HOME: the pages show the registry the DAGs publish to; no dictionary -> a hint."""
    from airflow_ml_provider.ml.registry import ModelRegistry

    ml_home = tmp_path / "ml"
    ml_home.mkdir()
    registry = ModelRegistry(f"sqlite:///{ml_home}/registry.db")
    registry.publish(name="embedded_model", bundle_uri=f"file://{tmp_path}/b/1", framework="xgboost",
                     metrics={"auc": 0.75}, dag_id="d", run_id="r1")
    registry.dispose()
    out = _run_script(_api_server_env(tmp_path, airflow_home, AIRFLOW_ML_HOME=str(ml_home)))
    status, models = out["models"]
    assert status == 200 and [m["name"] for m in models] == ["embedded_model"]
    status, text = out["models_page"]
    assert status == 200 and "embedded_model" in text and '{"detail"' not in text
    status, body = out["dictionary"]
    assert status == 404 and "No dictionary database is configured" in body["detail"]
    status, text = out["dictionary_page"]
    assert "No dictionary database is configured" in text and not text.lstrip().startswith("{")


def test_dictionary_configured_through_the_ml_settings_only(tmp_path, airflow_home):
    """AIRFLOW_ML_DICTIONARY (no [secrets] backend) is enough for the dictionary pages."""
    from airflow_ml_provider.dictionary_store import DictionaryStore

    url = f"sqlite:///{tmp_path}/dict.db"
    store = DictionaryStore(url)
    store.create_tables()
    store.set("gate.min_auc", "0.7")
    store.dispose()
    out = _run_script(_api_server_env(tmp_path, airflow_home, AIRFLOW_ML_HOME=str(tmp_path / "ml"),
                                      AIRFLOW_ML_DICTIONARY=url))
    status, entries = out["dictionary"]
    assert status == 200 and {e["key"]: e["value"] for e in entries} == {"gate.min_auc": "0.7"}
    status, text = out["dictionary_page"]
    assert status == 200 and "gate.min_auc" in text
    status, models = out["models"]
    assert status == 200 and models == []  # the embedded registry, empty so far
