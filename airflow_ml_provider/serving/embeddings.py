"""Embedding models in the online service: item ids -> vectors (``:predict``) and nearest items (``:similar``).

An ``embedding`` bundle (:mod:`airflow_ml_provider.ml.bundle`, e.g. the item2vec DAG's word2vec
vectors) has no fitted spec: its inputs are item ids. The manager loads it like any bundle (fetch,
checksums, warm-up, hot swap, version cache, rollback) through :func:`load_embedding_model`; the app
sends the two verbs here::

    POST /v1/models/{name}[/versions/{v}]:predict   {"instances": ["item_1", "item_7"]}
        -> {"predictions": [[...vector of item_1...], [...]], "model_version": v}
    POST /v1/models/{name}[/versions/{v}]:similar   {"item": "item_1" | "vector": [...], "k": 10,
                                                     "exclude": ["item_3", ...]}
        -> {"similar": [{"item": "item_9", "score": 0.93}, ...], "model_version": v}

An unknown item in ``instances`` or ``item`` is a 400 naming it; unknown ids in ``exclude`` are
ignored (a client may exclude items the model has not seen). The query item itself is never among
its own neighbours.

Nearest items are EXACT: cosine similarity against every item as one float32 matrix-vector product
over the L2-normalised copy of the vectors made at load, then the top k through a block-maximum
prefilter (:meth:`~airflow_ml_provider.ml.trainers.word2vec.Word2VecPredictor.similar_to_vector`,
the one implementation, shared with offline use). ``bench/bench_similar.py`` measures it; docs/serving.md
names the catalogue size up to which that is fast enough. A query over a catalogue of more than
:data:`INLINE_MACS` multiply-adds runs in a worker thread so the event loop keeps serving others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from airflow_ml_provider.serving.errors import BadRequest, ModelLoadError

__all__ = ["INLINE_MACS", "MAX_K", "handle_predict", "handle_similar", "is_embedding", "limit_blas_threads",
           "load_embedding_model"]

#: most neighbours one ``:similar`` request may ask for
MAX_K = 1000
#: a query costing more multiply-adds than this (items x dims) runs in a worker thread: about 2-5 ms
INLINE_MACS = 8_000_000

_SIMILAR_KEYS = ("item", "vector", "k", "exclude")


def is_embedding(model: Any) -> bool:
    return getattr(model, "kind", None) == "embedding"


# --------------------------------------------------------------------------------------------------
# Loading (called by serving.manager.load_model for a bundle of kind "embedding")
# --------------------------------------------------------------------------------------------------


def load_embedding_model(name: str, version: int, uri: str, bundle: Any, record: Any, target: Path, *,
                         predict_threads: int | None = 1) -> Any:
    """The :class:`~airflow_ml_provider.serving.manager.LoadedModel` of a verified embedding bundle.

    ``predict_threads`` (the service's ``--predict-threads``, default 1) also caps numpy's BLAS
    threads, process-wide: see :func:`limit_blas_threads`.
    """
    from airflow_ml_provider.ml.trainers import load_predictor
    from airflow_ml_provider.serving.manager import LoadedModel

    limit_blas_threads(predict_threads)
    predictor = load_predictor(bundle.framework, bundle.model_dir)
    for needed in ("vectors", "similar_to_vector", "items", "index"):
        if not hasattr(predictor, needed):
            raise ModelLoadError(f"the {bundle.framework} predictor is not an embedding model (no {needed!r})")
    model = LoadedModel(name=name, version=version, uri=uri, spec=None, predictor=predictor,
                        framework=str(bundle.framework), manifest=dict(bundle.metadata), bundle_dir=target,
                        record=record, kind="embedding")
    _warm_up(model)
    return model


def limit_blas_threads(threads: int | None) -> None:
    """Cap the BLAS thread pool numpy's matrix products use (process-wide; 0/None: leave it).

    One ``:similar`` query is one matrix-vector product. Measured on the 2-core machine under load
    (100,000 x 64, bench/bench_similar.py's query): with OpenBLAS's default 2 threads a query took
    24 ms wall and 8 ms CPU (the second thread spins waiting for a core another process holds);
    with 1 thread 6.6-10 ms wall and 2.4 ms CPU. Requests run one per thread anyway, so one BLAS
    thread per product is also what the other models' small products want.
    """
    if not threads:
        return
    try:
        from threadpoolctl import threadpool_limits  # (comes with scikit-learn)
    except ImportError:  # pragma: no cover - then the library default stays
        return
    threadpool_limits(limits=int(threads), user_api="blas")


def _warm_up(model: Any) -> None:
    """Both verbs once on the first item before the swap; the answers must be finite."""
    p = model.predictor
    if not len(p.items):
        raise ModelLoadError("warm-up: the embedding has no items")
    for _ in range(2):
        v = p.vectors([p.items[0]], missing="raise")
        top = p.similar_to_vector(v[0], topn=min(10, len(p.items)), exclude=[p.items[0]])
    if v.shape != (1, p.vector_size) or not np.isfinite(v).all():
        raise ModelLoadError(f"warm-up: the vector of item {p.items[0]!r} is not {p.vector_size} finite numbers")
    if not all(math.isfinite(s) for _, s in top):
        raise ModelLoadError("warm-up: similarity scores are not finite")


# --------------------------------------------------------------------------------------------------
# Request handlers (routed here by serving.app)
# --------------------------------------------------------------------------------------------------


def _item_id(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # numeric ids are looked up as their decimal text
    raise BadRequest(f"{where} must be an item id (a string), got a JSON {_json_type(value)}")


def _json_type(value: Any) -> str:
    from airflow_ml_provider.serving.app import _json_type as json_type

    return json_type(value)


def _payload(body: bytes, example: str) -> dict[str, Any]:
    from airflow_ml_provider.serving.app import _loads

    if not body or body.isspace():
        raise BadRequest(f"empty request body; send {example}")
    try:
        payload = _loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the request body must be a JSON object like {example}, got a JSON {_json_type(payload)}")
    return payload


def _unknown(model: Any, item: str, where: str) -> BadRequest:
    shown = item if len(item) <= 120 else item[:120] + "..."
    return BadRequest(f"{where}: unknown item {shown!r}: not in the vocabulary of model {model.name!r} "
                      f"version {model.version} ({len(model.predictor.items)} items)")


def predict_vectors(model: Any, body: bytes, max_instances: int) -> np.ndarray:
    """``{"instances": [item ids]}`` (or ``"inputs"``) -> the float32 ``(n, dim)`` raw vectors."""
    example = '{"instances": ["item_1", "item_2"]}'
    payload = _payload(body, example)
    unknown = [k for k in payload if k not in ("instances", "inputs", "signature_name")]
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} in the request; send {example}")
    if "instances" in payload and "inputs" in payload:
        raise BadRequest('send either "instances" or "inputs", not both')
    key = "instances" if "instances" in payload else "inputs"
    if key not in payload:
        raise BadRequest(f'missing "instances": send {example}')
    ids = payload[key]
    if not isinstance(ids, list):
        raise BadRequest(f'"{key}" must be a list of item ids, got a JSON {_json_type(ids)}')
    if not ids:
        raise BadRequest(f'"{key}" is empty; send at least one item id')
    if len(ids) > max_instances:
        raise BadRequest(f"{len(ids)} instances is over the limit of {max_instances} per request (--max-instances)")
    index = model.predictor.index
    rows = np.empty(len(ids), dtype=np.int64)
    for i, value in enumerate(ids):
        item = _item_id(value, f"instance {i}")
        row = index.get(item)
        if row is None:
            raise _unknown(model, item, f"instance {i}")
        rows[i] = row
    return model.predictor.vectors_[rows]


def similar_items(model: Any, body: bytes, max_instances: int) -> list[dict[str, Any]]:
    """``{"item": id | "vector": [...], "k": 10, "exclude": [ids]}`` -> ``[{"item", "score"}, ...]``."""
    example = '{"item": "item_1", "k": 10} or {"vector": [0.1, ...], "k": 10}'
    payload = _payload(body, example)
    unknown = [k for k in payload if k not in _SIMILAR_KEYS]
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} in the request; expected {', '.join(_SIMILAR_KEYS)}")
    p = model.predictor
    if ("item" in payload) == ("vector" in payload):
        raise BadRequest(f'send exactly one of "item" and "vector": {example}')
    k = payload.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadRequest(f'"k" must be an integer from 1 to {MAX_K}, got {k!r}'[:200])
    raw_exclude = payload.get("exclude", [])
    if not isinstance(raw_exclude, list):
        raise BadRequest(f'"exclude" must be a list of item ids, got a JSON {_json_type(raw_exclude)}')
    if len(raw_exclude) > max_instances:
        raise BadRequest(f'"exclude" holds {len(raw_exclude)} items, over the limit of {max_instances} '
                         "(--max-instances)")
    exclude = [_item_id(v, f"exclude[{i}]") for i, v in enumerate(raw_exclude)]
    if "item" in payload:
        item = _item_id(payload["item"], '"item"')
        row = p.index.get(item)
        if row is None:
            raise _unknown(model, item, '"item"')
        query = p.vectors_[row]
        exclude.append(item)
    else:
        query = _vector(payload["vector"], p.vector_size)
    top = p.similar_to_vector(query, topn=k, exclude=exclude)
    return [{"item": it, "score": score} for it, score in top]


def _vector(value: Any, dim: int) -> np.ndarray:
    if not isinstance(value, list):
        raise BadRequest(f'"vector" must be a list of {dim} numbers, got a JSON {_json_type(value)}')
    if len(value) != dim:
        raise BadRequest(f'"vector" has {len(value)} numbers; the model\'s vectors have {dim}')
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(f'"vector"[{i}] must be a number, got a JSON {_json_type(v)}')
    q = np.asarray(value, dtype=np.float64)
    if not np.isfinite(q).all() or (np.abs(q) > np.finfo(np.float32).max).any():
        raise BadRequest('"vector" holds a number beyond the float32 range')
    if not q.any():
        raise BadRequest('"vector" is all zeros: cosine similarity is undefined')
    return q.astype(np.float32)


def _heavy(model: Any) -> bool:
    p = model.predictor
    return len(p.items) * p.vector_size > INLINE_MACS


async def handle_predict(app: Any, model: Any, body: bytes, send: Any) -> int:
    """``:predict`` on an embedding model; returns the number of instances."""
    from airflow_ml_provider.serving.app import _JSON_HEADERS, _dumps_predictions, _respond

    vectors = predict_vectors(model, body, app.max_instances)
    await _respond(send, 200, _dumps_predictions(vectors.tolist(), model.version), _JSON_HEADERS)
    return len(vectors)


async def handle_similar(app: Any, model: Any, body: bytes, send: Any) -> int:
    """``:similar`` on an embedding model (a 400 on a model that is not one); returns 1."""
    import asyncio

    from airflow_ml_provider.serving.app import _JSON_HEADERS, _dumps, _respond

    if not is_embedding(model):
        raise BadRequest(f"model {model.name!r} version {model.version} is a {model.framework} scorer, not an "
                         "embedding model: :similar needs an embedding bundle; use :predict")
    if _heavy(model):
        result = await asyncio.get_running_loop().run_in_executor(None, similar_items, model, body,
                                                                  app.max_instances)
    else:
        result = similar_items(model, body, app.max_instances)
    await _respond(send, 200, _dumps({"similar": result, "model_version": model.version}), _JSON_HEADERS)
    return 1


def embedding_metadata(model: Any) -> Mapping[str, Any]:
    """What ``GET /v1/models/{name}/metadata`` adds for an embedding model."""
    p = model.predictor
    return {"kind": "embedding", "n_items": len(p.items), "dim": int(p.vector_size)}
