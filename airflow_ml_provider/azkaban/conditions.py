"""Azkaban job conditions: status macros and expressions, parsed and evaluated safely.

An Azkaban ``condition`` is a JavaScript-like boolean expression over ``${job:param}`` (the output
property ``param`` of the upstream job ``job``), string and number literals, the operators
``== != > >= < <= && || !`` and parentheses. It may contain at most one status macro:
``all_success`` (the default when there is none), ``all_failed``, ``all_done``, ``one_success``,
``one_failed``.

Azkaban's semantics, kept here:

* the macro is checked first, once every parent has finished; a SKIPPED parent counts as a
  success, a CANCELLED one as a failure;
* then the expression is evaluated with the macro replaced by ``true`` and each ``${job:param}``
  replaced by the job's output value as a *string*; a reference that cannot be resolved makes
  the whole condition false (Azkaban's JavaScript evaluation fails and the job is cancelled);
* comparisons coerce like JavaScript: a string compared with a number is converted to a number
  (``"7" > 5`` is true), two strings compare lexicographically, ``==`` between a string and a
  number compares numerically.

No ``eval``: a small recursive-descent parser builds a tree that :func:`evaluate` walks.
Pure: no Airflow import.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MACROS",
    "Condition",
    "ConditionError",
    "js_compare",
    "js_equal",
    "macro_met",
    "parse_condition",
]

MACROS = ("all_success", "all_failed", "all_done", "one_success", "one_failed")

#: parent statuses understood by :func:`macro_met`
SUCCEEDED, SKIPPED, FAILED, CANCELLED = "SUCCEEDED", "SKIPPED", "FAILED", "CANCELLED"


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message names the position and the token."""


# ---------------------------------------------------------------------------------- tokenizer
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<ref>\$\{\s*(?P<job>[^:{}\s]+)\s*:\s*(?P<param>[^{}\s]+)\s*\})
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<op>==|!=|>=|<=|&&|\|\||[<>!()])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    value: Any
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ConditionError(
                f"condition {text!r}: unexpected character {text[pos]!r} at column {pos + 1}"
            )
        kind = m.lastgroup
        if kind == "job" or kind == "param":  # inner groups of ref
            kind = "ref"
        if m.group("ref"):
            toks.append(_Tok("ref", (m.group("job"), m.group("param")), pos))
        elif m.group("str"):
            raw = m.group("str")[1:-1]
            toks.append(_Tok("str", re.sub(r"\\(.)", r"\1", raw), pos))
        elif m.group("num"):
            toks.append(_Tok("num", float(m.group("num")), pos))
        elif m.group("op"):
            toks.append(_Tok("op", m.group("op"), pos))
        elif m.group("word"):
            word = m.group("word")
            if word in MACROS:
                toks.append(_Tok("macro", word, pos))
            elif word in ("true", "false"):
                toks.append(_Tok("bool", word == "true", pos))
            else:
                raise ConditionError(
                    f"condition {text!r}: unknown name {word!r} at column {pos + 1} "
                    f"(expected ${{job:param}}, a literal or one of {', '.join(MACROS)})"
                )
        pos = m.end()
    return toks


# ------------------------------------------------------------------------------------ parser
# Node forms: ("lit", value) ("ref", job, param) ("macro", name) ("not", n) ("and", a, b)
# ("or", a, b) ("cmp", op, a, b)
Node = tuple


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise ConditionError(f"condition {self.text!r}: unexpected end of expression")
        self.i += 1
        return tok

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "op" and tok.value in ops

    def parse(self) -> Node:
        if not self.toks:
            raise ConditionError("condition is empty")
        node = self.or_()
        tok = self.peek()
        if tok is not None:
            raise ConditionError(f"condition {self.text!r}: unexpected {tok.value!r} at column {tok.pos + 1}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.is_op("||"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.cmp()
        while self.is_op("&&"):
            self.take()
            node = ("and", node, self.cmp())
        return node

    def cmp(self) -> Node:
        node = self.unary()
        while self.is_op("==", "!=", ">", ">=", "<", "<="):
            op = self.take().value
            node = ("cmp", op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.is_op("!"):
            self.take()
            return ("not", self.unary())
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind == "op" and tok.value == "(":
            node = self.or_()
            if not self.is_op(")"):
                raise ConditionError(f"condition {self.text!r}: missing ')' for '(' at column {tok.pos + 1}")
            self.take()
            return node
        if tok.kind in ("str", "num", "bool"):
            return ("lit", tok.value)
        if tok.kind == "ref":
            return ("ref", *tok.value)
        if tok.kind == "macro":
            return ("macro", tok.value)
        raise ConditionError(f"condition {self.text!r}: unexpected {tok.value!r} at column {tok.pos + 1}")


# ------------------------------------------------------------------------- JS-like semantics
def _to_number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if text == "":
        return 0.0
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", text):
            return float(int(text, 16))
        return (
            float(text)
            if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?Infinity", text)
            else math.nan
        )
    except ValueError:
        return math.nan


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    if isinstance(value, float):
        return not (value == 0 or math.isnan(value))
    return bool(value)


def js_equal(a: Any, b: Any) -> bool:
    """JavaScript ``==`` between strings, numbers and booleans."""
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if a is None or b is None:
        return a is None and b is None
    return _to_number(a) == _to_number(b)


def js_compare(op: str, a: Any, b: Any) -> bool:
    """JavaScript ``<``, ``<=``, ``>``, ``>=``: two strings compare as strings, else as numbers."""
    if isinstance(a, str) and isinstance(b, str):
        x: Any
        y: Any
        x, y = a, b
    else:
        x, y = _to_number(a), _to_number(b)
        if math.isnan(x) or math.isnan(y):
            return False
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


class UnresolvedReference(LookupError):
    """A ``${job:param}`` whose job did not output ``param``."""


@dataclass(frozen=True)
class Condition:
    """A parsed condition.

    :param text: the original condition text.
    :param macro: the status macro (``all_success`` when none is written).
    :param tree: the expression tree, or None when the condition is only a macro.
    """

    text: str
    macro: str
    tree: Node | None
    explicit_macro: bool = False

    def references(self) -> list[tuple[str, str]]:
        """The ``(job, param)`` pairs the expression reads, in order of appearance."""
        out: list[tuple[str, str]] = []

        def walk(n: Node) -> None:
            if n[0] == "ref":
                if (n[1], n[2]) not in out:
                    out.append((n[1], n[2]))
            elif n[0] in ("not",):
                walk(n[1])
            elif n[0] in ("and", "or"):
                walk(n[1])
                walk(n[2])
            elif n[0] == "cmp":
                walk(n[2])
                walk(n[3])

        if self.tree is not None:
            walk(self.tree)
        return out

    def referenced_jobs(self) -> list[str]:
        return list(dict.fromkeys(job for job, _ in self.references()))

    def evaluate(self, lookup: Callable[[str, str], Any]) -> bool:
        """Evaluate the expression part (the macro counts as true).

        :param lookup: ``lookup(job, param)`` returns the output value, or raises ``KeyError``
            when the job did not output it; then the condition is false, as in Azkaban.
        """
        if self.tree is None:
            return True
        try:
            return _truthy(_eval(self.tree, lookup))
        except (KeyError, UnresolvedReference):
            return False


def _eval(node: Node, lookup: Callable[[str, str], Any]) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "ref":
        value = lookup(node[1], node[2])
        return "" if value is None else str(value)
    if kind == "macro":
        return True
    if kind == "not":
        return not _truthy(_eval(node[1], lookup))
    if kind == "and":
        return _truthy(_eval(node[1], lookup)) and _truthy(_eval(node[2], lookup))
    if kind == "or":
        return _truthy(_eval(node[1], lookup)) or _truthy(_eval(node[2], lookup))
    if kind == "cmp":
        op, a, b = node[1], _eval(node[2], lookup), _eval(node[3], lookup)
        if op == "==":
            return js_equal(a, b)
        if op == "!=":
            return not js_equal(a, b)
        return js_compare(op, a, b)
    raise ConditionError(f"unknown node {kind!r}")  # pragma: no cover


def parse_condition(text: str | None) -> Condition:
    """Parse an Azkaban condition (None or empty -> the default ``all_success``).

    :raises ConditionError: bad syntax, an empty operand, an unknown name, or more than one
        status macro; the message names the column.
    """
    if text is None or not str(text).strip():
        return Condition("", "all_success", None, False)
    text = str(text).strip()
    tree = _Parser(text).parse()
    macros: list[str] = []

    def walk(n: Node, negated: bool = False) -> None:
        if n[0] == "macro":
            macros.append(n[1])
            if negated:
                raise ConditionError(f"condition {text!r}: the status macro {n[1]!r} cannot be negated")
        elif n[0] == "not":
            walk(n[1], True)
        elif n[0] in ("and", "or"):
            walk(n[1], negated)
            walk(n[2], negated)
        elif n[0] == "cmp":
            for side in (n[2], n[3]):
                if side[0] == "macro":
                    raise ConditionError(
                        f"condition {text!r}: the status macro {side[1]!r} cannot be compared"
                    )
                walk(side, negated)

    walk(tree)
    if len(macros) > 1:
        raise ConditionError(
            f"condition {text!r}: cannot combine more than one condition-on-job-status macro ({', '.join(macros)})"
        )
    if macros and tree == ("macro", macros[0]):
        return Condition(text, macros[0], None, True)
    return Condition(text, macros[0] if macros else "all_success", tree, bool(macros))


def macro_met(macro: str, parent_statuses: Iterable[str]) -> bool:
    """Whether a status macro holds, given the final Azkaban status of every parent.

    SKIPPED counts as a success; CANCELLED (and anything not SUCCEEDED/SKIPPED) as a failure. A
    job without parents always runs.
    """
    statuses = list(parent_statuses)
    if not statuses:
        return True
    ok = [s in (SUCCEEDED, SKIPPED) for s in statuses]
    if macro == "all_success":
        return all(ok)
    if macro == "all_failed":
        return not any(ok)
    if macro == "all_done":
        return True
    if macro == "one_success":
        return any(ok)
    if macro == "one_failed":
        return not all(ok)
    raise ConditionError(f"unknown condition macro {macro!r} (expected one of {', '.join(MACROS)})")


def lookup_from(outputs: Mapping[str, Mapping[str, Any]]) -> Callable[[str, str], Any]:
    """A ``lookup`` for :meth:`Condition.evaluate` over ``{job: {param: value}}``."""

    def lookup(job: str, param: str) -> Any:
        return outputs[job][param]

    return lookup
