"""Load an Azkaban project (directory, ``.zip`` or tar archive) into the intermediate model.

Entry point: :func:`load_project`. It picks the format the way Azkaban does (a ``.project``
file means Flow 2.0, otherwise Flow 1.0), loads, validates, and returns a
:class:`~airflow_ml_provider.azkaban.model.Project` whose ``problems`` list every error and
warning. Only an unreadable source (missing path, unsafe archive) raises. Pure: no Airflow.

Usage::

    with load_project(Path("project.zip")) as project:   # the zip's temp dir is removed on exit
        for problem in project.problems:
            print(problem)
        for name, flow in project.flows.items():
            ...
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path, PurePosixPath

from airflow_ml_provider.azkaban.archive import (
    ArchiveError,
    ArchiveLimits,
    ProjectFiles,
    ProjectLoadError,
    list_project_files,
    open_project_archive,
)
from airflow_ml_provider.azkaban.flow1 import load_flow1
from airflow_ml_provider.azkaban.flow2 import load_flow2, read_project_file
from airflow_ml_provider.azkaban.model import WARNING, Kind, Problem, Project
from airflow_ml_provider.azkaban.validate import DEFAULT_MAX_XMS, DEFAULT_MAX_XMX, validate_project

__all__ = ["ArchiveError", "ArchiveLimits", "ProjectLoadError", "load_project", "project_name"]

_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")


def project_name(source: Path) -> str:
    """The project name: the directory name, or the archive name without its suffix."""
    name = source.name
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _looks_like_archive(path: Path) -> bool:
    lower = path.name.lower()
    if lower.endswith(_ARCHIVE_SUFFIXES):
        return True
    return zipfile.is_zipfile(path)


def load_project(
    source: Path | str,
    *,
    limits: ArchiveLimits | None = None,
    max_xms: str = DEFAULT_MAX_XMS,
    max_xmx: str = DEFAULT_MAX_XMX,
) -> Project:
    """Read and validate an Azkaban project.

    :param source: a project directory, or a ``.zip`` / ``.tar[.gz|.bz2|.xz]`` archive of one.
    :param limits: extraction limits for archives (default: 1 GiB, 100,000 entries).
    :param max_xms: the Xms limit checked as Azkaban's ``job.max.Xms`` (a warning when exceeded).
    :param max_xmx: the Xmx limit checked as Azkaban's ``job.max.Xmx`` (a warning when exceeded).
    :returns: the :class:`Project`; for an archive, ``project.root`` is a private temporary
        directory removed by ``project.close()`` (or ``with``), or when the object is collected.
    :raises ProjectLoadError: the source is missing or not a directory / archive.
    :raises ArchiveError: an unsafe or unreadable archive, or a symbolic link in the project
        (the message names the entry).
    """
    src = Path(source)
    if not src.exists():
        raise ProjectLoadError(f"{src}: no such file or directory")
    cleanup = None
    if src.is_dir():
        root = src.resolve()
        reader = ProjectFiles(root, list_project_files(root))
    elif src.is_file() and _looks_like_archive(src):
        tmp = Path(tempfile.mkdtemp(prefix="azkaban-project-"))
        try:
            reader = open_project_archive(src, tmp / "project", limits)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        cleanup = tmp
    else:
        raise ProjectLoadError(f"{src}: not a project directory nor a .zip / tar archive")

    try:
        project = _load_from_dir(reader, project_name(src), max_xms=max_xms, max_xmx=max_xmx)
    except BaseException:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise
    project.source = str(src)
    if cleanup is not None:
        project._cleanup = weakref.finalize(project, shutil.rmtree, str(cleanup), True)
    return project


def _load_from_dir(reader: ProjectFiles, name: str, *, max_xms: str, max_xmx: str) -> Project:
    problems: list[Problem] = []
    root, files = reader.root, reader.files
    project_files = [f for f in files if f.endswith(".project")]
    properties_files = [f for f in files if f.endswith(".properties")]
    if project_files:
        if len(project_files) > 1:
            problems.append(
                Problem(
                    Kind.PROJECT_FILE,
                    project_files[1],
                    f"more than one .project file ({', '.join(project_files)}); a project holds exactly one",
                )
            )
        else:
            read_project_file(reader, project_files[0], problems)
        flow_files = sorted(
            (f for f in files if f.endswith(".flow")), key=lambda r: (len(PurePosixPath(r).parts), r)
        )
        flows = load_flow2(reader, flow_files, problems)
        project = Project(
            name=name,
            flow_version="2.0",
            flows=flows,
            resource_files=[f for f in files if not f.endswith((".flow", ".project"))],
            problems=problems,
            root=root,
            properties_files=properties_files,
            project_files=project_files,
            flow_files=flow_files,
        )
    else:
        flows, jobs, read_props = load_flow1(reader, problems)
        flow_files = [f for f in files if f.endswith(".flow")]
        if flow_files and not jobs:
            problems.append(
                Problem(
                    Kind.FLOW_VERSION,
                    flow_files[0],
                    f"found {len(flow_files)} .flow file(s) but no .project file, so this is read as a Flow 1.0 "
                    "project and they are ignored (add a .project file with 'azkaban-flow-version: 2.0')",
                    severity=WARNING,
                )
            )
        project = Project(
            name=name,
            flow_version="1.0",
            flows=flows,
            resource_files=[f for f in files if not f.endswith(".job")],
            problems=problems,
            root=root,
            jobs=jobs,
            properties_files=read_props,
            flow_files=flow_files,
        )
    validate_project(project, max_xms=max_xms, max_xmx=max_xmx)
    return project
