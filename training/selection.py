"""Model selection from logged data only: cross-fitted doubly-robust policy values.

A simulator's truth is never available to a brand, so the method and its regularization are
chosen on the logged decisions alone. Decisions are split into folds by customer; the reward
model (``ConversionFareModel``) is cross-fitted, giving every row AIPW scores from a model that
never saw it; each candidate learns on the other folds and is scored on the held-out fold, so
every row's term ``Γ[i, π(x_i)]`` is out of sample. The mean and its standard error give an
honest 95% interval of each candidate's value, and *paired* intervals of its gain over doing
nothing and over the rule policy (paired: the same rows and scores, so the shared noise
cancels and the interval is far narrower than the two values' intervals).

A learned candidate is selected only when the lower bounds of both gains are positive
(tested in a fixed sequence that keeps the family-wise error at 5%, ``choose``); else
the better of ``none`` and the rules stays (the "never worse than the baselines beyond noise"
guarantee is the point). One approximation is stated rather than hidden: the scores a candidate
trains on come from reward models that saw the held-out fold's rows (nested cross-fitting
would cost K more reward models per fold), a small optimistic bias of the candidates that
learn from scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from features.rule_policy import RulePolicy
from training.baselines import rules_v1
from training.confidence import ConfidenceFilter
from training.dataset import TrainingSet
from training.evaluate import learned_choice
from training.policy_learning import (
    NONE_CODE,
    ConversionFareModel,
    Interval,
    PolicyTree,
    aipw_scores,
    cross_fitted_values,
    feasible,
    folds_by_customer,
    restrict_scores,
)
from training.priors import HybridPolicy
from training.uplift import MultiActionUplift
from training.value import ActionCosts, realized_value

#: A fitted policy: action names for (model features, all features) of some rows.
Policy = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]
#: A learner: from training rows and their AIPW scores to a fitted policy.
Learner = Callable[[TrainingSet, np.ndarray], Policy]
#: The baselines every candidate must beat.
BASELINES: tuple[str, ...] = ("none", "rules")


def _none(_train: TrainingSet, _scores: np.ndarray) -> Policy:
    return lambda X, _f: np.full(len(X), "none", dtype=object)


def _rules(_train: TrainingSet, _scores: np.ndarray) -> Policy:
    return lambda _X, features: rules_v1(features)


def s_learner(costs: ActionCosts, seed: int = 0) -> Learner:
    """The current learner (``nba train``'s default S-learner) as a candidate policy."""

    def learn(train: TrainingSet, _scores: np.ndarray) -> Policy:
        model = MultiActionUplift(method="s", random_state=seed, n_jobs=1).fit(
            train.X, train.decisions["action"], train.decisions["propensity"], train.outcomes
        )
        return lambda X, _f: learned_choice(model, X, costs)[0]

    return learn


def confident_s_learner(costs: ActionCosts, seed: int = 0, calibrate: float = 0.3) -> Learner:
    """The S-learner acting only when confident (``training.confidence``): fitted on
    ``1 - calibrate`` of the customers, its confidence bins calibrated on the rest."""

    def learn(train: TrainingSet, scores: np.ndarray) -> Policy:
        customers = train.decisions["customer_id"].to_numpy(object)
        held = folds_by_customer(customers, round(1 / calibrate), seed + 1) == 0
        fit_part = train.take(np.flatnonzero(~held))
        model = MultiActionUplift(method="s", random_state=seed, n_jobs=1).fit(
            fit_part.X,
            fit_part.decisions["action"],
            fit_part.decisions["propensity"],
            fit_part.outcomes,
        )

        def gain_of(X: pd.DataFrame, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
            chosen, values = learned_choice(model, X, costs)
            chosen = feasible(chosen, features)
            codes = pd.Index(ACTIONS).get_indexer(chosen)
            return chosen, values[np.arange(len(codes)), codes]

        cal = train.take(np.flatnonzero(held))
        chosen, gain = gain_of(cal.X, cal.features)
        filt = ConfidenceFilter().fit(chosen, gain, scores[held], customers[held])

        def policy(X: pd.DataFrame, features: pd.DataFrame) -> np.ndarray:
            return filt.apply(*gain_of(X, features))

        return policy

    return learn


def direct(costs: ActionCosts, seed: int = 0) -> Learner:
    """Argmax of the conversion x fare value model (none unless an action beats it)."""

    def learn(train: TrainingSet, _scores: np.ndarray) -> Policy:
        model = ConversionFareModel(costs, seed).fit(*_arrays(train))

        def policy(X: pd.DataFrame, _f: pd.DataFrame) -> np.ndarray:
            return np.array(ACTIONS, dtype=object)[model.predict(X.to_numpy(np.float64)).argmax(1)]

        return policy

    return learn


def tree(max_depth: int, min_leaf_share: float, confidence_z: float = 0.0) -> Learner:
    """A policy tree over the AIPW scores; ``min_leaf_share`` of the training rows per leaf."""

    def learn(train: TrainingSet, scores: np.ndarray) -> Policy:
        min_leaf = max(50, round(min_leaf_share * len(train)))
        fitted = PolicyTree(max_depth, min_leaf, confidence_z=confidence_z).fit(
            train.X.to_numpy(np.float64), scores
        )
        return lambda X, _f: fitted.predict(X.to_numpy(np.float64))

    return learn


def rule_file(policy: RulePolicy) -> Learner:
    """The brand's rule policy file as written (``features.rule_policy``)."""

    def learn(_train: TrainingSet, _scores: np.ndarray) -> Policy:
        return lambda _X, features: policy.choose(features)

    return learn


def hybrid(policy: RulePolicy, seed: int = 0) -> Learner:
    """The rule file judged by the data, with confident learned overrides (``training.priors``)."""

    def learn(train: TrainingSet, scores: np.ndarray) -> Policy:
        fitted = HybridPolicy.fit(
            policy,
            train.X.to_numpy(np.float64),
            train.features,
            scores,
            train.decisions["customer_id"].to_numpy(object),
            min_leaf=max(50, round(0.005 * len(train))),
            random_state=seed,
        )
        return lambda X, features: fitted.choose(X.to_numpy(np.float64), features)

    return learn


def default_learners(
    costs: ActionCosts, seed: int = 0, rule_policy: RulePolicy | None = None
) -> dict[str, Learner]:
    """The candidates compared: baselines, the current learner, the direct method, trees, and
    with a ``rule_policy`` the brand's rule file as written and the hybrid."""
    learners: dict[str, Learner] = {"none": _none, "rules": _rules}
    if rule_policy is not None:
        learners["rule file"] = rule_file(rule_policy)
    learners |= {
        "s-learner": s_learner(costs, seed),
        "s-learner confident": confident_s_learner(costs, seed),
        "conv x fare": direct(costs, seed),
        "tree d2": tree(2, 0.02),
        "tree d3": tree(3, 0.01),
        "tree d4": tree(4, 0.005),
        "tree d3 confident": tree(3, 0.005, confidence_z=1.64),
    }
    if rule_policy is not None:
        learners["hybrid"] = hybrid(rule_policy, seed)
    return learners


def _arrays(
    data: TrainingSet,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out = data.outcomes
    return (
        data.X.to_numpy(np.float64),
        data.decisions["action"].to_numpy(object),
        data.decisions["propensity"].to_numpy(np.float64),
        out["converted"].to_numpy(np.float64),
        out["revenue"].to_numpy(np.float64),
        out["unsubscribed"].to_numpy(np.float64),
    )


def logged_scores(
    data: TrainingSet, costs: ActionCosts, folds: np.ndarray, seed: int = 0
) -> np.ndarray:
    """AIPW scores ``(n, 4)`` of ``data`` with a reward model cross-fitted over ``folds``
    (a promo where none may be sent scored as doing nothing: ``restrict_scores``)."""
    X, action, propensity, converted, revenue, unsub = _arrays(data)
    outcomes = {"converted": converted, "revenue": revenue, "unsubscribed": unsub}
    q = cross_fitted_values(X, outcomes, action, propensity, folds, costs, seed)
    reward = realized_value(action, revenue, unsub, costs)
    return restrict_scores(aipw_scores(q, action, propensity, reward), data.features)


def value_table(
    chosen: dict[str, np.ndarray], scores: np.ndarray, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """DR value of each policy and its paired gains over ``none`` and the rules, with 95%
    intervals, from AIPW ``scores`` of the same rows (``chosen``: action names per policy;
    ``groups``: customer per row, for clustered errors)."""
    rows = np.arange(len(scores))
    index = pd.Index(ACTIONS)

    def terms(names: np.ndarray) -> np.ndarray:
        return scores[rows, index.get_indexer(names)]

    none_t, rules_t = scores[:, NONE_CODE], terms(chosen["rules"]) if "rules" in chosen else None
    table = []
    for name, picks in chosen.items():
        t = terms(picks)
        value, gain_none = Interval.of(t, groups), Interval.of(t - none_t, groups)
        entry = {"policy": name, "value": value.value, "se": value.se,
                 "gain_vs_none": gain_none.value, "se_vs_none": gain_none.se,
                 "lb_vs_none": gain_none.lower}  # fmt: skip
        if rules_t is not None:
            gain_rules = Interval.of(t - rules_t, groups)
            entry |= {"gain_vs_rules": gain_rules.value, "se_vs_rules": gain_rules.se,
                      "lb_vs_rules": gain_rules.lower}  # fmt: skip
        table.append(entry)
    return pd.DataFrame(table).set_index("policy")


#: Candidates that act only when confident (``training.confidence``, honest tree leaves, the
#: hybrid's confident overrides): the only learned ones ``select(confident_only=True)`` takes.
CONFIDENT: tuple[str, ...] = ("s-learner confident", "tree d3 confident", "hybrid")


#: The order candidates are tested in (fixed before seeing any data: the incumbent learner
#: first, then the others by how well they did on other worlds); unlisted names come last.
TEST_ORDER: tuple[str, ...] = (
    "s-learner", "tree d2", "hybrid", "tree d3", "tree d3 confident", "s-learner confident",
    "conv x fare", "tree d4", "rule file",
)  # fmt: skip


def choose(table: pd.DataFrame, confident_only: bool = False) -> tuple[str, str]:
    """The selected policy and why (one line): the learned candidate of highest value among
    those whose gains over both baselines have positive lower bounds, else the better
    baseline. ``confident_only``: only ``CONFIDENT`` candidates may be selected.

    Testing ten candidates each at 95% lets one beat the baselines by chance far more often
    than 5% of the time (measured: a tree was selected in a world without effects). The tests
    are a fixed sequence: candidates in ``TEST_ORDER``, each at 95%, stopping at the first
    that fails; the family-wise error stays at 5% (the order is fixed before the data), and the
    incumbent, tested first, keeps the full power a single test has (Bonferroni over ten would
    need 2.8 standard errors instead of 1.96)."""
    learned = table.drop(index=[b for b in BASELINES if b in table.index])
    if confident_only:
        learned = learned.loc[[name for name in learned.index if name in CONFIDENT]]
    rank = {name: i for i, name in enumerate(TEST_ORDER)}
    ordered = sorted(learned.index, key=lambda name: rank.get(str(name), len(rank)))
    passed = []
    for name in ordered:
        row = learned.loc[name]
        if not (row["lb_vs_none"] > 0 and row.get("lb_vs_rules", 1.0) > 0):
            break
        passed.append(name)
    learned = learned.loc[ordered]
    sure = learned.loc[passed]
    if len(sure):
        best = str(sure["value"].idxmax())
        row = sure.loc[best]
        return best, (
            f"{best}: gain over none {row['gain_vs_none']:+.2f} (95% lower bound "
            f"{row['lb_vs_none']:+.2f}), over rules {row['gain_vs_rules']:+.2f} "
            f"(lower bound {row['lb_vs_rules']:+.2f}) per decision"
        )
    base = table.loc[[b for b in BASELINES if b in table.index]]
    fallback = str(base["value"].idxmax())
    top = str(learned["value"].idxmax()) if len(learned) else "no candidate"
    detail = ""
    if len(learned):
        row = learned.loc[top]
        detail = (
            f" (best, {top}: lower bounds {row['lb_vs_none']:+.2f} vs none, "
            f"{row.get('lb_vs_rules', math.nan):+.2f} vs rules)"
        )
    return (
        fallback,
        f"{fallback} stays: no learned policy beats none and rules beyond noise{detail}",
    )


@dataclass
class Selection:
    """Outcome of ``select``: the cross-fitted table, the choice, its reason, the scores."""

    table: pd.DataFrame
    selected: str
    reason: str
    scores: np.ndarray
    folds: np.ndarray


def select(
    train: TrainingSet,
    learners: dict[str, Learner],
    costs: ActionCosts,
    k: int = 3,
    seed: int = 0,
    confident_only: bool = False,
) -> Selection:
    """Cross-fitted DR values of every learner on ``train`` and the choice (module docstring)."""
    folds = folds_by_customer(train.decisions["customer_id"].to_numpy(object), k, seed)
    scores = logged_scores(train, costs, folds, seed)
    chosen = {name: np.empty(len(train), dtype=object) for name in learners}
    for fold in range(k):
        out = np.flatnonzero(folds == fold)
        inside = np.flatnonzero(folds != fold)
        part, held = train.take(inside), train.take(out)
        for name, learn in learners.items():
            picks = learn(part, scores[inside])(held.X, held.features)
            chosen[name][out] = feasible(picks, held.features)
    table = value_table(chosen, scores, train.decisions["customer_id"].to_numpy(object))
    selected, reason = choose(table, confident_only)
    return Selection(table, selected, reason, scores, folds)
