"""``Decider.decide_async`` (awaited store calls) answers and logs what ``decide`` does, and
fails closed when a store call fails."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, settings

from serving.decider import Context, Decider, Request
from tests.unit.test_decide_batch import SCENARIOS, _comparable, _decider, _without_ids, scenario
from tests.unit.test_decider import make, promo_of, quiet_customer


class StoresIO:
    """``DecisionIO`` over a decider's own stores (what ``serving.redisreads`` does on Redis),
    with failures to inject."""

    def __init__(
        self,
        decider: Decider,
        *,
        read_fails: bool = False,
        add_fails: bool = False,
        take: bool | Exception | None = None,
    ) -> None:
        self.decider = decider
        self.read_fails = read_fails
        self.add_fails = add_fails
        self.take = take
        self.calls: list[str] = []

    async def read(self, customer_id: str, now: datetime) -> Context:
        self.calls.append("read")
        await asyncio.sleep(0)  # a real await: other decisions run meanwhile
        if self.read_fails:
            raise ConnectionError("redis down")
        d = self.decider
        server_side = (d.history.count(customer_id, now, 7.0), d.budget.remaining())
        return d._read(customer_id), server_side

    async def take_credit(self) -> bool:
        self.calls.append("take")
        await asyncio.sleep(0)
        if isinstance(self.take, Exception):
            raise self.take
        return self.decider.budget.take() if self.take is None else self.take

    async def add_promo(self, customer_id: str, at: datetime) -> None:
        self.calls.append("add")
        await asyncio.sleep(0)
        if self.add_fails:
            raise ConnectionError("redis down")
        self.decider.history.add(customer_id, at)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@SCENARIOS
def test_awaited_decisions_equal_blocking_ones(
    customers: list[dict[str, Any]], requests: list[tuple[int, Any, Any, bool]], promo: float,
    apology: float, recognition: float, budget: int,
) -> None:  # fmt: skip
    rows, uplifts, made = scenario(customers, requests, promo, apology, recognition)
    blocking_log: list[Mapping[str, Any]] = []
    awaited_log: list[Mapping[str, Any]] = []
    blocking = _decider(rows, uplifts, budget, blocking_log)
    awaited = _decider(rows, uplifts, budget, awaited_log)
    io = StoresIO(awaited)

    async def run() -> list[dict[str, Any]]:
        return [await awaited.decide_async(r, io) for r in made]

    expected = [blocking.decide(r) for r in made]
    got = asyncio.run(run())
    assert [_without_ids(d) for d in got] == [_without_ids(d) for d in expected]
    assert [_comparable(r) for r in awaited_log] == [_comparable(r) for r in blocking_log]
    assert awaited.budget.spent == blocking.budget.spent <= budget


def test_concurrent_awaited_decisions_never_overspend_the_budget() -> None:
    # Ten apology-worthy customers decided at once, two credits: the reads all see two left,
    # the third take is refused and those decisions are made again without the credit.
    rows = {f"C{i}": quiet_customer(last_negative_at=_ago(2), last_negative_kind="cancellation")
            for i in range(10)}  # fmt: skip
    decider = make(rows, {"apology_credit": 0.3}, budget=2)
    io = StoresIO(decider)

    async def run() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*[decider.decide_async(Request(c), io) for c in rows]))

    out = asyncio.run(run())
    actions = [d["action"] for d in out]
    assert actions.count("apology_credit") == 2
    assert decider.budget.spent == 2
    refused = [d for d in out if d["action"] != "apology_credit"]
    assert all(
        "apology_daily_budget"
        in next(r for r in d["ranking"] if r["action"] == "apology_credit")["blocked_by"]
        for d in refused
    )


def test_a_promo_that_cannot_be_recorded_is_not_given() -> None:
    log: list[Mapping[str, Any]] = []
    decider = make({"C1": quiet_customer()}, {"promo": 0.05}, log=log)
    io = StoresIO(decider, add_fails=True)
    out = asyncio.run(decider.decide_async(Request("C1", explain=True), io))
    assert out["action"] == "none" and out["degraded"] is True
    assert "promo history unavailable" in out["reasons"][0]
    assert log[-1]["degraded_reason"].startswith("promo history unavailable")
    assert io.calls == ["read", "add"]


def test_blocking_decide_also_withholds_a_promo_it_cannot_record() -> None:
    class Broken:
        def count(self, customer_id: str, now: datetime, days: float = 7.0) -> int:
            return 0

        def add(self, customer_id: str, at: datetime) -> None:
            raise OSError("database is locked")

    decider = make({"C1": quiet_customer()}, {"promo": 0.05}, history=Broken())
    out = decider.decide(Request("C1"))
    assert out["action"] == "none" and out["degraded"] is True


def test_a_refused_or_failed_credit_is_decided_again_without_it() -> None:
    # A complaint: after an uncompensated cancellation no recognition is given at all
    # (no_recognition_after_uncompensated_disruption), so there would be no fallback to see.
    rows = {"C1": quiet_customer(last_negative_at=_ago(2), last_negative_kind="complaint",
                                 last_milestone_at=_ago(3))}  # fmt: skip
    for take in (False, ConnectionError("redis down")):
        decider = make(rows, {"apology_credit": 0.3, "recognition": 0.01})
        out = asyncio.run(decider.decide_async(Request("C1"), StoresIO(decider, take=take)))
        assert out["action"] == "recognition"
        credit = next(r for r in out["ranking"] if r["action"] == "apology_credit")
        assert credit["blocked_by"] == ["apology_daily_budget"]


def test_an_unreadable_store_degrades_the_awaited_decision() -> None:
    decider = make({"C1": quiet_customer()})
    out = asyncio.run(decider.decide_async(Request("C1"), StoresIO(decider, read_fails=True)))
    assert out["action"] == "none" and out["degraded"] is True
    assert promo_of(out)["eligible"] is False


def test_the_promo_count_read_with_the_features_caps_the_promo() -> None:
    decider = make({"C1": quiet_customer()}, {"promo": 0.05})
    decider.history.add("C1", _ago(1))
    out = asyncio.run(decider.decide_async(Request("C1"), StoresIO(decider)))
    assert out["action"] == "none"
    assert promo_of(out)["blocked_by"] == ["promo_frequency_cap"]


def _ago(days: float) -> Any:
    import pandas as pd

    from tests.unit.test_decider import NOW

    return pd.Timestamp(NOW) - pd.Timedelta(days=days)
