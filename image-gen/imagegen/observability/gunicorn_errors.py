"""Gunicorn's own refusals in the service's JSON error shape.

Gunicorn answers some malformed requests itself, before the app sees them: request lines
over its limit (414), too many or too large headers (431), broken HTTP framing (400). It
writes those as HTML. Installed in each worker (gunicorn.conf.py `post_worker_init`), this
writes them as `{"error", "status": "failed", "code"}` like every other error.
"""

from __future__ import annotations

import socket

from gunicorn import util

from imagegen import strictjson
from imagegen.errors import HTTP_CODES

_MAX_MESSAGE = 200


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's contract, answered as JSON."""
    code = HTTP_CODES.get(status_int, "SERVICE_ERROR" if status_int >= 500 else "HTTP_ERROR")
    detail = mesg if len(mesg) <= _MAX_MESSAGE else mesg[:_MAX_MESSAGE] + "..."
    message = f"{reason}: {detail}" if detail else reason
    body = strictjson.dumps({"error": message, "status": "failed", "code": code}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make this worker process write Gunicorn's refusals as JSON."""
    util.write_error = write_json_error
