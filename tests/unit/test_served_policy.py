"""The selected policy as the service runs it: one rule of choice, offline and online alike."""

from __future__ import annotations

import pickle
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from features import schema
from features.contract import ACTIONS
from features.rule_policy import load_rule_policy
from serving.decider import LoadedModel, Request
from tests.unit.test_decider import NOW, StubModel, make, quiet_customer
from training.confidence import ConfidenceFilter
from training.policy_learning import PolicyTree
from training.priors import RuleVerdict
from training.served import (
    NOT_CONFIDENT,
    RULE_POLICY,
    Advice,
    ConfidentValuePolicy,
    RulePolicyAsWritten,
    RulesThenModel,
    ServedPolicy,
    TreePolicy,
    ValuePolicy,
    advised_choice,
)
from training.value import ActionCosts

NONE, PROMO = ACTIONS.index("none"), ACTIONS.index("promo")
COSTS = ActionCosts()
RULES = load_rule_policy()
FEATURES = list(schema.MODEL_FEATURES)


def served(policy: Any, uplifts: dict[str, float] | None = None) -> LoadedModel:
    stub = StubModel(uplifts or {"promo": 0.05, "recognition": -0.01})
    if getattr(policy, "value_model", "x") is None:
        policy.value_model = None
    return LoadedModel(ServedPolicy("test", stub, policy, COSTS), "nba-uplift/9")


def both(rows: dict[str, Any], model: LoadedModel, customer: str) -> list[dict[str, Any]]:
    """The single and the batch answer, each from its own decider (a first answer's contact
    would cap the second)."""
    return [make(rows, model=model).decide(Request(customer)),
            make(rows, model=model).decide_batch([Request(customer)])[0]]  # fmt: skip


def by_action(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["action"]: r for r in out["ranking"]}


def milestone_customer() -> dict[str, Any]:
    return quiet_customer(last_milestone_at=pd.Timestamp(NOW - timedelta(days=3)),
                          last_milestone_miles=100_000)  # fmt: skip


def test_the_rule_file_acts_as_written_and_says_which_rule_blocks_the_rest() -> None:
    model = served(RulePolicyAsWritten(RULES))
    rows = {"M": milestone_customer(), "Q": quiet_customer()}
    for out in both(rows, model, "M"):
        # Recognition right after a milestone, as the brand wrote it, although the uplift
        # model values it below zero; the promo the model prefers is not the rule's action.
        ranking = by_action(out)
        assert out["action"] == "recognition", out
        assert ranking["recognition"]["expected_value"] < 0
        assert RULE_POLICY in ranking["promo"]["blocked_by"]
    for out in both(rows, model, "Q"):
        assert out["action"] == "none"  # no rule matches: the file's default
        assert RULE_POLICY in by_action(out)["promo"]["blocked_by"]


def test_offline_scoring_chooses_as_the_service_does() -> None:
    from serving.guardrails import load_rules
    from serving.score import score

    rows = {"M": milestone_customer(), "Q": quiet_customer(), "S": quiet_customer(searches_7d=5)}
    for policy in (RulePolicyAsWritten(RULES), TreePolicy(_tree())):
        model = served(policy)
        requests = pd.DataFrame({"customer_id": list(rows), "decided_at": [NOW] * len(rows),
                                 "decision_id": list(rows)})  # fmt: skip
        stored = pd.DataFrame([rows[c] for c in rows])[list(schema.STORED)]
        offline = score(model.estimator, load_rules(), requests, stored, costs=COSTS)
        online = [make(rows, model=model).decide(Request(c))["action"] for c in rows]
        assert offline["action"].tolist() == online


def test_explain_names_the_rule_and_the_unsure_actions() -> None:
    model = served(RulePolicyAsWritten(RULES))
    decider = make({"M": milestone_customer()}, model=model)
    said = decider.decide(Request("M", explain=True))["reasons"]
    assert "rule policy: recent_milestone gives recognition" in said
    batch = make({"M": milestone_customer()}, model=model).decide_batch(
        [Request("M", explain=True)])[0]["reasons"]  # fmt: skip
    assert "rule policy: recent_milestone gives recognition" in batch
    filt = ConfidenceFilter()
    filt.edges_["promo"], filt.lower_["promo"] = np.array([]), np.array([-1.5])
    unsure = served(ConfidentValuePolicy(None, filt, COSTS))
    said = make({"Q": quiet_customer()}, model=unsure).decide(Request("Q", explain=True))
    assert any(r.startswith("promo: worth +") and "lower bound is -1.50: not confident" in r
               for r in said["reasons"])  # fmt: skip


@pytest.mark.parametrize("kind", ["rules", "tree", "rules + s-learner"])
def test_a_batch_answers_as_single_decisions_do(kind: str) -> None:
    rng = np.random.default_rng(4)
    rows = {}
    for i in range(40):
        row = quiet_customer(searches_7d=int(rng.integers(0, 6)),
                             marketing_opt_in=bool(rng.random() < 0.8))  # fmt: skip
        days_ago = [pd.Timestamp(NOW - timedelta(days=int(d))) for d in rng.integers(0, 40, 2)]
        if rng.random() < 0.3:
            row.update(last_milestone_at=days_ago[0])
        if rng.random() < 0.3:
            row.update(last_negative_at=days_ago[1], last_negative_kind="cancellation")
        rows[f"C{i}"] = row
    verdicts = [RuleVerdict(r.name, r.action, 100, 1.0, 0.5, 1.5, "confirmed") for r in RULES.rules]
    policy = {"rules": RulePolicyAsWritten(RULES), "tree": TreePolicy(_tree()),
              "rules + s-learner": RulesThenModel(RULES, verdicts, None, COSTS)}[kind]  # fmt: skip
    model = served(policy)
    single = [make(rows, model=model).decide(Request(c)) for c in rows]
    batch = make(rows, model=model).decide_batch([Request(c) for c in rows])
    assert [o["action"] for o in single] == [o["action"] for o in batch]
    assert [o["ranking"] for o in single] == [o["ranking"] for o in batch]
    assert len({o["action"] for o in single}) > 1  # the customers differ in what they get


def test_a_guardrail_still_binds_a_rule_policy() -> None:
    row = milestone_customer()
    # A cancellation two days ago, not made good: no recognition now (a guardrail).
    row.update(last_negative_at=pd.Timestamp(NOW - timedelta(days=2)),
               last_negative_kind="cancellation")  # fmt: skip
    decider = make({"M": row}, model=served(RulePolicyAsWritten(RULES)))
    out = decider.decide(Request("M"))
    assert out["action"] == "none"
    recognition = by_action(out)["recognition"]
    assert "no_recognition_after_uncompensated_disruption" in recognition["blocked_by"]


def _tree() -> PolicyTree:
    """Promo pays +4 where searches_7d > 2 and costs 4 elsewhere (noise sd 1)."""
    rng = np.random.default_rng(0)
    n = 4_000
    X = np.zeros((n, len(FEATURES)))
    j = FEATURES.index("searches_7d")
    X[:, j] = rng.integers(0, 6, n)
    scores = rng.normal(0, 1.0, (n, len(ACTIONS)))
    scores[:, PROMO] += np.where(X[:, j] > 2, 4.0, -4.0)
    scores[:, [ACTIONS.index("apology_credit"), ACTIONS.index("recognition")]] -= 1.0
    return PolicyTree(max_depth=1, min_leaf=100, confidence_z=1.64).fit(X, scores)


def test_a_policy_tree_is_served_with_its_leaf_values_and_bounds() -> None:
    model = served(TreePolicy(_tree()))
    rows = {"S": quiet_customer(searches_7d=5), "Q": quiet_customer()}
    single, batch = both(rows, model, "S")
    for out in (single, batch):
        promo = by_action(out)["promo"]
        assert out["action"] == "promo"
        assert promo["expected_value"] == pytest.approx(4.0, abs=0.3)  # the leaf's mean gain
        assert 0 < promo["value_lower"] < promo["expected_value"]
    assert single["ranking"] == batch["ranking"]
    out = make(rows, model=model).decide(Request("Q"))
    promo = by_action(out)["promo"]
    assert out["action"] == "none" and promo["expected_value"] < 0
    assert NOT_CONFIDENT in promo["blocked_by"]


def test_an_unsure_action_is_not_taken_and_the_ranking_shows_why() -> None:
    filt = ConfidenceFilter()
    filt.edges_["promo"], filt.lower_["promo"] = np.array([]), np.array([-1.5])
    model = served(ConfidentValuePolicy(None, filt, COSTS))
    for out in both({"Q": quiet_customer()}, model, "Q"):
        promo = by_action(out)["promo"]
        assert promo["expected_value"] > 0 and promo["value_lower"] == -1.5
        assert NOT_CONFIDENT in promo["blocked_by"] and not promo["eligible"]
        assert out["action"] == "none"


def test_rules_then_model_rules_its_segments_and_values_the_rest() -> None:
    verdicts = [RuleVerdict(r.name, r.action, 100, 1.0, 0.5, 1.5, "confirmed") for r in RULES.rules]
    model = served(RulesThenModel(RULES, verdicts, None, COSTS))
    decider = make({"M": milestone_customer(), "Q": quiet_customer()}, model=model)
    assert decider.decide(Request("M"))["action"] == "recognition"
    out = decider.decide(Request("Q"))  # no rule: the uplift model's promo
    assert out["action"] == "promo" and not by_action(out)["promo"]["blocked_by"]
    dropped = [RuleVerdict(v.name, v.action, 100, -3.0, -4.0, -2.0, "dropped") for v in verdicts]
    model = served(RulesThenModel(RULES, dropped, None, COSTS))
    decider = make({"M": milestone_customer()}, model=model)
    assert decider.decide(Request("M"))["action"] == "promo"  # the data dropped the rule


def test_the_served_policy_pickles_and_keeps_the_uplift_models_interface() -> None:
    policy = ServedPolicy("tree", StubModel({"promo": 0.05}), TreePolicy(_tree()), COSTS)
    again = pickle.loads(pickle.dumps(policy))
    assert again.feature_names_ == FEATURES and again.actions_ == ("promo", "apology_credit",
                                                                   "recognition")  # fmt: skip
    assert again.advises and "searches_7d" in " ".join(again.describe())
    assert not ServedPolicy("s", StubModel({}), ValuePolicy(StubModel({})), COSTS).advises
    # A rule policy's compiled conditions are closures: it pickles as its file and recompiles.
    ruled = ServedPolicy("rules", StubModel({}), RulePolicyAsWritten(RULES), COSTS)
    again = pickle.loads(pickle.dumps(ruled))
    row = milestone_customer() | {"days_since_last_milestone": 3.0}
    assert (
        again.policy.policy.choose_one(row)
        == RULES.choose_one(row)
        == ("recognition", "recent_milestone")
    )


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(np.float64, (6, 4), elements=st.floats(-5, 5)),
    lower=hnp.arrays(np.float64, (6, 4), elements=st.floats(-5, 5) | st.just(np.nan)),
    eligible=hnp.arrays(bool, (6, 4)),
    preferred=hnp.arrays(np.int64, 6, elements=st.integers(-1, 3)),
)
def test_the_choice_is_eligible_allowed_and_never_worse_than_none(
    values: np.ndarray, lower: np.ndarray, eligible: np.ndarray, preferred: np.ndarray
) -> None:
    allowed = np.isnan(lower) | (lower > 0)
    allowed[:, NONE] = True
    advice = Advice(values, lower, allowed, preferred)
    chosen = advised_choice(advice, eligible)
    for i, c in enumerate(chosen.tolist()):
        if c == NONE:
            continue
        assert eligible[i, c] and allowed[i, c]
        if preferred[i] >= 0:
            assert c == preferred[i]  # a rule's action, or nothing
        else:
            ok = eligible[i] & allowed[i]
            ok[NONE] = False
            assert values[i, c] > 0 and values[i, c] == values[i][ok].max()
