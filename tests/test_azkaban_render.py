"""Every valid project of the Azkaban corpus converts; the generated DAG files load in Airflow's
DagBag with zero import errors, have the task ids and dependencies the model implies, and pass
``ruff check`` and ``ruff format --check``. Negative projects fail with exit code 1, a message
naming the file and the problem, and no DAG file for the failing flow.

The corpus (Azkaban's own test projects) is read from the environment variable AZKABAN_CORPUS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_ml_provider.azkaban.loader import load_project
from airflow_ml_provider.azkaban.migrate import migrate
from airflow_ml_provider.azkaban.model import Flow
from airflow_ml_provider.azkaban.render import py_literal, ruff_command
from airflow_ml_provider.cli import main as cli_main

CORPUS_ENV = "AZKABAN_CORPUS"


@pytest.fixture(scope="module")
def corpus() -> Path:
    value = os.environ.get(CORPUS_ENV)
    if not value:
        pytest.skip(
            f"{CORPUS_ENV} is not set: point it at the Azkaban conformance corpus (../shared/azkaban-corpus)"
        )
    path = Path(value)
    if not (path / "EXPECTED.md").exists():
        pytest.fail(f"{CORPUS_ENV}={value} does not hold the corpus (no EXPECTED.md)")
    return path


# project (relative to the corpus) -> top-level flows that become DAGs (EXPECTED.md)
VALID = {
    "execution-test-data/exectest1": 5,
    "execution-test-data/exectest2": 1,
    "execution-test-data/embedded": 2,
    "execution-test-data/embedded2": 6,
    "execution-test-data/embedded3": 3,
    "execution-test-data/embedded4": 1,
    "execution-test-data/execpropstest": 2,
    "execution-test-data/animal": 1,
    "execution-test-data/basicflowyamltest": 1,
    "execution-test-data/multipleflowyamltest": 2,
    "execution-test-data/recursivedirectoryyamltest": 2,
    "execution-test-data/embeddedflowyamltest": 1,
    "execution-test-data/multipleembeddedflowyamltest": 2,
    "execution-test-data/conditionalflowyamltest": 7,
    "execution-test-data/alertflow": 1,
    "execution-test-data/basicflowwithoutendnode": 1,
    "execution-test-data/embeddedflowwithoutendnode": 1,
    "execution-test-data/failbasicflowwithoutendnode": 1,
    "execution-test-data/basicyamlshelltest": 1,
    "execution-test-data/loadpropsflowyamltest": 1,
    "execution-test-data/invalidjobpropsyamltest": 1,  # Xms over Azkaban's server limit: a warning
    **{f"execution-test-data/conditionalflowtest/conditional_flow{i}": 1 for i in range(1, 8)},
    "examples/flow20-projects": 2,
    "examples/flow20-projects/basicFlow20Project.zip": 1,
    "examples/flow20-projects/embeddedFlow20Project.zip": 1,
    "examples/conditional-flow/conditionalFlowProject.zip": 1,
}

# project -> (failing flow or None for a project-level error, words the message must contain)
NEGATIVE = {
    "execution-test-data/embedded_bad": (
        "innerFlow",
        ["innerFlow.job", "cycle", "innerFlow -> jobe -> innerFlow"],
    ),
    "execution-test-data/cyclefoundyamltest": ("cycle_found", ["cycle_found.flow", "cycle", "->"]),
    "execution-test-data/dependencyundefinedyamltest": (
        "dependency_undefined",
        ["dependency_undefined.flow", "shell_bash", "not defined"],
    ),
    "execution-test-data/duplicatenodenamesyamltest": (
        "duplicate_nodename",
        ["duplicate_nodename.flow", "duplicate", "shell_echo"],
    ),
    "execution-test-data/invalidflowversiontest": (None, ["basic_flow.project", "azkaban-flow-version"]),
    "execution-test-data/noflowversiontest": (None, ["no_flow_version.project", "azkaban-flow-version"]),
    "execution-test-data/duplicateprojectyamltest": (None, [".project", "more than one"]),
    "execution-test-data/invalidconditionalflowyamltest": (None, ["condition", "descendant"]),
    "execution-test-data/flowtriggeryamltest": (
        "flow_trigger_invalid_cron_expression",
        ["flow_trigger_invalid_cron_expression.flow", "Quartz"],
    ),
}


def _prefix(rel: str) -> str:
    return Path(rel).name.removesuffix(".zip").replace(".", "_") + "__"


def _expected_upstream(flow: Flow) -> dict[str, set[str]]:
    """task id -> upstream task ids, computed from the model (groups expanded to their jobs)."""
    out: dict[str, set[str]] = {}

    def leaves(f: Flow, prefix: str) -> set[str]:
        res: set[str] = set()
        for name in f.leaves():
            node = f.nodes[name]
            if node.is_flow and node.embedded_flow is not None:
                res |= leaves(node.embedded_flow, f"{prefix}{name}.")
            else:
                res.add(prefix + name)
        return res

    def walk(f: Flow, prefix: str, outer: set[str]) -> None:
        for name, node in f.nodes.items():
            parents: set[str] = set()
            for up in f.upstream(name):
                up_node = f.nodes[up]
                if up_node.is_flow and up_node.embedded_flow is not None:
                    parents |= leaves(up_node.embedded_flow, f"{prefix}{up}.")
                else:
                    parents.add(prefix + up)
            if not f.upstream(name):
                parents |= outer
            if node.is_flow and node.embedded_flow is not None:
                walk(node.embedded_flow, f"{prefix}{name}.", parents)
            else:
                out[prefix + name] = parents

    walk(flow, "", set())
    return out


DAGBAG_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(sys.argv[1])
    print("@@JSON@@" + json.dumps({
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "dags": {d.dag_id: {
            "tasks": {t.task_id: sorted(t.upstream_task_ids) for t in d.tasks},
            "timetable": type(d.timetable).__name__,
            "cron": getattr(d.timetable, "_expression", None),
            "timezone": str(getattr(d.timetable, "_timezone", "")),
            "disabled": d.params["disabled_tasks"],
        } for d in bag.dags.values()},
    }))
    """
)


def dagbag(folder: Path, tmp_path: Path) -> dict:
    home = tmp_path / "airflow_home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
    proc = subprocess.run(
        [sys.executable, "-c", DAGBAG_SCRIPT, str(folder)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@JSON@@"))
    return json.loads(line.removeprefix("@@JSON@@"))


def test_valid_corpus_projects_convert_load_and_lint(corpus, tmp_path):
    out = tmp_path / "dags"
    expected_dags: dict[str, dict[str, set[str]]] = {}
    for rel, n_flows in VALID.items():
        src = corpus / rel
        report = migrate(src, out, dag_id_prefix=_prefix(rel))
        errors = [str(p) for p in report.all_problems if p.severity == "error"]
        assert report.exit_code == 0 and not errors, (rel, errors)
        assert len(report.flows) == n_flows, (rel, [f.flow for f in report.flows])
        assert all(f.status == "converted" and (out / f.file).exists() for f in report.flows), rel
        with load_project(src) as project:
            for name, flow in project.flows.items():
                expected_dags[_prefix(rel) + name] = _expected_upstream(flow)
    files = sorted(out.glob("*.py"))
    assert len(files) == sum(VALID.values())

    bag = dagbag(out, tmp_path)
    assert bag["errors"] == {}
    assert set(bag["dags"]) == set(expected_dags)
    for dag_id, expected in expected_dags.items():
        got = {t: set(ups) for t, ups in bag["dags"][dag_id]["tasks"].items()}
        assert got == expected, dag_id
    # embedded flows are TaskGroups: ids <embedding job>.<job>, nested likewise
    nested = bag["dags"]["embeddedflowyamltest__embedded_flow"]["tasks"]
    assert len(nested) == 8
    assert any(t.startswith("embedded_flow1.embedded_flow2.") for t in nested)
    assert "innerflow.job4" in bag["dags"]["execpropstest__job3"]["tasks"]

    ruff = ruff_command()
    assert ruff is not None, "ruff is a test dependency"
    check = subprocess.run(
        [*ruff, "check", "--isolated", "."], cwd=out, check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run(
        [*ruff, "format", "--isolated", "--check", "."], cwd=out, check=False, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout
    # the same with default settings from the output folder itself (no project config above it)
    check2 = subprocess.run([*ruff, "check", "."], cwd=out, check=False, capture_output=True, text=True)
    assert check2.returncode == 0, check2.stdout
    fmt2 = subprocess.run(
        [*ruff, "format", "--check", "."], cwd=out, check=False, capture_output=True, text=True
    )
    assert fmt2.returncode == 0, fmt2.stdout


@pytest.mark.parametrize("rel", sorted(NEGATIVE))
def test_negative_corpus_projects_fail_clearly(corpus, tmp_path, capsys, rel):
    flow, words = NEGATIVE[rel]
    out = tmp_path / "out"
    rc = cli_main(["azkaban", "migrate", str(corpus / rel), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word in captured.err, (word, captured.err)
    written = {p.name for p in out.glob("*.py")} if out.exists() else set()
    if flow is None:
        assert written == set()
    else:
        assert f"{flow}.py" not in written
        assert f"error: flow {flow!r} was not converted" in captured.err


def test_generated_file_is_short_and_uses_the_runtime(corpus, tmp_path):
    out = tmp_path / "dags"
    migrate(corpus / "execution-test-data/conditionalflowyamltest", out)
    text = (out / "conditional_flow6.py").read_text()
    assert "from airflow_ml_provider.azkaban.runtime import flow_dag_args, job" in text
    assert "from airflow.sdk import DAG" in text
    assert f"condition={py_literal(chr(36) + '{jobA:props} == ' + chr(39) + 'foo' + chr(39))}" in text
    assert "condition=\"one_success && ${jobA:props} == 'foo'\"" in text
    assert len(text.splitlines()) < 60


EXECPROPS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from airflow_ml_provider.azkaban.runtime import resolve_props
    bag = DagBag(sys.argv[1])
    out = {}
    for dag_id, task_id in (("job3", "job2"), ("job3", "innerflow.job4"), ("job3", "job3")):
        t = bag.dags[dag_id].get_task(task_id)
        # precedence: .properties chain < flow params (incl. a run-time one) < outputs < .job
        layers = [t.inherited, t.flow_props, {"props7": "execflow7"}, *t.embedding_props, {}, t.props]
        out[task_id] = resolve_props(layers, job=task_id)
    print("@@JSON@@" + json.dumps(out))
    """
)


def test_execpropstest_precedence_in_generated_dags(corpus, tmp_path):
    """EXPECTED.md: job2 resolves to props1=shared1, props2=job2, props3=moo3, props4=shared4,
    props8=shared8, props7=job7 (the .job file beats a flow parameter props7=execflow7)."""
    out = tmp_path / "dags"
    assert migrate(corpus / "execution-test-data/execpropstest", out).exit_code == 0
    home = tmp_path / "ah"
    home.mkdir()
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    proc = subprocess.run(
        [sys.executable, "-c", EXECPROPS_SCRIPT, str(out)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(
        next(x for x in proc.stdout.splitlines() if x.startswith("@@JSON@@")).removeprefix("@@JSON@@")
    )
    job2 = got["job2"]
    assert {k: job2[k] for k in ("props1", "props2", "props3", "props4", "props7", "props8")} == {
        "props1": "shared1",
        "props2": "job2",
        "props3": "moo3",
        "props4": "shared4",
        "props7": "job7",
        "props8": "shared8",
    }
    # inside the embedded flow: the embedding job's properties are the flow parameters
    job4 = got["innerflow.job4"]
    assert job4["props5"] == "innerflow5" and job4["props6"] == "innerflow6"
    assert job4["props8"] == "job8" and job4["props9"] == "job9"
    # the embedded job's own directory chain (subdir/shared.properties) is its lowest layer;
    # the embedding job passes down only its own properties, not its chain
    assert job4["props4"] == "shared4" and job4["props3"] == "moo3"
    assert got["job3"]["props3"] == "job3" and got["job3"]["props7"] == "execflow7"


# ------------------------------------------------------------------------ runtime, unit level
def test_split_command_like_azkaban():
    from airflow_ml_provider.azkaban.runtime import command_lines, split_command

    assert split_command("""python  x.py "a b" 'c "d"' e'f g'h $HOME |""") == [
        "python",
        "x.py",
        "a b",
        'c "d"',
        "ef gh",
        "$HOME",
        "|",
    ]
    props = {"command": "echo 0", "command.1": "echo 1", "command.2": "echo 2", "command.4": "echo 4"}
    assert command_lines(props) == ["echo 0", "echo 1", "echo 2"]
    assert command_lines({"command.1": "only"}) == ["only"]


def test_resolve_props_precedence_recursion_and_errors():
    from airflow_ml_provider.azkaban.runtime import JobPropertyError, resolve_props

    layers = [{"a": "low", "b": "${a}-b", "d": "x"}, {"a": "mid"}, {"c": "${b}/${d}"}]
    assert resolve_props(layers) == {"a": "mid", "b": "mid-b", "d": "x", "c": "mid-b/x"}
    with pytest.raises(JobPropertyError, match=r"could not find a value for variable \$\{nope\}"):
        resolve_props([{"k": "${nope}"}], job="j")
    with pytest.raises(JobPropertyError, match="circular property reference"):
        resolve_props([{"x": "${y}", "y": "${x}"}], job="j")


def test_job_factory_maps_static_properties():
    from airflow_ml_provider.azkaban.runtime import AzkabanJobOperator, job

    t = job(
        "a",
        "command",
        {"command": "echo", "retries": "3", "failure.emails": "a@x.org, b@x.org"},
        inherited={"retry.backoff": "2500", "success.emails": "c@x.org"},
        condition="one_failed",
    )
    assert isinstance(t, AzkabanJobOperator)
    assert t.retries == 3 and t.retry_delay.total_seconds() == 2.5
    assert getattr(t.trigger_rule, "value", t.trigger_rule) == "all_done"
    callbacks = t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback]
    assert [c.__name__ for c in callbacks] == ["azkaban_failed_email"]
    plain = job("b", "noop", {}, condition="${a:x} == 1")
    assert getattr(plain.trigger_rule, "value", plain.trigger_rule) == "all_success"


def test_java_and_hive_command_lines(tmp_path):
    from airflow_ml_provider.azkaban.runtime import AzkabanJobOperator

    seen: list[list[str]] = []

    class Probe(AzkabanJobOperator):
        def _run_argvs(self, props, argvs, **kwargs):
            seen.extend(argvs)
            return {}

    java = Probe(task_id="j", job_type="javaprocess")
    java._run_java(
        {
            "java.class": "com.x.Main",
            "classpath": "lib/a.jar,lib/b.jar",
            "Xms": "64M",
            "Xmx": "1G",
            "jvm.args": "-Dk=v '-Dq=a b'",
            "main.args": "in out",
        },
        {},
    )
    assert seen[-1] == [
        "java",
        "-Dk=v",
        "-Dq=a b",
        "-Xms64M",
        "-Xmx1G",
        "-cp",
        "lib/a.jar:lib/b.jar",
        "com.x.Main",
        "in",
        "out",
    ]
    hive = Probe(task_id="h", job_type="hive")
    hive._run_hive(
        {"hive.script": "q.sql", "hivevar.day": "2024-01-01", "hiveconf.mapred.job.queue.name": "etl"}, {}
    )
    assert seen[-1] == [
        "hive",
        "-f",
        "q.sql",
        "--hiveconf",
        "mapred.job.queue.name=etl",
        "--hivevar",
        "day=2024-01-01",
    ]
