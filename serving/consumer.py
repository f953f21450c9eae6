"""``nba consume``: events from a Redis stream, stored by the same code as ``POST /events``.

A producer (the brand's booking or operations system) XADDs each event to the stream
(default ``nba:<NBA_ENVIRONMENT>:events``) with one field, ``event``: the JSON body of
``/events`` (or of ``/events/flight``: a body with ``flight_number`` and ``scheduled_at`` and
no ``customer_id``). The consumer reads with a consumer group (XREADGROUP), so several
consumers share the stream and each entry is handled by one of them:

* each entry is validated with the API's own models (``serving.api.parse``) and stored
  (``Runtime.handle_event`` / ``serving.outbox.handle_flight``: ledger, online store, triggers);
  only then is it acknowledged (XACK). A crash before the XACK leaves it pending: it is read
  again (by this consumer on restart, which first re-reads its own pending entries, or by
  another one through XAUTOCLAIM once it has been idle ``claim_idle_ms``). Stored twice is
  harmless: the event's ``event_id`` makes the second a duplicate (give every event an id);
* an entry that is not a valid event is moved to the dead-letter stream ``<stream>:dead``
  (with the reason) and acknowledged: never lost silently, never retried forever;
* an entry whose store failed (memory or online store down) is not acknowledged: it is tried
  again after ``claim_idle_ms``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.api import ApiError, Event, parse
from serving.outbox import FlightEvent

logger = logging.getLogger(__name__)


def events_stream(environment: str) -> str:
    """The default stream of events to consume: ``nba:<NBA_ENVIRONMENT>:events``."""
    return f"nba:{environment}:events"


@dataclass
class Tally:
    """What ``run_once`` did."""

    stored: int = 0
    dead: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventConsumer:
    """Reads a stream with a consumer group and stores each event; see the module docstring.

    Args:
        client: a ``redis.Redis`` whose socket timeout exceeds ``block_ms``.
        stream: the stream key.
        group: the consumer group (created at the stream's start when absent).
        consumer: this consumer's name (stable across restarts: its pending entries are its).
        handle_event: stores one validated ``/events`` body (``Runtime.handle_event``).
        handle_flight: stores one ``/events/flight`` body (None: such entries are dead).
        count: most entries per read.
        block_ms: how long a read waits for new entries.
        claim_idle_ms: entries pending this long on any consumer are taken over.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        handle_event: Callable[[dict[str, Any]], Mapping[str, Any]],
        handle_flight: Callable[[Any], Mapping[str, Any]] | None = None,
        count: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handle_event = handle_event
        self.handle_flight = handle_flight
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._own_pending_read = False

    @property
    def dead_letters(self) -> str:
        return f"{self.stream}:dead"

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if needed."""
        from redis.exceptions import ResponseError

        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def run_once(self) -> Tally:
        """One round: this consumer's own unacknowledged entries (first round after a start),
        entries idle on other consumers (XAUTOCLAIM), then new ones (XREADGROUP, blocking)."""
        tally = Tally()
        if not self._own_pending_read:
            # After a crash: what was delivered to this name but never acknowledged.
            for _, entries in (
                self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=10_000)
                or []
            ):
                self._handle_all(entries, tally)
            self._own_pending_read = True
        claimed = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.count
        )
        self._handle_all(claimed[1] if claimed else [], tally)
        for _, entries in (
            self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.count, block=self.block_ms
            )
            or []
        ):
            self._handle_all(entries, tally)
        return tally

    def run(self, stop: threading.Event) -> Tally:
        """Rounds until ``stop`` is set (SIGTERM): the entry being stored is finished first."""
        total = Tally()
        self.ensure_group()
        while not stop.is_set():
            try:
                done = self.run_once()
            except Exception as error:  # Redis away: wait a little, then read again
                logger.warning("consume round failed (%s: %s)", type(error).__name__, error)
                stop.wait(1.0)
                continue
            total.stored += done.stored
            total.dead += done.dead
            total.failed += done.failed
        return total

    def _handle_all(self, entries: Any, tally: Tally) -> None:
        for entry_id, fields in entries or []:
            if fields is None:  # deleted from the stream meanwhile (XAUTOCLAIM reports it)
                continue
            self._handle(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()},
                         tally)  # fmt: skip

    def _handle(self, entry_id: str, fields: Mapping[str, str], tally: Tally) -> None:
        raw = fields.get("event", "")
        try:
            body = json.loads(raw) if raw else None
            flight = (isinstance(body, dict) and "customer_id" not in body
                      and "flight_number" in body and "scheduled_at" in body)  # fmt: skip
            parsed: Event | FlightEvent
            if flight and self.handle_flight is not None:
                parsed = parse(FlightEvent, raw.encode())
            else:
                parsed = parse(Event, raw.encode())
        except (ApiError, ValueError) as error:
            reason = error.body["error"] if isinstance(error, ApiError) else str(error)
            self.client.xadd(self.dead_letters, {"entry_id": entry_id, "event": raw[:100_000],
                                                 "reason": reason[:1000]})  # fmt: skip
            self.client.xack(self.stream, self.group, entry_id)
            tally.dead += 1
            return
        try:
            if isinstance(parsed, Event):
                self.handle_event(parsed.model_dump())
            else:
                assert self.handle_flight is not None
                self.handle_flight(parsed)
        except Exception as error:  # a store down: not acknowledged, read again later
            tally.failed += 1
            tally.errors.append(f"{entry_id}: {type(error).__name__}")
            logger.warning("event %s not stored (%s): left pending", entry_id,
                           type(error).__name__)  # fmt: skip
            return
        self.client.xack(self.stream, self.group, entry_id)
        tally.stored += 1
