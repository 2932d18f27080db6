"""GET /openapi.json: the service's OpenAPI 3.1 description, built as data.

Request schemas, model enums and option values come from the model catalog, and error codes
from the error classes, so the description follows the code. Only routes the running app
serves are described.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from . import __version__, clock
from .catalog import MODELS, SHUT_DOWN, Choice, IntRange, ModelSpec
from .compat import IGNORED_FIELDS, RESPONSE_FORMATS
from .errors import HTTP_CODES, ServiceError
from .imagefmt import CONTENT_TYPES
from .settings import PROVIDERS

bp = Blueprint("openapi", __name__)

Schema = dict[str, Any]

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# What a `size` can look like for some model; GET /models/{id} has each model's rule.
SIZE_PATTERN = "^(auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4})$"
FORMATS = list(CONTENT_TYPES)


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    """This description, for the routes this app serves."""
    return jsonify(build_spec(current_app))


def build_spec(app: Flask, today: dt.date | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `app`: every route it serves, none it does not."""
    today = today or clock.today()
    models = [m for m in MODELS if m.status(today) != SHUT_DOWN]
    default_model = app.config["SETTINGS"].default_model
    served = {rule.endpoint for rule in app.url_map.iter_rules()}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint, path, method, operation in _operations():
        if endpoint in served:
            paths.setdefault(path, {})[method] = operation
    _add_links(paths)
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
        "components": {
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
            "with 400 before any upstream call. A deprecated model works and adds `warnings`.",
            "requestBody": _json_body("GenerateRequest"),
            "responses": {
                "200": _json("The stored job and a URL for each image.", "Job"),
                **_errors(400, 413, 415, 429, 500, 502, 504, 507),
            },
        },
    )
    yield (
        "jobs.list_images",
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
        "ETag": _header("The image id, quoted: a strong validator.", required=True),
        "Cache-Control": _header("How long a client may keep the image."),
        "Content-Disposition": _header("inline, with the stored file name."),
    }
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
            "summary": "The image's bytes",
            "parameters": [image_id, *conditional],
            "responses": {
                "200": _binary("The image, typed by its format.", image_headers),
                "206": _binary("The requested byte range.", image_headers),
                "304": _bare("Not modified: the If-None-Match ETag matches."),
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
            "parameters": [image_id, *conditional],
            "responses": {
                "200": _bare("The image exists.", image_headers),
                "206": _bare("The requested byte range exists.", image_headers),
                "304": _bare("Not modified: the If-None-Match ETag matches."),
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
            "summary": "A job's metadata",
            "description": "As POST /generate answered it, with the request; deleted images "
            "have `status: deleted` and no URL.",
            "parameters": [job_id],
            "responses": {
                "200": _json("The job.", "Job"),
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
            "`b64_json`. `user` and `safety_identifier` are accepted and ignored. Errors use "
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
    400: "Invalid request: malformed JSON, a field the model does not take, a value outside "
    "its range, a shut-down model (VALIDATION_ERROR, naming the replacement), or a prompt "
    "the upstream safety system refused (CONTENT_POLICY_VIOLATION: change the prompt).",
    404: "No such resource.",
    413: "The body is larger than the service accepts.",
    415: "The body is not sent as application/json.",
    416: "The requested range is outside the image.",
    429: "OpenAI's rate limit was reached; retry after Retry-After seconds.",
    500: "The service cannot generate (no key configured, key rejected, no quota) or failed "
    "unexpectedly.",
    502: "The upstream failed after retries, or sent an unusable answer.",
    504: "The upstream did not answer in time.",
    507: "The image store is full; nothing was saved.",
}


def _errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    responses = {}
    for status in statuses:
        response = _json(_ERROR_DESCRIPTIONS[status], schema)
        if status == 429:
            response["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        responses[str(status)] = response
    return responses


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
                "usage": {"type": "object", "description": "The upstream's token usage."},
                "warnings": {"type": "array", "items": string},
                "request": {
                    "type": "object",
                    "description": "The checked request (GET /jobs/{job_id} only).",
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
        "DeletedJob": {
            "type": "object",
            "required": ["status", "message", "job_id"],
            "properties": {
                "status": {"const": "success"},
                "message": string,
                "job_id": {"type": "string", "format": "uuid"},
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
                "version": string,
                "timestamp": {"type": "string", "format": "date-time"},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "family", "status", "count", "sizes", "default_size", "options"],
            "properties": {
                "id": string,
                "family": string,
                "status": {
                    "type": "string",
                    "enum": ["active", "deprecated", "shut_down", "legacy"],
                },
                "description": string,
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
                "default_size": string,
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
                "usage": {"type": "object", "description": "The upstream's token usage."},
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
    ignored = {
        name: {"type": ["string", "null"], "description": "Accepted and ignored."}
        for name in IGNORED_FIELDS
    }
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
            **ignored,
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
    }


def _option_properties(models: Iterable[ModelSpec]) -> dict[str, Schema]:
    """Each option any model takes, with the union of its values and who takes it."""
    takers: dict[str, list[ModelSpec]] = {}
    for model in models:
        for name in model.options:
            takers.setdefault(name, []).append(model)
    properties = {}
    for name, owners in takers.items():
        specs = [m.options[name] for m in owners]
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
