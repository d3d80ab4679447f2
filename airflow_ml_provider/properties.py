"""Java ``.properties`` reader (the syntax of ``java.util.Properties.load``).

Used by the Azkaban migration (``.job`` and ``.properties`` files) and by the dictionary helper.
Pure Python, no Airflow import.

The syntax follows ``java.util.Properties.load``:

* natural lines end with ``\\n``, ``\\r`` or ``\\r\\n``; a line ending in an odd number of
  backslashes continues on the next line, whose leading whitespace is dropped;
* blank lines and lines whose first non-blank character is ``#`` or ``!`` are comments
  (a comment line is never continued);
* the key ends at the first unescaped ``=``, ``:`` or whitespace; whitespace around one
  optional ``=``/``:`` separator is skipped; the rest of the line is the value (trailing
  whitespace kept);
* escapes: ``\\t \\n \\r \\f``, ``\\uXXXX``; any other escaped character stands for itself
  (``\\=``, ``\\:``, ``\\#``, ``\\ ``, ``\\\\``);
* a later duplicate key replaces the earlier value (keeping the first key's position);
* files are read as ISO-8859-1, as Java does.

A malformed ``\\uXXXX`` escape raises :class:`PropertiesError` naming the source and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

__all__ = [
    "PropertiesError",
    "dump_properties",
    "iter_properties",
    "load_properties",
    "parse_properties",
]

_NATURAL_LINE = re.compile(r"\r\n|\r|\n")
_WS = " \t\f"
# key: escaped characters or anything but separators / whitespace / backslash
_KEY_SEP = re.compile(r"((?:[^=: \t\f\\]|\\.)*)[ \t\f]*(?:[=:][ \t\f]*)?", re.DOTALL)
_ESCAPE = re.compile(r"\\(u(.{0,4})|.)", re.DOTALL)
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_SIMPLE = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


class PropertiesError(ValueError):
    """A ``.properties`` text could not be read; names the source and line."""

    def __init__(self, message: str, *, source: str = "<string>", line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


def _unescape(text: str, source: str, line: int) -> str:
    if "\\" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "u":
            digits = m.group(2)
            if not _HEX4.fullmatch(digits or ""):
                raise PropertiesError(
                    f"malformed \\uXXXX escape '\\u{digits}' (needs 4 hex digits)", source=source, line=line
                )
            return chr(int(digits, 16))
        return _SIMPLE.get(esc, esc)

    if text.endswith("\\") and (len(text) - len(text.rstrip("\\"))) % 2 == 1:
        text = text[:-1]  # a dangling backslash at end of input is dropped, as Java does
    out = _ESCAPE.sub(repl, text)
    if "\\u" in text and any("\ud800" <= c <= "\udfff" for c in out):
        # \uD83D\uDE00 pairs (how Java writes non-BMP characters) become one character
        out = out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return out


def _ends_with_odd_backslashes(s: str) -> bool:
    if not s.endswith("\\"):
        return False
    return (len(s) - len(s.rstrip("\\"))) % 2 == 1


def iter_properties(text: str, *, source: str = "<string>") -> Iterator[tuple[str, str, int]]:
    """Yield ``(key, value, line)`` for each entry in file order (duplicates included).

    ``line`` is the 1-based number of the natural line where the entry starts.
    """
    text = text.removeprefix("\ufeff")
    lines = _NATURAL_LINE.split(text)
    n = len(lines)
    i = 0
    while i < n:
        first = lines[i].lstrip(_WS)
        start = i + 1
        i += 1
        if not first or first[0] in "#!":
            continue
        if _ends_with_odd_backslashes(first):
            parts = [first[:-1]]
            while i < n:
                nxt = lines[i].lstrip(_WS)
                i += 1
                if _ends_with_odd_backslashes(nxt):
                    parts.append(nxt[:-1])
                    continue
                parts.append(nxt)
                break
            logical = "".join(parts)
        else:
            logical = first
        m = _KEY_SEP.match(logical)
        raw_key = m.group(1)
        raw_value = logical[m.end() :]
        yield _unescape(raw_key, source, start), _unescape(raw_value, source, start), start


def parse_properties(text: str, *, source: str = "<string>", unique: bool = False) -> dict[str, str]:
    """Parse Java ``.properties`` text into an ordered ``dict`` (later duplicates win, as in Java).

    :param text: the decoded text.
    :param source: a name for error messages (usually the file path).
    :param unique: refuse a key that appears twice instead (the dictionary import does: a silently
        dropped value is a lost setting).
    :raises PropertiesError: on a malformed ``\\uXXXX`` escape, or a repeated key with ``unique``
        (the message names source and line).
    """
    if not unique:
        return {k: v for k, v, _ in iter_properties(text, source=source)}
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for key, value, line in iter_properties(text, source=source):
        if key in first_line:
            raise PropertiesError(
                f"duplicate key {key!r} (first set at line {first_line[key]}); a key may appear once",
                source=source,
                line=line,
            )
        first_line[key] = line
        out[key] = value
    return out


def load_properties(
    path: str | PathLike[str], *, encoding: str = "iso-8859-1", unique: bool = False
) -> dict[str, str]:
    """Read a ``.properties`` file (ISO-8859-1 by default, as Java) into an ordered ``dict``.

    :param unique: refuse a repeated key (see :func:`parse_properties`).
    :raises PropertiesError: on a syntax error or when the file cannot be read.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PropertiesError(f"cannot read file: {exc.strerror or exc}", source=str(p)) from exc
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise PropertiesError(
            f"not valid {encoding}: {exc.reason} at byte {exc.start}", source=str(p)
        ) from exc
    return parse_properties(text, source=str(p), unique=unique)


def _escape(s: str, *, is_key: bool) -> str:
    out = []
    for idx, ch in enumerate(s):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[ch])
        elif ch in "=:#!":
            out.append("\\" + ch)
        elif ch == " " and (is_key or idx == 0):
            out.append("\\ ")
        elif ord(ch) > 0xFFFF:
            hi, lo = divmod(ord(ch) - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + hi:04x}\\u{0xDC00 + lo:04x}")
        elif ord(ch) > 0xFF or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def dump_properties(props: dict[str, str]) -> str:
    """Serialise a mapping as ``.properties`` text that :func:`parse_properties` reads back."""
    return "".join(f"{_escape(k, is_key=True)}={_escape(v, is_key=False)}\n" for k, v in props.items())
