"""``airflow-ml features``: fit a feature spec on a table, transform a table with a fitted spec.

::

    airflow-ml features fit --spec features.yaml --data train.parquet --out fitted.json
    airflow-ml features transform --fitted fitted.json --data test.csv --out features.parquet
    airflow-ml features show --fitted fitted.json
    airflow-ml features transformers

Input data: Parquet (a file or a directory of files) or CSV; output: Parquet. A local Parquet input
is fitted from streaming statistics and transformed batch by batch
(:mod:`airflow_ml_provider.ml.features.streaming`), so memory does not grow with its rows. Outputs are
written to a temporary file and renamed into place, so a failed run leaves no partial file.
Every path may also be a storage URI (``file:///...``, ``webhdfs://<conn_id>@/path``), read and
written through :mod:`airflow_ml_provider.ml.storage`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from . import CLIError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "features",
        help="fit a feature spec and transform data with it",
        description="Fit a YAML feature spec on a table and transform tables with the fitted spec.",
    )
    sub = parser.add_subparsers(dest="features_command", metavar="ACTION")

    p = sub.add_parser("fit", help="fit a feature spec on a table -> fitted spec (JSON)")
    p.add_argument("--spec", required=True, help="feature spec (YAML); a path or a storage URI")
    p.add_argument("--data", required=True, help="training table: Parquet file/directory or CSV")
    p.add_argument("--out", required=True, help="where to write the fitted spec (JSON)")
    p.set_defaults(func=_fit)

    p = sub.add_parser("transform", help="transform a table with a fitted spec -> Parquet")
    p.add_argument("--fitted", required=True, help="fitted spec (JSON) written by 'features fit'")
    p.add_argument("--data", required=True, help="table to transform: Parquet file/directory or CSV")
    p.add_argument(
        "--out", required=True, help="output Parquet file (feature columns, plus the label if present)"
    )
    p.set_defaults(func=_transform)

    p = sub.add_parser("show", help="summarise a fitted spec")
    p.add_argument("--fitted", required=True, help="fitted spec (JSON)")
    p.set_defaults(func=_show)

    p = sub.add_parser("transformers", help="list the available transformers")
    p.set_defaults(func=_list_transformers)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


# ---------------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path


def _read_uri(uri: str) -> bytes:
    from airflow_ml_provider.ml import storage

    try:
        return storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise CLIError(str(exc)) from None


def _read_text(path: str, what: str) -> str:
    """The text of a local file or a URI; CLIError naming it on failure."""
    if _is_uri(path):
        data = _read_uri(path)
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise CLIError(f"{what} not found: {path}") from None
        except OSError as exc:
            raise CLIError(f"cannot read {what} {path}: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{what} {path} is not UTF-8 text: {exc}") from None


def _table_format(name: str) -> str | None:
    name = name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "tsv" if name.endswith(".tsv") else "csv"
    return None


def read_table(path: str):
    """Read a Parquet file/directory or a CSV file (local or URI) into a DataFrame; CLIError on failure."""
    import io

    import pandas as pd

    if _is_uri(path):
        fmt = _table_format(path.rstrip("/"))
        if fmt is None:
            raise CLIError(
                f"cannot tell the format of {path}: use a Parquet (.parquet, .pq) or CSV (.csv) file"
            )
        data = _read_uri(path)
        try:
            if fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                return pq.read_table(pa.BufferReader(data)).to_pandas()
            return pd.read_csv(io.BytesIO(data), sep="\t" if fmt == "tsv" else ",", low_memory=False)
        except Exception as exc:  # noqa: BLE001 - name the file, never a traceback
            raise CLIError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None

    p = Path(path)
    if not p.exists():
        raise CLIError(f"data file not found: {path}")
    name = p.name.lower()
    try:
        if p.is_dir() or name.endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pandas()
        if name.endswith(CSV_SUFFIXES):
            return pd.read_csv(p, sep="\t" if name.endswith(".tsv") else ",", low_memory=False)
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the file, never a traceback
        raise CLIError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    raise CLIError(
        f"cannot tell the format of {path}: use a Parquet file ({', '.join(PARQUET_SUFFIXES)}), a directory of "
        f"Parquet files, or CSV ({', '.join(CSV_SUFFIXES)})"
    )


def _atomic_write(out: str, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``out``; no partial output."""
    if _is_uri(out):
        from airflow_ml_provider.ml import storage

        with tempfile.TemporaryDirectory(prefix="airflow-ml-") as tmp_dir:
            tmp = str(Path(tmp_dir) / "out")
            write(tmp)
            try:
                storage.write_bytes_atomic(out, Path(tmp).read_bytes())
            except storage.StorageError as exc:
                raise CLIError(str(exc)) from None
        return
    target = Path(out)
    if target.is_dir():
        raise CLIError(f"output path is a directory: {out}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the output directory for {out}: {exc}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _local_parquet(path: str) -> tuple[list, object, int] | None:
    """(files, schema, rows) of a local Parquet file or directory (the streamed path), else None."""
    if _is_uri(path):
        return None
    p = Path(path)
    if not (p.is_dir() or (p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES))):
        return None
    from airflow_ml_provider.ml.features import FeatureError
    from airflow_ml_provider.ml.features.streaming import parquet_files, parquet_schema

    try:
        files = parquet_files(p)
        schema, rows = parquet_schema(files)
    except FeatureError as exc:  # "<file>: <problem>"
        raise CLIError(f"cannot read {exc}") from None
    return files, schema, rows


def _fit(args: argparse.Namespace) -> int:
    from airflow_ml_provider.ml.features import FeatureError, FeatureSpec, fit
    from airflow_ml_provider.ml.features.streaming import fit_parquet

    text = _read_text(args.spec, "spec file")
    try:
        spec = FeatureSpec.from_yaml(text, source=args.spec)
    except FeatureError as exc:
        raise CLIError(str(exc)) from None
    source = _local_parquet(args.data)
    df = read_table(args.data) if source is None else None
    try:
        fitted = fit(spec, df) if source is None else fit_parquet(spec, args.data)
    except FeatureError as exc:
        raise CLIError(f"{args.data}: {exc}") from None
    n_rows = len(df) if source is None else source[2]

    def write(tmp: str) -> None:
        Path(tmp).write_text(fitted.to_json(), encoding="utf-8")

    _atomic_write(args.out, write)
    print(
        f"fitted {len(spec.features)} features on {n_rows} rows -> {fitted.n_outputs} columns; "
        f"wrote {args.out} ({fitted.content_hash})"
    )
    return 0


def _load_fitted(path: str):
    from airflow_ml_provider.ml.features import FeatureError, FittedSpec

    text = _read_text(path, "fitted spec file")
    try:
        return FittedSpec.from_json(text, source=path)
    except FeatureError as exc:
        raise CLIError(str(exc)) from None


def _transform(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.features import FeatureError

    fitted = _load_fitted(args.fitted)
    source = _local_parquet(args.data)
    if source is not None and source[2] > 0:
        return _transform_streamed(args, fitted, source)
    df = read_table(args.data)
    try:
        matrix = fitted.transform(df)
    except FeatureError as exc:
        raise CLIError(f"{args.data}: {exc}") from None
    columns = {name: matrix[:, i] for i, name in enumerate(fitted.feature_names)}
    table = pa.table(columns)
    if fitted.label is not None and fitted.label in df.columns:
        table = table.append_column(fitted.label, pa.array(df[fitted.label].to_numpy()))
    metadata = {b"airflow_ml.fitted_spec_hash": fitted.content_hash.encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    _atomic_write(args.out, lambda tmp: pq.write_table(table, tmp))
    print(f"transformed {len(df)} rows -> {matrix.shape[1]} columns; wrote {args.out}")
    return 0


def _output_table(fitted, matrix, df):
    """The CLI's output layout: one float32 column per feature, then the label if the data has it."""
    import pyarrow as pa

    table = pa.table({name: matrix[:, i] for i, name in enumerate(fitted.feature_names)})
    if fitted.label is not None and fitted.label in df.columns:
        table = table.append_column(fitted.label, pa.array(df[fitted.label].to_numpy()))
    metadata = {b"airflow_ml.fitted_spec_hash": fitted.content_hash.encode()}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})


def _transform_streamed(args: argparse.Namespace, fitted, source) -> int:
    """Transform a local Parquet input batch by batch; each batch is written as a row group."""
    import pyarrow.parquet as pq

    from airflow_ml_provider.ml.features import FeatureError
    from airflow_ml_provider.ml.features.fitted import _check_columns
    from airflow_ml_provider.ml.features.streaming import batch_frame, iter_parquet

    files, schema, n_rows = source
    try:
        _check_columns(schema.empty_table(), fitted.spec.features)
    except FeatureError as exc:
        raise CLIError(f"{args.data}: {exc}") from None
    wanted = list(fitted._input_columns)
    if fitted.label is not None and fitted.label in schema.names and fitted.label not in wanted:
        wanted.append(fitted.label)

    def write(tmp: str) -> None:
        writer = None
        try:
            for table in iter_parquet(files, wanted):
                df = batch_frame(table)
                out = _output_table(fitted, fitted.transform(df), df)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, out.schema)
                writer.write_table(out)
        except FeatureError as exc:
            raise CLIError(f"{args.data}: {exc}") from None
        finally:
            if writer is not None:
                writer.close()

    _atomic_write(args.out, write)
    print(f"transformed {n_rows} rows -> {fitted.n_outputs} columns; wrote {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    fitted = _load_fitted(args.fitted)
    out = sys.stdout
    print(f"fitted spec {args.fitted}", file=out)
    print(f"  content hash: {fitted.content_hash}", file=out)
    print(f"  format version: {fitted.format_version}", file=out)
    print(f"  label: {fitted.label or '-'}", file=out)
    print(f"  input columns: {', '.join(fitted.input_columns)}", file=out)
    print(f"  output columns: {fitted.n_outputs}", file=out)
    versions = fitted.transformer_versions()
    for fdef in fitted.spec.features:
        chain = " -> ".join(f"{name}@{ver}" for name, ver in versions[fdef.name])
        print(f"  [{fdef.group}] {fdef.name} ({fdef.dtype}): {chain}", file=out)
    return 0


def _list_transformers(args: argparse.Namespace) -> int:
    from airflow_ml_provider.ml.features import available_transformers, get_transformer_class

    for name in available_transformers():
        try:
            cls = get_transformer_class(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
            print(f"{name:14s} (cannot load: {exc})")
            continue
        inputs = "/".join(cls.input_kinds)
        print(f"{name:14s} v{cls.version}  [{inputs}]  {cls.description}")
    return 0
