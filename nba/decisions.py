"""The simulator's decisions: when they happen, which logged policy takes them, and their
outcomes under the world's causal model (``nba.worlds``), with the truth of every action.

Decisions are taken by a randomized policy (uniform over the allowed actions, the unbiased data
uplift models learn from) and, for the rest, by the rule policy ``rules-v1`` (epsilon-greedy) or,
in worlds with ``logging="targeted"``, by a policy targeting latent traits. Outcomes are drawn
from probabilities that depend on the customer's latent traits and on their point-in-time
features, computed with the very same ``features.build.build_features`` the pipeline uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.build import build_features
from features.contract import ACTIONS, RawData
from features.derive import derive_columns
from nba.simcore import DAY_NS, Customers, ids, repeat_poisson, routes, uniform_between, utc
from nba.worlds import PRESETS, TARGETED, Traits, causal_model, targeted_probabilities
from training.baselines import RULES_V1, rules_v1

if TYPE_CHECKING:
    from nba.simulate import SimulationConfig


def empty_actions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decision_id": pd.Series([], dtype=object),
            "customer_id": pd.Series([], dtype=object),
            "decided_at": pd.Series([], dtype="datetime64[ns, UTC]"),
            "action": pd.Series([], dtype=object),
            "policy": pd.Series([], dtype=object),
            "propensity": pd.Series([], dtype=np.float64),
            "channel": pd.Series([], dtype=object),
        }
    )


def empty_outcomes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decision_id": pd.Series([], dtype=object),
            "converted": pd.Series([], dtype=bool),
            "revenue": pd.Series([], dtype=np.float64),
            "unsubscribed": pd.Series([], dtype=bool),
        }
    )


def _decision_times(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    cust: Customers,
    world: RawData,
    start_ns: int,
    end_ns: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer index, time, channel) of every decision, before the outcome horizon."""
    horizon = end_ns - cfg.outcome_days * DAY_NS
    years = np.maximum(horizon - cust.active_from_ns, 0) / (365 * DAY_NS)
    owner, _ = repeat_poisson(rng, cfg.decisions_per_year * years)
    t = uniform_between(rng, cust.active_from_ns[owner], np.full(len(owner), horizon))
    channel = rng.choice(np.array(["web", "app", "email"], dtype=object), len(owner),
                         p=[0.45, 0.2, 0.35])  # fmt: skip

    # Visits after a disruption ("comes back a week later") and after a milestone crossing
    # (checking the new status): the moments where apology and recognition matter.
    index = pd.Index(cust.ids)
    flights = world.flights
    f_owner = index.get_indexer(flights["customer_id"])
    f_ns = flights["scheduled_at"].to_numpy("datetime64[ns]").astype(np.int64)
    bad = (flights["delay_minutes"].to_numpy() >= 120) | flights["cancelled"].to_numpy()
    bad &= rng.random(len(bad)) < 0.7
    extra_owner = [f_owner[bad]]
    extra_t = [f_ns[bad] + (rng.exponential(6.0, int(bad.sum())) * DAY_NS).astype(np.int64)]
    miles = flights["miles_earned"].to_numpy(np.int64)
    cum = flights.assign(m=miles).groupby("customer_id", sort=False)["m"].cumsum().to_numpy()
    total = cust.prior_miles[f_owner] + cum
    before = total - miles
    crossed = ((before < 100_000) & (total >= 100_000)) | (total // 1_000_000 > before // 1_000_000)
    crossed &= rng.random(len(crossed)) < 0.8
    extra_owner.append(f_owner[crossed])
    extra_t.append(
        f_ns[crossed] + (rng.exponential(4.0, int(crossed.sum())) * DAY_NS).astype(np.int64)
    )
    e_owner = np.concatenate(extra_owner)
    e_t = np.concatenate(extra_t)
    owner = np.concatenate([owner, e_owner])
    t = np.concatenate([t, e_t])
    channel = np.concatenate([channel, np.full(len(e_owner), "web", dtype=object)])
    keep = (t < horizon) & (t >= start_ns)
    order = np.lexsort((t[keep], owner[keep]))
    return owner[keep][order], t[keep][order], channel[keep][order]


def decide(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    cust: Customers,
    world: RawData,
    start_ns: int,
    end_ns: int,
) -> RawData:
    owner, t_ns, channel = _decision_times(cfg, rng, cust, world, start_ns, end_ns)
    nd = len(owner)
    decided = utc(t_ns)
    points = pd.DataFrame({"customer_id": cust.ids[owner], "event_timestamp": decided})
    feats = build_features(world, points)
    derived = derive_columns({c: feats[c] for c in feats.columns}, decided.to_numpy())
    knobs = PRESETS[cfg.world]
    traits = cust_traits(cust, owner)
    truth = causal_model(traits, feats, derived, knobs)

    # Logged policies. Promos never go to customers who opted out or unsubscribed (the contract).
    promo_ok = feats["marketing_opt_in"].to_numpy() & ~feats["unsubscribed"].to_numpy()
    allowed = np.column_stack([promo_ok, np.ones((nd, 3), bool)])  # order of ACTIONS
    n_allowed = allowed.sum(axis=1)
    random_share = cfg.random_share if knobs.random_share is None else knobs.random_share
    is_random = rng.random(nd) < random_share
    action_idx = np.empty(nd, dtype=np.int64)
    propensity = np.empty(nd, dtype=np.float64)

    # Random policy: uniform over the allowed actions.
    u = rng.random(nd)
    cum = np.cumsum(allowed, axis=1) / n_allowed[:, None]
    rand_choice = (u[:, None] < cum).argmax(axis=1)
    action_idx[is_random] = rand_choice[is_random]
    propensity[is_random] = 1.0 / n_allowed[is_random]

    # rules-v1: apology after a recent uncompensated disruption, recognition after a milestone,
    # promo to recent abandoners, else nothing; epsilon-greedy (85%) over the allowed actions.
    preferred = pd.Index(ACTIONS).get_indexer(rules_v1(feats.assign(**derived)))
    explore = rng.random(nd) < 0.15
    others = allowed.copy()
    others[np.arange(nd), preferred] = False
    o_cum = np.cumsum(others, axis=1) / np.maximum(others.sum(axis=1), 1)[:, None]
    other_choice = (rng.random(nd)[:, None] < o_cum).argmax(axis=1)
    rule_choice = np.where(explore, other_choice, preferred)
    rule_prop = np.where(explore, 0.15 / np.maximum(n_allowed - 1, 1), 0.85)
    logged_by = RULES_V1
    if knobs.logging == "targeted":
        # A policy acting on latent traits (nba.worlds.targeted_probabilities), propensities
        # logged truthfully. Drawn after the rules so that rules-logged worlds draw as before.
        probs = targeted_probabilities(traits, allowed)
        t_cum = np.cumsum(probs, axis=1)
        t_cum[:, -1] = 1.0  # rounding must never leave a draw past the last action
        rule_choice = (rng.random(nd)[:, None] < t_cum).argmax(axis=1)
        rule_prop = probs[np.arange(nd), rule_choice]
        logged_by = TARGETED
    action_idx[~is_random] = rule_choice[~is_random]
    propensity[~is_random] = rule_prop[~is_random]

    actions_arr = np.array(ACTIONS, dtype=object)
    chosen = actions_arr[action_idx]
    rows = np.arange(nd)
    p_conv = np.column_stack([truth[f"p_convert_{a}"] for a in ACTIONS])[rows, action_idx]
    p_unsub = np.column_stack([truth[f"p_unsubscribe_{a}"] for a in ACTIONS])[rows, action_idx]
    converted = rng.random(nd) < p_conv
    # Mean-one noise around the typical fare (log-normal with mu = -sigma^2 / 2).
    sigma = knobs.fare_sigma
    fare = cust.typical_fare[owner] * rng.lognormal(-(sigma**2) / 2, sigma, nd)
    revenue = np.where(converted, np.round(fare, 2), 0.0)
    unsubscribed = rng.random(nd) < p_unsub

    decision_ids = ids("D", nd)
    actions = pd.DataFrame(
        {
            "decision_id": decision_ids,
            "customer_id": cust.ids[owner],
            "decided_at": decided,
            "action": chosen,
            "policy": np.where(is_random, "random", logged_by).astype(object),
            "propensity": propensity,
            "channel": channel,
        }
    )
    outcomes = pd.DataFrame(
        {
            "decision_id": decision_ids,
            "converted": converted,
            "revenue": revenue,
            "unsubscribed": unsubscribed,
        }
    )
    truth.insert(0, "decision_id", decision_ids)

    # Make the rest of the world agree with the outcomes: a conversion is a booking within the
    # outcome window, an unsubscribe is an email event (and ends later sends).
    bookings = _conversion_bookings(rng, cust, owner, t_ns, converted, revenue, world.bookings)
    email = _decision_unsubscribes(rng, cust, owner, t_ns, unsubscribed, world.email_events)
    return RawData(
        customers=world.customers,
        bookings=bookings,
        flights=world.flights,
        service_cases=world.service_cases,
        web_events=world.web_events,
        email_events=email,
        actions=actions,
        outcomes=outcomes,
        truth=truth,
    )


def cust_traits(cust: Customers, owner: np.ndarray) -> Traits:
    """The latent traits of ``owner`` (customer indices)."""
    return Traits(
        price_sensitivity=cust.price_sensitivity[owner],
        trips_per_year=cust.trips_per_year[owner],
        engagement=cust.engagement[owner],
        typical_fare=cust.typical_fare[owner],
    )


def _conversion_bookings(
    rng: np.random.Generator,
    cust: Customers,
    owner: np.ndarray,
    t_ns: np.ndarray,
    converted: np.ndarray,
    revenue: np.ndarray,
    bookings: pd.DataFrame,
) -> pd.DataFrame:
    """Bookings caused by converted decisions, within the outcome window.

    Their legs are not flown in the simulation, so a decision never changes the disruptions,
    cases or miles behind the effects of later decisions.
    """
    idx = np.flatnonzero(converted)
    n = len(idx)
    booked = t_ns[idx] + (rng.random(n) * 29 * DAY_NS).astype(np.int64)
    origin, dest = routes(rng, cust.home[owner[idx]])
    extra = pd.DataFrame(
        {
            "booking_id": ids("B", n, start=len(bookings)),
            "customer_id": cust.ids[owner[idx]],
            "booked_at": utc(booked),
            "departs_at": utc(booked + (rng.gamma(2.0, 15.0, n) * DAY_NS).astype(np.int64)),
            "origin": origin,
            "destination": dest,
            "fare": revenue[idx],
            "currency": np.full(n, "USD", dtype=object),
            "cabin": np.full(n, "economy", dtype=object),
            "channel": np.full(n, "web", dtype=object),
            "status": np.full(n, "confirmed", dtype=object),
        }
    )
    return pd.concat([bookings, extra], ignore_index=True)


def _decision_unsubscribes(
    rng: np.random.Generator,
    cust: Customers,
    owner: np.ndarray,
    t_ns: np.ndarray,
    unsubscribed: np.ndarray,
    email: pd.DataFrame,
) -> pd.DataFrame:
    """Unsubscribe events caused by decisions; email activity after one is dropped."""
    idx = np.flatnonzero(unsubscribed)
    at = (
        pd.DataFrame(
            {
                "customer_id": cust.ids[owner[idx]],
                "cut": t_ns[idx] + (rng.random(len(idx)) * 29 * DAY_NS).astype(np.int64),
            }
        )
        .groupby("customer_id")["cut"]
        .min()
    )
    email_ns = email["ts"].to_numpy("datetime64[ns]").astype(np.int64)
    pos = at.index.get_indexer(email["customer_id"])
    cut = np.full(len(email), np.iinfo(np.int64).max, dtype=np.int64)
    cut[pos >= 0] = at.to_numpy(np.int64)[pos[pos >= 0]]
    keep = email_ns < cut
    extra = pd.DataFrame(
        {
            "customer_id": at.index.to_numpy(object),
            "ts": utc(at.to_numpy(np.int64)),
            "campaign_id": np.full(len(at), "NBA", dtype=object),
            "event_type": np.full(len(at), "unsubscribe", dtype=object),
        }
    )
    return pd.concat([email[keep], extra], ignore_index=True)
