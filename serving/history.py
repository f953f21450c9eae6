"""Contact history for the contact policy: which customers got which action, on which channel.

Every action given (promo, apology credit, recognition) is recorded with its channel when it is
chosen, before the response leaves, so the next request sees it whichever worker (or host)
answers. The guardrails read counts of it (``contact_counts``): ``promos_7d`` (the promo
frequency cap), ``contacts_7d`` and ``contacts_7d_channel`` (marketing contacts, promo and
recognition, across channels and on the decision's channel), ``recognitions_30d`` and
``apology_credits_30d``; the caps themselves are rules of the guardrail file. On one host the
history is a small SQLite table in WAL mode shared by every worker through one file (readers
never block the writer); the production profile (``NBA_PROMO_STORE=redis``) keeps it in Redis,
one sorted set per customer, so that every host behind a load balancer sees every contact.

If the history cannot be read, ``contacts`` returns None and every count is missing: the
guardrails treat a missing value as "fires" (fail closed), so no marketing goes out rather than
too much.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from memory.store import micros
from serving.deadline import Breaker, StoreUnavailable

logger = logging.getLogger(__name__)

#: One contact: (epoch microseconds, action, channel).
Contact = tuple[int, str, str]
#: The longest window a count reads (days): what a read fetches and a store keeps.
CONTACT_DAYS: Final = 30.0
#: Marketing actions: the contact caps count them (an apology credit is a service action).
MARKETING: Final = frozenset({"promo", "recognition"})
#: The counts ``contact_counts`` gives the guardrails (all ints; None when unreadable).
COUNTS: Final = (
    "promos_7d",
    "contacts_7d",
    "contacts_7d_channel",
    "recognitions_30d",
    "apology_credits_30d",
)
_DAY_US: Final = 86_400_000_000


def contact_counts(
    contacts: Iterable[Contact] | None, now: datetime, channel: str
) -> dict[str, int | None]:
    """The guardrails' contact counts at ``now`` for a decision on ``channel`` (pure).

    Windows are ``(now - days, now]``; None contacts (unreadable history) give None counts.
    """
    if contacts is None:
        return dict.fromkeys(COUNTS)
    end = micros(now)
    week, month = end - 7 * _DAY_US, end - 30 * _DAY_US
    counts = dict.fromkeys(COUNTS, 0)
    for at, action, where in contacts:
        if not month < at <= end:
            continue
        if action == "recognition":
            counts["recognitions_30d"] += 1
        elif action == "apology_credit":
            counts["apology_credits_30d"] += 1
        if at > week and action in MARKETING:
            counts["contacts_7d"] += 1
            counts["promos_7d"] += action == "promo"
            counts["contacts_7d_channel"] += where == channel
    return counts  # type: ignore[return-value]


def _member(action: str, channel: str, stamp: int) -> str:
    return f"{stamp}-{uuid.uuid4().hex[:8]}|{action}|{channel}"


def _parse_member(member: bytes | str, score: float | int | None = None) -> Contact:
    text = member.decode() if isinstance(member, bytes) else member
    stamp_part, _, rest = text.partition("|")
    # Members written before contacts had actions ("<stamp>-<random>") were promos.
    action, _, channel = rest.partition("|") if rest else ("promo", "", "")
    at = int(score) if score is not None else int(stamp_part.split("-")[0])
    return (at, action or "promo", channel)


class ContactHistory(Protocol):
    """Where given actions are recorded and read back."""

    def contacts(self, customer_id: str, now: datetime) -> list[Contact] | None:
        """The customer's contacts of the last ``CONTACT_DAYS`` to ``now``; None: unreadable."""
        ...

    def add(self, customer_id: str, at: datetime, action: str = "promo",
            channel: str = "web") -> None:  # fmt: skip
        """Record ``action`` given to ``customer_id`` on ``channel`` at ``at``."""
        ...

    def add_contacts(self, items: Iterable[tuple[str, datetime, str, str]]) -> None:
        """``add`` for many (customer, time, action, channel)."""
        ...


class _Counts:
    """Counts and plain adds over ``contacts`` / ``add_contacts`` (shared by the stores)."""

    def contacts(self, customer_id: str, now: datetime) -> list[Contact] | None:
        raise NotImplementedError

    def contacts_many(self, customer_ids: list[str], now: datetime) -> list[list[Contact] | None]:
        raise NotImplementedError

    def add_contacts(self, items: Iterable[tuple[str, datetime, str, str]]) -> None:
        raise NotImplementedError

    def count(self, customer_id: str, now: datetime, days: float = 7.0,
              action: str = "promo") -> int | None:  # fmt: skip
        """``action``s given to the customer in ``(now - days, now]`` (None: unreadable)."""
        return self.count_many([customer_id], now, days, action)[0]

    def count_many(self, customer_ids: list[str], now: datetime, days: float = 7.0,
                   action: str = "promo") -> list[int | None]:  # fmt: skip
        """``count`` for many customers."""
        start, end = micros(now - timedelta(days=days)), micros(now)
        return [
            None if found is None
            else sum(1 for at, what, _ in found if what == action and start < at <= end)
            for found in self.contacts_many(customer_ids, now)
        ]  # fmt: skip

    def add(self, customer_id: str, at: datetime, action: str = "promo",
            channel: str = "web") -> None:  # fmt: skip
        """Record ``action`` given to ``customer_id`` on ``channel`` at ``at``."""
        self.add_contacts([(customer_id, at, action, channel)])

    def add_many(self, customer_ids: list[str], at: datetime, action: str = "promo",
                 channel: str = "web") -> None:  # fmt: skip
        """``add`` for many customers at one time."""
        self.add_contacts([(c, at, action, channel) for c in customer_ids])


class MemoryContactHistory(_Counts):
    """A per-process history (tests, offline use)."""

    def __init__(self) -> None:
        self._contacts: dict[str, list[Contact]] = {}
        self._lock = threading.Lock()

    def contacts(self, customer_id: str, now: datetime) -> list[Contact] | None:
        start, end = micros(now - timedelta(days=CONTACT_DAYS)), micros(now)
        with self._lock:
            return [c for c in self._contacts.get(customer_id, ()) if start < c[0] <= end]

    def contacts_many(self, customer_ids: list[str], now: datetime) -> list[list[Contact] | None]:
        """``contacts`` for many customers."""
        return [self.contacts(c, now) for c in customer_ids]

    def add_contacts(self, items: Iterable[tuple[str, datetime, str, str]]) -> None:
        """``add`` for many (customer, time, action, channel)."""
        with self._lock:
            for customer_id, at, action, channel in items:
                self._contacts.setdefault(customer_id, []).append((micros(at), action, channel))


class SqliteContactHistory(_Counts):
    """The history in one SQLite file shared by every worker on the host.

    Rows older than ``keep_days`` are pruned now and then; times are stored as epoch
    microseconds (UTC) so that comparisons are integer comparisons.
    """

    def __init__(self, path: Path, keep_days: float = CONTACT_DAYS + 1,
                 timeout: float = 2.0) -> None:  # fmt: skip
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
        # NORMAL: durable across a process crash, not an OS crash; a lost contact record can
        # only allow one extra message after a power cut.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS contacts (customer_id TEXT NOT NULL, "
                "at_us INTEGER NOT NULL, action TEXT NOT NULL, channel TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS contacts_by_customer ON contacts (customer_id, at_us)"
            )
            # A history written before contacts had actions: its rows were promos.
            old = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'promos'"
            ).fetchone()
            if old is not None:
                self._db.execute("INSERT INTO contacts SELECT customer_id, at_us, 'promo', '' "
                                 "FROM promos")  # fmt: skip
                self._db.execute("DROP TABLE promos")

    def contacts(self, customer_id: str, now: datetime) -> list[Contact] | None:
        return self.contacts_many([customer_id], now)[0]

    def contacts_many(self, customer_ids: list[str], now: datetime) -> list[list[Contact] | None]:
        """``contacts`` for many customers (a batch) in one statement per 900 ids."""
        window = (micros(now - timedelta(days=CONTACT_DAYS)), micros(now))
        found: dict[str, list[Contact]] = {}
        unique = list(dict.fromkeys(customer_ids))
        try:
            with self._lock:
                for start in range(0, len(unique), 900):
                    chunk = unique[start : start + 900]
                    marks = ",".join("?" * len(chunk))
                    for customer_id, at, action, channel in self._db.execute(
                        "SELECT customer_id, at_us, action, channel FROM contacts WHERE "
                        f"customer_id IN ({marks}) AND at_us > ? AND at_us <= ?",
                        (*chunk, *window),
                    ):
                        found.setdefault(customer_id, []).append((at, action, channel))
        except sqlite3.Error as error:
            logger.warning("contact history unreadable (%s): marketing blocked", error)
            return [None] * len(customer_ids)
        return [found.get(c, []) for c in customer_ids]

    def add_contacts(self, items: Iterable[tuple[str, datetime, str, str]]) -> None:
        """Record many (customer, time, action, channel) in one transaction."""
        rows = [(c, micros(at), action, channel) for c, at, action, channel in items]
        if not rows:
            return
        with self._lock:
            with self._db:  # one commit for the whole batch
                self._db.executemany(
                    "INSERT INTO contacts (customer_id, at_us, action, channel) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
            before, self._adds = self._adds, self._adds + len(rows)
            if before // 10_000 != self._adds // 10_000:
                cutoff = rows[-1][1] - int(self.keep_days * _DAY_US)
                self._db.execute("DELETE FROM contacts WHERE at_us < ?", (cutoff,))
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


class RedisContactHistory(_Counts):
    """The history in Redis, shared by every worker of every host.

    One sorted set per customer (``<prefix><customer_id>``), scored by epoch microseconds,
    members ``<stamp>-<random>|<action>|<channel>`` (unique: two contacts in the same
    microsecond still count twice). A read is one ``ZRANGEBYSCORE`` of the last
    ``CONTACT_DAYS`` (a customer has a handful of contacts a month); an add one pipelined
    ``ZADD`` + trim + ``EXPIRE`` round trip, so a quiet customer's key disappears ``keep_days``
    after their last contact.

    With a ``breaker`` (``serving.deadline``), calls fail at once for a while after one missed
    its deadline: a read is then None (marketing blocked) and an add raises (action not given).
    """

    def __init__(
        self,
        client: Any,
        prefix: str = "nba:promos:",
        keep_days: float = CONTACT_DAYS + 1,
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

    def window(self, customer_id: str, now: datetime) -> tuple[str, str, int]:
        """``ZRANGEBYSCORE``'s arguments for ``contacts``: the key and ``(now - 30 d, now]``."""
        start = micros(now - timedelta(days=CONTACT_DAYS))
        # "(" makes the lower bound exclusive.
        return self.prefix + customer_id, f"({start}", micros(now)

    @staticmethod
    def parsed(reply: object) -> list[Contact] | None:
        """``contacts``' answer from a ``ZRANGEBYSCORE`` reply; None (logged) for an error."""
        if isinstance(reply, Exception):
            logger.warning("contact history unreadable (%s): marketing blocked", reply)
            return None
        return [_parse_member(member) for member in reply]  # type: ignore[attr-defined]

    def contacts(self, customer_id: str, now: datetime) -> list[Contact] | None:
        import redis

        try:
            reply: object = self._call(self._redis.zrangebyscore, *self.window(customer_id, now))
        except (redis.RedisError, StoreUnavailable) as error:
            reply = error
        return self.parsed(reply)

    def contacts_many(self, customer_ids: list[str], now: datetime) -> list[list[Contact] | None]:
        """``contacts`` for many customers (a batch) in one pipelined round trip."""
        import redis

        pipe = self._redis.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.zrangebyscore(*self.window(customer_id, now))
        try:
            replies: list[object] = self._call(pipe.execute, False)  # raise_on_error=False
        except (redis.RedisError, StoreUnavailable) as error:
            replies = [error] * len(customer_ids)
        return [self.parsed(reply) for reply in replies]

    def add_commands(
        self, customer_id: str, at: datetime, action: str = "promo", channel: str = "web"
    ) -> list[tuple[str | int, ...]]:
        """The commands that record one contact: ``ZADD``, the trim of entries older than
        ``keep_days``, ``EXPIRE`` (``add_contacts`` pipelines them; ``serving.redisreads``
        sends them with other decisions' commands)."""
        stamp = micros(at)
        cutoff = micros(at - timedelta(days=self.keep_days))
        key = self.prefix + customer_id
        return [
            ("ZADD", key, stamp, _member(action, channel, stamp)),
            ("ZREMRANGEBYSCORE", key, "-inf", f"({cutoff}"),
            ("EXPIRE", key, int(self.keep_days * 86_400)),
        ]

    def add_contacts(self, items: Iterable[tuple[str, datetime, str, str]]) -> None:
        """Record many (customer, time, action, channel) in one pipelined round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for customer_id, at, action, channel in items:
            for command in self.add_commands(customer_id, at, action, channel):
                pipe.execute_command(*command)
        self._call(pipe.execute)

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()
