"""A simulated travel brand: customers, trips, disruptions, complaints, clicks, emails, and a
decision log whose outcomes follow a known causal model (``docs/simulator.md``).

Everything is vectorized numpy so that 100k customers (~10M raw events) take seconds, and
everything is drawn from one seeded generator so that a seed gives the same world. The world's
window ends at ``config.end`` (the CLI passes the current time, so the live service sees current
states).

Decisions are taken by two logged policies: a randomized one (uniform over the allowed actions,
the unbiased data uplift models learn from) and a rule policy (``rules-v1``, epsilon-greedy).
Their outcomes are drawn from probabilities that depend on the customer's latent traits and on
their point-in-time features, computed with the very same ``features.build.build_features`` the
pipeline uses. The true probabilities of every action are written to the ``truth`` table.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import RawData, validate
from nba.decisions import decide, empty_actions, empty_outcomes
from nba.simcore import (
    AIRPORTS,
    DAY_NS,
    HOUR_NS,
    MIN_NS,
    Customers,
    distance_miles,
    ids,
    repeat_poisson,
    routes,
    uniform_between,
    utc,
)
from nba.worlds import PRESETS

__all__ = ["AIRPORTS", "DAY_NS", "HOUR_NS", "MIN_NS", "SCENARIOS", "SimulationConfig", "simulate"]

CABINS = np.array(["economy", "premium", "business", "first"], dtype=object)
CABIN_FARE = np.array([1.0, 1.6, 3.5, 6.0])
CABIN_MILES = np.array([1.0, 1.25, 1.5, 2.0])
CASE_CHANNELS = np.array(["email", "phone", "chat", "social"], dtype=object)
BACKGROUND_TOPICS = np.array(["baggage", "refund", "seat", "service", "other"], dtype=object)

#: A missing value in an object column (np.where's typed stand-in for None).
_NONE = np.array(None, dtype=object)


@dataclass(frozen=True)
class SimulationConfig:
    """Size and behaviour of the simulated world."""

    end: pd.Timestamp
    customers: int = 10_000
    days: int = 365
    seed: int = 0
    #: Share of decisions taken by the randomized policy (the rest by ``rules-v1``).
    random_share: float = 0.8
    #: Background decisions per customer and year (more follow disruptions and milestones).
    decisions_per_year: float = 4.0
    #: Share of web sessions by anonymous visitors.
    anonymous_share: float = 0.2
    #: Days after a decision over which its outcome is observed (the contract's 30).
    outcome_days: int = 30
    #: A shift in the last ``scenario_days`` of the window (``SCENARIOS``), for drift tests.
    scenario: str | None = None
    scenario_days: int = 7
    #: Causal structure of the world: a name in ``nba.worlds.PRESETS``.
    world: str = "default"

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError("customers must be at least 1")
        if self.days <= self.outcome_days:
            raise ValueError(f"days must exceed the {self.outcome_days}-day outcome window")
        if pd.Timestamp(self.end).tzinfo is None:
            raise ValueError("end must be timezone-aware")
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.world not in PRESETS:
            raise ValueError(f"world {self.world!r} is not one of {', '.join(PRESETS)}")
        if not 1 <= self.scenario_days < self.days:
            raise ValueError(f"scenario_days must be in [1, {self.days}), got {self.scenario_days}")


def _customers(cfg: SimulationConfig, rng: np.random.Generator, start_ns: int) -> Customers:
    n, end_ns = cfg.customers, pd.Timestamp(cfg.end).value
    world = PRESETS[cfg.world]
    ps = rng.beta(2.0, 2.5, n)
    trips = np.clip(rng.lognormal(1.0, 0.9, n), 0.2, 150.0)
    tenure_years = rng.exponential(4.0, n)
    created = end_ns - (tenure_years * 365 * DAY_NS).astype(np.int64) - DAY_NS
    codes = np.array(list(AIRPORTS), dtype=object)
    home = codes[rng.integers(0, len(codes), n)].astype(object)
    home[rng.random(n) < 0.03] = None
    years_before = np.maximum(start_ns - created, 0) / (365 * DAY_NS)
    prior = trips * years_before * 2 * 2_600 * rng.lognormal(0.0, 0.3, n)
    return Customers(
        ids=ids("C", n),
        price_sensitivity=ps,
        trips_per_year=trips,
        engagement=rng.beta(1.5, 6.0, n),
        typical_fare=420.0 * (1.0 - 0.35 * ps) * rng.lognormal(0.0, world.typical_fare_sigma, n),
        created_ns=created,
        active_from_ns=np.maximum(created, start_ns),
        home=home,
        opt_in=rng.random(n) < 0.85,
        prior_miles=prior.astype(np.int64),
    )


def simulate(cfg: SimulationConfig, on_step: Callable[[str], None] | None = None) -> RawData:
    """Draw a world in the raw data contract (including ``truth``), validated.

    Args:
        cfg: size, seed and window end of the world.
        on_step: called with a short label as each stage starts (for progress display).
    """
    step = on_step or (lambda _label: None)
    rng = np.random.default_rng(cfg.seed)
    end_ns = pd.Timestamp(cfg.end).tz_convert("UTC").floor("s").value
    start_ns = end_ns - cfg.days * DAY_NS

    step("customers")
    cust = _customers(cfg, rng, start_ns)
    active_years = (end_ns - cust.active_from_ns) / (365 * DAY_NS)

    step("bookings and flights")
    bookings, flights = _trips(rng, cust, active_years, end_ns)
    if cfg.scenario is not None:
        bookings, flights = _shift(cfg, bookings, flights, end_ns)

    step("service cases")
    cases = _cases(rng, cust, flights, active_years, end_ns)

    step("clickstream")
    web = _web(cfg, rng, cust, active_years, flights, end_ns)

    step("email")
    email = _email(rng, cust, start_ns, end_ns)

    customers = pd.DataFrame(
        {
            "customer_id": cust.ids,
            "created_at": utc(cust.created_ns),
            "home_airport": cust.home,
            "marketing_opt_in": cust.opt_in,
            "prior_miles": cust.prior_miles,
        }
    )
    world = RawData(
        customers=customers,
        bookings=bookings,
        flights=flights,
        service_cases=cases,
        web_events=web,
        email_events=email,
        actions=empty_actions(),
        outcomes=empty_outcomes(),
    )

    step("decisions and outcomes")
    world = decide(cfg, rng, cust, world, start_ns, end_ns)

    step("validating")
    # The world's own clock: nothing in it may happen after its window ends (plus the
    # contract's tolerance), whether that end is now (the CLI) or a fixed date (tests).
    validate(world, source="simulator", now=pd.Timestamp(cfg.end).to_pydatetime())
    return world


#: Shift scenarios (``docs/simulator.md``): what changes in the last ``scenario_days``.
SCENARIOS: dict[str, str] = {
    "disruption_wave": "a third of flown legs cancelled, most others delayed by hours",
    "price_shock": "fares of new bookings up 60%",
}


def _shift(
    cfg: SimulationConfig, bookings: pd.DataFrame, flights: pd.DataFrame, end_ns: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply ``cfg.scenario`` to the trips of the last ``cfg.scenario_days``.

    Drawn from a generator of its own, so that the main stream (and with it the world before
    the shift) keeps its draws. Everything downstream (cases, revisits, decision times,
    features) follows from the shifted trips through the usual causal model.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    since = pd.Timestamp(end_ns - cfg.scenario_days * DAY_NS, tz="UTC")
    if cfg.scenario == "disruption_wave":
        flights = flights.copy()
        hit = (flights["scheduled_at"] >= since).to_numpy()
        n = int(hit.sum())
        cancel = rng.random(n) < 0.33
        delay = np.minimum(rng.lognormal(5.0, 0.6, n), 1_440).astype(np.int64)  # median 2.5 h
        delay = np.where(rng.random(n) < 0.8, delay, flights.loc[hit, "delay_minutes"])
        flights.loc[hit, "cancelled"] = flights.loc[hit, "cancelled"].to_numpy() | cancel
        flights.loc[hit, "delay_minutes"] = np.where(cancel, 0, delay)
        flights.loc[hit & flights["cancelled"].to_numpy(), "miles_earned"] = 0
    elif cfg.scenario == "price_shock":
        bookings = bookings.copy()
        hit = (bookings["booked_at"] >= since).to_numpy()
        bookings.loc[hit, "fare"] = np.round(bookings.loc[hit, "fare"].to_numpy() * 1.6, 2)
    return bookings, flights


def _trips(
    rng: np.random.Generator, cust: Customers, active_years: np.ndarray, end_ns: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    owner, _ = repeat_poisson(rng, cust.trips_per_year * active_years)
    nb = len(owner)
    booked = uniform_between(rng, cust.active_from_ns[owner], np.full(nb, end_ns))
    departs = booked + (rng.gamma(2.0, 15.0, nb) * DAY_NS).astype(np.int64) + 2 * HOUR_NS
    origin, dest = routes(rng, cust.home[owner])
    distance = distance_miles(origin, dest)
    ps = cust.price_sensitivity[owner]
    premium_p = 0.35 * (1 - ps) ** 2
    cabin_idx = np.where(
        rng.random(nb) < premium_p, rng.choice([1, 2, 3], nb, p=[0.5, 0.4, 0.1]), 0
    )
    fare = (
        cust.typical_fare[owner]
        * (0.45 + distance / 3_000)
        * CABIN_FARE[cabin_idx]
        * rng.lognormal(-0.045, 0.3, nb)
    )
    status = rng.choice(
        np.array(["confirmed", "cancelled_by_customer", "cancelled_by_carrier"], dtype=object),
        nb,
        p=[0.925, 0.05, 0.025],
    )
    booking_ids = ids("B", nb)
    bookings = pd.DataFrame(
        {
            "booking_id": booking_ids,
            "customer_id": cust.ids[owner],
            "booked_at": utc(booked),
            "departs_at": utc(departs),
            "origin": origin,
            "destination": dest,
            "fare": np.round(fare, 2),
            "currency": np.full(nb, "USD", dtype=object),
            "cabin": CABINS[cabin_idx],
            "channel": rng.choice(
                np.array(["web", "app", "agent", "call_center"], dtype=object),
                nb,
                p=[0.55, 0.25, 0.1, 0.1],
            ),
            "status": status,
        }
    )

    # Legs: outbound, and a return for most trips; only legs already due are in the table.
    travelled = status != "cancelled_by_customer"
    has_return = rng.random(nb) < 0.8
    back = departs + ((1 + rng.poisson(5, nb)) * DAY_NS)
    leg_b = np.concatenate([np.flatnonzero(travelled), np.flatnonzero(travelled & has_return)])
    leg_t = np.concatenate([departs[travelled], back[travelled & has_return]])
    returning = np.arange(len(leg_b)) >= int(travelled.sum())
    due = leg_t <= end_ns - 2 * HOUR_NS
    leg_b, leg_t, returning = leg_b[due], leg_t[due], returning[due]
    nl = len(leg_b)
    cancelled = (status[leg_b] == "cancelled_by_carrier") | (rng.random(nl) < 0.015)
    # Delays: most legs near on time, a heavy log-normal tail (~2.5% of legs >= 120 min).
    late = rng.random(nl) < 0.35
    delay = np.where(
        late,
        np.minimum(rng.lognormal(3.3, 1.0, nl), 1_440),
        rng.integers(0, 15, nl),
    ).astype(np.int64)
    delay[cancelled] = 0
    miles = (distance[leg_b] * CABIN_MILES[cabin_idx[leg_b]]).astype(np.int64)
    miles[cancelled] = 0
    order = np.lexsort((leg_t, owner[leg_b]))
    flights = (
        pd.DataFrame(
            {
                "booking_id": booking_ids[leg_b],
                "customer_id": cust.ids[owner[leg_b]],
                "scheduled_at": utc(leg_t),
                "delay_minutes": delay,
                "cancelled": cancelled,
                "miles_earned": miles,
                "flight_number": _flight_numbers(origin[leg_b], dest[leg_b], returning),
            }
        )
        .iloc[order]
        .reset_index(drop=True)
    )
    return bookings, flights


def _flight_numbers(origin: np.ndarray, dest: np.ndarray, returning: np.ndarray) -> np.ndarray:
    """One flight number per directed route (``NB`` + 100..9099, from a CRC of the route, so
    the same in every run and no draw from the generator): the passengers of a route on one
    UTC day share a flight, as ``/events/flight`` finds them."""
    routes = np.where(returning, dest + "-" + origin, origin + "-" + dest)
    codes, uniques = pd.factorize(routes)
    numbers = np.array([f"NB{zlib.crc32(r.encode()) % 9000 + 100}" for r in uniques], dtype=object)
    return numbers[codes]


def _cases(
    rng: np.random.Generator,
    cust: Customers,
    flights: pd.DataFrame,
    active_years: np.ndarray,
    end_ns: int,
) -> pd.DataFrame:
    index = pd.Index(cust.ids)
    f_owner = index.get_indexer(flights["customer_id"])
    f_ns = flights["scheduled_at"].to_numpy("datetime64[ns]").astype(np.int64)
    delay = flights["delay_minutes"].to_numpy()
    cancelled = flights["cancelled"].to_numpy()
    experienced = f_ns + delay * MIN_NS
    severe = (delay >= 120) & ~cancelled
    triggered = (severe & (rng.random(len(delay)) < 0.4)) | (
        cancelled & (rng.random(len(delay)) < 0.55)
    )
    d_owner = f_owner[triggered]
    d_open = experienced[triggered] + (rng.exponential(1.5, len(d_owner)) * DAY_NS).astype(np.int64)
    d_topic = np.where(cancelled[triggered], "cancellation", "delay").astype(object)
    d_sent = np.clip(rng.normal(-0.6, 0.25, len(d_owner)), -1, 1)

    b_owner, _ = repeat_poisson(rng, 0.25 * active_years)
    b_open = uniform_between(rng, cust.active_from_ns[b_owner], np.full(len(b_owner), end_ns))
    b_topic = rng.choice(BACKGROUND_TOPICS, len(b_owner), p=[0.3, 0.25, 0.2, 0.15, 0.1])
    b_sent = np.clip(rng.normal(-0.1, 0.4, len(b_owner)), -1, 1)

    owner = np.concatenate([d_owner, b_owner])
    opened = np.concatenate([d_open, b_open])
    topic = np.concatenate([d_topic, b_topic])
    sentiment = np.round(np.concatenate([d_sent, b_sent]), 3)
    disruption = np.r_[np.ones(len(d_owner), bool), np.zeros(len(b_owner), bool)]
    keep = opened < end_ns
    owner, opened, topic, sentiment, disruption = (
        a[keep] for a in (owner, opened, topic, sentiment, disruption)
    )
    nc = len(owner)
    closed = opened + (rng.lognormal(1.3, 0.9, nc) * DAY_NS).astype(np.int64)
    still_open = closed >= end_ns
    sentiment[rng.random(nc) < 0.1] = np.nan
    comp_p = np.where(disruption, 0.5, np.where(np.isin(topic, ["baggage", "refund"]), 0.2, 0.03))
    # Compensation is granted when a case is resolved, so an open case is not yet compensated.
    compensated = (rng.random(nc) < comp_p) & ~still_open
    order = np.lexsort((opened, owner))
    frame = pd.DataFrame(
        {
            "case_id": ids("K", nc),
            "customer_id": cust.ids[owner],
            "opened_at": utc(opened),
            "closed_at": utc(np.where(still_open, np.iinfo(np.int64).min, closed)),
            "channel": rng.choice(CASE_CHANNELS, nc, p=[0.35, 0.35, 0.2, 0.1]),
            "topic": topic,
            "sentiment": sentiment,
            "compensated": compensated,
        }
    )
    return frame.iloc[order].reset_index(drop=True)


def _web(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    cust: Customers,
    active_years: np.ndarray,
    flights: pd.DataFrame,
    end_ns: int,
) -> pd.DataFrame:
    ps = cust.price_sensitivity
    owner, _ = repeat_poisson(rng, cust.trips_per_year * (1.5 + 4.0 * ps) * active_years)
    start = uniform_between(rng, cust.active_from_ns[owner], np.full(len(owner), end_ns))
    # Travellers come back to the site after a disruption (rebooking, checking status).
    f_owner = pd.Index(cust.ids).get_indexer(flights["customer_id"])
    bad = (flights["delay_minutes"].to_numpy() >= 120) | flights["cancelled"].to_numpy()
    bad &= rng.random(len(bad)) < 0.6
    f_ns = flights["scheduled_at"].to_numpy("datetime64[ns]").astype(np.int64)[bad]
    revisit = f_ns + (rng.exponential(3.0, int(bad.sum())) * DAY_NS).astype(np.int64)
    owner = np.concatenate([owner, f_owner[bad]])
    start = np.concatenate([start, revisit])
    known = start < end_ns - HOUR_NS
    owner, start = owner[known], start[known]
    n_known = len(owner)
    n_anon = int(n_known * cfg.anonymous_share / (1 - cfg.anonymous_share))
    anon_start = uniform_between(
        rng, np.full(n_anon, end_ns - cfg.days * DAY_NS), np.full(n_anon, end_ns - HOUR_NS)
    )
    s_ps = np.concatenate([ps[owner], rng.beta(2.0, 2.5, n_anon)])
    s_start = np.concatenate([start, anon_start])
    s_cust = np.concatenate([cust.ids[owner], np.full(n_anon, None, dtype=object)])
    s_home = np.concatenate([cust.home[owner], np.full(n_anon, None, dtype=object)])
    ns = len(s_start)

    n_search = 1 + rng.poisson(1.0 + 2.0 * s_ps)
    view = rng.random(ns) < 0.7
    checkout = rng.random(ns) < 0.3
    abandon = checkout & (rng.random(ns) < 0.45 + 0.4 * s_ps)
    booking = checkout & ~abandon
    per_session = n_search + view + checkout + abandon + booking
    session = np.repeat(np.arange(ns), per_session)
    rank = np.arange(len(session)) - np.repeat(np.cumsum(per_session) - per_session, per_session)
    # Event order in a session: searches, view, checkout_start, then abandon or booking.
    ns_s, v_s = n_search[session], view[session]
    kind = np.where(
        rank < ns_s,
        "search",
        np.where(
            (rank == ns_s) & v_s,
            "view",
            np.where(
                rank == ns_s + v_s,
                "checkout_start",
                np.where(abandon[session], "abandon", "booking"),
            ),
        ),
    ).astype(object)
    origin, dest = routes(rng, s_home)
    is_search = kind == "search"
    ts = s_start[session] + rank * (20 + rng.integers(0, 60, len(session))) * 10**9
    frame = pd.DataFrame(
        {
            "event_id": ids("W", len(session)),
            "customer_id": s_cust[session],
            "session_id": ids("S", ns)[session],
            "ts": utc(ts),
            "event_type": kind,
            "origin": np.where(is_search, origin[session], _NONE),
            "destination": np.where(is_search, dest[session], _NONE),
        }
    )
    return frame


def _email(rng: np.random.Generator, cust: Customers, start_ns: int, end_ns: int) -> pd.DataFrame:
    weeks = np.arange(start_ns + 10 * HOUR_NS, end_ns - DAY_NS, 7 * DAY_NS)
    first_week = np.searchsorted(weeks, cust.created_ns)
    eligible = np.where(cust.opt_in, len(weeks) - first_week, 0)
    # Each send carries a small risk of unsubscribing; less engaged readers leave sooner.
    hazard = 0.0008 + 0.003 * (1 - cust.engagement)
    unsub_after = rng.geometric(hazard)
    n_sends = np.minimum(eligible, unsub_after)
    unsubscribes = n_sends < eligible
    owner = np.repeat(np.arange(len(n_sends)), n_sends)
    week = first_week[owner] + (
        np.arange(len(owner)) - np.repeat(np.cumsum(n_sends) - n_sends, n_sends)
    )
    send_ns = weeks[week] + rng.integers(0, 3_600, len(owner)) * 10**9
    opened = rng.random(len(owner)) < cust.engagement[owner]
    open_ns = send_ns + (rng.exponential(8.0, len(owner)) * HOUR_NS).astype(np.int64)
    clicked = opened & (rng.random(len(owner)) < 0.15 + 0.2 * cust.price_sensitivity[owner])
    click_ns = open_ns + rng.integers(5, 600, len(owner)) * 10**9
    last_send = np.cumsum(n_sends) - 1
    u_idx = last_send[unsubscribes & (n_sends > 0)]
    unsub_ns = send_ns[u_idx] + (rng.exponential(1.0, len(u_idx)) * DAY_NS).astype(np.int64)
    campaign = np.array([f"CMP{i:03d}" for i in range(len(weeks))], dtype=object)
    parts = [
        (owner, send_ns, "sent", week),
        (owner[opened], open_ns[opened], "open", week[opened]),
        (owner[clicked], click_ns[clicked], "click", week[clicked]),
        (owner[u_idx], unsub_ns, "unsubscribe", week[u_idx]),
    ]
    e_owner = np.concatenate([p[0] for p in parts])
    e_ts = np.concatenate([p[1] for p in parts])
    e_kind = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in parts])
    e_week = np.concatenate([p[3] for p in parts])
    keep = e_ts < end_ns
    order = np.lexsort((e_ts[keep], e_owner[keep]))
    return pd.DataFrame(
        {
            "customer_id": cust.ids[e_owner[keep]][order],
            "ts": utc(e_ts[keep][order]),
            "campaign_id": campaign[e_week[keep]][order],
            "event_type": e_kind[keep][order],
        }
    )
