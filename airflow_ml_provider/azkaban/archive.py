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
:func:`open_project_archive` keeps the small definition files (``.job``, ``.flow``,
``.project``) in memory, so a 7,000-job project is not written to disk file by file.
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
    "ProjectFiles",
    "ProjectLoadError",
    "extract_archive",
    "is_archive",
    "is_ignored",
    "list_project_files",
    "open_project_archive",
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


def _read_limited(src, e: _Entry, archive: str, budget: list[int], limits: ArchiveLimits) -> Iterator[bytes]:
    """Yield the entry's bytes in chunks, enforcing the total size limit on the real bytes."""
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return
        budget[0] += len(chunk)
        if budget[0] > limits.max_total_bytes:
            raise ArchiveError(
                archive,
                f"archive expands past the size limit of {limits.max_total_bytes} bytes",
                e.name,
            )
        yield chunk


class ProjectFiles:
    """Read access to a project's files, from disk or (for archives) partly from memory.

    :param root: the directory holding the files on disk.
    :param files: every project file as a project-relative posix path, sorted.
    :param memory: contents kept in memory instead of on disk (archives keep the ``.job``,
        ``.flow`` and ``.project`` definitions there, so thousands of tiny files are not written).
    """

    def __init__(self, root: Path, files: list[str], memory: dict[str, bytes] | None = None) -> None:
        self.root = root
        self.files = files
        self.memory = memory or {}

    def read_bytes(self, rel: str) -> bytes:
        data = self.memory.get(rel)
        if data is not None:
            return data
        return (self.root / rel).read_bytes()


#: definition files an archive keeps in memory only (never needed on disk by a migration)
MEMORY_ONLY_SUFFIXES = (".job", ".flow", ".project")
#: definition files an archive keeps in memory *and* writes (scripts may read them)
MEMORY_TOO_SUFFIXES = (".properties",)


def _open_archive(archive: Path):
    lower = archive.name.lower()
    if lower.endswith(".zip") or (not lower.endswith(_ARCHIVE_SUFFIXES) and zipfile.is_zipfile(archive)):
        zf = zipfile.ZipFile(archive)
        return zf, _zip_entries, lambda e: zf.open(e.ref)
    tf = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - the caller closes it (with handle:)
    return tf, _tar_entries, lambda e: tf.extractfile(e.ref)


def open_project_archive(
    archive: Path, dest: Path, limits: ArchiveLimits | None = None, *, in_memory: bool = True
) -> ProjectFiles:
    """Safely unpack ``archive`` for loading: resource files go under ``dest`` (a fresh private
    directory), definition files (``.job``, ``.flow``, ``.project``) stay in memory when
    ``in_memory`` (the default), ``.properties`` files go to both.

    When every entry sits in one top-level folder, that folder is the project root.

    :raises ArchiveError: unsafe entry (absolute path, ``..``, link, device), duplicate entry,
        size / entry-count limit exceeded, or an unreadable archive. All names are checked
        before anything is written; ``dest`` may hold a partial extraction when a size limit
        trips while writing (callers extract into a temporary directory they remove).
    """
    limits = limits or ArchiveLimits()
    label = archive.name
    dest.mkdir(parents=True, exist_ok=True)
    dest_root = dest.resolve()
    budget = [0]
    memory: dict[str, bytes] = {}
    files: list[str] = []
    try:
        handle, lister, opener = _open_archive(archive)
        with handle:
            entries = _check_entries(list(lister(handle, label)), label, limits)
            strip = _top_folder_depth(entries)
            made_dirs: set[tuple[str, ...]] = set()
            for e in entries:
                parts = e.parts[strip:]
                if not parts:
                    continue
                if e.is_dir:
                    _mkdirs(dest_root, parts, made_dirs)
                    continue
                rel = "/".join(parts)
                files.append(rel)
                src = opener(e)
                if src is None:
                    raise ArchiveError(label, "cannot read entry", e.name)
                with src:
                    lower = rel.lower()
                    if in_memory and lower.endswith(MEMORY_ONLY_SUFFIXES + MEMORY_TOO_SUFFIXES):
                        data = b"".join(_read_limited(src, e, label, budget, limits))
                        memory[rel] = data
                        if lower.endswith(MEMORY_ONLY_SUFFIXES):
                            continue
                        chunks: Iterator[bytes] = iter((data,))
                    else:
                        chunks = _read_limited(src, e, label, budget, limits)
                    _mkdirs(dest_root, parts[:-1], made_dirs)
                    target = os.path.join(dest_root, *parts)
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                    fd = os.open(target, flags | getattr(os, "O_BINARY", 0), 0o644)
                    with os.fdopen(fd, "wb") as out:
                        for chunk in chunks:
                            out.write(chunk)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(label, f"not a readable archive: {exc}") from exc
    except (OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise ArchiveError(label, f"cannot extract: {exc}") from exc
    files.sort(key=lambda r: tuple(r.split("/")))
    return ProjectFiles(dest_root, files, memory)


def _mkdirs(dest_root: Path, parts: tuple[str, ...], made: set[tuple[str, ...]]) -> None:
    for i in range(1, len(parts) + 1):
        key = parts[:i]
        if key in made:
            continue
        path = os.path.join(dest_root, *key)
        if os.path.islink(path):  # never follow a link (none can exist: we create only dirs/files)
            raise ArchiveError(dest_root.name, "refusing to write through a symbolic link", "/".join(key))
        os.makedirs(path, exist_ok=True)
        made.add(key)


def _top_folder_depth(entries: list[_Entry]) -> int:
    """1 when every entry sits under one top-level folder (stripped), else 0."""
    tops = {e.parts[0] for e in entries if e.parts}
    if len(tops) != 1:
        return 0
    if any(len(e.parts) == 1 and not e.is_dir for e in entries):
        return 0
    return 1


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> Path:
    """Safely extract every file of ``archive`` under ``dest`` and return ``dest`` (a single
    top-level folder holding everything is flattened: its content lands directly in ``dest``).

    :raises ArchiveError: as :func:`open_project_archive`.
    """
    return open_project_archive(archive, dest, limits, in_memory=False).root


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
