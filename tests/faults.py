"""A TCP proxy in front of a real server that fails its first connections, for tests of retries.

``FlakyProxy(port, fail_first=3)`` listens on 127.0.0.1 and forwards to ``127.0.0.1:port``. Its first
``fail_first`` connections are answered with ``answer`` (e.g. an HTTP 503 for a PACS that refuses) or,
without one, closed at once (a database that is down); later ones are forwarded byte for byte. It
counts connections and occurrences of ``count`` (e.g. ``b"POST "``) in what clients send.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

__all__ = ["FlakyProxy"]


class FlakyProxy:
    def __init__(self, port: int, *, fail_first: int = 0, answer: bytes | None = None, count: bytes = b"POST "):
        self.target = port
        self.fail_first = fail_first
        self.answer = answer
        self.pattern = count
        self.connections = 0
        self.failed = 0
        self.counted = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.server.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                fail = self.failed < self.fail_first
                self.failed += fail
            if fail:
                self._refuse(client)
            else:
                threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        try:
            if self.answer is not None:
                client.settimeout(2)
                try:
                    client.recv(65536)  # the request's head, then the refusal
                except OSError:
                    pass
                client.sendall(self.answer)
        finally:
            client.close()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
        self._pipe(client, upstream, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, outgoing: bool) -> None:
        tail = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if outgoing and self.pattern:
                    seen = tail + data
                    with self.lock:
                        self.counted += seen.count(self.pattern) - tail.count(self.pattern)
                    tail = seen[-(len(self.pattern) - 1):] if len(self.pattern) > 1 else b""
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


SERVICE_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
                       b"Connection: close\r\n\r\nmaintenance\n")
