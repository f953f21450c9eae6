"""`nba serve`'s server process: BentoML's ``bentoml serve``, stopping without resetting clients.

BentoML runs its workers under a circus arbiter that owns the listening socket and passes it
to every worker (``--fd``). On SIGTERM the arbiter signals the workers; each worker's uvicorn
closes *its* copy of the socket, answers the requests in flight (``timeout_graceful_shutdown``,
``NBA_SHUTDOWN_GRACE_SECONDS``), runs the shutdown hooks and exits; only then does the arbiter
close its own copy. Meanwhile the kernel still completes connections into the socket's accept
queue, and nobody accepts them: a client reconnecting after a ``Connection: close`` answer
sends its request and is reset when the arbiter finally closes the socket (measured: 17-23
resets per SIGTERM under 16 keep-alive clients, every one on a fresh connection).

Two changes, everything else is BentoML's and uvicorn's own shutdown:

* when the arbiter starts stopping, it first shuts the listening socket down for every process
  (``shutdown(SHUT_RD)`` acts on the socket, not on one descriptor): new connections are then
  refused (nothing was sent: the client may retry elsewhere). Wraps
  ``circus.arbiter.Arbiter.stop``, which has no hook for this;
* in the workers (``drain_idle_connections``, called by ``serving.service``), uvicorn no longer
  closes an idle keep-alive connection at once: the client's next request may already sit in
  the kernel's buffer, and closing a socket with unread data resets it (measured: 7 resets per
  SIGTERM once the first change was in, each on a connection that had served requests). Such a
  request is answered with ``Connection: close`` instead; a connection that stays silent is
  closed by uvicorn's keep-alive timeout as usual (5 s), within the grace. Wraps
  ``HttpToolsProtocol.shutdown`` and ``on_headers_complete`` (the httptools protocol, which
  BentoML's workers use when httptools is installed, as it is here).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

logger = logging.getLogger(__name__)


def stop_accepting(sockets: Any) -> None:
    """Shut down listening sockets (for every process sharing them); errors are logged only."""
    for sock in list(sockets.values()):
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError as error:  # already closed or never listening: nothing to stop
            logger.debug("listening socket not shut down: %s", error)


def _patch_arbiter() -> None:
    from circus.arbiter import Arbiter

    original = Arbiter.stop

    def stop(self: Any) -> Any:
        if not getattr(self, "_stopping", False):
            stop_accepting(self.sockets)
        return original(self)

    Arbiter.stop = stop


def drain_idle_connections() -> None:
    """Make a worker's uvicorn answer, not reset, a request racing its shutdown (see above)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if getattr(HttpToolsProtocol, "_nba_drains", False):
        return
    original_shutdown = HttpToolsProtocol.shutdown
    original_headers = HttpToolsProtocol.on_headers_complete

    def shutdown(self: Any) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            original_shutdown(self)  # mid-request: answered with Connection: close
            return
        self._nba_draining = True
        if self.timeout_keep_alive_task is None:  # idle since it was opened: close it later
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_headers_complete(self: Any) -> None:
        original_headers(self)
        if getattr(self, "_nba_draining", False) and self.cycle is not None:
            self.cycle.keep_alive = False  # the last request of this connection

    HttpToolsProtocol.shutdown = shutdown  # type: ignore[method-assign]
    HttpToolsProtocol.on_headers_complete = on_headers_complete  # type: ignore[method-assign]
    HttpToolsProtocol._nba_drains = True  # type: ignore[attr-defined]


def main() -> None:
    """``bentoml serve`` with the arguments of this command line (see the module docstring)."""
    _patch_arbiter()
    from bentoml_cli.cli import cli

    cli(args=["serve", *sys.argv[1:]], prog_name="bentoml")


if __name__ == "__main__":
    main()
