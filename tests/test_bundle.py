"""The model bundle: layout, checksums, tamper detection, atomic idempotent publish, fetch, and
the whole publish protocol (bundle + registry row) including retries after a crash."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from airflow_ml_provider.ml import storage
from airflow_ml_provider.ml.bundle import (
    BundleConflictError,
    BundleError,
    build_bundle,
    fetch_bundle,
    load_bundle,
    publish_bundle,
    verify_bundle,
)
from airflow_ml_provider.ml.registry import ModelRegistry, publish_model

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _inputs(tmp_path: Path, *, model_bytes: bytes = b'{"trees": [1, 2, 3]}', n_extra: int = 0) -> dict:
    src = tmp_path / "src"
    model = src / "model"
    (model / "assets").mkdir(parents=True, exist_ok=True)
    (model / "model.json").write_bytes(model_bytes)
    (model / "assets" / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    for i in range(n_extra):
        (model / f"part-{i:04d}.bin").write_bytes(os.urandom(256))
    spec = src / "fitted.json"
    spec.write_text(json.dumps({"format_version": 1, "features": ["x"]}), encoding="utf-8")
    charts = src / "charts"
    charts.mkdir(exist_ok=True)
    (charts / "roc.png").write_bytes(PNG)
    (charts / "pr.png").write_bytes(PNG + b"pr")
    return {
        "model_dir": model,
        "fitted_spec": spec,
        "framework": "xgboost",
        "metrics": {"auc": 0.81, "ks": 0.42, "nan": float("nan")},
        "charts": charts,
        "metadata": {"training_data": "file:///data/train.parquet", "dag_id": "d", "run_id": "r1"},
    }


@pytest.fixture
def built(tmp_path):
    out = tmp_path / "bundle"
    manifest = build_bundle(out, **_inputs(tmp_path))
    return out, manifest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- build / load -----------------------------------------------------------------------------


def test_build_lays_out_the_bundle_with_a_manifest_of_every_file(built):
    out, manifest = built
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "charts/pr.png",
        "charts/roc.png",
        "fitted_spec.json",
        "manifest.json",
        "metadata.json",
        "metrics.json",
        "model/assets/vocab.txt",
        "model/model.json",
    ]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for rel in files:
        if rel != "manifest.json":
            assert manifest["files"][rel]["sha256"] == _sha(out / rel)
            assert manifest["files"][rel]["size"] == (out / rel).stat().st_size
    assert "manifest.json" not in manifest["files"]
    lines = "".join(f"{rel}\0{_sha(out / rel)}\n" for rel in files if rel != "manifest.json")
    assert manifest["checksum"] == hashlib.sha256(lines.encode()).hexdigest()

    assert json.loads((out / "metrics.json").read_text()) == {"auc": 0.81, "ks": 0.42, "nan": None}
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["framework"] == "xgboost"
    assert meta["training_data"] == "file:///data/train.parquet"
    assert (meta["dag_id"], meta["run_id"]) == ("d", "r1")
    assert meta["library_versions"]["xgboost"]  # the installed version, read without importing it
    assert meta["library_versions"]["python"]
    assert (out / "model" / "model.json").read_bytes() == b'{"trees": [1, 2, 3]}'


def test_load_bundle_returns_paths_metrics_and_checksum(built):
    out, manifest = built
    b = load_bundle(out)
    assert b.framework == "xgboost"
    assert b.model_dir == out / "model"
    assert b.fitted_spec_path == out / "fitted_spec.json"
    assert json.loads(b.fitted_spec_path.read_text())["features"] == ["x"]
    assert b.metrics["auc"] == 0.81
    assert b.metadata["run_id"] == "r1"
    assert b.checksum == manifest["checksum"]
    assert [p.name for p in b.charts] == ["pr.png", "roc.png"]
    assert b.created_at == manifest["created_at"]


def test_same_inputs_give_the_same_checksum(tmp_path):
    inputs = _inputs(tmp_path)
    a = build_bundle(tmp_path / "a", **inputs)
    b = build_bundle(tmp_path / "b", **inputs)
    assert a["checksum"] == b["checksum"]
    c = build_bundle(tmp_path / "c", **{**inputs, "metrics": {"auc": 0.82}})
    assert c["checksum"] != a["checksum"]


def test_build_accepts_a_fitted_spec_object_and_chart_lists(tmp_path):
    inputs = _inputs(tmp_path)

    class Spec:
        def save(self, path):
            Path(path).write_text('{"saved": true}', encoding="utf-8")

    charts = {"lift": inputs["charts"] / "roc.png", "gain.png": inputs["charts"] / "pr.png"}
    build_bundle(tmp_path / "b", **{**inputs, "fitted_spec": Spec(), "charts": charts})
    b = load_bundle(tmp_path / "b")
    assert json.loads(b.fitted_spec_path.read_text()) == {"saved": True}
    assert [p.name for p in b.charts] == ["gain.png", "lift.png"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_dir": "/nonexistent/model"}, "model directory /nonexistent/model does not exist"),
        ({"fitted_spec": "/nonexistent/spec.json"}, "fitted spec /nonexistent/spec.json does not exist"),
        ({"charts": ["/nonexistent/roc.png"]}, "chart /nonexistent/roc.png does not exist"),
        ({"framework": ""}, "framework must be a non-empty string"),
        ({"metrics": "/nonexistent/metrics.json"}, "metrics file /nonexistent/metrics.json does not exist"),
    ],
)
def test_build_errors_name_the_input(tmp_path, change, message):
    out = tmp_path / "b"
    with pytest.raises(BundleError, match=message):
        build_bundle(out, **{**_inputs(tmp_path), **change})
    assert not out.exists()  # no half-built bundle left behind


def test_the_spec_hash_is_recorded_under_one_key(tmp_path):
    """metadata["spec_hash"] (SPEC_HASH_KEY) is the spec file's content_hash; another value is refused."""
    from airflow_ml_provider.ml.bundle import SPEC_HASH_KEY
    from airflow_ml_provider.ml.features import FeatureSpec, fit

    assert SPEC_HASH_KEY == "spec_hash"
    import pandas as pd

    spec = FeatureSpec.from_yaml("version: 1\nfeatures:\n  - name: x\n    dtype: numeric\n"
                                 "    transforms:\n      - standardize\n")
    fitted = fit(spec, pd.DataFrame({"x": [1.0, 2.0, 4.0]}))
    inputs = {**_inputs(tmp_path), "fitted_spec": fitted}
    build_bundle(tmp_path / "a", **inputs)
    b = load_bundle(tmp_path / "a")
    assert b.metadata[SPEC_HASH_KEY] == b.spec_hash == fitted.content_hash
    assert fitted.content_hash.startswith("sha256:")
    assert not {"fitted_spec_hash", "spec_content_hash", "feature_spec_hash"} & set(b.metadata)
    # the caller may pass the hash it expects (the publish operator does): it must be the file's
    build_bundle(tmp_path / "b", **{**inputs, "metadata": {SPEC_HASH_KEY: fitted.content_hash}})
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BundleError, match=r"has content hash 'sha256:[0-9a-f]{64}', but metadata\['spec_hash'\] says "
                                          r"'sha256:0{64}'"):
        build_bundle(tmp_path / "c", **{**inputs, "metadata": {SPEC_HASH_KEY: wrong}})
    assert not (tmp_path / "c").exists()
    # a spec file without a content hash (not a fitted spec): no key, and a claimed one is refused
    build_bundle(tmp_path / "d", **_inputs(tmp_path))
    assert load_bundle(tmp_path / "d").spec_hash is None and SPEC_HASH_KEY not in load_bundle(tmp_path / "d").metadata
    with pytest.raises(BundleError, match="has content hash None"):
        build_bundle(tmp_path / "e", **{**_inputs(tmp_path), "metadata": {SPEC_HASH_KEY: wrong}})


def test_build_refuses_a_non_empty_output_dir(tmp_path, built):
    out, _ = built
    with pytest.raises(BundleError, match="exists and is not empty"):
        build_bundle(out, **_inputs(tmp_path))
    verify_bundle(out)  # untouched


# -- tamper detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel", ["model/model.json", "model/assets/vocab.txt", "metrics.json", "charts/roc.png"]
)
def test_a_tampered_file_is_named(built, rel):
    out, _ = built
    path = out / rel
    data = bytearray(path.read_bytes())
    pos = data.find(b"8") if rel == "metrics.json" else 0  # metrics: 0.81 -> 0.91, still JSON
    data[pos] ^= 0x01  # same size, one bit flipped
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"checksum mismatch for {rel}$"):
        load_bundle(out)
    load_bundle(out, verify=False)  # explicit opt-out still loads


def test_a_missing_file_is_named(built):
    out, _ = built
    (out / "model" / "assets" / "vocab.txt").unlink()
    with pytest.raises(BundleError, match="missing file model/assets/vocab.txt"):
        load_bundle(out)


def test_an_extra_file_is_named(built):
    out, _ = built
    (out / "model" / "backdoor.py").write_text("import os")
    with pytest.raises(BundleError, match="unexpected file model/backdoor.py not in the manifest"):
        load_bundle(out)


def test_a_rewritten_manifest_entry_breaks_the_bundle_checksum(built):
    out, _ = built
    (out / "model" / "model.json").write_bytes(b"evil")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["model/model.json"] = {"sha256": _sha(out / "model" / "model.json"), "size": 4}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle checksum does not match"):
        load_bundle(out)


def test_a_broken_or_missing_manifest_is_named(built):
    out, _ = built
    (out / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(out)
    (out / "manifest.json").unlink()
    with pytest.raises(BundleError, match="missing file manifest.json"):
        load_bundle(out)


def test_a_symlink_in_a_bundle_is_refused(built, tmp_path):
    out, _ = built
    (tmp_path / "outside.txt").write_text("x")
    (out / "model" / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(BundleError, match="model/link.txt is a symlink"):
        load_bundle(out)


# -- publish / fetch on local storage ---------------------------------------------------------


def test_publish_is_atomic_idempotent_and_refuses_a_different_bundle(tmp_path, built):
    out, manifest = built
    root = f"file://{tmp_path}/store"
    uri = publish_bundle(out, root, "churn", 1)
    assert uri == f"file://{tmp_path}/store/models/churn/1"
    target = tmp_path / "store" / "models" / "churn" / "1"
    assert load_bundle(target).checksum == manifest["checksum"]
    # a retry with the same bundle returns the same URI and changes nothing
    mtime = (target / "model" / "model.json").stat().st_mtime_ns
    assert publish_bundle(out, root, "churn", 1) == uri
    assert (target / "model" / "model.json").stat().st_mtime_ns == mtime
    # a different bundle for the same version is refused; the published one is untouched
    other = tmp_path / "other"
    build_bundle(other, **_inputs(tmp_path / "o", model_bytes=b"different"))
    with pytest.raises(BundleConflictError, match="'churn' version 1: .* already holds a different bundle"):
        publish_bundle(other, root, "churn", 1)
    assert load_bundle(target).checksum == manifest["checksum"]
    # no temporary directories left around
    assert sorted(p.name for p in (tmp_path / "store" / "models" / "churn").iterdir()) == ["1"]


def test_publish_verifies_the_local_bundle_first(tmp_path, built):
    out, _ = built
    (out / "metrics.json").write_text('{"auc": 0.99}')
    with pytest.raises(BundleError, match="metrics.json"):
        publish_bundle(out, str(tmp_path / "store"), "churn", 1)
    assert not (tmp_path / "store" / "models" / "churn" / "1").exists()


@pytest.mark.parametrize(
    ("name", "version"), [("../etc", 1), ("a/b", 1), ("ok", 0), ("ok", "x"), ("ok", True)]
)
def test_publish_validates_name_and_version(tmp_path, built, name, version):
    out, _ = built
    with pytest.raises(BundleError, match="invalid model (name|version)"):
        publish_bundle(out, str(tmp_path / "store"), name, version)
    assert not (tmp_path / "store").exists()


def test_a_failed_upload_leaves_nothing_visible(tmp_path, built, monkeypatch):
    out, _ = built
    from fsspec.implementations.local import LocalFileSystem

    real_put = LocalFileSystem.put_file
    calls = {"n": 0}

    def flaky_put(self, lpath, rpath, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full (simulated)")
        return real_put(self, lpath, rpath, **kw)

    monkeypatch.setattr(LocalFileSystem, "put_file", flaky_put)
    root = str(tmp_path / "store")
    with pytest.raises(storage.StorageError, match="disk full"):
        publish_bundle(out, root, "churn", 1)
    parent = tmp_path / "store" / "models" / "churn"
    assert not (parent / "1").exists()
    assert list(parent.iterdir()) == []  # the temporary upload was removed
    monkeypatch.setattr(LocalFileSystem, "put_file", real_put)
    assert publish_bundle(out, root, "churn", 1).endswith("/models/churn/1")
    verify_bundle(parent / "1")


def test_a_reader_never_sees_half_a_bundle(tmp_path):
    out = tmp_path / "bundle"
    build_bundle(out, **_inputs(tmp_path, n_extra=300))
    target = tmp_path / "store" / "models" / "big" / "1"
    seen = {"complete": 0, "absent": 0}
    errors: list[Exception] = []
    done = threading.Event()
    watching = threading.Event()

    def reader():
        while not done.is_set() or not seen["complete"]:
            if seen["absent"]:
                watching.set()
            if target.exists():
                try:
                    verify_bundle(target)
                    seen["complete"] += 1
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                if done.is_set():
                    return
            else:
                seen["absent"] += 1

    t = threading.Thread(target=reader)
    t.start()
    assert watching.wait(30)  # the reader is polling before the upload starts
    publish_bundle(out, str(tmp_path / "store"), "big", 1)
    done.set()
    t.join(30)
    assert not errors, errors[:3]
    assert seen["absent"] > 0 and seen["complete"] > 0


def test_fetch_bundle_verifies_and_caches(tmp_path, built):
    out, manifest = built
    uri = publish_bundle(out, f"file://{tmp_path}/store", "churn", 3)
    cache = tmp_path / "cache"
    local = fetch_bundle(uri, cache, expected_checksum=manifest["checksum"])
    assert local == cache / manifest["checksum"]
    assert load_bundle(local).checksum == manifest["checksum"]
    assert (local / "model" / "model.json").read_bytes() == b'{"trees": [1, 2, 3]}'
    # cached: a second fetch returns the same verified copy
    assert fetch_bundle(uri, cache) == local
    assert [p.name for p in cache.iterdir()] == [manifest["checksum"]]
    # a damaged cache entry is replaced by a fresh download
    (local / "metrics.json").write_text("{}")
    assert fetch_bundle(uri, cache) == local
    verify_bundle(local)


def test_fetch_refuses_a_checksum_other_than_the_registry_one(tmp_path, built):
    out, _ = built
    uri = publish_bundle(out, str(tmp_path / "store"), "churn", 1)
    with pytest.raises(BundleError, match="does not match the registry's"):
        fetch_bundle(uri, tmp_path / "cache", expected_checksum="0" * 64)
    assert not (tmp_path / "cache").exists()  # refused before anything was downloaded


def test_fetch_of_a_corrupted_published_bundle_fails_and_caches_nothing(tmp_path, built):
    out, _ = built
    uri = publish_bundle(out, str(tmp_path / "store"), "churn", 1)
    remote = tmp_path / "store" / "models" / "churn" / "1"
    (remote / "model" / "model.json").write_bytes(b"corrupt")
    with pytest.raises(BundleError, match="model/model.json"):
        fetch_bundle(uri, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_of_a_missing_bundle_names_the_uri(tmp_path):
    with pytest.raises(BundleError, match=f"{tmp_path}/nothing/here"):
        fetch_bundle(f"{tmp_path}/nothing/here", tmp_path / "cache")


# -- the whole publish protocol ---------------------------------------------------------------


@pytest.fixture
def registry(tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path}/reg.db")
    reg.create_tables()
    yield reg
    reg.dispose()


def test_publish_model_writes_bundle_then_row_and_is_idempotent(tmp_path, built, registry):
    out, manifest = built
    root = str(tmp_path / "store")
    rec = publish_model(registry, out, root, "churn", dag_id="d", run_id="r1")
    assert (rec.version, rec.checksum, rec.framework) == (1, manifest["checksum"], "xgboost")
    assert rec.bundle_uri == f"{root}/models/churn/1"
    assert rec.spec_uri == f"{root}/models/churn/1/fitted_spec.json"
    assert rec.metrics == {"auc": 0.81, "ks": 0.42, "nan": None}
    assert load_bundle(rec.bundle_uri).checksum == rec.checksum
    again = publish_model(registry, out, root, "churn", dag_id="d", run_id="r1")
    assert again == rec
    assert len(registry.list("churn")) == 1
    assert registry.current("churn") == rec


def test_publish_model_retry_after_a_crash_before_the_registry_insert(tmp_path, built, registry):
    """The bundle reached storage but the row was never written: the retry reuses the directory."""
    out, manifest = built
    root = str(tmp_path / "store")
    publish_bundle(out, root, "churn", 1)  # the crashed attempt got this far
    assert registry.current("churn") is None  # nothing committed
    rec = publish_model(registry, out, root, "churn", dag_id="d", run_id="r1")
    assert (rec.version, rec.checksum) == (1, manifest["checksum"])
    assert len(registry.list("churn")) == 1


def test_publish_model_never_overwrites_an_orphan_with_other_content(tmp_path, built, registry):
    out, manifest = built
    root = str(tmp_path / "store")
    orphan = tmp_path / "orphan"
    orphan_manifest = build_bundle(orphan, **_inputs(tmp_path / "o", model_bytes=b"other model"))
    publish_bundle(orphan, root, "churn", 1)  # another publisher, not (yet) committed
    rec = publish_model(registry, out, root, "churn", dag_id="d", run_id="r1")
    assert rec.version == 2
    assert load_bundle(tmp_path / "store" / "models" / "churn" / "1").checksum == orphan_manifest["checksum"]
    assert load_bundle(tmp_path / "store" / "models" / "churn" / "2").checksum == manifest["checksum"]


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def reg_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/reg.db"
    return request.getfixturevalue("mariadb_url")


def test_concurrent_publish_model_of_the_same_run(tmp_path, built, reg_url):
    out, _ = built
    url = reg_url
    ModelRegistry(url).create_tables()
    root = str(tmp_path / "store")
    n = 4
    barrier = threading.Barrier(n)
    results, errors = [], []

    def worker():
        reg = ModelRegistry(url)
        try:
            barrier.wait()
            results.append(publish_model(reg, out, root, "churn", dag_id="d", run_id="same"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            reg.dispose()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert {r.id for r in results} == {results[0].id}
    assert len(ModelRegistry(url).list("churn")) == 1
    assert sorted(p.name for p in (tmp_path / "store" / "models" / "churn").iterdir()) == ["1"]


# -- real HDFS --------------------------------------------------------------------------------


@pytest.mark.hdfs
def test_publish_and_fetch_through_real_hdfs(tmp_path, built, hdfs_root):
    out, manifest = built
    uri = publish_bundle(out, hdfs_root, "churn", 1)
    assert uri == f"{hdfs_root}/models/churn/1"
    assert publish_bundle(out, hdfs_root, "churn", 1) == uri  # idempotent retry
    other = tmp_path / "other"
    build_bundle(other, **_inputs(tmp_path / "o", model_bytes=b"different"))
    with pytest.raises(BundleConflictError):
        publish_bundle(other, hdfs_root, "churn", 1)
    local = fetch_bundle(uri, tmp_path / "cache", expected_checksum=manifest["checksum"])
    assert load_bundle(local).checksum == manifest["checksum"]
    assert (local / "model" / "model.json").read_bytes() == b'{"trees": [1, 2, 3]}'
    assert storage.list_dir(f"{hdfs_root}/models/churn") == sorted(
        f"1/{rel}" for rel in [*manifest["files"], "manifest.json"]
    )


def test_concurrent_publish_model_of_different_runs(tmp_path, reg_url):
    """Different runs racing for the same model: distinct versions, each bundle at its own version."""
    url = reg_url
    ModelRegistry(url).create_tables()
    root = str(tmp_path / "store")
    n = 4
    bundles = []
    for i in range(n):
        out = tmp_path / f"b{i}"
        build_bundle(out, **_inputs(tmp_path / f"in{i}", model_bytes=f"model {i}".encode()))
        bundles.append(out)
    barrier = threading.Barrier(n)
    results, errors = {}, []

    def worker(i):
        reg = ModelRegistry(url)
        try:
            barrier.wait()
            results[i] = publish_model(reg, bundles[i], root, "churn", dag_id="d", run_id=f"run-{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            reg.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(r.version for r in results.values()) == list(range(1, n + 1))
    for i, rec in results.items():
        published = load_bundle(rec.bundle_uri)  # verified
        assert published.checksum == rec.checksum == load_bundle(bundles[i]).checksum
        assert (published.model_dir / "model.json").read_bytes() == f"model {i}".encode()


def test_a_lost_rename_race_leaves_no_stray_upload_in_the_winner(tmp_path, built, monkeypatch):
    """A non-no-clobber rename (plain `mv`) moves the loser's upload *into* the winner's directory;
    publish_bundle removes it so the winner's bundle still verifies."""
    out, manifest = built
    root = tmp_path / "store"
    publish_bundle(out, str(root), "churn", 1)  # the winner
    target = root / "models" / "churn" / "1"
    other = tmp_path / "other"
    build_bundle(other, **_inputs(tmp_path / "o", model_bytes=b"loser"))

    def racing_put(local_dir, uri):  # what the loser's rename did on local disk
        import shutil

        shutil.copytree(local_dir, target / ".1.tmp-0123456789ab")
        raise FileExistsError(f"already exists: {uri} (concurrent publish)")

    monkeypatch.setattr(storage, "put_dir_atomic", racing_put)
    monkeypatch.setattr(storage, "exists", lambda uri: False)  # both saw the target free
    with pytest.raises(BundleConflictError):
        publish_bundle(other, str(root), "churn", 1)
    assert load_bundle(target).checksum == manifest["checksum"]  # verifies: no stray entry left
