"""Property test: the batch transform and the row transform give bit-identical float32 numbers.

Inputs mix missing values (None, NaN, absent keys), +-inf, huge and tiny numbers, numeric text,
unseen categories, empty strings, non-ASCII text, booleans and lists; the spec uses every built-in
transformer. The comparison is on the raw bits (``.view(np.uint32)``), so NaN == NaN and 0.0 != -0.0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_ml_provider.ml.features import FeatureSpec, fit

SPEC = FeatureSpec.from_yaml(
    """
version: 1
on_missing: default
item_features:
  - {name: n_std, column: num, transforms: [standardize]}
  - {name: n_log, column: num, transforms: [clip: {min: -0.5, max: 1.0e12}, log1p, min_max]}
  - {name: n_bkt, column: num, transforms: [fill_missing: {strategy: median}, bucketize: {num_buckets: 5, output: one_hot}]}
  - {name: n_edges, column: num, transforms: [bucketize: {edges: [-1, 0, 1.5]}]}
  - {name: n_mean, column: num, transforms: [fill_missing: {strategy: mean}, log1p, standardize]}
  - {name: n_pass, column: num, transforms: [passthrough]}
  - {name: n2, column: num2, transforms: [fill_missing: {value: -3}, clip: {max: 10}, standardize]}
user_features:
  - {name: c_vocab, column: cat, dtype: categorical, transforms: [lowercase, vocabulary: {oov_buckets: 3, top_k: 5}]}
  - {name: c_1h, column: cat, dtype: categorical, transforms: [fill_missing: {strategy: most_frequent}, one_hot: {min_frequency: 2}]}
  - {name: c_hash, column: cat, dtype: categorical, transforms: [hash_bucket: {buckets: 7, output: one_hot}]}
  - {name: c_const, column: cat, dtype: categorical, transforms: [fill_missing: {value: "é"}, hash_bucket: {buckets: 1000}]}
  - {name: l_multi, column: lst, dtype: list, transforms: [multi_hot: {top_k: 6, oov_buckets: 2}]}
cross_features:
  - {name: x_cat_num, inputs: [cat, num2], transforms: [hashed_cross: {buckets: 97}]}
  - {name: x_1h, inputs: [num2, cat], transforms: [hashed_cross: {buckets: 5, output: one_hot}]}
"""
)

floats = st.floats(allow_nan=True, allow_infinity=True)
numbers = st.one_of(
    st.none(),
    floats,
    st.integers(-(2**64), 2**64),
    st.sampled_from([0.0, -0.0, 1e-310, 5e-324, 1e308, -1.0, -0.9999999999999999, 0.5]),
)
numeric_text = st.sampled_from(["", " 1.5", "nan", "-inf", "3", "1e3", "  ", "٣"])
categories = st.one_of(
    st.none(),
    st.text(max_size=6),  # includes "" and any Unicode (non-ASCII) character
    st.sampled_from(["rock", "Rock", "ROCK", "pop", "ß", "İstanbul", "日本語", "émoji 🎵", ""]),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
lists = st.one_of(
    st.none(),
    st.lists(
        st.one_of(
            st.sampled_from(["a", "b", "ç", "", "d"]), st.text(max_size=3), st.none(), st.integers(0, 3)
        ),
        max_size=4,
    ),
    st.text(max_size=8),  # "|"-separated text
)


@st.composite
def tables(draw, min_rows=1):
    n = draw(st.integers(min_rows, 10))
    num_kind = draw(st.sampled_from(["numbers", "with_text", "floats"]))
    if num_kind == "numbers":
        num = draw(st.lists(numbers, min_size=n, max_size=n))
    elif num_kind == "floats":
        num = draw(st.lists(floats, min_size=n, max_size=n))
    else:
        num = draw(st.lists(st.one_of(numbers, numeric_text), min_size=n, max_size=n))
    return {
        "num": num,
        "num2": draw(
            st.lists(
                st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([0.5, np.nan])),
                min_size=n,
                max_size=n,
            )
        ),
        "cat": draw(st.lists(categories, min_size=n, max_size=n)),
        "lst": draw(st.lists(lists, min_size=n, max_size=n)),
    }


def frame(cols: dict) -> pd.DataFrame:
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in cols.items()})
    # let pandas infer column types as it would for loaded data (float64, int64, str, object)
    return df.infer_objects()


def rows(cols: dict) -> list[dict]:
    n = len(cols["num"])
    return [{k: cols[k][i] for k in cols} for i in range(n)]


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(train=tables(min_rows=2), serve=tables())
def test_batch_and_row_transforms_agree_bit_for_bit(train, serve):
    fitted = fit(SPEC, frame(train))
    batch = fitted.transform(frame(serve))
    assert batch.dtype == np.float32 and batch.shape == (len(serve["num"]), len(fitted.feature_names))
    serve_rows = rows(serve)
    by_rows = fitted.transform_rows(serve_rows)
    np.testing.assert_array_equal(bits(batch), bits(by_rows))
    for i, r in enumerate(serve_rows):
        np.testing.assert_array_equal(bits(fitted.transform_row(r)), bits(batch[i]))
    # the sparse output holds the same numbers
    np.testing.assert_array_equal(bits(fitted.transform(frame(serve), sparse=True).toarray()), bits(batch))
    # on_missing: default -> an absent key is the same as a missing value
    absent = [{k: v for k, v in r.items() if v is not None} for r in serve_rows]
    np.testing.assert_array_equal(bits(fitted.transform_rows(absent)), bits(batch))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=tables(min_rows=2))
def test_fit_is_deterministic_and_survives_json(train):
    a = fit(SPEC, frame(train))
    b = type(a).from_json(a.to_json())
    assert a.content_hash == b.content_hash
    df = frame(train)
    np.testing.assert_array_equal(bits(a.transform(df)), bits(b.transform(df)))
