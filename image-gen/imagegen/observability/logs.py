"""Logging: one line per request with a request id, and the format every line shares."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Flask, Response, g, request

log = logging.getLogger("imagegen.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def configure_logging(level: int = logging.INFO) -> None:
    """Send the package's logs to stderr once (Gunicorn's and Docker's convention)."""
    root = logging.getLogger("imagegen")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def register_request_logging(app: Flask) -> None:
    """Give each request an id (the client's X-Request-ID if sane) and log it when done."""

    @app.before_request
    def _start() -> None:
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        caller = g.get("caller")
        log.info(
            "request_id=%s method=%s path=%s status=%s duration_ms=%.1f client=%s",
            request_id,
            request.method,
            _printable(request.path),
            response.status_code,
            elapsed,
            caller.name if caller is not None else "-",
        )
        return response


def _printable(text: str, limit: int = 200) -> str:
    """A path as a log field: no control characters, bounded length."""
    cleaned = "".join(ch if ch.isprintable() and ch != " " else "?" for ch in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def shorten(text: str, limit: int = 80) -> str:
    """A prompt as a log field: one line, bounded length, quoted (repr escapes the rest)."""
    flat = " ".join(text.split())
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))
