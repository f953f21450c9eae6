"""The Feast loop on the embedded SQLite online store, in a copy of ``feature_repo/``.

Apply and materialize run once for the module (``import feast`` and apply take seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from features import schema
from features.store import FeastAdapter, OnlineReader

pytestmark = pytest.mark.integration

T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")
T1 = pd.Timestamp("2024-04-01 00:00", tz="UTC")
#: c3's latest row has missing strings and timestamps; c4 receives the push.
CUSTOMERS = ["c1", "c2", "c3", "c4"]


@dataclass
class Loaded:
    """The module's applied and materialized store."""

    adapter: FeastAdapter
    reader: OnlineReader
    table: pd.DataFrame
    cwd_before_apply: Path
    cwd_after_apply: Path
    sys_path_changed: bool


def expected(table: pd.DataFrame, customer: str, when: pd.Timestamp) -> dict[str, object]:
    """The stored features of ``customer``'s table row at ``when``, as the reader returns them."""
    row = table[(table[schema.ENTITY] == customer) & (table[schema.EVENT_TIMESTAMP] == when)]
    assert len(row) == 1
    values = row.iloc[0]
    return {name: (None if pd.isna(values[name]) else values[name]) for name in schema.STORED}


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory,
    feature_repo_copier: Callable[[Path, str], Path],
    feature_table_builder: Callable[..., pd.DataFrame],
) -> Iterator[Loaded]:
    """Copy the repo, write the synthetic table, apply and materialize (once per module)."""
    repo = feature_repo_copier(tmp_path_factory.mktemp("feast_sqlite") / "repo", "nba")
    table = feature_table_builder(
        CUSTOMERS, [T0, T1], nulls=lambda customer, k: customer == "c3" and k == 1
    )
    adapter = FeastAdapter(repo, Path("feature_store.yaml"))
    adapter.write_offline(table)
    cwd_before, path_before = Path.cwd(), list(sys.path)
    adapter.apply()
    cwd_after, path_changed = Path.cwd(), sys.path != path_before
    adapter.materialize(end=(T1 + pd.Timedelta(days=1)).to_pydatetime())
    yield Loaded(adapter, adapter.online_reader(), table, cwd_before, cwd_after, path_changed)


def test_apply_leaves_the_process_as_it_was(loaded: Loaded) -> None:
    assert loaded.cwd_after_apply == loaded.cwd_before_apply == Path(os.getcwd())
    assert not loaded.sys_path_changed
    assert "definitions" not in sys.modules


def test_online_read_returns_the_latest_row_by_name(loaded: Loaded) -> None:
    for customer in ("c1", "c2"):
        got = loaded.reader.read(customer)
        assert list(got) == list(schema.STORED)
        assert got == expected(loaded.table, customer, T1)


def test_online_timestamps_are_utc_pandas_timestamps(loaded: Loaded) -> None:
    got = loaded.reader.read("c1")
    for name, kind in schema.STORED.items():
        if kind == "timestamp":
            assert isinstance(got[name], pd.Timestamp)
            assert str(got[name].tz) == "UTC"


def test_online_missing_values_read_as_none(loaded: Loaded) -> None:
    got = loaded.reader.read("c3")
    for name, kind in schema.STORED.items():
        if kind in ("timestamp", "string"):
            assert got[name] is None, name
        else:
            assert got[name] is not None, name


def test_unknown_customer_reads_as_none_values(loaded: Loaded) -> None:
    got = loaded.reader.read("nobody")
    assert got == dict.fromkeys(schema.STORED)


def test_read_many_keeps_the_order(loaded: Loaded) -> None:
    ids = ["c2", "nobody", "c1"]
    assert loaded.reader.read_many(ids) == [loaded.reader.read(i) for i in ids]
    assert loaded.reader.read_many([]) == []


def test_historical_is_point_in_time_correct(loaded: Loaded) -> None:
    entity_df = pd.DataFrame(
        {
            schema.ENTITY: ["c1", "c1", "c2", "c2", "nobody", "c1"],
            schema.EVENT_TIMESTAMP: [
                T1,  # exactly at the later row: included
                T0 + pd.Timedelta(days=10),  # between the rows: the earlier one, never the later
                T0 - pd.Timedelta(days=1),  # before the customer's first row: nothing
                T1 + pd.Timedelta(days=30),
                T1,
                T0 + pd.Timedelta(days=10),  # a duplicate (customer, time) pair
            ],
            "label": [1, 2, 3, 4, 5, 6],
        },
        index=[10, 11, 12, 13, 14, 15],
    )
    got = loaded.adapter.historical(entity_df)

    assert list(got.columns) == [*entity_df.columns, *schema.STORED]
    assert list(got.index) == list(entity_df.index)
    assert list(got["label"]) == [1, 2, 3, 4, 5, 6]
    rows = {10: ("c1", T1), 11: ("c1", T0), 13: ("c2", T1), 15: ("c1", T0)}
    for index, (customer, when) in rows.items():
        want = expected(loaded.table, customer, when)
        have = {
            n: (None if pd.isna(v) else v) for n, v in got.loc[index, list(schema.STORED)].items()
        }
        assert have == want, index
    for index in (12, 14):
        assert got.loc[index, list(schema.STORED)].isna().all(), index


def test_push_is_visible_in_the_next_read(loaded: Loaded) -> None:
    before = loaded.reader.read("c4")
    assert before["open_case_count"] == 0
    opened = T1 + pd.Timedelta(hours=1)
    row = {name: before[name] for name in schema.REALTIME}
    row.update(open_case_count=1, oldest_open_case_at=opened, oldest_open_case_id="case-1")
    push = pd.DataFrame([{schema.ENTITY: "c4", schema.EVENT_TIMESTAMP: opened, **row}])

    loaded.adapter.push(push)
    after = loaded.reader.read("c4")

    assert after["open_case_count"] == 1
    assert after["oldest_open_case_at"] == opened
    assert after["oldest_open_case_id"] == "case-1"
    assert {n: after[n] for n in schema.PROFILE} == {n: before[n] for n in schema.PROFILE}


def test_write_offline_and_push_check_columns(loaded: Loaded) -> None:
    with pytest.raises(ValueError, match="missing columns"):
        loaded.adapter.write_offline(loaded.table.drop(columns=["open_case_count"]))
    with pytest.raises(ValueError, match="unexpected columns"):
        loaded.adapter.push(loaded.table)


def test_importing_the_adapter_does_not_import_feast() -> None:
    # `import feast` costs seconds: it must stay out of module import (the CLI, the service).
    code = "import sys, features.store; assert 'feast' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
