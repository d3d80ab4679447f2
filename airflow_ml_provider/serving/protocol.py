"""The service's HTTP/1.1 protocol: uvicorn's httptools protocol plus read deadlines and a connection cap.

uvicorn (0.55) bounds the idle time *between* requests (``timeout_keep_alive``) and answers 503 past
``limit_concurrency``, but has no deadline for *receiving* a request: its keep-alive timer is
cancelled by the first byte received, so a client that sends nothing, half a header or half a body
(or trickles one byte a second) holds its connection forever (uvicorn issue #157 lists
``--timeout-request-start`` / ``--timeout-request-complete`` as never done; h11 and httptools are
parsers and keep no time). An ASGI middleware cannot help: the app is called only once the headers
are complete. So this subclass of :class:`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`
adds, at the transport level:

* a **header deadline** (``--header-timeout``): a request's headers must be complete this many
  seconds after the connection opened, or after the first byte of a request on a kept-alive
  connection. An absolute deadline, not an idle one, so trickling does not extend it.
* a **body deadline** (``--body-timeout``): the body must be complete this many seconds after the
  headers. The app, waiting for the body, sees a disconnect.
* a **connection cap** (``--max-connections``): a connection over it is answered ``503`` and closed
  at once, before anything is read.

On a deadline the connection gets ``408 Request Timeout`` (when some of the request arrived; a
connection that sent nothing is just closed) and is closed. Every such event is counted in
``airflow_ml_serving_connections_closed_total{reason}``.

The settings are class attributes, set once per process by :func:`configure` (``airflow-ml serve``
in the parent, :func:`~airflow_ml_provider.serving.app.create_app_from_env` in each ``--workers``
process), because uvicorn instantiates the protocol class itself and pickles its config (by
reference to this module-level class) for worker processes. The cost on the request path is one
timer armed and cancelled per request (measured in bench/bench_serving.py: within noise).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("airflow_ml_provider.serving")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 1000

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
         b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s")
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s")


def _response(template: bytes, message: str) -> bytes:
    body = b'{"error":"%s"}' % message.encode()
    return template % (len(body), body)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body read deadlines and a connection cap."""

    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    #: called with "header_timeout", "body_timeout" or "over_limit" (the app counts them)
    on_event: Callable[[str], None] | None = None
    _warned: set[str] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._request_bytes = False  # some bytes of the request under the header deadline arrived

    # ---- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.max_connections
        if cap is not None and len(self.connections) >= cap:
            self._refused = True
            transport.write(_response(_BUSY, f"too many connections (over --max-connections {cap}); "
                                             "retry later"))
            transport.close()
            self._event("over_limit", f"connection refused: {len(self.connections)} connections open, "
                                      f"the limit is {cap} (--max-connections)")
            return
        super().connection_made(transport)
        self._arm(self.header_timeout, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            # the first bytes of a request on a kept-alive connection: its header deadline starts
            self._arm(self.header_timeout, "header")
        self._request_bytes = True
        super().data_received(data)

    # ---- parser callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout, "body")  # cancelled in on_message_complete (at once if no body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._request_bytes = False
        super().on_message_complete()

    # ---- deadlines ----------------------------------------------------------------------------

    def _arm(self, seconds: float | None, what: str) -> None:
        self._disarm()
        if seconds is not None and seconds > 0 and self.transport is not None:
            self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        flag = "--header-timeout" if what == "header" else "--body-timeout"
        message = f"request {what} not received within {seconds:g} s ({flag})"
        responded = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if (what == "body" or self._request_bytes) and not responded:
            transport.write(_response(_TIMEOUT, message))
        transport.close()  # the app, if it waits for the body, receives http.disconnect
        client = "%s:%d - " % self.client if self.client else ""
        self._event(f"{what}_timeout", f"{client}closed: {message}")

    def _event(self, reason: str, message: str) -> None:
        callback = type(self).on_event
        if callback is not None:
            try:
                callback(reason)
            except Exception:  # noqa: BLE001 - metrics must not break the connection handling
                log.exception("connection event callback failed")
        # WARNING once per reason (a flood of slow clients must not flood the log), then DEBUG
        level = logging.DEBUG if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        log.log(level, "%s%s", message, "" if level == logging.DEBUG else " (further ones are logged at DEBUG "
                "level and counted in airflow_ml_serving_connections_closed_total)")


def configure(*, header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
              body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
              max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
              on_event: Callable[[str], None] | None = None) -> type[GuardedHttpToolsProtocol]:
    """Set this process's deadlines and cap (0 or None = off) and return the protocol class for
    ``uvicorn.run(http=...)``."""
    cls = GuardedHttpToolsProtocol
    cls.header_timeout = float(header_timeout) if header_timeout else None
    cls.body_timeout = float(body_timeout) if body_timeout else None
    cls.max_connections = int(max_connections) if max_connections else None
    if on_event is not None:
        cls.on_event = on_event
    return cls


#: for ``uvicorn.run(http=...)`` with ``--workers`` (an import string; the class pickles by reference)
PROTOCOL_PATH = f"{__name__}:GuardedHttpToolsProtocol"
