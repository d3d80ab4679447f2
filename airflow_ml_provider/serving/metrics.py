"""Prometheus metrics of the online model service.

Each service instance owns its own :class:`prometheus_client.CollectorRegistry` (several apps can
live in one process, e.g. in tests). Labelled children are cached so the per-request cost is a
dict lookup plus the increment.

Metrics (all prefixed ``airflow_ml_serving_``):

``requests_total{model,code}``            /v1 requests (predict, status, metadata) by model and status
``request_latency_seconds{model}``        histogram of predict latency (body read to response)
``rows_total{model}``                     instances predicted
``loaded_version{model}``                 the version currently served (gauge; absent until loaded)
``cached_versions{model}``                versions held in memory for pinning and fast rollback
``swaps_total{model}``                    times a new version started serving
``load_failures_total{model}``            bundles that failed to fetch, verify, load or warm up
``load_seconds{model}``                   histogram of fetch + load + warm-up time
``registry_poll_failures_total``          registry polls that failed (the service keeps serving)
``version_requests_total{model,version,route}``  answered predict requests (200) by the version that
                                          answered and how it was chosen: ``stable`` (unpinned, the
                                          served version), ``canary`` (unpinned, the canary's share),
                                          ``label`` (``/labels/L``) or ``pinned`` (``/versions/V``)
``version_request_latency_seconds{model,version}``  histogram of predict latency per answering version
                                          (compare a canary with the served version)
``canary_percent{model}``                 share of unpinned requests sent to the canary (0: none)
``canary_version{model}``                 the canary version (0: none)
``shadow_requests_total{model,version,outcome}``  copies of unpinned requests scored by the shadow
                                          version: ``ok``, ``error`` or ``dropped`` (backlog full)
``shadow_latency_seconds{model,version}``  histogram of the shadow's scoring time
``shadow_abs_diff{model,version}``         histogram of the mean |shadow score - answered score| per request
``connections_closed_total{reason}``      connections the server closed on its own: ``header_timeout``,
                                          ``body_timeout`` (a slow or stalled client) or ``over_limit``
                                          (refused past ``--max-connections``); see serving/protocol.py

Unknown model names (any name not given to ``--models``) are counted under ``model="_unknown"``
so a client cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNKNOWN_MODEL = "_unknown"

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)


class ServingMetrics:
    """The service's metrics on a private registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: list[str] | tuple[str, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prefix = "airflow_ml_serving_"
        r = self.registry
        self.requests = Counter(prefix + "requests", "Requests by model and HTTP status code",
                                ["model", "code"], registry=r)
        self.latency = Histogram(prefix + "request_latency_seconds", "Predict request latency in seconds",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.rows = Counter(prefix + "rows", "Instances predicted", ["model"], registry=r)
        self.loaded_version = Gauge(prefix + "loaded_version", "Version currently served", ["model"],
                                    registry=r)
        self.cached_versions = Gauge(prefix + "cached_versions", "Versions held in memory", ["model"],
                                     registry=r)
        self.swaps = Counter(prefix + "swaps", "Times a new version started serving", ["model"], registry=r)
        self.load_failures = Counter(prefix + "load_failures",
                                     "Bundles that failed to fetch, verify, load or warm up", ["model"],
                                     registry=r)
        self.load_seconds = Histogram(prefix + "load_seconds", "Bundle fetch + load + warm-up time",
                                      ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                      registry=r)
        self.poll_failures = Counter(prefix + "registry_poll_failures", "Registry polls that failed",
                                     registry=r)
        self.connections_closed = Counter(prefix + "connections_closed",
                                          "Connections closed by the server: header_timeout, body_timeout, "
                                          "over_limit", ["reason"], registry=r)
        self._closed_children = {reason: self.connections_closed.labels(reason)
                                 for reason in ("header_timeout", "body_timeout", "over_limit")}
        self.version_requests = Counter(prefix + "version_requests",
                                        "Answered predict requests by answering version and route "
                                        "(stable, canary, label, pinned)", ["model", "version", "route"],
                                        registry=r)
        self.version_latency = Histogram(prefix + "version_request_latency_seconds",
                                         "Predict request latency in seconds by answering version",
                                         ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.canary_percent = Gauge(prefix + "canary_percent", "Share of unpinned requests sent to the canary",
                                    ["model"], registry=r)
        self.canary_version = Gauge(prefix + "canary_version", "The canary version (0: none)", ["model"],
                                    registry=r)
        self._version_children: dict[tuple[str, int, str], tuple[object, object]] = {}
        self.shadow_requests = Counter(prefix + "shadow_requests", "Request copies scored by the shadow version",
                                       ["model", "version", "outcome"], registry=r)
        self.shadow_latency = Histogram(prefix + "shadow_latency_seconds", "Shadow scoring time in seconds",
                                        ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_abs_diff = Histogram(prefix + "shadow_abs_diff",
                                         "Mean absolute difference between shadow and answered scores",
                                         ["model", "version"],
                                         buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
                                         registry=r)
        self._known = set(models)
        self._req_children: dict[tuple[str, int], object] = {}
        self._lat_children: dict[str, object] = {}
        self._row_children: dict[str, object] = {}
        for name in models:  # export zeros from the start, so rate() works from the first scrape
            self.swaps.labels(name)
            self.load_failures.labels(name)

    def label(self, model: str | None) -> str:
        return model if model in self._known else UNKNOWN_MODEL

    def observe_request(self, model: str | None, code: int, seconds: float | None, rows: int = 0) -> None:
        """Count a request; ``seconds`` (predict requests only) goes to the latency histogram."""
        model = self.label(model)
        key = (model, code)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(model, str(code))
        child.inc()
        if seconds is not None:
            lat = self._lat_children.get(model)
            if lat is None:
                lat = self._lat_children[model] = self.latency.labels(model)
            lat.observe(seconds)
        if rows:
            rc = self._row_children.get(model)
            if rc is None:
                rc = self._row_children[model] = self.rows.labels(model)
            rc.inc(rows)

    def observe_version(self, model: str, version: int, route: str, seconds: float) -> None:
        """Count an answered predict request under the version that answered and its route.

        Only configured models reach here (the request found a loaded model), so the label set is
        bounded by the versions the service loads."""
        key = (model, version, route)
        children = self._version_children.get(key)
        if children is None:
            children = self._version_children[key] = (
                self.version_requests.labels(model, str(version), route),
                self.version_latency.labels(model, str(version)),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_shadow(self, model: str, version: int, outcome: str, seconds: float | None = None,
                       abs_diff: float | None = None) -> None:
        """Count one request copy scored (or not) by the shadow version (off the request path)."""
        v = str(version)
        self.shadow_requests.labels(model, v, outcome).inc()
        if seconds is not None:
            self.shadow_latency.labels(model, v).observe(seconds)
        if abs_diff is not None:
            self.shadow_abs_diff.labels(model, v).observe(abs_diff)

    def connection_closed(self, reason: str) -> None:
        """Count a connection the server closed (the protocol's ``on_event``)."""
        child = self._closed_children.get(reason)
        if child is None:
            child = self._closed_children[reason] = self.connections_closed.labels(reason)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
