"""Item2vec helpers: item sequences from event tables, and the next-item hit rate of embeddings.

Pure core (no Airflow, no gensim): used by
:class:`~airflow_ml_provider.operators.train.Word2VecTrainOperator` and usable on its own.

* :func:`build_sequences` turns a table of events (one row per play: user, item, time) into one
  sequence of item ids per group, ordered by time -- the "sentences" Word2Vec learns from -- or
  reads sequences that are already stored in a list column.
* :func:`next_item_hit_rate` measures embeddings on held-out sequences: for each consecutive pair
  ``(a, b)`` of a sequence, is ``b`` among the ``k`` items most similar (cosine) to ``a``? It is
  reported next to the same rate for the ``k`` most popular training items, the obvious baseline:
  embeddings that do not beat popularity have learned nothing useful.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SequenceError", "build_sequences", "next_item_hit_rate"]


class SequenceError(ValueError):
    """The event table cannot be turned into item sequences; the message names the column."""


def _item_text(values: Any) -> list[str]:
    """Item ids as text; integral floats (an int column with NULLs read as float) lose their '.0'."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    return [str(v) for v in arr.tolist()]


def build_sequences(
    table: Any,
    *,
    sequence_column: str | None = None,
    group_column: str | None = None,
    item_column: str | None = None,
    order_column: str | None = None,
    min_length: int = 2,
    where: str = "the input table",
) -> list[list[str]]:
    """Item sequences from ``table`` (a pandas DataFrame, a pyarrow Table or a column mapping).

    Either ``sequence_column`` (a list column: one sequence per row) or ``group_column`` +
    ``item_column`` (one event per row, grouped into one sequence per group), ordered by
    ``order_column`` when given (ties and the no-order case keep the table's row order).
    Rows with a missing group or item are dropped; sequences shorter than ``min_length`` are
    dropped (a single item has no context to learn from). Item ids are returned as strings.

    :raises SequenceError: a column is missing (named, with the available ones), or the
        arguments name neither layout.
    """
    import pandas as pd

    if hasattr(table, "to_pandas"):
        df = table.to_pandas()
    elif isinstance(table, pd.DataFrame):
        df = table
    else:
        df = pd.DataFrame(dict(table))
    columns = list(df.columns)

    def need(name: str | None, what: str) -> str:
        if name not in df.columns:
            raise SequenceError(f"{where}: column {name!r} ({what}) is missing; columns: {columns}")
        return str(name)

    if sequence_column:
        col = need(sequence_column, "sequence_column")
        out = []
        for i, value in enumerate(df[col].tolist()):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            if isinstance(value, (str, bytes)):
                raise SequenceError(
                    f"{where}: column {col!r} row {i} holds a string, not a list of item ids"
                )
            seq = [v for v in list(value) if v is not None]
            if len(seq) >= min_length:
                out.append(_item_text(seq) if seq else [])
        return out
    if not group_column or not item_column:
        raise SequenceError(
            f"{where}: set sequence_column (a list column), or group_column and item_column "
            "(one event per row, e.g. user_id and item_id)"
        )
    keys = [need(group_column, "group_column"), need(item_column, "item_column")]
    if order_column:
        keys.append(need(order_column, "order_column"))
    events = df[keys].dropna(subset=keys[:2])
    if order_column:
        events = events.sort_values([keys[0], keys[2]], kind="stable")
    else:
        events = events.sort_values(keys[0], kind="stable")
    groups = events[keys[0]].to_numpy()
    items = _item_text(events[keys[1]].to_numpy())
    if not items:
        return []
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(items)]
    return [items[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True) if e - s >= min_length]


def next_item_hit_rate(
    predictor: Any,
    sequences: Sequence[Sequence[Any]],
    *,
    k: int = 10,
    max_pairs: int | None = 50_000,
    popularity: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Next-item hit rate@k of item embeddings on held-out ``sequences``.

    Pairs are consecutive items ``(a, b)`` with ``a != b`` (a replay of the same item says nothing
    about similarity). A pair counts when both items are in the vocabulary; it is a hit when ``b``
    is among the ``k`` items nearest to ``a`` (cosine, ``a`` itself excluded). The popularity
    baseline predicts the ``k`` most frequent training items (``popularity``, default the
    predictor's counts), again without ``a``. ``max_pairs`` caps the work (the first pairs).

    :param predictor: a ``Word2VecPredictor`` (``items``, ``index``, ``unit``, ``counts``).
    :returns: ``{"k", "pairs", "pairs_total", "coverage", "hit_rate", "popularity_hit_rate"}``
        (rates are None when no pair could be scored).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    index: Mapping[str, int] = predictor.index
    queries: list[int] = []
    targets: list[int] = []
    total = 0
    for seq in sequences:
        s = [str(t) for t in seq]
        for a, b in zip(s, s[1:], strict=False):
            if a == b:
                continue
            total += 1
            ia, ib = index.get(a), index.get(b)
            if ia is None or ib is None:
                continue
            if max_pairs is not None and len(queries) >= max_pairs:
                continue
            queries.append(ia)
            targets.append(ib)
    result: dict[str, Any] = {"k": int(k), "pairs": len(queries), "pairs_total": total,
                              "coverage": (len(queries) / total) if total else None,
                              "hit_rate": None, "popularity_hit_rate": None}
    if not queries:
        return result
    n_items = len(predictor.items)
    kk = min(k, n_items - 1)
    q = np.asarray(queries)
    t = np.asarray(targets)
    uniq, inverse = np.unique(q, return_inverse=True)
    unit = np.asarray(predictor.unit, dtype=np.float32)
    top = np.empty((len(uniq), max(kk, 1)), dtype=np.int64)
    for start in range(0, len(uniq), 1024):  # bounded memory: 1024 x n_items similarities at a time
        rows = uniq[start : start + 1024]
        sims = unit[rows] @ unit.T
        sims[np.arange(len(rows)), rows] = -np.inf  # never the item itself
        if kk < n_items - 1:
            top[start : start + len(rows)] = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            top[start : start + len(rows)] = np.argsort(-sims, axis=1)[:, :kk]
    hits = (top[inverse] == t[:, None]).any(axis=1) if kk > 0 else np.zeros(len(t), bool)

    if popularity is None:
        counts = np.asarray(predictor.counts if predictor.counts is not None else np.ones(n_items))
    else:
        counts = np.array([float(popularity.get(item, 0)) for item in predictor.items])
    ranked = np.argsort(-counts, kind="stable")[: kk + 1]
    # the k most popular items without the query: the top k, or the top k+1 when the query is among them
    query_in_top = np.isin(q, ranked[:kk])
    pop_hits = np.where(query_in_top, np.isin(t, ranked), np.isin(t, ranked[:kk]))
    result["hit_rate"] = float(hits.mean())
    result["popularity_hit_rate"] = float(pop_hits.mean())
    return result
