"""The commands end to end: `nba simulate` then `nba features` into a copy of the Feast repo,
then the online store answers, and a pushed event is visible in the very next read."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from features import schema
from features.store import FeastAdapter
from memory.fold import Case, fold, project_cases, served

pytestmark = pytest.mark.integration

AS_OF = "2026-11-01T00:00:00Z"


def nba(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nba.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
    feature_repo_copier: Callable[[Path, str], Path],
) -> tuple[FeastAdapter, pd.DataFrame]:
    root = tmp_path_factory.mktemp("pipeline")
    repo = feature_repo_copier(root / "repo", "nba")
    env = {"NBA_FEATURE_REPO": str(repo), "NBA_ONLINE_STORE": "sqlite"}
    sim = nba("simulate", "--out", str(root / "raw"), "--customers", "400", "--days", "200",
              "--seed", "5", "--end", AS_OF, "--format", "csv", env=env)  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    feats = nba("features", "--raw", str(root / "raw"), "--as-of", AS_OF, env=env)
    assert feats.returncode == 0, feats.stderr
    assert "✓ materializing 400 customers to the online store" in feats.stderr
    adapter = FeastAdapter(repo, Path("feature_store.yaml"))
    table = pd.read_parquet(adapter.table_path)
    return adapter, table


def test_online_store_serves_the_snapshot(built: tuple[FeastAdapter, pd.DataFrame]) -> None:
    adapter, table = built
    snapshot = table[table[schema.EVENT_TIMESTAMP] == pd.Timestamp(AS_OF)]
    assert len(snapshot) == 400
    reader = adapter.online_reader()
    with_case = snapshot[snapshot.open_case_count > 0]
    assert len(with_case) > 0
    for _, row in pd.concat([with_case.head(3), snapshot.head(3)]).iterrows():
        online = reader.read(row[schema.ENTITY])
        for name in ("open_case_count", "lifetime_miles", "bookings_365d", "unsubscribed",
                     "oldest_open_case_id"):  # fmt: skip
            expected = None if pd.isna(row[name]) else row[name]
            assert online[name] == expected, name
        if pd.notna(row["last_negative_at"]):
            # The online store keeps whole seconds.
            assert online["last_negative_at"] == row["last_negative_at"].floor("s")


def test_training_rows_match_decision_time_features(
    built: tuple[FeastAdapter, pd.DataFrame],
) -> None:
    adapter, table = built
    decisions = table[table[schema.EVENT_TIMESTAMP] < pd.Timestamp(AS_OF)].head(50)
    entity_df = decisions[[schema.ENTITY, schema.EVENT_TIMESTAMP]].reset_index(drop=True)
    joined = adapter.historical(entity_df)
    for name in ("open_case_count", "searches_30d", "lifetime_miles"):
        assert joined[name].tolist() == decisions[name].tolist(), name


def test_pushed_case_opened_is_visible_in_next_read(
    built: tuple[FeastAdapter, pd.DataFrame],
) -> None:
    adapter, table = built
    snapshot = table[table[schema.EVENT_TIMESTAMP] == pd.Timestamp(AS_OF)]
    customer = snapshot[snapshot.open_case_count == 0][schema.ENTITY].iloc[0]
    reader = adapter.online_reader()
    before = reader.read(customer)
    assert before["open_case_count"] == 0
    event = {"type": "case_opened", "ts": pd.Timestamp(AS_OF) + pd.Timedelta(hours=2),
             "case_id": "K-LIVE-1", "topic": "baggage", "sentiment": -0.5}  # fmt: skip
    state, _ = fold({k: before[k] for k in schema.REALTIME}, event)
    state = project_cases(state, [Case("K-LIVE-1", event["ts"], None, -0.5)])
    stamp = pd.Timestamp(AS_OF) + pd.Timedelta(hours=3)
    row = pd.DataFrame([{schema.ENTITY: customer, schema.EVENT_TIMESTAMP: stamp, **served(state)}])
    adapter.push(row)
    after = reader.read(customer)
    assert after["open_case_count"] == 1
    assert after["oldest_open_case_id"] == "K-LIVE-1"
    assert after["last_negative_kind"] == "complaint"
    # The profile view is untouched by the push.
    assert after["bookings_365d"] == before["bookings_365d"]


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b and type(a) is type(b)


def test_direct_reader_reads_what_the_sdk_reads(built: tuple[FeastAdapter, pd.DataFrame]) -> None:
    adapter, table = built
    sdk, direct = adapter.online_reader(), adapter.direct_reader()
    ids = [*table[schema.ENTITY].drop_duplicates(), "NOBODY-1", "NOBODY-2"]
    many = direct.read_many(ids)
    for customer, row in zip(ids, many, strict=True):
        expected = sdk.read(customer)
        assert row.keys() == expected.keys()
        for name, value in expected.items():
            assert _same(row[name], value), (customer, name, row[name], value)
        single = direct.read(customer)
        assert all(_same(single[n], v) for n, v in expected.items()), customer
    # The batch path's columns hold the same values, also for a customer listed twice (one read
    # per customer, every position filled).
    twice = [*ids, ids[0], ids[1]]
    columns = direct.read_columns(twice)
    for i, customer in enumerate(twice):
        expected = sdk.read(customer)
        got = columns.row(i)
        assert all(_same(got[n], v) for n, v in expected.items()), customer
    assert direct.read_many(twice)[-1] == direct.read_many([ids[1]])[0]
    # Timestamps of the realtime view: present for known customers, None for unknown ones.
    stamped = direct.read_with_timestamps([*ids[:3], "NOBODY-1"])
    assert all(ts is not None for _, ts in stamped[:3]) and stamped[3][1] is None
