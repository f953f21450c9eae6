"""Reasons for a decision in plain language: the facts behind it and the model's strongest inputs.

``facts`` reads the customer's features (stored and derived, as the guardrails see them) and says
what a service agent would want to know first: an open case, a recent disruption, a
compensation, a milestone, an opt-out. ``contribution_texts`` names the features that pushed the
chosen action's conversion uplift most, from LightGBM's own TreeSHAP contributions
(``MultiActionUplift.contributions``). Both are pure functions of their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

#: How far back a negative experience, compensation or milestone is worth mentioning (days).
RECENT_DAYS: Final = 30.0
#: Tenure (days) from which a customer's loyalty is mentioned (5 years).
LONG_TENURE_DAYS: Final = 1826.0


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, str | bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def ago(days: float) -> str:
    """``today``, ``yesterday`` or ``N days ago`` for a duration in days."""
    if days < 1:
        return "today"
    if days < 2:
        return "yesterday"
    return f"{int(days)} days ago"


def since(days: float) -> str:
    """``today``, ``1 day`` or ``N days`` (for "open since ...")."""
    if days < 1:
        return "today"
    whole = int(days)
    return f"{whole} day" if whole == 1 else f"{whole} days"


def facts(row: Mapping[str, Any], found: bool = True) -> list[str]:
    """Plain facts about a customer behind a decision, most pressing first.

    ``row`` holds ``schema.STORED`` and ``schema.DERIVED`` values (missing: None or NaN);
    ``found`` is False for a customer the online store does not know.
    """
    if not found:
        return ["new visitor: no history on record, decided on defaults"]
    out: list[str] = []
    open_cases = _number(row.get("open_case_count")) or 0
    if open_cases > 0:
        age = _number(row.get("oldest_open_case_age_days"))
        case = row.get("oldest_open_case_id")
        if case and age is not None:
            out.append(f"case {case} open since {since(age)}")
        else:
            out.append(f"{int(open_cases)} service case(s) open")
    negative = _number(row.get("days_since_last_negative"))
    kind = row.get("last_negative_kind")
    if negative is not None and negative <= RECENT_DAYS:
        delay = _number(row.get("last_negative_delay_minutes")) or 0
        if kind == "delay" and delay > 0:
            out.append(f"flight delayed {int(delay)} min {ago(negative)}")
        elif kind == "cancellation":
            out.append(f"flight cancelled {ago(negative)}")
        elif kind == "complaint":
            out.append(f"complaint filed {ago(negative)}")
        else:
            out.append(f"negative experience {ago(negative)}")
        if row.get("compensated_since_last_negative") is True:
            out.append(f"already compensated for the {kind or 'negative experience'}")
        elif negative is not None:
            out.append("not compensated for it yet")
    milestone = _number(row.get("days_since_last_milestone"))
    miles = _number(row.get("last_milestone_miles"))
    if milestone is not None and milestone <= RECENT_DAYS and miles:
        out.append(f"crossed {int(miles):,} miles {ago(milestone)}")
    if row.get("unsubscribed") is True or row.get("marketing_opt_in") is False:
        out.append("opted out of marketing")
    tenure = _number(row.get("tenure_days"))
    if tenure is not None and tenure >= LONG_TENURE_DAYS:
        out.append(f"customer for {int(tenure / 365.25)} years")
    return out


def contribution_texts(
    names: Sequence[str], values: np.ndarray, contributions: np.ndarray, action: str, top: int = 3
) -> list[str]:
    """The ``top`` features with the largest absolute contribution to ``action``'s uplift.

    Args:
        names: model feature names; ``values`` their values for this customer.
        contributions: one contribution per feature (the bias excluded), in log-odds or
            probability units depending on the learner; only signs and ranks are shown.
    """
    order = np.argsort(-np.abs(contributions), kind="stable")[:top]
    out = []
    for i in order:
        c = float(contributions[i])
        if c == 0.0 or not math.isfinite(c):
            continue
        value = float(values[i])
        shown = "missing" if math.isnan(value) else f"{value:,.4g}"
        direction = "raises" if c > 0 else "lowers"
        out.append(f"model: {names[i]} = {shown} {direction} the {action} uplift ({c:+.3f})")
    return out
