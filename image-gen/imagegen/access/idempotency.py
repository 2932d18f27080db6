"""Safe retries: a POST with an `Idempotency-Key` runs once; a retry gets the first answer.

The key is scoped to the caller's token. The same key with the same request returns the
stored response (header `Idempotent-Replayed: true`) without a second upstream call, also
while the first request is still running (the retry waits for it) and from another
Gunicorn worker: the keys live in the IdempotencyBook (books/), which every process shares.
The same key with another request is a 422. Only successful answers (2xx) are kept: after
a failure the key is free again, so the retry runs. Keys are forgotten after
IMAGE_GEN_IDEMPOTENCY_TTL (24 h).

A replay is the first request's answer, whatever the retry's own `Prefer`, `Webhook-URL` or
`Webhook-Secret` ask: the job was queued (or not) and its webhook chosen the first time. The
header `Idempotent-Replay-Ignored` names those the retry sent, so nobody waits for a webhook
or a wait that a replay never applies.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from imagegen import strictjson
from imagegen.access.auth import current_caller
from imagegen.errors import (
    DatabaseUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    ValidationError,
)
from imagegen.jobs.webhooks import SECRET_HEADER, URL_HEADER
from imagegen.services import services

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
_MAX_KEY_LENGTH = 255
# Response headers worth replaying; the rest (Date, X-Request-ID...) belong to each answer.
_KEPT_HEADERS = ("Content-Type", "Location", "Preference-Applied", "Retry-After")
# Request headers only the first request acts on; a replay names those it was sent.
_NOT_REPLAYED = ("Prefer", URL_HEADER, SECRET_HEADER)
IGNORED_HEADER = "Idempotent-Replay-Ignored"
# Routes whose JSON bodies may carry images as data URLs (OpenAI's JSON edit form): they take
# the upload limit, as multipart bodies do (imaging.uploads.read_edit_json).
_JSON_UPLOAD_ENDPOINTS = frozenset({"edits.edit", "compat.create_edit"})
_POLL_FIRST, _POLL_MAX = 0.05, 0.5


def register_idempotency(app: Flask) -> None:
    """Hooks that claim the key before the route runs and store its answer after."""

    @app.before_request
    def _claim() -> Response | None:
        key = request.headers.get(HEADER)
        if key is None or request.method != "POST" or request.endpoint is None:
            return None
        if not (0 < len(key) <= _MAX_KEY_LENGTH and key.isprintable() and key.isascii()):
            raise ValidationError(
                f"{HEADER} must be 1-{_MAX_KEY_LENGTH} printable ASCII characters "
                "(a UUID is a good choice).",
                details={"field": HEADER},
            )
        return _run_once(key)

    @app.after_request
    def _store(response: Response) -> Response:
        claimed = g.pop("idempotency", None)
        if claimed is None:
            return response
        book, token, key, claim = claimed
        if 200 <= response.status_code < 300 and not response.is_streamed:
            headers = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
            try:
                book.complete(
                    token,
                    key,
                    claim,
                    status=response.status_code,
                    headers=headers,
                    body=response.get_data(),
                )
            except DatabaseUnavailable:
                # The answer (images stored, or kept in the spool) matters more than the
                # key: it stays claimed until its lease ends, then a retry runs again.
                log.warning("idempotency key not kept: database unavailable token=%s", token)
        else:
            book.abandon(token, key, claim)
        return response

    @app.teardown_request
    def _release(exc: BaseException | None) -> None:
        claimed = g.pop("idempotency", None)
        if claimed is not None:  # the response never reached _store
            book, token, key, claim = claimed
            book.abandon(token, key, claim)


def _run_once(key: str) -> Response | None:
    settings = services().settings
    book = services().idempotency  # an IdempotencyBook (books/), shared by every process
    token = current_caller().name
    fingerprint = _fingerprint()
    # A request whose worker died holds the key until its lease ends; then a retry runs.
    lease = settings.request_deadline + 60
    waited_until = time.monotonic() + settings.request_deadline
    pause = _POLL_FIRST
    while True:
        claim = book.claim(token, key, fingerprint, lease=lease, ttl=settings.idempotency_ttl)
        if claim.state == "new":
            g.idempotency = (book, token, key, claim.claim)
            return None
        if claim.state == "replay":
            log.info("idempotent replay token=%s request_id=%s", token, g.get("request_id"))
            response = Response(claim.body, status=claim.status)
            response.headers.update(claim.headers or {})
            response.headers["Idempotent-Replayed"] = "true"
            ignored = [name for name in _NOT_REPLAYED if name in request.headers]
            if ignored:
                response.headers[IGNORED_HEADER] = ", ".join(ignored)
            return response
        if claim.state == "mismatch":
            raise IdempotencyKeyReused(
                f"This {HEADER} was already used with a different request. Use a new key for "
                "a new request; resend the same request to get the first answer.",
                details={"field": HEADER},
            )
        if time.monotonic() >= waited_until:
            raise IdempotencyKeyInUse(
                f"The first request with this {HEADER} is still running; retry later.",
                retry_after=10,
            )
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX)


def _fingerprint() -> str:
    """What makes two requests 'the same': route and body, read the way the route reads it.

    JSON is compared by value (key order and spacing do not matter); a multipart form by its
    fields and the bytes of its files (the boundary differs on every send).
    """
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n".encode())
    if request.mimetype == "multipart/form-data" or (
        request.is_json and request.endpoint in _JSON_UPLOAD_ENDPOINTS
    ):
        # Uploads may be larger than a JSON body: the upload routes' own limit applies.
        request.max_content_length = services().settings.max_upload_total_bytes
    if request.mimetype == "multipart/form-data":
        form: dict[str, Any] = {k: request.form.getlist(k) for k in sorted(request.form)}
        files = []
        for name in sorted(request.files):
            for upload in request.files.getlist(name):
                content = hashlib.sha256()
                for chunk in iter(lambda: upload.stream.read(1 << 16), b""):  # noqa: B023
                    content.update(chunk)
                upload.stream.seek(0)
                files.append([name, upload.filename, upload.mimetype, content.hexdigest()])
        digest.update(strictjson.dumps([form, files], sort_keys=True).encode())
    else:
        raw = request.get_data(cache=True)
        try:
            canonical = strictjson.dumps(
                strictjson.loads(raw), sort_keys=True, separators=(",", ":")
            )
            digest.update(b"json:" + canonical.encode())
        except (ValueError, RecursionError):
            digest.update(b"raw:" + raw)
    return digest.hexdigest()
