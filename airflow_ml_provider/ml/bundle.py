"""The published model bundle: layout, manifest, checksums, load/verify, publish and fetch.

A bundle is a directory::

    model/              the framework's model files (as the trainer wrote them)
    fitted_spec.json    the fitted feature spec (training and serving both load it)
    metrics.json        evaluation metrics (strict JSON: NaN/inf become null)
    charts/*.png        evaluation charts (ROC, PR, KS, lift, gain, importance...)
    metadata.json       framework, library versions, spec_hash, training data URI, dag_id, run_id, ...
    manifest.json       the sha256 and size of every other file, and the bundle checksum

That is the ``model`` kind (a scorer of feature vectors). An ``embedding`` bundle
(:data:`KIND_EMBEDDING`, e.g. item2vec) has no fitted spec: its inputs are item ids, not features::

    model/vectors.npy        float32 (n_items, dim): the raw vectors, row i = the i-th item
    model/vocabulary.json    {"items": [id, ...], "counts": [...]}: the item ids in row order
    model/...                the trainer's other files (word2vec.bin, metadata.json)
    metrics.json, charts/, metadata.json, manifest.json   as above

Every file is checksummed in the manifest like any other. The manifest names the kind
(``"kind"``; a manifest without one is a ``model`` bundle) and so does ``metadata.json``
(``bundle_kind``, inside the checksum). The service L2-normalises a copy of the vectors at load.

The bundle checksum is the sha256 of the sorted ``<path>\\0<sha256>\\n`` lines of every file but
``manifest.json``. The manifest also records when the bundle was built; that timestamp is outside
the checksum, so building again from the same inputs gives the same checksum -- which is what makes
a retried publish idempotent.

``metadata.json`` names the fitted spec's content hash (``FittedSpec.content_hash``,
``"sha256:<hex>"``) under ONE key, :data:`SPEC_HASH_KEY` (``"spec_hash"``): :func:`build_bundle`
records the hash the spec file carries (and refuses a ``metadata`` that names another), and the
model service checks the loaded spec against exactly that key.

Pure core: no Airflow import. Storage goes through :mod:`airflow_ml_provider.ml.storage`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import Any

__all__ = [
    "KIND_EMBEDDING",
    "check_embedding_files",
    "KIND_MODEL",
    "SPEC_HASH_KEY",
    "Bundle",
    "BundleConflictError",
    "BundleError",
    "build_bundle",
    "bundle_checksum",
    "fetch_bundle",
    "load_bundle",
    "publish_bundle",
    "read_remote_manifest",
    "spec_uri",
    "verify_bundle",
]

FORMAT = "airflow-ml-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FITTED_SPEC = "fitted_spec.json"
METRICS = "metrics.json"
METADATA = "metadata.json"
MODEL_DIR = "model"
CHARTS_DIR = "charts"
#: the metadata.json key of the fitted spec's content hash (FittedSpec.content_hash, "sha256:<hex>")
SPEC_HASH_KEY = "spec_hash"
#: bundle kinds: a scorer of feature vectors (with a fitted spec), or item embeddings (no spec)
KIND_MODEL = "model"
KIND_EMBEDDING = "embedding"
BUNDLE_KINDS = (KIND_MODEL, KIND_EMBEDDING)
#: the files an embedding bundle's model/ must hold (as the word2vec trainer writes them)
EMBEDDING_VECTORS = "vectors.npy"
EMBEDDING_VOCABULARY = "vocabulary.json"
_CHUNK = 1 << 20

#: The Python distributions whose versions a bundle records, per framework.
FRAMEWORK_PACKAGES: dict[str, tuple[str, ...]] = {
    "xgboost": ("xgboost",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "keras"),
    "word2vec": ("gensim",),
    "linear": ("scikit-learn",),
    "gbdt": ("scikit-learn",),
}
_COMMON_PACKAGES = ("numpy", "pandas", "pyarrow", "airflow-ml-provider")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class BundleError(Exception):
    """A bundle is malformed or does not match its manifest. The message names the file."""


class BundleConflictError(BundleError, FileExistsError):
    """The publish target already holds a *different* bundle (versions are immutable)."""


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) bundle on local disk."""

    root: Path
    manifest: dict[str, Any]
    framework: str
    model_dir: Path
    fitted_spec_path: Path | None  # None for an embedding bundle
    metrics: dict[str, Any]
    metadata: dict[str, Any]
    checksum: str
    charts: list[Path] = field(default_factory=list)
    kind: str = KIND_MODEL

    @property
    def created_at(self) -> str | None:
        return self.manifest.get("created_at")

    @property
    def spec_hash(self) -> str | None:
        """The fitted spec's content hash recorded at build time (``metadata[SPEC_HASH_KEY]``), or None."""
        value = self.metadata.get(SPEC_HASH_KEY)
        if value is not None and not isinstance(value, str):
            raise BundleError(f"bundle {self.root}: {METADATA} {SPEC_HASH_KEY!r} must be a string, got {value!r}")
        return value or None


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _validate_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise BundleError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (no '/', no '..')"
        )
    return name


def _validate_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise BundleError(f"invalid model version {version!r}: must be a positive integer")
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise BundleError(f"invalid model version {version!r}: must be a positive integer")
    return int(text)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def bundle_checksum(files: Mapping[str, str]) -> str:
    """The bundle checksum: sha256 over the sorted ``<path>\\0<sha256>\\n`` lines."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    return h.hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _json_safe(tolist())
    raise BundleError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _dump_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(_json_safe(data), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


def _load_json(path: Path, root: Path) -> Any:
    rel = path.relative_to(root).as_posix()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle {root}: missing file {rel}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {root}: {rel} is not valid JSON: {exc}") from None


def _package_version(dist: str) -> str | None:
    try:
        return _importlib_metadata.version(dist)
    except _importlib_metadata.PackageNotFoundError:
        return None


def library_versions(framework: str) -> dict[str, str]:
    """Installed versions of the framework's libraries and the common stack (no heavy imports)."""
    out = {"python": platform.python_version()}
    for dist in (*FRAMEWORK_PACKAGES.get(framework, ()), *_COMMON_PACKAGES):
        v = _package_version(dist)
        if v is not None:
            out[dist] = v
    return out


def _walk_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file below ``root``, sorted; symlinks are refused."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise BundleError(
                    f"bundle {root}: {(Path(dirpath) / d).relative_to(root).as_posix()} is a symlink"
                )
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise BundleError(f"bundle {root}: {rel} is a symlink")
            out.append(rel)
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------


def build_bundle(
    out_dir: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str],
    fitted_spec: Any = None,
    framework: str,
    metrics: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    charts: Iterable[str | os.PathLike[str]]
    | Mapping[str, str | os.PathLike[str]]
    | str
    | os.PathLike[str]
    | None = None,
    metadata: Mapping[str, Any] | None = None,
    kind: str = KIND_MODEL,
) -> dict[str, Any]:
    """Lay out a bundle in ``out_dir`` (created; must be empty or missing) and return its manifest.

    :param model_dir: the trainer's model directory, copied to ``model/``.
    :param fitted_spec: the fitted feature spec: a path to its JSON file, or an object with
        ``save(path)`` (a ``FittedSpec``).
    :param framework: ``xgboost``, ``tensorflow``, ``word2vec``, ``linear``, ``gbdt``...
    :param metrics: a mapping, or a path to a metrics JSON file.
    :param charts: PNG files: a directory (its ``*.png``), a list of paths, or ``{name: path}``.
    :param metadata: extra metadata (training data URI, dag_id, run_id, params...). Framework,
        library versions and the fitted spec's content hash (``metadata[SPEC_HASH_KEY]``, taken from
        the spec file) are added; a ``metadata[SPEC_HASH_KEY]`` given here must equal the spec file's.
        Pass ``created_at`` yourself if you want it in the checksummed metadata; the build time
        always goes to the manifest.
    :param kind: ``model`` (default: a fitted spec is required) or ``embedding`` (no fitted spec;
        ``model_dir`` must hold ``vectors.npy``, float32 ``(n, d)``, and ``vocabulary.json`` naming
        the ``n`` items in row order -- checked here).
    """
    out = Path(out_dir)
    if not framework or not isinstance(framework, str):
        raise BundleError("build_bundle: framework must be a non-empty string")
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"build_bundle: unknown bundle kind {kind!r}; known: {', '.join(BUNDLE_KINDS)}")
    if kind == KIND_EMBEDDING and fitted_spec is not None:
        raise BundleError("build_bundle: an embedding bundle has no fitted spec (fitted_spec must be None)")
    if kind == KIND_MODEL and fitted_spec is None:
        raise BundleError("build_bundle: a model bundle needs its fitted spec (fitted_spec); item embeddings "
                          "are published with kind='embedding'")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"bundle output directory {out} exists and is not empty")
    src_model = Path(model_dir)
    if not src_model.is_dir():
        raise BundleError(f"model directory {src_model} does not exist or is not a directory")
    if not any(p.is_file() for p in src_model.rglob("*")):
        raise BundleError(f"model directory {src_model} holds no files")
    if kind == KIND_EMBEDDING:
        check_embedding_files(src_model)

    chart_files = _chart_files(charts)
    metrics_data = _metrics_data(metrics)

    out.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(src_model, out / MODEL_DIR, symlinks=False)
        spec_dst = out / FITTED_SPEC
        spec_doc: Any = None
        if fitted_spec is None:
            pass  # an embedding bundle (checked above)
        elif isinstance(fitted_spec, (str, os.PathLike)):
            src_spec = Path(fitted_spec)
            if not src_spec.is_file():
                raise BundleError(f"fitted spec {src_spec} does not exist")
            shutil.copyfile(src_spec, spec_dst)
        elif hasattr(fitted_spec, "save"):
            fitted_spec.save(spec_dst)
        else:
            raise BundleError(
                f"fitted_spec must be a path or an object with save(path), got {type(fitted_spec).__name__}"
            )
        try:
            if fitted_spec is not None:
                spec_doc = json.loads(spec_dst.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"fitted spec {fitted_spec} is not valid JSON: {exc}") from None
        spec_hash = spec_doc.get("content_hash") if isinstance(spec_doc, dict) else None

        _dump_json(out / METRICS, metrics_data)
        if chart_files:
            (out / CHARTS_DIR).mkdir()
            for name, src in chart_files.items():
                shutil.copyfile(src, out / CHARTS_DIR / name)

        meta = dict(metadata or {})
        given = meta.get(SPEC_HASH_KEY)
        if given is not None and given != spec_hash:
            raise BundleError(
                f"fitted spec {fitted_spec} has content hash {spec_hash!r}, but metadata[{SPEC_HASH_KEY!r}] says "
                f"{given!r}: the spec is not the one the model's features came from"
            )
        if isinstance(spec_hash, str) and spec_hash:
            meta[SPEC_HASH_KEY] = spec_hash
        meta["framework"] = framework
        meta.setdefault("library_versions", library_versions(framework))
        meta["bundle_format"] = FORMAT_VERSION
        if kind != KIND_MODEL:  # (a model bundle's metadata stays as it was: same checksums)
            meta["bundle_kind"] = kind
        _dump_json(out / METADATA, meta)

        manifest = _make_manifest(out, framework, kind)
        _dump_json(out / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return manifest


def check_embedding_files(model_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """Check an embedding model directory: ``vectors.npy`` float32 ``(n, d)`` with finite values and
    ``vocabulary.json`` naming ``n`` distinct items. Returns ``(n, d)``; raises :class:`BundleError`
    naming the file."""
    import numpy as np

    root = Path(model_dir)
    vec_path, voc_path = root / EMBEDDING_VECTORS, root / EMBEDDING_VOCABULARY
    try:
        vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise BundleError(f"embedding model directory {root}: missing file {EMBEDDING_VECTORS}") from None
    except (ValueError, OSError) as exc:
        raise BundleError(f"{vec_path}: not a numpy array file: {exc}") from None
    if vectors.dtype != np.float32 or vectors.ndim != 2 or 0 in vectors.shape:
        raise BundleError(f"{vec_path}: expected a non-empty float32 (n_items, dim) array, got "
                          f"{vectors.dtype} {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise BundleError(f"{vec_path}: holds non-finite values")
    vocab = _load_json(voc_path, root)
    items = vocab.get("items") if isinstance(vocab, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BundleError(f"{voc_path}: expected {{\"items\": [item id strings, ...]}}")
    if len(items) != vectors.shape[0]:
        raise BundleError(f"{voc_path}: {len(items)} items, but {EMBEDDING_VECTORS} has {vectors.shape[0]} rows")
    if len(set(items)) != len(items):
        raise BundleError(f"{voc_path}: item ids are not unique")
    return int(vectors.shape[0]), int(vectors.shape[1])


def _make_manifest(root: Path, framework: str, kind: str = KIND_MODEL) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    for rel in _walk_files(root):
        if rel == MANIFEST:
            continue
        p = root / rel
        files[rel] = {"sha256": _sha256_file(p), "size": p.stat().st_size}
    checksum = bundle_checksum({k: v["sha256"] for k, v in files.items()})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "framework": framework,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "checksum": checksum,
        "files": files,
    }
    if kind != KIND_MODEL:
        manifest["kind"] = kind
    return manifest


def _chart_files(charts: Any) -> dict[str, Path]:
    if charts is None:
        return {}
    items: list[tuple[str, Path]]
    if isinstance(charts, Mapping):
        items = [(str(k), Path(v)) for k, v in charts.items()]
    elif isinstance(charts, (str, os.PathLike)):
        d = Path(charts)
        if not d.is_dir():
            raise BundleError(f"charts directory {d} does not exist")
        items = [(p.name, p) for p in sorted(d.glob("*.png"))]
    else:
        items = [(Path(p).name, Path(p)) for p in charts]
    out: dict[str, Path] = {}
    for name, path in items:
        if not name.endswith(".png"):
            name = f"{name}.png"
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"invalid chart name {name!r}")
        if not path.is_file():
            raise BundleError(f"chart {path} does not exist")
        if name in out:
            raise BundleError(f"two charts are named {name!r} ({out[name]} and {path})")
        out[name] = path
    return out


def _metrics_data(metrics: Any) -> dict[str, Any]:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return dict(metrics)
    path = Path(metrics)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"metrics file {path} does not exist") from None
    except ValueError as exc:
        raise BundleError(f"metrics file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"metrics file {path} must hold a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# load / verify
# ---------------------------------------------------------------------------------------------


def _read_manifest(root: Path) -> dict[str, Any]:
    manifest = _load_json(root / MANIFEST, root)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {root}: {MANIFEST} is not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"bundle {root}: {MANIFEST} has format_version {version!r}; this library reads up to {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()
    ):
        raise BundleError(f"bundle {root}: {MANIFEST} has no valid 'files' table")
    if not isinstance(manifest.get("checksum"), str):
        raise BundleError(f"bundle {root}: {MANIFEST} has no 'checksum'")
    return manifest


def verify_bundle(local_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file against the manifest; returns the manifest or raises :class:`BundleError`
    naming the first missing, extra or altered file (or a bad bundle checksum)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist")
    manifest = _read_manifest(root)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    present = set(_walk_files(root)) - {MANIFEST}
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(
            f"bundle {root}: missing file {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = sorted(present - set(listed))
    if extra:
        raise BundleError(
            f"bundle {root}: unexpected file {extra[0]} not in the manifest"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    for rel in sorted(listed):
        p = root / rel
        size = listed[rel].get("size")
        if isinstance(size, int) and p.stat().st_size != size:
            raise BundleError(
                f"bundle {root}: checksum mismatch for {rel} (size {p.stat().st_size}, manifest says {size})"
            )
        if _sha256_file(p) != listed[rel]["sha256"]:
            raise BundleError(f"bundle {root}: checksum mismatch for {rel}")
    expected = bundle_checksum({k: v["sha256"] for k, v in listed.items()})
    if expected != manifest["checksum"]:
        raise BundleError(f"bundle {root}: {MANIFEST} bundle checksum does not match its file list")
    return manifest


def load_bundle(local_dir: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Load a bundle from local disk; with ``verify`` every checksum is checked first."""
    root = Path(local_dir)
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist")
    manifest = verify_bundle(root) if verify else _read_manifest(root)
    kind = manifest.get("kind") or KIND_MODEL
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"bundle {root}: {MANIFEST} names an unknown bundle kind {kind!r}")
    required_files = (FITTED_SPEC, METRICS, METADATA) if kind == KIND_MODEL else (
        METRICS, METADATA, f"{MODEL_DIR}/{EMBEDDING_VECTORS}", f"{MODEL_DIR}/{EMBEDDING_VOCABULARY}")
    for required in required_files:
        if required not in manifest["files"]:
            raise BundleError(f"bundle {root}: missing file {required}")
    if not any(k.startswith(MODEL_DIR + "/") for k in manifest["files"]):
        raise BundleError(f"bundle {root}: missing directory {MODEL_DIR}/")
    metrics = _load_json(root / METRICS, root)
    metadata = _load_json(root / METADATA, root)
    if not isinstance(metrics, dict):
        raise BundleError(f"bundle {root}: {METRICS} must hold a JSON object")
    if not isinstance(metadata, dict):
        raise BundleError(f"bundle {root}: {METADATA} must hold a JSON object")
    framework = manifest.get("framework") or metadata.get("framework")
    if not isinstance(framework, str) or not framework:
        raise BundleError(f"bundle {root}: no framework in {MANIFEST} or {METADATA}")
    if (metadata.get("bundle_kind") or KIND_MODEL) != kind:  # the checksummed copy must agree
        raise BundleError(f"bundle {root}: {MANIFEST} says kind {kind!r}, {METADATA} says "
                          f"{metadata.get('bundle_kind') or KIND_MODEL!r}")
    charts = sorted(root / k for k in manifest["files"] if k.startswith(CHARTS_DIR + "/"))
    return Bundle(
        root=root,
        manifest=manifest,
        framework=framework,
        model_dir=root / MODEL_DIR,
        fitted_spec_path=root / FITTED_SPEC if kind == KIND_MODEL else None,
        metrics=metrics,
        metadata=metadata,
        checksum=manifest["checksum"],
        charts=charts,
        kind=kind,
    )


# ---------------------------------------------------------------------------------------------
# publish / fetch (through airflow_ml_provider.ml.storage)
# ---------------------------------------------------------------------------------------------


def bundle_uri(storage_root: Any, name: str, version: int) -> str:
    """``<storage_root>/models/<name>/<version>``."""
    from airflow_ml_provider.ml import storage

    return storage.join(storage_root, "models", _validate_name(name), str(_validate_version(version)))


def spec_uri(uri: Any) -> str:
    """The URI of the fitted spec inside a published bundle."""
    from airflow_ml_provider.ml import storage

    return storage.join(uri, FITTED_SPEC)


def read_remote_manifest(uri: Any) -> dict[str, Any]:
    """The manifest of a published bundle, read without downloading the bundle."""
    from airflow_ml_provider.ml import storage

    manifest_uri = storage.join(uri, MANIFEST)
    try:
        data = json.loads(storage.read_bytes(manifest_uri))
    except storage.StorageError as exc:
        raise BundleError(f"cannot read the manifest of bundle {storage.mask_uri(uri)}: {exc}") from None
    except ValueError as exc:
        raise BundleError(f"bundle {storage.mask_uri(uri)}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("checksum"), str):
        raise BundleError(f"bundle {storage.mask_uri(uri)}: {MANIFEST} has no 'checksum'")
    return data


def publish_bundle(local_dir: str | os.PathLike[str], storage_root: Any, name: str, version: int) -> str:
    """Write a verified local bundle atomically to ``<storage_root>/models/<name>/<version>``.

    Returns the URI. If the target already holds a bundle with the same checksum (a retried
    publish) it is returned as is; a different bundle there raises :class:`BundleConflictError`.
    """
    from airflow_ml_provider.ml import storage

    local = load_bundle(local_dir, verify=True)
    target = bundle_uri(storage_root, name, version)

    def existing_matches() -> bool:
        try:
            manifest = read_remote_manifest(target)
        except BundleError:
            return False
        return manifest["checksum"] == local.checksum

    if storage.exists(target):
        if existing_matches():
            return target
        raise BundleConflictError(
            f"model {name!r} version {version}: {storage.mask_uri(target)} already holds a different bundle"
        )
    try:
        storage.put_dir_atomic(local.root, target)
    except FileExistsError:  # lost a race with another publisher
        _remove_stray_uploads(target, int(version))
        if existing_matches():
            return target
        raise BundleConflictError(
            f"model {name!r} version {version}: {storage.mask_uri(target)} already holds a different bundle"
        ) from None
    return target


def _remove_stray_uploads(target: str, version: int) -> None:
    """Defensive clean-up after a lost publish race.

    A directory rename that is not "no-clobber" (a plain local ``mv``, WebHDFS RENAME without
    ``renameoptions=NONE``) moves the loser's temporary upload *into* the winner's directory.
    Such an entry is named ``.<version>.tmp-*`` and can never belong to a bundle, so it is removed.
    """
    from airflow_ml_provider.ml import storage

    try:
        fs, path = storage.filesystem_for(target)
        for entry in fs.ls(path, detail=False):
            base = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(f".{version}.tmp-"):
                fs.rm(str(entry), recursive=True)
    except Exception:  # noqa: BLE001,S110 - best effort; verification still catches leftovers
        pass


def fetch_bundle(
    uri: Any, cache_dir: str | os.PathLike[str], *, expected_checksum: str | None = None
) -> Path:
    """Download a published bundle into ``cache_dir/<checksum>/``, verify it, and return the path.

    A verified copy already in the cache is reused. With ``expected_checksum`` (the registry's),
    a bundle whose manifest names another checksum is refused before anything is downloaded.
    """
    from airflow_ml_provider.ml import storage

    manifest = read_remote_manifest(uri)
    checksum = manifest["checksum"]
    if not re.fullmatch(r"[0-9a-f]{64}", checksum):
        raise BundleError(f"bundle {storage.mask_uri(uri)}: {MANIFEST} has a malformed checksum")
    if expected_checksum is not None and checksum != expected_checksum:
        raise BundleError(
            f"bundle {storage.mask_uri(uri)}: checksum {checksum[:12]}... does not match the registry's "
            f"{str(expected_checksum)[:12]}..."
        )
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / checksum
    if final.is_dir():
        try:
            verify_bundle(final)
            return final
        except BundleError:
            shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        local = storage.get_dir(uri, tmp / "bundle")
        try:
            got = verify_bundle(local)
        except BundleError as exc:
            raise BundleError(f"bundle {storage.mask_uri(uri)}: {str(exc).split(': ', 1)[-1]}") from None
        if got["checksum"] != checksum:
            raise BundleError(f"bundle {storage.mask_uri(uri)} changed while it was being downloaded")
        try:
            os.rename(local, final)
        except OSError:
            if not final.is_dir():  # another fetcher placed it first -- fine
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
