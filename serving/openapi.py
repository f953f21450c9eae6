"""The OpenAPI document of the decision routes as they are served (``/docs.json``).

BentoML derives its document from the ``@bentoml.api`` signatures, but the decision routes are
validated by ``serving.api``'s models (by ``Gate``, on both request paths) and answer the
contract's error bodies, which BentoML's defaults (400/404/500, ``detail`` a string) do not
describe. ``decision_document`` therefore rewrites those three operations from the models: the
request body, the 200 answer, every error status ``Gate`` answers, and the ``X-API-Key``
security scheme. The document is OpenAPI 3.1, whose schemas are the JSON Schema pydantic
writes (``null`` as a type), so that nullable answers are described as they are.

``product_document`` then makes the document the product's own: its title, version and
description (no BentoML template text or contacts), examples for every decision route, the
health routes as ``Gate`` answers them, and ``/metrics`` behind the key. ``API_PAGE`` is the
interactive page served at ``/``: Swagger UI from BentoML's bundled assets, with no tracking
script, the key remembered once given in "Authorize".
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.api import (
    KEY_SCHEMA,
    Context,
    DecideBatchRequest,
    DecideBatchResponse,
    DecideRequest,
    DecideResponse,
    ErrorBody,
    Event,
    EventAck,
)
from serving.outbox import FlightAck, FlightEvent, OutboxPage, PendingPage

#: Route -> (request model, answer model).
ROUTES: Final[dict[str, tuple[type[BaseModel], type[BaseModel]]]] = {
    "/decide": (DecideRequest, DecideResponse),
    "/decide_batch": (DecideBatchRequest, DecideBatchResponse),
    "/events": (Event, EventAck),
    "/events/flight": (FlightEvent, FlightAck),
}
#: The outbox's GET routes: (answer model, summary, query parameters).
READS: Final[dict[str, tuple[type[BaseModel], str, list[dict[str, Any]]]]] = {
    "/outbox": (OutboxPage, "Triggered decisions to send, oldest first (durable, ordered).", [
        {"name": "after", "in": "query", "required": False, "description": "Cursor: the "
         "previous page's next (default 0, the beginning).",
         "schema": {"type": "string", "pattern": "^[0-9]*$"}},
        {"name": "limit", "in": "query", "required": False, "description": "Items per page.",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    ]),
    "/outbox/pending": (PendingPage, "Customers whose triggered decision waits (the apology "
                        "budget's queue by expected value, then delayed triggers).", [
        {"name": "limit", "in": "query", "required": False, "description": "Most items.",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}},
    ]),
}  # fmt: skip
#: The error statuses ``Gate`` answers on a decision route, and why.
ERRORS: Final[dict[str, str]] = {
    "400": "Empty body or not JSON.",
    "401": "Missing or invalid X-API-Key.",
    "413": "Body larger than NBA_MAX_BODY_BYTES.",
    "415": "Content-Type is not application/json.",
    "422": "A field is invalid; detail.field names it (detail.message says why).",
    "503": "Service starting, or (/events) the event could not be stored: not applied.",
}
SECURITY_SCHEME: Final = "ApiKey"
_REF: Final = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def decision_document(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's document ``spec`` (``asdict()``) with the decision routes as served."""
    doc = copy.deepcopy(spec)
    doc["openapi"] = "3.1.0"
    models: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for request, answer in ROUTES.values():
        models += [(request, "validation"), (answer, "serialization")]
    models += [(answer, "serialization") for answer, _, _ in READS.values()]
    _, schemas = models_json_schema(models, ref_template=_REF)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas.get("$defs", {}))
    for model in (Context, Event):  # the open objects: bounded keys
        components["schemas"][model.__name__]["propertyNames"] = dict(KEY_SCHEMA)
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    error_body = {"content": {"application/json": {"schema": _ref(ErrorBody)}}}
    for route, (request, answer) in ROUTES.items():
        # (A document without the route gets it: every route is described as served.)
        operation = doc.setdefault("paths", {}).setdefault(route, {}).setdefault("post", {})
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(request)}},
        }
        operation["responses"] = {
            "200": {
                "description": "Answered.",
                "content": {"application/json": {"schema": _ref(answer)}},
            },
            **{status: {"description": why, **error_body} for status, why in ERRORS.items()},
        }
        operation["security"] = [{SECURITY_SCHEME: []}]
    for route, (answer, summary, parameters) in READS.items():
        doc["paths"][route] = {"get": {
            "summary": summary, "parameters": parameters, "security": [{SECURITY_SCHEME: []}],
            "responses": {
                "200": {"description": "Answered.",
                        "content": {"application/json": {"schema": _ref(answer)}}},
                **{status: {"description": ERRORS[status], **error_body}
                   for status in ("401", "422")},
                "503": {"description": "The customer memory (outbox) is unavailable.",
                        **error_body},
            },
        }}  # fmt: skip
    return doc


#: What a reader of the API page learns first.
DESCRIPTION: Final = """\
The next best action for a traveller, now: `promo`, `apology_credit`, `recognition` or `none`,
ranked by incremental value after guardrails (no promo to a customer with an open case, a
recent negative experience or an opt-out; apology credits within a paced daily budget).

**Authentication.** Every route but `/healthz`, `/readyz` and `/livez` needs an API key of the
server's `NBA_API_KEYS` in the `X-API-Key` header: click **Authorize** and enter yours.

**Errors** have the body `{"error": "...", "detail": ...}`: 400 not JSON, 401 no valid key,
413 body too large, 415 not `application/json`, 422 a field is invalid (`detail.field` names
it), 503 starting, or an event the store could not take (not applied).

**Never fails open.** When features or the model cannot be read, `/decide` answers `none` with
`degraded: true`.

**Global control group.** A stable share of customers (`NBA_HOLDOUT_SHARE`, by a salted hash of
`customer_id`) never gets a marketing action; their answers say `holdout: true`, and `nba impact`
measures what the decisions earn against them.
"""
#: Request and answer examples of the decision routes (the contract's).
EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "/decide": {
        "customer_id": "C0000001",
        "context": {"channel": "web", "page": "search", "origin": "JFK", "destination": "CDG",
                    "departure_date": "2026-12-20"},
        "candidates": ["promo", "apology_credit", "recognition", "none"],
        "explain": True,
    },
    "/decide_batch": {"requests": [{"customer_id": "C0000001", "context": {"channel": "email"}},
                                   {"customer_id": "C0000002", "context": {"channel": "email"}}]},
    "/events": {"customer_id": "C0000001", "type": "case_opened", "ts": "2026-12-04T10:00:00Z",
                "case_id": "C-77", "topic": "delay"},
    "/events/flight": {"flight_number": "AA45", "scheduled_at": "2026-12-04T18:30:00Z",
                       "type": "flight_disrupted", "ts": "2026-12-04T19:10:00Z",
                       "cancelled": True, "event_id": "ops-7781"},
}  # fmt: skip
_HEALTH: Final = {
    "/healthz": ("Liveness: this process answers (no store is asked).", {"200": "Alive."}),
    "/readyz": (
        "Readiness: a model is loaded and the feature store answers a read.",
        {"200": "Ready.", "503": "Not ready: detail says why (starting, no model, store down)."},
    ),
}


def product_document(doc: dict[str, Any], version: str) -> dict[str, Any]:
    """The decision document (``decision_document``) as the product's own page shows it."""
    doc = copy.deepcopy(doc)
    doc.pop("servers", None)  # BentoML's "." only adds a meaningless selector to the page
    doc["info"] = {"title": "nba decision API", "version": version, "description": DESCRIPTION,
                   "license": {"name": "Apache-2.0"}}  # fmt: skip
    doc["tags"] = [
        {"name": "decisions", "description": "Decide, decide in bulk, report events."},
        {"name": "outbox", "description": "Triggered decisions to send, and those waiting."},
        {"name": "health", "description": "Liveness, readiness and metrics."},
    ]
    for route, example in EXAMPLES.items():
        operation = doc["paths"][route]["post"]
        operation["tags"] = ["decisions"]
        operation["requestBody"]["content"]["application/json"]["example"] = example
    for route in READS:
        doc["paths"][route]["get"]["tags"] = ["outbox"]
    for route, (summary, answers) in _HEALTH.items():
        schema = {"type": "object", "additionalProperties": True}
        doc["paths"][route] = {"get": {
            "tags": ["health"], "summary": summary, "security": [],
            "responses": {status: {"description": why,
                                   "content": {"application/json": {"schema": schema}}}
                          for status, why in answers.items()},
        }}  # fmt: skip
    for route in ("/livez", "/metrics"):
        for operation in doc["paths"].get(route, {}).values():
            operation["tags"] = ["health"]
    if "/livez" in doc["paths"]:
        doc["paths"]["/livez"]["get"]["security"] = []
    if "/metrics" in doc["paths"]:
        metrics = doc["paths"]["/metrics"]["get"]
        metrics["security"] = [{SECURITY_SCHEME: []}]
        metrics["responses"]["401"] = {"description": ERRORS["401"], "content": {
            "application/json": {"schema": _ref(ErrorBody)}}}  # fmt: skip
    return doc


def api_page(title: str = "nba decision API") -> bytes:
    """The HTML of ``/``: Swagger UI on ``/docs.json``, BentoML's bundled assets, nothing else
    loaded from anywhere (no tag manager, no fonts or badges from other hosts)."""
    options = {"url": "./docs.json", "dom_id": "#swagger-ui", "deepLinking": True,
               "persistAuthorization": True, "displayRequestDuration": True,
               "defaultModelsExpandDepth": 0}  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{title}</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script>
      window.onload = function () {{
        window.ui = SwaggerUIBundle(Object.assign({json.dumps(options)},
          {{presets: [SwaggerUIBundle.presets.apis]}}));
      }};
    </script>
  </body>
</html>
""".encode()
