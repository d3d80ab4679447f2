"""Run-time helpers imported by DAG files that ``airflow-ml azkaban migrate`` generates.

Generated DAGs stay short: each Azkaban job is one call to :func:`job`, and everything Azkaban does
at run time happens here, in :class:`AzkabanJobOperator`:

* the per-run ``disabled_tasks`` switch (:mod:`airflow_ml_provider.disabled_tasks`);
* conditions: the status macro is checked against the final state of every parent (Airflow
  ``success`` = Azkaban SUCCEEDED, a disabled task ends as success = SKIPPED, Airflow ``skipped`` =
  CANCELLED, anything else = FAILED), then the expression over ``${job:param}``; a false
  condition cancels the job, shown as *skipped* (:class:`~airflow.sdk.exceptions.AirflowSkipException`);
* ``${name}`` substitution with Azkaban's precedence, lowest to highest: the directory's
  ``.properties`` chain, the flow's parameters and the built-ins (``azkaban.flow.flowid`` ...),
  for a job of an embedded flow the embedding jobs' own properties (outermost first), the
  outputs of the direct upstream jobs, the ``.job`` file itself;
* ``JOB_PROP_FILE``, ``JOB_NAME`` and ``JOB_OUTPUT_PROP_FILE`` in the environment; the JSON a job
  writes to ``JOB_OUTPUT_PROP_FILE`` is its XCom return value, which children read;
* the job types ``command`` (no shell: each line split on spaces, respecting quotes),
  ``javaprocess``, ``java`` (Azkaban's JavaJob), ``hive``, ``noop`` and unknown types (which
  fail loudly), each command in its own process group, in the job's own directory.

Only ``airflow.sdk`` is imported at module level, so DAG files parse fast.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_ml_provider.azkaban.expansion import ExpansionError, expand_all
from airflow_ml_provider.disabled_tasks import disabled_tasks_param, skip_if_disabled

__all__ = [
    "AzkabanJobOperator",
    "JobPropertyError",
    "command_lines",
    "flow_dag_args",
    "job",
    "resolve_props",
    "split_command",
]

#: Airflow task state -> the Azkaban status a condition macro sees
_STATE_TO_AZKABAN = {"success": "SUCCEEDED", "skipped": "CANCELLED"}


#: a property that cannot be resolved (undefined, circular, too deep or too large ``${...}``)
JobPropertyError = ExpansionError


# ------------------------------------------------------------------------------ pure helpers
def split_command(line: str) -> list[str]:
    """Split a command line like Azkaban: on spaces, respecting '...' and "..." (quotes removed).

    No shell is involved: ``a "b c" 'd e'`` -> ``["a", "b c", "d e"]``; ``$HOME`` and ``|`` stay
    literal.
    """
    args: list[str] = []
    buf: list[str] = []
    in_apos = in_quote = False
    for ch in line:
        if ch == " " and not in_apos and not in_quote:
            if buf:
                args.append("".join(buf))
                buf = []
        elif ch == "'" and not in_quote:
            in_apos = not in_apos
        elif ch == '"' and not in_apos:
            in_quote = not in_quote
        else:
            buf.append(ch)
    if buf:
        args.append("".join(buf))
    return args


def command_lines(props: Mapping[str, str]) -> list[str]:
    """``command``, ``command.1``, ``command.2``, ... in order, stopping at the first gap."""
    lines = []
    if props.get("command", "").strip():
        lines.append(props["command"])
    n = 1
    while f"command.{n}" in props:
        lines.append(props[f"command.{n}"])
        n += 1
    return [line for line in lines if line.strip()]


def resolve_props(layers: Sequence[Mapping[str, Any]], *, job: str = "") -> dict[str, str]:
    """Merge ``layers`` (lowest precedence first) and resolve ``${name}`` in every value.

    References are resolved recursively against the merged map, as Azkaban's ``PropsUtils`` does,
    within the depth and size limits of :func:`~airflow_ml_provider.azkaban.expansion.expand_all`.

    :raises JobPropertyError: an undefined variable, a circular reference, or a value nesting too
        deep / expanding too large; the message names the job and the key.
    """
    return expand_all(layers, job=job)


def builtin_props(
    context: Mapping[str, Any], *, flow_id: str, project: str, task_id: str, timezone: str = "UTC"
) -> dict[str, str]:
    """Azkaban's built-in flow parameters, mapped to the Airflow run.

    ``azkaban.flow.flowid`` = the dag_id, ``azkaban.flow.execid`` = the run_id,
    ``azkaban.job.id`` = ``task_id`` (pass the original job name),
    ``azkaban.flow.start.*`` = the run's logical date (its start date when it has none, as manual
    runs may) in ``timezone``, formatted as Azkaban's ``PropsUtils.addCommonFlowProperties`` does
    with a Joda ``DateTime`` in the server's zone (``default.timezone.id``): ``timestamp`` is ISO
    8601 with milliseconds and offset, ``year`` ... ``milliseconds`` are zero-padded fields,
    ``timezone`` the zone id; ``azkaban.job.attempt`` = try_number - 1 (Azkaban counts from 0).
    """
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    start = (
        context.get("logical_date")
        or getattr(dag_run, "logical_date", None)
        or getattr(dag_run, "run_after", None)
        or getattr(dag_run, "start_date", None)
    )
    props = {
        "azkaban.flow.flowid": str(getattr(dag_run, "dag_id", "") or flow_id),
        "azkaban.flow.execid": str(context.get("run_id") or getattr(dag_run, "run_id", "")),
        "azkaban.flow.projectname": project,
        "azkaban.job.id": task_id,
        "azkaban.job.attempt": str(max(int(getattr(ti, "try_number", 1) or 1) - 1, 0)),
    }
    if start is not None:
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(timezone or "UTC")
        if start.tzinfo is None:  # Airflow dates are aware; a naive one is UTC
            from datetime import timezone as _tz

            start = start.replace(tzinfo=_tz.utc)
        start = start.astimezone(zone)
        stamp = start.isoformat(timespec="milliseconds")
        if stamp.endswith("+00:00"):  # Joda prints a zero offset as Z
            stamp = stamp[:-6] + "Z"
        props.update(
            {
                "azkaban.flow.start.timestamp": stamp,
                "azkaban.flow.start.year": f"{start.year:04d}",
                "azkaban.flow.start.month": f"{start.month:02d}",
                "azkaban.flow.start.day": f"{start.day:02d}",
                "azkaban.flow.start.hour": f"{start.hour:02d}",
                "azkaban.flow.start.minute": f"{start.minute:02d}",
                "azkaban.flow.start.second": f"{start.second:02d}",
                "azkaban.flow.start.milliseconds": f"{start.microsecond // 1000:03d}",
                "azkaban.flow.start.timezone": zone.key,
            }
        )
    return props


# ---------------------------------------------------------------------------- notifications
def _notify(kind: str, addresses: list[str]):
    """An Airflow callback that e-mails ``addresses`` (via the SMTP provider) about the task."""

    def callback(context: Mapping[str, Any]) -> None:
        ti = context.get("ti") or context.get("task_instance")
        subject = f"[Azkaban job {kind}] {getattr(ti, 'dag_id', '')}.{getattr(ti, 'task_id', '')}"
        body = (
            f"Job {getattr(ti, 'task_id', '')} of flow {getattr(ti, 'dag_id', '')} "
            f"(run {context.get('run_id')}) finished: {kind}."
        )
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(to=addresses, subject=subject, html_content=body).notify(context)
        except Exception as exc:  # noqa: BLE001 - a mail problem must not change the task's outcome
            import logging

            logging.getLogger(__name__).warning(
                "Could not send the %s e-mail to %s: %s", kind, ", ".join(addresses), exc
            )

    callback.__name__ = f"azkaban_{kind}_email"
    return callback


def _emails(value: str | None) -> list[str]:
    return [a.strip() for a in re.split(r"[,;\s]+", value or "") if a.strip()]


# --------------------------------------------------------------------------------- operator
class AzkabanJobOperator(BaseOperator):
    """One migrated Azkaban job.

    :param job_type: the Azkaban ``type`` (``command``, ``javaprocess``, ``java``, ``hive``,
        ``noop``, or any other, which fails at run time showing the job's properties).
    :param props: the properties written in the job's own ``.job`` file / Flow 2.0 ``config``.
    :param inherited: properties inherited from the directory's ``.properties`` chain.
    :param flow_props: the flow's parameters (Flow 2.0 flow ``config``, a schedule's
        ``flowParameters``); the run's ``conf["flow_params"]`` overrides them.
    :param embedding_props: for a job of an embedded flow, the own properties of each embedding
        job, outermost first (set by the TaskGroup's ``default_args``).
    :param condition: the Azkaban ``condition`` text, or None.
    :param project_dir: the directory holding the copied project; each job runs in its
        ``job_dir`` inside it (Azkaban runs a job in its own file's directory).
    :param project: the Azkaban project name (``azkaban.flow.projectname``).
    :param flow_id: the Azkaban flow id (used when the run has no dag_id).
    :param condition_scope: the task-id prefix of the jobs that ``${job:param}`` in the condition
        names (default: this task's own group); set for a condition moved from an embedding node.
    :param job_name: the ORIGINAL Azkaban job name (it may hold dots or other characters that the
        task id had to replace); used for ``JOB_NAME``, ``${azkaban.job.id}``, file names and
        messages. Default: the last part of the task id.
    :param job_dir: the directory of the job's ``.job`` file (Flow 1.0) or of its ``.flow`` file
        (Flow 2.0), relative to ``project_dir`` (``""`` = the project root).
    :param timezone: the IANA time zone of the Azkaban server / schedule (``--timezone``): the
        ``azkaban.flow.start.*`` built-ins are computed in it.
    :param job_ids: task ids of the sibling jobs named by the condition, by job name, for the names
        that had to be changed to be valid task ids.
    :param flow_param_names: the flow parameters of the DAG's trigger form (set by
        :func:`flow_dag_args`): a run's value for one of them (``params``) overrides the flow's.
    """

    template_fields = ()
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        job_type: str,
        props: Mapping[str, str] | None = None,
        inherited: Mapping[str, str] | None = None,
        flow_props: Mapping[str, str] | None = None,
        embedding_props: Sequence[Mapping[str, str]] | None = None,
        condition: str | None = None,
        project_dir: str | None = None,
        project: str = "",
        flow_id: str = "",
        condition_scope: str | None = None,
        job_name: str | None = None,
        job_dir: str = "",
        timezone: str = "UTC",
        job_ids: Mapping[str, str] | None = None,
        flow_param_names: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.condition_scope = condition_scope
        self._job_name = job_name
        self.job_dir = job_dir or ""
        self.timezone = timezone or "UTC"
        self.job_ids = dict(job_ids or {})
        self.flow_param_names = list(flow_param_names or ())
        self.job_type = job_type
        self.props = dict(props or {})
        self.inherited = dict(inherited or {})
        self.flow_props = dict(flow_props or {})
        self.embedding_props = [dict(p) for p in embedding_props or ()]
        self.condition = condition
        self.project_dir = project_dir
        self.project = project
        self.flow_id = flow_id

    # -- helpers -----------------------------------------------------------------------------
    @property
    def job_name(self) -> str:
        """The original Azkaban job name (not the task id, which may differ)."""
        if self._job_name:
            return self._job_name
        prefix = self._group_prefix()
        return self.task_id[len(prefix) :] if prefix and self.task_id.startswith(prefix) else self.task_id

    def _group_prefix(self) -> str:
        """``"<group id>."`` of this task's TaskGroup ("" at the top level); a task id may hold dots."""
        group = getattr(self, "task_group", None)
        group_id = getattr(group, "group_id", None) if group is not None else None
        if group_id:
            return f"{group_id}."
        if group is None and "." in self.task_id:  # not attached to a DAG: the old rule
            return self.task_id.rsplit(".", 1)[0] + "."
        return ""

    def _sibling_task_id(self, job: str) -> str:
        ident = self.job_ids.get(job, job)
        if self.condition_scope is not None:
            return self.condition_scope + ident
        return self._group_prefix() + ident

    def _parent_states(self, context: Mapping[str, Any]) -> dict[str, str]:
        parents = sorted(self.upstream_task_ids)
        if not parents:
            return {}
        ti = context["ti"]
        states: dict[str, Any] = {}
        try:
            by_run = ti.get_task_states(dag_id=ti.dag_id, task_ids=parents, run_ids=[ti.run_id])
            states = dict(by_run.get(ti.run_id, {}))
        except Exception as exc:  # noqa: BLE001 - fall back to XComs (every job returns a dict)
            self.log.warning("Could not read the parents' states (%s); using their XComs", exc)
            values = ti.xcom_pull(task_ids=parents)
            states = {p: ("success" if v is not None else "failed") for p, v in zip(parents, values)}
        return {p: _STATE_TO_AZKABAN.get(str(states.get(p) or ""), "FAILED") for p in parents}

    def _outputs(self, context: Mapping[str, Any], task_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if not task_ids:
            return {}
        values = context["ti"].xcom_pull(task_ids=list(task_ids))
        if not isinstance(values, list):
            values = [values]
        return {t: dict(v) for t, v in zip(task_ids, values) if isinstance(v, Mapping)}

    def _check_condition(self, context: Mapping[str, Any]) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_ml_provider.azkaban.conditions import macro_met, parse_condition

        cond = parse_condition(self.condition)
        parent_states = self._parent_states(context)
        if not macro_met(cond.macro, parent_states.values()):
            raise AirflowSkipException(
                f"Azkaban condition {cond.macro!r} is not met by the parents' statuses "
                f"{parent_states}: job cancelled (shown as skipped)"
            )
        if cond.tree is None:
            return
        refs = cond.referenced_jobs()
        outputs = self._outputs(context, [self._sibling_task_id(j) for j in refs])
        by_job = {j: outputs.get(self._sibling_task_id(j), {}) for j in refs}
        missing: list[str] = []

        def lookup(job: str, param: str) -> Any:
            if param not in by_job.get(job, {}):
                missing.append(f"${{{job}:{param}}}")
                raise KeyError(param)
            return by_job[job][param]

        if not cond.evaluate(lookup):
            why = f" (no value for {', '.join(missing)})" if missing else ""
            raise AirflowSkipException(
                f"Azkaban condition {cond.text!r} is false{why}: job cancelled (shown as skipped)"
            )
        self.log.info("Azkaban condition %r is true", cond.text)

    def resolved_props(self, context: Mapping[str, Any]) -> dict[str, str]:
        """This job's properties, resolved with Azkaban's precedence (see the module docstring)."""
        dag_run = context.get("dag_run")
        conf = getattr(dag_run, "conf", None) or {}
        run_flow_params = conf.get("flow_params") if isinstance(conf, Mapping) else None
        parents = sorted(self.upstream_task_ids)
        parent_outputs: dict[str, str] = {}
        for _task, out in sorted(self._outputs(context, parents).items()):
            parent_outputs.update({str(k): "" if v is None else str(v) for k, v in out.items()})
        params = context.get("params") or {}
        form = {k: params[k] for k in self.flow_param_names if k in params and params[k] is not None}
        layers: list[Mapping[str, Any]] = [
            self.inherited,
            self.flow_props,
            form,  # the trigger form's flow parameters (defaults: the flow's own values)
            dict(run_flow_params or {}),
            builtin_props(
                context,
                flow_id=self.flow_id,
                project=self.project,
                task_id=self.job_name,
                timezone=self.timezone,
            ),
            *self.embedding_props,
            parent_outputs,
            self.props,
        ]
        return resolve_props(layers, job=self.task_id)

    # -- execute -----------------------------------------------------------------------------
    #: seconds between SIGTERM and SIGKILL when the job's process group is stopped
    kill_grace_seconds: float = 10.0

    def execute(self, context: Any) -> dict[str, str]:
        if skip_if_disabled(context, self.task_id, self.log):
            return {}
        self._check_condition(context)
        try:
            props = self.resolved_props(context)
        except JobPropertyError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from None
        handler = {
            "command": self._run_command,
            "javaprocess": self._run_java,
            "java": self._run_javajob,
            "hive": self._run_hive,
            "noop": self._run_noop,
        }.get(self.job_type)
        if handler is None:
            from airflow.sdk.exceptions import AirflowFailException

            shown = "\n".join(f"  {k}={v}" for k, v in sorted(self.props.items()))
            raise AirflowFailException(
                f"Azkaban job {self.job_name!r} has type {self.job_type!r}, which the migration has no "
                f"mapping for; nothing was run. Replace this task with an Airflow operator. "
                f"Original job properties:\n{shown}"
            )
        return handler(props, context)

    def on_kill(self) -> None:
        """Stop the running command's whole process group (SIGTERM, SIGKILL after a grace period).

        Airflow calls this on ``execution_timeout`` and when the task process gets SIGTERM.
        """
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            from airflow_ml_provider.azkaban.procgroup import stop_group

            self.log.warning("Stopping job %r (process group %d)", self.job_name, proc.pid)
            stop_group(proc.pid, self.kill_grace_seconds, reap=proc.poll)

    def _run_noop(self, props: dict[str, str], context: Any) -> dict[str, str]:
        self.log.info("noop job %s: nothing to run", self.job_name)
        return {}

    def _run_command(self, props: dict[str, str], context: Any) -> dict[str, str]:
        lines = command_lines(props)
        if not lines:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"command job {self.job_name!r} has no 'command' property")
        return self._run_argvs(props, [split_command(line) for line in lines])

    def _jvm_argv(self, props: dict[str, str], cwd: str, extra_classpath: Sequence[str] = ()) -> list[str]:
        """``java`` with Azkaban's JavaProcessJob options: ``java.home``, ``global.jvm.args`` and
        ``jvm.args``, ``Xms`` (default 64M), ``Xmx`` (default 256M), ``-cp`` from
        ``global.classpath`` and ``classpath`` (comma separated, relative to the job's directory;
        without ``classpath``, every ``.jar`` in the job's directory)."""
        java = os.path.join(props["java.home"], "bin", "java") if props.get("java.home") else "java"
        argv = [java]
        argv += split_command(props.get("global.jvm.args", ""))
        argv += split_command(props.get("jvm.args", ""))
        argv.append(f"-Xms{props.get('Xms', '').strip() or '64M'}")
        argv.append(f"-Xmx{props.get('Xmx', '').strip() or '256M'}")
        classpath = [c.strip() for c in props.get("global.classpath", "").split(",") if c.strip()]
        own = [c.strip() for c in props.get("classpath", "").split(",") if c.strip()]
        if not own:
            own = sorted(f for f in os.listdir(cwd) if f.endswith(".jar"))
            self.log.info("No classpath specified: using the jars in %s: %s", cwd, own)
        classpath += own + list(extra_classpath)
        if classpath:
            argv += ["-cp", os.pathsep.join(classpath)]
        return argv

    def _run_java(self, props: dict[str, str], context: Any) -> dict[str, str]:
        from airflow.sdk.exceptions import AirflowFailException

        main_class = props.get("java.class", "").strip()
        if not main_class:
            raise AirflowFailException(f"javaprocess job {self.job_name!r} has no 'java.class' property")
        cwd = self._working_dir(props)
        argv = self._jvm_argv(props, cwd) + [main_class] + split_command(props.get("main.args", ""))
        return self._run_argvs(props, [argv], cwd=cwd)

    def _run_javajob(self, props: dict[str, str], context: Any) -> dict[str, str]:
        """Azkaban's ``java`` type (JavaJob): ``job.class`` is instantiated and ``method.run``
        (default ``run``) called by our runner class (see ``azkaban/java/``), in a JVM started
        like a ``javaprocess`` job."""
        from airflow.sdk.exceptions import AirflowFailException

        if not props.get("job.class", "").strip():
            raise AirflowFailException(f"java job {self.job_name!r} has no 'job.class' property")
        try:
            runner = _java_runner_classes(props.get("java.home", ""))
        except RuntimeError as exc:
            raise AirflowFailException(f"java job {self.job_name!r}: {exc}") from None
        cwd = self._working_dir(props)
        argv = self._jvm_argv(props, cwd, [runner]) + [_JAVA_RUNNER_CLASS]
        return self._run_argvs(props, [argv], cwd=cwd)

    def _run_hive(self, props: dict[str, str], context: Any) -> dict[str, str]:
        from airflow.sdk.exceptions import AirflowFailException

        script = props.get("hive.script", "").strip()
        query = props.get("hive.query", "").strip()
        if not script and not query:
            raise AirflowFailException(
                f"hive job {self.job_name!r} has neither 'hive.script' nor 'hive.query'"
            )
        cli = split_command(props.get("hive.cli", "hive")) or ["hive"]
        # a relative hive.script is found from the working directory: the job's own directory
        argv = cli + (["-f", script] if script else ["-e", query])
        for key, value in sorted(props.items()):
            if key.startswith("hivevar."):
                argv += ["--hivevar", f"{key[len('hivevar.') :]}={value}"]
            elif key.startswith("hiveconf."):
                argv += ["--hiveconf", f"{key[len('hiveconf.') :]}={value}"]
        return self._run_argvs(props, [argv])

    def _working_dir(self, props: Mapping[str, str]) -> str:
        """Where the job runs: the directory of its own ``.job`` file (Flow 1.0) or ``.flow`` file
        (Flow 2.0) inside the copied project, as Azkaban's FlowRunner gives the JobRunner the job
        file's parent directory; ``working.dir`` may name a subdirectory of it (Azkaban refuses
        any other directory, and so does this)."""
        from airflow.sdk.exceptions import AirflowFailException

        wd = str(props.get("working.dir", "") or "").strip()
        if not self.project_dir:
            return os.path.join(os.getcwd(), wd) if wd else os.getcwd()
        root = os.path.realpath(self.project_dir)
        rel = getattr(self, "job_dir", "") or ""
        job_dir = os.path.realpath(os.path.join(root, rel))
        if not _within(job_dir, root):
            raise AirflowFailException(
                f"job {self.job_name!r}: its directory {rel!r} is outside the project directory {root}"
            )
        os.makedirs(job_dir, exist_ok=True)  # a directory holding only .job files is not copied
        if not wd:
            return job_dir
        cwd = os.path.realpath(os.path.join(job_dir, wd))
        if not _within(cwd, job_dir):
            raise AirflowFailException(
                f"job {self.job_name!r}: working.dir={wd!r} is not a subdirectory of the job's "
                f"directory {job_dir} (Azkaban refuses it too)"
            )
        if not os.path.isdir(cwd):
            raise AirflowFailException(f"job {self.job_name!r}: working.dir={wd!r}: no directory {cwd}")
        return cwd

    def _run_argvs(
        self, props: dict[str, str], argvs: list[list[str]], *, cwd: str | None = None
    ) -> dict[str, str]:
        from airflow.sdk.exceptions import AirflowException

        from airflow_ml_provider.properties import dump_properties

        cwd = cwd or self._working_dir(props)
        name = self.job_name
        safe = _file_name(name)
        with tempfile.TemporaryDirectory(prefix=f"azkaban_{safe}_") as tmp:
            prop_file = Path(tmp, f"{safe}_props.properties")
            out_file = Path(tmp, f"{safe}_output.json")
            prop_file.write_text(dump_properties(props), encoding="iso-8859-1", errors="replace")
            env = dict(os.environ)
            env.update({k[len("env.") :]: v for k, v in props.items() if k.startswith("env.")})
            env.update(
                {
                    "JOB_PROP_FILE": str(prop_file),
                    "JOB_NAME": name,
                    "JOB_OUTPUT_PROP_FILE": str(out_file),
                }
            )
            for argv in argvs:
                self.log.info("Running (no shell, cwd=%s): %s", cwd, argv)
                rc = self._run_process(argv, cwd, env)
                if rc != 0:
                    raise AirflowException(f"job {name!r}: command {argv} exited with code {rc}")
            return self._read_outputs(out_file)

    def _run_process(self, argv: list[str], cwd: str, env: dict[str, str]) -> int:
        """Run one command in its own session / process group and return its exit code.

        Its output goes to the task log line by line. Whatever way this ends (exit, exception,
        ``execution_timeout``, SIGTERM -> :meth:`on_kill`), no process of the group is left: those
        still running when the command exits are stopped too, and a watchdog process stops the
        group if the task process itself is killed (SIGKILL).
        """
        from airflow.sdk.exceptions import AirflowException

        from airflow_ml_provider.azkaban.procgroup import Watchdog, stop_group

        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            raise AirflowException(f"job {self.job_name!r}: cannot run {argv[0]!r}: {exc}") from None
        self._proc = proc
        watchdog = None
        try:
            watchdog = Watchdog(proc.pid, self.kill_grace_seconds)
            reader = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
            reader.start()
            rc = proc.wait()
            reader.join(timeout=2)
            left = stop_group(proc.pid, self.kill_grace_seconds)
            if left:
                self.log.warning(
                    "job %r: its command exited but left processes running (pids %s): stopped them",
                    self.job_name,
                    left,
                )
            # every writer of the pipe is gone now (unless one left the session): read it to the end
            reader.join(timeout=30)
            return rc
        finally:
            # an exception (execution_timeout, SIGTERM) while the command runs: stop the group
            stop_group(proc.pid, self.kill_grace_seconds, reap=proc.poll)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if watchdog is not None:
                watchdog.close()
            self._proc = None

    def _pump(self, stream: Any) -> None:
        try:
            for line in stream:
                self.log.info("%s", line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def _read_outputs(self, path: Path) -> dict[str, str]:
        from airflow.sdk.exceptions import AirflowException

        if not path.exists() or not path.read_text(errors="replace").strip():
            return {}
        text = path.read_text(errors="replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AirflowException(
                f"job {self.job_name!r}: JOB_OUTPUT_PROP_FILE is not valid JSON (line {exc.lineno}, "
                f"column {exc.colno}: {exc.msg})"
            ) from None
        if not isinstance(data, dict):
            raise AirflowException(f"job {self.job_name!r}: JOB_OUTPUT_PROP_FILE must hold a JSON object")
        outputs = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
        self.log.info("Output properties (visible to direct children): %s", outputs)
        return outputs


# ------------------------------------------------------------------ run-time helpers (AZ-RUN)
_JAVA_RUNNER_CLASS = "AzkabanJavaJobRunner"
_JAVA_RUNNER_SOURCE = Path(__file__).parent / "java" / f"{_JAVA_RUNNER_CLASS}.java"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _file_name(name: str) -> str:
    """``name`` usable in a file name (the original job name, dots kept; '/' and the like replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "job"


def _java_runner_classes(java_home: str = "") -> str:
    """The directory holding our compiled ``AzkabanJavaJobRunner`` (compiled once per source version
    into ``$AIRFLOW_ML_JAVA_CACHE`` or ``~/.cache/airflow-ml/java``, with ``javac`` from
    ``java.home`` or the PATH).

    :raises RuntimeError: no ``javac``, or the compilation failed.
    """
    import hashlib
    import shutil

    source = _JAVA_RUNNER_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    base = Path(os.environ.get("AIRFLOW_ML_JAVA_CACHE") or Path.home() / ".cache" / "airflow-ml" / "java")
    final = base / digest
    if (final / f"{_JAVA_RUNNER_CLASS}.class").exists():
        return str(final)
    javac = os.path.join(java_home, "bin", "javac") if java_home else shutil.which("javac")
    if not javac or not os.path.exists(javac):
        raise RuntimeError(
            "type=java needs a JDK: 'javac' compiles the job runner once, and none was found "
            + (f"in java.home={java_home!r}" if java_home else "on the PATH")
        )
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=base))
    try:
        for flags in (["--release", "8"], []):
            proc = subprocess.run(
                [javac, *flags, "-nowarn", "-d", str(tmp), str(_JAVA_RUNNER_SOURCE)],
                capture_output=True,
                text=True,
                errors="replace",
            )
            if proc.returncode == 0:
                break
        else:
            output = (proc.stdout + proc.stderr).strip()[-800:]
            raise RuntimeError(f"compiling the job runner failed: {output}")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / f"{_JAVA_RUNNER_CLASS}.class").exists():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


# ----------------------------------------------------------------------- generated-DAG API
def job(
    task_id: str,
    job_type: str,
    props: Mapping[str, str] | None = None,
    *,
    inherited: Mapping[str, str] | None = None,
    condition: str | None = None,
    job_name: str | None = None,
    job_dir: str = "",
    **kwargs: Any,
) -> BaseOperator:
    """Create the task for one Azkaban job (used by generated DAG files).

    Job properties that Airflow handles itself are applied here from the merged properties:
    ``retries``, ``retry.backoff`` (milliseconds), ``failure.emails`` / ``success.emails`` /
    ``notify.emails``. A job with a status macro other than ``all_success`` runs with
    ``trigger_rule="all_done"`` and checks the macro itself (Airflow's rules of the same names
    differ from Azkaban's); otherwise ``all_success`` already matches Azkaban (a failed parent
    fails the run, a cancelled = skipped parent cancels the child).
    """
    from airflow_ml_provider.azkaban.conditions import parse_condition

    props = dict(props or {})
    merged = {**(inherited or {}), **props}
    cond = parse_condition(condition)
    if cond.macro != "all_success":
        kwargs.setdefault("trigger_rule", "all_done")
    retries = _int(merged.get("retries"))
    if retries is not None:
        kwargs.setdefault("retries", retries)
    backoff = _int(merged.get("retry.backoff"))
    if backoff is not None:
        kwargs.setdefault("retry_delay", timedelta(milliseconds=backoff))
    elif retries is not None:  # Azkaban's default back-off is 0 ms (Airflow's would be 300 s)
        kwargs.setdefault("retry_delay", timedelta(0))
    failure = _emails(merged.get("failure.emails")) + _emails(merged.get("notify.emails"))
    success = _emails(merged.get("success.emails")) + _emails(merged.get("notify.emails"))
    if failure:
        kwargs.setdefault("on_failure_callback", _notify("failed", sorted(set(failure))))
    if success:
        kwargs.setdefault("on_success_callback", _notify("succeeded", sorted(set(success))))
    return AzkabanJobOperator(
        task_id=task_id,
        job_type=job_type,
        props=props,
        inherited=inherited,
        condition=condition or None,
        job_name=job_name,
        job_dir=job_dir,
        **kwargs,
    )


def _int(value: str | None) -> int | None:
    if value is None or not str(value).strip():
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def flow_dag_args(
    dag_file: str | os.PathLike[str] | None = None,
    resources: str = "",
    *,
    project: str,
    flow_id: str,
    project_dir: str | os.PathLike[str] | None = None,
    flow_props: Mapping[str, str] | None = None,
    disabled: Sequence[str] = (),
    timezone: str = "UTC",
    flow_params: Sequence[str] = (),
) -> dict[str, Any]:
    """DAG keyword arguments shared by every migrated flow.

    :param dag_file: the DAG file (``__file__``); with ``resources``, the folder beside it that
        holds the copied project: the project directory, unless ``project_dir`` is given.
    :param project_dir: the directory holding the project's files.
    :param flow_props: the flow's parameters (Flow 2.0 flow ``config``, a schedule's
        ``flowParameters``).
    :param disabled: the schedule's ``disabledJobs``: the default of the ``disabled_tasks`` param.
    :param timezone: the flow's time zone (``--timezone``), given to every task.
    :param flow_params: keys the jobs reference that nothing defines (to be given at run time).
        Each of them and each of ``flow_props`` becomes an optional string Param of the trigger
        form (default: the flow's value, or none); a value given there overrides the flow's
        parameter, and ``conf["flow_params"]`` overrides both.
    """
    from airflow.sdk import Param

    flow_props = {str(k): "" if v is None else str(v) for k, v in (flow_props or {}).items()}
    params: dict[str, Any] = {"disabled_tasks": disabled_tasks_param(disabled)}
    names: list[str] = []
    for key in [*flow_props, *(k for k in flow_params if k not in flow_props)]:
        if key in params:
            continue
        defined = key in flow_props
        params[key] = Param(
            flow_props[key] if defined else None,
            type=["null", "string"],
            description=(
                f"Azkaban flow parameter ${{{key}}}"
                + (
                    " (the flow's value by default)"
                    if defined
                    else ": referenced by the jobs, defined nowhere"
                )
            ),
        )
        names.append(key)
    return {
        "params": params,
        "default_args": {
            "project_dir": str(
                project_dir if project_dir is not None else Path(dag_file or ".").parent / resources
            ),
            "project": project,
            "flow_id": flow_id,
            "flow_props": flow_props,
            "timezone": timezone or "UTC",
            "flow_param_names": names,
        },
        "catchup": False,
        "tags": ["azkaban", project] if project else ["azkaban"],
    }
