"""Traveller type and offer history: hand-checked values, and proof that nothing leaks.

The leakage property builds the features twice: from the full raw tables, and from only what
was known at t (bookings booked before t, legs known before t, decisions before t, outcomes
observed before t). Both must agree, whatever the tables hold.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import schema
from features.build import build_features
from features.contract import ACTIONS, RawData
from features.traveller import return_trips, weekday
from tests.unit.test_features import hand_world, ts

NEW = [*schema.TRAVELLER, *schema.OFFER_HISTORY]
DAY = pd.Timedelta(days=1)


def booking(bid: str, cust: str, booked: str, departs: str, route: str, cabin: str, fare: float,
            currency: str = "USD") -> dict[str, object]:  # fmt: skip
    origin, destination = route.split("-")
    return {
        "booking_id": bid, "customer_id": cust, "booked_at": pd.Timestamp(booked),
        "departs_at": pd.Timestamp(departs), "origin": origin, "destination": destination,
        "fare": fare, "currency": currency, "cabin": cabin, "channel": "web",
        "status": "confirmed",
    }  # fmt: skip


def bookings_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in ("booked_at", "departs_at"):
        frame[col] = frame[col].astype("datetime64[ns, UTC]")
    return frame


def traveller_world() -> RawData:
    """Customer A: a short-lead business trip with a return booking, then a holiday in EUR."""
    rows = [
        # Monday -> Thursday (lead 3 days, weekday): the business pattern, in business class.
        booking("t1", "A", "2026-01-05T00:00Z", "2026-01-08T00:00Z", "JFK-LHR", "business", 1000),
        # Its return: the next booking, back, departing 16 days later, on a Saturday.
        booking("t2", "A", "2026-01-20T00:00Z", "2026-01-24T00:00Z", "LHR-JFK", "economy", 200),
        # Booked 60 days ahead, on a Thursday; its two legs (flights) make a 7-day trip.
        booking(
            "t3", "A", "2026-02-01T00:00Z", "2026-04-02T00:00Z", "JFK-CDG", "economy", 300, "EUR"
        ),
    ]
    flights = pd.DataFrame(
        {
            "booking_id": ["t3", "t3"],
            "customer_id": ["A", "A"],
            "scheduled_at": ts("2026-04-02T00:00:00Z", "2026-04-09T00:00:00Z"),
            "delay_minutes": np.array([0, 60], dtype=np.int64),
            "cancelled": [False, False],
            "miles_earned": np.array([1_000, 1_000], dtype=np.int64),
        }
    )
    base = hand_world()
    return replace(
        base,
        bookings=bookings_frame(rows),
        flights=flights,
        service_cases=base.service_cases.iloc[:0],
        actions=base.actions.iloc[:0],
        outcomes=base.outcomes.iloc[:0],
    )


def features_at(world: RawData, when: str, customer: str = "A") -> pd.Series:
    points = pd.DataFrame({"customer_id": [customer], "event_timestamp": ts(when)})
    return build_features(world, points, base_currency="USD", fx_rates={"EUR": 1.1}).iloc[0]


def test_weekday() -> None:
    # 2026-01-05 is a Monday, 2026-01-24 a Saturday; before the epoch too.
    stamps = pd.to_datetime(["2026-01-05T00:00", "2026-01-24T23:59", "1969-12-28T12:00"], utc=True)
    assert list(weekday(stamps.as_unit("ns").asi8 // 1_000_000)) == [0, 5, 6]


def test_traveller_hand_values() -> None:
    world = traveller_world()
    row = features_at(world, "2026-01-21T00:00:00Z")
    assert row.premium_cabin_share == pytest.approx(0.5)
    assert row.weekend_departure_share == pytest.approx(0.5)
    # t2 departs 4 days after booking but on a Saturday: not the business pattern.
    assert row.business_trip_share == pytest.approx(0.5)
    assert row.typical_lead_days == pytest.approx(np.sqrt(4 * 5) - 1)
    assert row.typical_trip_days == pytest.approx(16.0)
    assert row.expected_fare == pytest.approx(600.0)

    later = features_at(world, "2026-05-01T00:00:00Z")
    assert later.typical_trip_days == pytest.approx((16 + 7) / 2)
    assert later.expected_fare == pytest.approx((1000 + 200 + 330) / 3)
    assert later.premium_cabin_share == pytest.approx(1 / 3)


def test_traveller_point_in_time() -> None:
    world = traveller_world()
    # t2 booked at exactly t: not yet known, so no trip and one booking.
    row = features_at(world, "2026-01-20T00:00:00Z")
    assert row.expected_fare == pytest.approx(1000.0) and np.isnan(row.typical_trip_days)
    # t3's second leg is known at 04-09 01:00 (its delay): the 7-day trip only after that.
    before = features_at(world, "2026-04-09T00:30:00Z")
    after = features_at(world, "2026-04-09T01:00:01Z")
    assert before.typical_trip_days == pytest.approx(16.0)
    assert after.typical_trip_days == pytest.approx(11.5)
    # No booking at all: every traveller feature is missing, not zero.
    empty = features_at(world, "2025-12-01T00:00:00Z")
    assert all(np.isnan(empty[name]) for name in schema.TRAVELLER)


def test_commuter_trips_are_not_counted_twice() -> None:
    day = 86_400_000
    codes = np.zeros(4, dtype=np.int64)
    origin = np.array(["JFK", "LHR", "JFK", "LHR"], dtype=object)
    dest = np.array(["LHR", "JFK", "LHR", "JFK"], dtype=object)
    departs = np.array([10, 13, 20, 25], dtype=np.int64) * day
    booked = np.array([1, 2, 3, 4], dtype=np.int64) * day
    _, known, days = return_trips(codes, origin, dest, departs, booked, 30)
    # JFK->LHR->JFK (3 days) and again (5 days); LHR->JFK->LHR is the stay at home, not a trip.
    assert list(days) == [3.0, 5.0] and list(known) == [2 * day, 4 * day]


def history_world() -> RawData:
    base = hand_world()
    decided = ts(
        "2026-01-10T00:00:00Z",  # promo, converted for 250: observed 02-09
        "2026-03-01T00:00:00Z",  # promo, not converted: observed 03-31
        "2026-03-15T00:00:00Z",  # apology credit, converted for 100: observed 04-14
        "2025-01-01T00:00:00Z",  # none, converted: observed 2025-01-31, outside the year
        "2026-03-10T00:00:00Z",  # B's promo: never A's
    )
    actions = pd.DataFrame(
        {
            "decision_id": ["h1", "h2", "h3", "h4", "h5"],
            "customer_id": ["A", "A", "A", "A", "B"],
            "decided_at": decided,
            "action": ["promo", "promo", "apology_credit", "none", "promo"],
            "policy": ["random"] * 5,
            "propensity": [0.25] * 5,
            "channel": ["web"] * 5,
        }
    )
    outcomes = pd.DataFrame(
        {
            "decision_id": ["h1", "h2", "h3", "h4", "h5"],
            "converted": [True, False, True, True, True],
            "revenue": [250.0, 0.0, 100.0, 80.0, 999.0],
            "unsubscribed": [False] * 5,
        }
    )
    return replace(base, actions=actions, outcomes=outcomes)


def test_offer_history_hand_values() -> None:
    row = features_at(history_world(), "2026-03-20T00:00:00Z")
    assert row.decisions_promo_365d == 2
    assert row.conversions_after_promo_365d == 1 and row.revenue_after_promo_365d == 250.0
    # The credit's outcome is not observed before 04-14.
    assert row.decisions_apology_credit_365d == 1
    assert row.conversions_after_apology_credit_365d == 0
    assert row.revenue_after_apology_credit_365d == 0.0
    # The 2025 decision and its outcome are older than the window.
    assert row.decisions_none_365d == 0 and row.conversions_after_none_365d == 0
    later = features_at(history_world(), "2026-04-15T00:00:00Z")
    assert later.conversions_after_apology_credit_365d == 1
    assert later.revenue_after_apology_credit_365d == 100.0
    assert later.conversions_after_promo_365d == 1  # h2 observed, not converted


def test_outcome_counts_only_once_observed() -> None:
    world = history_world()
    # h1 (2026-01-10) is observed at exactly 02-09: strictly before t is the rule, as for every
    # other record, so it counts from the next millisecond.
    at_horizon = features_at(world, "2026-02-09T00:00:00Z")
    just_after = features_at(world, "2026-02-09T00:00:00.001Z")
    assert at_horizon.decisions_promo_365d == 1
    assert at_horizon.conversions_after_promo_365d == 0
    assert just_after.conversions_after_promo_365d == 1


def test_own_decision_and_pending_outcomes_never_leak() -> None:
    """At each logged decision, changing its own outcome, or any outcome whose 30 days have
    not passed, or dropping later decisions, leaves its features unchanged."""
    world = history_world()
    points = pd.DataFrame(
        {
            "customer_id": world.actions["customer_id"],
            "event_timestamp": world.actions["decided_at"],
        }
    )
    base = build_features(world, points)[NEW]
    decided = world.actions["decided_at"]
    for i, when in enumerate(decided):
        pending = (decided + pd.Timedelta(days=schema.OUTCOME_DAYS) >= when).to_numpy()
        flipped = world.outcomes.copy()
        flipped.loc[pending, "converted"] = ~flipped.loc[pending, "converted"]
        flipped.loc[pending, "revenue"] = flipped.loc[pending, "revenue"] + 1_000.0
        assert pending[i]  # its own outcome is among them
        later = (decided > when).to_numpy()
        changed = replace(
            world,
            outcomes=flipped,
            actions=world.actions[~later].reset_index(drop=True),
        )
        row = build_features(changed, points.iloc[[i]])[NEW]
        pd.testing.assert_frame_equal(row, base.iloc[[i]].reset_index(drop=True))


def test_history_actions_are_the_contract_actions() -> None:
    assert schema.HISTORY_ACTIONS == ACTIONS
    assert set(NEW) <= set(schema.PROFILE) and set(NEW) <= set(schema.MODEL_FEATURES)


AIRPORTS = ["JFK", "LHR", "CDG"]
T_LO = pd.Timestamp("2025-01-01T00:00:00Z")


@st.composite
def random_world(draw: st.DrawFn) -> tuple[RawData, pd.Timestamp]:
    """Two customers with random bookings, legs, decisions and outcomes, and a query time."""
    hours = st.integers(0, 500 * 24)
    rows = []
    legs: list[dict[str, object]] = []
    for k in range(draw(st.integers(0, 10))):
        booked = T_LO + pd.Timedelta(hours=draw(hours))
        departs = booked + pd.Timedelta(hours=draw(st.integers(0, 90 * 24)))
        o, d = draw(st.permutations(AIRPORTS))[:2]
        cust = draw(st.sampled_from(["A", "B"]))
        rows.append(booking(f"r{k}", cust, str(booked), str(departs), f"{o}-{d}",
                            draw(st.sampled_from(["economy", "business"])),
                            float(draw(st.integers(0, 2_000)))))  # fmt: skip
        for _j in range(draw(st.integers(0, 3))):
            legs.append({"booking_id": f"r{k}", "customer_id": cust,
                         "scheduled_at": departs + pd.Timedelta(hours=draw(st.integers(0, 400))),
                         "delay_minutes": draw(st.integers(0, 600)), "cancelled": False,
                         "miles_earned": 100})  # fmt: skip
    n = draw(st.integers(0, 10))
    actions = pd.DataFrame(
        {
            "decision_id": [f"q{i}" for i in range(n)],
            "customer_id": [draw(st.sampled_from(["A", "B"])) for _ in range(n)],
            "decided_at": pd.Series(
                [T_LO + pd.Timedelta(hours=draw(hours)) for _ in range(n)],
                dtype="datetime64[ns, UTC]",
            ),
            "action": [draw(st.sampled_from(ACTIONS)) for _ in range(n)],
            "policy": ["random"] * n,
            "propensity": [0.25] * n,
            "channel": ["web"] * n,
        }
    )
    converted = [draw(st.booleans()) for _ in range(n)]
    outcomes = pd.DataFrame(
        {
            "decision_id": actions["decision_id"],
            "converted": converted,
            "revenue": [float(draw(st.integers(1, 900))) if c else 0.0 for c in converted],
            "unsubscribed": [False] * n,
        }
    )
    base = hand_world()
    flights = pd.DataFrame(legs) if legs else base.flights.iloc[:0]
    if legs:
        flights["scheduled_at"] = flights["scheduled_at"].astype("datetime64[ns, UTC]")
        flights = flights.astype({"delay_minutes": np.int64, "miles_earned": np.int64})
    world = replace(
        base,
        bookings=bookings_frame(rows) if rows else base.bookings.iloc[:0],
        flights=flights,
        service_cases=base.service_cases.iloc[:0],
        actions=actions,
        outcomes=outcomes,
    )
    return world, T_LO + pd.Timedelta(hours=draw(st.integers(0, 560 * 24)))


def known_at(world: RawData, t: pd.Timestamp) -> RawData:
    """Only what was known before t."""
    b = world.bookings
    f = world.flights
    known_leg = f["scheduled_at"] + pd.to_timedelta(f["delay_minutes"], unit="min") < t
    a = world.actions
    observed = a["decided_at"] + pd.Timedelta(days=schema.OUTCOME_DAYS) < t
    return replace(
        world,
        bookings=b[b["booked_at"] < t].reset_index(drop=True),
        flights=f[known_leg].reset_index(drop=True),
        actions=a[a["decided_at"] < t].reset_index(drop=True),
        outcomes=world.outcomes[
            world.outcomes["decision_id"].isin(a["decision_id"][observed])
        ].reset_index(drop=True),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_world())
def test_features_at_t_depend_only_on_what_was_known(case: tuple[RawData, pd.Timestamp]) -> None:
    world, t = case
    points = pd.DataFrame({"customer_id": ["A", "B"], "event_timestamp": ts(str(t), str(t))})
    full = build_features(world, points)[NEW]
    censored = build_features(known_at(world, t), points)[NEW]
    pd.testing.assert_frame_equal(full, censored)
