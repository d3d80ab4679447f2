"""Word2Vec item embeddings with gensim (item2vec: a user's play history is a sentence).

Input: a :class:`Dataset` whose extra column ``sentences`` (param ``sentences_column``) holds one
sequence of item ids per row, e.g. ``Dataset.from_sentences([["a1", "a7", "a3"], ...])`` or a
feature table with a ``list<string>`` column. ``X`` and ``y`` are ignored. Item ids are strings
(other values are converted with ``str``).

Params:

====================  ==========================================================================
``sentences_column``  default ``sentences``
``vector_size``       embedding dimension, default 64
``window``            context window, default 5
``min_count``         drop items seen fewer times, default 1
``sg``                1 = skip-gram (default), 0 = CBOW
``negative``          negative samples, default 5
``epochs``            default 5
``alpha``             initial learning rate, default 0.025
``sample``            down-sampling of frequent items, default 1e-3
``workers``           threads, default 1 (one thread makes training reproducible with ``seed``)
``seed``              default 0
``max_vocab_size``    default unlimited
====================  ==========================================================================

Output files: ``vectors.npy`` (float32 ``(n_items, vector_size)``), ``vocabulary.json`` (items
in row order with their counts) and ``word2vec.bin`` (the standard word2vec binary format, for
other tools). Each epoch's training loss is logged.

The predictor is NOT a scorer: :class:`Word2VecPredictor` offers ``vector(item)``,
``vectors(items)`` (also as ``predict(items)``), ``similar(item, topn)`` and ``similar_to_vector``
with cosine similarity, in numpy only (serving needs no gensim). Unknown items raise
:class:`UnknownItemError` (a ``KeyError``). ``feature_importance()`` returns ``{}``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from airflow_ml_provider.ml.feature_table import Dataset
from airflow_ml_provider.ml.trainers.base import (
    LogFn,
    ParamReader,
    TrainerError,
    TrainResult,
    library_versions,
    prepare_out_dir,
    write_metadata,
)

FRAMEWORK = "word2vec"
VECTORS_FILE = "vectors.npy"
VOCAB_FILE = "vocabulary.json"
W2V_FILE = "word2vec.bin"


class UnknownItemError(KeyError):
    """An item id is not in the model's vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown item"


def sentences_of(ds: Dataset, column: str, what: str) -> list[list[str]]:
    if column not in ds.extra:
        raise TrainerError(
            f"{what} data has no {column!r} column of item sequences (columns: {sorted(ds.extra)}); "
            "set the word2vec param 'sentences_column'"
        )
    out = []
    for i, s in enumerate(ds.extra[column]):
        if s is None:
            continue
        if isinstance(s, str):
            raise TrainerError(
                f"{what} data column {column!r} row {i}: expected a list of item ids, got a string"
            )
        out.append([str(t) for t in s])
    if not any(out):
        raise TrainerError(f"{what} data column {column!r} has no items")
    return out


class Word2VecPredictor:
    """Item vectors and nearest neighbours (cosine) in numpy."""

    framework = FRAMEWORK
    task = "embedding"

    def __init__(self, items: Sequence[str], vectors: np.ndarray, counts: Sequence[int] | None = None):
        self.feature_names: list[str] = []  # no input features: the inputs are item ids
        self.items = [str(i) for i in items]
        self.vectors_ = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = {item: i for i, item in enumerate(self.items)}
        self.counts = list(counts) if counts is not None else None
        norms = np.linalg.norm(self.vectors_, axis=1, keepdims=True)
        self.unit = self.vectors_ / np.where(norms == 0, 1, norms)
        self.vector_size = int(self.vectors_.shape[1])

    def __contains__(self, item: object) -> bool:
        return str(item) in self.index

    def __len__(self) -> int:
        return len(self.items)

    def _row(self, item: Any) -> int:
        try:
            return self.index[str(item)]
        except KeyError:
            raise UnknownItemError(
                f"item {str(item)!r} is not in the vocabulary ({len(self.items)} items)"
            ) from None

    def vector(self, item: Any) -> np.ndarray:
        return self.vectors_[self._row(item)]

    def vectors(self, items: Iterable[Any], missing: str = "zeros") -> np.ndarray:
        """``(n, vector_size)`` float32; unknown items get zeros (``missing="zeros"``) or raise (``"raise"``)."""
        items = list(items)
        out = np.zeros((len(items), self.vector_size), dtype=np.float32)
        for i, it in enumerate(items):
            j = self.index.get(str(it))
            if j is None:
                if missing == "raise":
                    self._row(it)
                continue
            out[i] = self.vectors_[j]
        return out

    def predict(self, items: Iterable[Any]) -> np.ndarray:
        """Embeddings of ``items`` (zeros for unknown ones) -- Word2Vec has no score to predict."""
        return self.vectors(items)

    def similar_to_vector(
        self, vector: np.ndarray, topn: int = 10, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.vector_size:
            raise TrainerError(f"vector has {v.shape[0]} dimensions, model has {self.vector_size}")
        n = float(np.linalg.norm(v))
        sims = self.unit @ (v / n if n else v)
        skip = {self.index[e] for e in exclude if e in self.index}
        k = min(len(self.items), topn + len(skip))
        top = _top_rows(sims, k)
        return [(self.items[i], float(sims[i])) for i in top if i not in skip][:topn]

    def similar(self, item: Any, topn: int = 10) -> list[tuple[str, float]]:
        """The ``topn`` most similar items to ``item`` (itself excluded), by cosine similarity."""
        return self.similar_to_vector(self.vector(item), topn=topn, exclude=[str(item)])

    def feature_importance(self) -> dict[str, float]:
        return {}


#: rows per block of the top-k prefilter (:func:`_top_rows`)
_BLOCK = 256
#: candidates up to this many are ordered by a full sort (ties by row); more go through argpartition
_SORT_CANDIDATES = 4096


def _top_rows(sims: np.ndarray, k: int) -> np.ndarray:
    """The rows of the ``k`` largest ``sims``, largest first, ties by row -- exact.

    Hand-written on top of numpy because it measured faster than ``np.argpartition`` over all rows
    (100,000 float32 scores, k=11: ~0.1 ms instead of ~1 ms -- half of a whole ``:similar`` query;
    bench/bench_similar.py): the maxima of blocks of ``_BLOCK`` rows give a threshold ``t`` (the
    k-th largest block maximum); k different rows score >= t, so the k-th largest score is >= t and
    every row of the top k is among the few rows scoring >= t, which are then sorted.
    """
    n = len(sims)
    if k >= n:
        rows = np.arange(n)
        return rows[np.lexsort((rows, -sims))]
    full = n // _BLOCK * _BLOCK
    if n // _BLOCK > k:
        maxima = sims[:full].reshape(-1, _BLOCK).max(axis=1)
        threshold = np.partition(maxima, len(maxima) - k)[len(maxima) - k]
        rows = np.flatnonzero(sims >= threshold)
    else:
        rows = np.arange(n)
    if len(rows) > _SORT_CANDIDATES:  # many equal scores (e.g. a zero query): partition first
        part = np.argpartition(-sims[rows], k - 1)[:k]
        kth = sims[rows[part]].min()
        rows = rows[sims[rows] >= kth]  # every row tied with the k-th too, for the order by row
    scores = sims[rows]
    return rows[np.lexsort((rows, -scores))][:k]


class Word2VecTrainer:
    """``get_trainer("word2vec")``."""

    name = FRAMEWORK

    def train(
        self,
        train: Dataset,
        valid: Dataset | None,
        params: Mapping[str, Any],
        out_dir: str | os.PathLike,
        log: LogFn = print,
    ) -> TrainResult:
        r = ParamReader(FRAMEWORK, params)
        column = r.get("sentences_column", "sentences", str)
        kw: dict[str, Any] = {
            "vector_size": r.get("vector_size", 64, int),
            "window": r.get("window", 5, int),
            "min_count": r.get("min_count", 1, int),
            "sg": r.get("sg", 1, int),
            "negative": r.get("negative", 5, int),
            "epochs": r.get("epochs", 5, int),
            "alpha": r.get("alpha", 0.025, float),
            "sample": r.get("sample", 1e-3, float),
            "workers": r.get("workers", 1, int),
            "seed": r.get("seed", 0, int),
            "max_vocab_size": r.get("max_vocab_size", None, int),
        }
        r.reject_unknown()
        for key in ("vector_size", "window", "epochs", "workers"):
            if kw[key] < 1:
                raise TrainerError(f"word2vec param {key!r} must be >= 1, got {kw[key]}")
        sentences = sentences_of(train, column, "training")
        out = prepare_out_dir(out_dir)

        logging.getLogger("gensim").setLevel(logging.WARNING)
        from gensim.models import Word2Vec
        from gensim.models.callbacks import CallbackAny2Vec

        losses: list[float] = []

        class EpochLog(CallbackAny2Vec):
            def __init__(self) -> None:
                self.epoch = 0
                self.previous = 0.0
                self.t0 = time.perf_counter()

            def on_epoch_end(self, model) -> None:
                cumulative = float(model.get_latest_training_loss())
                losses.append(cumulative - self.previous)  # gensim reports a running total
                self.previous = cumulative
                self.epoch += 1
                log(
                    f"[epoch {self.epoch}/{kw['epochs']}] loss={losses[-1]:.6g} ({time.perf_counter() - self.t0:.1f}s)"
                )

        t0 = time.perf_counter()
        model = Word2Vec(compute_loss=True, **kw)
        model.build_vocab(sentences)
        if len(model.wv.index_to_key) == 0:
            raise TrainerError(f"word2vec: no item occurs at least min_count={kw['min_count']} times")
        model.train(
            sentences,
            total_examples=model.corpus_count,
            epochs=model.epochs,
            compute_loss=True,
            callbacks=[EpochLog()],
        )
        seconds = time.perf_counter() - t0
        wv = model.wv
        items = [str(k) for k in wv.index_to_key]
        counts = [int(wv.get_vecattr(k, "count")) for k in wv.index_to_key]
        vectors = np.ascontiguousarray(wv.vectors, dtype=np.float32)
        log(
            f"word2vec: {len(items)} items x {kw['vector_size']} dims from {len(sentences)} sentences in {seconds:.2f}s"
        )

        _atomic_np_save(out / VECTORS_FILE, vectors)
        tmp = out / f".{VOCAB_FILE}.tmp"
        tmp.write_text(json.dumps({"items": items, "counts": counts}, ensure_ascii=False))
        os.replace(tmp, out / VOCAB_FILE)
        tmpb = out / f".{W2V_FILE}.tmp"
        wv.save_word2vec_format(str(tmpb), binary=True)
        os.replace(tmpb, out / W2V_FILE)

        result = TrainResult(
            framework=FRAMEWORK,
            model_files=[VECTORS_FILE, VOCAB_FILE, W2V_FILE, "metadata.json"],
            params={"sentences_column": column, **kw},
            library_versions=library_versions("gensim"),
            best_iteration=None,
            history={"train": {"loss": losses}},
            feature_names=[],
            task="embedding",
            out_dir=str(out),
            extra={
                "vocabulary_size": len(items),
                "sentences": len(sentences),
                "train_seconds": round(seconds, 4),
            },
        )
        write_metadata(out, result)
        result.predictor = Word2VecPredictor(items, vectors, counts)
        return result


def _atomic_np_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def load_predictor(model_dir: Path, meta: dict[str, Any]) -> Word2VecPredictor:
    try:
        vocab = json.loads((model_dir / VOCAB_FILE).read_text())
        vectors = np.load(model_dir / VECTORS_FILE, allow_pickle=False)
    except FileNotFoundError as exc:
        raise TrainerError(f"{exc.filename}: word2vec model file missing") from None
    if len(vocab["items"]) != len(vectors):
        raise TrainerError(
            f"{model_dir}: {len(vocab['items'])} items in {VOCAB_FILE} but {len(vectors)} rows in {VECTORS_FILE}"
        )
    return Word2VecPredictor(vocab["items"], vectors, vocab.get("counts"))
