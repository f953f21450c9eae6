"""What the deployed decisions earned: incremental net value against the global control group.

The control group (``serving.holdout``) is chosen by a hash of ``customer_id``, i.e. at random
and before anything about the customer is seen, so the difference in mean net value per decision
between the treated decisions and the control group's is an unbiased estimate of what deciding
adds per decision. It is noisy: a booking is worth hundreds while an action moves its probability
by a point or two. Two measures keep the interval honest and narrow:

* **CUPED** (Deng et al., 2013): the outcome is adjusted by the customer's net value of the same
  length *before* the decision (``pre_revenue``), ``y - theta (x - mean x)`` with ``theta`` the
  pooled regression slope. The covariate is fixed before assignment, so the adjustment keeps
  the estimate unbiased and removes the share of variance the past explains (frequent
  travellers book again whatever we do). Chosen over a doubly robust difference because it
  needs no outcome model (no model to trust, nothing to fit per segment), works on any slice
  (per action, per week) with the same two lines, and the simulator's outcomes are mostly
  explained by how often a customer flies, which the pre-period captures.
* **Clustered standard errors**: membership is per customer, and one customer's decisions share
  his bookings, so decisions are not independent. Each arm's mean is a ratio of customer sums;
  its variance is the delta-method (linearized) variance over customers.

Net value of a decision = revenue - the action's cost (``training.value.action_cost``: a promo
pays ``promo_fare_share`` of the revenue, the others a fixed amount) - ``unsubscribe`` cost if
the customer opted out.

Everything here is a free function over arrays (as ``causalml.metrics``); ``summarize`` assembles
the contract's JSON summary (``cli.md`` 1.1) from an observed frame (``monitoring.outcomes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from training.value import ActionCosts, action_cost

#: Two-sided 95% normal quantile.
Z95: Final = 1.959963984540054
#: ``policy`` of the control group's decisions (``serving.holdout.HOLDOUT_POLICY``; monitoring
#: may not import serving, and the log's value is the contract's).
HOLDOUT_POLICY: Final = "holdout"
#: Below this many control-group customers a slice's interval is flagged as unreliable: a
#: simulated measurement gave 89.5% coverage of the nominal 95% with 40 of them (93% with 200).
MIN_CONTROL_CUSTOMERS: Final = 30
#: Fatigue buckets: intended contacts in the 30 days before a decision.
CONTACT_BUCKETS: Final = ((0, 0, "0"), (1, 1, "1"), (2, 2, "2"), (3, 10**9, "3+"))


@dataclass(frozen=True)
class Estimate:
    """A difference in mean net value per decision, treated minus control, with its 95% CI."""

    estimate: float
    ci_low: float
    ci_high: float
    se: float
    treated: int
    control: int
    #: Distinct customers behind the control arm: the interval's effective sample.
    control_customers: int = 0

    @property
    def few(self) -> bool:
        """Fewer control customers than ``MIN_CONTROL_CUSTOMERS``: the interval is unreliable
        (clustered intervals undercover with few clusters)."""
        return self.control_customers < MIN_CONTROL_CUSTOMERS

    @property
    def ci95(self) -> list[float]:
        """``[low, high]`` (the JSON summary's form)."""
        return [self.ci_low, self.ci_high]

    def covers(self, value: float) -> bool:
        """Whether the interval contains ``value``."""
        return self.ci_low <= value <= self.ci_high


def net_value(
    actions: Sequence[str] | np.ndarray,
    revenue: np.ndarray,
    unsubscribed: np.ndarray,
    costs: ActionCosts,
) -> np.ndarray:
    """Realized net value per decision: revenue - the action's cost - the unsubscribe cost."""
    actions = np.asarray(actions, dtype=object)
    revenue = np.asarray(revenue, dtype=np.float64)
    cost = np.zeros(len(revenue))
    for action in ACTIONS:
        rows = actions == action
        if rows.any():
            cost[rows] = action_cost(action, revenue[rows], costs)
    return revenue - cost - costs.unsubscribe * np.asarray(unsubscribed, dtype=np.float64)


def cuped_theta(y: np.ndarray, x: np.ndarray) -> float:
    """The CUPED slope ``cov(y, x) / var(x)`` (0 when ``x`` is constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean()
    var = float(xc @ xc)
    return 0.0 if var <= 0.0 else float(xc @ (y - y.mean())) / var


def cluster_mean(y: np.ndarray, cluster: np.ndarray) -> tuple[float, float]:
    """Mean of ``y`` and its variance when rows of one ``cluster`` are correlated.

    The mean is ``sum(S_g) / sum(n_g)`` over clusters ``g`` (sums and sizes); its linearized
    variance is ``G / (G - 1) * sum((S_g - mean n_g)^2) / N^2``. With one row per cluster it is
    the usual ``var / n`` (with the ``n - 1`` correction).
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n == 0:
        return math.nan, math.nan
    mean = float(y.mean())
    _, codes = np.unique(np.asarray(cluster), return_inverse=True)
    resid = np.bincount(codes, weights=y - mean)
    g = len(resid)
    if g < 2:
        return mean, math.nan
    return mean, float(g / (g - 1) * (resid @ resid) / n**2)


def difference(
    y: np.ndarray,
    treated: np.ndarray,
    cluster: np.ndarray,
    covariate: np.ndarray | None = None,
    z: float = Z95,
) -> Estimate:
    """Treated minus control mean of ``y``, CUPED-adjusted by ``covariate`` when given, with a
    cluster-robust normal interval (``z`` = 1.96: 95%).

    An arm without two clusters gives NaN bounds (no interval can be claimed).
    """
    y = np.asarray(y, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    cluster = np.asarray(cluster)
    if covariate is not None:
        x = np.asarray(covariate, dtype=np.float64)
        y = y - cuped_theta(y, x) * (x - x.mean())
    m1, v1 = cluster_mean(y[treated], cluster[treated])
    m0, v0 = cluster_mean(y[~treated], cluster[~treated])
    estimate = m1 - m0
    se = math.sqrt(v1 + v0) if math.isfinite(v1 + v0) else math.nan
    return Estimate(
        estimate=estimate,
        ci_low=estimate - z * se,
        ci_high=estimate + z * se,
        se=se,
        treated=int(treated.sum()),
        control=int((~treated).sum()),
        control_customers=len(np.unique(cluster[~treated])),
    )


def week_of(stamps: pd.Series) -> pd.Series:
    """The Monday (UTC date, ISO text) of each timestamp's week."""
    days = pd.to_datetime(stamps, utc=True).dt.tz_convert("UTC").dt.normalize()
    return (days - pd.to_timedelta(days.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")


def _json_number(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def _block(e: Estimate) -> dict[str, Any]:
    return {"estimate": _json_number(e.estimate), "ci95": [_json_number(v) for v in e.ci95]}


@dataclass(frozen=True)
class Impact:
    """Everything ``nba impact`` reports (``summary()`` is the JSON)."""

    overall: Estimate
    by_action: dict[str, Estimate]
    by_week: list[tuple[str, Estimate]]
    by_contacts: list[tuple[str, Estimate]]
    decisions: int
    holdout_decisions: int
    treated_value: float
    control_value: float
    #: Arm means of the CUPED-adjusted net value: their difference is ``overall.estimate``.
    treated_adjusted: float
    control_adjusted: float
    start: str
    end: str
    horizon_days: int
    covariate: str

    @property
    def total(self) -> Estimate:
        """The overall estimate scaled to every treated decision (value over the window)."""
        n = self.overall.treated
        o = self.overall
        return Estimate(o.estimate * n, o.ci_low * n, o.ci_high * n, o.se * n, o.treated,
                        o.control, o.control_customers)  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The JSON summary: the keys of ``cli.md`` 1.1, then a few more."""
        return {
            "decisions": self.decisions,
            "holdout_decisions": self.holdout_decisions,
            "incremental_net_value_per_decision": _block(self.overall),
            "by_action": {
                a: {"decisions": e.treated, "incremental_net_value_per_decision": _block(e)}
                for a, e in self.by_action.items()
            },
            "by_week": [
                {"week": week, "decisions": e.treated, **_block(e)} for week, e in self.by_week
            ],
            "incremental_net_value_total": _block(self.total),
            "by_contacts_30d": [
                {"contacts": label, "decisions": e.treated, **_block(e)}
                for label, e in self.by_contacts
            ],
            "net_value_per_decision": {
                "treated": _json_number(self.treated_value),
                "holdout": _json_number(self.control_value),
            },
            "window": {"start": self.start, "end": self.end},
            "horizon_days": self.horizon_days,
            "method": f"difference in means, CUPED on {self.covariate}, customer-clustered",
        }

    def record(self) -> dict[str, Any]:
        """Flat fields for tables and MLflow metrics."""
        return asdict(self.overall)


def measure(
    observed: pd.DataFrame,
    costs: ActionCosts,
    *,
    start: str = "",
    end: str = "",
    horizon_days: int = 30,
    covariate: str = "pre_revenue",
) -> Impact:
    """The impact of the decisions in ``observed`` (``monitoring.outcomes.observe``'s frame).

    Per action, the treated decisions whose ``intended_action`` is that action are compared with
    the control group's decisions whose *would-have-been* action is that action: both are the
    policy's choice for the same kind of customer, only one was carried out. Per week and per
    fatigue bucket (``contacts_30d``), both arms are sliced alike.
    """
    if not len(observed):
        raise ValueError("no decisions with outcomes in the window")
    treated = (observed["policy"] != HOLDOUT_POLICY).to_numpy()
    if treated.all():
        raise ValueError(
            "no decisions of the global control group (policy = holdout) in the window: set "
            "NBA_HOLDOUT_SHARE > 0 and let the horizon pass"
        )
    if not treated.any():
        raise ValueError("only control-group decisions in the window: nothing to compare")
    y = net_value(observed["action"].to_numpy(object), observed["revenue"].to_numpy(float),
                  observed["unsubscribed"].to_numpy(bool), costs)  # fmt: skip
    x = observed[covariate].to_numpy(np.float64)
    adjusted = y - cuped_theta(y, x) * (x - x.mean())
    cluster = observed["customer_id"].to_numpy(object)
    intended = observed["intended_action"].fillna(observed["action"]).to_numpy(object)

    def on(rows: np.ndarray) -> Estimate:
        return difference(y[rows], treated[rows], cluster[rows], x[rows])

    by_action = {}
    for action in ACTIONS:
        if action == "none":
            continue
        rows = intended == action
        if (rows & treated).any():
            by_action[action] = on(rows)
    weeks = week_of(observed["decided_at"]).to_numpy(object)
    by_week = [(w, on(weeks == w)) for w in sorted(set(weeks))]
    contacts = observed["contacts_30d"].to_numpy(np.int64)
    by_contacts = []
    for lo, hi, label in CONTACT_BUCKETS:
        rows = (contacts >= lo) & (contacts <= hi)
        if rows.any() and (rows & treated).any() and (rows & ~treated).any():
            by_contacts.append((label, on(rows)))
    return Impact(
        overall=on(np.ones(len(y), dtype=bool)),
        by_action=by_action,
        by_week=by_week,
        by_contacts=by_contacts,
        decisions=int(treated.sum()),
        holdout_decisions=int((~treated).sum()),
        treated_value=float(y[treated].mean()),
        control_value=float(y[~treated].mean()),
        treated_adjusted=float(adjusted[treated].mean()),
        control_adjusted=float(adjusted[~treated].mean()),
        start=start,
        end=end,
        horizon_days=horizon_days,
        covariate=covariate,
    )
