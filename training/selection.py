"""Model selection from logged data only: cross-fitted doubly-robust policy values.

A simulator's truth is never available to a brand, so the method and its regularization are
chosen on the logged decisions alone. Decisions are split into folds by customer; the reward
model (``ConversionFareModel``) is cross-fitted, giving every row AIPW scores from a model that
never saw it; each candidate learns on the other folds and is scored on the held-out fold, so
every row's term ``Γ[i, π(x_i)]`` is out of sample. The mean and its standard error give an
honest 95% interval of each candidate's value, and *paired* intervals of its gain over doing
nothing and over the rule policy (paired: the same rows and scores, so the shared noise
cancels and the interval is far narrower than the two values' intervals).

A learned candidate is selected only when the lower bounds of both gains are positive (each
at Bonferroni's corrected number of standard errors, so that the chance of any candidate
passing by noise stays under 5%: ``choose``); else the better of ``none`` and the rules stays
(the "never worse than the baselines beyond noise" guarantee is the point). One approximation
is stated rather than hidden: the scores a candidate trains on come from reward models that
saw the held-out fold's rows (nested cross-fitting would cost K more reward models per fold),
a small optimistic bias of the candidates that learn from scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from features.rule_policy import RulePolicy, load_rule_policy
from training.confidence import ConfidenceFilter
from training.dataset import TrainingSet
from training.gate import BaselineCheck
from training.policy_learning import (
    NONE_CODE,
    ConversionFareModel,
    Interval,
    PolicyTree,
    cross_fitted_parts,
    folds_by_customer,
    restrict_scores,
    structural_scores,
)
from training.priors import HybridPolicy, judge_rules
from training.served import (
    ConfidentValuePolicy,
    DirectPolicy,
    FittedPolicy,
    HybridAdvisor,
    NonePolicy,
    RulePolicyAsWritten,
    RulesThenModel,
    TreePolicy,
    ValuePolicy,
    advised_choice,
    choose_names,
    consent_mask,
    model_values,
)
from training.uplift import MultiActionUplift
from training.value import ActionCosts
from training.windows import tune_windows

#: A learner: from training rows and their AIPW scores to a fitted policy.
Learner = Callable[[TrainingSet, np.ndarray], FittedPolicy]
#: The baselines every candidate must beat: doing nothing and the brand's rule file.
BASELINES: tuple[str, ...] = ("none", "rules")


def _none(_train: TrainingSet, _scores: np.ndarray) -> FittedPolicy:
    return NonePolicy()


def _fit_s(train: TrainingSet, params: Mapping[str, Any]) -> MultiActionUplift:
    return MultiActionUplift(**params).fit(
        train.X, train.decisions["action"], train.decisions["propensity"], train.outcomes
    )


def _uplift_params(seed: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``nba train``'s uplift model settings, or the S-learner's defaults."""
    return dict(params) if params is not None else {"method": "s", "random_state": seed,
                                                    "n_jobs": 1}  # fmt: skip


def s_learner(costs: ActionCosts, seed: int = 0, params: Mapping[str, Any] | None = None
              ) -> Learner:  # fmt: skip
    """The uplift model (``nba train``'s, with its ``params``) choosing by its values."""
    settings = _uplift_params(seed, params)

    def learn(train: TrainingSet, _scores: np.ndarray) -> FittedPolicy:
        return ValuePolicy(_fit_s(train, settings), costs)

    return learn


def confident_s_learner(
    costs: ActionCosts,
    seed: int = 0,
    calibrate: float = 0.3,
    params: Mapping[str, Any] | None = None,
) -> Learner:
    """The uplift model acting only when confident (``training.confidence``): fitted on
    ``1 - calibrate`` of the customers, its confidence bins calibrated on the rest."""
    settings = _uplift_params(seed, params)

    def learn(train: TrainingSet, scores: np.ndarray) -> FittedPolicy:
        customers = train.decisions["customer_id"].to_numpy(object)
        held = folds_by_customer(customers, round(1 / calibrate), seed + 1) == 0
        model = _fit_s(train.take(np.flatnonzero(~held)), settings)
        cal = train.take(np.flatnonzero(held))
        values = model_values(model, cal.X.to_numpy(np.float64), costs)
        chosen = np.array(ACTIONS, dtype=object)[
            advised_choice(ValuePolicy(model, costs).advise(cal.X.to_numpy(np.float64),
                                                            cal.features, values),
                           consent_mask(cal.features))]  # fmt: skip
        codes = pd.Index(ACTIONS).get_indexer(chosen)
        gain = values[np.arange(len(codes)), codes]
        filt = ConfidenceFilter().fit(chosen, gain, scores[held], customers[held])
        return ConfidentValuePolicy(model, filt, costs)

    return learn


def direct(costs: ActionCosts, seed: int = 0) -> Learner:
    """Argmax of the conversion x fare value model (none unless an action beats it)."""

    def learn(train: TrainingSet, _scores: np.ndarray) -> FittedPolicy:
        return DirectPolicy(ConversionFareModel(costs, seed).fit(*_arrays(train)))

    return learn


def tree(max_depth: int, min_leaf_share: float, confidence_z: float = 0.0) -> Learner:
    """A policy tree over the AIPW scores; ``min_leaf_share`` of the training rows per leaf."""

    def learn(train: TrainingSet, scores: np.ndarray) -> FittedPolicy:
        min_leaf = max(50, round(min_leaf_share * len(train)))
        fitted = PolicyTree(max_depth, min_leaf, confidence_z=confidence_z).fit(
            train.X.to_numpy(np.float64), scores
        )
        return TreePolicy(fitted)

    return learn


def rule_file(policy: RulePolicy) -> Learner:
    """The brand's rule policy file as written (``features.rule_policy``)."""

    def learn(_train: TrainingSet, _scores: np.ndarray) -> FittedPolicy:
        return RulePolicyAsWritten(policy)

    return learn


def hybrid(policy: RulePolicy, seed: int = 0) -> Learner:
    """The rule file judged by the data, with confident learned overrides (``training.priors``)."""

    def learn(train: TrainingSet, scores: np.ndarray) -> FittedPolicy:
        customers = train.decisions["customer_id"].to_numpy(object)
        tuned, changes = tune_windows(policy, train.features, scores, customers)
        fitted = HybridPolicy.fit(
            tuned,
            train.X.to_numpy(np.float64),
            train.features,
            scores,
            customers,
            min_leaf=max(50, round(0.005 * len(train))),
            random_state=seed,
        )
        return HybridAdvisor(fitted, windows=changes)

    return learn


class UnknownCandidate(ValueError):
    """A candidate policy name ``default_learners`` does not know."""


def rules_then_model(policy: RulePolicy, costs: ActionCosts, seed: int = 0,
                     params: Mapping[str, Any] | None = None) -> Learner:  # fmt: skip
    """The rule file judged by the data where a rule matches, the uplift model elsewhere."""
    settings = _uplift_params(seed, params)

    def learn(train: TrainingSet, scores: np.ndarray) -> FittedPolicy:
        customers = train.decisions["customer_id"].to_numpy(object)
        tuned, changes = tune_windows(policy, train.features, scores, customers)
        verdicts = judge_rules(tuned, train.features, scores, customers)
        return RulesThenModel(tuned, verdicts, _fit_s(train, settings), costs, changes)

    return learn


#: Every candidate ``default_learners`` knows (``NBA_TRAIN_CANDIDATES`` names a subset; the
#: baselines are always compared).
CANDIDATES: tuple[str, ...] = (
    "s-learner", "s-learner confident", "conv x fare", "tree d2", "tree d3", "tree d4",
    "tree d3 confident", "hybrid", "rules + s-learner",
)  # fmt: skip
#: The candidates compared by default: each one tested costs every other power (Bonferroni), so
#: only those that were best somewhere on the world presets (docs/benchmarks.md) and are not
#: dominated elsewhere; ``CONFIDENT`` ones when only confident policies may be selected.
DEFAULT_CANDIDATES: tuple[str, ...] = ("rules + s-learner", "s-learner", "tree d2", "hybrid")


def default_learners(
    costs: ActionCosts,
    seed: int = 0,
    rule_policy: RulePolicy | None = None,
    candidates: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    confident_only: bool = False,
) -> dict[str, Learner]:
    """The baselines (``none``, the brand's rule file as ``rules``) and the candidates: the
    uplift model (with ``params``: ``nba train``'s settings), the direct method, trees and the
    hybrids; ``candidates`` names them (default ``DEFAULT_CANDIDATES``, or ``CONFIDENT`` with
    ``confident_only``). Raises ``UnknownCandidate`` naming an unknown one."""
    policy = rule_policy if rule_policy is not None else load_rule_policy()
    every: dict[str, Learner] = {
        "s-learner": s_learner(costs, seed, params),
        "s-learner confident": confident_s_learner(costs, seed, params=params),
        "conv x fare": direct(costs, seed),
        "tree d2": tree(2, 0.02),
        "tree d3": tree(3, 0.01),
        "tree d4": tree(4, 0.005),
        "tree d3 confident": tree(3, 0.005, confidence_z=1.64),
        "hybrid": hybrid(policy, seed),
        "rules + s-learner": rules_then_model(policy, costs, seed, params),
    }
    default = CONFIDENT if confident_only else DEFAULT_CANDIDATES
    names = list(default if candidates is None else candidates)
    unknown = [n for n in names if n not in every]
    if unknown:
        raise UnknownCandidate(f"unknown candidate policies {unknown}: expected some of "
                               f"{list(every)}")  # fmt: skip
    return {"none": _none, "rules": rule_file(policy)} | {n: every[n] for n in names}


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
    """Doubly-robust scores ``(n, 4)`` of ``data``, conversion first
    (``policy_learning.structural_scores``), with the conversion, fare and unsubscribe models
    cross-fitted over ``folds`` (a promo where none may be sent scored as doing nothing:
    ``restrict_scores``)."""
    X, action, propensity, converted, revenue, unsub = _arrays(data)
    outcomes = {"converted": converted, "revenue": revenue, "unsubscribed": unsub}
    parts = cross_fitted_parts(X, outcomes, action, propensity, folds, costs, seed)
    scores = structural_scores(parts, action, propensity, converted, unsub, costs)
    return restrict_scores(scores, data.features)


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


def adjusted_z(candidates: int) -> float:
    """The number of standard errors a gain's lower bound is taken at when ``candidates``
    learned policies are tested at once: Bonferroni's correction of the 95% interval
    (two-sided 5% split over the candidates: 1.96 for one, 2.77 for nine)."""
    return float(NormalDist().inv_cdf(1 - 0.025 / max(1, candidates)))


def choose(
    table: pd.DataFrame, confident_only: bool = False, require_baselines: bool = True
) -> tuple[str, str]:
    """The selected policy and why (one line): the learned candidate of highest value among
    those whose gains over both baselines have positive lower bounds, else the better
    baseline. ``confident_only``: only ``CONFIDENT`` candidates may be selected.
    ``require_baselines`` False (``NBA_GATE_BASELINES=false``): the learned candidate of
    highest value, beyond noise or not.

    Testing ten candidates each at 95% lets one beat the baselines by chance far more often
    than 5% of the time (measured: a tree was selected in a world without effects), so each
    gain's lower bound is taken at ``adjusted_z`` standard errors (Bonferroni): the chance
    that any candidate passes by noise alone stays under 5%, whatever the number of
    candidates and in any order (a fixed test sequence, tried before, stopped at the first
    failing candidate and never reached a better one behind it)."""
    learned = table.drop(index=[b for b in BASELINES if b in table.index])
    if confident_only:
        learned = learned.loc[[name for name in learned.index if name in CONFIDENT]]
    if not require_baselines and len(learned):
        best = str(learned["value"].idxmax())
        return best, f"{best}: the highest cross-fitted value (baselines not required)"
    z = adjusted_z(len(learned))
    lb_none = learned["gain_vs_none"] - z * learned["se_vs_none"]
    lb_rules = learned["gain_vs_rules"] - z * learned["se_vs_rules"]
    sure = learned.loc[(lb_none > 0) & (lb_rules > 0)]
    if len(sure):
        best = str(sure["value"].idxmax())
        row = sure.loc[best]
        return best, (
            f"{best}: gain over none {row['gain_vs_none']:+.2f} (lower bound "
            f"{lb_none[best]:+.2f}), over the rules {row['gain_vs_rules']:+.2f} (lower bound "
            f"{lb_rules[best]:+.2f}) per decision; bounds at {z:.2f} standard errors for "
            f"{len(learned)} candidates"
        )
    base = table.loc[[b for b in BASELINES if b in table.index]]
    fallback = str(base["value"].idxmax())
    detail = ""
    if len(learned):
        top = str(learned["value"].idxmax())
        detail = (
            f" (best, {top}: lower bounds {lb_none[top]:+.2f} vs none, {lb_rules[top]:+.2f} "
            f"vs the rules at {z:.2f} standard errors for {len(learned)} candidates)"
        )
    return (
        fallback,
        f"{fallback} stays: no learned policy beats none and the rules beyond noise{detail}",
    )


def checks_of(selection: Selection) -> tuple[BaselineCheck, ...]:
    """The selected policy's gains over the baselines and their lower bounds, at the
    corrected number of standard errors ``choose`` tested them at: the gate's evidence."""
    table = selection.table
    learned = [n for n in table.index if n not in BASELINES]
    if selection.confident_only:
        learned = [n for n in learned if n in CONFIDENT]
    z = adjusted_z(len(learned))
    row = table.loc[selection.selected]
    level = "95%" if len(learned) <= 1 else f"95% (corrected for {len(learned)} candidates)"
    return tuple(
        BaselineCheck(label, float(row[f"gain_vs_{key}"]),
                      float(row[f"gain_vs_{key}"] - z * row[f"se_vs_{key}"]), level)
        for key, label in (("none", "none"), ("rules", "the rule policy"))
    )  # fmt: skip


@dataclass
class Selection:
    """Outcome of ``select``: the cross-fitted table, the choice, its reason, the scores."""

    table: pd.DataFrame
    selected: str
    reason: str
    scores: np.ndarray
    folds: np.ndarray
    confident_only: bool = False


def select(
    train: TrainingSet,
    learners: dict[str, Learner],
    costs: ActionCosts,
    k: int = 3,
    seed: int = 0,
    confident_only: bool = False,
    require_baselines: bool = True,
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
            chosen[name][out] = choose_names(learn(part, scores[inside]), held.X, held.features)
    table = value_table(chosen, scores, train.decisions["customer_id"].to_numpy(object))
    selected, reason = choose(table, confident_only, require_baselines)
    return Selection(table, selected, reason, scores, folds, confident_only)
