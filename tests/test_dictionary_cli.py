"""``airflow-ml dictionary``: list/get/set/delete/history/import/export on SQLite and the real MariaDB,
the connection read from Airflow's configuration, and errors that never end in a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_ml_provider.cli import main
from airflow_ml_provider.dictionary_store import DictionaryStore
from tests.fixtures.airflow import VENV_BIN

BACKEND = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dictionary.db"
    return request.getfixturevalue("mariadb_url")


@pytest.fixture
def cli(db_url, capsys):
    """Run ``airflow-ml dictionary ...`` in-process against ``db_url``; returns (rc, out, err)."""

    def run(*args: str, conn: str | None = db_url):
        argv = ["dictionary", *args]
        if conn is not None:
            argv += ["--sql-alchemy-conn", conn]
        rc = main(argv)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return rc, captured.out, captured.err

    return run


def test_set_get_list_delete_history(cli, db_url):
    assert cli("set", "min_auc", "0.75", "--description", "CTR gate", "--by", "alice") == (
        0,
        "created min_auc\n",
        "",
    )
    assert cli("set", "min_auc", "0.8", "--by", "bob")[1] == "updated min_auc\n"
    assert cli("set", "min_auc", "0.8")[1] == "unchanged min_auc\n"
    assert cli("set", "ratio", "-0.5")[0] == 0  # a value that looks like an option
    assert cli("get", "min_auc")[1] == "0.8\n"
    assert cli("get", "ratio")[1] == "-0.5\n"
    rc, out, _ = cli("get", "min_auc", "--json")
    doc = json.loads(out)
    assert (doc["key"], doc["value"], doc["description"], doc["updated_by"]) == (
        "min_auc",
        "0.8",
        "CTR gate",
        "bob",
    )

    rc, out, _ = cli("list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "DESCRIPTION", "UPDATED_AT", "UPDATED_BY"]
    assert lines[1].startswith("min_auc") and "CTR gate" in lines[1] and "0.8" not in lines[1]
    rc, out, _ = cli("list", "--values", "--json")
    assert [(r["key"], r["value"]) for r in json.loads(out)] == [("min_auc", "0.8"), ("ratio", "-0.5")]

    rc, out, _ = cli("history", "min_auc", "--json")
    assert [(h["action"], h["old_value"], h["new_value"], h["changed_by"]) for h in json.loads(out)] == [
        ("update", "0.75", "0.8", "bob"),
        ("create", None, "0.75", "alice"),
    ]
    rc, out, _ = cli("history")
    assert "0.75 -> 0.8" in out and "bob" in out

    assert cli("delete", "ratio", "--by", "carol")[1] == "deleted ratio\n"
    rc, out, err = cli("get", "ratio")
    assert rc == 1 and out == ""
    assert "key 'ratio' not found" in err
    assert json.loads(cli("history", "ratio", "--json")[1])[0]["action"] == "delete"
    # the data really is in the database
    assert DictionaryStore(db_url).load() == {"min_auc": "0.8"}


def test_get_and_delete_of_missing_key_exit_non_zero(cli):
    rc, out, err = cli("get", "no_such_key")
    assert rc == 1 and out == ""
    assert err.startswith(
        "airflow-ml: error: key 'no_such_key' not found in dictionary table 'ml_dictionary'"
    )
    rc, out, err = cli("delete", "no_such_key")
    assert rc == 1 and "key 'no_such_key' not found" in err


def test_bad_input_is_a_clear_error(cli, tmp_path):
    assert cli("set", "", "v")[2] == "airflow-ml: error: invalid dictionary key '': a key must not be empty\n"
    rc, _, err = cli("set", "k" * 251, "v")
    assert rc == 1 and "251 characters, the limit is 250" in err
    rc, _, err = cli("set", "big", "x" * 70_000)
    assert rc == 1 and "value for key 'big' is too large: 70000 bytes" in err
    rc, _, err = cli("list", "--table", "x; DROP TABLE y")
    assert rc == 1 and "invalid dictionary table name" in err
    rc, _, err = cli("history", "--limit", "-1")
    assert rc == 1 and "--limit must be >= 0" in err
    assert json.loads(cli("list", "--json")[1]) == []  # nothing was written


PROPERTIES = r"""# model settings
! another comment
min_auc = 0.75
sampling.ratio: 0.1
feature.switch   on
long.value = first \
             second \
             third
path = C:\\data\\in
unicode = caf\u00e9 \u4e2d
key\ with\ spaces = v
empty =
"""


def test_import_properties_then_export_round_trip(cli, tmp_path):
    props = tmp_path / "settings.properties"
    props.write_bytes(PROPERTIES.encode("iso-8859-1"))
    rc, out, _ = cli("import", str(props))
    assert rc == 0 and out == f"imported 8 keys from {props}: 8 created, 0 updated, 0 unchanged\n"
    assert cli("get", "long.value")[1] == "first second third\n"
    assert cli("get", "path")[1] == "C:\\data\\in\n"
    assert cli("get", "unicode")[1] == "café 中\n"
    assert cli("get", "feature.switch")[1] == "on\n"
    assert cli("get", "key with spaces")[1] == "v\n"
    assert cli("get", "empty")[1] == "\n"
    cli("set", "min_auc", "0.75", "--description", "gate")

    export = tmp_path / "export.json"
    rc, _, err = cli("export", "-o", str(export))
    assert rc == 0 and "exported 8 keys" in err
    text = export.read_text(encoding="utf-8")
    assert cli("export")[1] == text  # stdout and file agree
    # import reads it back unchanged: into the same DB nothing changes ...
    _, out, _ = cli("import", str(export))
    assert out.endswith("0 created, 0 updated, 8 unchanged\n")
    # ... and into a fresh DB the export is identical, descriptions included
    other = f"sqlite:///{tmp_path}/other.db"
    assert cli("import", str(export), conn=other)[0] == 0
    assert cli("export", conn=other)[1] == text
    assert json.loads(cli("get", "min_auc", "--json", conn=other)[1])["description"] == "gate"


def test_import_json_flat_mapping_and_dry_run(cli, tmp_path):
    src = tmp_path / "vars.json"
    src.write_text(json.dumps({"min_auc": "0.7", "model_cfg": {"threshold": 0.5}, "n": 3}))
    rc, out, _ = cli("import", str(src), "--dry-run")
    assert rc == 0
    assert out == f"dry run: 3 keys in {src}: 3 would be created, 0 changed\n"
    assert json.loads(cli("list", "--json")[1]) == []
    assert cli("import", str(src))[0] == 0
    assert json.loads(cli("get", "model_cfg")[1]) == {"threshold": 0.5}
    assert cli("get", "n")[1] == "3\n"


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("bad.json", '{"a": ', r"bad.json: invalid JSON at line 1, column 7"),
        ("bad.properties", "ok = 1\nbroken = \\u12G4\n", r"bad.properties:2"),
        ("empty_key.json", '{"": "v"}', r"empty_key.json: invalid dictionary key ''"),
        ("what.txt", "a=1", r"cannot tell the format from the extension"),
    ],
)
def test_bad_import_files_change_nothing(cli, tmp_path, name, content, problem):
    cli("set", "kept", "1")
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    rc, out, err = cli("import", str(path))
    assert rc == 1 and out == ""
    assert err.startswith("airflow-ml: error: ")
    import re

    assert re.search(problem, err), err
    assert [r["key"] for r in json.loads(cli("list", "--json")[1])] == ["kept"]


def test_import_of_missing_file(cli, tmp_path):
    rc, _, err = cli("import", str(tmp_path / "nope.json"))
    assert rc == 1 and "nope.json: no such file" in err


def test_export_to_unwritable_place_leaves_nothing(cli, tmp_path):
    cli("set", "a", "1")
    target = tmp_path / "no_dir" / "out.json"
    rc, _, err = cli("export", "-o", str(target))
    assert rc == 1 and "cannot write the export" in err
    assert not target.parent.exists()


def test_key_prefix_option(cli, db_url):
    assert cli("set", "min_auc", "0.9", "--key-prefix", "prod.")[0] == 0
    assert DictionaryStore(db_url).load() == {"prod.min_auc": "0.9"}
    assert cli("get", "min_auc", "--key-prefix", "prod.")[1] == "0.9\n"
    assert cli("get", "prod.min_auc")[1] == "0.9\n"
    assert [r["key"] for r in json.loads(cli("list", "--json", "--key-prefix", "prod.")[1])] == ["min_auc"]


# ---------------------------------------------------------------------------------------------
# the connection from Airflow's configuration (real subprocesses, real airflow.configuration)


@pytest.fixture
def airflow_env(monkeypatch):
    """Airflow's configuration read in this process, from environment variables only."""
    for name in list(os.environ):
        if name.startswith(("AIRFLOW__WORKERS__SECRETS_BACKEND", "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__ML__",
                            "AIRFLOW_ML_DICTIONARY")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_connection_from_airflow_configuration(airflow_env, capsys, tmp_path, mariadb_url):
    sqlite_url = f"sqlite:///{tmp_path}/workers.db"
    airflow_env.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND", BACKEND)
    airflow_env.setenv(
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS",
        json.dumps({"sql_alchemy_conn": sqlite_url, "table": "settings"}),
    )
    airflow_env.setenv("AIRFLOW__SECRETS__BACKEND", BACKEND)
    airflow_env.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"sql_alchemy_conn": mariadb_url}))
    assert main(["dictionary", "set", "min_auc", "0.7"]) == 0
    # [workers] wins: the row went to the SQLite file, table "settings"
    assert DictionaryStore(sqlite_url, "settings").load() == {"min_auc": "0.7"}
    assert DictionaryStore(mariadb_url).load(create_missing=True) == {}
    # a per-key variable overrides the JSON, as in Airflow
    airflow_env.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__KEY_PREFIX", "team_a.")
    assert main(["dictionary", "set", "min_auc", "0.8"]) == 0
    assert DictionaryStore(sqlite_url, "settings").load() == {"min_auc": "0.7", "team_a.min_auc": "0.8"}
    # --sql-alchemy-conn overrides the configuration
    assert main(["dictionary", "set", "min_auc", "0.9", "--sql-alchemy-conn", mariadb_url]) == 0
    assert DictionaryStore(mariadb_url).load() == {"min_auc": "0.9"}
    # only [secrets] configured: the CLI uses it
    airflow_env.delenv("AIRFLOW__WORKERS__SECRETS_BACKEND")
    capsys.readouterr()
    assert main(["dictionary", "get", "min_auc"]) == 0
    assert capsys.readouterr().out == "0.9\n"


def test_installed_command_reads_airflow_configuration(tmp_path, mariadb_url):
    """The real ``airflow-ml`` executable in a fresh process, configured only through Airflow."""
    DictionaryStore(mariadb_url).create_tables()
    DictionaryStore(mariadb_url).set("min_auc", "0.65")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
            "AIRFLOW__SECRETS__BACKEND": BACKEND,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"sql_alchemy_conn": mariadb_url}),
        }
    )
    proc = subprocess.run(
        [str(VENV_BIN / "airflow-ml"), "dictionary", "get", "min_auc"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, "0.65\n"), proc.stderr
    proc = subprocess.run(
        [str(VENV_BIN / "airflow-ml"), "dictionary", "get", "nope"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert (
        proc.stderr.startswith("airflow-ml: error: key 'nope' not found") and "Traceback" not in proc.stderr
    )


def test_unconfigured_and_unreachable_database_errors(airflow_env, capsys, tmp_path):
    assert main(["dictionary", "list"]) == 1
    err = capsys.readouterr().err
    assert "no dictionary database configured" in err and "Traceback" not in err

    airflow_env.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND", BACKEND)
    airflow_env.setenv(
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS",
        json.dumps(
            {"sql_alchemy_conn": "mysql+pymysql://ml:TopS3cretPw@127.0.0.1:1/ml", "connect_timeout": 1}
        ),
    )
    assert main(["dictionary", "get", "x"]) == 1
    captured = capsys.readouterr()
    assert "mysql+pymysql://ml:***@127.0.0.1:1/ml" in captured.err
    assert "TopS3cretPw" not in captured.err + captured.out
    assert "Traceback" not in captured.err

    airflow_env.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", "{not json")
    assert main(["dictionary", "get", "x"]) == 1
    assert "[workers] secrets_backend_kwargs is not valid JSON" in capsys.readouterr().err

    # the backend enabled without sql_alchemy_conn: the embedded default under the ML home (ml/settings.py)
    airflow_env.setenv("AIRFLOW_ML_HOME", str(tmp_path / "ml"))
    airflow_env.setenv("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", json.dumps({"table": "t"}))
    assert main(["dictionary", "get", "x"]) == 1
    assert f"key 'x' not found in dictionary table 't' (sqlite:///{tmp_path}/ml/dictionary.db)" in (
        capsys.readouterr().err)


def test_cli_module_import_is_cheap():
    code = (
        "import sys, airflow_ml_provider.cli.dictionary; "
        "heavy = [m for m in ('airflow', 'sqlalchemy', 'xgboost', 'tensorflow') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
