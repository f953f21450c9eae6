"""The customer feature table: column names, types and which Feast view serves them.

This module is the single source of truth shared by the feature builder (``features.build``),
the request-time derivation (``features.derive``), the Feast declarations (``feature_repo/``)
and the event folding used by real-time pushes (``memory.fold``).

Two groups of stored features:

* ``PROFILE`` – window aggregates and slowly moving state, recomputed by ``nba features`` and
  materialized into the online store.
* ``REALTIME`` – event-driven state (service cases, disruptions, compensation, unsubscribe,
  last booking). Materialized like the profile, and also updated at once through the Feast
  PushSource when ``/events`` reports a change.

Time-relative features ("days since X") are *not* stored: they would go stale between
materializations. The stored timestamps are turned into durations against the request time by
``features.derive.derive_features`` (the ``DERIVED`` columns), which serves batch, training and
requests alike.
"""

from __future__ import annotations

from typing import Final, Literal

FeatureType = Literal["int", "float", "bool", "timestamp", "string"]

ENTITY: Final = "customer_id"
EVENT_TIMESTAMP: Final = "event_timestamp"

#: Window lengths (days) of the booking aggregates.
BOOKING_WINDOWS: Final = (7, 30, 90, 365)
#: Window lengths (days) of the clickstream aggregates.
WEB_WINDOWS: Final = (7, 30)
#: Window (days) of the email engagement rates.
EMAIL_WINDOW: Final = 90
#: Window (days) of ``worst_delay_30d``.
DELAY_WINDOW: Final = 30
#: A delay at least this long is a negative experience.
SEVERE_DELAY_MINUTES: Final = 120
#: Lifetime-mile milestones: 100k, then every million.
FIRST_MILESTONE: Final = 100_000
MILESTONE_STEP: Final = 1_000_000
#: Service-case topics that count as a complaint (a negative experience) whatever the sentiment;
#: a case on another topic counts when its sentiment is below zero.
COMPLAINT_TOPICS: Final = frozenset({"delay", "cancellation", "baggage", "refund", "service"})
#: A booking departing at most this many days after it was made, on a weekday, fits the
#: business pattern (``business_trip_share``).
BUSINESS_LEAD_DAYS: Final = 7
#: A booking back from the destination to the origin departing within this many days after an
#: outbound is its return (``typical_trip_days``).
RETURN_WITHIN_DAYS: Final = 30
#: Two legs of one booking scheduled less than this many hours apart are a connection, not a trip.
CONNECTION_HOURS: Final = 12
#: Window (days) of the customer's own offer and response history.
HISTORY_WINDOW: Final = 365
#: An outcome is observed this many days after its decision (the raw contract's horizon): only
#: then may a feature count it.
OUTCOME_DAYS: Final = 30
#: The actions of the offer history (``features.contract.ACTIONS``; ``none`` is the baseline).
HISTORY_ACTIONS: Final = ("promo", "apology_credit", "recognition", "none")

#: What kind of traveller: every booking before t (``features.traveller``). NaN without one.
TRAVELLER: Final[dict[str, FeatureType]] = {
    # Share of bookings in premium economy, business or first.
    "premium_cabin_share": "float",
    # Geometric mean of (1 + days from booking to departure), minus 1.
    "typical_lead_days": "float",
    # Share of bookings departing on a Saturday or Sunday (UTC).
    "weekend_departure_share": "float",
    # Share of bookings departing Monday-Friday within BUSINESS_LEAD_DAYS of booking.
    "business_trip_share": "float",
    # Mean days between a trip's outbound and return departures (NaN: no trip inferred).
    "typical_trip_days": "float",
    # Mean fare of the bookings, in the base currency: what a conversion is worth.
    "expected_fare": "float",
}


def _history_columns(action: str) -> dict[str, FeatureType]:
    """The offer-history columns of one action."""
    w = HISTORY_WINDOW
    return {
        f"decisions_{action}_{w}d": "int",
        f"conversions_after_{action}_{w}d": "int",
        f"revenue_after_{action}_{w}d": "float",
    }


#: The customer's own offers and responses per action (``features.traveller.offer_history``):
#: decisions in the window, and conversions and revenue of those whose outcome was observed in
#: it (OUTCOME_DAYS after the decision).
OFFER_HISTORY: Final[dict[str, FeatureType]] = {
    name: kind for a in HISTORY_ACTIONS for name, kind in _history_columns(a).items()
}

PROFILE: Final[dict[str, FeatureType]] = {
    **{f"bookings_{w}d": "int" for w in BOOKING_WINDOWS},
    **{f"revenue_{w}d": "float" for w in BOOKING_WINDOWS},
    **{f"searches_{w}d": "int" for w in WEB_WINDOWS},
    **{f"abandons_{w}d": "int" for w in WEB_WINDOWS},
    f"emails_sent_{EMAIL_WINDOW}d": "int",
    f"email_open_rate_{EMAIL_WINDOW}d": "float",
    f"email_click_rate_{EMAIL_WINDOW}d": "float",
    "created_at": "timestamp",
    **TRAVELLER,
    **OFFER_HISTORY,
}

REALTIME: Final[dict[str, FeatureType]] = {
    "open_case_count": "int",
    "oldest_open_case_at": "timestamp",
    "oldest_open_case_id": "string",
    "last_case_sentiment": "float",
    "last_negative_at": "timestamp",
    "last_negative_kind": "string",
    "last_negative_delay_minutes": "int",
    f"worst_delay_{DELAY_WINDOW}d": "int",
    "last_compensated_at": "timestamp",
    "unsubscribed": "bool",
    "last_booking_at": "timestamp",
    # Moved here from PROFILE (same values, same build): a flown leg (flight_flown) and a
    # consent change must reach the next decision at once, so they are pushed with the rest.
    "lifetime_miles": "int",
    "miles_to_next_milestone": "int",
    "last_milestone_at": "timestamp",
    "last_milestone_miles": "int",
    "marketing_opt_in": "bool",
}

#: Every stored feature column, profile first.
STORED: Final[dict[str, FeatureType]] = {**PROFILE, **REALTIME}

#: Features computed against the request (or decision) time from stored timestamps.
DERIVED: Final[dict[str, FeatureType]] = {
    "tenure_days": "float",
    "days_since_last_booking": "float",
    "days_since_last_negative": "float",
    "days_since_last_milestone": "float",
    "oldest_open_case_age_days": "float",
    "compensated_since_last_negative": "bool",
}

#: The numeric model inputs: stored non-timestamp, non-string features plus the derived ones.
MODEL_FEATURES: Final[tuple[str, ...]] = tuple(
    [name for name, kind in STORED.items() if kind in ("int", "float", "bool")] + list(DERIVED)
)

#: Names of the Feast objects declared in ``feature_repo/``.
PROFILE_VIEW: Final = "customer_profile"
REALTIME_VIEW: Final = "customer_realtime"
PUSH_SOURCE: Final = "customer_events_push"
FEATURE_SERVICE: Final = "nba_customer_v1"
