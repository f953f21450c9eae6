"""The simulated world: deterministic, in the contract, and following its causal model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import ACTIONS, RawData
from nba.simulate import SimulationConfig, simulate

END = pd.Timestamp("2026-11-01T00:00:00Z")


@pytest.fixture(scope="module")
def world() -> RawData:
    return simulate(SimulationConfig(end=END, customers=800, days=240, seed=11))


def test_same_seed_same_world(world: RawData) -> None:
    again = simulate(SimulationConfig(end=END, customers=800, days=240, seed=11))
    for name, frame in world.tables().items():
        pd.testing.assert_frame_equal(frame, again.tables()[name], obj=name)
    other = simulate(SimulationConfig(end=END, customers=800, days=240, seed=12))
    assert not other.bookings["fare"].equals(world.bookings["fare"])


def test_every_table_is_populated_and_in_the_window(world: RawData) -> None:
    for name, frame in world.tables().items():
        assert len(frame) > 0, name
    assert world.web_events["customer_id"].isna().mean() > 0.1  # anonymous visitors
    assert world.service_cases["closed_at"].isna().any()  # some cases still open
    assert world.service_cases["compensated"].any()
    assert (world.flights["delay_minutes"] >= 120).mean() > 0.01  # heavy tail
    assert world.flights["cancelled"].any()
    assert (world.email_events["event_type"] == "unsubscribe").any()
    assert world.actions["decided_at"].max() <= END - pd.Timedelta(days=30)
    assert world.web_events["ts"].max() < END


def test_milestones_are_crossed(world: RawData) -> None:
    miles = world.flights.groupby("customer_id")["miles_earned"].sum()
    prior = world.customers.set_index("customer_id")["prior_miles"]
    total = prior.add(miles, fill_value=0)
    crossed_100k = (prior < 100_000) & (total >= 100_000)
    assert crossed_100k.sum() > 0


def test_logged_policies_and_propensities(world: RawData) -> None:
    actions = world.actions
    random = actions[actions.policy == "random"]
    assert 0.7 < len(random) / len(actions) < 0.9
    assert set(random.propensity.round(4)) <= {0.25, 0.3333}
    assert set(actions.action) == set(ACTIONS)
    opted_out = world.customers.loc[~world.customers.marketing_opt_in, "customer_id"]
    assert not ((actions.action == "promo") & actions.customer_id.isin(opted_out)).any()
    rules = actions[actions.policy == "rules-v1"]
    assert (rules.propensity == 0.85).mean() > 0.7


def test_outcomes_follow_the_truth(world: RawData) -> None:
    truth = world.truth
    assert truth is not None
    joined = world.actions.merge(world.outcomes, on="decision_id").merge(truth, on="decision_id")
    p = np.choose(
        joined.action.map(ACTIONS.index).to_numpy(),
        [joined[f"p_convert_{a}"].to_numpy() for a in ACTIONS],
    )
    # Observed conversion agrees with the true probabilities of the actions taken.
    assert abs(joined.converted.mean() - p.mean()) < 4 * np.sqrt(p.mean() / len(joined))
    assert (joined.loc[~joined.converted, "revenue"] == 0).all()


def test_promo_backfires_after_a_disruption_and_apology_helps(world: RawData) -> None:
    from features.build import build_features
    from features.derive import derive_features

    truth = world.truth.set_index("decision_id")
    points = world.actions.rename(columns={"decided_at": "event_timestamp"})
    feats = derive_features(build_features(world, points), points.event_timestamp)
    feats.index = world.actions.decision_id
    hurting = (feats.open_case_count > 0) | (feats.days_since_last_negative <= 14)
    promo_uplift = truth.p_convert_promo - truth.p_convert_none
    assert (promo_uplift[hurting] < 0).all()
    assert (truth.p_unsubscribe_promo[hurting] >= truth.p_unsubscribe_none[hurting]).all()
    recent = feats.days_since_last_negative <= 30
    apology = truth.p_convert_apology_credit - truth.p_convert_none
    assert (apology[recent] > 0).all() and (apology[~recent] == 0).all()


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="outcome window"):
        SimulationConfig(end=END, days=20)
    with pytest.raises(ValueError, match="timezone"):
        SimulationConfig(end=pd.Timestamp("2026-01-01"))


@pytest.mark.parametrize(("customers", "days", "seed"), [(1, 31, 0), (3, 45, 1), (7, 60, 2)])
def test_tiny_worlds_are_valid(customers: int, days: int, seed: int) -> None:
    """Edge cases: tables that come out empty (no unsubscribes, no cases) must still work."""
    world = simulate(SimulationConfig(end=END, customers=customers, days=days, seed=seed))
    assert len(world.customers) == customers
    assert len(world.actions) == len(world.outcomes)
