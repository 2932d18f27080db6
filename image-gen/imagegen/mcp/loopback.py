"""The MCP tools' way into the service: one in-process HTTP request through this app, made as
the caller (its Authorization header), so tokens, caps, validation and idempotency apply.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from werkzeug.datastructures import Headers
from werkzeug.test import Client


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
