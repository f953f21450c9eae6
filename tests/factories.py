"""Tiny hand-made raw data for unit tests, valid under the raw data contract, in canonical types."""

from __future__ import annotations

import pandas as pd

from features.contract import ACTIONS, RawData


def _utc(*values: str | None) -> pd.Series:
    """ISO strings (None for null) as ``datetime64[ns, UTC]``."""
    return pd.Series(pd.to_datetime(list(values), utc=True, format="ISO8601")).astype(
        "datetime64[ns, UTC]"
    )


def _strings(*values: str | None) -> pd.Series:
    return pd.Series(list(values), dtype=object)


def tiny_raw() -> RawData:
    """A small valid world: four customers and a few rows in every table, truth included.

    C1 books LHR-JFK and gets a promo that converts; C2's flight is three hours late, their case
    is still open and they get an apology credit; C3 opted out of marketing and cancelled a
    booking; C4's flight was cancelled by the carrier, their case was closed with compensation
    and they get recognition. One web event is anonymous.
    """
    customers = pd.DataFrame(
        {
            "customer_id": _strings("C1", "C2", "C3", "C4"),
            "created_at": _utc(
                "2022-03-01T08:00:00Z",
                "2023-06-15T12:30:00Z",
                "2023-09-01T00:00:00Z",
                "2024-01-10T18:45:30.250Z",
            ),
            "home_airport": _strings("LHR", "CDG", None, "JFK"),
            "marketing_opt_in": [True, True, False, True],
            "prior_miles": pd.Series([120_000, 0, 5_000, 40_000], dtype="int64"),
        }
    )
    bookings = pd.DataFrame(
        {
            "booking_id": _strings("B1", "B2", "B3", "B4"),
            "customer_id": _strings("C1", "C2", "C3", "C4"),
            "booked_at": _utc(
                "2024-03-01T10:00:00Z",
                "2024-03-05T09:00:00Z",
                "2024-03-07T20:00:00Z",
                "2024-03-08T07:15:00Z",
            ),
            "departs_at": _utc(
                "2024-04-01T10:00:00Z",
                "2024-03-20T06:00:00Z",
                "2024-05-01T12:00:00Z",
                "2024-03-25T16:40:00Z",
            ),
            "origin": _strings("LHR", "CDG", "LHR", "JFK"),
            "destination": _strings("JFK", "LHR", "FCO", "LHR"),
            "fare": [420.0, 189.99, 95.5, 610.25],
            "currency": _strings("GBP", "EUR", "GBP", "USD"),
            "cabin": _strings("business", "economy", "economy", "premium"),
            "channel": _strings("web", "app", "agent", "call_center"),
            "status": _strings(
                "confirmed", "confirmed", "cancelled_by_customer", "cancelled_by_carrier"
            ),
        }
    )
    flights = pd.DataFrame(
        {
            "booking_id": _strings("B1", "B2", "B4"),
            "customer_id": _strings("C1", "C2", "C4"),
            "scheduled_at": _utc(
                "2024-04-01T10:00:00Z", "2024-03-20T06:00:00Z", "2024-03-25T16:40:00Z"
            ),
            "delay_minutes": pd.Series([0, 180, 0], dtype="int64"),
            "cancelled": [False, False, True],
            "miles_earned": pd.Series([3_450, 210, 0], dtype="int64"),
        }
    )
    service_cases = pd.DataFrame(
        {
            "case_id": _strings("S1", "S2"),
            "customer_id": _strings("C2", "C4"),
            "opened_at": _utc("2024-03-20T11:00:00Z", "2024-03-25T18:00:00Z"),
            "closed_at": _utc(None, "2024-03-27T09:30:00Z"),
            "channel": _strings("chat", "phone"),
            "topic": _strings("delay", "cancellation"),
            "sentiment": [-0.7, None],
            "compensated": [False, True],
        }
    )
    web_events = pd.DataFrame(
        {
            "event_id": _strings("W1", "W2", "W3", "W4"),
            "customer_id": _strings("C1", "C1", None, "C2"),
            "session_id": _strings("s-1", "s-1", "s-2", "s-3"),
            "ts": _utc(
                "2024-02-28T21:00:00Z",
                "2024-02-28T21:02:10Z",
                "2024-03-02T07:00:00Z",
                "2024-03-04T13:00:00Z",
            ),
            "event_type": _strings("search", "view", "search", "abandon"),
            "origin": _strings("LHR", "LHR", None, "CDG"),
            "destination": _strings("JFK", "JFK", None, "LHR"),
        }
    )
    email_events = pd.DataFrame(
        {
            "customer_id": _strings("C1", "C1", "C3", "C3"),
            "ts": _utc(
                "2024-02-20T09:00:00Z",
                "2024-02-20T10:15:00Z",
                "2024-02-20T09:00:00Z",
                "2024-02-21T08:00:00Z",
            ),
            "campaign_id": _strings("spring-24", "spring-24", "spring-24", "spring-24"),
            "event_type": _strings("sent", "open", "sent", "unsubscribe"),
        }
    )
    actions = pd.DataFrame(
        {
            "decision_id": _strings("D1", "D2", "D3", "D4"),
            "customer_id": _strings("C1", "C2", "C4", "C3"),
            "decided_at": _utc(
                "2024-02-28T21:05:00Z",
                "2024-03-21T08:00:00Z",
                "2024-03-28T10:00:00Z",
                "2024-03-29T10:00:00Z",
            ),
            "action": _strings("promo", "apology_credit", "recognition", "none"),
            "policy": _strings("random", "rules-v1", "rules-v1", "random"),
            "propensity": [0.25, 0.85, 0.85, 1 / 3],
            "channel": _strings("web", "app", "email", "web"),
        }
    )
    outcomes = pd.DataFrame(
        {
            "decision_id": _strings("D1", "D2", "D3", "D4"),
            "converted": [True, False, True, False],
            "revenue": [420.0, 0.0, 310.0, 0.0],
            "unsubscribed": [False, False, False, True],
        }
    )
    truth = pd.DataFrame({"decision_id": _strings("D1", "D2", "D3", "D4")})
    for k, action in enumerate(ACTIONS):
        truth[f"p_convert_{action}"] = [0.30 + k / 20, 0.10, 0.20, 0.05]
        truth[f"revenue_{action}"] = [126.0 + k, 19.0, 62.0, 4.5]
        truth[f"p_unsubscribe_{action}"] = [0.02, 0.01, 0.0, 0.04 + k / 100]
    return RawData(
        customers=customers,
        bookings=bookings,
        flights=flights,
        service_cases=service_cases,
        web_events=web_events,
        email_events=email_events,
        actions=actions,
        outcomes=outcomes,
        truth=truth,
    )
