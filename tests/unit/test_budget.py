"""The apology budget's shared SQLite counter: the workers of a host pace one budget together.

Two connections (as two workers have) and two processes take concurrently and never grant more
than the allowance; the count resets with the UTC day of an injected clock; an unreadable file
fails closed. The Redis counter's tests are in tests/integration/test_apology_budget_redis.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from serving.budget import KEEP_DAYS, SqliteBudgetCounter
from serving.policy import DailyBudget, MemoryBudgetCounter
from tests.conftest import FakeClock

NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def test_sqlite_counter_counts_per_day_up_to_the_limit(tmp_path: Path) -> None:
    counter = SqliteBudgetCounter(tmp_path / "promos.db")
    day = date(2026, 1, 5)
    assert counter.spent(day) == 0
    assert not counter.take(day, 0)  # a zero limit grants nothing, even the day's first credit
    assert counter.spent(day) == 0
    assert [counter.take(day, 3) for _ in range(5)] == [True, True, True, False, False]
    assert counter.spent(day) == 3
    assert counter.take(day, 4) and not counter.take(day, 4)  # the limit grows with the pace
    assert counter.spent(day) == 4 and counter.spent(day + timedelta(days=1)) == 0


def test_daily_budget_on_sqlite_paces_like_in_memory(tmp_path: Path) -> None:
    # The same scenario on both counters gives the same answers: only the count moved.
    answers = []
    for counter in (MemoryBudgetCounter(), SqliteBudgetCounter(tmp_path / "promos.db")):
        clock = FakeClock(datetime(2026, 1, 5, 0, 0, tzinfo=UTC))
        budget = DailyBudget(240, clock, counter=counter)  # burst: one hour's worth, 10
        seen = [budget.remaining(), sum(budget.take() for _ in range(50)), budget.remaining()]
        clock.now += timedelta(hours=1)
        seen.append(budget.remaining())
        clock.now = datetime(2026, 1, 5, 23, 59, tzinfo=UTC)
        seen += [budget.remaining(), sum(budget.take() for _ in range(500))]
        answers.append(seen)
    assert answers[0] == answers[1] == [10, 10, 0, 10, 230, 230]


def test_sqlite_count_resets_at_utc_midnight(tmp_path: Path) -> None:
    path = tmp_path / "promos.db"
    clock = FakeClock(datetime(2026, 1, 5, 23, 59, tzinfo=UTC))
    budget = DailyBudget(240, clock, counter=SqliteBudgetCounter(path))
    assert sum(budget.take() for _ in range(300)) == 240
    assert budget.remaining() == 0 and budget.spent == 240
    clock.now = datetime(2026, 1, 6, 0, 30, tzinfo=UTC)  # a new UTC day: 5 accrued + burst 10
    assert budget.remaining() == 15 and budget.spent == 0
    assert sum(budget.take() for _ in range(20)) == 15
    # Another worker of the host, started later, sees both days' counts in the file.
    other = SqliteBudgetCounter(path)
    assert other.spent(date(2026, 1, 5)) == 240 and other.spent(date(2026, 1, 6)) == 15


def test_sqlite_keeps_a_week_of_days(tmp_path: Path) -> None:
    counter = SqliteBudgetCounter(tmp_path / "promos.db")
    first = date(2026, 1, 1)
    for offset in range(KEEP_DAYS + 3):
        assert counter.take(first + timedelta(days=offset), 5)
    last = first + timedelta(days=KEEP_DAYS + 2)
    assert counter.spent(last - timedelta(days=KEEP_DAYS)) == 1  # kept
    assert counter.spent(last - timedelta(days=KEEP_DAYS + 1)) == 0  # deleted


def test_two_connections_taking_at_once_never_overspend(tmp_path: Path) -> None:
    # Two counters on one file: two connections, as two workers have. Each counter's own lock
    # serializes only its threads; the statement itself must keep the connections apart.
    path = tmp_path / "promos.db"
    budgets = [DailyBudget(2_400, FakeClock(NOON), counter=SqliteBudgetCounter(path))
               for _ in range(2)]  # fmt: skip
    allowance = budgets[0].allowance(NOON)  # 1,200 accrued by noon + a burst of 100
    granted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(budget: DailyBudget) -> None:
        start.wait()
        mine = sum(budget.take() for _ in range(600))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker, args=(budgets[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == allowance == 1_300  # 2,400 attempts: the allowance binds exactly
    assert budgets[0].spent == budgets[1].spent == allowance
    assert budgets[0].remaining() == budgets[1].remaining() == 0


def _take_in_process(path: str, attempts: int, start: object, out: object) -> None:
    """A worker process: wait until every worker is ready, then take ``attempts`` times."""
    budget = DailyBudget(2_400, FakeClock(NOON), counter=SqliteBudgetCounter(Path(path)))
    start.wait()  # type: ignore[attr-defined]
    out.put(sum(budget.take() for _ in range(attempts)))  # type: ignore[attr-defined]


def test_two_processes_taking_at_once_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "promos.db"
    SqliteBudgetCounter(path).close()  # the table exists before the workers race
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_take_in_process, args=(str(path), 900, start, out))
               for _ in range(2)]  # fmt: skip
    for process in workers:
        process.start()
    counts = [out.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sum(counts) == 1_300  # 1,800 attempts against an allowance of 1,300
    assert SqliteBudgetCounter(path).spent(NOON.date()) == 1_300


def test_unreadable_counter_fails_closed_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = SqliteBudgetCounter(tmp_path / "promos.db")
    budget = DailyBudget(240, FakeClock(NOON), counter=counter)
    assert budget.remaining() == 130
    counter.close()  # any later statement raises sqlite3.ProgrammingError
    with caplog.at_level(logging.WARNING, logger="serving.policy"):
        assert budget.remaining() == 0
        assert not budget.take()
        assert not budget.take()
    warnings = [r for r in caplog.records if "apology budget unreadable" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line for the outage, not one per request


def test_locked_file_refuses_the_credit(tmp_path: Path) -> None:
    # Another connection holds the write lock longer than the counter waits: no credit, no hang.
    path = tmp_path / "promos.db"
    budget = DailyBudget(240, FakeClock(NOON), counter=SqliteBudgetCounter(path, timeout=0.1))
    import sqlite3

    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert not budget.take()
        assert budget.remaining() == 130  # WAL: readers are not blocked by the writer
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert budget.take() and budget.spent == 1


def test_runtime_shares_the_count_through_the_promo_file(tmp_path: Path) -> None:
    from nba.settings import Settings
    from serving.runtime import open_apology_budget

    # One credit a day: the allowance is 1 at any time of the day (the burst), whatever the
    # real clock the runtime's budget reads.
    settings = Settings(promo_history_path=tmp_path / "promos.db", apology_budget_per_day=1)
    first, second = open_apology_budget(settings), open_apology_budget(settings)  # two workers
    assert isinstance(first.counter, SqliteBudgetCounter)
    assert first.counter.path == settings.promo_history_path
    assert first.remaining() == second.remaining() == 1
    assert sum(budget.take() for _ in range(5) for budget in (first, second)) == 1  # not 2
    assert first.remaining() == second.remaining() == 0
    first.close()
    second.close()


def test_left_is_remaining_for_a_count_read_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    # serving.redisreads reads the day's count with other reads, then asks the budget.
    clock = FakeClock(NOON)
    budget = DailyBudget(240, clock)
    for _ in range(30):
        assert budget.take()
    now = budget.now()
    assert now == NOON and budget.left(now, budget.counter.spent(now.date())) == budget.remaining()
    assert budget.left(now, 30) == 100 and budget.left(now, 500) == 0
    with caplog.at_level(logging.WARNING, logger="serving.policy"):
        assert budget.left(now, ConnectionError("down")) == 0  # fail closed
    assert "apology budget unreadable" in caplog.text
