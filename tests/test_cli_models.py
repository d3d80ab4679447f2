"""``airflow-ml models list|show|rollback`` on SQLite and the real MariaDB: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ml_provider.cli import main
from airflow_ml_provider.ml.registry import ModelRegistry

AIRFLOW_ML = Path(sys.executable).parent / "airflow-ml"


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def reg_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    return request.getfixturevalue("mariadb_url")


@pytest.fixture
def populated(reg_url, monkeypatch):
    monkeypatch.delenv("AIRFLOW_ML_REGISTRY", raising=False)
    return _populate(reg_url)


def _populate(reg_url: str) -> str:
    reg = ModelRegistry(reg_url)
    for i in range(3):
        reg.publish(
            name="churn",
            bundle_uri=f"file:///store/models/churn/{i + 1}",
            framework="xgboost",
            metrics={"auc": 0.70 + i / 100, "ks": 0.3},
            spec_uri=f"file:///store/models/churn/{i + 1}/fitted_spec.json",
            checksum=f"{i}" * 64,
            dag_id="xgboost_recommendation",
            run_id=f"run-{i}",
        )
    reg.publish(
        name="ltv", bundle_uri="file:///store/models/ltv/1", framework="linear", metrics={"rmse": 1.5}
    )
    reg.dispose()
    return reg_url


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_table_and_json(capsys, populated):
    rc, out, err = run(capsys, "models", "list", "--registry", populated)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "SERVING",
        "STATUS",
        "FRAMEWORK",
        "CREATED",
        "(UTC)",
        "METRICS",
        "BUNDLE",
    ]
    body = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in body] == [("churn", "1"), ("churn", "2"), ("churn", "3"), ("ltv", "1")]
    assert body[2][2] == "*" and body[3][2] == "*"  # the served versions
    assert "auc=0.72" in lines[3]

    rc, out, _ = run(capsys, "models", "list", "--name", "churn", "--format", "json", "--registry", populated)
    assert rc == 0
    data = json.loads(out)
    assert [(d["name"], d["version"], d["serving"]) for d in data] == [
        ("churn", 1, False),
        ("churn", 2, False),
        ("churn", 3, True),
    ]
    assert data[0]["metrics"] == {"auc": 0.7, "ks": 0.3}
    assert data[0]["run_id"] == "run-0"


def test_show_defaults_to_the_served_version(capsys, populated):
    rc, out, _ = run(capsys, "models", "show", "churn", "--registry", populated)
    assert rc == 0
    data = json.loads(out)
    assert (data["name"], data["version"], data["serving"], data["versions"]) == ("churn", 3, True, [1, 2, 3])
    assert data["checksum"] == "2" * 64
    assert data["last_serving_event"]["action"] == "publish"

    rc, out, _ = run(
        capsys, "models", "show", "churn", "--version", "1", "--format", "table", "--registry", populated
    )
    assert rc == 0
    rows = dict(line.split(None, 1) for line in out.strip().splitlines()[1:])
    assert rows["version"] == "1"
    assert rows["serving"] == "False"
    assert rows["serving_version"] == "3"
    assert rows["metrics.auc"] == "0.7"
    assert rows["bundle_uri"] == "file:///store/models/churn/1"


def test_rollback_changes_what_is_served(capsys, populated):
    rc, out, err = run(
        capsys, "models", "rollback", "churn", "--to", "1", "--by", "alice", "--registry", populated
    )
    assert rc == 0, err
    assert "now serving version 1 (was version 3)" in out
    reg = ModelRegistry(populated)
    assert reg.current("churn").version == 1
    last = reg.events("churn")[-1]
    assert (last.action, last.version, last.created_by) == ("rollback", 1, "alice")
    reg.dispose()
    rc, out, _ = run(capsys, "models", "show", "churn", "--registry", populated)
    assert json.loads(out)["version"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "show", "nope"], "unknown model 'nope' (known models: churn, ltv)"),
        (["models", "show", "churn", "--version", "9"], "model 'churn' has no version 9 (versions: 1, 2, 3)"),
        (
            ["models", "show", "churn", "--version", "abc"],
            "invalid version 'abc': must be a positive integer",
        ),
        (["models", "rollback", "churn", "--to", "7"], "model 'churn' has no version 7 (versions: 1, 2, 3)"),
        (["models", "rollback", "ghost", "--to", "1"], "unknown model 'ghost'"),
        (["models", "list", "--name", "ghost"], "unknown model 'ghost'"),
        (["models", "show", "../etc"], "invalid model name '../etc'"),
    ],
)
def test_errors_name_the_model_and_version(capsys, populated, argv, message):
    rc, out, err = run(capsys, *argv, "--registry", populated)
    assert rc == 1
    assert out == ""
    assert err.startswith("airflow-ml: error: ")
    assert message in err
    assert ModelRegistry(populated).current("churn").version == 3  # nothing changed


def test_registry_from_env_and_from_a_connection_id(capsys, populated, monkeypatch):
    monkeypatch.setenv("AIRFLOW_ML_REGISTRY", populated)
    rc, out, _ = run(capsys, "models", "show", "ltv")
    assert rc == 0 and json.loads(out)["framework"] == "linear"
    monkeypatch.delenv("AIRFLOW_ML_REGISTRY")
    monkeypatch.setenv(
        "AIRFLOW_CONN_ML_REG_CLI", json.dumps({"conn_type": "x", "extra": {"sqlalchemy_url": populated}})
    )
    rc, out, _ = run(capsys, "models", "show", "ltv", "--registry", "ml_reg_cli")
    assert rc == 0 and json.loads(out)["version"] == 1


def test_empty_registry_lists_nothing(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/empty.db"
    rc, out, _ = run(capsys, "models", "list", "--registry", url)
    assert (rc, out.strip()) == (0, "no models published yet")
    rc, out, _ = run(capsys, "models", "list", "--format", "json", "--registry", url)
    assert (rc, json.loads(out)) == (0, [])
    rc, _, err = run(capsys, "models", "show", "churn", "--registry", url)
    assert rc == 1 and "the registry has no models yet" in err


def test_no_registry_configured_means_the_embedded_default(capsys, monkeypatch, tmp_path):
    """Nothing configured: the CLI uses $AIRFLOW_ML_HOME/registry.db, where the operators publish."""
    for var in ("AIRFLOW_ML_REGISTRY", "AIRFLOW__ML__REGISTRY_CONN", "AIRFLOW__ML__HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AIRFLOW_ML_HOME", str(tmp_path / "ml"))
    rc, out, err = run(capsys, "models", "list")
    assert (rc, out.strip()) == (0, "no models published yet"), err
    _populate(f"sqlite:///{tmp_path}/ml/registry.db")
    rc, out, err = run(capsys, "models", "rollback", "churn", "--to", "1")
    assert rc == 0, err
    assert ModelRegistry(f"sqlite:///{tmp_path}/ml/registry.db").current("churn").version == 1


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_ML_", "AIRFLOW__ML__", "AIRFLOW_CONFIG"))}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW_ML_HOME=str(tmp_path / "ml"), **extra)
    return env


def test_registry_from_the_airflow_config(tmp_path, populated):
    """[ml] registry_conn in airflow.cfg, read through Airflow's own configuration (a fresh process)."""
    (tmp_path / "airflow.cfg").write_text(
        f"[core]\nload_examples = False\n\n[ml]\nregistry_conn = {populated}\n"
    )
    proc = subprocess.run([str(AIRFLOW_ML), "models", "show", "ltv"], env=_cli_env(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["framework"] == "linear"
    # the environment variable form of the same option wins over the file
    env = _cli_env(tmp_path, AIRFLOW__ML__REGISTRY_CONN="sqlite:///" + str(tmp_path / "other.db"))
    proc = subprocess.run([str(AIRFLOW_ML), "models", "show", "ltv"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "the registry has no models yet" in proc.stderr


def test_unreachable_database_is_named_with_the_password_masked():
    """The real console script: exit code 1, one line, no traceback, no password."""
    proc = subprocess.run(
        [str(AIRFLOW_ML), "models", "list", "--registry", "mysql://ml:Sup3rSecret@127.0.0.1:1/registry"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "Sup3rSecret" not in proc.stderr
    assert proc.stderr.startswith(
        "airflow-ml: error: cannot reach the model registry at mysql+pymysql://ml:***@127.0.0.1:1/registry"
    )
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.airflow
def test_registry_connection_stored_in_the_airflow_metadata_db(airflow_home, tmp_path):
    """A connection id defined with `airflow connections add` (metastore, not env) is resolved."""
    from tests.fixtures.airflow import VENV_BIN, airflow_base_env

    populated = _populate(f"sqlite:///{tmp_path}/registry.db")
    env = airflow_base_env(airflow_home)
    conn_id = f"ml_reg_{tmp_path.name[-8:]}".replace("-", "_")
    db_file = populated.removeprefix("sqlite:///")
    add = subprocess.run(
        [
            str(VENV_BIN / "airflow"),
            "connections",
            "add",
            conn_id,
            "--conn-type",
            "sqlite",
            "--conn-host",
            db_file,
        ],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert add.returncode == 0, add.stdout + add.stderr
    env = {k: v for k, v in env.items() if not k.startswith(("AIRFLOW_ML_", "AIRFLOW_CONN_"))}
    proc = subprocess.run(
        [str(AIRFLOW_ML), "models", "show", "churn", "--registry", conn_id],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == 3
