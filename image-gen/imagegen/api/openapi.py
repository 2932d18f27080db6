"""GET /openapi.json: the service's OpenAPI 3.1 description, built as data.

Request schemas, model enums and option values come from the model catalog, and error codes
from the error classes, so the description follows the code. Only routes the running app
serves are described.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from imagegen import __version__, clock
from imagegen.catalog.models import MODELS
from imagegen.catalog.spec import SHUT_DOWN, Choice, InputSpec, IntRange, ModelSpec
from imagegen.compat.openai import RESPONSE_FORMATS
from imagegen.errors import HTTP_CODES, ServiceError
from imagegen.imaging.formats import CONTENT_TYPES
from imagegen.imaging.inputs import OPERATIONS
from imagegen.imaging.request import end_user_schema
from imagegen.imaging.thumbnails import MAX_EDGE, MIN_EDGE
from imagegen.services import services
from imagegen.settings import PROVIDERS

bp = Blueprint("openapi", __name__)

Schema = dict[str, Any]

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# What a `size` can look like for some model; GET /models/{id} has each model's rule.
SIZE_PATTERN = "^(auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4})$"
FORMATS = list(CONTENT_TYPES)


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    """This description, for the routes this app serves."""
    return jsonify(build_spec(current_app, services().settings.default_model))


def build_spec(app: Flask, default_model: str, today: dt.date | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `app`: every route it serves, none it does not."""
    today = today or clock.today()
    models = [m for m in MODELS if m.status(today) != SHUT_DOWN]
    served = {rule.endpoint for rule in app.url_map.iter_rules()}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint, path, method, operation in _operations():
        if endpoint in served:
            paths.setdefault(path, {})[method] = operation
    _add_links(paths)
    _add_access(paths)
    return {
        "openapi": "3.1.0",
        "info": {
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
        },
        "tags": [
            {"name": "images", "description": "Generate, fetch, list and delete images."},
            {"name": "jobs", "description": "One generation request and its images."},
            {"name": "models", "description": "The model catalog."},
            {"name": "service", "description": "Health, this description and the web page."},
            {"name": "openai-compatible", "description": "OpenAI's Images API shapes."},
        ],
        "paths": paths,
        # Tokens are optional: a service without a tokens file needs none.
        "security": [{"bearerAuth": []}, {}],
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client token issued by the service's operator, when "
                    "it runs with IMAGE_GEN_TOKENS_FILE. Never the OpenAI key.",
                }
            },
            "schemas": _schemas(models, default_model),
            "headers": {
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
            },
        },
    }


# --- operations ---------------------------------------------------------------------------


def _operations() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(Flask endpoint, OpenAPI path, method, operation) for every route this app may have."""
    image_id = _path_param("image_id", "The image's id (a UUID, any case).", UUID_PATTERN)
    job_id = _path_param("job_id", "The job's id (a UUID, any case).", UUID_PATTERN)

    yield (
        "generate.generate",
        "/generate",
        "post",
        {
            "tags": ["images"],
            "operationId": "generate",
            "summary": "Generate images for a prompt and store them as one job",
            "description": "The body is checked against the model's catalog entry: fields the "
            "model does not take, values outside its ranges and shut-down models are refused "
            "with 400 before any upstream call. A deprecated model works and adds `warnings`. "
            + ASYNC_DESCRIPTION,
            "parameters": async_parameters(),
            "requestBody": _json_body("GenerateRequest"),
            "responses": {
                "200": _json("The stored job and a URL for each image.", "Job"),
                **accepted_response(),
                **_errors(400, 413, 415, 429, 500, 502, 504, 507),
                **_errors(503),
            },
        },
    )
    yield (
        "edits.edit",
        "/edit",
        "post",
        {
            "tags": ["images"],
            "operationId": "editImages",
            "summary": "Edit images with a prompt and store the results as one job",
            "description": "The input images are uploaded as multipart/form-data (`image`, "
            "repeated for several; `image[]` also works) or named by id in a JSON body "
            "(`image_id` or `image_ids`, images this service stores). An optional `mask` "
            "(or `mask_id`) is a PNG with an alpha channel and the first image's dimensions; "
            "its transparent areas are edited. Uploads are recognised by content (PNG, JPEG, "
            "WebP), and each model's limits (GET /models/{model_id}: `edits`) are checked "
            "before any upstream call; a model that cannot edit is a 400 naming those that "
            "can. The job's metadata records the inputs' ids or digests as `source`.",
            "parameters": async_parameters(),
            "requestBody": _input_body("EditForm", "EditRequest"),
            "responses": {
                "200": _json("The stored job and a URL for each image.", "Job"),
                **accepted_response(),
                **_input_errors(),
                **_errors(503),
            },
        },
    )
    yield (
        "edits.variations",
        "/variations",
        "post",
        {
            "tags": ["images"],
            "operationId": "createVariations",
            "summary": "Variations of one image (dall-e-2), stored as one job",
            "description": "One square PNG, uploaded as multipart/form-data `image` or named "
            "by `image_id` in a JSON body; no prompt. Only models whose catalog entry has "
            "`variations` take it.",
            "parameters": async_parameters(),
            "requestBody": _input_body("VariationForm", "VariationRequest"),
            "responses": {
                "200": _json("The stored job and a URL for each image.", "Job"),
                **accepted_response(),
                **_input_errors(),
                **_errors(503),
            },
        },
    )
    yield (
        "images.list_images",
        "/images",
        "get",
        {
            "tags": ["images"],
            "operationId": "listImages",
            "summary": "List stored images, newest job first",
            "parameters": [
                _query(
                    "limit",
                    "Images per page; empty means the default.",
                    {
                        "anyOf": [
                            {"type": "integer", "minimum": 1, "maximum": 200},
                            {"const": ""},
                        ],
                        "default": 50,
                    },
                ),
                _query(
                    "cursor",
                    "The `next_cursor` of the previous page; any other value is refused.",
                    {"type": "string", "maxLength": 512},
                ),
                _query(
                    "job_id",
                    "Only this job's images.",
                    {"type": "string", "pattern": UUID_PATTERN},
                ),
            ],
            "responses": {
                "200": _json("A page of images.", "ImagePage"),
                **_errors(400, 500),
            },
        },
    )
    image_headers = {
        "ETag": _header(
            "The image id, quoted: a strong validator; for a thumbnail the id and the variant "
            '(`"<id>-w256.png"`).',
            required=True,
        ),
        "Cache-Control": _header("How long a client may keep the image."),
        "Content-Disposition": _header("inline, with the stored (or thumbnail's) file name."),
    }
    edge = {"type": "integer", "minimum": MIN_EDGE, "maximum": MAX_EDGE}
    thumbnail = [
        _query(
            "width",
            "Answer a thumbnail at most this many pixels wide, keeping the aspect ratio and "
            "never enlarging (an image narrower than this comes at its own size). The "
            "thumbnail is cached: asking again is a file read. Without `width` and `height` "
            "the stored image itself is answered.",
            edge,
        ),
        _query(
            "height",
            "Answer a thumbnail at most this many pixels high (with `width`: fit in both).",
            edge,
        ),
        _query(
            "format",
            "The thumbnail's format (default: the image's own); only with `width` or `height`. "
            "JPEG thumbnails of transparent images are flattened on white.",
            {"type": "string", "enum": FORMATS},
        ),
    ]
    conditional = [
        _header_param("If-None-Match", "An ETag from an earlier answer: 304 if it matches."),
        _header_param("Range", "A byte range, e.g. `bytes=0-99`: 206 with those bytes."),
    ]
    yield (
        "images.get_image",
        "/images/{image_id}",
        "get",
        {
            "tags": ["images"],
            "operationId": "getImage",
            "summary": "The image's bytes, or a thumbnail of it",
            "description": "Other query parameters are ignored.",
            "parameters": [image_id, *thumbnail, *conditional],
            "responses": {
                "200": _binary("The image (or thumbnail), typed by its format.", image_headers),
                "206": _binary("The requested byte range.", image_headers),
                "304": _bare("Not modified: the If-None-Match ETag matches."),
                "400": _json(
                    "A bad thumbnail parameter: `width` or `height` not a whole number from "
                    f"{MIN_EDGE} to {MAX_EDGE}, an unknown `format`, "
                    "`format` alone, or a parameter given twice (VALIDATION_ERROR, with `field`).",
                    "Error",
                ),
                **_errors(404, 416, 500),
            },
        },
    )
    yield (
        "images.get_image",
        "/images/{image_id}",
        "head",
        {
            "tags": ["images"],
            "operationId": "headImage",
            "summary": "The image's headers without its bytes",
            "parameters": [image_id, *thumbnail, *conditional],
            "responses": {
                "200": _bare("The image exists.", image_headers),
                "206": _bare("The requested byte range exists.", image_headers),
                "304": _bare("Not modified: the If-None-Match ETag matches."),
                "400": _bare("A bad thumbnail parameter."),
                "404": _bare("No image has this id."),
                "416": _bare("The range is outside the image."),
                "500": _bare("Unexpected failure."),
            },
        },
    )
    yield (
        "images.delete_image",
        "/images/{image_id}",
        "delete",
        {
            "tags": ["images"],
            "operationId": "deleteImage",
            "summary": "Delete one image",
            "description": "The file is removed and the image is marked deleted in its job.",
            "parameters": [image_id],
            "responses": {
                "200": _json("The image is gone.", "DeletedImage"),
                **_errors(404, 500, 507),
            },
        },
    )
    yield (
        "jobs.show_job",
        "/jobs/{job_id}",
        "get",
        {
            "tags": ["jobs"],
            "operationId": "getJob",
            "summary": "A job: stored, or still queued or running, or failed",
            "description": "A completed job as POST /generate answered it, with the request; "
            "deleted images have `status: deleted` and no URL. An asynchronous job that is "
            "queued or running (or failed) is a PendingJob: progress, previews, the error; "
            "poll it after Retry-After seconds, or follow /jobs/{job_id}/events.",
            "parameters": [job_id],
            "responses": {
                "200": {
                    **_json("The job.", schema={"oneOf": [_ref("Job"), _ref("PendingJob")]}),
                    "headers": _with_request_id(
                        {"Retry-After": _header("While queued or running: seconds to wait.")}
                    ),
                },
                **_errors(404, 500),
            },
        },
    )
    yield (
        "jobs.delete_job",
        "/jobs/{job_id}",
        "delete",
        {
            "tags": ["jobs"],
            "operationId": "deleteJob",
            "summary": "Delete a whole job with its images",
            "parameters": [job_id],
            "responses": {
                "200": _json("The job is gone.", "DeletedJob"),
                **_errors(404, 500),
                "409": _json(
                    "The job is queued or running (JOB_NOT_FINISHED): delete it once it ends.",
                    "Error",
                ),
            },
        },
    )
    yield (
        "jobs.job_events",
        "/jobs/{job_id}/events",
        "get",
        {
            "tags": ["jobs"],
            "operationId": "getJobEvents",
            "summary": "A job's progress as Server-Sent Events",
            "description": "Events, each with an `id` and JSON `data`: `status` (queued, "
            "running, completed, failed, with progress), `partial_image` (a preview the "
            "upstream streamed: `image`, `partial_image_index`, `url`), `image` (one image of "
            "the job is finished: `url`, `images_done`, `count`), then `completed` (the Job) "
            "or `failed` (the PendingJob with its error), after which the stream ends. "
            "Comment lines keep the connection open. A stored job answers one `completed` "
            "event. Reconnect with Last-Event-ID (or `last_event_id`) to get only newer "
            "events; the stream also ends after 15 minutes.",
            "parameters": [
                job_id,
                _header_param("Last-Event-ID", "The id of the last event received."),
                _query(
                    "last_event_id",
                    "As Last-Event-ID, for clients that cannot set headers.",
                    {"type": "integer", "minimum": 0},
                ),
            ],
            "responses": {
                "200": {
                    "description": "text/event-stream until the job ends; each event as "
                    "described (its `data` is one line of JSON).",
                    "headers": _with_request_id({}),
                    "content": {"text/event-stream": {"schema": _ref("JobEvent")}},
                },
                **_errors(404, 500),
                "429": _retry_later(
                    "This token already has IMAGE_GEN_MAX_STREAMS_PER_TOKEN event streams "
                    "open on this worker (TOO_MANY_STREAMS, `scope: token`): close one or poll "
                    "GET /jobs/{job_id}, and retry after Retry-After."
                ),
                "503": _retry_later(
                    "This worker already serves IMAGE_GEN_MAX_STREAMS event streams "
                    "(TOO_MANY_STREAMS, `scope: worker`): poll GET /jobs/{job_id} instead, or "
                    "retry after Retry-After."
                ),
            },
        },
    )
    yield (
        "jobs.job_preview",
        "/jobs/{job_id}/previews/{name}",
        "get",
        {
            "tags": ["jobs"],
            "operationId": "getJobPreview",
            "summary": "A running job's partial preview, or an image finished before the job",
            "description": "The URLs are in the job's `previews` and its events. Previews are "
            "kept with the job's record (IMAGE_GEN_JOB_RETENTION); the stored images are at "
            "/images/{image_id} once the job is completed.",
            "parameters": [
                job_id,
                _path_param(
                    "name",
                    "The preview's name, as in its URL.",
                    "^(p[0-9]{1,2}-[0-9]|i[0-9]{1,2})[.](png|jpg|webp)$",
                ),
            ],
            "responses": {
                "200": _binary("The preview, typed by its format.", {}),
                **_errors(404, 500),
            },
        },
    )
    yield (
        "health.health",
        "/health",
        "get",
        {
            "tags": ["service"],
            "operationId": "health",
            "summary": "Is the service up and configured (never the key)",
            "responses": {
                "200": _json("Healthy.", "Health"),
                "503": _json("The image store is not writable.", "Health"),
                **_errors(500),
            },
        },
    )
    yield (
        "models.list_models",
        "/models",
        "get",
        {
            "tags": ["models"],
            "operationId": "listModels",
            "summary": "Every model with its lifecycle, sizes, counts and options",
            "responses": {
                "200": _json("The catalog and the default model.", "ModelList"),
                **_errors(500),
            },
        },
    )
    yield (
        "models.show_model",
        "/models/{model_id}",
        "get",
        {
            "tags": ["models"],
            "operationId": "getModel",
            "summary": "One model's catalog entry",
            "parameters": [_path_param("model_id", "A model id, e.g. gpt-image-2.")],
            "responses": {
                "200": _json("The model.", "Model"),
                **_errors(404, 500),
            },
        },
    )
    yield (
        "openapi.openapi_json",
        "/openapi.json",
        "get",
        {
            "tags": ["service"],
            "operationId": "openapi",
            "summary": "This OpenAPI description",
            "responses": {
                "200": _json("An OpenAPI 3.1 document.", schema={"type": "object"}),
                **_errors(500),
            },
        },
    )
    yield (
        "usage.usage",
        "/usage",
        "get",
        {
            "tags": ["service"],
            "operationId": "getUsage",
            "summary": "What the caller made and spent in the current windows, against its caps",
            "description": "Images in the last hour and day and US dollars in the last day "
            "(sliding windows), with each cap and what is left. A client token sees its own "
            "figures and the service's; an admin token sees every token's.",
            "responses": {"200": _json("The usage figures.", "Usage"), **_errors(500)},
        },
    )
    yield "mcp.handle", "/mcp", "post", _mcp_operation()
    yield (
        "metrics.scrape",
        "/metrics",
        "get",
        {
            "tags": ["service"],
            "operationId": "metrics",
            "summary": "Prometheus metrics, summed over every worker process",
            "responses": {
                "200": {
                    "description": "Prometheus' text exposition format, version 0.0.4.",
                    "headers": _with_request_id({}),
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(500),
            },
        },
    )
    yield (
        "web.index",
        "/",
        "get",
        {
            "tags": ["service"],
            "operationId": "webPage",
            "summary": "The web page: a form to generate and a gallery of recent images",
            "responses": {
                "200": {
                    "description": "An HTML page.",
                    "headers": _with_request_id({}),
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                **_errors(500),
            },
        },
    )
    yield (
        "compat.create_image",
        "/v1/images/generations",
        "post",
        {
            "tags": ["openai-compatible"],
            "operationId": "createImageOpenAI",
            "summary": "OpenAI's POST /v1/images/generations",
            "description": "Validated like POST /generate (`n` is `count`) and stored as a job. "
            "GPT Image models answer `b64_json`; DALL-E models answer `url` (an absolute URL "
            "of GET /images/{image_id} on this service) unless `response_format` is "
            "`b64_json`. `safety_identifier` (or `user`) is sent upstream as given. Errors use "
            "OpenAI's shape; `code` is the service's error code in lower case. Failures a "
            "retry cannot fix carry `x-should-retry: false`.",
            "requestBody": _json_body("OpenAIImagesRequest"),
            "responses": {
                "200": _json("The images.", "OpenAIImagesResponse"),
                **_errors(400, 413, 415, 429, 500, 502, 504, 507, schema="OpenAIError"),
            },
        },
    )
    yield (
        "compat.create_edit",
        "/v1/images/edits",
        "post",
        {
            "tags": ["openai-compatible"],
            "operationId": "createImageEditOpenAI",
            "summary": "OpenAI's POST /v1/images/edits (multipart)",
            "description": "Validated like POST /edit (`n` is `count`) and stored as a job; "
            "one image as `image`, several as `image[]`, and an optional `mask`. Answers and "
            "errors as POST /v1/images/generations.",
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": _form("OpenAIEditForm")},
            },
            "responses": {
                "200": _json("The images.", "OpenAIImagesResponse"),
                **_input_errors(schema="OpenAIError", stored=False),
            },
        },
    )
    yield (
        "compat.create_variation",
        "/v1/images/variations",
        "post",
        {
            "tags": ["openai-compatible"],
            "operationId": "createImageVariationOpenAI",
            "summary": "OpenAI's POST /v1/images/variations (multipart, dall-e-2)",
            "description": "Validated like POST /variations (`n` is `count`) and stored as a "
            "job. Answers `url` unless `response_format` is `b64_json`.",
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": _form("OpenAIVariationForm")},
            },
            "responses": {
                "200": _json("The images.", "OpenAIImagesResponse"),
                **_input_errors(schema="OpenAIError", stored=False),
            },
        },
    )
    yield (
        "compat.list_models",
        "/v1/models",
        "get",
        {
            "tags": ["openai-compatible"],
            "operationId": "listModelsOpenAI",
            "summary": "OpenAI's GET /v1/models: the models one may ask for",
            "responses": {
                "200": _json("The models.", "OpenAIModelList"),
                **_errors(500, schema="OpenAIError"),
            },
        },
    )
    yield (
        "compat.retrieve_model",
        "/v1/models/{model_id}",
        "get",
        {
            "tags": ["openai-compatible"],
            "operationId": "retrieveModelOpenAI",
            "summary": "OpenAI's GET /v1/models/{model}",
            "parameters": [_path_param("model_id", "A model id, e.g. gpt-image-2.")],
            "responses": {
                "200": _json("The model.", "OpenAIModel"),
                **_errors(404, 500, schema="OpenAIError"),
            },
        },
    )


def _mcp_operation() -> dict[str, Any]:
    """POST /mcp: MCP's Streamable HTTP transport (the protocol itself is in the README)."""
    from imagegen.mcp.server import PROTOCOL_VERSIONS

    rpc: Schema = {
        "type": "object",
        "required": ["jsonrpc", "id"],
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "id": {"type": ["string", "integer", "null"]},
            "result": {"type": "object"},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            },
        },
    }
    return {
        "tags": ["service"],
        "operationId": "mcp",
        "summary": "The Model Context Protocol (Streamable HTTP) for agent hosts",
        "description": "One JSON-RPC 2.0 message per POST (or a batch under MCP 2025-03-26, the "
        "revision assumed without MCP-Protocol-Version), answered with one JSON object (an "
        "array for a batch), or 202 with no body when it holds only notifications or "
        "responses. JSON-RPC errors, a malformed body's included, are 200 answers with a "
        "JSON-RPC `error`. Tools: list_models, generate_image, edit_image, get_job, "
        "list_images, delete_image, each calling this API as the caller's token; resources: "
        "stored images by URL. Stateless: no Mcp-Session-Id; no GET stream (405).",
        "parameters": [
            {
                "name": "MCP-Protocol-Version",
                "in": "header",
                "required": False,
                "description": "The revision agreed in `initialize`; without it 2025-03-26.",
                "schema": {"type": "string", "enum": list(PROTOCOL_VERSIONS)},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"description": "A JSON-RPC request, notification or response."}
                }
            },
        },
        "responses": {
            "200": _json(
                "The JSON-RPC response (an array of them for a batch).",
                schema={"oneOf": [rpc, {"type": "array", "minItems": 1, "items": rpc}]},
            ),
            "202": _bare("Only notifications or responses: accepted, no body."),
            "400": _json(
                "An MCP-Protocol-Version this server does not speak, or a malformed "
                "Idempotency-Key (VALIDATION_ERROR).",
                "Error",
            ),
            "403": _json(
                "An Origin header naming another site (PERMISSION_DENIED): DNS rebinding "
                "protection.",
                "Error",
            ),
            "406": _json("Accept does not take application/json (NOT_ACCEPTABLE).", "Error"),
            **_errors(413, 415, 500),
        },
    }


# Follow-up calls an image's or job's id allows, for clients and for stateful testing.
_LINKS = {
    ("/generate", "post"): {
        "GetImage": ("getImage", {"image_id": "$response.body#/images/0/id"}),
        "DeleteImage": ("deleteImage", {"image_id": "$response.body#/images/0/id"}),
        "GetJob": ("getJob", {"job_id": "$response.body#/job_id"}),
        "DeleteJob": ("deleteJob", {"job_id": "$response.body#/job_id"}),
    },
    ("/images", "get"): {
        "NextPage": ("listImages", {"cursor": "$response.body#/next_cursor"}),
    },
}


def _add_links(paths: dict[str, dict[str, Any]]) -> None:
    present = {op["operationId"] for item in paths.values() for op in item.values()}
    for (path, method), links in _LINKS.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        chosen = {
            name: {"operationId": target, "parameters": parameters}
            for name, (target, parameters) in links.items()
            if target in present
        }
        if chosen:
            operation["responses"]["200"]["links"] = chosen


# --- building blocks ----------------------------------------------------------------------


# Served to anyone: the health check and the web page's shell (see auth.PUBLIC_ENDPOINTS).
_PUBLIC_PATHS = frozenset({"/health", "/"})


def _add_access(paths: dict[str, dict[str, Any]]) -> None:
    """Token errors on every protected operation; Idempotency-Key on every POST."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path in _PUBLIC_PATHS:
                operation["security"] = []
                continue
            schema = "OpenAIError" if path.startswith("/v1/") else "Error"
            responses = operation["responses"]
            extra = [401]
            if method in ("post", "delete") or path == "/metrics":
                extra.append(403)
            if method == "post":
                extra += [409, 422]
                operation.setdefault("parameters", []).append(
                    _header_param(
                        "Idempotency-Key",
                        "Makes a retry safe: the same key and body within 24 h returns the "
                        "first answer without generating again (1-255 ASCII characters). "
                        "The retry's own Prefer, Webhook-URL and Webhook-Secret are not "
                        "applied; the Idempotent-Replay-Ignored header names those it sent.",
                    )
                )
            for status, response in _errors(*extra, schema=schema).items():
                responses.setdefault(status, response)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null (the service treats null as "not given" for these fields)."""
    result = dict(schema)
    result["type"] = [schema["type"], "null"]
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


def _with_request_id(headers: dict[str, Any]) -> dict[str, Any]:
    return {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}, **headers}


def _header(description: str, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def _json(
    description: str, name: str | None = None, *, schema: Schema | None = None
) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _with_request_id({}),
        "content": {"application/json": {"schema": schema or _ref(str(name))}},
    }


def _binary(description: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _with_request_id(headers),
        "content": {
            media: {"schema": {"type": "string", "contentMediaType": media}}
            for media in CONTENT_TYPES.values()
        },
    }


def _bare(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": _with_request_id(headers or {})}


def _json_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
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


def _query(name: str, description: str, schema: Schema) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _header_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
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


ASYNC_DESCRIPTION = (
    "With `Prefer: respond-async` (RFC 7240) the answer is 202 at once, with `Location: "
    "/jobs/{job_id}` to poll and the queued job; `Prefer: wait=N` waits up to N seconds "
    "(at most 60) and answers as without the header if the job ended by then, else 202. "
    "Without Prefer the call is synchronous. `Webhook-URL` (with `Webhook-Secret`, unless "
    "the operator configured one) asks for a signed POST when the job ends."
)


def async_parameters() -> list[dict[str, Any]]:
    """The request headers of a route that can answer asynchronously."""
    return [
        _header_param(
            "Prefer",
            "`respond-async` answers 202 at once; `wait=N` waits up to N seconds first.",
        ),
        _header_param(
            "Webhook-URL",
            "With respond-async: an http(s) URL to POST the finished job to (Standard "
            "Webhooks signature: webhook-id, webhook-timestamp, webhook-signature).",
        ),
        _header_param(
            "Webhook-Secret",
            "The HMAC-SHA256 signing secret for Webhook-URL, 16-256 printable characters "
            "(`whsec_<base64>` is decoded, as Standard Webhooks do).",
        ),
    ]


def accepted_response() -> dict[str, Any]:
    """The 202 of a route that answered asynchronously."""
    return {
        "202": {
            "description": "Accepted as an asynchronous job (Prefer: respond-async).",
            "headers": _with_request_id(
                {
                    "Location": _header("/jobs/{job_id}: poll it.", required=True),
                    "Preference-Applied": _header("`respond-async`.", required=True),
                    "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                }
            ),
            "content": {"application/json": {"schema": _ref("PendingJob")}},
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


def _input_errors(*, schema: str = "Error", stored: bool = True) -> dict[str, Any]:
    """The errors of an edit or variation: generation's, plus unknown stored ids (404) and
    upload limits (413)."""
    statuses = (400, 404, 413, 415, 429, 500, 502, 504, 507) if stored else (400, 413, 415)
    responses = _errors(*statuses, schema=schema)
    if not stored:
        responses.update(_errors(429, 500, 502, 504, 507, schema=schema))
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


def _input_body(form: str, json_body: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": _form(form),
            "application/json": {"schema": _ref(json_body)},
        },
    }


def _form(name: str) -> dict[str, Any]:
    """A multipart body: its schema, and image parts typed as the images they carry."""
    image_types = ", ".join(CONTENT_TYPES.values())
    return {
        "schema": _ref(name),
        "encoding": {
            "image": {"contentType": image_types},
            "image[]": {"contentType": image_types},
            "mask": {"contentType": "image/png"},
        },
    }


def _errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    responses = {}
    for status in statuses:
        description = _ERROR_DESCRIPTIONS[status]
        retried = status in (409, 429)
        responses[str(status)] = (
            _retry_later(description, schema) if retried else _json(description, schema)
        )
    return responses


def _retry_later(description: str, schema: str = "Error") -> dict[str, Any]:
    """An error answer that carries Retry-After."""
    response = _json(description, schema)
    response["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return response


# --- schemas ------------------------------------------------------------------------------


def error_codes() -> list[str]:
    """Every `code` the service can answer: its error classes' and Werkzeug errors'."""
    codes = {"SERVICE_ERROR", "HTTP_ERROR", *HTTP_CODES.values()}
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


def _schemas(models: list[ModelSpec], default_model: str) -> dict[str, Schema]:
    codes = error_codes()
    string, integer, boolean = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    date = {"type": ["string", "null"], "format": "date"}
    return {
        "Error": {
            "type": "object",
            "description": "Every error outside /v1. Some carry more fields: `field` (the "
            "request field at fault), `replacement` (a model to use instead), "
            "`retry_after` (seconds).",
            "required": ["error", "status", "code"],
            "properties": {
                "error": {"type": "string", "description": "What went wrong, for a person."},
                "status": {"const": "failed"},
                "code": {"type": "string", "enum": codes},
                "field": string,
                "replacement": {"type": ["string", "null"]},
                "retry_after": integer,
            },
        },
        "OpenAIError": {
            "type": "object",
            "description": "OpenAI's error shape, on the /v1 routes.",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": string,
                        "type": {
                            "type": "string",
                            "enum": [
                                "invalid_request_error",
                                "image_generation_user_error",
                                "requests",
                                "server_error",
                            ],
                        },
                        "param": {"type": ["string", "null"]},
                        "code": {"type": "string", "enum": [code.lower() for code in codes]},
                    },
                }
            },
        },
        "GenerateRequest": generate_request_schema(models, default_model),
        "OpenAIImagesRequest": openai_request_schema(models, default_model),
        "EditForm": input_form_schema(models, default_model, "edit"),
        "EditRequest": input_json_schema(models, default_model, "edit"),
        "VariationForm": input_form_schema(models, default_model, "variation"),
        "VariationRequest": input_json_schema(models, default_model, "variation"),
        "OpenAIEditForm": input_form_schema(models, default_model, "edit", openai=True),
        "OpenAIVariationForm": input_form_schema(models, default_model, "variation", openai=True),
        "StoredImage": {
            "type": "object",
            "required": [
                "id",
                "url",
                "prompt",
                "model",
                "size",
                "width",
                "height",
                "format",
                "revised_prompt",
                "status",
            ],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "url": {
                    "type": ["string", "null"],
                    "description": "/images/{id}; null once the image is deleted.",
                },
                "thumbnail_url": {
                    "type": ["string", "null"],
                    "description": "/images/{id}?width=256: a small copy to look at cheaply; "
                    "null once the image is deleted.",
                },
                "prompt": string,
                "model": string,
                "size": {"type": "string", "description": "The size asked for (WxH)."},
                "width": integer,
                "height": integer,
                "format": {"type": "string", "enum": FORMATS},
                "revised_prompt": {"type": ["string", "null"]},
                "status": {"type": "string", "enum": ["available", "deleted"]},
            },
        },
        "Job": {
            "type": "object",
            "required": ["job_id", "status", "created_at", "model", "placeholder", "images"],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"const": "completed"},
                "created_at": {"type": "string", "format": "date-time"},
                "model": string,
                "placeholder": {
                    **boolean,
                    "description": "True when the keyless placeholder provider drew them.",
                },
                "images": {"type": "array", "items": _ref("StoredImage")},
                "usage": {
                    "type": "object",
                    "description": "The upstream's token counts (absent when it reported none, "
                    "or a report that could not be true).",
                },
                "client": {
                    **string,
                    "description": "The name of the client token that made the job "
                    "('anonymous' when the service runs without tokens).",
                },
                "cost": _ref("Cost"),
                "warnings": {"type": "array", "items": string},
                "request": {
                    "type": "object",
                    "description": "The checked request (GET /jobs/{job_id} only).",
                },
                "attempts": {
                    "type": "integer",
                    "description": "An asynchronous job (GET /jobs/{job_id} only): how many "
                    "times it was started; more than 1 after its process died mid-run.",
                },
                "webhook": {
                    "type": "object",
                    "description": "An asynchronous job's completion webhook (GET /jobs/{job_id} "
                    "only): `status` pending, delivered or failed, and `attempts`.",
                },
            },
        },
        "ListedImage": {
            "type": "object",
            "required": [
                "id",
                "url",
                "job_id",
                "prompt",
                "model",
                "size",
                "format",
                "created_at",
                "placeholder",
            ],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "url": string,
                "job_id": {"type": "string", "format": "uuid"},
                "prompt": {"type": ["string", "null"]},
                "model": {"type": ["string", "null"]},
                "size": {"type": ["string", "null"]},
                "width": {"type": ["integer", "null"]},
                "height": {"type": ["integer", "null"]},
                "format": {"type": ["string", "null"]},
                "revised_prompt": {"type": ["string", "null"]},
                "created_at": {"type": ["string", "null"]},
                "placeholder": boolean,
            },
        },
        "ImagePage": {
            "type": "object",
            "required": ["images", "next_cursor"],
            "properties": {
                "images": {"type": "array", "items": _ref("ListedImage")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` for the next page; null on the last.",
                },
            },
        },
        "DeletedImage": {
            "type": "object",
            "required": ["status", "message", "id", "job_id"],
            "properties": {
                "status": {"const": "success"},
                "message": string,
                "id": {"type": "string", "format": "uuid"},
                "job_id": {"type": "string", "format": "uuid"},
            },
        },
        "PendingJob": {
            "type": "object",
            "description": "An asynchronous job before it is stored (queued, running) or that "
            "failed. A failed job carries the error as a synchronous call would have answered "
            "it: `error`, `code`, `http_status` (and `field`, `retry_after`...).",
            "required": [
                "job_id",
                "status",
                "created_at",
                "updated_at",
                "model",
                "operation",
                "request",
                "progress",
                "images",
                "previews",
                "attempts",
                "events_url",
            ],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": ["queued", "running", "failed"]},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "model": string,
                "operation": string,
                "request": {"type": "object", "description": "What was asked."},
                "progress": {
                    "type": "object",
                    "required": ["images_done", "count", "partial_images"],
                    "properties": {
                        "images_done": integer,
                        "count": integer,
                        "partial_images": {
                            **integer,
                            "description": "Partial previews received so far.",
                        },
                    },
                },
                "images": {
                    "type": "array",
                    "maxItems": 0,
                    "description": "Empty: the images are the Job's once it is completed.",
                },
                "previews": {"type": "array", "items": _ref("JobPreview")},
                "attempts": {
                    **integer,
                    "description": "Times the job was started (again after its process died).",
                },
                "events_url": string,
                "queue": {
                    "type": "object",
                    "description": "While queued: jobs ahead (about), running, and the bound.",
                    "properties": {"ahead": integer, "running": integer, "max_running": integer},
                },
                "error": string,
                "code": {"type": "string", "enum": codes},
                "http_status": integer,
                "warnings": {"type": "array", "items": string},
                "webhook": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                        "attempts": integer,
                    },
                },
            },
        },
        "JobEvent": {
            "type": "object",
            "description": "One Server-Sent Event of GET /jobs/{job_id}/events.",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {
                    "type": "string",
                    "enum": ["status", "partial_image", "image", "completed", "failed"],
                },
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "description": "status: job_id, status, progress, attempts. partial_image "
                    "and image: job_id, image, partial_image_index, url (image adds "
                    "images_done, count). completed: the Job. failed: the PendingJob.",
                },
            },
        },
        "JobPreview": {
            "type": "object",
            "required": ["image", "partial_image_index", "url"],
            "properties": {
                "image": {**integer, "description": "Which image of the job (0-based)."},
                "partial_image_index": {
                    "type": ["integer", "null"],
                    "description": "The upstream's partial image index; null: the image is "
                    "finished (stored with the job once all are).",
                },
                "url": string,
            },
        },
        "DeletedJob": {
            "type": "object",
            "required": ["status", "message", "job_id"],
            "properties": {
                "status": {"const": "success"},
                "message": string,
                "job_id": {"type": "string", "format": "uuid"},
            },
        },
        "Cost": {
            "type": "object",
            "description": "What the job cost in US dollars: `estimated_usd` was reserved "
            "against the caps before the upstream call; `usd` is the real cost, from the "
            "upstream's token usage (`basis: usage`) or the per-image price table "
            "(`price_table`, or `price_table_invalid_usage` when the upstream's usage report "
            "could not be true: a count that is not a whole number from 0 to 100,000,000).",
            "required": ["estimated_usd", "usd", "basis"],
            "properties": {
                "estimated_usd": {"type": "number", "minimum": 0},
                "usd": {"type": "number", "minimum": 0},
                "basis": {
                    "type": "string",
                    "enum": ["usage", "price_table", "price_table_invalid_usage", "placeholder"],
                },
            },
        },
        "UsageFigures": {
            "type": "object",
            "required": ["images_last_hour", "images_last_day", "usd_last_day", "limits", "caps"],
            "properties": {
                "name": string,
                "admin": boolean,
                "images_last_hour": {"type": "integer", "minimum": 0},
                "images_last_day": {"type": "integer", "minimum": 0},
                "usd_last_day": {"type": "number", "minimum": 0},
                "usd_reserved": {"type": "number", "minimum": 0},
                "limits": {"type": "object"},
                "caps": {
                    "type": "object",
                    "description": "Each cap that is set: its limit and what is left.",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["limit", "remaining"],
                        "properties": {
                            "limit": {"type": "number"},
                            "remaining": {"type": "number"},
                        },
                    },
                },
            },
        },
        "Usage": {
            "type": "object",
            "required": ["timestamp", "global", "auth_required"],
            "properties": {
                "timestamp": {"type": "string", "format": "date-time"},
                "auth_required": boolean,
                "windows": {"type": "object"},
                "token": _ref("UsageFigures"),
                "tokens": {
                    "type": "array",
                    "description": "Every token (admin tokens only).",
                    "items": _ref("UsageFigures"),
                },
                "global": _ref("UsageFigures"),
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "api_key_configured", "timestamp"],
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "api_key_configured": boolean,
                "api_key_source": {"type": "string", "enum": ["secret_file", "env", "none"]},
                "provider": {"type": "string", "enum": list(PROVIDERS)},
                "default_model": string,
                "storage_writable": boolean,
                "auth_required": {
                    **boolean,
                    "description": "Whether callers need a client token (false: open).",
                },
                "version": string,
                "timestamp": {"type": "string", "format": "date-time"},
                "tokens": {
                    "type": "object",
                    "description": "With a tokens file: when this worker's tokens were read "
                    "and whether the latest reload (SIGHUP) failed, in which case the last "
                    "good tokens are in use.",
                    "required": ["loaded_at", "last_reload"],
                    "properties": {
                        "loaded_at": {"type": "string", "format": "date-time"},
                        "last_reload": {"type": "string", "enum": ["ok", "failed"]},
                        "reload_failed_at": {
                            "type": ["string", "null"],
                            "format": "date-time",
                        },
                        "reload_failed_line": {"type": ["integer", "null"], "minimum": 1},
                    },
                },
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "family", "status", "count", "sizes", "default_size", "options"],
            "properties": {
                "pricing": {
                    "type": "object",
                    "description": "US dollars: `per_image` (by quality and size, the estimate "
                    "reserved against spending caps) and `per_token` (per 1M tokens, the rates "
                    "that settle the real cost from the upstream's usage), with sources and "
                    "the date they were read.",
                },
                "id": string,
                "family": string,
                "status": {
                    "type": "string",
                    "enum": ["active", "deprecated", "shut_down", "legacy"],
                },
                "description": string,
                "snapshot_of": {"type": ["string", "null"], "description": "A snapshot's base."},
                "deprecated_on": date,
                "shutdown_on": date,
                "replacement": {"type": ["string", "null"]},
                "count": {
                    "type": "object",
                    "required": ["min", "max"],
                    "properties": {"min": integer, "max": integer},
                },
                "max_prompt_chars": integer,
                "sizes": {"type": "array", "items": string},
                "size_rule": {"type": ["object", "null"]},
                "largest_output": {
                    "type": "object",
                    "description": "The largest image the model makes (`max_edge` pixels on "
                    "the longest side, `max_pixels` in all), at any size; an upstream image "
                    "beyond it is refused as an unusable answer.",
                    "required": ["max_edge", "max_pixels"],
                    "properties": {"max_edge": integer, "max_pixels": integer},
                },
                "default_size": string,
                "edits": {
                    "type": ["object", "null"],
                    "description": "What POST /edit takes for this model (null: no edits): "
                    "`max_images`, input `formats`, `max_image_bytes`, `mask`, "
                    "`max_mask_bytes`, `square`, `default_size` and the edit `options`.",
                },
                "variations": {
                    "type": ["object", "null"],
                    "description": "What POST /variations takes (null: no variations).",
                },
                "options": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "enum": ["string", "integer"]},
                            "enum": {"type": "array", "items": string},
                            "minimum": integer,
                            "maximum": integer,
                            "default": {"type": ["string", "integer", "null"]},
                        },
                    },
                },
                "source": string,
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["default_model", "models"],
            "properties": {
                "default_model": string,
                "models": {"type": "array", "items": _ref("Model")},
            },
        },
        "OpenAIImage": {
            "type": "object",
            "anyOf": [{"required": ["b64_json"]}, {"required": ["url"]}],
            "properties": {
                "b64_json": {"type": "string", "contentEncoding": "base64"},
                "url": {"type": "string", "format": "uri"},
                "revised_prompt": string,
            },
        },
        "OpenAIImagesResponse": {
            "type": "object",
            "required": ["created", "data"],
            "properties": {
                "created": {**integer, "description": "Unix seconds."},
                "data": {"type": "array", "items": _ref("OpenAIImage")},
                "usage": {
                    "type": "object",
                    "description": "The upstream's token counts (absent when it reported none, "
                    "or a report that could not be true).",
                },
                "output_format": {"type": "string", "enum": FORMATS},
                "size": string,
                "quality": {
                    "type": "string",
                    "enum": ["low", "medium", "high", "xhigh", "max"],
                },
                "background": {"type": "string", "enum": ["transparent", "opaque"]},
            },
        },
        "OpenAIModel": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": string,
                "object": {"const": "model"},
                "created": {**integer, "description": "Always 0: the catalog has no dates."},
                "owned_by": string,
                "shutdown_date": date,
                "snapshot_of": {"type": ["string", "null"], "description": "A snapshot's base."},
            },
        },
        "OpenAIModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("OpenAIModel")},
            },
        },
    }


def generate_request_schema(models: list[ModelSpec], default_model: str) -> Schema:
    """POST /generate's body: the union of what the usable models take."""
    return {
        "type": "object",
        "description": "Which sizes, counts and options a model takes is in GET /models; "
        "this schema is their union.",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            **_common_properties(models, default_model),
            "count": {
                "type": "integer",
                "minimum": 1,
                "maximum": max(m.max_count for m in models),
                "default": 1,
                "description": "How many images.",
            },
            **_option_properties(models),
        },
    }


def openai_request_schema(models: list[ModelSpec], default_model: str) -> Schema:
    """POST /v1/images/generations' body: OpenAI's field names, the catalog's values."""
    return {
        "type": "object",
        "description": "OpenAI's request; null means not given.",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            **_common_properties(models, default_model),
            "n": _nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": max(m.max_count for m in models),
                    "default": 1,
                    "description": "How many images.",
                }
            ),
            **_option_properties(models),
            "response_format": _nullable(
                {
                    "type": "string",
                    "enum": list(RESPONSE_FORMATS),
                    "description": "DALL-E models only; GPT Image models always answer b64_json.",
                }
            ),
            "stream": {
                "type": ["boolean", "null"],
                "enum": [False, None],
                "description": "Streaming is not supported.",
            },
        },
    }


def _common_properties(models: list[ModelSpec], default_model: str) -> dict[str, Schema]:
    return {
        "prompt": {
            "type": "string",
            "minLength": 1,
            "maxLength": max(m.max_prompt_chars for m in models),
            "pattern": r"\S",
            "description": "What to draw. Each model has its own limit: "
            + ", ".join(f"{m.id} {m.max_prompt_chars:,}" for m in models)
            + " characters.",
        },
        "model": _nullable(
            {
                "type": "string",
                "enum": [m.id for m in models],
                "default": default_model,
                "description": "A model that is not shut down (GET /models).",
            }
        ),
        "size": _nullable(
            {
                "type": "string",
                "pattern": SIZE_PATTERN,
                "description": "WxH or auto. Each model lists its sizes, and the newer GPT "
                "Image models take any WxH within bounds (GET /models/{id}).",
            }
        ),
        **{name: _nullable(schema) for name, schema in end_user_schema().items()},
    }


def _option_properties(
    models: Iterable[ModelSpec],
    options_of: Callable[[ModelSpec], Mapping[str, Choice | IntRange]] = lambda m: m.options,
) -> dict[str, Schema]:
    """Each option any model takes, with the union of its values and who takes it."""
    takers: dict[str, list[ModelSpec]] = {}
    for model in models:
        for name in options_of(model):
            takers.setdefault(name, []).append(model)
    properties = {}
    for name, owners in takers.items():
        specs = [options_of(m)[name] for m in owners]
        if all(isinstance(s, Choice) for s in specs):
            values: list[str] = []
            for spec in specs:
                values += [v for v in spec.values if v not in values]  # type: ignore[union-attr]
            schema: Schema = {"type": "string", "enum": values}
        elif all(isinstance(s, IntRange) for s in specs):
            schema = {
                "type": "integer",
                "minimum": min(s.low for s in specs),  # type: ignore[union-attr]
                "maximum": max(s.high for s in specs),  # type: ignore[union-attr]
            }
        else:
            raise TypeError(f"option {name!r} is not the same kind for every model")
        schema["description"] = "Taken by " + ", ".join(m.id for m in owners) + "."
        properties[name] = _nullable(schema)
    return properties


# --- edits and variations -----------------------------------------------------------------


def _input_models(models: list[ModelSpec], operation: str) -> list[tuple[ModelSpec, InputSpec]]:
    return [(m, spec) for m in models if (spec := getattr(m, OPERATIONS[operation])) is not None]


def _input_properties(
    models: list[ModelSpec], default_model: str, operation: str, *, nullable: bool
) -> dict[str, Schema]:
    """The fields an edit or variation takes besides its images: the catalog's union."""
    able = _input_models(models, operation)
    maybe = _nullable if nullable else (lambda schema: schema)
    owners = [m for m, _ in able]
    default = default_model if default_model in [m.id for m in owners] else owners[0].id
    properties: dict[str, Schema] = {}
    if any(spec.prompt for _, spec in able):
        prompted = [m for m, spec in able if spec.prompt]
        properties["prompt"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": max(m.max_prompt_chars for m in prompted),
            "pattern": r"\S",
            "description": "What the result should show (the whole image, not only the "
            "edited area). Limits: "
            + ", ".join(f"{m.id} {m.max_prompt_chars:,}" for m in prompted)
            + " characters.",
        }
    properties["model"] = maybe(
        {
            "type": "string",
            "enum": [m.id for m in owners],
            "default": default,
            "description": "A model that takes this operation (GET /models).",
        }
    )
    properties["size"] = maybe(
        {
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "WxH, or auto (the output follows the input) where the model "
            "takes it; each model lists its sizes (GET /models/{id}).",
        }
    )
    specs = {m.id: spec for m, spec in able}
    options = _option_properties(owners, lambda m: specs[m.id].options)
    if not nullable:  # multipart fields are text: never null
        options = {name: _not_null(schema) for name, schema in options.items()}
    end_user = {name: maybe(schema) for name, schema in end_user_schema().items()}
    return {**properties, **options, **end_user}


def _not_null(schema: Schema) -> Schema:
    result = dict(schema)
    result["type"] = next(t for t in schema["type"] if t != "null")
    if "enum" in schema:
        result["enum"] = [v for v in schema["enum"] if v is not None]
    return result


def input_form_schema(
    models: list[ModelSpec], default_model: str, operation: str, *, openai: bool = False
) -> Schema:
    """A multipart edit or variation: the image files and the text fields."""
    able = _input_models(models, operation)
    max_images = max(spec.max_images for _, spec in able)
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    count = {
        "type": "integer",
        "minimum": 1,
        "maximum": max(m.max_count for m, _ in able),
        "default": 1,
        "description": "How many images.",
    }
    properties: dict[str, Schema] = {
        **_input_properties(models, default_model, operation, nullable=False),
        "n" if openai else "count": count,
    }
    if max_images > 1:
        files = {
            "type": "array",
            "minItems": 1,
            "maxItems": max_images,
            "items": binary,
            "description": "The image(s) to start from: PNG, JPEG or WebP as each model takes "
            f"(up to {max_images}).",
        }
        properties["image"] = files
        properties["image[]"] = {**files, "description": "Another name for `image`."}
        required: Schema = {"anyOf": [{"required": ["image"]}, {"required": ["image[]"]}]}
    else:
        properties["image"] = {**binary, "description": "The square PNG to start from."}
        required = {"required": ["image"]}
    if any(spec.mask for _, spec in able):
        properties["mask"] = {
            **binary,
            "description": "A PNG with an alpha channel and the first image's dimensions; "
            "its fully transparent areas are edited.",
        }
    if openai:
        properties["response_format"] = {
            "type": "string",
            "enum": list(RESPONSE_FORMATS),
            "description": "DALL-E models only; GPT Image models always answer b64_json.",
        }
        properties["stream"] = {
            "type": "boolean",
            "enum": [False],
            "description": "Streaming is not supported.",
        }
    if "prompt" in properties:
        required.setdefault("required", []).append("prompt")
    return {
        "type": "object",
        "description": "Fields as multipart/form-data text; images as file parts.",
        **required,
        "additionalProperties": False,
        "properties": properties,
    }


def input_json_schema(models: list[ModelSpec], default_model: str, operation: str) -> Schema:
    """A JSON edit or variation: images this service stores, named by id."""
    able = _input_models(models, operation)
    max_images = max(spec.max_images for _, spec in able)
    image_id = {"type": "string", "pattern": UUID_PATTERN}
    properties: dict[str, Schema] = {
        **_input_properties(models, default_model, operation, nullable=True),
        "count": _nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": max(m.max_count for m, _ in able),
                "default": 1,
                "description": "How many images.",
            }
        ),
        "image_id": _nullable({**image_id, "description": "A stored image to start from."}),
        "image_ids": _nullable(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": max_images,
                "items": image_id,
                "description": "Stored images to start from, in order (instead of `image_id`).",
            }
        ),
    }
    if any(spec.mask for _, spec in able):
        properties["mask_id"] = _nullable(
            {**image_id, "description": "A stored PNG with an alpha channel to use as the mask."}
        )
    schema: Schema = {
        "type": "object",
        "description": "Images by id; the other fields as for the multipart form.",
        "anyOf": [{"required": ["image_id"]}, {"required": ["image_ids"]}],
        "additionalProperties": False,
        "properties": properties,
    }
    if "prompt" in properties:
        schema["required"] = ["prompt"]
    return schema
