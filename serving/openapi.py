"""The OpenAPI document of the decision routes as they are served (``/docs.json``).

BentoML derives its document from the ``@bentoml.api`` signatures, but the decision routes are
validated by ``serving.api``'s models (by ``Gate``, on both request paths) and answer the
contract's error bodies, which BentoML's defaults (400/404/500, ``detail`` a string) do not
describe. ``decision_document`` therefore rewrites those three operations from the models: the
request body, the 200 answer, every error status ``Gate`` answers, and the ``X-API-Key``
security scheme. The document is OpenAPI 3.1, whose schemas are the JSON Schema pydantic
writes (``null`` as a type), so that nullable answers are described as they are.

Only the decision routes are touched; titles and page branding are left to BentoML's document.
"""

from __future__ import annotations

import copy
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

#: Route -> (request model, answer model).
ROUTES: Final[dict[str, tuple[type[BaseModel], type[BaseModel]]]] = {
    "/decide": (DecideRequest, DecideResponse),
    "/decide_batch": (DecideBatchRequest, DecideBatchResponse),
    "/events": (Event, EventAck),
}
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
        operation = doc["paths"][route]["post"]
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
    return doc
