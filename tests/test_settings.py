"""One settings owner (ml/settings.py): every consumer names the same registry, storage and dictionary.

Each scenario starts fresh processes with the same settings -- (a) only ``AIRFLOW_ML_*`` variables,
(b) only Airflow's ``[ml]`` section (as ``AIRFLOW__ML__*`` and as ``airflow.cfg``), (c) nothing but the
ML home (the embedded default), (d) explicit arguments over everything, (e) Airflow connections
whose extra sets ``table_prefix`` -- and asks each consumer where things are: the operator helper
(``MLBaseOperator``), ``ModelRegistryHook``, ``airflow-ml serve``'s resolution entry and the real
``airflow-ml serve`` process, the UI plugin's view functions, ``airflow-ml dictionary``, the secrets
backend, and the real ``airflow-ml models list`` / ``airflow-ml config`` processes. A marker model and
a marker dictionary key are written beforehand into the place the settings name, so the consumers
must not only name it but read it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_ml_provider.dictionary_store import DictionaryStore
from airflow_ml_provider.ml import settings
from airflow_ml_provider.ml.registry import ModelRegistry

VENV_BIN = Path(sys.executable).parent
AIRFLOW_ML = VENV_BIN / "airflow-ml"
BACKEND = settings.BACKEND_CLASS

PROBE = r"""
import json, sys
explicit = json.loads(sys.argv[1])
out = {}
from airflow_ml_provider.cli import build_parser

# the operator helper
from airflow_ml_provider.operators.base import MLBaseOperator
op = MLBaseOperator(task_id="probe")
op.storage_root = explicit.get("storage")
op.registry = explicit.get("registry")
reg = op.open_registry()
out["operator"] = {"storage": op.resolved_storage_root(), "registry": reg.url.render_as_string(hide_password=False),
                   "table": reg.publish_table.name, "models": reg.names()}

# the hook
from airflow_ml_provider.hooks.registry import ModelRegistryHook
reg = ModelRegistryHook(registry_conn_id=explicit.get("registry")).get_registry(create_tables=False)
out["hook"] = {"registry": reg.url.render_as_string(hide_password=False), "table": reg.publish_table.name,
               "models": reg.names()}

# airflow-ml serve: its resolution entry
from airflow_ml_provider.cli import serve
argv = ["serve", "--models", "marker"] + (["--registry", explicit["registry"]] if explicit.get("registry") else [])
config = serve.build_config(build_parser().parse_args(argv))
from airflow_ml_provider.ml.registry import ModelRegistry
reg = ModelRegistry(config["registry"], table_prefix=config["table_prefix"])
out["serve"] = {"registry": config["registry"], "table": reg.publish_table.name, "models": reg.names()}

# the UI plugin's views (no arguments: they always follow the settings)
if not explicit:
    from airflow_ml_provider.plugins import views
    loc = views._registry_location()
    names = [m["name"] for m in views.models_overview()]
    out["views"] = {"registry": loc.url, "table": loc.tables[0], "models": names}
    d = views._dictionary_location()
    values = {e["key"]: e["value"] for e in views.dictionary_entries()}
    out["views_dictionary"] = {"url": d.url, "table": d.table, "marker": values.get("marker")}

# airflow-ml dictionary
from airflow_ml_provider.cli import dictionary as dict_cli
argv = ["dictionary", "list"] + (["--sql-alchemy-conn", explicit["dictionary"]] if explicit.get("dictionary") else [])
store, prefix = dict_cli._open(build_parser().parse_args(argv))
entry = store.get("marker")
out["dictionary_cli"] = {"url": store.engine.url.render_as_string(hide_password=False), "table": store.table_name,
                         "marker": entry.value if entry else None}

# the secrets backend
from airflow_ml_provider.secrets.dictionary import DictionaryTableBackend
kwargs = {"sql_alchemy_conn": explicit["dictionary"]} if explicit.get("dictionary") else {}
backend = DictionaryTableBackend(**kwargs)
out["backend"] = {"url": backend.sql_alchemy_conn, "table": backend.table, "marker": backend.get_variable("marker")}
print("RESULT " + json.dumps(out))
"""


def _base_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without any of the platform's settings, and a fresh AIRFLOW_HOME."""
    drop = ("AIRFLOW_ML_", "AIRFLOW__ML__", "AIRFLOW_CONN_", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__SECRETS",
            "AIRFLOW_CONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    home = tmp_path / "airflow_home"
    home.mkdir(exist_ok=True)
    env["AIRFLOW_HOME"] = str(home)
    return env


def _probe(env: dict[str, str], explicit: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(explicit or {})], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(AIRFLOW_ML), *argv], env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_names(env: dict[str, str], *extra: str) -> str:
    """Start the real ``airflow-ml serve``, read the registry it announces, stop it (by PID)."""
    proc = subprocess.Popen(
        [str(AIRFLOW_ML), "serve", "--models", "marker", "--port", str(_free_port()), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    seen: list[str] = []
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 180  # a hang guard only, not a timing assertion
        while time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "Model registry: " in line:
                return line.split("Model registry: ", 1)[1].strip()
        raise AssertionError("airflow-ml serve never named its registry:\n" + "".join(seen)[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stderr.close()


def _plant(registry_url: str, table_prefix: str, dict_url: str, dict_table: str, marker: str) -> None:
    reg = ModelRegistry(registry_url, table_prefix=table_prefix)
    reg.publish(name=f"marker_{marker}", bundle_uri=f"/nowhere/{marker}", framework="linear")
    reg.dispose()
    store = DictionaryStore(dict_url, dict_table)
    store.create_tables()
    store.set("marker", marker)
    store.dispose()


def _check(out: dict, *, registry: str, table: str, storage: str | None, dictionary: str, dict_table: str,
           marker: str) -> None:
    for consumer in ("operator", "hook", "serve", "views"):
        if consumer not in out:
            continue
        got = out[consumer]
        assert (consumer, got["registry"], got["table"]) == (consumer, registry, table)
        assert f"marker_{marker}" in got["models"], (consumer, got["models"])
    if storage is not None:
        assert out["operator"]["storage"] == storage
    for consumer in ("views_dictionary", "dictionary_cli", "backend"):
        if consumer not in out:
            continue
        got = out[consumer]
        assert (consumer, got["url"], got["table"], got["marker"]) == (consumer, dictionary, dict_table, marker)


def _check_cli(env: dict[str, str], marker: str, registry_masked: str, storage: str | None,
               *registry_arg: str) -> None:
    proc = _cli(env, "models", "list", "--format", "json", *registry_arg)
    assert proc.returncode == 0, proc.stderr
    assert f"marker_{marker}" in {r["name"] for r in json.loads(proc.stdout)}
    assert _serve_names(env, *registry_arg).startswith(registry_masked)
    if storage is not None:
        proc = _cli(env, "config", "--json")
        assert proc.returncode == 0, proc.stderr
        shown = json.loads(proc.stdout)
        assert shown["storage"]["value"] == storage
        assert shown["registry"]["url"] == registry_masked


# ---------------------------------------------------------------------------------------------


def test_a_only_environment_variables(tmp_path):
    reg, dic = f"sqlite:///{tmp_path}/reg_a.db", f"sqlite:///{tmp_path}/dict_a.db"
    _plant(reg, "", dic, "ml_dictionary", "a")
    env = _base_env(tmp_path) | {
        "AIRFLOW_ML_HOME": str(tmp_path / "home_a"),
        "AIRFLOW_ML_STORAGE": str(tmp_path / "store_a"),
        "AIRFLOW_ML_REGISTRY": reg,
        "AIRFLOW_ML_DICTIONARY": dic,
    }
    out = _probe(env)
    _check(out, registry=reg, table="ml_model_publish", storage=str(tmp_path / "store_a"), dictionary=dic,
           dict_table="ml_dictionary", marker="a")
    _check_cli(env, "a", reg, str(tmp_path / "store_a"))


def test_b_only_the_airflow_ml_config_section(tmp_path):
    """[ml] as AIRFLOW__ML__* variables beats AIRFLOW_ML_* decoys; then [ml] from airflow.cfg."""
    reg, dic = f"sqlite:///{tmp_path}/reg_b.db", f"sqlite:///{tmp_path}/dict_b.db"
    _plant(reg, "", dic, "settings_b", "b")
    env = _base_env(tmp_path) | {
        "AIRFLOW__ML__HOME": str(tmp_path / "home_b"),
        "AIRFLOW__ML__STORAGE": str(tmp_path / "store_b"),
        "AIRFLOW__ML__REGISTRY_CONN": reg,
        "AIRFLOW__ML__DICTIONARY_CONN": dic,
        "AIRFLOW__ML__DICTIONARY_TABLE": "settings_b",
        # decoys one layer down: must lose
        "AIRFLOW_ML_STORAGE": str(tmp_path / "decoy"),
        "AIRFLOW_ML_REGISTRY": f"sqlite:///{tmp_path}/decoy.db",
        "AIRFLOW_ML_DICTIONARY": f"sqlite:///{tmp_path}/decoy.db",
    }
    out = _probe(env)
    _check(out, registry=reg, table="ml_model_publish", storage=str(tmp_path / "store_b"), dictionary=dic,
           dict_table="settings_b", marker="b")
    _check_cli(env, "b", reg, str(tmp_path / "store_b"))

    # the same settings in airflow.cfg, read through Airflow's own configuration
    env = _base_env(tmp_path)
    (Path(env["AIRFLOW_HOME"]) / "airflow.cfg").write_text(
        "[core]\nload_examples = False\n\n[ml]\n"
        f"home = {tmp_path / 'home_b'}\nstorage = {tmp_path / 'store_b'}\nregistry_conn = {reg}\n"
        f"dictionary_conn = {dic}\ndictionary_table = settings_b\n"
    )
    out = _probe(env)
    _check(out, registry=reg, table="ml_model_publish", storage=str(tmp_path / "store_b"), dictionary=dic,
           dict_table="settings_b", marker="b")
    _check_cli(env, "b", reg, str(tmp_path / "store_b"))
    assert not (tmp_path / "decoy.db").exists()


def test_c_nothing_but_the_ml_home_is_the_embedded_default(tmp_path):
    home = tmp_path / "home_c"
    reg, dic = f"sqlite:///{home}/registry.db", f"sqlite:///{home}/dictionary.db"
    home.mkdir()
    _plant(reg, "", dic, "ml_dictionary", "c")
    # the secrets backend enabled by its class name alone: the dictionary is the embedded one too
    env = _base_env(tmp_path) | {"AIRFLOW_ML_HOME": str(home), "AIRFLOW__SECRETS__BACKEND": BACKEND}
    out = _probe(env)
    _check(out, registry=reg, table="ml_model_publish", storage=str(home / "storage"), dictionary=dic,
           dict_table="ml_dictionary", marker="c")
    _check_cli(env, "c", reg, str(home / "storage"))


def test_c_without_a_dictionary_the_ui_says_how_to_configure_one(tmp_path):
    env = _base_env(tmp_path) | {"AIRFLOW_ML_HOME": str(tmp_path / "home")}
    code = (
        "import json\nfrom fastapi import HTTPException\nfrom airflow_ml_provider.plugins import views\n"
        "assert views._dictionary_location() is None\n"
        "try:\n    views.dictionary_entries()\nexcept HTTPException as exc:\n"
        "    print(json.dumps([exc.status_code, exc.detail]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, detail = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == 404 and "No dictionary database is configured" in detail and "AIRFLOW_ML_DICTIONARY" in detail
    proc = _cli(env, "dictionary", "list")
    assert proc.returncode == 1 and "no dictionary database configured" in proc.stderr


def test_d_an_explicit_argument_overrides_every_layer(tmp_path):
    reg, dic = f"sqlite:///{tmp_path}/reg_d.db", f"sqlite:///{tmp_path}/dict_d.db"
    _plant(reg, "", dic, "ml_dictionary", "d")
    env = _base_env(tmp_path) | {
        "AIRFLOW__ML__STORAGE": str(tmp_path / "decoy_cfg"),
        "AIRFLOW__ML__REGISTRY_CONN": f"sqlite:///{tmp_path}/decoy_cfg.db",
        "AIRFLOW__ML__DICTIONARY_CONN": f"sqlite:///{tmp_path}/decoy_cfg.db",
        "AIRFLOW_ML_STORAGE": str(tmp_path / "decoy_env"),
        "AIRFLOW_ML_REGISTRY": f"sqlite:///{tmp_path}/decoy_env.db",
        "AIRFLOW__SECRETS__BACKEND": BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"sql_alchemy_conn": f"sqlite:///{tmp_path}/decoy_kw.db"}),
    }
    explicit = {"storage": str(tmp_path / "store_d"), "registry": reg, "dictionary": dic}
    out = _probe(env, explicit)
    assert "views" not in out  # the UI takes no arguments
    _check(out, registry=reg, table="ml_model_publish", storage=str(tmp_path / "store_d"), dictionary=dic,
           dict_table="ml_dictionary", marker="d")
    _check_cli(env, "d", reg, None, "--registry", reg)
    assert not any(p.name.startswith("decoy") and p.suffix == ".db" for p in tmp_path.iterdir())


def test_e_a_connection_extra_table_prefix_is_honoured_everywhere(tmp_path):
    reg_file, dict_file = tmp_path / "reg_e.db", tmp_path / "dict_e.db"
    reg, dic = f"sqlite:///{reg_file}", f"sqlite:///{dict_file}"
    _plant(reg, "team_", dic, "team_ml_dictionary", "e")
    env = _base_env(tmp_path) | {
        "AIRFLOW_ML_HOME": str(tmp_path / "home_e"),
        "AIRFLOW_CONN_ML_REG_E": json.dumps(
            {"conn_type": "sqlite", "host": str(reg_file), "extra": {"table_prefix": "team_"}}),
        "AIRFLOW_CONN_ML_DICT_E": json.dumps(
            {"conn_type": "sqlite", "host": str(dict_file), "extra": {"table_prefix": "team_"}}),
        "AIRFLOW__ML__REGISTRY_CONN": "ml_reg_e",
        "AIRFLOW__ML__DICTIONARY_CONN": "ml_dict_e",
    }
    out = _probe(env)
    _check(out, registry=reg, table="team_ml_model_publish", storage=str(tmp_path / "home_e" / "storage"),
           dictionary=dic, dict_table="team_ml_dictionary", marker="e")
    _check_cli(env, "e", reg, str(tmp_path / "home_e" / "storage"))
    # the same connection given explicitly (a hook's conn id, --registry)
    out = _probe(env, {"registry": "ml_reg_e", "dictionary": "ml_dict_e"})
    _check(out, registry=reg, table="team_ml_model_publish", storage=None, dictionary=dic,
           dict_table="team_ml_dictionary", marker="e")
    # the model service reads the prefixed tables: the marker model is there, an unprefixed table is not used
    assert "ml_model_publish" not in sa.inspect(sa.create_engine(reg)).get_table_names()


# ---------------------------------------------------------------------------------------------
# the documented precedence, layer by layer (in this process: Airflow's conf reads AIRFLOW__ML__*)


@pytest.fixture
def clean(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("AIRFLOW_ML_", "AIRFLOW__ML__", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__SECRETS")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_ML_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_precedence_argument_then_ml_section_then_environment_then_default(clean, tmp_path):
    for name, (option, env_var) in settings.OPTIONS.items():
        if name == "home":
            continue
        arg, cfg, env = f"{name}-argument", f"{name}-config", f"{name}-env"
        clean.setenv(f"AIRFLOW__ML__{option.upper()}", cfg)
        clean.setenv(env_var, env)
        s = settings.resolve(**{name: arg})
        assert (getattr(s, name), s.source(name)) == (arg, "argument")
        s = settings.resolve()
        assert (getattr(s, name), s.source(name)) == (cfg, f"AIRFLOW__ML__{option.upper()}")
        clean.delenv(f"AIRFLOW__ML__{option.upper()}")
        s = settings.resolve()
        assert (getattr(s, name), s.source(name)) == (env, env_var)
        clean.delenv(env_var)
        assert settings.resolve().source(name) == "default"
    s = settings.resolve()
    home = str(tmp_path / "home")
    assert (s.home, s.source("home")) == (home, "AIRFLOW_ML_HOME")
    assert s.storage == os.path.join(home, "storage")
    assert s.registry == f"sqlite:///{home}/registry.db"
    assert s.dictionary is None and s.dictionary_table == "ml_dictionary"
    assert s.service_url == "http://127.0.0.1:8501"
    clean.setenv("AIRFLOW__ML__HOME", str(tmp_path / "cfg_home"))  # [ml] home beats AIRFLOW_ML_HOME
    assert settings.resolve().storage == str(tmp_path / "cfg_home" / "storage")
    # without Airflow's configuration the [ml] layer is skipped
    assert settings.resolve(airflow_conf=None).home == home


def test_dictionary_precedence_backend_kwargs_then_ml_section(clean, tmp_path):
    clean.setenv("AIRFLOW_ML_DICTIONARY", "sqlite:///env.db")
    clean.setenv("AIRFLOW__ML__DICTIONARY_CONN", "sqlite:///cfg.db")
    clean.setenv("AIRFLOW__ML__DICTIONARY_TABLE", "cfg_table")
    assert settings.resolve().dictionary == "sqlite:///cfg.db"
    # the backend's kwargs name the database it serves: the CLI and the UI follow them
    clean.setenv("AIRFLOW__SECRETS__BACKEND", settings.BACKEND_CLASS)
    clean.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"sql_alchemy_conn": "sqlite:///kw.db"}))
    s = settings.resolve()
    assert (s.dictionary, s.source("dictionary")) == ("sqlite:///kw.db", "[secrets] backend_kwargs")
    assert (s.dictionary_table, s.source("dictionary_table")) == ("cfg_table", "AIRFLOW__ML__DICTIONARY_TABLE")
    # [workers] wins over [secrets], as for task processes
    clean.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND", settings.BACKEND_CLASS)
    clean.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS",
                 json.dumps({"sql_alchemy_conn": "sqlite:///w.db", "table": "w_table"}))
    s = settings.resolve()
    assert (s.dictionary, s.dictionary_table) == ("sqlite:///w.db", "w_table")
    # an explicit database drops the backend's table (it belongs to the backend's database)
    s = settings.resolve(dictionary="sqlite:///arg.db")
    assert (s.dictionary, s.dictionary_table) == ("sqlite:///arg.db", "cfg_table")
    # backend enabled without a database, nothing else: the embedded default
    clean.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", "{}")
    clean.delenv("AIRFLOW__SECRETS__BACKEND_KWARGS")
    clean.delenv("AIRFLOW__ML__DICTIONARY_CONN")
    clean.delenv("AIRFLOW_ML_DICTIONARY")
    assert settings.resolve().dictionary == f"sqlite:///{tmp_path}/home/dictionary.db"
    clean.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", "{not json")
    with pytest.raises(settings.SettingsError, match=r"\[workers\] secrets_backend_kwargs is not valid JSON"):
        settings.resolve()


def test_registry_location_table_prefix_and_errors(clean, tmp_path):
    clean.setenv("AIRFLOW_CONN_REG_P", json.dumps(
        {"conn_type": "mysql", "host": "db", "login": "ml", "password": "Pw-secret-1", "schema": "reg",
         "extra": {"table_prefix": "p_"}}))
    loc = settings.registry_location(registry="reg_p")
    assert (loc.table_prefix, loc.tables, loc.source) == ("p_", ("p_ml_model_publish", "p_ml_model_serving"),
                                                          "argument")
    assert loc.masked == "mysql+pymysql://ml:***@db/reg?charset=utf8mb4" and "Pw-secret-1" in loc.url
    assert settings.registry_location(registry="reg_p", table_prefix="x_").table_prefix == "x_"
    from airflow_ml_provider.ml.registry import RegistryError

    with pytest.raises(RegistryError, match="connection type 'http' is not supported for the model registry"):
        clean.setenv("AIRFLOW_CONN_REG_HTTP", "http://example.com")
        settings.registry_location(registry="reg_http")
    with pytest.raises(RegistryError, match="AIRFLOW_CONN_REG_BAD is not valid JSON"):
        clean.setenv("AIRFLOW_CONN_REG_BAD", "{oops")
        settings.registry_location(registry="reg_bad")
    # the embedded default creates the ML home so SQLite can open the file
    loc = settings.registry_location()
    assert loc.source == "default" and (tmp_path / "home").is_dir()


def test_importing_the_settings_module_is_cheap():
    code = ("import sys, airflow_ml_provider.ml.settings; "
            "print([m for m in ('airflow', 'sqlalchemy', 'pandas') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
