"""The BentoML adapter: the decision API over HTTP (``contracts/decision-api.md``).

``NBA`` is a BentoML service whose ``__init__`` builds a ``serving.runtime.Runtime`` once per
worker (model, Feast store, guardrails, log writers) and whose ``@bentoml.api`` methods declare
``/decide``, ``/decide_batch`` and ``/events`` with the pydantic models of ``serving.api``, so
BentoML's OpenAPI page documents them.

The request path. A plain BentoML endpoint spent ≈ 0.7 ms in our handler but 2.2-2.7 ms per
request (stack-facts): IO descriptors, per-request context, OpenTelemetry spans, metrics and
access logs. ``Gate``, a raw ASGI middleware added to the service, therefore answers the three
POST routes itself when ``NBA_FAST_PATH`` is on (the default): it checks the API key and the body
size, validates with the same pydantic models (``serving.api.parse``), calls the same
``Decider``, and writes JSON with the contract's error bodies. BentoML still owns the server
(workers, lifecycle, shutdown hooks, docs, ``/metrics``). With the fast path off, ``Gate`` only
enforces the key and the body limit and the ``@bentoml.api`` methods answer. The tracing and
access-log middlewares are configured to skip the decision routes; metrics stay on for the
other routes.

Auth: every route but ``/healthz``, ``/readyz`` (and BentoML's ``/livez``) needs a key from
``NBA_API_KEYS`` in ``X-API-Key``; the docs page and its assets are public documentation, not
data. ``/healthz`` and ``/readyz`` are answered by ``Gate`` with a JSON body saying why.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Final

import bentoml
import orjson
from pydantic import AwareDatetime, Field

from nba.settings import load_settings
from serving.api import (
    Action,
    ApiError,
    Context,
    CustomerId,
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
    Event,
    EventAck,
    EventType,
    parse,
)
from serving.decider import Request
from serving.runtime import Runtime
from serving.server import drain_idle_connections

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Routes answered without a key.
OPEN_ROUTES: Final = frozenset({"/healthz", "/readyz", "/livez"})
#: Documentation routes (public) of BentoML's UI.
DOC_PREFIXES: Final = ("/docs.json", "/static_content", "/schema.json", "/assets")
#: The workers' GIL switch interval in seconds (Python's default: 0.005); see ``NBA.__init__``.
SWITCH_INTERVAL: Final = 0.0005
#: Batch bodies above this many bytes (about 200 requests) are handled off the event loop (a
#: long batch must not stall the worker's other connections).
THREAD_BATCH_BYTES: Final = 8192


class _Holder:
    """The worker's runtime, set by the service instance, read by the middleware."""

    runtime: Runtime | None = None
    settings: Any = None


def _to_request(body: DecideRequest) -> Request:
    context = body.context.model_dump(exclude_none=True) if body.context else {}
    candidates = tuple(body.candidates) if body.candidates else None
    if candidates is None:
        return Request(body.customer_id, context, explain=body.explain)
    return Request(body.customer_id, context, candidates, body.explain)


def _json(status: int, body: Any) -> tuple[int, bytes]:
    # orjson: 10,000 decisions in ≈ 7 ms against ≈ 60 ms with json.dumps. The decider never puts
    # NaN or infinities in an answer (they become null), so strict JSON needs no check here.
    return status, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class Gate:
    """Raw ASGI middleware: API key, body limit, health, and the fast decision path."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        settings = _Holder.settings
        runtime = _Holder.runtime
        if path in ("/healthz", "/readyz"):
            await self._health(path, runtime, send)
            return
        if path in OPEN_ROUTES or path == "/" or path.startswith(DOC_PREFIXES):
            await self.app(scope, receive, send)
            return
        if settings is None or not self._key_ok(scope, settings.api_keys):
            await _reply(send, *_json(401, {"error": "missing or invalid API key",
                                            "detail": {"header": "X-API-Key"}}))  # fmt: skip
            return
        limit = settings.max_body_bytes
        if scope["method"] == "POST":
            try:
                body = await _read_body(scope, receive, limit)
            except ApiError as error:
                await _reply(send, *_json(error.status, error.body))
                return
            if settings.fast_path and path in ("/decide", "/decide_batch", "/events"):
                status, payload = await self._answer(path, body, runtime)
                await _reply(send, status, payload)
                return
            await self.app(scope, _replay(body), send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _key_ok(scope: Scope, keys: list[str]) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
                break
        # Constant-time comparison against every key: no timing hint about valid prefixes.
        return bool(given) and any(hmac.compare_digest(given, k.encode()) for k in keys)

    @staticmethod
    async def _health(path: str, runtime: Runtime | None, send: Send) -> None:
        if path == "/healthz":
            await _reply(send, *_json(200, {"status": "alive"}))
            return
        if runtime is None:
            await _reply(send, *_json(503, {"ready": False, "detail": "starting"}))
            return
        ready, why = await asyncio.to_thread(runtime.readiness)
        await _reply(send, *_json(200 if ready else 503, {"ready": ready, "detail": why}))

    @staticmethod
    async def _answer(path: str, body: bytes, runtime: Runtime | None) -> tuple[int, bytes]:
        if runtime is None:
            return _json(503, {"error": "service starting", "detail": None})
        try:
            if path == "/decide":
                request = _to_request(parse(DecideRequest, body))
                if runtime.decision_io is not None:
                    # Redis: awaited, so the worker decides other requests meanwhile.
                    decision = await runtime.decider.decide_async(request, runtime.decision_io)
                    return _json(200, decision)
                return _json(200, runtime.decider.decide(request))
            if path == "/decide_batch":
                if len(body) > THREAD_BATCH_BYTES:
                    # Validation, decisions and JSON of a large batch (tens of ms for 10,000)
                    # run off the event loop: the worker keeps answering /decide meanwhile.
                    return await asyncio.to_thread(_answer_batch, body, runtime)
                requests = [_to_request(r) for r in parse(DecideBatchRequest, body).requests]
                io = runtime.decision_io
                if io is not None and len(requests) < runtime.decider.small_batch:
                    # Redis: a small batch is a series of single decisions anyway (see
                    # ``Decider.decide_batch``); awaited in order, they never block the loop.
                    decisions = [await runtime.decider.decide_async(r, io) for r in requests]
                else:
                    decisions = runtime.decider.decide_batch(requests)
                return _json(200, {"decisions": decisions})
            event = parse(Event, body)
            try:
                ack = await asyncio.to_thread(runtime.handle_event, event.model_dump())
            except ValueError as error:  # the event does not fit the customer's state
                return _json(422, {"error": str(error), "detail": {"field": "type"}})
            except Exception as error:  # any store failure: never acknowledge an unseen event
                logger.error("event not applied: %s", type(error).__name__)
                return _json(503, {"error": "feature store unavailable: event not applied",
                                   "detail": type(error).__name__})  # fmt: skip
            return _json(200, ack)
        except ApiError as error:
            return _json(error.status, error.body)


def _answer_batch(body: bytes, runtime: Runtime) -> tuple[int, bytes]:
    """``/decide_batch``'s status and JSON body (raises ``ApiError`` for a malformed one)."""
    batch = parse(DecideBatchRequest, body)
    decisions = runtime.decider.decide_batch([_to_request(r) for r in batch.requests])
    return _json(200, {"decisions": decisions})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ApiError(413, "body too large", {"field": "body", "limit_bytes": limit})
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body too large", {"field": "body", "limit_bytes": limit})
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _reply(send: Send, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


#: Routes the lean path answers: BentoML's metrics and tracing middlewares skip them (they run
#: before ``Gate`` and cost more than the decision itself).
DECISION_ROUTES: Final = ["/decide", "/decide_batch", "/events"]


@bentoml.service(
    name="nba",
    traffic={"timeout": 30},
    # Access logs off (≈ 10 % of a request, and the decision log records every decision);
    # the metrics middleware reads its skip list from here.
    logging={
        "access": {
            "enabled": False,
            "skip_paths": ["/metrics", "/healthz", "/livez", "/readyz", *DECISION_ROUTES],
        }
    },
    tracing={"excluded_urls": DECISION_ROUTES},
)
class NBA:
    """The next-best-action decision service (see the module docstring)."""

    def __init__(self) -> None:
        settings = load_settings()
        _Holder.settings = settings
        self.runtime = Runtime.start(settings)
        _Holder.runtime = self.runtime
        # Objects made at start-up live for the worker's life: move them out of the collector's
        # generations, or gen-2 collections pause requests for ~300 ms (stack-facts).
        gc.collect()
        gc.freeze()
        # The log writer's thread converts seconds of rows to Arrow in the background; with
        # Python's default 5 ms GIL switch interval a request waited up to 5 ms per switch
        # behind it. 0.5 ms: p99 at concurrency 8 went from 14-16 ms to 11-12 ms, p99.9 from
        # ~44 to ~30 ms (two runs each, load average 2-3).
        sys.setswitchinterval(SWITCH_INTERVAL)

    def __is_ready__(self) -> bool:
        return self.runtime.readiness()[0]

    @bentoml.on_shutdown
    def _flush_logs(self) -> None:
        # Runs on SIGTERM/SIGINT: every queued decision and event is written before exit.
        self.runtime.close()

    @bentoml.api(route="/decide")
    def decide(
        self,
        customer_id: str,
        context: Context | None = None,
        candidates: list[Action] | None = None,
        explain: bool = False,
    ) -> DecideResponse:
        """Next best action for one customer at search time."""
        body = DecideRequest(customer_id=customer_id, context=context, candidates=candidates,
                             explain=explain)  # fmt: skip
        return DecideResponse(**self.runtime.decider.decide(_to_request(body)))

    @bentoml.api(route="/decide_batch")
    def decide_batch(self, requests: list[DecideRequest]) -> DecideBatchResponse:
        """Decisions for up to 10,000 customers (outbound campaigns), in request order."""
        batch = DecideBatchRequest(requests=requests)
        decisions = self.runtime.decider.decide_batch([_to_request(r) for r in batch.requests])
        return DecideBatchResponse(decisions=[DecideResponse(**d) for d in decisions])

    @bentoml.api(route="/events")
    def events(  # the contract's flat body: one parameter per field of ``serving.api.Event``
        self,
        customer_id: CustomerId,
        type: EventType,  # the contract's field name (shadows the builtin here only)
        ts: AwareDatetime,
        case_id: str | None = None,
        topic: str | None = None,
        sentiment: Annotated[float, Field(ge=-1, le=1)] | None = None,
        compensated: bool | None = None,
        delay_minutes: Annotated[int, Field(ge=0)] | None = None,
        cancelled: bool | None = None,
    ) -> EventAck:
        """Report a change (case opened, disruption, ...) that the next decision must see."""
        event = Event(customer_id=customer_id, type=type, ts=ts, case_id=case_id, topic=topic,
                      sentiment=sentiment, compensated=compensated, delay_minutes=delay_minutes,
                      cancelled=cancelled)  # fmt: skip
        return EventAck(**self.runtime.handle_event(event.model_dump()))


NBA.add_asgi_middleware(Gate)
# SIGTERM: answer a request racing the worker's shutdown instead of resetting its connection.
drain_idle_connections()
