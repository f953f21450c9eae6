"""Deadlines on store calls: what counts as a missed deadline, and the breaker that remembers it.

Every call to a store on the request path has a deadline set with the store's own client
options (``NBA_STORE_TIMEOUT_SECONDS``): redis-py's socket and connect timeouts (Feast's client
and the promo history's), ``serving.resp.RedisPipe``'s deadline per write, SQLite's busy
timeout. A missed deadline raises, and the caller answers the safe way (``none``, degraded; no
promo, no credit; 503 for ``/events`` and ``/readyz``).

A store that accepts connections but never answers would still cost every request one full
deadline; on a worker whose event loop makes the blocking calls (features on Redis, promos in
SQLite) that is the loop itself, and a ``/decide_batch`` of small requests pays it once per
request. ``Breaker`` therefore remembers a missed deadline: for ``NBA_STORE_COOLDOWN_SECONDS``
after one, calls through it fail at once, and the first call after that tries the store again.
Only missed deadlines open it: a refused connection or an error reply is already fast.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Final, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Names of the exception classes that mean "no answer in time": the builtin ``TimeoutError``
#: (``socket.timeout``, ``serving.resp``) and redis-py's, which is not a subclass of it.
_TIMEOUT_NAMES: Final = frozenset({"TimeoutError"})


class StoreUnavailable(ConnectionError):
    """A store missed a deadline a moment ago: not asked again until its cool-down is over."""


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a missed deadline (a timeout, or SQLite still busy at its end)."""
    if isinstance(error, StoreUnavailable | TimeoutError):
        return True
    if isinstance(error, sqlite3.OperationalError):
        text = str(error).lower()
        return "locked" in text or "busy" in text
    return any(cls.__name__ in _TIMEOUT_NAMES for cls in type(error).__mro__)


class Breaker:
    """Fails calls to one store at once for ``cooldown`` seconds after one missed its deadline.

    Thread-safe without a lock: its state is one float, written whole (a race only lets one
    more call try the store).

    Args:
        name: the store, for messages ("feature store").
        cooldown: seconds to fail fast after a missed deadline; 0 never fails fast.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, name: str, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self._cause = ""
        #: Missed deadlines seen (for tests and logs).
        self.trips = 0

    def is_open(self) -> bool:
        """Whether calls fail fast now."""
        # 0.0 until a missed deadline: the request path then skips reading the clock.
        return bool(self._open_until) and self._open_until > self._clock()

    def check(self) -> None:
        """Raise ``StoreUnavailable`` while the breaker is open."""
        if not self._open_until:
            return
        left = self._open_until - self._clock()
        if left <= 0:
            self._open_until = 0.0  # closed again: the next call tries the store
            return
        raise StoreUnavailable(
            f"{self.name} missed its deadline ({self._cause}); not asked again for {left:.1f} s"
        )

    def trip(self, error: BaseException) -> None:
        """Record a missed deadline: fail fast for ``cooldown`` seconds from now."""
        self.trips += 1
        self._cause = f"{type(error).__name__}: {error}"[:200]
        if self.cooldown > 0:
            self._open_until = self._clock() + self.cooldown

    def call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` unless the breaker is open; a timeout it raises opens it."""
        if self._open_until:
            self.check()
        try:
            return fn(*args)
        except Exception as error:
            if is_timeout(error) and not isinstance(error, StoreUnavailable):
                self.trip(error)
            raise
