"""OpenAI-compatible routes: POST /v1/images/{generations,edits,variations}, GET /v1/models.

Point the official `openai` SDK at `http://<host>/v1` with any api_key: the request is checked
against the catalog and stored as a job exactly like POST /generate's, and answers and errors
have OpenAI's shapes, so the SDK parses them and raises its usual exception classes.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, MethodNotAllowed, UnsupportedMediaType

from imagegen import clock
from imagegen.api.edits import run_job
from imagegen.api.generate import make_images
from imagegen.api.parts import (
    MODEL_ID,
    input_body,
    input_errors,
    multipart_body,
    storing_response,
)
from imagegen.apidoc import errors, json_body, json_response, operation
from imagegen.catalog.models import MODELS, get_model, origin
from imagegen.catalog.spec import SHUT_DOWN, ModelSpec
from imagegen.compat.schemas import RESPONSE_FORMATS, components
from imagegen.errors import HTTP_CODES, ModelNotFound, QuotaExceeded, ServiceError, ValidationError
from imagegen.imaging.inputs import default_model_for, parse_edit_request
from imagegen.imaging.references import ImageLinks, read_references
from imagegen.imaging.request import (
    ImageRequest,
    parse_generate_request,
    read_json,
)
from imagegen.imaging.uploads import is_multipart, read_edit_json, read_uploads
from imagegen.services import services

bp = Blueprint("compat", __name__, url_prefix="/v1")
log = logging.getLogger(__name__)

# Families whose upstream answers `url` unless `response_format` asks for `b64_json`;
# every other family always answers `b64_json`.
URL_FAMILIES = frozenset({"dall-e"})
# Our field names, as the OpenAI request calls them.
OPENAI_FIELDS = {"count": "n"}
_ECHO_VALUES = {
    "quality": frozenset({"low", "medium", "high", "xhigh", "max"}),
    "background": frozenset({"transparent", "opaque"}),
}


@bp.post("/images/generations")
@operation(
    "createImageOpenAI",
    tag="openai-compatible",
    schemas=components,
    summary="OpenAI's POST /v1/images/generations",
    description="Validated like POST /generate (`n` is `count`) and stored as a job. GPT Image "
    "models answer `b64_json`; DALL-E models answer `url` (an absolute URL of GET "
    "/images/{image_id} on this service) unless `response_format` is `b64_json`. "
    "`safety_identifier` (or `user`) is sent upstream as given. Errors use OpenAI's shape; "
    "`code` is the service's error code in lower case. Failures a retry cannot fix carry "
    "`x-should-retry: false`.",
    body=json_body("OpenAIImagesRequest"),
    responses={
        "200": json_response("The images.", "OpenAIImagesResponse"),
        **storing_response(),
        **errors(400, 413, 415, 429, 500, 502, 504, 507, schema="OpenAIError"),
    },
)
def create_image() -> ResponseReturnValue:
    """Generate and store images like POST /generate; answer OpenAI's ImagesResponse."""
    settings = services().settings
    fields, response_format = translate_request(read_json(request))
    try:
        image_request = parse_generate_request(fields, default_model=settings.default_model)
    except ValidationError as exc:
        raise in_openai_terms(exc) from None
    metadata = make_images(image_request)
    return jsonify(images_response(metadata, image_request, response_format))


@bp.post("/images/edits")
@operation(
    "createImageEditOpenAI",
    tag="openai-compatible",
    schemas=components,
    summary="OpenAI's POST /v1/images/edits (multipart or JSON)",
    description="Validated like POST /edit (`n` is `count`) and stored as a job. Multipart: one "
    "image as `image`, several as `image[]`, and an optional `mask`. JSON (OpenAI's form): "
    "`images`, a list of `{image_url}` or `{file_id}` references, and an optional `mask` "
    "reference; an `image_url` is a base64 `data:image/...` URL (decoded and checked like an "
    "upload) or the URL of an image this service stores (no other URL is fetched), a `file_id` "
    "is an image id of this service (OpenAI Files ids are refused). The images go upstream as "
    "multipart either way. Answers and errors as POST /v1/images/generations.",
    body=input_body("OpenAIEditForm", "OpenAIEditRequest"),
    responses={
        "200": json_response("The images.", "OpenAIImagesResponse"),
        **storing_response(),
        **input_errors(schema="OpenAIError"),
    },
)
def create_edit() -> ResponseReturnValue:
    """OpenAI's multipart image edit (`image` or `image[]`, `mask`), stored like POST /edit."""
    return jsonify(_from_images("edit"))


@bp.post("/images/variations")
@operation(
    "createImageVariationOpenAI",
    tag="openai-compatible",
    schemas=components,
    summary="OpenAI's POST /v1/images/variations (multipart, dall-e-2)",
    description="Validated like POST /variations (`n` is `count`) and stored as a job. Answers "
    "`url` unless `response_format` is `b64_json`.",
    body=multipart_body("OpenAIVariationForm"),
    responses={
        "200": json_response("The images.", "OpenAIImagesResponse"),
        **storing_response(),
        **input_errors(schema="OpenAIError", stored=False),
    },
)
def create_variation() -> ResponseReturnValue:
    """OpenAI's multipart image variation (dall-e-2), stored like POST /variations."""
    return jsonify(_from_images("variation"))


def _from_images(operation: str) -> dict[str, Any]:
    """Read an OpenAI edit (multipart or JSON) or variation (multipart), run it as a job,
    answer ImagesResponse."""
    settings = services().settings
    form: dict[str, Any]
    if is_multipart(request):
        form, inputs = read_uploads(request, settings)
        if form.get("stream", "").strip().lower() == "false":  # multipart: booleans as text
            del form["stream"]
    elif request.is_json and operation == "edit":  # OpenAI's JSON form: image references
        body = read_edit_json(request, settings)
        form, inputs = read_references(body, services().store, settings, ImageLinks.of(request))
    else:
        raise UnsupportedMediaType(
            "Send the request as multipart/form-data with the image file(s), as OpenAI's API "
            "takes it" + (", or as JSON with 'images' references." if operation == "edit" else ".")
        )
    fields, response_format = translate_request(form)
    try:
        image_request = parse_edit_request(
            fields,
            inputs,
            operation=operation,
            default_model=default_model_for(operation, settings.default_model),
            form=True,
        )
    except ValidationError as exc:
        raise in_openai_terms(exc) from None
    metadata = run_job(image_request, inputs, operation)
    return images_response(metadata, image_request, response_format)


@bp.get("/models")
@operation(
    "listModelsOpenAI",
    tag="openai-compatible",
    schemas=components,
    summary="OpenAI's GET /v1/models: the models one may ask for",
    responses={
        "200": json_response("The models.", "OpenAIModelList"),
        **errors(500, schema="OpenAIError"),
    },
)
def list_models() -> ResponseReturnValue:
    """The catalog models one may ask for, as OpenAI's model list."""
    today = clock.today()
    models = [model_object(m) for m in MODELS if m.status(today) != SHUT_DOWN]
    return jsonify({"object": "list", "data": models})


@bp.get("/models/<path:model_id>")
@operation(
    "retrieveModelOpenAI",
    tag="openai-compatible",
    schemas=components,
    summary="OpenAI's GET /v1/models/{model}",
    parameters=[MODEL_ID],
    responses={
        "200": json_response("The model.", "OpenAIModel"),
        **errors(404, 500, schema="OpenAIError"),
    },
)
def retrieve_model(model_id: str) -> ResponseReturnValue:
    """One usable model as OpenAI's model object; 404 `model_not_found` otherwise."""
    model = get_model(model_id)
    if model is None or model.status(clock.today()) == SHUT_DOWN:
        hint = f"; use {model.replacement}" if model and model.replacement else ""
        raise ModelNotFound(
            f"The model {model_id[:64]!r} does not exist or is shut down{hint}. "
            "GET /v1/models lists the models."
        )
    return jsonify(model_object(model))


def translate_request(body: Any) -> tuple[dict[str, Any], str | None]:
    """OpenAI's request fields as POST /generate's, plus the `response_format` asked for.

    OpenAI treats null as "not given", so null fields are dropped; `n` becomes `count`.
    """
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.")
    fields = {key: value for key, value in body.items() if value is not None}
    if "count" in fields:
        raise ValidationError(
            "Unknown field 'count': the OpenAI-compatible endpoint takes 'n'.",
            details={"field": "count"},
        )
    response_format = fields.pop("response_format", None)
    if response_format is not None and response_format not in RESPONSE_FORMATS:
        raise ValidationError(
            f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}.",
            details={"field": "response_format"},
        )
    if fields.pop("stream", False) is not False:
        raise ValidationError(
            "Streaming is not supported here; leave 'stream' out or set it to false.",
            details={"field": "stream"},
        )
    if "n" in fields:
        fields["count"] = fields.pop("n")
    return fields, response_format


def in_openai_terms(exc: ValidationError) -> ValidationError:
    """The validation error naming OpenAI's fields (`n`) where it named ours (`count`)."""
    field = exc.details.get("field")
    message = exc.message
    for ours, theirs in OPENAI_FIELDS.items():
        message = message.replace(f"'{ours}'", f"'{theirs}'")
        head, listed, accepted = message.partition("It accepts: ")
        if listed:  # the unknown-field message lists the accepted names
            names = accepted.rstrip(".").split(", ")
            message = head + listed + ", ".join(theirs if n == ours else n for n in names) + "."
        if field == ours:
            field = theirs
    return ValidationError(message, details={**exc.details, "field": field})


def images_response(
    metadata: dict[str, Any], image_request: ImageRequest, response_format: str | None
) -> dict[str, Any]:
    """A stored job as OpenAI's ImagesResponse: URLs to this service, or the stored bytes."""
    model = image_request.model
    as_url = model.family in URL_FAMILIES and response_format != "b64_json"
    store = services().store
    data = []
    for image in metadata["images"]:
        if as_url:
            item = {"url": url_for("images.get_image", image_id=image["id"], _external=True)}
        else:
            stored = store.read_image(store.find_image(image["id"]))
            item = {"b64_json": base64.b64encode(stored).decode("ascii")}
        if image.get("revised_prompt"):
            item["revised_prompt"] = image["revised_prompt"]
        data.append(item)
    created = dt.datetime.fromisoformat(metadata["created_at"])
    body: dict[str, Any] = {"created": int(created.timestamp()), "data": data}
    if model.family not in URL_FAMILIES and metadata["images"]:
        body.update(_echoed(metadata))
    if metadata.get("usage"):
        body["usage"] = metadata["usage"]
    return body


def _echoed(metadata: dict[str, Any]) -> dict[str, Any]:
    """What GPT Image answers echo: the format and size made, the quality and background used."""
    first = metadata["images"][0]
    echo: dict[str, Any] = {"output_format": first["format"], "size": first["size"]}
    upstream = metadata.get("upstream") or {}
    for name, values in _ECHO_VALUES.items():
        value = upstream.get(name, metadata["request"].get(name))
        if value in values:  # "auto" and absent values are not echoed
            echo[name] = value
    return echo


def model_object(model: ModelSpec) -> dict[str, Any]:
    """A catalog model as OpenAI's model object (`created` is 0: the catalog has no dates),
    plus which model a dated snapshot pins (`snapshot_of`, null for the others) and where it
    comes from (`origin`: the catalog or the models file; `like`: an alias's base)."""
    source, like = origin(model.id)
    return {
        "id": model.id,
        "object": "model",
        "created": 0,
        "owned_by": "openai",
        "shutdown_date": model.shutdown_on.isoformat() if model.shutdown_on else None,
        "snapshot_of": model.snapshot_of,
        "origin": source,
        "like": like,
    }


# --- errors in OpenAI's shape -------------------------------------------------------------


def openai_error(
    status: int, message: str, code: str, param: str | None = None, type_: str | None = None
) -> Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.

    `code` is the service's error code in lower case (`rate_limit_exceeded`,
    `content_policy_violation`, `validation_error`, ...), so both vocabularies agree.
    """
    g.error_code = code  # counted by /metrics like every error answer
    if type_ is None:
        type_ = "server_error" if status >= 500 else "invalid_request_error"
    response = jsonify(
        {"error": {"message": message, "type": type_, "param": param, "code": code.lower()}}
    )
    response.status_code = status
    return response


_ERROR_TYPES = {
    "CONTENT_POLICY_VIOLATION": "image_generation_user_error",
    "RATE_LIMIT_EXCEEDED": "requests",  # OpenAI's type for a request-rate limit
}
# Failures a retry cannot fix (no key, rejected key, no quota, full disk): the SDK retries
# every 5xx unless told otherwise by this header.
_NO_RETRY = frozenset({"SERVICE_ERROR", "INSUFFICIENT_STORAGE"})
_SDK_MAX_RETRY_AFTER = 60  # the openai SDK waits for a Retry-After only up to this


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> Response:
    field = exc.details.get("field")
    response = openai_error(
        exc.status,
        exc.message,
        exc.code,
        param=field if isinstance(field, str) else None,
        type_=_ERROR_TYPES.get(exc.code),
    )
    response.headers.update(exc.headers())
    if exc.code in _NO_RETRY or (
        # A cap that frees up in minutes or hours: the SDK's quick retries cannot help.
        isinstance(exc, QuotaExceeded) and exc.retry_after > _SDK_MAX_RETRY_AFTER
    ):
        response.headers["x-should-retry"] = "false"
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _http_error_response(exc)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error: %s", type(exc).__name__)
    response = openai_error(500, "Internal error; see the service log.", "SERVICE_ERROR")
    response.headers["x-should-retry"] = "false"
    return response


def _http_error_response(exc: HTTPException, message: str | None = None) -> Response:
    """Werkzeug's HTTP errors with the codes the rest of the service gives them."""
    status = exc.code or 500
    code = HTTP_CODES.get(status, "SERVICE_ERROR" if status >= 500 else "HTTP_ERROR")
    response = openai_error(status, message or exc.description or exc.name, code)
    allowed = exc.valid_methods if isinstance(exc, MethodNotAllowed) else None
    if status == 405 and allowed:
        response.headers["Allow"] = ", ".join(allowed)
    return response


@bp.before_app_request
def _openai_routing_errors() -> Response | None:
    """Unknown /v1 paths and wrong methods fail before any blueprint is chosen, so the
    blueprint's handlers never see them; answer those in OpenAI's shape here."""
    exc = request.routing_exception
    if not (
        isinstance(exc, HTTPException)
        and (exc.code or 0) >= 400
        and f"{request.path}/".startswith(f"{bp.url_prefix}/")
    ):
        return None
    message = None
    if exc.code == 404:
        message = (
            f"Invalid URL ({request.method} {request.path[:200]}): this service implements "
            "POST /v1/images/generations, /v1/images/edits and /v1/images/variations, "
            "GET /v1/models and GET /v1/models/{model_id}."
        )
    return _http_error_response(exc, message)
