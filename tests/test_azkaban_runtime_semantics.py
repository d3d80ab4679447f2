"""Issue 10, run-time side: migrated Azkaban jobs run the way Azkaban runs them.

* each job runs in the directory of its own ``.job`` file inside the copied project
  (``sh ../x.sh``, ``sh local.sh``, ``bash ../bin/tool``, ``hive.script`` beside the job);
* ``type=java`` (Azkaban's JavaJob): ``job.class`` built with a Properties constructor,
  ``method.run`` invoked, ``getJobGeneratedProperties()`` reaching the children;
* ``JOB_NAME`` is the original (dotted) job name;
* a command's whole process group is stopped on ``execution_timeout``, SIGTERM (``on_kill``)
  and when the task process is SIGKILLed: no ``sleep`` is left behind;
* ``${}`` expansion bombs fail the job with a one-line message naming job and key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from airflow_ml_provider.azkaban.expansion import ExpansionError, check_expansion, expand_all
from airflow_ml_provider.cli import main as cli_main

VENV_BIN = Path(sys.executable).parent


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text), encoding="iso-8859-1")
    return root


def _migrate(proj: Path, out: Path, capsys) -> None:
    rc = cli_main(["azkaban", "migrate", str(proj), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err


def _marked(marker: str) -> list[psutil.Process]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait_until(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _kill_marked(marker: str) -> None:
    """Test clean-up: whatever this test started and left, by pid."""
    for p in _marked(marker):
        try:
            p.kill()
        except psutil.Error:
            pass


# ------------------------------------------------------------------- expansion: pure core
def _cycle(n: int) -> dict[str, str]:
    return {f"k{i}": "${k%d}" % ((i + 1) % n) for i in range(n)}


def _chain(n: int) -> dict[str, str]:
    return {**{f"d{i}": "${d%d}" % (i + 1) for i in range(n)}, f"d{n}": "end"}


def _doubling(n: int) -> dict[str, str]:
    return {"p0": "x", **{f"p{i}": "${p%d}${p%d}" % (i - 1, i - 1) for i in range(1, n + 1)}}


@pytest.mark.parametrize(
    ("props", "key", "reason"),
    [
        (_cycle(1000), "k999", "circular property reference k0 -> k1"),
        (_chain(5000), "d4899", "nested ${...} references, more than the limit of 100"),
        (_doubling(40), "p21", "would expand to 2097152 characters, more than the limit"),
    ],
    ids=["1000-key-cycle", "5000-deep-chain", "doubling-to-2**40"],
)
def test_expansion_bombs_fail_with_job_and_key(props, key, reason):
    with pytest.raises(ExpansionError) as err:
        expand_all([props], job="bombjob")
    assert err.value.job == "bombjob" and err.value.key == key
    assert reason in str(err.value) and str(err.value).startswith(f"job 'bombjob': property {key!r}")
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)  # one readable line
    (warning,) = check_expansion([props], job="bombjob")  # migration: a warning, never raises
    assert key in warning and "bombjob" in warning


def test_expansion_keeps_azkaban_semantics():
    layers = [{"a": "low", "b": "${a}-b", "d": "x"}, {"a": "mid"}, {"c": "${b}/${d}", "e": "${c}${c}"}]
    assert expand_all(layers, job="j") == {
        "a": "mid",
        "b": "mid-b",
        "d": "x",
        "c": "mid-b/x",
        "e": "mid-b/xmid-b/x",
    }
    with pytest.raises(
        ExpansionError, match=r"property 'k': .*could not find a value for variable \$\{nope\}"
    ):
        expand_all([{"k": "${nope}"}], job="j")
    assert check_expansion([{"k": "${nope}"}], job="j") == []  # undefined keys: reported elsewhere
    assert expand_all([_chain(100)], job="j")["d0"] == "end"  # exactly at the depth limit: fine
    with pytest.raises(ExpansionError, match=r"circular property reference x -> x"):
        expand_all([{"x": "${x}"}], job="j")
    with pytest.raises(ExpansionError, match="exceed 64 characters in total"):
        expand_all([{f"v{i}": "y" * 10 for i in range(10)}], job="j", max_total=64)


# -------------------------------------------------------------- working directory, java type
HELLO_JAVA = """
import java.io.File;
import java.io.FileWriter;
import java.util.Properties;

public class Hello {
    private final String name;
    private final Properties props;
    private final Properties out = new Properties();

    public Hello(String name, Properties props) {
        this.name = name;
        this.props = props;
    }

    public void go() throws Exception {
        try (FileWriter w = new FileWriter(System.getenv("OUTDIR") + "/records.txt", true)) {
            w.write("java " + name + " " + props.getProperty("greeting") + " "
                + new File(".").getCanonicalPath() + "\\n");
        }
        out.setProperty("answer", "forty-two");
    }

    public void run() {
        throw new IllegalStateException("method.run is 'go', not 'run'");
    }

    public Properties getJobGeneratedProperties() {
        return out;
    }
}
"""

FAKE_HIVE = """\
#!/bin/sh
# a stand-in for the hive CLI: records its arguments and working directory, reads the script
[ "$1" = "-f" ] && [ -f "$2" ] || { echo "no script $2 in $(pwd)"; exit 2; }
echo "hive $(pwd) $* $(cat "$2")" >> "$OUTDIR/records.txt"
"""

WORKDIR_PROJECT = {
    "x.sh": 'echo "x.sh $JOB_NAME $(pwd)" >> "$OUTDIR/records.txt"\n',
    "bin/tool": '#!/bin/sh\necho "tool $JOB_NAME $(pwd)" >> "$OUTDIR/records.txt"\n',
    "report.sh": 'echo "report $JOB_NAME $1 $(pwd)" >> "$OUTDIR/records.txt"\n',
    "etl/local.sh": 'echo "local $JOB_NAME $(pwd)" >> "$OUTDIR/records.txt"\n',
    "etl/00.prep.job": "type=command\ncommand=sh local.sh\n",
    "etl/a.job": (
        "type=command\ndependencies=00.prep\n"
        "command=sh ../x.sh\ncommand.1=sh local.sh\ncommand.2=bash ../bin/tool\n"
    ),
    "etl/hive/q.hql": "select 1;\n",
    "etl/hive/h.job": "type=hive\ndependencies=a\nhive.script=q.hql\nhivevar.day=2024-01-01\n",
    "javajob/j.job": "type=java\ndependencies=h\njob.class=Hello\nmethod.run=go\nclasspath=classes\n"
    "greeting=hello-${azkaban.job.id}\n",
    "end.job": "type=command\ndependencies=j\ncommand=sh report.sh ${answer}\n",
}


@pytest.mark.airflow
@pytest.mark.slow
def test_jobs_run_in_their_own_directory_and_java_type_runs(tmp_path, run_dag, capsys):
    proj = _write(tmp_path / "wdproj", WORKDIR_PROJECT)
    (proj / "javajob" / "classes").mkdir()
    (proj / "javajob" / "Hello.java").write_text(HELLO_JAVA)
    subprocess.run(
        ["javac", "-d", str(proj / "javajob" / "classes"), str(proj / "javajob" / "Hello.java")], check=True
    )
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    (fakebin / "hive").write_text(FAKE_HIVE)
    (fakebin / "hive").chmod(0o755)
    out = tmp_path / "dags"
    _migrate(proj, out, capsys)
    records = tmp_path / "records"
    records.mkdir()
    env = {
        "OUTDIR": str(records),
        "PATH": f"{fakebin}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_ML_JAVA_CACHE": str(tmp_path / "javacache"),
    }
    result = run_dag(out, "end", env=env)
    assert set(result.states.values()) == {"success"}, result.output[-6000:]

    res = next(out.glob("*_resources"))  # the copied project the jobs run in
    etl, hive, javajob = (
        (res / "etl").resolve(),
        (res / "etl" / "hive").resolve(),
        (res / "javajob").resolve(),
    )
    lines = (records / "records.txt").read_text().splitlines()
    assert lines == [
        f"local 00.prep {etl}",  # JOB_NAME keeps the dots of the original name
        f"x.sh a {etl}",  # sh ../x.sh from etl/
        f"local a {etl}",  # sh local.sh beside the job file
        f"tool a {etl}",  # bash ../bin/tool
        f"hive {hive} -f q.hql --hivevar day=2024-01-01 select 1;",  # hive.script beside h.job
        f"java j hello-j {javajob}",  # JavaJob: Hello(name, props).go() in the job's directory
        f"report end forty-two {res.resolve()}",  # getJobGeneratedProperties() reached the child
    ]
    assert (tmp_path / "javacache").is_dir()  # our runner, compiled once into the cache


FLOW2_PROJECT = {
    "p.project": "azkaban-flow-version: 2.0\n",
    "top.sh": 'echo "top $JOB_NAME $(pwd)" >> "$OUTDIR/records.txt"\n',
    "flows/local.sh": 'echo "local $JOB_NAME $(pwd)" >> "$OUTDIR/records.txt"\n',
    "flows/f2.flow": """
        nodes:
          - name: first
            type: command
            config:
              command: sh local.sh
          - name: second
            type: command
            dependsOn: [first]
            config:
              command: sh ../top.sh
        """,
}


@pytest.mark.airflow
@pytest.mark.slow
def test_flow2_jobs_run_in_the_flow_files_directory(tmp_path, run_dag, capsys):
    proj = _write(tmp_path / "f2proj", FLOW2_PROJECT)
    out = tmp_path / "dags"
    _migrate(proj, out, capsys)
    records = tmp_path / "records"
    records.mkdir()
    result = run_dag(out, "f2", env={"OUTDIR": str(records)})
    assert set(result.states.values()) == {"success"}, result.output[-6000:]
    flows = (next(out.glob("*_resources")) / "flows").resolve()
    assert (records / "records.txt").read_text().splitlines() == [
        f"local first {flows}",
        f"top second {flows}",
    ]


def test_job_dir_outside_the_project_is_refused(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_ml_provider.azkaban.runtime import AzkabanJobOperator

    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    for bad in ("..", "../elsewhere", "/etc", "sub/../.."):
        op = AzkabanJobOperator(task_id="t", job_type="command", project_dir=str(proj), job_dir=bad)
        with pytest.raises(AirflowFailException, match="outside the project directory"):
            op._working_dir({})
    op = AzkabanJobOperator(task_id="t", job_type="command", project_dir=str(proj), job_dir="sub")
    assert op._working_dir({}) == str((proj / "sub").resolve())
    with pytest.raises(AirflowFailException, match=r"working.dir='\.\./\.\.' is not a subdirectory"):
        op._working_dir({"working.dir": "../.."})
    (proj / "sub" / "w").mkdir()
    assert op._working_dir({"working.dir": "w"}) == str((proj / "sub" / "w").resolve())
    # a job directory holding only .job files is not copied by the migration: it is created
    op = AzkabanJobOperator(task_id="t", job_type="command", project_dir=str(proj), job_dir="only/jobs")
    assert op._working_dir({}) == str((proj / "only" / "jobs").resolve())


def test_java_job_errors_are_one_line(tmp_path):
    """A missing class: the job fails naming it, no Java stack trace of our runner."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from airflow_ml_provider.azkaban.runtime import AzkabanJobOperator

    os.environ["AIRFLOW_ML_JAVA_CACHE"] = str(tmp_path / "javacache")
    try:
        op = AzkabanJobOperator(task_id="jj", job_type="java", project_dir=str(tmp_path))
        with pytest.raises(AirflowFailException, match="java job 'jj' has no 'job.class' property"):
            op._run_javajob({}, {})
        lines: list[str] = []
        op._pump = lambda stream: lines.extend(line.rstrip("\n") for line in stream)  # type: ignore[method-assign]
        with pytest.raises(AirflowException, match="exited with code 1"):
            op._run_javajob({"job.class": "no.such.Clazz"}, {})
        assert any(
            "Azkaban java job jj failed: class 'no.such.Clazz' (job.class) is not on the classpath" in ln
            for ln in lines
        )
    finally:
        os.environ.pop("AIRFLOW_ML_JAVA_CACHE", None)


# --------------------------------------------------------------------- killing: no orphans
SLEEPER_DAG = """
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_ml_provider.azkaban.runtime import job

with DAG("az_sleeper", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    job(
        "sleeper",
        "command",
        {{"command": "sh -c 'sleep {mark} & sleep {mark}'"}},
        project_dir={proj!r},
        execution_timeout=timedelta(seconds=3),
    )
"""


@pytest.mark.airflow
@pytest.mark.slow
def test_execution_timeout_stops_the_whole_process_group(tmp_path, run_dag):
    mark = f"300.{uuid.uuid4().int % 10**9:09d}"  # a unique sleep duration marks this run's processes
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sleeper.py").write_text(SLEEPER_DAG.format(mark=mark, proj=str(tmp_path)))
    try:
        result = run_dag(dags, "az_sleeper")
        assert result.states == {"sleeper": "failed"}, result.output[-6000:]
        assert "Timeout" in result.output or "timeout" in result.output
        assert _wait_until(lambda: not _marked(mark), timeout=30), [p.info for p in _marked(mark)]
    finally:
        _kill_marked(mark)


@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_airflow_task_process_killed_leaves_no_orphans(tmp_path, airflow_home, sig):
    """The real Airflow task process (``airflow dags test``) gets SIGTERM or SIGKILL mid-command."""
    from tests.fixtures.airflow import airflow_base_env

    mark = f"300.{uuid.uuid4().int % 10**9:09d}"
    dags = tmp_path / "dags"
    dags.mkdir()
    text = SLEEPER_DAG.format(mark=mark, proj=str(tmp_path)).replace("seconds=3", "seconds=600")
    (dags / "sleeper.py").write_text(text)
    env = airflow_base_env(airflow_home)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    proc = subprocess.Popen(
        [str(VENV_BIN / "airflow"), "dags", "test", "az_sleeper"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert _wait_until(lambda: len(_marked(mark)) >= 2, timeout=180), "the sleepers never started"
        leader = psutil.Process(os.getpgid(_marked(mark)[0].pid))  # the command: sh (or sleep it exec'd)
        task_process = leader.parent()  # the process that runs the Airflow task
        assert task_process.pid in {
            proc.pid,
            *(c.pid for c in psutil.Process(proc.pid).children(recursive=True)),
        }
        task_process.send_signal(sig)
        assert _wait_until(lambda: not _marked(mark), timeout=60), [p.info for p in _marked(mark)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the airflow process group this test started
        proc.wait()
        _kill_marked(mark)


RUNNER = """
import os, signal, sys
from airflow_ml_provider.azkaban.runtime import AzkabanJobOperator

op = AzkabanJobOperator(task_id="k", job_type="command", project_dir=sys.argv[1])
op.kill_grace_seconds = 5
# what Airflow's task runner does on SIGTERM (task_runner._on_term): call on_kill
signal.signal(signal.SIGTERM, lambda signum, frame: op.on_kill())
mark = os.environ["SLEEP_MARK"]  # not in this process's own command line
op._run_argvs({}, [["sh", "-c", "sleep %s & sleep %s" % (mark, mark)]])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_task_process_leaves_no_orphans(tmp_path, sig):
    mark = f"300.{uuid.uuid4().int % 10**9:09d}"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(tmp_path)],
        env={**os.environ, "SLEEP_MARK": mark},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert _wait_until(lambda: len(_marked(mark)) >= 2, timeout=60), "the sleepers never started"
        sleepers = _marked(mark)
        assert all(os.getpgid(p.pid) != os.getpgid(proc.pid) for p in sleepers)  # their own group
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode != 0
        if sig == signal.SIGTERM:
            assert "exited with code -15" in output, output[-3000:]
        assert _wait_until(lambda: not _marked(mark), timeout=30), [p.info for p in _marked(mark)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_marked(mark)


def test_processes_left_behind_by_a_finished_command_are_stopped(tmp_path):
    from airflow_ml_provider.azkaban.runtime import AzkabanJobOperator

    mark = f"300.{uuid.uuid4().int % 10**9:09d}"
    op = AzkabanJobOperator(task_id="bg", job_type="command", project_dir=str(tmp_path))
    try:
        # the command returns at once; its background sleep (stdout closed) would run on
        assert op._run_argvs({}, [["sh", "-c", f"sleep {mark} >/dev/null 2>&1 & echo started"]]) == {}
        assert not _marked(mark)
    finally:
        _kill_marked(mark)


# --------------------------------------------------------------- expansion bombs at run time
@pytest.mark.airflow
@pytest.mark.slow
def test_expansion_bombs_fail_their_jobs_with_a_clear_message(tmp_path, run_dag, capsys):
    def job_text(props: dict[str, str], command: str) -> str:
        return "type=command\n" + "".join(f"{k}={v}\n" for k, v in props.items()) + f"command={command}\n"

    files = {
        "cyc.job": job_text(_cycle(1000), "echo ${k0}"),
        "deep.job": job_text(_chain(5000), "echo ${d0}"),
        "expo.job": job_text(_doubling(40), "echo ${p40}"),
        "bombs.job": "type=noop\ndependencies=cyc,deep,expo\ncondition=all_done\n",
    }
    assert len(files["expo.job"].encode()) < 1024  # a job of a few hundred bytes asking for 2**40 bytes
    proj = _write(tmp_path / "bombs", files)
    out = tmp_path / "dags"
    _migrate(proj, out, capsys)
    result = run_dag(out, "bombs")
    s = result.states
    assert (s.get("cyc"), s.get("deep"), s.get("expo"), s.get("bombs")) == (
        "failed",
        "failed",
        "failed",
        "success",
    ), result.output[-6000:]
    assert "job 'cyc': property 'k999': circular property reference k0 -> k1" in result.output
    assert "job 'deep': property 'd4899': expands through 101 nested" in result.output
    assert (
        "job 'expo': property 'p21':" in result.output
        and "would expand to 2097152 characters" in result.output
    )
    assert "RecursionError" not in result.output and "MemoryError" not in result.output
