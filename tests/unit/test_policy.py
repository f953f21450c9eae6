"""Arbitration, exploration, the apology-credit pacer, batch forms, and the promo guardrails."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.guardrails import RuleSet, evaluate, load_rules, parse_rules
from serving.policy import (
    ACTIONS,
    DailyBudget,
    Ranked,
    arbitrate,
    arbitrate_batch,
    evaluate_batch,
)

RULES = load_rules()
NOTHING_BLOCKED: dict[str, list[str]] = {}
UPLIFTS = {"promo": 0.02, "apology_credit": 0.05, "recognition": 0.01}


def test_picks_the_eligible_action_with_the_highest_positive_value() -> None:
    values = {"promo": 5.0, "apology_credit": 12.4, "recognition": 1.0}
    decision = arbitrate(values, UPLIFTS, NOTHING_BLOCKED)
    assert (decision.action, decision.propensity, decision.explored) == ("apology_credit", 1, False)
    assert [r.action for r in decision.ranking] == [
        "apology_credit",
        "promo",
        "recognition",
        "none",
    ]
    assert decision.ranking[0] == Ranked("apology_credit", True, 0.05, 12.4, ())


def test_a_blocked_action_is_skipped_and_ranked_last_with_its_rules() -> None:
    values = {"promo": 50.0, "apology_credit": 12.4, "recognition": -3.0}
    decision = arbitrate(values, UPLIFTS, {"promo": ["open_service_case"]})
    assert decision.action == "apology_credit"
    assert [(r.action, r.eligible) for r in decision.ranking] == [
        ("apology_credit", True),
        ("none", True),
        ("recognition", True),
        ("promo", False),
    ]
    assert decision.ranking[-1].blocked_by == ("open_service_case",)


def test_none_when_nothing_eligible_is_positive() -> None:
    values = {"promo": -1.0, "apology_credit": 0.0, "recognition": 30.0}
    decision = arbitrate(values, UPLIFTS, {"recognition": ["r"]})
    assert decision.action == "none"
    assert decision.ranking[0] == Ranked("none", True, 0.0, 0.0, ())
    # A zero-valued action ties with none: none wins, and is ranked first.
    assert [r.action for r in decision.ranking[:2]] == ["none", "apology_credit"]


def test_a_missing_or_nan_value_makes_an_action_ineligible() -> None:
    values = {"promo": math.nan, "recognition": math.inf}
    decision = arbitrate(values, {}, NOTHING_BLOCKED)
    assert decision.action == "none"
    assert {r.action: r.eligible for r in decision.ranking} == {
        "none": True,
        "promo": False,
        "apology_credit": False,
        "recognition": False,
    }
    assert all(r.blocked_by == () for r in decision.ranking)


def test_candidates_are_respected_and_none_is_always_one() -> None:
    values = {"promo": 5.0, "apology_credit": 12.4, "recognition": 1.0}
    decision = arbitrate(values, UPLIFTS, NOTHING_BLOCKED, candidates=["promo", "recognition"])
    assert decision.action == "promo"
    assert [r.action for r in decision.ranking] == ["promo", "recognition", "none"]
    only_none = arbitrate(values, UPLIFTS, NOTHING_BLOCKED, candidates=[], epsilon=0.5)
    assert (only_none.action, only_none.propensity) == ("none", 1.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown candidate"):
        arbitrate({}, {}, {}, candidates=["discount"])
    with pytest.raises(ValueError, match="epsilon"):
        arbitrate({}, {}, {}, epsilon=1.5)
    with pytest.raises(ValueError, match="cannot be blocked"):
        arbitrate({}, {}, {"none": ["r"]})


def test_greedy_propensity_with_exploration() -> None:
    values = {"promo": 5.0, "apology_credit": 12.4, "recognition": 1.0}
    rng = random.Random(1)
    for _ in range(50):
        decision = arbitrate(values, UPLIFTS, {"promo": ["x"]}, epsilon=0.2, rng=rng)
        expected = 0.8 if decision.action == "apology_credit" else 0.2 / 2
        assert decision.explored is (decision.action != "apology_credit")
        assert decision.propensity == pytest.approx(expected)


def test_exploration_frequencies_match_propensities_and_respect_guardrails() -> None:
    values = {"promo": 50.0, "apology_credit": 12.4, "recognition": -3.0}
    blocked = {"promo": ["open_service_case"]}
    rng = random.Random(7)
    draws = 20_000
    counts: Counter[str] = Counter()
    propensities: dict[str, float] = {}
    for _ in range(draws):
        decision = arbitrate(values, UPLIFTS, blocked, epsilon=0.3, rng=rng)
        counts[decision.action] += 1
        propensities[decision.action] = decision.propensity
    assert "promo" not in counts
    assert propensities == pytest.approx({"apology_credit": 0.7, "none": 0.15, "recognition": 0.15})
    for action, propensity in propensities.items():
        assert counts[action] / draws == pytest.approx(propensity, abs=0.015)


def test_batch_exploration_frequencies_match_propensities() -> None:
    n = 20_000
    values = np.tile([50.0, 12.4, -3.0, 0.0], (n, 1))
    mask = np.tile([True, False, False, False], (n, 1))
    chosen, propensity = arbitrate_batch(values, mask, epsilon=0.3, seed=3)
    assert "promo" not in set(chosen)
    for action, expected in {"apology_credit": 0.7, "none": 0.15, "recognition": 0.15}.items():
        assert (chosen == action).mean() == pytest.approx(expected, abs=0.015)
        assert np.allclose(propensity[chosen == action], expected)


# --- DailyBudget ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_daily_budget_paces_the_day_and_resets_at_utc_midnight() -> None:
    clock = FakeClock(datetime(2026, 1, 5, 0, 0, tzinfo=UTC))
    budget = DailyBudget(240, clock)  # burst: one hour's worth, 10
    assert budget.remaining() == 10
    assert sum(budget.take() for _ in range(50)) == 10  # a wave at midnight gets the burst only
    assert budget.remaining() == 0 and not budget.take()
    clock.now += timedelta(hours=1)  # 10 more accrued
    assert budget.remaining() == 10
    clock.now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # unspent allowance carries over
    assert budget.remaining() == 120 + 10 - 10
    clock.now = datetime(2026, 1, 5, 23, 59, tzinfo=UTC)
    assert budget.remaining() == 240 - 10  # capped at per_day
    assert sum(budget.take() for _ in range(500)) == 230
    clock.now = datetime(2026, 1, 6, 0, 30, tzinfo=UTC)  # a new UTC day
    assert budget.remaining() == 5 + 10 and budget.spent == 0


def test_daily_budget_uses_the_utc_day_of_aware_clocks() -> None:
    from datetime import timezone

    tokyo = timezone(timedelta(hours=9))
    clock = FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=tokyo))  # 00:00 UTC
    assert DailyBudget(240, clock).remaining() == 10
    with pytest.raises(ValueError, match="timezone-aware"):
        DailyBudget(240, lambda: datetime(2026, 1, 5)).remaining()


def test_daily_budget_zero_and_custom_burst() -> None:
    clock = FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    assert DailyBudget(0, clock).remaining() == 0
    assert DailyBudget(100, clock, burst=0).remaining() == 50
    with pytest.raises(ValueError):
        DailyBudget(-1, clock)


def test_daily_budget_take_is_thread_safe() -> None:
    clock = FakeClock(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    budget = DailyBudget(10_000, clock)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [budget.take() for _ in range(1_000)]
        with lock:
            granted.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == budget.spent == 5_000 + math.ceil(10_000 / 24)


# --- Batch forms agree with the per-row ones ------------------------------------------------------

SCORE = st.one_of(st.floats(-50, 50), st.just(math.nan), st.just(0.0))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.tuples(SCORE, SCORE, SCORE), st.tuples(*[st.booleans()] * 3)),
        min_size=1,
        max_size=20,
    ),
    epsilon=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_arbitrate_batch_agrees_with_arbitrate(
    rows: list[tuple[tuple[float, ...], tuple[bool, ...]]], epsilon: float, seed: int
) -> None:
    values = np.array([[*v, 0.0] for v, _ in rows])
    mask = np.array([[*b, False] for _, b in rows])
    greedy, greedy_p = arbitrate_batch(values, mask)
    chosen, propensity = arbitrate_batch(values, mask, epsilon=epsilon, seed=seed)
    for i in range(len(rows)):
        named = dict(zip(ACTIONS, values[i], strict=True))
        blocked = {a: ["x"] for a, b in zip(ACTIONS, mask[i], strict=True) if b}
        decision = arbitrate(named, {}, blocked)
        assert greedy[i] == decision.action
        assert greedy_p[i] == decision.propensity == 1.0
        eligible = [r.action for r in decision.ranking if r.eligible]
        assert chosen[i] in eligible
        k = len(eligible)
        if chosen[i] == decision.action:
            assert propensity[i] == pytest.approx(1.0 - epsilon if k > 1 else 1.0)
        else:
            assert propensity[i] == pytest.approx(epsilon / (k - 1))


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


DAYS = st.one_of(st.just(math.nan), st.floats(0, 3000))
ROW_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    # Junk values ("n/a") make object columns: read element by element, and fail closed.
    "open_case_count": _maybe(st.one_of(st.integers(0, 3), st.just("n/a"))),
    "days_since_last_negative": _maybe(DAYS),
    "compensated_since_last_negative": _maybe(st.booleans()),
    "marketing_opt_in": _maybe(st.one_of(st.booleans(), st.just("n/a"))),
    "unsubscribed": _maybe(st.booleans()),
    "promos_7d": _maybe(st.integers(0, 3)),
    "contacts_7d": _maybe(st.integers(0, 3)),
    "contacts_7d_channel": _maybe(st.integers(0, 3)),
    "recognitions_30d": _maybe(st.integers(0, 3)),
    "apology_budget_left": _maybe(st.integers(0, 3)),
    "days_since_last_milestone": _maybe(DAYS),
    "tenure_days": _maybe(DAYS),
    "channel": _maybe(st.sampled_from(["web", "app", "email"])),
    "last_negative_kind": _maybe(st.sampled_from(["delay", "cancellation", "complaint"])),
}

#: Rules exercising what the shipped file does not: strings, !=, nesting under ``not``.
EXTRA_RULES = parse_rules(
    {
        "rules": [
            {
                "name": "web_only",
                "action": "promo",
                "effect": "require",
                "when": {"feature": "channel", "op": "==", "value": "web"},
                "reason": "{channel}",
            },
            {
                "name": "nested",
                "action": "recognition",
                "effect": "block",
                "when": {
                    "not": {
                        "any": [
                            {"feature": "unsubscribed", "op": "!=", "value": True},
                            {
                                "all": [
                                    {"missing": "tenure_days"},
                                    {"feature": "promos_7d", "op": "<", "value": 2},
                                ]
                            },
                        ]
                    }
                },
                "reason": "x",
            },
            {
                "name": "not_a_delay",
                "action": "apology_credit",
                "effect": "block",
                "when": {"feature": "last_negative_kind", "op": "!=", "value": "delay"},
                "reason": "x",
            },
        ]
    }
)
ROW = st.fixed_dictionaries(ROW_FIELDS)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(ROW, min_size=0, max_size=25),
    drop=st.sets(st.sampled_from(sorted(RULES.reads | EXTRA_RULES.reads)), max_size=2),
    nullable=st.booleans(),
    rules=st.sampled_from([RULES, EXTRA_RULES]),
)
def test_evaluate_batch_agrees_with_evaluate(
    rows: list[dict[str, Any]], drop: set[str], nullable: bool, rules: RuleSet
) -> None:
    frame = pd.DataFrame(rows, columns=list(ROW_FIELDS)).drop(columns=list(drop))
    if nullable:  # the pandas nullable dtypes the feature store may hand back
        frame = frame.convert_dtypes()
    mask, blocked_by = evaluate_batch(rules, frame)
    assert mask.shape == (len(frame), len(ACTIONS))
    assert len(blocked_by) == len(frame)
    for i, record in enumerate(frame.to_dict("records")):
        expected = evaluate(rules, record)
        assert blocked_by[i] == [tuple(expected[a]) for a in ACTIONS]
        assert mask[i].tolist() == [bool(expected[a]) for a in ACTIONS]


# --- The property the issue requires --------------------------------------------------------------

RISKS = {
    "open case": {"open_case_count": st.integers(1, 5)},
    "recent negative experience": {"days_since_last_negative": st.floats(0, 14)},
    "opted out": {"marketing_opt_in": st.just(False)},
    "unsubscribed": {"unsubscribed": st.just(True)},
}


@st.composite
def risky_customer(draw: st.DrawFn) -> dict[str, Any]:
    """Random values, then at least one reason never to send a promo."""
    values = draw(ROW)
    for risk in draw(st.sets(st.sampled_from(sorted(RISKS)), min_size=1)):
        values.update({name: draw(strategy) for name, strategy in RISKS[risk].items()})
    return values


SCORES = st.tuples(*[st.one_of(st.floats(-1e6, 1e6), st.just(math.nan))] * 3)


@settings(max_examples=300, deadline=None)
@given(
    values=risky_customer(),
    scores=SCORES,
    epsilon=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_no_promo_for_a_customer_at_risk_whatever_the_scores(
    values: dict[str, Any], scores: tuple[float, float, float], epsilon: float, seed: int
) -> None:
    """Open case, negative experience in the last 14 days, opt-out or unsubscribe: the promo is
    never eligible and never chosen, greedily or by exploration."""
    blocked = evaluate(RULES, values)
    assert blocked["promo"]
    named = dict(zip(ACTIONS, scores, strict=False))
    rng = random.Random(seed)
    for _ in range(5):
        decision = arbitrate(named, {}, blocked, epsilon=epsilon, rng=rng)
        assert decision.action != "promo"
        assert not next(r for r in decision.ranking if r.action == "promo").eligible


@settings(max_examples=60, deadline=None)
@given(
    customers=st.lists(st.tuples(risky_customer(), SCORES), min_size=1, max_size=30),
    epsilon=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_no_promo_for_customers_at_risk_in_batch(
    customers: list[tuple[dict[str, Any], tuple[float, float, float]]], epsilon: float, seed: int
) -> None:
    """The same property for offline scoring (``evaluate_batch`` then ``arbitrate_batch``)."""
    mask, _ = evaluate_batch(RULES, pd.DataFrame([values for values, _ in customers]))
    assert mask[:, ACTIONS.index("promo")].all()
    scores = np.array([[*s, 0.0] for _, s in customers])
    chosen, _ = arbitrate_batch(scores, mask, epsilon=epsilon, seed=seed)
    assert "promo" not in set(chosen)
