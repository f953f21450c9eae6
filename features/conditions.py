"""Conditions over decision-time features: the language of the guardrails and of the rule
policy, compiled into scalar and vectorized three-valued (Kleene) checks.

Moved here from ``serving.guardrails`` so that training (which may not import serving) can
evaluate the rule policy's segments on logged decisions with the very evaluator the service
uses; ``serving.guardrails`` re-exports what it used to define. The language and its
fail-closed semantics are documented there.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import yaml

from features import schema

#: Values that are not customer features but come from the request context or the server's own
#: state: ``channel`` of the request; the contact history's counts (``serving.history``:
#: ``promos_7d``; ``contacts_7d``, marketing contacts (promo, recognition) of the last 7 days
#: on any channel, ``contacts_7d_channel`` on the decision's channel; ``recognitions_30d``;
#: ``apology_credits_30d``); ``apology_budget_left``, apology credits the daily pacer
#: (``serving.policy.DailyBudget.remaining``) would still grant now.
CONTEXT: Final[dict[str, schema.FeatureType]] = {
    "channel": "string",
    "promos_7d": "int",
    "contacts_7d": "int",
    "contacts_7d_channel": "int",
    "recognitions_30d": "int",
    "apology_credits_30d": "int",
    "apology_budget_left": "int",
}

#: Channels a decision can be made for (raw-data contract, ``actions.channel``).
CHANNELS: Final = ("web", "app", "email")

#: Every name a condition or a reason may reference, with its type.
VALUE_TYPES: Final[dict[str, schema.FeatureType]] = {**schema.STORED, **schema.DERIVED, **CONTEXT}

#: Comparison operators of a condition.
OPS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}

_EQUALITY_OPS: Final = ("==", "!=")

#: A three-valued truth: True, False or None (unknown).
Truth = bool | None
ScalarCheck = Callable[[Mapping[str, Any]], Truth]
#: Vectorized check: (definitely true, unknown) boolean arrays.
VectorCheck = Callable[["_Columns"], tuple[np.ndarray, np.ndarray]]


# --- Reading values as the feature's type ---------------------------------------------------------
# One scalar reader per type serves the request path; the vectorized readers below must agree with
# it element by element (anything the scalar reader rejects is unknown in the vector too).


def _read_number(value: Any) -> float | None:
    """A finite-or-infinite float, or None when missing or not a number."""
    if value is None or isinstance(value, str):
        return None  # float("3") would parse: a string is never a number here
    try:
        number = float(value)
    except (TypeError, ValueError):  # pd.NA, pd.NaT, timestamps, objects
        return None
    return None if number != number else number


def _read_bool(value: Any) -> bool | None:
    """A bool (also from 0/1 numbers), or None when missing or anything else."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    number = _read_number(value)
    if number == 0.0:
        return False
    if number == 1.0:
        return True
    return None


def _read_string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_SCALAR_READERS: Final[dict[str, Callable[[Any], Any]]] = {
    "int": _read_number,
    "float": _read_number,
    "bool": _read_bool,
    "string": _read_string,
}


def is_missing(value: Any) -> bool:
    """Whether a value is absent: None, NaN, ``pd.NA`` or ``pd.NaT``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


class _Columns:
    """A frame's columns read as feature types, each read once however many rules use it."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.n = len(frame)
        self._cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, known) of column ``name`` read as ``kind``; an absent column is all unknown."""
        key = (name, kind)
        if key not in self._cache:
            if name not in self.frame.columns:
                fill = np.nan if kind in ("int", "float") else None
                dtype = np.float64 if kind in ("int", "float") else object
                values = np.full(self.n, fill, dtype=dtype)
                self._cache[key] = (values, np.zeros(self.n, dtype=bool))
            else:
                self._cache[key] = _read_column(self.frame[name], kind)
        return self._cache[key]


def _read_column(column: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized ``_SCALAR_READERS[kind]``: (values, known)."""
    numeric = column.dtype != object and pd.api.types.is_numeric_dtype(column.dtype)
    if kind in ("int", "float"):
        if numeric:  # numpy/nullable ints, floats and bools: the fast path
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            read = [_read_number(v) for v in column.to_numpy(dtype=object)]
            values = np.array([np.nan if v is None else v for v in read], dtype=np.float64)
        return values, ~np.isnan(values)
    if kind == "bool":
        if numeric:
            number = column.to_numpy(dtype=np.float64, na_value=np.nan)
            return number == 1.0, (number == 0.0) | (number == 1.0)
        read = [_read_bool(v) for v in column.to_numpy(dtype=object)]
        known = np.array([v is not None for v in read], dtype=bool)
        return np.array([bool(v) for v in read], dtype=bool), known
    texts = [_read_string(v) for v in column.to_numpy(dtype=object)]
    return np.array(texts, dtype=object), np.array([v is not None for v in texts], dtype=bool)


# --- Conditions -----------------------------------------------------------------------------------


class _ConditionError(Exception):
    """A malformed condition, located by its path inside ``when``."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class _Compiled:
    scalar: ScalarCheck
    vector: VectorCheck
    names: frozenset[str]


def _unknown_name_message(name: Any, what: str = "feature") -> str:
    hint = difflib.get_close_matches(str(name), list(VALUE_TYPES), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return (
        f"unknown {what} {name!r}{suggestion}: expected a name of features.schema.STORED or "
        f"DERIVED or one of {list(CONTEXT)}"
    )


def _compile_condition(raw: Any, where: str) -> _Compiled:
    """Validate one condition and compile it into scalar and vector closures."""
    if not isinstance(raw, Mapping):
        raise _ConditionError(where, f"a condition must be a mapping, got {raw!r}")
    forms = [key for key in ("feature", "all", "any", "not", "missing") if key in raw]
    if len(forms) != 1:
        raise _ConditionError(
            where,
            "a condition needs exactly one of 'feature' (with 'op' and 'value'), 'all', 'any', "
            f"'not' or 'missing', got keys {sorted(map(str, raw))}",
        )
    form = forms[0]
    if form == "feature":
        return _compile_comparison(raw, where)
    extra = set(raw) - {form}
    if extra:
        raise _ConditionError(where, f"unexpected keys {sorted(map(str, extra))} beside {form!r}")
    if form == "missing":
        return _compile_missing(raw["missing"], where)
    if form == "not":
        return _compile_not(_compile_condition(raw["not"], f"{where}.not"))
    members = raw[form]
    if not isinstance(members, list) or not members:
        raise _ConditionError(where, f"{form!r} needs a non-empty list of conditions")
    compiled = [_compile_condition(m, f"{where}.{form}[{i}]") for i, m in enumerate(members)]
    return _compile_all(compiled) if form == "all" else _compile_any(compiled)


def _feature_kind(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in VALUE_TYPES:
        raise _ConditionError(where, _unknown_name_message(name))
    kind = VALUE_TYPES[name]
    if kind == "timestamp":
        # A stored timestamp would need a time of reference: the derived durations carry it.
        raise _ConditionError(
            where,
            f"{name!r} is a timestamp; compare its derived duration (features.schema.DERIVED, "
            "e.g. 'days_since_last_negative') instead",
        )
    return kind


def _compile_comparison(raw: Mapping[str, Any], where: str) -> _Compiled:
    extra = set(raw) - {"feature", "op", "value"}
    if extra:
        raise _ConditionError(where, f"unexpected keys {sorted(map(str, extra))} in a comparison")
    if "op" not in raw or "value" not in raw:
        raise _ConditionError(where, "a comparison needs 'feature', 'op' and 'value'")
    name, op, value = raw["feature"], raw["op"], raw["value"]
    kind = _feature_kind(name, where)
    if not isinstance(op, str) or op not in OPS:
        raise _ConditionError(
            where, f"unknown op {op!r} on {name!r}: expected one of {list(OPS)} (quote it in YAML)"
        )
    if kind in ("int", "float"):
        # bool is an int in Python, and YAML reads yes/no/on/off as bools: refuse it here.
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise _ConditionError(where, f"{name!r} is a number: value {value!r} is not one")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _ConditionError(where, f"{name!r} is a bool: value {value!r} is not true/false")
    elif not isinstance(value, str):
        raise _ConditionError(where, f"{name!r} is a string: value {value!r} is not one")
    elif name == "channel" and value not in CHANNELS:
        raise _ConditionError(where, f"unknown channel {value!r}: expected one of {CHANNELS}")
    if kind in ("bool", "string") and op not in _EQUALITY_OPS:
        raise _ConditionError(where, f"{name!r} is a {kind}: only == and != apply, not {op!r}")

    compare, read = OPS[op], _SCALAR_READERS[kind]

    def scalar(values: Mapping[str, Any]) -> Truth:
        got = read(values.get(name))
        return None if got is None else compare(got, value)

    def vector(columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        got, known = columns.get(name, kind)
        with np.errstate(invalid="ignore"):
            true = np.asarray(compare(got, value), dtype=bool) & known
        return true, ~known

    return _Compiled(scalar, vector, frozenset({name}))


def _compile_missing(name: Any, where: str) -> _Compiled:
    kind = _feature_kind(name, f"{where}.missing")
    read = _SCALAR_READERS[kind]

    def scalar(values: Mapping[str, Any]) -> Truth:
        return read(values.get(name)) is None

    def vector(columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        _, known = columns.get(name, kind)
        return ~known, np.zeros(columns.n, dtype=bool)

    return _Compiled(scalar, vector, frozenset({name}))


def _compile_not(inner: _Compiled) -> _Compiled:
    check = inner.scalar

    def scalar(values: Mapping[str, Any]) -> Truth:
        got = check(values)
        return None if got is None else not got

    def vector(columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        true, unknown = inner.vector(columns)
        return ~true & ~unknown, unknown

    return _Compiled(scalar, vector, inner.names)


def _compile_all(members: Sequence[_Compiled]) -> _Compiled:
    checks = tuple(m.scalar for m in members)

    def scalar(values: Mapping[str, Any]) -> Truth:
        unknown = False
        for check in checks:
            got = check(values)
            if got is None:
                unknown = True
            elif not got:
                return False  # one definite false settles it, whatever is unknown
        return None if unknown else True

    def vector(columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        true = np.ones(columns.n, dtype=bool)
        false = np.zeros(columns.n, dtype=bool)
        for member in members:
            t, u = member.vector(columns)
            true &= t
            false |= ~t & ~u
        return true, ~true & ~false

    return _Compiled(scalar, vector, frozenset().union(*(m.names for m in members)))


def _compile_any(members: Sequence[_Compiled]) -> _Compiled:
    checks = tuple(m.scalar for m in members)

    def scalar(values: Mapping[str, Any]) -> Truth:
        unknown = False
        for check in checks:
            got = check(values)
            if got is None:
                unknown = True
            elif got:
                return True  # one definite true settles it, whatever is unknown
        return None if unknown else False

    def vector(columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
        true = np.zeros(columns.n, dtype=bool)
        false = np.ones(columns.n, dtype=bool)
        for member in members:
            t, u = member.vector(columns)
            true |= t
            false &= ~t & ~u
        return true, ~true & ~false

    return _Compiled(scalar, vector, frozenset().union(*(m.names for m in members)))


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys (PyYAML keeps the last one silently,
    which would let a second ``value:`` quietly override a threshold)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: list[Any] = []
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.append(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
