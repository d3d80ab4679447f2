"""Artifact storage on local disk and on the real HDFS (WebHDFS), through the core and through
Airflow's ObjectStoragePath with this provider's ``webhdfs`` filesystem."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from airflow_ml_provider.ml import storage


def make_tree(root: Path, n_files: int = 5) -> dict[str, bytes]:
    files = {}
    for i in range(n_files):
        rel = f"part-{i:03d}.bin" if i % 2 else f"sub/dir/file-{i:03d}.txt"
        data = os.urandom(64 + i * 97)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


@pytest.fixture(params=["local", "hdfs"])
def root_uri(request, tmp_path):
    if request.param == "local":
        return f"file://{tmp_path}/store"
    return request.getfixturevalue("hdfs_root")


def test_put_dir_atomic_round_trip(root_uri, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src, 7)
    target = storage.join(root_uri, "models", "ctr", "1")
    assert storage.put_dir_atomic(src, target) == target
    assert storage.list_dir(target) == sorted(files)
    out = storage.get_dir(target, tmp_path / "out")
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    # nothing temporary is left beside the published directory
    assert storage.list_dir(storage.join(root_uri, "models", "ctr")) == sorted(f"1/{r}" for r in files)


def test_versions_are_immutable(root_uri, tmp_path):
    src = tmp_path / "src"
    make_tree(src, 2)
    target = storage.join(root_uri, "v")
    storage.put_dir_atomic(src, target)
    (src / "extra.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        storage.put_dir_atomic(src, target)
    assert "extra.txt" not in storage.list_dir(target)


def test_failed_upload_leaves_nothing(root_uri, tmp_path):
    src = tmp_path / "src"
    make_tree(src, 3)
    (src / "zz-unreadable.bin").write_bytes(b"secret")
    os.chmod(src / "zz-unreadable.bin", 0)
    if os.access(src / "zz-unreadable.bin", os.R_OK):  # root reads anything: use a dangling symlink instead
        os.chmod(src / "zz-unreadable.bin", 0o600)
        (src / "zz-link").symlink_to(tmp_path / "missing")
    target = storage.join(root_uri, "broken")
    with pytest.raises(storage.StorageError):
        storage.put_dir_atomic(src, target)
    assert not storage.exists(target)
    parent_files = storage.list_dir(root_uri) if storage.exists(root_uri) else []
    assert not any(".tmp-" in f for f in parent_files), parent_files


def test_reader_never_sees_half_a_directory(root_uri, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src, 24)
    target = storage.join(root_uri, "bundle")
    seen: list[int] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            if storage.exists(target):
                seen.append(len(storage.list_dir(target)))

    t = threading.Thread(target=reader)
    t.start()
    try:
        storage.put_dir_atomic(src, target)
        for _ in range(3):  # a few reads after publishing
            seen.append(len(storage.list_dir(target)))
    finally:
        stop.set()
        t.join()
    assert seen, "the reader never saw the directory"
    assert set(seen) == {len(files)}, f"partial directory observed: {sorted(set(seen))}"


def test_write_bytes_atomic_overwrites(root_uri):
    uri = storage.join(root_uri, "dir", "state.json")
    storage.write_bytes_atomic(uri, b"one")
    storage.write_bytes_atomic(uri, b"two-two")
    assert storage.read_bytes(uri) == b"two-two"
    assert storage.list_dir(storage.join(root_uri, "dir")) == ["state.json"]


def test_errors_name_the_uri_and_mask_the_password(tmp_path):
    with pytest.raises(storage.StorageError, match=r"no such file: file://.*/nope\.bin"):
        storage.read_bytes(f"file://{tmp_path}/nope.bin")
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes("webhdfs://alice:hunter2@127.0.0.1:1/data.bin")
    assert "hunter2" not in str(err.value)
    assert "alice:***@127.0.0.1:1/data.bin" in str(err.value)
    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'ftp'"):
        storage.filesystem_for("ftp://user:pw@host/x")


def test_plain_paths_are_local(tmp_path):
    storage.write_bytes_atomic(str(tmp_path / "a.txt"), b"x")
    assert (tmp_path / "a.txt").read_bytes() == b"x"
    assert storage.join(f"file://{tmp_path}", "m", "1/") == f"file://{tmp_path}/m/1"


@pytest.mark.hdfs
def test_object_storage_path_reads_what_the_core_published(hdfs, hdfs_root, hdfs_conn_env, tmp_path):
    """Airflow's ObjectStoragePath resolves webhdfs://<conn_id>@/path through this provider."""
    src = tmp_path / "src"
    files = make_tree(src, 3)
    path = hdfs_root.split(f":{hdfs.http_port}", 1)[1]
    storage.put_dir_atomic(src, hdfs_root)
    code = f"""
import json
from airflow.sdk import ObjectStoragePath
from airflow_ml_provider.ml import storage
base = ObjectStoragePath("webhdfs://hdfs_test@{path}")
out = {{p.relative_to(base).as_posix(): p.read_bytes().hex() for p in base.rglob("*") if p.is_file()}}
(base / "written-by-airflow.txt").write_text("hello from ObjectStoragePath")
print(json.dumps(out))
print(storage.read_bytes("webhdfs://hdfs_test@{path}/written-by-airflow.txt").decode())
"""
    env = dict(os.environ, **hdfs_conn_env, AIRFLOW_HOME=str(tmp_path / "afh"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    import json

    got = json.loads(lines[-2])
    assert got == {rel: data.hex() for rel, data in files.items()}
    assert lines[-1] == "hello from ObjectStoragePath"


def test_provider_registers_the_webhdfs_filesystem(tmp_path):
    code = (
        "from airflow.sdk.io.fs import has_fs\n"
        "from airflow_ml_provider.get_provider_info import get_provider_info\n"
        "assert 'airflow_ml_provider.fs.webhdfs' in get_provider_info()['filesystems']\n"
        "print(has_fs('webhdfs'))\n"
    )
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "afh"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"


def test_racing_publishers_one_wins_and_the_loser_leaves_no_trace(root_uri, tmp_path):
    """Many publishers race for one version: exactly one wins, the others get FileExistsError,
    and the winner's directory holds exactly its own files (nothing moved into it)."""
    sources = []
    for i in range(4):
        src = tmp_path / f"src{i}"
        make_tree(src, 6)
        (src / f"owner-{i}.txt").write_text(str(i))
        sources.append(src)
    target = storage.join(root_uri, "race", "1")
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(sources))

    def publish(i: int) -> None:
        barrier.wait()
        try:
            storage.put_dir_atomic(sources[i], target)
            results[i] = "won"
        except FileExistsError:
            results[i] = "lost"

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r == "won"]
    assert len(winners) == 1, results
    files = storage.list_dir(target)
    assert files == sorted(p.relative_to(sources[winners[0]]).as_posix()
                           for p in sources[winners[0]].rglob("*") if p.is_file())
    assert not any(".tmp-" in f for f in storage.list_dir(storage.join(root_uri, "race")))
