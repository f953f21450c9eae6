"""The decision API's request and response models (``contracts/decision-api.md``, version 1).

Pydantic models, so that BentoML's OpenAPI page documents them and the lean request path
(``serving.service``) validates with the same definitions. ``parse`` turns a raw JSON body into
a model or an ``ApiError`` carrying the contract's error body ``{"error": ..., "detail": ...}``
with the offending field named. No web framework here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from features.contract import ACTIONS
from features.events import EVENT_TYPES

Action = Literal["promo", "apology_credit", "recognition", "none"]
Channel = Literal["web", "app", "email"]
EventType = Literal["case_opened", "case_closed", "flight_disrupted", "booking", "unsubscribe"]

#: Most requests in one ``/decide_batch`` call (contract).
MAX_BATCH: Final = 10_000

assert set(ACTIONS) == set(Action.__args__)  # type: ignore[attr-defined]
assert set(EVENT_TYPES) == set(EventType.__args__)  # type: ignore[attr-defined]


def _must_be_string(value: Any) -> Any:
    # The contract: a non-string customer_id is malformed; say so rather than coerce it.
    if not isinstance(value, str):
        raise ValueError("customer_id must be a string")
    return value


CustomerId = Annotated[
    str,
    BeforeValidator(_must_be_string),
    Field(min_length=1, max_length=128, description="The customer's id."),
]


class ApiError(Exception):
    """A request the API refuses: HTTP ``status`` and the contract's JSON body."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, "detail": detail}


class Context(BaseModel):
    """Request context. ``channel`` is checked; other fields are kept and logged as given."""

    model_config = ConfigDict(extra="allow")

    channel: Channel = "web"
    page: str | None = None
    origin: str | None = None
    destination: str | None = None
    departure_date: str | None = None


class DecideRequest(BaseModel):
    """``POST /decide``."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    context: Context | None = None
    candidates: list[Action] | None = Field(
        default=None, description="Actions the caller may show (default all; none always added)."
    )
    explain: bool = Field(default=False, description="Add plain-language reasons.")


class Ranked(BaseModel):
    """One candidate of a decision."""

    action: Action
    eligible: bool
    uplift: float | None = Field(description="Change in conversion probability vs none.")
    expected_value: float | None = Field(description="Incremental net value, currency units.")
    blocked_by: list[str] = Field(description="Guardrail rules that made it ineligible.")


class DecideResponse(BaseModel):
    """``/decide``'s answer."""

    decision_id: str
    customer_id: str
    action: Action
    ranking: list[Ranked]
    reasons: list[str]
    model_version: str | None
    degraded: bool


class DecideBatchRequest(BaseModel):
    """``POST /decide_batch``: up to ``MAX_BATCH`` decide requests."""

    model_config = ConfigDict(extra="forbid")

    requests: list[DecideRequest] = Field(max_length=MAX_BATCH)


class DecideBatchResponse(BaseModel):
    """Decisions in request order."""

    decisions: list[DecideResponse]


class Event(BaseModel):
    """``POST /events``: a change the next decision must see. Type-specific fields:
    ``case_opened``: ``case_id`` (+ ``topic``, ``sentiment``); ``case_closed``: ``case_id``
    (+ ``compensated``); ``flight_disrupted``: ``delay_minutes`` and/or ``cancelled``."""

    model_config = ConfigDict(extra="allow")

    customer_id: CustomerId
    type: EventType
    ts: datetime = Field(description="When it happened, ISO 8601 with a UTC offset.")
    case_id: str | None = None
    topic: str | None = None
    sentiment: float | None = Field(default=None, ge=-1, le=1)
    compensated: bool | None = None
    delay_minutes: int | None = Field(default=None, ge=0)
    cancelled: bool | None = None

    @field_validator("ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("ts needs a UTC offset or Z")
        return value


class EventAck(BaseModel):
    """``/events``' answer once the online store holds the change."""

    event_id: str
    customer_id: str
    type: EventType
    applied: bool


M = TypeVar("M", bound=BaseModel)


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; ``ApiError`` (400/422) names the first offending field."""
    if not body:
        raise ApiError(400, "empty body: a JSON object is required", {"field": "body"})
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_context=False, include_input=False)
        first = problems[0]
        if first["type"] == "json_invalid":
            raise ApiError(
                400, "body is not valid JSON", {"field": "body", "message": first["msg"]}
            ) from None
        field = _field(first["loc"])
        raise ApiError(
            422,
            f"invalid field {field!r}: {first['msg']}",
            {"field": field, "errors": [{"field": _field(p["loc"]), "message": p["msg"]}
                                        for p in problems[:10]]},
        ) from None  # fmt: skip
