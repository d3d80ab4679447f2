"""Artifact storage addressed by URI: local disk by default, HDFS (WebHDFS) in production.

Every artifact of the platform (datasets, fitted feature specs, models, reports, bundles) has a URI:

* ``file:///abs/path`` or a plain absolute path: the local disk (the embedded default);
* ``webhdfs://<conn_id>@/path``: HDFS through the Airflow ``webhdfs`` connection ``conn_id`` -- the
  same URI Airflow's ``ObjectStoragePath`` understands once this provider is installed;
* ``webhdfs://host:port/path``: HDFS through WebHDFS directly (no Airflow connection needed).

Operators may pass an ``ObjectStoragePath`` instead of a string: its own fsspec filesystem is used.

This module is part of the pure core: it never imports Airflow at module level. A ``conn_id`` URI is
resolved from the ``AIRFLOW_CONN_<CONN_ID>`` environment variable when set, and otherwise through
Airflow's connection lookup (imported lazily, only for such URIs).

Publishing a directory is atomic: :func:`put_dir_atomic` uploads under a temporary sibling name, then
renames it into place, so a reader never sees half a directory. The temporary name records its owner
(``.<name>.tmp-<random>.<pid>.<host id>``), so the upload of a publisher that was killed can be told
from a live one and removed later (:func:`remove_stale_temps`). Errors are :class:`StorageError` and
name the URI with any password masked.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow_ml_provider.ml.connections import ConnectionEnvError, env_connection

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "StorageError",
    "exists",
    "filesystem_for",
    "get_dir",
    "join",
    "list_dir",
    "mask_uri",
    "put_dir_atomic",
    "read_bytes",
    "remove",
    "remove_stale_temps",
    "write_bytes_atomic",
]

_PASSWORD_RE = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
_TMP_MARK = ".tmp-"
#: A temporary upload whose owner cannot be checked (another host, or a name without an owner)
#: is removed only once it is older than this: no publish keeps a temporary directory that long.
STALE_TEMP_SECONDS = 6 * 3600.0
_TMP_OWNER_RE = re.compile(r"\.tmp-[0-9a-f]{12}\.(?P<pid>\d{1,10})\.(?P<host>[0-9a-f]{8})$")


def _host_id() -> str:
    """8 hex digits naming this host (its hostname hashed): the owner of a temporary upload."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _temp_name(parent: str, name: str) -> str:
    """``<parent>/.<name>.tmp-<random>.<pid>.<host id>``: a temporary sibling that names its owner."""
    return posixpath.join(parent, f".{name}{_TMP_MARK}{uuid.uuid4().hex[:12]}.{os.getpid()}.{_host_id()}")


def _pid_dead(pid: int) -> bool:
    """True only when process ``pid`` surely does not run on this host (gone, or a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, owned by someone else
        return False
    try:  # a killed child not yet reaped by its parent is a zombie: dead as an uploader
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


class StorageError(OSError):
    """A storage operation failed. The message names the URI (password masked) and the cause."""


def mask_uri(uri: Any) -> str:
    """Return ``uri`` as text with any ``user:password@`` password replaced by ``***``."""
    return _PASSWORD_RE.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(uri))


def _is_object_storage_path(obj: Any) -> bool:
    return hasattr(obj, "fs") and hasattr(obj, "path") and not isinstance(obj, (str, os.PathLike))


def filesystem_for(uri: Any, *, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Return ``(fsspec filesystem, path)`` for an artifact URI (or an ``ObjectStoragePath``)."""
    if _is_object_storage_path(uri):
        return uri.fs, str(uri.path)
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("", "file", "local"):
        from fsspec.implementations.local import LocalFileSystem

        path = unquote(parts.path) if scheme else text
        if not path.startswith("/"):
            path = str(Path(path).resolve())
        return LocalFileSystem(), path
    if scheme in ("webhdfs", "hdfs+webhdfs", "swebhdfs"):
        return _webhdfs_for(parts, text, storage_options or {}), unquote(parts.path) or "/"
    raise StorageError(f"unsupported storage scheme {scheme!r} in {mask_uri(text)}: use file:// or webhdfs://")


def _webhdfs_for(parts: Any, text: str, storage_options: dict[str, Any]) -> AbstractFileSystem:
    from fsspec.implementations.webhdfs import WebHDFS

    if parts.hostname:  # webhdfs://[user@]host:port/path -- direct
        options = {"host": parts.hostname, "port": parts.port or 9870, "use_https": parts.scheme == "swebhdfs"}
        if parts.username:
            options["user"] = unquote(parts.username)
        options.update(storage_options)
        return WebHDFS(**options)
    conn_id = unquote(parts.username or "") or "webhdfs_default"
    return WebHDFS(**webhdfs_options_from_connection(conn_id), **storage_options)


def webhdfs_options_from_connection(conn_id: str) -> dict[str, Any]:
    """fsspec ``WebHDFS`` keyword arguments for the Airflow ``webhdfs`` connection ``conn_id``.

    ``AIRFLOW_CONN_<CONN_ID>`` (URI or JSON) is read directly; otherwise Airflow resolves the
    connection (its secrets backends, then the metastore).
    """
    try:
        fields = env_connection(conn_id)
    except ConnectionEnvError as exc:
        raise StorageError(str(exc)) from None
    if fields:
        host, port, login, password = fields["host"], fields["port"], fields["login"], fields["password"]
        extra = fields["extra"]
    else:
        try:
            from airflow.sdk import BaseHook  # the Airflow side: imported only for conn-id URIs
        except ImportError as exc:  # pragma: no cover - Airflow is a dependency
            raise StorageError(f"connection {conn_id!r} needs Airflow or AIRFLOW_CONN_{conn_id.upper()}") from exc
        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception as exc:  # noqa: BLE001 - Airflow raises several types here
            raise StorageError(f"cannot resolve Airflow connection {conn_id!r}: {exc}") from exc
        host, port, login, password, extra = conn.host, conn.port, conn.login, conn.password, conn.extra_dejson
    if not host:
        raise StorageError(f"Airflow connection {conn_id!r} has no host")
    options: dict[str, Any] = {"host": host, "port": int(port or 9870)}
    if login:
        options["user"] = login
    if password:
        options["password"] = password
    use_ssl = str(extra.get("use_ssl", extra.get("use_https", "false"))).lower() in ("1", "true", "yes")
    if use_ssl:
        options["use_https"] = True
    if str(extra.get("use_kerberos", "false")).lower() in ("1", "true", "yes"):
        options["kerberos"] = True
    return options


def join(uri: Any, *parts: str) -> str:
    """Join path segments onto a URI (``join("file:///a", "b", "c")`` -> ``file:///a/b/c``)."""
    if _is_object_storage_path(uri):
        return str(uri.joinpath(*parts))
    text = str(uri).rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            text = f"{text}/{part}"
    return text


def _wrap(op: str, uri: Any, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    detail = mask_uri(str(exc)) or type(exc).__name__
    return StorageError(f"{op} {mask_uri(uri)} failed: {detail}")


def exists(uri: Any) -> bool:
    """True if a file or directory exists at ``uri``."""
    fs, path = filesystem_for(uri)
    try:
        return bool(fs.exists(path))
    except Exception as exc:  # noqa: BLE001
        raise _wrap("checking", uri, exc) from exc


def read_bytes(uri: Any) -> bytes:
    """Read a whole file."""
    fs, path = filesystem_for(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise StorageError(f"no such file: {mask_uri(uri)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise _wrap("reading", uri, exc) from exc


def write_bytes_atomic(uri: Any, data: bytes) -> None:
    """Write a file under a temporary sibling name, then rename it over ``uri``."""
    fs, path = filesystem_for(uri)
    parent, name = posixpath.split(path.rstrip("/"))
    tmp = _temp_name(parent, name)
    try:
        fs.makedirs(parent, exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        if fs.exists(path):  # WebHDFS RENAME does not overwrite
            fs.rm(path)
        fs.mv(tmp, path)
    except Exception as exc:  # noqa: BLE001
        _quiet_rm(fs, tmp)
        raise _wrap("writing", uri, exc) from exc


def _walk_local(local_dir: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(local_dir):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.is_symlink():
                raise StorageError(f"refusing to publish a symlink: {p}")
            yield p


def put_dir_atomic(local_dir: str | os.PathLike[str], uri: Any) -> str:
    """Publish a local directory at ``uri`` atomically; returns ``uri`` as text.

    The files are uploaded under ``.<name>.tmp-<random>`` beside the target, and the finished
    directory is renamed into place. A reader sees either nothing or the whole directory.

    :raises FileExistsError: something already exists at ``uri`` (versions are immutable).
    :raises StorageError: the upload failed; the temporary directory is removed.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"not a directory: {local_dir}")
    fs, path = filesystem_for(uri)
    path = path.rstrip("/")
    parent, name = posixpath.split(path)
    tmp = _temp_name(parent, name)
    try:
        if fs.exists(path):
            raise FileExistsError(f"already exists: {mask_uri(uri)}")
        fs.makedirs(tmp, exist_ok=True)
        for file in _walk_local(local_dir):
            rel = file.relative_to(local_dir).as_posix()
            target = posixpath.join(tmp, rel)
            sub = posixpath.dirname(target)
            if sub != tmp:
                fs.makedirs(sub, exist_ok=True)
            fs.put_file(str(file), target)
        _rename_no_replace(fs, tmp, path, uri)
    except FileExistsError:
        _quiet_rm(fs, tmp, recursive=True)
        raise
    except Exception as exc:  # noqa: BLE001
        _quiet_rm(fs, tmp, recursive=True)
        raise _wrap("publishing to", uri, exc) from exc
    return str(uri) if not _is_object_storage_path(uri) else str(uri)


def _rename_no_replace(fs: AbstractFileSystem, src: str, dst: str, uri: Any) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists (never moving into it).

    A plain ``mv`` is not safe for racing publishers: locally it moves into an existing directory,
    and an HDFS RENAME does the same. Local disk uses ``os.rename`` (fails on a non-empty target);
    WebHDFS uses RENAME with ``renameoptions=NONE`` (HDFS rename2: fails if the target exists).
    """
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.webhdfs import WebHDFS

    if isinstance(fs, LocalFileSystem):
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise FileExistsError(f"already exists: {mask_uri(uri)}") from exc
            raise
        return
    if isinstance(fs, WebHDFS):
        try:
            fs._call("RENAME", method="put", path=src, destination=dst, renameoptions="NONE")
        except Exception as exc:  # noqa: BLE001 - fsspec maps the 403 to PermissionError/OSError
            if "FileAlreadyExists" in str(exc) or fs.exists(dst) and not fs.exists(src):
                raise FileExistsError(f"already exists: {mask_uri(uri)}") from exc
            if fs.exists(dst):
                raise FileExistsError(f"already exists: {mask_uri(uri)}") from exc
            raise
        fs.invalidate_cache()
        return
    if fs.exists(dst):  # other filesystems: best effort
        raise FileExistsError(f"already exists: {mask_uri(uri)}")
    fs.mv(src, dst, recursive=True)


def list_dir(uri: Any) -> list[str]:
    """Relative paths of all files below ``uri`` (recursively), sorted."""
    fs, path = filesystem_for(uri)
    path = path.rstrip("/")
    try:
        found = fs.find(path, withdirs=False)
    except FileNotFoundError as exc:
        raise StorageError(f"no such directory: {mask_uri(uri)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise _wrap("listing", uri, exc) from exc
    rels = []
    for f in found:
        f = str(f)
        rel = posixpath.relpath(f if f.startswith("/") else "/" + f, path if path.startswith("/") else "/" + path)
        rels.append(rel)
    return sorted(rels)


def get_dir(uri: Any, local_dir: str | os.PathLike[str]) -> Path:
    """Download the directory at ``uri`` into ``local_dir`` (created); returns ``local_dir``."""
    fs, path = filesystem_for(uri)
    path = path.rstrip("/")
    local_dir = Path(local_dir)
    rels = list_dir(uri)
    if not rels and not exists(uri):
        raise StorageError(f"no such directory: {mask_uri(uri)}")
    try:
        for rel in rels:
            if rel.startswith("..") or rel.startswith("/"):
                raise StorageError(f"unexpected path {rel!r} below {mask_uri(uri)}")
            dest = local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(posixpath.join(path, rel), str(dest))
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _wrap("downloading", uri, exc) from exc
    local_dir.mkdir(parents=True, exist_ok=True)
    return local_dir


def remove(uri: Any, *, recursive: bool = False) -> None:
    """Remove a file (or a directory with ``recursive=True``); missing targets are fine."""
    fs, path = filesystem_for(uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except Exception as exc:  # noqa: BLE001
        raise _wrap("removing", uri, exc) from exc


def remove_stale_temps(parent_uri: Any, *, max_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove the temporary uploads (``.<name>.tmp-*``) directly below ``parent_uri`` whose writer
    is surely dead; returns the removed paths.

    An upload is dead when its name says it was written by a process of this host that no longer
    runs (a publisher killed mid-upload), or -- when that cannot be checked (another host, a name
    without an owner) -- when it is older than ``max_age`` seconds. The upload of a live publisher,
    here or on another host, is never touched. Best effort: a failure to list or remove is ignored.
    """
    fs, path = filesystem_for(parent_uri)
    path = path.rstrip("/") or "/"
    try:
        entries = fs.ls(path, detail=True)
    except Exception:  # noqa: BLE001 - nothing there yet, or unreadable: nothing to clean
        return []
    here, now, removed = _host_id(), time.time(), []
    for entry in entries:
        full = str(entry.get("name", "")).rstrip("/")
        base = full.rsplit("/", 1)[-1]
        if not base.startswith(".") or _TMP_MARK not in base:
            continue
        owner = _TMP_OWNER_RE.search(base)
        if owner and owner["host"] == here and _pid_dead(int(owner["pid"])):
            dead = True
        else:
            dead = (age := _age_seconds(entry, now)) is not None and age > max_age
        if dead:
            try:
                fs.rm(full, recursive=True)
                removed.append(full)
            except Exception:  # noqa: BLE001,S112 - raced with another cleaner, or unremovable
                continue
    return removed


def _age_seconds(entry: dict[str, Any], now: float) -> float | None:
    """Seconds since ``entry`` (an fsspec ``ls`` detail) was modified; None when unknown."""
    for key in ("mtime", "modificationTime", "modified", "created"):
        value = entry.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return now - float(value.timestamp())
        value = float(value)
        return now - (value / 1000.0 if key == "modificationTime" else value)  # WebHDFS: milliseconds
    return None


def _quiet_rm(fs: AbstractFileSystem, path: str, *, recursive: bool = False) -> None:
    try:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
    except Exception:  # noqa: BLE001,S110 - best-effort clean-up of a temporary name
        pass
