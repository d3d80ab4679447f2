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
