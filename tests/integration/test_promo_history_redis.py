"""The Redis promo history (production profile) against the real Redis at 127.0.0.1:6379.

Keys live under a prefix unique to the run and are deleted at the end.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from serving.history import RedisContactHistory, redis_client
from serving.runtime import open_promo_history

pytestmark = [pytest.mark.integration, pytest.mark.integration_services]

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    client = redis_client(redis_url)
    prefix = f"nba:test-{uuid.uuid4().hex[:10]}:promos:"
    client.nba_prefix = prefix
    yield client
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_counts_the_seven_day_window(client: Any) -> None:
    history = RedisContactHistory(client, prefix=client.nba_prefix, keep_days=8)
    assert history.count("c1", NOW) == 0
    history.add("c1", NOW - timedelta(days=9))  # outside the window, trimmed by later adds
    history.add("c1", NOW - timedelta(days=7))  # exactly 7 days: outside, (now - 7d, now]
    history.add("c1", NOW - timedelta(days=2))
    history.add("c1", NOW)
    history.add("c1", NOW)  # the same microsecond counts twice
    history.add("c2", NOW - timedelta(hours=1))
    assert history.count("c1", NOW) == 3
    assert history.count("c1", NOW, days=30) == 4  # the 9-day-old one is gone (keep_days = 8)
    assert history.count("c2", NOW) == 1
    assert history.count("c1", NOW - timedelta(days=3)) == 1  # the one of 7 days before NOW


def test_two_workers_see_each_other(client: Any, redis_url: str) -> None:
    # Two histories with their own connections, as two worker processes (or hosts) have.
    other = redis_client(redis_url)
    first = RedisContactHistory(client, prefix=client.nba_prefix)
    second = RedisContactHistory(other, prefix=client.nba_prefix)
    first.add("c9", NOW)
    assert second.count("c9", NOW) == 1
    other.close()


def test_keys_expire_after_keep_days(client: Any) -> None:
    history = RedisContactHistory(client, prefix=client.nba_prefix, keep_days=8)
    history.add("c3", NOW)
    ttl = client.ttl(client.nba_prefix + "c3")
    assert 0 < ttl <= 8 * 86_400


def test_unreachable_redis_fails_closed() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    history = RedisContactHistory(redis_client(f"127.0.0.1:{port}", timeout=0.2))
    assert history.count("c1", NOW) is None  # the frequency-cap guardrail then blocks the promo


def test_the_settings_choose_the_store(redis_url: str, tmp_path: Any) -> None:
    from nba.settings import Settings

    redis_history = open_promo_history(Settings(promo_store="redis", redis_url=redis_url,
                                                environment="unit"))  # fmt: skip
    assert isinstance(redis_history, RedisContactHistory)
    assert redis_history.prefix == "nba:unit:promos:"
    redis_history.close()
    sqlite_history = open_promo_history(Settings(promo_history_path=tmp_path / "p.db"))
    assert type(sqlite_history).__name__ == "SqliteContactHistory"


def test_batch_counts_and_adds_match_single_ones(client: Any) -> None:
    history = RedisContactHistory(client, prefix=client.nba_prefix)
    history.add_many(["b1", "b2", "b1"], NOW - timedelta(days=1))
    history.add("b3", NOW - timedelta(days=8))  # outside the window
    ids = ["b1", "b2", "b3", "b4", "b1"]
    assert history.count_many(ids, NOW) == [history.count(c, NOW) for c in ids] == [2, 1, 0, 0, 2]
