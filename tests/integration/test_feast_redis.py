"""The Feast loop on the real Redis at 127.0.0.1:6379 (``feature_store.redis.yaml``).

Each run uses a Feast project of its own (Redis keys embed the project), and deletes its keys at
the end, so parallel runs and the real ``nba`` project are left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pandas as pd
import pytest

from features import schema
from features.store import FeastAdapter
from tests.conftest import redis_feature_store

pytestmark = [pytest.mark.integration, pytest.mark.integration_services]

T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")
T1 = pd.Timestamp("2024-04-01 00:00", tz="UTC")
CUSTOMERS = ["r1", "r2", "r3"]


@pytest.fixture(scope="module")
def adapter(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    feature_table_builder: Callable[..., pd.DataFrame],
) -> Iterator[FeastAdapter]:
    """Apply and materialize a synthetic table into Redis under a unique project."""
    table = feature_table_builder(CUSTOMERS, [T0, T1])
    folder = tmp_path_factory.mktemp("feast_redis")
    with redis_feature_store(redis_url, folder, table, T1 + pd.Timedelta(days=1)) as adapter:
        yield adapter


def test_config_uses_redis(adapter: FeastAdapter, redis_url: str) -> None:
    config = adapter.config()
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == redis_url


def test_online_read_returns_the_latest_row_by_name(adapter: FeastAdapter) -> None:
    table = pd.read_parquet(adapter.table_path)
    reader = adapter.online_reader()
    for customer in ("r1", "r2"):
        row = table[(table[schema.ENTITY] == customer) & (table[schema.EVENT_TIMESTAMP] == T1)]
        want = {name: row.iloc[0][name] for name in schema.STORED}
        got = reader.read(customer)
        assert got == want
        assert all(
            isinstance(got[n], pd.Timestamp) and str(got[n].tz) == "UTC"
            for n, kind in schema.STORED.items()
            if kind == "timestamp"
        )
    assert reader.read("nobody") == dict.fromkeys(schema.STORED)


def test_push_is_visible_in_the_next_read(adapter: FeastAdapter) -> None:
    reader = adapter.online_reader()
    before = reader.read("r3")
    assert before["open_case_count"] == 0
    opened = T1 + pd.Timedelta(hours=1)
    row = {name: before[name] for name in schema.REALTIME}
    row.update(open_case_count=1, oldest_open_case_at=opened, oldest_open_case_id="case-1")

    adapter.push(pd.DataFrame([{schema.ENTITY: "r3", schema.EVENT_TIMESTAMP: opened, **row}]))
    after = reader.read("r3")

    assert after["open_case_count"] == 1
    assert after["oldest_open_case_at"] == opened
    assert after["oldest_open_case_id"] == "case-1"


def test_direct_reader_reads_what_the_sdk_reads(adapter: FeastAdapter) -> None:
    sdk, direct = adapter.online_reader(), adapter.direct_reader()
    ids = [*CUSTOMERS, "nobody"]
    for customer, row in zip(ids, direct.read_many(ids), strict=True):
        expected = sdk.read(customer)
        assert row == expected, customer
        assert direct.read(customer) == expected
        for name, kind in schema.STORED.items():
            if kind == "timestamp" and expected[name] is not None:
                assert type(row[name]) is type(expected[name]) and row[name] == expected[name]
