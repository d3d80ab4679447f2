"""Render a :class:`~airflow_ml_provider.azkaban.mappers.DagPlan` as a short Python DAG file.

The file imports ``DAG`` / ``TaskGroup`` from ``airflow.sdk`` and :func:`job` /
:func:`flow_dag_args` from :mod:`airflow_ml_provider.azkaban.runtime`; each Azkaban job is one
``job(...)`` call, each embedded flow a ``with TaskGroup(...)`` block, each dependency one ``>>``.
What several jobs share (type, properties, inherited ``.properties`` chain, directory) is written
once as a module constant; dependencies are written where each job is created.

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
        self.used: set[str] = {
            "dag",
            "job",
            "flow_dag_args",
            "DAG",
            "TaskGroup",
            "Path",
            "PROJECT_DIR",
            "CronTriggerTimetable",
            "partial",
        }

    def make(self, raw: str, prefix: str = "", constant: bool = False) -> str:
        base = re.sub(r"\W", "_", raw, flags=re.ASCII) or "task"
        if (
            base[0].isdigit()
            or keyword.iskeyword(base)
            or base in _BUILTINS
            or (base.isupper() and not constant)  # upper case is for the module's constants
            or base.startswith("__")
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
        f"Azkaban flow {plan.flow_name!r} of project {plan.project!r} ({plan.source_file or '?'}, Flow {plan.flow_version})."
    ]
    if plan.schedule is not None:
        target = plan.schedule.cron or "none: see the migration report"
        lines.append(f"Schedule: Quartz {plan.schedule.quartz!r} ({plan.schedule.origin}) -> {target}.")
    if plan.disabled:
        lines.append(f"Disabled by default (the disabled_tasks param): {', '.join(plan.disabled)}.")
    lines.append("Migrated by `airflow-ml azkaban migrate`; see docs/azkaban-migration.md.")
    text = "\n".join(lines).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return f'"""{text}\n"""'


_LINE = 88  # ruff format's default line length


def _spec_key(task: TaskPlan) -> tuple[str, str, str, str]:
    return (
        task.job_type,
        py_literal(task.props) if task.props else "",
        py_literal(dict(sorted(task.inherited.items()))) if task.inherited else "",
        task.job_dir,
    )


def render_dag(plan: DagPlan, resource_dir: str) -> str:
    """The DAG file text for ``plan``; ``resource_dir`` is the resources folder beside it.

    Compact by construction: what several jobs share (their type, own properties, inherited
    ``.properties`` chain and directory) is written once, as a module-level ``partial`` of
    :func:`job` (``command_1 = partial(job, job_type="command", props={...})``, used as
    ``command_1("a")``); a dependency is written where the job is created (``b = a >> job("b", ...)``);
    empty arguments are left out.
    """
    names = _Names()

    # ---- what is shared: count the specs and inherited chains
    spec_count: dict[tuple[str, str, str, str], int] = {}
    tasks = [t for _, t in plan.tasks()]
    for task in tasks:
        key = _spec_key(task)
        spec_count[key] = spec_count.get(key, 0) + 1
    inherited_count: dict[str, int] = {}
    for key, n in spec_count.items():
        if key[2]:
            inherited_count[key[2]] = inherited_count.get(key[2], 0) + (1 if n > 1 else n)
    inherited_names: dict[str, str] = {}
    spec_names: dict[tuple[str, str, str, str], str] = {}
    constants: list[str] = []

    def inherited_ref(lit: str) -> str:
        if inherited_count.get(lit, 0) < 2:
            return lit
        if lit not in inherited_names:
            name = names.make(f"INHERITED_{len(inherited_names) + 1}", constant=True)
            inherited_names[lit] = name
            constants.append(f"{name} = {lit}")
        return inherited_names[lit]

    def spec_args(key: tuple[str, str, str, str]) -> list[str]:
        job_type, props, inherited, job_dir = key
        if spec_count[key] > 1:
            if key not in spec_names:
                base = re.sub(r"\W", "_", job_type, flags=re.ASCII).lower() or "job"
                name = names.make(base if base[0].isalpha() else f"job_{base}")
                items = [f"job_type={py_literal(job_type)}"]
                if props:
                    items.append(f"props={props}")
                if inherited:
                    items.append(f"inherited={inherited_ref(inherited)}")
                if job_dir:
                    items.append(f"job_dir={py_literal(job_dir)}")
                spec_names[key] = name
                constants.append(f"{name} = partial(job, {', '.join(items)})")
            return []
        args = [py_literal(job_type)]
        if props:
            args.append(props)
        if inherited:
            args.append(f"inherited={inherited_ref(inherited)}")
        if job_dir:
            args.append(f"job_dir={py_literal(job_dir)}")
        return args

    body: list[str] = []
    uses_group = False

    def emit_group(group: GroupPlan, indent: str, embedding: list[dict[str, str]]) -> None:
        nonlocal uses_group
        vars_by_name: dict[str, str] = {}
        ups: dict[str, list[str]] = {}
        for up, down in group.edges:
            ups.setdefault(down, []).append(up)
        has_child = {up for up, _ in group.edges}

        def upstream_refs(name: str) -> list[str]:
            return [vars_by_name[u] for u in ups.get(name, ()) if u in vars_by_name]

        def upstream_expr(refs: list[str]) -> str:
            if not refs:
                return ""
            return (refs[0] if len(refs) == 1 else "[" + ", ".join(refs) + "]") + " >> "

        def upstream_lines(refs: list[str], target: str) -> None:
            """``[a, b, ...] >> target`` in lines that fit (ruff would put one parent per line)."""
            room = _LINE - len(indent) - len(f"[] >> {target}")
            chunk: list[str] = []
            for ref in refs:
                if chunk and len(", ".join([*chunk, ref])) > room:
                    body.append(f"{indent}{upstream_expr(chunk)}{target}")
                    chunk = []
                chunk.append(ref)
            if chunk:
                body.append(f"{indent}{upstream_expr(chunk)}{target}")

        for member in group.members:
            if isinstance(member, GroupPlan):
                uses_group = True
                # a group whose only member is a group: one `with` for both (ruff SIM117)
                chain = [member]
                while len(chain[-1].members) == 1 and isinstance(chain[-1].members[0], GroupPlan):
                    chain.append(chain[-1].members[0])
                items = []
                inner = embedding
                for g in chain:
                    var = names.make(g.group_id, "g")
                    if g is member:
                        vars_by_name[g.name] = var
                    args = [py_literal(g.group_id)]
                    own = [p for p in (g.embedding_props or []) if p]
                    if own != inner:
                        args.append(f"default_args={{{py_literal('embedding_props')}: {py_literal(own)}}}")
                    inner = own
                    if g.group_id != g.name:
                        args.append(f"tooltip={py_literal(f'Azkaban embedded flow {g.name!r}')}")
                    items.append(f"TaskGroup({', '.join(args)}) as {var}")
                body.append(f"{indent}with {', '.join(items)}:")
                before = len(body)
                emit_group(chain[-1], indent + "    ", inner)
                if len(body) == before:
                    body.append(f"{indent}    pass")
                upstream_lines(upstream_refs(member.name), vars_by_name[member.name])
                continue
            assert isinstance(member, TaskPlan)
            var = names.make(member.task_id)
            vars_by_name[member.name] = var
            spec = spec_args(_spec_key(member))
            factory = spec_names.get(_spec_key(member), "job")
            args = [py_literal(member.task_id), *spec]
            if member.task_id != member.name:
                args.append(f"job_name={py_literal(member.name)}")
            if member.condition:
                args.append(f"condition={py_literal(member.condition)}")
            if member.ref_prefix is not None:
                args.append(f"condition_scope={py_literal(member.ref_prefix)}")
            if member.job_ids:
                args.append(f"job_ids={py_literal(member.job_ids)}")
            refs = upstream_refs(member.name)
            call = f"{factory}({', '.join(args)})"
            # a job nothing in this group depends on needs no variable
            assign = f"{var} = " if member.name in has_child else ""
            line = f"{indent}{assign}{upstream_expr(refs)}{call}"
            if len(line) > _LINE and len(refs) > 1:
                body.append(f"{indent}{var} = {call}")
                upstream_lines(refs, var)
            else:
                body.append(line)

    emit_group(plan.root, "    ", [])

    uses_timetable = False
    if plan.schedule is not None and plan.schedule.cron:
        uses_timetable = True
        schedule = (
            f"CronTriggerTimetable({py_literal(plan.schedule.cron)}, "
            f"timezone={py_literal(plan.schedule.timezone or plan.timezone)})"
        )
    else:
        schedule = "None"

    imports = ["DAG"]
    if uses_timetable:
        imports.insert(0, "CronTriggerTimetable")
    if uses_group:
        imports.append("TaskGroup")
    dag_args = [
        "__file__",
        py_literal(resource_dir),
        f"project={py_literal(plan.project)}",
        f"flow_id={py_literal(plan.flow_name)}",
    ]
    if plan.flow_props:
        dag_args.append(f"flow_props={py_literal(plan.flow_props)}")
    if plan.disabled:
        dag_args.append(f"disabled={py_literal(plan.disabled)}")
    if plan.timezone and plan.timezone != "UTC":
        dag_args.append(f"timezone={py_literal(plan.timezone)}")
    if plan.undefined:
        dag_args.append(f"flow_params={py_literal(plan.undefined)}")

    out = [_docstring(plan), ""]
    if spec_names:
        out += ["from functools import partial", ""]
    out += [
        f"from airflow.sdk import {', '.join(imports)}",
        "from airflow_ml_provider.azkaban.runtime import flow_dag_args, job",
    ]
    if constants:
        out += ["", *constants]
    out += [
        "",
        "with DAG(",
        f"    dag_id={py_literal(plan.dag_id)},",
        f"    schedule={schedule},",
        f"    **flow_dag_args({', '.join(dag_args)}),",
        "):",
    ]
    out += body or ["    pass"]
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
