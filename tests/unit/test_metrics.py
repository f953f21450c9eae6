"""Unit tests for ``training.metrics``: hand-computed examples, scikit-uplift reference values,
statistical checks on a simulated logged bandit and hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import (
    PolicyValueEstimate,
    captured_share,
    dr_value,
    ipw_value,
    oracle_policy,
    policy_value_ci,
    policy_value_se,
    qini_auc_score,
    qini_curve,
    snipw_value,
    true_policy_value,
    uplift_at_k,
    uplift_auc_score,
    uplift_curve,
)

ACTIONS = ("promo", "apology_credit", "recognition", "none")
PROPERTY = settings(max_examples=60, deadline=None)

# --------------------------------------------------------------------------- a 6-row example
# Already in descending score order, no ties, so the curves can be followed row by row:
#   row  y  t   targeted treated (N_t, Y_t)   control (N_c, Y_c)
#    0   1  1          (1, 1)                    (0, 0)
#    1   0  1          (2, 1)                    (0, 0)
#    2   1  0          (2, 1)                    (1, 1)
#    3   0  0          (2, 1)                    (2, 1)
#    4   1  1          (3, 2)                    (2, 1)
#    5   0  0          (3, 2)                    (3, 1)
Y6 = np.array([1, 0, 1, 0, 1, 0])
T6 = np.array([1, 1, 0, 0, 1, 0])
U6 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


def test_qini_curve_by_hand() -> None:
    x, q = qini_curve(Y6, T6, U6)
    # qini(k) = Y_t - Y_c * N_t / N_c, the correction being 0 while N_c = 0.
    assert x.tolist() == [0, 1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(q, [0, 1, 1, 1 - 1 * 2 / 1, 1 - 1 * 2 / 2, 2 - 1 * 3 / 2, 2 - 1])


def test_uplift_curve_by_hand() -> None:
    x, v = uplift_curve(Y6, T6, U6)
    # (Y_t/N_t - Y_c/N_c) * k, an empty group's mean being 0.
    expected = [0, 1 * 1, 0.5 * 2, (0.5 - 1) * 3, 0 * 4, (2 / 3 - 1 / 2) * 5, (2 / 3 - 1 / 3) * 6]
    assert x.tolist() == [0, 1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(v, expected)


def test_qini_auc_score_by_hand() -> None:
    # Model area (trapezoids over the curve above) = 2; random line (0,0)-(6,1) area = 3.
    # Perfect ranking y*t - y*(1-t) = [1, 0, -1, 0, 1, 0]: tie groups end at k = 2, 5, 6 with
    # qini 2, 2, 1, area 2 + 6 + 1.5 = 9.5. Score = (2 - 3) / (9.5 - 3) = -2/13.
    assert qini_auc_score(Y6, T6, U6) == pytest.approx(-2 / 13)
    # Without negative effects the perfect curve is (0,0), (1,1), (6,1): area 5.5.
    assert qini_auc_score(Y6, T6, U6, negative_effect=False) == pytest.approx((2 - 3) / 2.5)


def test_uplift_auc_score_by_hand() -> None:
    # Model area = 7/3; random line (0,0)-(6,2) area = 6. One control responder, one treated
    # non-responder, so the perfect score is 2*(y == t) + t: groups end at k = 2, 4, 5, 6 with
    # values 2, 4, 10/3, 2 and area 43/3. Score = (7/3 - 6) / (43/3 - 6) = -11/25.
    assert uplift_auc_score(Y6, T6, U6) == pytest.approx(-11 / 25)


def test_uplift_at_k_by_hand() -> None:
    # overall, top int(6 * 0.5) = 3 rows: treated y [1, 0], control y [1].
    assert uplift_at_k(Y6, T6, U6, k=0.5) == pytest.approx(0.5 - 1.0)
    assert uplift_at_k(Y6, T6, U6, k=3) == pytest.approx(0.5 - 1.0)
    # by_group, top int(3 * 0.5) = 1 of each group: treated row 0 (y=1), control row 2 (y=1).
    assert uplift_at_k(Y6, T6, U6, k=0.5, strategy="by_group") == 0.0
    # by_group, top 2 of each: treated y [1, 0], control y [1, 0].
    assert uplift_at_k(Y6, T6, U6, k=2, strategy="by_group") == 0.0


def test_uplift_at_k_is_nan_when_a_group_is_missing_from_the_top() -> None:
    assert math.isnan(uplift_at_k(Y6, T6, U6, k=2))  # rows 0 and 1 are both treated


def test_ties_put_one_point_per_distinct_score() -> None:
    # Scores [2, 1, 1, 1, 0, 0]: cuts after rows 1, 4 and 6 of the ranking.
    scores = np.array([2, 1, 1, 1, 0, 0])
    x, q = qini_curve(Y6, T6, scores)
    assert x.tolist() == [0, 1, 4, 6]
    # k=4 holds rows 0-3: N_t=2, Y_t=1, N_c=2, Y_c=1 -> 1 - 1 = 0; k=6 as before -> 1.
    np.testing.assert_allclose(q, [0, 1, 0, 1])
    # Constant scores: the curve is the straight line to the end point.
    x, q = qini_curve(Y6, T6, np.zeros(6))
    assert x.tolist() == [0, 6]
    np.testing.assert_allclose(q, [0, 1])


def test_ties_do_not_depend_on_row_order() -> None:
    scores = np.array([2, 1, 1, 1, 0, 0])
    perm = np.array([3, 1, 5, 0, 2, 4])
    for curve in (qini_curve, uplift_curve):
        x1, v1 = curve(Y6, T6, scores)
        x2, v2 = curve(Y6[perm], T6[perm], scores[perm])
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_allclose(v1, v2)


def test_qini_curve_continuous_outcome_by_hand() -> None:
    y = np.array([10.0, 0.0, 4.0, 2.0])
    t = np.array([1, 0, 1, 0])
    x, q = qini_curve(y, t, np.array([4, 3, 2, 1]))
    # k=1: 10; k=2: 10 - 0 * 1/1 = 10; k=3: 14 - 0 * 2/1 = 14; k=4: 14 - 2 * 2/2 = 12.
    assert x.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(q, [0, 10, 10, 14, 12])
    assert qini_auc_score(y, t, y * t - y * (1 - t)) == pytest.approx(1.0)


def test_perfect_ranking_scores_one_and_reversed_scores_negative() -> None:
    rng = np.random.default_rng(7)
    t = rng.integers(0, 2, 500)
    y = rng.integers(0, 2, 500)
    perfect = y * t - y * (1 - t)
    assert qini_auc_score(y, t, perfect) == pytest.approx(1.0)
    # The reversed ranking is worse than random (not -1: the Qini curve is not symmetric).
    assert qini_auc_score(y, t, -perfect) < -0.2
    best = 2 * (y == t) + (y if np.sum((y == 1) & (t == 0)) > np.sum((y == 0) & (t == 1)) else t)
    assert uplift_auc_score(y, t, best) == pytest.approx(1.0)
    assert uplift_auc_score(y, t, -best) < -0.2


def test_random_scores_score_about_zero_on_large_data() -> None:
    rng = np.random.default_rng(11)
    n = 20_000
    t = rng.integers(0, 2, n)
    x = rng.normal(size=n)
    # A real, heterogeneous effect: the random scores ignore it.
    y = (rng.random(n) < 0.2 + 0.1 * t * (x > 0) - 0.05 * t * (x < 0)).astype(int)
    noise = rng.normal(size=n)
    assert abs(qini_auc_score(y, t, noise)) < 0.03
    assert abs(uplift_auc_score(y, t, noise)) < 0.03
    # ... while the true effect's sign ranks better than random, and its reverse worse.
    assert qini_auc_score(y, t, x) > 0.05
    assert qini_auc_score(y, t, -x) < -0.05


def test_degenerate_outcomes_give_nan() -> None:
    y = np.zeros(6)
    assert math.isnan(qini_auc_score(y, T6, U6))
    assert math.isnan(uplift_auc_score(y, T6, U6))
    # No incremental responses at all: nothing to rank without negative effects.
    y_flat = np.array([1, 0, 0, 1, 0, 0])  # treated 1/3, control 1/3
    assert math.isnan(qini_auc_score(y_flat, T6, U6, negative_effect=False))


# --------------------------------------------------------------------------- scikit-uplift
# Reference values from scikit-uplift 0.5.1 (sklift.metrics, argument order (y, uplift, t)),
# computed in a throwaway venv on exactly these 20 rows (ties in the scores included).
# The same venv also cross-checked 3,000 random data sets (n in [4, 300], with and without
# ties): curves bitwise equal, scores with a max abs difference of 0.0.
Y20 = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0])
T20 = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
# Integer tenths, so e.g. 3 / 10 is the same float as the literal 0.3 scikit-uplift was given.
U20 = np.array([8, 1, -3, 5, 8, 2, 4, -1, 0, 3, 2, -5, 9, 1, 6, 7, -2, 0, 5, 2]) / 10


def test_matches_scikit_uplift_reference_values() -> None:
    assert qini_auc_score(Y20, T20, U20) == pytest.approx(0.34183673469387765, rel=1e-12)
    assert qini_auc_score(Y20, T20, U20, negative_effect=False) == pytest.approx(
        23.701316839585086, rel=1e-12
    )
    assert uplift_auc_score(Y20, T20, U20) == pytest.approx(0.2903068410462777, rel=1e-12)
    expected_at_k = {
        ("overall", 0.3): 0.8,
        ("overall", 0.5): 0.04761904761904767,
        ("by_group", 0.3): 0.5,
        ("by_group", 0.5): 0.30000000000000004,
        ("by_group", 4): 0.25,
    }
    for (strategy, k), expected in expected_at_k.items():
        assert uplift_at_k(Y20, T20, U20, k=k, strategy=strategy) == pytest.approx(expected)
    assert math.isnan(uplift_at_k(Y20, T20, U20, k=4))  # scikit-uplift: nan too
    x, q = qini_curve(Y20, T20, U20)
    assert x.tolist() == [0, 1, 3, 4, 5, 7, 8, 9, 12, 14, 16, 17, 18, 19, 20]
    np.testing.assert_allclose(
        q, [0, 1, 3, 3, 3, 1.5, 2, 1, 1, 0, 5 / 3, 4 / 3, 2 / 7, 0.875, 1 / 9], rtol=1e-12
    )
    x, v = uplift_curve(Y20, T20, U20)
    np.testing.assert_allclose(
        v[[4, 5, 11, 12, 13, 14]], [3.75, 2.1, 2.06060606, 0.46753247, 1.51136364, 0.2020202]
    )


# --------------------------------------------------------------------------- uplift validation


@pytest.mark.parametrize(
    ("y", "t", "u", "message"),
    [
        ([1, 0, 1], [1, 0], [0.1, 0.2, 0.3], "length mismatch"),
        ([], [], [], "empty"),
        ([1, 0, 1], [1, 0, 2], [0.1, 0.2, 0.3], "treatment must be binary"),
        ([1, 0, 1], [1, 1, 1], [0.1, 0.2, 0.3], "no control"),
        ([1, 0, 1], [0, 0, 0], [0.1, 0.2, 0.3], "no treated"),
        ([1, 0, 1], [1, 0, 1], [0.1, np.nan, 0.3], "uplift must be finite"),
        ([1, 0, 1], [1, 0, 1], ["a", "b", "c"], "uplift must be numeric"),
        ([[1, 0]], [[1, 0]], [[0.1, 0.2]], "1-dimensional"),
    ],
)
def test_uplift_metrics_reject_bad_input(y, t, u, message) -> None:
    for metric in (qini_curve, uplift_curve, qini_auc_score, uplift_auc_score):
        with pytest.raises(ValueError, match=message):
            metric(y, t, u)


def test_binary_outcome_is_required_where_scikit_uplift_needs_it() -> None:
    y = [0.5, 0.0, 1.0, 2.0]
    t, u = [1, 0, 1, 0], [0.4, 0.3, 0.2, 0.1]
    with pytest.raises(ValueError, match="y must be binary"):
        uplift_auc_score(y, t, u)
    with pytest.raises(ValueError, match="y must be binary"):
        qini_auc_score(y, t, u, negative_effect=False)
    with pytest.raises(TypeError, match="negative_effect"):
        qini_auc_score(Y6, T6, U6, negative_effect=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("k", "strategy"),
    [
        (0.0, "overall"),
        (1.0, "overall"),
        (6, "overall"),
        (0, "overall"),
        (True, "overall"),
        ("0.3", "overall"),
        (0.3, "top"),
        (4, "by_group"),
    ],
)
def test_uplift_at_k_rejects_bad_k_and_strategy(k, strategy) -> None:
    with pytest.raises(ValueError):
        uplift_at_k(Y6, T6, U6, k=k, strategy=strategy)


# --------------------------------------------------------------------------- uplift properties

binary_rows = st.integers(4, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(-20, 20), min_size=n, max_size=n),
    )
)


def _both_groups(t: np.ndarray) -> bool:
    return 0 < t.sum() < t.size


@PROPERTY
@given(binary_rows)
def test_qini_auc_invariant_to_monotone_transforms(rows) -> None:
    y, t, u = (np.array(v) for v in rows)
    if not _both_groups(t):
        return
    base = qini_auc_score(y, t, u)
    # Integer scores keep these transforms strictly increasing in floating point.
    for transformed in (u**3, np.exp(u / 10), 2.5 * u - 7, np.arctan(u)):
        other = qini_auc_score(y, t, transformed)
        assert (math.isnan(base) and math.isnan(other)) or other == pytest.approx(base)
        other = uplift_auc_score(y, t, transformed)
        expected = uplift_auc_score(y, t, u)
        assert (math.isnan(expected) and math.isnan(other)) or other == pytest.approx(expected)


@PROPERTY
@given(binary_rows, st.randoms(use_true_random=False))
def test_curves_invariant_to_row_order_and_end_at_the_same_point(rows, rnd) -> None:
    y, t, u = (np.array(v) for v in rows)
    if not _both_groups(t):
        return
    perm = np.array(rnd.sample(range(y.size), y.size))
    x1, q1 = qini_curve(y, t, u)
    x2, q2 = qini_curve(y[perm], t[perm], u[perm])
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_allclose(q1, q2, atol=1e-9)
    # Every ranking ends with everybody targeted: qini(n) = Y_t - Y_c * N_t / N_c.
    n_t, n_c = t.sum(), (1 - t).sum()
    assert q1[-1] == pytest.approx(y[t == 1].sum() - y[t == 0].sum() * n_t / n_c)
    assert x1[0] == 0 and q1[0] == 0 and x1[-1] == y.size
    assert np.all(np.diff(x1) > 0)


# --------------------------------------------------------------------------- off-policy: by hand
# Six logged rows; weights w = 1[chosen == action] / propensity = [2, 0, 4, 2, 0, 2].
CHOSEN = np.array(["promo", "promo", "recognition", "none", "none", "promo"])
ACTION = np.array(["promo", "none", "recognition", "none", "apology_credit", "promo"])
PROP = np.array([0.5, 0.25, 0.25, 0.5, 1.0, 0.5])
REWARD = np.array([1.0, 0.0, 2.0, 1.0, 3.0, 0.0])
# q_hat per action (same for every row): promo 0.5, apology_credit 1, recognition 1, none 0.5.
Q_HAT = np.tile([0.5, 1.0, 1.0, 0.5], (6, 1))


def test_ipw_snipw_dr_by_hand() -> None:
    # IPW: w * r = [2, 0, 8, 2, 0, 0] -> 12 / 6.
    assert ipw_value(CHOSEN, ACTION, PROP, REWARD) == pytest.approx(2.0)
    # SNIPW: 12 / sum(w) = 12 / 10.
    assert snipw_value(CHOSEN, ACTION, PROP, REWARD) == pytest.approx(1.2)
    # DR terms q[chosen] + w (r - q[action]) = [1.5, 0.5, 5, 1.5, 0.5, -0.5] -> 8.5 / 6.
    assert dr_value(CHOSEN, ACTION, PROP, REWARD, Q_HAT, ACTIONS) == pytest.approx(8.5 / 6)


def test_standard_errors_by_hand() -> None:
    ipw = policy_value_se("ipw", CHOSEN, ACTION, PROP, REWARD)
    # Terms [2, 0, 8, 2, 0, 0]: squared deviations from 2 sum to 48; var = 48 / 5; se² = var / 6.
    assert ipw == PolicyValueEstimate("ipw", 2.0, pytest.approx(math.sqrt(1.6)), 6)
    snipw = policy_value_se("snipw", CHOSEN, ACTION, PROP, REWARD)
    # w (r - 1.2) = [-0.4, 0, 3.2, -0.4, 0, -2.4]: squares sum 16.32; se = sqrt(6/5 * 16.32) / 10.
    assert snipw.value == pytest.approx(1.2)
    assert snipw.se == pytest.approx(math.sqrt(1.2 * 16.32) / 10)
    dr = policy_value_se("dr", CHOSEN, ACTION, PROP, REWARD, q_hat=Q_HAT)
    terms = np.array([1.5, 0.5, 5, 1.5, 0.5, -0.5])
    assert dr.value == pytest.approx(8.5 / 6)
    assert dr.se == pytest.approx(terms.std(ddof=1) / math.sqrt(6))
    low, high = policy_value_ci("ipw", CHOSEN, ACTION, PROP, REWARD, level=0.95)
    assert (low, high) == pytest.approx((2 - 1.959964 * ipw.se, 2 + 1.959964 * ipw.se))


def test_undefined_estimates_are_nan() -> None:
    never = np.array(["recognition"] * 6)
    assert math.isnan(snipw_value(never, ACTION[[0, 1, 3, 4, 5, 0]], PROP, REWARD))
    single = policy_value_se("ipw", ["promo"], ["promo"], [0.5], [1.0])
    assert single.value == 2.0 and math.isnan(single.se)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propensity": [0.5, 0.0, 0.25, 0.5, 1.0, 0.5]}, r"propensity must lie in \(0, 1\]"),
        ({"propensity": [0.5, 1.5, 0.25, 0.5, 1.0, 0.5]}, r"propensity must lie in \(0, 1\]"),
        ({"propensity": [0.5, np.nan, 0.25, 0.5, 1.0, 0.5]}, "propensity must be finite"),
        ({"chosen": ["promo"] * 5}, "length mismatch"),
        ({"chosen": ["promo", "upgrade", "none", "none", "none", "none"]}, "unknown action"),
        ({"action": ["promo", None, "none", "none", "none", "none"]}, "action"),
        ({"action": [0, 1, 2, 3, 0, 1]}, "action names"),
        ({"chosen": [], "action": [], "propensity": [], "reward": []}, "empty"),
        ({"reward": [1.0, np.inf, 0, 0, 0, 0]}, "reward must be finite"),
    ],
)
def test_off_policy_estimators_reject_bad_input(kwargs, message) -> None:
    args = {"chosen": CHOSEN, "action": ACTION, "propensity": PROP, "reward": REWARD} | kwargs
    for estimator in (ipw_value, snipw_value):
        with pytest.raises(ValueError, match=message):
            estimator(**args)
    with pytest.raises(ValueError, match=message):
        dr_value(**args, q_hat=Q_HAT[: len(args["reward"])], actions=ACTIONS)


def test_dr_and_se_reject_bad_q_hat_and_kind() -> None:
    with pytest.raises(ValueError, match="q_hat must have shape"):
        dr_value(CHOSEN, ACTION, PROP, REWARD, Q_HAT[:, :3], ACTIONS)
    with pytest.raises(ValueError, match="q_hat must be finite"):
        dr_value(CHOSEN, ACTION, PROP, REWARD, np.full((6, 4), np.nan), ACTIONS)
    with pytest.raises(ValueError, match="actions must be unique"):
        dr_value(CHOSEN, ACTION, PROP, REWARD, Q_HAT, ("promo", "promo", "none", "x"))
    with pytest.raises(ValueError, match="q_hat is required"):
        policy_value_se("dr", CHOSEN, ACTION, PROP, REWARD)
    with pytest.raises(ValueError, match="kind must be one of"):
        policy_value_se("ips", CHOSEN, ACTION, PROP, REWARD)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- off-policy: bandit
# Three contexts, four actions; Bernoulli rewards with these means (rows: context).
MEANS = np.array(
    [
        [0.30, 0.10, 0.15, 0.20],
        [0.05, 0.40, 0.20, 0.10],
        [0.10, 0.10, 0.35, 0.25],
    ]
)
TARGET = np.array([0, 1, 2])  # the target policy: the best action of each context


def _logged_bandit(seed: int, n: int, offset: float = 0.0) -> dict[str, np.ndarray]:
    """Uniform-random logging over the four actions (propensity 1/4) and a fixed target.

    Rewards are ``offset`` plus a Bernoulli draw with the context-action's mean.
    """
    rng = np.random.default_rng(seed)
    context = rng.integers(0, 3, n)
    logged = rng.integers(0, 4, n)
    reward = offset + (rng.random(n) < MEANS[context, logged])
    names = np.array(ACTIONS)
    return {
        "context": context,
        "chosen": names[TARGET[context]],
        "action": names[logged],
        "propensity": np.full(n, 0.25),
        "reward": reward,
        # The target's true value on these rows' contexts.
        "truth": offset + MEANS[context, TARGET[context]],
        "q_good": offset + MEANS[context],
    }


def test_ipw_snipw_dr_are_unbiased_on_a_simulated_bandit() -> None:
    data = _logged_bandit(seed=2024, n=200_000)
    true_value = data["truth"].mean()
    args = (data["chosen"], data["action"], data["propensity"], data["reward"])
    for kind in ("ipw", "snipw", "dr"):
        estimate = policy_value_se(kind, *args, q_hat=data["q_good"])
        assert abs(estimate.value - true_value) < 3 * estimate.se, kind
        low, high = estimate.ci(0.997)
        assert low < true_value < high
    assert ipw_value(*args) == pytest.approx(policy_value_se("ipw", *args).value)
    assert snipw_value(*args) == pytest.approx(policy_value_se("snipw", *args).value)


def test_ipw_of_the_logging_policy_is_the_mean_reward() -> None:
    # A fresh draw from the (uniform) logging policy as the target: weights average to 1.
    data = _logged_bandit(seed=5, n=200_000)
    rng = np.random.default_rng(6)
    resampled = np.array(ACTIONS)[rng.integers(0, 4, data["reward"].size)]
    args = (resampled, data["action"], data["propensity"], data["reward"])
    estimate = policy_value_se("ipw", *args)
    assert abs(estimate.value - data["reward"].mean()) < 3 * estimate.se


def test_dr_has_lower_variance_than_ipw_with_a_good_q_hat() -> None:
    # A common reward level (like revenue's baseline) is pure variance for IPW, which only sees
    # it on the matching quarter of the rows and scales it by 4; DR's q_hat absorbs it.
    ipw_estimates, dr_estimates = [], []
    for seed in range(40):
        data = _logged_bandit(seed=seed, n=2_000, offset=5.0)
        args = (data["chosen"], data["action"], data["propensity"], data["reward"])
        ipw = policy_value_se("ipw", *args)
        dr = policy_value_se("dr", *args, q_hat=data["q_good"])
        assert dr.se < ipw.se
        ipw_estimates.append(ipw.value - data["truth"].mean())
        dr_estimates.append(dr.value - data["truth"].mean())
    assert np.var(dr_estimates) < 0.2 * np.var(ipw_estimates)


# --------------------------------------------------------------------------- off-policy: properties

logged_rows = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from(ACTIONS), min_size=n, max_size=n),
        st.lists(st.sampled_from(ACTIONS), min_size=n, max_size=n),
        st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n),
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
    )
)


@PROPERTY
@given(logged_rows)
def test_snipw_lies_within_the_reward_range(rows) -> None:
    chosen, action, propensity, reward = rows
    value = snipw_value(chosen, action, propensity, reward)
    if not any(c == a for c, a in zip(chosen, action, strict=True)):
        assert math.isnan(value)
        return
    assert min(reward) - 1e-9 <= value <= max(reward) + 1e-9


@PROPERTY
@given(logged_rows, st.floats(0.05, 1.0))
def test_snipw_ignores_a_common_scale_of_the_propensities(rows, scale) -> None:
    chosen, action, propensity, reward = rows
    base = snipw_value(chosen, action, propensity, reward)
    scaled = snipw_value(chosen, action, np.array(propensity) * scale, reward)
    assert (math.isnan(base) and math.isnan(scaled)) or scaled == pytest.approx(base, abs=1e-9)


@PROPERTY
@given(logged_rows, st.floats(0.01, 1.0))
def test_logging_policy_on_its_own_rows(rows, p) -> None:
    # chosen == action everywhere with one propensity p: IPW = mean(r) / p, SNIPW = mean(r).
    _, action, _, reward = rows
    propensity = np.full(len(action), p)
    assert snipw_value(action, action, propensity, reward) == pytest.approx(
        np.mean(reward), abs=1e-9
    )
    assert ipw_value(action, action, propensity, reward) == pytest.approx(
        np.mean(reward) / p, rel=1e-9, abs=1e-9
    )


@PROPERTY
@given(logged_rows)
def test_dr_with_zero_q_hat_is_ipw(rows) -> None:
    chosen, action, propensity, reward = rows
    q_zero = np.zeros((len(reward), len(ACTIONS)))
    assert dr_value(chosen, action, propensity, reward, q_zero, ACTIONS) == pytest.approx(
        ipw_value(chosen, action, propensity, reward), rel=1e-12, abs=1e-9
    )


# --------------------------------------------------------------------------- simulated truth
TRUTH = np.array(
    [
        [3.0, 1.0, 0.0, 0.5],  # best: promo
        [0.0, 2.0, 2.0, 1.0],  # tie apology_credit / recognition: the first listed wins
        [-1.0, -1.0, -0.5, 0.0],  # best: none
    ]
)


def test_true_policy_value_oracle_and_captured_share_by_hand() -> None:
    oracle = oracle_policy(TRUTH, ACTIONS)
    assert oracle.tolist() == ["promo", "apology_credit", "none"]
    oracle_value = true_policy_value(oracle, TRUTH, ACTIONS)
    assert oracle_value == pytest.approx((3 + 2 + 0) / 3)
    baseline = true_policy_value(["none"] * 3, TRUTH, ACTIONS)
    assert baseline == pytest.approx((0.5 + 1 + 0) / 3)
    policy = true_policy_value(["promo", "none", "recognition"], TRUTH, ACTIONS)
    assert policy == pytest.approx((3 + 1 - 0.5) / 3)
    # (3.5/3 - 1.5/3) / (5/3 - 1.5/3) = 2 / 3.5
    assert captured_share(policy, baseline, oracle_value) == pytest.approx(2 / 3.5)
    assert captured_share(oracle_value, baseline, oracle_value) == 1.0
    assert captured_share(baseline, baseline, oracle_value) == 0.0


def test_captured_share_edge_cases() -> None:
    assert math.isnan(captured_share(1.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="oracle_value"):
        captured_share(1.0, 2.0, 1.5)
    with pytest.raises(ValueError, match="policy_value must be finite"):
        captured_share(math.nan, 0.0, 1.0)


def test_truth_functions_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="truth_values must have shape"):
        true_policy_value(["promo", "none"], TRUTH, ACTIONS)
    with pytest.raises(ValueError, match="unknown action"):
        true_policy_value(["promo", "none", "upgrade"], TRUTH, ACTIONS)
    with pytest.raises(ValueError, match="truth_values must have shape"):
        oracle_policy(TRUTH, ACTIONS[:3])
    with pytest.raises(ValueError, match="sequence of action names"):
        oracle_policy(TRUTH, "promo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        oracle_policy(np.zeros((0, 4)), ACTIONS)


@PROPERTY
@given(
    st.integers(1, 20).flatmap(
        lambda n: st.lists(
            st.lists(st.floats(-10, 10), min_size=4, max_size=4), min_size=n, max_size=n
        )
    )
)
def test_oracle_is_at_least_as_good_as_any_fixed_action(truth) -> None:
    truth = np.array(truth)
    oracle_value = true_policy_value(oracle_policy(truth, ACTIONS), truth, ACTIONS)
    for action in ACTIONS:
        assert oracle_value >= true_policy_value([action] * len(truth), truth, ACTIONS) - 1e-12
