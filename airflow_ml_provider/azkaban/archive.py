"""Safe loading of an Azkaban project from a directory, a ``.zip`` or a tar archive.

Extraction never writes outside its private destination directory. The archive is read once,
in order, and every entry is checked when it is reached, before its data is read:

* an entry whose path is absolute (``/x``, ``\\x``, ``C:x``) or contains ``..`` is rejected;
* symbolic links, hard links and device files are rejected (zip entries flagged as symlinks too);
* duplicate entries, encrypted zip entries and unreadable archives are rejected;
* an archive holding more than ``max_files`` entries (default 100,000), an entry declaring more
  than ``max_member_bytes`` (default 512 MiB), or entries declaring more than ``max_total_bytes``
  in total (default 1 GiB) are rejected at that entry's header: a ``.tar.gz`` bomb stops after
  reading a few KiB, not after decompressing gigabytes;
* the bytes actually decompressed are counted while copying, against the same limits, so an
  archive whose headers under-state sizes stops at the limit too.

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
import tempfile
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
    """Limits applied while extracting, checked as each entry is reached (its declared size, before
    any of its data is read) and again on the bytes actually decompressed.

    :param max_total_bytes: the most bytes all entries may expand to (default 1 GiB).
    :param max_files: the most entries (files and directories) an archive may hold.
    :param max_member_bytes: the most bytes one entry may expand to (default 512 MiB).
    """

    max_total_bytes: int = 1 << 30
    max_files: int = 100_000
    max_member_bytes: int = 512 << 20


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


def _zip_entry(info: zipfile.ZipInfo, archive: str) -> _Entry:
    name = info.filename
    parts = _safe_parts(archive, name)
    mode = (info.external_attr >> 16) & 0xFFFF
    if stat.S_ISLNK(mode):
        raise ArchiveError(archive, "symbolic links are not allowed", name)
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
        raise ArchiveError(archive, "only regular files and directories are allowed", name)
    if info.flag_bits & 0x1:
        raise ArchiveError(archive, "encrypted entries are not supported", name)
    return _Entry(parts, info.is_dir(), 0 if info.is_dir() else info.file_size, info, name)


def _tar_entry(member: tarfile.TarInfo, archive: str) -> _Entry:
    name = member.name
    parts = _safe_parts(archive, name)
    if member.issym() or member.islnk():
        raise ArchiveError(archive, f"links are not allowed (points to {member.linkname!r})", name)
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(archive, "only regular files and directories are allowed", name)
    return _Entry(parts, member.isdir(), member.size if member.isfile() else 0, member, name)


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


class _Extraction:
    """One pass over an archive's entries, in archive order, with every check made as the entry is
    reached: name, type, duplicates, entry count, declared size (per entry and running total),
    then the bytes actually decompressed while they are copied. Nothing is read past a limit."""

    def __init__(self, archive: str, dest_root: Path, limits: ArchiveLimits, in_memory: bool) -> None:
        self.archive = archive
        self.dest_root = dest_root
        self.limits = limits
        self.in_memory = in_memory
        self.count = 0
        self.declared = 0
        self.actual = 0
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.kept: list[_Entry] = []
        self.memory: dict[str, bytes] = {}
        self.made_dirs: set[tuple[str, ...]] = set()

    def _too_big(self, e: _Entry, what: str, limit: int) -> ArchiveError:
        return ArchiveError(self.archive, f"{what} past the size limit of {limit} bytes", e.name)

    def admit(self, e: _Entry) -> bool:
        """Check ``e`` before any of its data is read; False for an entry to skip."""
        self.count += 1
        if self.count > self.limits.max_files:
            raise ArchiveError(
                self.archive, f"archive holds more than the limit of {self.limits.max_files} entries", e.name
            )
        if e.size > self.limits.max_member_bytes:
            raise self._too_big(e, f"entry declares {e.size} bytes,", self.limits.max_member_bytes)
        self.declared += e.size
        if self.declared > self.limits.max_total_bytes:
            raise self._too_big(e, "archive expands", self.limits.max_total_bytes)
        if not e.parts:
            return False
        rel = "/".join(e.parts)
        if is_ignored(rel) or (e.is_dir and e.parts[-1] in IGNORED_DIRS):
            return False
        for i in range(1, len(e.parts)):
            prefix = "/".join(e.parts[:i])
            if prefix in self.files:
                raise ArchiveError(self.archive, f"{prefix!r} is both a file and a directory", e.name)
        if e.is_dir:
            if rel in self.files:
                raise ArchiveError(self.archive, "is both a file and a directory", e.name)
        else:
            if rel in self.files:
                raise ArchiveError(self.archive, "duplicate entry", e.name)
            if rel in self.dirs:
                raise ArchiveError(self.archive, "is both a file and a directory", e.name)
            self.files.add(rel)
        for i in range(1, len(e.parts) + (1 if e.is_dir else 0)):
            self.dirs.add("/".join(e.parts[:i]))
        self.kept.append(e)
        return True

    def _chunks(self, src, e: _Entry) -> Iterator[bytes]:
        """The entry's bytes in chunks, counting what is really decompressed against the limits."""
        got = 0
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                return
            got += len(chunk)
            self.actual += len(chunk)
            if got > self.limits.max_member_bytes:
                raise self._too_big(e, "entry expands", self.limits.max_member_bytes)
            if self.actual > self.limits.max_total_bytes:
                raise self._too_big(e, "archive expands", self.limits.max_total_bytes)
            yield chunk

    def write(self, e: _Entry, src) -> None:
        """Store the admitted entry ``e`` whose data ``src`` yields (written under its full path;
        :meth:`finish` strips a single top-level folder)."""
        if e.is_dir:
            _mkdirs(self.dest_root, e.parts, self.made_dirs)
            return
        if src is None:
            raise ArchiveError(self.archive, "cannot read entry", e.name)
        rel = "/".join(e.parts)
        with src:
            lower = rel.lower()
            if self.in_memory and lower.endswith(MEMORY_ONLY_SUFFIXES + MEMORY_TOO_SUFFIXES):
                data = b"".join(self._chunks(src, e))
                self.memory[rel] = data
                if lower.endswith(MEMORY_ONLY_SUFFIXES):
                    return
                chunks: Iterator[bytes] = iter((data,))
            else:
                chunks = self._chunks(src, e)
            _mkdirs(self.dest_root, e.parts[:-1], self.made_dirs)
            target = os.path.join(self.dest_root, *e.parts)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(target, flags | getattr(os, "O_BINARY", 0), 0o644)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)

    def finish(self) -> ProjectFiles:
        """Strip a single top-level folder holding everything; return the project's files."""
        strip = _top_folder_depth(self.kept)
        files = ["/".join(e.parts[strip:]) for e in self.kept if not e.is_dir and e.parts[strip:]]
        memory = self.memory
        if strip:
            top = self.kept[0].parts[0]
            memory = {k.split("/", 1)[1]: v for k, v in memory.items() if "/" in k}
            top_dir = self.dest_root / top
            if top_dir.is_dir() and not top_dir.is_symlink():
                # move the folder aside first: it may hold an entry of its own name
                aside = Path(tempfile.mkdtemp(prefix=".top-", dir=self.dest_root))
                moved = aside / "top"
                os.rename(top_dir, moved)
                for child in os.listdir(moved):
                    os.rename(moved / child, self.dest_root / child)
                os.rmdir(moved)
                os.rmdir(aside)
        files.sort(key=lambda r: tuple(r.split("/")))
        return ProjectFiles(self.dest_root, files, memory)


def open_project_archive(
    archive: Path, dest: Path, limits: ArchiveLimits | None = None, *, in_memory: bool = True
) -> ProjectFiles:
    """Safely unpack ``archive`` for loading: resource files go under ``dest`` (a fresh private
    directory), definition files (``.job``, ``.flow``, ``.project``) stay in memory when
    ``in_memory`` (the default), ``.properties`` files go to both.

    When every entry sits in one top-level folder, that folder is the project root.

    The archive is read once, in order: a tar (also compressed) entry by entry, so a header
    declaring too many bytes is refused before any of its data is decompressed; a zip's central
    directory (names, types, count, declared sizes) is checked in full before anything is written.
    The bytes actually decompressed are counted as they are copied, so an archive whose headers
    lie stops at the limit too.

    :raises ArchiveError: unsafe entry (absolute path, ``..``, link, device), duplicate entry,
        size / entry-count limit exceeded, or an unreadable archive; names the archive and the
        entry. ``dest`` may hold a partial extraction (callers extract into a temporary
        directory they remove).
    """
    limits = limits or ArchiveLimits()
    label = archive.name
    dest.mkdir(parents=True, exist_ok=True)
    run = _Extraction(label, dest.resolve(), limits, in_memory)
    lower = archive.name.lower()
    try:
        if lower.endswith(".zip") or (not lower.endswith(_ARCHIVE_SUFFIXES) and zipfile.is_zipfile(archive)):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                if len(infos) > limits.max_files:
                    raise ArchiveError(
                        label,
                        f"archive holds {len(infos)} entries, more than the limit of {limits.max_files}",
                    )
                entries = [_zip_entry(info, label) for info in infos]
                admitted = [e for e in entries if run.admit(e)]
                for e in admitted:
                    run.write(e, None if e.is_dir else zf.open(e.ref))
        else:
            # random-access mode, iterated lazily: each header is read when reached (the stream mode
            # "r|*" would be as lazy, but its buffer handling is quadratic for bz2's large blocks)
            with tarfile.open(archive, mode="r:*") as tf:
                for member in tf:
                    e = _tar_entry(member, label)
                    if run.admit(e):
                        run.write(e, None if e.is_dir else tf.extractfile(member))
        return run.finish()
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(label, f"not a readable archive: {exc}") from exc
    except (OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise ArchiveError(label, f"cannot extract: {exc}") from exc


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
