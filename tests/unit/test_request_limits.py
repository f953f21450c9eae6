"""Strict, bounded input (issue 14): each hostile request of the tester's report is refused with
the offending field named, through ``serving.api.parse`` and through the ASGI ``Gate`` on both
request paths, and nothing unbounded or invalid reaches the decider or the event log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from serving import api, service
from serving.api import ApiError, DecideBatchRequest, DecideRequest, Event, parse
from serving.openapi import ERRORS, decision_document

KEY = "unit-key"
TS = '"2026-11-01T00:00:00Z"'


def _event(extra: str) -> bytes:
    return ('{"customer_id": "C1", "type": "flight_disrupted", "ts": ' + TS + extra + "}").encode()


#: (model, body exactly as the tester sent it, field named in the 422).
HOSTILE: dict[str, tuple[type[Any], bytes, str]] = {
    "3 MB context.page": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {"page": "' + b"p" * 3_000_000 + b'"}}',
        "context.page",
    ),
    "1 MB case_id": (
        Event,
        b'{"customer_id": "C1", "type": "case_opened", "ts": '
        + TS.encode()
        + b', "case_id": "'
        + b"c" * 1_000_000
        + b'"}',
        "case_id",
    ),
    "NaN in context": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {"score": NaN}}',
        "context.score",
    ),
    "Infinity in context": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {"score": -Infinity}}',
        "context.score",
    ),
    "duplicate key": (DecideRequest, b'{"customer_id": "C1", "customer_id": "C2"}', "customer_id"),
    "duplicate nested key": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {"page": "a", "page": "b"}}',
        "context.page",
    ),
    'explain "yes"': (DecideRequest, b'{"customer_id": "C1", "explain": "yes"}', "explain"),
    'delay_minutes "190"': (Event, _event(', "delay_minutes": "190"'), "delay_minutes"),
    "delay_minutes 10^30": (Event, _event(', "delay_minutes": 1' + "0" * 30), "delay_minutes"),
    "delay_minutes over a week": (Event, _event(', "delay_minutes": 10081'), "delay_minutes"),
    "NUL in customer_id": (DecideRequest, b'{"customer_id": "C1\\u0000"}', "customer_id"),
    "newline in case_id": (
        Event,
        b'{"customer_id": "C1", "type": "case_closed", "ts": '
        + TS.encode()
        + b', "case_id": "K\\n1"}',
        "case_id",
    ),
    "NUL in context.page": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {"page": "a\\u0000b"}}',
        "context.page",
    ),
    "year 2300 ts": (
        Event,
        b'{"customer_id": "C1", "type": "booking", "ts": "2300-01-01T00:00:00Z"}',
        "ts",
    ),
    "year 1999 ts": (
        Event,
        b'{"customer_id": "C1", "type": "booking", "ts": "1999-12-31T23:59:59Z"}',
        "ts",
    ),
    "unix-time ts": (Event, b'{"customer_id": "C1", "type": "booking", "ts": 1764892800}', "ts"),
    "nested object in context": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {"cart": {"items": [1, 2]}}}',
        "context.cart",
    ),
    "33 context keys": (
        DecideRequest,
        b'{"customer_id": "C1", "context": {'
        + b", ".join(b'"k%d": %d' % (i, i) for i in range(33))
        + b"}}",
        "context",
    ),
    "129-char customer_id": (
        DecideRequest,
        b'{"customer_id": "' + b"x" * 129 + b'"}',
        "customer_id",
    ),
    "5 candidates": (
        DecideRequest,
        b'{"customer_id": "C1", "candidates": ["promo", "promo", "none", "none", "recognition"]}',
        "candidates",
    ),
    "NaN sentiment": (
        Event,
        b'{"customer_id": "C1", "type": "case_opened", "ts": '
        + TS.encode()
        + b', "sentiment": NaN}',
        "sentiment",
    ),
    "bad batch item": (
        DecideBatchRequest,
        b'{"requests": [{"customer_id": "C1"}, {"customer_id": "C2", "explain": 1}]}',
        "requests.1.explain",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_bodies_are_refused_naming_the_field(case: str) -> None:
    model, body, field = HOSTILE[case]
    with pytest.raises(ApiError) as caught:
        parse(model, body)
    assert caught.value.status == 422
    detail = caught.value.body["detail"]
    assert detail["field"] == field and detail["message"], caught.value.body
    # The answer never echoes a huge value back.
    assert len(json.dumps(caught.value.body)) < 4000


def test_a_huge_refused_key_is_not_echoed() -> None:
    body = b'{"customer_id": "C1", "context": {"' + b"k" * 100_000 + b'": 1}}'
    with pytest.raises(ApiError) as caught:
        parse(DecideRequest, body)
    field = caught.value.body["detail"]["field"]
    assert field.startswith("context.kkk") and len(field) <= len("context.") + api.MAX_KEY_CHARS + 1


def test_values_at_the_limits_are_accepted() -> None:
    context: dict[str, Any] = {f"k{i}": i for i in range(api.MAX_CONTEXT_KEYS - 2)}
    context.update(channel="app", page="p" * api.MAX_TEXT_CHARS)
    request = parse(DecideRequest, json.dumps({
        "customer_id": "c" * api.MAX_ID_CHARS, "context": context, "explain": True,
        "candidates": ["promo", "apology_credit", "recognition", "none"],
    }).encode())  # fmt: skip
    assert request.context is not None and request.context.model_dump()["k3"] == 3
    soon = (datetime.now(UTC) + api.MAX_TS_AHEAD - timedelta(minutes=5)).isoformat()
    event = parse(Event, json.dumps({
        "customer_id": "C1", "type": "flight_disrupted", "ts": soon,
        "delay_minutes": api.MAX_DELAY_MINUTES, "flight_number": "AA45", "sentiment": -1,
    }).encode())  # fmt: skip
    assert event.delay_minutes == 10_080 and event.model_dump()["flight_number"] == "AA45"
    assert parse(Event, _event(', "delay_minutes": 0')).ts.year == 2026


class FakeDecider:
    """Records what ``Gate`` hands to the decider."""

    small_batch = 64

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def decide(self, request: Any) -> dict[str, Any]:
        self.requests.append(request)
        return {"decision_id": "d-1", "customer_id": request.customer_id, "action": "none",
                "ranking": [], "reasons": [], "model_version": "m/1",
                "degraded": False}  # fmt: skip

    def decide_batch(self, requests: list[Any]) -> list[dict[str, Any]]:
        return [self.decide(r) for r in requests]


class FakeRuntime:
    """``Runtime``'s surface used by ``Gate``."""

    decision_io = None

    def __init__(self) -> None:
        self.decider = FakeDecider()
        self.events: list[dict[str, Any]] = []

    def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        return {"event_id": "e-1", "customer_id": event["customer_id"], "type": event["type"],
                "applied": True}  # fmt: skip


@pytest.fixture(params=[True, False], ids=["fast-path", "bentoml-path"])
def gate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    runtime = FakeRuntime()
    settings = SimpleNamespace(api_keys=[KEY], max_body_bytes=4 * 1024 * 1024,
                               fast_path=request.param)  # fmt: skip
    monkeypatch.setattr(service._Holder, "settings", settings)
    monkeypatch.setattr(service._Holder, "runtime", runtime)
    passed: list[bytes] = []  # bodies the BentoML app received

    async def app(scope: Any, receive: Any, send: Any) -> None:
        passed.append((await receive())["body"])
        await service._reply(send, 200, b"{}")

    yield SimpleNamespace(gate=service.Gate(app), runtime=runtime, passed=passed,
                          fast=request.param)  # fmt: skip


def call(gate: Any, path: str, body: bytes, content_type: bytes | None = b"application/json"
         ) -> tuple[int, dict[str, Any]]:  # fmt: skip
    headers = [(b"x-api-key", KEY.encode()), (b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(gate.gate(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


ROUTE: dict[type[Any], str] = {
    DecideRequest: "/decide",
    DecideBatchRequest: "/decide_batch",
    Event: "/events",
}


@pytest.mark.parametrize(
    "case",
    ["3 MB context.page", "1 MB case_id", "NaN in context", "duplicate key", 'explain "yes"',
     'delay_minutes "190"', "delay_minutes 10^30", "NUL in customer_id", "year 2300 ts",
     "bad batch item"],
)  # fmt: skip
def test_gate_refuses_hostile_bodies_on_both_paths(gate: Any, case: str) -> None:
    model, body, field = HOSTILE[case]
    status, answer = call(gate, ROUTE[model], body)
    assert status == 422 and answer["detail"]["field"] == field, answer
    assert set(answer) == {"error", "detail"}
    # Nothing reached the decider, the event handler or BentoML's handler.
    assert not gate.runtime.decider.requests and not gate.runtime.events and not gate.passed


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/x-www-form-urlencoded",
                                          b"application/jsonp", b"multipart/form"])  # fmt: skip
def test_gate_answers_415_unless_json(gate: Any, content_type: bytes | None) -> None:
    status, answer = call(gate, "/decide", b'{"customer_id": "C1"}', content_type)
    assert status == 415
    assert answer["detail"] == {"field": "Content-Type", "expected": "application/json"}
    assert not gate.runtime.decider.requests and not gate.passed


def test_a_body_without_a_declared_type_is_read_as_json(gate: Any) -> None:
    status, _ = call(gate, "/decide", b'{"customer_id": "C1"}', None)
    assert status != 415
    status, answer = call(gate, "/decide", b'{"customer_id": "C1", "explain": "yes"}', None)
    assert status == 422 and answer["detail"]["field"] == "explain"


def test_gate_stores_only_validated_values(gate: Any) -> None:
    body = b'{"customer_id": "C1", "context": {"channel": "app", "score": 0.5, "n": 3}}'
    assert call(gate, "/decide", body, b"application/json; charset=utf-8")[0] == 200
    event = _event(', "delay_minutes": 190, "note": "ok"')
    assert call(gate, "/events", event)[0] == 200
    if not gate.fast:  # BentoML's handler gets the very body that passed validation
        assert gate.passed == [body, event]
        return
    [request] = gate.runtime.decider.requests
    assert request.context == {"channel": "app", "score": 0.5, "n": 3}
    # What the decision and event logs write is strict JSON (json.dumps would write NaN).
    json.dumps(request.context, allow_nan=False)
    [stored] = gate.runtime.events
    assert stored["delay_minutes"] == 190 and stored["note"] == "ok"


def test_openapi_declares_the_served_errors_and_bounds() -> None:
    spec = {
        "openapi": "3.0.2",
        "paths": {
            r: {"post": {"responses": {"500": {}}}} for r in ("/decide", "/decide_batch", "/events")
        },
    }
    doc = decision_document(spec)
    schemas = doc["components"]["schemas"]
    for route in ("/decide", "/decide_batch", "/events"):
        operation = doc["paths"][route]["post"]
        assert set(operation["responses"]) == {"200", *ERRORS}
        assert {"400", "401", "413", "415", "422", "503"} <= set(operation["responses"])
        assert operation["security"] == [{"ApiKey": []}]
    detail = schemas["ErrorBody"]["properties"]["detail"]
    assert {"type": "object", "additionalProperties": True} in detail["anyOf"]
    assert schemas["Context"]["properties"]["page"]["anyOf"][0]["maxLength"] == 256
    assert schemas["Context"]["maxProperties"] == api.MAX_CONTEXT_KEYS
    assert schemas["Event"]["propertyNames"]["maxLength"] == api.MAX_KEY_CHARS
    assert schemas["Event"]["properties"]["delay_minutes"]["anyOf"][0]["maximum"] == 10_080
    assert schemas["DecideRequest"]["additionalProperties"] is False
    assert spec["openapi"] == "3.0.2"  # BentoML's document itself is left alone


def test_the_served_document_builds_from_the_service() -> None:
    # BentoML's own schema objects refuse some JSON Schema keywords (propertyNames): the
    # document the server answers must still build from the real service.
    doc = json.loads(service._docs_json())
    assert doc["openapi"] == "3.1.0" and "415" in doc["paths"]["/events"]["post"]["responses"]
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
