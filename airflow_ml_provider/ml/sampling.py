"""Getting training samples: streaming rows to Parquet, random/stratified sampling, join, union, splits.

This is the pure core of :class:`~airflow_ml_provider.operators.sample.SampleOperator` (no Airflow
import). Rows arrive as a stream of chunks -- from a DB-API cursor (``fetchmany``), from a
SQLAlchemy result, or from Parquet/CSV files -- and leave as Parquet files written chunk by chunk
with :class:`pyarrow.parquet.ParquetWriter`, so memory stays bounded by the chunk size whatever the
size of the result.

Determinism. Every random decision is a function of the row itself, never of its position in a
chunk: a row (or its ``key_column``, or its ``group_column`` for a grouped split) is hashed with a
seeded 64-bit hash, and the hash is mapped to a uniform number in ``[0, 1)``. The same data and seed
give the same sample and the same splits whatever the chunk size, on every machine. Sampling and
splitting use independent hashes (different salts), so a 50 % sample is still split by the ratios.

* random sample by ratio: keep a row when ``u < ratio``;
* random sample by count: keep the ``count`` rows with the smallest hashes (exact size; holds at
  most ``count`` rows in memory);
* stratified sample: a ratio per value of ``stratify_column`` (e.g. keep 20 % of the negatives and
  every positive);
* split by ratio (row hash), by id (hash of ``group_column``: one user never spans two splits), or by
  a time column (explicit boundaries, or the ratio quantiles of the time column, computed from a
  staging file in a second pass).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "SPLITS",
    "SampleResult",
    "SamplingError",
    "SamplingPlan",
    "chunks_from_cursor",
    "chunks_from_file",
    "chunks_from_rows",
    "join_chunks",
    "row_uniform",
    "run_sampling",
    "union_chunks",
]

SPLITS = ("train", "valid", "test")
DEFAULT_CHUNK_ROWS = 50_000

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_SALT_SAMPLE = 0x5A3C_0001
_SALT_SPLIT = 0x5A3C_0002


class SamplingError(ValueError):
    """Bad sampling input: the message names the column, the parameter or the source."""


# --------------------------------------------------------------------------------------------------
# hashing: a seeded, stable 64-bit hash per row -> a uniform number in [0, 1)
# --------------------------------------------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _column_hash(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A stable uint64 hash of each value of one column (independent of chunking)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    nulls = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t):
        if pa.types.is_temporal(t) and not (pa.types.is_date(t) or pa.types.is_timestamp(t)):
            values = np.asarray(arr.cast(pa.string()).to_pylist(), dtype=object)
            return _object_hash(values, nulls)
        if pa.types.is_timestamp(t):
            arr = arr.cast(pa.timestamp("us", tz=t.tz))
        ints = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        h = _splitmix64(ints.astype(np.int64).view(np.uint64))
    elif pa.types.is_floating(t):
        f = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        f = np.where(f == 0.0, 0.0, f)  # -0.0 == 0.0
        # integral floats hash like the integer they equal, so 3 and 3.0 agree across sources
        integral = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 2**62)
        bits = f.view(np.uint64).copy()
        bits[integral] = f[integral].astype(np.int64).view(np.uint64)
        h = _splitmix64(bits)
    else:
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype != object:
            values = values.astype(object)
        return _object_hash(values, nulls)
    if nulls is not None:
        h = np.where(nulls, np.uint64(0x6E756C6C), h)
    return h


def _object_hash(values: np.ndarray, nulls: np.ndarray | None) -> np.ndarray:
    from pandas.util import hash_array

    texts = np.array(["" if v is None else (v.hex() if isinstance(v, bytes) else str(v)) for v in values],
                     dtype=object) if len(values) else np.array([], dtype=object)
    h = hash_array(texts, hash_key="airflowmlprovide", categorize=False).astype(np.uint64)
    if nulls is not None:
        h = np.where(nulls, np.uint64(0x6E756C6C), h)
    return h


def row_hash(table: pa.Table, columns: Sequence[str] | None, seed: int, salt: int) -> np.ndarray:
    """A seeded uint64 hash of each row over ``columns`` (all columns when None)."""
    names = list(columns) if columns else list(table.column_names)
    _require_columns(table, names, "hash")
    with np.errstate(over="ignore"):
        h = np.full(table.num_rows, np.uint64((seed * 0x9E3779B97F4A7C15 + salt) & 0xFFFFFFFFFFFFFFFF))
        h = _splitmix64(h)
        for name in names:
            h = _splitmix64(h ^ _column_hash(table.column(name)))
            h = h * np.uint64(0xFF51AFD7ED558CCD)
        return _splitmix64(h)


def row_uniform(table: pa.Table, columns: Sequence[str] | None, seed: int, salt: int = _SALT_SAMPLE) -> np.ndarray:
    """A uniform number in ``[0, 1)`` per row, a deterministic function of the row and the seed."""
    h = row_hash(table, columns, seed, salt)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


@dataclass
class SamplingPlan:
    """What to sample and how to split it. Every field is validated by :meth:`validate`.

    :param ratio: keep each row with this probability (0 < ratio <= 1); None keeps every row.
    :param count: keep exactly this many rows (the ones with the smallest hashes); exclusive with ratio.
    :param seed: the seed of every random decision.
    :param key_column: hash this column instead of the whole row (e.g. an event id).
    :param stratify_column: sample each value of this column with its own ratio.
    :param strata_ratios: ``{value: ratio}`` for the stratified sample (values compared as text);
        strata not listed use ``ratio`` (or keep every row when ``ratio`` is None).
    :param split_by: ``"random"``, ``"group"`` (by ``group_column``), ``"time"`` (by ``time_column``)
        or ``"none"`` (everything is train).
    :param split_ratios: train/valid/test ratios summing to 1 (a valid or test ratio may be 0).
    :param group_column: the id column of a grouped split (one id never spans two splits).
    :param time_column: the time column of a time split.
    :param time_boundaries: ``[valid_start, test_start]`` for a time split; rows before ``valid_start``
        are train, rows from ``test_start`` on are test. When None the boundaries are the
        ``split_ratios`` quantiles of the time column.
    :param chunk_rows: rows per chunk (and per Parquet row group).
    """

    ratio: float | None = None
    count: int | None = None
    seed: int = 42
    key_column: str | None = None
    stratify_column: str | None = None
    strata_ratios: dict[str, float] = field(default_factory=dict)
    split_by: str = "random"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    group_column: str | None = None
    time_column: str | None = None
    time_boundaries: list[Any] | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def validate(self) -> SamplingPlan:
        if self.ratio is not None:
            if not isinstance(self.ratio, (int, float)) or not (0.0 < float(self.ratio) <= 1.0):
                raise SamplingError(f"ratio must be a number in (0, 1], got {self.ratio!r}")
            self.ratio = float(self.ratio)
        if self.count is not None:
            if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count <= 0:
                raise SamplingError(f"count must be a positive integer, got {self.count!r}")
            if self.ratio is not None and self.ratio < 1.0:
                raise SamplingError("give either ratio or count, not both")
            if self.stratify_column:
                raise SamplingError("count cannot be combined with stratify_column; use strata_ratios")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SamplingError(f"seed must be an integer, got {self.seed!r}")
        for value, r in (self.strata_ratios or {}).items():
            if not isinstance(r, (int, float)) or not (0.0 <= float(r) <= 1.0):
                raise SamplingError(f"strata_ratios[{value!r}] must be a number in [0, 1], got {r!r}")
        if self.strata_ratios and not self.stratify_column:
            raise SamplingError("strata_ratios needs stratify_column")
        self.strata_ratios = {str(k): float(v) for k, v in (self.strata_ratios or {}).items()}
        if self.split_by not in ("random", "group", "time", "none"):
            raise SamplingError(f"split_by must be random, group, time or none, got {self.split_by!r}")
        ratios = tuple(float(r) for r in self.split_ratios)
        if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise SamplingError(f"split_ratios must be three non-negative numbers summing to 1, got {self.split_ratios!r}")
        if ratios[0] <= 0:
            raise SamplingError(f"the train ratio must be > 0, got {self.split_ratios!r}")
        self.split_ratios = ratios  # type: ignore[assignment]
        if self.split_by == "group" and not self.group_column:
            raise SamplingError("split_by='group' needs group_column (e.g. the user id)")
        if self.split_by == "time":
            if not self.time_column:
                raise SamplingError("split_by='time' needs time_column")
            if self.time_boundaries is not None:
                if len(self.time_boundaries) != 2:
                    raise SamplingError(f"time_boundaries must be [valid_start, test_start], got {self.time_boundaries!r}")
        if not isinstance(self.chunk_rows, int) or self.chunk_rows <= 0:
            raise SamplingError(f"chunk_rows must be a positive integer, got {self.chunk_rows!r}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplingPlan:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SamplingError(f"unknown sampling option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data)).validate()


@dataclass
class SampleResult:
    """What :func:`run_sampling` wrote: one Parquet file per non-empty split, in ``out_dir``."""

    out_dir: str
    files: dict[str, str]
    rows: dict[str, int]
    rows_read: int
    columns: list[str]
    schema: dict[str, str]
    time_boundaries: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# sources: streams of pyarrow Tables with one schema
# --------------------------------------------------------------------------------------------------


def _require_columns(table_or_schema: pa.Table | pa.Schema, names: Iterable[str], role: str) -> None:
    have = table_or_schema.names if isinstance(table_or_schema, pa.Schema) else table_or_schema.column_names
    for name in names:
        if name not in have:
            raise SamplingError(f"column {name!r} ({role}) is not in the sampled data; columns: {list(have)}")


def _normalise_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_large_string(t):
        return pa.string()
    return t


def chunks_from_rows(
    batches: Iterable[Sequence[Sequence[Any]]],
    column_names: Sequence[str],
    *,
    lookahead: int = 8,
) -> Iterator[pa.Table]:
    """Turn batches of row tuples into Tables with one schema.

    The schema is inferred from the first batch; a column that is all NULL there is typed from the
    next batches (up to ``lookahead`` of them, else it becomes text). Later batches are converted to
    that schema; a value that does not fit names its column. DECIMAL columns become float64.
    """
    names = [str(n) for n in column_names]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SamplingError(f"the query returns duplicate column names {dup}: give each column a unique alias")
    it = iter(batches)
    pending: list[list[pa.Array]] = []
    types: list[pa.DataType | None] = [None] * len(names)
    schema: pa.Schema | None = None

    def to_arrays(rows: Sequence[Sequence[Any]], target: list[pa.DataType | None]) -> list[pa.Array]:
        cols = list(zip(*rows)) if rows else [()] * len(names)
        if len(cols) != len(names):
            raise SamplingError(f"rows have {len(cols)} values but {len(names)} column names")
        out = []
        for name, values, t in zip(names, cols, target):
            try:
                try:
                    arr = pa.array(values, type=t, from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    if t is None:
                        raise
                    # e.g. DECIMAL values for a float64 column: infer, then cast (safely)
                    arr = pa.array(values, from_pandas=True).cast(t)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError,
                    OverflowError) as exc:
                want = f" as {t}" if t is not None else ""
                raise SamplingError(
                    f"column {name!r}: cannot convert its values{want} ({exc}); "
                    f"CAST the column to one type in the query"
                ) from None
            if t is None:
                nt = _normalise_type(arr.type)
                if nt != arr.type:
                    arr = arr.cast(nt)
            out.append(arr)
        return out

    for rows in it:
        if not rows:
            continue
        if schema is None:
            arrays = to_arrays(rows, [None] * len(names))
            pending.append(arrays)
            for i, a in enumerate(arrays):
                if types[i] is None and not pa.types.is_null(a.type):
                    types[i] = a.type
            if any(t is None for t in types) and len(pending) < lookahead:
                continue
            schema = pa.schema([(n, t if t is not None else pa.string()) for n, t in zip(names, types)])
            for arrays in pending:
                yield _cast_arrays(arrays, schema)
            pending = []
            continue
        yield pa.Table.from_arrays(to_arrays(rows, list(schema.types)), schema=schema)
    if schema is None and pending:
        schema = pa.schema([(n, t if t is not None else pa.string()) for n, t in zip(names, types)])
        for arrays in pending:
            yield _cast_arrays(arrays, schema)
    elif schema is None:
        # no rows at all: an empty table with text columns, so the writer still knows the columns
        yield pa.Table.from_arrays([pa.array([], type=pa.string()) for _ in names], names=names)


def _cast_arrays(arrays: list[pa.Array], schema: pa.Schema) -> pa.Table:
    out = []
    for arr, f in zip(arrays, schema):
        if arr.type != f.type:
            try:
                arr = arr.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SamplingError(
                    f"column {f.name!r}: values of type {arr.type} do not fit {f.type} ({exc}); "
                    f"CAST the column to one type in the query"
                ) from None
        out.append(arr)
    return pa.Table.from_arrays(out, schema=schema)


def chunks_from_cursor(cursor: Any, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pa.Table]:
    """Stream an executed DB-API cursor (or SQLAlchemy result) with ``fetchmany`` as Tables."""
    description = getattr(cursor, "description", None)
    if description is not None:
        names = [d[0] for d in description]
    elif hasattr(cursor, "keys"):
        names = list(cursor.keys())
    else:
        raise SamplingError("the statement returned no rows: the SQL must be a SELECT")

    def batches() -> Iterator[Sequence[Sequence[Any]]]:
        while True:
            rows = cursor.fetchmany(chunk_rows)
            if not rows:
                return
            yield rows

    return chunks_from_rows(batches(), names)


def chunks_from_file(path: str, fs: Any = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                     file_format: str | None = None) -> Iterator[pa.Table]:
    """Stream a Parquet or CSV file (local path, or a path on an fsspec filesystem) as Tables."""
    fmt = (file_format or ("csv" if str(path).lower().endswith((".csv", ".csv.gz")) else "parquet")).lower()
    opener = fs.open if fs is not None else open
    if fmt == "parquet":
        with opener(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            schema = pf.schema_arrow
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield _normalise_table(pa.Table.from_batches([batch], schema=schema))
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        with opener(path, "rb") as fh:
            reader = pacsv.open_csv(fh, read_options=pacsv.ReadOptions(block_size=1 << 22))
            for batch in reader:
                yield _normalise_table(pa.Table.from_batches([batch]))
        return
    raise SamplingError(f"unsupported file format {fmt!r} for {path}: use parquet or csv")


def _normalise_table(table: pa.Table) -> pa.Table:
    schema = pa.schema([(f.name, _normalise_type(f.type)) for f in table.schema])
    return table if schema == table.schema else table.cast(schema)


def union_chunks(sources: Sequence[Iterable[pa.Table]], names: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Concatenate several sources with the same columns (UNION ALL), in order.

    Columns are matched by name (the first source's order wins); a missing column names the source.
    Types are unified to the first source's schema where they can be cast.
    """
    labels = list(names) if names else [f"source #{i + 1}" for i in range(len(sources))]
    schema: pa.Schema | None = None
    for label, source in zip(labels, sources):
        for table in source:
            if schema is None:
                schema = table.schema
                yield table
                continue
            if set(table.column_names) != set(schema.names):
                missing = sorted(set(schema.names) - set(table.column_names))
                extra = sorted(set(table.column_names) - set(schema.names))
                raise SamplingError(
                    f"union: {label} has different columns (missing {missing}, extra {extra}) than {labels[0]}"
                )
            table = table.select(schema.names)
            if table.schema != schema:
                try:
                    table = table.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SamplingError(f"union: {label} column types do not match {labels[0]}: {exc}") from None
            yield table


def join_chunks(left: Iterable[pa.Table], right: pa.Table, on: Sequence[str] | str, how: str = "inner",
                right_suffix: str = "_right") -> Iterator[pa.Table]:
    """Join a stream (the large side) with a table held in memory (the small side), chunk by chunk.

    ``how`` is ``inner`` or ``left``. Memory is bounded by the right side plus one chunk; put the
    smaller source on the right. The left chunk's row order is kept.
    """
    keys = [on] if isinstance(on, str) else list(on)
    if how not in ("inner", "left"):
        raise SamplingError(f"join: how must be 'inner' or 'left', got {how!r}")
    _require_columns(right, keys, "join key of the right source")
    for table in left:
        _require_columns(table, keys, "join key of the left source")
        joined = table.append_column("__aml_order", pa.array(np.arange(table.num_rows, dtype=np.int64))).join(
            right, keys=keys, join_type="inner" if how == "inner" else "left outer",
            right_suffix=right_suffix, coalesce_keys=True, use_threads=False,
        )
        joined = joined.sort_by("__aml_order").drop_columns(["__aml_order"])
        yield joined


# --------------------------------------------------------------------------------------------------
# sampling and splitting
# --------------------------------------------------------------------------------------------------


def _keep_mask(table: pa.Table, plan: SamplingPlan) -> np.ndarray | None:
    """The rows a ratio / stratified sample keeps (None = keep all)."""
    if plan.stratify_column:
        _require_columns(table, [plan.stratify_column], "stratify_column")
        default = plan.ratio if plan.ratio is not None else 1.0
        col = table.column(plan.stratify_column)
        values = col.cast(pa.string()) if not pa.types.is_string(col.type) else col
        # integral floats print like ints so "1" matches 1.0
        if pa.types.is_floating(col.type):
            f = col.to_numpy()
            texts = np.array([str(int(v)) if np.isfinite(v) and float(v).is_integer() else str(v) for v in f], dtype=object)
        else:
            texts = np.asarray(values.to_pylist(), dtype=object)
        ratios = np.full(table.num_rows, default, dtype=np.float64)
        for value, r in plan.strata_ratios.items():
            ratios[texts == value] = r
        if np.all(ratios >= 1.0):
            return None
        u = row_uniform(table, [plan.key_column] if plan.key_column else None, plan.seed, _SALT_SAMPLE)
        return u < ratios
    if plan.ratio is not None and plan.ratio < 1.0 and plan.count is None:
        u = row_uniform(table, [plan.key_column] if plan.key_column else None, plan.seed, _SALT_SAMPLE)
        return u < plan.ratio
    return None


def _split_index(table: pa.Table, plan: SamplingPlan, boundaries: list[Any] | None) -> np.ndarray:
    """0/1/2 (train/valid/test) per row."""
    n = table.num_rows
    if plan.split_by == "none":
        return np.zeros(n, dtype=np.int8)
    if plan.split_by == "time":
        _require_columns(table, [plan.time_column], "time_column")
        col = table.column(plan.time_column)
        if col.null_count:
            raise SamplingError(f"time_column {plan.time_column!r} has NULL values: filter them in the query")
        b_valid, b_test = (_scalar_like(b, col.type, plan.time_column) for b in boundaries)  # type: ignore[union-attr]
        idx = np.zeros(n, dtype=np.int8)
        idx[pc.greater_equal(col, b_valid).to_numpy(zero_copy_only=False)] = 1
        idx[pc.greater_equal(col, b_test).to_numpy(zero_copy_only=False)] = 2
        return idx
    if plan.split_by == "group":
        _require_columns(table, [plan.group_column], "group_column")
        u = row_uniform(table, [plan.group_column], plan.seed, _SALT_SPLIT)
    else:
        u = row_uniform(table, [plan.key_column] if plan.key_column else None, plan.seed, _SALT_SPLIT)
    r_train, r_valid, _ = plan.split_ratios
    idx = np.full(n, 2, dtype=np.int8)
    idx[u < r_train + r_valid] = 1
    idx[u < r_train] = 0
    if plan.split_ratios[2] == 0:
        idx[idx == 2] = 1 if r_valid > 0 else 0
    return idx


def _scalar_like(value: Any, t: pa.DataType, column: str) -> pa.Scalar:
    try:
        if isinstance(value, pa.Scalar):
            return value.cast(t)
        if isinstance(value, str) and not pa.types.is_string(t):
            return pa.scalar(value).cast(t)
        return pa.scalar(value, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
        raise SamplingError(f"time boundary {value!r} does not fit time_column {column!r} of type {t}: {exc}") from None


class _SplitWriters:
    """One ParquetWriter per split, opened on the first row of that split."""

    def __init__(self, out_dir: Path, schema: pa.Schema, chunk_rows: int):
        self.out_dir = out_dir
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        w = self.writers.get(split)
        if w is None:
            w = pq.ParquetWriter(str(self.out_dir / f"{split}.parquet"), self.schema, compression="snappy")
            self.writers[split] = w
        w.write_table(table, row_group_size=self.chunk_rows)
        self.rows[split] += table.num_rows

    def close(self) -> dict[str, str]:
        for w in self.writers.values():
            w.close()
        return {s: str(self.out_dir / f"{s}.parquet") for s in SPLITS if s in self.writers}


def _route(table: pa.Table, plan: SamplingPlan, boundaries: list[Any] | None, writers: _SplitWriters) -> None:
    idx = _split_index(table, plan, boundaries)
    for i, split in enumerate(SPLITS):
        mask = idx == i
        if mask.all():
            writers.write(split, table)
        elif mask.any():
            writers.write(split, table.filter(pa.array(mask)))


def run_sampling(chunks: Iterable[pa.Table], plan: SamplingPlan, out_dir: str | os.PathLike,
                 *, log: Callable[[str], Any] | None = None) -> SampleResult:
    """Sample and split a stream of Tables into ``out_dir/{train,valid,test}.parquet``.

    Memory is bounded by one chunk (plus ``count`` rows for a sample by count). Writes
    ``out_dir/_sample.json`` with the row counts, the schema and the plan.
    """
    plan.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda _m: None)
    rows_read = 0
    schema: pa.Schema | None = None
    need_staging = plan.count is not None or (plan.split_by == "time" and plan.time_boundaries is None)
    staging_path = out / "_staging.parquet"
    staging: pq.ParquetWriter | None = None
    boundaries = list(plan.time_boundaries) if plan.time_boundaries is not None else None
    writers: _SplitWriters | None = None

    # count sample: the `count` rows with the smallest (hash, position); kept in memory (bounded by count)
    kept: pa.Table | None = None
    kept_hash = np.empty(0, dtype=np.uint64)
    kept_pos = np.empty(0, dtype=np.int64)

    def check_columns(s: pa.Schema) -> None:
        for name, role in ((plan.key_column, "key_column"), (plan.stratify_column, "stratify_column"),
                           (plan.group_column if plan.split_by == "group" else None, "group_column"),
                           (plan.time_column if plan.split_by == "time" else None, "time_column")):
            if name:
                _require_columns(s, [name], role)

    for table in chunks:
        if schema is None:
            schema = table.schema
            check_columns(schema)
            if not need_staging:
                writers = _SplitWriters(out, schema, plan.chunk_rows)
            elif plan.count is None:
                staging = pq.ParquetWriter(str(staging_path), schema)
        if table.num_rows == 0:
            continue
        start = rows_read
        rows_read += table.num_rows
        if plan.count is not None:
            h = row_hash(table, [plan.key_column] if plan.key_column else None, plan.seed, _SALT_SAMPLE)
            pos = np.arange(start, start + table.num_rows, dtype=np.int64)
            kept = table if kept is None else pa.concat_tables([kept, table])
            kept_hash = np.concatenate([kept_hash, h])
            kept_pos = np.concatenate([kept_pos, pos])
            if kept.num_rows > plan.count * 2 or kept.num_rows > plan.count + plan.chunk_rows:
                kept, kept_hash, kept_pos = _bottom_k(kept, kept_hash, kept_pos, plan.count)
            continue
        mask = _keep_mask(table, plan)
        if mask is not None:
            table = table.filter(pa.array(mask))
        if staging is not None:
            staging.write_table(table, row_group_size=plan.chunk_rows)
        else:
            _route(table, plan, boundaries, writers)  # type: ignore[arg-type]

    if schema is None:
        raise SamplingError("the source returned no columns")

    if plan.count is not None:
        if kept is not None:
            kept, kept_hash, kept_pos = _bottom_k(kept, kept_hash, kept_pos, plan.count)
            order = np.argsort(kept_pos, kind="stable")
            kept = kept.take(pa.array(order))
        else:
            kept = schema.empty_table()
        if kept.num_rows < plan.count:
            log(f"sample by count: the source has only {kept.num_rows} rows, fewer than count={plan.count}")
        if plan.split_by == "time" and boundaries is None:
            boundaries = _time_quantiles(kept.column(plan.time_column), plan)
        writers = _SplitWriters(out, schema, plan.chunk_rows)
        for offset in range(0, kept.num_rows, plan.chunk_rows):
            _route(kept.slice(offset, plan.chunk_rows), plan, boundaries, writers)
    elif staging is not None:
        staging.close()
        pf = pq.ParquetFile(str(staging_path))
        time_col = pf.read(columns=[plan.time_column]).column(plan.time_column)
        if time_col.null_count:
            raise SamplingError(f"time_column {plan.time_column!r} has NULL values: filter them in the query")
        boundaries = _time_quantiles(time_col, plan)
        del time_col
        log(f"time split on {plan.time_column!r}: valid from {boundaries[0]!r}, test from {boundaries[1]!r}")
        writers = _SplitWriters(out, schema, plan.chunk_rows)
        for batch in pf.iter_batches(batch_size=plan.chunk_rows):
            _route(pa.Table.from_batches([batch], schema=schema), plan, boundaries, writers)
        pf.close() if hasattr(pf, "close") else None
        staging_path.unlink(missing_ok=True)

    assert writers is not None
    files = writers.close()
    if not files:
        # nothing survived: still write an empty train file so downstream gets a clear "0 rows"
        pq.write_table(schema.empty_table(), str(out / "train.parquet"))
        files = {"train": str(out / "train.parquet")}
    result = SampleResult(
        out_dir=str(out),
        files=files,
        rows={s: writers.rows[s] for s in SPLITS},
        rows_read=rows_read,
        columns=list(schema.names),
        schema={f.name: str(f.type) for f in schema},
        time_boundaries=[_jsonable(b) for b in boundaries] if boundaries is not None else None,
    )
    manifest = {"result": result.to_dict(), "plan": {k: _jsonable(v) for k, v in asdict(plan).items()}}
    manifest["result"]["files"] = {s: Path(p).name for s, p in files.items()}
    manifest["result"]["out_dir"] = None
    (out / "_sample.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    log(f"sampled {sum(result.rows.values())} of {rows_read} rows: "
        + ", ".join(f"{s}={result.rows[s]}" for s in SPLITS))
    return result


def _bottom_k(table: pa.Table, h: np.ndarray, pos: np.ndarray, k: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    if table.num_rows <= k:
        return table, h, pos
    order = np.lexsort((pos, h))[:k]
    order.sort()
    return table.take(pa.array(order)), h[order], pos[order]


def _time_quantiles(col: pa.ChunkedArray, plan: SamplingPlan) -> list[Any]:
    n = len(col)
    if n == 0:
        return [None, None]
    order = pc.sort_indices(col)
    sorted_col = col.take(order)
    r_train, r_valid, _ = plan.split_ratios
    i_valid = min(n - 1, int(math.floor(n * r_train)))
    i_test = min(n - 1, int(math.floor(n * (r_train + r_valid))))
    b_valid = sorted_col[i_valid].as_py()
    b_test = sorted_col[i_test].as_py() if plan.split_ratios[2] > 0 else _after_max(sorted_col[n - 1].as_py())
    return [b_valid, b_test]


def _after_max(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return math.nextafter(value, math.inf)
    if isinstance(value, str):
        return value + "\U0010ffff"
    try:
        import datetime as _dt

        return value + _dt.timedelta(microseconds=1)
    except TypeError:
        return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def read_table(path: str) -> pa.Table:
    """Read a Parquet file written by :func:`run_sampling` (tests and small data)."""
    return pq.read_table(path)


def temp_dir(prefix: str = "aml-sample-") -> str:
    return tempfile.mkdtemp(prefix=prefix)
