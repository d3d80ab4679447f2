"""Quartz cron expressions (Azkaban schedules) -> Airflow schedules.

Azkaban schedules flows with Quartz cron: 6 or 7 fields, seconds first
(``sec min hour day-of-month month day-of-week [year]``), with ``?``, ``L``, ``W``, ``#``, names of
days and months, and day-of-week numbered 1 (SUN) to 7 (SAT). Airflow takes a 5-field cron
(``min hour dom month dow``, dow 0 = SUN) and understands ``L`` in day-of-month and ``#`` / ``L``
in day-of-week (croniter syntax).

:func:`parse_quartz` validates an expression (:class:`QuartzError` names the field and token).
:func:`convert_quartz` returns a :class:`ScheduleConversion`: the exact 5-field cron when one
exists, otherwise ``cron=None`` and warnings that say what could not be expressed (for example a
seconds field other than 0, a ``W`` day, or a restricted year field).

Pure: no Airflow import.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

__all__ = ["QuartzCron", "QuartzError", "ScheduleConversion", "convert_quartz", "parse_quartz"]

MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
# Quartz numbering: SUN=1 ... SAT=7
DAYS = {d: i + 1 for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}

FIELD_NAMES = ("seconds", "minutes", "hours", "day-of-month", "month", "day-of-week", "year")
BOUNDS = {
    "seconds": (0, 59),
    "minutes": (0, 59),
    "hours": (0, 23),
    "day-of-month": (1, 31),
    "month": (1, 12),
    "day-of-week": (1, 7),
    "year": (1970, 2199),
}


class QuartzError(ValueError):
    """An invalid Quartz cron expression; the message names the field and the token."""


@dataclass
class QuartzCron:
    """A validated Quartz expression, split into its fields (upper-cased, names kept)."""

    expression: str
    seconds: str
    minutes: str
    hours: str
    day_of_month: str
    month: str
    day_of_week: str
    year: str = "*"


@dataclass
class ScheduleConversion:
    """The Airflow equivalent of a Quartz expression.

    ``cron`` is a 5-field cron string Airflow accepts, or None when the schedule cannot be
    expressed exactly (then ``warnings`` say why and the DAG gets ``schedule=None``).
    """

    quartz: str
    cron: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.cron is not None


_NUM = re.compile(r"^\d+$")


def _value(token: str, fname: str, expr: str) -> int:
    names = MONTHS if fname == "month" else DAYS if fname == "day-of-week" else {}
    up = token.upper()
    if up in names:
        return names[up]
    if not _NUM.match(token):
        raise QuartzError(f"invalid Quartz cron {expr!r}: {fname} field: {token!r} is not a valid value")
    value = int(token)
    lo, hi = BOUNDS[fname]
    if not lo <= value <= hi:
        raise QuartzError(f"invalid Quartz cron {expr!r}: {fname} field: {value} is out of range {lo}-{hi}")
    return value


def _check_field(text: str, fname: str, expr: str) -> None:
    """Validate one field (raises QuartzError)."""
    if text == "?":
        if fname not in ("day-of-month", "day-of-week"):
            raise QuartzError(
                f"invalid Quartz cron {expr!r}: '?' is only allowed in day-of-month or day-of-week"
            )
        return
    for part in text.split(","):
        if not part:
            raise QuartzError(f"invalid Quartz cron {expr!r}: {fname} field: empty list item in {text!r}")
        if fname == "day-of-month":
            if re.fullmatch(r"L(-\d+)?W?", part):
                if part.startswith("L-") and not 0 <= int(part[2:].rstrip("W")) <= 30:
                    raise QuartzError(
                        f"invalid Quartz cron {expr!r}: day-of-month offset {part!r} must be 0-30"
                    )
                continue
            if re.fullmatch(r"\d+W", part):
                _value(part[:-1], fname, expr)
                continue
        if fname == "day-of-week":
            m = re.fullmatch(r"([A-Za-z]+|\d+)#(\d+)", part)
            if m:
                _value(m.group(1), fname, expr)
                if not 1 <= int(m.group(2)) <= 5:
                    raise QuartzError(f"invalid Quartz cron {expr!r}: day-of-week {part!r}: '#' must be 1-5")
                continue
            m = re.fullmatch(r"([A-Za-z]+|\d+)?L", part)
            if m:
                if m.group(1):
                    _value(m.group(1), fname, expr)
                continue
        base, _, step = part.partition("/")
        if step and (not _NUM.match(step) or int(step) == 0):
            raise QuartzError(f"invalid Quartz cron {expr!r}: {fname} field: bad step {step!r} in {part!r}")
        if base == "*":
            continue
        lo_s, dash, hi_s = base.partition("-")
        _value(lo_s, fname, expr)
        if dash:
            _value(hi_s, fname, expr)


def parse_quartz(expression: str) -> QuartzCron:
    """Validate a Quartz cron expression and split it into fields.

    :param expression: e.g. ``"0 30 2 ? * MON-FRI"``.
    :raises QuartzError: the message names the field and the token at fault.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise QuartzError(f"invalid Quartz cron {expression!r}: empty expression")
    parts = expression.split()
    if len(parts) not in (6, 7):
        raise QuartzError(
            f"invalid Quartz cron {expression!r}: expected 6 or 7 fields "
            f"(sec min hour day-of-month month day-of-week [year]), got {len(parts)}"
        )
    parts = [p.upper() for p in parts]
    for text, fname in zip(parts, FIELD_NAMES):
        _check_field(text, fname, expression)
    dom, dow = parts[3], parts[5]
    if dom == "?" and dow == "?":
        raise QuartzError(
            f"invalid Quartz cron {expression!r}: '?' may be used in only one of day-of-month and day-of-week"
        )
    if dom != "?" and dow != "?" and not (dom == "*" and dow == "*"):
        raise QuartzError(
            f"invalid Quartz cron {expression!r}: specifying both a day-of-month and a day-of-week is not "
            "supported by Quartz; use '?' in one of them"
        )
    return QuartzCron(expression, *parts[:6], parts[6] if len(parts) == 7 else "*")


def _values_of(text: str, fname: str) -> set[int] | None:
    """The set of values a plain field matches (None when it holds L/W/#)."""
    lo_b, hi_b = BOUNDS[fname]
    out: set[int] = set()
    for part in text.split(","):
        if any(c in part for c in "LW#"):
            return None
        base, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if base == "*":
            lo, hi = lo_b, hi_b
        else:
            lo_s, dash, hi_s = base.partition("-")
            lo = _value(lo_s, fname, "")
            hi = _value(hi_s, fname, "") if dash else (hi_b if step_s else lo)
        if lo <= hi:
            out.update(range(lo, hi + 1, step))
        else:  # Quartz allows wrap-around ranges such as FRI-MON or 22-2
            seq = list(range(lo, hi_b + 1)) + list(range(lo_b, hi + 1))
            out.update(seq[::step])
    return out


def _compact(values: set[int], lo: int, hi: int) -> str:
    if values == set(range(lo, hi + 1)):
        return "*"
    vals = sorted(values)
    # a regular step from the first value to the end of the range: a/b
    if len(vals) > 2:
        step = vals[1] - vals[0]
        if step > 1 and all(b - a == step for a, b in itertools.pairwise(vals)) and vals[-1] + step > hi:
            return f"{vals[0]}-{hi}/{step}" if vals[0] != lo else f"*/{step}"
    runs: list[str] = []
    start = prev = vals[0]
    for v in vals[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(runs)


def _plain(text: str, fname: str, shift: int = 0) -> str:
    values = _values_of(text, fname)
    assert values is not None
    lo, hi = BOUNDS[fname]
    if values == set(range(lo, hi + 1)):
        return "*"
    return _compact({v + shift for v in values}, lo + shift, hi + shift)


def convert_quartz(expression: str) -> ScheduleConversion:
    """Convert a Quartz expression to an Airflow cron string (see :class:`ScheduleConversion`).

    :raises QuartzError: when the expression is not valid Quartz.
    """
    q = parse_quartz(expression)
    warnings: list[str] = []
    conv = ScheduleConversion(expression, None, warnings)

    seconds = _values_of(q.seconds, "seconds")
    if seconds != {0}:
        warnings.append(
            f"schedule {expression!r}: seconds field {q.seconds!r} is not 0; Airflow schedules have "
            "minute granularity, so the flow gets schedule=None"
        )
    if q.year != "*":
        warnings.append(
            f"schedule {expression!r}: year field {q.year!r} cannot be expressed in an Airflow cron; "
            "the flow gets schedule=None"
        )

    # day-of-month
    dom = q.day_of_month
    if dom in ("?", "*"):
        cron_dom = "*"
    elif "W" in dom:
        warnings.append(
            f"schedule {expression!r}: day-of-month {dom!r} (nearest weekday) has no Airflow cron "
            "equivalent; the flow gets schedule=None"
        )
        cron_dom = None
    elif "L" in dom:
        if dom != "L":
            warnings.append(
                f"schedule {expression!r}: day-of-month {dom!r} (offset from the last day) has no Airflow "
                "cron equivalent; the flow gets schedule=None"
            )
            cron_dom = None
        else:
            cron_dom = "L"
    else:
        cron_dom = _plain(dom, "day-of-month")

    # day-of-week: Quartz 1..7 = SUN..SAT -> cron 0..6
    dow = q.day_of_week
    cron_dow: str | None
    if dow in ("?", "*"):
        cron_dow = "*"
    elif "#" in dow or "L" in dow:
        items = []
        cron_dow = None
        for part in dow.split(","):
            m = re.fullmatch(r"([A-Z]+|\d+)#(\d)", part)
            if m:
                items.append(f"{_value(m.group(1), 'day-of-week', expression) - 1}#{m.group(2)}")
                continue
            m = re.fullmatch(r"([A-Z]+|\d+)L", part)
            if m:
                items.append(f"L{_value(m.group(1), 'day-of-week', expression) - 1}")
                continue
            if part == "L":  # plain L in day-of-week means Saturday
                items.append("6")
                continue
            if any(c in part for c in "#L"):
                break
            items.append(_plain(part, "day-of-week", shift=-1))
        else:
            cron_dow = ",".join(items)
        if cron_dow is not None and len(items) > 1 and any("#" in i or "L" in i for i in items):
            warnings.append(
                f"schedule {expression!r}: day-of-week {dow!r} mixes '#'/'L' with other days; "
                "no exact Airflow cron; the flow gets schedule=None"
            )
            cron_dow = None
    else:
        cron_dow = _plain(dow, "day-of-week", shift=-1)

    if warnings or cron_dom is None or cron_dow is None:
        return conv
    minutes = _plain(q.minutes, "minutes")
    hours = _plain(q.hours, "hours")
    month = _plain(q.month, "month")
    conv.cron = f"{minutes} {hours} {cron_dom} {month} {cron_dow}"
    return conv
