"""Model manager of the online service: loading, warm-up, atomic hot swap, version cache, polling.

One :class:`ModelManager` serves the models named on ``--models``. A background thread polls the
registry every ``poll_seconds``: first its watermark (one ``MAX(id)``; any serving event raises it),
then, when it moved, :meth:`ModelRegistry.serving_state` per model (the served version, following
rollbacks and promotes, plus labels, canary and shadow: serving/routing.py). When the record to
serve changes, the manager

1. takes the version from its in-memory cache when it is there (a rollback to a recent version
   therefore takes effect within one poll, without any I/O), or else
2. fetches the bundle (``file://`` or ``webhdfs://`` through :mod:`airflow_ml_provider.ml.storage`),
   verifies its checksums, loads the fitted feature spec *shipped in the bundle* (checking its content
   hash against the manifest) and the model, and warms it up by predicting on a sample row,
3. then swaps it in with a single reference assignment.

Requests take the model reference once (:meth:`ModelManager.get`) and finish on that object, so
requests in flight finish on the version they started on. Any failure (fetch, checksum, load,
warm-up, registry down) keeps the old version serving; it is logged and counted in the metrics, and
the failed record is retried with exponential back-off (so a corrupt bundle is not refetched on every
poll). The last ``keep_versions`` versions of each model stay loaded (LRU) and can be pinned with
``/v1/models/{name}/versions/{v}:predict``.

Only the poll thread writes the manager's state. Readers see immutable snapshots: every change builds
new dicts and publishes them by one attribute assignment (atomic under the GIL).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airflow_ml_provider.serving.errors import BadRequest, ModelLoadError
from airflow_ml_provider.serving.heap import settle_heap
from airflow_ml_provider.serving.metrics import ServingMetrics
from airflow_ml_provider.serving.routing import NO_ROUTES, ROUTE_CANARY, ROUTE_STABLE, CanarySplit, Routes

log = logging.getLogger("airflow_ml_provider.serving")

#: Back-off of a record that failed to load: first retry after this many seconds, doubling, capped.
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


# --------------------------------------------------------------------------------------------------
# A loaded, servable model version
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LoadedModel:
    """One model version in memory: its fitted spec, its predictor and where it came from."""

    name: str
    version: int
    uri: str
    spec: Any  # FittedSpec
    predictor: Any  # trainers' predictor: .predict(np.ndarray[float32]) -> np.ndarray
    framework: str
    manifest: Mapping[str, Any] = field(default_factory=dict)
    bundle_dir: Path | None = None
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    record: Any = None
    #: "model" (a scorer: spec + predictor) or "embedding" (item ids -> vectors; spec is None;
    #: requests go to serving/embeddings.py)
    kind: str = "model"

    def transform(self, instances: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Raw feature dicts -> the float32 matrix the model was trained on (the training code path).

        :raises BadRequest: naming the instance and the feature when a row is invalid.
        """
        try:
            if len(instances) == 1:
                X = self.spec.transform_row(instances[0]).reshape(1, -1)
            else:
                X = self.spec.transform_rows(instances)
        except Exception as exc:  # noqa: BLE001 - any failure on client data is a client error
            raise _bad_instance(self.spec, instances, exc) from None
        if X.dtype != np.float32:
            X = X.astype(np.float32)
        if not np.isfinite(X).all():
            # NaN means "missing" to the models; an infinite value is a client error.
            bad = np.argwhere(np.isinf(X))
            if len(bad):
                row, col = (int(v) for v in bad[0])
                names = list(getattr(self.spec, "feature_names", []) or [])
                feat = names[col] if col < len(names) else f"#{col}"
                raise BadRequest(f"instance {row}: feature {feat!r} is infinite after the transform "
                                 "(beyond the float32 range); send a smaller finite number")
        return X

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.predictor.predict(X))

    def predict(self, instances: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.predict_matrix(self.transform(instances))


def _bad_instance(spec: Any, instances: Sequence[Mapping[str, Any]], exc: Exception) -> BadRequest:
    """Turn a transform failure into a 400 naming the instance index and the feature."""
    index = 0
    if len(instances) > 1:  # find the first failing row (error path only)
        for i, row in enumerate(instances):
            try:
                spec.transform_row(row)
            except Exception as row_exc:  # noqa: BLE001
                index, exc = i, row_exc
                break
    feature = getattr(exc, "feature", None)
    kind = type(exc).__name__
    msg = str(exc) or kind
    if kind not in ("MissingFeatureError", "FeatureTypeError", "FeatureError", "FeatureSpecError"):
        log.warning("transform failed on instance %d with %s: %s", index, kind, msg)
    if feature and repr(feature) not in msg and str(feature) not in msg:
        msg = f"feature {feature!r}: {msg}"
    return BadRequest(f"instance {index}: {msg}")


# --------------------------------------------------------------------------------------------------
# Loading a bundle
# --------------------------------------------------------------------------------------------------


def record_uri(record: Any) -> str:
    """The bundle URI of a registry record (:class:`~airflow_ml_provider.ml.registry.ModelRecord`)."""
    value = getattr(record, "bundle_uri", None)
    if not value:
        raise ModelLoadError(f"registry record {record!r} has no bundle URI")
    return str(value)


def record_version(record: Any) -> int:
    return int(record.version)


def _check_spec_hash(bundle: Any, spec: Any) -> None:
    """The loaded spec must be the one the bundle names under ``metadata[SPEC_HASH_KEY]``.

    That key (``spec_hash``, see :mod:`airflow_ml_provider.ml.bundle`) is the only one read. A
    bundle without it (built by hand before ``build_bundle`` recorded it) loads with a warning; its
    files are still verified against the manifest.
    """
    from airflow_ml_provider.ml.bundle import METADATA, SPEC_HASH_KEY, BundleError

    try:
        expected = bundle.spec_hash
    except BundleError as exc:
        raise ModelLoadError(str(exc)) from None
    actual = getattr(spec, "content_hash", None)
    if expected is None:
        log.warning("bundle %s: %s names no %r: the fitted spec's content hash is not checked",
                    bundle.root, METADATA, SPEC_HASH_KEY)
        return
    if str(expected) != str(actual):
        raise ModelLoadError(f"the fitted spec's content hash {actual} does not match the one the bundle's "
                             f"{METADATA} records under {SPEC_HASH_KEY!r} ({expected})")


def _warm_up(model: LoadedModel) -> None:
    """Run the request path once before the swap: transform a sample row, predict, check the answer.

    The sample is ``sample_input`` from the bundle metadata when the publisher recorded one, else a
    row of missing values (the spec's defaults). When the spec refuses that row (``on_missing:
    error``), the model is still exercised on a zero feature vector. The model must answer one
    finite number (or one finite vector) per row.
    """
    from airflow_ml_provider.ml.features import FeatureError

    meta = model.manifest
    sample = meta.get("sample_input")
    if isinstance(sample, list) and sample and isinstance(sample[0], Mapping):
        sample = sample[0]
    if not isinstance(sample, Mapping):
        sample = {column: None for column in getattr(model.spec, "input_columns", None) or []}
    width = len(getattr(model.spec, "feature_names", None) or [])
    if not width:
        raise ModelLoadError("warm-up: the fitted spec names no features")
    try:
        X = model.transform([sample])
    except (FeatureError, BadRequest) as exc:
        if meta.get("sample_input") is not None:
            raise ModelLoadError(f"warm-up: the bundle's sample_input does not transform: {exc}") from None
        X = np.zeros((1, width), dtype=np.float32)
    if X.shape != (1, width):
        raise ModelLoadError(f"warm-up: the transform gave shape {X.shape}, the spec names {width} features")
    # Two calls: the first may build caches; the second is the steady state.
    for _ in range(2):
        y = model.predict_matrix(X)
    if y.shape[0] != 1:
        raise ModelLoadError(f"warm-up: the model returned {y.shape[0]} predictions for 1 row")
    if not np.isfinite(np.asarray(y, dtype=np.float64)).all():
        raise ModelLoadError(f"warm-up: the model returned non-finite predictions {y.tolist()!r}")


def set_predict_threads(predictor: Any, threads: int | None) -> None:
    """Limit the threads a predictor uses per call (XGBoost: the booster's ``nthread``).

    One thread is fastest for the small batches an online service sees: OpenMP's thread team costs
    more than it saves on a row or a hundred, and on a busy machine it can cost milliseconds.
    """
    if not threads:
        return
    booster = getattr(predictor, "booster", None)
    if booster is not None and hasattr(booster, "set_param"):
        booster.set_param({"nthread": int(threads)})


def load_model(name: str, record: Any, cache_dir: Path, *, predict_threads: int | None = 1) -> LoadedModel:
    """Fetch, verify, load and warm up the bundle of a registry record.

    :raises ModelLoadError: naming the URI and the cause. Nothing is swapped in then.
    """
    from airflow_ml_provider.ml.bundle import fetch_bundle, load_bundle
    from airflow_ml_provider.ml.features import FittedSpec
    from airflow_ml_provider.ml.trainers import load_predictor

    uri = record_uri(record)
    version = record_version(record)
    started = time.perf_counter()
    target = Path(tempfile.mkdtemp(prefix=f"{_safe(name)}-v{version}-", dir=cache_dir))
    try:
        # fetch_bundle verifies every file against the manifest, and the manifest against the
        # registry's checksum; load_bundle verifies again on the local copy (cheap, and it is what
        # a cached copy goes through too).
        local = fetch_bundle(uri, target, expected_checksum=getattr(record, "checksum", None) or None)
        bundle = load_bundle(local, verify=True)
        if bundle.kind == "embedding":  # item ids -> vectors: no fitted spec (serving/embeddings.py)
            from airflow_ml_provider.serving.embeddings import load_embedding_model

            model = load_embedding_model(name, version, uri, bundle, record, target,
                                         predict_threads=predict_threads)
            model.load_seconds = time.perf_counter() - started
            return model
        # The fitted spec comes from the bundle -- never from a shared location -- so a changed
        # custom transformer reaches the service only inside a newly published bundle.
        spec = FittedSpec.load(bundle.fitted_spec_path)
        _check_spec_hash(bundle, spec)
        predictor = load_predictor(bundle.framework, bundle.model_dir)
        set_predict_threads(predictor, predict_threads)
        trained_on = list(getattr(predictor, "feature_names", None) or [])
        if trained_on and trained_on != list(spec.feature_names):
            diff = next((f"column {i}: model {a!r}, spec {b!r}" for i, (a, b) in
                         enumerate(zip(trained_on, spec.feature_names)) if a != b),
                        f"model has {len(trained_on)} features, spec {len(spec.feature_names)}")
            raise ModelLoadError(f"the model was trained on other features than the bundle's fitted spec "
                                 f"produces ({diff})")
        model = LoadedModel(name=name, version=version, uri=uri, spec=spec, predictor=predictor,
                            framework=str(bundle.framework), manifest=dict(bundle.metadata),
                            bundle_dir=target, record=record)
        _warm_up(model)
        model.load_seconds = time.perf_counter() - started
        return model
    except ModelLoadError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelLoadError(f"model {name!r} version {version} from {_mask(uri)}: {exc}") from exc
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelLoadError(f"model {name!r} version {version} from {_mask(uri)}: "
                             f"{type(exc).__name__}: {exc}") from exc


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"


def _mask(uri: str) -> str:
    try:
        from airflow_ml_provider.ml.storage import mask_uri

        return mask_uri(uri)
    except Exception:  # noqa: BLE001
        return uri


# --------------------------------------------------------------------------------------------------
# The manager
# --------------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    uri: str
    message: str
    attempts: int
    retry_at: float


class ModelManager:
    """Serves the current version of each model, hot-swapping as the registry changes.

    :param registry: a :class:`~airflow_ml_provider.ml.registry.ModelRegistry` (anything with
        ``current(name)``), or a SQLAlchemy URL to build one.
    :param models: the model names to serve.
    :param poll_seconds: how often to poll the registry.
    :param keep_versions: how many versions of each model stay loaded (LRU; the served one always stays).
    :param cache_dir: where bundles are fetched to (default: a private temporary directory).
    :param metrics: the service's metrics (default: new ones).
    :param loader: ``loader(name, record, cache_dir) -> LoadedModel`` (default :func:`load_model`).
    :param predict_threads: threads per prediction call (XGBoost ``nthread``; default 1, fastest for
        online batches; 0 or None keeps the library's default).
    """

    def __init__(
        self,
        registry: Any,
        models: Sequence[str],
        *,
        poll_seconds: float = 2.0,
        keep_versions: int = 3,
        cache_dir: str | Path | None = None,
        metrics: ServingMetrics | None = None,
        loader: Callable[[str, Any, Path], LoadedModel] | None = None,
        predict_threads: int | None = 1,
    ) -> None:
        if not models:
            raise ValueError("no model names given")
        if poll_seconds <= 0 or not math.isfinite(poll_seconds):
            raise ValueError(f"poll_seconds must be a positive number, got {poll_seconds!r}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, got {keep_versions!r}")
        if isinstance(registry, str):
            from airflow_ml_provider.ml.registry import ModelRegistry

            registry = ModelRegistry(registry)
        self.registry = registry
        self.models = tuple(dict.fromkeys(models))
        self.poll_seconds = float(poll_seconds)
        self.keep_versions = int(keep_versions)
        self._own_cache = cache_dir is None
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="airflow-ml-serve-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = metrics or ServingMetrics(self.models)
        self.loader = loader or functools.partial(load_model, predict_threads=predict_threads)
        # Immutable snapshots, replaced whole (one assignment) by the poll thread.
        self._served: dict[str, LoadedModel] = {}
        self._versions: dict[str, dict[int, LoadedModel]] = {name: {} for name in self.models}
        self._routes: dict[str, Routes] = {}  # labels and canary (serving/routing.py)
        self._seen_mark: int | None = None  # the registry watermark of the last complete poll
        # Poll-thread-only state.
        self._lru: dict[str, list[int]] = {name: [] for name in self.models}  # most recent last
        self._failures: dict[str, dict[int, _Failure]] = {name: {} for name in self.models}
        self._loading: dict[str, int | None] = {name: None for name in self.models}
        self._last_poll: float | None = None
        self._last_poll_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        #: who refuses a version in the registry's serving log (ModelRegistry.record_refusal)
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._refusals_recorded: set[tuple[str, int, str]] = set()

    # ---- the request path -------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> LoadedModel | None:
        """The model to serve (``version=None``: the current one). One reference, taken once."""
        if version is None:
            return self._served.get(name)
        versions = self._versions.get(name)
        return versions.get(version) if versions else None

    def route(self, name: str) -> tuple[LoadedModel | None, str]:
        """An unpinned request's model: the canary for its share of requests, else the served one."""
        routes = self._routes.get(name)
        if routes is not None and routes.canary is not None and routes.split.take():
            return routes.canary, ROUTE_CANARY
        return self._served.get(name), ROUTE_STABLE

    def shadow_for(self, name: str) -> LoadedModel | None:
        """The shadow model when this unpinned request is one whose copy it scores, else None."""
        routes = self._routes.get(name)
        if routes is not None and routes.shadow is not None and routes.shadow_split.take():
            return routes.shadow
        return None

    def get_label(self, name: str, label: str) -> LoadedModel | None:
        """The model ``label`` names (``/v1/models/{name}/labels/{label}``), if it is loaded."""
        routes = self._routes.get(name)
        return routes.labels.get(label) if routes is not None else None

    def routes(self, name: str) -> Routes:
        """The labels and canary of ``name`` (an immutable snapshot)."""
        return self._routes.get(name, NO_ROUTES)

    def loaded_versions(self, name: str) -> list[int]:
        """The versions of ``name`` held in memory (pinnable), ascending."""
        return sorted(self._versions.get(name, {}))

    def served_versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self._served.items()}

    def is_ready(self) -> bool:
        served = self._served
        return all(name in served for name in self.models)

    def status(self, name: str) -> list[dict[str, Any]]:
        """TensorFlow Serving's ``model_version_status`` list for a model, newest version first."""
        served = self._served.get(name)
        entries: dict[int, dict[str, Any]] = {}
        for version, model in self._versions.get(name, {}).items():
            entries[version] = _status_entry(version, "AVAILABLE", "OK", "")
            entries[version]["current"] = served is model
            entries[version]["load_seconds"] = round(model.load_seconds, 4)
        routes = self._routes.get(name)
        if routes is not None:
            for label, version in routes.label_versions.items():
                if version in entries:
                    entries[version].setdefault("labels", []).append(label)
            if routes.canary is not None and routes.canary.version in entries:
                entries[routes.canary.version]["canary_percent"] = routes.split.percent
            if routes.shadow is not None and routes.shadow.version in entries:
                entries[routes.shadow.version]["shadow_percent"] = routes.shadow_split.percent
        loading = self._loading.get(name)
        if loading is not None and loading not in entries:
            entries[loading] = _status_entry(loading, "LOADING", "OK", "")
        for version, failure in dict(self._failures.get(name, {})).items():
            if version not in entries:
                entries[version] = _status_entry(version, "END", "UNKNOWN", failure.message)
        return [entries[v] for v in sorted(entries, reverse=True)]

    # ---- polling ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the poll thread (idempotent)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="airflow-ml-serve-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop polling and remove the fetched bundles (when the cache directory is private)."""
        self.stop()
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    @property
    def polling(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception:
                log.exception("unexpected error while polling the model registry")
            self._stop.wait(max(0.0, self.poll_seconds - (time.monotonic() - started)))

    def _settled(self) -> bool:
        """Whether everything the last full poll asked for is in place: every model served, no load
        waiting for a retry, every label/canary/shadow version loaded. Only then may an unchanged
        watermark skip the full poll."""
        if any(self._failures[name] for name in self.models) or not self.is_ready():
            return False
        for routes in self._routes.values():
            if (len(routes.labels) != len(routes.label_versions)
                    or (routes.canary_version is not None and routes.canary is None)
                    or (routes.shadow_version is not None and routes.shadow is None)):
                return False
        return True

    def poll_once(self) -> dict[str, int | None]:
        """Poll the registry once and swap in what changed. Returns the served version per model.

        First one indexed ``MAX(id)`` query (:meth:`ModelRegistry.watermark`): every serving event --
        publish, rollback, label, canary, promote, abort, shadow -- raises it, so when it has not moved
        and everything is in place, the per-model reads are skipped."""
        with self._poll_lock:
            mark = None
            watermark_of = getattr(self.registry, "watermark", None)
            if watermark_of is not None:
                try:
                    mark = int(watermark_of(self.models))
                except Exception:  # noqa: BLE001 - the full poll below reports the outage
                    mark = None
            if mark is not None and mark == self._seen_mark and self._settled():
                self._last_poll = time.time()
                return {name: (m.version if (m := self._served.get(name)) else None) for name in self.models}
            all_read = True
            for name in self.models:
                if self._stop.is_set() and self._thread is not None:
                    break
                try:
                    # labels and canary come with the served record when the registry has them
                    state_of = getattr(self.registry, "serving_state", None)
                    state = state_of(name) if state_of is not None else None
                    record = state.current if state is not None else self.registry.current(name)
                except Exception as exc:  # noqa: BLE001 - registry down: keep serving
                    self.metrics.poll_failures.inc()
                    message = f"{type(exc).__name__}: {exc}"
                    # ERROR once per outage (and when the cause changes), then quietly until it ends.
                    level = logging.DEBUG if message == self._last_poll_error else logging.ERROR
                    log.log(level, "polling the registry for model %r failed (still serving %s; retrying "
                            "every %.1f s): %s", name, self._describe(name), self.poll_seconds, message)
                    self._last_poll_error = message
                    all_read = False
                    continue
                if self._last_poll_error is not None:
                    log.info("the registry answers again (model %r)", name)
                self._last_poll_error = None
                if record is None:
                    continue
                try:
                    self._follow(name, record)
                except Exception:
                    log.exception("unexpected error while updating model %r", name)
                if state is not None:
                    try:
                        self._follow_routes(name, state)
                    except Exception:
                        log.exception("unexpected error while updating the labels and canary of %r", name)
            # Remember the watermark only when every model was read (else the next poll reads again).
            self._seen_mark = mark if all_read else None
            self._last_poll = time.time()
            return {name: (m.version if (m := self._served.get(name)) else None) for name in self.models}

    def _describe(self, name: str) -> str:
        model = self._served.get(name)
        return f"version {model.version}" if model else "nothing"

    def _follow(self, name: str, record: Any) -> None:
        version = record_version(record)
        uri = record_uri(record)
        served = self._served.get(name)
        if served is not None and served.version == version and served.uri == uri:
            return
        model = self._obtain(name, record)
        if model is not None:
            self._swap(name, model)

    def _obtain(self, name: str, record: Any) -> LoadedModel | None:
        """The loaded model of ``record``: from the version cache, else loaded (with back-off on
        failure: None, and the old state keeps serving)."""
        version = record_version(record)
        uri = record_uri(record)
        model = self._versions[name].get(version)
        if model is not None and model.uri != uri:
            model = None  # same number, different bundle: load the new bundle
        if model is None:
            failure = self._failures[name].get(version)
            if failure is not None and failure.uri == uri and time.monotonic() < failure.retry_at:
                return None
            self._loading[name] = version
            try:
                model = self.loader(name, record, self.cache_dir)
            except Exception as exc:  # noqa: BLE001 - keep the old version serving
                attempts = failure.attempts + 1 if failure and failure.uri == uri else 1
                delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempts - 1))
                message = str(exc)
                self._failures[name][version] = _Failure(uri, message, attempts, time.monotonic() + delay)
                self.metrics.load_failures.labels(name).inc()
                log.error("loading %s failed (attempt %d; still serving %s; retry in %.0f s): %s",
                          f"model {name!r} version {version}", attempts, self._describe(name), delay,
                          message)
                self._record_refusal(name, version, uri, exc)
                return None
            finally:
                self._loading[name] = None
            self._failures[name].pop(version, None)
            self.metrics.load_seconds.labels(name).observe(model.load_seconds)
            self._cache_put(name, model)
        return model

    def _record_refusal(self, name: str, version: int, uri: str, exc: BaseException) -> None:
        """Record in the registry (once per version and bundle) that this service refuses to load
        it, when the failure is the bundle's (checksum mismatch, missing or unloadable files, failed
        warm-up) and not a transient one (storage unreachable, out of memory). ``models list``, the
        UI, rollback, labels and canaries then show it and refuse to point at it."""
        key = (name, int(version), uri)
        record = getattr(self.registry, "record_refusal", None)
        if key in self._refusals_recorded or not callable(record) or not is_refusal(exc):
            return
        try:
            record(name, int(version), reason=str(exc), instance=self.instance)
        except Exception as rec_exc:  # noqa: BLE001 - registry down: tried again on the next failure
            log.warning("could not record in the registry that model %r version %d is refused: %s",
                        name, version, rec_exc)
            return
        self._refusals_recorded.add(key)
        log.error("model %r version %d refused (recorded in the registry as refused by %s)", name, version,
                  self.instance)

    def _follow_routes(self, name: str, state: Any) -> None:
        """Load the versions the labels and the canary name, then publish the new routes at once.

        A label or canary whose version cannot be loaded (yet) is left out: its requests get 404
        (labels) or go to the served version (canary) until the load succeeds.
        """
        label_versions = {label: int(rec.version) for label, rec in (state.labels or {}).items()}
        canary_rec = state.canary
        percent = float(state.canary_percent or 0.0) if canary_rec is not None else 0.0
        want_canary = int(canary_rec.version) if canary_rec is not None else None
        old = self._routes.get(name, NO_ROUTES)
        shadow_rec = getattr(state, "shadow", None)
        want_shadow = int(shadow_rec.version) if shadow_rec is not None else None
        shadow_percent = float(state.shadow_percent or 0.0) if shadow_rec is not None else 0.0
        if (old.label_versions == label_versions and old.canary_version == want_canary
                and (old.split.percent if old.split else 0.0) == percent
                and old.shadow_version == want_shadow
                and (old.shadow_split.percent if old.shadow_split else 0.0) == shadow_percent
                and len(old.labels) == len(label_versions) and (want_canary is None or old.canary is not None)
                and (want_shadow is None or old.shadow is not None)):
            return  # unchanged, and everything it names is loaded
        records = {int(rec.version): rec for rec in (state.labels or {}).values()}
        if canary_rec is not None:
            records[int(canary_rec.version)] = canary_rec
        if shadow_rec is not None:
            records[want_shadow] = shadow_rec
        loaded = {}
        for version, rec in records.items():
            model = self._obtain(name, rec)
            if model is not None:
                loaded[version] = model
        canary = loaded.get(int(canary_rec.version)) if canary_rec is not None else None
        split = old.split if (old.split is not None and old.split.percent == percent) else None
        shadow = loaded.get(want_shadow) if want_shadow is not None else None
        shadow_split = old.shadow_split if (old.shadow_split is not None
                                            and old.shadow_split.percent == shadow_percent) else None
        routes = Routes(
            labels={label: loaded[v] for label, v in label_versions.items() if v in loaded},
            label_versions=label_versions,
            canary=canary,
            canary_version=int(canary_rec.version) if canary_rec is not None else None,
            split=(split or CanarySplit(percent)) if canary is not None else None,
            watermark=int(getattr(state, "watermark", 0) or 0),
            shadow=shadow,
            shadow_version=want_shadow,
            shadow_split=(shadow_split or CanarySplit(shadow_percent)) if shadow is not None else None,
        )
        self._routes = {**self._routes, name: routes}  # publish: one reference assignment
        self.metrics.canary_percent.labels(name).set(percent if canary is not None else 0.0)
        self.metrics.canary_version.labels(name).set(canary.version if canary is not None else 0)
        if routes.label_versions != old.label_versions or routes.canary_version != old.canary_version \
                or (routes.split and routes.split.percent) != (old.split and old.split.percent) \
                or routes.shadow_version != old.shadow_version \
                or (routes.shadow_split and routes.shadow_split.percent) != (old.shadow_split
                                                                            and old.shadow_split.percent):
            log.info("model %r: labels %s; canary %s; shadow %s", name,
                     ", ".join(f"{k}=v{v}" for k, v in sorted(label_versions.items())) or "none",
                     f"version {canary.version} at {percent:g}%" if canary is not None else "none",
                     f"version {shadow.version} on {shadow_percent:g}%" if shadow is not None else "none")
        for v in loaded:
            self._lru[name] = [x for x in self._lru[name] if x != v] + [v]
        self._evict(name)

    def _cache_put(self, name: str, model: LoadedModel) -> None:
        versions = dict(self._versions[name])
        old = versions.get(model.version)
        versions[model.version] = model
        self._versions = {**self._versions, name: versions}  # publish
        if old is not None:  # same version number, another bundle: the old object goes
            self._unloaded(name, old)

    def _swap(self, name: str, model: LoadedModel) -> None:
        previous = self._served.get(name)
        self._served = {**self._served, name: model}  # the atomic swap: one reference assignment
        self._lru[name] = [v for v in self._lru[name] if v != model.version] + [model.version]
        self.metrics.swaps.labels(name).inc()
        self.metrics.loaded_version.labels(name).set(model.version)
        log.info("model %r now serves version %d (was %s; load %.2f s; %s)", name, model.version,
                 previous.version if previous else "nothing", model.load_seconds, _mask(model.uri))
        self._evict(name)
        settle_heap()  # the new model's objects out of the collector's view (serving/heap.py)

    def _evict(self, name: str) -> None:
        """Keep the ``keep_versions`` most recently served versions; the served one always stays."""
        lru = self._lru[name]
        served = self._served.get(name)
        versions = dict(self._versions[name])
        lru = [v for v in lru if v in versions]
        evicted = []
        routed = self._routes.get(name, NO_ROUTES).versions  # labels and canary stay loaded
        while len(lru) > self.keep_versions:
            victim = next((v for v in lru if not (served and served.version == v) and v not in routed), None)
            if victim is None:
                break
            lru.remove(victim)
            evicted.append(versions.pop(victim))
        self._lru[name] = lru
        self._versions = {**self._versions, name: versions}  # publish
        self.metrics.cached_versions.labels(name).set(len(versions))
        for gone in evicted:
            self._unloaded(name, gone)

    def _unloaded(self, name: str, model: LoadedModel) -> None:
        # Requests still holding the object finish on it (it is in memory); only files go.
        log.info("model %r version %d unloaded from the cache", name, model.version)
        if model.bundle_dir is not None:
            shutil.rmtree(model.bundle_dir, ignore_errors=True)


def is_refusal(exc: BaseException) -> bool:
    """Whether a load failure condemns the bundle (True) or may pass (False: the storage did not
    answer, the machine ran out of memory). A bundle the storage says is missing is refused."""
    from airflow_ml_provider.ml.storage import StorageError

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (MemoryError, ConnectionError, TimeoutError)):
            return False
        if isinstance(e, StorageError) and not str(e).startswith("no such "):
            return False
        todo += [e.__cause__, e.__context__]
    return True


def _status_entry(version: int, state: str, code: str, message: str) -> dict[str, Any]:
    return {"version": str(version), "state": state,
            "status": {"error_code": code, "error_message": message}}
