"""Publish crash safety (issue 13, point 6), with real publisher processes killed by SIGKILL.

A publisher process runs the publish function the operator uses (``registry.publish_model``) on
local-disk storage and a real registry (SQLite; MariaDB in the second variant). It is killed at
random points -- during the upload, between the rename of its version directory and the registry
insert, during the insert, or at a random time -- while other publishes happen in between; each
killed publish is retried later by another process. Afterwards every bundle is exactly one
registered version, versions are 1..N without a hole or a duplicate, every version directory is
registered and verifies, and no temporary upload is left.

The child only slows the steps down (a sleep per file, after the rename, before the insert) and
prints where it is, so that the kills land in each window; the publish code is the real one.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from airflow_ml_provider.ml import storage
from airflow_ml_provider.ml.bundle import build_bundle, load_bundle
from airflow_ml_provider.ml.registry import ModelRegistry, publish_model

NAME = "churn"
DAG = "crash_dag"

PUBLISHER = r'''
import os, sys, time
from fsspec.implementations.local import LocalFileSystem
from airflow_ml_provider.ml import storage
from airflow_ml_provider.ml.registry import ModelRegistry, publish_model

url, root, name, dag = sys.argv[1:5]
per_file = float(os.environ.get("CRASH_SLEEP_FILE", "0.01"))
after_rename = float(os.environ.get("CRASH_SLEEP_RENAMED", "0.05"))
before_insert = float(os.environ.get("CRASH_SLEEP_INSERT", "0.02"))

def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

_put = LocalFileSystem.put_file
def put_file(self, *a, **kw):
    say("phase upload")
    time.sleep(per_file)
    return _put(self, *a, **kw)
LocalFileSystem.put_file = put_file

_rename = storage._rename_no_replace
def rename(*a, **kw):
    out = _rename(*a, **kw)
    say("phase renamed")
    time.sleep(after_rename)
    return out
storage._rename_no_replace = rename

_publish = ModelRegistry.publish
def publish(self, **kw):
    say("phase insert")
    time.sleep(before_insert)
    return _publish(self, **kw)
ModelRegistry.publish = publish

registry = ModelRegistry(url)
say("ready")
for line in sys.stdin:
    bundle_dir, run_id = line.split()
    record = publish_model(registry, bundle_dir, root, name, dag_id=dag, run_id=run_id)
    say(f"done {record.version}")
'''


class Publisher:
    """A publisher process: one publish per line sent to it; its stdout read by a thread."""

    def __init__(self, script: Path, url: str, root: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), url, root, NAME, DAG],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._ready = False

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"publisher {self.proc.pid}: no {prefix!r} within {timeout} s") from None
            if line is None:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"publisher {self.proc.pid} ended before {prefix!r}: {err[-2000:]}")
            if line.startswith(prefix):
                return line

    def ready(self) -> Publisher:
        if not self._ready:
            self.wait_for("ready")
            self._ready = True
        return self

    def send(self, bundle: Path, run_id: str) -> None:
        self.proc.stdin.write(f"{bundle} {run_id}\n")
        self.proc.stdin.flush()

    def publish(self, bundle: Path, run_id: str) -> int:
        self.send(bundle, run_id)
        return int(self.wait_for("done").split()[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)  # reaped: its pid is really gone

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.kill()


def _bundle(tmp: Path, tag: str, n_files: int = 6) -> Path:
    src = tmp / "src" / tag
    model = src / "model"
    model.mkdir(parents=True)
    (model / "model.json").write_text(json.dumps({"tag": tag}), encoding="utf-8")
    for i in range(n_files):
        (model / f"part-{i}.bin").write_bytes(os.urandom(64) + tag.encode())
    spec = src / "fitted.json"
    spec.write_text(json.dumps({"format_version": 1, "features": ["x"]}), encoding="utf-8")
    out = tmp / "bundles" / tag
    build_bundle(out, model_dir=model, fitted_spec=spec, framework="xgboost", metrics={"auc": 0.5},
                 metadata={"dag_id": DAG, "run_id": tag})
    return out


def _orphans_and_temps(root: Path, registered: set[int]) -> tuple[list[str], list[str]]:
    base = root / "models" / NAME
    if not base.is_dir():
        return [], []
    names = [p.name for p in base.iterdir()]
    orphans = [n for n in names if n.isdigit() and int(n) not in registered]
    temps = [n for n in names if n.startswith(".")]
    return orphans, temps


def _run_crashes(tmp_path: Path, url: str, kills: int) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER, encoding="utf-8")
    root = tmp_path / "store"
    registry = ModelRegistry(url)
    registry.create_tables()
    crash_bundles = {f"run-{i}": _bundle(tmp_path, f"run-{i}") for i in range(kills)}
    other_bundles = {f"other-{i}": _bundle(tmp_path, f"other-{i}") for i in range(kills)}
    phases = ["phase upload", "phase renamed", "phase insert", None]  # None: a random time
    children: list[Publisher] = []

    def spawn() -> Publisher:
        child = Publisher(script, url, str(root))
        children.append(child)
        return child

    seen_orphans = seen_temps = 0
    pending: list[str] = []
    try:
        spare = spawn()  # the next publisher starts while the current one works
        for i in range(kills):
            child, spare = spare.ready(), spawn()
            # retries of earlier killed publishes, by a new process, after other publishes happened
            while len(pending) > 1:
                run = pending.pop(0)
                child.publish(crash_bundles[run], run)
            run = f"run-{i}"
            child.send(crash_bundles[run], run)
            phase = phases[i % len(phases)]
            try:
                if phase is None:
                    time.sleep(rng.uniform(0.0, 0.25))
                else:
                    child.wait_for(phase, timeout=30)
                    time.sleep(rng.uniform(0.0, 0.03))
            finally:
                child.kill()
            pending.append(run)
            registered = set(registry.versions(NAME))
            orphans, temps = _orphans_and_temps(root, registered)
            seen_orphans += bool(orphans)
            seen_temps += bool(temps)
            # another publish in between (this process, the same function), before the retry
            publish_model(registry, str(other_bundles[f"other-{i}"]), str(root), NAME, dag_id=DAG,
                          run_id=f"other-{i}")
        last = spare.ready()
        for run in pending:
            last.publish(crash_bundles[run], run)
        last.close()
    finally:
        for child in children:
            child.kill()

    # the kills did land in the windows that matter
    assert seen_orphans >= 1, "no kill left an unregistered version directory: the test did not test it"
    assert seen_temps >= 1, "no kill left a temporary upload: the test did not test it"

    records = registry.list(NAME)
    versions = [r.version for r in records]
    assert versions == list(range(1, 2 * kills + 1)), versions  # consecutive, no duplicate
    by_checksum: dict[str, list[int]] = {}
    for r in records:
        by_checksum.setdefault(r.checksum, []).append(r.version)
    for run, bundle in {**crash_bundles, **other_bundles}.items():
        checksum = load_bundle(bundle).checksum
        assert len(by_checksum.get(checksum, [])) == 1, (run, by_checksum.get(checksum))
        record = registry.find_run(NAME, DAG, run)
        assert record is not None and record.checksum == checksum
    orphans, temps = _orphans_and_temps(root, set(versions))
    assert orphans == [] and temps == []
    for r in records:  # every directory is the registered bundle, complete
        assert load_bundle(r.bundle_uri, verify=True).checksum == r.checksum
    registry.dispose()


def test_publishers_killed_at_random_points_leave_one_version_per_bundle(tmp_path):
    _run_crashes(tmp_path, f"sqlite:///{tmp_path}/reg.db", kills=30)


@pytest.mark.mariadb
def test_publishers_killed_at_random_points_on_mariadb(tmp_path, mariadb_url):
    _run_crashes(tmp_path, mariadb_url, kills=10)


def test_a_live_publishers_upload_is_left_alone(tmp_path):
    """A publish while another publisher is uploading: its temporary directory stays, and it
    finishes its own version."""
    url = f"sqlite:///{tmp_path}/reg.db"
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER, encoding="utf-8")
    root = tmp_path / "store"
    registry = ModelRegistry(url)
    registry.create_tables()
    slow, fast = _bundle(tmp_path, "slow"), _bundle(tmp_path, "fast")
    child = Publisher(script, url, str(root), env={"CRASH_SLEEP_FILE": "0.15"})
    try:
        child.ready().send(slow, "slow")
        child.wait_for("phase upload")
        child.wait_for("phase upload")  # it is mid-upload
        temps = [p.name for p in (root / "models" / NAME).iterdir() if p.name.startswith(".")]
        assert len(temps) == 1
        record = publish_model(registry, str(fast), str(root), NAME, dag_id=DAG, run_id="fast")
        assert (root / "models" / NAME / temps[0]).is_dir()  # the live upload was not touched
        assert int(child.wait_for("done").split()[1]) == record.version + 1
    finally:
        child.kill()
    assert sorted(p.name for p in (root / "models" / NAME).iterdir()) == ["1", "2"]
    assert {r.run_id for r in registry.list(NAME)} == {"slow", "fast"}
    registry.dispose()


def test_remove_stale_temps_removes_only_dead_uploads(tmp_path):
    """Dead owner on this host: removed at once. Another host: removed only once older than the
    threshold. The caller's own (live) upload and non-temporary entries: kept."""
    here = storage._host_id()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    parent = tmp_path / "models" / NAME
    parent.mkdir(parents=True)
    names = {
        "dead_here": f".3.tmp-0123456789ab.{dead.pid}.{here}",
        "live_here": f".4.tmp-0123456789ab.{os.getpid()}.{here}",
        "other_host_young": ".5.tmp-0123456789ab.1.deadbeef" if here != "deadbeef" else ".5.tmp-0123456789ab.1.cafebabe",
        "other_host_old": ".6.tmp-0123456789ab.1.deadbeef" if here != "deadbeef" else ".6.tmp-0123456789ab.1.cafebabe",
        "legacy_old": ".7.tmp-0123456789ab",
        "version": "2",
    }
    for n in names.values():
        (parent / n).mkdir()
        (parent / n / "f").write_text("x")
    old = time.time() - 7200
    for key in ("other_host_old", "legacy_old"):
        os.utime(parent / names[key], (old, old))
    removed = storage.remove_stale_temps(str(parent), max_age=3600)
    left = {p.name for p in parent.iterdir()}
    assert left == {names["live_here"], names["other_host_young"], names["version"]}
    assert sorted(Path(r).name for r in removed) == sorted(
        [names["dead_here"], names["other_host_old"], names["legacy_old"]])
    assert storage.remove_stale_temps(str(tmp_path / "missing")) == []
