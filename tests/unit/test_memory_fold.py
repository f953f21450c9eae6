"""The fold of events into a customer's state (memory.fold): pure and order-independent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.fold import (
    EVENT_TYPES,
    Case,
    empty_state,
    fold,
    milestone_reached,
    next_milestone,
    project_cases,
)

T = datetime(2026, 11, 20, 10, tzinfo=UTC)


def test_disruption_marks_a_negative_experience_only_when_severe() -> None:
    minor, effects = fold(empty_state(), {"type": "flight_disrupted", "ts": T, "delay_minutes": 30})
    assert minor["last_negative_at"] is None and minor["worst_delay_30d"] == 30
    assert not effects.severe_disruption
    cancelled, effects = fold(
        empty_state(), {"type": "flight_disrupted", "ts": T, "cancelled": True}
    )
    assert cancelled["last_negative_kind"] == "cancellation" and effects.severe_disruption


def test_a_late_arriving_older_fact_does_not_replace_a_newer_one() -> None:
    state, _ = fold(empty_state(), {"type": "flight_disrupted", "ts": T, "delay_minutes": 200})
    older = T - timedelta(hours=5)
    state, _ = fold(state, {"type": "case_opened", "ts": older, "case_id": "K", "topic": "baggage"})
    assert state["last_negative_kind"] == "delay" and state["last_negative_at"] == T
    state, _ = fold(state, {"type": "booking", "ts": T})
    state, _ = fold(state, {"type": "booking", "ts": older})
    assert state["last_booking_at"] == T


def test_flown_miles_add_up_and_a_milestone_is_seen_at_once() -> None:
    state = {**empty_state(), "lifetime_miles": 999_000}
    state, effects = fold(state, {"type": "flight_flown", "ts": T, "miles_earned": 1_500})
    assert state["lifetime_miles"] == 1_000_500
    assert effects.milestone_crossed == 1_000_000
    assert state["last_milestone_at"] == T and state["last_milestone_miles"] == 1_000_000
    assert state["miles_to_next_milestone"] == 2_000_000 - 1_000_500
    state, effects = fold(state, {"type": "flight_flown", "ts": T, "miles_earned": 10})
    assert effects.milestone_crossed is None


def test_milestones() -> None:
    assert next_milestone(0) == 100_000 and next_milestone(100_000) == 1_000_000
    assert milestone_reached(99_999) == 0 and milestone_reached(2_500_000) == 2_000_000


def test_consent_latest_fact_wins_and_a_reconsent_lifts_an_earlier_unsubscribe() -> None:
    state = {**empty_state(), "unsubscribed": True, "marketing_opt_in": True}
    state.pop("unsub_base")  # as read from the online store
    lifted, _ = fold(state, {"type": "consent_changed", "ts": T, "marketing_opt_in": True})
    assert lifted["unsubscribed"] is False
    again, _ = fold(lifted, {"type": "unsubscribe", "ts": T + timedelta(minutes=1)})
    assert again["unsubscribed"] is True
    out, _ = fold(empty_state(), {"type": "consent_changed", "ts": T, "marketing_opt_in": False})
    assert out["marketing_opt_in"] is False


def test_cases_by_id() -> None:
    cases = [
        Case("A", T - timedelta(days=3), None, -0.2),
        Case("B", T - timedelta(days=1), None, 0.4),
        Case("C", T - timedelta(days=5), T, -0.9),
        Case("D", None, T, None),  # a closing seen before its opening: no case yet
    ]
    state = project_cases(empty_state(), cases)
    assert state["open_case_count"] == 2
    assert state["oldest_open_case_id"] == "A"
    assert state["last_case_sentiment"] == 0.4


def test_refuses_unknown_types_and_naive_times() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        fold(empty_state(), {"type": "teleport", "ts": T})
    with pytest.raises(ValueError, match="timezone-aware"):
        fold(empty_state(), {"type": "booking", "ts": datetime(2026, 11, 20)})


def _event(kind: str, minutes: int, value: int) -> dict[str, Any]:
    ts = T + timedelta(minutes=minutes)
    extra: dict[str, Any] = {
        "case_opened": {"case_id": f"K{value}", "topic": "baggage" if value % 2 else "seat"},
        "case_closed": {"case_id": f"K{value}", "compensated": bool(value % 2)},
        "flight_disrupted": {"delay_minutes": value * 40, "cancelled": value == 0},
        "flight_flown": {"miles_earned": value * 30_000},
        "consent_changed": {"marketing_opt_in": bool(value % 2)},
    }.get(kind, {})
    return {"type": kind, "ts": ts, **extra}


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(EVENT_TYPES), st.integers(0, 30), st.integers(0, 5)),
        min_size=1,
        max_size=12,
    ),
    seed=st.randoms(use_true_random=False),
)
def test_any_arrival_order_gives_the_same_state(events: list, seed: Any) -> None:
    """Events folded in any order give the state of event-time order (the milestone's time
    aside: which leg crossed it depends on the order legs are summed in)."""
    made = [_event(*e) for e in events]
    shuffled = list(made)
    seed.shuffle(shuffled)

    def run(order: list[dict[str, Any]]) -> dict[str, Any]:
        state = empty_state()
        for event in order:
            state, _ = fold(state, event)
        state.pop("last_milestone_at")
        return state

    in_time = sorted(made, key=lambda e: e["ts"])
    assert run(shuffled) == run(in_time)


def test_open_cases_the_memory_never_saw_stay_open(tmp_path: Any) -> None:
    """An online row with open cases the memory does not know (a store built before the
    memory, or by hand): the first event keeps them open instead of closing them silently."""
    from memory.ledger import Memory
    from memory.store import Database, sqlite_url

    memory = Memory(Database(sqlite_url(tmp_path / "memory.db")))
    seed = {**empty_state(), "open_case_count": 2, "oldest_open_case_id": "C-77",
            "oldest_open_case_at": T - timedelta(days=2)}  # fmt: skip
    applied = memory.append({"customer_id": "X", "type": "booking", "ts": T}, lambda: seed)
    assert applied.state is not None and applied.state["open_case_count"] == 2
    assert applied.state["oldest_open_case_id"] == "C-77"
    closed = memory.append({"customer_id": "X", "type": "case_closed", "ts": T, "case_id": "C-77"})
    assert closed.applied and closed.state is not None and closed.state["open_case_count"] == 1
