"""`make airflow`: a live local Airflow 3 with this provider, and the model service beside it.

    python scripts/airflow_local.py start  [--home .airflow] [--api-port 8080] [--serve-port 8501]
    python scripts/airflow_local.py status [--home .airflow]
    python scripts/airflow_local.py stop   [--home .airflow]

``start`` sets up, under one directory (``.airflow/`` in the repository by default, git-ignored):

* ``airflow/`` -- AIRFLOW_HOME: ``airflow.cfg`` (written here: LocalExecutor with parallelism 2, the
  SQLite metadata DB ``airflow.db``, ``dags/`` of the repository, the simple auth manager with user
  ``admin``, the dictionary table as the Variables backend in ``[secrets]`` and ``[workers]``), logs;
* ``ml/`` -- AIRFLOW_ML_HOME: the embedded default of the ML platform (``audio.db`` generated with
  ``airflow-ml datasets audio``, ``registry.db``, ``storage/``, the dictionary);
* ``logs/<component>.log`` -- the output of each process; ``stack.json`` -- what was started.

then migrates the metadata DB, starts ``airflow api-server``, ``scheduler``, ``dag-processor``,
``triggerer`` and ``airflow-ml serve`` (each in its own process group), waits until the API
answers and the DAGs are parsed, unpauses them through the REST API, and prints the URL and the login.

Every process started is tagged with ``AIRFLOW_ML_STACK_ID`` in its environment. ``stop`` sends
SIGTERM to the recorded process groups and to every process carrying the tag -- the LocalExecutor's
worker processes and the task processes, which run in process groups of their own -- waits a grace
period, then SIGKILLs what is left. Nothing is found by name: only PIDs recorded or tagged by us.

The tests (tests/fixtures/live.py) and the benchmark reuse :class:`LocalStack` with free ports,
temporary homes and, for the CeleryExecutor, PostgreSQL + Redis settings.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_HOME = REPO / ".airflow"
STACK_ID_ENV = "AIRFLOW_ML_STACK_ID"
DICTIONARY_BACKEND = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"
DEFAULT_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DEFAULT_MODELS = ("audio_listen_30s",)
ADMIN_USER = "admin"
#: Environment variables that would change what the stack runs: the stack sets its own.
_INHERITED_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW_ML_")
_INHERITED_NAMES = ("AIRFLOW_HOME", "AIRFLOW_CONFIG")


class StackError(RuntimeError):
    """The stack could not start (the message names the component and its log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalStack:
    """One live Airflow deployment on this machine, started and stopped by PID.

    :param home: the directory holding ``airflow/`` (AIRFLOW_HOME), ``ml/`` (AIRFLOW_ML_HOME), ``logs/``
    :param api_port: port of ``airflow api-server`` (also the execution API the task processes call)
    :param serve_port: port of ``airflow-ml serve``; None: no model service
    :param executor: ``LocalExecutor`` or ``CeleryExecutor`` (then a ``celery worker`` is started)
    :param parallelism: ``[core] parallelism`` (LocalExecutor worker processes), and the Celery concurrency
    :param sql_alchemy_conn: Airflow's metadata DB; default SQLite ``airflow/airflow.db``
    :param config: extra ``airflow.cfg`` options, ``{"section": {"key": "value"}}`` (e.g. ``[ml]``,
        ``[celery]``); applied last
    :param dictionary_url: the dictionary database of the Variables backend; default: none given, i.e. the
        embedded default of ml/settings.py (SQLite ``dictionary.db`` in the ML home)
    :param dags_folder: default the repository's ``dags/``
    :param paused_at_creation: ``[core] dags_are_paused_at_creation``
    :param ml_home: AIRFLOW_ML_HOME; default ``<home>/ml``
    """

    def __init__(
        self,
        home: str | os.PathLike = DEFAULT_HOME,
        *,
        api_port: int = 8080,
        serve_port: int | None = 8501,
        executor: str = "LocalExecutor",
        parallelism: int = 2,
        sql_alchemy_conn: str | None = None,
        config: Mapping[str, Mapping[str, str]] | None = None,
        dictionary_url: str | None = None,
        dags_folder: str | os.PathLike | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        paused_at_creation: bool = True,
        ml_home: str | os.PathLike | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.airflow_home = self.home / "airflow"
        self.ml_home = Path(ml_home).resolve() if ml_home else self.home / "ml"
        self.logs = self.home / "logs"
        self.state_file = self.home / "stack.json"
        self.api_port = api_port
        self.serve_port = serve_port
        self.executor = executor
        self.parallelism = parallelism
        self.sql_alchemy_conn = sql_alchemy_conn or f"sqlite:///{self.airflow_home / 'airflow.db'}"
        self.extra_config = {s: dict(v) for s, v in (config or {}).items()}
        self.dictionary_url = dictionary_url
        self.dags_folder = Path(dags_folder or REPO / "dags").resolve()
        self.models = tuple(models)
        self.paused_at_creation = paused_at_creation
        self.stack_id = uuid.uuid4().hex
        self.log_ports = (free_port(), free_port())
        #: every process runs in this directory: it tags them as ours (see tagged_pids)
        self.run_dir = self.home / "run" / self.stack_id[:12]
        self.procs: dict[str, subprocess.Popen] = {}
        self._token: str | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def serve_url(self) -> str | None:
        return f"http://127.0.0.1:{self.serve_port}" if self.serve_port else None

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def components(self) -> tuple[str, ...]:
        if self.executor == "CeleryExecutor":
            return ("api-server", "scheduler", "dag-processor", "celery-worker")
        return DEFAULT_COMPONENTS

    def airflow_config(self) -> dict[str, dict[str, str]]:
        # no dictionary_url: the embedded default (ml/settings.py: sqlite dictionary.db in the ML home)
        backend_kwargs = json.dumps({"sql_alchemy_conn": self.dictionary_url} if self.dictionary_url else {})
        cfg: dict[str, dict[str, str]] = {
            "core": {
                "dags_folder": str(self.dags_folder),
                "executor": self.executor,
                "parallelism": str(self.parallelism),
                "load_examples": "False",
                "dags_are_paused_at_creation": str(self.paused_at_creation),
                "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
                "simple_auth_manager_users": f"{ADMIN_USER}:admin",
                "simple_auth_manager_passwords_file": str(self.password_file),
                "execution_api_server_url": f"{self.api_url}/execution/",
                "fernet_key": "",
            },
            "database": {"sql_alchemy_conn": self.sql_alchemy_conn},
            "api": {
                "host": "127.0.0.1",
                "port": str(self.api_port),
                "base_url": self.api_url,
                "workers": "1",
                "secret_key": secrets.token_hex(16),
            },
            "api_auth": {"jwt_secret": secrets.token_urlsafe(32)},
            "logging": {
                "base_log_folder": str(self.airflow_home / "logs"),
                "logging_level": "INFO",
                # the log servers of the scheduler/worker and the triggerer: free ports, so that
                # several stacks (and other Airflows) can run on one machine
                "worker_log_server_port": str(self.log_ports[0]),
                "trigger_log_server_port": str(self.log_ports[1]),
            },
            "scheduler": {"enable_health_check": "True"},
            "dag_processor": {"refresh_interval": "30"},
            # Variables from the dictionary table: the API server reads [secrets], task processes [workers].
            "secrets": {"backend": DICTIONARY_BACKEND, "backend_kwargs": backend_kwargs},
            "workers": {"secrets_backend": DICTIONARY_BACKEND, "secrets_backend_kwargs": backend_kwargs},
        }
        if self.executor == "CeleryExecutor":
            cfg.setdefault("celery", {})["worker_concurrency"] = str(self.parallelism)
        for section, values in self.extra_config.items():
            cfg.setdefault(section, {}).update(values)
        return cfg

    def write_config(self) -> Path:
        parser = configparser.ConfigParser(interpolation=None)
        path = self.airflow_home / "airflow.cfg"
        if path.exists():  # keep the secrets of an earlier start (sessions and tokens stay valid)
            parser.read(path)
        for section, values in self.airflow_config().items():
            if not parser.has_section(section):
                parser.add_section(section)
            for key, value in values.items():
                if key in ("secret_key", "jwt_secret") and parser.get(section, key, fallback=""):
                    continue
                parser.set(section, key, value)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            fh.write("# Written by scripts/airflow_local.py (make airflow); re-written at each start.\n")
            parser.write(fh)
        return path

    def env(self) -> dict[str, str]:
        """The environment of every process: AIRFLOW_HOME, AIRFLOW_ML_HOME and nothing else of ours."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_INHERITED_PREFIXES) and k not in _INHERITED_NAMES}
        env.update({
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW_ML_HOME": str(self.ml_home),
            STACK_ID_ENV: self.stack_id,
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def write_password(self) -> str:
        """The admin password: kept from an earlier start, else a new random one (the simple auth
        manager reads it from this file and generates none of its own)."""
        try:
            passwords = json.loads(self.password_file.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            passwords = {}
        if not passwords.get(ADMIN_USER):
            passwords[ADMIN_USER] = secrets.token_urlsafe(12)
            self.airflow_home.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(passwords) + "\n")
        return passwords[ADMIN_USER]

    @property
    def password(self) -> str:
        return json.loads(self.password_file.read_text())[ADMIN_USER]

    # ------------------------------------------------------------------ running commands
    def run(self, *cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command (``airflow ...``, ``airflow-ml ...``) in the stack's environment."""
        exe = str(VENV_BIN / cmd[0]) if (VENV_BIN / cmd[0]).exists() else cmd[0]
        proc = subprocess.run([exe, *cmd[1:]], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, cwd=self._cwd())
        if check and proc.returncode != 0:
            raise StackError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
        return proc

    def migrate(self) -> None:
        self.run("airflow", "db", "migrate")

    def generate_data(self, events: int) -> None:
        """The demo data, where the example DAG reads it (the CLI's default: $AIRFLOW_ML_HOME/audio.db)."""
        self.run("airflow-ml", "datasets", "audio", "--events", str(events))

    def _popen(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self._cwd(), start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        self._save_state()
        return proc

    def _command(self, component: str) -> list[str]:
        airflow = str(VENV_BIN / "airflow")
        if component == "celery-worker":
            return [airflow, "celery", "worker", "--concurrency", str(self.parallelism),
                    "--celery-hostname", f"airflow-ml-{self.stack_id[:8]}@%h", "--without-gossip", "--without-mingle"]
        return [airflow, component]

    def start_components(self) -> None:
        for component in self.components:
            self._popen(component, self._command(component))

    def start_serve(self) -> None:
        if not self.serve_port:
            return
        cmd = [str(VENV_BIN / "airflow-ml"), "serve", "--models", ",".join(self.models),
               "--port", str(self.serve_port), "--poll-seconds", "2"]
        self._popen("model-service", cmd)

    def _cwd(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self.run_dir

    def _save_state(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        state = {
            "stack_id": self.stack_id,
            "run_dir": str(self.run_dir),
            "api_url": self.api_url,
            "serve_url": self.serve_url,
            "airflow_home": str(self.airflow_home),
            "ml_home": str(self.ml_home),
            "executor": self.executor,
            "processes": {name: p.pid for name, p in self.procs.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------ REST API
    def _check_alive(self, waiting_for: str) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = _tail(self.logs / f"{name}.log")
                raise StackError(f"{name} exited with code {proc.returncode} while waiting for {waiting_for} "
                                 f"(log: {self.logs / f'{name}.log'}):\n{tail}")

    def wait_for(self, what: str, predicate, timeout: float = 180, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive(what)
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - not up yet
                last_error = exc
            time.sleep(interval)
        raise StackError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))

    def token(self, refresh: bool = False) -> str:
        """A JWT from the simple auth manager (POST /auth/token with the admin credentials)."""
        import requests

        if self._token and not refresh:
            return self._token
        r = requests.post(f"{self.api_url}/auth/token", json={"username": ADMIN_USER, "password": self.password},
                          timeout=30)
        r.raise_for_status()
        self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs):
        """Call the API server with a bearer token; returns the ``requests.Response``."""
        import requests

        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        r = requests.request(method, f"{self.api_url}{path}", headers=headers, timeout=kwargs.pop("timeout", 30),
                             **kwargs)
        if r.status_code == 401:  # token expired: once more with a new one
            headers["Authorization"] = f"Bearer {self.token(refresh=True)}"
            r = requests.request(method, f"{self.api_url}{path}", headers=headers, timeout=30, **kwargs)
        return r

    def healthy(self) -> bool:
        import requests

        r = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        if r.status_code != 200:
            return False
        body = r.json()
        return body["metadatabase"]["status"] == "healthy" and body["scheduler"]["status"] == "healthy"

    def dag_ids(self) -> list[str]:
        r = self.api("GET", "/api/v2/dags", params={"limit": 100})
        r.raise_for_status()
        return sorted(d["dag_id"] for d in r.json()["dags"])

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180) -> list[str]:
        wanted = set(dag_ids)
        return self.wait_for(f"the DAGs {sorted(wanted)} to be parsed",
                             lambda: (ids := self.dag_ids()) and wanted <= set(ids) and ids, timeout=timeout)

    def unpause(self, dag_id: str) -> None:
        r = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        if r.status_code != 200:
            raise StackError(f"unpausing {dag_id} failed: HTTP {r.status_code} {r.text[:300]}")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """Trigger a run through the REST API; returns its run id."""
        r = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        if r.status_code not in (200, 201):
            raise StackError(f"triggering {dag_id} failed: HTTP {r.status_code} {r.text[:500]}")
        return r.json()["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        """Wait until the run is finished; returns its JSON (``state`` is success or failed)."""
        def finished():
            r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            r.raise_for_status()
            run = r.json()
            return run if run["state"] in ("success", "failed") else None

        return self.wait_for(f"run {run_id} of {dag_id}", finished, timeout=timeout, interval=1.0)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        r.raise_for_status()
        return {ti["task_id"]: ti for ti in r.json()["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as text: one line per log event (the API returns structured events)."""
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                     params={"full_content": "true"})
        r.raise_for_status()
        content = r.json().get("content") or []
        if isinstance(content, str):
            return content
        return "\n".join(item.get("event", "") if isinstance(item, dict) else str(item) for item in content)

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, events: int | None = 60_000, unpause: bool = True, dictionary: Mapping[str, str] | None = None,
              timeout: float = 300) -> None:
        """Set up, start every component and wait until the API serves the parsed DAGs."""
        for name in ("api", "serve"):
            port = self.api_port if name == "api" else self.serve_port
            if port and port_in_use(port):
                raise StackError(f"port {port} is already in use (another Airflow or model service?); "
                                 f"choose another with --{name}-port")
        for d in (self.airflow_home, self.ml_home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.write_password()
        self.migrate()
        if events:
            self.generate_data(events)
        for key, value in (dictionary or {}).items():
            self.run("airflow-ml", "dictionary", "set", key, value, "--by", "make-airflow")
        try:
            self.start_components()
            self.wait_for("the API server and the scheduler to be healthy", self.healthy, timeout=timeout)
            dag_ids = self.wait_for_dags(_dag_ids_in(self.dags_folder), timeout=timeout)
            if unpause:
                for dag_id in dag_ids:
                    self.unpause(dag_id)
            self.start_serve()
            if self.serve_port:
                import requests

                # /healthz answers as soon as the service listens (/readyz waits for a published model)
                self.wait_for("the model service", lambda: requests.get(f"{self.serve_url}/healthz", timeout=2).ok,
                              timeout=120)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 10.0) -> list[int]:
        """Stop everything this stack started; returns the PIDs that had to be SIGKILLed."""
        pids = {p.pid for p in self.procs.values()}
        stopped = stop_processes(self.stack_id, self.run_dir, pids, grace=grace)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        self.state_file.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _dag_ids_in(folder: Path) -> list[str]:
    """The DAG ids the stack waits for: the literal ``dag_id="..."`` of each file (model_zoo makes
    several from a loop, so the xgboost one, which every set-up has, stands for them)."""
    import re

    ids = []
    for path in sorted(folder.glob("*.py")):
        ids += re.findall(r'dag_id="([A-Za-z0-9_.\-]+)"', path.read_text(encoding="utf-8"))
    return ids


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def tagged_pids(stack_id: str, run_dir: str | os.PathLike | None = None) -> set[int]:
    """PIDs of the processes of a stack: those whose working directory is the stack's run directory
    (every component starts there and Airflow does not change it; it survives ``setproctitle``, which
    overwrites ``/proc/<pid>/environ``), or whose environment still shows ``AIRFLOW_ML_STACK_ID``."""
    marker = f"{STACK_ID_ENV}={stack_id}".encode()
    run_dir = os.fspath(run_dir) if run_dir else None
    found = set()
    me = os.getpid()
    for pid in _all_pids():
        if pid == me:
            continue
        if run_dir:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
                if cwd == run_dir or cwd.startswith(run_dir + "/"):
                    found.add(pid)
                    continue
            except OSError:
                pass
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    found.add(pid)
        except OSError:  # gone, or not ours to read
            continue
    return found


def descendants(pids: Iterable[int]) -> set[int]:
    """Every live descendant of ``pids`` (from the parent links in /proc)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st:
            children.setdefault(st[1], []).append(pid)
    out: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"  # a zombie is dead, only unreaped


def stop_processes(stack_id: str, run_dir: str | os.PathLike | None, leaders: Iterable[int],
                   grace: float = 10.0) -> list[int]:
    """Stop the processes of a stack, by PID: the recorded ``leaders``, everything descending from
    them and every process tagged as the stack's (:func:`tagged_pids`). SIGTERM to each (and to the
    leaders' process groups); SIGKILL to what is left after ``grace`` seconds (LocalExecutor workers
    ignore SIGTERM; the api-server's worker runs in a session of its own). Returns the PIDs that
    needed SIGKILL."""
    leaders = {pid for pid in leaders if _alive(pid)}
    tagged = tagged_pids(stack_id, run_dir)
    ours = leaders & tagged
    targets = ours | descendants(ours) | tagged

    def scan() -> set[int]:
        found = tagged_pids(stack_id, run_dir)
        return {pid for pid in targets | found | descendants(targets | found) if _alive(pid)}

    for pgid in ours:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except OSError:
            pass
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        targets = scan()
        if not targets:
            return []
        time.sleep(0.2)
    killed = sorted(scan())
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and scan():
        time.sleep(0.2)
    return killed


# ---------------------------------------------------------------------- command line
def _load_state(home: Path) -> dict | None:
    try:
        return json.loads((home / "stack.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cmd_start(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    state = _load_state(home)
    if state and tagged_pids(state["stack_id"], state.get("run_dir")):
        print(f"already running (stack {state['stack_id'][:8]}): {state['api_url']}; "
              "`make airflow-stop` stops it")
        return 0
    stack = LocalStack(home, api_port=args.api_port, serve_port=args.serve_port or None,
                       parallelism=args.parallelism)
    t0 = time.monotonic()
    print(f"Starting a local Airflow under {home} (LocalExecutor, parallelism {args.parallelism}) ...", flush=True)
    try:
        stack.start(events=args.events, dictionary={"ml.audio_listen_30s.min_auc": "0.6"})
    except StackError as exc:
        print(f"airflow_local: error: {exc}", file=sys.stderr)
        return 1
    dags = stack.dag_ids()
    print(f"""
Airflow is up in {time.monotonic() - t0:.0f} s.
  UI and REST API : {stack.api_url}      login: {ADMIN_USER} / {stack.password}
                    (password file: {stack.password_file})
  ML pages        : {stack.api_url}/ml/models   {stack.api_url}/ml/dictionary   (Browse menu)
  Model service   : {stack.serve_url or '(off)'}/v1/models/{DEFAULT_MODELS[0]}
  DAGs (unpaused) : {', '.join(dags)}
  AIRFLOW_HOME    : {stack.airflow_home}
  AIRFLOW_ML_HOME : {stack.ml_home}
  Logs            : {stack.logs}/
Use the CLI on it:  export AIRFLOW_HOME={stack.airflow_home} AIRFLOW_ML_HOME={stack.ml_home}
Stop it:            make airflow-stop""")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    state = _load_state(home)
    if not state:
        print(f"nothing to stop under {home}")
        return 0
    leaders = set(state.get("processes", {}).values())
    killed = stop_processes(state["stack_id"], state.get("run_dir"), leaders, grace=args.grace)
    (home / "stack.json").unlink(missing_ok=True)
    left = tagged_pids(state["stack_id"], state.get("run_dir"))
    print(f"stopped the local Airflow (stack {state['stack_id'][:8]})"
          + (f"; SIGKILLed {len(killed)} process(es) that ignored SIGTERM" if killed else ""))
    if left:
        print(f"airflow_local: error: processes still running: {sorted(left)}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    state = _load_state(home)
    if not state:
        print(f"not running (no {home / 'stack.json'})")
        return 1
    tagged = tagged_pids(state["stack_id"], state.get("run_dir"))
    for name, pid in state.get("processes", {}).items():
        print(f"  {name:<14} pid {pid:<8} {'running' if pid in tagged and _alive(pid) else 'NOT running'}")
    others = tagged - set(state.get("processes", {}).values())
    print(f"  + {len(others)} worker/task process(es)")
    print(f"  UI: {state['api_url']}   model service: {state['serve_url']}")
    return 0 if tagged else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start the local Airflow and the model service")
    p.add_argument("--api-port", type=int, default=8080)
    p.add_argument("--serve-port", type=int, default=8501, help="0: no model service")
    p.add_argument("--events", type=int, default=60_000, help="play events of the demo data (0: keep)")
    p.add_argument("--parallelism", type=int, default=2, help="LocalExecutor worker processes (default 2)")
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("stop", help="stop what `start` started (by PID)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("status", help="show what runs")
    p.set_defaults(func=cmd_status)
    for p in sub.choices.values():
        p.add_argument("--home", default=str(DEFAULT_HOME), help="default .airflow/ in the repository")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
