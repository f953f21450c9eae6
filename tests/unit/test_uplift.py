"""The multi-action uplift estimator and the value model, on a seeded synthetic decision log.

The log has known heterogeneous effects on conversion: promo helps when x0 > 0 and hurts
otherwise, apology_credit helps only when x1 > 0.5, recognition does nothing. 80% of decisions
come from a uniform random policy, 20% from an epsilon-greedy rule that sends promos to customers
who would often convert anyway (x2 > 0), so the rule's choices are confounded with the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from training.uplift import MIN_ARM_ROWS, MultiActionUplift
from training.value import ActionCosts, expected_value, realized_value, true_value

ARMS = ("promo", "apology_credit", "recognition", "none")
ACTIONS = ARMS[:3]
# Small, regularized models: a few thousand rows of noisy pseudo-outcomes need coarse trees.
FAST = {"n_estimators": 40, "learning_rate": 0.1, "num_leaves": 8, "min_child_samples": 100}


@dataclass(frozen=True)
class Log:
    X: pd.DataFrame
    action: np.ndarray
    propensity: np.ndarray
    outcomes: pd.DataFrame
    #: The full distribution of the policy that took each decision, one column per arm.
    propensities: pd.DataFrame
    #: True conversion uplift of each action in ACTIONS versus none, (n, 3).
    true_uplift: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_log(n: int = 6000, seed: int = 0, rule_share: float = 0.2) -> Log:
    """A logged bandit with known effects; see the module docstring."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x0": rng.normal(size=n),
            "x1": rng.uniform(size=n),
            "x2": rng.normal(size=n),
            "x3": rng.normal(size=n),
            "x4": rng.normal(size=n),
        }
    )
    X.loc[rng.random(n) < 0.1, "x4"] = np.nan  # NaN is a valid feature value
    x0, x1, x2, x3 = (X[c].to_numpy() for c in ("x0", "x1", "x2", "x3"))
    base = -1.0 + 1.5 * (x2 > 0)  # x2 drives conversion whatever the action
    effect = [np.where(x0 > 0, 1.0, -1.0), np.where(x1 > 0.5, 1.5, 0.0), np.zeros(n), np.zeros(n)]
    p_convert = np.column_stack([_sigmoid(base + e) for e in effect])
    p_unsub = _sigmoid(np.array([-3.0 + 1.2, -3.0, -3.0, -3.0]))  # promos annoy a little
    # The rule: promo to likely converters, apology to low-x2 customers with x1 > 0.8, else none;
    # it takes its preferred action with probability 0.85, each other one with 0.05.
    preferred = np.where(x2 > 0, 0, np.where(x1 > 0.8, 1, 3))
    rule = np.full((n, 4), 0.05)
    rule[np.arange(n), preferred] = 0.85
    by_rule = rng.random(n) < rule_share
    dist = np.where(by_rule[:, None], rule, 0.25)
    taken = (rng.random(n)[:, None] < np.cumsum(dist, axis=1)).argmax(axis=1)
    rows = np.arange(n)
    converted = rng.random(n) < p_convert[rows, taken]
    fare = 100.0 * np.exp(0.3 * x3) * rng.lognormal(0.0, 0.2, n)
    outcomes = pd.DataFrame(
        {
            "converted": converted,
            "revenue": np.where(converted, np.round(fare, 2), 0.0),
            "unsubscribed": rng.random(n) < p_unsub[taken],
        }
    )
    return Log(
        X=X,
        action=np.array(ARMS, dtype=object)[taken],
        propensity=dist[rows, taken],
        outcomes=outcomes,
        propensities=pd.DataFrame(dist, columns=list(ARMS)),
        true_uplift=p_convert[:, :3] - p_convert[:, [3]],
    )


@pytest.fixture(scope="module")
def log() -> Log:
    return make_log()


@pytest.fixture(scope="module")
def fitted(log: Log) -> dict[str, MultiActionUplift]:
    return {
        method: MultiActionUplift(method=method, **FAST).fit(
            log.X, log.action, log.propensity, log.outcomes
        )
        for method in ("s", "t", "dr")
    }


def _fit(log: Log, **overrides: object) -> MultiActionUplift:
    """Fit a fast DR model on ``log`` with some fit arguments replaced."""
    args = {
        "X": log.X,
        "action": log.action,
        "propensity": log.propensity,
        "outcomes": log.outcomes,
    }
    args.update(overrides)
    return MultiActionUplift(method="dr", **FAST).fit(**args)


# ------------------------------------------------------------ conventions


def test_sklearn_conventions(log: Log) -> None:
    est = MultiActionUplift(method="t", n_folds=3, random_state=7, **FAST)
    params = est.get_params()
    assert params["n_folds"] == 3 and params["random_state"] == 7
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert MultiActionUplift().set_params(**params).get_params() == params
    assert vars(est) == params  # __init__ only stores its arguments

    with pytest.raises(NotFittedError):
        est.predict(log.X)
    with pytest.raises(NotFittedError):
        est.predict_effects(log.X)
    with pytest.raises(NotFittedError):
        est.contributions(log.X.iloc[[0]])

    assert est.fit(log.X, log.action, log.propensity, log.outcomes) is est
    learned = set(vars(est)) - set(params)
    assert {"actions_", "feature_names_", "models_", "base_models_", "n_features_in_"} <= learned
    assert all(name.endswith("_") for name in learned)
    assert clone(est).get_params() == params
    assert not hasattr(clone(est), "models_")  # clone is unfitted


@pytest.mark.parametrize("method", ["s", "t", "dr"])
def test_prediction_shapes_and_order(
    log: Log, fitted: dict[str, MultiActionUplift], method: str
) -> None:
    est = fitted[method]
    assert est.actions_ == ACTIONS and est.feature_names_ == list(log.X.columns)
    X = log.X.iloc[:7]
    pred = est.predict(X)
    assert pred.shape == (7, 3) and np.all(np.abs(pred) <= 1)
    effects = est.predict_effects(X)
    assert set(effects) == {
        "converted",
        "revenue",
        "unsubscribed",
        "base_converted",
        "base_revenue",
    }
    assert all(effects[o].shape == (7, 3) for o in ("converted", "revenue", "unsubscribed"))
    assert effects["base_converted"].shape == effects["base_revenue"].shape == (7,)
    np.testing.assert_allclose(effects["converted"], pred)
    # Columns are selected by name, not position; a single row works.
    np.testing.assert_allclose(est.predict(X[X.columns[::-1]]), pred)
    np.testing.assert_allclose(est.predict(X.iloc[[2]]), pred[[2]])

    # Column order follows actions=: the same model with actions reversed swaps the columns.
    flipped = MultiActionUplift(method=method, actions=ACTIONS[::-1], **FAST).fit(
        log.X, log.action, log.propensity, log.outcomes
    )
    np.testing.assert_allclose(flipped.predict(X), pred[:, ::-1], atol=1e-12)

    contrib = est.contributions(X.iloc[[0]])
    assert list(contrib.index) == list(ACTIONS)
    assert list(contrib.columns) == [*log.X.columns, "bias"]
    if method == "dr":  # TreeSHAP contributions add up to the model's prediction
        np.testing.assert_allclose(contrib.sum(axis=1).to_numpy(), pred[0], atol=1e-9)
    with pytest.raises(ValueError, match="one row"):
        est.contributions(X.iloc[:2])


# ------------------------------------------------------------ recovery


@pytest.mark.parametrize("method", ["s", "t", "dr"])
def test_recovers_the_effects(log: Log, fitted: dict[str, MultiActionUplift], method: str) -> None:
    pred = fitted[method].predict(log.X)
    truth = log.true_uplift
    x0, x1 = log.X["x0"].to_numpy(), log.X["x1"].to_numpy()
    # Over data seeds 0-7 both methods gave: correlations >= 0.78 (promo), >= 0.58 (apology);
    # promo region means beyond +-0.12; apology mean >= 0.235 where x1 > 0.5 and within +-0.043
    # elsewhere; |recognition mean| <= 0.053. The bounds below leave a margin to all of these.
    assert np.corrcoef(pred[:, 0], truth[:, 0])[0, 1] > 0.5
    assert np.corrcoef(pred[:, 1], truth[:, 1])[0, 1] > 0.4
    # Signs in the regions: promo helps when x0 > 0 and hurts otherwise (true means ~ +-0.2).
    # The S-learner's trees split on the action only where the data insist, which shrinks its
    # effects toward zero (0.077 here with 40 trees): the sign must hold, with a smaller margin.
    margin = 0.05 if method == "s" else 0.1
    assert pred[x0 > 0, 0].mean() > margin and pred[x0 <= 0, 0].mean() < -margin
    # Apology helps only when x1 > 0.5 (true mean ~ 0.3 there, 0 elsewhere).
    assert pred[x1 > 0.5, 1].mean() > 0.15 and abs(pred[x1 <= 0.5, 1].mean()) < 0.06
    # Recognition does nothing.
    assert abs(pred[:, 2].mean()) < 0.08


def test_propensities_undo_a_confounded_rule_policy() -> None:
    """The rule sends promos to customers who convert anyway because of x2, and the models do not
    see x2 (as when a policy acts on a signal that is not in the feature set). A per-arm
    regression then credits the promo with x2's effect; the propensity-weighted estimators do not,
    whatever their outcome models miss, because the logged propensities carry the rule's choice.

    Promo average-uplift errors over data seeds 0-9 (n = 10000): unweighted T-learner +0.051 to
    +0.103 (the bias is ~ +0.08), DR and weighted T |error| <= 0.029. The margins sit between.
    """
    log = make_log(n=10_000, seed=0)
    X = log.X.drop(columns="x2")
    true_ate = log.true_uplift[:, 0].mean()
    unweighted = np.ones(len(X))  # propensity 1 everywhere = no weighting

    def promo_ate_error(method: str, propensity: np.ndarray) -> float:
        est = MultiActionUplift(method=method, **FAST).fit(X, log.action, propensity, log.outcomes)
        return float(est.predict(X)[:, 0].mean() - true_ate)

    naive = promo_ate_error("t", unweighted)
    dr = promo_ate_error("dr", log.propensity)
    weighted_t = promo_ate_error("t", log.propensity)
    assert naive > 0.045  # the confounding is real and large in this data
    assert abs(dr) < 0.035 and abs(weighted_t) < 0.035
    assert abs(dr) < naive - 0.025
    # It is the propensities that do it: DR without them is as biased as the naive T-learner.
    assert promo_ate_error("dr", unweighted) > 0.045


# ------------------------------------------------------------ determinism, propensities


def test_deterministic_for_a_seed(log: Log, fitted: dict[str, MultiActionUplift]) -> None:
    X = log.X.iloc[:500]
    again = _fit(log)
    np.testing.assert_array_equal(again.predict(X), fitted["dr"].predict(X))
    # Parallel training gives the very same models.
    parallel = MultiActionUplift(method="dr", n_jobs=2, **FAST).fit(
        log.X, log.action, log.propensity, log.outcomes
    )
    np.testing.assert_array_equal(parallel.predict(X), fitted["dr"].predict(X))
    other = MultiActionUplift(method="dr", random_state=1, **FAST).fit(
        log.X, log.action, log.propensity, log.outcomes
    )
    assert not np.array_equal(other.predict(X), fitted["dr"].predict(X))  # other folds


def test_full_propensities_are_checked_not_needed(
    log: Log, fitted: dict[str, MultiActionUplift]
) -> None:
    """The pseudo-outcome divides only by the taken action's propensity, which the log holds:
    the full distribution gives the same models and adds overlap diagnostics."""
    est = _fit(log, propensities=log.propensities)
    X = log.X.iloc[:500]
    np.testing.assert_array_equal(est.predict(X), fitted["dr"].predict(X))
    assert est.low_overlap_share_ == {a: 0.0 for a in ACTIONS}  # every action >= 0.05 here
    assert fitted["dr"].low_overlap_share_ is None

    no_promo = log.propensities.copy()
    # e.g. customers who opted out of marketing: the policy could not send them a promo.
    no_promo.loc[:99, "none"] += no_promo.loc[:99, "promo"]
    no_promo.loc[:99, "promo"] = 0.0
    taken_promo_or_none = np.isin(log.action[:100], ["promo", "none"])
    keep = np.r_[~taken_promo_or_none, np.ones(len(log.action) - 100, bool)]
    sub = {
        "X": log.X[keep].reset_index(drop=True),
        "action": log.action[keep],
        "propensity": log.propensity[keep],
        "outcomes": log.outcomes[keep].reset_index(drop=True),
        "propensities": no_promo[keep].reset_index(drop=True),
    }
    est = _fit(log, **sub)
    assert est.low_overlap_share_ is not None
    assert est.low_overlap_share_["promo"] == pytest.approx(
        (~taken_promo_or_none).sum() / keep.sum()
    )

    wrong = log.propensities.copy()
    wrong.loc[5, log.action[5]] = log.propensity[5] / 2  # still a distribution, but not the log's
    with pytest.raises(ValueError, match=r"disagrees with the logged propensity.*row 5"):
        _fit(log, propensities=wrong)
    with pytest.raises(ValueError, match="lacks columns \\['none'\\]"):
        _fit(log, propensities=log.propensities.drop(columns="none"))
    too_much = log.propensities.copy()
    too_much.loc[0, :] = 0.5
    with pytest.raises(ValueError, match="summing to at most 1"):
        _fit(log, propensities=too_much)


# ------------------------------------------------------------ bad inputs


def _bad_inputs(log: Log) -> dict[str, tuple[dict[str, object], str]]:
    few = log.action.copy()
    recognition = np.flatnonzero(few == "recognition")
    few[recognition[MIN_ARM_ROWS - 10 :]] = "none"  # 40 recognition rows left
    never = np.where(log.action == "apology_credit", "none", log.action)
    unknown = log.action.copy()
    unknown[3] = "upgrade"
    missing_action = log.action.copy()
    missing_action[4] = None
    text_X = log.X.assign(x3=log.X["x3"].astype(str))

    def propensity(value: float) -> np.ndarray:
        p = log.propensity.copy()
        p[10] = value
        return p

    return {
        "too few rows": (
            {"action": few},
            r"action 'recognition' has only 40 logged rows; at least 50 are needed",
        ),
        "never appears": ({"action": never}, r"action 'apology_credit' never appears"),
        "control missing": (
            {"action": np.where(log.action == "none", "promo", log.action)},
            r"the control 'none' never appears",
        ),
        "unknown action": ({"action": unknown}, r"unknown actions \['upgrade'\].*add them"),
        "missing action": ({"action": missing_action}, r"action is missing on 1 rows"),
        "action length": ({"action": log.action[:-1]}, r"action has 5999 values for 6000 rows"),
        "zero propensity": ({"propensity": propensity(0.0)}, r"propensity must be in \(0, 1\]"),
        "negative propensity": ({"propensity": propensity(-0.2)}, r"rows \[10\]: \[-0.2\]"),
        "propensity above 1": ({"propensity": propensity(1.5)}, r"in \(0, 1\].*rows \[10\]"),
        "missing propensity": ({"propensity": propensity(np.nan)}, r"1 rows are missing"),
        "outcome column": (
            {"outcomes": log.outcomes.drop(columns="revenue")},
            r"outcomes lacks columns \['revenue'\]",
        ),
        "outcome rows": (
            {"outcomes": log.outcomes.iloc[:-5]},
            r"outcomes has 5995 rows for 6000 rows",
        ),
        "outcome values": (
            {"outcomes": log.outcomes.assign(converted=log.outcomes["converted"] * 2)},
            r"outcomes\['converted'\] must be 0/1",
        ),
        "negative revenue": (
            {"outcomes": log.outcomes.assign(revenue=-log.outcomes["revenue"])},
            r"outcomes\['revenue'\] must be finite and >= 0",
        ),
        "reordered outcomes": (
            {"outcomes": log.outcomes.iloc[::-1]},
            r"outcomes's index differs from X's",
        ),
        "non-numeric X": ({"X": text_X}, r"X must be numeric; columns \['x3'\]"),
    }


BAD_INPUTS = (
    "too few rows",
    "never appears",
    "control missing",
    "unknown action",
    "missing action",
    "action length",
    "zero propensity",
    "negative propensity",
    "propensity above 1",
    "missing propensity",
    "outcome column",
    "outcome rows",
    "outcome values",
    "negative revenue",
    "reordered outcomes",
    "non-numeric X",
)


def test_every_bad_input_is_tested(log: Log) -> None:
    assert tuple(_bad_inputs(log)) == BAD_INPUTS


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(log: Log, case: str) -> None:
    overrides, message = _bad_inputs(log)[case]
    with pytest.raises(ValueError, match=message):
        _fit(log, **overrides)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        ("method", "x", "method must be one of"),
        ("actions", ("promo", "promo"), "must not repeat"),
        ("control", "promo", "control must be a name not among actions"),
        ("n_folds", 1, "n_folds must be an int >= 2"),
        ("propensity_clip", 0.0, r"propensity_clip must be in \(0, 1\)"),
    ],
)
def test_bad_parameters_raise_at_fit(log: Log, param: str, value: object, message: str) -> None:
    est = MultiActionUplift(**{**FAST, param: value})  # __init__ accepts anything (sklearn)
    with pytest.raises(ValueError, match=message):
        est.fit(log.X, log.action, log.propensity, log.outcomes)


def test_predict_needs_the_fitted_features(fitted: dict[str, MultiActionUplift], log: Log) -> None:
    with pytest.raises(ValueError, match=r"lacks feature columns \['x1'\]"):
        fitted["dr"].predict(log.X.drop(columns="x1"))


# ------------------------------------------------------------ value model


def test_expected_value_by_hand() -> None:
    effects = {
        # two rows, actions promo, apology_credit, recognition
        "revenue": np.array([[20.0, 10.0, 1.0], [-5.0, 0.0, 0.0]]),
        "unsubscribed": np.array([[0.02, -0.01, 0.0], [0.10, 0.0, 0.0]]),
        "converted": np.zeros((2, 3)),
        "base_revenue": np.array([100.0, 2.0]),
        "base_converted": np.array([0.3, 0.01]),
    }
    value = expected_value(effects, ACTIONS, ActionCosts())
    # promo, row 0: 20 - 0.08 * (100 + 20) - 0.02 * 30 = 20 - 9.6 - 0.6 = 9.8
    # apology, row 0: 10 - 50 + 0.01 * 30 = -39.7; recognition, row 0: 1 - 2 = -1
    # promo, row 1: revenue under promo max(2 - 5, 0) = 0, so no promo cost: -5 - 3 = -8
    expected = np.array([[9.8, -39.7, -1.0], [-8.0, -50.0, -2.0]])
    np.testing.assert_allclose(value, expected)
    cheap = ActionCosts(promo_fare_share=0.0, apology_credit=0.0, recognition=0.0, unsubscribe=0.0)
    np.testing.assert_allclose(expected_value(effects, ACTIONS, cheap), effects["revenue"])
    with pytest.raises(ValueError, match="missing \\['base_revenue'\\]"):
        expected_value({k: v for k, v in effects.items() if k != "base_revenue"}, ACTIONS)
    with pytest.raises(ValueError, match="shape"):
        expected_value(effects, ACTIONS[:2])


def test_realized_value_by_hand() -> None:
    value = realized_value(
        np.array(["promo", "promo", "apology_credit", "recognition", "none"], dtype=object),
        np.array([200.0, 0.0, 150.0, 0.0, 80.0]),
        np.array([False, True, False, True, False]),
        ActionCosts(),
    )
    # 200 - 16; 0 - 0 - 30; 150 - 50; 0 - 2 - 30; 80
    np.testing.assert_allclose(value, [184.0, -30.0, 100.0, -32.0, 80.0])
    with pytest.raises(ValueError, match="unknown actions \\['upgrade'\\]"):
        realized_value(["upgrade"], [1.0], [False])
    with pytest.raises(ValueError, match="one value per decision"):
        realized_value(["none"], [1.0, 2.0], [False])


def test_true_value_by_hand() -> None:
    truth = pd.DataFrame(
        {
            "decision_id": ["D1"],
            **{f"p_convert_{a}": [0.5] for a in ARMS},
            "revenue_promo": [100.0],
            "revenue_apology_credit": [90.0],
            "revenue_recognition": [60.0],
            "revenue_none": [50.0],
            "p_unsubscribe_promo": [0.1],
            "p_unsubscribe_apology_credit": [0.0],
            "p_unsubscribe_recognition": [0.0],
            "p_unsubscribe_none": [0.02],
        }
    )
    value = true_value(truth, ARMS, ActionCosts())
    # 100 - 8 - 3; 90 - 50; 60 - 2; 50 - 0.6
    np.testing.assert_allclose(value, [[89.0, 40.0, 58.0, 49.4]])
    with pytest.raises(ValueError, match="missing columns \\['revenue_none'"):
        true_value(truth.drop(columns="revenue_none"), ARMS)


def test_action_costs_are_validated() -> None:
    assert ActionCosts() == ActionCosts(0.08, 50.0, 2.0, 30.0)  # contract defaults
    with pytest.raises(ValueError, match="promo_fare_share"):
        ActionCosts(promo_fare_share=1.5)
    with pytest.raises(ValueError, match="apology_credit"):
        ActionCosts(apology_credit=-1.0)


def test_s_learner_revenue_is_structural(log: Log, fitted: dict[str, MultiActionUplift]) -> None:
    """An action changes whether a customer books, not the fare: the S-learner's revenue uplift
    is its conversion uplift times one fare per row, and its base revenue the same fare times
    the control's conversion probability."""
    effects = fitted["s"].predict_effects(log.X.iloc[:50])
    fare = effects["base_revenue"] / effects["base_converted"]
    np.testing.assert_allclose(effects["revenue"], effects["converted"] * fare[:, None])
    assert (fare >= 0).all()
