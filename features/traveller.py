"""Features that carry the heterogeneity: what a traveller is, and how they responded before.

Travel brands segment customers by what they are (cabin, how far ahead they book, weekend or
weekday trips, trip length, business patterns, what they usually pay) and by how they respond
to offers. Both are computed here, point in time, as pure vectorized functions over arrays, on
the timelines of ``features.timeline`` (``features.build`` calls them).

Traveller type (``schema.TRAVELLER``), over every booking before t, lifetime:

* a booking is known at ``booked_at`` with its cabin, route, fare and departure. Its *status*
  is not used: the raw table holds only the final status, without the time it changed, so
  leaving out a booking later cancelled would let the future in. A booking the customer later
  cancelled still says what kind of traveller booked it;
* weekdays are those of ``departs_at`` in UTC (the contract has no airport time zones);
* a trip's length is known once both ends are: the first two legs of one booking in
  ``flights`` (when the second becomes known), or a *return booking*, the customer's next
  booking, from the destination back to the origin, departing within
  ``schema.RETURN_WITHIN_DAYS`` after the outbound (when it is booked).

Offer history (``schema.OFFER_HISTORY``), per action including ``none`` (the customer's
baseline response, which an uplift needs next to the response after an offer):

* a decision counts from ``decided_at`` (strictly before t, so never the decision being
  featurized);
* its outcome counts only once observed, ``schema.OUTCOME_DAYS`` after the decision: at t only
  outcomes of decisions with ``decided_at + OUTCOME_DAYS <= t`` are counted. The window of the
  outcome sums is on that observation time: outcomes observed in ``[t - window, t)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import schema
from features.timeline import MS_PER_DAY, Clock, Timeline

_PREMIUM = np.array(["premium", "business", "first"], dtype=object)
# 1970-01-01 was a Thursday: (days since the epoch + 3) % 7 is 0 on Mondays.
_EPOCH_WEEKDAY = 3


def weekday(t_ms: np.ndarray) -> np.ndarray:
    """Day of the week (UTC) of epoch milliseconds: 0 Monday ... 6 Sunday."""
    return (np.floor_divide(t_ms, MS_PER_DAY) + _EPOCH_WEEKDAY) % 7


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0 (no evidence is not a share of 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def leg_trips(
    booking_ids: np.ndarray, codes: np.ndarray, scheduled_ms: np.ndarray, known_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trips from the legs of one booking: ``(customer code, known ms, trip days)``.

    A booking's first two legs to become known (``known_ms`` order) make a trip when they are
    scheduled at least ``schema.CONNECTION_HOURS`` apart (closer legs are a connection); its
    length is the time between their departures, known with the second. Taking the first two
    *known* legs keeps it point in time: a leg known later can never change an earlier trip.
    """
    if len(booking_ids) == 0:
        return _no_trips()
    group = pd.factorize(booking_ids)[0]
    order = np.lexsort((known_ms, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    two = starts[ends - starts >= 2]
    first, second = order[two], order[two + 1]
    days = np.abs(scheduled_ms[second] - scheduled_ms[first]) / MS_PER_DAY
    trip = days * 24 >= schema.CONNECTION_HOURS
    return codes[first][trip], known_ms[second][trip], days[trip]


def return_trips(
    codes: np.ndarray,
    origin: np.ndarray,
    destination: np.ndarray,
    departs_ms: np.ndarray,
    booked_ms: np.ndarray,
    within_days: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trips from return bookings: ``(customer code, known ms, trip days)`` per return.

    A booking r is the return of b when it is the customer's next booking after b (in booking
    order), goes back from b's destination to b's origin and departs in
    ``(departure of b, + within_days]``; the trip is known when r is booked. Of a run of such
    back-and-forth bookings every other one is a return (the first is an outbound), so a
    commuter's trips are not counted twice. Everything here depends only on bookings made
    before r, so a later booking never changes an earlier trip.
    """
    n = len(codes)
    if n < 2:
        return _no_trips()
    order = np.lexsort((departs_ms, booked_ms, codes))
    c, o, d = codes[order], origin[order], destination[order]
    dep, booked = departs_ms[order], booked_ms[order]
    candidate = np.zeros(n, dtype=bool)
    candidate[1:] = (
        (c[1:] == c[:-1])
        & (o[1:] == d[:-1])
        & (d[1:] == o[:-1])
        & (dep[1:] > dep[:-1])
        & (dep[1:] - dep[:-1] <= within_days * MS_PER_DAY)
    )
    # Within a run of consecutive candidates the 1st, 3rd, ... are returns (rank parity).
    run_start = candidate & ~np.r_[False, candidate[:-1]]
    run_id = np.cumsum(run_start)
    first_of_run = np.r_[0, np.flatnonzero(run_start)]
    rank = np.arange(n) - first_of_run[run_id]
    is_return = candidate & (rank % 2 == 0)
    r = np.flatnonzero(is_return)
    return c[r], booked[r], (dep[r] - dep[r - 1]) / MS_PER_DAY


def _no_trips() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, np.zeros(0, dtype=np.float64)


def traveller_type(
    clock: Clock,
    bookings: dict[str, np.ndarray],
    trips: tuple[np.ndarray, np.ndarray, np.ndarray],
    q_codes: np.ndarray,
    q_ms: np.ndarray,
) -> dict[str, np.ndarray]:
    """The ``schema.TRAVELLER`` features at each query (customer code, t in ms).

    Args:
        clock: the key clock of the build (every time below inside its range).
        bookings: aligned arrays ``codes``, ``booked_ms``, ``departs_ms``, ``cabin`` and
            ``fare`` (in the base currency).
        trips: ``(customer code, known ms, trip days)`` of the inferred trips.
        q_codes, q_ms: the queries.

    Returns:
        Feature name -> float array; NaN where the customer has no booking (or trip) before t.
    """
    booked = Timeline(clock, bookings["codes"], bookings["booked_ms"])
    n = booked.count_in(q_codes, q_ms, None).astype(np.float64)
    lead = np.maximum(bookings["departs_ms"] - bookings["booked_ms"], 0) / MS_PER_DAY
    dow = weekday(bookings["departs_ms"])
    premium = np.isin(bookings["cabin"], _PREMIUM).astype(np.float64)
    business = ((lead <= schema.BUSINESS_LEAD_DAYS) & (dow < 5)).astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return _ratio(booked.sum_in(values, q_codes, q_ms, None), n)

    trip_line = Timeline(clock, trips[0], trips[1])
    return {
        "premium_cabin_share": mean(premium),
        # A geometric mean of (1 + lead): one holiday planned a year ahead does not make a
        # last-minute traveller look like a planner (a median is not a prefix sum).
        "typical_lead_days": np.expm1(mean(np.log1p(lead))),
        "weekend_departure_share": mean((dow >= 5).astype(np.float64)),
        "business_trip_share": mean(business),
        "typical_trip_days": _ratio(
            trip_line.sum_in(trips[2], q_codes, q_ms, None),
            trip_line.count_in(q_codes, q_ms, None).astype(np.float64),
        ),
        # Not rounded: a mean is no amount to the cent, and rounding a float sum can flip a
        # cent when unrelated rows change the prefix sums' rounding error.
        "expected_fare": mean(bookings["fare"]),
    }


def offer_history(
    clock: Clock,
    codes: np.ndarray,
    decided_ms: np.ndarray,
    action: np.ndarray,
    outcome_pos: np.ndarray,
    converted: np.ndarray,
    revenue: np.ndarray,
    q_codes: np.ndarray,
    q_ms: np.ndarray,
) -> dict[str, np.ndarray]:
    """The ``schema.OFFER_HISTORY`` features at each query (customer code, t in ms).

    Args:
        clock: the key clock of the build.
        codes, decided_ms, action: the logged decisions (``actions``), aligned.
        outcome_pos: for each decision, its row in the outcome arrays, or -1 (no outcome).
        converted, revenue: the ``outcomes`` columns.
        q_codes, q_ms: the queries.
    """
    w = schema.HISTORY_WINDOW
    has = outcome_pos >= 0
    conv = np.zeros(len(codes), dtype=np.float64)
    rev = np.zeros(len(codes), dtype=np.float64)
    conv[has] = converted[outcome_pos[has]]
    rev[has] = revenue[outcome_pos[has]]
    # An outcome is observed OUTCOME_DAYS after its decision, and not a millisecond earlier.
    observed_ms = decided_ms + schema.OUTCOME_DAYS * MS_PER_DAY
    out: dict[str, np.ndarray] = {}
    for a in schema.HISTORY_ACTIONS:
        sel = action == a
        taken = Timeline(clock, codes[sel], decided_ms[sel])
        out[f"decisions_{a}_{w}d"] = taken.count_in(q_codes, q_ms, w)
        seen = sel & has
        observed = Timeline(clock, codes[seen], observed_ms[seen])
        out[f"conversions_after_{a}_{w}d"] = np.round(
            observed.sum_in(conv[seen], q_codes, q_ms, w)
        ).astype(np.int64)
        out[f"revenue_after_{a}_{w}d"] = observed.sum_in(rev[seen], q_codes, q_ms, w)
    return out
