"""Reading JSON that a user wrote (import files, fitted specs) with errors that name the place.

:func:`loads` is ``json.loads`` (the standard library's C decoder, so just as fast) plus checks
that the standard library either does not make or reports without a position:

* a key repeated in one object (``json.loads`` silently keeps the last one);
* ``NaN``, ``Infinity``, ``-Infinity`` and numbers too large for a float (``1e999``), when
  ``allow_nan=False``;
* integers of more than :data:`MAX_INT_DIGITS` digits (Python refuses to convert them, with a
  ``ValueError`` that names no position);
* nesting deeper than the interpreter's recursion limit (``RecursionError``, no position).

Every error is a :class:`JSONInputError` whose message reads
``<source>: line L, column C: <problem> (at <path>)`` (``<source>: invalid JSON at line L, column C:
<what>`` for a syntax error), the path (JSONPath) naming the key, e.g. ``$.entries[3].value`` or
``$.min_auc``. The position is found by a second, pure-Python scan of the text,
which runs only when something is wrong.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "JSONInputError", "loads"]

#: longest integer accepted (Python's own str -> int limit)
MAX_INT_DIGITS = 4300
#: deepest nesting the locating scan reports as "too deep" (the decoder itself stops at the
#: interpreter's recursion limit)
MAX_DEPTH = 500


class JSONInputError(ValueError):
    """JSON refused; ``line``/``column`` are 1-based (None when unknown), ``path`` names the key."""

    def __init__(
        self,
        problem: str,
        *,
        source: str = "<string>",
        line: int | None = None,
        column: int | None = None,
        path: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.column = column
        self.path = path
        at = f" (at {path})" if path else ""
        if line is None:
            message = f"{source}: {problem}{at}"
        elif problem.startswith("invalid JSON"):  # the phrase `dictionary import` always used
            message = f"{source}: invalid JSON at line {line}, column {column}{problem[12:]}{at}"
        else:
            message = f"{source}: line {line}, column {column}: {problem}{at}"
        super().__init__(message)


class _Refused(Exception):
    """Raised inside the decoder's hooks; :func:`loads` then locates the problem."""


def loads(
    text: str | bytes,
    *,
    source: str = "<string>",
    allow_nan: bool = True,
    allow_duplicate_keys: bool = False,
) -> Any:
    """Parse JSON text; raise :class:`JSONInputError` naming source, line, column and key.

    :param text: the document (bytes are decoded as UTF-8).
    :param source: names the document in messages (usually the file path).
    :param allow_nan: accept ``NaN``/``Infinity`` and out-of-range floats (as ``json.loads``).
    :param allow_duplicate_keys: keep the last of repeated keys (as ``json.loads``) instead of refusing.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    hooks: dict[str, Any] = {}
    if not allow_duplicate_keys:
        hooks["object_pairs_hook"] = _unique_pairs
    if not allow_nan:
        hooks["parse_constant"] = _refuse
        hooks["parse_float"] = _finite_float
    try:
        return json.loads(text, **hooks)
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"invalid JSON: {exc.msg}", source=source, line=exc.lineno, column=exc.colno) from None
    except RecursionError:
        too_deep = True
    except (_Refused, ValueError):  # ValueError: an integer past Python's digit limit
        too_deep = False
    raise _locate(
        text, source, allow_nan=allow_nan, allow_duplicate_keys=allow_duplicate_keys, too_deep=too_deep
    )


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Refused
    return out


def _refuse(_: str) -> Any:
    raise _Refused


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused
    return value


# ---------------------------------------------------------------------------------------------
# locating the problem: a tokenizer that keeps the position, the nesting and the current key

_TOKEN = re.compile(
    r"""[ \t\n\r]*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<num>-?(?:0|[1-9][0-9]*)(?P<frac>\.[0-9]+)?(?P<exp>[eE][-+]?[0-9]+)?)
      | (?P<const>NaN|-?Infinity)
      | (?P<punct>[{}\[\]:,])
      | (?P<lit>true|false|null)
    )""",
    re.VERBOSE | re.DOTALL,
)


def _path_text(path: list[Any]) -> str:
    """A JSONPath: ``$.entries[3].value``, ``$["a b"]``; a deep one by its start and end."""
    if len(path) > 8:
        return f"{_path_text(path[:3])}...{_path_text(path[-3:])[1:]}"
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def _locate(
    text: str, source: str, *, allow_nan: bool, allow_duplicate_keys: bool, too_deep: bool
) -> JSONInputError:
    """The first refused thing in ``text`` (which the decoder has parsed up to it)."""
    # containers: [kind, keys seen (objects), current key or index, expecting a key]
    stack: list[list[Any]] = []
    pos = 0
    max_depth = min(MAX_DEPTH, max(50, sys.getrecursionlimit() // 4))

    def error(problem: str, at: int) -> JSONInputError:
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        path = [c[2] for c in stack if c[2] is not None]
        return JSONInputError(problem, source=source, line=line, column=column, path=_path_text(path) or None)

    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        start = m.end() - len(m.group(m.lastgroup or "punct") or "")
        pos = m.end()
        top = stack[-1] if stack else None
        kind = m.lastgroup
        if kind == "punct":
            ch = m.group("punct")
            if ch in "[{":
                if too_deep and len(stack) >= max_depth:
                    return error(f"nested deeper than {max_depth} levels", start)
                stack.append(["array", None, 0, False] if ch == "[" else ["object", set(), None, True])
            elif ch in "]}":
                if stack:
                    stack.pop()
            elif ch == "," and top is not None:
                if top[0] == "array":
                    top[2] += 1
                else:
                    top[3] = True
            continue
        if top is not None and top[0] == "object" and top[3] and kind == "str":
            key = json.loads(m.group("str"))
            if not allow_duplicate_keys and key in top[1]:
                top[2] = key
                return error(f"duplicate key {key!r}: a key may appear once in an object", start)
            top[1].add(key)
            top[2] = key
            top[3] = False
            continue
        if kind == "const" and not allow_nan:
            return error(f"{m.group('const')} is not a number JSON allows", start)
        if kind == "num":
            literal = m.group("num")
            if m.group("frac") is None and m.group("exp") is None:
                if len(literal.lstrip("-")) > MAX_INT_DIGITS:
                    return error(
                        f"a number with {len(literal.lstrip('-'))} digits (the limit is {MAX_INT_DIGITS})", start
                    )
            elif not allow_nan and not math.isfinite(float(literal)):
                return error(f"the number {literal[:20]}{'...' if len(literal) > 20 else ''} is out of range", start)
    # the decoder refused something the scan did not find again (should not happen)
    return JSONInputError("the document could not be read (too deeply nested, or too large a number)", source=source)
