"""POST /mcp: the Model Context Protocol over Streamable HTTP, for agent hosts.

Agent hosts (Claude Code and others) add tools as MCP servers. This one holds no OpenAI key
and no state: each POST carries one JSON-RPC 2.0 message (a batch under revision
2025-03-26) and is answered with `application/json`, or 202 for notifications. There is no
session id and no server-initiated stream (GET /mcp is 405).

Each tool is an adapter over the service's own HTTP API, dispatched in-process through the
WSGI app with the caller's `Authorization` header: tokens, caps, validation, idempotency and
asynchronous jobs behave exactly as they do over HTTP. Results carry ids, URLs as resource
links and costs, never image bytes unless the caller asks for small inline thumbnails, and
never more than protocol.MAX_INLINE_BYTES of base64 in one result.

JSON-RPC errors (parse errors included) are answered with HTTP 200 and a JSON-RPC error
body; HTTP error statuses are kept for the transport's own refusals (token, Origin,
MCP-Protocol-Version, Accept, size, content type), in the service's usual error shape.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import Blueprint, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import NotAcceptable, RequestEntityTooLarge, UnsupportedMediaType

from imagegen import __version__, clock, strictjson
from imagegen.apidoc import bare, errors, json_response, operation
from imagegen.errors import PermissionDenied, ValidationError
from imagegen.mcp import protocol
from imagegen.mcp.loopback import absolute, call
from imagegen.mcp.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LEGACY_VERSION,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROTOCOL_VERSIONS,
    RESOURCE_NOT_FOUND,
    THUMBNAIL_WIDTH,
    UUID,
    RpcError,
    is_structured,
)
from imagegen.mcp.tools import TOOLS, ArgumentError, ToolFailure, failure, resource
from imagegen.services import services

bp = Blueprint("mcp", __name__)
log = logging.getLogger(__name__)

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

# A JSON-RPC answer as /mcp sends it (for the OpenAPI description).
_RPC_MESSAGE = {
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
_RPC_BATCH = {"type": "array", "minItems": 1, "items": _RPC_MESSAGE}


# --- the transport ------------------------------------------------------------------------


@bp.post("/mcp")
@operation(
    "mcp",
    tag="service",
    summary="The Model Context Protocol (Streamable HTTP) for agent hosts",
    description="One JSON-RPC 2.0 message per POST (or a batch under MCP 2025-03-26, the "
    "revision assumed without MCP-Protocol-Version), answered with one JSON object (an array "
    "for a batch), or 202 with no body when it holds only notifications or responses. "
    "JSON-RPC errors, a malformed body's included, are 200 answers with a JSON-RPC `error`. "
    "Tools: list_models, generate_image, edit_image, get_job, list_images, delete_image, each "
    "calling this API as the caller's token; resources: stored images by URL. Stateless: no "
    "Mcp-Session-Id; no GET stream (405).",
    parameters=[
        {
            "name": "MCP-Protocol-Version",
            "in": "header",
            "required": False,
            "description": "The revision agreed in `initialize`; without it 2025-03-26.",
            "schema": {"type": "string", "enum": list(PROTOCOL_VERSIONS)},
        }
    ],
    body={
        "required": True,
        "content": {
            "application/json": {
                "schema": {"description": "A JSON-RPC request, notification or response."}
            }
        },
    },
    responses={
        "200": json_response(
            "The JSON-RPC response (an array of them for a batch).",
            schema={"oneOf": [_RPC_MESSAGE, _RPC_BATCH]},
        ),
        "202": bare("Only notifications or responses: accepted, no body."),
        "400": json_response(
            "An MCP-Protocol-Version this server does not speak, or a malformed "
            "Idempotency-Key (VALIDATION_ERROR).",
            "Error",
        ),
        "403": json_response(
            "An Origin header naming another site (PERMISSION_DENIED): DNS rebinding protection.",
            "Error",
        ),
        "406": json_response("Accept does not take application/json (NOT_ACCEPTABLE).", "Error"),
        **errors(413, 415, 500),
    },
)
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


# --- methods ------------------------------------------------------------------------------


def _initialize(params: dict[str, Any], version: str) -> dict[str, Any]:
    """Agree on a revision: the client's if this server speaks it, else this server's newest."""
    asked = params.get("protocolVersion")
    if not isinstance(asked, str):
        raise RpcError(INVALID_PARAMS, "initialize needs 'protocolVersion' (a string).")
    agreed = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
    info: dict[str, Any] = {"name": "image-gen", "version": __version__}
    if is_structured(agreed):
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
        if is_structured(version):
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
        return failure("VALIDATION_ERROR", str(exc))
    except ToolFailure as refused:
        return failure(refused.code, refused.message, refused.details)


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
        "resources": [resource(image, titled=is_structured(version)) for image in page["images"]]
    }
    if page.get("next_cursor"):
        result["nextCursor"] = page["next_cursor"]
    return result


def _resource_templates(params: dict[str, Any], version: str) -> dict[str, Any]:
    template: dict[str, Any] = {
        "uriTemplate": absolute("/images/{image_id}") + "{?width,height,format}",
        "name": "image",
        "description": "A stored image by id. With width (16-2048) and/or height, a copy that "
        "fits in them, never enlarged; format png, jpeg or webp. resources/read answers at "
        f"most {protocol.MAX_INLINE_BYTES // 1024} KiB of base64: "
        f"?width={THUMBNAIL_WIDTH} always fits.",
    }
    if is_structured(version):
        template["title"] = "Stored image (or a smaller copy)"
    return {"resourceTemplates": [template]}


def _resources_read(params: dict[str, Any], version: str) -> dict[str, Any]:
    """An image (or a copy of it) as a base64 blob, if it fits the size bound."""
    uri = params.get("uri")
    if not isinstance(uri, str):
        raise RpcError(INVALID_PARAMS, "resources/read needs 'uri' (a string).")
    image_id, query = _image_uri(uri)
    limit = protocol.MAX_INLINE_BYTES * 3 // 4
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
