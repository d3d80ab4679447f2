"""PreprocessOperator: fit the feature spec on the training split and transform every split.

Input: the splits written by :class:`~airflow_ml_provider.operators.sample.SampleOperator`
(its XCom, from ``input_task_id``), or explicit ``train_uri`` / ``valid_uri`` / ``test_uri``.
Parquet splits are fitted from streaming statistics and transformed row group by row group
(:mod:`airflow_ml_provider.ml.features.streaming`), so memory does not grow with the rows; the
fitted spec is the one the in-memory fit gives. CSV splits are read whole.

The feature spec (YAML, see :mod:`airflow_ml_provider.ml.features`) is given as ``spec``:

* a path relative to the DAG file's folder (``specs/audio_recommendation.yaml``), or absolute;
* a storage URI (``webhdfs://hdfs_default@/resources/specs/x.yaml``, ``file:///...``) -- storage
  plays the part of a scheduler's *resource center*: upload the spec once, reference it from DAGs;
* inline YAML text.

Output directory: ``fitted_spec.json`` (config + learned state + content hash: what training and
serving both load) and ``train/valid/test.parquet`` feature tables
(:mod:`airflow_ml_provider.ml.feature_table`: a float32 matrix, the label, and ``keep_columns``).

XCom (``return_value``): the flat ``preprocess`` record of :mod:`airflow_ml_provider.ml.records`::

    {"uri": <dir>, "fitted_spec_uri": <uri>, "spec_hash": <FittedSpec.content_hash>,
     "spec_source": <where the spec YAML came from>, "raw_train_uri": <the split the spec was fitted on>,
     "train": <uri>, "valid": <uri|null>, "test": <uri|null>, "label": <label column>,
     "n_features": d, "rows_train": n, "rows_valid": n, "rows_test": n}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_ml_provider.operators.base import MLBaseOperator

__all__ = ["PreprocessOperator"]

SPLITS = ("train", "valid", "test")


class PreprocessOperator(MLBaseOperator):
    """Fit a feature spec on the training split, transform all splits, write feature tables.

    :param spec: the feature spec: a path (relative to the DAG folder, or absolute), a storage
        URI, or inline YAML text.
    :param input_task_id: the sampling task whose XCom names the splits (default ``sample``).
    :param train_uri: the training split (Parquet/CSV), overriding ``input_task_id``.
    :param valid_uri: the validation split (optional).
    :param test_uri: the test split (optional).
    :param keep_columns: raw columns copied next to the features (ids, timestamps), e.g.
        ``["user_id", "event_id"]``.
    :param storage_root: see :class:`~airflow_ml_provider.operators.base.MLBaseOperator`.
    :param output_uri: the output directory; default ``<storage_root>/runs/<dag>/<run>/<task>``.
    """

    template_fields: Sequence[str] = (
        "spec", "input_task_id", "train_uri", "valid_uri", "test_uri", "keep_columns", "storage_root",
        "output_uri",
    )
    ui_color = "#fdf1dc"
    record_kind = "preprocess"  # the keys of its XCom: airflow_ml_provider.ml.records.RECORD_KEYS

    def __init__(
        self,
        *,
        spec: str,
        input_task_id: str | None = "sample",
        train_uri: str | None = None,
        valid_uri: str | None = None,
        test_uri: str | None = None,
        keep_columns: Sequence[str] | str | None = None,
        storage_root: str | None = None,
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage_root = storage_root
        self.output_uri = output_uri
        self.spec = spec
        self.input_task_id = input_task_id
        self.train_uri = train_uri
        self.valid_uri = valid_uri
        self.test_uri = test_uri
        self.keep_columns = keep_columns

    def resolve_spec_text(self, context: Any) -> tuple[str, str]:
        """The spec YAML text and where it came from."""
        from airflow_ml_provider.ml import storage

        spec = str(self.spec or "").strip()
        if not spec:
            raise ValueError(f"PreprocessOperator({self.task_id}): spec is empty")
        if "\n" in spec:
            return spec, "<inline spec>"
        if "://" in spec:
            if spec.startswith("file://"):
                path = spec[len("file://"):]
            else:
                try:
                    return storage.read_bytes(spec).decode("utf-8"), storage.mask_uri(spec)
                except storage.StorageError as exc:
                    raise FileNotFoundError(f"PreprocessOperator({self.task_id}): feature spec not found: {exc}") from None
        else:
            path = spec
        candidates = [Path(path)]
        if not os.path.isabs(path):
            folders = []
            dag = context.get("dag") or getattr(self, "dag", None)
            fileloc = getattr(dag, "fileloc", None)
            if fileloc:
                folders.append(Path(fileloc).parent)
            folders += [Path(p) for p in getattr(dag, "template_searchpath", None) or []]
            candidates = [f / path for f in folders] + [Path(path)]
        for c in candidates:
            if c.is_file():
                return c.read_text(encoding="utf-8"), str(c)
        raise FileNotFoundError(
            f"PreprocessOperator({self.task_id}): feature spec {spec!r} not found (looked in "
            f"{', '.join(str(c) for c in candidates)})"
        )

    def run(self, context: Any) -> dict[str, Any]:
        import pandas as pd

        from airflow_ml_provider.ml import storage
        from airflow_ml_provider.ml.feature_table import write_feature_table
        from airflow_ml_provider.ml.features import FeatureSpec, fit
        from airflow_ml_provider.ml.features.streaming import (
            fit_parquet,
            parquet_files,
            parquet_schema,
            transform_parquet,
        )
        from airflow_ml_provider.ml.records import make_record

        inputs = {"train": self.train_uri, "valid": self.valid_uri, "test": self.test_uri}
        if not inputs["train"]:
            sample = self.upstream(context, self.input_task_id)
            inputs = {s: (sample or {}).get(s) for s in SPLITS}
        if not inputs["train"]:
            raise ValueError(f"PreprocessOperator({self.task_id}): no training split (set train_uri or input_task_id)")
        text, where = self.resolve_spec_text(context)
        spec = FeatureSpec.from_yaml(text)
        keep = self.as_obj("keep_columns", self.keep_columns) or []
        if isinstance(keep, str):
            keep = [c.strip() for c in keep.split(",") if c.strip()]
        out_uri = self.resolved_output_uri(context)
        self.log.info("Feature spec from %s; splits %s", where, {k: storage.mask_uri(v) for k, v in inputs.items() if v})

        with self.workdir("preprocess") as tmp:
            local = Path(tmp) / "out"
            local.mkdir()

            def is_csv(path: str) -> bool:
                return path.lower().endswith((".csv", ".csv.gz"))

            # Parquet splits are fitted from streaming statistics and transformed row group by row
            # group (ml/features/streaming.py: memory does not grow with the rows); CSV is read whole
            train_path = self.fetch_file(inputs["train"], tmp)
            if is_csv(train_path):
                train_df = pd.read_csv(train_path)
                n_train, columns = len(train_df), list(train_df.columns)
            else:
                train_df = None
                schema, n_train = parquet_schema(parquet_files(train_path))
                columns = list(schema.names)
            if n_train == 0:
                raise ValueError(f"PreprocessOperator({self.task_id}): the training split {inputs['train']} has no rows")
            missing = [c for c in keep if c not in columns]
            if missing:
                raise ValueError(
                    f"PreprocessOperator({self.task_id}): keep_columns {missing} not in the training data; "
                    f"columns: {columns}"
                )
            fitted = fit(spec, train_df) if train_df is not None else fit_parquet(spec, train_path)
            fitted.save(local / "fitted_spec.json")
            label = getattr(fitted, "label", None)
            names = list(fitted.feature_names)
            self.log.info("Fitted %d features on %d training rows (label %r, hash %s)", len(names), n_train,
                          label, getattr(fitted, "content_hash", "?"))
            rows: dict[str, int] = {}
            for split in SPLITS:
                if not inputs.get(split):
                    continue
                path = train_path if split == "train" else self.fetch_file(inputs[split], tmp)
                if is_csv(path):
                    df = train_df if split == "train" and train_df is not None else pd.read_csv(path)
                    split_columns, n_split = list(df.columns), len(df)
                else:
                    df = None
                    schema, n_split = parquet_schema(parquet_files(path))
                    split_columns = list(schema.names)
                if split != "train" and n_split == 0:
                    continue
                if label and label not in split_columns:
                    raise ValueError(
                        f"PreprocessOperator({self.task_id}): label column {label!r} is missing from the "
                        f"{split} split; columns: {split_columns}"
                    )
                if df is None:
                    n = transform_parquet(fitted, path, local / f"{split}.parquet", keep_columns=keep)
                else:
                    X = fitted.transform(df)
                    y = df[label].to_numpy(dtype="float32", na_value=float("nan")) if label else None
                    extra = {c: df[c].to_numpy() for c in keep} if keep else None
                    write_feature_table(local / f"{split}.parquet", X, y=y, feature_names=names, extra_columns=extra)
                    n = int(X.shape[0])
                    del X
                rows[split] = n
                self.log.info("%s: %d rows x %d features", split, n, len(names))
                del df
            self.publish_dir(local, out_uri)
        return make_record(
            "preprocess",
            uri=out_uri,
            fitted_spec_uri=storage.join(out_uri, "fitted_spec.json"),
            spec_hash=fitted.content_hash,
            spec_source=where,
            raw_train_uri=str(inputs["train"]),
            **{s: (storage.join(out_uri, f"{s}.parquet") if s in rows else None) for s in SPLITS},
            label=label,
            n_features=len(names),
            **{f"rows_{s}": rows.get(s, 0) for s in SPLITS},
        )
