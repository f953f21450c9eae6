"""The impact estimator (free functions over arrays), its JSON summary, and the outcomes join."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.impact import cluster_mean, cuped_theta, difference, measure, net_value, week_of
from monitoring.outcomes import as_raw, merge_raw, observe
from training.value import ActionCosts

COSTS = ActionCosts()
T0 = pd.Timestamp("2026-09-01T12:00:00Z")


def test_net_value_charges_each_action_its_cost() -> None:
    got = net_value(["promo", "apology_credit", "recognition", "none", "promo"],
                    np.array([500.0, 500.0, 0.0, 0.0, 0.0]),
                    np.array([False, False, False, True, False]), COSTS)  # fmt: skip
    assert got.tolist() == [460.0, 450.0, -2.0, -30.0, 0.0]


def test_cluster_mean_with_one_row_per_cluster_is_the_usual_variance() -> None:
    y = np.random.default_rng(0).normal(size=500)
    mean, var = cluster_mean(y, np.arange(500))
    assert mean == pytest.approx(y.mean())
    assert var == pytest.approx(y.var(ddof=1) / 500)


def test_clustered_variance_is_larger_when_a_customer_repeats_himself() -> None:
    rng = np.random.default_rng(1)
    level = rng.normal(size=100)
    y = np.repeat(level, 10) + rng.normal(scale=0.1, size=1000)
    _, clustered = cluster_mean(y, np.repeat(np.arange(100), 10))
    _, naive = cluster_mean(y, np.arange(1000))
    assert clustered > 5 * naive


_ARRAYS = st.integers(20, 200).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-1000, 1000), min_size=n, max_size=n),
        st.lists(st.floats(0, 1000), min_size=n, max_size=n),
        st.lists(st.integers(0, n // 2), min_size=n, max_size=n),
    )
)


@settings(max_examples=80, deadline=None)
@given(data=_ARRAYS, shift=st.floats(-500, 500), scale=st.floats(0.1, 10))
def test_difference_is_equivariant(data: tuple[list[float], list[float], list[int]],
                                   shift: float, scale: float) -> None:  # fmt: skip
    y, x, cluster = (np.array(a) for a in data)
    treated = np.arange(len(y)) % 3 != 0
    base = difference(y, treated, cluster, x)
    if not np.isfinite(base.se):
        return
    assert base.ci_low <= base.estimate <= base.ci_high
    # Adding a constant to every outcome changes nothing; adding it to the treated only moves
    # the estimate by it (without a covariate); scaling scales estimate and interval.
    moved = difference(y + shift, treated, cluster, x)
    assert moved.estimate == pytest.approx(base.estimate, abs=1e-6 * (1 + abs(shift)))
    plain = difference(y, treated, cluster)
    lifted = difference(y + shift * treated, treated, cluster)
    assert lifted.estimate == pytest.approx(plain.estimate + shift, abs=1e-6 * (1 + abs(shift)))
    assert lifted.se == pytest.approx(plain.se, rel=1e-6, abs=1e-9)
    scaled = difference(y * scale, treated, cluster, x)
    assert scaled.estimate == pytest.approx(base.estimate * scale, rel=1e-6, abs=1e-6)
    assert scaled.se == pytest.approx(base.se * scale, rel=1e-6, abs=1e-6)


def test_cuped_narrows_the_interval_when_the_past_predicts_the_future() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    # Frequent travellers book often before and after: the past predicts the future.
    rate = rng.gamma(0.5, 2.0, n)
    level = rng.gamma(4.0, 100.0, n)
    x = rng.poisson(rate) * level
    y = rng.poisson(rate) * level
    treated = rng.random(n) < 0.9
    assert cuped_theta(y, x) > 0.3
    with_x = difference(y, treated, np.arange(n), x)
    without = difference(y, treated, np.arange(n))
    assert with_x.se < 0.9 * without.se


def test_interval_covers_a_known_effect_about_95_times_in_100_of_many_customers() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):
        # 2,000 customers, 200 of them held out, five decisions each on average. (With only
        # 40 held-out customers coverage fell to 89.5%: a clustered interval needs clusters.)
        customers = rng.integers(0, 2000, 10_000)
        level = rng.gamma(1.0, 100.0, 2000)[customers]
        treated = (customers % 10) != 0
        y = rng.poisson(0.3, 10_000) * level + 7.0 * treated
        x = rng.poisson(0.3, 10_000) * level
        covered += difference(y, treated, customers, x).covers(7.0)
    assert 180 <= covered <= 198  # 95% within the sampling error of 200 replications


def observed_frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = 600
    customers = np.array([f"C{i % 150}" for i in range(n)], dtype=object)
    held = np.array([int(c[1:]) % 5 == 0 for c in customers])
    intended = rng.choice(["promo", "recognition", "apology_credit", "none"], n)
    action = np.where(held, "none", intended)
    revenue = rng.poisson(0.3, n) * 300.0 + np.where(held, 0.0, 20.0)
    return pd.DataFrame({
        "decision_id": [f"d{i}" for i in range(n)], "customer_id": customers,
        "decided_at": T0 + pd.to_timedelta(rng.integers(0, 21 * 24, n), unit="h"),
        "action": action, "intended_action": intended,
        "policy": np.where(held, "holdout", "nba-uplift/1"), "propensity": 1.0,
        "channel": "web", "revenue": revenue, "converted": revenue > 0,
        "unsubscribed": rng.random(n) < 0.01, "pre_revenue": rng.poisson(0.3, n) * 300.0,
        "contacts_30d": rng.integers(0, 5, n),
    })  # fmt: skip


def test_summary_has_exactly_the_contract_keys() -> None:
    summary = measure(observed_frame(), COSTS, start="a", end="b").summary()
    contract = {"decisions", "holdout_decisions", "incremental_net_value_per_decision",
                "by_action", "by_week"}  # fmt: skip
    assert contract <= set(summary)
    assert summary["decisions"] + summary["holdout_decisions"] == 600
    overall = summary["incremental_net_value_per_decision"]
    assert set(overall) == {"estimate", "ci95"} and len(overall["ci95"]) == 2
    assert set(summary["by_action"]) == {"promo", "recognition", "apology_credit"}
    for block in summary["by_action"].values():
        assert set(block) == {"decisions", "incremental_net_value_per_decision"}
        assert set(block["incremental_net_value_per_decision"]) == {"estimate", "ci95"}
    assert [set(w) for w in summary["by_week"]] == [
        {"week", "decisions", "estimate", "ci95"}
    ] * len(summary["by_week"])
    assert [w["week"] for w in summary["by_week"]] == ["2026-08-31", "2026-09-07", "2026-09-14",
                                                       "2026-09-21"]  # fmt: skip
    assert sum(w["decisions"] for w in summary["by_week"]) == summary["decisions"]
    total = summary["incremental_net_value_total"]["estimate"]
    assert total == pytest.approx(overall["estimate"] * summary["decisions"], rel=1e-3)


def test_measure_needs_both_groups() -> None:
    frame = observed_frame()
    with pytest.raises(ValueError, match="control group"):
        measure(frame[frame["policy"] != "holdout"], COSTS)
    with pytest.raises(ValueError, match="nothing to compare"):
        measure(frame[frame["policy"] == "holdout"], COSTS)


def test_weeks_start_on_monday() -> None:
    stamps = pd.Series(pd.to_datetime(["2026-11-30T00:00:00Z", "2026-12-06T23:59:00Z",
                                       "2026-12-07T00:00:00Z"]))  # fmt: skip
    assert week_of(stamps).tolist() == ["2026-11-30", "2026-11-30", "2026-12-07"]


# ------------------------------------------------------------------------------- outcomes


def _raw() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    customers = pd.DataFrame({"customer_id": ["A", "B"]})
    decisions = pd.DataFrame({
        "decision_id": ["d1", "d2", "d3", "d4", "d5"],
        "customer_id": ["A", "A", "B", "B", "Z"],
        "decided_at": [T0, T0 + timedelta(days=10), T0, T0 + timedelta(days=40),
                       T0],
        "action": ["promo", "none", "recognition", "promo", "none"],
        "intended_action": ["promo", "promo", "recognition", "promo", "none"],
        "policy": ["m", "holdout", "m", "m", "m"], "propensity": 1.0, "channel": "web",
    })  # fmt: skip
    bookings = pd.DataFrame({
        "customer_id": ["A", "A", "A", "B", "B"],
        "booked_at": [T0 - timedelta(days=5), T0, T0 + timedelta(days=30),
                      T0 + timedelta(days=30, seconds=1), T0 + timedelta(days=75)],
        "fare": [100.0, 200.0, 300.0, 400.0, 50.0], "currency": "USD",
    })  # fmt: skip
    email = pd.DataFrame({"customer_id": ["B"], "ts": [T0 + timedelta(days=1)],
                          "event_type": ["unsubscribe"]})  # fmt: skip
    return decisions, customers, bookings, email


def test_outcomes_count_the_horizon_after_each_decision_only() -> None:
    decisions, customers, bookings, email = _raw()
    got = observe(decisions, customers, bookings, email, horizon=timedelta(days=30))
    frame = got.frame.set_index("decision_id")
    # d1: the booking in its own second does not count, the one at exactly +30 days does.
    assert frame.loc["d1", "revenue"] == 300.0 and frame.loc["d1", "converted"]
    # ... it is the past: the pre-period (the covariate) holds it and the one 5 days before.
    assert frame.loc["d1", "pre_revenue"] == 300.0
    # d2 (ten days later) sees the same +30-day booking: horizons overlap.
    assert frame.loc["d2", "revenue"] == 300.0 and frame.loc["d2", "pre_revenue"] == 300.0
    # d3: one second past the horizon is not in it; its unsubscribe is.
    assert not frame.loc["d3", "converted"] and frame.loc["d3", "unsubscribed"]
    assert frame.loc["d2", "contacts_30d"] == 1  # d1 meant a promo ten days before
    assert frame.loc["d1", "contacts_30d"] == 0


def test_only_decisions_whose_horizon_has_passed() -> None:
    decisions, customers, bookings, email = _raw()
    got = observe(decisions, customers, bookings, email, horizon=timedelta(days=30))
    # The raw data ends with B's booking at +75 days: d4 (+40 days) has passed, Z is unknown.
    assert sorted(got.frame["decision_id"]) == ["d1", "d2", "d3", "d4"]
    assert got.unknown_customers == 1 and got.pending == 0
    early = observe(decisions, customers, bookings, email, horizon=timedelta(days=30),
                    as_of=T0 + timedelta(days=45))  # fmt: skip
    assert sorted(early.frame["decision_id"]) == ["d1", "d2", "d3"] and early.pending == 1


def test_raw_rows_merge_once() -> None:
    decisions, customers, bookings, email = _raw()
    actions, outcomes = as_raw(observe(decisions, customers, bookings, email).frame)
    assert list(outcomes.columns) == ["decision_id", "converted", "revenue", "unsubscribed"]
    assert str(actions["decided_at"].dtype) == "datetime64[ns, UTC]"
    merged, added = merge_raw(actions.iloc[:2], actions)
    assert added == len(actions) - 2 and merged["decision_id"].is_unique
    again, none = merge_raw(merged, actions)
    assert none == 0 and len(again) == len(merged)


def test_report_reads_in_words_and_flags_thin_slices() -> None:
    from monitoring.impact_report import render

    frame = observed_frame()
    page = render(measure(frame, COSTS, start="2026-09-01T00:00:00+00:00",
                          end="2026-09-22T00:00:00+00:00"), "USD")  # fmt: skip
    assert page.count("data:image/png;base64,") == 4  # arms, actions, weeks, fatigue
    assert "Decisions from 1 Sep 2026 to 22 Sep 2026" in page
    # 30 held-out customers in all: a slice by action holds fewer, so it is flagged.
    assert "too few to tell" in page
    many = pd.concat([frame.assign(customer_id=frame["customer_id"] + f"-{k}",
                                   decision_id=frame["decision_id"] + f"-{k}")
                      for k in range(4)], ignore_index=True)  # fmt: skip
    impact = measure(many, COSTS)
    assert not impact.overall.few and impact.overall.control_customers == 120
    assert ("more net value" in render(impact)) == (impact.overall.estimate >= 0)


_HOURS = st.lists(st.integers(0, 24 * 90), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(decided=_HOURS, booked=_HOURS, owners=st.lists(st.sampled_from("AB"), min_size=24,
                                                       max_size=24))  # fmt: skip
def test_outcome_sums_equal_a_plain_loop(decided: list[int], booked: list[int],
                                         owners: list[str]) -> None:  # fmt: skip
    hours = pd.to_timedelta
    decisions = pd.DataFrame({
        "decision_id": [f"d{i}" for i in range(len(decided))],
        "customer_id": owners[: len(decided)], "decided_at": T0 + hours(decided, unit="h"),
        "action": "promo", "policy": "m", "propensity": 1.0, "channel": "web",
    })  # fmt: skip
    bookings = pd.DataFrame({
        "customer_id": owners[-len(booked):], "booked_at": T0 + hours(booked, unit="h"),
        "fare": [10.0 * (i + 1) for i in range(len(booked))], "currency": "USD",
    })  # fmt: skip
    email = pd.DataFrame({"customer_id": [], "ts": pd.to_datetime([], utc=True),
                          "event_type": []})  # fmt: skip
    end = T0 + timedelta(days=200)
    got = observe(decisions, pd.DataFrame({"customer_id": ["A", "B"]}), bookings, email,
                  horizon=timedelta(days=30), as_of=end).frame  # fmt: skip
    for _, row in got.iterrows():
        mine = bookings[bookings["customer_id"] == row["customer_id"]]
        after = mine[(mine["booked_at"] > row["decided_at"])
                     & (mine["booked_at"] <= row["decided_at"] + timedelta(days=30))]  # fmt: skip
        before = mine[(mine["booked_at"] > row["decided_at"] - timedelta(days=30))
                      & (mine["booked_at"] <= row["decided_at"])]  # fmt: skip
        assert row["revenue"] == pytest.approx(after["fare"].sum())
        assert row["converted"] == (len(after) > 0)
        assert row["pre_revenue"] == pytest.approx(before["fare"].sum())
    assert len(got) == len(decisions)
