"""Deadlines on store calls (``serving.deadline``, ``features.deadlines``) against stores that
never answer: each call gives up after its deadline (never twice it), and the breaker then
fails the next calls at once until its cool-down is over."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from features.deadlines import with_deadlines
from serving.deadline import Breaker, StoreUnavailable, is_timeout
from serving.history import RedisContactHistory, SqliteContactHistory, redis_client
from serving.resp import RedisPipe, pack
from tests.faults import hung_server
from tests.unit.test_resp import fake_redis


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_timeout_opens_the_breaker_for_its_cooldown_only() -> None:
    clock = Clock()
    breaker = Breaker("feature store", cooldown=1.0, clock=clock)
    calls: list[str] = []

    def hung(key: str) -> str:
        calls.append(key)
        raise TimeoutError("no reply")

    def refused(key: str) -> str:
        calls.append(key)
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError):
        breaker.call(refused, "a")
    assert not breaker.is_open()  # a refused connection is already fast: not remembered
    with pytest.raises(TimeoutError):
        breaker.call(hung, "b")
    assert breaker.is_open() and breaker.trips == 1
    clock.now += 0.9
    with pytest.raises(StoreUnavailable, match="feature store missed its deadline"):
        breaker.call(hung, "c")
    assert calls == ["a", "b"]  # "c" never reached the store
    clock.now += 0.2
    assert breaker.call(str.upper, "d") == "D"  # cool-down over: the store is tried again


def test_a_zero_cooldown_never_fails_fast() -> None:
    breaker = Breaker("s", cooldown=0.0)
    breaker.trip(TimeoutError("late"))
    assert not breaker.is_open()
    breaker.check()


def test_what_counts_as_a_missed_deadline() -> None:
    import redis

    assert is_timeout(TimeoutError())
    assert is_timeout(redis.exceptions.TimeoutError("Timeout reading"))  # not a TimeoutError
    assert is_timeout(sqlite3.OperationalError("database is locked"))
    assert not is_timeout(redis.exceptions.ConnectionError("refused"))
    assert not is_timeout(sqlite3.OperationalError("no such table: x"))
    assert not is_timeout(ValueError("bad"))


def test_feast_configs_get_the_clients_own_timeouts() -> None:
    raw: dict[str, Any] = {
        "online_store": {"type": "redis", "connection_string": "10.0.0.5:6379,db=2"},
        "registry": {
            "registry_type": "sql",
            "path": "postgresql+psycopg2://u@db/reg",
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        },
    }
    out = with_deadlines(raw, 0.5)
    assert out["online_store"]["connection_string"] == (
        "10.0.0.5:6379,db=2,socket_timeout=0.5,socket_connect_timeout=0.5"
    )
    registry = out["registry"]
    assert registry["cache_mode"] == "thread"  # refreshed off the request path
    assert registry["sqlalchemy_config_kwargs"] == {
        "echo": False,
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": 2},  # libpq's minimum
    }
    assert raw["online_store"]["connection_string"] == "10.0.0.5:6379,db=2"  # not modified
    # Options the operator set win; other stores and registries are left alone.
    given = {"online_store": {"type": "redis", "connection_string": "h:1,socket_timeout=3"}}
    text = with_deadlines(given, 0.5)["online_store"]["connection_string"]
    assert text == "h:1,socket_timeout=3,socket_connect_timeout=0.5"
    sqlite = {"online_store": {"type": "sqlite", "path": "x.db"}, "registry": "data/r.db"}
    assert with_deadlines(sqlite, 0.5) == sqlite
    assert with_deadlines({"registry": {"registry_type": "sql", "path": "sqlite:///r.db"}}, 3)[
        "registry"
    ] == {"registry_type": "sql", "path": "sqlite:///r.db"}


def test_a_hung_redis_costs_one_deadline_per_call_not_a_retry_more() -> None:
    with hung_server() as server:
        history = RedisContactHistory(redis_client(server.address, timeout=0.3))
        started = time.monotonic()
        assert history.count("C1", datetime.now(UTC)) is None  # fail closed: promo blocked
        elapsed = time.monotonic() - started
        with pytest.raises(Exception) as raised:
            history.add("C1", datetime.now(UTC))  # a promo that cannot be recorded raises
        assert is_timeout(raised.value)
        history.close()
    # redis-py's default retry policy took 13.8 s here for one command.
    assert 0.25 <= elapsed < 0.6


def test_sqlite_promo_history_gives_up_at_its_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "promos.db"
    history = SqliteContactHistory(path, timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the file's lock
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            history.add("C1", datetime.now(UTC))
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert 0.15 <= elapsed < 1.0
    history.close()


def test_the_pipe_fails_fast_while_its_breaker_is_open() -> None:
    async def run() -> dict[str, Any]:
        async with fake_redis() as (fake, port):
            breaker = Breaker("redis", cooldown=0.5)
            pipe = RedisPipe("127.0.0.1", port, timeout=0.2, breaker=breaker)
            await pipe.execute(("PING",))
            fake.mute = True
            started = time.monotonic()
            first = pipe.submit(pack("PING"), 1)
            await asyncio.sleep(0.05)  # a write is out: this one queues behind it
            queued = pipe.submit(pack("PING"), 1)
            outcomes = await asyncio.gather(first, queued, return_exceptions=True)
            late = time.monotonic() - started
            started = time.monotonic()
            fast = await asyncio.gather(pipe.submit(pack("PING"), 1), return_exceptions=True)
            at_once = time.monotonic() - started
            fake.mute = False
            await asyncio.sleep(0.5)  # the cool-down ends: the store is asked again
            again = await pipe.execute(("PING",))
            pipe.close()
            return {"outcomes": outcomes, "late": late, "fast": fast[0], "at_once": at_once,
                    "again": again}  # fmt: skip

    result = asyncio.run(run())
    first, queued = result["outcomes"]
    assert isinstance(first, TimeoutError)
    assert isinstance(queued, TimeoutError)  # failed with the late write, not after its own
    assert 0.15 <= result["late"] < 0.35
    assert isinstance(result["fast"], StoreUnavailable) and result["at_once"] < 0.05
    assert result["again"] == [b"PONG"]


def test_the_pipe_connect_has_the_deadline_too() -> None:
    # A server that accepts and never answers AUTH: the connection set-up misses the deadline.
    async def run() -> tuple[BaseException, float, bool]:
        with hung_server() as server:
            breaker = Breaker("redis", cooldown=5.0)
            pipe = RedisPipe("127.0.0.1", server.port, password="secret", timeout=0.2,
                             breaker=breaker)  # fmt: skip
            started = time.monotonic()
            [outcome] = await asyncio.gather(pipe.submit(pack("PING"), 1), return_exceptions=True)
            elapsed = time.monotonic() - started
            pipe.close()
            return outcome, elapsed, breaker.is_open()

    outcome, elapsed, opened = asyncio.run(run())
    assert isinstance(outcome, TimeoutError) and 0.15 <= elapsed < 0.5 and opened


def test_promo_history_and_budget_share_a_breaker_and_fail_closed_at_once() -> None:
    from serving.budget import RedisBudgetCounter
    from serving.policy import DailyBudget

    with hung_server() as server:
        client = redis_client(server.address, timeout=0.3)
        breaker = Breaker("Redis", cooldown=5.0)
        history = RedisContactHistory(client, breaker=breaker)
        budget = DailyBudget(100, lambda: datetime.now(UTC),
                             counter=RedisBudgetCounter(client, breaker=breaker))  # fmt: skip
        started = time.monotonic()
        assert history.count("C1", datetime.now(UTC)) is None  # the one call that waits
        first = time.monotonic() - started
        started = time.monotonic()
        assert budget.remaining() == 0 and budget.take() is False  # no credit
        assert history.count_many(["C1", "C2"], datetime.now(UTC)) == [None, None]
        with pytest.raises(StoreUnavailable):
            history.add("C1", datetime.now(UTC))  # not recorded: the promo is not given
        rest = time.monotonic() - started
        accepted = server.accepted
        client.close()
    assert 0.25 <= first < 0.6 and rest < 0.05
    assert accepted == 1  # nothing after the missed deadline reached the server


class _SlowRuntime:
    """A runtime whose store calls outlive any deadline (a thread stuck in a client)."""

    decision_io = None

    def readiness(self) -> tuple[bool, str]:
        time.sleep(1.0)
        return True, "ready"

    def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
        time.sleep(1.0)
        return {"applied": True}


def test_readyz_and_events_answer_503_at_the_request_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from nba.settings import load_settings
    from serving import service

    settings = load_settings(api_keys=["k"], request_timeout_seconds=0.3)
    monkeypatch.setattr(service._Holder, "settings", settings)
    monkeypatch.setattr(service._Holder, "runtime", _SlowRuntime())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the gate answers these routes itself")

    async def request(path: str, body: bytes = b"") -> tuple[int, Any, float]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "path": path, "method": "POST" if body else "GET",
                 "headers": [(b"x-api-key", b"k")]}  # fmt: skip
        started = time.monotonic()
        await service.Gate(app)(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"]), time.monotonic() - started

    async def run() -> list[tuple[int, Any, float]]:
        event = b'{"customer_id": "C1", "type": "booking", "ts": "2026-12-05T00:00:00Z"}'
        return [await request("/readyz"), await request("/events", event),
                await request("/healthz")]  # fmt: skip

    (ready, ready_body, ready_s), (event, event_body, event_s), (alive, _, alive_s) = asyncio.run(
        run()
    )
    assert ready == 503 and ready_body["ready"] is False
    assert "no answer within 0.3 s" in ready_body["detail"]
    assert event == 503 and "event not applied" in event_body["error"]
    assert 0.25 <= ready_s < 0.8 and 0.25 <= event_s < 0.8
    assert alive == 200 and alive_s < 0.05
