"""The policy-learning methods of issue 17 on the Hillstrom e-mail experiment.

``training.hillstrom`` puts our uplift estimator beside scikit-uplift and causalml; this module
adds, on the same splits and metrics (``hillstrom.split``, ``hillstrom.score``), the methods of
``training.policy_learning``, ``training.confidence`` and ``training.selection``, adapted from
the travel action set to the three e-mail arms (``control``, ``mens``, ``womens``) and the
binary ``visit`` reward:

* AIPW scores ``Γ`` (``policy_learning.aipw_scores`` over the arms) on the training rows, with
  the reward model cross-fitted: per fold, one LightGBM visit classifier per arm fitted on the
  other folds' rows of that arm (``cross_fitted_arm_probabilities``). Every row is one customer,
  so the folds are by row (``folds_by_customer`` with the row as the customer).
* **DR-learner on the AIPW scores**: each e-mail's uplift is a regression of
  ``Γ[e-mail] - Γ[control]`` on the features. It gives a per-arm uplift score, so Qini is
  defined, and its policy is the argmax as for every other row of the table.
* **Policy tree**: ``PolicyTree`` over ``Γ``; its IPW value is that of the tree's own actions.
  A tree ranks only by leaf, so its Qini score is the leaf's mean ``Γ[e-mail] - Γ[control]``
  (training rows). With ``confidence_z > 0`` a leaf sends an e-mail only when the lower bound of
  that gain is positive (honest leaves).
* **Ours with the confidence filter**: our S-learner (``hillstrom.fit_ours``, the tuned
  settings) fitted on two thirds of the training rows; ``ConfidenceFilter`` calibrated on the
  other third's AIPW scores; the policy sends an e-mail only where the calibrated lower bound
  of its gain is positive. Its Qini is the S-learner's (the filter changes decisions, not the
  ranking). The unfiltered S-learner of the same two thirds is reported too, so the filter's
  effect is not confused with the smaller training set.

No setting here was chosen on a test split: the outcome classifiers take the settings
cross-validated for our T-learner (which is what they are), the DR regression those
cross-validated for our DR-learner (``TUNED_PARAMS``); the tree's depth 2 is policytree's usual
choice and its minimum leaf (1,000 rows, about 330 per arm) was fixed before the first run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor

from training.confidence import ConfidenceFilter
from training.hillstrom import (
    ACTIONS,
    CONTROL,
    POLICY_ACTIONS,
    PROPENSITY,
    SEEDS,
    TUNED_PARAMS,
    Progress,
    fit_ours,
    load_hillstrom,
    policy_value,
    run_per_seed,
    score,
    split,
    summarize,
)
from training.policy_learning import PolicyTree, aipw_scores, folds_by_customer

#: Folds of the reward model's cross-fitting.
N_FOLDS: Final = 5
#: The per-arm visit classifiers: the settings cross-validated for our T-learner.
OUTCOME_PARAMS: Final[dict[str, Any]] = dict(TUNED_PARAMS["t"])
#: The regression of the AIPW score differences: those cross-validated for our DR-learner.
EFFECT_PARAMS: Final[dict[str, Any]] = dict(TUNED_PARAMS["dr"])
TREE_DEPTH: Final = 2
TREE_MIN_LEAF: Final = 1000
#: One-sided 95%: a leaf acts only when its gain's lower bound is positive.
CONFIDENCE_Z: Final = 1.645
#: Share of the training rows that calibrates the confidence filter (as ``selection``'s 0.3).
CALIBRATE: Final = 1 / 3
#: Learner names of this module's rows.
DR_LEARNER: Final = "new: DR-learner on AIPW scores (LGBM)"
TREE: Final = f"new: policy tree (depth {TREE_DEPTH}) on AIPW scores"
TREE_CONFIDENT: Final = f"new: policy tree (depth {TREE_DEPTH}), confident leaves"
OURS_FILTERED: Final = "new: ours (s) on 2/3 + confidence filter"
OURS_TWO_THIRDS: Final = "new: ours (s) on 2/3, unfiltered"


def cross_fitted_arm_probabilities(
    X: np.ndarray,
    arm: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    arms: Sequence[str] = POLICY_ACTIONS,
    seed: int = 0,
    params: Mapping[str, Any] = OUTCOME_PARAMS,
) -> np.ndarray:
    """``(n, len(arms))`` visit probability under each arm, each row's from models not fitted
    on its fold: per fold and arm, one classifier on the other folds' rows of that arm.

    Randomization makes each arm's rows a sample of everyone, so no weighting is needed.
    """
    X = np.asarray(X, dtype=np.float64)
    arm = np.asarray(arm, dtype=object)
    y = np.asarray(y)
    q = np.empty((len(X), len(arms)))
    for k in np.unique(folds):
        held = folds == k
        for j, a in enumerate(arms):
            rows = ~held & (arm == a)
            if len(np.unique(y[rows])) < 2:
                # A fold's arm without both outcomes: its rate is the only estimate there is.
                q[held, j] = float(y[rows].mean()) if rows.any() else 0.0
                continue
            model = LGBMClassifier(**{**params, "random_state": seed, "n_jobs": 1, "verbose": -1})
            model.fit(X[rows], y[rows])
            q[held, j] = np.asarray(model.predict_proba(X[held]))[:, 1]
    return q


def hillstrom_scores(
    X: np.ndarray,
    arm: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    n_folds: int = N_FOLDS,
    params: Mapping[str, Any] = OUTCOME_PARAMS,
) -> np.ndarray:
    """Cross-fitted AIPW scores ``(n, 3)`` of the arms (``POLICY_ACTIONS`` order) on rows of a
    uniform 3-arm experiment (propensity 1/3)."""
    folds = folds_by_customer(np.arange(len(X)), n_folds, seed)
    q = cross_fitted_arm_probabilities(X, arm, y, folds, seed=seed, params=params)
    propensity = np.full(len(X), PROPENSITY)
    return aipw_scores(q, arm, propensity, np.asarray(y, dtype=np.float64), POLICY_ACTIONS)


def dr_learner_uplift(
    X_train: np.ndarray,
    scores: np.ndarray,
    X_test: np.ndarray,
    seed: int = 0,
    params: Mapping[str, Any] = EFFECT_PARAMS,
) -> dict[str, np.ndarray]:
    """Each e-mail's uplift on ``X_test``: a regression of ``Γ[e-mail] - Γ[control]``."""
    control = POLICY_ACTIONS.index(CONTROL)
    out = {}
    for a in ACTIONS:
        target = scores[:, POLICY_ACTIONS.index(a)] - scores[:, control]
        model = LGBMRegressor(**{**params, "random_state": seed, "n_jobs": 1, "verbose": -1})
        model.fit(X_train, target)
        out[a] = np.asarray(model.predict(X_test), dtype=np.float64)
    return out


def tree_uplift(
    tree: PolicyTree, X_train: np.ndarray, scores: np.ndarray, X_test: np.ndarray
) -> dict[str, np.ndarray]:
    """Each e-mail's uplift on ``X_test`` as the tree ranks it: the mean of
    ``Γ[e-mail] - Γ[control]`` over the training rows of the test row's leaf."""
    control = POLICY_ACTIONS.index(CONTROL)
    train_leaf, test_leaf = tree.apply(X_train), tree.apply(X_test)
    n_leaves = int(max(train_leaf.max(), test_leaf.max())) + 1
    counts = np.maximum(np.bincount(train_leaf, minlength=n_leaves), 1)
    out = {}
    for a in ACTIONS:
        gain = scores[:, POLICY_ACTIONS.index(a)] - scores[:, control]
        out[a] = (np.bincount(train_leaf, weights=gain, minlength=n_leaves) / counts)[test_leaf]
    return out


def _row(
    learner: str,
    arm: np.ndarray,
    y: np.ndarray,
    uplift: Mapping[str, np.ndarray],
    start: float,
    chosen: np.ndarray | None = None,
) -> dict[str, Any]:
    """A result row: ``score``'s metrics of ``uplift``; the IPW value and shares of ``chosen``
    when the policy is not the uplift's argmax (a tree's or a filter's own decisions)."""
    row: dict[str, Any] = {"learner": learner, **score(arm, y, uplift["mens"], uplift["womens"])}
    if chosen is not None:
        row.update(policy_value(chosen, arm, y))
        for action in POLICY_ACTIONS:
            row[f"share_{action}"] = float(np.mean(chosen == action))
    row["seconds"] = time.perf_counter() - start
    return row


def _argmax_choice(uplift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 3-arm argmax (ties to the control) of ``(n, 2)`` uplifts in ``ACTIONS`` order, and
    the predicted gain of the chosen arm over the control (0 for the control)."""
    gains = np.column_stack([np.zeros(len(uplift)), uplift[:, ACTIONS.index("mens")],
                             uplift[:, ACTIONS.index("womens")]])  # fmt: skip
    codes = gains.argmax(axis=1)
    chosen = np.asarray(POLICY_ACTIONS, dtype=object)[codes]
    return chosen, gains[np.arange(len(codes)), codes]


def evaluate_policy_methods(
    X: pd.DataFrame,
    arm: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int = 42,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """This module's rows (module docstring) for one split: fitted on ``train_idx``, scored on
    ``test_idx`` with ``hillstrom.score``'s metrics. ``seconds`` of each row includes the AIPW
    scores' cross-fitting it needs."""
    X_arr = X.to_numpy(dtype=np.float64)
    arm = np.asarray(arm, dtype=object)
    y = np.asarray(y, dtype=np.int64)
    X_tr, X_te = X_arr[train_idx], X_arr[test_idx]
    arm_te, y_te = arm[test_idx], y[test_idx]
    if progress is not None:
        progress(f"seed {seed}: cross-fitted AIPW scores")
    start = time.perf_counter()
    scores = hillstrom_scores(X_tr, arm[train_idx], y[train_idx], seed=seed)
    scores_seconds = time.perf_counter() - start

    def began() -> float:  # a method's clock starts with the scores' cost already on it
        return time.perf_counter() - scores_seconds

    rows = []
    if progress is not None:
        progress(f"seed {seed}: DR-learner on AIPW scores")
    t0 = began()
    rows.append(_row(DR_LEARNER, arm_te, y_te, dr_learner_uplift(X_tr, scores, X_te, seed), t0))
    for name, z in ((TREE, 0.0), (TREE_CONFIDENT, CONFIDENCE_Z)):
        if progress is not None:
            progress(f"seed {seed}: {name}")
        t0 = began()
        tree = PolicyTree(TREE_DEPTH, TREE_MIN_LEAF, confidence_z=z, random_state=seed,
                          actions=POLICY_ACTIONS, baseline=CONTROL).fit(X_tr, scores)  # fmt: skip
        uplift = tree_uplift(tree, X_tr, scores, X_te)
        rows.append(_row(name, arm_te, y_te, uplift, t0, chosen=tree.predict(X_te)))

    if progress is not None:
        progress(f"seed {seed}: ours (s) + confidence filter")
    t0 = began()
    # Every row is one customer: the calibration third is drawn by row.
    held = folds_by_customer(np.arange(len(train_idx)), round(1 / CALIBRATE), seed + 1) == 0
    model = fit_ours(X, arm, y, train_idx[~held], **{**TUNED_PARAMS["s"], "random_state": seed})
    cal_chosen, cal_gain = _argmax_choice(model.predict(X.iloc[train_idx[held]]))
    filt = ConfidenceFilter(actions=POLICY_ACTIONS, baseline=CONTROL).fit(
        cal_chosen, cal_gain, scores[held], train_idx[held]
    )
    test_uplift = model.predict(X.iloc[test_idx])
    uplift = {a: test_uplift[:, ACTIONS.index(a)] for a in ACTIONS}
    chosen, gain = _argmax_choice(test_uplift)
    rows.append(_row(OURS_FILTERED, arm_te, y_te, uplift, t0, chosen=filt.apply(chosen, gain)))
    rows.append(_row(OURS_TWO_THIRDS, arm_te, y_te, uplift, t0, chosen=chosen))
    return rows


def run_policy_per_seed(
    path: str | Path, seeds: Sequence[int] = SEEDS, progress: Progress = None
) -> pd.DataFrame:
    """``evaluate_policy_methods`` on every seed's split: one row per method and seed."""
    if progress is not None:
        progress(f"loading {path}")
    X, arm, y = load_hillstrom(path)
    rows = []
    for seed in seeds:
        train_idx, test_idx = split(arm, y, seed=seed)
        rows += [
            {**row, "seed": seed}
            for row in evaluate_policy_methods(X, arm, y, train_idx, test_idx, seed, progress)
        ]
    return pd.DataFrame(rows)


def run(
    path: str | Path,
    seeds: Sequence[int] = SEEDS,
    progress: Progress = None,
    methods: Sequence[str] = ("s", "dr", "t"),
    peers: bool = True,
    policy: bool = True,
) -> pd.DataFrame:
    """``hillstrom.run``'s table with this module's rows (when ``policy``) before the constant
    policies, and one more column: ``ipw_se_mean``, the mean over seeds of one split's IPW
    standard error (the spread over seeds is ``*_std``, as in ``hillstrom.run``)."""
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    per_seed = run_per_seed(path, seeds, progress, methods, peers)
    if policy:
        per_seed = pd.concat([per_seed, run_policy_per_seed(path, seeds, progress)])
    # The constant policies last, as in hillstrom.run (summarize keeps first-appearance order).
    constant = per_seed["learner"].astype(str).str.startswith("always ")
    per_seed = pd.concat([per_seed[~constant], per_seed[constant]], ignore_index=True)
    table = summarize(per_seed, seeds)
    se = per_seed.groupby("learner", sort=False)["ipw_se"].mean()
    table["ipw_se_mean"] = table["learner"].map(se)
    return table
