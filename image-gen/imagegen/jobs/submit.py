"""`Prefer: respond-async`: a route answers 202 at once and the job runner makes the images.

A route adopts it in one line, after validating its request:

    if (answer := respond_async(image_request)) is not None:
        return answer

Without a `Prefer: respond-async` (or `wait=N`) header that returns None and the route stays
synchronous. With one, the caller is admitted (a refusal is the answer), the job is
recorded and queued (jobs.runner), and the answer is `202 Accepted` with
`Location: /jobs/<id>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, g, jsonify, request
from flask.typing import ResponseReturnValue

from imagegen.access.auth import current_caller
from imagegen.errors import QueueFull, ValidationError, error_response
from imagegen.imaging.answers import answer_body
from imagegen.imaging.core import Produce, input_count
from imagegen.imaging.request import ImageRequest
from imagegen.jobs import webhooks
from imagegen.jobs.answers import pending_body
from imagegen.jobs.prefer import parse_prefer
from imagegen.jobs.runner import JobRunner
from imagegen.services import services
from imagegen.settings import Settings

POLL_HINT = {
    "queued": 5,
    "running": 2,
    "storing": 5,
}  # Retry-After on an unfinished job, in seconds


def respond_async(
    image_request: ImageRequest,
    *,
    operation: str = "generate",
    produce: Produce | None = None,
    source: dict[str, Any] | None = None,
    respond: Callable[[dict[str, Any]], ResponseReturnValue] | None = None,
    inputs: dict[str, bytes] | None = None,
) -> ResponseReturnValue | None:
    """Queue the request as an asynchronous job if its Prefer header asks; None otherwise.

    `produce`, `operation` and `source` are as for `ImageMaker.make`. With `Prefer: wait=N` and
    the job finished in time, the answer is what the synchronous call answers: `respond`
    (default: the /generate body) for the stored job, or the job's error. A job with its
    own `produce` (an edit) is resumed after its process dies only if its operation has a
    rebuilder (jobs.resumable) and it gave the `inputs` that rebuilder reads; otherwise it
    is failed with JOB_INTERRUPTED.
    """
    preference = parse_prefer(request.headers.getlist("Prefer"))
    if not preference.asynchronous:
        if request.headers.get(webhooks.URL_HEADER) is not None:
            raise ValidationError(
                f"{webhooks.URL_HEADER} needs 'Prefer: respond-async': a webhook reports an "
                "asynchronous job.",
                details={"field": webhooks.URL_HEADER},
            )
        return None
    parts = services()
    runner = parts.jobs
    webhook = _webhook_from_headers(parts.settings)
    runner.check_capacity()
    caller, request_id = current_caller(), g.get("request_id")
    admission = parts.maker.admit(
        image_request, caller, input_images=input_count(source), request_id=request_id
    )
    try:
        record = runner.submit(
            image_request,
            operation=operation,
            produce=produce,
            source=source,
            caller=caller,
            admission=admission,
            webhook=webhook,
            inputs=inputs,
            request_id=request_id,
        )
    except QueueFull:  # other submitters filled the queue since check_capacity: nothing queued
        parts.maker.release(admission)
        raise
    job_id = record["job_id"]
    if preference.wait and runner.wait(job_id, preference.wait):
        finished = runner.records.read(job_id) or record
        if finished["status"] == "completed":
            metadata = runner.store.job_metadata(job_id)
            if metadata is not None:
                return (respond or _sync_answer(image_request))(metadata)
        if finished["status"] == "failed":
            return _error_answer(finished["error"])
    return accepted(runner.records.read(job_id) or record, runner)


def accepted(record: dict[str, Any], runner: JobRunner) -> Response:
    """202 Accepted: the job, where to poll it, and how soon."""
    response = jsonify(pending_body(record, runner.records))
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{record['job_id']}"
    response.headers["Preference-Applied"] = "respond-async"
    response.headers["Retry-After"] = str(POLL_HINT.get(record["status"], 2))
    return response


def _sync_answer(image_request: ImageRequest) -> Callable[[dict[str, Any]], Response]:
    def answer(metadata: dict[str, Any]) -> Response:
        return jsonify(answer_body(image_request, metadata))

    return answer


def _error_answer(error: dict[str, Any]) -> Response:
    extra = {k: v for k, v in error.items() if k not in ("error", "code", "http_status")}
    response = error_response(error["http_status"], error["code"], error["error"], **extra)
    if "retry_after" in error:
        response.headers["Retry-After"] = str(error["retry_after"])
    return response


def _webhook_from_headers(settings: Settings) -> tuple[str, str | None] | None:
    """(URL, the caller's own secret or None for the operator's) from the request headers."""
    url = request.headers.get(webhooks.URL_HEADER)
    secret = request.headers.get(webhooks.SECRET_HEADER)
    if url is None:
        if secret is not None:
            raise ValidationError(
                f"{webhooks.SECRET_HEADER} was sent without {webhooks.URL_HEADER}.",
                details={"field": webhooks.URL_HEADER},
            )
        return None
    webhooks.check_url(url, settings.webhook_hosts)
    if secret is not None:
        webhooks.check_secret(secret)
    elif settings.webhook_secret is None:
        raise ValidationError(
            f"Send {webhooks.SECRET_HEADER} with {webhooks.URL_HEADER}: this service has no "
            "signing secret of its own (IMAGE_GEN_WEBHOOK_SECRET_FILE).",
            details={"field": webhooks.SECRET_HEADER},
        )
    return url, secret
