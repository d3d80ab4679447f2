"""Quartz cron -> Airflow cron: exact conversions are checked against Quartz's meaning by
comparing fire times (croniter, which Airflow's cron timetables use) with a brute-force
reading of the Quartz fields."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

import pytest
from croniter import croniter

from airflow_ml_provider.azkaban.quartz import QuartzError, convert_quartz, parse_quartz


def _nth_weekday(dt: datetime) -> int:
    return (dt.day - 1) // 7 + 1


def quartz_matches(expr: str, dt: datetime) -> bool:
    """A tiny independent reading of the Quartz subset used below (no W, no years)."""
    sec, minute, hour, dom, month, dow = expr.split()[:6]
    q_dow = (dt.isoweekday() % 7) + 1  # SUN=1 .. SAT=7
    names = {d: i + 1 for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
    months = {m: i + 1 for i, m in enumerate(calendar.month_abbr[1:])}

    def val(tok: str) -> int:
        tok = tok.upper()
        return names.get(tok) or months.get(tok.title()) or int(tok)

    def field(spec: str, v: int, lo: int, hi: int) -> bool:
        if spec in ("*", "?"):
            return True
        for part in spec.split(","):
            base, _, step = part.partition("/")
            if base == "*":
                a, b = lo, hi
            elif "-" in base:
                a, b = (val(x) for x in base.split("-"))
            else:
                a = val(base)
                b = hi if step else a
            seq = list(range(a, b + 1)) if a <= b else list(range(a, hi + 1)) + list(range(lo, b + 1))
            if v in seq[:: int(step) if step else 1]:
                return True
        return False

    last_day = calendar.monthrange(dt.year, dt.month)[1]
    if dom == "L":
        dom_ok = dt.day == last_day
    else:
        dom_ok = field(dom, dt.day, 1, 31)
    if "#" in dow:
        d, n = dow.split("#")
        dow_ok = q_dow == val(d) and _nth_weekday(dt) == int(n)
    elif dow.endswith("L") and dow != "L":
        dow_ok = q_dow == val(dow[:-1]) and dt.day + 7 > last_day
    else:
        dow_ok = field(dow, q_dow, 1, 7)
    return (
        field(sec, dt.second, 0, 59)
        and field(minute, dt.minute, 0, 59)
        and field(hour, dt.hour, 0, 23)
        and dom_ok
        and field(month, dt.month, 1, 12)
        and dow_ok
    )


EXACT = [
    ("0 0 1 ? * *", "0 1 * * *"),
    ("0 30 2 ? * MON-FRI", "30 2 * * 1-5"),
    ("0 0/15 * * * ?", "*/15 * * * *"),
    ("0 5/20 8-18 ? * *", None),
    ("0 0 12 L * ?", "0 12 L * *"),
    ("0 0 12 ? * 6#3", "0 12 * * 5#3"),
    ("0 0 12 ? * 6L", "0 12 * * L5"),
    ("0 0 22-2 ? JAN,MAR *", None),
    ("0 15 10 ? * SAT-MON", None),
    ("0 0 0 1,15 * ?", "0 0 1,15 * *"),
    ("0 0 9 ? * 1", "0 9 * * 0"),
    ("0 0 9 ? 2-4 7", "0 9 * 2-4 6"),
]


@pytest.mark.parametrize(("quartz", "expected"), EXACT)
def test_exact_conversion_fires_at_the_same_times(quartz, expected):
    conv = convert_quartz(quartz)
    assert conv.exact, conv.warnings
    if expected is not None:
        assert conv.cron == expected
    # compare the first 40 fire times after a fixed start with a brute-force Quartz reading
    it = croniter(conv.cron, datetime(2026, 1, 1))
    fires = [it.get_next(datetime) for _ in range(40)]
    for fire in fires:
        assert quartz_matches(quartz, fire), (quartz, conv.cron, fire)
    # and nothing in between matches Quartz: every minute of the first two days, then each day
    # up to the sixth fire at every hour:minute that fires
    start = datetime(2026, 1, 1)
    candidates = {start + timedelta(minutes=m) for m in range(1, 2 * 24 * 60)}
    times = {(f.hour, f.minute) for f in fires}
    day = start
    while day <= fires[5]:
        candidates.update(day.replace(hour=h, minute=m) for h, m in times)
        day += timedelta(days=1)
    seen = 0
    for t in sorted(c for c in candidates if start < c <= fires[5]):
        if quartz_matches(quartz, t):
            assert t in fires, (quartz, conv.cron, t)
            seen += 1
    assert seen >= 1


@pytest.mark.parametrize(
    ("quartz", "needle"),
    [
        ("1 0 0 ? * * *", "seconds field"),
        ("*/30 * * * * ?", "seconds field"),
        ("0 0 12 15W * ?", "nearest weekday"),
        ("0 0 12 LW * ?", "nearest weekday"),
        ("0 0 12 L-3 * ?", "offset from the last day"),
        ("0 0 0 1 1 ? 2027", "year field"),
    ],
)
def test_inexpressible_schedules_warn_and_give_no_cron(quartz, needle):
    conv = convert_quartz(quartz)
    assert conv.cron is None
    assert any(needle in w for w in conv.warnings), conv.warnings


@pytest.mark.parametrize(
    ("quartz", "needle"),
    [
        ("", "empty"),
        ("0 0 3 ? * * * *", "6 or 7 fields"),
        ("0 0 * *", "6 or 7 fields"),
        ("0 0 25 * * ?", "hours field: 25 is out of range"),
        ("0 61 0 * * ?", "minutes field: 61"),
        ("0 0 0 ? * ?", "only one of"),
        ("0 0 0 1 * MON", "both a day-of-month and a day-of-week"),
        ("0 0 0 ? FOO *", "month field: 'FOO'"),
        ("0 0 0 ? * 8", "day-of-week field: 8"),
        ("0 0/0 0 ? * *", "bad step"),
        ("? 0 0 1 * ?", "'?' is only allowed"),
        ("0 0 0 ? * 2#6", "'#' must be 1-5"),
    ],
)
def test_invalid_quartz_is_a_clear_error(quartz, needle):
    with pytest.raises(QuartzError) as exc:
        parse_quartz(quartz)
    assert needle in str(exc.value)


def test_converted_crons_are_accepted_by_airflow():
    from airflow.timetables.trigger import CronTriggerTimetable

    for quartz, _ in EXACT:
        cron = convert_quartz(quartz).cron
        table = CronTriggerTimetable(cron, timezone="UTC")
        table.validate()
