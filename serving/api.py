"""The decision API's request and response models (``contracts/decision-api.md``, version 1).

Pydantic models, so that the OpenAPI page documents them and both request paths (``Gate``'s
fast path and the ``@bentoml.api`` methods, see ``serving.service``) validate with the same
definitions. ``parse`` turns a raw JSON body into a model or an ``ApiError`` carrying the
contract's error body ``{"error": ..., "detail": ...}`` with the offending field named. No web
framework here.

Input is strict and bounded, because what is accepted is what the decision and event logs
store: pydantic's strict mode (no ``"yes"`` for a bool, no ``"190"`` for an int), every string
and number within the limits below, no control characters, finite numbers only, no duplicate
keys, timestamps within ``EARLIEST_TS`` .. now + ``MAX_TS_AHEAD``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from features.contract import ACTIONS
from memory.fold import EVENT_TYPES

Action = Literal["promo", "apology_credit", "recognition", "none"]
Channel = Literal["web", "app", "email"]
EventType = Literal[
    "case_opened",
    "case_closed",
    "flight_disrupted",
    "booking",
    "unsubscribe",
    "flight_flown",
    "compensation_granted",
    "consent_changed",
]

#: Most requests in one ``/decide_batch`` call (contract).
MAX_BATCH: Final = 10_000
#: Longest id (``customer_id``, ``case_id``), in characters (contract: ``event_id`` <= 128).
MAX_ID_CHARS: Final = 128
#: Longest free-text value (``context.page``, ``topic``, any other string), in characters.
MAX_TEXT_CHARS: Final = 256
#: Longest key of an open object (``context``, extra ``/events`` fields), in characters.
MAX_KEY_CHARS: Final = 64
#: Most keys in ``context`` and in an ``/events`` body.
MAX_CONTEXT_KEYS: Final = 32
MAX_EVENT_KEYS: Final = 32
#: Most entries of ``candidates`` (each action once).
MAX_CANDIDATES: Final = len(ACTIONS)
#: Largest ``delay_minutes`` (a week: a longer "delay" is a cancellation or a typo).
MAX_DELAY_MINUTES: Final = 7 * 24 * 60
#: Largest magnitude of an integer kept as an integer in ``context`` or an extra event field.
MAX_ABS_INT: Final = 2**53
#: Event times before this are refused (no customer history is older).
EARLIEST_TS: Final = datetime(2000, 1, 1, tzinfo=UTC)
#: Event times more than this ahead of the server's clock are refused (clock skew allowance).
MAX_TS_AHEAD: Final = timedelta(days=1)

assert set(ACTIONS) == set(Action.__args__)  # type: ignore[attr-defined]
assert set(EVENT_TYPES) == set(EventType.__args__)  # type: ignore[attr-defined]

#: No C0 control character (NUL, newline, ...) nor DEL: they corrupt logs and joins downstream.
_PRINTABLE: Final = r"^[^\x00-\x1f\x7f]*$"
_PRINTABLE_NONEMPTY: Final = r"^[^\x00-\x1f\x7f]+$"

Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=_PRINTABLE_NONEMPTY),
]
CustomerId = Annotated[Id, Field(description="The customer's id.")]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS, pattern=_PRINTABLE)]
Key = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS, pattern=_PRINTABLE_NONEMPTY)
]
#: A value of an open object: a short string, a bool, a finite number, or null (no nested
#: objects or lists: their size would be unbounded). Integers stay integers within 2**53 (exact
#: in every JSON reader); a larger one is kept as a float, as most JSON readers would read it.
Scalar = (
    Text
    | bool
    | Annotated[int, Field(ge=-MAX_ABS_INT, le=MAX_ABS_INT)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | None
)
SCALAR_MESSAGE: Final = (
    f"must be a string of at most {MAX_TEXT_CHARS} printable characters, a boolean, "
    f"a finite number, or null"
)


PRINTABLE_MESSAGE: Final = "must not contain control characters (NUL, newline, tab, DEL, ...)"


class ApiError(Exception):
    """A request the API refuses: HTTP ``status`` and the contract's JSON body."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, "detail": detail}


#: JSON Schema of the keys of an open object (``Key``), for the OpenAPI page: BentoML's own
#: schema objects refuse ``propertyNames``, so ``serving.openapi`` adds it to its document.
KEY_SCHEMA: Final = {"minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": _PRINTABLE_NONEMPTY}


def _at_most(keys: int) -> Any:
    """A model validator refusing an object of more than ``keys`` keys.

    After the fields (a "before" validator would make pydantic validate the body as Python
    objects, where strict mode refuses ISO strings for datetimes); the body limit bounds the
    work done first.
    """

    def check(model: Any) -> Any:
        if len(model.model_fields_set) > keys:
            raise ValueError(f"at most {keys} keys")
        return model

    return model_validator(mode="after")(check)


class ErrorBody(BaseModel):
    """Every refusal's JSON body (the contract's ``{"error": ..., "detail": ...}``)."""

    error: str = Field(description="What is wrong, in a sentence.")
    detail: dict[str, Any] | str | None = Field(
        description='Details; for a malformed request an object whose "field" names the '
        'offending field ("context.page", "requests.3.customer_id", "body", "Content-Type").'
    )


class Context(BaseModel):
    """Request context. ``channel`` is checked; other fields are kept and logged as given,
    within the limits (``MAX_CONTEXT_KEYS`` keys, scalar values)."""

    model_config = ConfigDict(
        extra="allow", strict=True, json_schema_extra={"maxProperties": MAX_CONTEXT_KEYS}
    )
    __pydantic_extra__: dict[Key, Scalar] = Field(init=False)

    channel: Channel = "web"
    page: Text | None = None
    origin: Text | None = None
    destination: Text | None = None
    departure_date: Text | None = None

    _bounded = _at_most(MAX_CONTEXT_KEYS)


class DecideRequest(BaseModel):
    """``POST /decide``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    customer_id: CustomerId
    context: Context | None = None
    candidates: list[Action] | None = Field(
        default=None,
        max_length=MAX_CANDIDATES,
        description="Actions the caller may show (default all; none always added).",
    )
    explain: bool = Field(default=False, description="Add plain-language reasons.")


class Ranked(BaseModel):
    """One candidate of a decision."""

    action: Action
    eligible: bool
    uplift: float | None = Field(description="Change in conversion probability vs none.")
    expected_value: float | None = Field(
        description="Incremental net value, currency units: the served policy's value."
    )
    blocked_by: list[str] = Field(
        description="Guardrail rules that made it ineligible; also `holdout` (the control "
        "group), `not_confident` (its lower bound is not positive) or `rule_policy` (the "
        "customer's rule segment gives another action)."
    )
    value_lower: float | None = Field(
        default=None,
        description="One-sided 95% lower bound of expected_value where the served policy has "
        "one (a confident model, an honest policy tree), else null.",
    )


class DecideResponse(BaseModel):
    """``/decide``'s answer."""

    decision_id: str
    customer_id: str
    action: Action
    ranking: list[Ranked]
    reasons: list[str]
    model_version: str | None
    degraded: bool
    known_customer: bool = Field(
        default=True,
        description="False for a customer with no history on record (a new visitor): decided "
        "on defaults, and blocked_by names only the rules that apply to one.",
    )
    holdout: bool = Field(
        description="The customer is in the global control group: no marketing action "
        "(`policy = holdout` in the decision log; `nba impact` measures against them)."
    )


class DecideBatchRequest(BaseModel):
    """``POST /decide_batch``: up to ``MAX_BATCH`` decide requests."""

    model_config = ConfigDict(extra="forbid", strict=True)

    requests: list[DecideRequest] = Field(max_length=MAX_BATCH)


class DecideBatchResponse(BaseModel):
    """Decisions in request order."""

    decisions: list[DecideResponse]


#: The fields each event type needs (422 naming the field when one is missing).
REQUIRED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "case_opened": ("case_id",),
    "case_closed": ("case_id",),
    "flight_flown": ("miles_earned",),
    "consent_changed": ("marketing_opt_in",),
}
FlightNumber = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9]{2,3}[0-9]{1,5}[A-Z]?$", max_length=10),
    Field(description="A flight number such as AA45."),
]
Airport = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class Event(BaseModel):
    """``POST /events``: a fact about a customer the next decision must see. Type-specific
    fields: ``case_opened``: ``case_id`` (+ ``topic``, ``sentiment``); ``case_closed``:
    ``case_id`` (+ ``compensated``); ``flight_disrupted``: ``delay_minutes`` and/or
    ``cancelled``; ``flight_flown``: ``miles_earned`` (+ ``flight_number``, ``booking_id``,
    ``origin``, ``destination``); ``compensation_granted``: optional ``amount``, ``currency``,
    ``case_id``; ``consent_changed``: ``marketing_opt_in``. ``event_id`` makes a retry
    harmless. Other fields are kept in the ledger within the limits (``MAX_EVENT_KEYS`` keys,
    scalars)."""

    model_config = ConfigDict(
        extra="allow", strict=True, json_schema_extra={"maxProperties": MAX_EVENT_KEYS}
    )
    __pydantic_extra__: dict[Key, Scalar] = Field(init=False)

    customer_id: CustomerId
    type: EventType
    ts: AwareDatetime = Field(
        description="When it happened, ISO 8601 with a UTC offset; from 2000-01-01 to one day "
        "ahead of the server's clock."
    )
    event_id: Id | None = Field(
        default=None,
        description="Idempotency key: an event whose id was already applied is answered "
        '"duplicate": true and changes nothing.',
    )
    case_id: Id | None = None
    topic: Text | None = None
    sentiment: float | None = Field(default=None, ge=-1, le=1, allow_inf_nan=False)
    compensated: bool | None = None
    delay_minutes: int | None = Field(default=None, ge=0, le=MAX_DELAY_MINUTES)
    cancelled: bool | None = None
    miles_earned: int | None = Field(default=None, ge=0, le=10_000_000)
    flight_number: FlightNumber | None = None
    booking_id: Id | None = None
    origin: Airport | None = None
    destination: Airport | None = None
    amount: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    marketing_opt_in: bool | None = None

    _bounded = _at_most(MAX_EVENT_KEYS)

    @field_validator("ts")
    @classmethod
    def _plausible(cls, value: datetime) -> datetime:
        # Far-off times are typos or attacks; they would also overflow the log's timestamps.
        if value < EARLIEST_TS:
            raise ValueError(f"ts must not be before {EARLIEST_TS.date().isoformat()}")
        if value > datetime.now(UTC) + MAX_TS_AHEAD:
            raise ValueError("ts must not be more than one day ahead of the server's clock")
        return value

    @model_validator(mode="after")
    def _type_fields(self) -> Event:
        for name in REQUIRED_FIELDS.get(self.type, ()):
            if getattr(self, name) is None:
                # ``parse`` names the field from the message's first word.
                raise ValueError(f"{name} is required for a {self.type} event")
        return self


class EventAck(BaseModel):
    """``/events``' answer once the event is stored durably and the online store holds it."""

    event_id: str
    customer_id: str
    type: EventType
    applied: bool = Field(description="False when the event changed nothing (see detail).")
    duplicate: bool = Field(default=False, description="The event_id was already applied.")
    detail: str | None = Field(default=None, description="Why the event changed nothing.")


M = TypeVar("M", bound=BaseModel)


class _Refused(Exception):
    """A syntactically valid body the API still refuses (duplicate key, NaN or Infinity)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Refused
    return found


def _finite(literal: str) -> Any:
    raise _Refused


class _Flagged(dict[str, Any]):
    """An object of the body with a duplicate key (``_locate``'s second reading)."""

    duplicate: str = ""


class _NonFinite:
    """A NaN or Infinity literal of the body (``_locate``'s second reading)."""


def _flag(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = _Flagged(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                found.duplicate = key
                break
            seen.add(key)
    return found


def _locate(value: Any, path: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], str] | None:
    """The path of the first duplicate key or non-finite number in a body read by ``_flag``."""
    if isinstance(value, _NonFinite):
        return path, "must be a finite number (NaN and Infinity are not JSON)"
    if isinstance(value, _Flagged) and value.duplicate:
        return (*path, value.duplicate), "duplicate key"
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()  # fmt: skip
    for key, item in items:
        found = _locate(item, (*path, key))
        if found is not None:
            return found
    return None


#: The two readings of a body (one decoder each: ``json.loads`` with hooks would build a new
#: decoder per call, ≈ 10 µs).
_REFUSING: Final = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_finite)
_FLAGGING: Final = json.JSONDecoder(object_pairs_hook=_flag, parse_constant=lambda _: _NonFinite())


def _read(body: bytes, refuse: bool) -> Any:
    """The body as Python objects; with ``refuse``, ``_Refused`` at a duplicate key or a NaN.

    Raises ``ValueError`` (or ``RecursionError``) when the body is not UTF-8 JSON.
    """
    return (_REFUSING if refuse else _FLAGGING).decode(body.decode("utf-8"))


def _part(part: Any) -> str:
    # A refused key can be a megabyte long: never echo more than a key's limit of it.
    text = str(part)
    return text if len(text) <= MAX_KEY_CHARS else text[:MAX_KEY_CHARS] + "…"


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(_part(part) for part in loc) or "body"


def _in_body(loc: tuple[Any, ...], body: Any, missing: bool) -> tuple[tuple[Any, ...], bool]:
    """``loc`` cut to the parts that name a place in the body, and whether it was cut.

    Pydantic appends the member of a union to the path of a value no member accepts
    (``context.x.constrained-str``): the field is ``context.x``. A missing field keeps its name.
    """
    node = body
    for i, part in enumerate(loc):
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if present:
            node = node[part]
        elif missing and i == len(loc) - 1:
            return loc, False
        else:
            return loc[:i], True
    return loc, False


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; ``ApiError`` (400/422) names the first offending field."""
    if not body:
        raise ApiError(400, "empty body: a JSON object is required", {"field": "body"})
    try:
        # The standard library's reader sees what pydantic's does not: duplicate keys (the
        # last one would win silently) and NaN/Infinity literals (pydantic accepts them where
        # a value is untyped). ≈ 5 µs for a /decide body, ≈ 30 ms for 10,000 batch requests.
        _read(body, refuse=True)
    except _Refused:
        found = _locate(_read(body, refuse=False))
        if found is not None:
            field = _field(found[0])
            raise ApiError(422, f"invalid field {field!r}: {found[1]}",
                           {"field": field, "message": found[1]}) from None  # fmt: skip
    except (ValueError, RecursionError):
        pass  # not JSON: pydantic's reader says why below
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_context=False, include_input=False)
        first = problems[0]
        if first["type"] == "json_invalid":
            raise ApiError(
                400, "body is not valid JSON", {"field": "body", "message": first["msg"]}
            ) from None
        try:
            tree = _read(body, refuse=False)
        except (ValueError, RecursionError):
            tree = None
        errors = []
        for problem in problems[:10]:
            required = re.match(r"^Value error, (\w+) is required for ", problem["msg"])
            if not problem["loc"] and required:  # a type-specific field (Event)
                problem = {**problem, "loc": (required.group(1),), "type": "missing"}
            loc, cut = _in_body(problem["loc"], tree, problem["type"] == "missing")
            message = problem["msg"].removeprefix("Value error, ")  # our validators' own words
            if cut:
                message = SCALAR_MESSAGE
            elif problem["type"] == "string_pattern_mismatch":
                message = PRINTABLE_MESSAGE
            errors.append({"field": _field(loc), "message": message})
        field, message = errors[0]["field"], errors[0]["message"]
        raise ApiError(
            422,
            f"invalid field {field!r}: {message}",
            {"field": field, "message": message, "errors": errors},
        ) from None
