"""The served policy's advice in the service's terms: blocked actions, a preferred one, bounds.

``training.served.ServedPolicy`` gives, per decision, the values it acts on, their lower bounds,
the actions it is willing to take and, for a rule-based policy, its action (``Advice``). The
service keeps one rule of choice (``serving.policy``): an action the policy will not take is
ineligible and says why in ``blocked_by`` (``not_confident``: its lower bound is not positive;
``rule_policy``: the customer's rule segment gives another action), so the answer stays "the
eligible action of highest value", and a rule-based policy's action is ``prefer``-red.
These helpers are pure; the decider and the batch call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.contract import ACTIONS
from training.served import Advice


def advises(estimator: Any) -> bool:
    """Whether a loaded model chooses through ``advise`` (a ``ServedPolicy`` whose choice is
    not the uplift model's own argmax)."""
    return bool(getattr(estimator, "advises", False))


def one(
    advice: Advice | None, blocked: Mapping[str, Sequence[str]]
) -> tuple[Mapping[str, Sequence[str]], str | None, dict[str, float] | None]:
    """For one decision (row 0 of ``advice``): the guardrails' ``blocked`` plus the actions
    the policy will not take, the policy's preferred action, and the values' lower bounds."""
    if advice is None:
        return blocked, None, None
    out = {a: tuple(names) for a, names in blocked.items()}
    for j, action in enumerate(ACTIONS):
        if not advice.allowed[0, j]:
            out[action] = (*out.get(action, ()), advice.blocked_name())
    column = int(advice.preferred[0])
    lowers = {a: float(advice.lower[0, j]) for j, a in enumerate(ACTIONS)}
    return out, (ACTIONS[column] if column >= 0 else None), lowers


def values_of(advice: Advice, row: int = 0) -> dict[str, float]:
    """The policy's values of one decision's actions, by name."""
    return dict(zip(ACTIONS, advice.values[row].tolist(), strict=True))


def many(
    advice: Advice | None,
    rows: np.ndarray,
    mask: np.ndarray,
    blocked_by: list[list[tuple[str, ...]]],
) -> np.ndarray | None:
    """For the batch's ``rows``: adds the actions the policy will not take to ``mask`` and
    ``blocked_by`` (in place) and returns the preferred columns (None without advice)."""
    if advice is None:
        return None
    refused = ~advice.allowed[rows]
    mask |= refused
    for k, j in zip(*np.nonzero(refused), strict=True):
        names = blocked_by[int(k)]
        names[int(j)] = (*names[int(j)], advice.blocked_name())
    return np.asarray(advice.preferred[rows])


def finite_or_none(value: float) -> float | None:
    """A JSON-friendly number: None for NaN and infinities."""
    return value if math.isfinite(value) else None


def reasons(advice: Advice | None, row: int = 0) -> list[str]:
    """Plain-language lines for ``explain``: the rule the policy follows, and the actions it
    will not take for want of confidence."""
    if advice is None:
        return []
    out = []
    rule = advice.rule[row] if advice.rule is not None else None
    if rule is not None:
        column = int(advice.preferred[row])
        action = ACTIONS[column] if column >= 0 else "none"
        out.append(f"rule policy: {rule} gives {action}")
    for j, action in enumerate(ACTIONS):
        lower, value = float(advice.lower[row, j]), float(advice.values[row, j])
        if not advice.allowed[row, j] and advice.rule is None and math.isfinite(lower):
            out.append(f"{action}: worth {value:+.2f} but its 95% lower bound is {lower:+.2f}: "
                       "not confident")  # fmt: skip
    return out
