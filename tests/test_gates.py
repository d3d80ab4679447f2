"""Quality gates: thresholds (min/max) and champion/challenger, with human-readable reasons."""

from __future__ import annotations

import pytest

from airflow_ml_provider.ml.gates import GateConfigError, evaluate_gates, parse_thresholds

METRICS = {"task": "binary", "auc": 0.61, "ks": 0.3, "logloss": 0.55, "f1": 0.4}


def test_minimum_failure_reason_reads_like_a_sentence():
    r = evaluate_gates(METRICS, {"auc": 0.70})
    assert not r.passed and not r
    assert r.reasons == ["auc 0.61 < minimum 0.7"]
    assert evaluate_gates(METRICS, {"auc": 0.60, "ks": "0.25"}).passed  # numeric strings (Variables)


def test_loss_metrics_use_maximums_or_le_suffix():
    assert evaluate_gates(METRICS, {"logloss<=": 0.6}).passed
    r = evaluate_gates(METRICS, {"logloss<=": 0.5})
    assert r.reasons == ["logloss 0.55 > maximum 0.5"]
    r = evaluate_gates(METRICS, None, maximums={"logloss": 0.5})
    assert r.reasons == ["logloss 0.55 > maximum 0.5"]
    with pytest.raises(GateConfigError, match="'logloss' is a loss .* write 'logloss<='"):
        evaluate_gates(METRICS, {"logloss": 0.5})


def test_strict_operators_and_all_failures_listed():
    r = evaluate_gates(METRICS, {"auc>": 0.61, "f1": 0.5, "ks": 0.1})
    assert r.reasons == ["auc 0.61 <= strict minimum 0.61", "f1 0.4 < minimum 0.5"]
    assert any(c.startswith("ok   ks 0.3") for c in r.checks)


def test_json_text_thresholds_as_stored_in_a_variable():
    r = evaluate_gates(METRICS, '{"auc": 0.5, "logloss<=": 0.7}')
    assert r.passed and len(r.checks) == 3  # two thresholds + "no champion" note
    assert evaluate_gates(METRICS, "").passed


def test_missing_or_undefined_metric_fails_with_name():
    r = evaluate_gates(METRICS, {"acu": 0.5})
    assert not r.passed and "acu is not among the metrics (available: auc, f1, ks, logloss)" in r.reasons[0]
    r = evaluate_gates({"auc": None}, {"auc": 0.5})
    assert not r.passed and r.reasons[0].startswith("auc is undefined")


def test_champion_challenger_higher_is_better():
    r = evaluate_gates({"auc": 0.70}, None, {"auc": 0.72}, "auc", 0.0)
    assert r.reasons == ["challenger auc 0.7 does not beat champion 0.72"]
    assert evaluate_gates({"auc": 0.73}, None, {"auc": 0.72}, "auc", 0.0).passed
    r = evaluate_gates({"auc": 0.72}, None, {"auc": 0.72}, "auc", 0.0)  # a tie does not publish by default
    assert r.reasons == ["challenger auc 0.72 ties champion 0.72 (a tie does not publish; set publish_on_tie to allow it)"]
    assert evaluate_gates({"auc": 0.72}, None, {"auc": 0.72}, "auc", 0.0, allow_tie=True).passed
    r = evaluate_gates({"auc": 0.725}, None, {"auc": 0.72}, "auc", 0.01)
    assert r.reasons == ["challenger auc 0.725 does not improve on champion 0.72 by more than 0.01"]
    assert evaluate_gates({"auc": 0.715}, None, {"auc": 0.72}, "auc", -0.01).passed  # tolerance


def test_champion_challenger_lower_is_better_and_defaults():
    assert evaluate_gates({"logloss": 0.40}, None, {"logloss": 0.45}, "logloss").passed
    r = evaluate_gates({"logloss": 0.50}, None, {"logloss": 0.45}, "logloss")
    assert r.reasons == ["challenger logloss 0.5 does not beat champion 0.45 (lower is better)"]
    # compare_on defaults: auc for binary, rmse for regression
    assert not evaluate_gates({"task": "regression", "rmse": 2.0}, None, {"rmse": 1.0}).passed
    assert not evaluate_gates({"auc": 0.6}, None, {"auc": 0.7}).passed
    # explicit direction wins over the name
    assert evaluate_gates({"score": 1.0}, None, {"score": 2.0}, "score", higher_is_better=False).passed


def test_no_champion_or_champion_without_metric_skips_comparison():
    r = evaluate_gates({"auc": 0.8}, {"auc": 0.7}, None, "auc")
    assert r.passed and any("no champion" in c for c in r.checks)
    r = evaluate_gates({"auc": 0.8}, None, {"rmse": 1.0}, "auc")
    assert r.passed and any("champion has no auc" in c for c in r.checks)
    r = evaluate_gates({"rmse": 0.8}, None, {"auc": 0.7}, "auc")
    assert not r.passed and r.reasons == ["challenger has no auc to compare with the champion"]


def test_thresholds_and_champion_combine():
    r = evaluate_gates({"auc": 0.65}, {"auc": 0.7}, {"auc": 0.72}, "auc", 0.0)
    assert r.reasons == ["auc 0.65 < minimum 0.7", "challenger auc 0.65 does not beat champion 0.72"]
    assert r.to_dict()["passed"] is False


@pytest.mark.parametrize(
    ("minimums", "message"),
    [
        ({"auc": "high"}, "minimums: 'auc' must be a number, got 'high'"),
        ({"auc": True}, "'auc' must be a number"),
        ({"auc >= x": 1}, "cannot parse key 'auc >= x'"),
        ("{not json", "minimums: not valid JSON"),
        ([("auc", 1)], "expected a mapping"),
    ],
)
def test_bad_threshold_config_names_the_key(minimums, message):
    with pytest.raises(GateConfigError, match=message):
        parse_thresholds(minimums)


def test_parse_thresholds_normalises():
    assert parse_thresholds({"auc": 0.7, "rmse<": "2"}, {"mae": 1}) == [
        ("auc", ">=", 0.7),
        ("rmse", "<", 2.0),
        ("mae", "<=", 1.0),
    ]
    with pytest.raises(GateConfigError, match="maximums: cannot parse key 'auc>='"):
        parse_thresholds(None, {"auc>=": 1})


def test_tie_semantics_strictly_better_by_default():
    # an identical re-run: the same metric to the last bit
    same = {"auc": 0.8123456789, "logloss": 0.41}
    assert not evaluate_gates(same, None, dict(same), "auc").passed
    assert not evaluate_gates(same, None, dict(same), "logloss").passed
    assert evaluate_gates(same, None, dict(same), "auc", allow_tie=True).passed
    assert evaluate_gates(same, None, dict(same), "logloss", allow_tie=True).passed
    # the smallest real improvement passes without allow_tie
    better = {"auc": 0.8123456789 + 1e-9}
    assert evaluate_gates(better, None, same, "auc").passed
    # with a margin: exactly the margin is a tie with the bar
    assert not evaluate_gates({"auc": 0.75}, None, {"auc": 0.5}, "auc", 0.25).passed
    assert evaluate_gates({"auc": 0.75}, None, {"auc": 0.5}, "auc", 0.25, allow_tie=True).passed
    # a tolerance still lets a slightly worse challenger through, and a tie
    assert evaluate_gates(same, None, dict(same), "auc", -0.01).passed
