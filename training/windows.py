"""Rules as priors: a rule's time window tuned where the logged evidence discriminates.

A brand writes "recognition within 14 days of a milestone"; whether 7 or 30 days would earn
more is a question the logged decisions can answer, when they hold enough of them. For each
rule of the rule policy, every top-level window of its condition (a ``days_since_*`` feature
compared with ``<=``) is tried at half and twice the written value (and the written one). A
candidate window replaces the written one only when the rule's total doubly-robust gain
(``Γ[i, action] - Γ[i, none]`` summed over the decisions it takes, per decision of the log) is
higher *beyond noise*: the per-decision difference between the two windows, paired on the same
decisions and clustered by customer, has a positive lower bound at Bonferroni's corrected
number of standard errors for the candidates tried. Thin evidence leaves the window as written.

The tuned policy is the same file with other numbers (``RulePolicy.spec``), so it pickles,
prints and serves like the brand's own; ``WindowChange`` says what moved and by how much.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from features.rule_policy import RulePolicy, parse_rule_policy
from training.policy_learning import NONE_CODE, Interval

#: Factors of the written window tried (the written one is the reference).
FACTORS: tuple[float, ...] = (0.5, 2.0)


@dataclass(frozen=True)
class WindowChange:
    """A rule's window moved by the evidence: from ``written`` to ``tuned`` days."""

    rule: str
    feature: str
    written: float
    tuned: float
    gain: float
    lower: float

    def describe(self) -> str:
        return (f"rule {self.rule}: {self.feature} <= {self.written:g} -> {self.tuned:g} days "
                f"(+{self.gain:.2f} a decision, lower bound {self.lower:+.2f})")  # fmt: skip


def _windows(condition: Any) -> list[int]:
    """Positions, in a rule's top-level ``all`` (or the condition itself: -1), of windows."""

    def is_window(c: Any) -> bool:
        return (isinstance(c, Mapping) and str(c.get("feature", "")).startswith("days_since_")
                and c.get("op") == "<=" and isinstance(c.get("value"), int | float)
                and not isinstance(c.get("value"), bool))  # fmt: skip

    if is_window(condition):
        return [-1]
    if isinstance(condition, Mapping) and isinstance(condition.get("all"), list):
        return [i for i, c in enumerate(condition["all"]) if is_window(c)]
    return []


def _with_value(spec: Any, rule: int, position: int, value: float) -> Any:
    out = copy.deepcopy(spec)
    when = out["rules"][rule]["when"]
    target = when if position < 0 else when["all"][position]
    target["value"] = value
    return out


def _window_of(spec: Any, rule: int, position: int) -> Mapping[str, Any]:
    when = spec["rules"][rule]["when"]
    return when if position < 0 else when["all"][position]


def _taken_gain(policy: RulePolicy, rule: int, features: pd.DataFrame, gain: np.ndarray
                ) -> np.ndarray:  # fmt: skip
    """Per decision: the rule's gain where it takes the decision (first match), else 0."""
    return np.where(policy.segments(features) == rule, gain, 0.0)


def tune_windows(
    policy: RulePolicy,
    features: pd.DataFrame,
    scores: np.ndarray,
    customers: np.ndarray,
    min_rows: int = 30,
) -> tuple[RulePolicy, list[WindowChange]]:
    """The rule policy with each window moved where the evidence says so (module docstring),
    and the changes. A policy loaded without its file (``spec`` None) is returned as is."""
    if policy.spec is None:
        return policy, []
    spec, changes = copy.deepcopy(policy.spec), []
    index = pd.Index(ACTIONS)
    for r, rule in enumerate(policy.rules):
        if rule.action == "none":
            continue
        gain = scores[:, index.get_loc(rule.action)] - scores[:, NONE_CODE]
        for position in _windows(spec["rules"][r]["when"]):
            window = _window_of(spec, r, position)
            written = float(window["value"])
            current = parse_rule_policy(spec, policy.source)
            base = _taken_gain(current, r, features, gain)
            tried = [round(written * f, 1) for f in FACTORS if round(written * f, 1) != written]
            z = float(NormalDist().inv_cdf(1 - 0.025 / max(1, len(tried))))
            best: tuple[float, Interval, Any] | None = None
            for value in tried:
                candidate = _with_value(spec, r, position, value)
                taken = _taken_gain(parse_rule_policy(candidate, policy.source), r, features,
                                    gain)  # fmt: skip
                changed = taken != base
                if int((changed | (taken != 0)).sum()) < min_rows:
                    continue
                est = Interval.of(taken - base, customers)
                if est.value - z * est.se > 0 and (best is None or est.value > best[1].value):
                    best = (value, est, candidate)
            if best is not None:
                value, est, spec = best
                changes.append(WindowChange(rule.name, str(window["feature"]), written, value,
                                            est.value, est.value - z * est.se))  # fmt: skip
    return (parse_rule_policy(spec, policy.source) if changes else policy), changes
