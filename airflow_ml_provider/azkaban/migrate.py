"""The migration pipeline behind ``airflow-ml azkaban migrate``.

load (``loader.load_project``) -> validate (the reader's problems) -> map (:mod:`.mappers`) ->
render (:mod:`.render`) -> format and check (ruff) -> import check (Airflow's DagBag) -> write.

Guarantees:

* a flow with an error gets no DAG file; the others are still written (exit code 1);
* every DAG file is imported by Airflow's ``DagBag`` (in a subprocess, before it is moved into
  place): a file that does not import is a failed flow, reported with the import error;
* ``out`` holds a manifest (:data:`MANIFEST`) naming the project and source of every DAG file
  written there; a DAG file of another project is never replaced silently: the flow fails
  naming both sources, unless ``overwrite`` is set (a ``--dag-id-prefix`` keeps them apart);
* every path written is inside ``out`` (DAG files are named after the sanitized dag_id; the
  resources go to one folder listed in ``.airflowignore``);
* files are written to a staging folder inside ``out`` and moved into place one by one, so a
  reader never sees half a file;
* ``--strict`` turns every warning into an error for the flow it concerns.

Pure: no Airflow import.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_ml_provider.azkaban.mappers import ERROR, WARNING, DagPlan, MigrateKind, plan_flow
from airflow_ml_provider.azkaban.model import Problem, Project
from airflow_ml_provider.azkaban.render import format_files, render_dag

__all__ = ["MANIFEST", "FlowResult", "MigrationError", "MigrationReport", "load_source", "migrate"]

#: the file in ``--out`` recording, for each DAG file, the project and source it was made from
MANIFEST = ".azkaban-migrate.json"


class MigrationError(Exception):
    """The project cannot be migrated at all (unreadable source, bad archive, bad --out)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class FlowResult:
    """The outcome for one top-level flow."""

    flow: str
    dag_id: str
    file: str | None  # path relative to out (None when not written)
    status: str  # "converted" | "failed" | "dry-run"
    tasks: int = 0
    groups: int = 0
    edges: int = 0
    schedule: str | None = None
    quartz: str | None = None
    disabled: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "dag_id": self.dag_id,
            "file": self.file,
            "status": self.status,
            "tasks": self.tasks,
            "groups": self.groups,
            "edges": self.edges,
            "quartz": self.quartz,
            "schedule": self.schedule,
            "disabled_tasks": self.disabled,
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
        }


@dataclass
class MigrationReport:
    """Everything the command prints and ``--report`` writes."""

    source: str
    out: str
    project: str = ""
    flow_version: str = ""
    flows: list[FlowResult] = field(default_factory=list)
    project_problems: list[Problem] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    resource_dir: str | None = None
    dry_run: bool = False
    strict: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    timezone: str = "UTC"

    @property
    def all_problems(self) -> list[Problem]:
        out = list(self.project_problems)
        for f in self.flows:
            out.extend(f.problems)
        return out

    @property
    def exit_code(self) -> int:
        if any(f.status == "failed" for f in self.flows):
            return 1
        if any(p.severity == ERROR for p in self.project_problems):
            return 1
        return 0

    def warnings_by_kind(self) -> Counter:
        return Counter(p.kind for p in self.all_problems if p.severity == WARNING)

    def errors_by_kind(self) -> Counter:
        return Counter(p.kind for p in self.all_problems if p.severity == ERROR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "out": self.out,
            "project": self.project,
            "flow_version": self.flow_version,
            "dry_run": self.dry_run,
            "strict": self.strict,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "timezone": self.timezone,
            "summary": {
                "flows": len(self.flows),
                "converted": sum(f.status in ("converted", "dry-run") for f in self.flows),
                "failed": sum(f.status == "failed" for f in self.flows),
                "tasks": sum(f.tasks for f in self.flows),
                "warnings_by_kind": dict(sorted(self.warnings_by_kind().items())),
                "errors_by_kind": dict(sorted(self.errors_by_kind().items())),
            },
            "flows": [f.to_dict() for f in self.flows],
            "project_problems": [p.to_dict() for p in self.project_problems],
            "resource_dir": self.resource_dir,
            "resources": self.resources,
            "notes": self.notes,
        }


def load_source(source: str | Path, *, max_archive_bytes: int | None = None) -> Project:
    """Load a project through the reader, turning its failures into :class:`MigrationError`.

    :param max_archive_bytes: the most an archive may expand to (default: the reader's, 1 GiB).
    """
    from airflow_ml_provider.azkaban import loader

    try:
        if max_archive_bytes is not None:
            return loader.load_project(source, limits=loader.ArchiveLimits(max_total_bytes=max_archive_bytes))
        return loader.load_project(source)
    except (OSError, ValueError) as exc:  # ProjectLoadError / ArchiveError are ValueErrors
        raise MigrationError(str(exc)) from None


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", text).strip(".") or "flow"
    return name


def _within(out: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(out.resolve())
        return True
    except ValueError:
        return False


def _group_count(plan: DagPlan) -> int:
    return len(plan.group_ids())


def _edge_count(plan: DagPlan) -> int:
    n = 0
    stack = [plan.root]
    while stack:
        g = stack.pop()
        n += len(g.edges)
        stack.extend(m for m in g.members if hasattr(m, "members"))
    return n


def _strictify(problems: list[Problem]) -> list[Problem]:
    out = []
    for p in problems:
        if p.severity == WARNING:
            p = Problem(
                p.kind, p.file, f"{p.message} (an error with --strict)", p.flow, p.node, ERROR, p.line
            )
        out.append(p)
    return out


def migrate(
    source: str | Path,
    out: str | Path,
    *,
    schedules: Mapping[str, Mapping[str, Any]] | None = None,
    dag_id_prefix: str = "",
    dry_run: bool = False,
    strict: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    project: Project | None = None,
    run_ruff: bool = True,
    max_archive_bytes: int | None = None,
    timezone: str | None = None,
    overwrite: bool = False,
    check_import: bool = True,
) -> MigrationReport:
    """Convert every flow of an Azkaban project into one DAG file each under ``out``.

    :param source: a project directory or archive (.zip, .tar.*).
    :param out: the output directory (created; must not be a file).
    :param schedules: parsed ``--schedules`` (see :func:`.schedules.load_schedules`), by flow name.
    :param dag_id_prefix: prepended to every dag_id (and DAG file name).
    :param dry_run: plan and check everything, write nothing.
    :param strict: warnings become errors.
    :param progress: ``progress(done, total, flow_name)`` after each flow.
    :param project: an already loaded project (then ``source`` is only used in the report).
    :param run_ruff: run ``ruff format`` / ``ruff check`` on the generated files.
    :param max_archive_bytes: the most an archive source may expand to.
    :param timezone: the Azkaban server's time zone (its ``default.timezone.id``), an IANA name:
        the zone of schedules that name none and of the ``azkaban.flow.start.*`` built-ins.
        None: UTC, with a warning when the project has schedules or uses those built-ins.
    :param overwrite: replace DAG files in ``out`` that another project's migration wrote.
    :param check_import: import every DAG file with Airflow's DagBag before writing it (skipped
        with a note when Airflow is not installed).
    :raises MigrationError: the project cannot be read at all, or ``timezone`` is unknown.
    """
    started = time.perf_counter()
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise MigrationError(f"--out {out_dir}: exists and is not a directory", exit_code=2)
    if dag_id_prefix and not re.fullmatch(r"[A-Za-z0-9_.\-]*", dag_id_prefix):
        raise MigrationError(
            f"--dag-id-prefix {dag_id_prefix!r}: only letters, digits, '_', '-' and '.' are allowed",
            exit_code=2,
        )
    tz = _check_timezone(timezone)
    report = MigrationReport(
        source=str(source), out=str(out_dir), dry_run=dry_run, strict=strict, timezone=tz
    )
    own = project is None
    if project is None:
        project = load_source(source, max_archive_bytes=max_archive_bytes)
    checker = None
    try:
        if check_import and not dry_run:
            checker = _ImportChecker(len(project.flows))
        report.project = project.name
        report.flow_version = project.flow_version
        schedules = dict(schedules or {})

        # problems that no flow owns (project-wide ones, or about flows that did not load)
        flow_names = set(project.flows)
        owned: set[int] = set()
        for name in flow_names:
            owned.update(id(p) for p in project.flow_problems(name))
        report.project_problems = [
            p for p in project.problems if id(p) not in owned or (p.flow is None and p.node is None)
        ]
        for name in sorted(set(schedules) - flow_names):
            report.project_problems.append(
                Problem(
                    MigrateKind.SCHEDULE,
                    "",
                    f"--schedules names flow {name!r}, which the project does not define; ignored",
                    severity=WARNING,
                )
            )
        if strict:
            report.project_problems = _strictify(report.project_problems)

        resource_dir = _safe_name(f"{dag_id_prefix}{project.name}_resources").replace(".", "_")
        report.resource_dir = resource_dir
        plans: list[tuple[DagPlan, FlowResult]] = []
        total = len(project.flows)
        for i, name in enumerate(project.flows, 1):
            plan = plan_flow(
                project, name, dag_id_prefix=dag_id_prefix, schedule=schedules.get(name), timezone=tz
            )
            reader = [p for p in project.flow_problems(name) if not (p.flow is None and p.node is None)]
            problems = reader + plan.problems
            if strict:
                problems = _strictify(problems)
            result = FlowResult(
                flow=name,
                dag_id=plan.dag_id,
                file=None,
                status="dry-run" if dry_run else "converted",
                tasks=plan.task_count,
                groups=_group_count(plan),
                edges=_edge_count(plan),
                schedule=plan.schedule.cron if plan.schedule else None,
                quartz=plan.schedule.quartz if plan.schedule else None,
                disabled=plan.disabled,
                problems=problems,
            )
            project_error = any(
                p.severity == ERROR for p in report.project_problems if p.flow is None and p.node is None
            )
            if result.errors or project_error:
                result.status = "failed"
            plans.append((plan, result))
            report.flows.append(result)
            if progress:
                progress(i, total, name)

        if timezone is None:
            timed = [p.flow_name for p, _ in plans if p.schedule is not None or p.uses_start_time]
            if timed:
                shown = ", ".join(timed[:5]) + (f" and {len(timed) - 5} more" if len(timed) > 5 else "")
                report.project_problems.append(
                    Problem(
                        MigrateKind.TIMEZONE,
                        "",
                        f"no --timezone given: schedules and ${{azkaban.flow.start.*}} of {shown} use UTC; "
                        "pass the Azkaban server's default.timezone.id (e.g. --timezone Asia/Shanghai)",
                        severity=ERROR if strict else WARNING,
                    )
                )
                if strict:  # the error concerns these flows: they get no DAG file
                    for plan, result in plans:
                        if plan.flow_name in timed:
                            result.status = "failed"

        if not project.flows and not report.project_problems:
            report.project_problems.append(
                Problem(
                    "no-flows",
                    "",
                    "the project defines no flow: nothing to migrate",
                    severity=ERROR if strict else WARNING,
                )
            )

        if dry_run:
            return report

        # ---- write: render into a staging folder inside out, check, then move into place
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = _read_manifest(out_dir)
        identity = {"project": project.name, "source": str(Path(source).resolve()) if own else str(source)}
        staging = Path(tempfile.mkdtemp(prefix=".azkaban-migrate-", dir=out_dir))
        try:
            staged: list[tuple[Path, FlowResult]] = []
            used_files: set[str] = set()
            for plan, result in plans:
                if result.status == "failed":
                    continue
                fname = _safe_name(plan.dag_id) + ".py"
                if fname.lower() in used_files:
                    result.status = "failed"
                    result.problems.append(
                        Problem(
                            MigrateKind.RENDER,
                            plan.source_file,
                            f"two flows map to the DAG file {fname}",
                            plan.flow_name,
                        )
                    )
                    continue
                clash = _collision(out_dir, fname, manifest, identity)
                if clash and not overwrite:
                    result.status = "failed"
                    result.problems.append(
                        Problem(
                            MigrateKind.COLLISION,
                            plan.source_file,
                            f"{out_dir / fname} {clash}; this migration (project {project.name!r} from "
                            f"{identity['source']}) would replace it: use --dag-id-prefix to keep both, "
                            "or --overwrite to replace it",
                            plan.flow_name,
                            severity=ERROR,
                        )
                    )
                    continue
                used_files.add(fname.lower())
                path = staging / fname
                path.write_text(render_dag(plan, resource_dir), encoding="utf-8")
                staged.append((path, result))
            if run_ruff and staged:
                ok, message = format_files([p for p, _ in staged])
                if message and ok:
                    report.notes.append(message)
                if not ok:  # find the culprits one by one
                    for path, result in staged:
                        one_ok, one_msg = format_files([path])
                        if not one_ok:
                            result.status = "failed"
                            result.problems.append(
                                Problem(
                                    MigrateKind.RENDER,
                                    result.flow,
                                    f"generated code fails ruff: {one_msg}",
                                    result.flow,
                                )
                            )
            if checker is not None:
                checker.check([(p, r) for p, r in staged if r.status == "converted"], report)
            # resources first, so a DAG never points at missing scripts
            if any(r.status == "converted" for _, r in staged):
                _copy_resources(project, out_dir / resource_dir, out_dir, report)
                _job_dirs(plans, out_dir / resource_dir, out_dir)
                _airflowignore(out_dir, resource_dir)
            for path, result in staged:
                if result.status != "converted":
                    continue
                dest = out_dir / path.name
                if not _within(out_dir, dest):  # pragma: no cover - names are sanitized
                    result.status = "failed"
                    continue
                os.replace(path, dest)
                result.file = path.name
                manifest[path.name] = {**identity, "flow": result.flow, "dag_id": result.dag_id}
            if any(r.file for r in report.flows):
                _write_manifest(out_dir, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return report
    finally:
        if checker is not None:
            checker.close()
        report.seconds = time.perf_counter() - started
        if own:
            project.close()


def _check_timezone(timezone: str | None) -> str:
    if timezone is None:
        return "UTC"
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise MigrationError(
            f"--timezone {timezone!r}: not a known IANA time zone (e.g. Asia/Shanghai, UTC)", exit_code=2
        ) from None
    return timezone


def _read_manifest(out_dir: Path) -> dict[str, dict[str, str]]:
    path = out_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MigrationError(f"{path}: unreadable migration manifest ({exc}); remove or fix it") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise MigrationError(f"{path}: unreadable migration manifest (no 'files' object); remove or fix it")
    return {str(k): dict(v) for k, v in files.items() if isinstance(v, dict)}


def _write_manifest(out_dir: Path, manifest: dict[str, dict[str, str]]) -> None:
    path = out_dir / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"files": dict(sorted(manifest.items()))}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _collision(
    out_dir: Path, fname: str, manifest: dict[str, dict[str, str]], identity: dict[str, str]
) -> str:
    """Why writing ``fname`` would replace another project's DAG file ("" when it would not)."""
    if not (out_dir / fname).exists():
        return ""
    owner = manifest.get(fname)
    if owner is None:
        return "exists and was not written by a migration of this project (it is not in " + MANIFEST + ")"
    if owner.get("project") == identity["project"]:
        return ""
    return f"holds flow {owner.get('flow')!r} of project {owner.get('project')!r} migrated from {owner.get('source')}"


_IMPORT_CHECK = """
import json, sys, warnings
warnings.simplefilter("ignore")
from airflow.dag_processing.dagbag import DagBag
paths = json.loads(sys.stdin.read())  # Airflow is imported while the migration renders
out = {}
if paths:
    bag = DagBag(dag_folder=paths[0], collect_dags=False)
    for path in paths:
        before = dict(bag.import_errors)
        found = bag.process_file(path, only_if_updated=False, safe_mode=False)
        errors = [v for k, v in bag.import_errors.items() if before.get(k) != v]
        out[path] = {"errors": errors, "dags": sorted(d.dag_id for d in found)}
print("@@" + json.dumps(out))
"""


class _ImportChecker:
    """Imports the generated DAG files with Airflow's DagBag, in subprocesses started early (they
    import Airflow, the slow part, while the migration renders), so that a broken file or Airflow's
    import cost never touch this process. A file that fails to import, or defines no DAG of the
    expected id, is a failed flow."""

    def __init__(self, n_flows: int) -> None:
        import subprocess
        import sys
        from importlib.util import find_spec

        self.procs: list[Any] = []
        self.outputs: list[tuple[Any, Any]] = []
        self.available = find_spec("airflow") is not None
        self.home = tempfile.mkdtemp(prefix="azkaban-import-check-")
        if not self.available:
            return
        env = dict(os.environ)
        env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
        if "AIRFLOW_HOME" not in env:  # never create ~/airflow/airflow.cfg as a side effect
            env["AIRFLOW_HOME"] = self.home
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        # one worker pays Airflow's import once (about 2.5 s of CPU); more only for very large projects
        workers = max(1, min(cpus, 4, n_flows // 200))
        # output to files, not pipes: a worker logging a lot can never block on a full pipe
        self.outputs = [
            (Path(self.home, f"out{i}.txt").open("w+"), Path(self.home, f"err{i}.txt").open("w+"))
            for i in range(workers)
        ]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", _IMPORT_CHECK],
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                text=True,
            )
            for out, err in self.outputs
        ]

    def close(self) -> None:
        """Stop the workers if they are still running (e.g. the migration failed)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs = []
        for out, err in self.outputs:
            out.close()
            err.close()
        self.outputs = []
        shutil.rmtree(self.home, ignore_errors=True)

    def check(self, staged: list[tuple[Path, FlowResult]], report: MigrationReport) -> None:
        import subprocess

        if not self.available:
            report.notes.append("Airflow is not installed here: the DAG files were not import-checked")
            return
        # a few large files dominate: spread them over the workers by size
        chunks: list[list[str]] = [[] for _ in self.procs]
        loads = [0] * len(self.procs)
        for path, _ in sorted(staged, key=lambda pr: -pr[0].stat().st_size):
            i = loads.index(min(loads))
            chunks[i].append(str(path))
            loads[i] += path.stat().st_size
        got: dict[str, Any] = {}
        failure = ""
        for proc, chunk in zip(self.procs, chunks):
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(chunk))
                proc.stdin.close()
            except OSError:  # the worker died early: its stderr says why
                pass
        for proc, (out, err) in zip(self.procs, self.outputs):
            try:
                proc.wait(timeout=1800)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read() or "no output"
            line = next((x for x in stdout.splitlines() if x.startswith("@@")), None)
            if line is None:
                failure = failure or ((stderr.strip().splitlines() or ["no output"])[-1])
            else:
                got.update(json.loads(line[2:]))
        for path, result in staged:
            entry = got.get(str(path))
            if entry is None:
                cause = (
                    f"the generated DAG could not be import-checked with Airflow: {failure or 'no result'}"
                )
            elif entry["errors"]:
                cause = f"the generated DAG file fails to import in Airflow: {_last_line(entry['errors'][0])}"
            elif result.dag_id not in entry["dags"]:
                cause = f"the generated DAG file defines no DAG {result.dag_id!r}"
            else:
                continue
            result.status = "failed"
            result.problems.append(
                Problem(
                    MigrateKind.IMPORT,
                    result.flow,
                    f"flow {result.flow!r}: {cause}",
                    result.flow,
                    severity=ERROR,
                )
            )


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else text.strip()


def _job_dirs(plans: list[tuple[DagPlan, FlowResult]], dest_root: Path, out_dir: Path) -> None:
    """Create each job's directory in the copied project (a job runs in its own file's directory,
    which may hold nothing but ``.job`` files, which are not copied)."""
    dirs: set[str] = set()
    for plan, result in plans:
        if result.status == "converted":
            dirs.update(t.job_dir for _, t in plan.tasks() if t.job_dir)
    for rel in sorted(dirs):
        dest = dest_root / rel
        if _within(out_dir, dest):
            dest.mkdir(parents=True, exist_ok=True)


def _copy_resources(project: Project, dest_root: Path, out_dir: Path, report: MigrationReport) -> None:
    dest_root.mkdir(parents=True, exist_ok=True)
    root = project.root
    if root is None:
        return
    root = Path(root)
    for rel in project.resource_files:
        src = root / rel
        dest = dest_root / rel
        if not _within(out_dir, dest) or src.is_symlink() or not src.is_file():
            report.project_problems.append(
                Problem(
                    "resource",
                    rel,
                    f"resource file {rel!r} was not copied (unsafe path, link or not a file)",
                    severity=WARNING,
                )
            )
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        report.resources.append(rel)


def _airflowignore(out_dir: Path, resource_dir: str) -> None:
    path = out_dir / ".airflowignore"
    line = f"{resource_dir}/"
    existing = path.read_text().splitlines() if path.exists() else []
    if line not in existing:
        with path.open("a") as fh:
            if existing and not path.read_text().endswith("\n"):
                fh.write("\n")
            fh.write(line + "\n")


def write_report(report: MigrationReport, path: str | Path) -> None:
    """Write the JSON report (atomically)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)
