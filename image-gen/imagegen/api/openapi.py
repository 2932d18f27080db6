"""GET /openapi.json: the service's OpenAPI 3.1 description, assembled from the routes.

Each route declares its operation beside itself (`api.spec.operation`); this module walks the
app's url_map, so only the routes the running app serves are described, and adds what every
route shares: token errors, Idempotency-Key, links between operations. The component
schemas come from `api.schemas` (request bodies read from the model catalog).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.routing import Rule

from imagegen import __version__, clock
from imagegen.access.auth import ADMIN_ENDPOINTS, PUBLIC_ENDPOINTS
from imagegen.api.parts import IDEMPOTENCY_KEY
from imagegen.api.schemas import components, error_codes
from imagegen.apidoc import Operation, errors, json_response, operation, operations_of
from imagegen.catalog.models import MODELS
from imagegen.catalog.spec import SHUT_DOWN, ModelSpec
from imagegen.services import services

bp = Blueprint("openapi", __name__)

_INFO = {
    "title": "image-gen",
    "version": __version__,
    "summary": "Generate images through the OpenAI Images API without holding its key.",
    "description": (
        "Agents and scripts call this service instead of OpenAI. POST /generate makes "
        "images and stores them as a job; GET /images/{image_id} serves them. "
        "GET /models lists the models with the sizes, counts and options each takes "
        "(the request schemas here are the union over models). The /v1 routes speak "
        "OpenAI's own request, response and error shapes, for the official SDKs. "
        "Every other error is JSON {error, status: 'failed', code}; every response "
        "carries an X-Request-ID header."
    ),
    "license": {"name": "MIT", "identifier": "MIT"},
}
_TAGS = [
    {"name": "images", "description": "Generate, fetch, list and delete images."},
    {"name": "jobs", "description": "One generation request and its images."},
    {"name": "models", "description": "The model catalog."},
    {"name": "service", "description": "Health, this description and the web page."},
    {"name": "openai-compatible", "description": "OpenAI's Images API shapes."},
]
_SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "A client token issued by the service's operator, when "
        "it runs with IMAGE_GEN_TOKENS_FILE. Never the OpenAI key.",
    }
}
_HEADERS = {
    "X-Request-ID": {
        "description": "The request's id (the caller's X-Request-ID if sane); "
        "the service log names it.",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


@bp.get("/openapi.json")
@operation(
    "openapi",
    tag="service",
    summary="This OpenAPI description",
    responses={
        "200": json_response("An OpenAPI 3.1 document.", schema={"type": "object"}),
        **errors(500),
    },
)
def openapi_json() -> ResponseReturnValue:
    """This description, for the routes this app serves."""
    return jsonify(build_spec(current_app, services().settings.default_model))


def build_spec(app: Flask, default_model: str, today: dt.date | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `app`: every route it serves, none it does not."""
    today = today or clock.today()
    models = [m for m in MODELS if m.status(today) != SHUT_DOWN]
    paths: dict[str, dict[str, Any]] = {}
    declared: list[tuple[dict[str, Any], Operation]] = []
    for rule, method, described in described_routes(app):
        document = described.document()
        _add_access(document, rule, method)
        paths.setdefault(openapi_path(rule), {})[method] = document
        declared.append((document, described))
    _add_links(declared)
    return {
        "openapi": "3.1.0",
        "info": _INFO,
        "tags": _TAGS,
        "paths": paths,
        # Tokens are optional: a service without a tokens file needs none.
        "security": [{"bearerAuth": []}, {}],
        "components": {
            "securitySchemes": _SECURITY_SCHEMES,
            "schemas": _schemas(declared, models, default_model),
            "headers": _HEADERS,
        },
    }


def _schemas(
    declared: list[tuple[dict[str, Any], Operation]], models: list[ModelSpec], default_model: str
) -> dict[str, Any]:
    """The service's component schemas, and those the described operations bring."""
    schemas = components(models, default_model)
    brought = {described.schemas for _, described in declared if described.schemas is not None}
    for bring in sorted(brought, key=lambda bring: bring.__qualname__):
        schemas.update(copy.deepcopy(dict(bring(models, default_model, error_codes()))))
    return schemas


def described_routes(app: Flask) -> Iterator[tuple[Rule, str, Operation]]:
    """(rule, lower-case method, operation) for every operation a served view declares."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        served = set(rule.methods or ()) - {"OPTIONS"}
        for described in operations_of(view):
            method = described.method or _only_method(rule, served)
            if method.upper() in served:
                yield rule, method, described


def _only_method(rule: Rule, served: set[str]) -> str:
    methods = served - {"HEAD"}
    if len(methods) != 1:
        raise ValueError(f"{rule.rule} serves {sorted(methods)}: name each operation's method")
    return next(iter(methods)).lower()


def openapi_path(rule: Rule) -> str:
    """The OpenAPI path of a Flask rule: /images/<path:image_id> is /images/{image_id}."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)


def _add_access(document: dict[str, Any], rule: Rule, method: str) -> None:
    """Token errors on every protected operation; Idempotency-Key on every POST."""
    if rule.endpoint in PUBLIC_ENDPOINTS:
        document["security"] = []
        return
    schema = "OpenAIError" if rule.rule.startswith("/v1/") else "Error"
    extra = [401]
    if method in ("post", "delete") or rule.endpoint in ADMIN_ENDPOINTS:
        extra.append(403)
    if method == "post":
        extra += [409, 422]
        document.setdefault("parameters", []).append(dict(IDEMPOTENCY_KEY))
    for status, response in errors(*extra, schema=schema).items():
        document["responses"].setdefault(status, response)


def _add_links(declared: list[tuple[dict[str, Any], Operation]]) -> None:
    """The follow-up calls each 200 answer allows, to operations this document has."""
    present = {document["operationId"] for document, _ in declared}
    for document, described in declared:
        chosen = {
            name: {"operationId": target, "parameters": dict(parameters)}
            for name, (target, parameters) in described.links.items()
            if target in present
        }
        if chosen:
            document["responses"]["200"]["links"] = chosen
