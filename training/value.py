"""The value model: what an action is worth, net of its cost, in currency units.

Three views of the same accounting (raw-data contract, "Action costs"):

* ``expected_value``: from estimated effects (``MultiActionUplift.predict_effects``), the expected
  incremental net value of each action versus doing nothing; the decision service ranks on it.
* ``realized_value``: per logged decision, the net value that was actually realized; the reward
  for off-policy evaluation.
* ``true_value``: from a simulator's ``truth`` table, the true expected net value of every action;
  evaluation alone uses it.

Costs: a promo is a discount of ``promo_fare_share`` of the next booking's fare, paid only when the
customer converts, so its expected cost is ``promo_fare_share`` times the expected revenue under
the promo; an apology credit is paid always; recognition costs a small fixed amount; doing nothing
costs nothing; an unsubscribe costs the value of the customer's future marketing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from features.contract import ACTIONS

#: The action that does nothing (zero cost, the baseline of every uplift).
CONTROL: Final = "none"
#: Keys ``expected_value`` reads from an effects dictionary.
EFFECT_KEYS: Final[tuple[str, ...]] = ("revenue", "unsubscribed", "base_revenue")


@dataclass(frozen=True)
class ActionCosts:
    """Cost of each action and of an unsubscribe, in currency units (contract defaults).

    ``promo_fare_share`` is the share of the next booking's fare given away by a promo, paid only
    on conversion; the other amounts are fixed per decision (``apology_credit`` and
    ``recognition``) or per unsubscribe (``unsubscribe``).
    """

    promo_fare_share: float = 0.08
    apology_credit: float = 50.0
    recognition: float = 2.0
    unsubscribe: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.promo_fare_share <= 1.0:
            raise ValueError(
                f"promo_fare_share must be a share in [0, 1], got {self.promo_fare_share}"
            )
        for name in ("apology_credit", "recognition", "unsubscribe"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite cost >= 0, got {value}")

    @classmethod
    def of(cls, settings: Any) -> ActionCosts:
        """The costs configured in settings (their ``cost_*`` fields: ``NBA_COST_*``)."""
        return cls(
            promo_fare_share=settings.cost_promo_fare_share,
            apology_credit=settings.cost_apology_credit,
            recognition=settings.cost_recognition,
            unsubscribe=settings.cost_unsubscribe,
        )


def action_cost(action: str, revenue: np.ndarray, costs: ActionCosts) -> np.ndarray:
    """Cost of ``action`` given the (realized or expected) revenue of the decision it applies to.

    Only the promo's cost depends on revenue: ``promo_fare_share * revenue``. Revenue is the fare
    of the bookings that followed, 0 without a conversion, so the promo's "paid only on
    conversion" is already in it, and with an *expected* revenue the cost is in expectation too.
    """
    revenue = np.asarray(revenue, dtype=np.float64)
    if action == "promo":
        # A negative expected revenue can only be estimation noise; a promo never pays out.
        return costs.promo_fare_share * np.maximum(revenue, 0.0)
    fixed = {"apology_credit": costs.apology_credit, "recognition": costs.recognition, CONTROL: 0.0}
    if action not in fixed:
        raise ValueError(f"unknown action {action!r}: expected one of {list(ACTIONS)}")
    return np.full(revenue.shape, fixed[action])


def expected_value(
    effects: dict[str, np.ndarray],
    actions: Sequence[str],
    costs: ActionCosts = ActionCosts(),  # frozen: a safe shared default
) -> np.ndarray:
    """Expected incremental net value of each action versus doing nothing, shape ``(n, A)``.

    ``effects`` is ``MultiActionUplift.predict_effects(X)``: ``revenue`` and ``unsubscribed``
    uplifts of shape ``(n, A)`` (columns in ``actions`` order) and ``base_revenue`` ``(n,)``, the
    expected revenue when nothing is done. For action ``a`` (column ``j``)::

        value[:, j] = revenue_uplift[:, j]
                      - cost_a
                      - unsubscribed_uplift[:, j] * costs.unsubscribe
        cost_promo  = costs.promo_fare_share * max(base_revenue + revenue_uplift[:, j], 0)
        cost_a      = costs.apology_credit | costs.recognition | 0 (none), for the others

    The promo's cost is a share of the revenue *under the promo*, not of the uplift: the discount
    applies to every booking it is used on, including those that would have happened anyway.
    ``none`` may be among ``actions``; its column is 0 if its uplifts are 0.
    """
    missing = [key for key in EFFECT_KEYS if key not in effects]
    if missing:
        raise ValueError(
            f"effects is missing {missing}: pass the dictionary MultiActionUplift.predict_effects "
            "returns"
        )
    actions = tuple(actions)
    revenue = np.asarray(effects["revenue"], dtype=np.float64)
    unsub = np.asarray(effects["unsubscribed"], dtype=np.float64)
    base_revenue = np.asarray(effects["base_revenue"], dtype=np.float64)
    n = len(base_revenue)
    for key, value in (("revenue", revenue), ("unsubscribed", unsub)):
        if value.shape != (n, len(actions)):
            raise ValueError(
                f"effects[{key!r}] has shape {value.shape}, expected {(n, len(actions))} "
                f"(rows of base_revenue, one column per action in {list(actions)})"
            )
    value = revenue - unsub * costs.unsubscribe
    for j, action in enumerate(actions):
        value[:, j] -= action_cost(action, base_revenue + revenue[:, j], costs)
    return value


def realized_value(
    action: Sequence[str] | np.ndarray | pd.Series,
    revenue: Sequence[float] | np.ndarray | pd.Series,
    unsubscribed: Sequence[bool] | np.ndarray | pd.Series,
    costs: ActionCosts = ActionCosts(),  # frozen: a safe shared default
) -> np.ndarray:
    """Net value realized by each logged decision, shape ``(n,)``: the reward for off-policy
    evaluation.

    ``value = revenue - cost(action, revenue) - unsubscribed * costs.unsubscribe`` with the promo's
    cost ``costs.promo_fare_share * revenue`` (0 without a conversion, as revenue is then 0).
    This is the total, not the incremental, value: doing nothing still earns organic revenue.
    """
    action = np.asarray(action, dtype=object)
    revenue = np.asarray(revenue, dtype=np.float64)
    unsubscribed = np.asarray(unsubscribed, dtype=np.float64)
    if not len(action) == len(revenue) == len(unsubscribed):
        raise ValueError(
            f"action, revenue and unsubscribed must have one value per decision; got lengths "
            f"{len(action)}, {len(revenue)}, {len(unsubscribed)}"
        )
    unknown = sorted(set(action.tolist()) - set(ACTIONS))
    if unknown:
        raise ValueError(f"unknown actions {unknown}: expected values in {list(ACTIONS)}")
    cost = np.zeros(len(action))
    for name in ACTIONS:
        rows = action == name
        cost[rows] = action_cost(name, revenue[rows], costs)
    return revenue - cost - unsubscribed * costs.unsubscribe


def true_value(
    truth: pd.DataFrame,
    actions_all: Sequence[str] = ACTIONS,
    costs: ActionCosts = ActionCosts(),  # frozen: a safe shared default
) -> np.ndarray:
    """True expected net value of every action from a simulator's ``truth`` table, ``(n, A)``.

    Columns follow ``actions_all`` (default: all four contract actions, ``none`` last). For action
    ``a``: ``revenue_<a> - cost_a - p_unsubscribe_<a> * costs.unsubscribe`` with the promo's cost
    ``costs.promo_fare_share * revenue_promo``. These are absolute values; subtract the ``none``
    column for the incremental values ``expected_value`` estimates.
    """
    actions_all = tuple(actions_all)
    needed = [f"{kind}_{a}" for a in actions_all for kind in ("revenue", "p_unsubscribe")]
    missing = [column for column in needed if column not in truth.columns]
    if missing:
        raise ValueError(
            f"truth table is missing columns {missing}: pass the simulator's truth table "
            "(raw-data contract: revenue_<a> and p_unsubscribe_<a> for each action)"
        )
    out = np.empty((len(truth), len(actions_all)))
    for j, action in enumerate(actions_all):
        revenue = truth[f"revenue_{action}"].to_numpy(dtype=np.float64)
        p_unsub = truth[f"p_unsubscribe_{action}"].to_numpy(dtype=np.float64)
        out[:, j] = revenue - action_cost(action, revenue, costs) - p_unsub * costs.unsubscribe
    return out
