"""The Parquet feature-table format: round trip, zero-copy read, atomic write, clear errors."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from airflow_ml_provider.ml import feature_table as ft
from airflow_ml_provider.ml.feature_table import (
    Dataset,
    FeatureTableError,
    read_feature_names,
    read_feature_table,
    table_to_dataset,
    write_feature_table,
)


def _data(n=500, d=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[3 % n, min(2, d - 1)] = np.nan  # missing values survive as NaN
    X[4 % n, 0] = np.inf
    y = (rng.random(n) < 0.3).astype(np.float32)
    return X, y


def test_round_trip_features_label_names_and_extra_columns(tmp_path):
    X, y = _data()
    names = [f"feat_{i}" for i in range(X.shape[1])]
    extra = {
        "user_id": np.arange(len(X), dtype=np.int64) * 7,
        "city": np.array(["北京", "", "Zürich", "x"] * (len(X) // 4) + ["y"] * (len(X) % 4), dtype=object),
        "history": [[f"a{i}", f"b{i % 3}"] for i in range(len(X))],
    }
    path = write_feature_table(tmp_path / "train.parquet", X, y, names, extra)
    ds = read_feature_table(path)
    assert ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.X.shape == X.shape
    np.testing.assert_array_equal(ds.X, X)  # NaN == NaN positions, inf kept
    assert np.isnan(ds.X[3, 2]) and np.isinf(ds.X[4, 0])
    np.testing.assert_array_equal(ds.y, y)
    assert ds.feature_names == names
    np.testing.assert_array_equal(ds.extra["user_id"], extra["user_id"])
    assert list(ds.extra["city"]) == list(extra["city"])
    assert ds.extra["history"][5] == ["a5", "b2"]
    assert read_feature_names(path) == names


def test_layout_is_one_fixed_size_list_float32_column_with_names_in_schema_metadata(tmp_path):
    X, y = _data(n=50, d=4)
    path = write_feature_table(tmp_path / "t.parquet", X, y, list("abcd"))
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    ftype = schema.field("features").type
    assert pa.types.is_fixed_size_list(ftype) and ftype.list_size == 4  # 4 float32 per row
    assert ftype.value_type == pa.float32() and not ftype.value_field.nullable
    row7 = pf.read().column("features")[7].as_py()
    assert np.array_equal(np.asarray(row7, np.float32), X[7], equal_nan=True)
    assert schema.field("label").type == pa.float32()
    meta = json.loads(schema.metadata[ft.METADATA_KEY])
    assert meta["feature_names"] == list("abcd") and meta["format_version"] == ft.FORMAT_VERSION
    assert pf.metadata.num_row_groups == 1


def test_read_is_zero_copy_view_of_the_decoded_arrow_buffer(tmp_path):
    X, y = _data(n=20_000, d=16)
    path = write_feature_table(tmp_path / "t.parquet", X, y)
    table = pq.ParquetFile(path).read()
    data = table.column("features").chunk(0).values.buffers()[1]  # the FixedSizeList's float32 child
    tracemalloc.start()
    ds = table_to_dataset(table)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # X points at the very buffer Arrow decoded into...
    assert ds.X.ctypes.data == data.address
    assert not ds.X.flags.owndata  # a view: the buffer stays owned by Arrow
    assert not ds.X.flags.owndata
    # ...and building the Dataset allocated nothing close to the matrix size (1.28 MB).
    assert peak < X.nbytes / 20, peak
    np.testing.assert_array_equal(ds.X, X)


def test_many_row_groups_still_read_correctly(tmp_path):
    X, y = _data(n=1003, d=5)
    path = write_feature_table(tmp_path / "t.parquet", X, y, row_group_size=100)
    assert pq.ParquetFile(path).metadata.num_row_groups == 11
    ds = read_feature_table(path)
    np.testing.assert_array_equal(ds.X, X)
    assert ds.X.flags.c_contiguous


def test_unlabelled_table_and_column_selection(tmp_path):
    X, _ = _data(n=30, d=3)
    path = write_feature_table(
        tmp_path / "t.parquet", X, None, extra_columns={"a": np.arange(30), "b": np.ones(30)}
    )
    ds = read_feature_table(path, columns=["b"])
    assert ds.y is None
    assert set(ds.extra) == {"b"}
    with pytest.raises(FeatureTableError, match=r"no column\(s\) \['zz'\]"):
        read_feature_table(path, columns=["zz"])


def test_zero_feature_table_carries_sentences(tmp_path):
    sentences = [["1", "2", "3"], ["2", "4"], []]
    ds = Dataset.from_sentences(sentences)
    path = write_feature_table(tmp_path / "s.parquet", ds.X, None, extra_columns=ds.extra)
    back = read_feature_table(path)
    assert back.X.shape == (3, 0)
    assert [list(s) for s in back.extra["sentences"]] == sentences


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    X, y = _data(n=40, d=3)
    path = tmp_path / "t.parquet"
    write_feature_table(path, X, y)
    before = path.read_bytes()
    real = pq.write_table

    def half_then_fail(table, where, **kw):
        real(table.slice(0, 5), where, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_feature_table(path, X * 2, y)
    assert path.read_bytes() == before  # old table intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # no temp file left


def test_write_to_file_uri_and_fsspec_filesystem(tmp_path):
    import fsspec

    X, y = _data(n=10, d=2)
    write_feature_table(f"file://{tmp_path}/u.parquet", X, y)
    np.testing.assert_array_equal(read_feature_table(f"file://{tmp_path}/u.parquet").X, X)
    fs = fsspec.filesystem("memory")
    write_feature_table("/h6/m.parquet", X, y, filesystem=fs)
    np.testing.assert_array_equal(read_feature_table("/h6/m.parquet", filesystem=fs).y, y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"X": np.zeros(5)}, "X must be 2-D"),
        ({"X": np.zeros((5, 2)), "feature_names": ["a"]}, "1 feature names for 2 feature columns"),
        ({"X": np.zeros((5, 2)), "feature_names": ["a", "a"]}, "duplicate feature names: \\['a'\\]"),
        ({"X": np.zeros((5, 2)), "y": np.zeros(4)}, "label must be 1-D with 5 rows"),
        ({"X": np.zeros((5, 2)), "y": np.array(list("abcde"))}, "label must be numeric"),
        ({"X": np.zeros((5, 2)), "extra_columns": {"label": np.zeros(5)}}, "'label' is reserved"),
        ({"X": np.zeros((5, 2)), "extra_columns": {"uid": np.zeros(3)}}, "'uid' has 3 rows, X has 5"),
        ({"X": np.array([["a", "b"]])}, "X must be numeric"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(tmp_path, kwargs, message):
    path = tmp_path / "bad.parquet"
    with pytest.raises(FeatureTableError, match=message):
        write_feature_table(path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_reading_something_else_names_the_file(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), plain)
    with pytest.raises(FeatureTableError, match=r"plain.parquet: not a feature table"):
        read_feature_table(plain)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(FeatureTableError, match=r"junk.parquet: not a Parquet file"):
        read_feature_table(junk)
    with pytest.raises(FeatureTableError, match=r"missing.parquet: feature table not found"):
        read_feature_table(tmp_path / "missing.parquet")


def test_future_format_version_is_refused(tmp_path):
    X, y = _data(n=5, d=2)
    table = ft.build_feature_table(X, y)
    meta = json.loads(table.schema.metadata[ft.METADATA_KEY])
    meta["format_version"] = 99
    pq.write_table(table.replace_schema_metadata({ft.METADATA_KEY: json.dumps(meta)}), tmp_path / "v.parquet")
    with pytest.raises(FeatureTableError, match="format version 99 is not supported"):
        read_feature_table(tmp_path / "v.parquet")


def test_dataset_validates_shapes():
    with pytest.raises(FeatureTableError, match="y must be 1-D with 3 rows"):
        Dataset(X=np.zeros((3, 2), np.float32), y=np.zeros(2))
    ds = Dataset(X=np.asfortranarray(np.ones((3, 2))))
    assert ds.X.dtype == np.float32 and ds.X.flags.c_contiguous and ds.feature_names == ["f0", "f1"]


def test_fixed_size_list_layout_written_by_other_tools_is_read(tmp_path):
    X, y = _data(n=300, d=3)
    table = ft.build_feature_table(X, y, ["a", "b", "c"])
    fsl = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 3)
    table = table.set_column(0, "features", fsl)
    pq.write_table(table, tmp_path / "fsl.parquet", row_group_size=100)
    ds = read_feature_table(tmp_path / "fsl.parquet")
    np.testing.assert_array_equal(ds.X, X)
    assert ds.feature_names == ["a", "b", "c"]


def test_empty_table_and_to_pandas(tmp_path):
    X = np.zeros((0, 3), np.float32)
    ds = read_feature_table(write_feature_table(tmp_path / "e.parquet", X, np.zeros(0)))
    assert ds.X.shape == (0, 3) and len(ds.y) == 0
    X, y = _data(n=6, d=3)
    df = read_feature_table(
        write_feature_table(tmp_path / "p.parquet", X, y, list("abc"), {"uid": np.arange(6)})
    ).to_pandas()
    assert list(df.columns) == ["a", "b", "c", "label", "uid"]
    np.testing.assert_array_equal(df[["a", "b", "c"]].to_numpy(), X)


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=9),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_round_trip_is_bit_exact(tmp_path_factory, X):
    path = tmp_path_factory.mktemp("rt") / "t.parquet"
    y = np.arange(X.shape[0], dtype=np.float32)
    ds = read_feature_table(write_feature_table(path, X, y))
    assert ds.X.shape == X.shape
    # same bits: -0.0 stays -0.0, NaN stays NaN
    assert ds.X.tobytes() == np.ascontiguousarray(X).tobytes()
    np.testing.assert_array_equal(ds.y, y)


def _write_legacy_table(path, X, y, names):
    """The layout written before FixedSizeList: ``features`` as ``fixed_size_binary[4*d]`` (the old writer)."""
    n, d = X.shape
    le = np.ascontiguousarray(X.astype("<f4", copy=False))
    feats = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * d), n, [None, pa.py_buffer(le)])
    meta = {"format_version": 1, "feature_names": names, "n_features": d, "n_rows": n, "label": "label"}
    table = pa.table(
        {"features": feats, "label": pa.array(y)},
        schema=pa.schema(
            [pa.field("features", feats.type), pa.field("label", pa.float32())],
            metadata={ft.METADATA_KEY: json.dumps(meta).encode()},
        ),
    )
    pq.write_table(table, path, row_group_size=max(n, 1), use_dictionary=False)


def test_files_of_the_fixed_size_binary_layout_are_still_read_zero_copy(tmp_path):
    X, y = _data(n=2000, d=6)
    path = tmp_path / "legacy.parquet"
    _write_legacy_table(path, X, y, list("abcdef"))
    assert pq.ParquetFile(path).schema_arrow.field("features").type == pa.binary(24)
    ds = read_feature_table(path)
    assert ds.X.tobytes() == X.tobytes() and ds.feature_names == list("abcdef")
    np.testing.assert_array_equal(ds.y, y)
    table = pq.ParquetFile(path).read()
    assert table_to_dataset(table).X.ctypes.data == table.column("features").chunk(0).buffers()[1].address


def test_other_tools_read_the_features_as_numbers(tmp_path):
    # pandas through pyarrow: one float32 array per row, no knowledge of this library needed
    X, y = _data(n=40, d=3)
    path = write_feature_table(tmp_path / "t.parquet", X, y, ["a", "b", "c"])
    df = pq.read_table(path).to_pandas()
    assert df["features"].map(len).tolist() == [3] * 40
    assert df["features"].iloc[0].dtype == np.float32
    np.testing.assert_array_equal(np.stack(df["features"].to_numpy()), X)
    # and compute on it as a list of floats (what an SQL engine's list functions see)
    import pyarrow.compute as pc

    lengths = pc.list_value_length(pq.read_table(path).column("features")).to_pylist()
    assert lengths == [3] * 40
    flat = pc.list_flatten(pq.read_table(path).column("features")).to_numpy().reshape(40, 3)
    np.testing.assert_array_equal(flat, X)


def test_writer_by_row_groups_gives_the_same_table(tmp_path):
    X, y = _data(n=1000, d=5)
    uid = np.arange(1000) * 3
    path = tmp_path / "w.parquet"
    with ft.FeatureTableWriter(path, list("abcde"), label=True) as w:
        for b in range(0, 1000, 300):
            w.write(X[b:b + 300], y[b:b + 300], {"uid": uid[b:b + 300]})
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    ds = read_feature_table(path)
    assert ds.X.tobytes() == X.tobytes() and ds.feature_names == list("abcde")
    np.testing.assert_array_equal(ds.y, y)
    np.testing.assert_array_equal(ds.extra["uid"], uid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.parquet"]


def test_writer_failure_leaves_no_file(tmp_path):
    X, y = _data(n=20, d=2)
    with pytest.raises(RuntimeError, match="boom"), ft.FeatureTableWriter(tmp_path / "w.parquet", ["a", "b"]) as w:
        w.write(X)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FeatureTableError, match="has no label"):
        ft.FeatureTableWriter(tmp_path / "w.parquet", ["a", "b"]).write(X, y)


@pytest.mark.parametrize("start, length", [(0, 5), (7, 5), (0, 500), (495, 5)])
def test_slices_of_a_read_table_decode_their_own_rows(tmp_path, start, length):
    X, y = _data(n=500, d=4)
    path = tmp_path / "s.parquet"
    write_feature_table(path, X, y, [f"f{i}" for i in range(4)])
    table = pq.read_table(path)
    ds = table_to_dataset(table.slice(start, length), where=str(path))
    assert ds.X.shape == (length, 4)
    assert ds.X.tobytes() == X[start:start + length].tobytes()
    np.testing.assert_array_equal(ds.y, y[start:start + length])
