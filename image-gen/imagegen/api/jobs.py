"""Following jobs: GET/DELETE /jobs/<job_id>, GET /jobs/<job_id>/events (Server-Sent Events)
and a job's previews.

A job is stored (storage.images) once it is completed; an asynchronous job also has a
record (a JobBook, books/) from the moment it is accepted, which is all there is while it is
queued or running, or when it failed.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request, send_file
from flask.typing import ResponseReturnValue
from werkzeug.routing import PathConverter

from imagegen.access.auth import identified_caller
from imagegen.api.parts import JOB_ID, binary
from imagegen.apidoc import (
    errors,
    header,
    header_param,
    json_response,
    operation,
    path_param,
    query,
    ref,
    retry_later,
    with_request_id,
)
from imagegen.books.interfaces import FINAL, PREVIEW_NAME, JobBook
from imagegen.errors import ImageNotFound, JobNotFinished, JobNotFound
from imagegen.imaging.formats import OUTPUT_CONTENT_TYPES, OUTPUT_EXTENSIONS, SVG_POLICY
from imagegen.jobs import events, streams
from imagegen.jobs.answers import completed_body, pending_body, storing_body
from imagegen.jobs.hub import EventStreamResponse
from imagegen.jobs.submit import POLL_HINT
from imagegen.services import services
from imagegen.storage.images import ImageStore, normalize_id

bp = Blueprint("jobs", __name__)


class JobPathConverter(PathConverter):
    """A job id as DELETE takes it: any path (so odd ids get a JSON 404, not a 405), except
    a job's events and previews, which only GET serves (their Allow header says so)."""

    regex = r"(?!.*/(?:events|previews/[^/]*)$)[^/].*?"


@bp.get("/jobs/<path:job_id>")
@operation(
    "getJob",
    tag="jobs",
    summary="A job: stored, or still queued or running, or failed",
    description="A completed job as POST /generate answered it, with the request; deleted "
    "images have `status: deleted` and no URL. An asynchronous job that is queued or running "
    "(or failed) is a PendingJob: progress, previews, the error; poll it after Retry-After "
    "seconds, or follow /jobs/{job_id}/events. A job whose images were made while the image "
    "store (or its database) could not be reached is `status: storing` until the replica "
    "that keeps them has stored them; then it is the stored Job.",
    parameters=[JOB_ID],
    responses={
        "200": {
            **json_response(
                "The job.", schema={"oneOf": [ref("Job"), ref("PendingJob"), ref("StoringJob")]}
            ),
            "headers": with_request_id(
                {"Retry-After": header("While queued or running: seconds to wait.")}
            ),
        },
        **errors(404, 500),
    },
)
def show_job(job_id: str) -> ResponseReturnValue:
    """A stored job as /generate answered it, plus its request (deleted images have no URL);
    a queued, running or failed one with its progress, previews or error.

    An asynchronous job reads completed once its record says so, not as soon as its images
    are stored: from then on it can be deleted, and its `completed` event is out.
    """
    record = _records().read(job_id)
    unfinished = record is not None and record["status"] not in FINAL
    metadata = None if unfinished else _store().job_metadata(job_id)
    if metadata is not None:
        body = completed_body(metadata, record)
        if record is not None and record.get("webhook"):
            body["webhook"] = pending_body(record)["webhook"]
        return jsonify(body)
    if record is None:
        kept = _store().kept_job(job_id)
        if kept is None:
            raise _not_found(job_id)
        response = jsonify(storing_body(kept))
        response.headers["Retry-After"] = str(POLL_HINT["storing"])
        return response
    services().jobs.notice(record)
    response = jsonify(pending_body(record, _records()))
    if record["status"] not in FINAL:
        response.headers["Retry-After"] = str(POLL_HINT.get(record["status"], 2))
    return response


@bp.get("/jobs/<path:job_id>/events")
@operation(
    "getJobEvents",
    tag="jobs",
    summary="A job's progress as Server-Sent Events",
    description="Events, each with an `id` and JSON `data`: `status` (queued, running, "
    "completed, failed, with progress), `partial_image` (a preview the upstream streamed: "
    "`image`, `partial_image_index`, `url`), `image` (one image of the job is finished: `url`, "
    "`images_done`, `count`), then `completed` (the Job) or `failed` (the PendingJob with its "
    "error), after which the stream ends. Comment lines keep the connection open. A stored job "
    "answers one `completed` event. Reconnect with Last-Event-ID (or `last_event_id`) to get "
    "only newer events (204 when the job has ended and none are newer); the stream also ends "
    "after 15 minutes.",
    parameters=[
        JOB_ID,
        header_param("Last-Event-ID", "The id of the last event received."),
        query(
            "last_event_id",
            "As Last-Event-ID, for clients that cannot set headers: an event id (a whole "
            "number); like the header, anything else is ignored and the stream starts anew.",
            {"type": "string"},
        ),
    ],
    responses={
        "200": {
            "description": "text/event-stream until the job ends; each event as described "
            "(its `data` is one line of JSON).",
            "headers": with_request_id({}),
            "content": {"text/event-stream": {"schema": ref("JobEvent")}},
        },
        "204": {
            "description": "The job has ended and the client has every event of it (its "
            "Last-Event-ID is the last one's, or beyond): nothing more will come, and an "
            "EventSource stops reconnecting.",
            "headers": with_request_id({}),
        },
        **errors(404, 500),
        "429": retry_later(
            "This token already has IMAGE_GEN_MAX_STREAMS_PER_TOKEN event streams open on this "
            "worker (TOO_MANY_STREAMS, `scope: token`): close one or poll GET /jobs/{job_id}, "
            "and retry after Retry-After."
        ),
        "503": retry_later(
            "This worker already serves IMAGE_GEN_MAX_STREAMS event streams (TOO_MANY_STREAMS, "
            "`scope: worker`): poll GET /jobs/{job_id} instead, or retry after Retry-After."
        ),
    },
)
def job_events(job_id: str) -> ResponseReturnValue:
    """The job's progress as Server-Sent Events: `status`, `partial_image` and `image` as they
    happen, then `completed` (the stored job) or `failed` (its error), and the stream ends.

    Following an unfinished job takes one of the worker's stream places (streams.py) until
    the stream ends or its client leaves; with none left the answer is TOO_MANY_STREAMS.
    Under Gunicorn the stream is then served by the worker's hub, not a request thread."""
    canonical = normalize_id(job_id)
    records = _records()
    record = records.read(job_id)
    last = events.last_event_id(
        request.headers.get("Last-Event-ID"), request.args.get("last_event_id")
    )
    if canonical is None or record is None:
        metadata = _store().job_metadata(job_id)
        if canonical is None or metadata is None:
            raise _not_found(job_id)
        if last >= 1:
            return _nothing_more()
        done = {"id": 1, "event": "completed", "data": completed_body(metadata)}
        return _event_stream(iter([events.format_event(done)]))
    if record["status"] in FINAL and all(e["id"] <= last for e in record.get("events", [])):
        return _nothing_more()
    stream = events.follow(
        records,
        canonical,
        last,
        notice=services().jobs.notice,
        gone=events.client_gone(request.environ),
    )
    if record["status"] in FINAL:  # every event is recorded already: it ends at once
        return _event_stream(stream)
    lease = services().streams.open(_stream_token())
    response = EventStreamResponse(  # under Gunicorn, served by the hub (jobs/hub.py)
        _leased(stream, lease),
        hub=services().hub,
        job_id=canonical,
        last_id=last,
        recorded=record.get("events", []),
        lease=lease,
        headers=_STREAM_HEADERS,
    )
    response.call_on_close(lease.release)  # also when the stream never started
    return response


_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _nothing_more() -> Response:
    """204 for a client that has every event of a job that has ended (its Last-Event-ID is
    the last one's, or beyond): an EventSource stops reconnecting on a 204, where an empty
    stream would have it reconnect every RECONNECT_MS for ever."""
    return Response(status=204, headers={"Cache-Control": "no-cache"})


def _event_stream(stream: Iterator[str]) -> Response:
    return Response(stream, mimetype="text/event-stream", headers=_STREAM_HEADERS)


def _leased(stream: Iterator[str], lease: streams.StreamLease) -> Iterator[str]:
    """The stream, giving its place back the moment it ends (before the server closes it)."""
    try:
        yield from stream
    finally:
        lease.release()


def _stream_token() -> str | None:
    """Whose stream this is, for the per-token bound: the token's name; None on an open
    service, where every caller is the same anonymous one and only the worker bound holds."""
    if not services().settings.auth_required:
        return None
    caller = identified_caller()
    return None if caller is None else caller.name


@bp.get("/jobs/<path:job_id>/previews/<name>")
@operation(
    "getJobPreview",
    tag="jobs",
    summary="A running job's partial preview, or an image finished before the job",
    description="The URLs are in the job's `previews` and its events. Previews are kept with "
    "the job's record (IMAGE_GEN_JOB_RETENTION); the stored images are at /images/{image_id} "
    "once the job is completed.",
    parameters=[
        JOB_ID,
        path_param(
            "name",
            "The preview's name, as in its URL.",
            "^(p[0-9]{1,2}-[0-9]|i[0-9]{1,2})[.](png|jpg|webp|gif|svg)$",
        ),
    ],
    responses={"200": binary("The preview, typed by its format.", {}), **errors(404, 500)},
)
def job_preview(job_id: str, name: str) -> ResponseReturnValue:
    """A partial preview (or a finished image) of an asynchronous job, before it is stored."""
    data = _records().preview(job_id, name)
    if data is None:
        raise ImageNotFound(f"Preview {name[:64]!r} of job {job_id[:64]!r} not found.")
    match = PREVIEW_NAME.match(name)
    assert match is not None  # preview() checked the name
    fmt = next(f for f, ext in OUTPUT_EXTENSIONS.items() if ext == match["ext"])
    response = send_file(
        io.BytesIO(data),
        mimetype=OUTPUT_CONTENT_TYPES[fmt],
        max_age=3600,
        conditional=True,
        etag=hashlib.sha256(data).hexdigest()[:32],  # the same on every replica
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    if fmt == "svg":
        response.headers["Content-Security-Policy"] = SVG_POLICY
    return response


@bp.delete("/jobs/<job_path:job_id>")
@operation(
    "deleteJob",
    tag="jobs",
    summary="Delete a whole job with its images",
    parameters=[JOB_ID],
    responses={
        "200": json_response("The job is gone.", "DeletedJob"),
        **errors(404, 500),
        "409": json_response(
            "The job is queued or running (JOB_NOT_FINISHED): delete it once it ends.", "Error"
        ),
    },
)
def delete_job(job_id: str) -> ResponseReturnValue:
    """Remove the whole job: every image, its metadata, its directory and its record.

    A queued or running job cannot be deleted yet (409): the images are being paid for.
    """
    record = _records().read(job_id)
    if record is not None and record["status"] not in FINAL:
        raise JobNotFinished(
            f"Job {record['job_id']} is {record['status']}; delete it once it has finished."
        )
    metadata = _store().delete_job(job_id)
    removed = record is not None and _records().remove(job_id)
    if metadata is None and not removed:
        raise _not_found(job_id)
    canonical = normalize_id(job_id)
    count = len(metadata.get("images", [])) if metadata else 0
    return jsonify(
        {
            "status": "success",
            "message": f"Job {canonical} and its {count} image(s) deleted.",
            "job_id": canonical,
        }
    )


def _not_found(job_id: str) -> JobNotFound:
    canonical = normalize_id(job_id)
    if canonical is None:
        return JobNotFound(f"Job {job_id[:64]!r} not found: job ids are UUIDs.")
    return JobNotFound(f"Job {canonical} not found.")


def _store() -> ImageStore:
    return services().store


def _records() -> JobBook:
    return services().jobs.records
