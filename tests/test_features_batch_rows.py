"""transform_rows' columnar path (many rows -> input columns -> vectorised steps) against the row path.

The online service transforms a multi-row request with :meth:`FittedSpec.transform_rows`. From
``COLUMNAR_MIN_ROWS`` rows up it turns the rows into columns once and runs the batch steps; every
row must still carry the exact bits of :meth:`FittedSpec.transform_row` on it, and every bad input
must raise the very error the row path raises (first failing row, first failing feature).
Comparisons are on raw bits (``.view(np.uint32)``).
"""

from __future__ import annotations

import collections
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_ml_provider.ml.features import FeatureSpec, FeatureTypeError, MissingFeatureError, fit
from airflow_ml_provider.ml.features import fitted as fitted_module
from tests.test_features_property import SPEC, frame, tables

FORCE = 1  # COLUMNAR_MIN_ROWS for the tests: the columnar path for any number of rows


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def by_row(fitted, rows) -> np.ndarray:
    return np.vstack([fitted.transform_row(r) for r in rows])


def outcome(fn):
    """The result of ``fn()``, or (type, message) of what it raised."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return (type(exc), str(exc))


class _GetOnly:
    """Has .get like a dict but is no Mapping: the row path refuses it, so must transform_rows."""

    def __init__(self, data):
        self._data = data

    def get(self, key, default=None):
        return self._data.get(key, default)


@pytest.fixture
def force_columnar(monkeypatch):
    monkeypatch.setattr(fitted_module, "COLUMNAR_MIN_ROWS", FORCE)


# --------------------------------------------------------------------------------------------------
# Bit-identity on everything the property test's inputs mix, plus absent keys and odd row types
# --------------------------------------------------------------------------------------------------

# values a JSON request (or a Python caller) may carry beyond the property test's own
extra_values = st.one_of(
    st.integers(-(2**70), 2**70),  # beyond 64 bits: float() of them, or too large
    st.sampled_from([2**53 + 1, -(2**53) - 1, 2**63, 2**64 + 1, 10**308 * 10, True, False]),
    st.sampled_from([np.float32(0.1), np.int64(7), np.float64("nan"), np.bool_(True)]),
    st.sampled_from([{"a": 1}, [1, 2], (3,), b"bytes", "", " ", "1e5", "x"]),
)


@st.composite
def request_rows(draw, min_rows=1, max_rows=40):
    n = draw(st.integers(min_rows, max_rows))
    cols = draw(tables()) if n <= 10 else None
    base = [
        {k: cols[k][i % len(cols["num"])] for k in cols}
        if cols
        else {"num": 1.5, "num2": 2, "cat": "rock", "lst": ["a"]}
        for i in range(n)
    ]
    rows = []
    for r in base:
        r = dict(r)
        for key in ("num", "num2", "cat", "lst"):
            action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "extra"]))
            if action == "drop":
                r.pop(key, None)
            elif action == "extra":
                r[key] = draw(extra_values)
        if draw(st.booleans()):
            r["unused"] = draw(extra_values)
        rows.append(r)
    return rows


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(train=tables(min_rows=2), rows=request_rows())
def test_columnar_rows_equal_row_path_bits_and_errors(train, rows):
    fitted = fit(SPEC, frame(train))
    assert fitted._columnar
    expected = outcome(lambda: by_row(fitted, rows))
    columnar = fitted._transform_columns(rows)
    old = fitted_module.COLUMNAR_MIN_ROWS
    fitted_module.COLUMNAR_MIN_ROWS = FORCE
    try:
        got = outcome(lambda: fitted.transform_rows(rows))
    finally:
        fitted_module.COLUMNAR_MIN_ROWS = old
    if isinstance(expected, tuple):  # the row path refuses a row: the same error, first failing row
        assert got == expected
        return
    # the row path takes every row: the columnar path must take them too, with the same bits
    assert columnar is not None, "the columnar path declined rows the row path accepts"
    assert columnar.dtype == np.float32 and columnar.shape == expected.shape
    np.testing.assert_array_equal(bits(columnar), bits(expected))
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_every_row_kind_gives_the_same_bits(force_columnar):
    df = pd.DataFrame(
        {
            "num": [1.0, 2.0, np.nan, 4.0, 1e9],
            "num2": [1, 2, 3, 4, 5],
            "cat": ["rock", "pop", "rock", "jazz", None],
            "lst": [["a"], ["b", "a"], [], None, ["c"]],
        }
    )
    fitted = fit(SPEC, df)
    rows = [
        {"num": 3, "num2": 2.0, "cat": "rock", "lst": "a|b"},
        collections.OrderedDict(num="7", num2=None, cat=3, lst=("a", None)),
        collections.defaultdict(lambda: "oops", {"num": 1.5}),  # .get: absent keys are missing
        {"num": -0.0, "num2": True, "cat": 3.0, "lst": []},
        {"num": float("inf"), "num2": -1e300, "cat": "", "lst": np.array(["a", "b"], dtype=object)},
    ]
    expected = by_row(fitted, rows)
    np.testing.assert_array_equal(bits(fitted.transform_rows(rows)), bits(expected))
    np.testing.assert_array_equal(bits(fitted.transform_rows(iter(rows))), bits(expected))
    np.testing.assert_array_equal(bits(fitted.transform_rows(tuple(rows))), bits(expected))
    # plain dicts, every key present: the one-pass transpose
    plain = [{"num": float(i), "num2": i, "cat": ["rock", "pop", 7][i % 3], "lst": ["a"]} for i in range(50)]
    np.testing.assert_array_equal(bits(fitted.transform_rows(plain)), bits(by_row(fitted, plain)))


def test_integers_convert_as_the_row_path_does(force_columnar):
    """Python ints near and beyond 2**53 and 2**64 round as float() does; a categorical int keeps
    every digit; True is a bool (key "true"), never the int 1."""
    spec = FeatureSpec.from_yaml(
        """
version: 1
features:
  - {name: n, dtype: numeric}
  - {name: c, dtype: categorical, transforms: [hash_bucket: {buckets: 1000003}]}
  - {name: c1h, column: c, dtype: categorical, transforms: [one_hot: {values: ["1", "true", "3"]}]}
"""
    )
    fitted = fit(spec, pd.DataFrame({"n": [1.0, 2.0], "c": ["1", "2"]}))
    big = [2**53 + 1, 2**53 + 3, 2**63 - 1, 2**63 + 1, 2**64 - 1, 2**64 + 1, 2**70 + 12345, -(2**63) - 1]
    rng = np.random.default_rng(0)
    big += [int(v) << int(s) for v, s in zip(rng.integers(1, 2**62, 40), rng.integers(0, 60, 40))]
    rows = [{"n": v, "c": v} for v in big] + [{"n": True, "c": True}, {"n": 1, "c": 1}, {"n": 3.0, "c": 3.0}]
    got = fitted.transform_rows(rows)
    np.testing.assert_array_equal(bits(got), bits(by_row(fitted, rows)))
    assert [float(v) for v in got[: len(big), 0]] == [float(np.float32(float(v))) for v in big]
    # a categorical column mixing True and 1 (equal in Python) keeps them apart
    mixed = [{"n": 0, "c": True}, {"n": 0, "c": 1}, {"n": 0, "c": 1.0}, {"n": 0, "c": "1"}]
    np.testing.assert_array_equal(bits(fitted.transform_rows(mixed)), bits(by_row(fitted, mixed)))


def test_errors_name_the_first_failing_row_and_feature(force_columnar):
    spec = FeatureSpec.from_yaml(
        """
version: 1
on_missing: default
features:
  - {name: a, dtype: numeric, transforms: [standardize]}
  - {name: b, dtype: numeric, on_missing: error}
  - {name: c, dtype: categorical, transforms: [one_hot]}
  - {name: b_again, column: b, dtype: numeric, transforms: [log1p]}
"""
    )
    fitted = fit(spec, pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1.0], "c": ["x", "y"]}))
    good = [{"a": float(i), "b": 1, "c": "x"} for i in range(30)]
    cases = {
        "absent b": (17, {"a": 1.0, "c": "x"}, MissingFeatureError, "'b'"),
        "text in a": (3, {"a": "lots", "b": 1, "c": "x"}, FeatureTypeError, "'a'"),
        "list in c": (29, {"a": 1.0, "b": 1, "c": [1]}, FeatureTypeError, "'c'"),
        "huge int in b": (0, {"a": 1.0, "b": 10**400, "c": "x"}, FeatureTypeError, "'b'"),
        "row not a mapping": (5, ["a", 1], FeatureTypeError, "mapping"),
        "row with get, not a mapping": (7, _GetOnly({"a": 1.0, "b": 1, "c": "x"}), FeatureTypeError, "mapping"),
    }
    for label, (index, bad, kind, named) in cases.items():
        rows = list(good)
        rows[index] = bad
        with pytest.raises(kind) as raised:
            fitted.transform_rows(rows)
        with pytest.raises(kind) as row_raised:
            fitted.transform_row(bad)
        assert str(raised.value) == str(row_raised.value), label
        assert named in str(raised.value), label
        # the rows before the bad one are fine on their own
        assert fitted._transform_columns(rows[:index] or good) is not None, label
    # an absent key of a feature with on_missing: default is a missing value, not an error
    rows = [dict(good[0], b=2)] + [{"b": 1} for _ in range(10)]
    np.testing.assert_array_equal(bits(fitted.transform_rows(rows)), bits(by_row(fitted, rows)))


def test_custom_transformer_keeps_the_row_path():
    """A custom transformer's transform_batch is its own: transform_rows stays on its row code."""
    spec = FeatureSpec.from_yaml(
        """
version: 1
features:
  - {name: a, dtype: numeric, transforms: ["tests.features_plugin:Winsorize"]}
  - {name: g, dtype: categorical, transforms: ["tests.features_plugin:Reverse", vocabulary]}
"""
    )
    fitted = fit(spec, pd.DataFrame({"a": [1.0, 2.0, 3.0, 9.0], "g": ["ab", "ba", "ab", None]}))
    assert not fitted._columnar
    rows = [{"a": float(i) / 3, "g": ["ab", "ba", "x"][i % 3]} for i in range(20)]
    np.testing.assert_array_equal(bits(fitted.transform_rows(rows)), bits(by_row(fitted, rows)))


def test_many_rows_span_several_blocks(force_columnar):
    rng = np.random.default_rng(3)
    n = fitted_module._BLOCK_ROWS + 1500
    df = pd.DataFrame(
        {
            "num": rng.normal(0, 1e3, n),
            "num2": rng.integers(-5, 5, n),
            "cat": rng.choice(["rock", "pop", "jazz", "ß", ""], n),
            "lst": [["a", "b"][: i % 3] for i in range(n)],
        }
    )
    fitted = fit(SPEC, df.iloc[:500])
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]
    got = fitted.transform_rows(rows)
    assert fitted._transform_columns(rows) is not None
    np.testing.assert_array_equal(bits(got), bits(fitted.transform(df)))
    np.testing.assert_array_equal(bits(got[::97]), bits(by_row(fitted, rows[::97])))


def test_columnar_is_faster_from_the_threshold():
    """The path choice is a speed trade: at 200 rows the columnar path is the faster one."""
    import time

    df = pd.DataFrame({"num": np.arange(200.0), "num2": np.arange(200) % 7, "cat": ["a", "b"] * 100,
                       "lst": [["a"]] * 200})
    fitted = fit(SPEC, df)
    rows = [{"num": float(i), "num2": i % 7, "cat": "ab"[i % 2], "lst": ["a"]} for i in range(200)]
    assert len(rows) >= fitted_module.COLUMNAR_MIN_ROWS

    def best(fn):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(5):
                fn()
            times.append(time.perf_counter() - t)
        return min(times)

    columnar = best(lambda: fitted._transform_columns(rows))
    rowwise = best(lambda: by_row(fitted, rows))
    assert columnar < rowwise, (columnar, rowwise)
