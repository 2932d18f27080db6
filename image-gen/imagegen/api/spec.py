"""The `@operation` decorator that puts a route's OpenAPI description beside it, and the
building blocks those descriptions share (parameters, responses, error answers).

A route says what it is; `api.openapi` walks the app's url_map, asks each view for its
operations and assembles the document, so only the routes an app serves are described.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imagegen.imaging.formats import CONTENT_TYPES
from imagegen.imaging.thumbnails import MAX_EDGE, MIN_EDGE

Schema = dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
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


IMAGE_ID = path_param("image_id", "The image's id (a UUID, any case).", UUID_PATTERN)
JOB_ID = path_param("job_id", "The job's id (a UUID, any case).", UUID_PATTERN)
MODEL_ID = path_param("model_id", "A model id, e.g. gpt-image-2.")

ASYNC_DESCRIPTION = (
    "With `Prefer: respond-async` (RFC 7240) the answer is 202 at once, with `Location: "
    "/jobs/{job_id}` to poll and the queued job; `Prefer: wait=N` waits up to N seconds "
    "(at most 60) and answers as without the header if the job ended by then, else 202. "
    "Without Prefer the call is synchronous. `Webhook-URL` (with `Webhook-Secret`, unless "
    "the operator configured one) asks for a signed POST when the job ends."
)

# The request headers of a route that can answer asynchronously.
ASYNC_PARAMETERS = (
    header_param(
        "Prefer",
        "`respond-async` answers 202 at once; `wait=N` waits up to N seconds first.",
    ),
    header_param(
        "Webhook-URL",
        "With respond-async: an http(s) URL to POST the finished job to (Standard "
        "Webhooks signature: webhook-id, webhook-timestamp, webhook-signature).",
    ),
    header_param(
        "Webhook-Secret",
        "The HMAC-SHA256 signing secret for Webhook-URL, 16-256 printable characters "
        "(`whsec_<base64>` is decoded, as Standard Webhooks do).",
    ),
)

IDEMPOTENCY_KEY = header_param(
    "Idempotency-Key",
    "Makes a retry safe: the same key and body within 24 h returns the first answer "
    "without generating again (1-255 ASCII characters). The retry's own Prefer, "
    "Webhook-URL and Webhook-Secret are not applied; the Idempotent-Replay-Ignored header "
    "names those it sent.",
)


# --- bodies -------------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


def input_body(form_name: str, json_name: str) -> dict[str, Any]:
    """An edit or variation: multipart uploads, or stored images named by id in JSON."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": form(form_name),
            "application/json": {"schema": ref(json_name)},
        },
    }


def multipart_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": form(name)}}


def form(name: str) -> dict[str, Any]:
    """A multipart body: its schema, and image parts typed as the images they carry."""
    image_types = ", ".join(CONTENT_TYPES.values())
    return {
        "schema": ref(name),
        "encoding": {
            "image": {"contentType": image_types},
            "image[]": {"contentType": image_types},
            "mask": {"contentType": "image/png"},
        },
    }


# --- responses ----------------------------------------------------------------------------


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


def binary(description: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": with_request_id(headers),
        "content": {
            media: {"schema": {"type": "string", "contentMediaType": media}}
            for media in CONTENT_TYPES.values()
        },
    }


def bare(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": with_request_id(headers or {})}


def accepted_response() -> dict[str, Any]:
    """The 202 of a route that answered asynchronously."""
    return {
        "202": {
            "description": "Accepted as an asynchronous job (Prefer: respond-async).",
            "headers": with_request_id(
                {
                    "Location": header("/jobs/{job_id}: poll it.", required=True),
                    "Preference-Applied": header("`respond-async`.", required=True),
                    "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                }
            ),
            "content": {"application/json": {"schema": ref("PendingJob")}},
            "links": {
                "GetJob": {
                    "operationId": "getJob",
                    "parameters": {"job_id": "$response.body#/job_id"},
                },
                "GetJobEvents": {
                    "operationId": "getJobEvents",
                    "parameters": {"job_id": "$response.body#/job_id"},
                },
            },
        }
    }


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
    503: "Too many asynchronous jobs are waiting (QUEUE_FULL); retry after Retry-After.",
}


def errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    """The usual error answers for `statuses`, in the `schema` error shape."""
    responses = {}
    for status in statuses:
        description = _ERROR_DESCRIPTIONS[status]
        retried = status in (409, 429)
        responses[str(status)] = (
            retry_later(description, schema) if retried else json_response(description, schema)
        )
    return responses


def retry_later(description: str, schema: str = "Error") -> dict[str, Any]:
    """An error answer that carries Retry-After."""
    response = json_response(description, schema)
    response["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return response


def input_errors(*, schema: str = "Error", stored: bool = True) -> dict[str, Any]:
    """The errors of an edit or variation: generation's, plus unknown stored ids (404) and
    upload limits (413)."""
    statuses = (400, 404, 413, 415, 429, 500, 502, 504, 507) if stored else (400, 413, 415)
    responses = errors(*statuses, schema=schema)
    if not stored:
        responses.update(errors(429, 500, 502, 504, 507, schema=schema))
    else:
        responses["404"]["description"] = "No stored image has an `image_id` (IMAGE_NOT_FOUND)."
    responses["413"]["description"] = (
        "The multipart body is over IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES, one file over "
        "IMAGE_GEN_MAX_UPLOAD_BYTES, or a JSON body over 1 MiB."
    )
    responses["415"]["description"] = (
        "The body is neither multipart/form-data nor application/json."
        if stored
        else "The body is not multipart/form-data."
    )
    return responses


# A stored job and its images: the 200 of POST /generate, /edit and /variations.
STORED_JOB = json_response("The stored job and a URL for each image.", "Job")


# --- what GET and HEAD /images/{image_id} share --------------------------------------------


def _image_parameters() -> tuple[dict[str, Any], ...]:
    """The image id, the thumbnail query and the conditional request headers."""
    edge = {"type": "integer", "minimum": MIN_EDGE, "maximum": MAX_EDGE}
    return (
        IMAGE_ID,
        query(
            "width",
            "Answer a thumbnail at most this many pixels wide, keeping the aspect ratio and "
            "never enlarging (an image narrower than this comes at its own size). The "
            "thumbnail is cached: asking again is a file read. Without `width` and `height` "
            "the stored image itself is answered.",
            edge,
        ),
        query(
            "height",
            "Answer a thumbnail at most this many pixels high (with `width`: fit in both).",
            edge,
        ),
        query(
            "format",
            "The thumbnail's format (default: the image's own); only with `width` or `height`. "
            "JPEG thumbnails of transparent images are flattened on white.",
            {"type": "string", "enum": list(CONTENT_TYPES)},
        ),
        header_param("If-None-Match", "An ETag from an earlier answer: 304 if it matches."),
        header_param("Range", "A byte range, e.g. `bytes=0-99`: 206 with those bytes."),
    )


IMAGE_PARAMETERS = _image_parameters()
IMAGE_HEADERS = {
    "ETag": header(
        "The image id, quoted: a strong validator; for a thumbnail the id and the variant "
        '(`"<id>-w256.png"`).',
        required=True,
    ),
    "Cache-Control": header("How long a client may keep the image."),
    "Content-Disposition": header("inline, with the stored (or thumbnail's) file name."),
}
