"""Rules as priors, data as judge: a brand's rule policy checked against its logged decisions.

Each rule of the rule policy (``features.rule_policy``, the brand's file) names a segment and
an action. On the logged decisions its value is estimated by pooling the doubly-robust (AIPW)
scores of the segment's rows: the mean of ``Γ[i, action] - Γ[i, none]`` with a 95% interval
clustered by customer (the scores come from the conversion x fare reward model,
``training.policy_learning``). Then:

* the interval lies below zero: the rule is **dropped** (its segment gets ``none``);
* the interval lies above zero: the rule is **confirmed**;
* otherwise the evidence is thin and the rule **stays as written** (a prior is not overturned
  by noise).

The hybrid policy starts from the judged rules and lets learned targeting act only where it is
confident: a policy tree with honest, confidence-tested leaves (``PolicyTree(confidence_z>0)``)
is grown on scores whose ``none`` column is replaced by the judged rules' own action, so a leaf
overrides the rules (or acts where no rule does) only when its gain over following them has a
positive lower bound. The hybrid is one more candidate of ``training.selection``: it goes
through the same cross-fitted selection and the same gate as any learned policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from features.rule_policy import RulePolicy
from training.policy_learning import NONE_CODE, Interval, PolicyTree

#: Verdicts on a rule.
DROPPED, CONFIRMED, AS_WRITTEN = "dropped", "confirmed", "as written (thin evidence)"


@dataclass(frozen=True)
class RuleVerdict:
    """One rule's estimated gain over doing nothing in its segment, and what follows."""

    name: str
    action: str
    rows: int
    gain: float
    lower: float
    upper: float
    verdict: str


def judge_rules(
    policy: RulePolicy,
    features: pd.DataFrame,
    scores: np.ndarray,
    customers: np.ndarray,
    min_rows: int = 30,
) -> list[RuleVerdict]:
    """Each rule's pooled DR gain in its segment (first match) and its verdict (module doc).

    A segment with fewer than ``min_rows`` logged decisions has no interval worth the name: it
    stays as written."""
    segment = policy.segments(features)
    index = pd.Index(ACTIONS)
    verdicts = []
    for i, rule in enumerate(policy.rules):
        rows = segment == i
        n = int(rows.sum())
        if n < min_rows or rule.action == "none":
            verdicts.append(RuleVerdict(rule.name, rule.action, n, np.nan, np.nan, np.nan,
                                        AS_WRITTEN))  # fmt: skip
            continue
        gain = scores[rows, index.get_loc(rule.action)] - scores[rows, NONE_CODE]
        est = Interval.of(gain, customers[rows])
        verdict = DROPPED if est.upper < 0 else CONFIRMED if est.lower > 0 else AS_WRITTEN
        verdicts.append(
            RuleVerdict(rule.name, rule.action, n, est.value, est.lower, est.upper, verdict)
        )
    return verdicts


def kept_rules(verdicts: list[RuleVerdict], no_match: bool) -> np.ndarray:
    """Per segment (each rule, then "no rule matched" last): whether the data kept it (a
    dropped rule's segment is sent to the default); ``no_match`` is the last entry."""
    return np.array([v.verdict != DROPPED for v in verdicts] + [no_match], dtype=bool)


def rule_columns(policy: RulePolicy, segment: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The action column (``ACTIONS``) of each row's segment (-1: no rule matched), the
    default's where the segment is not ``kept``."""
    actions = [r.action for r in policy.rules] + [policy.default]
    columns = np.array([ACTIONS.index(a) for a in actions], dtype=np.int64)
    return np.where(kept[segment], columns[segment], ACTIONS.index(policy.default))


def judged_choice(
    policy: RulePolicy, verdicts: list[RuleVerdict], features: pd.DataFrame
) -> np.ndarray:
    """The rule policy with dropped rules' segments sent to the default action."""
    columns = rule_columns(policy, policy.segments(features), kept_rules(verdicts, True))
    return np.array(ACTIONS, dtype=object)[columns]


@dataclass
class HybridPolicy:
    """Judged rules, overridden by a confident policy tree where it is confidently better."""

    policy: RulePolicy
    verdicts: list[RuleVerdict]
    tree: PolicyTree

    @classmethod
    def fit(
        cls,
        policy: RulePolicy,
        X: np.ndarray,
        features: pd.DataFrame,
        scores: np.ndarray,
        customers: np.ndarray,
        max_depth: int = 3,
        min_leaf: int = 200,
        confidence_z: float = 1.64,
        random_state: int = 0,
    ) -> HybridPolicy:
        """Judge the rules on ``scores`` and grow the override tree (module docstring)."""
        verdicts = judge_rules(policy, features, scores, customers)
        prior = judged_choice(policy, verdicts, features)
        rows = np.arange(len(prior))
        relative = scores.copy()
        # "none" in the tree now means "follow the judged rules".
        relative[:, NONE_CODE] = scores[rows, pd.Index(ACTIONS).get_indexer(prior)]
        tree = PolicyTree(max_depth, min_leaf, confidence_z=confidence_z,
                          random_state=random_state).fit(X, relative)  # fmt: skip
        return cls(policy, verdicts, tree)
