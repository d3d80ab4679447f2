"""Render a :class:`~airflow_ml_provider.azkaban.mappers.DagPlan` as a short Python DAG file.

The file imports ``DAG`` / ``TaskGroup`` from ``airflow.sdk`` and :func:`job` /
:func:`flow_dag_args` from :mod:`airflow_ml_provider.azkaban.runtime`; each Azkaban job is one
``job(...)`` call, each embedded flow a ``with TaskGroup(...)`` block, each dependency one ``>>``.
Inherited ``.properties`` chains shared by several jobs are written once as module constants.

The text is produced close to ``ruff format`` style; :func:`format_files` runs ``ruff format``
and ``ruff check`` on the written files when ruff is available.

Pure: no Airflow import.
"""

from __future__ import annotations

import builtins
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_ml_provider.azkaban.mappers import DagPlan, GroupPlan, TaskPlan

__all__ = ["format_files", "py_literal", "render_dag", "ruff_command"]


def py_literal(value: Any) -> str:
    """A Python literal for str / int / bool / None / list / dict, with double-quoted strings."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(str(k))}: {py_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__}")


_BUILTINS = frozenset(dir(builtins))


class _Names:
    def __init__(self) -> None:
        self.used: set[str] = {"dag", "job", "flow_dag_args", "DAG", "TaskGroup", "Path", "PROJECT_DIR"}

    def make(self, raw: str, prefix: str = "") -> str:
        base = re.sub(r"\W", "_", raw, flags=re.ASCII) or "task"
        if (
            base[0].isdigit()
            or keyword.iskeyword(base)
            or base in _BUILTINS
            or base.startswith(("INHERITED_", "__"))
        ):
            base = f"{prefix or 't'}_{base}"
        name, n = base, 2
        while name in self.used:
            name = f"{base}_{n}"
            n += 1
        self.used.add(name)
        return name


def _docstring(plan: DagPlan) -> str:
    lines = [
        f"Azkaban flow {plan.flow_name!r} of project {plan.project!r}, migrated by `airflow-ml azkaban migrate`.",
        "",
        f"Source: {plan.source_file or '?'} (Azkaban Flow {plan.flow_version}).",
    ]
    if plan.schedule is not None:
        target = plan.schedule.cron or "none: see the migration report"
        lines.append(f"Schedule: Quartz {plan.schedule.quartz!r} ({plan.schedule.origin}) -> {target}.")
    if plan.disabled:
        lines.append(f"Disabled by default (the disabled_tasks param): {', '.join(plan.disabled)}.")
    lines.append("Run-time behaviour (conditions, ${...} parameters, outputs) lives in")
    lines.append("airflow_ml_provider.azkaban.runtime; see docs/azkaban-migration.md.")
    text = "\n".join(lines).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return f'"""{text}\n"""'


def render_dag(plan: DagPlan, resource_dir: str) -> str:
    """The DAG file text for ``plan``; ``resource_dir`` is the resources folder beside it."""
    names = _Names()
    constants: dict[str, str] = {}  # literal -> constant name

    def inherited_ref(props: dict[str, str]) -> str | None:
        if not props:
            return None
        lit = py_literal(dict(sorted(props.items())))
        if lit not in constants:
            constants[lit] = f"INHERITED_{len(constants) + 1}"
        return constants[lit]

    body: list[str] = []
    uses_group = False
    uses_timetable = False

    def emit_group(group: GroupPlan, indent: str, vars_by_name: dict[str, str]) -> None:
        nonlocal uses_group
        for member in group.members:
            if isinstance(member, GroupPlan):
                uses_group = True
                # a group whose only member is a group: one `with` for both (ruff SIM117)
                chain = [member]
                while len(chain[-1].members) == 1 and isinstance(chain[-1].members[0], GroupPlan):
                    chain.append(chain[-1].members[0])
                items = []
                for g in chain:
                    var = names.make(g.name, "g")
                    if g is member:
                        vars_by_name[g.name] = var
                    args = [py_literal(g.name)]
                    if g.embedding_props:
                        args.append(
                            f"default_args={{{py_literal('embedding_props')}: {py_literal(g.embedding_props)}}}"
                        )
                    items.append(f"TaskGroup({', '.join(args)}) as {var}")
                body.append(f"{indent}with {', '.join(items)}:")
                before = len(body)
                emit_group(chain[-1], indent + "    ", {})
                if len(body) == before:
                    body.append(f"{indent}    pass")
                continue
            assert isinstance(member, TaskPlan)
            var = names.make(member.name)
            vars_by_name[member.name] = var
            args = [py_literal(member.name), py_literal(member.job_type)]
            if member.props:
                args.append(py_literal(member.props))
            ref = inherited_ref(member.inherited)
            if ref:
                args.append(f"inherited={ref}")
            if member.condition:
                args.append(f"condition={py_literal(member.condition)}")
            if member.ref_prefix is not None:
                args.append(f"condition_scope={py_literal(member.ref_prefix)}")
            if member.job_dir:
                args.append(f"job_dir={py_literal(member.job_dir)}")
            body.append(f"{indent}{var} = job({', '.join(args)})")
        by_up: dict[str, list[str]] = {}
        for up, down in group.edges:
            by_up.setdefault(up, []).append(down)
        for up, downs in by_up.items():
            targets = [vars_by_name[d] for d in downs]
            rhs = targets[0] if len(targets) == 1 else "[" + ", ".join(targets) + "]"
            body.append(f"{indent}{vars_by_name[up]} >> {rhs}")

    emit_group(plan.root, "    ", {})

    if plan.schedule is not None and plan.schedule.cron and plan.schedule.timezone:
        uses_timetable = True
        schedule = (
            f"CronTriggerTimetable({py_literal(plan.schedule.cron)}, "
            f"timezone={py_literal(plan.schedule.timezone)})"
        )
    elif plan.schedule is not None and plan.schedule.cron:
        schedule = py_literal(plan.schedule.cron)
    else:
        schedule = "None"

    imports = ["DAG"]
    if uses_timetable:
        imports.insert(0, "CronTriggerTimetable")
    if uses_group:
        imports.append("TaskGroup")
    dag_args = [
        f"project={py_literal(plan.project)}",
        f"flow_id={py_literal(plan.flow_name)}",
        "project_dir=PROJECT_DIR",
    ]
    if plan.flow_props:
        dag_args.append(f"flow_props={py_literal(plan.flow_props)}")
    if plan.disabled:
        dag_args.append(f"disabled={py_literal(plan.disabled)}")

    out = [
        _docstring(plan),
        "",
        "from pathlib import Path",
        "",
        f"from airflow.sdk import {', '.join(imports)}",
        "from airflow_ml_provider.azkaban.runtime import flow_dag_args, job",
        "",
        f"PROJECT_DIR = Path(__file__).parent / {py_literal(resource_dir)}",
    ]
    for lit, name in constants.items():
        out.append(f"{name} = {lit}")
    out += [
        "",
        "with DAG(",
        f"    dag_id={py_literal(plan.dag_id)},",
        f"    schedule={schedule},",
        f"    **flow_dag_args({', '.join(dag_args)}),",
        "):",
    ]
    if not body:
        body = ["    pass"]
    out += body
    return "\n".join(out) + "\n"


def ruff_command() -> list[str] | None:
    """How to run ruff here (the venv's binary, PATH, or ``python -m ruff``), or None."""
    exe = Path(sys.executable).parent / ("ruff.exe" if os.name == "nt" else "ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if found:
        return [found]
    try:
        import ruff  # noqa: F401

        return [sys.executable, "-m", "ruff"]
    except ImportError:
        return None


def format_files(paths: Sequence[Path]) -> tuple[bool, str]:
    """``ruff format`` then ``ruff check`` the files (isolated from any project config).

    Returns ``(ok, message)``; ``ok`` is False with ruff's output when the check fails, and
    ``(True, "ruff not found ...")`` when ruff is not installed (the text is left as rendered).
    """
    if not paths:
        return True, ""
    cmd = ruff_command()
    if cmd is None:
        return True, "ruff not found: the DAG files were not run through `ruff format`"
    files = [str(Path(p).resolve()) for p in paths]
    cwd = str(Path(files[0]).parent)
    steps = [
        ["format", "--isolated", "--quiet"],
        ["check", "--isolated", "--quiet", "--fix", "--exit-zero"],  # safe fixes only
        ["format", "--isolated", "--quiet"],
        ["check", "--isolated", "--quiet", "--output-format", "concise"],
    ]
    for step in steps:
        # run from the files' folder: the provider is then a third-party import, as it is in
        # the user's repository (isort sections do not depend on where the command ran)
        proc = subprocess.run([*cmd, *step, *files], cwd=cwd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            return False, (proc.stdout + proc.stderr).strip()
    return True, ""
