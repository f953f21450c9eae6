"""Guardrail rules: the shipped file, each rule, failing closed, validation errors, reasons."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.guardrails import (
    DEFAULT_RULES_PATH,
    MISSING_TEXT,
    GuardrailError,
    evaluate,
    load_rules,
    parse_rules,
    reasons,
)

RULES = load_rules()

#: A customer for whom no rule fires: every action is eligible.
CLEAN: dict[str, Any] = {
    "open_case_count": 0,
    "oldest_open_case_id": None,
    "oldest_open_case_age_days": math.nan,
    "days_since_last_negative": 5.0,  # apology needs a recent negative; promo blocks < 14 days
    "last_negative_kind": "delay",
    "compensated_since_last_negative": False,
    "marketing_opt_in": True,
    "unsubscribed": False,
    "promos_7d": 0,
    "contacts_7d": 0,
    "contacts_7d_channel": 0,
    "recognitions_30d": 0,
    "apology_credits_30d": 0,
    "apology_budget_left": 3,
    "days_since_last_milestone": 10.0,
    "tenure_days": 400.0,
    "channel": "web",
}


def blocked_by(values: dict[str, Any], action: str) -> list[str]:
    return evaluate(RULES, values)[action]


def test_shipped_file_loads_with_the_expected_rules() -> None:
    assert RULES.source == str(DEFAULT_RULES_PATH)
    assert RULES.names == (
        "open_service_case",
        "recent_negative_experience",
        "marketing_opt_out",
        "no_marketing_consent_on_record",
        "promo_frequency_cap",
        "recognition_frequency_cap",
        "weekly_contact_cap_promo",
        "weekly_contact_cap_recognition",
        "channel_contact_cap_promo",
        "channel_contact_cap_recognition",
        "apology_needs_recent_uncompensated_negative",
        "apology_daily_budget",
        "recognition_needs_milestone_or_tenure",
        "no_recognition_after_uncompensated_disruption",
    )
    assert {rule.action for rule in RULES.rules} == {"promo", "apology_credit", "recognition"}


def test_clean_customer_promo_blocked_only_by_the_recent_negative() -> None:
    result = evaluate(RULES, CLEAN)
    assert result == {
        "promo": ["recent_negative_experience"],
        "apology_credit": [],
        # CLEAN's recent delay is uncompensated: no celebration (see the test below).
        "recognition": ["no_recognition_after_uncompensated_disruption"],
        "none": [],
    }
    assert evaluate(RULES, {**CLEAN, "days_since_last_negative": 20.0})["promo"] == []


@pytest.mark.parametrize(
    ("patch", "blocked"),
    [
        ({}, True),  # a delay 5 days ago, not made good
        ({"last_negative_kind": "cancellation"}, True),
        ({"days_since_last_negative": 14.5}, False),  # past 14 days
        ({"compensated_since_last_negative": True}, False),  # made good
        ({"last_negative_kind": "complaint"}, False),  # a complaint is not a disruption
        ({"days_since_last_negative": None, "last_negative_kind": None}, False),  # none ever
        ({"compensated_since_last_negative": None}, True),  # unknown: fails closed
    ],
)
def test_no_recognition_right_after_an_uncompensated_disruption(
    patch: dict[str, Any], blocked: bool
) -> None:
    rule = "no_recognition_after_uncompensated_disruption"
    assert (rule in blocked_by({**CLEAN, **patch}, "recognition")) is blocked


@pytest.mark.parametrize(
    ("changes", "action", "rule", "fires"),
    [
        ({"open_case_count": 1}, "promo", "open_service_case", True),
        ({"open_case_count": 0}, "promo", "open_service_case", False),
        ({"days_since_last_negative": 0.0}, "promo", "recent_negative_experience", True),
        ({"days_since_last_negative": 14.0}, "promo", "recent_negative_experience", True),
        ({"days_since_last_negative": 14.01}, "promo", "recent_negative_experience", False),
        # No negative experience on record: "never", not "unknown".
        ({"days_since_last_negative": math.nan}, "promo", "recent_negative_experience", False),
        ({"days_since_last_negative": None}, "promo", "recent_negative_experience", False),
        ({"marketing_opt_in": False}, "promo", "marketing_opt_out", True),
        ({"unsubscribed": True}, "promo", "marketing_opt_out", True),
        ({"marketing_opt_in": True, "unsubscribed": False}, "promo", "marketing_opt_out", False),
        ({"promos_7d": 1}, "promo", "promo_frequency_cap", True),
        ({"promos_7d": 0}, "promo", "promo_frequency_cap", False),
        (
            {"days_since_last_negative": 31.0},
            "apology_credit",
            "apology_needs_recent_uncompensated_negative",
            True,
        ),
        (
            {"days_since_last_negative": 30.0},
            "apology_credit",
            "apology_needs_recent_uncompensated_negative",
            False,
        ),
        (
            {"compensated_since_last_negative": True},
            "apology_credit",
            "apology_needs_recent_uncompensated_negative",
            True,
        ),
        ({"apology_budget_left": 0}, "apology_credit", "apology_daily_budget", True),
        ({"apology_budget_left": 1}, "apology_credit", "apology_daily_budget", False),
        (
            {"days_since_last_milestone": 31.0},
            "recognition",
            "recognition_needs_milestone_or_tenure",
            True,
        ),
        (
            {"days_since_last_milestone": 31.0, "tenure_days": 1826.0},
            "recognition",
            "recognition_needs_milestone_or_tenure",
            False,
        ),
        (
            {"days_since_last_milestone": math.nan, "tenure_days": 2000.0},
            "recognition",
            "recognition_needs_milestone_or_tenure",
            False,
        ),
    ],
)
def test_each_rule_fires_on_its_condition(
    changes: dict[str, Any], action: str, rule: str, fires: bool
) -> None:
    assert (rule in blocked_by({**CLEAN, **changes}, action)) is fires


MISSING = [None, math.nan, pd.NA, pd.NaT, "not a value"]


@pytest.mark.parametrize("missing", MISSING, ids=repr)
@pytest.mark.parametrize(
    ("name", "action", "rule"),
    [
        ("open_case_count", "promo", "open_service_case"),
        ("marketing_opt_in", "promo", "no_marketing_consent_on_record"),
        ("unsubscribed", "promo", "marketing_opt_out"),
        ("promos_7d", "promo", "promo_frequency_cap"),
        (
            "days_since_last_negative",
            "apology_credit",
            "apology_needs_recent_uncompensated_negative",
        ),
        (
            "compensated_since_last_negative",
            "apology_credit",
            "apology_needs_recent_uncompensated_negative",
        ),
        ("apology_budget_left", "apology_credit", "apology_daily_budget"),
        ("days_since_last_milestone", "recognition", "recognition_needs_milestone_or_tenure"),
    ],
)
def test_missing_values_fail_closed(name: str, action: str, rule: str, missing: Any) -> None:
    assert rule not in blocked_by(CLEAN, action)
    assert rule in blocked_by({**CLEAN, name: missing}, action)
    without = {k: v for k, v in CLEAN.items() if k != name}
    assert rule in blocked_by(without, action)


def test_nothing_known_makes_every_action_but_none_ineligible() -> None:
    result = evaluate(RULES, {})
    assert all(result[action] for action in ("promo", "apology_credit", "recognition"))
    assert result["none"] == []


_MAYBE_DAYS = st.one_of(st.none(), st.just(math.nan), st.floats(0, 3000))
_MAYBE_BOOL = st.one_of(st.none(), st.booleans())
_MAYBE_COUNT = st.one_of(st.none(), st.integers(0, 3))
VALUES = st.fixed_dictionaries(
    {
        "open_case_count": _MAYBE_COUNT,
        "days_since_last_negative": _MAYBE_DAYS,
        "compensated_since_last_negative": _MAYBE_BOOL,
        "marketing_opt_in": _MAYBE_BOOL,
        "unsubscribed": _MAYBE_BOOL,
        "promos_7d": _MAYBE_COUNT,
        "contacts_7d": _MAYBE_COUNT,
        "contacts_7d_channel": _MAYBE_COUNT,
        "recognitions_30d": _MAYBE_COUNT,
        "apology_budget_left": _MAYBE_COUNT,
        "days_since_last_milestone": _MAYBE_DAYS,
        "tenure_days": _MAYBE_DAYS,
    }
)


@settings(max_examples=200, deadline=None)
@given(values=VALUES, hide=st.sets(st.sampled_from(sorted(RULES.reads))))
def test_hiding_a_value_never_unblocks_an_action(values: dict[str, Any], hide: set[str]) -> None:
    """Fail closed, as a property: forgetting values can only block more.

    ``recent_negative_experience`` is exempt by design: an empty ``days_since_last_negative``
    means "never" (``{missing: ...}`` in the file says so). ``marketing_opt_out`` hands a
    missing consent to ``no_marketing_consent_on_record``: the action stays blocked.
    """
    hidden = {k: (None if k in hide else v) for k, v in values.items()}
    before, after = evaluate(RULES, values), evaluate(RULES, hidden)
    for action, names in before.items():
        for name in names:
            # (also no_recognition_after_uncompensated_disruption: the same "never" reading)
            if name == "marketing_opt_out":
                assert after[action]
            elif name not in ("recent_negative_experience",
                              "no_recognition_after_uncompensated_disruption"):  # fmt: skip
                assert name in after[action]


# --- Validation -----------------------------------------------------------------------------------

GOOD_RULE: dict[str, Any] = {
    "name": "my_rule",
    "action": "promo",
    "effect": "block",
    "when": {"feature": "open_case_count", "op": ">", "value": 0},
    "reason": "case open",
}


def write_rules(tmp_path: Path, *rules: dict[str, Any]) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "rules": list(rules)}))
    return path


def test_a_valid_custom_file_loads(tmp_path: Path) -> None:
    rules = load_rules(write_rules(tmp_path, GOOD_RULE))
    assert rules.names == ("my_rule",)
    assert evaluate(rules, {"open_case_count": 2})["promo"] == ["my_rule"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"when": {"feature": "open_cases", "op": ">", "value": 0}},
            "unknown feature 'open_cases'",
        ),
        ({"action": "discount"}, "unknown action 'discount'"),
        ({"action": "none"}, "'none' can never be blocked"),
        ({"when": {"feature": "open_case_count", "op": "=>", "value": 0}}, "unknown op '=>'"),
        ({"effect": "forbid"}, "unknown effect 'forbid'"),
        ({"when": {"all": []}}, "non-empty list"),
        ({"when": {"feature": "open_case_count", "op": ">"}}, "needs 'feature', 'op' and 'value'"),
        ({"when": {"any": [{"feature": "x", "op": ">", "value": 0}]}}, "when.any[0]"),
        ({"when": {"all": [], "any": []}}, "exactly one of"),
        ({"when": {"feature": "last_negative_at", "op": ">", "value": 0}}, "is a timestamp"),
        ({"when": {"feature": "open_case_count", "op": ">", "value": True}}, "is a number"),
        ({"when": {"feature": "unsubscribed", "op": "==", "value": 1}}, "is a bool"),
        ({"when": {"feature": "unsubscribed", "op": "<", "value": True}}, "only == and !="),
        ({"when": {"feature": "channel", "op": "==", "value": "fax"}}, "unknown channel 'fax'"),
        ({"when": {"missing": "nope"}}, "unknown feature 'nope'"),
        ({"when": "open_case_count > 0"}, "must be a mapping"),
        ({"reson": "typo"}, "unknown keys ['reson']"),
        ({"reason": "case {case_id}"}, "unknown value 'case_id'"),
        ({"reason": "{oldest_open_case_id:.0f}"}, "does not apply"),
        ({"reason": "{open_case_count"}, "not a valid template"),
        ({"name": "Bad Name"}, "snake_case"),
    ],
)
def test_validation_errors_name_the_rule_and_the_file(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    rule = {**GOOD_RULE, **changes}
    path = write_rules(tmp_path, rule)
    with pytest.raises(GuardrailError) as error:
        load_rules(path)
    text = str(error.value)
    assert message in text
    assert str(path) in text
    label = f"rule {rule['name']!r}" if isinstance(rule["name"], str) else "rule #1"
    assert label in text


def test_duplicate_rule_names_are_refused(tmp_path: Path) -> None:
    path = write_rules(tmp_path, GOOD_RULE, {**GOOD_RULE, "action": "recognition"})
    with pytest.raises(GuardrailError, match=r"rule 'my_rule': duplicate rule name"):
        load_rules(path)


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    """PyYAML would keep the last of two ``value:`` keys: a silently changed threshold."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: r\n    action: promo\n    effect: block\n    reason: x\n"
        "    when: {feature: open_case_count, op: '>', value: 0, value: 5}\n"
    )
    with pytest.raises(GuardrailError, match="duplicate key 'value'") as error:
        load_rules(path)
    assert str(path) in str(error.value)


def test_a_rule_without_a_name_is_named_by_position() -> None:
    rule = {k: v for k, v in GOOD_RULE.items() if k != "name"}
    with pytest.raises(GuardrailError, match=r"<rules>: rule #2: missing keys \['name'\]"):
        parse_rules({"rules": [GOOD_RULE, rule]})


def test_top_level_shape_is_checked() -> None:
    with pytest.raises(GuardrailError, match="'rules' must be a list"):
        parse_rules({"rules": {"a": 1}}, "f.yaml")
    with pytest.raises(GuardrailError, match="unknown top-level keys"):
        parse_rules({"rules": [], "thresholds": {}}, "f.yaml")


# --- Reasons --------------------------------------------------------------------------------------


def test_reasons_render_the_fired_rules_with_their_values() -> None:
    values = {
        **CLEAN,
        "open_case_count": 1,
        "oldest_open_case_id": "C-77",
        "oldest_open_case_age_days": 2.4,
        "days_since_last_negative": 3.2,
        "promos_7d": 1,
    }
    blocked = evaluate(RULES, values)
    assert reasons(RULES, values, blocked) == [
        "no promo while a service case is open (case C-77, open 2 days)",
        "no promo for 14 days after a negative experience (delay 3 days ago)",
        "at most 1 promo per 7 days (1 in the last 7 days)",
        "no recognition within 14 days of a disruption nobody made good (delay 3 days ago)",
    ]
    only_recognition = {"recognition": blocked["recognition"]}
    assert reasons(RULES, values, only_recognition) == [
        "no recognition within 14 days of a disruption nobody made good (delay 3 days ago)"
    ]


def test_reasons_leave_out_facts_not_on_record() -> None:
    # An optional part ([...] in the file) naming a missing or unformattable value is left out.
    values = {"open_case_count": 1, "oldest_open_case_age_days": "two"}
    texts = reasons(RULES, values, {"promo": ["open_service_case"]})
    assert texts == ["no promo while a service case is open"]
    for text in reasons(RULES, {}, evaluate(RULES, {})):
        assert MISSING_TEXT not in text and "None" not in text and "False" not in text, text
    values = {"days_since_last_negative": 40.0, "compensated_since_last_negative": False}
    [text] = reasons(
        RULES, values, {"apology_credit": ["apology_needs_recent_uncompensated_negative"]}
    )
    assert text.endswith("(last one 40 days ago, compensated: no)")


def test_optional_reason_parts_are_validated_and_required_ones_keep_the_marker() -> None:
    rule = {"name": "r", "action": "promo", "effect": "block",
            "when": {"feature": "promos_7d", "op": ">", "value": 0}}  # fmt: skip
    for bad in ("a [b", "a ]b", "a [b [c]]", "a [{nope}]"):
        with pytest.raises(GuardrailError):
            parse_rules({"version": 1, "rules": [{**rule, "reason": bad}]})
    [compiled] = parse_rules({"version": 1, "rules": [
        {**rule, "reason": "{promos_7d:.0f} now[, {tenure_days:.0f} days]"}]}).rules  # fmt: skip
    assert compiled.render({}) == f"{MISSING_TEXT} now"
    assert compiled.render({"promos_7d": 2, "tenure_days": 9.0}) == "2 now, 9 days"
