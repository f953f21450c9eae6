"""Act only when confident: an action is taken over ``none`` only when the lower bound of its
value is positive.

A model's point estimate of an action's gain says nothing about how sure it is. The bound here
is calibrated on decisions the model was not fitted on: per action, those decisions are grouped
by the model's predicted gain (quantile bins), and in each bin the doubly-robust gain of taking
the action over doing nothing (``Γ[i, a] - Γ[i, none]``, pooled, clustered by customer) gets a
one-sided 95% lower bound. A new decision inherits the bound of its bin: where the decisions
the model rates like it did not gain beyond noise, it does nothing. (Per-decision intervals
from the model itself, e.g. grf's or econml's forest variance, would need those libraries; a
binned calibration needs only the logged scores.)

The action set is a parameter (``ACTIONS`` and ``none`` by default), so the filter also serves
other experiments, e.g. the Hillstrom e-mail arms with ``control`` as the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.contract import ACTIONS
from training.policy_learning import Interval

#: One-sided 95%: the bound is exceeded by the true gain 95% of the time.
Z_ONE_SIDED = 1.645


@dataclass
class ConfidenceFilter:
    """Per action, bins of predicted gain and the DR lower bound of each bin's true gain.

    ``actions`` names the scores' columns; ``baseline`` is the action of doing nothing, which
    every unconfident decision becomes.
    """

    n_bins: int = 5
    min_rows: int = 50
    actions: Sequence[str] = ACTIONS
    baseline: str = "none"
    edges_: dict[str, np.ndarray] = field(default_factory=dict)
    lower_: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(
        self,
        chosen: np.ndarray,
        predicted_gain: np.ndarray,
        scores: np.ndarray,
        customers: np.ndarray,
    ) -> ConfidenceFilter:
        """Calibrate on held-out decisions: the policy's ``chosen`` actions, its predicted gain
        over ``baseline`` for them, and their AIPW ``scores`` (n, ``len(actions)``)."""
        index = pd.Index(list(self.actions))
        if self.baseline not in index:
            raise ValueError(f"baseline {self.baseline!r} is not one of {list(self.actions)}")
        base = index.get_loc(self.baseline)
        for action in self.actions:
            if action == self.baseline:
                continue
            rows = np.flatnonzero(chosen == action)
            if len(rows) < self.min_rows:
                continue  # no evidence: the action is never confident (stays none)
            bins = max(1, min(self.n_bins, len(rows) // self.min_rows))
            edges = np.quantile(predicted_gain[rows], np.linspace(0, 1, bins + 1)[1:-1])
            which = np.searchsorted(edges, predicted_gain[rows], side="right")
            gain = scores[rows, index.get_loc(action)] - scores[rows, base]
            lower = np.full(bins, -np.inf)
            for b in range(bins):
                in_bin = which == b
                if in_bin.sum() >= 2:
                    est = Interval.of(gain[in_bin], customers[rows][in_bin])
                    lower[b] = est.value - Z_ONE_SIDED * est.se
            self.edges_[action], self.lower_[action] = edges, lower
        return self

    def lower_bound(self, chosen: np.ndarray, predicted_gain: np.ndarray) -> np.ndarray:
        """The calibrated lower bound of each decision's gain (-inf without evidence; 0 for
        ``baseline``)."""
        out = np.where(chosen == self.baseline, 0.0, -np.inf)
        for action, edges in self.edges_.items():
            rows = chosen == action
            which = np.searchsorted(edges, predicted_gain[rows], side="right")
            out[rows] = self.lower_[action][which]
        return out

    def lower_bounds(self, values: np.ndarray) -> np.ndarray:
        """``(n, len(actions))`` lower bounds of every action's gain given the model's
        ``values`` (its predicted gain of each action over ``baseline``, ``actions`` order):
        each action's bin's bound; -inf for an action without evidence, 0 for ``baseline``."""
        values = np.asarray(values, dtype=np.float64)
        actions = list(self.actions)
        out = np.full(values.shape, -np.inf)
        out[:, actions.index(self.baseline)] = 0.0
        for action, edges in self.edges_.items():
            j = actions.index(action)
            out[:, j] = self.lower_[action][np.searchsorted(edges, values[:, j], side="right")]
        return out

    def apply(self, chosen: np.ndarray, predicted_gain: np.ndarray) -> np.ndarray:
        """``chosen`` with every action whose lower bound is not positive replaced by
        ``baseline``."""
        out = np.asarray(chosen, dtype=object).copy()
        out[self.lower_bound(out, predicted_gain) <= 0] = self.baseline
        return out
