"""SampleOperator: get training samples from SQL or files, sample them, split them, write Parquet.

Sources are SQL queries run through any Airflow SQL connection (a common-sql ``DbApiHook``:
SQLite, MySQL/MariaDB, Postgres, Hive...) or Parquet/CSV files in storage. Several sources are
combined by ``union`` (UNION ALL) or ``join`` (the first source streamed, the others held in memory
and joined on ``join_on``). Rows are streamed with ``fetchmany`` in chunks of ``chunk_rows`` and
written chunk by chunk, so memory stays bounded whatever the size of the result.

Values go to the database as **bound parameters** (``parameters``), never formatted into the SQL:

* ``parameters`` as a dict: the SQL uses ``:name`` placeholders, bound by SQLAlchemy on the
  connection's engine -- the same SQL runs on SQLite, MySQL and Postgres; streamed with a
  server-side cursor where the driver has one (MySQL: ``SSCursor``);
* ``parameters`` as a list (or none): the SQL is run on the DB-API cursor in the driver's own
  paramstyle (``?`` for SQLite, ``%s`` for MySQL/Postgres).

The pure sampling logic lives in :mod:`airflow_ml_provider.ml.sampling`.

XCom (``return_value``): the flat ``sample`` record of :mod:`airflow_ml_provider.ml.records`::

    {"uri": <output dir>, "train": <uri>, "valid": <uri or null>, "test": <uri or null>,
     "rows_train": n, "rows_valid": n, "rows_test": n, "rows_read": n, "n_columns": n,
     "time_boundaries": [valid_start, test_start] or null}

The column names and types are in the Parquet files' schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.operators.base import MLBaseOperator

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SampleOperator", "SampleSourceError"]


class SampleSourceError(RuntimeError):
    """A source could not be read: names the source (connection or URI) and the driver's message."""


class SampleOperator(MLBaseOperator):
    """Get training samples: SQL or files -> sample -> train/valid/test Parquet files.

    Give either ``conn_id`` + ``sql`` (one SQL source) or ``sources`` (several).

    :param conn_id: the Airflow SQL connection of the single SQL source.
    :param sql: the SELECT of the single SQL source (templated; a path ending in ``.sql`` is read
        from the DAG folder).
    :param parameters: bound parameters of ``sql``: a dict (``:name`` placeholders) or a list
        (the driver's paramstyle). Never formatted into the SQL.
    :param sources: a list of sources, each ``{"conn_id": ..., "sql": ..., "parameters": ...}`` or
        ``{"uri": <parquet/csv file in storage>, "format": "parquet"|"csv"}``, optionally ``"name"``.
    :param combine: ``union`` (UNION ALL, columns matched by name) or ``join`` (see ``join_on``).
    :param join_on: the key column(s) of a join; the first source is streamed, the others are
        loaded in memory (put the big table first).
    :param join_how: ``inner`` or ``left``.
    :param ratio: keep each row with this probability (random sample); None keeps all rows.
    :param count: keep exactly this many rows instead of a ratio.
    :param seed: the seed of the sample and of the split.
    :param key_column: hash this column (e.g. the event id) instead of the whole row.
    :param stratify_column: sample each value of this column with its own ratio.
    :param strata_ratios: ``{value: ratio}`` for the stratified sample; unlisted values use ``ratio``.
    :param split_by: ``random``, ``group`` (by ``group_column``), ``time`` (by ``time_column``) or ``none``.
    :param split_ratios: ``[train, valid, test]`` ratios summing to 1.
    :param group_column: id column of a grouped split: one id (user) never spans two splits.
    :param time_column: the time column of a time split.
    :param time_boundaries: ``[valid_start, test_start]`` of a time split; default the ratio quantiles.
    :param chunk_rows: rows fetched and written per chunk (bounds memory).
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the output directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "conn_id", "sql", "parameters", "sources", "combine", "join_on", "join_how", "ratio", "count",
        "seed", "key_column", "stratify_column", "strata_ratios", "split_by", "split_ratios",
        "group_column", "time_column", "time_boundaries", "chunk_rows", "storage_root", "output_uri",
    )
    template_ext: Sequence[str] = (".sql",)
    record_kind = "sample"  # the keys of its XCom: airflow_ml_provider.ml.records.RECORD_KEYS
    template_fields_renderers = {"sql": "sql", "parameters": "json", "sources": "json"}
    ui_color = "#e3eefc"

    def __init__(
        self,
        *,
        conn_id: str | None = None,
        sql: str | None = None,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        sources: Sequence[Mapping[str, Any]] | None = None,
        combine: str = "union",
        join_on: str | Sequence[str] | None = None,
        join_how: str = "inner",
        ratio: float | str | None = None,
        count: int | str | None = None,
        seed: int | str = 42,
        key_column: str | None = None,
        stratify_column: str | None = None,
        strata_ratios: Mapping[str, float] | str | None = None,
        split_by: str = "random",
        split_ratios: Sequence[float] | str = (0.8, 0.1, 0.1),
        group_column: str | None = None,
        time_column: str | None = None,
        time_boundaries: Sequence[Any] | str | None = None,
        chunk_rows: int | str = 50_000,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage_root = storage_root
        self.output_uri = output_uri
        if sources is None and not sql:
            raise ValueError(f"SampleOperator({kwargs.get('task_id')}): give sql (with conn_id) or sources")
        self.conn_id = conn_id
        self.sql = sql
        self.parameters = parameters
        self.sources = sources
        self.combine = combine
        self.join_on = join_on
        self.join_how = join_how
        self.ratio = ratio
        self.count = count
        self.seed = seed
        self.key_column = key_column
        self.stratify_column = stratify_column
        self.strata_ratios = strata_ratios
        self.split_by = split_by
        self.split_ratios = split_ratios
        self.group_column = group_column
        self.time_column = time_column
        self.time_boundaries = time_boundaries
        self.chunk_rows = chunk_rows

    # ------------------------------------------------------------------------------------------

    def build_plan(self):
        from airflow_ml_provider.ml.sampling import SamplingPlan

        ratio = self.as_float("ratio", self.ratio)
        if ratio is not None and ratio >= 1.0:
            ratio = None if ratio == 1.0 else ratio
        split_ratios = self.as_obj("split_ratios", self.split_ratios)
        if isinstance(split_ratios, str):
            split_ratios = [float(x) for x in split_ratios.split(",")]
        return SamplingPlan(
            ratio=ratio,
            count=self.as_int("count", self.count),
            seed=self.as_int("seed", self.seed, allow_none=False),
            key_column=self.key_column or None,
            stratify_column=self.stratify_column or None,
            strata_ratios=self.as_obj("strata_ratios", self.strata_ratios) or {},
            split_by=self.split_by or "random",
            split_ratios=tuple(float(x) for x in split_ratios),
            group_column=self.group_column or None,
            time_column=self.time_column or None,
            time_boundaries=self.as_obj("time_boundaries", self.time_boundaries),
            chunk_rows=self.as_int("chunk_rows", self.chunk_rows, allow_none=False),
        ).validate()

    def source_list(self) -> list[dict[str, Any]]:
        sources = self.as_obj("sources", self.sources)
        if sources is None:
            return [{"conn_id": self.conn_id, "sql": self.sql, "parameters": self.as_obj("parameters", self.parameters)}]
        if not isinstance(sources, (list, tuple)) or not sources:
            raise ValueError(f"SampleOperator({self.task_id}): sources must be a non-empty list")
        out = []
        for i, src in enumerate(sources):
            if not isinstance(src, Mapping) or not (src.get("sql") or src.get("uri")):
                raise ValueError(f"SampleOperator({self.task_id}): sources[{i}] needs 'sql' (+ 'conn_id') or 'uri'")
            s = dict(src)
            s.setdefault("conn_id", self.conn_id)
            s["parameters"] = self.as_obj(f"sources[{i}].parameters", s.get("parameters"))
            out.append(s)
        return out

    def run(self, context: Any) -> dict[str, Any]:
        from airflow_ml_provider.ml import sampling, storage
        from airflow_ml_provider.ml.records import make_record

        plan = self.build_plan()
        sources = self.source_list()
        combine = (self.combine or "union").lower()
        if combine not in ("union", "join"):
            raise ValueError(f"SampleOperator({self.task_id}): combine must be 'union' or 'join', got {self.combine!r}")
        out_uri = self.resolved_output_uri(context)
        self.log.info("Sampling %d source(s) (%s) with %s into %s", len(sources), combine, plan, storage.mask_uri(out_uri))
        with self.workdir("sample") as tmp, ExitStack() as stack:
            streams = [self._stream(src, plan.chunk_rows, stack, tmp) for src in sources]
            names = [self._label(s) for s in sources]
            if len(streams) == 1:
                chunks: Any = streams[0]
            elif combine == "union":
                chunks = sampling.union_chunks(streams, names)
            else:
                join_on = self.as_obj("join_on", self.join_on)
                if not join_on:
                    raise ValueError(f"SampleOperator({self.task_id}): combine='join' needs join_on")
                import pyarrow as pa

                chunks = streams[0]
                for label, stream in zip(names[1:], streams[1:]):
                    right = pa.concat_tables(list(stream))
                    self.log.info("join: %s holds %d rows in memory", label, right.num_rows)
                    chunks = sampling.join_chunks(chunks, right, join_on, self.join_how or "inner")
            local_out = f"{tmp}/out"
            result = sampling.run_sampling(chunks, plan, local_out, log=self.log.info)
            self.publish_dir(local_out, out_uri)
        files = {s: storage.join(out_uri, f"{s}.parquet") for s in result.files}
        rows = result.rows or {}
        return make_record(
            "sample",
            uri=out_uri,
            train=files.get("train"),
            valid=files.get("valid"),
            test=files.get("test"),
            rows_train=int(rows.get("train") or 0),
            rows_valid=int(rows.get("valid") or 0),
            rows_test=int(rows.get("test") or 0),
            rows_read=result.rows_read,
            n_columns=len(result.columns or []),
            time_boundaries=result.time_boundaries,
        )

    # ------------------------------------------------------------------------------------------

    @staticmethod
    def _label(src: Mapping[str, Any]) -> str:
        if src.get("name"):
            return str(src["name"])
        if src.get("uri"):
            from airflow_ml_provider.ml.storage import mask_uri

            return f"file {mask_uri(src['uri'])}"
        return f"query on connection {src.get('conn_id')!r}"

    def _stream(self, src: Mapping[str, Any], chunk_rows: int, stack: ExitStack, tmp: str) -> Iterator[pa.Table]:
        if src.get("uri"):
            return self._file_stream(src, chunk_rows)
        return self._sql_stream(src, chunk_rows, stack)

    def _file_stream(self, src: Mapping[str, Any], chunk_rows: int) -> Iterator[pa.Table]:
        from airflow_ml_provider.ml import sampling, storage

        uri = src["uri"]
        try:
            fs, path = storage.filesystem_for(uri)
            if not fs.exists(path):
                raise SampleSourceError(f"SampleOperator({self.task_id}): source file {storage.mask_uri(uri)} does not exist")
        except storage.StorageError as exc:
            raise SampleSourceError(f"SampleOperator({self.task_id}): {exc}") from None
        return sampling.chunks_from_file(path, fs, chunk_rows, src.get("format"))

    def _sql_stream(self, src: Mapping[str, Any], chunk_rows: int, stack: ExitStack) -> Iterator[pa.Table]:
        conn_id = src.get("conn_id")
        sql = src.get("sql")
        params = src.get("parameters")
        if not conn_id:
            raise ValueError(f"SampleOperator({self.task_id}): a SQL source needs conn_id")
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError(f"SampleOperator({self.task_id}): the SQL of {self._label(src)} is empty")
        if params is not None and not isinstance(params, (Mapping, list, tuple)):
            raise ValueError(
                f"SampleOperator({self.task_id}): parameters must be a dict (:name placeholders) or a list, "
                f"got {type(params).__name__}"
            )
        hook = self._sql_hook(conn_id)
        where = f"the query on connection {conn_id!r}"
        return self._guarded(self._open_cursor(hook, sql, params, chunk_rows, stack, where), where)

    def _sql_hook(self, conn_id: str) -> Any:
        from airflow.providers.common.sql.hooks.sql import DbApiHook
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        hook = conn.get_hook()
        if not isinstance(hook, DbApiHook):
            raise SampleSourceError(
                f"SampleOperator({self.task_id}): connection {conn_id!r} (type {conn.conn_type!r}) is not a SQL "
                f"connection (its hook {type(hook).__name__} is not a DbApiHook)"
            )
        return hook

    def _open_cursor(self, hook: Any, sql: str, params: Any, chunk_rows: int, stack: ExitStack,
                     where: str) -> Iterator[pa.Table]:
        from airflow_ml_provider.ml import sampling

        if isinstance(params, Mapping):
            import sqlalchemy as sa

            engine = hook.get_sqlalchemy_engine()
            stack.callback(engine.dispose)
            conn = stack.enter_context(engine.connect())
            result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(
                sa.text(sql), dict(params)
            )
            stack.callback(result.close)
            if not result.returns_rows:
                raise SampleSourceError(f"SampleOperator({self.task_id}): {where} returned no rows: it must be a SELECT")
            names = list(result.keys())

            def batches():
                while True:
                    rows = result.fetchmany(chunk_rows)
                    if not rows:
                        return
                    yield [tuple(r) for r in rows]

            yield from sampling.chunks_from_rows(batches(), names)
            return
        dbapi = hook.get_conn()
        stack.callback(dbapi.close)
        cursor = dbapi.cursor()
        stack.callback(cursor.close)
        if params:
            cursor.execute(sql, tuple(params))
        else:
            cursor.execute(sql)
        if cursor.description is None:
            raise SampleSourceError(f"SampleOperator({self.task_id}): {where} returned no rows: it must be a SELECT")
        yield from sampling.chunks_from_cursor(cursor, chunk_rows)

    def _guarded(self, stream: Iterator[pa.Table], where: str) -> Iterator[pa.Table]:
        """Re-raise driver errors as SampleSourceError naming the source and the driver's message."""
        from airflow_ml_provider.ml.sampling import SamplingError

        try:
            yield from stream
        except (SampleSourceError, SamplingError):
            raise
        except Exception as exc:  # noqa: BLE001 - DB-API drivers raise their own types
            raise SampleSourceError(f"SampleOperator({self.task_id}): {where} failed: {_driver_message(exc)}") from exc


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver error
    if orig is not None:
        exc = orig
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
