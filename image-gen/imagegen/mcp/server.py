"""POST /mcp: the Model Context Protocol over Streamable HTTP, for agent hosts.

Agent hosts (Claude Code and others) add tools as MCP servers. This one holds no OpenAI key
and no state: each POST carries one JSON-RPC 2.0 message (a batch under revision
2025-03-26) and is answered with `application/json`, or 202 for notifications. There is no
session id and no server-initiated stream (GET /mcp is 405).

Each tool is an adapter over the service's own HTTP API, dispatched in-process through the
WSGI app with the caller's `Authorization` header: tokens, caps, validation, idempotency and
asynchronous jobs behave exactly as they do over HTTP. Results carry ids, URLs as resource
links and costs, never image bytes unless the caller asks for small inline thumbnails, and
never more than MAX_INLINE_BYTES of base64 in one result.

JSON-RPC errors (parse errors included) are answered with HTTP 200 and a JSON-RPC error
body; HTTP error statuses are kept for the transport's own refusals (token, Origin,
MCP-Protocol-Version, Accept, size, content type), in the service's usual error shape.
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import Headers
from werkzeug.exceptions import NotAcceptable, RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.test import Client

from imagegen import __version__, clock, strictjson
from imagegen.api import openapi
from imagegen.catalog.models import MODELS
from imagegen.catalog.spec import SHUT_DOWN, Choice, IntRange, ModelSpec
from imagegen.errors import PermissionDenied, ValidationError
from imagegen.imaging.formats import CONTENT_TYPES, EXTENSIONS
from imagegen.imaging.inputs import default_model_for
from imagegen.services import services

bp = Blueprint("mcp", __name__)
log = logging.getLogger(__name__)

# Newest first: a client asking for another revision is offered the first.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
# Assumed when a request has no MCP-Protocol-Version header (as the transport says): it
# allows batches and knows no structured output, resource links or titles.
LEGACY_VERSION = "2025-03-26"
# The most base64 one result may carry (inline thumbnails, a resource's blob). Hosts refuse
# tool results over about 1 MB; this leaves room for the rest of the result.
MAX_INLINE_BYTES = 512 * 1024
THUMBNAIL_WIDTH = 256
THUMBNAIL_FORMAT = "jpeg"  # the smallest, and every host can show it
DEFAULT_LIST_LIMIT = 20
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002  # as MCP's resources page names it

INSTRUCTIONS = (
    "image-gen makes images with OpenAI's image models; it holds the OpenAI key, you hold "
    "only a client token. generate_image and edit_image answer a job with image ids, each "
    "image's URL as a resource link, the revised prompt and the cost in US dollars, but no "
    "image bytes: read a link with resources/read (append ?width=256 for a small copy), or "
    "pass thumbnail: true for small inline previews. list_models gives each model's sizes "
    "and options. Long generations: pass background_job: true and poll get_job. A failed call is "
    "a result with isError whose text starts with an error code: QUOTA_EXCEEDED means wait "
    "retry_after seconds, PERMISSION_DENIED lists what your token may use, VALIDATION_ERROR "
    "names the field to fix. Send the same idempotency_key again to retry a call safely."
)


class RpcError(Exception):
    """A JSON-RPC error answering one request."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class ArgumentError(Exception):
    """A tool argument the MCP layer itself checks is wrong: a tool error the agent can fix."""


# --- the transport ------------------------------------------------------------------------


@bp.post("/mcp")
def handle() -> ResponseReturnValue:
    """One JSON-RPC message (or a 2025-03-26 batch): its answer as JSON, or 202 for none."""
    _check_origin()
    if request.headers.get("Accept") and not request.accept_mimetypes.accept_json:
        raise NotAcceptable(
            "Accept application/json (MCP clients send 'Accept: application/json, "
            "text/event-stream'): this endpoint answers JSON, never an event stream."
        )
    version = _header_version()
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "Send the JSON-RPC message with 'Content-Type: application/json'."
        )
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise RequestEntityTooLarge()
    try:
        message = strictjson.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return jsonify(_error(None, PARSE_ERROR, "Parse error: the body is not UTF-8 JSON."))
    effective = version or LEGACY_VERSION
    if isinstance(message, list):
        if effective != LEGACY_VERSION:
            return jsonify(
                _error(
                    None,
                    INVALID_REQUEST,
                    f"MCP {effective} has no JSON-RPC batches: send one message per POST.",
                )
            )
        if not message:
            return jsonify(_error(None, INVALID_REQUEST, "Invalid Request: an empty batch."))
        answers = [a for item in message if (a := _answer(item, effective, batch=True))]
        return jsonify(answers) if answers else _accepted()
    answer = _answer(message, effective)
    return jsonify(answer) if answer is not None else _accepted()


def _check_origin() -> None:
    """A browser page on another origin may not call /mcp (DNS rebinding); others may."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        raise PermissionDenied(
            f"Origin {origin[:100]!r} may not call /mcp: only pages served by this service "
            "and non-browser clients may (DNS rebinding protection)."
        )


def _header_version() -> str | None:
    """The MCP-Protocol-Version header's revision; 400 for one this server does not speak."""
    version = request.headers.get("MCP-Protocol-Version")
    if version is not None and version not in PROTOCOL_VERSIONS:
        raise ValidationError(
            f"MCP-Protocol-Version {version[:40]!r} is not supported; this server speaks "
            f"{', '.join(PROTOCOL_VERSIONS)}.",
            details={"field": "MCP-Protocol-Version"},
        )
    return version


def _accepted() -> Response:
    """202 Accepted with no body: the answer to notifications and responses."""
    response = Response(status=202)
    del response.headers["Content-Type"]
    return response


def _answer(message: Any, version: str, *, batch: bool = False) -> dict[str, Any] | None:
    """The JSON-RPC answer to one message; None for a notification or a response."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _error(None, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message.")
    if "method" not in message:
        if "id" in message and ("result" in message) != ("error" in message):
            return None  # a response; this server sends no requests, so there is nothing to do
        return _error(None, INVALID_REQUEST, "Invalid Request: no 'method'.")
    request_id = message.get("id")
    valid_id = isinstance(request_id, str) or (
        isinstance(request_id, int) and not isinstance(request_id, bool)
    )
    if not isinstance(message["method"], str):
        return _error(
            request_id if valid_id else None, INVALID_REQUEST, "'method' is not a string."
        )
    if "id" not in message:
        return None  # a notification: nothing this stateless server needs to act on
    if not valid_id:
        return _error(None, INVALID_REQUEST, "Invalid Request: 'id' must be a string or integer.")
    method, params = message["method"], message.get("params", {})
    if not isinstance(params, dict):
        return _error(request_id, INVALID_PARAMS, "'params' must be an object.")
    if method == "initialize" and batch:
        return _error(request_id, INVALID_REQUEST, "initialize must not be part of a batch.")
    handler = METHODS.get(method)
    if handler is None:
        return _error(request_id, METHOD_NOT_FOUND, f"Method not found: {method[:100]}")
    try:
        result = handler(params, version)
    except RpcError as exc:
        return _error(request_id, exc.code, exc.message, exc.data)
    except Exception:
        log.exception("mcp method %s failed request_id=%s", method[:100], g.get("request_id"))
        return _error(
            request_id,
            INTERNAL_ERROR,
            f"Internal error; the service log names request {g.get('request_id')}.",
        )
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _structured(version: str) -> bool:
    """Whether `version` knows structured output, resource links and titles (2025-06-18+)."""
    return version != LEGACY_VERSION


# --- methods ------------------------------------------------------------------------------


def _initialize(params: dict[str, Any], version: str) -> dict[str, Any]:
    """Agree on a revision: the client's if this server speaks it, else this server's newest."""
    asked = params.get("protocolVersion")
    if not isinstance(asked, str):
        raise RpcError(INVALID_PARAMS, "initialize needs 'protocolVersion' (a string).")
    agreed = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
    info: dict[str, Any] = {"name": "image-gen", "version": __version__}
    if _structured(agreed):
        info["title"] = "image-gen"
    return {
        "protocolVersion": agreed,
        "capabilities": {
            "tools": {"listChanged": False},
            "resources": {"subscribe": False, "listChanged": False},
        },
        "serverInfo": info,
        "instructions": INSTRUCTIONS,
    }


def _ping(params: dict[str, Any], version: str) -> dict[str, Any]:
    return {}


def _tools_list(params: dict[str, Any], version: str) -> dict[str, Any]:
    """Every tool with its input schema (from the catalog) and, from 2025-06-18, output schema."""
    settings = services().settings
    today = clock.today()
    tools = []
    for tool in TOOLS.values():
        entry: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "inputSchema": tool.input_schema(settings.default_model, today),
            "annotations": {"title": tool.title, **tool.hints},
        }
        if _structured(version):
            entry["title"] = tool.title
            entry["outputSchema"] = tool.output_schema
        tools.append(entry)
    return {"tools": tools}


def _tools_call(params: dict[str, Any], version: str) -> dict[str, Any]:
    """Run a tool; failures the agent can act on are results with isError, not RPC errors."""
    name, arguments = params.get("name"), params.get("arguments", {})
    if not isinstance(name, str):
        raise RpcError(INVALID_PARAMS, "tools/call needs 'name' (a string).")
    tool = TOOLS.get(name)
    if tool is None:
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name[:100]}; tools/list names them.")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "'arguments' must be an object.")
    try:
        return tool.adapter(arguments).render(version)
    except ArgumentError as exc:
        return _failure("VALIDATION_ERROR", str(exc))
    except ToolFailure as failure:
        return _failure(failure.code, failure.message, failure.details)


def _resources_list(params: dict[str, Any], version: str) -> dict[str, Any]:
    """Stored images, newest first, one page per call (GET /images)."""
    query = {"limit": "50"}
    cursor = params.get("cursor")
    if cursor is not None:
        if not isinstance(cursor, str):
            raise RpcError(INVALID_PARAMS, "'cursor' must be a string.")
        query["cursor"] = cursor
    answer = call("GET", "/images", query=query)
    if answer.status != 200:
        raise RpcError(INVALID_PARAMS, answer.error_text())
    page = answer.json()
    result: dict[str, Any] = {
        "resources": [_resource(image, titled=_structured(version)) for image in page["images"]]
    }
    if page.get("next_cursor"):
        result["nextCursor"] = page["next_cursor"]
    return result


def _resource(image: dict[str, Any], *, titled: bool = True) -> dict[str, Any]:
    """A stored image as a resource (resources/list) or a resource link (tool results)."""
    fmt = image.get("format") or "png"
    entry: dict[str, Any] = {
        "uri": absolute(image["url"]),
        "name": f"{image['id']}.{EXTENSIONS.get(fmt, fmt)}",
        "description": _image_description(image),
        "mimeType": CONTENT_TYPES.get(fmt, "application/octet-stream"),
    }
    if titled and image.get("prompt"):
        entry["title"] = _shorten(image["prompt"], 80)
    return entry


def _image_description(image: dict[str, Any]) -> str:
    parts = [
        f"{image.get('model') or 'image'}, {image.get('width')}x{image.get('height')} "
        f"{image.get('format')}"
    ]
    if image.get("revised_prompt"):
        parts.append(f"revised prompt: {_shorten(image['revised_prompt'], 300)}")
    parts.append(f"a {THUMBNAIL_WIDTH}-pixel copy: {_thumbnail_url(image['url'])}")
    return "; ".join(parts)


def _resource_templates(params: dict[str, Any], version: str) -> dict[str, Any]:
    template: dict[str, Any] = {
        "uriTemplate": absolute("/images/{image_id}") + "{?width,height,format}",
        "name": "image",
        "description": "A stored image by id. With width (16-2048) and/or height, a copy that "
        "fits in them, never enlarged; format png, jpeg or webp. resources/read answers at "
        f"most {MAX_INLINE_BYTES // 1024} KiB of base64: ?width={THUMBNAIL_WIDTH} always fits.",
    }
    if _structured(version):
        template["title"] = "Stored image (or a smaller copy)"
    return {"resourceTemplates": [template]}


def _resources_read(params: dict[str, Any], version: str) -> dict[str, Any]:
    """An image (or a copy of it) as a base64 blob, if it fits the size bound."""
    uri = params.get("uri")
    if not isinstance(uri, str):
        raise RpcError(INVALID_PARAMS, "resources/read needs 'uri' (a string).")
    image_id, query = _image_uri(uri)
    limit = MAX_INLINE_BYTES * 3 // 4
    answer = call("GET", f"/images/{image_id}", query=query, max_bytes=limit)
    if answer.status == 404:
        raise RpcError(
            RESOURCE_NOT_FOUND, f"Resource not found: {answer.error_text()}", {"uri": uri}
        )
    if answer.status != 200:
        raise RpcError(INVALID_PARAMS, answer.error_text(), {"uri": uri})
    if answer.truncated:
        base = uri.split("?", 1)[0]
        raise RpcError(
            INVALID_PARAMS,
            f"The image is {answer.length:,} bytes: more than the {limit:,} an MCP result may "
            f"carry here. Read {base}?width={THUMBNAIL_WIDTH} (or ?width=1024&format=jpeg) for "
            f"a smaller copy, or fetch {base} with an HTTP client (sending your token as "
            "'Authorization: Bearer ...' when the service needs one).",
            {"uri": uri, "bytes": answer.length, "limit": limit},
        )
    return {
        "contents": [
            {
                "uri": uri,
                "mimeType": answer.headers.get("Content-Type", "application/octet-stream"),
                "blob": base64.b64encode(answer.body).decode("ascii"),
            }
        ]
    }


def _image_uri(uri: str) -> tuple[str, dict[str, str]]:
    """The image id and thumbnail query of a URI this service handed out; -32002 otherwise."""
    parts = urlsplit(uri)
    root = urlsplit(request.root_url)
    prefix = root.path.rstrip("/") + "/images/"
    image_id = parts.path[len(prefix) :] if parts.path.startswith(prefix) else ""
    if (
        parts.scheme not in ("http", "https")
        or parts.netloc.lower() != root.netloc.lower()
        or not UUID.match(image_id)
        or parts.fragment
    ):
        raise RpcError(
            RESOURCE_NOT_FOUND,
            f"Resource not found: {uri[:200]!r} is not an image URL of this service "
            f"({absolute('/images/<image_id>')}).",
            {"uri": uri},
        )
    return image_id, dict(parse_qsl(parts.query, keep_blank_values=True))


METHODS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "initialize": _initialize,
    "ping": _ping,
    "tools/list": _tools_list,
    "tools/call": _tools_call,
    "resources/list": _resources_list,
    "resources/templates/list": _resource_templates,
    "resources/read": _resources_read,
}


# --- calling the service's own HTTP API ---------------------------------------------------


@dataclass
class Answer:
    """One in-process HTTP answer; `truncated` when its body was over the caller's limit."""

    status: int
    headers: Headers
    body: bytes
    length: int | None = None
    truncated: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The service's JSON error body, or one made up from the status."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body
        return {"error": f"The service answered HTTP {self.status}.", "code": "SERVICE_ERROR"}

    def error_text(self) -> str:
        body = self.error()
        return f"{body.get('code', 'SERVICE_ERROR')}: {body['error']}"


def call(
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
) -> Answer:
    """Send one request through this app, as the caller (its Authorization header).

    The request runs in an empty context: Flask would otherwise reuse this request's
    application context, and with it `g` (the caller, the request id, an idempotency claim).
    A body over `max_bytes` is not read: the answer is marked truncated with its length.
    """
    # current_app is typed as the Flask app it stands for, which has no _get_current_object.
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    sent = {"X-Request-ID": g.get("request_id", ""), **(headers or {})}
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        sent["Authorization"] = authorization
    options: dict[str, Any] = {
        "method": method,
        "base_url": request.root_url,
        "query_string": dict(query or {}),
        "headers": sent,
        "environ_base": {"REMOTE_ADDR": request.remote_addr or "127.0.0.1"},
    }
    if body is not None:
        options["json"] = body

    def send() -> Answer:
        response = Client(app, use_cookies=False).open(path, **options)
        try:
            length: int | None = response.content_length  # Werkzeug types it int, None if unset
            if max_bytes is not None and length is not None and length > max_bytes:
                return Answer(response.status_code, response.headers, b"", length, True)
            data = response.get_data()
            if max_bytes is not None and len(data) > max_bytes:
                return Answer(response.status_code, response.headers, b"", len(data), True)
            return Answer(response.status_code, response.headers, data, len(data))
        finally:
            response.close()

    return contextvars.Context().run(send)


def absolute(path: str) -> str:
    """An absolute URL on this service for one of its paths, as the caller addressed it."""
    return request.root_url.rstrip("/") + path


# --- tool results -------------------------------------------------------------------------


@dataclass
class ToolResult:
    """A tool's answer: structured data, a summary, resource links, and inline images."""

    structured: dict[str, Any]
    summary: str
    links: list[dict[str, Any]]
    images: list[dict[str, Any]]

    def render(self, version: str) -> dict[str, Any]:
        """The CallToolResult for `version` (2025-03-26 knows no links or structured output)."""
        content: list[dict[str, Any]] = [
            {"type": "text", "text": self.summary},
            {"type": "text", "text": strictjson.dumps(self.structured, ensure_ascii=False)},
        ]
        if _structured(version):
            content += [{"type": "resource_link", **link} for link in self.links]
        content += self.images
        result: dict[str, Any] = {"content": content, "isError": False}
        if _structured(version):
            result["structuredContent"] = self.structured
        return result


def _failure(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A tool error the agent can act on: its code, message and details, in text."""
    text = f"{code}: {message}"
    if details:
        text += "\n" + strictjson.dumps(dict(details), ensure_ascii=False)
    return {"content": [{"type": "text", "text": text}], "isError": True}


class ToolFailure(Exception):
    """A tool's call to the HTTP API failed: the result is this error, with isError."""

    def __init__(self, answer: Answer) -> None:
        body = answer.error()
        super().__init__(body["error"])
        details = {k: v for k, v in body.items() if k not in ("error", "status", "code")}
        retry_after = details.get("retry_after") or answer.headers.get("Retry-After")
        if retry_after is not None:
            details["retry_after"] = int(retry_after) if str(retry_after).isdigit() else retry_after
        details["http_status"] = answer.status
        self.code = str(body.get("code", "SERVICE_ERROR"))
        self.message = body["error"]
        if retry_after is not None:
            self.message += f" (retry_after: {details['retry_after']} seconds)"
        self.details = details


@dataclass(frozen=True)
class Tool:
    """One MCP tool: its schemas (built from the catalog when listed) and its adapter."""

    name: str
    title: str
    description: str
    input_schema: Callable[[str, dt.date], dict[str, Any]]
    output_schema: dict[str, Any]
    hints: dict[str, bool]
    adapter: Callable[[dict[str, Any]], ToolResult]


# --- arguments the MCP layer reads itself ------------------------------------------------


def _flag(arguments: dict[str, Any], name: str) -> bool:
    value = arguments.pop(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ArgumentError(f"'{name}' must be true or false.")
    return value


def _text(arguments: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = arguments.pop(name, None)
    if value is None:
        if required:
            raise ArgumentError(f"'{name}' is required.")
        return None
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"'{name}' must be a non-empty string.")
    return value


def _uuid(arguments: dict[str, Any], name: str, what: str) -> str:
    value = _text(arguments, name, required=True)
    assert value is not None
    if not UUID.match(value):
        raise ArgumentError(f"'{name}' must be {what} id (a UUID such as the tools answer).")
    return value


def _no_more(arguments: dict[str, Any]) -> None:
    if arguments:
        raise ArgumentError(
            f"Unknown argument(s): {', '.join(sorted(arguments))[:200]}; tools/list has the schema."
        )


# --- the tools ----------------------------------------------------------------------------


def _generate(arguments: dict[str, Any]) -> ToolResult:
    """POST /generate with the arguments as the body; 202 when `background_job` asks."""
    body = dict(arguments)
    thumbnail, background = _flag(body, "thumbnail"), _flag(body, "background_job")
    headers = _idempotency(body)
    if background:
        headers["Prefer"] = "respond-async"
    answer = call("POST", "/generate", body=body, headers=headers)
    return _job_result(answer, thumbnail=thumbnail)


def _edit(arguments: dict[str, Any]) -> ToolResult:
    """POST /edit with stored images named by id."""
    body = dict(arguments)
    thumbnail = _flag(body, "thumbnail")
    headers = _idempotency(body)
    answer = call("POST", "/edit", body=body, headers=headers)
    return _job_result(answer, thumbnail=thumbnail)


def _idempotency(body: dict[str, Any]) -> dict[str, str]:
    key = _text(body, "idempotency_key")
    return {"Idempotency-Key": key} if key is not None else {}


def _get_job(arguments: dict[str, Any]) -> ToolResult:
    """GET /jobs/<job_id>: a finished job's images, or a running one's progress."""
    arguments = dict(arguments)
    job_id = _uuid(arguments, "job_id", "a job")
    thumbnail = _flag(arguments, "thumbnail")
    _no_more(arguments)
    return _job_result(call("GET", f"/jobs/{job_id}"), thumbnail=thumbnail)


def _list_images(arguments: dict[str, Any]) -> ToolResult:
    """GET /images: a page of stored images, newest first."""
    arguments = dict(arguments)
    limit = arguments.pop("limit", DEFAULT_LIST_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
        raise ArgumentError("'limit' must be an integer from 1 to 200.")
    query = {"limit": str(limit)}
    cursor = _text(arguments, "cursor")
    if cursor is not None:
        query["cursor"] = cursor
    if arguments.get("job_id") is not None:
        query["job_id"] = _uuid(arguments, "job_id", "a job")
    arguments.pop("job_id", None)
    _no_more(arguments)
    answer = call("GET", "/images", query=query)
    if answer.status != 200:
        raise ToolFailure(answer)
    page = answer.json()
    images = [
        {**image, "url": absolute(image["url"]), "thumbnail_url": _thumbnail_url(image["url"])}
        for image in page["images"]
    ]
    structured = {"images": images, "next_cursor": page.get("next_cursor")}
    more = " More with cursor=next_cursor." if page.get("next_cursor") else ""
    summary = f"{len(images)} image(s), newest first.{more}"
    links = [_resource(image) for image in page["images"]]
    return ToolResult(structured, summary, links, [])


def _delete_image(arguments: dict[str, Any]) -> ToolResult:
    """DELETE /images/<image_id>."""
    arguments = dict(arguments)
    image_id = _uuid(arguments, "image_id", "an image")
    _no_more(arguments)
    answer = call("DELETE", f"/images/{image_id}")
    if answer.status != 200:
        raise ToolFailure(answer)
    body = answer.json()
    structured = {"id": body["id"], "job_id": body["job_id"], "deleted": True}
    return ToolResult(structured, body["message"], [], [])


def _list_models(arguments: dict[str, Any]) -> ToolResult:
    """GET /models, without the source links (the agent needs the facts, not their pages)."""
    _no_more(dict(arguments))
    answer = call("GET", "/models")
    if answer.status != 200:
        raise ToolFailure(answer)
    catalog = _without_sources(answer.json())
    usable = [m["id"] for m in catalog["models"] if m["status"] != SHUT_DOWN]
    summary = (
        f"{len(catalog['models'])} models; usable now: {', '.join(usable)}; default "
        f"{catalog['default_model']}. Each lists its sizes (or size_rule), count range and "
        "options; edits says whether edit_image takes it."
    )
    return ToolResult(catalog, summary, [], [])


def _without_sources(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_sources(v) for k, v in value.items() if k != "source"}
    if isinstance(value, list):
        return [_without_sources(v) for v in value]
    return value


def _job_result(answer: Answer, *, thumbnail: bool) -> ToolResult:
    """A job answer (200 stored, 202 accepted, or a pending/failed job) as a tool result."""
    if answer.status not in (200, 202):
        raise ToolFailure(answer)
    body = answer.json()
    structured: dict[str, Any] = {
        "job_id": body["job_id"],
        "status": body["status"],
        "model": body.get("model"),
        "placeholder": bool(body.get("placeholder", False)),
        "images": [_job_image(image) for image in body.get("images", [])],
    }
    for key in ("cost", "usage", "progress", "warnings"):
        if body.get(key) is not None:
            structured[key] = body[key]
    status = body["status"]
    if status == "failed":
        structured["error"] = body.get("error")
        structured["code"] = body.get("code")
    retry_after = answer.headers.get("Retry-After")
    if status in ("queued", "running") and retry_after and retry_after.isdigit():
        structured["retry_after"] = int(retry_after)
    available = [image for image in body.get("images", []) if image.get("url")]
    links = [_resource(image) for image in available]
    images: list[dict[str, Any]] = []
    if thumbnail:
        images, omitted = _thumbnails([image["id"] for image in available])
        if omitted:
            structured["thumbnails_omitted"] = omitted
    return ToolResult(structured, _job_summary(structured), links, images)


def _job_image(image: dict[str, Any]) -> dict[str, Any]:
    url = image.get("url")
    return {
        "id": image["id"],
        "url": absolute(url) if url else None,
        "thumbnail_url": _thumbnail_url(url) if url else None,
        "size": image.get("size"),
        "width": image.get("width"),
        "height": image.get("height"),
        "format": image.get("format"),
        "revised_prompt": image.get("revised_prompt"),
        "status": image.get("status", "available"),
    }


def _thumbnail_url(path: str) -> str:
    return f"{absolute(path)}?width={THUMBNAIL_WIDTH}"


def _job_summary(job: dict[str, Any]) -> str:
    status, job_id = job["status"], job["job_id"]
    if status == "completed":
        cost = job.get("cost") or {}
        priced = f"; cost ${cost['usd']:.4f} ({cost.get('basis')})" if "usd" in cost else ""
        kind = " placeholder" if job.get("placeholder") else ""
        return (
            f"Job {job_id} completed: {len(job['images'])}{kind} image(s) with {job['model']}"
            f"{priced}. Each image's URL is a resource link; read it with resources/read "
            f"(?width={THUMBNAIL_WIDTH} for a small copy)."
        )
    if status == "failed":
        return f"Job {job_id} failed: {job.get('code')}: {job.get('error')}"
    progress = job.get("progress") or {}
    done = (
        f" ({progress['images_done']} of {progress['count']} image(s) done)"
        if "images_done" in progress and "count" in progress
        else ""
    )
    wait = job.get("retry_after", 2)
    return f"Job {job_id} is {status}{done}. Call get_job with this job_id in {wait} s."


def _thumbnails(image_ids: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Small JPEG copies of the images as image content, within MAX_INLINE_BYTES of base64.

    Returns the content items and how many were left out to stay within the bound.
    """
    items: list[dict[str, Any]] = []
    omitted = 0
    budget = MAX_INLINE_BYTES
    for image_id in image_ids:
        answer = call(
            "GET",
            f"/images/{image_id}",
            query={"width": str(THUMBNAIL_WIDTH), "format": THUMBNAIL_FORMAT},
            max_bytes=budget * 3 // 4,
        )
        if answer.status != 200 or answer.truncated:
            omitted += 1
            continue
        data = base64.b64encode(answer.body).decode("ascii")
        budget -= len(data)
        items.append({"type": "image", "data": data, "mimeType": CONTENT_TYPES[THUMBNAIL_FORMAT]})
    return items, omitted


# --- input schemas, from the catalog ------------------------------------------------------


def _usable(today: dt.date) -> list[ModelSpec]:
    return [model for model in MODELS if model.status(today) != SHUT_DOWN]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI schema without its `null` (tools take "leave it out" instead)."""
    result = dict(schema)
    kinds = schema.get("type")
    if isinstance(kinds, list):
        rest = [kind for kind in kinds if kind != "null"]
        result["type"] = rest[0] if len(rest) == 1 else rest
    if "enum" in schema:
        result["enum"] = [value for value in schema["enum"] if value is not None]
    return result


def _per_model(models: Iterable[ModelSpec], describe: Callable[[ModelSpec], str | None]) -> str:
    """Models grouped by what `describe` says about them: "a, b: text; c: other text"."""
    groups: dict[str, list[str]] = {}
    for model in models:
        text = describe(model)
        if text is not None:
            groups.setdefault(text, []).append(model.id)
    return "; ".join(f"{', '.join(ids)}: {text}" for text, ids in groups.items())


def _model_notes(models: list[ModelSpec], default: str, today: dt.date) -> str:
    lines = []
    for model in models:
        status = model.status(today)
        tags = [tag for tag in ("default" if model.id == default else "", status) if tag]
        lines.append(f"{model.id} ({', '.join(tags)}): {model.description}")
    return (
        "The model; leave it out for the default. "
        + " ".join(lines)
        + " Prefer active models; list_models has each model's details."
    )


def _size_notes(models: list[ModelSpec], default_of: Callable[[ModelSpec], str | None]) -> str:
    def describe(model: ModelSpec) -> str:
        fixed = [size for size in model.sizes if size != "auto"]
        if model.size_rule is not None:
            text = f"{model.size_rule.describe()}, e.g. {', '.join(fixed[:4])}"
        else:
            text = ", ".join(fixed)
        if "auto" in model.sizes:
            text += ", or auto"
        return text + f" (default {default_of(model) or model.default_size})"

    return "WxH in pixels. " + _per_model(models, describe) + "."


def _option_notes(
    models: list[ModelSpec], name: str, options_of: Callable[[ModelSpec], Mapping[str, Any]]
) -> str:
    def describe(model: ModelSpec) -> str | None:
        spec = options_of(model).get(name)
        if isinstance(spec, Choice):
            return ", ".join(spec.values)
        if isinstance(spec, IntRange):
            return f"{spec.low}-{spec.high}"
        return None

    takers = _per_model(models, describe)
    others = [m.id for m in models if name not in options_of(m)]
    needs = sorted(
        {
            f"{name}{'=' + rule.value if rule.value else ''} needs {rule.other} "
            f"{' or '.join(rule.allowed)}"
            for model in models
            for rule in model.requires
            if rule.option == name and name in options_of(model)
        }
    )
    text = f"Leave it out for the upstream's default. {takers}."
    if needs:
        text += " " + "; ".join(needs) + "."
    if others:
        text += f" Not taken by {', '.join(others)}: leave it out there."
    return text


_MCP_ARGUMENTS: dict[str, dict[str, Any]] = {
    "thumbnail": {
        "type": "boolean",
        "default": False,
        "description": f"true: also return each image inline as a {THUMBNAIL_WIDTH}-pixel JPEG "
        f"(together at most {MAX_INLINE_BYTES // 1024} KiB of base64), to look at the result. "
        "Leave it false to save context: the resource links are enough to use the images.",
    },
    "idempotency_key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "A fresh unique string (a UUID) for this request. If the call fails "
        "with a timeout or a lost connection, call again with the same key and arguments: "
        "you get the first call's answer instead of paying for the images twice.",
    },
}


def _generate_schema(default_model: str, today: dt.date) -> dict[str, Any]:
    models = _usable(today)
    base = openapi.generate_request_schema(models, default_model)
    properties = {name: _not_null(schema) for name, schema in base["properties"].items()}
    properties["prompt"]["description"] = (
        "What to draw, in detail: subject, style, composition, colours, text to render. "
        + properties["prompt"]["description"].split(". ", 1)[-1]
    )
    properties["model"]["description"] = _model_notes(models, default_model, today)
    properties["size"]["description"] = _size_notes(models, lambda m: None)
    properties["count"]["description"] = "How many images, 1-10 (each one costs)."
    for name in properties:
        if any(name in model.options for model in models):
            properties[name]["description"] = _option_notes(models, name, lambda m: m.options)
    if "background" in properties:
        properties["background"]["description"] = (
            "The image's background (transparent or opaque). "
            + properties["background"]["description"]
        )
    return {
        "type": "object",
        "properties": {
            **properties,
            "background_job": {
                "type": "boolean",
                "default": False,
                "description": "true: return at once with a job_id (status queued) and poll "
                "get_job, instead of waiting for the images. Use it for high quality, large "
                "sizes or many images, which take minutes.",
            },
            **_MCP_ARGUMENTS,
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }


def _edit_schema(default_model: str, today: dt.date) -> dict[str, Any]:
    models = _usable(today)
    default = default_model_for("edit", default_model, today)
    base = openapi.input_json_schema(models, default, "edit")
    properties = {name: _not_null(schema) for name, schema in base["properties"].items()}
    able = [model for model in models if model.edits is not None]
    properties["model"]["description"] = _model_notes(able, default, today)
    properties["size"]["description"] = _size_notes(
        able, lambda m: m.edits.default_size if m.edits else None
    )
    properties["count"]["description"] = "How many images, 1-10 (each one costs)."
    for name in properties:
        if any(model.edits and name in model.edits.options for model in able):
            properties[name]["description"] = _option_notes(
                able, name, lambda m: m.edits.options if m.edits else {}
            )
    properties["image_id"]["description"] = (
        "The id of a stored image to edit (from generate_image, edit_image or list_images). "
        "Give image_id or image_ids."
    )
    properties["image_ids"]["description"] = (
        "Several stored images to start from, in order (instead of image_id), up to each "
        "model's limit (list_models: edits.max_images)."
    )
    if "mask_id" in properties:
        properties["mask_id"]["description"] = (
            "A stored PNG with an alpha channel, the first image's size: its fully "
            "transparent areas are what gets edited. Leave it out to edit the whole image."
        )
    return {
        "type": "object",
        "properties": {**properties, **_MCP_ARGUMENTS},
        "required": ["prompt"] if "prompt" in properties else [],
        "additionalProperties": False,
    }


def _fixed(schema: dict[str, Any]) -> Callable[[str, dt.date], dict[str, Any]]:
    return lambda default_model, today: schema


_UUID_STRING = {"type": "string", "pattern": UUID.pattern}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INTEGER = {"type": ["integer", "null"]}
_COST = {
    "type": "object",
    "description": "US dollars: estimated_usd reserved before the call, usd the real cost "
    "(from the upstream's token usage when it reports it), basis how usd was found.",
    "properties": {
        "estimated_usd": {"type": "number"},
        "usd": {"type": "number"},
        "basis": {"type": "string"},
    },
}
_JOB_IMAGE = {
    "type": "object",
    "required": ["id", "url", "status"],
    "properties": {
        "id": {"type": "string"},
        "url": {**_NULLABLE_STRING, "description": "The image; null once deleted."},
        "thumbnail_url": _NULLABLE_STRING,
        "size": _NULLABLE_STRING,
        "width": _NULLABLE_INTEGER,
        "height": _NULLABLE_INTEGER,
        "format": _NULLABLE_STRING,
        "revised_prompt": _NULLABLE_STRING,
        "status": {"type": "string", "description": "available, or deleted."},
    },
}
_JOB_OUTPUT = {
    "type": "object",
    "required": ["job_id", "status", "images"],
    "properties": {
        "job_id": {"type": "string"},
        "status": {"type": "string", "description": "queued, running, completed or failed."},
        "model": _NULLABLE_STRING,
        "placeholder": {"type": "boolean"},
        "images": {"type": "array", "items": _JOB_IMAGE},
        "cost": _COST,
        "usage": {"type": "object"},
        "progress": {"type": "object"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "retry_after": {"type": "integer", "description": "Seconds before polling again."},
        "error": _NULLABLE_STRING,
        "code": _NULLABLE_STRING,
        "thumbnails_omitted": {
            "type": "integer",
            "description": "Thumbnails left out to keep the result small.",
        },
    },
}
_IMAGE_PAGE = {
    "type": "object",
    "required": ["images", "next_cursor"],
    "properties": {
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "url", "job_id"],
                "properties": {
                    "id": {"type": "string"},
                    "url": {"type": "string"},
                    "thumbnail_url": {"type": "string"},
                    "job_id": {"type": "string"},
                    "prompt": _NULLABLE_STRING,
                    "revised_prompt": _NULLABLE_STRING,
                    "model": _NULLABLE_STRING,
                    "size": _NULLABLE_STRING,
                    "width": _NULLABLE_INTEGER,
                    "height": _NULLABLE_INTEGER,
                    "format": _NULLABLE_STRING,
                    "created_at": _NULLABLE_STRING,
                    "placeholder": {"type": "boolean"},
                },
            },
        },
        "next_cursor": {
            **_NULLABLE_STRING,
            "description": "Pass as cursor for the next page; null on the last page.",
        },
    },
}
_DELETED = {
    "type": "object",
    "required": ["id", "job_id", "deleted"],
    "properties": {
        "id": {"type": "string"},
        "job_id": {"type": "string"},
        "deleted": {"const": True},
    },
}
_CATALOG = {
    "type": "object",
    "required": ["default_model", "models"],
    "properties": {
        "default_model": {"type": "string"},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {
                        "type": "string",
                        "description": "active, deprecated, legacy or shut_down.",
                    },
                },
            },
        },
    },
}

_COSTS = "Errors are results with isError: the text starts with the error code."

# Tool annotations (hints to the host; tools/list copies them).
_READ_ONLY = {"readOnlyHint": True, "openWorldHint": False}
_MAKES_IMAGES = {
    "readOnlyHint": False,
    "destructiveHint": False,
    "idempotentHint": False,
    "openWorldHint": True,
}

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name="list_models",
            title="List image models",
            description="The image models this service offers: for each its status (active, "
            "deprecated with a shut-down date and replacement, legacy, shut_down), the sizes "
            "it takes (or its size rule), how many images per call, each option's allowed "
            "values, and whether edit_image takes it. Call it before choosing a model, size "
            "or option you are not sure of.",
            input_schema=_fixed({"type": "object", "additionalProperties": False}),
            output_schema=_CATALOG,
            hints=_READ_ONLY,
            adapter=_list_models,
        ),
        Tool(
            name="generate_image",
            title="Generate images",
            description="Generate images from a text prompt with OpenAI's image models (the "
            "service holds the OpenAI key). Answers the job: job_id, and for each image its "
            "id, its URL as a resource link, the revised prompt, plus the cost in US dollars. "
            "No image bytes by default: read a link with resources/read (?width=256 for a "
            "small copy) or set thumbnail: true. Takes 10-60 s, minutes at high quality or "
            "large sizes: set background_job: true to get a job_id at once and poll get_job. "
            "A field the chosen model does not take is refused (list_models says which). "
            + _COSTS
            + " QUOTA_EXCEEDED: the key holder's cap is reached, wait retry_after seconds; "
            "PERMISSION_DENIED: your token may not use that model, size, quality or count "
            "(the message lists what it may); CONTENT_POLICY_VIOLATION: rephrase the prompt.",
            input_schema=_generate_schema,
            output_schema=_JOB_OUTPUT,
            hints=_MAKES_IMAGES,
            adapter=_generate,
        ),
        Tool(
            name="edit_image",
            title="Edit images",
            description="Make new images from stored ones and a prompt: image_id (or "
            "image_ids) names images this service stores, e.g. from generate_image; an "
            "optional mask_id marks the area to change. The prompt describes the whole "
            "result, not only the change. Answers a new job like generate_image (the inputs "
            "are kept). Only models whose list_models entry has edits take it. " + _COSTS,
            input_schema=_edit_schema,
            output_schema=_JOB_OUTPUT,
            hints=_MAKES_IMAGES,
            adapter=_edit,
        ),
        Tool(
            name="get_job",
            title="Get a job",
            description="A job by id: when completed, its images (URLs as resource links, "
            "revised prompts) and cost; while queued or running, its progress and retry_after "
            "(seconds to wait before asking again); when failed, its error code and message. "
            "Use it to follow generate_image with background_job: true.",
            input_schema=_fixed(
                {
                    "type": "object",
                    "properties": {
                        "job_id": {**_UUID_STRING, "description": "The job_id a tool answered."},
                        "thumbnail": _MCP_ARGUMENTS["thumbnail"],
                    },
                    "required": ["job_id"],
                    "additionalProperties": False,
                }
            ),
            output_schema=_JOB_OUTPUT,
            hints=_READ_ONLY,
            adapter=_get_job,
        ),
        Tool(
            name="list_images",
            title="List stored images",
            description="Images this service stores, newest first, with their prompts, sizes "
            "and URLs (as resource links). Page with cursor (the previous answer's "
            "next_cursor); job_id keeps one job's images.",
            input_schema=_fixed(
                {
                    "type": "object",
                    "properties": {
                        "limit": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 200,
                            "default": DEFAULT_LIST_LIMIT,
                            "description": "Images per page.",
                        },
                        "cursor": {
                            "type": "string",
                            "description": "next_cursor from the previous page.",
                        },
                        "job_id": {**_UUID_STRING, "description": "Only this job's images."},
                    },
                    "additionalProperties": False,
                }
            ),
            output_schema=_IMAGE_PAGE,
            hints=_READ_ONLY,
            adapter=_list_images,
        ),
        Tool(
            name="delete_image",
            title="Delete an image",
            description="Delete one stored image by id (its file is removed; its job keeps "
            "the record). Only the token that made it (or an admin) may. Cannot be undone.",
            input_schema=_fixed(
                {
                    "type": "object",
                    "properties": {"image_id": {**_UUID_STRING, "description": "The image's id."}},
                    "required": ["image_id"],
                    "additionalProperties": False,
                }
            ),
            output_schema=_DELETED,
            hints={
                "readOnlyHint": False,
                "destructiveHint": True,
                "idempotentHint": True,
                "openWorldHint": False,
            },
            adapter=_delete_image,
        ),
    )
}


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
