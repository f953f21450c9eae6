"""Fold one event into a customer's state: pure, and independent of the order events arrive in.

The state is the customer's ``schema.REALTIME`` values (what the online store serves and
``/events`` pushes) plus the times of its consent facts (``EXTRA``).
Events arrive out of order (a complaint stamped before a booking that arrived first, an
opening and a closing in the same second), so every field is folded with an operation that
does not care about arrival order:

* times of the latest fact (``last_negative_at``, ``last_booking_at``, ``last_compensated_at``)
  keep the latest, and the fields that describe that fact change only with it;
* ``worst_delay_30d`` keeps the worst; lifetime miles add up (a retry is no second leg: the
  ledger drops an ``event_id`` it already holds);
* consent: ``marketing_opt_in`` is the latest ``consent_changed``'s value; ``unsubscribed`` holds
  when an unsubscribe (or the rebuild's) is not followed by a re-consent (``consent_changed``
  to true) — the times of those facts are kept in the state (``EXTRA``);
* the open cases are a set of ids (``memory.ledger`` keeps them); ``project_cases`` derives
  the case fields from it.

So folding any permutation of a customer's events gives the same state
(``tests/unit/test_memory_fold.py`` checks it with hypothesis).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import pandas as pd

from features import schema

#: Every event type the ledger accepts (contract v1 and v1.1).
EVENT_TYPES: Final = (
    "case_opened",
    "case_closed",
    "flight_disrupted",
    "booking",
    "unsubscribe",
    "flight_flown",
    "compensation_granted",
    "consent_changed",
)
WORST: Final = f"worst_delay_{schema.DELAY_WINDOW}d"
#: Ranks of negative experiences at the same instant (the worse is kept).
_SEVERITY: Final = {"complaint": (0,), "delay": (1,), "cancellation": (2,)}
#: State keys beyond the served features.
EXTRA: Final = ("consent_ts", "reconsent_ts", "unsub_ts", "unsub_base")


@dataclass(frozen=True)
class Effects:
    """What an event changed that a trigger may act on."""

    #: The loyalty milestone (miles) the event crossed, or None.
    milestone_crossed: int | None = None
    #: A cancellation, or a delay of at least ``schema.SEVERE_DELAY_MINUTES``.
    severe_disruption: bool = False


def empty_state() -> dict[str, Any]:
    """The state of a customer with nothing on record (a new visitor)."""
    state: dict[str, Any] = {name: None for name in (*schema.REALTIME, *EXTRA)}
    state.update(
        open_case_count=0,
        last_negative_delay_minutes=0,
        lifetime_miles=0,
        last_milestone_miles=0,
        unsubscribed=False,
        unsub_base=False,
        **{WORST: 0},
    )
    state["miles_to_next_milestone"] = next_milestone(0)
    return state


def next_milestone(miles: int) -> int:
    """The next lifetime-mile milestone strictly above ``miles`` (100k, then each million)."""
    if miles < schema.FIRST_MILESTONE:
        return schema.FIRST_MILESTONE
    return (miles // schema.MILESTONE_STEP + 1) * schema.MILESTONE_STEP


def milestone_reached(miles: int) -> int:
    """The highest milestone at or below ``miles`` (0 when none)."""
    if miles < schema.FIRST_MILESTONE:
        return 0
    return max(schema.FIRST_MILESTONE, miles // schema.MILESTONE_STEP * schema.MILESTONE_STEP)


def stamp(value: Any) -> pd.Timestamp | None:
    """A UTC ``pd.Timestamp`` of a timezone-aware value (None, NaT stay None)."""
    if value is None or value is pd.NaT:
        return None
    moment = pd.Timestamp(value)
    if pd.isna(moment):
        return None
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} must be timezone-aware")
    return moment.tz_convert("UTC")


def _later(current: Any, ts: pd.Timestamp) -> bool:
    """True when ``ts`` is at or after the time ``current`` (None: always)."""
    known = stamp(current)
    return known is None or ts >= known


def with_defaults(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` over ``empty_state``: missing keys and None counts get their neutral values.

    A state read from the online store (no ``unsub_base`` yet) keeps its ``unsubscribed`` as
    the rebuild's unsubscribe, which a later re-consent lifts.
    """
    new = empty_state()
    new.update({k: v for k, v in state.items() if k in new and v is not None})
    if state.get("unsub_base") is None:
        new["unsub_base"] = bool(state.get("unsubscribed") or False)
    return new


def _unsubscribed(state: Mapping[str, Any]) -> bool:
    reconsent, unsub = stamp(state["reconsent_ts"]), stamp(state["unsub_ts"])
    if unsub is not None and (reconsent is None or unsub > reconsent):
        return True
    return bool(state["unsub_base"]) and reconsent is None


def fold(state: Mapping[str, Any], event: Mapping[str, Any]) -> tuple[dict[str, Any], Effects]:
    """The state after ``event`` (``type``, tz-aware ``ts`` and the type's fields), and its effects.

    Case events change nothing here: the open cases are a set kept by the ledger and applied
    with ``project_cases``; a complaint still marks a negative experience.
    """
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)}")
    ts = stamp(event.get("ts"))
    if ts is None:
        raise ValueError("event needs a timezone-aware 'ts'")
    new = with_defaults(state)
    effects = Effects()

    def negative(kind_: str, delay: int) -> None:
        known = stamp(new["last_negative_at"])
        # Two at the same time: the worse one is kept, whichever arrived last.
        mine = (*_SEVERITY[kind_], delay)
        theirs = (
            *_SEVERITY.get(new["last_negative_kind"], (-1,)),
            int(new["last_negative_delay_minutes"] or 0),
        )
        worse = mine > theirs
        if known is None or ts > known or (ts == known and worse):
            new.update(last_negative_at=ts, last_negative_kind=kind_,
                       last_negative_delay_minutes=delay)  # fmt: skip

    if kind == "case_opened":
        sentiment = event.get("sentiment")
        if event.get("topic") in schema.COMPLAINT_TOPICS or (
            sentiment is not None and sentiment < 0
        ):
            negative("complaint", 0)
    elif kind == "case_closed":
        if event.get("compensated") and _later(new["last_compensated_at"], ts):
            new["last_compensated_at"] = ts
    elif kind == "flight_disrupted":
        delay = int(event.get("delay_minutes") or 0)
        cancelled = bool(event.get("cancelled", False))
        new[WORST] = max(int(new[WORST]), 0 if cancelled else delay)
        if cancelled or delay >= schema.SEVERE_DELAY_MINUTES:
            negative("cancellation" if cancelled else "delay", 0 if cancelled else delay)
            effects = Effects(severe_disruption=True)
    elif kind == "booking":
        if _later(new["last_booking_at"], ts):
            new["last_booking_at"] = ts
    elif kind == "flight_flown":
        before = int(new["lifetime_miles"])
        after = before + int(event.get("miles_earned") or 0)
        new["lifetime_miles"] = after
        new["miles_to_next_milestone"] = next_milestone(after) - after
        if after >= next_milestone(before):
            reached = milestone_reached(after)
            effects = Effects(milestone_crossed=reached)
            if reached >= int(new["last_milestone_miles"] or 0):
                new.update(last_milestone_at=ts, last_milestone_miles=reached)
    elif kind == "compensation_granted":
        if _later(new["last_compensated_at"], ts):
            new["last_compensated_at"] = ts
    elif kind == "unsubscribe":
        if _later(new["unsub_ts"], ts):
            new["unsub_ts"] = ts
        new["unsubscribed"] = _unsubscribed(new)
    else:  # consent_changed: the latest one says whether marketing is allowed
        opt_in = bool(event.get("marketing_opt_in"))
        known = stamp(new["consent_ts"])
        # Two at the same time: the opt-out is kept (the safe reading), whichever came last.
        if known is None or ts > known or (ts == known and not opt_in):
            new.update(consent_ts=ts, marketing_opt_in=opt_in)
        if opt_in and _later(new["reconsent_ts"], ts):
            new["reconsent_ts"] = ts
        new["unsubscribed"] = _unsubscribed(new)
    return new, effects


@dataclass(frozen=True)
class Case:
    """A service case as the ledger keeps it (times in UTC; ``opened_at`` None: not seen)."""

    case_id: str
    opened_at: datetime | None
    closed_at: datetime | None
    sentiment: float | None


def project_cases(state: Mapping[str, Any], cases: Iterable[Case]) -> dict[str, Any]:
    """``state`` with its case fields derived from the customer's cases."""
    new = dict(state)
    seen = [c for c in cases if c.opened_at is not None]
    # Ties by id: the oldest open case must not depend on the order the cases were stored in.
    still_open = sorted(
        (c for c in seen if c.closed_at is None),
        key=lambda c: (c.opened_at, c.case_id),
    )
    new["open_case_count"] = len(still_open)
    new["oldest_open_case_at"] = stamp(still_open[0].opened_at) if still_open else None
    new["oldest_open_case_id"] = still_open[0].case_id if still_open else None
    if seen:
        latest = max(seen, key=lambda c: (c.opened_at, c.case_id))
        new["last_case_sentiment"] = latest.sentiment
    return new


def served(state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``schema.REALTIME`` part of a state (what is pushed to the online store)."""
    return {name: state.get(name) for name in schema.REALTIME}
