"""Streamed preprocessing: the fit from mergeable statistics equals the in-memory fit, the transform
by row groups equals the in-memory transform, quantiles beyond the cap stay within the documented
tolerance, and memory does not grow with the number of rows."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_ml_provider.ml.feature_table import read_feature_table
from airflow_ml_provider.ml.features import FeatureError, FeatureSpec, MissingFeatureError, NumericTransformer, fit
from airflow_ml_provider.ml.features.stats import ExactMoments, QuantileSample
from airflow_ml_provider.ml.features.streaming import fit_parquet, transform_parquet

SPEC_YAML = """
version: 1
label: clicked
item_features:
  - {name: n_std, column: num, transforms: [standardize]}
  - {name: n_log, column: num, transforms: [clip: {min: -0.5, max: 1.0e12}, log1p, min_max]}
  - {name: n_bkt, column: num, transforms: [fill_missing: {strategy: median}, bucketize: {num_buckets: 7, output: one_hot}]}
  - {name: n_q, column: num2, transforms: [bucketize: {num_buckets: 10}]}
  - {name: n_edges, column: num, transforms: [bucketize: {edges: [-1, 0, 1.5]}]}
  - {name: n_mean, column: num, transforms: [fill_missing: {strategy: mean}, log1p, standardize]}
  - {name: n_fixed, column: num2, transforms: [standardize: {mean: 1.5, std: 2}, min_max: {min: -3, max: 3}]}
  - {name: n2, column: num2, transforms: [fill_missing: {value: -3}, clip: {max: 10}, standardize]}
user_features:
  - {name: c_vocab, column: cat, dtype: categorical, transforms: [lowercase, vocabulary: {oov_buckets: 3, top_k: 5}]}
  - {name: c_1h, column: cat, dtype: categorical, transforms: [fill_missing: {strategy: most_frequent}, one_hot: {min_frequency: 2}]}
  - {name: c_hash, column: cat, dtype: categorical, transforms: [hash_bucket: {buckets: 7, output: one_hot}]}
  - {name: c_int, column: city_id, dtype: categorical, transforms: [vocabulary: {min_frequency: 3}]}
  - {name: l_multi, column: lst, dtype: list, transforms: [multi_hot: {top_k: 6, oov_buckets: 2}]}
cross_features:
  - {name: x_cat_num, inputs: [cat, num2], transforms: [hashed_cross: {buckets: 97}]}
"""


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    num = rng.lognormal(1.0, 2.0, n) * rng.choice([-1.0, 1.0], n, p=[0.2, 0.8])
    special = rng.random(n)
    num[special < 0.03] = np.nan
    num[(special >= 0.03) & (special < 0.035)] = np.inf
    num[(special >= 0.035) & (special < 0.04)] = -0.0
    num[(special >= 0.04) & (special < 0.042)] = 1e300  # the exact sums must not overflow
    num[(special >= 0.042) & (special < 0.044)] = 5e-324
    num2 = np.round(rng.normal(2.0, 3.0, n), 3)
    num2_mask = rng.random(n) < 0.05
    words = np.array(["Rock", "rock", "pop", "jazz", "", "日本語", "émoji 🎵", "ß", "blues", "folk", "x"], dtype=object)
    cat = words[np.minimum(rng.geometric(0.3, n) - 1, len(words) - 1)]
    cat_mask = rng.random(n) < 0.04
    lst = [list(rng.choice(["a", "b", "c", "d", "e", "f", "g", "h"], rng.integers(0, 4))) for _ in range(n)]
    return pa.table(
        {
            "num": pa.array(num),
            "num2": pa.array(num2, mask=num2_mask),
            "cat": pa.array(cat.tolist(), mask=cat_mask),
            "city_id": pa.array(rng.integers(0, 40, n)),
            "lst": pa.array(lst, type=pa.list_(pa.string())),
            "clicked": pa.array((rng.random(n) < 0.3).astype(np.int8)),
            "user_id": pa.array(np.arange(n, dtype=np.int64) * 11),
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    table = make_table(12_345)
    # a directory of two files with uneven row groups: batches never line up with anything
    split = 7_000
    pq.write_table(table.slice(0, split), tmp / "part-0.parquet", row_group_size=1_111)
    pq.write_table(table.slice(split), tmp / "part-1.parquet", row_group_size=2_500)
    return tmp, table


def test_streamed_fit_equals_the_in_memory_fit(data):
    tmp, table = data
    spec = FeatureSpec.from_yaml(SPEC_YAML)
    in_memory = fit(spec, table.to_pandas())
    for batch_rows in (777, 4096, 100_000):
        streamed = fit_parquet(spec, tmp, batch_rows=batch_rows)
        assert streamed.to_dict() == in_memory.to_dict()
        assert streamed.content_hash == in_memory.content_hash


def test_streamed_transform_equals_the_in_memory_transform_and_the_row_path(data, tmp_path):
    tmp, table = data
    spec = FeatureSpec.from_yaml(SPEC_YAML)
    fitted = fit_parquet(spec, tmp, batch_rows=1000)
    out = tmp_path / "features.parquet"
    n = transform_parquet(fitted, tmp, out, keep_columns=["user_id", "lst"], batch_rows=1000)
    assert n == table.num_rows
    assert pq.ParquetFile(out).metadata.num_row_groups == 13  # one per batch (7 + 6)
    ds = read_feature_table(out)
    df = table.to_pandas()
    expected = fitted.transform(df)
    assert ds.X.view(np.uint32).tobytes() == expected.view(np.uint32).tobytes()  # bit for bit
    assert ds.feature_names == fitted.feature_names
    np.testing.assert_array_equal(ds.y, df["clicked"].to_numpy(np.float32))
    np.testing.assert_array_equal(ds.extra["user_id"], df["user_id"].to_numpy())
    assert ds.extra["lst"][3] == list(df["lst"][3])
    rows = df.drop(columns=["clicked"]).to_dict("records")
    for i in (0, 1, 2, 999, 1000, 5000, n - 1):
        assert fitted.transform_row(rows[i]).view(np.uint32).tobytes() == ds.X[i].view(np.uint32).tobytes()


def test_quantiles_beyond_the_cap_stay_within_the_documented_tolerance(tmp_path):
    rng = np.random.default_rng(7)
    n, cap, buckets = 200_000, 5_000, 10
    x = rng.gamma(2.0, 3.0, n)
    pq.write_table(pa.table({"v": x}), tmp_path / "q.parquet", row_group_size=30_000)
    spec = FeatureSpec.from_yaml(
        "version: 1\nitem_features:\n  - {name: b, column: v, transforms: [bucketize: {num_buckets: 10}]}\n"
        "  - {name: m, column: v, transforms: [fill_missing: {strategy: median}]}\n"
    )
    exact = fit(spec, pd.DataFrame({"v": x})).to_dict()["state"]
    sampled = fit_parquet(spec, tmp_path / "q.parquet", batch_rows=10_000, quantile_cap=cap).to_dict()["state"]
    edges = sampled[0]["transforms"][0]["state"]["edges"]
    assert len(edges) == buckets - 1
    assert edges != exact[0]["transforms"][0]["state"]["edges"]  # really sampled
    tolerance = 5 * 0.5 / math.sqrt(cap)  # 5 standard deviations of the rank (docs/features.md)
    xs = np.sort(x)
    for i, e in enumerate(edges, start=1):
        rank = np.searchsorted(xs, e) / n
        assert abs(rank - i / buckets) <= tolerance, (i, rank)
    median = sampled[1]["transforms"][0]["state"]["value"]
    assert abs(np.searchsorted(xs, median) / n - 0.5) <= tolerance
    # at or under the cap the same sample statistic is exact
    assert fit_parquet(spec, tmp_path / "q.parquet", quantile_cap=n).to_dict()["state"] == exact


def test_reservoir_is_reproducible_and_exact_under_the_cap():
    x = np.random.default_rng(1).normal(size=50_000)
    a, b = QuantileSample(1000), QuantileSample(1000)
    for part in np.array_split(x, 7):
        a.update(part)
    for part in np.array_split(x, 3):
        b.update(part)
    assert not a.exact and len(a.values()) == 1000
    assert set(a.values().tolist()) <= set(x.tolist())
    c = QuantileSample(50_000)
    for part in np.array_split(x, 9):
        c.update(part)
    assert c.exact
    np.testing.assert_array_equal(c.quantiles([0.1, 0.5, 0.9]), np.quantile(x, [0.1, 0.5, 0.9]))


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(finite, st.sampled_from([0.0, -0.0, 5e-324, -1.7e308, 1.7e308, 0.1, 1e-310])),
                min_size=1, max_size=60), st.integers(1, 9))
def test_exact_moments_are_the_correctly_rounded_mean_and_std(values, parts):
    x = np.array(values, dtype=np.float64)
    acc = ExactMoments()
    for part in np.array_split(x, parts):
        acc.update(part)
    exact = [Fraction(v) for v in values]
    n = len(values)
    mean = sum(exact) / n
    assert acc.mean() == float(mean)
    var = sum(v * v for v in exact) / n - mean * mean
    if var == 0:
        assert acc.std() == 0.0
    else:
        # correctly rounded: the true std lies within half an ulp of the result
        s = acc.std()
        lo, hi = Fraction(s) - Fraction(math.ulp(s)) / 2, Fraction(s) + Fraction(math.ulp(s)) / 2
        assert lo * lo <= var <= hi * hi


def test_custom_transformer_without_streaming_support_is_fitted_on_the_joined_batches(tmp_path):
    table = make_table(3000, seed=3)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=500)
    spec = FeatureSpec.from_yaml(
        "version: 1\nitem_features:\n"
        "  - {name: c, column: num2, transforms: [tests.test_features_streaming:CenterByMax]}\n"
    )
    assert fit_parquet(spec, tmp_path / "t.parquet", batch_rows=300).to_dict() == fit(spec, table).to_dict()


class CenterByMax(NumericTransformer):
    """A custom transformer with ``fit`` only (no begin_fit / partial_fit / finish_fit)."""

    name = "center_by_max"
    version = 1

    def fit(self, x):
        f = x[np.isfinite(x)]
        self._max = float(f.max()) if len(f) else 0.0
        self._n = len(x)

    def get_state(self):
        return {"max": self._max, "n": self._n}

    def set_state(self, state):
        self._max, self._n = state["max"], state["n"]

    def transform_batch(self, x):
        return x - self._max


def test_memory_does_not_grow_with_the_rows(tmp_path):
    spec = FeatureSpec.from_yaml(SPEC_YAML)
    peaks = {}
    for n in (10_000, 80_000):
        src = tmp_path / f"in{n}.parquet"
        pq.write_table(make_table(n, seed=n), src, row_group_size=4_000)
        tracemalloc.start()
        fitted = fit_parquet(spec, src, batch_rows=4_000, quantile_cap=2_000)
        transform_parquet(fitted, src, tmp_path / f"out{n}.parquet", batch_rows=4_000)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 8x the rows; numpy and Python allocations (tracemalloc sees both) stay about the same
    assert peaks[80_000] < 1.5 * peaks[10_000], peaks


def test_bad_input_is_named(tmp_path):
    spec = FeatureSpec.from_yaml(SPEC_YAML)
    pq.write_table(make_table(50).drop_columns(["num2"]), tmp_path / "no_num2.parquet")
    with pytest.raises(MissingFeatureError, match="'num2'"):
        fit_parquet(spec, tmp_path / "no_num2.parquet")
    pq.write_table(make_table(50).slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(FeatureError, match="empty table"):
        fit_parquet(spec, tmp_path / "empty.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(FeatureError, match="junk.parquet: not a readable Parquet file"):
        fit_parquet(spec, tmp_path / "junk.parquet")
    fitted = fit_parquet(spec, _write(tmp_path / "ok.parquet", make_table(100)))
    with pytest.raises(MissingFeatureError, match=r"keep_columns \['nope'\]"):
        transform_parquet(fitted, tmp_path / "ok.parquet", tmp_path / "o.parquet", keep_columns=["nope"])
    assert not (tmp_path / "o.parquet").exists()


def _write(path, table):
    pq.write_table(table, path)
    return path


def test_cli_fits_and_transforms_a_parquet_directory_in_batches(data, tmp_path, capsys):
    from airflow_ml_provider.cli import main
    from airflow_ml_provider.ml.features import FittedSpec

    src, table = data
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC_YAML)
    fitted_path, out = tmp_path / "fitted.json", tmp_path / "wide.parquet"
    assert main(["features", "fit", "--spec", str(spec_path), "--data", str(src), "--out", str(fitted_path)]) == 0
    assert f"on {table.num_rows} rows" in capsys.readouterr().out
    fitted = FittedSpec.load(fitted_path)
    df = table.to_pandas()
    assert fitted.content_hash == fit(FeatureSpec.from_yaml(SPEC_YAML), df).content_hash
    assert main(["features", "transform", "--fitted", str(fitted_path), "--data", str(src), "--out", str(out)]) == 0
    wide = pq.read_table(out)
    assert pq.ParquetFile(out).metadata.num_row_groups >= 2  # written batch by batch
    matrix = np.column_stack([wide.column(c).to_numpy() for c in fitted.feature_names])
    assert matrix.view(np.uint32).tobytes() == fitted.transform(df).view(np.uint32).tobytes()
    np.testing.assert_array_equal(wide.column("clicked").to_numpy(), df["clicked"].to_numpy())
