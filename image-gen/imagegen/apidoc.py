"""The `@operation` decorator that puts a route's OpenAPI description beside the route, and
the generic building blocks of those descriptions (parameters, answers, error answers).

Imports nothing of ours (as errors.py does), so any blueprint can describe itself;
`api.openapi` walks the app's url_map, asks each view for its operations and assembles the
document, so only the routes an app serves are described.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

Schema = dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])
_ATTRIBUTE = "openapi_operations"


@dataclass(frozen=True)
class Operation:
    """One OpenAPI operation of a view; `method` None means the route's only method."""

    operation_id: str
    tag: str
    summary: str
    responses: Mapping[str, Any]
    description: str | None = None
    parameters: Sequence[Mapping[str, Any]] = ()
    body: Mapping[str, Any] | None = None
    method: str | None = None
    # Follow-ups its 200 answer allows: name -> (target operationId, parameters).
    links: Mapping[str, tuple[str, Mapping[str, str]]] = field(default_factory=dict)
    # The component schemas it brings beyond the service's own: (models, default, codes) -> them.
    schemas: Callable[[list[Any], str, list[str]], Mapping[str, Any]] | None = None

    def document(self) -> dict[str, Any]:
        """The operation object, a fresh copy the assembler may add to."""
        result: dict[str, Any] = {
            "tags": [self.tag],
            "operationId": self.operation_id,
            "summary": self.summary,
        }
        if self.description is not None:
            result["description"] = self.description
        if self.parameters:
            result["parameters"] = list(self.parameters)
        if self.body is not None:
            result["requestBody"] = self.body
        result["responses"] = dict(self.responses)
        return copy.deepcopy(result)


def operation(operation_id: str, **fields: Any) -> Callable[[View], View]:
    """Describe the decorated view (`Operation`'s fields); stack one per method if several."""
    described = Operation(operation_id, **fields)

    def attach(view: View) -> View:
        setattr(view, _ATTRIBUTE, (*operations_of(view), described))
        return view

    return attach


def operations_of(view: Callable[..., Any] | None) -> tuple[Operation, ...]:
    """The operations a view declared; none for an undescribed one."""
    return tuple(getattr(view, _ATTRIBUTE, ()))


# --- parameters ---------------------------------------------------------------------------


def path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: Schema = {"type": "string", "minLength": 1}
    if pattern:
        schema = {"type": "string", "pattern": pattern}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query(name: str, description: str, schema: Schema) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def header_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


# --- answers ------------------------------------------------------------------------------


def with_request_id(headers: dict[str, Any]) -> dict[str, Any]:
    return {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}, **headers}


def header(description: str, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def json_response(
    description: str, name: str | None = None, *, schema: Schema | None = None
) -> dict[str, Any]:
    return {
        "description": description,
        "headers": with_request_id({}),
        "content": {"application/json": {"schema": schema or ref(str(name))}},
    }


def text_response(description: str, media_type: str) -> dict[str, Any]:
    """A 200 that is text of `media_type` (HTML, Prometheus' format)."""
    return {
        "description": description,
        "headers": with_request_id({}),
        "content": {media_type: {"schema": {"type": "string"}}},
    }


def bare(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": with_request_id(headers or {})}


_ERROR_DESCRIPTIONS = {
    401: "Client tokens are configured and the request has none (AUTHENTICATION_REQUIRED) "
    "or an unknown one (INVALID_TOKEN). Send 'Authorization: Bearer <token>'.",
    403: "The token may not do this (PERMISSION_DENIED): an admin token generating, a model, "
    "size, quality or count the token is not allowed, or deleting another token's job.",
    409: "The first request with this Idempotency-Key is still running (IDEMPOTENCY_KEY_IN_USE); "
    "retry after Retry-After.",
    422: "This Idempotency-Key was used with a different request (IDEMPOTENCY_KEY_REUSED).",
    400: "Invalid request: malformed JSON, a field the model does not take, a value outside "
    "its range, a shut-down model (VALIDATION_ERROR, naming the replacement), or a prompt "
    "the upstream safety system refused (CONTENT_POLICY_VIOLATION: change the prompt).",
    404: "No such resource.",
    413: "The body is larger than the service accepts.",
    415: "The body is not sent as application/json.",
    416: "The requested range is outside the image.",
    429: "OpenAI's rate limit was reached (RATE_LIMIT_EXCEEDED), or a spending cap the key "
    "holder set (QUOTA_EXCEEDED); retry after Retry-After seconds.",
    500: "The service cannot generate (no key configured, key rejected, no quota) or failed "
    "unexpectedly.",
    502: "The upstream failed after retries, or sent an unusable answer.",
    504: "The upstream did not answer in time.",
    507: "The image store is full; nothing was saved.",
    503: "Not now, and nothing was done: too many asynchronous jobs are waiting (QUEUE_FULL), "
    "the image store (STORAGE_UNAVAILABLE: the S3 bucket) or the database "
    "(DATABASE_UNAVAILABLE: PostgreSQL) cannot be reached; retry after Retry-After.",
}


def errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    """The usual error answers for `statuses`, in the `schema` error shape."""
    responses = {}
    for status in statuses:
        description = _ERROR_DESCRIPTIONS[status]
        retried = status in (409, 429, 503)
        responses[str(status)] = (
            retry_later(description, schema) if retried else json_response(description, schema)
        )
    return responses


def retry_later(description: str, schema: str = "Error") -> dict[str, Any]:
    """An error answer that carries Retry-After."""
    response = json_response(description, schema)
    response["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return response
