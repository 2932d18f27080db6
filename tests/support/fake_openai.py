"""A fake OpenAI Images API server for tests and benchmarks.

The server listens on a real socket and speaks OpenAI's wire format for
``POST /v1/images/{generations,edits,variations}`` and ``GET /v1/models``.
It also speaks Azure OpenAI's two forms of the same calls: the classic
``POST /openai/deployments/<deployment>/images/{generations,edits}?api-version=...``
with an ``api-key`` header (a missing api-version answers Azure's 404), and
``POST /openai/v1/images/...`` with ``api-key`` or a bearer token.  Each
recorded request says what it carried: ``route``, ``query``, ``auth_kind``
(bearer | api-key), ``deployment`` and ``fields``.
Image URLs handed out for DALL-E models point at ``GET /files/<token>.png``
on the same server.  A request with ``stream: true`` is answered as OpenAI
streams: Server-Sent Events (``image_generation.partial_image`` x
``partial_images``, then ``image_generation.completed``, per image; ``image_edit.*``
for edits) over chunked transfer, the latency spread over the events.
A prompt holding ``[latency=S]`` (S seconds, a decimal number up to
``MAX_PROMPT_LATENCY``) is waited S seconds instead of the server's
``latency``, so one benchmark can mix long and short calls.
:meth:`FakeOpenAI.hold` holds every image call, once recorded, until
:meth:`FakeOpenAI.release`, so a test decides when the upstream answers.
Multipart edits and variations have their image parts checked like OpenAI
does (formats by content, counts, sizes, squareness, the mask's format, alpha
and dimensions) and answer OpenAI's error bodies.  Every
request is recorded before any behaviour is applied, and the answers to image
calls can be scripted with :meth:`FakeOpenAI.enqueue` /
:meth:`FakeOpenAI.set_default` using the ``FakeResponse`` factories defined
here (errors, faults, odd payloads).

Stdlib only.  Also runnable as a script::

    python tests/support/fake_openai.py --host 0.0.0.0 --port 8080 --latency 1.0
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import itertools
import json
import re
import secrets
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "AZURE_API_VERSION",
    "FakeOpenAI",
    "FakeResponse",
    "FileSpec",
    "RecordedRequest",
    "UploadedFile",
    "azure_content_filter",
    "azure_error",
    "azure_rate_limited",
    "bad_request",
    "content_policy_violation",
    "drop_connection",
    "error",
    "file_url_status",
    "insufficient_quota",
    "invalid_api_key",
    "invalid_b64",
    "make_gif",
    "make_png",
    "make_svg",
    "model_not_found",
    "moderation_blocked",
    "non_json",
    "not_an_image",
    "prompt_latency",
    "rate_limited",
    "redirect_url",
    "reset_mid_body",
    "server_error",
    "slow",
    "success",
    "truncated_b64",
    "url_to",
    "usage_report",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAD_CHUNK_TYPE = b"fkPd"
"""Private, ancillary, safe-to-copy chunk type used to pad PNGs; decoders skip it."""

MAX_GENERATED_SIDE = 64
DEFAULT_SIDE = 8
IMAGE_ENDPOINTS = {
    "/v1/images/generations": "generations",
    "/v1/images/edits": "edits",
    "/v1/images/variations": "variations",
}
# Azure OpenAI: the classic per-deployment path, and the v1 API's (read 2026-12-02,
# https://learn.microsoft.com/en-us/azure/ai-services/openai/how-to/dall-e and
# https://learn.microsoft.com/en-us/azure/foundry/openai/api-version-lifecycle).
AZURE_DEPLOYMENT_PATH = re.compile(
    r"^/openai/deployments/(?P<deployment>[^/]+)/images/(?P<endpoint>generations|edits|variations)$"
)
AZURE_V1_ENDPOINTS = {
    "/openai/v1/images/generations": "generations",
    "/openai/v1/images/edits": "edits",
    "/openai/v1/images/variations": "variations",
}
AZURE_API_VERSION = "2025-04-01-preview"
AZURE_ACCESS_DENIED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)
AZURE_CONTENT_FILTER_MESSAGE = (
    "Your request was rejected as a result of our safety system. Your prompt may contain "
    "text that is not allowed by our safety system."
)
MODELS = ("gpt-image-1", "gpt-image-1-mini", "dall-e-2", "dall-e-3")
# `[latency=2.5]` in a prompt: that call's latency (seconds) instead of the server's.
PROMPT_LATENCY = re.compile(r"\[latency=(\d{1,6}(?:\.\d{1,6})?)\]")
MAX_PROMPT_LATENCY = 3600.0
# Seconds a held image call waits for release() at most, so a test that forgets it ends.
HOLD_LIMIT = 120.0
_MAX_STORED_FILES = 4096
_MAX_N = 10

INVALID_API_KEY_MESSAGE = (
    "Incorrect API key provided: sk-abc***xyz. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
MISSING_API_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
    "or as the password field (with blank username) if you're accessing the API "
    "from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)
INVALID_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means "
    "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
    "payload, but what was sent was not valid JSON. If you have trouble figuring "
    "out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)
CONTENT_POLICY_MESSAGE = (
    "Your request was rejected as a result of our safety system. Your prompt may "
    "contain text that is not allowed by our safety system."
)
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
OVERLOADED_MESSAGE = "The engine is currently overloaded, please try again later."


# ---------------------------------------------------------------------------
# PNG helpers
# ---------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """Encode one PNG chunk (length, type, data, CRC)."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def make_png(
    width: int = DEFAULT_SIDE,
    height: int = DEFAULT_SIDE,
    rgb: tuple[int, int, int] = (0, 0, 0),
    pad_to: int | None = None,
) -> bytes:
    """Return a valid solid-colour 8-bit RGB PNG.

    With ``pad_to``, a private ancillary chunk is inserted so the file is
    exactly ``pad_to`` bytes long (when that is at least the unpadded size
    plus the 12-byte chunk overhead).
    """
    header = PNG_SIGNATURE + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    row = b"\x00" + bytes(rgb) * width
    idat = _png_chunk(b"IDAT", zlib.compress(row * height))
    iend = _png_chunk(b"IEND", b"")
    padding = b""
    if pad_to is not None:
        room = pad_to - (len(header) + len(idat) + len(iend)) - 12
        if room >= 0:
            padding = _png_chunk(PAD_CHUNK_TYPE, bytes(room))
    return header + padding + idat + iend


def make_gif(
    width: int = DEFAULT_SIDE,
    height: int = DEFAULT_SIDE,
    frames: int = 2,
    rgb: tuple[int, int, int] = (0, 0, 0),
    delay_ms: int = 200,
) -> bytes:
    """Return a valid looping animated GIF89a of ``frames`` solid frames (stdlib only).

    The image data is LZW with 7-bit literals: 8-bit codes, a clear code before every 126
    pixels, so the code size never grows and each code is one byte.
    """
    palette = bytes(rgb) + bytes((255 - rgb[0], 255 - rgb[1], 255 - rgb[2])) + bytes(3 * 126)
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF6, 0, 0) + palette)
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    pixels = width * height
    for frame in range(frames):
        out += b"\x21\xf9\x04\x04" + struct.pack("<H", delay_ms // 10) + b"\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
        codes = bytearray()
        for start in range(0, pixels, 126):
            codes.append(0x80)  # clear
            codes += bytes([frame % 2]) * min(126, pixels - start)
        codes.append(0x81)  # end of information
        out.append(7)
        for start in range(0, len(codes), 255):
            block = codes[start : start + 255]
            out += bytes([len(block)]) + block
        out.append(0)
    return bytes(out + b"\x3b")


def make_svg(width: int = DEFAULT_SIDE, height: int = DEFAULT_SIDE) -> bytes:
    """Return a small valid SVG drawing of ``width`` x ``height``."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><rect width="{width}" height="{height}" '
        'fill="#c81e1e"/><circle cx="50%" cy="50%" r="25%" fill="#fff"/></svg>'
    ).encode()


def _image_dims(size: Any) -> tuple[int, int]:
    """Pixel size for a generated image: ``WxH`` if both <= 64, else 8x8."""
    if isinstance(size, str):
        w, sep, h = size.lower().partition("x")
        if sep and w.isdigit() and h.isdigit():
            width, height = int(w), int(h)
            if 0 < width <= MAX_GENERATED_SIDE and 0 < height <= MAX_GENERATED_SIDE:
                return width, height
    return DEFAULT_SIDE, DEFAULT_SIDE


def _colour(counter: int) -> tuple[int, int, int]:
    """A distinct colour per counter value (bijective over 2**24 values)."""
    value = (counter * 2654435761) & 0xFFFFFF
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _request_id() -> str:
    return "req_" + secrets.token_hex(16)


# ---------------------------------------------------------------------------
# Scripted responses
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """How a ``GET /files/<token>.png`` answers."""

    status: int = 200
    content_type: str = "image/png"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeResponse:
    """A behaviour the server plays back for one image call.

    ``kind`` is one of:

    * ``"success"``: an OpenAI-shaped success; ``b64_json``, ``url`` or
      ``file`` (mutually exclusive) override every item in ``data``;
    * ``"raw"``: ``status``/``content_type``/``body``/``headers`` verbatim;
    * ``"drop_connection"``: close the socket without answering;
    * ``"reset_mid_body"``: a success whose body is cut short.

    ``delay`` seconds are waited (interruptibly) before answering. ``usage``, when set,
    is the ``usage`` of a GPT Image success (each completed event's, when streamed),
    verbatim: ``json.dumps`` writes huge integers as digits and floats such as ``inf`` as
    ``Infinity``, as a faulty upstream might. ``partial_b64_json``, when set, is every
    ``*.partial_image`` event's image when streamed (otherwise a PNG of the final's size).
    """

    kind: Literal["success", "raw", "drop_connection", "reset_mid_body"] = "success"
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    b64_json: str | None = None
    url: str | None = None
    file: FileSpec | None = None
    usage: Any = None
    partial_b64_json: str | None = None


def success() -> FakeResponse:
    """The default behaviour: answer like OpenAI does."""
    return FakeResponse()


def error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> FakeResponse:
    """An OpenAI-style JSON error: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return FakeResponse(
        kind="raw",
        status=status,
        body=json.dumps(body).encode(),
        headers=dict(headers or {}),
    )


def azure_error(
    status: int,
    code: str,
    message: str,
    *,
    inner: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> FakeResponse:
    """An Azure OpenAI JSON error: ``{"error": {code, message[, innererror]}}``."""
    details: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        details["innererror"] = dict(inner)
    return FakeResponse(
        kind="raw",
        status=status,
        body=json.dumps({"error": details}).encode(),
        headers=dict(headers or {}),
    )


def azure_content_filter() -> FakeResponse:
    """400 from Azure's content filter, with its ResponsibleAIPolicyViolation inner error."""
    results = {"violence": {"filtered": True, "severity": "medium"}}
    inner = {"code": "ResponsibleAIPolicyViolation", "content_filter_results": results}
    return azure_error(400, "content_filter", AZURE_CONTENT_FILTER_MESSAGE, inner=inner)


def azure_rate_limited(retry_after: int = 1) -> FakeResponse:
    """429 as Azure sends it: code "429", the wait in the message and in Retry-After."""
    message = (
        "Requests to the Images_Generations Operation under Azure OpenAI API version "
        f"{AZURE_API_VERSION} have exceeded call rate limit of your current pricing tier. "
        f"Please retry after {retry_after} seconds."
    )
    return azure_error(429, "429", message, headers={"retry-after": str(retry_after)})


def invalid_api_key() -> FakeResponse:
    """401 for a wrong API key."""
    return error(401, INVALID_API_KEY_MESSAGE, "invalid_request_error", "invalid_api_key")


def rate_limited(
    retry_after: str | int | float | None = "2",
    retry_after_ms: str | int | float | None = None,
) -> FakeResponse:
    """429 rate limit with ``retry-after`` (and optionally ``retry-after-ms``) headers."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    wait = f"{retry_after}s" if retry_after is not None else "a moment"
    message = (
        "Rate limit reached for gpt-image-1 in organization org-fake on images per "
        f"minute (IPM): Limit 5, Used 5, Requested 1. Please try again in {wait}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    return error(429, message, "requests", "rate_limit_exceeded", headers=headers)


def insufficient_quota() -> FakeResponse:
    """429 for an exhausted billing quota (not retryable)."""
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return error(429, message, "insufficient_quota", "insufficient_quota")


def model_not_found(model: str) -> FakeResponse:
    """404 for an unknown or inaccessible model."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error(404, message, "invalid_request_error", "model_not_found")


def moderation_blocked() -> FakeResponse:
    """400 from the GPT Image safety system; the message quotes the request id."""
    rid = _request_id()
    message = (
        "Your request was rejected by the safety system. If you believe this is an "
        f"error, contact us at help.openai.com and include the request ID {rid}."
    )
    return error(
        400,
        message,
        "image_generation_user_error",
        "moderation_blocked",
        headers={"x-request-id": rid},
    )


def content_policy_violation() -> FakeResponse:
    """400 from the DALL-E safety system."""
    return error(400, CONTENT_POLICY_MESSAGE, "invalid_request_error", "content_policy_violation")


def server_error(status: int = 500, message: str | None = None) -> FakeResponse:
    """5xx ``server_error`` (503 defaults to the "overloaded" message)."""
    if message is None:
        message = OVERLOADED_MESSAGE if status == 503 else SERVER_ERROR_MESSAGE
    return error(status, message, "server_error")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> FakeResponse:
    """400 ``invalid_request_error``."""
    return error(400, message, "invalid_request_error", code, param)


def non_json(
    status: int,
    body: bytes = b"<html>Bad gateway</html>",
    content_type: str = "text/html",
) -> FakeResponse:
    """A non-JSON answer, as from a proxy or load balancer."""
    return FakeResponse(kind="raw", status=status, content_type=content_type, body=body)


def drop_connection() -> FakeResponse:
    """Close the connection without sending anything."""
    return FakeResponse(kind="drop_connection")


def reset_mid_body() -> FakeResponse:
    """Send a 200 with a Content-Length larger than the bytes sent, then close."""
    return FakeResponse(kind="reset_mid_body")


def slow(seconds: float) -> FakeResponse:
    """Wait ``seconds`` (on top of the server latency), then succeed."""
    return FakeResponse(delay=seconds)


def truncated_b64() -> FakeResponse:
    """Success whose ``b64_json`` is a PNG's base64 cut short so it fails to decode."""
    full = _b64(make_png(rgb=(200, 30, 30)))
    cut = len(full) // 2
    cut -= (cut - 1) % 4
    return FakeResponse(b64_json=full[:cut])


def invalid_b64() -> FakeResponse:
    """Success whose ``b64_json`` is not base64."""
    return FakeResponse(b64_json="!!!notbase64")


def not_an_image() -> FakeResponse:
    """Success whose ``b64_json`` decodes to bytes that are not an image."""
    return FakeResponse(b64_json=_b64(b"hello, not an image"))


def usage_report(usage: Any) -> FakeResponse:
    """Success whose ``usage`` (per call, or per completed event when streamed) is ``usage``."""
    return FakeResponse(usage=usage)


def url_to(url: str) -> FakeResponse:
    """Success whose data items carry ``{"url": url}`` verbatim."""
    return FakeResponse(url=url)


def file_url_status(
    status: int,
    content_type: str = "text/html",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> FakeResponse:
    """Success with a ``/files/`` URL that answers with this status/type/body."""
    spec = FileSpec(
        status=status, content_type=content_type, body=body, headers=dict(headers or {})
    )
    return FakeResponse(file=spec)


def redirect_url(location: str, status: int = 302) -> FakeResponse:
    """Success with a ``/files/`` URL that redirects to ``location``."""
    return FakeResponse(
        file=FileSpec(status=status, content_type="text/plain", headers={"Location": location})
    )


_SUCCESS = FakeResponse()


class _RequestError(Exception):
    """Raised while building a success when the request parameters are invalid."""

    def __init__(self, response: FakeResponse) -> None:
        super().__init__(response)
        self.response = response


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------


@dataclass
class UploadedFile:
    """One file part of a multipart/form-data request."""

    name: str
    filename: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        """The file's length in bytes."""
        return len(self.data)


@dataclass
class RecordedRequest:
    """A request as received by the fake (``path`` includes any query string)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    time: float
    form: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    @property
    def route(self) -> str:
        """The path without its query string."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the last value of each)."""
        return dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))

    @property
    def auth_kind(self) -> Literal["bearer", "api-key"] | None:
        """How the key came: an ``api-key`` header, a bearer token, or not at all."""
        if self.header("api-key"):
            return "api-key"
        if (self.header("authorization") or "").lower().startswith("bearer "):
            return "bearer"
        return None

    @property
    def deployment(self) -> str | None:
        """The Azure deployment named in a classic Azure path."""
        match = AZURE_DEPLOYMENT_PATH.match(self.route)
        return match["deployment"] if match else None

    @property
    def fields(self) -> dict[str, Any]:
        """The request's fields: the JSON object, or the multipart text fields."""
        return self.params

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return default

    @property
    def is_multipart(self) -> bool:
        """Whether the body was sent as multipart/form-data."""
        return (self.header("content-type") or "").lower().startswith("multipart/form-data")

    @property
    def params(self) -> dict[str, Any]:
        """The request parameters: the JSON object, or the multipart text fields."""
        if isinstance(self.json, dict):
            return self.json
        return dict(self.form)


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[UploadedFile]]:
    """Split a multipart/form-data body into text fields and file parts."""
    ctype = Message()
    ctype["Content-Type"] = content_type
    boundary = ctype.get_param("boundary")
    form: dict[str, str] = {}
    files: list[UploadedFile] = []
    if not isinstance(boundary, str) or not boundary:
        return form, files
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, _, data = part.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_filename()
        if filename is None:
            form[name] = data.decode("utf-8", "replace")
        else:
            files.append(
                UploadedFile(
                    name=name,
                    filename=filename,
                    content_type=headers.get_content_type(),
                    data=data,
                )
            )
    return form, files


def _build_record(
    method: str, path: str, headers: Mapping[str, str], body: bytes
) -> RecordedRequest:
    """Parse a raw request into a RecordedRequest (JSON or multipart fields)."""
    record = RecordedRequest(
        method=method,
        path=path,
        headers=dict(headers),
        body=body,
        json=None,
        time=time.monotonic(),
    )
    if record.is_multipart:
        record.form, record.files = _parse_multipart(record.header("content-type") or "", body)
    elif body:
        try:
            record.json = json.loads(body)
        except ValueError:
            record.json = None
    return record


# ---------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    """Threaded HTTP server tuned for load and quiet about client disconnects."""

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without the reverse-DNS lookup HTTPServer does."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore disconnect noise; report anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes requests to the owning FakeOpenAI."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            sys.stderr.write(f"fake-openai {self.address_string()} - {format % args}\n")

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def _dispatch(self) -> None:
        try:
            body, unreadable = self._read_body(), False
        except ValueError:
            body, unreadable = b"", True
        record = _build_record(self.command, self.path, dict(self.headers.items()), body)
        self.server.fake._record(record)
        path = urlsplit(self.path).path
        if unreadable:
            self.close_connection = True
            self._play(bad_request("Could not read the request body."))
        elif path.startswith("/files/") and self.command in ("GET", "HEAD"):
            self._serve_file(path[len("/files/") :])
        elif path == "/v1/models" and self.command == "GET":
            self._models(record, None)
        elif path.startswith("/v1/models/") and self.command == "GET":
            self._models(record, path[len("/v1/models/") :])
        elif path in IMAGE_ENDPOINTS and self.command == "POST":
            self._images(record, IMAGE_ENDPOINTS[path])
        elif path.startswith("/openai/") and self.command == "POST":
            self._azure(record, path)
        else:
            self._play(error(404, f"Invalid URL ({self.command} {path})", "invalid_request_error"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def _origin(self) -> str:
        """The origin clients used to reach us (for URLs we hand out)."""
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.fake.origin

    def _auth_failure(self, record: RecordedRequest) -> FakeResponse | None:
        if not self.server.fake.require_auth:
            return None
        if record.route.startswith("/openai/"):
            # Azure: the classic path takes the key only as api-key; v1 takes either.
            v1 = record.route.startswith("/openai/v1/")
            if record.auth_kind == "api-key" or (v1 and record.auth_kind == "bearer"):
                return None
            return azure_error(401, "401", AZURE_ACCESS_DENIED_MESSAGE)
        if not record.header("authorization"):
            return error(401, MISSING_API_KEY_MESSAGE, "invalid_request_error")
        return None

    def _azure(self, record: RecordedRequest, path: str) -> None:
        """Azure's image paths: the v1 form as OpenAI's; the classic one needs an
        api-version (Azure answers 404 without one) and, when the fake lists deployments,
        one of them."""
        if path in AZURE_V1_ENDPOINTS:
            self._images(record, AZURE_V1_ENDPOINTS[path])
            return
        match = AZURE_DEPLOYMENT_PATH.match(path)
        known = self.server.fake.azure_deployments
        if match is None or not record.query.get("api-version"):
            self._play(azure_error(404, "404", "Resource not found"))
        elif known is not None and match["deployment"] not in known:
            message = (
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again."
            )
            self._play(azure_error(404, "DeploymentNotFound", message))
        else:
            self._images(record, match["endpoint"])

    def _models(self, record: RecordedRequest, model: str | None) -> None:
        failure = self._auth_failure(record)
        if failure is not None:
            self._play(failure)
            return
        entries = [
            {"id": name, "object": "model", "created": 1698785189, "owned_by": "system"}
            for name in MODELS
        ]
        if model is None:
            self._send_json(200, {"object": "list", "data": entries})
            return
        for entry in entries:
            if entry["id"] == model:
                self._send_json(200, entry)
                return
        self._play(model_not_found(model))

    def _images(self, record: RecordedRequest, endpoint: str) -> None:
        fake = self.server.fake
        plan = self._auth_failure(record)
        if plan is None and not record.is_multipart and not isinstance(record.json, dict):
            plan = error(400, INVALID_JSON_MESSAGE, "invalid_request_error")
        if plan is None and record.is_multipart and endpoint in ("edits", "variations"):
            plan = _upload_failure(record, endpoint, fake.variation_models)
        if plan is None:
            plan = fake._next_behaviour()
        if not fake._wait_released():
            self.close_connection = True
            return
        latency = prompt_latency(record.params.get("prompt"), fake.latency) + plan.delay
        if plan.kind == "success" and _wants_stream(record.params):
            self._stream(plan, record.params, endpoint, latency)
            return
        if not fake._sleep(latency):
            self.close_connection = True
            return
        self._play(plan, record.params, endpoint)

    def _stream(
        self, plan: FakeResponse, params: Mapping[str, Any], endpoint: str, latency: float
    ) -> None:
        """Answer ``stream: true`` as OpenAI does: Server-Sent Events over chunked transfer.

        For each image, ``partial_images`` (0-3) ``*.partial_image`` events, then one
        ``*.completed`` event with its usage; the latency is spread evenly over the events.
        """
        fake = self.server.fake
        try:
            payload = fake._success_payload(params, endpoint, plan, self._origin())
            partials = _parse_partial_images(params.get("partial_images"))
        except _RequestError as exc:
            if fake._sleep(latency):
                self._play(exc.response)
            return
        prefix = "image_edit" if endpoint == "edits" else "image_generation"
        shared = {key: payload.get(key, "auto") for key in ("size", "quality", "background")}
        shared["output_format"] = payload.get("output_format", "png")
        events: list[dict[str, Any]] = []
        for item in payload["data"]:
            final = base64.b64decode(item.get("b64_json") or "") or make_png()
            width, height = _png_dims(final)
            for index in range(partials):
                rough = plan.partial_b64_json or _b64(
                    make_png(width, height, _colour(1000 + index))
                )
                events.append(
                    {
                        "type": f"{prefix}.partial_image",
                        "b64_json": rough,
                        "created_at": int(time.time()),
                        "partial_image_index": index,
                        **shared,
                    }
                )
            events.append(
                {
                    "type": f"{prefix}.completed",
                    "b64_json": item.get("b64_json"),
                    "created_at": int(time.time()),
                    **shared,
                    "usage": plan.usage
                    if plan.usage is not None
                    else {
                        "input_tokens": 50,
                        "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
                        "output_tokens": 1056,
                        "total_tokens": 1106,
                    },
                }
            )
        self.close_connection = True
        self.send_response(200)
        self.send_header("x-request-id", _request_id())
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = latency / len(events)
        for event in events:
            if not fake._sleep(step):
                return
            chunk = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _play(
        self,
        plan: FakeResponse,
        params: Mapping[str, Any] | None = None,
        endpoint: str = "generations",
    ) -> None:
        """Send (or withhold) the response described by ``plan``."""
        if plan.kind == "raw":
            self._send(plan.status, plan.body, plan.content_type, plan.headers)
            return
        if plan.kind == "drop_connection":
            self.close_connection = True
            return
        fake = self.server.fake
        try:
            payload = fake._success_payload(params or {}, endpoint, plan, self._origin())
        except _RequestError as exc:
            self._play(exc.response)
            return
        body = json.dumps(payload).encode()
        if plan.kind == "reset_mid_body":
            self.close_connection = True
            self.send_response(200)
            self.send_header("x-request-id", _request_id())
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return
        self._send(200, body, "application/json", plan.headers)

    def _serve_file(self, name: str) -> None:
        spec = self.server.fake._get_file(name)
        if spec is None:
            self._play(error(404, "The specified blob does not exist.", "not_found_error"))
            return
        self._send(spec.status, spec.body, spec.content_type, spec.headers)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Write a complete response with Content-Length and an x-request-id."""
        extra = dict(headers or {})
        self.send_response(status)
        if not any(key.lower() == "x-request-id" for key in extra):
            self.send_header("x-request-id", _request_id())
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# ---------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------


class FakeOpenAI:
    """A scriptable fake of the OpenAI Images API on a real local socket.

    Public attributes (safe to set from any thread): ``latency`` (seconds
    waited before answering each ``/images/*`` call whose prompt names no
    ``[latency=S]``), ``image_bytes``
    (fixed bytes for every image; otherwise distinct small PNGs are
    generated), ``require_auth`` (answer 401 when no Authorization header is
    sent), ``variation_models`` (models besides dall-e-2 whose variations it makes) and
    ``verbose`` (log requests to stderr).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.latency: float = 0.0
        self.image_bytes: bytes | None = None
        self.require_auth: bool = True
        self.verbose: bool = False
        self.requests: list[RecordedRequest] = []
        # Azure deployments the classic path serves (None: any name).
        self.azure_deployments: set[str] | None = None
        # Models besides dall-e-2 whose variations it makes, as an OpenAI-compatible server
        # may (OpenAI itself refuses every other model).
        self.variation_models: set[str] = set()
        self._lock = threading.Lock()
        self._queue: deque[FakeResponse] = deque()
        self._default: FakeResponse | None = None
        self._pad_to: int | None = None
        self._counter = itertools.count(1)
        self._files: OrderedDict[str, FileSpec] = OrderedDict()
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._released = threading.Event()  # cleared while image calls are held
        self._released.set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeOpenAI:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stopped.clear()
        server = _Server((self.host, self.port), self)
        self._server = server
        self._bound_port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai:{self._bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, interrupt pending latency waits and close open connections."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopped.set()
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def server_port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        if self._bound_port is None:
            raise RuntimeError("FakeOpenAI has not been started")
        return self._bound_port

    @property
    def origin(self) -> str:
        """``http://host:port`` of the server (wildcard hosts map to 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.server_port}"

    @property
    def base_url(self) -> str:
        """The API base URL, including ``/v1`` (like OPENAI_BASE_URL)."""
        return self.origin + "/v1"

    # -- behaviour controls ------------------------------------------------

    def reset(self) -> None:
        """Clear recorded requests, queued behaviours and stored files; restore defaults."""
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._default = None
            self._pad_to = None
            self._files.clear()
        self.latency = 0.0
        self.image_bytes = None
        self.require_auth = True
        self.azure_deployments = None
        self.variation_models = set()
        self._released.set()

    def hold(self) -> None:
        """Hold every image call from now on, once recorded, until :meth:`release` (or
        :meth:`reset`, or :meth:`stop`, which drops it); a call waits ``HOLD_LIMIT`` s at
        most, then is answered as usual. Calls already answering are not held."""
        self._released.clear()

    def release(self) -> None:
        """Let held image calls (and later ones) go on to their latency and answer."""
        self._released.set()

    def enqueue(self, *responses: FakeResponse) -> None:
        """Queue behaviours consumed in order by the next ``/images/*`` calls."""
        with self._lock:
            self._queue.extend(responses)

    def set_default(self, response: FakeResponse | None) -> None:
        """Use ``response`` whenever the queue is empty (``None`` restores success)."""
        with self._lock:
            self._default = response

    def set_image_size(self, nbytes: int | None) -> None:
        """Pad generated PNGs to ``nbytes`` (``None`` disables padding)."""
        with self._lock:
            self._pad_to = nbytes

    @property
    def image_requests(self) -> list[RecordedRequest]:
        """Recorded requests to ``/v1/images/*`` and Azure's image paths."""
        with self._lock:
            return [r for r in self.requests if _is_image_route(r.route)]

    # -- internals used by the handler -------------------------------------

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(record)

    def _next_behaviour(self) -> FakeResponse:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            return self._default or _SUCCESS

    def _wait_released(self) -> bool:
        """Wait while image calls are held (``HOLD_LIMIT`` s at most); False if the server
        was stopped meanwhile."""
        deadline = time.monotonic() + HOLD_LIMIT
        while not self._released.wait(0.05):
            if self._stopped.is_set() or time.monotonic() >= deadline:
                break
        return not self._stopped.is_set()

    def _sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; False if the server was stopped meanwhile."""
        if seconds > 0:
            return not self._stopped.wait(seconds)
        return not self._stopped.is_set()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _next_image(self, size: Any, params: Mapping[str, Any] | None = None) -> bytes:
        """The next image: PNG, or the GIF (``frame_count`` frames) or SVG ``output_format``
        asks for, as GPT Image 2.6 answers."""
        fixed = self.image_bytes
        if fixed is not None:
            return fixed
        with self._lock:
            counter = next(self._counter)
            pad_to = self._pad_to
        width, height = _image_dims(size)
        fmt = (params or {}).get("output_format")
        if fmt == "gif":
            count = str((params or {}).get("frame_count") or 9)
            frames = min(int(count), 16) if count.isdigit() and int(count) >= 1 else 9
            return make_gif(width, height, frames, _colour(counter))
        if fmt == "svg":
            return make_svg(width, height)
        return make_png(width, height, _colour(counter), pad_to)

    def _store_file(self, spec: FileSpec) -> str:
        name = secrets.token_hex(16) + ".png"
        with self._lock:
            self._files[name] = spec
            while len(self._files) > _MAX_STORED_FILES:
                self._files.popitem(last=False)
        return name

    def _get_file(self, name: str) -> FileSpec | None:
        with self._lock:
            return self._files.get(name)

    def _success_payload(
        self,
        params: Mapping[str, Any],
        endpoint: str,
        plan: FakeResponse,
        origin: str,
    ) -> dict[str, Any]:
        """Build an OpenAI success body for ``params`` honouring ``plan``'s overrides."""
        n = _parse_n(params.get("n"))
        model = params.get("model")
        family = _family(model, endpoint)
        as_url = family != "gpt" and (params.get("response_format") or "url") == "url"

        def item() -> dict[str, Any]:
            if plan.b64_json is not None:
                return {"b64_json": plan.b64_json}
            if plan.url is not None:
                return {"url": plan.url}
            if plan.file is not None:
                return {"url": f"{origin}/files/{self._store_file(plan.file)}"}
            image = self._next_image(params.get("size"), params)
            if as_url:
                name = self._store_file(FileSpec(body=image))
                return {"url": f"{origin}/files/{name}"}
            return {"b64_json": _b64(image)}

        data = [item() for _ in range(n)]
        created = int(time.time())
        if family == "dall-e-3":
            revised = _revised_prompt(params.get("prompt"))
            data = [{"revised_prompt": revised, **entry} for entry in data]
        if family != "gpt":
            return {"created": created, "data": data}
        return {
            "created": created,
            "data": data,
            "background": "transparent" if params.get("background") == "transparent" else "opaque",
            "output_format": params.get("output_format") or "png",
            "quality": _resolved(params.get("quality"), "medium"),
            "size": _resolved(params.get("size"), "1024x1024"),
            "usage": plan.usage
            if plan.usage is not None
            else {
                "input_tokens": 50,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
                "output_tokens": 1056 * n,
                "total_tokens": 50 + 1056 * n,
            },
        }


# ---------------------------------------------------------------------------
# Uploads (multipart edits and variations)
# ---------------------------------------------------------------------------

_MIB = 1024 * 1024
_GPT_MAX_IMAGES = 16
_GPT_MAX_IMAGE_BYTES = 50 * _MIB
_DALL_E_2_MAX_BYTES = 4 * _MIB


@dataclass(frozen=True)
class _Sniffed:
    """What the magic bytes say; PNG dimensions and alpha when its IHDR is readable."""

    format: str
    width: int | None = None
    height: int | None = None
    alpha: bool | None = None


def _sniff(data: bytes) -> _Sniffed | None:
    """Recognise PNG, JPEG or WebP by content (not by name or declared type)."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) >= 26 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return _Sniffed("png", width, height, data[25] in (4, 6) or b"tRNS" in data)
        return _Sniffed("png")
    if data.startswith(b"\xff\xd8\xff"):
        return _Sniffed("jpeg")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _Sniffed("webp")
    return None


def _upload_failure(
    record: RecordedRequest, endpoint: str, variation_models: set[str]
) -> FakeResponse | None:
    """OpenAI's answer to a bad multipart edit or variation, or None if the files are fine
    (`variation_models` make variations too, taking what GPT Image models take)."""
    model = record.form.get("model")
    family = _family(model, endpoint)
    if endpoint == "variations" and family != "dall-e-2" and model not in variation_models:
        return bad_request(
            f"Invalid value: '{model}'. Value must be 'dall-e-2'.", "model", "invalid_value"
        )
    if endpoint == "edits" and family == "dall-e-3":
        return bad_request(
            f"Invalid value: '{model}'. DALL-E 3 does not support image edits.",
            "model",
            "invalid_value",
        )
    images = [f for f in record.files if f.name in ("image", "image[]")]
    masks = [f for f in record.files if f.name == "mask"]
    if not images:
        return bad_request(
            "Missing required parameter: 'image'.", "image", "missing_required_parameter"
        )
    limit = 1 if family == "dall-e-2" else _GPT_MAX_IMAGES
    if len(images) > limit:
        return bad_request(
            f"Invalid 'image': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(images)} instead.",
            "image",
            "array_above_max_length",
        )
    sniffed = []
    for upload in images:
        kind = _sniff(upload.data)
        if kind is None:
            return bad_request(
                f"Invalid file '{upload.name}': unsupported mimetype "
                f"('{upload.content_type}'). Supported file formats are 'image/jpeg', "
                "'image/png', and 'image/webp'.",
                "image",
                "invalid_image_format",
            )
        if family == "dall-e-2":
            if kind.format != "png" or upload.size >= _DALL_E_2_MAX_BYTES:
                return bad_request(
                    "Uploaded image must be a PNG and less than 4 MB.", "image", "invalid_image"
                )
            if kind.width is not None and kind.width != kind.height:
                return bad_request("Uploaded image must be square.", "image", "invalid_image")
        elif upload.size >= _GPT_MAX_IMAGE_BYTES:
            return bad_request(
                "Uploaded image must be less than 50 MB.", "image", "image_too_large"
            )
        sniffed.append(kind)
    first = sniffed[0]
    if not masks:
        if family == "dall-e-2" and endpoint == "edits" and first.alpha is False:
            return bad_request(
                "Invalid input image - format must be in ['RGBA', 'LA', 'L'], got RGB.",
                "image",
                "invalid_image",
            )
        return None
    if endpoint == "variations" or len(masks) > 1:
        return bad_request("Unexpected file 'mask'.", "mask", "invalid_value")
    mask = _sniff(masks[0].data)
    if mask is None or mask.format != "png" or masks[0].size >= _DALL_E_2_MAX_BYTES:
        return bad_request(
            "Invalid mask image format - mask image must be a PNG less than 4 MB.",
            "mask",
            "invalid_image_format",
        )
    if mask.alpha is False:
        return bad_request(
            "Invalid mask image format - mask image missing alpha channel.",
            "mask",
            "invalid_image_format",
        )
    if None not in (mask.width, first.width) and (mask.width, mask.height) != (
        first.width,
        first.height,
    ):
        return bad_request(
            "Invalid mask image - mask size does not match image size.", "mask", "invalid_image"
        )
    return None


def prompt_latency(prompt: Any, default: float) -> float:
    """The seconds a call waits: ``[latency=S]`` in its prompt (the first such tag, at most
    ``MAX_PROMPT_LATENCY``), otherwise ``default``."""
    match = PROMPT_LATENCY.search(prompt) if isinstance(prompt, str) else None
    return min(float(match[1]), MAX_PROMPT_LATENCY) if match else default


def _is_image_route(path: str) -> bool:
    return (
        path in IMAGE_ENDPOINTS
        or path in AZURE_V1_ENDPOINTS
        or AZURE_DEPLOYMENT_PATH.match(path) is not None
    )


def _family(model: Any, endpoint: str) -> Literal["gpt", "dall-e-2", "dall-e-3"]:
    """Which response shape a model gets (missing model: GPT Image; variations: dall-e-2)."""
    if not model:
        return "dall-e-2" if endpoint == "variations" else "gpt"
    name = str(model)
    if name.startswith("dall-e-3"):
        return "dall-e-3"
    if name.startswith("dall-e-2"):
        return "dall-e-2"
    return "gpt"


def _parse_n(value: Any) -> int:
    """Validate ``n`` like OpenAI (1..10, integer; multipart sends strings)."""
    if value is None:
        return 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = type(value).__name__
        message = f"Invalid type for 'n': expected an integer, but got {kind} instead."
        raise _RequestError(bad_request(message, "n", "invalid_type"))
    if value < 1:
        message = (
            "Invalid 'n': integer below minimum value. "
            f"Expected a value >= 1, but got {value} instead."
        )
        raise _RequestError(bad_request(message, "n", "integer_below_min_value"))
    if value > _MAX_N:
        message = (
            "Invalid 'n': integer above maximum value. "
            f"Expected a value <= {_MAX_N}, but got {value} instead."
        )
        raise _RequestError(bad_request(message, "n", "integer_above_max_value"))
    return value


def _wants_stream(params: Mapping[str, Any]) -> bool:
    """Whether a request asked for ``stream`` (JSON true, or "true" in a multipart form)."""
    value = params.get("stream")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _parse_partial_images(value: Any) -> int:
    """Validate ``partial_images`` like OpenAI (0..3; multipart sends strings)."""
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        message = f"Invalid 'partial_images': expected an integer from 0 to 3, got {value!r}."
        raise _RequestError(bad_request(message, "partial_images", "invalid_value"))
    return value


def _png_dims(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (8x8 for anything else)."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return DEFAULT_SIDE, DEFAULT_SIDE


def _resolved(value: Any, fallback: str) -> Any:
    """The requested value, or ``fallback`` when missing or ``"auto"``."""
    return fallback if value in (None, "", "auto") else value


def _revised_prompt(prompt: Any) -> str:
    """A DALL-E-3-style expanded prompt."""
    base = str(prompt or "An image").rstrip(". ")
    return (
        f"{base}. The scene is rendered in rich detail with balanced composition, "
        "soft natural lighting and a harmonious colour palette."
    )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the fake in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Fake OpenAI Images API server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds per /images/* call (a prompt's [latency=S] takes precedence)",
    )
    parser.add_argument(
        "--image-size-bytes",
        type=int,
        default=None,
        help="pad every generated PNG to about this many bytes",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="do not require an Authorization header"
    )
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    fake = FakeOpenAI(args.host, args.port)
    fake.latency = args.latency
    fake.require_auth = not args.no_auth
    fake.verbose = args.verbose
    if args.image_size_bytes is not None:
        fake.set_image_size(args.image_size_bytes)

    done = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    fake.start()
    print(
        f"fake-openai listening on {args.host}:{fake.server_port} base_url={fake.base_url}",
        flush=True,
    )
    while not done.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
