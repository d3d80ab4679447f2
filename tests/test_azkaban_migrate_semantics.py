"""``airflow-ml azkaban migrate`` follows Azkaban's semantics (issue 10, migration side).

Hand-written projects, one concern each:

* dotted job names and an embedded flow named ``subflow_1.flow`` migrate to valid ids, import,
  and run in the real Airflow with ``JOB_NAME`` / ``${azkaban.job.id}`` keeping the original name;
* a generated DAG that fails to import is a failed flow (exit 1 naming the flow and the cause,
  no DAG file left);
* ``--timezone``: a Shanghai schedule's timetable, and ``azkaban.flow.start.*`` of a real run
  at 02:00 Asia/Shanghai; the UTC default warns;
* ``type=java`` is its own job type; plugin types that fail loudly are warned about by name;
* ``retries`` without ``retry.backoff`` -> retry delay 0 (Azkaban's default back-off);
* two projects into one ``--out``: refused naming both sources, unless ``--overwrite`` or a prefix;
* undefined ``${...}`` keys are warned about and, with the flow's own parameters, become optional
  Params of the trigger form whose values reach the jobs;
* expansion bombs are warned about at migration;
* the generated code is compact: <= 60 bytes per job on Azkaban's massive-flows project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_ml_provider.azkaban.mappers import BUILTIN_KEYS, local_ids
from airflow_ml_provider.azkaban.migrate import MANIFEST, migrate
from tests.test_azkaban_cli import run, write  # one project writer and one CLI runner for the Azkaban tests

TOOL = """
import json, os, sys
with open(os.path.join(sys.argv[1], "records.jsonl"), "a") as fh:
    fh.write(json.dumps({"job_name": os.environ.get("JOB_NAME"), "args": sys.argv[2:]}) + "\\n")
"""


def records(folder: Path) -> list[dict]:
    path = folder / "records.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def load_dag(path: Path, dag_id: str):
    """The DAG a generated file defines, imported in this process as Airflow's parser does
    (the file binds no variable to the DAG: it is collected by DagContext's auto-registration)."""
    import importlib.util

    from airflow.sdk.definitions._internal.contextmanager import DagContext

    name = f"generated_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    DagContext.autoregistered_dags.clear()
    DagContext.current_autoregister_module_name = name
    try:
        spec.loader.exec_module(module)
    finally:
        DagContext.current_autoregister_module_name = None
        sys.modules.pop(name, None)
    dags = [d for d, _ in DagContext.autoregistered_dags if d.dag_id == dag_id]
    DagContext.autoregistered_dags.clear()
    assert dags, f"{path} defines no DAG {dag_id!r}"
    return dags[0]


# ---------------------------------------------------------------------------------- unit level
def test_local_ids_are_valid_deterministic_and_distinct():
    ids = local_ids(["00.boyu_add", "a b", "a_b", "ok", "x/y"], ["subflow_1.flow", "subflow_1_flow"])
    assert ids["00.boyu_add"] == "00.boyu_add"  # task ids may hold dots
    assert ids["ok"] == "ok" and ids["a_b"] == "a_b"
    assert ids["a b"] == "a_b_2"  # clashes with the sibling a_b
    assert ids["x/y"] == "x_y"
    assert ids["subflow_1_flow"] == "subflow_1_flow"  # a valid group id keeps itself
    assert ids["subflow_1.flow"] == "subflow_1_flow_2"  # group ids may not hold dots
    # the same set of names in another order gives the same ids
    again = local_ids(["x/y", "ok", "a_b", "a b", "00.boyu_add"], ["subflow_1_flow", "subflow_1.flow"])
    assert again == ids


def test_builtin_keys_are_the_runtime_builtins():
    from datetime import datetime, timezone

    from airflow_ml_provider.azkaban.runtime import builtin_props

    got = builtin_props(
        {"logical_date": datetime(2026, 3, 4, 18, 0, tzinfo=timezone.utc), "run_id": "r"},
        flow_id="f",
        project="p",
        task_id="00.a",
        timezone="Asia/Shanghai",
    )
    assert set(got) == set(BUILTIN_KEYS)
    # Azkaban formats the start time in the server's zone (a Joda DateTime)
    assert got["azkaban.flow.start.timestamp"] == "2026-03-05T02:00:00.000+08:00"
    assert (got["azkaban.flow.start.day"], got["azkaban.flow.start.hour"]) == ("05", "02")
    assert got["azkaban.flow.start.timezone"] == "Asia/Shanghai" and got["azkaban.job.id"] == "00.a"
    utc = builtin_props(
        {"logical_date": datetime(2026, 3, 4, 18, 0, tzinfo=timezone.utc)},
        flow_id="f",
        project="p",
        task_id="a",
    )
    assert utc["azkaban.flow.start.timestamp"] == "2026-03-04T18:00:00.000Z"


# ------------------------------------------------------------------------ 2: names with dots
DOTTED = {
    "00.boyu_jd_origin_add_partition.job": "type=command\n"
    "command=python ${tool} ${outdir} ${azkaban.job.id}\n",
    "subflow_1.flow.job": "type=flow\nflow.name=inner.end\ndependencies=00.boyu_jd_origin_add_partition\n",
    "inner.start.job": "type=command\ncommand=python ${tool} ${outdir} ${azkaban.job.id}\n",
    "inner.end.job": "type=command\ndependencies=inner.start\n"
    "command=python ${tool} ${outdir} ${azkaban.job.id}\n",
    "final.job": "type=command\ndependencies=subflow_1.flow\ncommand=python ${tool} ${outdir} ${azkaban.job.id}\n",
    "tool.py": textwrap.dedent(TOOL),
    "shared.properties": "tool=tool.py\n",
}


@pytest.mark.airflow
@pytest.mark.slow
def test_dotted_job_and_embedded_flow_names_run_keeping_their_names(tmp_path, capsys, run_dag):
    proj = write(tmp_path / "dotted", DOTTED)
    out = tmp_path / "dags"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 0, err
    text = (out / "final.py").read_text()
    # a TaskGroup id may not hold a dot; the original name stays in the tooltip
    assert '"subflow_1_flow", tooltip="Azkaban embedded flow \'subflow_1.flow\'"' in text
    assert "renamed=1" in stdout and "'subflow_1.flow'" in err

    rec = tmp_path / "rec"
    rec.mkdir()
    result = run_dag(out, "final", conf={"flow_params": {"outdir": str(rec)}})
    assert result.states == {
        "00.boyu_jd_origin_add_partition": "success",
        "subflow_1_flow.inner.start": "success",
        "subflow_1_flow.inner.end": "success",
        "final": "success",
    }, result.output[-6000:]
    got = {r["job_name"]: r["args"] for r in records(rec)}
    # JOB_NAME and ${azkaban.job.id} are the original Azkaban names, not cut at a dot
    assert got == {
        "00.boyu_jd_origin_add_partition": ["00.boyu_jd_origin_add_partition"],
        "inner.start": ["inner.start"],
        "inner.end": ["inner.end"],
        "final": ["final"],
    }


def test_a_dag_that_fails_to_import_is_a_failed_flow(tmp_path, capsys):
    """A node name Airflow refuses at import (a task id over 250 characters): the DagBag check
    fails the flow, names it and the cause; no DAG file is left; the other flow is written."""
    long_name = "n" * 260
    proj = write(
        tmp_path / "p2",
        {
            "p.project": "azkaban-flow-version: 2.0\n",
            "broken.flow": f"nodes:\n  - name: {long_name}\n    type: noop\n",
            "fine.flow": "nodes:\n  - name: a\n    type: noop\n",
        },
    )
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 1
    assert "flow 'broken'" in err and "fails to import in Airflow" in err and "250" in err
    assert "error: flow 'broken' was not converted" in err
    assert not (out / "broken.py").exists() and (out / "fine.py").exists()
    assert not list(out.glob(".azkaban-migrate-*"))  # no staging folder left
    assert json.loads((out / MANIFEST).read_text())["files"].keys() == {"fine.py"}


# --------------------------------------------------------------------------------- 3: time zone
SHANGHAI = {
    "report.job": "type=command\n"
    "command=python tool.py ${outdir} ${azkaban.flow.start.year}-${azkaban.flow.start.month}-"
    "${azkaban.flow.start.day} ${azkaban.flow.start.hour} ${azkaban.flow.start.timezone}\n",
    "tool.py": textwrap.dedent(TOOL),
}


@pytest.mark.airflow
@pytest.mark.slow
def test_shanghai_schedule_and_start_time_builtins(tmp_path, capsys, run_dag):
    proj = write(tmp_path / "sh", SHANGHAI)
    sched = tmp_path / "s.json"
    # fetchSchedule JSON carries no time zone: the --timezone zone applies
    sched.write_text(json.dumps({"schedule": {"flowId": "report", "cronExpression": "0 0 2 * * ?"}}))

    # without --timezone: UTC, with a warning naming the flow
    rc, stdout, err = run(capsys, str(proj), "--out", str(tmp_path / "utc"), "--schedules", str(sched))
    assert rc == 0 and "timezone=1" in stdout and "--timezone" in err and "report" in err
    assert 'CronTriggerTimetable("0 2 * * *", timezone="UTC")' in (tmp_path / "utc" / "report.py").read_text()

    out = tmp_path / "dags"
    rc, stdout, err = run(
        capsys, str(proj), "--out", str(out), "--schedules", str(sched), "--timezone", "Asia/Shanghai"
    )
    assert rc == 0, err
    assert "timezone=" not in stdout.split("warnings by kind:")[1].split("\n")[0]
    text = (out / "report.py").read_text()
    assert 'CronTriggerTimetable("0 2 * * *", timezone="Asia/Shanghai")' in text
    assert 'timezone="Asia/Shanghai"' in text.split("flow_dag_args(")[1]

    rec = tmp_path / "rec"
    rec.mkdir()
    # the run at 02:00 Asia/Shanghai on 2026-03-05 is 18:00 UTC on 2026-03-04
    result = run_dag(
        out, "report", conf={"flow_params": {"outdir": str(rec)}}, logical_date="2026-03-04T18:00:00+00:00"
    )
    assert result.states == {"report": "success"}, result.output[-6000:]
    assert records(rec)[0]["args"] == ["2026-03-05", "02", "Asia/Shanghai"]


def test_unknown_timezone_is_a_usage_error(tmp_path, capsys):
    proj = write(tmp_path / "p", {"a.job": "type=noop\n"})
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "o"), "--timezone", "Mars/Olympus")
    assert rc == 2 and "Mars/Olympus" in err and not (tmp_path / "o").exists()


# -------------------------------------------------------------------------------- 4: job types
def test_java_is_its_own_type_and_plugin_types_are_warned_by_name(tmp_path, capsys):
    proj = write(
        tmp_path / "types",
        {
            "j.job": "type=java\njob.class=com.example.Job\n",
            "jp.job": "type=javaprocess\njava.class=com.example.Main\n",
            "jj.job": "type=javajar\n",
            "pg.job": "type=pig\npig.script=x.pig\n",
            "hj.job": "type=hadoopJava\njob.class=com.example.H\n",
            "sp.job": "type=spark\nclass=com.example.S\n",
            "end.job": "type=noop\ndependencies=j,jp,jj,pg,hj,sp\n",
        },
    )
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 0, err
    assert "unknown-job-type=4" in stdout
    for job, jtype in (("jj", "javajar"), ("pg", "pig"), ("hj", "hadoopJava"), ("sp", "spark")):
        assert f"job {job!r} has type {jtype!r}" in err, (job, err)
    assert "SparkSubmitOperator" in err  # the plugin's meaning and the Airflow way
    assert "job 'j'" not in err and "job 'jp'" not in err  # java and javaprocess are mapped
    dag = load_dag(out / "end.py", "end")
    assert dag.get_task("j").job_type == "java"
    assert dag.get_task("jp").job_type == "javaprocess"
    assert dag.get_task("sp").job_type == "spark"


# ---------------------------------------------------------------------------------- 5: retries
def test_retries_without_backoff_retry_at_once(tmp_path, capsys):
    proj = write(
        tmp_path / "r",
        {
            "a.job": "type=command\ncommand=false\nretries=3\n",
            "b.job": "type=command\ncommand=false\nretries=2\nretry.backoff=1500\ndependencies=a\n",
        },
    )
    out = tmp_path / "out"
    assert run(capsys, str(proj), "--out", str(out))[0] == 0
    dag = load_dag(out / "b.py", "b")
    assert dag.get_task("a").retries == 3 and dag.get_task("a").retry_delay == timedelta(0)
    assert dag.get_task("b").retries == 2 and dag.get_task("b").retry_delay == timedelta(milliseconds=1500)


# -------------------------------------------------------------------------------- 6: collisions
def test_two_projects_into_one_out(tmp_path, capsys):
    a = write(tmp_path / "alpha", {"daily.job": "type=command\ncommand=echo alpha\n"})
    b = write(tmp_path / "beta", {"daily.job": "type=command\ncommand=echo beta\n"})
    out = tmp_path / "dags"
    assert run(capsys, str(a), "--out", str(out))[0] == 0
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert manifest["daily.py"]["project"] == "alpha" and manifest["daily.py"]["source"] == str(a.resolve())

    # same-named flow of another project: refused, naming both sources; nothing replaced
    rc, _, err = run(capsys, str(b), "--out", str(out))
    assert rc == 1
    assert str(a.resolve()) in err and str(b.resolve()) in err and "collision" in err
    assert "echo alpha" in (out / "daily.py").read_text()

    # migrating the same project again is fine
    assert run(capsys, str(a), "--out", str(out))[0] == 0

    # a prefix keeps both
    rc, _, err = run(capsys, str(b), "--out", str(out), "--prefix", "beta_")
    assert rc == 0, err
    assert (
        "echo alpha" in (out / "daily.py").read_text() and "echo beta" in (out / "beta_daily.py").read_text()
    )

    # --overwrite replaces it, and the manifest records the new source
    rc, _, err = run(capsys, str(b), "--out", str(out), "--overwrite")
    assert rc == 0, err
    assert "echo beta" in (out / "daily.py").read_text()
    assert json.loads((out / MANIFEST).read_text())["files"]["daily.py"]["project"] == "beta"

    # a file nobody's migration wrote is not replaced silently either
    (out / "hand.py").write_text("# a hand-written DAG\n")
    c = write(tmp_path / "gamma", {"hand.job": "type=noop\n"})
    rc, _, err = run(capsys, str(c), "--out", str(out))
    assert rc == 1 and "hand.py" in err and (out / "hand.py").read_text() == "# a hand-written DAG\n"


# ----------------------------------------------------------------- 7: undefined keys and params
PARAMS = {
    "p.project": "azkaban-flow-version: 2.0\n",
    "etl.flow": """
config:
  greeting: hello
nodes:
  - name: load
    type: command
    config:
      command: python tool.py ${outdir} ${greeting} ${run_date} ${hadoop.home}
""",
    "tool.py": textwrap.dedent(TOOL),
}


def test_undefined_keys_are_warned_and_become_params(tmp_path, capsys):
    proj = write(tmp_path / "params", PARAMS)
    out = tmp_path / "dags"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 0, err
    assert "undefined-property=3" in stdout
    for key in ("outdir", "run_date", "hadoop.home"):
        assert f"${{{key}}} (used by load) is defined by no property file" in err
    assert "${greeting}" not in err  # the flow's own parameter
    dag = load_dag(out / "etl.py", "etl")
    params = dag.params
    assert set(params) == {"disabled_tasks", "greeting", "outdir", "run_date", "hadoop.home"}
    assert params["greeting"] == "hello" and params["run_date"] is None
    schema = params.get_param("run_date").schema
    assert schema["type"] == ["null", "string"]


@pytest.mark.airflow
@pytest.mark.slow
def test_flow_params_from_the_trigger_form_reach_the_job(tmp_path, capsys, run_dag):
    proj = write(tmp_path / "params", PARAMS)
    out = tmp_path / "dags"
    assert run(capsys, str(proj), "--out", str(out))[0] == 0
    rec = tmp_path / "rec"
    rec.mkdir()
    # the trigger form puts each Param at the top level of conf
    result = run_dag(
        out,
        "etl",
        conf={"outdir": str(rec), "run_date": "2026-01-02", "hadoop.home": "/opt/h", "greeting": "hi"},
    )
    assert result.states == {"load": "success"}, result.output[-6000:]
    assert records(rec)[-1]["args"] == ["hi", "2026-01-02", "/opt/h"]
    # conf["flow_params"] still works, above the form's values; unset Params keep the flow's value
    result = run_dag(
        out,
        "etl",
        conf={"outdir": str(rec), "hadoop.home": "/opt/h", "flow_params": {"run_date": "2026-02-03"}},
    )
    assert result.states == {"load": "success"}, result.output[-6000:]
    assert records(rec)[-1]["args"] == ["hello", "2026-02-03", "/opt/h"]


# ------------------------------------------------------------------------------ 9: expansion
def test_expansion_bombs_are_warned_at_migration(tmp_path, capsys):
    bomb = "".join(f"p{i}=${{p{i - 1}}}${{p{i - 1}}}\n" for i in range(1, 41))
    proj = write(tmp_path / "bomb", {"b.job": "type=command\ncommand=echo ${p40}\np0=x\n" + bomb})
    rc, stdout, err = run(capsys, str(proj), "--out", str(tmp_path / "out"))
    assert rc == 0 and "expansion=1" in stdout
    assert "job 'b'" in err and "characters" in err


# ------------------------------------------------------------------------- 11: generated size
def test_generated_code_is_compact_on_massive_flows(tmp_path):
    corpus = os.environ.get("AZKABAN_CORPUS", "")
    tarball = Path(corpus, "execution-test-data", "massive-flows", "massive-flows.tar.bz2")
    from tests.fixtures.services import require_service

    require_service(tarball.is_file(), f"{tarball}: the Azkaban corpus (AZKABAN_CORPUS) is needed")
    src = tmp_path / "massive-flows"
    with tarfile.open(tarball) as tf:
        tf.extractall(src, filter="data")
    out = tmp_path / "dags"
    report = migrate(src, out, check_import=False)
    assert report.exit_code == 0
    jobs = sum(f.tasks for f in report.flows)
    assert jobs == 7121
    size = sum(p.stat().st_size for p in out.glob("*.py"))
    assert size / jobs <= 60, size / jobs
    text = (out / "0.py").read_text()
    # the shared property set is written once; no empty argument
    assert text.count('"echo test"') == 1 and "embedding_props" not in text


def test_embedding_props_only_when_they_say_something(tmp_path, capsys):
    proj = write(
        tmp_path / "emb",
        {
            "inner.job": "type=noop\n",
            "e1.job": "type=flow\nflow.name=inner\n",
            "e2.job": "type=flow\nflow.name=inner\nlevel=2\ndependencies=e1\n",
        },
    )
    out = tmp_path / "out"
    assert run(capsys, str(proj), "--out", str(out))[0] == 0
    text = (out / "e2.py").read_text()
    assert 'TaskGroup("e1") as e1' in text  # no embedding_props=[{}]
    assert '{"embedding_props": [{"level": "2"}]}' in text
    dag = load_dag(out / "e2.py", "e2")
    assert dag.get_task("e1.inner").embedding_props == []
    assert dag.get_task("e2.inner").embedding_props == [{"level": "2"}]


def test_dagbag_import_check_runs_in_a_subprocess_with_its_own_home(tmp_path, capsys, monkeypatch):
    """The migration never writes an airflow.cfg into the user's home as a side effect."""
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    proj = write(tmp_path / "p", {"a.job": "type=noop\n"})
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "out"))
    assert rc == 0, err
    assert not (tmp_path / "home" / "airflow").exists()


def test_generated_files_pass_ruff(tmp_path, capsys):
    from airflow_ml_provider.azkaban.render import ruff_command

    out = tmp_path / "out"
    for name, files in (("dotted", DOTTED), ("params", PARAMS), ("sh", SHANGHAI)):
        proj = write(tmp_path / name, files)
        rc, _, err = run(
            capsys, str(proj), "--out", str(out), "--prefix", f"{name}_", "--timezone", "Asia/Shanghai"
        )
        assert rc == 0, err
    ruff = ruff_command()
    assert ruff is not None
    files = sorted(p.name for p in out.glob("*.py"))  # the DAG files (not the copied resources)
    assert len(files) == 4  # dotted_final, dotted_inner.end (a flow of its own), params_etl, sh_report
    proc = subprocess.run(
        [*ruff, "check", "--isolated", *files], cwd=out, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout
    proc = subprocess.run(
        [*ruff, "format", "--isolated", "--check", *files],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
