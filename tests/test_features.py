"""Unit tests of the feature library: every transformer's fitted state and output, save/load,
content hash, versions, custom transformers, missing/wrong-typed input, and spec errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from airflow_ml_provider.ml.features import (
    FeatureError,
    FeatureSpec,
    FeatureSpecError,
    FeatureTypeError,
    FittedSpec,
    MissingFeatureError,
    available_transformers,
    fit,
    fit_transform,
    load_fitted,
)

REPO = Path(__file__).resolve().parent.parent


def spec_of(body: str) -> FeatureSpec:
    return FeatureSpec.from_yaml(textwrap.dedent(body))


def one(name: str, transforms: str, dtype: str = "numeric", extra: str = "") -> FeatureSpec:
    return spec_of(
        f"""
        features:
          - name: {name}
            dtype: {dtype}
            transforms: {transforms}
            {extra}
        """
    )


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (a, b)


def rows_of(df: pd.DataFrame) -> list[dict]:
    return df.to_dict("records")


def check_row_path(fitted: FittedSpec, df: pd.DataFrame, X: np.ndarray) -> None:
    assert_bits_equal(fitted.transform_rows(rows_of(df)), X)


def blake(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------------
# numeric transformers
# ---------------------------------------------------------------------------------------------


def test_fill_missing_constant_mean_median():
    x = [1.0, np.nan, 4.0, 10.0, None, np.inf]
    df = pd.DataFrame({"a": x, "b": x, "c": x})
    spec = spec_of(
        """
        features:
          - {name: a, transforms: [fill_missing: {value: -7}]}
          - {name: b, transforms: [fill_missing: {strategy: mean}]}
          - {name: c, transforms: [fill_missing: {strategy: median}]}
        """
    )
    fitted, X = fit_transform(spec, df)
    state = fitted.to_dict()["state"]
    finite = np.array([1.0, 4.0, 10.0])
    assert state[0]["transforms"][0]["state"] == {"value": -7.0}
    assert state[1]["transforms"][0]["state"]["value"] == pytest.approx(finite.mean())
    assert state[2]["transforms"][0]["state"]["value"] == 4.0
    assert_bits_equal(X[:, 0], f32([1, -7, 4, 10, -7, np.inf]))
    assert_bits_equal(X[:, 1], f32([1, 5, 4, 10, 5, np.inf]))
    assert_bits_equal(X[:, 2], f32([1, 4, 4, 10, 4, np.inf]))
    check_row_path(fitted, df, X)


def test_clip_log1p_and_nan_stays_nan():
    x = np.array([-5.0, 0.0, 3.0, 1e6, np.nan, -np.inf, np.inf])
    df = pd.DataFrame({"a": x, "b": x})
    spec = spec_of(
        """
        features:
          - {name: a, transforms: [clip: {min: 0, max: 100}]}
          - {name: b, transforms: [clip: {min: -1}, log1p]}
        """
    )
    fitted, X = fit_transform(spec, df)
    assert_bits_equal(X[:, 0], f32([0, 0, 3, 100, np.nan, 0, 100]))
    with np.errstate(all="ignore"):
        expected_b = np.log1p(np.clip(x, -1, None))
    np.testing.assert_array_max_ulp(
        X[:, 1][np.isfinite(expected_b)], f32(expected_b[np.isfinite(expected_b)]), 1
    )
    assert X[5, 1] == -np.inf and X[6, 1] == np.inf and np.isnan(X[4, 1])
    check_row_path(fitted, df, X)


def test_log1p_matches_numpy_closely_and_is_exact_in_both_paths():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.lognormal(0, 3, 5000), -rng.random(500), [0.0, -0.0, -1.0, -2.0, 1e-300, 1e300]])
    df = pd.DataFrame({"a": x})
    fitted, X = fit_transform(one("a", "[log1p]"), df)
    with np.errstate(all="ignore"):
        ref = np.log1p(x)
    ok = np.isfinite(ref)
    np.testing.assert_array_max_ulp(X[ok, 0], ref[ok].astype(np.float32), 1)
    assert X[x == -1.0, 0][0] == -np.inf and np.isnan(X[x == -2.0, 0][0])
    check_row_path(fitted, df, X)


def test_standardize_state_and_output():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, 1000)
    x[::50] = np.nan
    df = pd.DataFrame({"a": x})
    fitted, X = fit_transform(one("a", "[standardize]"), df)
    finite = x[np.isfinite(x)]
    st = fitted.to_dict()["state"][0]["transforms"][0]["state"]
    assert st["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert st["std"] == pytest.approx(finite.std(), rel=1e-12)
    assert_bits_equal(X[:, 0], ((x - st["mean"]) / st["std"]).astype(np.float32))
    check_row_path(fitted, df, X)


def test_standardize_constant_column_and_fixed_options():
    df = pd.DataFrame({"a": [3.0, 3.0, 3.0], "b": [1.0, 2.0, 3.0]})
    spec = spec_of(
        """
        features:
          - {name: a, transforms: [standardize]}
          - {name: b, transforms: [standardize: {mean: 1, std: 4}]}
        """
    )
    fitted, X = fit_transform(spec, df)
    assert fitted.to_dict()["state"][0]["transforms"][0]["state"] == {"mean": 3.0, "std": 1.0}
    assert_bits_equal(X[:, 0], f32([0, 0, 0]))
    assert_bits_equal(X[:, 1], f32([0, 0.25, 0.5]))


def test_min_max():
    x = np.array([2.0, 4.0, 10.0, np.nan, np.inf])
    df = pd.DataFrame({"a": x})
    fitted, X = fit_transform(one("a", "[min_max]"), df)
    assert fitted.to_dict()["state"][0]["transforms"][0]["state"] == {"min": 2.0, "range": 8.0}
    assert_bits_equal(X[:, 0], f32([0, 0.25, 1, np.nan, np.inf]))
    check_row_path(fitted, df, X)


def test_bucketize_fixed_edges_index_and_one_hot():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 99.0, np.nan])
    df = pd.DataFrame({"a": x, "b": x})
    spec = spec_of(
        """
        features:
          - {name: a, transforms: [bucketize: {edges: [0, 1, 2]}]}
          - {name: b, transforms: [bucketize: {edges: [0, 1, 2], output: one_hot}]}
        """
    )
    fitted, X = fit_transform(spec, df)
    assert_bits_equal(X[:, 0], f32([0, 1, 1, 2, 3, 3, np.nan]))
    assert fitted.feature_names[1:] == ["b=[-inf,0.0)", "b=[0.0,1.0)", "b=[1.0,2.0)", "b=[2.0,inf]"]
    expected = np.zeros((7, 4), dtype=np.float32)
    for r, b in enumerate([0, 1, 1, 2, 3, 3]):
        expected[r, b] = 1
    assert_bits_equal(X[:, 1:], expected)
    check_row_path(fitted, df, X)


def test_bucketize_fitted_quantiles():
    rng = np.random.default_rng(1)
    x = rng.exponential(3, 2000)
    df = pd.DataFrame({"a": x})
    fitted, X = fit_transform(one("a", "[bucketize: {num_buckets: 4}]"), df)
    edges = fitted.to_dict()["state"][0]["transforms"][0]["state"]["edges"]
    assert edges == pytest.approx(list(np.quantile(x, [0.25, 0.5, 0.75])), rel=1e-15)
    assert_bits_equal(X[:, 0], np.searchsorted(edges, x, side="right").astype(np.float32))
    counts = np.bincount(X[:, 0].astype(int))
    assert counts.tolist() == [500, 500, 500, 500]


def test_passthrough_and_numeric_text_parsing():
    df = pd.DataFrame({"a": ["1.5", " 2 ", "", None, "1e3", "nan", "-inf"]})
    fitted, X = fit_transform(one("a", "[passthrough]"), df)
    assert_bits_equal(X[:, 0], f32([1.5, 2, np.nan, np.nan, 1000, np.nan, -np.inf]))
    check_row_path(fitted, df, X)


# ---------------------------------------------------------------------------------------------
# categorical transformers
# ---------------------------------------------------------------------------------------------


def test_vocabulary_top_k_min_frequency_and_oov():
    values = ["b"] * 5 + ["a"] * 5 + ["c"] * 3 + ["d"] * 1 + [None, ""]
    df = pd.DataFrame({"g": values})
    spec = one("g", "[vocabulary: {top_k: 2, min_frequency: 2}]", dtype="categorical")
    fitted = fit(spec, df)
    # most frequent first, ties by value; c (3) dropped by top_k, d (1) by min_frequency
    assert fitted.to_dict()["state"][0]["transforms"][0]["state"] == {"vocabulary": ["a", "b"]}
    X = fitted.transform(pd.DataFrame({"g": ["a", "b", "c", "zzz", None, ""]}))
    assert_bits_equal(X[:, 0], f32([1, 2, 0, 0, 0, 0]))
    assert fitted.feature_names == ["g"]


def test_vocabulary_min_frequency_alone():
    df = pd.DataFrame({"g": ["x"] * 3 + ["y"] * 2 + ["z"]})
    fitted = fit(one("g", "[vocabulary: {min_frequency: 2}]", dtype="categorical"), df)
    assert fitted.to_dict()["state"][0]["transforms"][0]["state"]["vocabulary"] == ["x", "y"]


def test_one_hot_with_several_oov_buckets_uses_stable_hash():
    df = pd.DataFrame({"g": ["rock", "rock", "pop", "jazz"]})
    spec = one("g", "[one_hot: {oov_buckets: 3, top_k: 2}]", dtype="categorical")
    fitted = fit(spec, df)
    assert fitted.feature_names == ["g=<oov0>", "g=<oov1>", "g=<oov2>", "g=rock", "g=jazz"]
    test = pd.DataFrame({"g": ["rock", "jazz", "pop", "blues", "Ärger", None]})
    X = fitted.transform(test)
    expected = np.zeros((6, 5), dtype=np.float32)
    expected[0, 3] = expected[1, 4] = 1
    for r, v in [(2, "pop"), (3, "blues"), (4, "Ärger")]:
        expected[r, blake(v) % 3] = 1  # unseen values: hashed into the OOV buckets
    expected[5, 0] = 1  # missing: the first OOV bucket
    assert_bits_equal(X, expected)
    check_row_path(fitted, test, X)


def test_fixed_vocabulary_needs_no_data():
    df = pd.DataFrame({"g": ["a", "q"]})
    fitted = fit(one("g", "[one_hot: {values: [a, b, 3]}]", dtype="categorical"), df)
    assert fitted.feature_names == ["g=<oov>", "g=a", "g=b", "g=3"]
    X = fitted.transform(pd.DataFrame({"g": ["b", 3, 3.0, "q"]}))
    assert X.argmax(axis=1).tolist() == [2, 3, 3, 0]


def test_categorical_keys_numbers_and_text_agree():
    """3, 3.0 and "3" are one category: an int column with gaps (floats in pandas) still matches."""
    train = pd.DataFrame({"g": [3, 3, 4, None]})  # pandas: float64 with NaN
    fitted = fit(one("g", "[vocabulary]", dtype="categorical"), train)
    assert fitted.to_dict()["state"][0]["transforms"][0]["state"]["vocabulary"] == ["3", "4"]
    assert fitted.transform_row({"g": 3})[0] == fitted.transform_row({"g": "3"})[0] == 1.0
    assert fitted.transform_row({"g": True})[0] == 0.0  # "true": unseen


def test_fill_missing_categorical_and_lowercase():
    df = pd.DataFrame({"g": ["Rock", "ROCK", None, "pop", ""]})
    spec = spec_of(
        """
        features:
          - name: g
            dtype: categorical
            transforms: [lowercase, fill_missing: {strategy: most_frequent}, vocabulary]
          - name: h
            column: g
            dtype: categorical
            transforms: [fill_missing: {value: unknown}, one_hot]
        """
    )
    fitted, X = fit_transform(spec, df)
    state = fitted.to_dict()["state"]
    assert state[0]["transforms"][1]["state"] == {"value": "rock"}
    assert state[0]["transforms"][2]["state"] == {"vocabulary": ["rock", "pop"]}
    assert_bits_equal(X[:, 0], f32([1, 1, 1, 2, 1]))
    assert state[1]["transforms"][1]["state"]["vocabulary"] == ["unknown", "ROCK", "Rock", "pop"]
    check_row_path(fitted, df, X)


def test_hash_bucket_is_blake2b_mod_buckets():
    keys = ["a", "b", "Ünïcode ✓", "12", ""]
    df = pd.DataFrame({"u": keys})
    fitted, X = fit_transform(one("u", "[hash_bucket: {buckets: 1000}]", dtype="categorical"), df)
    expected = [blake(k) % 1000 for k in keys[:4]]
    assert X[:4, 0].astype(int).tolist() == expected
    assert X[4, 0] == fitted.transform_row({"u": None})[0]  # empty text is missing
    check_row_path(fitted, df, X)


def test_hashed_cross_is_order_sensitive_and_stable_across_processes():
    df = pd.DataFrame({"a": ["x", "y", "x", None], "b": [1, 2, 2, 1]})
    spec = spec_of(
        """
        cross_features:
          - {name: ab, inputs: [a, b], transforms: [hashed_cross: {buckets: 1000003}]}
          - {name: ba, inputs: [b, a], transforms: [hashed_cross: {buckets: 1000003}]}
          - {name: ab1h, inputs: [a, b], transforms: [hashed_cross: {buckets: 8, output: one_hot}]}
        """
    )
    fitted, X = fit_transform(spec, df)
    assert len(set(X[:, 0].tolist())) == 4  # distinct pairs, distinct buckets (1M buckets)
    assert X[:, 0].tolist() != X[:, 1].tolist()
    # the documented algorithm, re-implemented: fmix64 chain over the BLAKE2b hashes of the keys
    mask = (1 << 64) - 1

    def fmix(z):
        z ^= z >> 33
        z = (z * 0xFF51AFD7ED558CCD) & mask
        z ^= z >> 33
        z = (z * 0xC4CEB9FE1A85EC53) & mask
        return z ^ (z >> 33)

    def cross(*keys):
        h = 0x9E3779B97F4A7C15
        for k in keys:
            h = fmix(h ^ (0x6D697373696E6721 if k is None else blake(k)))
        return h

    pairs = [("x", "1"), ("y", "2"), ("x", "2"), (None, "1")]
    assert X[:, 0].astype(np.int64).tolist() == [cross(a, b) % 1000003 for a, b in pairs]
    assert X[:, 1].astype(np.int64).tolist() == [cross(b, a) % 1000003 for a, b in pairs]
    assert X[:, 2:].argmax(axis=1).tolist() == [cross(a, b) % 8 for a, b in pairs]
    assert (X[:, 2:].sum(axis=1) == 1).all()
    check_row_path(fitted, df, X)
    # the same numbers in a fresh interpreter with another hash seed (no salted hash())
    code = (
        "import pandas as pd, sys; from airflow_ml_provider.ml.features import FittedSpec;"
        "f = FittedSpec.from_json(sys.stdin.read());"
        "print(f.transform(pd.DataFrame({'a': ['x', 'y', 'x', None], 'b': [1, 2, 2, 1]})).tolist())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=fitted.to_json(),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=True,
    )
    assert json.loads(out.stdout) == X.tolist()


def test_multi_hot_lists_and_separated_text():
    df = pd.DataFrame({"t": [["a", "b"], "a|c", None, [], ["a", None, "zz"], "b|b"]})
    spec = one("t", "[multi_hot: {min_frequency: 2}]", dtype="list")
    fitted, X = fit_transform(spec, df)
    assert fitted.to_dict()["state"][0]["transforms"][0]["state"] == {"vocabulary": ["a", "b"]}
    assert fitted.feature_names == ["t=<oov>", "t=a", "t=b"]
    expected = f32([[0, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert_bits_equal(X, expected)
    check_row_path(fitted, df, X)


def test_multi_hot_custom_separator_and_no_oov():
    df = pd.DataFrame({"t": ["x;y", "y;q"]})
    spec = one("t", "[multi_hot: {values: [x, y], oov_buckets: 0}]", dtype="list", extra='separator: ";"')
    fitted, X = fit_transform(spec, df)
    assert fitted.feature_names == ["t=x", "t=y"]
    assert_bits_equal(X, f32([[1, 1], [0, 1]]))


# ---------------------------------------------------------------------------------------------
# the fitted spec: save/load, hash, inputs, label, pyarrow
# ---------------------------------------------------------------------------------------------

FULL_SPEC = """
version: 1
label: y
item_features:
  - name: price
    transforms: [fill_missing: {value: 0}, clip: {min: 0}, log1p, standardize]
  - name: genre
    dtype: categorical
    transforms: [one_hot: {top_k: 3}]
user_features:
  - name: age
    column: user_age
    transforms: [bucketize: {edges: [18, 30, 50], output: one_hot}]
cross_features:
  - name: genre_x_age
    inputs: [genre, user_age]
    transforms: [hashed_cross: {buckets: 50}]
"""


@pytest.fixture
def train_df() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 300
    return pd.DataFrame(
        {
            "price": rng.lognormal(2, 1, n),
            "genre": rng.choice(["rock", "pop", "jazz", "folk", "metal"], n),
            "user_age": rng.integers(10, 80, n),
            "y": rng.integers(0, 2, n),
        }
    )


def test_save_load_round_trip_and_content_hash(tmp_path, train_df):
    spec = FeatureSpec.from_yaml(FULL_SPEC)
    fitted = fit(spec, train_df)
    path = fitted.save(tmp_path / "sub" / "fitted.json")
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 1
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert doc["content_hash"] == "sha256:" + hashlib.sha256(canonical).hexdigest() == fitted.content_hash
    assert [t["version"] for t in doc["state"][0]["transforms"]] == [1, 1, 1, 1]
    loaded = load_fitted(path)
    assert loaded.content_hash == fitted.content_hash
    assert loaded.feature_names == fitted.feature_names
    assert loaded.input_columns == ["price", "genre", "user_age"]
    assert loaded.label == "y"
    assert_bits_equal(loaded.transform(train_df), fitted.transform(train_df))
    np.testing.assert_array_equal(loaded.labels(train_df), train_df["y"].to_numpy(np.float32))
    # fitting the same data again gives the same hash; different data a different one
    assert fit(spec, train_df).content_hash == fitted.content_hash
    assert fit(spec, train_df.iloc[:100]).content_hash != fitted.content_hash
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_tampered_fitted_spec_is_refused(tmp_path, train_df):
    fitted = fit(FeatureSpec.from_yaml(FULL_SPEC), train_df)
    doc = fitted.to_dict()
    doc["state"][0]["transforms"][3]["state"]["mean"] += 1.0
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FeatureSpecError, match="content hash mismatch") as exc:
        FittedSpec.load(path)
    assert str(path) in str(exc.value)
    path.write_text("{not json")
    with pytest.raises(FeatureSpecError, match="invalid JSON"):
        FittedSpec.load(path)
    with pytest.raises(FeatureSpecError, match="not found"):
        FittedSpec.load(tmp_path / "nope.json")


def test_pyarrow_table_input_gives_the_same_matrix(train_df):
    fitted = fit(FeatureSpec.from_yaml(FULL_SPEC), train_df)
    table = pa.Table.from_pandas(train_df)
    assert_bits_equal(fitted.transform(table), fitted.transform(train_df))
    assert fit(FeatureSpec.from_yaml(FULL_SPEC), table).content_hash == fitted.content_hash


def test_large_batch_spans_several_blocks(train_df):
    big = pd.concat([train_df] * 60, ignore_index=True)  # 18,000 rows: more than one block
    fitted, X = fit_transform(FeatureSpec.from_yaml(FULL_SPEC), big)
    assert X.shape == (18000, len(fitted.feature_names))
    assert X.dtype == np.float32 and X.flags.c_contiguous
    assert_bits_equal(X[::7], fitted.transform_rows(rows_of(big.iloc[::7])))
    assert_bits_equal(X[:300], X[300:600])


def test_transform_rows_empty_and_row_type():
    fitted = fit(one("a", "[standardize]"), pd.DataFrame({"a": [1.0, 2.0]}))
    assert fitted.transform_rows([]).shape == (0, 1)
    with pytest.raises(FeatureTypeError):
        fitted.transform_row(["not", "a", "mapping"])


# ---------------------------------------------------------------------------------------------
# missing input and wrong types
# ---------------------------------------------------------------------------------------------


def test_missing_column_in_batch_names_the_column(train_df):
    fitted = fit(FeatureSpec.from_yaml(FULL_SPEC), train_df)
    with pytest.raises(MissingFeatureError, match="'user_age'") as exc:
        fitted.transform(train_df.drop(columns=["user_age"]))
    assert exc.value.feature == "age" and exc.value.column == "user_age"
    assert isinstance(exc.value, FeatureError) and isinstance(exc.value, ValueError)
    with pytest.raises(MissingFeatureError, match="label column 'y'"):
        fit(FeatureSpec.from_yaml(FULL_SPEC), train_df.drop(columns=["y"]))


def test_on_missing_default_error_and_per_feature_override():
    df = pd.DataFrame({"a": [1.0, 3.0], "b": [1.0, 5.0], "g": ["x", "y"]})
    spec = spec_of(
        """
        on_missing: error
        features:
          - {name: a, transforms: [fill_missing: {value: 2}, standardize]}
          - {name: b, on_missing: default, transforms: [fill_missing: {value: 9}]}
          - {name: g, dtype: categorical, transforms: [one_hot]}
        """
    )
    fitted = fit(spec, df)
    with pytest.raises(MissingFeatureError, match="'a'") as exc:
        fitted.transform_row({"b": 1.0, "g": "x"})
    assert exc.value.feature == "a"
    v = fitted.transform_row({"a": 1.0, "g": "x"})  # b absent: its policy is default -> fill 9
    assert v[1] == 9.0
    relaxed = fit(
        spec_of(
            """
        features:
          - {name: a, transforms: [fill_missing: {value: 2}, standardize]}
          - {name: g, dtype: categorical, transforms: [one_hot]}
        """
        ),
        df,
    )
    # default policy: an absent key is exactly a missing value
    assert_bits_equal(relaxed.transform_row({}), relaxed.transform_row({"a": None, "g": None}))
    assert_bits_equal(
        relaxed.transform_row({}), relaxed.transform(pd.DataFrame({"a": [np.nan], "g": [None]}))[0]
    )
    assert relaxed.transform_row({})[0] == 0.0  # fill 2 = the mean of [1, 3]


def test_wrong_types_raise_feature_type_error():
    df = pd.DataFrame({"a": [1.0, 2.0], "g": ["x", "y"]})
    spec = spec_of(
        """
        features:
          - {name: a, transforms: [standardize]}
          - {name: g, dtype: categorical, transforms: [one_hot]}
        """
    )
    fitted = fit(spec, df)
    with pytest.raises(FeatureTypeError, match="feature 'a'.*'abc'") as exc:
        fitted.transform_row({"a": "abc", "g": "x"})
    assert exc.value.feature == "a"
    with pytest.raises(FeatureTypeError, match="feature 'a'"):
        fitted.transform(pd.DataFrame({"a": ["1.0", "abc"], "g": ["x", "y"]}))
    with pytest.raises(FeatureTypeError, match="feature 'g'") as exc:
        fitted.transform_row({"a": 1.0, "g": {"nested": 1}})
    assert exc.value.feature == "g"
    with pytest.raises(FeatureTypeError, match="feature 'a'"):
        fitted.transform_row({"a": [1, 2], "g": "x"})


def test_empty_table_cannot_be_fitted():
    with pytest.raises(FeatureError, match="empty"):
        fit(one("a", "[standardize]"), pd.DataFrame({"a": pd.Series([], dtype=float)}))


# ---------------------------------------------------------------------------------------------
# custom transformers and versions
# ---------------------------------------------------------------------------------------------


def test_custom_transformer_by_dotted_path(tmp_path):
    df = pd.DataFrame({"a": np.arange(100, dtype=float), "g": ["ab", "cd"] * 50})
    spec = spec_of(
        """
        features:
          - name: a
            transforms: ["tests.features_plugin:Winsorize": {lower: 0.1, upper: 0.9}]
          - name: g
            dtype: categorical
            transforms: ["tests.features_plugin:Reverse", vocabulary]
        """
    )
    fitted, X = fit_transform(spec, df)
    st = fitted.to_dict()["state"][0]["transforms"][0]
    assert st["name"] == "tests.features_plugin:Winsorize" and st["version"] == 1
    assert st["state"] == {"lo": pytest.approx(9.9), "hi": pytest.approx(89.1)}
    assert X[:, 0].min() == np.float32(9.9) and X[:, 0].max() == np.float32(89.1)
    assert fitted.to_dict()["state"][1]["transforms"][1]["state"]["vocabulary"] == ["ba", "dc"]
    check_row_path(fitted, df, X)
    loaded = load_fitted(fitted.save(tmp_path / "f.json"))
    assert loaded.transformer_versions()["g"] == [("tests.features_plugin:Reverse", "3"), ("vocabulary", "1")]


def test_loading_refuses_a_transformer_version_that_is_not_installed(tmp_path, monkeypatch):
    import tests.features_plugin as plugin

    df = pd.DataFrame({"a": np.arange(10, dtype=float)})
    spec = one("a", '["tests.features_plugin:Winsorize"]')
    path = fit(spec, df).save(tmp_path / "f.json")
    monkeypatch.setattr(plugin.Winsorize, "version", 2)
    with pytest.raises(FeatureSpecError) as exc:
        FittedSpec.load(path)
    msg = str(exc.value)
    assert "feature 'a'" in msg and "tests.features_plugin:Winsorize" in msg
    assert "version 1 was used to fit" in msg and "version 2 is installed" in msg
    assert exc.value.feature == "a"


def test_loading_refuses_a_builtin_version_mismatch(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.0]})
    doc = fit(one("a", "[standardize]"), df).to_dict()
    doc["state"][0]["transforms"][0]["version"] = 7
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    doc["content_hash"] = (
        "sha256:"
        + hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        ).hexdigest()
    )
    with pytest.raises(
        FeatureSpecError, match="'standardize' version 7 was used to fit this spec, but version 1"
    ):
        FittedSpec.from_dict(doc)


def test_custom_transformer_through_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "site" / "features_plugin_test-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: features-plugin-test\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[airflow_ml_provider.transformers]\nwinsorize = tests.features_plugin:Winsorize\n"
        "broken = tests.features_plugin:DoesNotExist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "winsorize" in available_transformers()
    df = pd.DataFrame({"a": np.arange(100, dtype=float)})
    fitted, X = fit_transform(one("a", "[winsorize: {upper: 0.5}]"), df)
    assert X[:, 0].max() == np.float32(49.5)
    assert fitted.to_dict()["state"][0]["transforms"][0]["name"] == "winsorize"
    with pytest.raises(FeatureSpecError, match="cannot load transformer 'broken'"):
        one("a", "[broken]")


def test_unknown_transformer_lists_available_ones():
    with pytest.raises(FeatureSpecError) as exc:
        spec_of(
            """
            features:
              - name: price
                transforms:
                  - standardise
            """
        )
    msg = str(exc.value)
    assert "unknown transformer 'standardise'" in msg and "feature 'price'" in msg and "line 5" in msg
    for name in (
        "standardize",
        "log1p",
        "bucketize",
        "vocabulary",
        "hash_bucket",
        "multi_hot",
        "hashed_cross",
    ):
        assert name in msg
    assert exc.value.field == "transforms[0]"


# ---------------------------------------------------------------------------------------------
# spec errors name the feature, the field and the line
# ---------------------------------------------------------------------------------------------

BAD_SPECS = [
    (  # option with the wrong type
        """
        item_features:
          - name: price
            transforms:
              - clip: {min: low}
        """,
        "price",
        "transforms[0].clip.min",
        5,
        "expected a finite number",
    ),
    (
        """
        item_features:
          - name: price
            transforms:
              - log1p
              - clip:
                  min: 0
                  mx: 3
        """,
        "price",
        "transforms[1].clip.mx",
        8,
        "unknown option 'mx'",
    ),
    (
        """
        user_features:
          - name: genre
            dtype: categorical
            transforms: [standardize]
        """,
        "genre",
        "transforms[0]",
        5,
        "takes numeric input",
    ),
    (
        """
        user_features:
          - name: genre
            dtype: categorical
            transforms: [lowercase]
        """,
        "genre",
        "transforms",
        5,
        "end a categorical chain with vocabulary",
    ),
    (
        """
        user_features:
          - name: genre
            dtype: text
        """,
        "genre",
        "dtype",
        4,
        "expected one of numeric, categorical, list",
    ),
    (
        """
        item_features:
          - name: a
          - name: b
            colour: red
        """,
        "b",
        "colour",
        5,
        "unknown field",
    ),
    (
        """
        item_features:
          - name: a
        user_features:
          - name: a
        """,
        "a",
        "name",
        5,
        "duplicate feature name (first defined at line 3)",
    ),
    (
        """
        cross_features:
          - name: x
            inputs: [a]
            transforms: [hashed_cross: {buckets: 10}]
        """,
        "x",
        "inputs",
        4,
        "two or more column names",
    ),
    (
        """
        cross_features:
          - name: x
            inputs: [a, b]
            transforms: [hashed_cross]
        """,
        "x",
        "transforms[0].hashed_cross.buckets",
        5,
        "option 'buckets' is required",
    ),
    (
        """
        item_features:
          - name: p
            transforms: [bucketize: {edges: [3, 1]}]
        """,
        "p",
        "transforms[0].bucketize.edges",
        4,
        "strictly increasing",
    ),
    (
        """
        item_features:
          - name: p
            transforms: [vocabulary: {top_k: 0}]
            dtype: categorical
        """,
        "p",
        "transforms[0].vocabulary.top_k",
        4,
        "at least 1",
    ),
    (
        """
        item_features:
          - name: p
            transforms: [hash_bucket: {buckets: 4, output: one_hot}, standardize]
            dtype: categorical
        """,
        "p",
        "transforms[1]",
        4,
        "no transform can follow",
    ),
    (
        """
        label: y
        item_features:
          - name: y
        """,
        "y",
        "column",
        4,
        "label column 'y' is also an input",
    ),
    (
        """
        item_features:
          - name: p
            on_missing: ignore
        """,
        "p",
        "on_missing",
        4,
        "expected one of default, error",
    ),
]


@pytest.mark.parametrize("body,feature,field,line,fragment", BAD_SPECS)
def test_spec_errors_name_feature_field_and_line(tmp_path, body, feature, field, line, fragment):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    with pytest.raises(FeatureSpecError) as exc:
        FeatureSpec.from_yaml(path)
    err = exc.value
    assert (err.feature, err.field, err.line) == (feature, field, line), str(err)
    msg = str(err)
    assert fragment in msg
    assert f"feature {feature!r}" in msg and f"field {field!r}" in msg and f"line {line}" in msg
    assert str(path) in msg


def test_spec_level_errors():
    with pytest.raises(FeatureSpecError, match=r"line 4: invalid YAML: .*flow sequence started on line 3"):
        spec_of("features:\n  - name: a\n    transforms: [log1p\n")
    with pytest.raises(FeatureSpecError, match="line 2: field 'feature': unknown top-level field"):
        spec_of("version: 1\nfeature: []\n")
    with pytest.raises(FeatureSpecError, match="defines no features"):
        spec_of("version: 1\n")
    with pytest.raises(FeatureSpecError, match="unsupported spec version 2"):
        spec_of("version: 2\nfeatures: [{name: a}]\n")
    with pytest.raises(FeatureSpecError, match="line 3: duplicate key 'name'"):
        spec_of("features:\n  - name: a\n    name: b\n")
    with pytest.raises(FeatureSpecError, match="spec file not found"):
        FeatureSpec.from_yaml(Path("/nonexistent/spec.yaml"))
    with pytest.raises(FeatureSpecError, match="spec file not found"):
        FeatureSpec.from_yaml("conf/features.yml")
    with pytest.raises(
        FeatureSpecError, match="got the text 'features.txt' .a spec file that does not exist"
    ):
        FeatureSpec.from_yaml("features.txt")


def test_spec_defaults_and_normal_form_round_trip():
    spec = spec_of(
        """
        features:
          - name: a
          - name: g
            transforms: [one_hot]
          - name: t
            transforms: [multi_hot]
        """
    )
    assert [f.dtype for f in spec.features] == ["numeric", "categorical", "list"]  # inferred
    assert [t.ref for t in spec.features[0].transforms] == ["passthrough"]
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert math.isnan(
        fit(spec, pd.DataFrame({"a": [None, 1.0], "g": ["x", "y"], "t": ["p", "q"]})).transform_row({})[0]
    )


def test_sparse_output_has_the_same_bits(train_df):
    spec = FeatureSpec.from_yaml(FULL_SPEC)
    fitted, X = fit_transform(spec, train_df)
    train_df = train_df.copy()
    S = fitted.transform(train_df, sparse=True)
    assert S.dtype == np.float32 and S.shape == X.shape and S.has_sorted_indices
    assert_bits_equal(S.toarray(), X)
    # missing bucket values (no hot column) and multi-hot lists (general path)
    df = pd.DataFrame({"a": [1.0, np.nan, 5.0], "t": ["x|y|x", None, "y|q"]})
    spec2 = spec_of(
        """
        features:
          - {name: a, transforms: [bucketize: {edges: [2, 4], output: one_hot}]}
          - {name: n, column: a, transforms: [standardize]}
          - {name: t, dtype: list, transforms: [multi_hot]}
        """
    )
    fitted2, X2 = fit_transform(spec2, df)
    S2 = fitted2.transform(df, sparse=True)
    assert_bits_equal(S2.toarray(), X2)
    assert S2[0].nnz == 1 + 1 + 2  # bucket, number, x and y once each
    S3 = fitted2.transform(df.drop(columns=["t"]).assign(t=["x", "y", "z"]), sparse=True)
    assert_bits_equal(S3.toarray(), fitted2.transform(df.assign(t=["x", "y", "z"])))
    one_spec = spec_of(
        "features:\n  - {name: a, transforms: [bucketize: {edges: [2, 4], output: one_hot}]}\n"
    )
    fitted3, X3 = fit_transform(one_spec, df)
    S4 = fitted3.transform(df, sparse=True)
    assert_bits_equal(S4.toarray(), X3)
    assert S4.nnz == 2  # the NaN row has no entry


def test_pandas_dtypes_and_parquet_lists_agree_with_rows(tmp_path):
    """category, nullable Int64/Float64/boolean, Arrow strings, float32 and Parquet list columns."""
    df = pd.DataFrame(
        {
            "n_int": pd.array([1, None, 3, 4], dtype="Int64"),
            "n_f32": np.array([0.1, np.nan, 2.5, -1e30], dtype=np.float32),
            "n_bool": pd.array([True, None, False, True], dtype="boolean"),
            "c_cat": pd.Categorical(["x", "y", None, "x"]),
            "c_arrow": pd.array(["é", None, "", "ß"], dtype="string[pyarrow]"),
            "c_int": pd.array([7, 8, None, 7], dtype="Int64"),
            "lst": [["a", "b"], [], None, ["b", "c"]],
        }
    )
    spec = spec_of(
        """
        features:
          - {name: n_int, transforms: [fill_missing: {value: 0}, standardize]}
          - {name: n_f32, transforms: [log1p]}
          - {name: n_bool, transforms: [passthrough]}
          - {name: c_cat, transforms: [one_hot]}
          - {name: c_arrow, transforms: [vocabulary: {oov_buckets: 2}]}
          - {name: c_int, transforms: [hash_bucket: {buckets: 13}]}
          - {name: lst, transforms: [multi_hot]}
        cross_features:
          - {name: x, inputs: [c_int, n_int], transforms: [hashed_cross: {buckets: 101}]}
        """
    )
    fitted, X = fit_transform(spec, df)
    # rows as a service would receive them: plain JSON-like Python values
    rows = [
        {
            "n_int": 1,
            "n_f32": float(np.float32(0.1)),
            "n_bool": True,
            "c_cat": "x",
            "c_arrow": "é",
            "c_int": 7,
            "lst": ["a", "b"],
        },
        {"n_int": None, "n_f32": None, "n_bool": None, "c_cat": "y", "c_arrow": None, "c_int": 8, "lst": []},
        {"n_int": 3, "n_f32": 2.5, "n_bool": False, "c_cat": None, "c_arrow": "", "c_int": None, "lst": None},
        {
            "n_int": 4,
            "n_f32": np.float32(-1e30),
            "n_bool": True,
            "c_cat": "x",
            "c_arrow": "ß",
            "c_int": "7",
            "lst": "b|c",
        },
    ]
    assert_bits_equal(fitted.transform_rows(rows), X)
    assert_bits_equal(fitted.transform_rows(rows_of(df)), X)
    path = tmp_path / "d.parquet"
    df.to_parquet(path)
    back = pd.read_parquet(path)
    assert_bits_equal(fitted.transform(back), X)
    assert_bits_equal(fitted.transform(pa.Table.from_pandas(df)), X)


def test_unsupported_values_name_the_feature():
    df = pd.DataFrame({"d": pd.to_datetime(["2024-01-01", "2024-01-02"]), "g": ["a", "b"]})
    spec = one("d", "[vocabulary]", dtype="categorical")
    with pytest.raises(FeatureTypeError, match="feature 'd'"):
        fit(spec, df)
    fitted = fit(one("g", "[vocabulary]", dtype="categorical"), df)
    with pytest.raises(FeatureTypeError, match="feature 'g'"):
        fitted.transform_row({"g": ["a"]})
    num = fit(one("a", "[standardize]"), pd.DataFrame({"a": [1.0, 2.0]}))
    with pytest.raises(FeatureTypeError, match="feature 'a': integer .* too large"):
        num.transform_row({"a": 10**400})


def test_fill_missing_option_errors_and_numeric_text():
    with pytest.raises(FeatureSpecError, match="transforms\\[0\\].fill_missing.value.*must not be empty"):
        one("g", '[fill_missing: {value: ""}, one_hot]', dtype="categorical")
    with pytest.raises(FeatureSpecError, match="fill_missing.value.*must be a number"):
        one("a", "[fill_missing: {value: zero}]")
    with pytest.raises(FeatureSpecError, match="fill_missing.strategy.*needs a numeric input"):
        one("g", "[fill_missing: {strategy: mean}, one_hot]", dtype="categorical")
    with pytest.raises(FeatureSpecError, match="fill_missing.value.*only used with strategy constant"):
        one("a", "[fill_missing: {strategy: mean, value: 1}]")
    fitted = fit(one("a", "[fill_missing: {value: 1e3}]"), pd.DataFrame({"a": [None, 2.0]}))
    assert fitted.transform_row({})[0] == 1000.0  # PyYAML reads 1e3 as text; still a number
    g = fit(
        one("g", "[fill_missing: {value: 7}, one_hot]", dtype="categorical"), pd.DataFrame({"g": [None, "7"]})
    )
    assert g.feature_names == ["g=<oov>", "g=7"]


def test_loading_refuses_a_transformer_that_is_not_installed(tmp_path):
    doc = fit(one("a", '["tests.features_plugin:Winsorize"]'), pd.DataFrame({"a": [1.0, 2.0, 3.0]})).to_dict()
    doc["spec"]["features"][0]["transforms"] = [{"tests.features_plugin:Gone": {}}]
    doc["state"][0]["transforms"][0]["name"] = "tests.features_plugin:Gone"
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    doc["content_hash"] = (
        "sha256:"
        + hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        ).hexdigest()
    )
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FeatureSpecError) as exc:
        FittedSpec.load(path)
    assert "feature 'a'" in str(exc.value) and "has no attribute 'Gone'" in str(exc.value)


def test_row_transform_does_not_scale_with_the_vocabulary():
    """Serving cost must not grow with the number of learned categories (scikit-learn's one-row
    transform rebuilds a lookup over them on every call)."""
    import time

    n = 100_000
    df = pd.DataFrame({"item": [f"item_{i}" for i in range(n)], "x": np.arange(n, dtype=float)})
    spec = spec_of(
        """
        features:
          - {name: item, dtype: categorical, transforms: [vocabulary]}
          - {name: x, transforms: [log1p, standardize]}
        cross_features:
          - {name: ix, inputs: [item, x], transforms: [hashed_cross: {buckets: 1000}]}
        """
    )
    fitted = fit(spec, df)
    rows = [{"item": f"item_{i * 37 % n}", "x": float(i)} for i in range(2000)]
    for r in rows[:200]:
        fitted.transform_row(r)
    times = []
    for r in rows:
        t = time.perf_counter()
        fitted.transform_row(r)
        times.append(time.perf_counter() - t)
    assert np.percentile(times, 50) < 500e-6  # typically ~10 us; a per-call rebuild costs milliseconds
