"""The flat task record: what one pipeline task hands to the next (its ``return_value`` XCom).

Every operator of the pipeline returns ONE small flat record -- a dict whose values are scalars
(str, int, float, bool, None) or short lists of scalars -- built with :func:`make_record`, which
refuses a missing or unknown key, a nested dict, and a long list. No record embeds another task's
record: a task that needs a value from further upstream reads it from that task
(``MLBaseOperator.upstream(context, task_id)``; the operators take the task ids as arguments).

Conventions of the keys:

* ``uri`` is the task's own output directory;
* ``train`` / ``valid`` / ``test`` are split URIs, named after the split so that an operator's
  ``split=`` argument indexes the record; null when the split is empty or absent;
* every other URI key ends in ``_uri``;
* ``spec_hash`` is a fitted feature spec's ``FittedSpec.content_hash`` (``sha256:<hex>``); a model
  carries the hash of the spec its features came from, so evaluate and publish can check that the
  feature tables and the spec they read belong to that model.

The keys of each record kind (the table in docs/pipeline.md lists them with their meaning;
``tests/test_task_contract.py`` checks the two agree and that every task of the example DAG
returns exactly these keys):

=============  ================================================================================
kind           keys
=============  ================================================================================
sample         uri, train, valid, test, rows_train, rows_valid, rows_test, rows_read,
               n_columns, time_boundaries
preprocess     uri, fitted_spec_uri, spec_hash, spec_source, raw_train_uri, train, valid, test,
               label, n_features, rows_train, rows_valid, rows_test
train          uri, framework, task, best_iteration, final_metric, final_metric_value,
               train_seconds, spec_hash, train_uri, valid_uri
word2vec       uri, framework, task, train_seconds, train_uri, valid_uri, vocabulary_size,
               sentences, eval_k, hit_rate, popularity_hit_rate, evaluation_uri
evaluate       uri, model_name, model_uri, data_uri, spec_hash, task, n_rows, auc, ks, logloss,
               rmse, mae, r2, metrics_uri, charts_uri, gate_uri, gate_passed, gate_reasons,
               champion_version, champion_rescored, champion_auc, champion_ks, champion_logloss,
               champion_rmse, champion_mae, champion_r2, champion_metrics_uri
publish        name, version, uri, checksum, registry_id, evaluated
=============  ================================================================================

Pure core: no Airflow import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "MAX_LIST_ITEMS",
    "RECORD_KEYS",
    "RecordError",
    "Scalar",
    "TaskRecord",
    "check_flat",
    "check_same_spec",
    "make_record",
]

Scalar = str | int | float | bool | None
#: the one record type passed between tasks
TaskRecord = dict[str, Scalar | list[Scalar]]

#: a list value holds at most this many scalars (a record is small; data lives at URIs)
MAX_LIST_ITEMS = 100

RECORD_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "sample": ("uri", "train", "valid", "test", "rows_train", "rows_valid", "rows_test", "rows_read",
               "n_columns", "time_boundaries"),
    "preprocess": ("uri", "fitted_spec_uri", "spec_hash", "spec_source", "raw_train_uri", "train", "valid",
                   "test", "label", "n_features", "rows_train", "rows_valid", "rows_test"),
    "train": ("uri", "framework", "task", "best_iteration", "final_metric", "final_metric_value",
              "train_seconds", "spec_hash", "train_uri", "valid_uri"),
    "word2vec": ("uri", "framework", "task", "train_seconds", "train_uri", "valid_uri", "vocabulary_size",
                 "sentences", "eval_k", "hit_rate", "popularity_hit_rate", "evaluation_uri"),
    "evaluate": ("uri", "model_name", "model_uri", "data_uri", "spec_hash", "task", "n_rows", "auc", "ks",
                 "logloss", "rmse", "mae", "r2", "metrics_uri", "charts_uri", "gate_uri", "gate_passed",
                 "gate_reasons", "champion_version", "champion_rescored", "champion_auc", "champion_ks",
                 "champion_logloss", "champion_rmse", "champion_mae", "champion_r2", "champion_metrics_uri"),
    "publish": ("name", "version", "uri", "checksum", "registry_id", "evaluated"),
})


class RecordError(ValueError):
    """A task record is not flat, or its keys are not those of its kind. Names the key."""


def _scalar(value: Any, where: str) -> Scalar:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # XCom is JSON: NaN/inf become null
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and not isinstance(value, (list, tuple, Mapping)):
        try:
            return _scalar(item(), where)
        except (TypeError, ValueError):
            pass
    if hasattr(value, "__fspath__"):
        return str(value)
    raise RecordError(f"{where}: {type(value).__name__} value is not a scalar (str, int, float, bool or null)")


def _value(value: Any, where: str) -> Scalar | list[Scalar]:
    if isinstance(value, Mapping):
        raise RecordError(f"{where}: a task record is flat; a dict value is not allowed "
                          "(give each value its own key, or write the data to storage and record its URI)")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LIST_ITEMS:
            raise RecordError(f"{where}: a list of {len(value)} items; a task record holds at most "
                              f"{MAX_LIST_ITEMS} (write longer data to storage and record its URI)")
        return [_scalar(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _scalar(value, where)


def check_flat(record: Any, where: str = "task record") -> None:
    """Raise :class:`RecordError` unless ``record`` is a dict of scalars and short lists of scalars."""
    if not isinstance(record, Mapping):
        raise RecordError(f"{where}: a task record is a dict, got {type(record).__name__}")
    for key, value in record.items():
        if not isinstance(key, str):
            raise RecordError(f"{where}: key {key!r} is not a string")
        _value(value, f"{where}: key {key!r}")


def make_record(kind: str, **values: Any) -> TaskRecord:
    """The record of a task of ``kind``: exactly the keys of ``RECORD_KEYS[kind]``, values made flat.

    Non-finite floats become None and numpy scalars plain Python values (XCom is JSON).
    """
    try:
        keys = RECORD_KEYS[kind]
    except KeyError:
        raise RecordError(f"unknown task record kind {kind!r}; known: {', '.join(RECORD_KEYS)}") from None
    missing = [k for k in keys if k not in values]
    unknown = sorted(set(values) - set(keys))
    if missing or unknown:
        parts = ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {unknown}"] if unknown else [])
        raise RecordError(f"{kind} record: {'; '.join(parts)}")
    return {k: _value(values[k], f"{kind} record: key {k!r}") for k in keys}


def check_same_spec(where: str, model_task: str | None, model_hash: Any, features_task: str | None,
                    features_hash: Any) -> None:
    """Refuse feature tables or a fitted spec of another fitted spec than the model was trained on.

    ``model_hash`` is the ``spec_hash`` of a model's record (train, evaluate), ``features_hash`` the
    one of the preprocess record the caller is about to use; either may be null (unknown: no check).
    """
    if model_hash and features_hash and model_hash != features_hash:
        raise RecordError(
            f"{where}: the model of task {model_task!r} was trained on features of fitted spec {model_hash}, but "
            f"task {features_task!r} provides fitted spec {features_hash} (was {model_task!r} disabled in a run "
            f"where {features_task!r} ran?): disable {features_task!r} too, or enable {model_task!r}"
        )
