"""Guardrails as data: named eligibility rules loaded from YAML, compiled, evaluated per request.

A rule file (``serving/guardrails.yaml`` by default) holds ``rules:``, a list of::

    - name: open_service_case            # appears in a ranking's ``blocked_by``
      action: promo                      # promo | apology_credit | recognition (never ``none``)
      effect: block                      # block: ineligible when ``when`` holds
                                         # require: ineligible unless ``when`` holds
      when: {feature: open_case_count, op: ">", value: 0}
      reason: "case {oldest_open_case_id} open since {oldest_open_case_age_days:.0f} days"

Conditions are ``{feature: NAME, op: OP, value: V}`` (OP one of ``< <= > >= == !=``), the
combinators ``{all: [...]}``, ``{any: [...]}``, ``{not: ...}``, and ``{missing: NAME}`` (true
when NAME has no usable value). NAME is a feature of ``features.schema.STORED`` or ``DERIVED``
or a server-side value of ``CONTEXT``. Thresholds live in the file: a request never supplies a
rule or a threshold, only (through the service) the ``channel``.

**Fail closed.** A condition is evaluated in three-valued (Kleene) logic: a comparison whose
value is missing (None, NaN, NA, or not of the feature's type) is *unknown*, ``all``/``any``
are unknown only when the known members do not settle them, and ``not`` keeps unknown unknown.
A ``block`` rule fires unless its condition is definitely false; a ``require`` rule is satisfied
only when its condition is definitely true. Because Kleene logic only settles a result that no
value of the missing inputs could change, a missing value never makes an action eligible.
``{missing: NAME}`` is the one explicit way out, for a value whose absence has a meaning (no
negative experience on record leaves ``days_since_last_negative`` empty); a rule that uses it
says so in the file.

The rules are validated at load (``load_rules``): unknown feature, action or op, a rule on
``none``, duplicate names, malformed conditions or reason templates raise ``GuardrailError``
naming the file and the rule. Each condition is compiled into two closures: a scalar one for a
single request (a few microseconds for the shipped rules) and a vectorized one over a frame for
offline scoring; ``serving.policy.evaluate_batch`` checks they agree.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import yaml

from features.conditions import (
    VALUE_TYPES,
    _Columns,
    _compile_condition,
    _ConditionError,
    _StrictLoader,
    _unknown_name_message,
    is_missing,
)
from features.contract import ACTIONS

#: The rules shipped with the service.
DEFAULT_RULES_PATH: Final = Path(__file__).with_name("guardrails.yaml")

#: The safe action: always eligible, no rule may target it.
NO_ACTION: Final = "none"


#: What a reason template shows for a value that is missing or cannot be formatted.
MISSING_TEXT: Final = "?"

_RULE_KEYS: Final = ("name", "action", "effect", "when", "reason")
_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_TARGETS: Final = tuple(a for a in ACTIONS if a != NO_ACTION)

Effect = Literal["block", "require"]


class GuardrailError(ValueError):
    """A rule file that cannot be loaded; the message names the file and the rule."""


# --- Reason templates -----------------------------------------------------------------------------

#: A parsed run of template text: (literal text, value name or None, format spec).
_Piece = tuple[str, str | None, str]
#: A template segment: (optional, its pieces); see ``_parse_template``.
_Segment = tuple[bool, tuple[_Piece, ...]]
_SAMPLES: Final[dict[str, Any]] = {
    "int": 1,
    "float": 1.5,
    "bool": True,
    "string": "x",
    "timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
}


def _parse_fields(template: str) -> tuple[_Piece, ...]:
    """Validate a run of template text ("{name:spec}" fields of known names) and split it."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"reason {template!r} is not a valid template: {exc}") from None
    pieces: list[_Piece] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None, ""))
            continue
        if name not in VALUE_TYPES:
            raise ValueError(f"reason {template!r}: " + _unknown_name_message(name, "value"))
        if conversion is not None or "{" in (spec or ""):
            raise ValueError(f"reason {template!r}: only '{{name}}' or '{{name:spec}}' fields")
        try:  # a spec that cannot format the value's type would only ever render "?"
            format(_SAMPLES[VALUE_TYPES[name]], spec or "")
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"reason {template!r}: format {spec!r} does not apply to {name!r} "
                f"({VALUE_TYPES[name]}): {exc}"
            ) from None
        pieces.append((literal, name, spec or ""))
    return tuple(pieces)


def _parse_template(template: Any) -> tuple[_Segment, ...]:
    """Validate a reason template and split it into segments.

    ``[...]`` marks an optional segment: it is shown only when every value it names is known,
    so that a reason never prints a placeholder for a fact that is not on record ("recognition
    only within 30 days of a milestone[ (last {days_since_last_milestone:.0f} days ago)]").
    Outside brackets a missing value still shows as ``MISSING_TEXT``. Brackets do not nest.
    """
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"'reason' must be a non-empty text, got {template!r}")
    segments: list[_Segment] = []
    rest = template
    while rest:
        opening, closing = rest.find("["), rest.find("]")
        if opening < 0:
            if closing >= 0:
                raise ValueError(f"reason {template!r}: ']' without '['")
            segments.append((False, _parse_fields(rest)))
            break
        if closing < opening or "[" in rest[opening + 1 : closing]:
            raise ValueError(f"reason {template!r}: optional parts are '[...]', not nested")
        if opening:
            segments.append((False, _parse_fields(rest[:opening])))
        segments.append((True, _parse_fields(rest[opening + 1 : closing])))
        rest = rest[closing + 1 :]
    return tuple(segments)


def _format(value: Any, spec: str) -> str | None:
    """``value`` formatted with ``spec``; None when it is missing or of the wrong type."""
    if is_missing(value):
        return None
    if isinstance(value, bool | np.bool_) and not spec:
        return "yes" if value else "no"  # not Python's True/False in a customer's reason
    try:
        return format(value, spec)
    except (TypeError, ValueError):  # a value of the wrong type must not crash a request
        return None


def _render(segments: Sequence[_Segment], values: Mapping[str, Any]) -> str:
    out: list[str] = []
    for optional, pieces in segments:
        texts = [None if name is None else _format(values.get(name), spec)
                 for _, name, spec in pieces]  # fmt: skip
        unknown = [name for (_, name, _), text in zip(pieces, texts, strict=True)
                   if name is not None and text is None]  # fmt: skip
        if optional and unknown:
            continue  # a fact not on record: say nothing rather than "?"
        for (literal, name, _), text in zip(pieces, texts, strict=True):
            out.append(literal)
            if name is not None:
                out.append(MISSING_TEXT if text is None else text)
    return "".join(out)


# --- Rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One validated, compiled guardrail rule."""

    name: str
    action: str
    effect: Effect
    #: The condition as written in the file (for display and audit).
    when: Mapping[str, Any]
    reason: str
    #: Every value name the condition reads.
    reads: frozenset[str]
    _fires: Callable[[Mapping[str, Any]], bool] = field(repr=False, compare=False)
    _fires_vector: Callable[[_Columns], np.ndarray] = field(repr=False, compare=False)
    _pieces: tuple[_Segment, ...] = field(repr=False, compare=False)

    def fires(self, values: Mapping[str, Any]) -> bool:
        """Whether this rule makes its action ineligible for ``values`` (fail closed)."""
        return self._fires(values)

    def render(self, values: Mapping[str, Any]) -> str:
        """The reason text for ``values``: an optional part naming a missing value is left out,
        elsewhere a missing value shows as ``MISSING_TEXT``."""
        return _render(self._pieces, values)


@dataclass(frozen=True)
class RuleSet:
    """The validated rules of one file, in file order. Immutable: share it across threads."""

    rules: tuple[Rule, ...]
    source: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)

    @property
    def reads(self) -> frozenset[str]:
        """Every value name some condition reads (what a caller must provide)."""
        return frozenset().union(*(rule.reads for rule in self.rules))

    def __getitem__(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def _make_rule(raw: Any, index: int, source: str) -> Rule:
    label = f"rule #{index + 1}"
    if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
        label = f"rule {raw['name']!r}"

    def fail(message: str) -> GuardrailError:
        return GuardrailError(f"{source}: {label}: {message}")

    if not isinstance(raw, Mapping):
        raise fail(f"a rule must be a mapping, got {raw!r}")
    unknown = set(raw) - set(_RULE_KEYS)
    if unknown:
        raise fail(f"unknown keys {sorted(map(str, unknown))}: expected {list(_RULE_KEYS)}")
    missing = [key for key in _RULE_KEYS if key not in raw]
    if missing:
        raise fail(f"missing keys {missing}")
    name, action, effect = raw["name"], raw["action"], raw["effect"]
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise fail(f"name {name!r} must be snake_case (it is reported in 'blocked_by')")
    if action == NO_ACTION:
        raise fail(f"action {NO_ACTION!r} can never be blocked: it is the safe fallback")
    if action not in _TARGETS:
        raise fail(f"unknown action {action!r}: expected one of {list(_TARGETS)}")
    if effect not in ("block", "require"):
        raise fail(f"unknown effect {effect!r}: expected 'block' or 'require'")
    try:
        condition = _compile_condition(raw["when"], "when")
        pieces = _parse_template(raw["reason"])
    except (_ConditionError, ValueError) as exc:
        raise fail(str(exc)) from None

    check, vector = condition.scalar, condition.vector
    if effect == "block":
        # Fires unless definitely false: unknown blocks.
        def fires(values: Mapping[str, Any]) -> bool:
            return check(values) is not False

        def fires_vector(columns: _Columns) -> np.ndarray:
            true, unknown = vector(columns)
            return true | unknown

    else:
        # Satisfied only when definitely true: unknown blocks.
        def fires(values: Mapping[str, Any]) -> bool:
            return check(values) is not True

        def fires_vector(columns: _Columns) -> np.ndarray:
            return ~vector(columns)[0]

    return Rule(
        name=name,
        action=action,
        effect=effect,
        when=raw["when"],
        reason=raw["reason"],
        reads=condition.names,
        _fires=fires,
        _fires_vector=fires_vector,
        _pieces=pieces,
    )


def parse_rules(data: Any, source: str = "<rules>") -> RuleSet:
    """Validate and compile rules already read from YAML (``{"rules": [...]}``)."""
    if not isinstance(data, Mapping):
        raise GuardrailError(f"{source}: expected a mapping with a 'rules' list")
    unknown = set(data) - {"version", "rules"}
    if unknown:
        raise GuardrailError(f"{source}: unknown top-level keys {sorted(map(str, unknown))}")
    if data.get("version", 1) != 1:
        raise GuardrailError(f"{source}: unsupported version {data['version']!r} (expected 1)")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        raise GuardrailError(f"{source}: 'rules' must be a list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        rule = _make_rule(raw, index, source)
        if rule.name in seen:
            raise GuardrailError(f"{source}: rule {rule.name!r}: duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    return RuleSet(tuple(rules), source)


def load_rules(path: str | Path = DEFAULT_RULES_PATH) -> RuleSet:
    """Read, validate and compile a rule file; ``GuardrailError`` names the file and the rule."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise GuardrailError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(data, str(path))


# --- Evaluation -----------------------------------------------------------------------------------


def evaluate(rules: RuleSet, values: Mapping[str, Any]) -> dict[str, list[str]]:
    """The rules that make each action ineligible for one customer, in file order.

    ``values`` maps feature and context names to values (extra keys are ignored, absent ones are
    missing). Returns every action of ``ACTIONS`` (``none`` always with an empty list).
    """
    blocked: dict[str, list[str]] = {action: [] for action in ACTIONS}
    for rule in rules.rules:
        if rule._fires(values):
            blocked[rule.action].append(rule.name)
    return blocked


def evaluate_frame(rules: RuleSet, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Vectorized ``evaluate``: rule name -> boolean array, True where the rule fires.

    Columns are read like the scalar path reads a value (a column absent from ``frame`` is
    missing everywhere, so it fails closed), and agree with ``evaluate`` row by row.
    """
    columns = _Columns(frame)
    return {rule.name: rule._fires_vector(columns) for rule in rules.rules}


def reasons(
    rules: RuleSet, values: Mapping[str, Any], blocked: Mapping[str, Sequence[str]]
) -> list[str]:
    """The reason texts of the rules named in ``blocked`` (``evaluate``'s result), in file order.

    Identical texts are given once. Pass only the candidates' entries of ``blocked`` to explain
    just those actions.
    """
    fired = {(action, name) for action, names in blocked.items() for name in names}
    out: list[str] = []
    for rule in rules.rules:
        if (rule.action, rule.name) in fired:
            text = rule.render(values)
            if text not in out:
                out.append(text)
    return out
