"""The pure sampling core: determinism across chunk sizes, ratios, counts, strata, splits, join, union."""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_ml_provider.ml.sampling import (
    SamplingError,
    SamplingPlan,
    chunks_from_cursor,
    chunks_from_file,
    chunks_from_rows,
    join_chunks,
    run_sampling,
    union_chunks,
)

N = 12_000


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling") / "events.db"
    rng = np.random.default_rng(3)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE ev (id INTEGER, uid INTEGER, ts INTEGER, y INTEGER, s TEXT, x REAL)")
    rows = [
        (i, int(rng.integers(0, 400)), 1_000_000 + i * 7, int(rng.random() < 0.25),
         None if i < 300 else f"s{i % 5}", None if i % 9 == 0 else float(rng.random()))
        for i in range(N)
    ]
    con.executemany("INSERT INTO ev VALUES (?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    return path


def run(db, tmp_path, chunk, sql="SELECT * FROM ev", **plan):
    con = sqlite3.connect(db)
    try:
        cur = con.execute(sql)
        out = tmp_path / f"out_{chunk}_{len(list(tmp_path.iterdir()))}"
        res = run_sampling(chunks_from_cursor(cur, chunk), SamplingPlan(chunk_rows=chunk, **plan), out)
    finally:
        con.close()
    tables = {s: pq.read_table(p) for s, p in res.files.items()}
    return res, tables


def as_rows(tables):
    return {s: sorted(t.column("id").to_pylist()) for s, t in tables.items()}


@pytest.mark.parametrize(
    "plan",
    [
        {"ratio": 0.3, "split_by": "random"},
        {"ratio": 0.5, "split_by": "group", "group_column": "uid"},
        {"count": 1000, "split_by": "time", "time_column": "ts"},
        {"stratify_column": "y", "strata_ratios": {"0": 0.2}, "split_by": "random", "key_column": "id"},
    ],
)
def test_same_result_whatever_the_chunk_size(db, tmp_path, plan):
    a_res, a = run(db, tmp_path, 97, **plan)
    b_res, b = run(db, tmp_path, 5000, **plan)
    assert as_rows(a) == as_rows(b)
    assert a_res.rows == b_res.rows
    assert sum(a_res.rows.values()) > 0
    # the same rows, bit for bit, in the same order
    for split in a:
        assert a[split].equals(b[split])


def test_ratio_sample_size_and_seed(db, tmp_path):
    res, _ = run(db, tmp_path, 1000, ratio=0.3, split_by="none")
    kept = res.rows["train"]
    assert abs(kept - 0.3 * N) < 4 * np.sqrt(N * 0.3 * 0.7)
    assert res.rows_read == N
    _, other_seed = run(db, tmp_path, 1000, ratio=0.3, split_by="none", seed=7)
    _, same_seed = run(db, tmp_path, 1000, ratio=0.3, split_by="none")
    assert as_rows(other_seed) != as_rows(same_seed)


def test_count_is_exact_and_keeps_source_order(db, tmp_path):
    res, t = run(db, tmp_path, 700, count=777, split_by="none")
    ids = t["train"].column("id").to_pylist()
    assert len(ids) == 777 == res.rows["train"]
    assert ids == sorted(ids)


def test_stratified_sample_keeps_all_positives(db, tmp_path):
    res, t = run(db, tmp_path, 1000, stratify_column="y", strata_ratios={"1": 1.0, "0": 0.1}, split_by="none")
    con = sqlite3.connect(db)
    n_pos, n_neg = con.execute("SELECT SUM(y), SUM(1 - y) FROM ev").fetchone()
    con.close()
    y = np.array(t["train"].column("y").to_pylist())
    assert int(y.sum()) == n_pos
    assert abs(int((y == 0).sum()) - 0.1 * n_neg) < 4 * np.sqrt(n_neg * 0.1 * 0.9)


def test_group_split_never_splits_a_user(db, tmp_path):
    res, t = run(db, tmp_path, 333, split_by="group", group_column="uid", split_ratios=(0.6, 0.2, 0.2))
    users = {s: set(tab.column("uid").to_pylist()) for s, tab in t.items()}
    assert not users["train"] & users["valid"]
    assert not users["train"] & users["test"]
    assert not users["valid"] & users["test"]
    assert sum(res.rows.values()) == N
    assert 0.45 < res.rows["train"] / N < 0.75


def test_random_split_ratios(db, tmp_path):
    res, _ = run(db, tmp_path, 1000, split_by="random", split_ratios=(0.7, 0.2, 0.1))
    assert sum(res.rows.values()) == N
    for split, r in zip(("train", "valid", "test"), (0.7, 0.2, 0.1)):
        assert abs(res.rows[split] - r * N) < 5 * np.sqrt(N * r * (1 - r))


def test_time_split_by_quantiles_and_by_boundaries(db, tmp_path):
    res, t = run(db, tmp_path, 1000, split_by="time", time_column="ts")
    assert res.rows == {"train": int(N * 0.8), "valid": int(N * 0.1), "test": N - int(N * 0.8) - int(N * 0.1)}
    assert max(t["train"].column("ts").to_pylist()) < min(t["valid"].column("ts").to_pylist())
    assert max(t["valid"].column("ts").to_pylist()) < min(t["test"].column("ts").to_pylist())
    b_valid, b_test = 1_000_000 + 7 * 6000, 1_000_000 + 7 * 9000
    res, t = run(db, tmp_path, 1000, split_by="time", time_column="ts", time_boundaries=[b_valid, str(b_test)])
    assert res.rows == {"train": 6000, "valid": 3000, "test": 3000}
    assert not (tmp_path / "_staging.parquet").exists()


def test_types_nulls_and_lookahead(db, tmp_path):
    # 's' is NULL in the whole first chunk: typed from later chunks, not as null
    res, t = run(db, tmp_path, 100, split_by="none")
    assert res.schema["s"] == "string"
    assert res.schema["x"] == "double"
    s = t["train"].column("s").to_pylist()
    assert s[:300] == [None] * 300 and s[300] == "s0"


def test_decimal_and_mixed_values_convert():
    from decimal import Decimal

    batches = [[(1, Decimal("1.5")), (2, None)], [(3, Decimal("2.25"))]]
    tables = list(chunks_from_rows(batches, ["a", "b"]))
    assert tables[0].schema.field("b").type == pa.float64()
    assert tables[1].column("b").to_pylist() == [2.25]


def test_conversion_error_names_the_column():
    batches = [[(1, 5)], [(2, "not a number")]]
    with pytest.raises(SamplingError, match="column 'b'"):
        list(chunks_from_rows(batches, ["a", "b"]))


def test_duplicate_column_names_are_refused():
    with pytest.raises(SamplingError, match=r"duplicate column names \['a'\]"):
        list(chunks_from_rows([[(1, 2)]], ["a", "a"]))


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"split_by": "group", "group_column": "user"}, "column 'user' (group_column)"),
        ({"stratify_column": "label", "strata_ratios": {"1": 0.5}}, "column 'label' (stratify_column)"),
        ({"split_by": "time", "time_column": "when"}, "column 'when' (time_column)"),
    ],
)
def test_missing_column_is_named(db, tmp_path, plan, message):
    with pytest.raises(SamplingError, match=re.escape(message)):
        run(db, tmp_path, 1000, **plan)


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"ratio": 1.5}, "ratio must be a number in"),
        ({"ratio": 0.5, "count": 10}, "either ratio or count"),
        ({"split_ratios": (0.5, 0.2, 0.2)}, "summing to 1"),
        ({"split_by": "group"}, "needs group_column"),
        ({"split_by": "weekly"}, "split_by must be"),
        ({"strata_ratios": {"1": 0.5}}, "needs stratify_column"),
        ({"count": 0}, "count must be a positive integer"),
    ],
)
def test_bad_plans_are_refused(plan, message):
    with pytest.raises(SamplingError, match=message):
        SamplingPlan(**plan).validate()


def test_unknown_plan_option_is_named():
    with pytest.raises(SamplingError, match=r"unknown sampling option\(s\) \['ration'\]"):
        SamplingPlan.from_dict({"ration": 0.5})


def test_union_and_join(tmp_path):
    left = [pa.table({"uid": [1, 2, 3], "v": [1.0, 2.0, 3.0]}), pa.table({"uid": [4, 1], "v": [4.0, 5.0]})]
    right = pa.table({"uid": [1, 2, 4], "age": [30, 40, 50]})
    joined = pa.concat_tables(list(join_chunks(iter(left), right, "uid", "inner")))
    assert joined.column("uid").to_pylist() == [1, 2, 4, 1]
    assert joined.column("age").to_pylist() == [30, 40, 50, 30]
    lj = pa.concat_tables(list(join_chunks(iter(left), right, "uid", "left")))
    assert lj.column("age").to_pylist() == [30, 40, None, 50, 30]
    other = [pa.table({"v": [9.0], "uid": [9]})]
    u = pa.concat_tables(list(union_chunks([iter(left), iter(other)], ["a", "b"])))
    assert u.column("uid").to_pylist() == [1, 2, 3, 4, 1, 9]
    bad = [pa.table({"uid": [9]})]
    with pytest.raises(SamplingError, match=r"union: b has different columns \(missing \['v'\]"):
        list(union_chunks([iter(left), iter(bad)], ["a", "b"]))


def test_files_as_source(tmp_path):
    t = pa.table({"id": list(range(1000)), "g": [i % 17 for i in range(1000)]})
    pq.write_table(t, tmp_path / "in.parquet", row_group_size=100)
    t.to_pandas().to_csv(tmp_path / "in.csv", index=False)
    a = run_sampling(chunks_from_file(str(tmp_path / "in.parquet"), chunk_rows=64),
                     SamplingPlan(ratio=0.5, split_by="group", group_column="g"), tmp_path / "a")
    b = run_sampling(chunks_from_file(str(tmp_path / "in.csv"), chunk_rows=64),
                     SamplingPlan(ratio=0.5, split_by="group", group_column="g"), tmp_path / "b")
    assert a.rows == b.rows
    for split in a.files:
        assert pq.read_table(a.files[split]).equals(pq.read_table(b.files[split]))
