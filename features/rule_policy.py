"""The rule policy as data: named segments and their action, loaded from YAML, validated, and
evaluated by pure functions over decision-time features.

A rule file (``serving/rules.yaml`` by default) holds::

    version: 1
    default: none                      # the action of a customer no rule matches
    rules:                             # tried in order: the first match gives the action
      - name: recent_milestone         # lower-case words joined by _
        action: recognition            # promo | apology_credit | recognition | none
        when: {feature: days_since_last_milestone, op: "<=", value: 14}

``when`` is a condition of the guardrails' language (``features.conditions``, documented in
``serving/guardrails.py``), in the same three-valued logic: a rule matches only when its
condition is definitely true, so a missing value never puts a customer in a segment. It lives
in ``features`` (not ``serving``) because training estimates each rule's value from the logged
decisions (``training.priors``) and may not import serving. ``load_rule_policy`` raises
``RulePolicyError`` naming the file and the rule for anything it cannot use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import yaml

from features.conditions import _Columns, _compile_condition, _Compiled, _ConditionError
from features.conditions import _StrictLoader as StrictLoader
from features.contract import ACTIONS

#: The rule policy shipped with the service (beside its guardrails).
DEFAULT_RULE_POLICY_PATH: Final = Path(__file__).resolve().parents[1] / "serving" / "rules.yaml"
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS: Final = ("name", "action", "when")


class RulePolicyError(ValueError):
    """A rule policy file that cannot be used; the message names the file and the rule."""


@dataclass(frozen=True)
class SegmentRule:
    """One named segment and the action it gets."""

    name: str
    action: str
    condition: _Compiled


@dataclass(frozen=True)
class RulePolicy:
    """Validated rules in order, and the default action."""

    rules: tuple[SegmentRule, ...]
    default: str
    source: str
    #: The parsed file, kept so that a pickled policy (inside a registered model) is rebuilt by
    #: compiling it again: compiled conditions are closures, which pickle cannot store.
    spec: Any = None

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        return parse_rule_policy, (self.spec, self.source)

    def segments(self, features: pd.DataFrame) -> np.ndarray:
        """Index of the first matching rule per row, -1 where none matches."""
        columns = _Columns(features.reset_index(drop=True))
        out = np.full(len(features), -1, dtype=np.int64)
        for i, rule in enumerate(self.rules):
            true, _unknown = rule.condition.vector(columns)
            out[(out == -1) & true] = i
        return out

    def choose(self, features: pd.DataFrame) -> np.ndarray:
        """The rule policy's action per row (``default`` where no rule matches)."""
        actions = np.array([r.action for r in self.rules] + [self.default], dtype=object)
        return actions[self.segments(features)]  # -1 picks the default, the last entry

    def segment_one(self, values: Mapping[str, Any]) -> int:
        """Index of the first rule matching one customer's feature values, -1 if none does."""
        for i, rule in enumerate(self.rules):
            if rule.condition.scalar(values) is True:
                return i
        return -1

    def choose_one(self, values: Mapping[str, Any]) -> tuple[str, str | None]:
        """(action, matching rule's name or None) for one customer's feature values."""
        for rule in self.rules:
            if rule.condition.scalar(values) is True:
                return rule.action, rule.name
        return self.default, None


def parse_rule_policy(data: Any, source: str = "<rule policy>") -> RulePolicy:
    """Validate a parsed rule file (see the module docstring) and compile its conditions."""
    if not isinstance(data, Mapping):
        raise RulePolicyError(f"{source}: expected a mapping with 'version', 'default', 'rules'")
    unknown = set(data) - {"version", "default", "rules"}
    if unknown:
        raise RulePolicyError(f"{source}: unknown top-level keys {sorted(map(str, unknown))}")
    if data.get("version") != 1:
        raise RulePolicyError(f"{source}: 'version' must be 1, got {data.get('version')!r}")
    default = data.get("default", "none")
    if default not in ACTIONS:
        raise RulePolicyError(f"{source}: default {default!r} is not one of {list(ACTIONS)}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        raise RulePolicyError(f"{source}: 'rules' must be a list of rules")
    rules, seen = [], set()
    for index, raw in enumerate(raw_rules):
        where = f"{source}: rule #{index + 1}"
        if not isinstance(raw, Mapping):
            raise RulePolicyError(f"{where}: a rule must be a mapping with {list(_KEYS)}")
        name = raw.get("name")
        if isinstance(name, str):
            where = f"{source}: rule {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise RulePolicyError(f"{where}: name {name!r} must be lower-case words joined by _")
        if name in seen:
            raise RulePolicyError(f"{where}: duplicate rule name")
        seen.add(name)
        extra = set(raw) - set(_KEYS)
        if extra:
            raise RulePolicyError(f"{where}: unknown keys {sorted(map(str, extra))}")
        action = raw.get("action")
        if action not in ACTIONS:
            raise RulePolicyError(f"{where}: action {action!r} is not one of {list(ACTIONS)}")
        if "when" not in raw:
            raise RulePolicyError(f"{where}: needs a 'when' condition")
        try:
            condition = _compile_condition(raw["when"], "when")
        except _ConditionError as exc:
            raise RulePolicyError(f"{where}: {exc}") from None
        rules.append(SegmentRule(name, str(action), condition))
    return RulePolicy(tuple(rules), str(default), source, data)


def load_rule_policy(path: str | Path = DEFAULT_RULE_POLICY_PATH) -> RulePolicy:
    """Read, validate and compile a rule policy file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
    except OSError as exc:
        raise RulePolicyError(f"{path}: cannot read the rule policy: {exc}") from None
    except yaml.YAMLError as exc:
        raise RulePolicyError(f"{path}: not valid YAML: {exc}") from None
    return parse_rule_policy(data, str(path))
