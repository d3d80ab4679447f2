"""A version the model service refuses to load is recorded in the registry (issue 13, point 7).

Real parts: bundles published with the publish function the operator uses, on local storage and a
SQLite registry; the service's ModelManager polling that registry; the ``airflow-ml`` CLI as a
process (and in-process for the table checks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ml_provider.cli import main
from airflow_ml_provider.ml import storage
from airflow_ml_provider.ml.bundle import build_bundle
from airflow_ml_provider.ml.registry import (
    ACTION_REFUSED,
    STATUS_REFUSED,
    ModelRegistry,
    RefusedVersionError,
    publish_model,
)
from airflow_ml_provider.serving.manager import ModelManager, is_refusal

AIRFLOW_ML = Path(sys.executable).parent / "airflow-ml"
NAME = "churn"


def _bundle(tmp: Path, tag: str) -> Path:
    """A bundle whose model file is not an XGBoost model: it verifies, but does not load."""
    src = tmp / "src" / tag
    (src / "model").mkdir(parents=True)
    (src / "model" / "model.json").write_text(json.dumps({"not": "a model", "tag": tag}), encoding="utf-8")
    spec = src / "fitted.json"
    spec.write_text(json.dumps({"format_version": 1, "features": ["x"]}), encoding="utf-8")
    out = tmp / "bundles" / tag
    build_bundle(out, model_dir=src / "model", fitted_spec=spec, framework="xgboost", metrics={"auc": 0.7},
                 metadata={"run_id": tag})
    return out


def _corrupt(uri: str) -> None:
    """Flip a byte of the published model file: its sha256 no longer matches the manifest."""
    victim = storage.join(uri, "model", "model.json")
    data = bytearray(storage.read_bytes(victim))
    data[len(data) // 2] ^= 0x01
    storage.remove(victim)
    storage.write_bytes_atomic(victim, bytes(data))


@pytest.fixture
def published(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_ML_REGISTRY", raising=False)
    url = f"sqlite:///{tmp_path}/registry.db"
    reg = ModelRegistry(url)
    root = str(tmp_path / "store")
    v1 = publish_model(reg, str(_bundle(tmp_path, "r1")), root, NAME, dag_id="d", run_id="r1")
    v2 = publish_model(reg, str(_bundle(tmp_path, "r2")), root, NAME, dag_id="d", run_id="r2")
    _corrupt(v2.bundle_uri)
    yield url, reg, v1, v2
    reg.dispose()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_ML_REGISTRY"}
    return subprocess.run([str(AIRFLOW_ML), *argv], capture_output=True, text=True, timeout=120, env=env)


def test_a_refused_version_is_recorded_shown_and_never_pointed_at(tmp_path, published, capsys):
    url, reg, v1, v2 = published
    manager = ModelManager(reg, [NAME], cache_dir=tmp_path / "cache")
    manager.instance = "replica-a:8501"
    try:
        # the service polls: version 2 (the newest publish) fails its checksum and is refused
        assert manager.poll_once() == {NAME: None}
        refusals = reg.refusals(NAME)
        assert list(refusals) == [2]
        assert refusals[2].action == ACTION_REFUSED and refusals[2].created_by == "replica-a:8501"
        assert "checksum" in refusals[2].reason or "sha256" in refusals[2].reason
        assert reg.refused_versions(NAME) == [2] and reg.is_refused(NAME, 1) is None
        assert reg.get(NAME, 2).status == STATUS_REFUSED and reg.get(NAME, 1).status != STATUS_REFUSED
        assert reg.current(NAME).version == 2  # a refusal is not a serving decision

        # polled again after the back-off: still one refusal event per version and service
        for failure in manager._failures[NAME].values():
            failure.retry_at = 0.0
        manager.poll_once()
        assert [e.version for e in reg.events(NAME) if e.action == ACTION_REFUSED] == [2]

        # airflow-ml models list (a real process) shows it, with who refused it and why
        done = _cli("models", "list", "--registry", url)
        assert done.returncode == 0, done.stderr
        rows = {tuple(line.split()[:2]): line.split() for line in done.stdout.splitlines()[1:3]}
        assert rows[(NAME, "2")][3] == "refused" and rows[(NAME, "1")][2] == "published"
        assert f"{NAME} version 2 refused by replica-a:8501:" in done.stdout

        rc = main(["models", "list", "--format", "json", "--registry", url])
        data = {d["version"]: d for d in json.loads(capsys.readouterr().out)}
        assert rc == 0 and data[1]["refused"] is None
        assert data[2]["refused"]["by"] == "replica-a:8501" and data[2]["status"] == STATUS_REFUSED

        rc = main(["models", "show", NAME, "--version", "2", "--format", "json", "--registry", url])
        shown = json.loads(capsys.readouterr().out)
        assert rc == 0 and shown["refused"]["by"] == "replica-a:8501" and shown["status"] == STATUS_REFUSED

        # rollback to it: exit 1, one line naming the version, the service and the reason; nothing written
        before = reg.watermark([NAME])
        done = _cli("models", "rollback", NAME, "--to", "2", "--registry", url)
        assert done.returncode == 1 and done.stdout == ""
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "cannot roll back to model 'churn' version 2" in err and "replica-a:8501 refused to load it" in err
        assert reg.watermark([NAME]) == before
        with pytest.raises(RefusedVersionError):
            reg.rollback(NAME, 2)
        with pytest.raises(RefusedVersionError, match="cannot point label 'stable' at model 'churn' version 2"):
            reg.set_label(NAME, "stable", 2)
        with pytest.raises(RefusedVersionError, match="cannot start a canary on model 'churn' version 2"):
            reg.start_canary(NAME, 2, 10)
        for argv in (["label", NAME, "stable", "--version", "2"], ["canary", NAME, "--version", "2", "--percent", "10"]):
            done = _cli("models", *argv, "--registry", url)
            assert done.returncode == 1 and "replica-a:8501 refused to load it" in done.stderr, done.stderr
        assert reg.watermark([NAME]) == before

        # rollback to version 1 is allowed; its model does not load: a load error is refused as well
        done = _cli("models", "rollback", NAME, "--to", "1", "--registry", url)
        assert done.returncode == 0, done.stderr
        manager.poll_once()
        assert reg.refused_versions(NAME) == [1, 2]
        assert "version 1" in reg.is_refused(NAME, 1).reason
        assert manager.get(NAME) is None  # nothing loadable was ever served

        # a canary's version refused while the canary runs: promote refuses it
        root = str(tmp_path / "store")
        publish_model(reg, str(_bundle(tmp_path, "r3")), root, NAME, dag_id="d", run_id="r3")
        v4 = publish_model(reg, str(_bundle(tmp_path, "r4")), root, NAME, dag_id="d", run_id="r4")
        reg.rollback(NAME, 3)
        reg.start_canary(NAME, v4.version, 10)
        manager.poll_once()
        assert reg.refused_versions(NAME) == [1, 2, 3, 4]
        done = _cli("models", "promote", NAME, "--registry", url)
        assert done.returncode == 1 and "cannot promote model 'churn' version 4" in done.stderr, done.stderr
    finally:
        manager.close()


def test_the_ui_model_page_shows_a_refused_version(tmp_path, published, monkeypatch):
    """The UI's model page (its data and its rendered template) marks the refused version."""
    from airflow_ml_provider.plugins import pages

    url, reg, _, _ = published
    reg.record_refusal(NAME, 2, reason="checksum mismatch for model/model.json", instance="replica-b:1")
    monkeypatch.setenv("AIRFLOW_ML_REGISTRY", url)
    monkeypatch.delenv("AIRFLOW__ML__REGISTRY_CONN", raising=False)
    data = pages.model_page_data(NAME, None, None, None)
    by_version = {v["version"]: v for v in data["versions"]}
    assert by_version[2]["status"] == "refused" and by_version[1]["status"] == "published"
    assert by_version[2]["refused"] == "refused by replica-b:1: checksum mismatch for model/model.json"
    assert by_version[1]["refused"] is None
    html = pages._environment().get_template("model.html").render(
        base="/ml", airflow="", m=data, editable=[], user="viewer", message="")
    row = html.split('data-version="2"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="badge fail" title="refused by replica-b:1: checksum mismatch for model/model.json">' \
        'refused</span>' in row


def test_a_transient_failure_is_not_a_refusal(tmp_path):
    """The storage not answering (here: nothing listens on the WebHDFS port) refuses nothing."""
    url = f"sqlite:///{tmp_path}/registry.db"
    reg = ModelRegistry(url)
    reg.publish(name=NAME, bundle_uri="webhdfs://127.0.0.1:1/models/churn/1", framework="xgboost",
                checksum="0" * 64)
    manager = ModelManager(reg, [NAME], cache_dir=tmp_path / "cache")
    try:
        manager.poll_once()
        assert manager._failures[NAME]  # it did fail
        assert reg.refused_versions(NAME) == []
        assert reg.get(NAME, 1).status != STATUS_REFUSED
    finally:
        manager.close()
        reg.dispose()
    assert is_refusal(ValueError("bad bytes"))
    assert not is_refusal(MemoryError())
    assert is_refusal(_wrapped(storage.StorageError("no such file: file:///s/manifest.json")))  # answered: missing
    assert not is_refusal(_wrapped(storage.StorageError("reading webhdfs://h/x failed: timed out")))


def _wrapped(cause: BaseException) -> BaseException:
    """``cause`` inside a ModelLoadError, as load_model raises it (``raise ... from None`` keeps
    the context)."""
    from airflow_ml_provider.serving.errors import ModelLoadError

    try:
        try:
            raise cause
        except BaseException:
            raise ModelLoadError("model 'churn' version 1: cannot read the manifest") from None
    except ModelLoadError as exc:
        return exc


@pytest.mark.mariadb
def test_refusals_on_mariadb(mariadb_url):
    reg = ModelRegistry(mariadb_url)
    try:
        for v in (1, 2):
            reg.publish(name=NAME, bundle_uri=f"file:///s/models/churn/{v}", framework="xgboost", checksum=f"{v}" * 64)
        event = reg.record_refusal(NAME, 2, reason="checksum mismatch for model/model.ubj", instance="h:1")
        assert (event.action, event.created_by) == (ACTION_REFUSED, "h:1")
        assert reg.refused_versions(NAME) == [2] and reg.is_refused(NAME, 1) is None
        assert reg.get(NAME, 2).status == STATUS_REFUSED and reg.current(NAME).version == 2
        with pytest.raises(RefusedVersionError, match="the model service h:1 refused to load it"):
            reg.rollback(NAME, 2)
        assert reg.rollback(NAME, 1).version == 1 and reg.current(NAME).version == 1
    finally:
        reg.dispose()
