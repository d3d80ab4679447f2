"""``airflow-ml azkaban``: migrate Azkaban projects to Airflow DAG files.

``airflow-ml azkaban migrate SOURCE --out DIR [--schedules FILE] [--timezone ZONE]
[--dag-id-prefix P] [--overwrite] [--dry-run] [--report FILE] [--strict]``

Exit codes: 0 success (warnings allowed), 1 a flow could not be converted (or the project could
not be read), 2 a usage error. Messages name the file and the problem; never a traceback.
Heavy imports happen inside :func:`run_migrate` only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run_migrate"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "azkaban",
        help="Migrate Azkaban projects to Airflow DAGs",
        description="Migrate Azkaban projects (Flow 1.0 and 2.0) to Airflow DAG files.",
    )
    sub = parser.add_subparsers(dest="azkaban_command", metavar="ACTION")
    mig = sub.add_parser(
        "migrate",
        help="Convert a project directory or .zip into one DAG file per flow",
        description="Convert an Azkaban project (a directory or the .zip uploaded to Azkaban) into "
        "formatted Airflow DAG files, one per flow, with the project's resource files beside them. "
        "Exit codes: 0 success (warnings allowed), 1 a flow could not be converted, 2 usage error.",
    )
    mig.add_argument("source", metavar="SOURCE", help="project directory or archive (.zip, .tar.gz, ...)")
    mig.add_argument("--out", required=True, metavar="DIR", help="output directory for the DAG files")
    mig.add_argument(
        "--schedules",
        metavar="FILE",
        help="JSON from Azkaban's /schedule?ajax=fetchSchedule or fetchSchedules (cron + execution options)",
    )
    mig.add_argument(
        "--timezone",
        default=None,
        metavar="ZONE",
        help="the Azkaban server's time zone (its default.timezone.id), e.g. Asia/Shanghai: used for "
        "schedules that name none and for ${azkaban.flow.start.*} (default UTC, with a warning when the "
        "project has schedules or uses those properties)",
    )
    mig.add_argument(
        "--dag-id-prefix", "--prefix", default="", metavar="P", help="prefix for every dag_id and DAG file"
    )
    mig.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DAG files in --out that another project's migration wrote (refused otherwise)",
    )
    mig.add_argument("--dry-run", action="store_true", help="report only; write no file")
    mig.add_argument("--report", metavar="FILE", help="write the full report as JSON")
    mig.add_argument("--strict", action="store_true", help="treat warnings as errors")
    mig.add_argument(
        "--max-archive-size",
        type=_size,
        default=None,
        metavar="BYTES",
        help="refuse an archive that expands past this size (default 1G; suffixes K, M, G)",
    )
    mig.add_argument("--quiet", "-q", action="store_true", help="print only errors and the summary")
    mig.set_defaults(func=run_migrate)
    parser.set_defaults(func=lambda args: _missing_action(parser))


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 500M)")
    return int(number) * units[unit]


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


class _Progress:
    """A one-line progress bar on stderr: only on a terminal, or for large projects."""

    def __init__(self, stream: Any = None, min_flows: int = 20) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_flows = min_flows
        self.last_pct = -1

    def __call__(self, done: int, total: int, name: str) -> None:
        if total <= 1 or (not self.tty and total < self.min_flows):
            return
        pct = done * 100 // total
        if self.tty:
            width = 30
            fill = done * width // total
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\rconverting flows [{bar}] {done}/{total} {name[:30]:<30}")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()
        elif pct // 10 != self.last_pct // 10 or done == total:
            self.stream.write(f"converting flows: {done}/{total} ({pct}%)\n")
            self.stream.flush()
        self.last_pct = pct


def _summary(report: Any) -> str:
    rows = [("flow", "dag_id", "tasks", "status", "warnings")]
    for f in report.flows:
        rows.append((f.flow, f.dag_id, str(f.tasks), f.status, str(len(f.warnings))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if j < 2 or j == 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    converted = sum(f.status in ("converted", "dry-run") for f in report.flows)
    failed = sum(f.status == "failed" for f in report.flows)
    tasks = sum(f.tasks for f in report.flows)
    lines.append("")
    verb = "would convert" if report.dry_run else "converted"
    lines.append(
        f"{report.project or '?'} (Flow {report.flow_version or '?'}): {len(report.flows)} flows, "
        f"{verb} {converted}, failed {failed}; {tasks} tasks; {len(report.resources)} resource files"
        f" in {report.seconds:.2f}s"
    )
    wk = report.warnings_by_kind()
    ek = report.errors_by_kind()
    lines.append("warnings by kind: " + (", ".join(f"{k}={v}" for k, v in sorted(wk.items())) or "none"))
    lines.append("errors by kind: " + (", ".join(f"{k}={v}" for k, v in sorted(ek.items())) or "none"))
    return "\n".join(lines)


def run_migrate(args: argparse.Namespace) -> int:
    from airflow_ml_provider.azkaban.migrate import MigrationError, migrate, write_report
    from airflow_ml_provider.azkaban.schedules import SchedulesError, load_schedules
    from airflow_ml_provider.cli import CLIError

    source = Path(args.source)
    if not source.exists():
        raise CLIError(f"SOURCE {source}: no such file or directory", exit_code=2)
    if args.schedules and not Path(args.schedules).is_file():
        raise CLIError(f"--schedules {args.schedules}: no such file", exit_code=2)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory", exit_code=2)

    schedules = None
    if args.schedules:
        try:
            schedules = load_schedules(args.schedules)
        except SchedulesError as exc:
            raise CLIError(str(exc), exit_code=1) from None

    try:
        report = migrate(
            source,
            out,
            schedules=schedules,
            dag_id_prefix=args.dag_id_prefix or "",
            dry_run=args.dry_run,
            strict=args.strict,
            progress=_Progress(),
            max_archive_bytes=args.max_archive_size,
            timezone=args.timezone,
            overwrite=args.overwrite,
        )
    except MigrationError as exc:
        raise CLIError(str(exc), exit_code=exc.exit_code) from None

    problems = report.all_problems
    for p in problems:
        if p.severity == "error" or not args.quiet:
            print(f"{p.severity}: {p.location()}: [{p.kind}] {p.message}", file=sys.stderr)
    for f in report.flows:
        if f.status == "failed":
            print(f"error: flow {f.flow!r} was not converted: no DAG written", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.report:
        try:
            write_report(report, args.report)
        except OSError as exc:
            raise CLIError(f"--report {args.report}: cannot write: {exc.strerror or exc}") from None
    print(_summary(report))
    return report.exit_code
