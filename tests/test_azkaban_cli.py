"""``airflow-ml azkaban migrate``: options, report, exit codes, and bad input.

Bad input gets exit code 1 (2 for usage errors), a message naming the file and the problem,
never a traceback, and never a file outside --out.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from airflow_ml_provider.cli import main as cli_main

BASIC = {
    "a.job": "type=command\ncommand=echo a\n",
    "b.job": "type=command\ndependencies=a\ncommand=echo b\nretries=2\nretry.backoff=1500\n",
    "c.job": "type=noop\ndependencies=b\n",
    "scripts/run.sh": "#!/bin/sh\necho hi\n",
    # a resource that looks like a DAG file to Airflow: .airflowignore must keep it out
    "scripts/helper.py": "# airflow dag\nraise SystemExit('resource parsed as a DAG')\n",
}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = cli_main(["azkaban", "migrate", *argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return rc, captured.out, captured.err


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# --------------------------------------------------------------------------------- success
def test_migrate_writes_dags_resources_report_and_summary(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    rc, stdout, _ = run(capsys, str(proj), "--out", str(out), "--report", str(report))
    assert rc == 0
    assert (out / "c.py").exists()
    assert (out / "basic_resources" / "scripts" / "run.sh").read_text() == BASIC["scripts/run.sh"]
    assert "basic_resources/" in (out / ".airflowignore").read_text()
    assert not list(out.glob(".azkaban-migrate-*"))  # staging folder removed
    text = (out / "c.py").read_text()
    # each dependency is written where the child job is created: b = a >> job("b", ...)
    assert '"retry.backoff": "1500"' in text and "b = a >> job(" in text and 'b >> job("c", "noop")' in text
    data = json.loads(report.read_text())
    assert data["exit_code"] == 0 and data["summary"]["tasks"] == 3
    assert data["flows"][0]["dag_id"] == "c" and data["flows"][0]["file"] == "c.py"
    assert "flows" in stdout and "warnings by kind: none" in stdout and "3 tasks" in stdout


def test_retries_and_backoff_reach_the_task(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    out = tmp_path / "out"
    assert run(capsys, str(proj), "--out", str(out))[0] == 0
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(sys.argv[1]); d = bag.dags['c']; t = d.get_task('b')\n"
        "rule = getattr(t.trigger_rule, 'value', t.trigger_rule)\n"
        "print('@@', t.retries, t.retry_delay.total_seconds(), rule, d.get_task('a').retries, len(bag.import_errors))\n"
    )
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "ah"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@"))
    assert line.split()[1:6] == ["2", "1.5", "all_success", "0", "0"]
    assert (out / "basic_resources" / "scripts" / "helper.py").exists()


def test_dry_run_writes_nothing_and_prefix_applies(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    rc, stdout, _ = run(
        capsys, str(proj), "--out", str(out), "--dry-run", "--dag-id-prefix", "az_", "--report", str(report)
    )
    assert rc == 0 and not out.exists()
    assert json.loads(report.read_text())["flows"][0]["dag_id"] == "az_c"
    assert "would convert 1" in stdout


def test_schedules_disabled_jobs_timezone_and_unknown_names(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    sched = tmp_path / "s.json"
    sched.write_text(
        json.dumps(
            {
                "items": [
                    {
                        "flowId": "c",
                        "projectName": "basic",
                        "cronExpression": "0 30 6 ? * MON#2",
                        "timezone": "Europe/Paris",
                        "executionOptions": {"disabledJobs": ["a", "ghost"]},
                    },
                    {"flowId": "other", "projectName": "another", "cronExpression": "not even cron"},
                ]
            }
        )
    )
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out), "--schedules", str(sched))
    assert rc == 0, err
    text = (out / "c.py").read_text()
    assert 'CronTriggerTimetable("30 6 * * 1#2", timezone="Europe/Paris")' in text
    assert 'disabled=["a"]' in text
    assert "ghost" in err and "disabled-job=1" in stdout
    # --strict turns that warning into an error: no DAG for the flow
    out2 = tmp_path / "out2"
    rc, _, err = run(capsys, str(proj), "--out", str(out2), "--schedules", str(sched), "--strict")
    assert rc == 1 and not (out2 / "c.py").exists()
    assert "ghost" in err and "--strict" in err


def test_inexpressible_schedule_warns_and_gives_schedule_none(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps({"schedule": {"flowId": "c", "cronExpression": "0 0 12 15W * ?"}}))
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out), "--schedules", str(sched))
    assert rc == 0
    assert "schedule=None" in (out / "c.py").read_text()
    assert "nearest weekday" in err and "schedule=1" in stdout


def test_progress_bar_for_many_flows(tmp_path, capsys):
    files = {f"j{i}.job": "type=noop\n" for i in range(25)}
    proj = write(tmp_path / "many", files)
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "out"), "--dry-run")
    assert rc == 0
    assert "converting flows: 25/25 (100%)" in err


# ------------------------------------------------------------------------------ bad input
def _zip(path: Path, entries: dict[str, str | bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


@pytest.mark.parametrize(
    ("entries", "links", "needle"),
    [
        ({"proj/a.job": "type=noop\n", "proj/../../evil.job": "type=noop\n"}, None, "evil.job"),
        ({"proj/a.job": "type=noop\n", "/tmp/abs-evil.job": "type=noop\n"}, None, "abs-evil.job"),
        ({"proj/a.job": "type=noop\n"}, {"proj/link.sh": "/etc/passwd"}, "link.sh"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_zip_entries_are_refused(tmp_path, capsys, entries, links, needle):
    src = _zip(tmp_path / "bad.zip", entries, links)
    out = tmp_path / "work" / "out"
    before = all_files(tmp_path)
    rc, _, err = run(capsys, str(src), "--out", str(out))
    assert rc == 1
    assert "bad.zip" in err and needle in err
    assert all_files(tmp_path) - before - {"work"} <= set()  # nothing written anywhere
    assert not Path("/tmp/abs-evil.job").exists()


def test_symlink_in_project_directory_is_refused(tmp_path, capsys):
    proj = write(tmp_path / "proj", {"a.job": "type=noop\n"})
    (proj / "secret.sh").symlink_to("/etc/passwd")
    out = tmp_path / "out"
    rc, _, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 1 and "secret.sh" in err
    assert not any(out.rglob("*.py")) if out.exists() else True


def test_archive_past_the_size_limit_is_refused(tmp_path, capsys):
    src = _zip(tmp_path / "big.zip", {"proj/a.job": "type=noop\n", "proj/data.bin": b"\0" * 200_000})
    out = tmp_path / "out"
    rc, _, err = run(capsys, str(src), "--out", str(out), "--max-archive-size", "100K")
    assert rc == 1 and "big.zip" in err
    assert not out.exists() or not any(out.iterdir())
    # the same archive converts under the default limit
    rc, _, _ = run(capsys, str(src), "--out", str(out))
    assert rc == 0 and (out / "a.py").exists()


@pytest.mark.parametrize(
    ("files", "needles", "failed_flow"),
    [
        (
            {
                "p.project": "azkaban-flow-version: 2.0\n",
                "f.flow": "nodes:\n  - name: a\n    type: [unclosed\n",
            },
            ["f.flow", "YAML"],
            None,
        ),
        ({"a.job": "command=echo hi\n", "b.job": "type=noop\ndependencies=a\n"}, ["a.job", "type"], "b"),
        ({"a.job": "type=noop\ndependencies=a\n"}, ["a.job", "a"], "a"),
    ],
    ids=["invalid-yaml", "job-without-type", "self-dependency"],
)
def test_invalid_projects_fail_with_file_and_problem(tmp_path, capsys, files, needles, failed_flow):
    proj = write(tmp_path / "proj", files)
    out = tmp_path / "out"
    rc, _, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 1, err
    for needle in needles:
        assert needle in err, err
    written = {p.name for p in out.glob("*.py")} if out.exists() else set()
    if failed_flow:
        assert f"{failed_flow}.py" not in written
    else:
        assert written == set()


def test_self_dependency_message_names_the_problem(tmp_path, capsys):
    proj = write(tmp_path / "proj", {"a.job": "type=noop\ndependencies=a\n"})
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "out"))
    assert rc == 1
    assert "itself" in err or "self" in err or "a -> a" in err, err


def test_invalid_quartz_in_schedules_and_in_trigger(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps({"schedule": {"flowId": "c", "cronExpression": "0 0 25 * * ?"}}))
    out = tmp_path / "out"
    rc, _, err = run(capsys, str(proj), "--out", str(out), "--schedules", str(sched))
    assert rc == 1 and not (out / "c.py").exists()
    assert "0 0 25 * * ?" in err and "hours field: 25 is out of range" in err and "--schedules" in err

    flow = "trigger:\n  schedule:\n    type: cron\n    value: 0 0 1 ? * FOO\nnodes:\n  - name: a\n    type: noop\n"
    proj2 = write(tmp_path / "p2", {"p.project": "azkaban-flow-version: 2.0\n", "t.flow": flow})
    rc, _, err = run(capsys, str(proj2), "--out", str(tmp_path / "out2"))
    assert rc == 1 and "t.flow" in err and "FOO" in err
    assert not (tmp_path / "out2" / "t.py").exists()


def test_bad_schedules_file(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    bad = tmp_path / "s.json"
    bad.write_text('{"schedule": {"flowId": "c",, }}')
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "o"), "--schedules", str(bad))
    assert rc == 1 and "s.json" in err and "line 1" in err
    bad.write_text('{"schedule": {"flowId": "c"}}')
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "o"), "--schedules", str(bad))
    assert rc == 1 and "cronExpression" in err


def test_usage_errors_exit_2(tmp_path, capsys):
    proj = write(tmp_path / "basic", BASIC)
    assert run(capsys, str(proj))[0] == 2  # --out missing
    rc, _, err = run(capsys, str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert rc == 2 and "nope" in err
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    rc, _, err = run(capsys, str(proj), "--out", str(afile))
    assert rc == 2 and "not a directory" in err
    rc, _, err = run(capsys, str(proj), "--out", str(tmp_path / "o"), "--dag-id-prefix", "bad/prefix")
    assert rc == 2 and "--dag-id-prefix" in err
    rc, _, _ = run(capsys, str(proj), "--out", str(tmp_path / "o"), "--max-archive-size", "lots")
    assert rc == 2


def test_unknown_job_type_is_kept_and_warned(tmp_path, capsys):
    proj = write(
        tmp_path / "p", {"a.job": "type=spark\nspark.class=Main\n", "b.job": "type=noop\ndependencies=a\n"}
    )
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, str(proj), "--out", str(out))
    assert rc == 0
    assert 'job("a", "spark"' in (out / "b.py").read_text()
    assert "unknown-job-type=1" in stdout and "spark" in err
    rc, _, _ = run(capsys, str(proj), "--out", str(tmp_path / "out2"), "--strict")
    assert rc == 1


def test_console_script_exit_codes(tmp_path):
    """The installed entry point: exit codes and no traceback."""
    exe = Path(sys.executable).parent / "airflow-ml"
    if not exe.exists():
        pytest.skip("airflow-ml console script not installed in this environment")
    proj = write(tmp_path / "proj", {"a.job": "type=noop\ndependencies=a\n"})
    proc = subprocess.run(
        [str(exe), "azkaban", "migrate", str(proj), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "a.job" in proc.stderr
    proc = subprocess.run([str(exe), "azkaban", "migrate"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_progress_bar_on_a_terminal():
    import io

    from airflow_ml_provider.cli.azkaban import _Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = _Progress(stream)
    for i in range(1, 4):
        bar(i, 3, f"flow{i}")
    text = stream.getvalue()
    assert text.count("\r") == 3 and "[##########" in text and "3/3 flow3" in text and text.endswith("\n")
    quiet = io.StringIO()  # not a terminal, few flows: silent
    small = _Progress(quiet)
    for i in range(1, 4):
        small(i, 3, "f")
    assert quiet.getvalue() == ""


def test_awkward_job_names_and_schedule_mapping(tmp_path, capsys):
    """Job names that are Python keywords, builtins or the DAG file's own names still give a
    valid, lint-clean file whose task ids are the job names."""
    import runpy

    names = ["print", "class", "dag", "DAG", "job", "Path", "INHERITED_1", "1abc", "a-b", "a.b", "__init__"]
    files = {f"{n}.job": "type=noop\n" for n in names}
    files["end.job"] = "type=noop\ndependencies=" + ",".join(names) + "\n"
    proj = write(tmp_path / "names", files)
    sched = tmp_path / "s.json"
    # a mapping by flow name whose value is a raw fetchSchedule response
    sched.write_text(json.dumps({"end": {"schedule": {"cronExpression": "0 0 3 ? * SUN"}}}))
    out = tmp_path / "out"
    rc, _, err = run(capsys, str(proj), "--out", str(out), "--schedules", str(sched))
    assert rc == 0, err
    ns = runpy.run_path(str(out / "end.py"))
    dag = ns["end"].dag  # the task variable is named after the job
    assert sorted(dag.task_ids) == sorted([*names, "end"])
    assert dag.get_task("end").upstream_task_ids == set(names)
    assert '"0 3 * * 0"' in (out / "end.py").read_text()
