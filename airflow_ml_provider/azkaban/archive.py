"""Safe loading of an Azkaban project from a directory, a ``.zip`` or a tar archive.

Extraction never writes outside its private destination directory. Every entry is checked
*before* anything is written, and the sizes are checked again while writing:

* an entry whose path is absolute (``/x``, ``\\x``, ``C:x``) or contains ``..`` is rejected;
* symbolic links, hard links and device files are rejected (zip entries flagged as symlinks too);
* duplicate entries, encrypted zip entries and unreadable archives are rejected;
* an archive expanding past ``max_total_bytes`` (default 1 GiB) or holding more than
  ``max_files`` entries (default 100,000) is rejected.

Errors are :class:`ArchiveError` and name the archive and the entry.
``__MACOSX/`` folders and Azkaban's ``___azkaban_project_dir_size_in_bytes___`` marker are
ignored. When everything sits in one top-level folder, that folder is the project root.
Pure: no Airflow import.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "IGNORED_DIRS",
    "IGNORED_FILES",
    "ArchiveError",
    "ArchiveLimits",
    "ProjectLoadError",
    "extract_archive",
    "is_archive",
    "is_ignored",
    "list_project_files",
]

#: directory names skipped anywhere in a project
IGNORED_DIRS = frozenset({"__MACOSX"})
#: file names skipped anywhere in a project
IGNORED_FILES = frozenset({"___azkaban_project_dir_size_in_bytes___"})

_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20


class ProjectLoadError(ValueError):
    """The project cannot be read at all (missing source, unsafe or broken archive)."""


class ArchiveError(ProjectLoadError):
    """An archive is unsafe or unreadable; names the archive and the entry."""

    def __init__(self, archive: str, message: str, entry: str | None = None) -> None:
        self.archive = archive
        self.entry = entry
        self.reason = message
        where = f"{archive}: entry {entry!r}" if entry is not None else archive
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits applied while extracting.

    :param max_total_bytes: the most bytes all entries may expand to (default 1 GiB).
    :param max_files: the most entries (files and directories) an archive may hold.
    """

    max_total_bytes: int = 1 << 30
    max_files: int = 100_000


def is_archive(path: Path) -> bool:
    """True when ``path`` names a file with an archive suffix (``.zip``, ``.tar.gz``, ...)."""
    name = path.name.lower()
    return path.is_file() and name.endswith(_ARCHIVE_SUFFIXES)


def is_ignored(rel: str) -> bool:
    """True for paths Azkaban skips (``__MACOSX/``, the project-size marker file)."""
    parts = rel.split("/")
    return (
        any(p in IGNORED_DIRS for p in parts[:-1]) or parts[-1] in IGNORED_FILES or parts[0] in IGNORED_DIRS
    )


def _safe_parts(archive: str, name: str) -> tuple[str, ...]:
    """Validate an entry name; return its path components (no empty / '.' parts)."""
    if "\x00" in name:
        raise ArchiveError(archive, "entry name contains a NUL byte", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise ArchiveError(archive, "absolute path not allowed", name)
    parts = [p for p in re.split(r"[\\/]", name) if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(archive, "path escapes the project directory ('..' not allowed)", name)
    return tuple(parts)


@dataclass(frozen=True)
class _Entry:
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    ref: object  # ZipInfo or TarInfo
    name: str


def _zip_entries(zf: zipfile.ZipFile, archive: str) -> Iterator[_Entry]:
    for info in zf.infolist():
        name = info.filename
        parts = _safe_parts(archive, name)
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise ArchiveError(archive, "symbolic links are not allowed", name)
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
            raise ArchiveError(archive, "only regular files and directories are allowed", name)
        if info.flag_bits & 0x1:
            raise ArchiveError(archive, "encrypted entries are not supported", name)
        yield _Entry(parts, info.is_dir(), 0 if info.is_dir() else info.file_size, info, name)


def _tar_entries(tf: tarfile.TarFile, archive: str) -> Iterator[_Entry]:
    for member in tf.getmembers():
        name = member.name
        parts = _safe_parts(archive, name)
        if member.issym() or member.islnk():
            raise ArchiveError(archive, f"links are not allowed (points to {member.linkname!r})", name)
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(archive, "only regular files and directories are allowed", name)
        yield _Entry(parts, member.isdir(), member.size if member.isfile() else 0, member, name)


def _check_entries(entries: list[_Entry], archive: str, limits: ArchiveLimits) -> list[_Entry]:
    if len(entries) > limits.max_files:
        raise ArchiveError(
            archive, f"archive holds {len(entries)} entries, more than the limit of {limits.max_files}"
        )
    total = 0
    files: set[str] = set()
    dirs: set[str] = set()
    kept: list[_Entry] = []
    for e in entries:
        if not e.parts:
            continue
        rel = "/".join(e.parts)
        if is_ignored(rel) or (e.is_dir and e.parts[-1] in IGNORED_DIRS):
            continue
        if e.is_dir:
            if rel in files:
                raise ArchiveError(archive, "is both a file and a directory", e.name)
            dirs.add(rel)
            kept.append(e)
            continue
        if rel in files:
            raise ArchiveError(archive, "duplicate entry", e.name)
        if rel in dirs:
            raise ArchiveError(archive, "is both a file and a directory", e.name)
        for i in range(1, len(e.parts)):
            prefix = "/".join(e.parts[:i])
            if prefix in files:
                raise ArchiveError(archive, f"{prefix!r} is both a file and a directory", e.name)
            dirs.add(prefix)
        files.add(rel)
        total += e.size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                archive,
                f"archive expands past the size limit of {limits.max_total_bytes} bytes",
                e.name,
            )
        kept.append(e)
    return kept


def _write(src, dest_root: Path, e: _Entry, archive: str, budget: list[int], limits: ArchiveLimits) -> None:
    target = dest_root.joinpath(*e.parts)
    # defence in depth: the resolved target must stay inside dest_root
    resolved_parent = target.parent.resolve()
    if resolved_parent != dest_root and dest_root not in resolved_parent.parents:
        raise ArchiveError(archive, "path escapes the project directory", e.name)
    if e.is_dir:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            budget[0] += len(chunk)
            if budget[0] > limits.max_total_bytes:
                raise ArchiveError(
                    archive,
                    f"archive expands past the size limit of {limits.max_total_bytes} bytes",
                    e.name,
                )
            out.write(chunk)


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> Path:
    """Extract ``archive`` into the (empty, private) directory ``dest`` and return the project root.

    The root is ``dest`` itself, or the single top-level folder when everything sits in one.

    :raises ArchiveError: unsafe entry (absolute path, ``..``, link, device), duplicate entry,
        size / entry-count limit exceeded, or an unreadable archive. Nothing is written when the
        names are unsafe; ``dest`` may hold a partial extraction when a size limit trips during
        writing (callers extract into a temporary directory they remove).
    """
    limits = limits or ArchiveLimits()
    label = archive.name
    dest_root = dest.resolve()
    dest_root.mkdir(parents=True, exist_ok=True)
    budget = [0]
    lower = archive.name.lower()
    try:
        if lower.endswith(".zip") or (not lower.endswith(_ARCHIVE_SUFFIXES) and zipfile.is_zipfile(archive)):
            with zipfile.ZipFile(archive) as zf:
                entries = _check_entries(list(_zip_entries(zf, label)), label, limits)
                for e in entries:
                    if e.is_dir:
                        _write(None, dest_root, e, label, budget, limits)
                        continue
                    with zf.open(e.ref) as src:  # type: ignore[arg-type]
                        _write(src, dest_root, e, label, budget, limits)
        else:
            with tarfile.open(archive, mode="r:*") as tf:
                entries = _check_entries(list(_tar_entries(tf, label)), label, limits)
                for e in entries:
                    if e.is_dir:
                        _write(None, dest_root, e, label, budget, limits)
                        continue
                    src = tf.extractfile(e.ref)  # type: ignore[arg-type]
                    if src is None:
                        raise ArchiveError(label, "cannot read entry", e.name)
                    with src:
                        _write(src, dest_root, e, label, budget, limits)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(label, f"not a readable archive: {exc}") from exc
    except (OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise ArchiveError(label, f"cannot extract: {exc}") from exc
    return _single_top_folder(dest_root)


def _single_top_folder(root: Path) -> Path:
    children = [c for c in root.iterdir() if c.name not in IGNORED_DIRS and c.name not in IGNORED_FILES]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return root


def list_project_files(root: Path) -> list[str]:
    """Every regular file under ``root`` as a sorted project-relative posix path.

    Skips ``__MACOSX/`` and the size marker; refuses symbolic links (a directory project may
    hold one, but following it could read outside the project).

    :raises ArchiveError: on a symbolic link (naming it).
    """
    out: list[str] = []
    root_str = str(root)
    for dirpath, dirnames, filenames in os.walk(root_str, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root_str)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep_dirs = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if os.path.islink(full):
                raise ArchiveError(root.name, "symbolic links are not allowed", rel)
            if d in IGNORED_DIRS:
                continue
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for f in filenames:
            full = os.path.join(dirpath, f)
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if os.path.islink(full):
                raise ArchiveError(root.name, "symbolic links are not allowed", rel)
            if f in IGNORED_FILES:
                continue
            if not os.path.isfile(full):
                continue
            out.append(rel)
    out.sort(key=lambda r: PurePosixPath(r).parts)
    return out
