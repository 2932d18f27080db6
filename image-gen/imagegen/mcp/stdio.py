"""An MCP server on stdio that forwards every message to image-gen's POST /mcp.

For agent hosts that only launch local processes. It holds a client token (never the
OpenAI key, which stays inside the service): each newline-delimited JSON-RPC message read on
stdin is POSTed to `<url>/mcp` with `Authorization: Bearer <token>`, and each answer is
written to stdout as one line. Notifications get no answer; logs go to stderr; end of input
ends it once the calls in flight are answered. When the service refuses a call (a wrong
token, an unreachable URL), a request is answered with a JSON-RPC error saying why.

Standard library only, so it runs from a checkout with any Python 3.11+, no install:

    IMAGE_GEN_URL=http://localhost:5000 IMAGE_GEN_TOKEN=igt_... \\
        python3 image-gen/imagegen/mcp/stdio.py

or, where the service's package is importable, `python -m imagegen mcp-stdio --url ...
--token-file PATH`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any, BinaryIO
from urllib.parse import urlsplit

log = logging.getLogger("imagegen.mcp.stdio")

DEFAULT_URL = "http://localhost:5000"
DEFAULT_TIMEOUT = 600.0  # above the service's request deadline (540 s), as Gunicorn's is
MAX_IN_FLIGHT = 16  # calls forwarded at once; reading stdin waits beyond that
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # the service bounds its results far below this
SERVER_ERROR = -32000  # JSON-RPC's range for implementation-defined server errors


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed (urllib would turn the POST into a GET)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Bridge:
    """Forwards messages to the service's MCP endpoint and writes the answers to `output`."""

    def __init__(self, endpoint: str, token: str | None, timeout: float, output: BinaryIO) -> None:
        self.endpoint = endpoint
        self.token = token
        self.timeout = timeout
        self.output = output
        self.version: str | None = None  # the revision `initialize` agreed, sent as a header
        self._opener = urllib.request.build_opener(_NoRedirects())
        self._write_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def serve(self, lines: Iterable[bytes]) -> None:
        """Forward each message, several at once; return when input ends and all are answered."""
        workers: list[threading.Thread] = []
        for line in lines:
            if not line.strip():
                continue
            self._slots.acquire()
            worker = threading.Thread(target=self._forward_then_free, args=(line,), daemon=True)
            worker.start()
            workers = [w for w in workers if w.is_alive()] + [worker]
        for worker in workers:
            worker.join()

    def _forward_then_free(self, line: bytes) -> None:
        try:
            self.forward(line)
        except Exception:
            log.exception("forwarding a message failed")
        finally:
            self._slots.release()

    def forward(self, line: bytes) -> None:
        """POST one message (or batch) and write the answer, or an error for each request."""
        message = _parse(line)
        ids = _request_ids(message)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "User-Agent": "image-gen-mcp-stdio",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.version and not _is_initialize(message):
            headers["MCP-Protocol-Version"] = self.version
        # endpoint_of() allowed only http(s).
        post = urllib.request.Request(self.endpoint, line, headers, method="POST")  # noqa: S310
        try:
            with self._opener.open(post, timeout=self.timeout) as response:
                status, kind = response.status, response.headers.get_content_type()
                body = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as error:
            with error:
                body = error.read(MAX_ANSWER_BYTES + 1)
            self._refused(ids, error.code, body, error.headers.get("Location"))
            return
        except (urllib.error.URLError, OSError) as error:
            reason = (
                error.reason if isinstance(error, urllib.error.URLError | ssl.SSLError) else error
            )
            log.error("cannot reach %s: %s", self.endpoint, reason)
            self._fail(ids, f"Cannot reach image-gen at {self.endpoint}: {reason}.")
            return
        if status == 202 or (not body and not ids):
            return
        if kind != "application/json" or len(body) > MAX_ANSWER_BYTES:
            self._fail(ids, f"image-gen answered {kind} ({len(body):,} bytes), not JSON.")
            return
        try:
            answer = _loads(body)
        except ValueError:
            self._fail(ids, "image-gen answered malformed JSON.")
            return
        if _is_initialize(message) and isinstance(answer, dict):
            agreed = (answer.get("result") or {}).get("protocolVersion")
            if isinstance(agreed, str):
                self.version = agreed
        self._write(answer)

    def _refused(self, ids: list[Any], status: int, body: bytes, location: str | None) -> None:
        """An HTTP error status: the JSON-RPC error it carries, or one describing it."""
        try:
            answer = _loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict) and len(ids) == 1:
            self._write({**answer, "id": ids[0]})  # a server that answers JSON-RPC errors so
            return
        code = answer.get("code") if isinstance(answer, dict) else None
        text = answer.get("error") if isinstance(answer, dict) else None
        message = f"image-gen refused the request: HTTP {status}"
        message += f" {code}: {text}" if code and isinstance(text, str) else "."
        if status == 401:
            message += (
                " Give this command a valid client token (IMAGE_GEN_TOKEN or --token-file);"
                " the service's operator issues them."
            )
        if location:
            message += f" It redirects to {location}: use that address as IMAGE_GEN_URL."
        log.error("%s", message)
        self._fail(ids, message, {"http_status": status, "code": code})

    def _fail(self, ids: list[Any], message: str, data: dict[str, Any] | None = None) -> None:
        errors = [
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": SERVER_ERROR, "message": message, "data": data or {}},
            }
            for request_id in ids
        ]
        if errors:
            self._write(errors[0] if len(errors) == 1 else errors)

    def _write(self, answer: Any) -> None:
        """One message per line on stdout (json.dumps never writes a raw newline).

        Every answer was read by `_loads`, so it holds no NaN or Infinity to refuse."""
        data = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        with self._write_lock:
            try:
                self.output.write(data)
                self.output.flush()
            except (BrokenPipeError, ValueError):
                log.debug("stdout is closed; dropped an answer")


def _parse(line: bytes) -> Any:
    try:
        return _loads(line)
    except ValueError:
        return None  # forwarded anyway: the service answers the parse error


def _loads(text: bytes) -> Any:
    """JSON without NaN or Infinity (imagegen.strictjson's rule; this file is stdlib only)."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _request_ids(message: Any) -> list[Any]:
    """The ids of the requests in a message or batch (notifications have none)."""
    items = message if isinstance(message, list) else [message]
    return [
        item["id"]
        for item in items
        if isinstance(item, dict) and "method" in item and item.get("id") is not None
    ]


def _is_initialize(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "initialize"


def endpoint_of(url: str) -> str:
    """The MCP endpoint for a service URL (`http://host:5000` or `.../mcp`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    base = url.rstrip("/")
    return base if base.endswith("/mcp") else base + "/mcp"


def read_token(token_file: str | None, environ: dict[str, str]) -> str | None:
    """The client token: from the file (--token-file, IMAGE_GEN_TOKEN_FILE) or IMAGE_GEN_TOKEN."""
    if token_file:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
    else:
        token = environ.get("IMAGE_GEN_TOKEN", "").strip()
    if token and (not token.isprintable() or not token.isascii() or " " in token):
        raise ValueError("the token must be one word of printable ASCII")
    return token or None


def main(argv: list[str] | None = None) -> int:
    """Run the bridge until stdin ends; 2 for a bad configuration."""
    parser = argparse.ArgumentParser(
        prog="python -m imagegen mcp-stdio",
        description="An MCP server on stdio that forwards to image-gen's /mcp endpoint.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("IMAGE_GEN_URL", DEFAULT_URL),
        help=f"the service (env IMAGE_GEN_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("IMAGE_GEN_TOKEN_FILE"),
        help="a file holding the client token (env IMAGE_GEN_TOKEN_FILE; else IMAGE_GEN_TOKEN)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for one answer (default {DEFAULT_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="image-gen mcp-stdio: %(message)s"
    )
    try:
        endpoint = endpoint_of(args.url)
        token = read_token(args.token_file, dict(os.environ))
    except (OSError, ValueError) as error:
        log.error("%s", error)
        return 2
    log.info(
        "forwarding MCP messages to %s %s",
        endpoint,
        "with a client token" if token else "without a token (the service must be open)",
    )
    bridge = Bridge(endpoint, token, args.timeout, sys.stdout.buffer)
    try:
        bridge.serve(sys.stdin.buffer)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
