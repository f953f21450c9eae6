"""The decision brain with stub features and a stub model: guardrails bind whatever the scores,
degraded mode, budget, frequency cap, exploration, the log rows."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import decision_log, schema
from features.contract import ACTIONS
from serving.decider import Decider, LoadedModel, Request
from serving.guardrails import load_rules
from serving.history import MemoryContactHistory, SqliteContactHistory
from serving.policy import DailyBudget

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ARMS = ("promo", "apology_credit", "recognition")
RULES = load_rules()


class StubModel:
    """Fixed effects per action: ``values`` are conversion uplifts; revenue = uplift x 1000."""

    def __init__(self, uplifts: Mapping[str, float], fail: bool = False) -> None:
        self.feature_names_ = list(schema.MODEL_FEATURES)
        self.actions_ = ARMS
        self.uplifts = uplifts
        self.fail = fail

    def predict_effects(self, X: np.ndarray) -> dict[str, np.ndarray]:
        if self.fail:
            raise RuntimeError("booster exploded")
        n = len(X)
        conv = np.tile([self.uplifts.get(a, 0.0) for a in ARMS], (n, 1))
        return {
            "converted": conv,
            "revenue": conv * 1000.0,
            "unsubscribed": np.zeros((n, 3)),
            "base_converted": np.full(n, 0.1),
            "base_revenue": np.full(n, 100.0),
        }

    def contributions(self, X: np.ndarray) -> pd.DataFrame:
        data = np.tile(np.arange(len(self.feature_names_) + 1, dtype=float), (3, 1))
        return pd.DataFrame(data, index=list(ARMS), columns=[*self.feature_names_, "bias"])


def quiet_customer(**patch: Any) -> dict[str, Any]:
    """Stored features of a known customer with nothing wrong (promo-eligible)."""
    row: dict[str, Any] = {name: 0 for name, kind in schema.STORED.items() if kind == "int"}
    row.update({name: 0.0 for name, kind in schema.STORED.items() if kind == "float"})
    row.update(
        {name: None for name, kind in schema.STORED.items() if kind in ("timestamp", "string")}
    )
    row.update(
        marketing_opt_in=True, unsubscribed=False, created_at=pd.Timestamp("2024-01-01", tz="UTC")
    )
    row.update(patch)
    return row


def make(
    rows: Mapping[str, Mapping[str, Any]] | None = None,
    uplifts: Mapping[str, float] | None = None,
    *,
    model: Any = "stub",
    read_fails: bool = False,
    budget: int = 100,
    epsilon: float = 0.0,
    log: list[Mapping[str, Any]] | None = None,
    history: Any = None,
) -> Decider:
    rows = rows or {}

    def read(customer_id: str) -> Mapping[str, Any]:
        if read_fails:
            raise ConnectionError("store down")
        return rows.get(customer_id) or {name: None for name in schema.STORED}

    if model == "stub":
        model = LoadedModel(StubModel(uplifts or {"promo": 0.05}), "nba-uplift/3")
    decider = Decider(
        model=model,
        read=read,
        read_many=lambda ids: [read(i) for i in ids],
        rules=RULES,
        costs=__import__("training.value", fromlist=["ActionCosts"]).ActionCosts(),
        budget=DailyBudget(budget, lambda: NOW, burst=budget),
        history=history or MemoryContactHistory(),
        log=None if log is None else log.append,
        epsilon=epsilon,
        rng=random.Random(0),
        clock=lambda: NOW,
    )
    # These small batches take the array path (the service sends them one by one below
    # SMALL_BATCH, which test_decide_batch shows to be the same thing).
    decider.small_batch = 0
    return decider


def test_promo_chosen_for_a_quiet_customer_and_ranked() -> None:
    out = make({"C1": quiet_customer()}).decide(Request("C1"))
    assert out["action"] == "promo" and not out["degraded"]
    assert out["ranking"][0]["action"] == "promo" and out["ranking"][0]["eligible"]
    assert out["model_version"] == "nba-uplift/3"
    assert {r["action"] for r in out["ranking"]} == set(ACTIONS)


def test_open_case_blocks_promo_and_says_so() -> None:
    row = quiet_customer(open_case_count=1, oldest_open_case_id="K-77",
                         oldest_open_case_at=pd.Timestamp(NOW - timedelta(days=2)))  # fmt: skip
    out = make({"C1": row}).decide(Request("C1", explain=True))
    assert out["action"] == "none"
    promo = next(r for r in out["ranking"] if r["action"] == "promo")
    assert not promo["eligible"] and "open_service_case" in promo["blocked_by"]
    assert "case K-77 open since 2 days" in out["reasons"]


def test_unknown_customer_gets_no_promo() -> None:
    out = make().decide(Request("NEW", explain=True))
    assert out["action"] == "none" and not out["degraded"]
    assert out["reasons"][0].startswith("new visitor")


@pytest.mark.parametrize(
    ("kwargs", "cause"),
    [({"read_fails": True}, "feature store unavailable"), ({"model": None}, "no model loaded"),
     ({"model": LoadedModel(StubModel({}, fail=True), "v")}, "model failed")],
)  # fmt: skip
def test_degraded_mode_answers_none(kwargs: dict[str, Any], cause: str) -> None:
    log: list[Mapping[str, Any]] = []
    decider = make({"C1": quiet_customer()}, log=log, **kwargs)
    for out in [decider.decide(Request("C1", explain=True)),
                *decider.decide_batch([Request("C1"), Request("C2")])]:  # fmt: skip
        assert out["action"] == "none" and out["degraded"] is True
    assert all(row["degraded"] and row["degraded_reason"].startswith(cause) for row in log)


def test_frequency_cap_and_shared_history(tmp_path: Path) -> None:
    history = SqliteContactHistory(tmp_path / "promos.db")
    first = make({"C1": quiet_customer()}, history=history)
    # A second worker process sharing the file sees the promo at once.
    second = make({"C1": quiet_customer()}, history=SqliteContactHistory(tmp_path / "promos.db"))
    assert first.decide(Request("C1"))["action"] == "promo"
    out = second.decide(Request("C1"))
    assert out["action"] == "none"
    promo = next(r for r in out["ranking"] if r["action"] == "promo")
    # The same web channel: the channel's contact cap applies too.
    assert promo["blocked_by"] == ["promo_frequency_cap", "channel_contact_cap_promo"]
    # On email the promo cap alone: one promo a week whatever the channel.
    out = second.decide(Request("C1", {"channel": "email"}))
    promo = next(r for r in out["ranking"] if r["action"] == "promo")
    assert promo["blocked_by"] == ["promo_frequency_cap"]


def test_every_action_is_remembered_with_its_channel(tmp_path: Path) -> None:
    history = SqliteContactHistory(tmp_path / "contacts.db")
    row = quiet_customer(created_at=pd.Timestamp("2015-01-01", tz="UTC"))  # recognition eligible
    decider = make({"C1": row}, {"recognition": 0.2}, history=history)
    first = decider.decide(Request("C1", {"channel": "email"}, ("recognition", "none")))
    assert first["action"] == "recognition"
    assert [(a, c) for _, a, c in history.contacts("C1", NOW)] == [("recognition", "email")]
    again = decider.decide(Request("C1", {"channel": "app"}, ("recognition", "none")))
    assert again["action"] == "none"
    recognition = next(r for r in again["ranking"] if r["action"] == "recognition")
    assert recognition["blocked_by"] == ["recognition_frequency_cap"]


def test_batch_gives_a_customer_listed_twice_one_promo() -> None:
    decider = make({"C1": quiet_customer(), "C2": quiet_customer()})
    actions = [
        d["action"] for d in decider.decide_batch([Request("C1"), Request("C2"), Request("C1")])
    ]
    assert actions == ["promo", "promo", "none"]


def test_apology_budget_is_paced_and_never_overspent() -> None:
    hurt = quiet_customer(last_negative_at=pd.Timestamp(NOW - timedelta(days=1)),
                          last_negative_kind="cancellation")  # fmt: skip
    rows = {f"C{i}": hurt for i in range(10)}
    decider = make(rows, {"apology_credit": 0.2}, budget=3)
    out = decider.decide_batch([Request(f"C{i}") for i in range(10)])
    assert [d["action"] for d in out].count("apology_credit") == 3
    blocked = [r for d in out[3:] for r in d["ranking"] if r["action"] == "apology_credit"]
    assert all("apology_daily_budget" in r["blocked_by"] for r in blocked)


def test_candidates_restrict_and_none_always_present() -> None:
    out = make({"C1": quiet_customer()}).decide(Request("C1", candidates=("recognition",)))
    assert {r["action"] for r in out["ranking"]} == {"recognition", "none"}
    assert out["action"] == "none"


def test_exploration_logs_true_propensity_and_random_policy() -> None:
    log: list[Mapping[str, Any]] = []
    row = quiet_customer(created_at=pd.Timestamp("2015-01-01", tz="UTC"))  # recognition eligible
    decider = make({"C1": row}, log=log, epsilon=0.5, history=_NoHistory())
    for _ in range(400):
        decider.decide(Request("C1"))
    greedy = [r for r in log if not r["explored"]]
    explored = [r for r in log if r["explored"]]
    assert greedy and explored
    # Eligible: promo (greedy), recognition, none -> explored ones have 0.5 / 2.
    assert {r["propensity"] for r in greedy} == {0.5} and {r["policy"] for r in greedy} == {
        "nba-uplift/3"
    }
    assert {r["propensity"] for r in explored} == {0.25} and {r["policy"] for r in explored} == {
        "random"
    }
    assert {r["action"] for r in explored} == {"recognition", "none"}


class _NoHistory:
    def contacts(self, customer_id: str, now: datetime) -> list[Any]:
        return []

    def add(self, customer_id: str, at: datetime, action: str = "", channel: str = "") -> None:
        pass

    def add_contacts(self, items: Any) -> None:
        pass


def test_log_rows_fit_the_decision_log_schema(tmp_path: Path) -> None:
    log: list[Mapping[str, Any]] = []
    decider = make({"C1": quiet_customer()}, log=log)
    decider.decide(Request("C1", {"channel": "app", "origin": "JFK"}))
    decider.decide(Request("C9"))
    decision_log.write_part(tmp_path, log, decision_log.DECISION_SCHEMA, "decided_at", 1)
    frame = decision_log.read_decisions(tmp_path)
    assert frame["action"].tolist() == ["promo", "none"]
    assert frame["channel"].tolist() == ["app", "web"]
    assert frame["features_found"].tolist() == [True, False]
    assert frame.loc[0, "f_marketing_opt_in"] == 1.0 and np.isnan(frame.loc[1, "f_bookings_7d"])
    assert (frame["latency_ms"] > 0).all()


_TS = st.one_of(st.none(), st.floats(0, 400).map(lambda d: pd.Timestamp(NOW - timedelta(days=d))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    open_cases=st.one_of(st.none(), st.integers(0, 3)),
    last_negative=_TS,
    opt_in=st.one_of(st.none(), st.booleans()),
    unsubscribed=st.one_of(st.none(), st.booleans()),
    promo_uplift=st.floats(-1, 1),
    other=st.floats(-1, 1),
    epsilon=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_no_promo_for_open_case_recent_negative_or_opt_out(
    open_cases: int | None, last_negative: pd.Timestamp | None, opt_in: bool | None,
    unsubscribed: bool | None, promo_uplift: float, other: float, epsilon: float,
) -> None:  # fmt: skip
    kind = "delay" if last_negative is not None else None
    row = quiet_customer(open_case_count=open_cases, last_negative_at=last_negative,
                         marketing_opt_in=opt_in, unsubscribed=unsubscribed,
                         last_negative_kind=kind)  # fmt: skip
    uplifts = {"promo": promo_uplift, "apology_credit": other, "recognition": other}
    decider = make({"C1": row}, uplifts, epsilon=epsilon, history=_NoHistory())
    recent = last_negative is not None and (NOW - last_negative) <= timedelta(days=14)
    forbidden = (open_cases is None or open_cases > 0 or recent or opt_in is not True
                 or unsubscribed is not False)  # fmt: skip
    for out in [decider.decide(Request("C1")), decider.decide_batch([Request("C1")])[0]]:
        promo = next(r for r in out["ranking"] if r["action"] == "promo")
        if forbidden:
            assert out["action"] != "promo" and not promo["eligible"] and promo["blocked_by"]


def test_read_context_supplies_features_promos_and_budget_in_one_call() -> None:
    calls: list[str] = []

    def read_context(customer_id: str, now: datetime) -> tuple[Mapping[str, Any], list, int]:
        calls.append(customer_id)
        if customer_id == "DOWN":
            raise ConnectionError("redis down")
        day_ago = int((now - timedelta(days=1)).timestamp() * 1e6)
        contacts = [(day_ago, "promo", "email")] if customer_id == "CAPPED" else []
        return quiet_customer(), contacts, 0

    decider = make({}, {"promo": 0.05})
    decider._read_context = read_context
    capped = decider.decide(Request("CAPPED"))
    assert capped["action"] == "none"
    assert promo_of(capped)["blocked_by"] == ["promo_frequency_cap"]
    fresh = decider.decide(Request("FRESH"))
    assert fresh["action"] == "promo"
    down = decider.decide(Request("DOWN"))
    assert down["degraded"] is True and down["action"] == "none"
    assert calls == ["CAPPED", "FRESH", "DOWN"]


def promo_of(decision: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(r for r in decision["ranking"] if r["action"] == "promo")
