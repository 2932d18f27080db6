"""The service's errors and the one place that turns them into JSON responses."""

from __future__ import annotations

import logging
import math
from typing import Any

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error a client sees: an HTTP status, a stable code and a message."""

    status = 500
    code = "SERVICE_ERROR"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def headers(self) -> dict[str, str]:
        return {}


class ValidationError(ServiceError):
    status = 400
    code = "VALIDATION_ERROR"


class ContentPolicyViolation(ServiceError):
    """The upstream safety system refused the prompt; the agent should change it."""

    status = 400
    code = "CONTENT_POLICY_VIOLATION"


class ImageNotFound(ServiceError):
    status = 404
    code = "IMAGE_NOT_FOUND"


class RetryLater(ServiceError):
    """An error that says when to try again: the Retry-After header and `retry_after`."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.retry_after = max(1, math.ceil(retry_after)) if retry_after else 10
        super().__init__(message, details={**(details or {}), "retry_after": self.retry_after})

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(RetryLater):
    """OpenAI's own rate limit; Retry-After says when to come back."""

    status = 429
    code = "RATE_LIMIT_EXCEEDED"


class AuthenticationRequired(ServiceError):
    """Client tokens are configured and the request carries none."""

    status = 401
    code = "AUTHENTICATION_REQUIRED"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="image-gen"'}


class InvalidToken(ServiceError):
    """The bearer token is not one the service knows (or the header is malformed)."""

    status = 401
    code = "INVALID_TOKEN"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="image-gen", error="invalid_token"'}


class PermissionDenied(ServiceError):
    """The token is valid but may not do this (admin generating, a model it is not allowed)."""

    status = 403
    code = "PERMISSION_DENIED"


class QuotaExceeded(RetryLater):
    """The request would cross a spending cap set by the key holder (not OpenAI's limit)."""

    status = 429
    code = "QUOTA_EXCEEDED"


class IdempotencyKeyReused(ServiceError):
    """The Idempotency-Key was used before with a different request body."""

    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyKeyInUse(RetryLater):
    """The first request with this Idempotency-Key is still running after our wait."""

    status = 409
    code = "IDEMPOTENCY_KEY_IN_USE"


class UpstreamError(ServiceError):
    """The upstream failed (5xx after retries, or an answer we cannot use)."""

    status = 502
    code = "UPSTREAM_ERROR"


class UpstreamTimeout(ServiceError):
    status = 504
    code = "UPSTREAM_TIMEOUT"


class InsufficientStorage(ServiceError):
    status = 507
    code = "INSUFFICIENT_STORAGE"


class StorageUnavailable(RetryLater):
    """The shared blob store (S3) cannot be reached now; nothing new was started."""

    status = 503
    code = "STORAGE_UNAVAILABLE"


class JobKept(Exception):
    """The upstream made (and billed) the images, but the store or its index could not take
    them: the whole job is kept on this replica and stored once they answer again. Not a
    failure, so not a ServiceError: 202 Accepted with the job's id, where to find it, and
    when to look."""

    status = 202

    def __init__(self, message: str, *, job_id: str, images: list[str], retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.images = images
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The answer: the job, `status: storing`, and each image's URL-to-be."""
        return {
            "job_id": self.job_id,
            "status": "storing",
            "message": self.message,
            "images": [{"id": image, "url": f"/images/{image}"} for image in self.images],
            "retry_after": self.retry_after,
        }

    def headers(self) -> dict[str, str]:
        return {"Location": f"/jobs/{self.job_id}", "Retry-After": str(self.retry_after)}


class ModelNotFound(ServiceError):
    status = 404
    code = "MODEL_NOT_FOUND"


class JobNotFound(ServiceError):
    status = 404
    code = "JOB_NOT_FOUND"


class JobNotFinished(ServiceError):
    """The job is queued or running: it can be deleted once it has finished."""

    status = 409
    code = "JOB_NOT_FINISHED"


class JobInterrupted(ServiceError):
    """The process running the job died and the job is not started again."""

    status = 500
    code = "JOB_INTERRUPTED"


class QueueFull(RetryLater):
    """Too many asynchronous jobs are waiting; come back after Retry-After."""

    status = 503
    code = "QUEUE_FULL"


class DatabaseUnavailable(RetryLater):
    """The shared database (IMAGE_GEN_DATABASE_URL) cannot be reached; nothing was done."""

    status = 503
    code = "DATABASE_UNAVAILABLE"

    def __init__(self, message: str = "", *, retry_after: float | None = 5) -> None:
        super().__init__(
            message or "The database cannot be reached; nothing was done. Try again later.",
            retry_after=retry_after,
        )


class TooManyStreams(RetryLater):
    """This worker already serves as many event streams as it may."""

    status = 503
    code = "TOO_MANY_STREAMS"


class TooManyStreamsForToken(TooManyStreams):
    """This client token already has as many event streams open as it may."""

    status = 429


# Werkzeug's HTTP errors keep their status and get a code of their own.
HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "AUTHENTICATION_REQUIRED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    431: "REQUEST_HEADER_FIELDS_TOO_LARGE",
}


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    """The JSON error shape every failure shares: {"error", "status": "failed", "code"}."""
    response = jsonify({"error": message, "status": "failed", "code": code, **extra})
    response.status_code = status
    g.error_code = code  # counted by /metrics (observability.metrics) when the answer is sent
    return response


def register_error_handlers(app: Flask) -> None:
    """Route every exception, ours or Werkzeug's, through the JSON error shape."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, **exc.details)
        response.headers.update(exc.headers())
        return response

    @app.errorhandler(JobKept)
    def _job_kept(exc: JobKept) -> Response:
        response = jsonify(exc.body())
        response.status_code = exc.status
        response.headers.update(exc.headers())
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "SERVICE_ERROR" if status >= 500 else "HTTP_ERROR")
        response = error_response(status, code, exc.description or exc.name)
        if status == 405 and exc.response is None:
            allowed = exc.valid_methods if isinstance(exc, MethodNotAllowed) else None
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error: %s", type(exc).__name__)
        return error_response(500, "SERVICE_ERROR", "Internal error; see the service log.")
