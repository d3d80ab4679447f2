"""Azkaban conditions: parsing, JavaScript-like coercion, status macros, and no eval."""

from __future__ import annotations

import pytest

from airflow_ml_provider.azkaban.conditions import (
    CANCELLED,
    FAILED,
    SKIPPED,
    SUCCEEDED,
    ConditionError,
    js_compare,
    js_equal,
    lookup_from,
    macro_met,
    parse_condition,
)

OUT = {"jobA": {"props": "foo", "n": "7", "f": "2.5", "empty": "", "ten": "10"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${jobA:props} == 'foo'", True),
        ("${jobA:props} == 'bar'", False),
        ('${jobA:props} != "bar"', True),
        ("${jobA:n} > 5", True),  # "7" > 5: numeric
        ("${jobA:n} < 10", True),
        ("${jobA:n} == 7", True),  # "7" == 7
        ("${jobA:n} >= 7.0", True),
        ("${jobA:n} > '10'", True),  # two strings: lexicographic, "7" > "10"
        ("${jobA:ten} > 9", True),
        ("${jobA:f} < 3 && ${jobA:f} > 2", True),
        ("${jobA:props} == 'bar' || ${jobA:n} <= 7", True),
        ("!(${jobA:props} == 'foo')", False),
        ("${jobA:empty} == 0", True),  # "" == 0 in JavaScript
        ("${jobA:props} > 1", False),  # NaN comparisons are false
        ("one_success && ${jobA:props} == 'foo'", True),
        ("${jobA:missing} == 'foo'", False),  # unresolved reference: the condition is false
        ("${jobB:props} == 'foo'", False),
        ("true", True),
        ("false || (${jobA:n} == '7' && !false)", True),
    ],
)
def test_expression_values(text, expected):
    cond = parse_condition(text)
    assert cond.evaluate(lookup_from(OUT)) is expected


def test_macros_and_references_are_extracted():
    cond = parse_condition("one_success && ${jobA:props} == 'foo' || ${jobB:x} != ${jobA:y}")
    assert cond.macro == "one_success"
    assert cond.explicit_macro
    assert cond.references() == [("jobA", "props"), ("jobB", "x"), ("jobA", "y")]
    assert cond.referenced_jobs() == ["jobA", "jobB"]
    only = parse_condition("all_failed")
    assert only.macro == "all_failed" and only.tree is None
    default = parse_condition(None)
    assert default.macro == "all_success" and default.tree is None and not default.explicit_macro


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("one_success && all_success || all_failed", "more than one"),
        ("${jobA:param} != 'foo' || !() > 1", "unexpected ')'"),
        ("($<jobA:param> == 'foo') && print(\"hello!\")", "unexpected character '$'"),
        ("__import__('os').system('id')", "unknown name '__import__'"),
        ("${jobA:p} = 1", "unexpected character '='"),
        ("${jobA:p} ==", "unexpected end"),
        ("!one_success", "cannot be negated"),
        ("(${jobA:p} == 1", "missing ')'"),
    ],
)
def test_bad_conditions_are_clear_errors(text, needle):
    with pytest.raises(ConditionError) as exc:
        parse_condition(text)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("macro", "parents", "expected"),
    [
        ("all_success", [SUCCEEDED, SKIPPED], True),  # a skipped parent counts as a success
        ("all_success", [SUCCEEDED, CANCELLED], False),  # a cancelled parent counts as a failure
        ("all_failed", [FAILED, CANCELLED], True),
        ("all_failed", [FAILED, SKIPPED], False),
        ("all_done", [FAILED, SUCCEEDED, CANCELLED], True),
        ("one_success", [FAILED, SKIPPED], True),
        ("one_success", [FAILED, CANCELLED], False),
        ("one_failed", [SUCCEEDED, CANCELLED], True),
        ("one_failed", [SUCCEEDED, SKIPPED], False),
        ("one_failed", [], True),  # no parents: the job runs
    ],
)
def test_status_macros_follow_azkaban(macro, parents, expected):
    assert macro_met(macro, parents) is expected


def test_js_coercion_helpers():
    assert js_equal("1", 1) and js_equal("1.0", 1) and not js_equal("1", "1.0")
    assert js_equal(True, 1) and js_equal("", 0)
    assert js_compare(">", "7", 5) and js_compare(">", "7", "50") and not js_compare(">", 7, 50)
    assert not js_compare("<", "abc", 1) and not js_compare(">=", "abc", 1)
