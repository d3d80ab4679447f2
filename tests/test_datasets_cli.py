"""`airflow-ml datasets audio`: the demo data where the example DAG reads it, or where --out says."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_ML_", "AIRFLOW__ML__"))}
    return subprocess.run([sys.executable, "-m", "airflow_ml_provider.cli", "datasets", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd or REPO,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})})


def counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(str(db))
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("categories", "hosts", "audio_items", "users", "play_events")}
    finally:
        con.close()


def test_default_is_the_ml_home_the_dag_reads(tmp_path):
    home = tmp_path / "mlhome"
    proc = cli("audio", "--events", "1500", "--users", "200", "--items", "100", "--hosts", "20",
               env={"AIRFLOW_ML_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    db = home / "audio.db"
    assert counts(db)["play_events"] == 1500 and counts(db)["users"] == 200
    assert str(db) in proc.stdout
    # the example DAG's embedded default source is that same file (parse the DAG file and ask it)
    probe = ("import json, os, runpy; runpy.run_path('dags/xgboost_recommendation.py'); "
             "print(json.loads(os.environ['AIRFLOW_CONN_ML_AUDIO_SQLITE'])['host'])")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_ML_", "AIRFLOW__ML__", "AIRFLOW_CONN_"))}
    parsed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**base, "PYTHONPATH": str(REPO), "AIRFLOW_ML_HOME": str(home)})
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    assert Path(parsed.stdout.strip().splitlines()[-1]) == db
    # the training query runs on it
    sql = (REPO / "airflow_ml_provider" / "ml" / "datasets" / "audio_training.sql").read_text()
    con = sqlite3.connect(str(db))
    try:
        rows = con.execute(sql, {"start_ts": 0}).fetchall()
    finally:
        con.close()
    assert len(rows) == 1500


def test_out_directory_file_and_same_seed_same_data(tmp_path):
    assert cli("audio", "--events", "500", "--out", str(tmp_path / "d")).returncode == 0
    assert cli("audio", "--events", "500", "--out", str(tmp_path / "x.db")).returncode == 0
    a, b = tmp_path / "d" / "audio.db", tmp_path / "x.db"
    dump = []
    for db in (a, b):
        con = sqlite3.connect(str(db))
        dump.append(con.execute("SELECT * FROM play_events ORDER BY event_id").fetchall())
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        con.close()
    assert dump[0] == dump[1] and len(dump[0]) == 500
    assert not list(tmp_path.glob(".*.tmp*")) and not list((tmp_path / "d").glob(".*"))


@pytest.mark.mariadb
def test_out_url_writes_the_tables_to_a_database(mariadb_url):
    import sqlalchemy as sa

    proc = cli("audio", "--events", "700", "--out", mariadb_url)
    assert proc.returncode == 0, proc.stderr
    engine = sa.create_engine(mariadb_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM play_events")).scalar() == 700
    finally:
        engine.dispose()


@pytest.mark.parametrize("args, needle", [
    (["--events", "0"], "--events"),
    (["--events", "1e9"], "--events"),
    (["--events", "9" * 40], "--events"),
    (["--users", "-5"], "--users"),
    (["--seed", "١"], "--seed"),
    (["--out", "foo://x"], "foo://x"),
    (["--out", "mysql+pymysql://u:hunter2@127.0.0.1:1/x"], "127.0.0.1:1"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    proc = cli("audio", *args, env={"AIRFLOW_ML_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert needle in last, proc.stderr
    assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr
    assert not (tmp_path / "home" / "audio.db").exists()


def test_a_failed_run_keeps_the_previous_file(tmp_path):
    out = tmp_path / "audio.db"
    assert cli("audio", "--events", "300", "--out", str(out)).returncode == 0
    before = out.read_bytes()
    proc = cli("audio", "--events", "300", "--out", str(tmp_path / "audio.db" / "x.db"))
    assert proc.returncode != 0 and "audio.db" in proc.stderr.splitlines()[-1]
    assert out.read_bytes() == before


def test_out_naming_an_existing_file_that_is_not_a_database(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    proc = cli("audio", "--events", "10", "--out", str(target))
    assert proc.returncode != 0 and "notes.txt" in proc.stderr
    assert target.read_text() == "keep me"
