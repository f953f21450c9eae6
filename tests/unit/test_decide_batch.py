"""``decide_batch`` (arrays) answers and logs exactly what a series of ``decide`` calls would."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import decision_log, schema
from features.columns import FeatureColumns
from features.contract import ACTIONS
from serving.decider import Decider, LoadedModel, Request
from serving.history import MemoryContactHistory, SqliteContactHistory
from serving.policy import DailyBudget
from tests.unit.test_decider import NOW, RULES, StubModel, quiet_customer
from training.value import ActionCosts

_BOOKINGS = schema.MODEL_FEATURES.index("bookings_30d")


class FeatureModel(StubModel):
    """Uplifts that move with a feature, so that rows of one batch get different values."""

    def predict_effects(self, X: np.ndarray) -> dict[str, np.ndarray]:
        out = super().predict_effects(X)
        shift = np.nan_to_num(X[:, _BOOKINGS]) * 0.01
        out["converted"] = out["converted"] + shift[:, None] * np.array([1.0, -1.0, 0.5])
        out["revenue"] = out["converted"] * 1000.0
        return out


def _decider(rows: Mapping[str, Mapping[str, Any]], uplifts: Mapping[str, float], budget: int,
             log: list[Mapping[str, Any]]) -> Decider:  # fmt: skip
    def read(customer_id: str) -> Mapping[str, Any]:
        return rows.get(customer_id) or {name: None for name in schema.STORED}

    return Decider(
        model=LoadedModel(FeatureModel(uplifts), "nba-uplift/3"),
        read=read,
        read_many=lambda ids: [read(i) for i in ids],
        rules=RULES,
        costs=ActionCosts(),
        budget=DailyBudget(budget, lambda: NOW, burst=budget),
        history=MemoryContactHistory(),
        log=log.append,
        epsilon=0.0,
        rng=random.Random(0),
        clock=lambda: NOW,
    )


_DAYS = st.one_of(st.none(), st.floats(0, 60))
_CUSTOMER = st.fixed_dictionaries(
    {
        "open_case_count": st.one_of(st.none(), st.integers(0, 2)),
        "negative_days": _DAYS,
        "compensated_days": _DAYS,
        "delay": st.one_of(st.none(), st.integers(0, 300)),
        "opt_in": st.one_of(st.none(), st.booleans()),
        "bookings_30d": st.one_of(st.none(), st.integers(0, 9)),
        "milestone_days": _DAYS,
        "known": st.booleans(),
    }
)


def _stored(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    if not spec["known"]:
        return None

    def ago(days: float | None) -> pd.Timestamp | None:
        return None if days is None else pd.Timestamp(NOW - timedelta(days=days))

    negative = ago(spec["negative_days"])
    return quiet_customer(
        open_case_count=spec["open_case_count"],
        oldest_open_case_at=ago(3) if spec["open_case_count"] else None,
        oldest_open_case_id="C-77" if spec["open_case_count"] else None,
        last_negative_at=negative,
        last_negative_kind="delay" if negative is not None else None,
        last_negative_delay_minutes=spec["delay"],
        last_compensated_at=ago(spec["compensated_days"]),
        marketing_opt_in=spec["opt_in"],
        bookings_30d=spec["bookings_30d"],
        last_milestone_at=ago(spec["milestone_days"]),
        last_milestone_miles=1_000_000 if spec["milestone_days"] is not None else None,
    )


_REQUEST = st.tuples(
    st.integers(0, 4),  # which customer (repeats exercise the promo cap inside a batch)
    st.one_of(st.none(), st.sampled_from(["web", "app", "email"])),
    st.one_of(st.none(), st.sets(st.sampled_from(ACTIONS), min_size=1)),
    st.booleans(),  # explain
)


def _without_ids(response: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "decision_id"}


def _comparable(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        # A key left out of a row is written as null, like a None (non-candidate columns).
        if key in ("decision_id", "latency_ms") or value is None:
            continue
        if isinstance(value, float) and np.isnan(value):
            value = "nan"
        out[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


#: A scenario: five customers' stored states, requests over them (repeats included), the
#: stub model's uplifts and the day's apology budget (``scenario`` turns it into inputs).
SCENARIOS = given(
    customers=st.lists(_CUSTOMER, min_size=5, max_size=5),
    requests=st.lists(_REQUEST, min_size=1, max_size=12),
    promo=st.floats(-0.05, 0.1),
    apology=st.floats(-0.05, 0.2),
    recognition=st.floats(-0.05, 0.1),
    budget=st.integers(0, 3),
)


def scenario(
    customers: list[dict[str, Any]], requests: list[tuple[int, Any, Any, bool]], promo: float,
    apology: float, recognition: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, float], list[Request]]:  # fmt: skip
    """A ``SCENARIOS`` example as (stored rows by customer, uplifts, requests)."""
    rows = {f"C{i}": row for i, spec in enumerate(customers) if (row := _stored(spec))}
    uplifts = {"promo": promo, "apology_credit": apology, "recognition": recognition}
    made = [
        Request(
            f"C{who}",
            {"channel": channel} if channel else {},
            tuple(sorted(candidates)) if candidates else ACTIONS,
            explain,
        )
        for who, channel, candidates, explain in requests
    ]
    return rows, uplifts, made


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@SCENARIOS
def test_batch_equals_a_series_of_single_decisions(
    customers: list[dict[str, Any]], requests: list[tuple[int, Any, Any, bool]], promo: float,
    apology: float, recognition: float, budget: int,
) -> None:  # fmt: skip
    rows, uplifts, made = scenario(customers, requests, promo, apology, recognition)
    one_log: list[Mapping[str, Any]] = []
    batch_log: list[Mapping[str, Any]] = []
    single = _decider(rows, uplifts, budget, one_log)
    batched = _decider(rows, uplifts, budget, batch_log)
    batched.small_batch = 0  # the array path even for these small batches
    expected = [single.decide(r) for r in made]
    got = batched.decide_batch(made)
    assert [_without_ids(d) for d in got] == [_without_ids(d) for d in expected]
    assert [_comparable(r) for r in batch_log] == [_comparable(r) for r in one_log]
    assert [r["decision_id"] for r in batch_log] == [d["decision_id"] for d in got]
    assert single.budget.spent == batched.budget.spent <= budget


def logged_batch_columns() -> tuple[Mapping[str, Any], int]:
    """The log columns of a 4-request batch: a promo, a blocked promo, an unknown customer with
    explain, a repeated customer with one candidate (the array path, ``small_batch = 0``)."""
    rows = {"C1": quiet_customer(), "C2": quiet_customer(open_case_count=1)}
    columns: list[tuple[Mapping[str, Any], int]] = []
    decider = _decider(rows, {"promo": 0.05}, 3, [])
    decider.small_batch = 0
    decider._log_columns = lambda c, n: columns.append((c, n))
    requests = [Request("C1", {"channel": "app"}), Request("C2"), Request("C9", explain=True),
                Request("C1", candidates=("recognition",))]  # fmt: skip
    decider.decide_batch(requests)
    [(chunk, n)] = columns
    return chunk, n


def test_batch_log_columns_write_the_same_parquet_as_rows(tmp_path: Path) -> None:
    chunk, n = logged_batch_columns()
    table = decision_log.columns_table(chunk, n, decision_log.DECISION_SCHEMA)
    from_rows = decision_log.rows_table(decision_log.column_rows(chunk, n),
                                        decision_log.DECISION_SCHEMA)  # fmt: skip
    assert table.schema == from_rows.schema
    assert table.to_pandas().equals(from_rows.to_pandas())  # NaN equals NaN here
    decision_log.write_table(tmp_path, table, "decided_at", 1)
    frame = decision_log.read_decisions(tmp_path)
    assert frame["action"].tolist() == ["promo", "none", "none", "none"]
    assert frame["features_found"].tolist() == [True, True, False, True]
    assert np.isnan(frame.loc[2, "f_bookings_7d"]) and frame.loc[0, "f_bookings_7d"] == 0.0
    # The last request offered only recognition: no promo entry, so its columns are null.
    assert frame["eligible_promo"].isna().tolist() == [False, False, False, True]


def test_feature_columns_from_records_round_trip() -> None:
    records = [quiet_customer(open_case_count=2, oldest_open_case_id="C-1"),
               {name: None for name in schema.STORED}]  # fmt: skip
    columns = FeatureColumns.from_records(records)
    assert columns.row(0) == records[0]
    assert columns.row(1) == records[1]
    assert columns.take(np.array([1, 0, 0])).row(2) == records[0]
    assert np.isnan(columns.numeric("open_case_count")[1])
    assert columns.numeric("marketing_opt_in")[0] == 1.0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_history_batch_counts_and_adds_match_single_ones(kind: str, tmp_path: Path) -> None:
    history: Any = (
        MemoryContactHistory() if kind == "memory" else SqliteContactHistory(tmp_path / "promos.db")
    )
    history.add_many(["b1", "b2", "b1"], NOW - timedelta(days=1))
    history.add("b3", NOW - timedelta(days=8))  # outside the window
    ids = ["b1", "b2", "b3", "b4", "b1"]
    assert history.count_many(ids, NOW) == [history.count(c, NOW) for c in ids] == [2, 1, 0, 0, 2]


def test_batch_records_its_promos_in_the_shared_history(tmp_path: Path) -> None:
    rows = {"C1": quiet_customer(), "C2": quiet_customer()}
    decider = _decider(rows, {"promo": 0.05}, 3, [])
    decider.small_batch = 0
    decider.history = SqliteContactHistory(tmp_path / "promos.db")
    out = decider.decide_batch([Request("C1"), Request("C2"), Request("C1")])
    assert [d["action"] for d in out] == ["promo", "promo", "none"]
    # Another worker's history on the same file sees both promos at once.
    other = SqliteContactHistory(tmp_path / "promos.db")
    assert other.count_many(["C1", "C2", "C3"], NOW) == [1, 1, 0]
