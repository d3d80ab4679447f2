"""The ML pages' routes in Airflow's real API server app (in-process client), on the embedded
SQLite default and on MariaDB: who may do what (the auth manager's permissions), the rollback and
dictionary writes with the user's name, validation, masking, cross-site refusal, chart integrity,
and the plugin's menu entries and DAG-run tab.

The browser tests (tests/test_ui_browser.py) drive the same pages through Chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures import browser as B

pytestmark = pytest.mark.airflow

SCRIPT = r"""
import json, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

PW = json.loads(sys.argv[1])
client = TestClient(create_app())
out = {}

def token(user):
    r = client.post("/auth/token", json={"username": user, "password": PW[user]})
    assert r.status_code == 201, r.text
    return {"Authorization": "Bearer " + r.json()["access_token"]}

H = {u: token(u) for u in PW}
plugins = client.get("/api/v2/plugins", headers=H["admin"]).json()
out["views"] = [v for p in plugins["plugins"] if p["name"] == "airflow_ml" for v in p["external_views"]]

# anonymous
out["anon_api"] = client.get("/ml/api/models").status_code
r = client.get("/ml/models/audio_ctr", follow_redirects=False)
out["anon_page"] = [r.status_code, r.headers.get("location", "")]
out["anon_rollback"] = client.post("/ml/api/models/audio_ctr/rollback", json={"version": 1, "reason": "x"}).status_code
out["anon_chart"] = client.get("/ml/models/audio_ctr/versions/2/charts/roc.png").status_code

# pages
page = client.get("/ml/models", headers=H["viewer"])
out["list"] = [page.status_code, page.text]
page = client.get("/ml/models/audio_ctr", headers=H["viewer"])
out["model_viewer"] = [page.status_code, page.text]
page = client.get("/ml/models/audio_ctr?a=1&b=3", headers=H["admin"])
out["model_admin"] = [page.status_code, page.text]
out["unknown_model"] = client.get("/ml/models/nope", headers=H["admin"]).status_code
charts = {}
for name in ("roc.png", "pr.png", "feature_importance.png", "../manifest.json", "nope.png"):
    r = client.get(f"/ml/models/audio_ctr/versions/2/charts/{name}", headers=H["viewer"])
    charts[name] = [r.status_code, r.headers.get("content-type"), r.content.hex() if r.status_code == 200 else ""]
out["charts"] = charts
r = client.get("/ml/models/audio_ctr/roc.svg?a=1&b=3", headers=H["viewer"])
out["roc_svg"] = [r.status_code, r.headers.get("content-type"), r.text]
r = client.get("/ml/models/audio_ctr/metric.svg", headers=H["viewer"])
out["metric_svg"] = [r.status_code, r.text]

# rollback: permissions, validation, cross-site
rb = lambda user, body, **kw: client.post("/ml/api/models/audio_ctr/rollback", json=body, headers={**H[user], **kw})
out["rb_viewer"] = rb("viewer", {"version": 1, "reason": "viewer"}).status_code
out["rb_no_reason"] = rb("admin", {"version": 1, "reason": "  "}).status_code
out["rb_unknown"] = rb("admin", {"version": 9, "reason": "x"}).status_code
out["rb_cross_site"] = rb("admin", {"version": 1, "reason": "x"}, Origin="http://evil.example").status_code
r = rb("editor", {"version": 1, "reason": "bad canary"})
out["rb_editor"] = [r.status_code, r.json()]
r = client.post("/ml/models/audio_ctr/serve", data={"version": "3", "reason": "fixed"}, headers=H["admin"],
                follow_redirects=False)
out["serve_form"] = [r.status_code, r.headers.get("location", "")]

# dictionary: read and write permissions
out["dict_viewer"] = client.get("/ml/api/dictionary", headers=H["viewer"]).status_code
out["dict_editor"] = client.get("/ml/api/dictionary", headers=H["editor"]).status_code
out["dict_page_viewer"] = client.get("/ml/dictionary", headers=H["viewer"]).status_code
out["set_viewer"] = client.put("/ml/api/dictionary/feature.window_days", json={"value": "1"}, headers=H["viewer"]).status_code
out["set_editor"] = client.post("/ml/dictionary/set", data={"key": "feature.window_days", "value": "1"},
                                headers=H["editor"]).status_code
out["del_viewer"] = client.delete("/ml/api/dictionary/feature.window_days", headers=H["viewer"]).status_code
r = client.get("/ml/api/dictionary", headers=H["ops"])
out["dict_ops"] = [r.status_code, r.json(), r.text]
put = lambda key, body, user="ops", **kw: client.put(f"/ml/api/dictionary/{key}", json=body, headers={**H[user], **kw})
out["create"] = put("ui.new_key", {"value": "1", "description": "made in the UI"}).json()
out["update"] = put("ui.new_key", {"value": "2"}).json()
out["unchanged"] = put("ui.new_key", {"value": "2"}).json()
r = put(" padded", {"value": "1"})
out["bad_key"] = [r.status_code, r.json()]
r = put("ui.big", {"value": "x" * 70000})
out["big_value"] = [r.status_code, r.json()]
out["cross_site_put"] = put("ui.new_key", {"value": "evil"}, Origin="http://evil.example").status_code
r = client.post("/ml/dictionary/set", data={"key": "ui.new_key", "value": "3", "create": "1"}, headers=H["ops"])
out["create_existing"] = r.status_code
out["secret_update"] = put("db_password", {"value": "rotated-secret-value"}).json()
r = client.get("/ml/api/dictionary-history/db_password", headers=H["ops"])
out["secret_history"] = [r.status_code, r.json(), r.text]
r = client.get("/ml/dictionary/key?key=db_password", headers=H["ops"])
out["secret_page"] = [r.status_code, r.text]
r = client.get("/ml/api/dictionary-history/ui.new_key", headers=H["ops"])
out["history"] = r.json()
r = client.get("/ml/dictionary?q=WINDOW", headers=H["ops"])
out["search"] = [r.status_code, r.text]
out["delete"] = client.delete("/ml/api/dictionary/ui.new_key", headers=H["ops"]).status_code
out["delete_again"] = client.delete("/ml/api/dictionary/ui.new_key", headers=H["ops"]).status_code
print("RESULT " + json.dumps(out, default=str))
"""

USERS = {"admin": ("admin", "admin-pw-1"), "viewer": ("viewer", "viewer-pw-1"), "editor": ("user", "editor-pw-1"),
         "ops": ("op", "ops-pw-1")}


def _run(tmp_path, airflow_home, registry_url: str | None, dict_url: str) -> dict:
    home, ml = tmp_path / "airflow", tmp_path / "ml"
    home.mkdir()
    ml.mkdir(exist_ok=True)
    env = B.airflow_env(home, airflow_home / "airflow.db", ml)
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(f"{u}:{role}" for u, (role, _) in USERS.items())
    (home / "passwords.json").write_text(json.dumps({u: pw for u, (_, pw) in USERS.items()}))
    env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps({"sql_alchemy_conn": dict_url})
    if registry_url is not None:
        env["AIRFLOW_ML_REGISTRY"] = registry_url
    passwords = json.dumps({u: pw for u, (_, pw) in USERS.items()})
    proc = subprocess.run([sys.executable, "-c", SCRIPT, passwords], env=env, capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-6000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def _check(out: dict, seeded: dict, storage_root: str, registry_url: str, dict_url: str) -> None:
    from airflow_ml_provider.dictionary_store import DictionaryStore
    from airflow_ml_provider.ml.registry import ModelRegistry

    # menu entries and the DAG-run tab
    views = {v["name"]: v for v in out["views"]}
    assert views["ML model"]["destination"] == "dag_run" and views["ML model"]["href"] == "ml/runs/{DAG_ID}/{RUN_ID}"
    assert views["Variables (ML dictionary)"]["category"] == "admin"
    assert views["ML models"]["href"] == "ml/models" and views["ML dictionary"]["href"] == "ml/dictionary"
    # anonymous callers: 401, or Airflow's login page for HTML
    assert out["anon_api"] == 401 and out["anon_rollback"] == 401 and out["anon_chart"] == 401
    assert out["anon_page"][0] == 302 and "/auth/login?next=" in out["anon_page"][1]
    # the list page: served and latest version, main metric
    status, text = out["list"]
    assert status == 200 and 'data-model="audio_ctr"' in text
    auc2 = seeded["metrics"][2]["auc"]
    assert f"auc = {auc2:.4f}" in text and '<td class="num serving-version">2</td>' in text
    # the model page: every version's metrics, run links; a viewer gets no rollback form
    status, text = out["model_viewer"]
    assert status == 200 and 'id="no-serve"' in text and 'id="serve-form"' not in text
    for v, metrics in seeded["metrics"].items():
        assert f'<td class="num metric" data-metric="auc">{metrics["auc"]:.4f}</td>' in text
        assert f'/dags/xgboost_recommendation/runs/{seeded["run_ids"][v].replace(":", "%3A").replace("+", "%2B")}' in text
    status, text = out["model_admin"]
    assert status == 200 and 'id="serve-form"' in text
    delta = seeded["metrics"][3]["auc"] - seeded["metrics"][1]["auc"]
    assert f"{delta:+.4f}" in text
    assert out["unknown_model"] == 404
    # charts: the bundle's bytes, only files its manifest lists
    roc = out["charts"]["roc.png"]
    assert roc[:2] == [200, "image/png"]
    served = next(r for r in seeded["records"] if r.version == 2)
    from airflow_ml_provider.ml import storage

    assert bytes.fromhex(roc[2]) == storage.read_bytes(storage.join(served.bundle_uri, "charts", "roc.png"))
    assert out["charts"]["pr.png"][0] == out["charts"]["feature_importance.png"][0] == 200
    assert out["charts"]["../manifest.json"][0] == 404 and out["charts"]["nope.png"][0] == 404
    status, ctype, svg = out["roc_svg"]
    assert status == 200 and ctype.startswith("image/svg+xml") and svg.count("<polyline") == 2
    assert "v1 (AUC" in svg and "v3 (AUC" in svg
    assert out["metric_svg"][0] == 200 and "<polyline" in out["metric_svg"][1]
    # rollback: a viewer may not; reasons are required; cross-site refused; a DAG editor may
    assert out["rb_viewer"] == 403 and out["rb_no_reason"] == 400 and out["rb_unknown"] == 404
    assert out["rb_cross_site"] == 403
    assert out["rb_editor"][0] == 200 and out["rb_editor"][1]["created_by"] == "editor"
    assert out["serve_form"][0] == 303 and "/ml/models/audio_ctr?done=" in out["serve_form"][1]
    reg = ModelRegistry(registry_url)
    try:
        tail = [(e.action, e.version, e.created_by, e.reason) for e in reg.events("audio_ctr")][-3:]
        assert tail == [("rollback", 2, "ops-oncall", "seeded rollback"), ("rollback", 1, "editor", "bad canary"),
                        ("rollback", 3, "admin", "fixed")]
        assert reg.current("audio_ctr").version == 3
    finally:
        reg.dispose()
    # dictionary: Variable read/write permissions
    assert out["dict_viewer"] == out["dict_editor"] == out["dict_page_viewer"] == 403
    assert out["set_viewer"] == out["set_editor"] == out["del_viewer"] == 403
    status, rows, raw = out["dict_ops"]
    assert status == 200 and {r["key"]: r["value"] for r in rows}["db_password"] == "***"
    assert B.SECRET not in raw
    assert out["create"] == {"key": "ui.new_key", "action": "created"}
    assert out["update"] == {"key": "ui.new_key", "action": "updated"}
    assert out["unchanged"] == {"key": "ui.new_key", "action": "unchanged"}
    assert out["bad_key"] == [400, {"detail": "invalid dictionary key ' padded': leading or trailing whitespace is not allowed"}]
    assert out["big_value"][0] == 400 and "ui.big" in out["big_value"][1]["detail"] and "65535" in out["big_value"][1]["detail"]
    assert out["cross_site_put"] == 403 and out["create_existing"] == 409
    status, hist, raw = out["secret_history"]
    assert status == 200 and hist["history"][0]["old_value"] == "***" and hist["history"][0]["new_value"] == "***"
    assert B.SECRET not in raw and "rotated-secret-value" not in raw
    assert "rotated-secret-value" not in out["secret_page"][1] and B.SECRET not in out["secret_page"][1]
    changes = [(h["action"], h["old_value"], h["new_value"], h["changed_by"]) for h in out["history"]["history"]]
    assert changes == [("update", "1", "2", "ops"), ("create", None, "1", "ops")]
    assert 'data-key="feature.window_days"' in out["search"][1] and 'data-key="db_password"' not in out["search"][1]
    assert out["delete"] == 200 and out["delete_again"] == 404
    # the UI wrote through the same store the CLI reads
    store = DictionaryStore(dict_url)
    try:
        assert store.get("db_password").value == "rotated-secret-value"
        assert [(h.action, h.changed_by) for h in store.history("ui.new_key")] == [
            ("delete", "ops"), ("update", "ops"), ("create", "ops")]
        assert store.get("feature.window_days").value == "30"  # the refused writes changed nothing
    finally:
        store.dispose()
    cli = subprocess.run([str(B.VENV_BIN / "airflow-ml"), "dictionary", "history", "ui.new_key",
                          "--sql-alchemy-conn", dict_url, "--json"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "AIRFLOW_HOME": storage_root})
    assert cli.returncode == 0, cli.stderr
    assert [h["changed_by"] for h in json.loads(cli.stdout)] == ["ops", "ops", "ops"]


def test_pages_on_the_embedded_default(tmp_path, airflow_home):
    ml = tmp_path / "ml"
    ml.mkdir()
    registry_url = f"sqlite:///{ml}/registry.db"  # not configured anywhere: the embedded default
    seeded = B.seed_models(registry_url, str(ml / "storage"), tmp_path / "work")
    dict_url = f"sqlite:///{ml}/dictionary.db"
    B.seed_dictionary(dict_url)
    out = _run(tmp_path, airflow_home, None, dict_url)
    _check(out, seeded, str(tmp_path), registry_url, dict_url)


@pytest.mark.mariadb
def test_pages_on_mariadb(tmp_path, airflow_home, mariadb_url):
    ml = tmp_path / "ml"
    ml.mkdir()
    seeded = B.seed_models(mariadb_url, str(ml / "storage"), tmp_path / "work")
    B.seed_dictionary(mariadb_url)
    out = _run(tmp_path, airflow_home, mariadb_url, mariadb_url)
    _check(out, seeded, str(tmp_path), mariadb_url, mariadb_url)
