"""Streamed preprocessing: fit a feature spec on Parquet and transform Parquet, row group by row group.

Peak memory depends on the batch size, the spec's statistics (vocabularies, quantile samples) and
the output width -- not on the number of rows::

    from airflow_ml_provider.ml.features.streaming import fit_parquet, transform_parquet

    fitted = fit_parquet(spec, "train.parquet")                 # or a directory of Parquet files
    n = transform_parquet(fitted, "test.parquet", "test_features.parquet", keep_columns=["user_id"])

**Fit.** Every built-in transformer learns its state from mergeable statistics
(:mod:`~airflow_ml_provider.ml.features.stats`: exact counts, exact sums and sums of squares,
min/max, category frequencies; quantiles exact up to ``quantile_cap`` values, a uniform reservoir
sample beyond). A chain whose second stateful step needs the output of the first
(``fill_missing: mean`` then ``standardize``) is fitted in one more pass over the data; each pass
reads only the columns its features need. On data whose quantile inputs have at most
``quantile_cap`` finite values, the result is the fitted spec :func:`~.fitted.fit` learns from the
whole table, bit for bit (same content hash).

**Transform.** Each batch goes through :meth:`FittedSpec.transform` (whose rows are bit-identical
to :meth:`FittedSpec.transform_row`) and is written as one row group of a feature table by
:class:`~airflow_ml_provider.ml.feature_table.FeatureTableWriter` (atomic: no partial file).

A custom transformer that only implements ``fit`` is fitted on its input gathered from all batches
(its memory grows with the rows); implement ``begin_fit`` / ``partial_fit`` / ``finish_fit`` to stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import FeatureError, MissingFeatureError
from .fitted import FittedSpec, _check_columns, _InputCache
from .spec import FeatureSpec
from .stats import DEFAULT_QUANTILE_CAP
from .transformers import Transformer

#: Rows per batch read from Parquet (and per row group written).
DEFAULT_BATCH_ROWS = 65_536
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def parquet_files(source: str | os.PathLike) -> list[Path]:
    """The Parquet files of ``source``: the file itself, or a directory's files in name order."""
    p = Path(source)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*")
            if f.is_file() and not f.name.startswith((".", "_")) and f.name.lower().endswith(PARQUET_SUFFIXES)
        )
        if not files:
            raise FeatureError(f"{p}: no Parquet files in this directory")
        return files
    if not p.exists():
        raise FeatureError(f"{p}: file not found")
    return [p]


def _open(path: Path):
    import pyarrow.parquet as pq

    try:
        # pre_buffer (the default) keeps every row group's raw bytes read so far until the reader is
        # closed: memory grew ~10 MB per 65k-row batch of the benchmark's table; without it, it stays flat
        return pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid and friends: name the file
        raise FeatureError(f"{path}: not a readable Parquet file ({exc})") from None


def parquet_schema(files: Sequence[Path]):
    """The Arrow schema of the first file and the total row count of all files."""
    rows = 0
    schema = None
    for f in files:
        pf = _open(f)
        if schema is None:
            schema = pf.schema_arrow
        rows += pf.metadata.num_rows
    return schema, rows


def iter_parquet(files: Sequence[Path], columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator:
    """``pyarrow.Table`` batches of ``columns`` (at most ``batch_rows`` rows each), file by file."""
    import pyarrow as pa

    for f in files:
        pf = _open(f)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise MissingFeatureError(
                f"{f}: column(s) {missing} missing; columns present: {pf.schema_arrow.names}",
                column=missing[0],
            )
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=True):
                yield pa.Table.from_batches([rb])
        except FeatureError:
            raise
        except (OSError, ValueError) as exc:  # a corrupt row group: name the file
            raise FeatureError(f"{f}: cannot read: {exc}") from None


def _string_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def batch_frame(table):
    """A batch as a pandas DataFrame: numbers as numpy columns, text as Arrow-backed columns.

    Arrow-backed text is dictionary-encoded by pyarrow and each distinct value keyed once (instead
    of one Python call per row); the keys are the ones the row path gives (``to_key``).
    """
    import pandas as pd

    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if _string_type(t) else None)


def fit_batches(
    spec: FeatureSpec,
    batches: Callable[[list[str]], Iterable[Any]],
    *,
    columns: Sequence[str],
    n_rows: int,
    quantile_cap: int | None = DEFAULT_QUANTILE_CAP,
) -> FittedSpec:
    """Fit ``spec`` on data read again for every pass: ``batches(columns)`` yields tables (or DataFrames).

    :param columns: the columns the data has (checked before any pass).
    :param n_rows: the number of rows (0 is refused, as by :func:`~.fitted.fit`).
    :param quantile_cap: finite values a quantile statistic keeps exactly (``None``: all).
    """
    import pyarrow as pa

    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"fit expects a FeatureSpec, got {type(spec).__name__}")
    if n_rows == 0:
        raise FeatureError("cannot fit a feature spec on an empty table (0 rows)")
    present = pa.schema([pa.field(c, pa.null()) for c in columns]).empty_table()
    if spec.label is not None and spec.label not in columns:
        raise MissingFeatureError(
            f"label column {spec.label!r} is missing from the data", feature=None, column=spec.label
        )
    _check_columns(present, spec.features)

    chains: list[list[Transformer]] = [[tdef.create(f.name) for tdef in f.transforms] for f in spec.features]
    stage = [0] * len(chains)

    def advance(i: int) -> None:
        """Fit the steps whose state does not depend on the data (no pass needed)."""
        chain = chains[i]
        while stage[i] < len(chain) and not chain[stage[i]].needs_fit():
            chain[stage[i]].begin_fit(quantile_cap)
            chain[stage[i]].finish_fit()
            stage[i] += 1

    for i in range(len(chains)):
        advance(i)
    while True:
        pending = [i for i, chain in enumerate(chains) if stage[i] < len(chain)]
        if not pending:
            break
        for i in pending:
            chains[i][stage[i]].begin_fit(quantile_cap)
        wanted = list(dict.fromkeys(c for i in pending for c in spec.features[i].columns))
        for table in batches(wanted):
            data = batch_frame(table) if hasattr(table, "to_pandas") and hasattr(table, "schema") else table
            cache = _InputCache(data)
            for i in pending:
                fdef, chain = spec.features[i], chains[i]
                values = cache.input_for(fdef)
                for t in chain[: stage[i]]:
                    values = t.transform_batch(values)
                chain[stage[i]].partial_fit(values)
        for i in pending:
            chains[i][stage[i]].finish_fit()
            stage[i] += 1
            advance(i)
    return FittedSpec(spec, chains)


def fit_parquet(
    spec: FeatureSpec,
    source: str | os.PathLike,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    quantile_cap: int | None = DEFAULT_QUANTILE_CAP,
) -> FittedSpec:
    """Fit ``spec`` on a Parquet file (or a directory of them), reading ``batch_rows`` rows at a time.

    :param quantile_cap: finite values a quantile statistic (``bucketize`` edges, ``median`` fill)
        keeps exactly; beyond, a uniform sample of that many (see :mod:`.stats` for the tolerance).
    """
    files = parquet_files(source)
    schema, n_rows = parquet_schema(files)
    return fit_batches(
        spec,
        lambda cols: iter_parquet(files, cols, batch_rows),
        columns=list(schema.names),
        n_rows=n_rows,
        quantile_cap=quantile_cap,
    )


def transform_parquet(
    fitted: FittedSpec,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    keep_columns: Sequence[str] = (),
    batch_rows: int = DEFAULT_BATCH_ROWS,
    require_label: bool = False,
    compression: str | None = "snappy",
) -> int:
    """Transform a Parquet file (or directory) into a feature table at ``out``; returns the row count.

    Every batch becomes one row group: the features (``FixedSizeList<float32>``), the label (when
    the spec has one and the data has the column; ``require_label`` makes its absence an error) and
    ``keep_columns`` copied as they are.
    """
    from ..feature_table import FeatureTableWriter

    files = parquet_files(source)
    schema, _ = parquet_schema(files)
    names = list(schema.names)
    missing = [c for c in keep_columns if c not in names]
    if missing:
        raise MissingFeatureError(f"keep_columns {missing} not in the data; columns: {names}", column=missing[0])
    label = fitted.label if fitted.label is not None and fitted.label in names else None
    if fitted.label is not None and label is None and require_label:
        raise MissingFeatureError(
            f"label column {fitted.label!r} is missing from the data; columns: {names}", column=fitted.label
        )
    _check_columns(schema.empty_table(), fitted.spec.features)
    inputs = list(fitted._input_columns)
    wanted = list(dict.fromkeys([*inputs, *([label] if label else []), *keep_columns]))
    with FeatureTableWriter(out, fitted.feature_names, label=label is not None, compression=compression) as w:
        for table in iter_parquet(files, wanted, batch_rows):
            data = batch_frame(table.select(list(dict.fromkeys([*inputs, *([label] if label else [])]))))
            X = fitted.transform(data)
            y = fitted.labels(data) if label else None
            extra = {c: table.column(c) for c in keep_columns} if keep_columns else None
            w.write(X, y, extra)
            del X, data
    return w.n_rows


__all__ = [
    "DEFAULT_BATCH_ROWS",
    "batch_frame",
    "fit_batches",
    "fit_parquet",
    "iter_parquet",
    "parquet_files",
    "parquet_schema",
    "transform_parquet",
]
