"""The ML pages in a real browser: Debian's Chromium (Selenium + chromedriver) against a real
``airflow api-server`` with the simple auth manager, signed in through Airflow's own login page.

One API server and one browser for the whole module. The registry is the embedded default (SQLite
under ``AIRFLOW_ML_HOME``, nothing else configured), seeded through the real publish protocol with
bundles holding real charts; two real DAG runs (``airflow dags test``) give the run tab something to
show. Screenshots of every page go to ``$AIRFLOW_ML_UI_ARTIFACTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.fixtures import browser as B
from tests.fixtures.airflow import airflow_base_env, latest_run_states

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

RUN_DAG = "ui_run_demo"
SHADOW = "audio_ctr_shadow"

DEMO_DAG = textwrap.dedent('''
    """A two-task stand-in for a training DAG: evaluate (the gate) then publish (registry row)."""
    from datetime import datetime

    from airflow.sdk import DAG, Param, task
    from airflow.sdk.exceptions import AirflowSkipException

    with DAG("ui_run_demo", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
             params={"pass_gate": Param(True, type="boolean")}) as dag:

        @task
        def evaluate(params=None):
            ok = bool(params["pass_gate"])
            return {"model_name": "audio_ctr_shadow", "gate_passed": ok,
                    "gate_reasons": [] if ok else ["auc 0.6100 < minimum 0.7500"]}

        @task
        def publish(ev, dag_run=None):
            if not ev["gate_passed"]:
                raise AirflowSkipException("gate failed: " + "; ".join(ev["gate_reasons"]))
            import os
            from airflow_ml_provider.ml.registry import ModelRegistry
            reg = ModelRegistry(os.environ["UI_DEMO_REGISTRY"])
            reg.publish(name="audio_ctr_shadow", bundle_uri=os.environ["UI_DEMO_BUNDLE"], framework="xgboost",
                        metrics={"auc": 0.8123}, dag_id=dag_run.dag_id, run_id=dag_run.run_id)
            reg.dispose()

        publish(evaluate())
''')


def _dags_test(airflow_home: Path, dags: Path, conf: dict, extra_env: dict) -> str:
    env = airflow_base_env(airflow_home)
    env.update(extra_env)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    proc = subprocess.run([str(B.VENV_BIN / "airflow"), "dags", "test", RUN_DAG, "--conf", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    run_id, _states = latest_run_states(Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")),
                                        RUN_DAG)
    assert run_id
    return run_id


@pytest.fixture(scope="module")
def ui(tmp_path_factory, airflow_home):
    root = tmp_path_factory.mktemp("ui")
    home, ml = root / "airflow", root / "ml"
    home.mkdir()
    ml.mkdir()
    artifacts = Path(os.environ.get("AIRFLOW_ML_UI_ARTIFACTS") or root / "screenshots")
    artifacts.mkdir(parents=True, exist_ok=True)
    registry_url = f"sqlite:///{ml}/registry.db"  # what the embedded default resolves to
    seeded = B.seed_models(registry_url, str(ml / "storage"), root / "work")
    B.seed_dictionary(f"sqlite:///{ml}/dictionary.db")
    # two real DAG runs, in the metadata DB the API server reads: one publishes, one fails its gate
    dags = root / "dags"
    dags.mkdir()
    (dags / "ui_run_demo.py").write_text(DEMO_DAG)
    demo_env = {"UI_DEMO_REGISTRY": registry_url, "UI_DEMO_BUNDLE": seeded["records"][-1].bundle_uri}
    published_run = _dags_test(airflow_home, dags, {"pass_gate": True}, demo_env)
    gated_run = _dags_test(airflow_home, dags, {"pass_gate": False}, demo_env)

    server = B.ApiServer(home, B.airflow_env(home, airflow_home / "airflow.db", ml))
    server.start()
    driver = None
    try:
        driver = B.chrome()
        driver.set_script_timeout(60)
        yield {
            "server": server, "driver": driver, "registry_url": registry_url, "dict_url": f"sqlite:///{ml}/dictionary.db",
            "seeded": seeded, "artifacts": artifacts, "published_run": published_run, "gated_run": gated_run,
        }
    finally:
        if driver is not None:
            driver.quit()
        server.stop()


# -- helpers ------------------------------------------------------------------------------------


def _wait(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def _login(ui, user: str, next_path: str = "/ml/models") -> None:
    from selenium.webdriver.common.by import By

    d, url = ui["driver"], ui["server"].url
    d.get(url + "/ml/static/ml.css")
    d.delete_all_cookies()
    d.get(url + next_path)
    # not signed in: Airflow's own login page
    _wait(d, lambda d: d.find_elements(By.NAME, "username"))
    assert "/auth/login" in d.current_url
    name, password = B.USERS[user]
    d.find_element(By.NAME, "username").send_keys(name)
    d.find_element(By.NAME, "password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(d, lambda d: d.current_url.startswith(url + next_path.split("?")[0]) and d.find_elements(By.ID, "user"))
    assert d.find_element(By.ID, "user").text == name


def _shot(ui, name: str) -> None:
    ui["driver"].save_screenshot(str(ui["artifacts"] / f"{name}.png"))


def _images(driver) -> list[list]:
    """[src, HTTP status, content type, rendered] for every <img> of the page (fetched again by the
    browser with its own cookie, so the status is what the browser got)."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.images).map(img =>
            fetch(img.src, {credentials: 'same-origin'}).then(r =>
                [img.getAttribute('src'), r.status, r.headers.get('content-type'), img.complete && img.naturalWidth > 0])
        )).then(done, e => done(String(e)));
    """)


def _post(driver, path: str, fields: dict) -> int:
    """A same-origin form POST from the page (the browser's cookie and Origin): the HTTP status."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: 'POST', body: new URLSearchParams(arguments[1]),
                             credentials: 'same-origin', redirect: 'manual'})
            .then(r => done(r.status), e => done(String(e)));
    """, path, fields)


def _assert_images_ok(driver, minimum: int) -> list[str]:
    images = _images(driver)
    assert isinstance(images, list) and len(images) >= minimum, images
    for src, status, ctype, rendered in images:
        assert status == 200, (src, status)
        assert ctype.split(";")[0] in ("image/png", "image/svg+xml"), (src, ctype)
        assert rendered, f"{src} did not render"
    return [i[0] for i in images]


def _auc(ui, version: int) -> float:
    return ui["seeded"]["metrics"][version]["auc"]


# -- tests --------------------------------------------------------------------------------------


def test_login_and_models_list(ui):
    from selenium.webdriver.common.by import By

    _login(ui, "admin", "/ml/models")
    d = ui["driver"]
    row = d.find_element(By.CSS_SELECTOR, f'#models tr[data-model="{B.MODEL}"]')
    assert row.find_element(By.CLASS_NAME, "serving-version").text == "2"  # the seeded rollback
    assert row.find_element(By.CLASS_NAME, "latest-version").text == "3"
    assert row.find_element(By.CLASS_NAME, "main-metric").text == f"auc = {_auc(ui, 2):.4f}"
    srcs = _assert_images_ok(d, 2)  # one trend per model
    assert any(B.MODEL in s and "small=1" in s for s in srcs)
    _shot(ui, "models")


def test_model_page_versions_charts_and_comparison(ui):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d, url = ui["driver"], ui["server"].url
    d.get(f"{url}/ml/models/{B.MODEL}")
    assert d.find_element(By.ID, "serving-version").text == "2"
    rows = d.find_elements(By.CSS_SELECTOR, "#versions > tbody > tr")
    assert [r.get_attribute("data-version") for r in rows] == ["3", "2", "1"]
    for r in rows:
        v = int(r.get_attribute("data-version"))
        assert r.find_element(By.CSS_SELECTOR, 'td[data-metric="auc"]').text == f"{_auc(ui, v):.4f}"
        link = r.find_element(By.CLASS_NAME, "run-link").get_attribute("href")
        assert link == f"{url}/dags/{B.DAG_ID}/runs/{quote(ui['seeded']['run_ids'][v], safe='')}"
    # every chart of the served version's bundle, the metric chart and the ROC overlay load (200)
    srcs = _assert_images_ok(d, 8)
    bundle = sorted(s.rsplit("/", 1)[1] for s in srcs if "/versions/2/charts/" in s)
    assert bundle == ["feature_importance.png", "gain.png", "ks.png", "lift.png", "pr.png", "roc.png"]
    _shot(ui, "model")
    # compare versions 1 and 3: metric deltas, ROC curves of both overlaid
    Select(d.find_element(By.NAME, "a")).select_by_value("1")
    Select(d.find_element(By.NAME, "b")).select_by_value("3")
    d.find_element(By.ID, "compare-button").click()
    _wait(d, lambda d: "a=1" in d.current_url)
    auc_row = d.find_element(By.CSS_SELECTOR, '#comparison tr[data-metric="auc"]')
    cells = [c.text for c in auc_row.find_elements(By.TAG_NAME, "td")]
    assert cells == ["auc", f"{_auc(ui, 1):.4f}", f"{_auc(ui, 3):.4f}", f"{_auc(ui, 3) - _auc(ui, 1):+.4f}"]
    assert "better" in auc_row.find_element(By.CLASS_NAME, "delta").get_attribute("class")
    roc = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('roc-overlay').src).then(r => r.text()).then(done);
    """)
    assert "v1 (AUC" in roc and "v3 (AUC" in roc and roc.count("<polyline") == 2
    _assert_images_ok(d, 8)
    d.find_element(By.ID, "compare").location_once_scrolled_into_view  # noqa: B018 - scrolls for the shot
    _shot(ui, "model-compare")


def test_rollback_through_the_ui_is_logged_with_the_user(ui):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from airflow_ml_provider.ml.registry import ModelRegistry

    d, url = ui["driver"], ui["server"].url
    d.get(f"{url}/ml/models/{B.MODEL}")
    Select(d.find_element(By.ID, "serve-version")).select_by_value("1")
    d.find_element(By.ID, "serve-reason").send_keys("canary regression on v2")
    d.find_element(By.ID, "serve-button").click()
    _wait(d, lambda d: d.find_elements(By.ID, "message"))
    assert "now serving version 1" in d.find_element(By.ID, "message").text
    assert d.find_element(By.ID, "serving-version").text == "1"
    reg = ModelRegistry(ui["registry_url"])
    try:
        last = reg.events(B.MODEL)[-1]
        assert (last.action, last.version, last.created_by, last.reason) == (
            "rollback", 1, "admin", "canary regression on v2")
        assert reg.current(B.MODEL).version == 1
    finally:
        reg.dispose()
    first_log_row = d.find_element(By.CSS_SELECTOR, "#serving-log tbody tr")
    assert first_log_row.find_element(By.CLASS_NAME, "by").text == "admin"
    _shot(ui, "model-rollback")


def test_dictionary_search_edit_history_and_masking(ui):
    from selenium.webdriver.common.by import By

    from airflow_ml_provider.dictionary_store import DictionaryStore

    d, url = ui["driver"], ui["server"].url
    d.get(f"{url}/ml/dictionary")
    keys = [r.get_attribute("data-key") for r in d.find_elements(By.CSS_SELECTOR, "#dictionary tbody tr")]
    assert keys == ["db_password", "feature.window_days", "ml.audio_ctr.min_auc"]
    masked = d.find_element(By.CSS_SELECTOR, '#dictionary tr[data-key="db_password"] td.value').text
    assert masked == "***" and B.SECRET not in d.page_source
    _shot(ui, "dictionary")
    # search
    d.find_element(By.ID, "search").send_keys("window")
    d.find_element(By.CSS_SELECTOR, "#search-form button").click()
    _wait(d, lambda d: "q=window" in d.current_url)
    assert [r.get_attribute("data-key") for r in d.find_elements(By.CSS_SELECTOR, "#dictionary tbody tr")] == [
        "feature.window_days"]
    # edit one key through its page
    d.find_element(By.LINK_TEXT, "feature.window_days").click()
    _wait(d, lambda d: d.find_elements(By.ID, "edit-value"))
    box = d.find_element(By.ID, "edit-value")
    box.clear()
    box.send_keys("45")
    desc = d.find_element(By.ID, "edit-description")
    desc.clear()
    desc.send_keys("look-back window (days)")
    d.find_element(By.ID, "save-button").click()
    _wait(d, lambda d: d.find_elements(By.ID, "message"))
    assert d.find_element(By.ID, "value").text == "45"
    top = d.find_element(By.CSS_SELECTOR, "#history tbody tr")
    assert top.find_element(By.CLASS_NAME, "who").text == "admin"
    assert (top.find_element(By.CLASS_NAME, "old").text, top.find_element(By.CLASS_NAME, "new").text) == ("30", "45")
    _shot(ui, "dictionary-key")
    store = DictionaryStore(ui["dict_url"])
    try:
        h = store.history("feature.window_days")[0]
        assert (h.action, h.old_value, h.new_value, h.changed_by) == ("update", "30", "45", "admin")
        assert h.new_description == "look-back window (days)"
        # the sensitive key's page never carries its value, and saving it with an empty value keeps it
        d.get(f"{url}/ml/dictionary/key?key=db_password")
        assert B.SECRET not in d.page_source and d.find_element(By.ID, "value").text == "***"
        d.find_element(By.ID, "edit-description").send_keys(" (rotated monthly)")
        d.find_element(By.ID, "save-button").click()
        _wait(d, lambda d: d.find_elements(By.ID, "message"))
        assert store.get("db_password").value == B.SECRET
        assert B.SECRET not in d.page_source
        # a key the CLI would refuse is refused here too, with the CLI's message
        d.get(f"{url}/ml/dictionary")
        d.find_element(By.ID, "new-key").send_keys(" padded")
        d.find_element(By.ID, "new-value").send_keys("1")
        d.find_element(By.ID, "create-button").click()
        _wait(d, lambda d: d.find_elements(By.ID, "error"))
        assert "leading or trailing whitespace" in d.find_element(By.ID, "error").text
        assert all(e.key != " padded" for e in store.list())
    finally:
        store.dispose()


def test_run_tab_shows_the_published_version_or_the_gate_reasons(ui):
    from selenium.webdriver.common.by import By

    d, url = ui["driver"], ui["server"].url
    d.get(f"{url}/ml/runs/{RUN_DAG}/{quote(ui['published_run'], safe='')}")
    assert d.find_element(By.CSS_SELECTOR, "#published .published-version").text == "1"
    assert SHADOW in d.find_element(By.ID, "published").text
    _shot(ui, "run-published")
    d.get(f"{url}/ml/runs/{RUN_DAG}/{quote(ui['gated_run'], safe='')}")
    reasons = d.find_element(By.ID, "reasons").text
    assert "gate failed (evaluate): auc 0.6100 < minimum 0.7500" in reasons
    tasks = d.find_element(By.ID, "tasks").text
    assert "publish skipped" in tasks
    _shot(ui, "run-gated")
    # the same page as the "ML model" tab of the run in Airflow's own UI (external view, dag_run)
    d.get(f"{url}/dags/{RUN_DAG}/runs/{quote(ui['published_run'], safe='')}/plugin/ml-model")
    frame = _wait(d, lambda d: next((f for f in d.find_elements(By.TAG_NAME, "iframe")
                                     if f"ml/runs/{RUN_DAG}/" in (f.get_attribute("src") or "")), None))
    d.switch_to.frame(frame)
    try:
        _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#published .published-version"))
        assert d.find_element(By.CSS_SELECTOR, "#published .published-version").text == "1"
    finally:
        d.switch_to.default_content()
    _shot(ui, "run-tab-in-airflow")


def test_viewer_sees_models_but_cannot_write(ui):
    from selenium.webdriver.common.by import By

    from airflow_ml_provider.dictionary_store import DictionaryStore
    from airflow_ml_provider.ml.registry import ModelRegistry

    reg = ModelRegistry(ui["registry_url"])
    before = len(reg.events(B.MODEL))
    _login(ui, "viewer", f"/ml/models/{B.MODEL}")
    d, url = ui["driver"], ui["server"].url
    assert d.find_elements(By.ID, "no-serve") and not d.find_elements(By.ID, "serve-form")
    _assert_images_ok(d, 8)
    _shot(ui, "model-viewer")
    assert _post(d, f"/ml/models/{B.MODEL}/serve", {"version": "3", "reason": "viewer tries"}) == 403
    assert _post(d, "/ml/dictionary/set", {"key": "feature.window_days", "value": "1"}) == 403
    assert _post(d, "/ml/dictionary/delete", {"key": "feature.window_days"}) == 403
    d.get(f"{url}/ml/dictionary")  # the dictionary serves Variables: a viewer may not read it
    assert "403" in d.find_element(By.TAG_NAME, "h1").text
    try:
        assert len(reg.events(B.MODEL)) == before
    finally:
        reg.dispose()
    store = DictionaryStore(ui["dict_url"])
    try:
        assert store.get("feature.window_days").value == "45"
    finally:
        store.dispose()


def test_unauthenticated_requests_get_401_or_the_login_page(ui):
    import urllib.error
    import urllib.request

    url = ui["server"].url

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def status(path, method="GET", data=None):
        req = urllib.request.Request(url + path, method=method, data=data)
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, r.headers.get("Location")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Location")

    assert status("/ml/api/models")[0] == 401
    code, location = status(f"/ml/models/{B.MODEL}")
    assert code == 302 and "/auth/login" in location
    assert status(f"/ml/api/models/{B.MODEL}/rollback", "POST", b"{}")[0] == 401
    assert status(f"/ml/models/{B.MODEL}/versions/2/charts/roc.png")[0] == 401
    code, location = status("/ml/dictionary/set", "POST", b"key=a&value=b")
    assert code in (401, 302) and (code == 401 or "/auth/login" in location)
