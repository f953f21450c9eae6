"""Policy learning over another action set: AIPW scores, the policy tree and the confidence
filter on three e-mail arms with ``control`` as the baseline, and the Hillstrom rows built on
them (``training.hillstrom_policy``), on randomized trials whose effects are known."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_hillstrom import FAST, synthetic_frame
from training import metrics
from training.confidence import ConfidenceFilter
from training.hillstrom import CONTROL, POLICY_ACTIONS
from training.hillstrom_policy import (
    DR_LEARNER,
    OURS_FILTERED,
    TREE,
    dr_learner_uplift,
    hillstrom_scores,
    run,
    tree_uplift,
)
from training.policy_learning import PolicyTree, aipw_scores

ARMS = POLICY_ACTIONS  # control, mens, womens
WOMENS, C = ARMS.index("womens"), ARMS.index(CONTROL)


def _trial(n: int, seed: int, effect: float = 0.3) -> dict[str, np.ndarray]:
    """A uniform 3-arm trial with a binary outcome: base rate 0.2; the women's arm adds
    ``effect`` where x0 > 0.5 and nothing elsewhere; the men's arm adds nothing."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 3))
    logged = rng.integers(0, 3, n)
    p = 0.2 + effect * ((logged == WOMENS) & (X[:, 0] > 0.5))
    return {
        "X": X,
        "arm": np.array(ARMS, dtype=object)[logged],
        "propensity": np.full(n, 1 / 3),
        "y": (rng.random(n) < p).astype(float),
    }


def test_aipw_scores_take_the_action_set_as_a_parameter() -> None:
    t = _trial(3_000, 0)
    q_hat = np.random.default_rng(1).random((3_000, 3))
    scores = aipw_scores(q_hat, t["arm"], t["propensity"], t["y"], actions=ARMS)
    assert scores.shape == (3_000, 3)
    chosen = np.array(ARMS, dtype=object)[np.random.default_rng(2).integers(0, 3, 3_000)]
    expected = metrics.dr_value(chosen, t["arm"], t["propensity"], t["y"], q_hat, ARMS)
    picked = scores[np.arange(3_000), [ARMS.index(c) for c in chosen]]
    assert picked.mean() == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown actions"):
        aipw_scores(np.zeros((1, 3)), np.array(["none"], dtype=object), np.ones(1), np.ones(1),
                    actions=ARMS)  # fmt: skip


def test_policy_tree_over_arms_sends_the_womens_email_where_it_pays() -> None:
    t = _trial(12_000, 3)
    scores = aipw_scores(np.zeros((12_000, 3)), t["arm"], t["propensity"], t["y"], actions=ARMS)
    tree = PolicyTree(max_depth=1, min_leaf=500, actions=ARMS, baseline=CONTROL).fit(t["X"], scores)
    test = _trial(2_000, 4)
    chosen = tree.predict(test["X"])
    assert set(chosen) <= set(ARMS)
    assert (chosen[test["X"][:, 0] > 0.55] == "womens").mean() > 0.95
    # Leaves are numbered left to right; every row of a leaf gets that leaf's action.
    leaf = tree.apply(test["X"])
    assert set(leaf) == {0, 1}
    for number in np.unique(leaf):
        assert len(set(chosen[leaf == number])) == 1
    assert any("x0" in line and "womens" in line for line in tree.describe(["x0", "x1", "x2"]))


def test_confident_tree_over_arms_keeps_the_baseline_without_effects() -> None:
    t = _trial(6_000, 5, effect=0.0)
    scores = aipw_scores(np.zeros((6_000, 3)), t["arm"], t["propensity"], t["y"], actions=ARMS)
    tree = PolicyTree(3, 100, confidence_z=1.96, actions=ARMS, baseline=CONTROL).fit(t["X"], scores)
    assert (tree.predict(t["X"]) == CONTROL).mean() > 0.9
    with pytest.raises(ValueError, match="baseline"):
        PolicyTree(actions=ARMS)  # the default baseline "none" is not an arm


def test_confidence_filter_falls_back_to_the_given_baseline() -> None:
    t = _trial(9_000, 6)
    scores = aipw_scores(np.zeros((9_000, 3)), t["arm"], t["propensity"], t["y"], actions=ARMS)
    chosen = np.full(9_000, "womens", dtype=object)
    predicted = t["X"][:, 0]  # a model that ranks the women's gain right
    filt = ConfidenceFilter(n_bins=4, actions=ARMS, baseline=CONTROL).fit(
        chosen, predicted, scores, np.arange(9_000)
    )
    applied = filt.apply(chosen, predicted)
    assert set(applied) == {"womens", CONTROL}
    # Quartile bins: their edge near 0.5 may fall either side of it by a hair.
    assert (applied[predicted > 0.52] == "womens").all()  # gain 0.3: far beyond noise
    assert (applied[predicted < 0.48] == CONTROL).all()  # gain 0: never confident


def test_dr_learner_ranks_the_treated_segment_first() -> None:
    t = _trial(9_000, 7)
    scores = hillstrom_scores(t["X"], t["arm"], t["y"].astype(int), seed=0, params=FAST)
    test = _trial(2_000, 8)
    uplift = dr_learner_uplift(t["X"], scores, test["X"], params=FAST)
    segment = test["X"][:, 0] > 0.5
    assert uplift["womens"][segment].mean() > uplift["womens"][~segment].mean() + 0.15
    treated = np.isin(test["arm"], ("womens", CONTROL))

    def qini(uplift: np.ndarray) -> float:
        y, arm = test["y"][treated], test["arm"][treated]
        return metrics.qini_auc_score(y, (arm == "womens").astype(int), uplift[treated])

    # Within a tenth of the Qini of the true effect's ranking (itself well below 1: the
    # normalisation is by the best ranking of the noisy outcomes).
    assert qini(uplift["womens"]) > 0.9 * qini(0.3 * segment)


def test_tree_uplift_is_the_leaf_mean_of_the_score_gain() -> None:
    t = _trial(6_000, 9)
    scores = aipw_scores(np.zeros((6_000, 3)), t["arm"], t["propensity"], t["y"], actions=ARMS)
    tree = PolicyTree(1, 500, actions=ARMS, baseline=CONTROL).fit(t["X"], scores)
    uplift = tree_uplift(tree, t["X"], scores, t["X"])
    leaf = tree.apply(t["X"])
    gain = scores[:, WOMENS] - scores[:, C]
    for number in np.unique(leaf):
        assert uplift["womens"][leaf == number] == pytest.approx(gain[leaf == number].mean())


def test_run_adds_the_policy_rows_before_the_constant_policies(tmp_path: Path) -> None:
    path = tmp_path / "hillstrom.csv"
    synthetic_frame(n=3_000, seed=1).to_csv(path, index=False)
    table = run(path, seeds=(0, 1), methods=("t",), peers=False)
    learners = table["learner"].tolist()
    for name in (DR_LEARNER, TREE, OURS_FILTERED):
        assert name in learners
    assert learners[-3:] == ["always control", "always mens", "always womens"]
    new = table[table["learner"] == DR_LEARNER].iloc[0]
    assert np.isfinite(new["qini_womens_mean"]) and np.isfinite(new["ipw_se_mean"])
    # The women's e-mail's only effect (+0.4 visits for women's buyers) is found.
    assert new["qini_womens_mean"] > 0.1


def test_the_command_prints_the_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "hillstrom.csv"
    synthetic_frame(n=3_000, seed=2).to_csv(path, index=False)
    result = subprocess.run(
        [sys.executable, "-m", "nba.cli", "benchmark", "hillstrom", "--data", str(path),
         "--seeds", "0", "--no-peers"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for needle in ("new: DR-learner", "confident leaves", "confidence filter", "IPW SE"):
        assert needle in result.stdout
