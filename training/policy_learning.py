"""Policy learning from logged decisions: doubly-robust (AIPW) scores and a policy tree.

CATE regression ranks customers by estimated effects and acts on the argmax; when revenue is
large and noisy next to the effects (an independently written world: ~2%), the estimated
effects are mostly noise and the argmax acts on it. Policy learning instead maximizes an
unbiased estimate of the policy's value directly (``aipw_scores`` and ``PolicyTree`` take the
action set as a parameter, ``ACTIONS`` and ``none`` by default, so they also serve other
experiments, e.g. the Hillstrom e-mail arms: ``training.hillstrom_policy``):

* ``ConversionFareModel`` (variance reduction): the reward model is built from low-variance
  parts instead of a regression of realized revenue: per-action conversion models, one fare
  model on converted rows (fare given conversion, pooled over actions), one unsubscribe model;
  ``value(x, a) = p_convert(x, a) * fare(x, a) - cost(a) - p_unsubscribe(x, a) * unsubscribe``.
* ``aipw_scores``: for every row and action, ``Γ[i, a] = q(x_i, a) + 1[A_i = a] (Y_i -
  q(x_i, a)) / π_i``. ``mean(Γ[i, π(x_i)])`` is the doubly-robust value of any policy π,
  unbiased if the logged propensities are right. ``structural_scores`` applies it to the
  conversion and the unsubscribe (``q`` cross-fitted by ``cross_fitted_parts``) and takes
  revenue as the corrected conversion times the fare model's fare: conversion first.
* ``PolicyTree``: a depth-limited tree whose leaves each take the action of highest summed
  score, grown greedily on binned features. It stands in for grf's ``policytree`` /
  econml's ``DRPolicyTree`` (neither is installed, and a tree over a few features is also a
  policy a brand can read); unlike ``policytree`` the search is greedy, not exhaustive, to stay
  linear in rows. ``confidence_z > 0`` makes a leaf act only when the lower bound of its mean
  score gain over ``none`` is positive ("act only when confident").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.contract import ACTIONS
from training.value import ActionCosts, action_cost

#: LightGBM settings of the reward model's parts: small, regularized models (the effects are a
#: few percent of the outcome; deep trees would fit noise).
_PARAMS: dict[str, object] = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "verbose": -1,
    "num_threads": 1,
    "deterministic": True,
}
_ROUNDS = 150
NONE_CODE = ACTIONS.index("none")
Z95 = NormalDist().inv_cdf(0.975)


def _one_hot(action: np.ndarray) -> np.ndarray:
    return (np.asarray(action, dtype=object)[:, None] == np.array(ACTIONS, dtype=object)).astype(
        np.float64
    )


@dataclass
class ConversionFareModel:
    """Expected net value of every action from conversion, fare and unsubscribe models.

    Fitted with ``fit``; ``predict`` returns ``(n, 4)`` absolute expected net values in
    ``ACTIONS`` order (the reward model ``q`` of the AIPW scores, and a direct-method policy by
    its row-wise argmax).
    """

    costs: ActionCosts = field(default_factory=ActionCosts)
    random_state: int = 0
    conversion_: dict[str, lgb.Booster] = field(default_factory=dict)
    fare_: lgb.Booster | None = None
    unsubscribe_: lgb.Booster | None = None

    def fit(
        self,
        X: np.ndarray,
        action: np.ndarray,
        propensity: np.ndarray,
        converted: np.ndarray,
        revenue: np.ndarray,
        unsubscribed: np.ndarray,
    ) -> ConversionFareModel:
        """Fit the three parts on logged rows (conversion weighted by 1/propensity, so that each
        arm's model describes the whole population, not the logging policy's choice of it)."""
        params = {**_PARAMS, "seed": self.random_state}
        weight = 1.0 / propensity
        for a in ACTIONS:
            rows = action == a
            data = lgb.Dataset(X[rows], converted[rows].astype(np.float64), weight=weight[rows])
            self.conversion_[a] = lgb.train({**params, "objective": "binary"}, data, _ROUNDS)
        onehot = _one_hot(action)
        conv = converted.astype(bool)
        fare_data = lgb.Dataset(np.hstack([X, onehot])[conv], revenue[conv])
        fare_params = {**params, "objective": "regression", "min_data_in_leaf": 200}
        self.fare_ = lgb.train(fare_params, fare_data, _ROUNDS)
        unsub_data = lgb.Dataset(np.hstack([X, onehot]), unsubscribed.astype(np.float64))
        self.unsubscribe_ = lgb.train({**params, "objective": "binary"}, unsub_data, _ROUNDS)
        return self

    def parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(p_convert, fare, p_unsubscribe)``, ``(n, 4)`` each (``ACTIONS`` order): the
        conversion probability, the expected fare given a conversion (>= 0) and the
        unsubscribe probability under each action."""
        if self.fare_ is None or self.unsubscribe_ is None:
            raise RuntimeError("ConversionFareModel is not fitted: call fit first")
        shape = (len(X), len(ACTIONS))
        p, fare, p_unsub = np.empty(shape), np.empty(shape), np.empty(shape)
        for j, a in enumerate(ACTIONS):
            with_action = np.hstack([X, _one_hot(np.full(len(X), a, dtype=object))])
            p[:, j] = self.conversion_[a].predict(X, num_threads=1)
            fare[:, j] = np.maximum(self.fare_.predict(with_action, num_threads=1), 0.0)
            p_unsub[:, j] = self.unsubscribe_.predict(with_action, num_threads=1)
        return p, fare, p_unsub

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n, 4)`` expected net value of each action (``ACTIONS`` order)."""
        return net_value(*self.parts(X), self.costs)


def net_value(
    p_convert: np.ndarray, fare: np.ndarray, p_unsubscribe: np.ndarray, costs: ActionCosts
) -> np.ndarray:
    """``(n, 4)`` net value of each action from its conversion, fare and unsubscribe parts:
    ``p * fare - cost(a, p * fare) - p_unsub * unsubscribe``."""
    out = np.empty(p_convert.shape)
    for j, a in enumerate(ACTIONS):
        revenue = p_convert[:, j] * fare[:, j]
        lost = p_unsubscribe[:, j] * costs.unsubscribe
        out[:, j] = revenue - action_cost(a, revenue, costs) - lost
    return out


def promo_allowed(features: pd.DataFrame) -> np.ndarray:
    """Rows whose customer may receive a promo (opted in, not unsubscribed: the contract)."""
    opt_in = features["marketing_opt_in"].fillna(False).to_numpy(bool)
    return opt_in & ~features["unsubscribed"].fillna(False).to_numpy(bool)


def feasible(chosen: np.ndarray, features: pd.DataFrame) -> np.ndarray:
    """``chosen`` with promos to customers who may not receive one replaced by ``none``.

    The guardrails do the same in serving; offline it matters more: no promo is ever logged
    for those customers, so any estimate of its value there is the reward model's guess alone
    (measured: +27 a decision of pure extrapolation in a world without effects)."""
    out = np.asarray(chosen, dtype=object).copy()
    out[(out == "promo") & ~promo_allowed(features)] = "none"
    return out


def restrict_scores(scores: np.ndarray, features: pd.DataFrame) -> np.ndarray:
    """AIPW scores where a promo cannot be sent valued as doing nothing (what ``feasible``
    turns it into), so that a learner never chases a promo's extrapolated value there."""
    out = np.asarray(scores, dtype=np.float64).copy()
    blocked = ~promo_allowed(features)
    out[blocked, ACTIONS.index("promo")] = out[blocked, NONE_CODE]
    return out


def folds_by_customer(customer_id: Sequence[str] | np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number per row, all decisions of a customer in one fold (no leak across folds)."""
    codes, _ = pd.factorize(pd.Series(np.asarray(customer_id, dtype=object)))
    perm = np.random.default_rng(seed).permutation(codes.max() + 1)
    return np.asarray(perm[codes] % k, dtype=np.int64)


def cross_fitted_parts(
    X: np.ndarray,
    outcomes: dict[str, np.ndarray],
    action: np.ndarray,
    propensity: np.ndarray,
    folds: np.ndarray,
    costs: ActionCosts,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ConversionFareModel.parts`` of every row from a model not fitted on its fold."""
    shape = (len(X), len(ACTIONS))
    p, fare, p_unsub = np.empty(shape), np.empty(shape), np.empty(shape)
    for k in np.unique(folds):
        out = folds == k
        model = ConversionFareModel(costs, random_state).fit(
            X[~out], action[~out], propensity[~out], outcomes["converted"][~out],
            outcomes["revenue"][~out], outcomes["unsubscribed"][~out],
        )  # fmt: skip
        p[out], fare[out], p_unsub[out] = model.parts(X[out])
    return p, fare, p_unsub


def structural_scores(
    parts: tuple[np.ndarray, np.ndarray, np.ndarray],
    action: np.ndarray,
    propensity: np.ndarray,
    converted: np.ndarray,
    unsubscribed: np.ndarray,
    costs: ActionCosts,
) -> np.ndarray:
    """Doubly-robust scores of the net value, conversion first: ``(n, 4)``.

    The AIPW correction is applied to the conversion and the unsubscribe (low-variance binary
    outcomes), and revenue is the corrected conversion times the fare model's fare given a
    conversion: ``Γ[i, a] = Γc[i, a] fare(x_i, a) - cost(a) - Γu[i, a] unsubscribe``. On
    heavy-tailed fares the realized revenue's noise then never enters the scores (the
    issue's measurement: a 100-decision segment's interval was ±250 a decision on net revenue
    directly); the price is that the fare model's error is not corrected (the fare given a
    conversion is taken as the model says)."""
    p, fare, p_unsub = parts
    conv = aipw_scores(p, action, propensity, np.asarray(converted, dtype=np.float64))
    unsub = aipw_scores(p_unsub, action, propensity, np.asarray(unsubscribed, dtype=np.float64))
    revenue = conv * fare
    out = revenue - unsub * costs.unsubscribe
    # Costs linear in the scores (a promo's share of the revenue, negative rows included), so
    # that the mean of the scores stays an unbiased estimate of the mean net value.
    out[:, ACTIONS.index("promo")] -= costs.promo_fare_share * revenue[:, ACTIONS.index("promo")]
    out[:, ACTIONS.index("apology_credit")] -= costs.apology_credit
    out[:, ACTIONS.index("recognition")] -= costs.recognition
    return out


def aipw_scores(
    q_hat: np.ndarray,
    action: np.ndarray,
    propensity: np.ndarray,
    reward: np.ndarray,
    actions: Sequence[str] = ACTIONS,
) -> np.ndarray:
    """Doubly-robust (AIPW) score of every action for every row, ``(n, len(actions))``.

    ``Γ[i, a] = q_hat[i, a] + 1[action_i = a] (reward_i - q_hat[i, a]) / propensity_i``; the
    mean of ``Γ[i, π(x_i)]`` is ``metrics.dr_value`` of the policy π. ``q_hat``'s columns and
    the scores' are in ``actions`` order.
    """
    q_hat = np.asarray(q_hat, dtype=np.float64)
    codes = pd.Index(list(actions)).get_indexer(np.asarray(action, dtype=object))
    if (codes < 0).any():
        raise ValueError(f"unknown actions in the log: expected values in {list(actions)}")
    if q_hat.shape != (len(codes), len(actions)):
        raise ValueError(f"q_hat has shape {q_hat.shape}, expected {(len(codes), len(actions))}")
    rows = np.arange(len(codes))
    scores = q_hat.copy()
    scores[rows, codes] += (reward - q_hat[rows, codes]) / propensity
    return scores


@dataclass(frozen=True)
class Interval:
    """A mean of per-row terms with its standard error and 95% interval."""

    value: float
    se: float

    @property
    def lower(self) -> float:
        return self.value - Z95 * self.se

    @property
    def upper(self) -> float:
        return self.value + Z95 * self.se

    @classmethod
    def of(cls, terms: np.ndarray, groups: np.ndarray | None = None) -> Interval:
        """Mean of ``terms`` with a standard error clustered by ``groups`` (customers).

        Decisions of one customer are not independent: a frequent flyer has many decisions,
        converts at most of them, at a high fare; a few such customers logged with a rare
        action move an IPW-weighted mean far more than per-row errors say (measured: the
        per-row interval of "always promo" missed the truth by 4 standard errors in a world
        without effects). Summing terms per customer first gives the sandwich (cluster-robust)
        error, which accounts for it.
        """
        n = len(terms)
        mean = float(terms.mean())
        if n < 2:
            return cls(mean, math.nan)
        if groups is None:
            return cls(mean, float(terms.std(ddof=1) / math.sqrt(n)))
        codes, _ = pd.factorize(pd.Series(groups))
        centred = np.bincount(codes, weights=terms - mean)
        g = len(centred)
        if g < 2:
            return cls(mean, math.nan)
        return cls(mean, float(math.sqrt(g / (g - 1) * np.dot(centred, centred)) / n))


@dataclass
class _Node:
    action: int
    #: A leaf's mean score gain of each action over ``none`` (``ACTIONS`` order; 0 for none) and
    #: its one-sided lower bound (``confidence_z`` standard errors below; NaN when z is 0).
    gain: np.ndarray | None = None
    lower: np.ndarray | None = None
    feature: int = -1
    threshold: float = math.nan
    left: _Node | None = None
    right: _Node | None = None


class PolicyTree:
    """A depth-limited policy tree over AIPW scores (module docstring).

    Args:
        max_depth: splits from root to leaf (regularization: each split must pay for itself in
            summed scores).
        min_leaf: fewest rows in a leaf (regularization against chasing noisy scores).
        n_bins: candidate thresholds per feature (quantiles of the training rows).
        confidence_z: 0 takes each leaf's best action; ``z > 0`` takes it only when its mean
            score gain over ``baseline`` minus ``z`` standard errors is positive, measured on
            half of the rows the splits were not chosen on (honest leaves).
        random_state: seed of that halving.
        actions: the scores' columns (``ACTIONS`` by default).
        baseline: the action of "doing nothing": a leaf without confident evidence takes it.
    """

    def __init__(
        self,
        max_depth: int = 3,
        min_leaf: int = 200,
        n_bins: int = 32,
        confidence_z: float = 0.0,
        random_state: int = 0,
        actions: Sequence[str] = ACTIONS,
        baseline: str = "none",
    ) -> None:
        if max_depth < 0 or min_leaf < 1 or n_bins < 2 or confidence_z < 0:
            raise ValueError("need max_depth >= 0, min_leaf >= 1, n_bins >= 2, confidence_z >= 0")
        if baseline not in actions:
            raise ValueError(f"baseline {baseline!r} is not one of the actions {list(actions)}")
        self.max_depth = max_depth
        self.min_leaf = min_leaf
        self.n_bins = n_bins
        self.confidence_z = confidence_z
        self.random_state = random_state
        self.actions = tuple(actions)
        self.baseline = baseline
        self._baseline_code = self.actions.index(baseline)

    def fit(self, X: np.ndarray, scores: np.ndarray) -> PolicyTree:
        """Grow the tree on features ``X`` (n, p; NaN allowed) and AIPW ``scores``
        (n, ``len(actions)``)."""
        X = np.asarray(X, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(X), len(self.actions)):
            raise ValueError(f"scores must be (n, {len(self.actions)}), got {scores.shape}")
        filled = self._fill(X)
        self._code_of: dict[int, int] = {}
        qs = np.linspace(0, 1, self.n_bins + 1)[1:-1]
        self.edges_ = [np.unique(np.quantile(filled[:, f], qs)) for f in range(X.shape[1])]
        codes = np.column_stack(
            [np.searchsorted(self.edges_[f], filled[:, f], side="left") for f in range(X.shape[1])]
        )
        rows = np.arange(len(X))
        if self.confidence_z == 0:
            self.root_ = self._grow(codes, scores, rows, 0)
            return self
        # Honest leaves (as grf's): the splits were chosen to make some leaf's scores look
        # good, so a confidence test on the same rows would pass on noise. Grow on one half,
        # pick each leaf's action (with its test) on the other.
        half = np.random.default_rng(self.random_state).random(len(X)) < 0.5
        self.root_ = self._grow(codes, scores, rows[half], 0)
        self._relabel(self.root_, codes, scores, rows[~half])
        return self

    def _relabel(
        self, node: _Node, codes: np.ndarray, scores: np.ndarray, rows: np.ndarray
    ) -> None:
        if node.left is None or node.right is None:
            if len(rows) > 1:
                node.action, node.gain, node.lower = self._leaf(scores[rows])
            else:
                node.action, node.gain, node.lower = self._baseline_code, None, None
            return
        goes_left = codes[rows, node.feature] <= self._code_of[id(node)]
        self._relabel(node.left, codes, scores, rows[goes_left])
        self._relabel(node.right, codes, scores, rows[~goes_left])

    @staticmethod
    def _fill(X: np.ndarray) -> np.ndarray:
        # Missing values are "never happened" for the time-since features, which a very large
        # number orders correctly; for the others it is one more consistent place.
        return np.where(np.isnan(X), 1e12, X)

    def _leaf(self, scores: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """A leaf's action, its mean gains over ``baseline`` and their lower bounds.

        Without confidence the action of highest mean score; with ``confidence_z > 0`` the
        best among the actions whose gain's lower bound is positive (``baseline`` when there
        is none): the rule the service applies to the same values (``training.served``)."""
        base = self._baseline_code
        gain = scores.mean(axis=0) - scores[:, base].mean()
        gain[base] = 0.0
        lower = np.full(len(self.actions), math.nan)
        if self.confidence_z > 0:
            if len(scores) > 1:
                diff = scores - scores[:, [base]]
                se = diff.std(axis=0, ddof=1) / math.sqrt(len(scores))
                lower = gain - self.confidence_z * se
            else:
                lower = np.full(len(self.actions), -math.inf)
            lower[base] = 0.0
            allowed = lower > 0
            allowed[base] = True
            masked = np.where(allowed, gain, -np.inf)
            best = int(masked.argmax())
            return (best if masked[best] > 0 else base), gain, lower
        best = int(gain.argmax())
        return (best if gain[best] > 0 else base), gain, lower

    def _grow(self, codes: np.ndarray, scores: np.ndarray, rows: np.ndarray, depth: int) -> _Node:
        node_scores = scores[rows]
        node = _Node(*self._leaf(node_scores))
        if depth >= self.max_depth or len(rows) < 2 * self.min_leaf:
            return node
        total = node_scores.sum(axis=0)
        best_gain, best = total.max() + 1e-9 * abs(total.max()), None
        for f in range(codes.shape[1]):
            n_edges = len(self.edges_[f])
            if n_edges == 0:
                continue
            c = codes[rows, f]
            counts = np.cumsum(np.bincount(c, minlength=n_edges + 1))[:-1]
            sums = np.column_stack(
                [
                    np.bincount(c, weights=node_scores[:, a], minlength=n_edges + 1)
                    for a in range(len(self.actions))
                ]
            )
            left = np.cumsum(sums, axis=0)[:-1]
            gain = left.max(axis=1) + (total - left).max(axis=1)
            ok = (counts >= self.min_leaf) & (len(rows) - counts >= self.min_leaf)
            if not ok.any():
                continue
            gain = np.where(ok, gain, -np.inf)
            b = int(gain.argmax())
            if gain[b] > best_gain:
                best_gain, best = gain[b], (f, b)
        if best is None:
            return node
        f, b = best
        goes_left = codes[rows, f] <= b
        node.feature, node.threshold = f, float(self.edges_[f][b])
        self._code_of[id(node)] = b
        node.left = self._grow(codes, scores, rows[goes_left], depth + 1)
        node.right = self._grow(codes, scores, rows[~goes_left], depth + 1)
        return node

    def _leaves(self, X: np.ndarray) -> tuple[np.ndarray, list[_Node]]:
        """Leaf number per row (leaves numbered left to right) and the leaves in that order."""
        filled = self._fill(np.asarray(X, dtype=np.float64))
        leaves: list[_Node] = []
        numbers: dict[int, int] = {}

        def number(node: _Node) -> None:
            if node.left is None or node.right is None:
                numbers[id(node)] = len(leaves)
                leaves.append(node)
                return
            number(node.left)
            number(node.right)

        number(self.root_)
        out = np.empty(len(filled), dtype=np.int64)
        stack: list[tuple[_Node, np.ndarray]] = [(self.root_, np.arange(len(filled)))]
        while stack:
            node, rows = stack.pop()
            if node.left is None or node.right is None:
                out[rows] = numbers[id(node)]
                continue
            # Same side as training: a value equal to the edge goes left.
            left = filled[rows, node.feature] <= node.threshold
            stack.append((node.left, rows[left]))
            stack.append((node.right, rows[~left]))
        return out, leaves

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Leaf number per row, leaves numbered left to right from 0 (as scikit-learn's
        ``apply``: rows of one leaf get one action; per-leaf statistics group by it)."""
        return self._leaves(X)[0]

    def predict_codes(self, X: np.ndarray) -> np.ndarray:
        """Action index (``actions`` order) per row."""
        leaf, leaves = self._leaves(X)
        return np.array([node.action for node in leaves], dtype=np.int64)[leaf]

    def predict_values(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's leaf estimates ``(gain, lower)``, ``(n, len(actions))`` each: the mean
        AIPW score gain of every action over ``baseline`` in the row's leaf (the tree's value
        of that action for the row, in currency per decision) and its lower bound (NaN
        without confidence). The leaf's action is the best gain among the allowed ones."""
        leaf, leaves = self._leaves(X)
        empty = np.full(len(self.actions), math.nan)
        gain = np.array([n.gain if n.gain is not None else empty for n in leaves])
        lower = np.array([n.lower if n.lower is not None else empty for n in leaves])
        return gain[leaf], lower[leaf]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Action name per row."""
        return np.array(self.actions, dtype=object)[self.predict_codes(X)]

    def describe(self, names: Sequence[str]) -> list[str]:
        """The tree as readable rules, one line per leaf."""
        lines: list[str] = []

        def walk(node: _Node, path: list[str]) -> None:
            if node.left is None or node.right is None:
                rule = " and ".join(path) or "everyone"
                lines.append(f"{rule} -> {self.actions[node.action]}")
                return
            name = names[node.feature]
            walk(node.left, [*path, f"{name} <= {node.threshold:g}"])
            walk(node.right, [*path, f"{name} > {node.threshold:g}"])

        walk(self.root_, [])
        return lines
