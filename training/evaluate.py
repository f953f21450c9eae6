"""Honest evaluation of an uplift model on held-out logged decisions.

* Ranking quality per action (Qini, AUUC, uplift at 30%) on the *randomized* held-out rows, the
  only ones where treated and control customers are comparable without weights.
* Value of policies by IPW, self-normalized IPW and doubly-robust estimators on all held-out
  rows (each logged with its propensity): the learned policy, doing nothing, each single action
  and the rule policy ``rules-v1``. The DR estimator's reward model is fitted on the *training*
  split and is the same for every policy compared, so that two models are judged alike.
* With a simulator's ``truth``: the true value of each of those policies, the oracle's, and the
  share of the oracle's incremental value the learned policy captures.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.contract import ACTIONS
from features.rule_policy import RulePolicy
from training import metrics
from training.baselines import rules_v1
from training.dataset import TrainingSet
from training.policy_learning import feasible
from training.served import choose_names
from training.value import ActionCosts, expected_value, realized_value, true_value

TREATMENTS: tuple[str, ...] = tuple(a for a in ACTIONS if a != "none")


def learned_choice(
    model: Any,
    X: pd.DataFrame,
    costs: ActionCosts,
    effects: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The learned policy without guardrails: the action of highest expected net value, ``none``
    when none is positive. Returns (chosen action names, (n, 4) values in ``ACTIONS`` order).

    ``effects``: ``model.predict_effects(X)`` when the caller already has it (it is the
    costliest part of an evaluation on many rows)."""
    if effects is None:
        effects = model.predict_effects(X)
    ev = expected_value(effects, model.actions_, costs)
    values = np.zeros((len(X), len(ACTIONS)))
    for j, action in enumerate(model.actions_):
        values[:, ACTIONS.index(action)] = ev[:, j]
    chosen = np.array(ACTIONS, dtype=object)[values.argmax(axis=1)]
    chosen[values.max(axis=1) <= 0] = "none"
    return chosen, values


@dataclass
class RewardModel:
    """Per-action regression of the realized net value, for the DR estimator's ``q_hat``."""

    boosters: dict[str, lgb.Booster]

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, 4)`` predicted net value of each action (``ACTIONS`` order)."""
        arr = X.to_numpy(np.float64)
        return np.column_stack([self.boosters[a].predict(arr, num_threads=1) for a in ACTIONS])


def fit_reward_model(
    train: TrainingSet,
    costs: ActionCosts,
    random_state: int = 0,
    n_estimators: int = 150,
    n_jobs: int = 1,
) -> RewardModel:
    """One LightGBM regressor per action on its logged rows, weighted by 1/propensity.

    ``n_jobs`` models are trained at once (-1: one per core), each on one LightGBM thread, as
    ``MultiActionUplift`` does; the models do not depend on it."""
    reward = realized_value(
        train.decisions["action"], train.outcomes["revenue"], train.outcomes["unsubscribed"], costs
    )
    X = train.X.to_numpy(np.float64)
    action = train.decisions["action"].to_numpy(object)
    weight = 1.0 / train.decisions["propensity"].to_numpy(np.float64)
    params = {
        "objective": "regression",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "verbose": -1,
        "num_threads": 1,
        "seed": random_state,
        "deterministic": True,
    }

    def fit(a: str) -> lgb.Booster:
        rows = action == a
        data = lgb.Dataset(X[rows], reward[rows], weight=weight[rows])
        return lgb.train(params, data, num_boost_round=n_estimators)

    threads = (os.cpu_count() or 1) if n_jobs == -1 else max(1, n_jobs)
    # LightGBM releases the GIL while it trains: threads give separate models separate cores.
    with ThreadPoolExecutor(max_workers=min(threads, len(ACTIONS))) as pool:
        boosters = dict(zip(ACTIONS, pool.map(fit, ACTIONS), strict=True))
    return RewardModel(boosters)


@dataclass
class Evaluation:
    """Everything measured on the held-out decisions."""

    uplift_table: pd.DataFrame
    policy_table: pd.DataFrame
    qini_curves: dict[str, tuple[np.ndarray, np.ndarray]]
    chosen: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)


def served_choice(model: Any, test: TrainingSet, costs: ActionCosts) -> np.ndarray:
    """A registered model's actions on ``test`` without guardrails (the contract's consent
    applied): a ``ServedPolicy``'s own rule of choice, or a bare uplift model's argmax (a
    version registered before policy selection)."""
    X = test.X[list(model.feature_names_)]
    policy = getattr(model, "policy", None)
    if policy is not None:
        return choose_names(policy, X, test.features)
    chosen, _ = learned_choice(model, X, costs)
    return feasible(chosen, test.features)


def policy_choices(
    model: Any,
    test: TrainingSet,
    costs: ActionCosts,
    rule_policy: RulePolicy | None = None,
) -> dict[str, np.ndarray]:
    """The policies compared: learned (the model's own choice), the brand's rule policy
    (``rules``), ``rules-v1``, always-none and each single action."""
    n = len(test)
    out = {"learned": served_choice(model, test, costs)}
    if rule_policy is not None:
        out["rules"] = rule_policy.choose(test.features)
    out["rules-v1"] = rules_v1(test.features)
    for a in ACTIONS:
        out[f"always {a}"] = np.full(n, a, dtype=object)
    return out


def evaluate(
    model: Any,
    test: TrainingSet,
    reward_model: RewardModel,
    costs: ActionCosts,
    rule_policy: RulePolicy | None = None,
) -> Evaluation:
    """Evaluate ``model`` on the held-out decisions ``test`` (see the module docstring);
    ``rule_policy``: the brand's rule file, compared as ``rules``."""
    decisions = test.decisions
    action = decisions["action"].to_numpy(object)
    propensity = decisions["propensity"].to_numpy(np.float64)
    converted = test.outcomes["converted"].to_numpy(np.float64)
    reward = realized_value(action, test.outcomes["revenue"], test.outcomes["unsubscribed"], costs)
    q_hat = reward_model.predict(test.X)

    # Ranking quality on randomized rows. The conversion uplifts are predict_effects' (the same
    # numbers as predict's), computed once for the ranking and the learned policy.
    effects = model.predict_effects(test.X)
    uplift = effects["converted"]
    randomized = decisions["policy"].to_numpy(object) == "random"
    rows, curves = [], {}
    for j, a in enumerate(model.actions_):
        sel = randomized & np.isin(action, [a, "none"])
        y, t, u = converted[sel], (action[sel] == a).astype(np.int64), uplift[sel, j]
        if t.min(initial=1) == t.max(initial=0):
            rows.append({"action": a, "rows": int(sel.sum()), "qini": np.nan, "auuc": np.nan,
                         "uplift_at_30": np.nan})  # fmt: skip
            continue
        curves[a] = metrics.qini_curve(y, t, u)
        rows.append(
            {
                "action": a,
                "rows": int(sel.sum()),
                "qini": metrics.qini_auc_score(y, t, u),
                "auuc": metrics.uplift_auc_score(y, t, u),
                "uplift_at_30": metrics.uplift_at_k(y, t, u, k=0.3),
            }
        )
    uplift_table = pd.DataFrame(rows).set_index("action")

    # Policy values.
    choices = policy_choices(model, test, costs, rule_policy)
    truth_values = None if test.truth is None else true_value(test.truth, ACTIONS, costs)
    if truth_values is not None:
        choices["oracle"] = metrics.oracle_policy(truth_values, ACTIONS)
    prow = []
    for name, chosen in choices.items():
        dr = metrics.policy_value_se("dr", chosen, action, propensity, reward, q_hat=q_hat)
        entry = {
            "policy": name,
            "ipw": metrics.ipw_value(chosen, action, propensity, reward),
            "snipw": metrics.snipw_value(chosen, action, propensity, reward),
            "dr": dr.value,
            "dr_se": dr.se,
        }
        if truth_values is not None:
            entry["true"] = metrics.true_policy_value(chosen, truth_values, ACTIONS)
        prow.append(entry)
    policy_table = pd.DataFrame(prow).set_index("policy")

    flat: dict[str, float] = {"test_rows": float(len(test))}
    for a, row in uplift_table.iterrows():
        for col in ("qini", "auuc", "uplift_at_30"):
            flat[f"{col}_{a}"] = float(row[col])
    for name, row in policy_table.iterrows():
        key = str(name).replace(" ", "_").replace("-", "_")
        for col in policy_table.columns:
            flat[f"value_{col}_{key}"] = float(row[col])
    if truth_values is not None:
        flat["oracle_share_captured"] = metrics.captured_share(
            policy_table.loc["learned", "true"],
            policy_table.loc["always none", "true"],
            policy_table.loc["oracle", "true"],
        )
    learned = choices["learned"]
    for a in ACTIONS:
        flat[f"share_chosen_{a}"] = float(np.mean(learned == a))
    return Evaluation(uplift_table, policy_table, curves, learned, flat)
