"""A small threaded TCP proxy the fault tests put between a client and MariaDB.

``TcpProxy(upstream_host, upstream_port)`` listens on 127.0.0.1 (a free port). ``close()`` cuts
every open connection and stops listening, so the next connect is refused: the database "goes
away" mid-run. ``port=`` binds a given port (to bring the "database" back on the same address).
``blackhole=True`` accepts connections but never forwards a byte (a server that
hangs), to show that a lookup gives up after the connect timeout instead of hanging.
"""

from __future__ import annotations

import socket
import threading
from typing import Self


class TcpProxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, *, blackhole: bool = False, port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.blackhole = blackhole
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.settimeout(0.05)  # the accept loop polls, so close() really stops listening
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------

    def url(self, db_url: str) -> str:
        """``db_url`` (``mysql+pymysql://user@host:port/db``) redirected through this proxy."""
        from sqlalchemy.engine import make_url

        return make_url(db_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def close(self) -> None:
        """Stop listening and cut every open connection (clients see EOF / reset)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=5)  # the accept loop leaves within one poll
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._sockets)
            self._sockets.clear()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _track(self, s: socket.socket) -> bool:
        with self._lock:
            if self._closed.is_set():
                return False
            self._sockets.add(s)
            return True

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if not self._track(client):
                client.close()
                return
            self.connections += 1
            if self.blackhole:
                continue  # hold the socket open, never answer
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            if not self._track(upstream):
                upstream.close()
                client.close()
                return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
