"""Azkaban migration at seed scale: the corpus's massive-flows.tar.bz2 (7,121 jobs, 185 flows).

Measures, in one run:

1. conversion: ``migrate()`` of the extracted project (read + validate + map + render + ruff
   format/check + the DagBag import check of every generated file + write), in seconds and
   jobs/second. Target <= 10 s.
   Baseline: only reading every ``.job`` file with the Java-properties parser (the least any
   converter must do).
2. one Airflow DagBag loading all 185 generated DAGs (in a fresh interpreter; the time of the
   ``DagBag(...)`` call). Target <= 30 s, zero import errors.
   Baseline: the same 185 DAGs written by hand as plain ``BashOperator`` DAGs (same task ids,
   same edges), loaded the same way.
3. the size of the generated code, in bytes per job. Target <= 60 (the shared property sets are
   written once, dependencies inline, no empty arguments). Baseline: the hand-written
   BashOperator DAGs of 2.

Each figure is printed beside its baseline and the ratio. The corpus is found through
AZKABAN_CORPUS (default ../shared/azkaban-corpus next to the repository).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_CONVERT_S = 10.0
TARGET_DAGBAG_S = 30.0
TARGET_BYTES_PER_JOB = 60.0

DAGBAG_TIMER = textwrap.dedent(
    """
    import json, sys, time
    from airflow.dag_processing.dagbag import DagBag
    t = time.perf_counter()
    bag = DagBag(sys.argv[1])
    elapsed = time.perf_counter() - t
    print("@@" + json.dumps({"seconds": elapsed, "dags": len(bag.dags),
        "tasks": sum(len(d.tasks) for d in bag.dags.values()), "errors": len(bag.import_errors)}))
    """
)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def corpus_dir() -> Path:
    env = os.environ.get("AZKABAN_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "azkaban-corpus"


def dagbag_time(folder: Path, home: Path) -> dict:
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
    proc = subprocess.run(
        [sys.executable, "-c", DAGBAG_TIMER, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"DagBag run failed: {proc.stderr[-2000:]}")


def write_bash_baseline(project, folder: Path) -> None:
    """Hand-written-style equivalents: one BashOperator per job, same ids and edges."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, flow in project.flows.items():
        lines = [
            '"""Hand-written equivalent."""',
            "",
            "from airflow.providers.standard.operators.bash import BashOperator",
            "from airflow.sdk import DAG",
            "",
            f"with DAG(dag_id={name!r}, schedule=None):",
            "    t = {}",
        ]
        for path, node in flow.walk():
            task_id = ".".join(path)
            command = node.props.get("command", "true")
            lines.append(f"    t[{task_id!r}] = BashOperator(task_id={task_id!r}, bash_command={command!r})")
        for edge in flow.edges:
            lines.append(f"    t[{edge.upstream!r}] >> t[{edge.downstream!r}]")
        (folder / f"{name}.py").write_text("\n".join(lines) + "\n")


def main() -> None:
    sys.path.insert(0, str(REPO))
    from airflow_ml_provider.azkaban.loader import load_project
    from airflow_ml_provider.azkaban.migrate import migrate
    from airflow_ml_provider.properties import load_properties

    tarball = corpus_dir() / "execution-test-data" / "massive-flows" / "massive-flows.tar.bz2"
    if not tarball.exists():
        print(f"skipped: {tarball} not found (set AZKABAN_CORPUS)")
        return
    with tempfile.TemporaryDirectory(prefix="bench_azkaban_") as tmp:
        tmpdir = Path(tmp)
        src = tmpdir / "massive-flows"
        t0 = time.perf_counter()
        with tarfile.open(tarball) as tf:
            tf.extractall(src, filter="data")
        extract_s = time.perf_counter() - t0
        job_files = sorted(src.rglob("*.job"))

        # baseline 1: parse every .job file, nothing else
        t0 = time.perf_counter()
        for path in job_files:
            load_properties(path)
        parse_s = time.perf_counter() - t0

        out = tmpdir / "dags"
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        report = migrate(src, out)
        convert_s = time.perf_counter() - t0
        convert_cpu = _cpu_seconds() - cpu0
        jobs = sum(f.tasks for f in report.flows)
        print(f"extracted {len(job_files)} .job files in {extract_s:.2f} s (not counted)")
        print(
            f"conversion: {len(report.flows)} flows, {jobs} jobs in {convert_s:.2f} s "
            f"= {jobs / convert_s:,.0f} jobs/s (exit {report.exit_code}; target <= {TARGET_CONVERT_S:.0f} s: "
            f"{'OK' if convert_s <= TARGET_CONVERT_S else 'MISSED'})"
        )
        print(
            f"  CPU time (this process and the import-check worker): {convert_cpu:.2f} s "
            f"(wall time above depends on the machine's load: {os.getloadavg()[0]:.1f} now)"
        )
        print(
            f"  baseline (parse the .job files only): {parse_s:.2f} s = {len(job_files) / parse_s:,.0f} jobs/s; "
            f"ratio ours/baseline = {convert_s / parse_s:.1f}x"
        )

        # conversion without the ruff pass and the import check, to show where the time goes
        t0 = time.perf_counter()
        migrate(src, tmpdir / "dags_noruff", run_ruff=False, check_import=False)
        noruff_s = time.perf_counter() - t0
        print(f"  the same without the ruff format/check pass and the DagBag import check: {noruff_s:.2f} s")

        home = tmpdir / "airflow_home"
        home.mkdir()
        ours = dagbag_time(out, home)
        with load_project(src) as project:
            write_bash_baseline(project, tmpdir / "bash_dags")
        base = dagbag_time(tmpdir / "bash_dags", home)
        print(
            f"DagBag: {ours['dags']} generated DAGs, {ours['tasks']} tasks in {ours['seconds']:.2f} s, "
            f"{ours['errors']} import errors (target <= {TARGET_DAGBAG_S:.0f} s, 0 errors: "
            f"{'OK' if ours['seconds'] <= TARGET_DAGBAG_S and ours['errors'] == 0 else 'MISSED'})"
        )
        print(
            f"  baseline (hand-written BashOperator DAGs): {base['dags']} DAGs, {base['tasks']} tasks in "
            f"{base['seconds']:.2f} s, {base['errors']} import errors; ratio ours/baseline = "
            f"{ours['seconds'] / base['seconds']:.2f}x"
        )
        size = sum(p.stat().st_size for p in out.glob("*.py"))
        per_job = size / max(jobs, 1)
        base_size = sum(p.stat().st_size for p in (tmpdir / "bash_dags").glob("*.py"))
        print(
            f"generated DAG files: {size / 1024:.0f} KiB in total, {per_job:.1f} bytes per job "
            f"(target <= {TARGET_BYTES_PER_JOB:.0f}: {'OK' if per_job <= TARGET_BYTES_PER_JOB else 'MISSED'})"
        )
        print(
            f"  baseline (hand-written BashOperator DAGs): {base_size / 1024:.0f} KiB, "
            f"{base_size / max(jobs, 1):.1f} bytes per job; ratio ours/baseline = {size / max(base_size, 1):.2f}x"
        )


if __name__ == "__main__":
    main()
