"""Migrated Azkaban flows run with the real Airflow (``airflow dags test``) and behave as in Azkaban.

One Flow 1.0 project written here covers, in a single DAG run:

* conditions pick the jobs Azkaban would (conditional_flow6 / 7 patterns, ``one_failed``,
  ``all_done``, JavaScript coercion ``"7" > 5``, cancelled = skipped, default all_success);
* output properties (JSON in ``$JOB_OUTPUT_PROP_FILE``) reach the children;
* ``${...}`` precedence: ``.properties`` chain < flow parameters < parents' outputs < ``.job``;
* built-ins (``azkaban.flow.flowid``, ``azkaban.job.attempt``), ``JOB_NAME``,
  ``JOB_PROP_FILE``, ``env.NAME``; commands run without a shell, split like Azkaban;
* retries happen (``retries`` / ``retry.backoff``);
* a schedule's ``disabledJobs`` becomes the default ``disabled_tasks``;
* an embedded flow becomes a TaskGroup whose jobs see the embedding job's properties.

A Flow 2.0 project (YAML conditions, nested embedded flows) is checked on the loaded DAG.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from airflow_ml_provider.cli import main as cli_main

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

TOOL = """
import json, os, sys

mode, outdir = sys.argv[1], sys.argv[2]
if mode == "out":
    pairs = dict(a.split("=", 1) for a in sys.argv[3:])
    with open(os.environ["JOB_OUTPUT_PROP_FILE"], "w") as fh:
        json.dump(pairs, fh)
    sys.exit(0)
with open(os.path.join(outdir, "records.jsonl"), "a") as fh:
    fh.write(json.dumps({
        "job": os.environ.get("JOB_NAME"),
        "args": sys.argv[3:],
        "myvar": os.environ.get("MYVAR"),
        "prop_file": open(os.environ["JOB_PROP_FILE"], encoding="iso-8859-1").read(),
        "has_output_file": bool(os.environ.get("JOB_OUTPUT_PROP_FILE")),
    }) + "\\n")
if mode == "fail":
    sys.exit(3)
"""

JOBS = {
    "shared.properties": "p1=shared1\np2=shared2\np3=shared3\np4=shared4\ntool=tool.py\n",
    "subdir/more.properties": "p5=sub5\ntool=../tool.py\n",  # jobs in subdir/ run in subdir/, as in Azkaban
    "jobA.job": "type=command\ncommand=python ${tool} out ${outdir} props=foo n=7 p3=out3 p4=out4\n",
    "jobB.job": "type=command\ndependencies=jobA\ncondition=${jobA:props} == 'foo'\n"
    "command=python ${tool} record ${outdir} jobB\n",
    "jobC.job": "type=command\ndependencies=jobA\ncondition=${jobA:props} == 'bar'\n"
    "command=python ${tool} record ${outdir} jobC\n",
    "jobD.job": "type=command\ndependencies=jobB,jobC\ncondition=one_success && ${jobA:props} == 'foo'\n"
    "command=python ${tool} record ${outdir} jobD\n",
    "jobE.job": "type=command\ndependencies=jobA\ncondition=${jobA:n} > 5 && ${jobA:props} != 'x'\n"
    "command=python ${tool} record ${outdir} jobE\n",
    "jobX.job": "type=command\ndependencies=jobA\ncondition=${jobA:unknown} == 'foo'\n"
    "command=python ${tool} record ${outdir} jobX\n",
    "subdir/prec.job": "type=command\ndependencies=jobA\np4=job4\nenv.MYVAR=${p1}-${p5}\n"
    "command=python ${tool} record ${outdir} prec ${p1} ${p2} ${p3} ${p4} ${p5} ${azkaban.flow.flowid} "
    "\"a b\" '$HOME' |\n"
    "command.1=python ${tool} record ${outdir} prec-second\n"
    "command.3=python ${tool} record ${outdir} prec-after-gap\n",
    "jobF.job": "type=command\nretries=1\nretry.backoff=200\n"
    "command=python ${tool} fail ${outdir} jobF ${azkaban.job.attempt}\n",
    "jobG.job": "type=command\ndependencies=jobF,jobB\ncondition=one_failed\n"
    "command=python ${tool} record ${outdir} jobG\n",
    "jobH.job": "type=command\ndependencies=jobF\ncommand=python ${tool} record ${outdir} jobH\n",
    "jobI.job": "type=command\ndependencies=jobC\ncondition=all_done\ncommand=python ${tool} record ${outdir} jobI\n",
    "jobJ.job": "type=command\ndependencies=jobC\ncommand=python ${tool} record ${outdir} jobJ\n",
    "jobK.job": "type=command\ndependencies=jobA\ncommand=python ${tool} record ${outdir} jobK\n",
    "jobU.job": "type=mystery\ndependencies=jobA\nfoo=bar\n",
    "emb.job": "type=flow\nflow.name=innerEnd\ndependencies=jobE\nembprop=fromemb\n",
    "innerStart.job": "type=command\ncommand=python ${tool} record ${outdir} innerStart ${embprop}\n",
    "innerEnd.job": "type=noop\ndependencies=innerStart\n",
    "final.job": "type=noop\ncondition=all_done\n"
    "dependencies=jobD,jobE,jobX,prec,jobG,jobH,jobI,jobJ,jobK,jobU,emb\n",
}


def _write_project(root: Path) -> Path:
    proj = root / "runproj"
    for rel, text in JOBS.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text, encoding="iso-8859-1")
    (proj / "tool.py").write_text(textwrap.dedent(TOOL))
    return proj


def test_flow1_migrated_dag_runs_like_azkaban(tmp_path, run_dag, capsys):
    proj = _write_project(tmp_path)
    sched = tmp_path / "schedules.json"
    sched.write_text(
        json.dumps(
            {
                "schedule": {
                    "flowId": "final",
                    "cronExpression": "0 0 2 ? * MON-FRI",
                    "executionOptions": {"disabledJobs": ["jobK"], "flowParameters": {"p2": "sched2"}},
                }
            }
        )
    )
    out = tmp_path / "dags"
    rc = cli_main(["azkaban", "migrate", str(proj), "--out", str(out), "--schedules", str(sched)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "unknown-job-type=1" in captured.out  # jobU: warned, not dropped
    assert (out / "final.py").exists() and (out / "innerEnd.py").exists()
    text = (out / "final.py").read_text()
    # no --timezone: the schedule runs in UTC, named explicitly (a warning says so)
    assert 'CronTriggerTimetable("0 2 * * 1-5", timezone="UTC")' in text and '"jobK"' in text

    records_dir = tmp_path / "records"
    records_dir.mkdir()
    result = run_dag(
        out,
        "final",
        conf={"flow_params": {"outdir": str(records_dir), "p2": "flow2", "p3": "flow3"}},
    )
    s = result.states
    expected = {
        "jobA": "success",
        "jobB": "success",  # ${jobA:props} == 'foo'
        "jobC": "skipped",  # == 'bar': cancelled, shown as skipped
        "jobD": "success",  # one_success (jobB) && expression
        "jobE": "success",  # "7" > 5 (JavaScript coercion)
        "jobX": "skipped",  # unresolved ${jobA:unknown}: false, as Azkaban's JS evaluation fails
        "prec": "success",
        "jobF": "failed",
        "jobG": "success",  # one_failed (jobF)
        "jobH": "upstream_failed",  # default all_success with a failed parent
        "jobI": "success",  # all_done over a cancelled parent
        "jobJ": "skipped",  # default all_success over a cancelled parent: cancelled
        "jobK": "success",  # disabled by the schedule: marked successful, nothing ran
        "jobU": "failed",  # unknown type: fails loudly
        "emb.innerStart": "success",
        "emb.innerEnd": "success",
        "final": "success",  # all_done
    }
    assert {k: s.get(k) for k in expected} == expected, result.output[-6000:]

    records = [json.loads(line) for line in (records_dir / "records.jsonl").read_text().splitlines()]
    by_job: dict[str, list[dict]] = {}
    for rec in records:
        by_job.setdefault(rec["args"][0] if rec["job"] == "prec" else rec["job"], []).append(rec)
    assert set(by_job) == {
        "jobB",
        "jobD",
        "jobE",
        "prec",
        "prec-second",
        "jobF",
        "jobG",
        "jobI",
        "innerStart",
    }

    # precedence: shared.properties < flow params < parent outputs < .job; built-ins; no shell
    prec = by_job["prec"][0]
    assert prec["args"] == ["prec", "shared1", "flow2", "out3", "job4", "sub5", "final", "a b", "$HOME", "|"]
    assert prec["myvar"] == "shared1-sub5"
    assert "p4=job4" in prec["prop_file"] and "p3=out3" in prec["prop_file"]
    assert prec["has_output_file"]
    assert "prec-after-gap" not in by_job  # command.3 after a gap is not run

    # retries: two attempts, numbered as Azkaban does (0, 1)
    assert [r["args"] for r in by_job["jobF"]] == [["jobF", "0"], ["jobF", "1"]]
    # the embedded flow's jobs see the embedding job's properties
    assert by_job["innerStart"][0]["args"] == ["innerStart", "fromemb"]
    # the unknown type shows the original properties in the log
    assert "mystery" in result.output and "foo=bar" in result.output
    # parents' states came from Airflow itself (not the XCom fallback)
    assert "Could not read the parents' states" not in result.output


FLOW2 = {
    "p.project": "azkaban-flow-version: 2.0\n",
    "cond.flow": """
config:
  greeting: hello
nodes:
  - name: jobA
    type: command
    config:
      command: python tool.py out x kind=foo
  - name: jobB
    type: command
    dependsOn: [jobA]
    condition: ${jobA:kind} == 'foo'
    config:
      command: python tool.py record ${outdir} jobB ${greeting}
  - name: jobC
    type: command
    dependsOn: [jobA]
    condition: ${jobA:kind} == 'bar'
    config:
      command: python tool.py record ${outdir} jobC
  - name: outer
    type: flow
    dependsOn: [jobB]
    config:
      level: outer
    nodes:
      - name: inner
        type: flow
        nodes:
          - name: deep
            type: command
            config:
              command: python tool.py record ${outdir} deep ${level} ${greeting}
  - name: jobD
    type: noop
    dependsOn: [outer, jobC]
    condition: one_success
""",
}


FLOW2_PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow_ml_provider.azkaban.runtime import resolve_props
bag = DagBag(sys.argv[1])
dag = bag.dags["az_cond"]
out = {"errors": len(bag.import_errors), "tasks": {}}
for t in dag.tasks:
    layers = [t.inherited, t.flow_props, {"outdir": "/o"}, *t.embedding_props, {}, t.props]
    out["tasks"][t.task_id] = {
        "up": sorted(t.upstream_task_ids),
        "rule": getattr(t.trigger_rule, "value", str(t.trigger_rule)),
        "condition": t.condition,
        "command": resolve_props(layers, job=t.task_id).get("command"),
    }
print("@@" + json.dumps(out))
"""


def test_flow2_nested_groups_conditions_and_parameters(tmp_path, capsys):
    """Flow 2.0: YAML conditions, nested embedded flows as nested TaskGroups, the flow config and
    the embedding nodes' config reaching the inner job (checked on the loaded DAG; the run-time
    behaviour of the same runtime code is covered by the Flow 1.0 run above)."""
    import os
    import subprocess
    import sys

    proj = tmp_path / "p2"
    for rel, text in FLOW2.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    (proj / "tool.py").write_text(textwrap.dedent(TOOL))
    out = tmp_path / "dags"
    rc = cli_main(["azkaban", "migrate", str(proj), "--out", str(out), "--dag-id-prefix", "az_"])
    assert rc == 0, capsys.readouterr().err
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "ah"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    proc = subprocess.run(
        [sys.executable, "-c", FLOW2_PROBE, str(out)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("@@"))[2:])
    assert got["errors"] == 0
    tasks = got["tasks"]
    assert set(tasks) == {"jobA", "jobB", "jobC", "outer.inner.deep", "jobD"}
    assert tasks["outer.inner.deep"]["up"] == ["jobB"]
    assert tasks["jobD"]["up"] == ["jobC", "outer.inner.deep"]
    assert tasks["jobD"]["rule"] == "all_done" and tasks["jobD"]["condition"] == "one_success"
    assert tasks["jobB"]["rule"] == "all_success" and tasks["jobB"]["condition"] == "${jobA:kind} == 'foo'"
    assert tasks["outer.inner.deep"]["command"] == "python tool.py record /o deep outer hello"
    assert tasks["jobB"]["command"] == "python tool.py record /o jobB hello"
