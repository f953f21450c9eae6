"""The rule policy file: validated at load, evaluated by pure functions, judged by the data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import ACTIONS
from features.rule_policy import (
    DEFAULT_RULE_POLICY_PATH,
    RulePolicyError,
    load_rule_policy,
    parse_rule_policy,
)
from training.priors import AS_WRITTEN, CONFIRMED, DROPPED, HybridPolicy, judge_rules
from training.served import HybridAdvisor, advised_choice
from training.windows import tune_windows

SHIPPED = load_rule_policy()
WHEN = {"missing": "open_case_count"}


def test_shipped_file_is_the_stories_common_sense() -> None:
    assert DEFAULT_RULE_POLICY_PATH.name == "rules.yaml"
    assert DEFAULT_RULE_POLICY_PATH.parent.name == "serving"  # beside guardrails.yaml
    assert [(r.name, r.action) for r in SHIPPED.rules] == [
        ("recent_milestone", "recognition"),
        ("uncompensated_severe_disruption", "apology_credit"),
    ]
    assert SHIPPED.default == "none"
    frame = pd.DataFrame(
        {
            "days_since_last_milestone": [3.0, np.nan, np.nan, np.nan, 40.0],
            "days_since_last_negative": [np.nan, 2.0, 2.0, 20.0, np.nan],
            "compensated_since_last_negative": [False, False, True, False, False],
            "last_negative_kind": [None, "cancellation", "cancellation", "cancellation", None],
            "last_negative_delay_minutes": [np.nan, 0.0, 0.0, 0.0, np.nan],
        }
    )
    assert SHIPPED.choose(frame).tolist() == [
        "recognition", "apology_credit", "none", "none", "none"
    ]  # fmt: skip
    # The scalar path agrees (one request).
    for i, row in frame.iterrows():
        assert SHIPPED.choose_one(row.to_dict())[0] == SHIPPED.choose(frame.iloc[[i]])[0]


def test_a_missing_value_never_puts_a_customer_in_a_segment() -> None:
    frame = pd.DataFrame({"days_since_last_milestone": [np.nan]})
    assert SHIPPED.choose(frame).tolist() == ["none"]
    assert SHIPPED.choose_one({}) == ("none", None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2, "rules": []}, "'version' must be 1"),
        ({"version": 1, "rules": [{"name": "x", "action": "upsell", "when": {}}]},
         "rule 'x': action 'upsell' is not one of"),
        ({"version": 1, "rules": [{"name": "x", "action": "promo",
                                   "when": {"feature": "days_since_milestone", "op": "<",
                                            "value": 3}}]},
         "rule 'x': when: unknown feature 'days_since_milestone' (did you mean"),
        ({"version": 1, "rules": [{"name": "Bad Name", "action": "promo", "when": {}}]},
         "must be lower-case words"),
        ({"version": 1, "rules": [{"name": "x", "action": "promo"}]}, "needs a 'when'"),
        ({"version": 1, "default": "maybe", "rules": []}, "default 'maybe' is not one of"),
        ({"version": 1, "rules": [{"name": "x", "action": "promo", "when": WHEN},
                                  {"name": "x", "action": "none", "when": WHEN}]},
         "rule 'x': duplicate rule name"),
    ],
)  # fmt: skip
def test_a_bad_rule_file_is_refused_with_a_clear_error(data: object, message: str) -> None:
    with pytest.raises(RulePolicyError) as caught:
        parse_rule_policy(data, "brand.yaml")
    assert str(caught.value).startswith("brand.yaml")
    assert message in str(caught.value)


def test_bad_yaml_and_duplicate_keys_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nversion: 1\nrules: []\n")
    with pytest.raises(RulePolicyError, match=r"not valid YAML: .*duplicate key"):
        load_rule_policy(path)
    with pytest.raises(RulePolicyError, match="cannot read"):
        load_rule_policy(tmp_path / "absent.yaml")


def _logged(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features where a third of rows are just past a milestone; scores whose recognition gain
    is +gain there (set by the caller), apology 0 everywhere; noise sd 5."""
    rng = np.random.default_rng(seed)
    milestone = rng.random(n) < 1 / 3
    features = pd.DataFrame(
        {
            "days_since_last_milestone": np.where(milestone, 5.0, np.nan),
            "days_since_last_negative": np.full(n, np.nan),
            "compensated_since_last_negative": np.zeros(n, bool),
            "last_negative_kind": np.full(n, None, dtype=object),
            "last_negative_delay_minutes": np.full(n, np.nan),
        }
    )
    scores = rng.normal(0, 5.0, (n, len(ACTIONS)))
    return features, scores, np.array([f"C{i}" for i in range(n)], dtype=object)


@pytest.mark.parametrize(
    ("gain", "verdict"), [(-3.0, DROPPED), (3.0, CONFIRMED), (0.0, AS_WRITTEN)]
)
def test_rules_are_judged_by_their_pooled_dr_gain(gain: float, verdict: str) -> None:
    features, scores, customers = _logged(6_000, 1)
    in_segment = features["days_since_last_milestone"].notna().to_numpy()
    scores[in_segment, ACTIONS.index("recognition")] += gain
    verdicts = {v.name: v for v in judge_rules(SHIPPED, features, scores, customers)}
    assert verdicts["recent_milestone"].verdict == verdict
    assert verdicts["recent_milestone"].rows == in_segment.sum()
    # An empty segment has no evidence: it stays as written.
    assert verdicts["uncompensated_severe_disruption"].verdict == AS_WRITTEN


def _hybrid_choice(hybrid: HybridPolicy, X: np.ndarray, features: pd.DataFrame) -> np.ndarray:
    """The hybrid's actions as the service takes them (every action eligible)."""
    advice = HybridAdvisor(hybrid).advise(X, features, None)
    eligible = np.ones((len(X), len(ACTIONS)), dtype=bool)
    return np.array(ACTIONS, dtype=object)[advised_choice(advice, eligible)]


def test_hybrid_drops_a_harmful_rule_and_keeps_a_good_one() -> None:
    features, scores, customers = _logged(6_000, 2)
    in_segment = features["days_since_last_milestone"].notna().to_numpy()
    X = in_segment[:, None].astype(np.float64)
    harmful = scores.copy()
    harmful[in_segment, ACTIONS.index("recognition")] -= 4.0
    chosen = _hybrid_choice(HybridPolicy.fit(SHIPPED, X, features, harmful, customers), X,
                            features)  # fmt: skip
    assert (chosen[in_segment] == "none").all()
    good = scores.copy()
    good[in_segment, ACTIONS.index("recognition")] += 4.0
    chosen = _hybrid_choice(HybridPolicy.fit(SHIPPED, X, features, good, customers), X, features)
    assert (chosen[in_segment] == "recognition").all()
    assert (chosen[~in_segment] == "none").all()  # noise elsewhere: no confident override


def _windowed(n: int, seed: int, days: np.ndarray, gain: np.ndarray
              ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:  # fmt: skip
    features, scores, customers = _logged(n, seed)
    features["days_since_last_milestone"] = days
    scores[:, ACTIONS.index("recognition")] += gain
    return features, scores, customers


def test_a_window_moves_only_where_the_evidence_says_so() -> None:
    rng = np.random.default_rng(3)
    days = np.where(rng.random(9_000) < 0.5, rng.uniform(0, 40, 9_000), np.nan)
    # Recognition pays within a week of the milestone and costs after it: 7 days beats 14.
    features, scores, customers = _windowed(9_000, 3, days, np.where(days <= 7, 4.0, -4.0))
    tuned, changes = tune_windows(SHIPPED, features, scores, customers)
    assert [(c.rule, c.written, c.tuned) for c in changes] == [("recent_milestone", 14, 7)]
    assert changes[0].lower > 0 and "14 -> 7 days" in changes[0].describe()
    assert tuned.choose_one({"days_since_last_milestone": 10.0})[0] == "none"
    assert tuned.choose_one({"days_since_last_milestone": 5.0})[0] == "recognition"
    # No difference in the data: the brand's window stays (and the file as written).
    features, scores, customers = _windowed(9_000, 4, days, np.zeros(9_000))
    same, changes = tune_windows(SHIPPED, features, scores, customers)
    assert changes == [] and same is SHIPPED
    # It pickles with its new numbers (a served policy carries it).
    again = pickle.loads(pickle.dumps(tuned))
    assert again.choose_one({"days_since_last_milestone": 10.0})[0] == "none"
