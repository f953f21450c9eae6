"""Fold a real-time event into a customer's realtime feature state.

``/events`` (and anything else that learns of a change before the next materialization) reads
the customer's current ``schema.REALTIME`` values, folds the event in with ``apply_event`` and
pushes the new state through the Feast PushSource. Folding is pure: same state and event, same
result. The new row's ``event_timestamp`` never goes backwards, because on the SQLite online
store an older timestamp would overwrite a newer value and Redis would ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd

from features import schema

EventType = Literal["case_opened", "case_closed", "flight_disrupted", "booking", "unsubscribe"]
EVENT_TYPES: tuple[str, ...] = (
    "case_opened",
    "case_closed",
    "flight_disrupted",
    "booking",
    "unsubscribe",
)


def empty_state() -> dict[str, Any]:
    """The realtime state of a customer with no history (a new visitor)."""
    state: dict[str, Any] = {name: None for name in schema.REALTIME}
    state.update(
        open_case_count=0,
        last_negative_delay_minutes=0,
        **{f"worst_delay_{schema.DELAY_WINDOW}d": 0},
        unsubscribed=False,
    )
    return state


def _stamp(value: Any) -> pd.Timestamp | None:
    if value is None or value is pd.NaT:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"event time {value!r} must be timezone-aware")
    return stamp.tz_convert("UTC")


def apply_event(
    state: Mapping[str, Any],
    state_ts: Any,
    event: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.Timestamp]:
    """The realtime state after ``event``, and the event timestamp to push it with.

    Args:
        state: current ``schema.REALTIME`` values (missing keys and None mean "no history").
        state_ts: the event timestamp of ``state`` in the online store (None when unknown).
        event: ``type`` (one of ``EVENT_TYPES``), ``ts`` (tz-aware), and per type:
            ``case_opened``: ``case_id``, optional ``topic`` and ``sentiment``;
            ``case_closed``: ``case_id``, optional ``compensated``;
            ``flight_disrupted``: ``delay_minutes`` and/or ``cancelled``;
            ``booking`` and ``unsubscribe``: nothing more.

    Returns:
        The new state (every ``schema.REALTIME`` key) and ``max(state_ts, event ts)``.
    """
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)}")
    ts = _stamp(event.get("ts"))
    if ts is None:
        raise ValueError("event needs a timezone-aware 'ts'")
    new = empty_state()
    new.update({k: v for k, v in state.items() if k in schema.REALTIME and v is not None})
    worst = f"worst_delay_{schema.DELAY_WINDOW}d"

    if kind == "case_opened":
        new["open_case_count"] = int(new["open_case_count"] or 0) + 1
        if new["oldest_open_case_at"] is None:
            new["oldest_open_case_at"] = ts
            new["oldest_open_case_id"] = event.get("case_id")
        sentiment = event.get("sentiment")
        if sentiment is not None:
            new["last_case_sentiment"] = float(sentiment)
        topic = event.get("topic")
        if topic in schema.COMPLAINT_TOPICS or (sentiment is not None and sentiment < 0):
            new.update(last_negative_at=ts, last_negative_kind="complaint")
            new["last_negative_delay_minutes"] = 0
    elif kind == "case_closed":
        remaining = max(int(new["open_case_count"] or 0) - 1, 0)
        new["open_case_count"] = remaining
        if remaining == 0 or new["oldest_open_case_id"] == event.get("case_id"):
            # Without the case history the next-oldest open case is unknown: leave it empty
            # (the count still says a case is open) rather than overstate its age.
            new["oldest_open_case_at"] = None
            new["oldest_open_case_id"] = None
        if event.get("compensated"):
            new["last_compensated_at"] = ts
    elif kind == "flight_disrupted":
        delay = int(event.get("delay_minutes") or 0)
        cancelled = bool(event.get("cancelled", False))
        new[worst] = max(int(new[worst] or 0), 0 if cancelled else delay)
        if cancelled or delay >= schema.SEVERE_DELAY_MINUTES:
            new.update(
                last_negative_at=ts,
                last_negative_kind="cancellation" if cancelled else "delay",
                last_negative_delay_minutes=0 if cancelled else delay,
            )
    elif kind == "booking":
        new["last_booking_at"] = ts
    else:  # unsubscribe
        new["unsubscribed"] = True

    previous = _stamp(state_ts)
    return new, ts if previous is None else max(previous, ts)
