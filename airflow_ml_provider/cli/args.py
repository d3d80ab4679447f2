"""Checks of command-line values shared by the ``airflow-ml`` subcommands.

Each check raises :class:`~airflow_ml_provider.cli.CLIError` naming the option and the value (cut
short when it is long), so a bad value ends in one line, never in a traceback or an error from deep
inside a database driver.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

from airflow_ml_provider.cli import CLIError

__all__ = ["check_bindable", "directory_arg", "host_arg", "int_arg", "shown"]

# ASCII digits only: str.isdigit() and int() also accept '١' (Arabic-Indic one), '²' and the like
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_MAX_DIGITS = 18  # any count or version the CLI takes fits; longer is refused before int()


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, with the length when cut."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(str(value))} characters)"


def int_arg(
    value: Any, option: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` (text from the command line, or an int) as an int written with ASCII digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip()
        if not _INT_RE.match(text):
            raise CLIError(f"{option} must be a whole number written with the digits 0-9, got {shown(value)}")
        if len(text.lstrip("+-")) > _MAX_DIGITS:
            bound = f"<= {maximum}" if maximum is not None else f"at most {_MAX_DIGITS} digits long"
            raise CLIError(f"{option} must be {bound}, got {shown(value)}")
        number = int(text)
    if minimum is not None and number < minimum:
        raise CLIError(f"{option} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise CLIError(f"{option} must be <= {maximum}, got {number}")
    return number


def directory_arg(value: str, option: str) -> Path:
    """A directory the command may create and write: refuses a file, or a parent that is a file."""
    path = Path(value).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == path else f"cannot be created: {candidate} is a file"
                raise CLIError(f"{option} {value}: {what}, not a directory")
            break
    return path


def host_arg(host: str, option: str = "--host") -> None:
    """Check that ``host`` is an IP address or a name that resolves (``999.1.1.1`` is neither)."""
    if not host or host != host.strip():
        raise CLIError(f"{option} {shown(host)}: give an IP address or a host name")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    try:
        socket.getaddrinfo(host, None, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        raise CLIError(f"{option} {host}: not a valid address or a known host name ({reason})") from None


def check_bindable(host: str, port: int) -> None:
    """Check that ``host``:``port`` can be bound now (as uvicorn will bind it), naming both if not.

    An address of no local interface, or a port already in use, is reported before the server
    starts, instead of as a log line of a server that exits.
    """
    host_arg(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
    except OSError as exc:
        raise CLIError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    finally:
        sock.close()
