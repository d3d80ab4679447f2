"""The ASGI app of the online model service (TensorFlow Serving's REST API), run by uvicorn.

Routes::

    POST /v1/models/{name}:predict                  {"instances": [{raw features}, ...]}
    POST /v1/models/{name}/versions/{v}:predict     the same, pinned to a loaded version
    POST /v1/models/{name}/labels/{label}:predict   the same, on the version a label names
    POST /v1/models/{name}[/versions/{v}]:similar   embedding models: nearest items (serving/embeddings.py)
    GET  /v1/models/{name}                          {"model_version_status": [...]}
    GET  /v1/models/{name}/versions/{v}             the same, for one version
    GET  /v1/models/{name}/labels/{label}           the same, for the version a label names
    GET  /v1/models/{name}/metadata                 the features the model takes (from its fitted spec)
    GET  /healthz                                   liveness (never needs the token)
    GET  /readyz                                    200 once every model serves a version, else 503
    GET  /metrics                                   Prometheus text format

The app is a plain ASGI callable rather than a FastAPI router: the predict path is the hot path
(single-row latency), and owning the request cycle lets it enforce the body limit while reading
(``Content-Length`` first, then a running count of a streamed body), map every client error to a
4xx with a message, and skip per-request validation layers: the fitted spec *is* the schema.

Client errors answer ``{"error": "..."}`` with 400/401/404/405/413; a configured model with no
version loaded yet answers 503 with ``Retry-After``. Anything unexpected is logged and answered 500
without stopping the service.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow_ml_provider.serving import embeddings
from airflow_ml_provider.serving.errors import (
    APIError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from airflow_ml_provider.serving.heap import settle_heap
from airflow_ml_provider.serving.manager import ModelManager
from airflow_ml_provider.serving.routing import ROUTE_CANARY, ROUTE_LABEL, ROUTE_PINNED, ROUTE_STABLE

log = logging.getLogger("airflow_ml_provider.serving")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 10_000
#: Batches up to this many rows are predicted on the event loop; larger ones in a worker thread.
INLINE_ROWS = 256
#: Shadow mode: request copies waiting for the shadow version beyond this are dropped (counted).
SHADOW_MAX_PENDING = 64
TOKEN_ENV = "AIRFLOW_ML_SERVE_TOKEN"

_PREFIX = "/v1/models/"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class _Disconnected(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


try:  # optional: about 3x faster parsing of a 100-row request
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency, but the service works without it
    _orjson = None

#: An integer token this long may be beyond 64 bits, which orjson reads as a float (``json`` keeps
#: the exact int: a categorical key, e.g. an id, depends on every digit) -> such a body goes to json.
_LONG_DIGITS = 19


_DIGITS_TO_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # digit -> "0", other -> " "


def _has_long_digit_run(body: bytes) -> bool:
    """Whether ``body`` holds ``_LONG_DIGITS`` ASCII digits in a row (~1 us for one row, ~20 us for 100)."""
    n = len(body)
    if n < _LONG_DIGITS:
        return False
    if n < 8192:  # a substring search is cheapest on a small body ...
        return b"0" * _LONG_DIGITS in body.translate(_DIGITS_TO_ZERO)
    import numpy as np  # ... a vectorised scan on a big one (the search slows down on digit runs)

    d = (np.frombuffer(body, dtype=np.uint8) - np.uint8(48)) < 10  # ASCII digit
    r2 = d[:-1] & d[1:]  # a run of >= 2 digits starts here
    r4 = r2[:-2] & r2[2:]  # >= 4
    r8 = r4[:-4] & r4[4:]  # >= 8
    r16 = r8[:-8] & r8[8:]  # >= 16
    m = len(r4) - (_LONG_DIGITS - 4)  # >= 19: 16 from p, and 4 from p + 15
    return bool((r16[:m] & r4[_LONG_DIGITS - 4:]).any())


def _loads(body: bytes) -> Any:
    """Parse a request body; the same values, types and errors as ``json.loads``.

    orjson (when installed) parses the common body; ``json`` decides everything else: a body orjson
    refuses (so the error message stays json's, and what json accepts -- lone surrogates, UTF-16 --
    is still accepted) and a body with an integer that may not fit 64 bits.
    tests/test_serving_batch.py checks the two parsers agree bit for bit.
    """
    if _orjson is not None and not _has_long_digit_run(body):
        try:
            return _orjson.loads(body)
        except Exception:  # noqa: BLE001, S110 - json.loads below gives the answer or the error
            pass
    return json.loads(body, parse_constant=_reject_constant)


#: A body over this size has its instances counted (simdjson, no Python objects) before it is parsed.
#: Below it, orjson parses in under ~5 ms and the count is checked before any row is built anyway.
PRECOUNT_BYTES = 256 * 1024

try:  # optional: the service works without it (then an over-limit body is refused after parsing)
    import simdjson as _simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency
    _simdjson = None


def _count_instances(body: bytes) -> int | None:
    """The number of instances in a request body, without building Python objects; None if unsure.

    Measured on a 4 MB ``"inputs"`` body of 1,000,000 floats (issue 13): orjson needs 30-150 ms (it
    creates a million float objects), simdjson's parse to its tape 6-25 ms, and ``len()`` of an
    array proxy is O(1). So an over-limit body is refused before the real parse. Anything unusual
    (invalid JSON, another shape) answers None: the normal path then parses and gives its message.
    """
    if _simdjson is None:
        return None
    doc = None
    try:
        doc = _simdjson.Parser().parse(body)
        if not isinstance(doc, _simdjson.Object):
            return None
        if "instances" in doc:
            instances = doc["instances"]
            return len(instances) if isinstance(instances, _simdjson.Array) else None
        if "inputs" in doc:
            inputs = doc["inputs"]
            if not isinstance(inputs, _simdjson.Object):
                return None
            lengths = [len(c) for k in inputs.keys() if isinstance(c := inputs[k], _simdjson.Array)]
            return max(lengths) if lengths else None
        return None
    except Exception:  # noqa: BLE001 - invalid JSON etc.: the parser below names the problem
        return None
    finally:
        del doc


def _dumps(obj: Any) -> bytes:
    # Python floats print with repr: the shortest text that round-trips exactly, so a float32
    # prediction survives JSON bit for bit.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _dumps_predictions(predictions: Any, version: int) -> bytes:
    if _orjson is not None:
        # shortest round-trip float text too; NaN and infinity become null, as below
        try:
            return _orjson.dumps({"predictions": predictions, "model_version": version})
        except Exception:  # noqa: BLE001, S110 - json below
            pass
    try:
        return _dumps({"predictions": predictions, "model_version": version})
    except ValueError:  # NaN / infinity predictions: JSON has no literal for them -> null
        import math

        def clean(v: Any) -> Any:
            if isinstance(v, list):
                return [clean(x) for x in v]
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return _dumps({"predictions": clean(predictions), "model_version": version})


class ServingApp:
    """The ASGI application. Build it with :func:`create_app`."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        manage_lifecycle: bool = True,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        self.manager = manager
        self.metrics = manager.metrics
        self.max_body_bytes = int(max_body_bytes)
        self.max_instances = int(max_instances)
        self._token = token.encode() if token else None
        self._manage_lifecycle = manage_lifecycle
        self._shadow_pool = None  # created by the first shadow copy (serving/routing.py)
        self._shadow_slots = threading.BoundedSemaphore(SHADOW_MAX_PENDING)

    # ---- ASGI entry ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._manage_lifecycle:
                    try:
                        # First load before the port answers, then keep polling in the background.
                        await asyncio.get_running_loop().run_in_executor(None, self.manager.poll_once)
                        settle_heap(collect=True)
                        self.manager.start()
                    except Exception as exc:  # noqa: BLE001
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                _count_connection_events(self.metrics)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._shadow_pool is not None:  # pending shadow copies are dropped at shutdown
                    self._shadow_pool.shutdown(wait=False, cancel_futures=True)
                if self._manage_lifecycle:
                    await asyncio.get_running_loop().run_in_executor(None, self.manager.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope.get("path") or "/"
        method: str = scope.get("method") or "GET"
        model_label: str | None = None
        rows = 0
        is_predict = False
        try:
            if path == "/healthz" or path == "/readyz":
                _allow(method, ("GET", "HEAD"))
                await self._probe(path, send)
                return
            if self._token is not None:
                self._check_auth(scope)
            if path == "/metrics":
                _allow(method, ("GET", "HEAD"))
                await _respond(send, 200, self.metrics.render(),
                               [(b"content-type", self.metrics.content_type.encode())])
                return
            if not path.startswith(_PREFIX):
                raise NotFound(f"no route {_short(path)!r}; the API is /v1/models/{{name}}[:predict]")
            rest = path[len(_PREFIX):]
            if rest.endswith(":predict"):
                name, version = _parse_model_path(rest[: -len(":predict")])
                model_label = name
                is_predict = True
                _allow(method, ("POST",))
                body = await self._read_body(scope, receive)
                rows = await self._predict(name, version, body, send, started)
            elif rest.endswith(":similar"):  # embedding models: nearest items (serving/embeddings.py)
                name, version = _parse_model_path(rest[: -len(":similar")])
                model_label = name
                is_predict = True
                _allow(method, ("POST",))
                body = await self._read_body(scope, receive)
                rows = await embeddings.handle_similar(self, self._choose(name, version)[0], body, send)
            else:
                if ":" in rest.rsplit("/", 1)[-1]:
                    verb = rest.rsplit(":", 1)[-1]
                    raise NotFound(f"unknown method {_short(verb)!r}; this service supports :predict and :similar")
                _allow(method, ("GET", "HEAD"))
                if rest.endswith("/metadata"):
                    name, version = _parse_model_path(rest[: -len("/metadata")])
                    model_label = name
                    await self._metadata(name, version, send)
                else:
                    name, version = _parse_model_path(rest)
                    model_label = name
                    await self._status(name, version, send)
            status = 200
        except APIError as exc:
            status = exc.status
            headers = [(k.encode(), v.encode()) for k, v in exc.headers.items()]
            await _respond(send, status, _dumps({"error": exc.message}), _JSON_HEADERS + headers)
        except _Disconnected:
            status = 499
        except Exception as exc:
            status = 500
            log.exception("internal error on %s %s", method, path)
            await _respond(send, 500, _dumps({"error": f"internal error: {type(exc).__name__}"}),
                           _JSON_HEADERS)
        if model_label is not None:
            self.metrics.observe_request(model_label, status,
                                         time.perf_counter() - started if is_predict else None, rows)

    # ---- pieces -------------------------------------------------------------------------------

    def _check_auth(self, scope: Scope) -> None:
        for key, value in scope.get("headers") or ():
            if key == b"authorization":
                # RFC 9110 11.1: the scheme is case-insensitive ("bearer", "BEARER"); one or more
                # spaces separate it from the token
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    raise Unauthorized("the Authorization header must use the Bearer scheme: "
                                       "'Authorization: Bearer <token>'")
                if hmac.compare_digest(credentials.strip(b" \t"), self._token):
                    return
                raise Unauthorized("invalid bearer token")
        raise Unauthorized("missing bearer token: send the header 'Authorization: Bearer <token>'")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        for key, value in scope.get("headers") or ():
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise BadRequest(f"invalid Content-Length header {value[:40]!r}") from None
                if declared > limit:
                    raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of "
                                          f"{limit} bytes (--max-body-bytes)")
                break
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes "
                                          "(--max-body-bytes)")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _parse_instances(self, body: bytes) -> list[dict[str, Any]]:
        if not body or body.isspace():  # (isspace stops at the first other byte; strip() would copy)
            raise BadRequest('empty request body; send {"instances": [{"feature": value, ...}, ...]}')
        if len(body) > PRECOUNT_BYTES:
            count = _count_instances(body)
            if count is not None:
                self._check_count(count)
        try:
            payload = _loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError included
            raise BadRequest(f"malformed JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadRequest(f'the request body must be a JSON object like {{"instances": [...]}}, '
                             f"got a JSON {_json_type(payload)}")
        unknown = [k for k in payload if k not in ("instances", "inputs", "signature_name")]
        if unknown:
            raise BadRequest(f"unknown key {unknown[0]!r} in the request; expected \"instances\" "
                             '(a list of feature objects) or "inputs" (an object of feature columns)')
        if "instances" in payload and "inputs" in payload:
            raise BadRequest('send either "instances" or "inputs", not both')
        if "instances" in payload:
            instances = payload["instances"]
            if not isinstance(instances, list):
                raise BadRequest(f'"instances" must be a list of objects, got a JSON {_json_type(instances)}')
            self._check_count(len(instances))
            if set(map(type, instances)) != {dict}:  # (parsed JSON objects are plain dicts)
                for i, row in enumerate(instances):
                    if not isinstance(row, dict):
                        raise BadRequest(f"instance {i} must be an object of feature values, "
                                         f"got a JSON {_json_type(row)}")
        elif "inputs" in payload:
            # the count comes from the columns' lengths: an over-limit request is refused before a
            # single row is built (issue 13: 1,000,000 rows used to be built first, 1.1-1.5 s)
            instances = _columns_to_rows(payload["inputs"], self._check_count)
        else:
            raise BadRequest('missing "instances": send {"instances": [{"feature": value, ...}, ...]}')
        if not instances:
            raise BadRequest('"instances" is empty; send at least one instance')
        return instances

    def _check_count(self, n: int) -> None:
        if n > self.max_instances:
            raise BadRequest(f"{n} instances is over the limit of {self.max_instances} "
                             "per request (--max-instances)")

    def _model(self, name: str, version: int | str | None):
        if isinstance(version, str):  # /labels/{label}
            return self._labelled(name, version)
        model = self.manager.get(name, version)
        if model is not None:
            return model
        if name not in self.manager.models:
            raise NotFound(f"unknown model {_short(name)!r}; this service serves: "
                           f"{', '.join(self.manager.models)}")
        if version is not None:
            loaded = self.manager.loaded_versions(name)
            raise NotFound(f"version {version} of model {name!r} is not loaded; loaded versions: "
                           f"{', '.join(map(str, loaded)) or 'none'}")
        raise Unavailable(f"model {name!r} has no version loaded yet")

    def _choose(self, name: str, version: int | str | None) -> tuple[Any, str]:
        """The model a request uses (one reference, to the end) and its route: an unpinned request
        goes to the canary for the canary's share (serving/routing.py), else to the served version."""
        if version is None:
            model, route = self.manager.route(name)
            if model is not None:
                return model, route
        return self._model(name, version), (ROUTE_LABEL if isinstance(version, str) else ROUTE_PINNED)

    async def _predict(self, name: str, version: int | str | None, body: bytes, send: Send,
                       started: float) -> int:
        model, route = self._choose(name, version)
        if getattr(model, "kind", None) == "embedding":  # item ids -> vectors (serving/embeddings.py)
            rows = await embeddings.handle_predict(self, model, body, send)
        else:
            instances = self._parse_instances(body)
            if len(instances) <= INLINE_ROWS:
                predictions = model.predict(instances)
            else:
                predictions = await asyncio.get_running_loop().run_in_executor(None, model.predict, instances)
            await _respond(send, 200, _dumps_predictions(predictions.tolist(), model.version), _JSON_HEADERS)
            rows = len(instances)
            if route in (ROUTE_STABLE, ROUTE_CANARY):  # shadow mode: a copy, scored after the answer
                shadow = self.manager.shadow_for(name)
                if shadow is not None:
                    self._shadow(name, shadow, instances, predictions)
        self.metrics.observe_version(name, model.version, route, time.perf_counter() - started)
        return rows

    def _shadow(self, name: str, shadow: Any, instances: list, answered: Any) -> None:
        """Score a copy of a request with the shadow version in a background thread; the answer has
        gone already. At most ``SHADOW_MAX_PENDING`` copies wait; beyond that they are dropped
        (counted), so a slow shadow never holds requests or memory."""
        if not self._shadow_slots.acquire(blocking=False):
            self.metrics.observe_shadow(name, shadow.version, "dropped")
            return
        if self._shadow_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="airflow-ml-shadow")

        def run() -> None:
            t0 = time.perf_counter()
            try:
                import numpy as np

                scores = np.asarray(shadow.predict(instances), dtype=np.float64)
                diff = float(np.mean(np.abs(scores - np.asarray(answered, dtype=np.float64))))
                self.metrics.observe_shadow(name, shadow.version, "ok", time.perf_counter() - t0, diff)
            except Exception as exc:  # noqa: BLE001 - a shadow never affects the service
                self.metrics.observe_shadow(name, shadow.version, "error", time.perf_counter() - t0)
                log.debug("shadow version %d of %r failed on a request copy: %s", shadow.version, name, exc)
            finally:
                self._shadow_slots.release()

        self._shadow_pool.submit(run)

    def _labelled(self, name: str, label: str):
        model = self.manager.get_label(name, label)
        if model is not None:
            return model
        if name not in self.manager.models:
            raise NotFound(f"unknown model {_short(name)!r}; this service serves: "
                           f"{', '.join(self.manager.models)}")
        routes = self.manager.routes(name)
        if label in routes.label_versions:
            raise Unavailable(f"label {_short(label)!r} of model {name!r} names version "
                              f"{routes.label_versions[label]}, which is not loaded (yet)")
        known = ", ".join(sorted(routes.label_versions)) or "none"
        raise NotFound(f"model {name!r} has no label {_short(label)!r} (labels: {known}); "
                       f"set one with `airflow-ml models label {name} LABEL --version V`")

    async def _status(self, name: str, version: int | str | None, send: Send) -> None:
        if name not in self.manager.models:
            raise NotFound(f"unknown model {_short(name)!r}; this service serves: "
                           f"{', '.join(self.manager.models)}")
        if isinstance(version, str):  # /labels/{label}: the version it names
            version = self._labelled(name, version).version
        entries = self.manager.status(name)
        if version is not None:
            entries = [e for e in entries if e["version"] == str(version)]
            if not entries:
                raise NotFound(f"version {version} of model {name!r} is not known to this service")
        await _respond(send, 200, _dumps({"model_version_status": entries}), _JSON_HEADERS)

    async def _metadata(self, name: str, version: int | None, send: Send) -> None:
        model = self._model(name, version)
        spec = model.spec
        doc = {
            "model_spec": {"name": name, "version": str(model.version)},
            "metadata": {
                "framework": model.framework,
                "input_columns": list(getattr(spec, "input_columns", []) or []),
                "feature_names": list(getattr(spec, "feature_names", []) or []),
                "spec_hash": getattr(spec, "content_hash", None),
                "bundle_uri": _mask(model.uri),
            },
        }
        if getattr(model, "kind", None) == "embedding":
            doc["metadata"].update(embeddings.embedding_metadata(model))
        await _respond(send, 200, _dumps(doc), _JSON_HEADERS)

    async def _probe(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await _respond(send, 200, _dumps({"status": "ok", "polling": self.manager.polling}), _JSON_HEADERS)
            return
        served = self.manager.served_versions()
        missing = [m for m in self.manager.models if m not in served]
        if missing:
            await _respond(send, 503, _dumps({"status": "not ready", "models": served, "missing": missing}),
                           _JSON_HEADERS)
        else:
            await _respond(send, 200, _dumps({"status": "ready", "models": served}), _JSON_HEADERS)


def _count_connection_events(metrics: Any) -> None:
    """Count the protocol's closed connections (timeouts, over the cap) in this app's metrics."""
    try:
        from airflow_ml_provider.serving.protocol import GuardedHttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools missing: the protocol is not in use either
        return
    GuardedHttpToolsProtocol.on_event = metrics.connection_closed


def _mask(uri: str) -> str:
    from airflow_ml_provider.serving.manager import _mask as mask

    return mask(uri)


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise MethodNotAllowed(f"method {method} not allowed here; use {' or '.join(allowed)}",
                               headers={"allow": ", ".join(allowed)})


def _parse_model_path(rest: str) -> tuple[str, int | str | None]:
    """``name``, ``name/versions/V`` or ``name/labels/L`` -> (name, None), (name, V) or (name, "L")."""
    parts = rest.split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "labels" and parts[2]:
        return parts[0], parts[2]
    if len(parts) == 3 and parts[0] and parts[1] == "versions":
        text = parts[2]
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise NotFound(f"invalid version {_short(text)!r}: versions are positive integers")
        return parts[0], int(text)
    raise NotFound(f"no route {_short(_PREFIX + rest)!r}; use /v1/models/{{name}}, "
                   "/v1/models/{name}/versions/{v} or /v1/models/{name}/labels/{label}")


def _short(text: str, limit: int = 120) -> str:
    """Client text echoed in an error message, cut to a sane length."""
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _columns_to_rows(inputs: Any, check_count: Callable[[int], None]) -> list[dict[str, Any]]:
    """TF Serving's columnar ``"inputs": {"feature": [v0, v1, ...], ...}`` -> a list of rows.

    ``check_count(n)`` runs on the row count before any row is built (it raises over the limit).
    """
    if not isinstance(inputs, dict) or not inputs:
        raise BadRequest('"inputs" must be a non-empty object of feature columns: {"feature": [values]}')
    length = None
    for key, column in inputs.items():
        if not isinstance(column, list):
            raise BadRequest(f'"inputs"[{key!r}] must be a list of values, got a JSON {_json_type(column)}')
        if length is None:
            length = len(column)
        elif len(column) != length:
            raise BadRequest(f'"inputs" columns differ in length: {key!r} has {len(column)} values, '
                             f"others have {length}")
    check_count(length or 0)
    keys = list(inputs)
    return [dict(zip(keys, values)) for values in zip(*(inputs[k] for k in keys))]


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------------


def create_app(
    registry: Any,
    models: list[str] | tuple[str, ...] | str,
    *,
    poll_seconds: float = 2.0,
    keep_versions: int = 3,
    cache_dir: str | None = None,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    manager: ModelManager | None = None,
    manage_lifecycle: bool = True,
    predict_threads: int | None = 1,
) -> ServingApp:
    """Build the service's ASGI app.

    :param registry: a ``ModelRegistry`` or its SQLAlchemy URL.
    :param models: the names of the models to serve (a list, or a comma-separated string).
    :param poll_seconds: registry poll interval.
    :param keep_versions: versions kept loaded per model (for pinning and instant rollback).
    :param cache_dir: where bundles are fetched to (default: a temporary directory removed at exit).
    :param token: bearer token protecting ``/v1`` and ``/metrics`` (``/healthz``, ``/readyz`` stay open).
    :param max_body_bytes: largest accepted request body.
    :param max_instances: most instances per request.
    :param manager: an existing :class:`ModelManager` (then ``registry``... are ignored).
    :param manage_lifecycle: load and start polling on ASGI startup, stop on shutdown.
    :param predict_threads: threads per prediction call (XGBoost ``nthread``; 0 = library default).
    """
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if manager is None:
        manager = ModelManager(registry, models, poll_seconds=poll_seconds, keep_versions=keep_versions,
                               cache_dir=cache_dir, predict_threads=predict_threads)
    return ServingApp(manager, token=token, max_body_bytes=max_body_bytes, max_instances=max_instances,
                      manage_lifecycle=manage_lifecycle)


CONFIG_ENV = "AIRFLOW_ML_SERVE_CONFIG"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def create_app_from_env() -> ServingApp:
    """Factory for ``uvicorn --factory`` (used with ``--workers N``): the config comes as JSON in
    ``AIRFLOW_ML_SERVE_CONFIG``; the token from ``AIRFLOW_ML_SERVE_TOKEN``."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the service with `airflow-ml serve`")
    config = json.loads(raw)
    from airflow_ml_provider.serving.protocol import (
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
        configure,
    )

    configure(header_timeout=config.get("header_timeout", DEFAULT_HEADER_TIMEOUT),
              body_timeout=config.get("body_timeout", DEFAULT_BODY_TIMEOUT),
              max_connections=config.get("max_connections", DEFAULT_MAX_CONNECTIONS))
    if not logging.getLogger().handlers:  # a spawned worker: log like the parent does
        logging.basicConfig(level=str(config.get("log_level", "info")).upper(), format=LOG_FORMAT)
    registry: Any = config["registry"]
    if config.get("table_prefix"):  # the registry connection's table prefix (ml/settings.py)
        from airflow_ml_provider.ml.registry import ModelRegistry

        registry = ModelRegistry(registry, table_prefix=config["table_prefix"])
    return create_app(
        registry,
        config["models"],
        poll_seconds=float(config.get("poll_seconds", 2.0)),
        keep_versions=int(config.get("keep_versions", 3)),
        cache_dir=config.get("cache_dir"),
        token=os.environ.get(TOKEN_ENV) or None,
        max_body_bytes=int(config.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        max_instances=int(config.get("max_instances", DEFAULT_MAX_INSTANCES)),
        predict_threads=int(config.get("predict_threads", 1)),
    )
