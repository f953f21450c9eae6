"""Folding real-time events into the realtime feature state."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features import schema
from features.events import EVENT_TYPES, apply_event, empty_state

T = pd.Timestamp("2026-11-20T10:00:00Z")


def test_case_opened_then_closed_with_compensation() -> None:
    state, ts = apply_event(empty_state(), None, {"type": "case_opened", "ts": T,
                                                  "case_id": "K1", "topic": "delay",
                                                  "sentiment": -0.8})  # fmt: skip
    assert state["open_case_count"] == 1 and state["oldest_open_case_id"] == "K1"
    assert state["last_negative_kind"] == "complaint" and state["last_negative_at"] == T
    assert state["last_case_sentiment"] == -0.8 and ts == T
    later = T + pd.Timedelta(hours=5)
    closed, ts2 = apply_event(state, ts, {"type": "case_closed", "ts": later, "case_id": "K1",
                                          "compensated": True})  # fmt: skip
    assert closed["open_case_count"] == 0 and closed["oldest_open_case_at"] is None
    assert closed["last_compensated_at"] == later and ts2 == later


def test_disruption_and_other_events() -> None:
    state, _ = apply_event(empty_state(), None,
                           {"type": "flight_disrupted", "ts": T, "delay_minutes": 190})  # fmt: skip
    assert state["last_negative_kind"] == "delay"
    assert state["last_negative_delay_minutes"] == 190
    assert state[f"worst_delay_{schema.DELAY_WINDOW}d"] == 190
    minor, _ = apply_event(empty_state(), None,
                           {"type": "flight_disrupted", "ts": T, "delay_minutes": 40})  # fmt: skip
    assert minor["last_negative_at"] is None
    cancelled, _ = apply_event(
        empty_state(), None, {"type": "flight_disrupted", "ts": T, "cancelled": True}
    )
    assert cancelled["last_negative_kind"] == "cancellation"
    assert apply_event(empty_state(), None, {"type": "unsubscribe", "ts": T})[0]["unsubscribed"]
    assert apply_event(empty_state(), None, {"type": "booking", "ts": T})[0]["last_booking_at"] == T


def test_bad_events_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        apply_event(empty_state(), None, {"type": "teleport", "ts": T})
    with pytest.raises(ValueError, match="timezone-aware"):
        apply_event(empty_state(), None, {"type": "booking", "ts": "2026-11-20T10:00:00"})


@given(
    kinds=st.lists(st.sampled_from(EVENT_TYPES), min_size=1, max_size=20),
    offsets=st.lists(st.integers(-10_000, 10_000), min_size=20, max_size=20),
)
def test_state_timestamp_never_goes_backwards(kinds: list[str], offsets: list[int]) -> None:
    """The SQLite online store lets an older push overwrite a newer one: never push older."""
    state, stamp = empty_state(), None
    for kind, offset in zip(kinds, offsets, strict=False):
        event = {"type": kind, "ts": T + pd.Timedelta(seconds=offset), "case_id": "K",
                 "delay_minutes": 200}  # fmt: skip
        state, new_stamp = apply_event(state, stamp, event)
        assert stamp is None or new_stamp >= stamp
        assert set(state) == set(schema.REALTIME)
        assert state["open_case_count"] >= 0
        stamp = new_stamp
