"""A decision's three Redis reads in one pipeline answer what the three separate calls answer.

Against the real Redis at 127.0.0.1:6379: a Feast project of its own (as test_feast_redis), promo
and budget keys under a prefix of their own; everything is deleted at the end.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from features.store import FeastAdapter
from serving.budget import RedisBudgetCounter, SqliteBudgetCounter
from serving.history import RedisContactHistory, SqliteContactHistory, redis_client
from serving.policy import DailyBudget
from serving.redisreads import (
    PipelinedDecisionIO,
    RedisDecisionReads,
    one_round_trip,
    pipelined,
)
from serving.resp import RedisConnectionError, RedisPipe
from tests.conftest import redis_feature_store

pytestmark = [pytest.mark.integration, pytest.mark.integration_services]

T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")
T1 = pd.Timestamp("2024-04-01 00:00", tz="UTC")
CUSTOMERS = ["q1", "q2", "q3"]
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def adapter(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    feature_table_builder: Callable[..., pd.DataFrame],
) -> Iterator[FeastAdapter]:
    """A synthetic table applied and materialized into Redis under a unique project."""
    # q3 has no strings or timestamps in its latest row: missing values must read as None.
    table = feature_table_builder(CUSTOMERS, [T0, T1], lambda c, k: c == "q3")
    folder = tmp_path_factory.mktemp("redis_reads")
    with redis_feature_store(redis_url, folder, table, T1 + pd.Timedelta(days=1)) as adapter:
        yield adapter


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """A key prefix of this test's own for promos and budget (deleted afterwards)."""
    return redis_prefix


def rows_of(adapter: FeastAdapter) -> Any:
    """The direct reader's Redis rows (``_RedisRows``: key, fields, client, record)."""
    rows = adapter.direct_reader()._sqlite
    assert type(rows).__name__ == "_RedisRows"
    return rows


def stores(redis_url: str, prefix: str) -> tuple[RedisContactHistory, DailyBudget]:
    history = RedisContactHistory(redis_client(redis_url), prefix=prefix + "promos:")
    counter = RedisBudgetCounter(redis_client(redis_url), prefix=prefix + "apology:")
    return history, DailyBudget(240, lambda: NOW, counter=counter)


def test_one_pipeline_reads_what_the_three_calls_read(
    adapter: FeastAdapter, redis_url: str, prefix: str
) -> None:
    history, budget = stores(redis_url, prefix)
    history.add("q1", NOW - timedelta(days=1))
    history.add("q1", NOW - timedelta(days=31))  # outside the 30-day window
    history.add("q2", NOW)  # the window's end is included
    history.add("q3", NOW - timedelta(days=6, hours=23))  # inside, near the window's start
    for _ in range(7):
        assert budget.take()
    reads = one_round_trip(rows_of(adapter), history, budget)
    assert isinstance(reads, RedisDecisionReads)
    direct = adapter.direct_reader()
    for customer in [*CUSTOMERS, "nobody"]:
        got = reads(customer, NOW)
        assert got == (direct.read(customer), history.contacts(customer, NOW),
                       budget.remaining())  # fmt: skip
    assert len(reads("q1", NOW)[1]) == 1 and reads("q1", NOW)[2] == 130 - 7  # noon: 120
    # accrued + a burst of 10, 7 spent
    assert len(reads("q2", NOW)[1]) == len(reads("q3", NOW)[1]) == 1
    assert reads("q3", NOW + timedelta(days=23, hours=2))[1] == []  # it left the 30-day window
    assert reads("q1", NOW)[0]["oldest_open_case_id"] == "q1-1"  # the latest row, by name
    assert reads("q3", NOW)[0]["oldest_open_case_id"] is None


class OnlyPipelines:
    """A client proxy that allows pipelines (counted) and fails any single command."""

    def __init__(self, client: Any) -> None:
        self.connection_pool = client.connection_pool
        self._client = client
        self.pipelines = 0

    def pipeline(self, transaction: bool = True) -> Any:
        self.pipelines += 1
        return self._client.pipeline(transaction=transaction)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a separate round trip: {name}")


class RowsWithClient:
    """``_RedisRows`` with another client."""

    def __init__(self, rows: Any, client: Any) -> None:
        self._rows, self.client = rows, client
        self.fields = rows.fields

    def key(self, customer_id: str) -> bytes:
        return self._rows.key(customer_id)  # type: ignore[no-any-return]

    def record(self, reply: Any, now: datetime | None = None) -> dict[str, object]:
        return self._rows.record(reply, now)  # type: ignore[no-any-return]


def test_one_round_trip_per_decision(adapter: FeastAdapter, redis_url: str, prefix: str) -> None:
    rows = rows_of(adapter)
    history, budget = stores(redis_url, prefix)
    history.add("q2", NOW)
    assert budget.take()
    expected = (adapter.direct_reader().read("q2"), history.contacts("q2", NOW), 129)
    pipelined = OnlyPipelines(rows.client)
    # The history's and the budget's own clients must not be used at all.
    history._redis = OnlyPipelines(history.client)
    budget.counter._redis = OnlyPipelines(budget.counter.client)  # type: ignore[attr-defined]
    reads = RedisDecisionReads(RowsWithClient(rows, pipelined), history, budget)
    assert reads("q2", NOW) == expected
    assert pipelined.pipelines == 1
    assert history.client.pipelines == budget.counter.client.pipelines == 0  # type: ignore[attr-defined]


def test_a_failed_command_fails_as_its_own_call_does(
    adapter: FeastAdapter, redis_url: str, prefix: str
) -> None:
    history, budget = stores(redis_url, prefix)
    client = redis_client(redis_url)
    # Keys of the wrong type: ZCOUNT and GET answer WRONGTYPE errors.
    client.set(prefix + "promos:q1", "not a sorted set")
    client.hset(budget.counter.key(NOW.date()), "x", "1")  # type: ignore[attr-defined]
    reads = one_round_trip(rows_of(adapter), history, budget)
    assert reads is not None
    stored, promos, left = reads("q1", NOW)
    assert stored == adapter.direct_reader().read("q1")  # the features still come back
    assert promos is None and history.count("q1", NOW) is None  # the cap blocks promos
    assert left == 0 and budget.remaining() == 0 and not budget.take()  # no credit
    client.close()


def test_unreachable_redis_raises(adapter: FeastAdapter, redis_url: str, prefix: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    history, budget = stores(redis_url, prefix)
    down = redis_client(f"127.0.0.1:{port}", timeout=0.2)
    reads = RedisDecisionReads(RowsWithClient(rows_of(adapter), down), history, budget)
    with pytest.raises(redis.ConnectionError):
        reads("q1", NOW)  # the decider then answers degraded, as when the features read fails


def test_only_when_all_three_are_on_one_redis(
    adapter: FeastAdapter, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    rows = rows_of(adapter)
    history, budget = stores(redis_url, prefix)
    assert one_round_trip(rows, history, budget) is not None
    sqlite_history = SqliteContactHistory(tmp_path / "promos.db")
    assert one_round_trip(rows, sqlite_history, budget) is None
    sqlite_budget = DailyBudget(240, lambda: NOW, counter=SqliteBudgetCounter(tmp_path / "p.db"))
    assert one_round_trip(rows, history, sqlite_budget) is None
    assert one_round_trip(rows, history, DailyBudget(240, lambda: NOW)) is None  # in memory
    other_db = RedisContactHistory(redis_client(f"{redis_url},db=1"), prefix=prefix)
    assert one_round_trip(rows, other_db, budget) is None  # another database of the server
    assert one_round_trip(object(), history, budget) is None  # not a Redis rows reader


def test_pipelined_io_answers_what_the_blocking_calls_answer(
    adapter: FeastAdapter, redis_url: str, prefix: str
) -> None:
    history, budget = stores(redis_url, prefix)
    history.add("q1", NOW - timedelta(days=1))
    reads = one_round_trip(rows_of(adapter), history, budget)
    assert reads is not None
    io = pipelined(reads)

    async def concurrently() -> list[Any]:
        # Every customer at once: one write carries all the reads.
        before = io.pipe.writes
        out = list(await asyncio.gather(*[io.read(c, NOW) for c in [*CUSTOMERS, "nobody"]]))
        return [out, io.pipe.writes - before]

    (answers, writes) = asyncio.run(concurrently())
    for customer, (stored, server_side) in zip([*CUSTOMERS, "nobody"], answers, strict=True):
        assert (stored, *server_side) == reads(customer, NOW)
    assert writes == 1

    async def promo_and_credits() -> list[bool]:
        await io.add_contact("q2", NOW - timedelta(hours=1), "promo", "email")
        return list(await asyncio.gather(*[io.take_credit() for _ in range(3)]))

    assert asyncio.run(promo_and_credits()) == [True, True, True]
    assert history.count("q2", NOW) == 1
    assert budget.counter.spent(NOW.date()) == 3
    io.close()


def test_pipelined_credits_stop_at_the_pace_and_survive_a_script_flush(
    adapter: FeastAdapter, redis_url: str, prefix: str
) -> None:
    history, _ = stores(redis_url, prefix)
    counter = RedisBudgetCounter(redis_client(redis_url), prefix=prefix + "apology:")
    budget = DailyBudget(24, lambda: NOW, burst=0, counter=counter)  # 12 allowed by noon
    reads = one_round_trip(rows_of(adapter), history, budget)
    assert reads is not None
    io = pipelined(reads)
    redis_client(redis_url).script_flush()  # Redis restarted: EVALSHA answers NOSCRIPT

    async def take(n: int) -> list[bool]:
        return list(await asyncio.gather(*[io.take_credit() for _ in range(n)]))

    granted = asyncio.run(take(20))
    assert granted.count(True) == 12 and counter.spent(NOW.date()) == 12
    io.close()


def test_pipelined_io_fails_when_redis_is_unreachable(
    adapter: FeastAdapter, redis_url: str, prefix: str
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    history, budget = stores(redis_url, prefix)
    reads = one_round_trip(rows_of(adapter), history, budget)
    assert reads is not None
    io = PipelinedDecisionIO(reads, RedisPipe("127.0.0.1", port, timeout=0.2))

    async def attempt() -> list[Any]:
        return list(
            await asyncio.gather(
                io.read("q1", NOW), io.add_contact("q1", NOW, "promo", "web"), io.take_credit(),
                return_exceptions=True,
            )
        )  # fmt: skip

    read, added, credit = asyncio.run(attempt())
    assert isinstance(read, RedisConnectionError)  # the decision is degraded
    assert isinstance(added, RedisConnectionError)  # the promo is withheld
    assert credit is False  # no credit (fail closed)
