"""The outbox routes and flight-level events (contract v1.1), beside the decision routes.

* ``POST /events/flight``: one disruption of one flight for all its passengers. The passengers
  are the memory's manifest (``memory.ledger.Memory.passengers``) for the flight number on the
  UTC date of ``scheduled_at``. Each gets a ``flight_disrupted`` event whose id is derived from
  the flight event's id and the customer's (a retried flight event is a duplicate for every
  passenger), all appended in ONE ledger transaction and pushed to the online store in ONE
  push; the ``disruption`` trigger then fires per passenger (``serving.triggered``).
* ``GET /outbox?after=<cursor>&limit=<n>``: the outbox, oldest first; ``next`` is the cursor
  of the next page (the same cursor when there is nothing new: poll with it).
* ``GET /outbox/pending``: firings not decided yet, the apology budget's queue first in the
  order it will be served (expected value), then delayed triggers by due time.

``open_triggered`` builds a worker's ``Triggered`` (triggers, outbox, sinks) and starts its
scheduler thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs

import pandas as pd
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from memory.outbox import MAX_PAGE, Outbox
from serving.api import EARLIEST_TS, MAX_DELAY_MINUTES, MAX_TS_AHEAD, ApiError, FlightNumber, Id
from serving.triggered import Sink, Triggered
from serving.triggers import Trigger

if TYPE_CHECKING:
    from serving.runtime import Runtime

#: Items of a ``GET /outbox`` page when ``limit`` is not given.
DEFAULT_LIMIT: Final = 100


class FlightEvent(BaseModel):
    """``POST /events/flight``: a disruption of one flight, for all its passengers.

    ``cancelled: true`` for a cancellation, else ``delay_minutes``. The flight is its
    ``flight_number`` and the UTC date of ``scheduled_at``. ``event_id`` makes a retry harmless
    (derived from the body when absent)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    flight_number: FlightNumber
    scheduled_at: AwareDatetime = Field(description="The flight's scheduled departure.")
    type: Literal["flight_disrupted"]
    ts: AwareDatetime = Field(description="When the disruption was known.")
    cancelled: bool | None = None
    delay_minutes: int | None = Field(default=None, ge=0, le=MAX_DELAY_MINUTES)
    event_id: Id | None = None

    @field_validator("ts", "scheduled_at")
    @classmethod
    def _plausible(cls, value: datetime, info: ValidationInfo) -> datetime:
        # As /events: far-off times are typos; a flight may be scheduled up to a year ahead.
        ahead = MAX_TS_AHEAD if info.field_name == "ts" else timedelta(days=366)
        if value < EARLIEST_TS:
            raise ValueError(f"must not be before {EARLIEST_TS.date().isoformat()}")
        if value > datetime.now(UTC) + ahead:
            raise ValueError(
                f"must not be more than {ahead.days} day(s) ahead of the server's clock"
            )
        return value

    @model_validator(mode="after")
    def _what_happened(self) -> FlightEvent:
        if not self.cancelled and self.delay_minutes is None:
            raise ValueError(
                "delay_minutes is required for a flight_disrupted event that is not cancelled"
            )
        return self


class FlightAck(BaseModel):
    """``/events/flight``'s answer once every passenger's event is stored."""

    affected: int = Field(description="Passengers of the flight that got the event.")
    event_id: str
    duplicate: bool = Field(description="The flight event was already applied (a retry).")


class OutboxItem(BaseModel):
    """A triggered decision to send."""

    outbox_id: str = Field(description="Unique; use it to deduplicate (Idempotency-Key).")
    trigger: str
    event_id: str
    customer_id: str
    channel: str
    decision: dict[str, Any] = Field(description="The /decide response.")
    created_at: str
    seq: int = Field(description="Position in the outbox (the cursor after this item).")
    service_action: bool = False


class OutboxPage(BaseModel):
    """``GET /outbox``."""

    items: list[OutboxItem]
    next: str = Field(description="Pass as after= for the next page.")


class PendingItem(BaseModel):
    """A firing waiting to be decided."""

    customer_id: str
    trigger: str
    event_id: str
    expected_value: float | None
    waiting_for: Literal["budget", "due"]
    due_at: str


class PendingPage(BaseModel):
    """``GET /outbox/pending``."""

    items: list[PendingItem]


def open_triggered(
    runtime: Runtime, settings: Any, triggers: tuple[Trigger, ...],
    read: Callable[[str], Mapping[str, Any]],
) -> Triggered:  # fmt: skip
    """The worker's triggers and outbox, its sinks (production: the Redis stream; the webhook
    when ``NBA_OUTBOX_WEBHOOK_URL`` is set) and its started scheduler thread."""
    assert runtime.memory is not None
    sinks: list[Sink] = []
    if settings.profile == "production":
        from serving.history import redis_client
        from serving.webhook import StreamSink, stream_key

        client = redis_client(settings.redis_url, settings.store_timeout_seconds)
        sinks.append(StreamSink(client, stream_key(settings.environment)))
    url = getattr(settings, "outbox_webhook_url", None)
    if url:
        from serving.webhook import WebhookSink

        sinks.append(WebhookSink(url, timeout=settings.request_timeout_seconds,
                                 attempts=settings.outbox_webhook_attempts))  # fmt: skip
    triggered = Triggered(
        triggers,
        runtime.decider,
        Outbox(runtime.memory.db),
        log=runtime.decision_writer.append,
        sinks=sinks,
        poll_seconds=getattr(settings, "trigger_poll_seconds", 1.0),
        read=read,
        batch_pushes=runtime.pushes_deferred,
    )
    triggered.start()
    return triggered


def passenger_event_id(flight_event_id: str, customer_id: str) -> str:
    """A passenger's event id: the flight event's and the customer's (hashed when that would
    pass the ledger's 128 characters), so a retried flight event is a duplicate for each."""
    plain = f"{flight_event_id}:{customer_id}"
    if len(plain) <= 128:
        return plain
    digest = hashlib.sha256(f"{flight_event_id}\x1f{customer_id}".encode()).hexdigest()[:40]
    return f"{flight_event_id[:80]}:h{digest}"


def flight_event_id(body: FlightEvent) -> str:
    """The flight event's id: given, or derived from what it says (same body, same id)."""
    if body.event_id:
        return body.event_id
    said = (body.flight_number, body.scheduled_at.isoformat(), body.ts.isoformat(),
            body.cancelled, body.delay_minutes)  # fmt: skip
    facts = "|".join(str(x) for x in said)
    return f"flight-{hashlib.sha256(facts.encode()).hexdigest()[:32]}"


def handle_flight(runtime: Runtime, body: FlightEvent) -> dict[str, Any]:
    """Store the flight's disruption for each passenger, push their states, fire the triggers.

    Raises (the caller answers 503, nothing acknowledged) when the memory or the online store
    cannot be written; the ledger part is all or nothing, and a retry is idempotent.
    """
    if runtime.adapter is None or runtime.reader is None:
        raise RuntimeError("feature store not opened")
    if runtime.memory is None:
        raise RuntimeError("customer memory not opened")
    runtime.breaker.check()
    identifier = flight_event_id(body)
    scheduled = pd.Timestamp(body.scheduled_at).tz_convert("UTC")
    passengers = runtime.memory.passengers(body.flight_number, scheduled.to_pydatetime())
    if not passengers:
        return {"affected": 0, "event_id": identifier, "duplicate": False}
    what: dict[str, Any] = {"cancelled": True} if body.cancelled else {}
    if body.delay_minutes is not None:
        what["delay_minutes"] = body.delay_minutes
    events = [
        {"customer_id": customer, "type": "flight_disrupted", "ts": body.ts,
         "event_id": passenger_event_id(identifier, customer), **what,
         "flight_number": body.flight_number, "scheduled_at": scheduled.isoformat(),
         "flight_event_id": identifier}
        for customer in passengers
    ]  # fmt: skip
    stored = runtime.breaker.call(runtime.reader.read_with_timestamps, passengers)
    applied = runtime.memory.append_many(events, [row for row, _ in stored])
    # One push for the whole flight, stamped after every row the store holds.
    with runtime.pushes_deferred():
        for a, (_, state_ts) in zip(applied, stored, strict=True):
            state = a.state if a.state is not None else runtime.memory.state(a.customer_id)
            if state is not None:
                runtime.push_state(a.customer_id, state, state_ts)
    fresh = [(e, a) for e, a in zip(events, applied, strict=True) if not a.duplicate]
    for event, a in fresh:
        runtime._log_event(a, event)
    if runtime.triggered is not None:
        runtime.triggered.after_events(fresh)
    return {"affected": len(passengers), "event_id": identifier, "duplicate": not fresh}


def _query(scope: Mapping[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    parsed = parse_qs(raw, keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        message = f"must be an integer from {low} to {high}"
        raise ApiError(422, f"invalid field {name!r}: {message}",
                       {"field": name, "message": message})  # fmt: skip
    return int(text)


def outbox_answer(path: str, scope: Mapping[str, Any], runtime: Runtime | None
                  ) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """The status and body of ``GET /outbox`` or ``GET /outbox/pending`` (blocking reads)."""
    if runtime is None or runtime.triggered is None:
        return 503, {"error": "customer memory not opened: outbox unavailable", "detail": None}
    outbox: Outbox = runtime.triggered.outbox
    params = _query(scope)
    if path == "/outbox/pending":
        limit = _int(params, "limit", MAX_PAGE, 1, MAX_PAGE)
        return 200, {"items": outbox.waiting(limit)}
    after = _int(params, "after", 0, 0, 2**62)
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_PAGE)
    items, cursor = outbox.page(after, limit)
    return 200, {"items": items, "next": str(cursor)}
