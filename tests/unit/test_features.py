"""Point-in-time features: hand-checked values, and proof that the future never leaks in."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import schema
from features.build import build_feature_table, build_features, next_milestone
from features.contract import RawData
from features.derive import derive_features, derive_row
from nba.simulate import SimulationConfig, simulate

T0 = pd.Timestamp("2026-06-01T12:00:00Z")
END = pd.Timestamp("2026-11-01T00:00:00Z")


def ts(*values: str | None) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True), dtype="datetime64[ns, UTC]")


def hand_world() -> RawData:
    """Two customers with a few records each, chosen so every feature has a known value."""
    return RawData(
        customers=pd.DataFrame(
            {
                "customer_id": ["A", "B"],
                "created_at": ts("2020-01-01T00:00:00Z", "2026-05-01T00:00:00Z"),
                "home_airport": ["JFK", None],
                "marketing_opt_in": [True, False],
                "prior_miles": np.array([99_000, 0], dtype=np.int64),
            }
        ),
        bookings=pd.DataFrame(
            {
                "booking_id": ["b1", "b2", "b3"],
                "customer_id": ["A", "A", "B"],
                "booked_at": ts(
                    "2026-05-30T12:00:00Z", "2026-03-10T00:00:00Z", "2026-05-31T00:00:00Z"
                ),
                "departs_at": ts(
                    "2026-06-10T00:00:00Z", "2026-05-25T00:00:00Z", "2026-06-20T00:00:00Z"
                ),
                "origin": ["JFK", "JFK", "LHR"],
                "destination": ["CDG", "LAX", "JFK"],
                "fare": [500.0, 300.0, 120.0],
                "currency": ["USD"] * 3,
                "cabin": ["economy"] * 3,
                "channel": ["web", "app", "web"],
                "status": ["confirmed", "cancelled_by_customer", "confirmed"],
            }
        ),
        flights=pd.DataFrame(
            {
                "booking_id": ["b2", "b2"],
                "customer_id": ["A", "A"],
                "scheduled_at": ts("2026-05-25T00:00:00Z", "2026-05-28T00:00:00Z"),
                "delay_minutes": np.array([190, 30], dtype=np.int64),
                "cancelled": [False, False],
                "miles_earned": np.array([2_500, 2_500], dtype=np.int64),
            }
        ),
        service_cases=pd.DataFrame(
            {
                "case_id": ["k1", "k2", "k3"],
                "customer_id": ["A", "A", "A"],
                "opened_at": ts(
                    "2026-05-26T00:00:00Z", "2026-05-27T00:00:00Z", "2026-05-29T00:00:00Z"
                ),
                "closed_at": ts("2026-05-27T12:00:00Z", None, "2026-06-05T00:00:00Z"),
                "channel": ["phone", "email", "chat"],
                "topic": ["delay", "seat", "baggage"],
                "sentiment": [-0.7, 0.2, np.nan],
                "compensated": [True, False, True],
            }
        ),
        web_events=pd.DataFrame(
            {
                "event_id": ["w1", "w2", "w3", "w4"],
                "customer_id": ["A", "A", None, "A"],
                "session_id": ["s1", "s1", "s2", "s3"],
                "ts": ts(
                    "2026-05-31T00:00:00Z",
                    "2026-05-31T00:01:00Z",
                    "2026-05-31T00:02:00Z",
                    "2026-05-10T00:00:00Z",
                ),
                "event_type": ["search", "abandon", "search", "search"],
                "origin": ["JFK", None, "JFK", "JFK"],
                "destination": ["CDG", None, "CDG", "LAX"],
            }
        ),
        email_events=pd.DataFrame(
            {
                "customer_id": ["A", "A", "A", "A", "B"],
                "ts": ts(
                    "2026-05-20T00:00:00Z",
                    "2026-05-21T00:00:00Z",
                    "2026-05-27T00:00:00Z",
                    "2026-05-28T00:00:00Z",
                    "2026-05-29T00:00:00Z",
                ),
                "campaign_id": ["c1", "c1", "c2", "c2", "c2"],
                "event_type": ["sent", "open", "sent", "click", "unsubscribe"],
            }
        ),
        actions=pd.DataFrame(
            {
                "decision_id": ["d1"],
                "customer_id": ["A"],
                "decided_at": ts("2026-05-29T06:00:00Z"),
                "action": ["none"],
                "policy": ["random"],
                "propensity": [0.25],
                "channel": ["web"],
            }
        ),
        outcomes=pd.DataFrame(
            {"decision_id": ["d1"], "converted": [False], "revenue": [0.0], "unsubscribed": [False]}
        ),
    )


def at(world: RawData, when: pd.Timestamp, customers: list[str]) -> pd.DataFrame:
    points = pd.DataFrame(
        {"customer_id": customers, "event_timestamp": ts(*[str(when)] * len(customers))}
    )
    return build_features(world, points)


def test_hand_computed_values() -> None:
    row = at(hand_world(), T0, ["A"]).iloc[0]
    assert row.bookings_7d == 1 and row.bookings_90d == 2
    assert row.revenue_7d == 500.0 and row.revenue_90d == 800.0
    assert row.searches_7d == 1 and row.searches_30d == 2 and row.abandons_7d == 1
    assert row.emails_sent_90d == 2
    assert row.email_open_rate_90d == pytest.approx(0.5)
    assert row.email_click_rate_90d == pytest.approx(0.5)
    assert not row.unsubscribed
    # Delayed leg experienced at 2026-05-25 03:10, the second at 05-28 00:30.
    assert row.lifetime_miles == 104_000
    assert row.miles_to_next_milestone == 1_000_000 - 104_000
    assert row.last_milestone_at == pd.Timestamp("2026-05-25T03:10:00Z")
    assert row.last_milestone_miles == 100_000
    assert row.worst_delay_30d == 190
    # k1 closed; k2 (opened 05-27) and k3 (05-29, closes after T0) are open.
    assert row.open_case_count == 2
    assert row.oldest_open_case_id == "k2"
    assert row.oldest_open_case_at == pd.Timestamp("2026-05-27T00:00:00Z")
    assert np.isnan(row.last_case_sentiment)
    # k3 (baggage) is a complaint, later than the delay; k1's compensation came before it.
    assert row.last_negative_at == pd.Timestamp("2026-05-29T00:00:00Z")
    assert row.last_negative_kind == "complaint"
    assert row.last_compensated_at == pd.Timestamp("2026-05-27T12:00:00Z")
    assert row.marketing_opt_in


def test_new_customer_and_unsubscribe() -> None:
    row = at(hand_world(), T0, ["B"]).iloc[0]
    assert row.unsubscribed and not row.marketing_opt_in
    assert row.open_case_count == 0 and pd.isna(row.oldest_open_case_at)
    assert row.oldest_open_case_id is None and row.last_negative_kind is None
    assert np.isnan(row.email_open_rate_90d)
    assert row.lifetime_miles == 0 and row.miles_to_next_milestone == 100_000
    assert pd.isna(row.last_milestone_at) and row.last_milestone_miles == 0


def test_record_at_exactly_t_is_not_before_t() -> None:
    world = hand_world()
    row = at(world, pd.Timestamp("2026-05-29T00:00:00Z"), ["A"]).iloc[0]
    # k3 opened at exactly t: not yet known, so the last negative is k1's complaint.
    assert row.last_negative_at == pd.Timestamp("2026-05-26T00:00:00Z")
    assert row.open_case_count == 1


def test_derived_durations_against_request_time() -> None:
    row = at(hand_world(), T0, ["A"]).iloc[0].to_dict()
    later = T0 + pd.Timedelta(days=3)
    derived = derive_row(row, later.to_pydatetime())
    assert derived["days_since_last_negative"] == pytest.approx(3 + 3.5)
    assert derived["oldest_open_case_age_days"] == pytest.approx(5.5 + 3)
    assert derived["compensated_since_last_negative"] is False
    frame = derive_features(at(hand_world(), T0, ["A", "B"]), T0)
    assert frame.loc[1, "tenure_days"] == pytest.approx(31.5)
    assert np.isnan(frame.loc[1, "days_since_last_negative"])


def test_milestones() -> None:
    assert list(next_milestone(np.array([0, 99_999, 100_000, 999_999, 1_000_000]))) == [
        100_000, 100_000, 1_000_000, 1_000_000, 2_000_000
    ]  # fmt: skip


def test_feature_table_has_decisions_and_snapshot() -> None:
    table = build_feature_table(hand_world(), T0)
    assert list(table.columns) == [schema.ENTITY, schema.EVENT_TIMESTAMP, *schema.STORED]
    assert len(table) == 3  # A at d1 and at T0, B at T0
    at_decision = table[table.event_timestamp == pd.Timestamp("2026-05-29T06:00:00Z")].iloc[0]
    assert at_decision.open_case_count == 2


def test_unknown_customer_is_an_error() -> None:
    with pytest.raises(ValueError, match="not in customers"):
        at(hand_world(), T0, ["nobody"])


def test_several_currencies_need_rates() -> None:
    world = hand_world()
    bookings = world.bookings.assign(currency=["USD", "EUR", "USD"])
    world = replace(world, bookings=bookings)
    with pytest.raises(ValueError, match="several currencies"):
        at(world, T0, ["A"])
    row = build_features(
        world,
        pd.DataFrame({"customer_id": ["A"], "event_timestamp": ts(str(T0))}),
        base_currency="USD",
        fx_rates={"EUR": 2.0},
    ).iloc[0]
    assert row.revenue_90d == 500.0 + 600.0


# --- leakage ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_world() -> RawData:
    return simulate(SimulationConfig(end=END, customers=150, days=120, seed=3))


def known_before(world: RawData, t: pd.Timestamp) -> RawData:
    """The world as a brand would have recorded it by time t (records known strictly before t)."""
    f = world.flights
    experienced = f.scheduled_at + pd.to_timedelta(
        np.where(f.cancelled, 0, f.delay_minutes), unit="min"
    )
    cases = world.service_cases[world.service_cases.opened_at < t].copy()
    not_yet_closed = cases.closed_at.isna() | (cases.closed_at >= t)
    cases.loc[not_yet_closed, "closed_at"] = pd.NaT
    # Compensation is granted at closing: a case not yet closed is not yet compensated.
    cases.loc[not_yet_closed, "compensated"] = False
    return replace(
        world,
        bookings=world.bookings[world.bookings.booked_at < t],
        flights=f[experienced < t],
        service_cases=cases,
        web_events=world.web_events[world.web_events.ts < t],
        email_events=world.email_events[world.email_events.ts < t],
    )


def assert_same_features(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(day=st.integers(1, 119), seconds=st.integers(0, 86_399), who=st.integers(0, 149))
def test_features_use_only_records_known_before_t(
    small_world: RawData, day: int, seconds: int, who: int
) -> None:
    t = END - pd.Timedelta(days=day) + pd.Timedelta(seconds=seconds)
    customer = small_world.customers.customer_id.iloc[who]
    full = at(small_world, t, [customer])
    truncated = at(known_before(small_world, t), t, [customer])
    assert_same_features(full, truncated)


def test_a_record_one_second_later_changes_nothing(small_world: RawData) -> None:
    customers = small_world.customers.customer_id.iloc[:40].tolist()
    t = END - pd.Timedelta(days=20)
    before = at(small_world, t, customers)
    later = t + pd.Timedelta(seconds=1)
    n = len(customers)
    w = small_world
    poisoned = replace(
        w,
        bookings=pd.concat([w.bookings, pd.DataFrame({
            "booking_id": [f"x{i}" for i in range(n)], "customer_id": customers,
            "booked_at": ts(*[str(later)] * n), "departs_at": ts(*[str(later)] * n),
            "origin": "JFK", "destination": "CDG", "fare": 999.0, "currency": "USD",
            "cabin": "first", "channel": "web", "status": "confirmed"})], ignore_index=True),
        flights=pd.concat([w.flights, pd.DataFrame({
            "booking_id": [f"x{i}" for i in range(n)], "customer_id": customers,
            "scheduled_at": ts(*[str(later)] * n), "delay_minutes": np.int64(0),
            "cancelled": True, "miles_earned": np.int64(0)})], ignore_index=True),
        service_cases=pd.concat([w.service_cases, pd.DataFrame({
            "case_id": [f"k{i}" for i in range(n)], "customer_id": customers,
            "opened_at": ts(*[str(later)] * n), "closed_at": ts(*[None] * n),
            "channel": "phone", "topic": "delay", "sentiment": -1.0,
            "compensated": False})], ignore_index=True),
        web_events=pd.concat([w.web_events, pd.DataFrame({
            "event_id": [f"w{i}" for i in range(n)], "customer_id": customers,
            "session_id": "sx", "ts": ts(*[str(later)] * n), "event_type": "abandon",
            "origin": None, "destination": None})], ignore_index=True),
        email_events=pd.concat([w.email_events, pd.DataFrame({
            "customer_id": customers, "ts": ts(*[str(later)] * n), "campaign_id": "cx",
            "event_type": "unsubscribe"})], ignore_index=True),
    )  # fmt: skip
    assert_same_features(before, at(poisoned, t, customers))
    # ...while the same records one second *before* t do change them.
    changed = at(poisoned, later + pd.Timedelta(seconds=1), customers)
    assert (changed.open_case_count > before.open_case_count).all()
    assert changed.unsubscribed.all()


def test_no_points_and_empty_tables() -> None:
    world = hand_world()
    empty = at(world, T0, [])
    assert list(empty.columns) == [schema.ENTITY, schema.EVENT_TIMESTAMP, *schema.STORED]
    assert len(empty) == 0
    bare = replace(
        world,
        flights=world.flights.iloc[:0],
        service_cases=world.service_cases.iloc[:0],
        email_events=world.email_events.iloc[:0],
    )
    row = at(bare, T0, ["A"]).iloc[0]
    assert row.lifetime_miles == 99_000 and pd.isna(row.last_milestone_at)
    assert row.open_case_count == 0 and row.worst_delay_30d == 0
