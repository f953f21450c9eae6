"""``nba consume``'s reader on a real Redis: consumer group, XACK after the store, dead letters,
pending entries of a crashed consumer taken over (keys under this test's own prefix)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serving.consumer import EventConsumer
from serving.history import redis_client

pytestmark = pytest.mark.integration


def _event(customer: str, event_id: str) -> str:
    return json.dumps({"customer_id": customer, "type": "booking",
                       "ts": "2026-12-04T10:00:00Z", "event_id": event_id})  # fmt: skip


def _reader(client: Any, stream: str, name: str, handle: Any, idle: int = 60_000) -> EventConsumer:
    return EventConsumer(client, stream, "g", name, handle, block_ms=50, claim_idle_ms=idle)


def test_consume_acks_after_storing_and_dead_letters_invalid_events(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis_client(redis_url, 2.0)
    stream = f"{redis_prefix}events"
    stored: list[dict[str, Any]] = []
    reader = _reader(client, stream, "a", stored.append)
    reader.ensure_group()
    reader.ensure_group()  # idempotent
    for fields in ({"event": _event("C1", "e1")}, {"event": '{"customer_id": "C2"}'},
                   {"event": _event("C3", "e3")}):  # fmt: skip
        client.xadd(stream, fields)
    tally = reader.run_once()
    assert (tally.stored, tally.dead, tally.failed) == (2, 1, 0)
    assert [e["customer_id"] for e in stored] == ["C1", "C3"]
    assert client.xpending(stream, "g")["pending"] == 0
    [(_, dead)] = client.xrange(reader.dead_letters)
    assert b"type" in dead[b"reason"] or b"field" in dead[b"reason"]
    client.close()


def test_a_crashed_consumers_entries_are_read_again(redis_url: str, redis_prefix: str) -> None:
    client = redis_client(redis_url, 2.0)
    stream = f"{redis_prefix}events"

    def down(event: dict[str, Any]) -> None:
        raise ConnectionError("memory down")

    crashed = _reader(client, stream, "a", down)
    crashed.ensure_group()
    client.xadd(stream, {"event": _event("C1", "e1")})
    tally = crashed.run_once()
    assert tally.failed == 1 and client.xpending(stream, "g")["pending"] == 1  # not acked
    # The same consumer restarted reads its own pending entry first.
    stored: list[dict[str, Any]] = []
    restarted = _reader(client, stream, "a", stored.append)
    assert restarted.run_once().stored == 1 and [e["event_id"] for e in stored] == ["e1"]
    # Another consumer takes over what a dead one left pending once it has been idle.
    client.xadd(stream, {"event": _event("C2", "e2")})
    assert _reader(client, stream, "a", down).run_once().failed == 1
    other: list[dict[str, Any]] = []
    assert _reader(client, stream, "b", other.append, idle=0).run_once().stored == 1
    assert [e["event_id"] for e in other] == ["e2"]
    assert client.xpending(stream, "g")["pending"] == 0
    client.close()


def test_the_relay_streams_outbox_items_in_order_once(
    redis_url: str, redis_prefix: str, tmp_path: Any
) -> None:
    from memory.outbox import Firing, Outbox
    from memory.store import Database, sqlite_url
    from serving.triggered import Triggered
    from serving.triggers import load_triggers
    from serving.webhook import StreamSink
    from tests.unit.test_decide_batch import _decider
    from tests.unit.test_decider import NOW

    client = redis_client(redis_url, 2.0)
    key = f"{redis_prefix}outbox"
    outbox = Outbox(Database(sqlite_url(tmp_path / "memory.db")))
    for k in range(3):
        outbox.append(Firing("milestone", f"C{k}", f"e{k}", NOW), "email",
                      {"action": "recognition"}, NOW)  # fmt: skip
    triggered = Triggered(load_triggers(), _decider({}, {}, 0, []), outbox,
                          sinks=[StreamSink(client, key)], clock=lambda: NOW)  # fmt: skip
    assert triggered.relay_once() == 3
    assert triggered.relay_once() == 0  # marked streamed: not sent twice
    entries = client.xrange(key)
    assert [json.loads(f[b"item"])["customer_id"] for _, f in entries] == ["C0", "C1", "C2"]
    assert [f[b"outbox_id"].decode() for _, f in entries] == [
        i["outbox_id"] for i in outbox.page()[0]
    ]
    client.close()
