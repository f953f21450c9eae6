"""Promo history for the frequency cap: which customers got a promo, and when.

The ``promo_frequency_cap`` guardrail reads ``promos_7d``, the promos decided for the customer in
the last 7 days. Several service workers (and replicas on one host) must see each other's
promos at once, or a customer who searches twice could get two promos from two workers: the
history is a small SQLite table in WAL mode shared by every worker through one file (readers
never block the writer). A promo is recorded synchronously when it is chosen, before the
response leaves, so the next request sees it whichever worker answers. One file is enough on one
host; the production profile (``NBA_PROMO_STORE=redis``) keeps the history in Redis, one sorted
set per customer, so that every host behind a load balancer sees every promo.

If the history cannot be read, ``count`` returns None: the guardrail treats a missing value as
"fires" (fail closed), so no promo goes out rather than too many.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from serving.deadline import Breaker, StoreUnavailable

logger = logging.getLogger(__name__)


class PromoHistory(Protocol):
    """Where chosen promos are recorded and counted."""

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        """Promos for ``customer_id`` in ``(now - days, now]``; None when unreadable."""
        ...

    def add(self, customer_id: str, at: datetime) -> None:
        """Record a promo decided for ``customer_id`` at ``at``."""
        ...


class MemoryPromoHistory:
    """A per-process history (tests, offline use)."""

    def __init__(self) -> None:
        self._times: dict[str, list[datetime]] = {}
        self._lock = threading.Lock()

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        start = now - timedelta(days=days)
        with self._lock:
            return sum(start < t <= now for t in self._times.get(customer_id, ()))

    def add(self, customer_id: str, at: datetime) -> None:
        with self._lock:
            self._times.setdefault(customer_id, []).append(at)

    def count_many(
        self, customer_ids: list[str], now: datetime, days: float = 7.0
    ) -> list[int | None]:
        """``count`` for many customers."""
        return [self.count(c, now, days) for c in customer_ids]

    def add_many(self, customer_ids: list[str], at: datetime) -> None:
        """``add`` for many customers."""
        for customer_id in customer_ids:
            self.add(customer_id, at)


class SqlitePromoHistory:
    """The history in one SQLite file shared by every worker on the host.

    Rows older than ``keep_days`` are pruned now and then; times are stored as epoch
    microseconds (UTC) so that comparisons are integer comparisons.
    """

    def __init__(self, path: Path, keep_days: float = 8.0, timeout: float = 2.0) -> None:
        """``timeout``: SQLite's busy timeout in seconds, the deadline of every call (another
        worker's write holds the file's lock meanwhile)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._adds = 0
        # One connection per process (workers are processes), used under a lock: sqlite3
        # connections are not safe to share between threads without one.
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: durable across a process crash, not an OS crash; a lost promo record can only
        # allow one extra promo after a power cut.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS promos (customer_id TEXT NOT NULL, at_us INTEGER NOT NULL)"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS promos_by_customer ON promos (customer_id, at_us)"
        )
        self._db.commit()

    @staticmethod
    def _us(moment: datetime) -> int:
        return int(moment.timestamp() * 1_000_000)

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        try:
            with self._lock:
                (n,) = self._db.execute(
                    "SELECT COUNT(*) FROM promos"
                    " WHERE customer_id = ? AND at_us > ? AND at_us <= ?",
                    (customer_id, self._us(now - timedelta(days=days)), self._us(now)),
                ).fetchone()
            return int(n)
        except sqlite3.Error as error:
            logger.warning("promo history unreadable (%s): promos blocked", error)
            return None

    def add(self, customer_id: str, at: datetime) -> None:
        self.add_many([customer_id], at)

    def count_many(
        self, customer_ids: list[str], now: datetime, days: float = 7.0
    ) -> list[int | None]:
        """``count`` for many customers (a batch) in one statement per 900 ids."""
        window = (self._us(now - timedelta(days=days)), self._us(now))
        counts: dict[str, int] = {}
        unique = list(dict.fromkeys(customer_ids))
        try:
            with self._lock:
                for start in range(0, len(unique), 900):
                    chunk = unique[start : start + 900]
                    marks = ",".join("?" * len(chunk))
                    counts.update(
                        self._db.execute(
                            "SELECT customer_id, COUNT(*) FROM promos WHERE customer_id IN "
                            f"({marks}) AND at_us > ? AND at_us <= ? GROUP BY customer_id",
                            (*chunk, *window),
                        ).fetchall()
                    )
        except sqlite3.Error as error:
            logger.warning("promo history unreadable (%s): promos blocked", error)
            return [None] * len(customer_ids)
        return [int(counts.get(c, 0)) for c in customer_ids]

    def add_many(self, customer_ids: list[str], at: datetime) -> None:
        """Record a promo for each of ``customer_ids`` at ``at`` (one transaction)."""
        stamp = self._us(at)
        with self._lock:
            with self._db:  # one commit for the whole batch
                self._db.executemany(
                    "INSERT INTO promos (customer_id, at_us) VALUES (?, ?)",
                    [(c, stamp) for c in customer_ids],
                )
            before, self._adds = self._adds, self._adds + len(customer_ids)
            if before // 10_000 != self._adds // 10_000:
                cutoff = self._us(at - timedelta(days=self.keep_days))
                self._db.execute("DELETE FROM promos WHERE at_us < ?", (cutoff,))
                self._db.commit()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def redis_client(connection_string: str, timeout: float = 0.5) -> Any:
    """A ``redis.Redis`` for a Feast-style connection string (``host:port[,key=value…]``).

    The same string as the Redis online store's (``NBA_REDIS_URL``), so one setting points
    both at one server. Options understood: ``db``, ``password``, ``username``, ``ssl``.
    ``timeout`` bounds connect and each command: an unreachable Redis must turn into a blocked
    promo within a request, not hang it. So a command that failed on a connection error is
    retried once at once (a pooled connection that Redis closed, e.g. after a restart, is
    replaced), never after a pause: redis-py's default retries three times with exponential
    backoff: 6–7 s for one command against a Redis that is down. A timeout is not retried: the
    deadline stays ``timeout``.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    address, *options = [part.strip() for part in connection_string.split(",") if part.strip()]
    host, _, port = address.rpartition(":")
    kwargs: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        key = key.strip().lower()
        if key == "db":
            kwargs["db"] = int(value)
        elif key in ("password", "username"):
            kwargs[key] = value
        elif key == "ssl":
            kwargs["ssl"] = value.strip().lower() in ("true", "1", "yes")
    return redis.Redis(
        host=host or "127.0.0.1",
        port=int(port or 6379),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
        **kwargs,
    )


class RedisPromoHistory:
    """The history in Redis, shared by every worker of every host.

    One sorted set per customer (``<prefix><customer_id>``), scored by epoch microseconds; a
    count is one ``ZCOUNT``, an add one pipelined ``ZADD`` + trim + ``EXPIRE`` round trip, so a
    quiet customer's key disappears ``keep_days`` after their last promo. Members are unique
    (time and a random suffix): two promos in the same microsecond still count twice.

    With a ``breaker`` (``serving.deadline``), calls fail at once for a while after one missed
    its deadline: a count is then None (promo blocked) and an add raises (promo not given).
    """

    def __init__(
        self,
        client: Any,
        prefix: str = "nba:promos:",
        keep_days: float = 8.0,
        breaker: Breaker | None = None,
    ) -> None:
        self._redis = client
        self.prefix = prefix
        self.keep_days = keep_days
        self._breaker = breaker

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self._breaker is None else self._breaker.call(fn, *args)

    @property
    def client(self) -> Any:
        """The ``redis.Redis`` client (its connection pool)."""
        return self._redis

    @staticmethod
    def _us(moment: datetime) -> int:
        return int(moment.timestamp() * 1_000_000)

    def window(self, customer_id: str, now: datetime, days: float = 7.0) -> tuple[str, str, int]:
        """``ZCOUNT``'s arguments for ``count``: the key and the window ``(now - days, now]``."""
        start = self._us(now - timedelta(days=days))
        # "(" makes the lower bound exclusive.
        return self.prefix + customer_id, f"({start}", self._us(now)

    @staticmethod
    def counted(reply: object) -> int | None:
        """``count``'s answer from a ``ZCOUNT`` reply, or None (logged) when it is an error."""
        if isinstance(reply, Exception):
            logger.warning("promo history unreadable (%s): promos blocked", reply)
            return None
        return int(reply)  # type: ignore[call-overload]

    def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int | None:
        import redis

        try:
            reply: object = self._call(self._redis.zcount, *self.window(customer_id, now, days))
        except (redis.RedisError, StoreUnavailable) as error:
            reply = error
        return self.counted(reply)

    def add(self, customer_id: str, at: datetime) -> None:
        self.add_many([customer_id], at)

    def count_many(
        self, customer_ids: list[str], now: datetime, days: float = 7.0
    ) -> list[int | None]:
        """``count`` for many customers (a batch) in one pipelined round trip."""
        import redis

        pipe = self._redis.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.zcount(*self.window(customer_id, now, days))
        try:
            replies: list[object] = self._call(pipe.execute, False)  # raise_on_error=False
        except (redis.RedisError, StoreUnavailable) as error:
            replies = [error] * len(customer_ids)
        return [self.counted(reply) for reply in replies]

    def add_commands(self, customer_id: str, at: datetime) -> list[tuple[str | int, ...]]:
        """The commands that record one promo: ``ZADD``, the trim of entries older than
        ``keep_days``, ``EXPIRE`` (``add_many`` pipelines them; ``serving.redisreads`` sends
        them with other decisions' commands)."""
        stamp = self._us(at)
        cutoff = self._us(at - timedelta(days=self.keep_days))
        key = self.prefix + customer_id
        return [
            ("ZADD", key, stamp, f"{stamp}-{uuid.uuid4().hex[:8]}"),
            ("ZREMRANGEBYSCORE", key, "-inf", f"({cutoff}"),
            ("EXPIRE", key, int(self.keep_days * 86_400)),
        ]

    def add_many(self, customer_ids: list[str], at: datetime) -> None:
        """Record a promo for each of ``customer_ids`` at ``at`` (one pipelined round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for customer_id in customer_ids:
            for command in self.add_commands(customer_id, at):
                pipe.execute_command(*command)
        self._call(pipe.execute)

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()
