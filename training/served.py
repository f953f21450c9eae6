"""The policy ``nba train`` selects, as the service runs it: one object, one rule of choice.

A selected policy (``training.selection``) is more than an uplift model: a policy tree, a
confidence filter, the brand's rule file judged by the data, or a hybrid of rules and learned
overrides. ``ServedPolicy`` wraps whichever was selected with the uplift model that every
answer still needs (uplifts, feature contributions, the drift reference, compiled trees for
batches) and is what MLflow stores and the service loads.

Every fitted policy gives, for each decision, an ``Advice``:

* ``values``: the value the policy puts on each action (currency per decision, gain over
  ``none``): the uplift model's expected values, a policy tree leaf's doubly-robust mean gain,
  or the direct model's;
* ``lower``: the one-sided 95% lower bound of that value where the policy has one (confidence
  filter, honest tree leaves), NaN where it has none;
* ``allowed``: the actions the policy is willing to take (with a bound: only where it is
  positive, "act only when confident");
* ``rule``: for a rule-based policy, the brand rule whose action it takes (its segment), and
  ``preferred``, that action's column (-1: no rule, choose by value).

``advised_choice`` turns an advice and the eligible actions (the guardrails' verdict in the
service, the contract's promo consent offline) into the action. Training scores every candidate
with it and the service chooses with it (``serving.decider``, ``serving.batch``,
``serving.score``), so the policy the gate judged is the policy that answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from features.rule_policy import RulePolicy
from training.confidence import ConfidenceFilter
from training.policy_learning import NONE_CODE, ConversionFareModel, PolicyTree, promo_allowed
from training.priors import HybridPolicy, RuleVerdict, kept_rules, rule_columns
from training.value import ActionCosts, expected_value
from training.windows import WindowChange

#: ``blocked_by`` name of an action a confident policy will not take (its lower bound <= 0).
NOT_CONFIDENT: Final = "not_confident"
#: ``blocked_by`` name of an action a rule-based policy does not take in the customer's segment.
RULE_POLICY: Final = "rule_policy"
_K: Final = len(ACTIONS)
#: The rules' inputs: a frame of decisions, or one decision's feature values.
Features: TypeAlias = pd.DataFrame | Mapping[str, Any]


@dataclass
class Advice:
    """A policy's view of some decisions (module docstring); arrays of ``n`` rows."""

    values: np.ndarray
    lower: np.ndarray
    allowed: np.ndarray
    preferred: np.ndarray
    rule: np.ndarray | None = None

    def blocked_name(self) -> str:
        """The ``blocked_by`` name for an action this policy does not allow."""
        return RULE_POLICY if self.rule is not None else NOT_CONFIDENT


def _advice(values: np.ndarray, lower: np.ndarray | None = None) -> Advice:
    """Advice of a policy choosing by value: allowed where the lower bound (if any) is > 0."""
    values = np.asarray(values, dtype=np.float64).copy()
    values[:, NONE_CODE] = 0.0
    n = len(values)
    if lower is None:
        lower = np.full((n, _K), np.nan)
    allowed = np.isnan(lower) | (lower > 0)
    allowed[:, NONE_CODE] = True
    return Advice(values, lower, allowed, np.full(n, -1, dtype=np.int64))


def advised_choice(advice: Advice, eligible: np.ndarray) -> np.ndarray:
    """Column (``ACTIONS``) of each decision's action: a rule-based policy's ``preferred``
    action when eligible (else ``none``); otherwise the eligible, allowed action of highest
    positive value (else ``none``): ``serving.policy.choose``'s greedy rule."""
    ok = np.asarray(eligible, dtype=bool) & advice.allowed
    ok[:, NONE_CODE] = True
    scored = np.where(ok & np.isfinite(advice.values), advice.values, -np.inf)
    scored[:, NONE_CODE] = 0.0
    best = scored.argmax(axis=1)
    rows = np.arange(len(scored))
    greedy = np.where(scored[rows, best] > 0.0, best, NONE_CODE)
    pref = advice.preferred
    ruled = pref >= 0
    take = ok[rows, np.maximum(pref, 0)]
    return np.where(ruled, np.where(take, pref, NONE_CODE), greedy)


def consent_mask(features: pd.DataFrame) -> np.ndarray:
    """``(n, 4)`` actions the raw contract allows offline: no promo without consent."""
    mask = np.ones((len(features), _K), dtype=bool)
    mask[:, ACTIONS.index("promo")] = promo_allowed(features)
    return mask


class FittedPolicy(Protocol):
    """A selected policy's fitted parts (``training.selection``'s learners return one)."""

    #: The uplift model it chooses with, when it chooses by that model's values.
    value_model: Any

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        """Advice for rows ``X`` (model features) whose features (rules' inputs) are
        ``features`` (a frame, or one decision's values); ``ev``: the value model's
        ``(n, 4)`` expected values when the caller has them (else the policy computes what
        it needs)."""
        ...


def model_values(model: Any, X: np.ndarray, costs: ActionCosts) -> np.ndarray:
    """``(n, 4)`` expected values (``ACTIONS`` order) of an uplift model."""
    effects = model.predict_effects(X)
    ev = expected_value(effects, model.actions_, costs)
    out = np.zeros((len(X), _K))
    for j, action in enumerate(model.actions_):
        out[:, ACTIONS.index(action)] = ev[:, j]
    return out


@dataclass
class ValuePolicy:
    """The uplift model's argmax (``nba``'s learner before policy selection)."""

    value_model: Any
    costs: ActionCosts = field(default_factory=ActionCosts)

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        return _advice(model_values(self.value_model, X, self.costs) if ev is None else ev)


@dataclass
class ConfidentValuePolicy:
    """The uplift model acting only where its calibrated lower bound is positive."""

    value_model: Any
    confidence: ConfidenceFilter
    costs: ActionCosts = field(default_factory=ActionCosts)

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        values = model_values(self.value_model, X, self.costs) if ev is None else ev
        return _advice(values, self.confidence.lower_bounds(values))


@dataclass
class TreePolicy:
    """A policy tree over AIPW scores: each leaf's mean gains are its values."""

    tree: PolicyTree
    value_model: Any = None

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        gain, lower = self.tree.predict_values(X)
        return _advice(gain, lower if self.tree.confidence_z > 0 else None)


@dataclass
class DirectPolicy:
    """The conversion x fare reward model's argmax (the direct method)."""

    model: ConversionFareModel
    value_model: Any = None

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        q = self.model.predict(np.asarray(X, dtype=np.float64))
        return _advice(q - q[:, [NONE_CODE]])


def _ruled(
    preferred: np.ndarray, rule: np.ndarray, values: np.ndarray, lower: np.ndarray | None = None
) -> Advice:
    """Advice of a rule-based policy: only the preferred action is allowed."""
    n = len(preferred)
    allowed = np.zeros((n, _K), dtype=bool)
    allowed[np.arange(n), preferred] = True
    allowed[:, NONE_CODE] = True
    values = np.asarray(values, dtype=np.float64).copy()
    values[:, NONE_CODE] = 0.0
    return Advice(
        values,
        np.full((n, _K), np.nan) if lower is None else lower,
        allowed,
        preferred.astype(np.int64),
        rule,
    )


def _segments(policy: RulePolicy, features: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
    """First matching rule per row (-1: none); a mapping is one decision's feature values,
    evaluated without building a frame (the request path)."""
    if isinstance(features, pd.DataFrame):
        return policy.segments(features)
    return np.array([policy.segment_one(features)], dtype=np.int64)


def _rule_names(policy: RulePolicy, segment: np.ndarray) -> np.ndarray:
    names = np.array([r.name for r in policy.rules] + [None], dtype=object)
    return names[segment]


@dataclass
class RulePolicyAsWritten:
    """The brand's rule file as written: the first matching rule's action."""

    policy: RulePolicy
    value_model: Any = None
    costs: ActionCosts = field(default_factory=ActionCosts)

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        segment = _segments(self.policy, features)
        kept = np.ones(len(self.policy.rules) + 1, dtype=bool)
        values = ev if ev is not None else np.full((len(X), _K), np.nan)
        return _ruled(rule_columns(self.policy, segment, kept),
                      _rule_names(self.policy, segment), values)  # fmt: skip


@dataclass
class HybridAdvisor:
    """Judged rules with confident learned overrides (``training.priors.HybridPolicy``).

    Where the override tree acts, its action is preferred (its leaf's values and bounds are
    relative to following the rules, so they are reported for that action only); elsewhere the
    judged rule's."""

    hybrid: HybridPolicy
    value_model: Any = None
    #: The rule windows the evidence moved (``training.windows``).
    windows: list[WindowChange] = field(default_factory=list)

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        policy = self.hybrid.policy
        segment = _segments(policy, features)
        kept = kept_rules(self.hybrid.verdicts, no_match=True)
        preferred = rule_columns(policy, segment, kept)
        rule = _rule_names(policy, segment)
        rule = np.where(kept[segment], rule, np.array(None, dtype=object))
        codes = self.hybrid.tree.predict_codes(np.asarray(X, dtype=np.float64))
        override = codes != NONE_CODE
        preferred = np.where(override, codes, preferred)
        rule = np.where(override, "learned override", rule)
        values = ev if ev is not None else np.full((len(X), _K), np.nan)
        return _ruled(preferred, rule.astype(object), values)


@dataclass
class RulesThenModel:
    """The judged rules where one matches; elsewhere the uplift model's choice by value.

    The brand's rules hold the rare moments a model trained on a few hundred of them cannot
    find (a milestone, a cancellation); the model targets the rest (promos by who responds)."""

    policy: RulePolicy
    verdicts: list[RuleVerdict]
    value_model: Any
    costs: ActionCosts = field(default_factory=ActionCosts)
    #: The rule windows the evidence moved (``training.windows``).
    windows: list[WindowChange] = field(default_factory=list)

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        values = model_values(self.value_model, X, self.costs) if ev is None else ev
        segment = _segments(self.policy, features)
        kept = kept_rules(self.verdicts, no_match=False)
        ruled = kept[segment]
        preferred = np.where(ruled, rule_columns(self.policy, segment, kept), -1)
        advice = _advice(values)
        advice.allowed[ruled] = False
        advice.allowed[ruled, NONE_CODE] = True
        advice.allowed[ruled, preferred[ruled]] = True
        advice.preferred = preferred.astype(np.int64)
        names = _rule_names(self.policy, segment)
        names[~ruled] = None
        advice.rule = names
        return advice


@dataclass
class NonePolicy:
    """Doing nothing (a baseline the selection may keep)."""

    value_model: Any = None

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray | None) -> Advice:
        n = len(X)
        return _ruled(np.full(n, NONE_CODE, dtype=np.int64), np.full(n, None, dtype=object),
                      np.full((n, _K), np.nan))  # fmt: skip


def choose_names(policy: FittedPolicy, X: pd.DataFrame, features: pd.DataFrame) -> np.ndarray:
    """A fitted policy's actions offline (the contract's consent only, as in evaluation)."""
    advice = policy.advise(X.to_numpy(np.float64), features, None)
    return np.array(ACTIONS, dtype=object)[advised_choice(advice, consent_mask(features))]


class ServedPolicy:
    """The selected policy with the uplift model every answer needs (module docstring).

    Behaves as the uplift model for everything but the choice (``predict``, effects,
    contributions, compiled trees), so MLflow's flavor, the drift reference and the service's
    explanations keep working; ``advise`` gives the choice's inputs.
    """

    def __init__(
        self,
        name: str,
        value_model: Any,
        policy: FittedPolicy,
        costs: ActionCosts,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.value_model = value_model
        self.policy = policy
        self.costs = costs
        self.summary = dict(summary or {})
        #: False when the choice is the uplift model's own argmax: the service then skips
        #: ``advise`` (the fast path it had before policy selection).
        self.advises = not isinstance(policy, ValuePolicy)

    # The uplift model's interface, delegated (explicitly: a typo must not reach it silently).
    @property
    def feature_names_(self) -> list[str]:
        return list(self.value_model.feature_names_)

    @property
    def actions_(self) -> tuple[str, ...]:
        return tuple(self.value_model.actions_)

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.value_model.predict(X))

    def predict_effects(self, X: Any) -> Any:
        return self.value_model.predict_effects(X)

    def predict_effects_row(self, x: np.ndarray) -> Any:
        # The request path: no copy of the model's answer.
        row = getattr(self.value_model, "predict_effects_row", None)
        return self.predict_effects(x[None, :]) if row is None else row(x)

    def contributions(self, X: Any) -> Any:
        return self.value_model.contributions(X)

    def contributions_row(self, x: np.ndarray, action: str) -> Any:
        return self.value_model.contributions_row(x, action)

    def compile_for_batches(self, folder: Any) -> int:
        compile_trees = getattr(self.value_model, "compile_for_batches", None)
        return 0 if compile_trees is None else int(compile_trees(folder))

    def advise(self, X: np.ndarray, features: Features, ev: np.ndarray) -> Advice:
        """The selected policy's advice for these decisions (``ev``: the uplift model's
        expected values, already computed by the caller with the server's costs)."""
        return self.policy.advise(np.asarray(X, dtype=np.float64), features, ev)

    def advise_one(self, x: np.ndarray, row: Mapping[str, Any], ev: np.ndarray) -> Advice:
        """``advise`` for one decision from its feature values (the request path)."""
        return self.policy.advise(x[None, :], row, ev[None, :])

    def describe(self) -> list[str]:
        """The policy in readable lines (``nba train`` prints them)."""
        lines = [f"policy: {self.name}"]
        policy = self.policy
        if isinstance(policy, TreePolicy):
            lines += policy.tree.describe(self.feature_names_)
        if isinstance(policy, HybridAdvisor | RulesThenModel):
            lines += [change.describe() for change in policy.windows]
        if isinstance(policy, HybridAdvisor):
            lines += [_verdict_line(v) for v in policy.hybrid.verdicts]
            lines += [f"override: {line}" for line in policy.hybrid.tree.describe(
                self.feature_names_) if not line.endswith("-> none")]  # fmt: skip
        if isinstance(policy, RulesThenModel):
            lines += [_verdict_line(v) for v in policy.verdicts]
            lines += ["elsewhere: the uplift model's action of highest value"]
        if isinstance(policy, RulePolicyAsWritten):
            lines += [f"rule {r.name} -> {r.action}" for r in policy.policy.rules]
        return lines


def _verdict_line(v: RuleVerdict) -> str:
    estimate = "" if np.isnan(v.gain) else f", gain {v.gain:+.2f} [{v.lower:+.2f}, {v.upper:+.2f}]"
    return f"rule {v.name} -> {v.action}: {v.verdict} ({v.rows} decisions{estimate})"
