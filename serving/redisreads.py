"""A decision's Redis reads in one round trip: features, recent contacts and the budget's count.

On the production profile ``/decide`` reads three things from Redis before the guardrails can
judge: the customer's stored features (one ``HMGET``, ``features.store._RedisRows``), the
contacts of the last 30 days (a ``ZRANGEBYSCORE``, ``serving.history.RedisContactHistory``) and
the day's
apology credits (a ``GET``, ``serving.budget.RedisBudgetCounter``). One after the other they are
three round trips, and on a loaded host every round trip costs CPU in the worker and in Redis
(system calls on both sides, a wake-up of each) besides its wait. ``RedisDecisionReads`` sends
the three commands in one pipeline and answers exactly what the three separate calls answer:

* the features as ``DirectOnlineReader.read`` returns them (``_RedisRows.record``);
* the contacts as ``RedisContactHistory.contacts`` (None, logged, when its reply is an error:
  the contact caps then block marketing);
* the credits left as ``DailyBudget.remaining`` (0 with a rate-limited warning when the count
  cannot be read).

``PipelinedDecisionIO`` is the same for the service's event loop (``Decider.decide_async``):
the reads, and a chosen action's record or credit, are awaited on a ``serving.resp.RedisPipe``,
which writes the commands of every request that reached them in one loop iteration at once.

The pipeline is not a transaction, like the separate calls: each value is what its own call
would have read a few microseconds apart. A connection failure raises, as the features read
does (the decision is then degraded). It only applies when the three live on one Redis server;
``one_round_trip`` returns None otherwise and the caller keeps the separate calls.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol, TypeAlias

from serving.budget import RedisBudgetCounter
from serving.deadline import Breaker
from serving.history import Contact, RedisContactHistory
from serving.policy import DailyBudget
from serving.resp import RedisPipe, pack, pack_tail

#: (stored features, contacts of the window or None when unreadable, apology credits left).
DecisionReads: TypeAlias = tuple[dict[str, object], list[Contact] | None, int]


class RedisRows(Protocol):
    """What this needs of ``features.store._RedisRows`` (the Redis online store's reader)."""

    @property
    def client(self) -> Any:
        """The online store's ``redis.Redis`` client."""
        ...

    @property
    def fields(self) -> list[bytes]:
        """The hash fields of one customer's ``HMGET``."""
        ...

    def key(self, customer_id: str) -> bytes:
        """The Redis key of a customer's hash."""
        ...

    def record(self, reply: list[bytes | None], now: datetime | None = None) -> dict[str, object]:
        """A customer's stored features from the ``HMGET`` reply."""
        ...


class RedisDecisionReads:
    """Features, recent contacts and credits left of one decision, in one round trip.

    Args:
        rows: the online store's reader (its client carries the pipeline).
        history: the contact history in Redis (its key layout and reply handling).
        budget: the apology budget, counted in Redis (its clock, pacing and failure handling).
    """

    def __init__(self, rows: RedisRows, history: RedisContactHistory, budget: DailyBudget) -> None:
        if not isinstance(budget.counter, RedisBudgetCounter):
            raise TypeError("the budget must be counted in Redis (RedisBudgetCounter)")
        self._rows = rows
        self._history = history
        self._budget = budget
        self._counter: RedisBudgetCounter = budget.counter

    def __call__(self, customer_id: str, now: datetime) -> DecisionReads:
        """(stored features, contacts to ``now`` or None, apology credits left).

        ``now`` is the decision's time (the contact window's end); the budget reads its own
        clock and the features' TTL the current time, as the separate calls do. Raises when
        Redis cannot be reached or the features reply is an error.
        """
        today = self._budget.now()
        pipe = self._rows.client.pipeline(transaction=False)
        pipe.hmget(self._rows.key(customer_id), self._rows.fields)
        pipe.zrangebyscore(*self._history.window(customer_id, now))
        pipe.get(self._counter.key(today.date()))
        # Errors of single commands come back as values (a wrong key type, say): each is then
        # handled as its own call would handle it. A lost connection still raises here.
        features, contacts, spent = pipe.execute(raise_on_error=False)
        return self.answer(today, features, contacts, spent)

    def answer(self, today: datetime, features: Any, contacts: Any, spent: Any) -> DecisionReads:
        """``__call__``'s answer from the three replies (an error reply as an exception value);
        ``today`` is the budget's clock when the count was asked for. Raises the features'
        error."""
        if isinstance(features, Exception):
            raise features
        return (
            self._rows.record(features),
            self._history.parsed(contacts),
            self._budget.left(today, spent if isinstance(spent, Exception) else int(spent or 0)),
        )


class PipelinedDecisionIO:
    """``serving.decider.DecisionIO`` on Redis: concurrent decisions share round trips.

    ``Decider.decide_async`` awaits these calls on the service worker's event loop, so a
    worker keeps deciding other requests while Redis answers, and every decision that reaches
    a Redis step in the same loop iteration goes out in the same write (``serving.resp``). The
    commands and the handling of their replies are ``RedisDecisionReads``'s (reads),
    ``RedisContactHistory.add_commands`` (an action given) and ``RedisBudgetCounter.take_command``
    (a credit), so the answers are those of the blocking calls.

    Args:
        reads: the one-round-trip reads (its features reader, history and budget).
        pipe: the connection to their Redis server (``RedisPipe.like`` its client).
    """

    def __init__(self, reads: RedisDecisionReads, pipe: RedisPipe) -> None:
        self._reads = reads
        self._rows = reads._rows
        self._history = reads._history
        self._budget = reads._budget
        self._counter = reads._counter
        self.pipe = pipe
        fields = self._rows.fields
        # HMGET's header and field list never change: packed once.
        self._hmget_head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
        self._hmget_fields = pack_tail(*fields)
        self._count_day: date | None = None
        self._count_packed = b""

    async def read(
        self, customer_id: str, now: datetime
    ) -> tuple[dict[str, object], tuple[list[Contact] | None, int]]:
        """Stored features and ``(recent contacts, credits left)``; raises when Redis
        cannot be reached or the features reply is an error (the decision is degraded)."""
        today = self._budget.now()
        key = self._rows.key(customer_id)
        packed = b"".join(
            (
                self._hmget_head,
                b"$%d\r\n%s\r\n" % (len(key), key),
                self._hmget_fields,
                pack("ZRANGEBYSCORE", *self._history.window(customer_id, now)),
                self._count_command(today),
            )
        )
        features, contacts, spent = await self.pipe.submit(packed, 3)
        stored, found, left = self._reads.answer(today, features, contacts, spent)
        return stored, (found, left)

    def _count_command(self, today: datetime) -> bytes:
        """``GET`` of ``today``'s budget count, packed once a day."""
        day = today.date()
        if self._count_day != day:
            self._count_day = day
            self._count_packed = pack("GET", self._counter.key(day))
        return self._count_packed

    async def take_credit(self) -> bool:
        """One apology credit if the pace allows it (False, logged, when Redis fails)."""
        now = self._budget.now()
        day, limit = now.date(), self._budget.allowance(now)
        reply: object
        try:
            [reply] = await self.pipe.submit(pack(*self._counter.take_command(day, limit)), 1)
            if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
                command = self._counter.take_command(day, limit, cached=False)
                [reply] = await self.pipe.submit(pack(*command), 1)
        except Exception as error:  # fail closed: no credit rather than too many
            reply = error
        return self._budget.granted(reply)

    async def add_contact(self, customer_id: str, at: datetime, action: str, channel: str) -> None:
        """Record ``action`` given on ``channel`` at ``at``; raises when it was not recorded."""
        commands = self._history.add_commands(customer_id, at, action, channel)
        replies = await self.pipe.submit(b"".join(pack(*c) for c in commands), len(commands))
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def close(self) -> None:
        """Close the connection."""
        self.pipe.close()


def _server(client: Any) -> tuple[object, ...] | None:
    """(host, port, db) of a plain ``redis.Redis`` client; None for clusters and sentinels."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict) or "host" not in kwargs or "port" not in kwargs:
        return None
    return (str(kwargs["host"]), int(kwargs["port"]), int(kwargs.get("db") or 0))


def one_round_trip(rows: object, history: object, budget: DailyBudget) -> RedisDecisionReads | None:
    """``RedisDecisionReads`` when the features, promo history and budget are on one Redis.

    None when one of them is not in Redis, or they are on different servers (or a cluster or
    sentinel setup, where one pipeline may span nodes): the caller then reads them one by one.
    """
    if not isinstance(history, RedisContactHistory) or not isinstance(
        budget.counter, RedisBudgetCounter
    ):
        return None
    if not all(hasattr(rows, name) for name in ("client", "fields", "key", "record")):
        return None
    servers = {
        _server(client)
        for client in (rows.client, history.client, budget.counter.client)  # type: ignore[attr-defined]
    }
    if len(servers) != 1 or None in servers:
        return None
    return RedisDecisionReads(rows, history, budget)  # type: ignore[arg-type]


def pipelined(
    reads: RedisDecisionReads, timeout: float | None = None, breaker: Breaker | None = None
) -> PipelinedDecisionIO:
    """``PipelinedDecisionIO`` over a new connection to the server of ``reads`` (it connects
    on first use, on the event loop that uses it). ``timeout``: its deadline per write and to
    connect (default: the client's socket timeout); ``breaker``: see ``serving.resp``."""
    return PipelinedDecisionIO(reads, RedisPipe.like(reads._rows.client, timeout, breaker))
