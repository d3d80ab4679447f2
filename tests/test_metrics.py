"""Metrics: scikit-learn where it gives the same numbers, hand-written where measured faster --
each checked against scikit-learn on random data and against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_ml_provider.ml import metrics as M

sk = pytest.importorskip("sklearn.metrics")


def _random_binary(seed, n=2000, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0.001, 0.999)
    if ties:
        s = np.clip(np.round(s, 1), 0.05, 0.95)  # heavy ties between positives and negatives
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_match_sklearn(seed, ties):
    y, s = _random_binary(seed, ties=ties)
    m = M.binary_metrics(y, s, threshold=0.5)
    assert m["auc"] == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    assert m["logloss"] == pytest.approx(sk.log_loss(y, s), rel=1e-12)
    pred = (s >= 0.5).astype(int)
    assert m["precision"] == pytest.approx(sk.precision_score(y, pred))
    assert m["recall"] == pytest.approx(sk.recall_score(y, pred))
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    tn, fp, fn, tp = sk.confusion_matrix(y, pred).ravel()
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    fpr, tpr, _thr = sk.roc_curve(y, s, drop_intermediate=False)
    assert m["ks"] == pytest.approx(float(np.max(tpr - fpr)), abs=1e-12)
    assert (m["ks"], m["ks_threshold"]) == M.ks_statistic(y, s)  # one-sort path == curve path
    # the one-sort path (hand-written, faster) and the scikit-learn functions agree to the last bits
    assert m["auc"] == pytest.approx(M.auc_score(y, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx(M.average_precision(y, s), abs=1e-12)
    # the precision-recall curve: scikit-learn's points, reversed, without its (0 recall, 1) end point
    prec, rec, thr = M.precision_recall_curve(y, s)
    sp, sr, st_ = sk.precision_recall_curve(y, s)
    np.testing.assert_allclose(prec, sp[:-1][::-1], rtol=1e-12)
    np.testing.assert_allclose(rec, sr[:-1][::-1], rtol=1e-12)
    np.testing.assert_array_equal(thr, st_[::-1])
    ofpr, otpr, _ = M.roc_curve(y, s)
    np.testing.assert_allclose(ofpr, fpr)
    np.testing.assert_allclose(otpr, tpr)
    json.dumps(m)  # JSON-ready


def test_auc_ks_logloss_by_hand():
    # pairs (pos, neg): (0.35,0.1)+ (0.35,0.4)- (0.8,0.1)+ (0.8,0.4)+ -> 3/4
    assert M.auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # one tie between a positive and a negative counts one half
    assert M.auc_score([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.auc_score([0, 0, 1, 1], [0.2, 0.6, 0.6, 0.9]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    # KS: thresholds 0.8 -> tpr .5 fpr 0; 0.4 -> tpr .5 fpr .5; 0.35 -> tpr 1 fpr .5 ... max = 0.5
    ks, thr = M.ks_statistic([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert ks == pytest.approx(0.5) and thr == pytest.approx(0.8)
    assert M.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # clipping: a certain mistake costs -log(1e-15), finite
    assert M.log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))


def test_threshold_metrics_by_hand():
    y = [1, 1, 0, 0, 1]
    s = [0.9, 0.4, 0.6, 0.1, 0.5]
    m = M.binary_metrics(y, s, threshold=0.5)  # predicted 1: 0.9, 0.6, 0.5 (>= threshold)
    assert m["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["positive_rate"] == pytest.approx(0.6)
    assert m["predicted_positive_rate"] == pytest.approx(0.6)
    none = M.binary_metrics(y, s, threshold=0.95)  # nothing predicted positive: 0/0 reported as 0
    assert none["precision"] == 0.0 and none["f1"] == 0.0 and none["recall"] == 0.0


def test_single_class_makes_auc_undefined_not_an_error():
    m = M.binary_metrics([1, 1, 1], [0.2, 0.5, 0.9])
    assert m["auc"] is None and m["ks"] is None
    assert "single class" in m["warnings"][0]
    json.dumps(m)


def test_scores_outside_unit_interval_have_no_logloss():
    m = M.binary_metrics([0, 1, 1], [-2.0, 0.5, 3.0])
    assert m["logloss"] is None and m["auc"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1], [0.5], "y_true has 2 rows but y_score has 1"),
        ([0, 2], [0.5, 0.5], r"labels 0/1; found \[2.0\]"),
        ([0, 1], [0.5, float("nan")], "1 NaN/inf values"),
        ([], [], "no rows"),
    ],
)
def test_bad_binary_input(y, s, message):
    with pytest.raises(M.MetricsError, match=message):
        M.binary_metrics(y, s)


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, 1000)
    p = y + rng.normal(0, 1, 1000)
    m = M.regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(math.sqrt(sk.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(sk.r2_score(y, p))
    assert m["mape"] == pytest.approx(sk.mean_absolute_percentage_error(y, p))
    assert m["mape_ignored_zero_targets"] == 0


def test_regression_by_hand_and_zero_targets():
    m = M.regression_metrics([0.0, 2.0, 4.0], [1.0, 1.0, 5.0])
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 3 / 8)
    # zero target ignored: mean(|1-2|/2, |5-4|/4) = (0.5 + 0.25) / 2
    assert m["mape"] == pytest.approx(0.375)
    assert m["mape_ignored_zero_targets"] == 1
    assert "ignores 1 row" in m["warnings"][0]
    assert M.regression_metrics([0.0, 0.0], [1.0, 0.0])["mape"] is None
    # constant target: r2 is 1 for a perfect fit, 0 otherwise (as scikit-learn)
    assert M.regression_metrics([3.0, 3.0], [3.0, 3.0])["r2"] == 1.0
    assert M.regression_metrics([3.0, 3.0], [2.0, 3.0])["r2"] == 0.0


def test_lift_and_gain_by_hand():
    y = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    s = np.linspace(1, 0.1, 10)  # already sorted by score
    t = M.lift_table(y, s, bins=5)
    assert t["fraction"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert t["positive_rate"] == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    assert t["lift"] == pytest.approx([1 / 0.3, 0.5 / 0.3, 0, 0, 0])
    assert t["gain"] == pytest.approx([2 / 3, 1.0, 1.0, 1.0, 1.0])
    assert t["cumulative_lift"][-1] == pytest.approx(1.0)


def test_compute_metrics_dispatch():
    assert M.compute_metrics([0, 1], [0.2, 0.7])["task"] == "binary"
    assert M.compute_metrics([0.5, 1.5], [0.2, 0.7], task="regression")["task"] == "regression"
    with pytest.raises(M.MetricsError, match="unknown task 'ranking'"):
        M.compute_metrics([0, 1], [0, 1], task="ranking")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40))
def test_auc_and_ks_equal_brute_force_on_tied_integer_scores(rows):
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    m = M.binary_metrics(y, s)
    if len(pos) == 0 or len(neg) == 0:
        assert m["auc"] is None and m["ks"] is None
        return
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert m["auc"] == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)
    # KS = max over thresholds t of P(score >= t | 1) - P(score >= t | 0), and 0 at t = +inf
    best = max((pos >= t).mean() - (neg >= t).mean() for t in np.unique(s))
    assert m["ks"] == pytest.approx(max(best, 0.0), abs=1e-12)


def test_hand_written_log_loss_equals_sklearn_on_clipped_probabilities():
    # ours clips at 1e-15 (documented); scikit-learn at the float64 epsilon: clip first, then compare
    rng = np.random.default_rng(3)
    y = (rng.random(5000) < 0.4).astype(int)
    p = rng.random(5000)
    p[:10] = [0.0, 1.0, 1e-300, 1 - 1e-17, 0.5, 1e-16, 1e-15, 1 - 1e-15, 0.999999, 1e-9]
    clipped = np.clip(p, M.LOGLOSS_EPS, 1 - M.LOGLOSS_EPS)
    assert M.log_loss(y, p) == pytest.approx(sk.log_loss(y, clipped), rel=1e-12)
    cm = M.confusion_counts(y, p, threshold=0.3)
    tn, fp, fn, tp = sk.confusion_matrix(y, (p >= 0.3).astype(int), labels=[0, 1]).ravel()
    assert cm == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
