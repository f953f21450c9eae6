"""Fault injection for tests: a TCP server that accepts connections and never answers.

It stands for a hung Redis or PostgreSQL (a process stopped with SIGSTOP, a proxy whose
backend died, a server stuck on a full disk): the kernel completes the TCP handshake and
acknowledges every byte, so connect timeouts and TCP keepalives see nothing wrong; only a
deadline on each reply notices.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class HungServer:
    """Listens on ``127.0.0.1:port``, accepts, reads and discards, never writes a byte.

    Args:
        port: the port to listen on; 0 lets the OS pick a free one (see ``port`` after start).
    """

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hung-server", daemon=True)

    @property
    def address(self) -> str:
        """``host:port``, as ``NBA_REDIS_URL`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> HungServer:
        """Start accepting in a daemon thread; returns self."""
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                self.accepted += 1
                self._connections.append(connection)
            threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    def _swallow(self, connection: socket.socket) -> None:
        # Read (so the client's writes never block on a full buffer) and never answer.
        with contextlib.suppress(OSError):
            while connection.recv(65536):
                pass

    def __enter__(self) -> HungServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listener and every accepted connection."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.close()
            self._connections.clear()


@contextlib.contextmanager
def hung_server(port: int = 0) -> Iterator[HungServer]:
    """A started ``HungServer``, stopped on exit."""
    server = HungServer(port).start()
    try:
        yield server
    finally:
        server.stop()
