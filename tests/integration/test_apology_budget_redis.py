"""The Redis apology-budget counter (production profile) against the real Redis at 127.0.0.1:6379.

Keys live under a prefix unique to the run and are deleted at the end.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from serving.budget import REDIS_TTL_SECONDS, RedisBudgetCounter
from serving.history import redis_client
from serving.policy import DailyBudget
from serving.runtime import open_apology_budget
from tests.conftest import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.integration_services]

NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix + "apology:"


def test_counts_per_day_up_to_the_limit(redis_url: str, prefix: str) -> None:
    counter = RedisBudgetCounter(redis_client(redis_url), prefix=prefix)
    day = date(2026, 1, 5)
    assert counter.spent(day) == 0
    assert not counter.take(day, 0)
    assert [counter.take(day, 3) for _ in range(5)] == [True, True, True, False, False]
    assert counter.spent(day) == 3  # refused takes left no trace in the count
    assert counter.take(day, 4) and not counter.take(day, 4)
    assert counter.spent(day) == 4 and counter.spent(day + timedelta(days=1)) == 0
    assert counter.key(day) == prefix + "2026-01-05"
    ttl = counter._redis.ttl(counter.key(day))
    assert REDIS_TTL_SECONDS - 60 < ttl <= REDIS_TTL_SECONDS  # gone two days after its last use


def test_paces_the_day_and_resets_at_utc_midnight(redis_url: str, prefix: str) -> None:
    clock = FakeClock(datetime(2026, 1, 5, 0, 0, tzinfo=UTC))
    budget = DailyBudget(240, clock, counter=RedisBudgetCounter(redis_client(redis_url), prefix))
    assert budget.remaining() == 10
    assert sum(budget.take() for _ in range(50)) == 10  # a wave at midnight gets the burst only
    clock.now = datetime(2026, 1, 5, 23, 59, tzinfo=UTC)
    assert budget.remaining() == 230
    assert sum(budget.take() for _ in range(300)) == 230
    clock.now = datetime(2026, 1, 6, 0, 30, tzinfo=UTC)  # a new UTC day
    assert budget.remaining() == 15 and budget.spent == 0
    assert budget.take() and budget.spent == 1


def test_workers_taking_at_once_never_overspend(redis_url: str, prefix: str) -> None:
    # Four workers, each with its own connection pool (as processes or hosts have).
    counters = [RedisBudgetCounter(redis_client(redis_url), prefix) for _ in range(4)]
    budgets = [DailyBudget(2_400, FakeClock(NOON), counter=counter) for counter in counters]
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(budgets))

    def worker(budget: DailyBudget) -> None:
        start.wait()
        mine = sum(budget.take() for _ in range(500))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker, args=(b,)) for b in budgets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == budgets[0].allowance(NOON) == 1_300  # 2,000 attempts
    assert all(budget.spent == 1_300 and budget.remaining() == 0 for budget in budgets)


def test_unreachable_redis_fails_closed() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis_client(f"127.0.0.1:{port}", timeout=0.2)
    budget = DailyBudget(240, FakeClock(NOON), counter=RedisBudgetCounter(client))
    started = time.perf_counter()
    assert budget.remaining() == 0 and not budget.take()
    # Within a request: no retries after a pause (redis-py's default took 6-7 s per command).
    assert time.perf_counter() - started < 2.0


def test_the_settings_choose_the_store(redis_url: str, tmp_path: Any) -> None:
    from nba.settings import Settings

    environment = f"test-{uuid.uuid4().hex[:10]}"
    settings = Settings(promo_store="redis", redis_url=redis_url, environment=environment,
                        apology_budget_per_day=1)  # fmt: skip
    first, second = open_apology_budget(settings), open_apology_budget(settings)
    try:
        assert isinstance(first.counter, RedisBudgetCounter)
        assert first.counter.prefix == f"nba:{environment}:apology:"
        # One credit a day (allowance 1 at any hour): two workers grant it once between them.
        assert sum(budget.take() for _ in range(3) for budget in (first, second)) == 1
        assert first.remaining() == second.remaining() == 0
    finally:
        client = first.counter._redis
        keys = list(client.scan_iter(match=first.counter.prefix + "*"))
        if keys:
            client.delete(*keys)
        first.close()
        second.close()
