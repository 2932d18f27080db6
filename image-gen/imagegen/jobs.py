"""Browsing the store and following jobs: GET /images (newest first, by cursor), GET/DELETE
/jobs/<job_id>, GET /jobs/<job_id>/events (Server-Sent Events) and a job's previews.

A job is stored (ImageStore) once it is completed; an asynchronous job also has a record
(JobRecords) from the moment it is accepted, which is all there is while it is queued or
running, or when it failed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, send_file
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from werkzeug.routing import PathConverter

from . import asyncjobs, events, streams, strictjson
from .asyncjobs import JobNotFinished, completed_body, pending_body, runner_of
from .errors import ImageNotFound, ServiceError, ValidationError
from .imagefmt import CONTENT_TYPES, EXTENSIONS
from .jobrecords import FINAL, PREVIEW_NAME, JobRecords
from .store import ImageStore, normalize_id

bp = Blueprint("jobs", __name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_MAX_CURSOR_CHARS = 512


class JobNotFound(ServiceError):
    status = 404
    code = "JOB_NOT_FOUND"


class JobPathConverter(PathConverter):
    """A job id as DELETE takes it: any path (so odd ids get a JSON 404, not a 405), except
    a job's events and previews, which only GET serves (their Allow header says so)."""

    regex = r"(?!.*/(?:events|previews/[^/]*)$)[^/].*?"


@bp.record_once
def _install_jobs(state: BlueprintSetupState) -> None:
    """Every app serving jobs gets the converter, its job records and runner (asyncjobs.py).

    Recorded before the routes, so the converter exists when they are added."""
    state.app.url_map.converters["job_path"] = JobPathConverter
    asyncjobs.install(state.app)
    streams.install(state.app)


@bp.get("/images")
def list_images() -> ResponseReturnValue:
    """Stored images, newest job first: `limit` per page, `cursor` for the next, `job_id` filter."""
    limit = _limit(request.args.get("limit"))
    after = decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None
    job_id = request.args.get("job_id")
    if job_id is not None and normalize_id(job_id) is None:
        raise ValidationError("'job_id' must be a job id (a UUID).", details={"field": "job_id"})
    items, following = _store().list_images(limit=limit, after=after, job_id=job_id)
    return jsonify(
        {
            "images": [_listed(metadata, image) for metadata, image in items],
            "next_cursor": encode_cursor(following) if following else None,
        }
    )


@bp.get("/jobs/<path:job_id>")
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
        raise _not_found(job_id)
    runner_of(current_app).notice(record)
    response = jsonify(pending_body(record, _records()))
    if record["status"] not in FINAL:
        response.headers["Retry-After"] = str(asyncjobs.POLL_HINT.get(record["status"], 2))
    return response


@bp.get("/jobs/<path:job_id>/events")
def job_events(job_id: str) -> ResponseReturnValue:
    """The job's progress as Server-Sent Events: `status`, `partial_image` and `image` as they
    happen, then `completed` (the stored job) or `failed` (its error), and the stream ends.

    Following an unfinished job takes one of the worker's stream places (streams.py) until
    the stream ends or its client leaves; with none left the answer is TOO_MANY_STREAMS."""
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
        done = {"id": 1, "event": "completed", "data": completed_body(metadata)}
        return _event_stream(iter([events.format_event(done)] if last < 1 else []))
    stream = events.follow(
        records,
        canonical,
        last,
        notice=runner_of(current_app).notice,
        gone=events.client_gone(request.environ),
    )
    if record["status"] in FINAL:  # every event is recorded already: it ends at once
        return _event_stream(stream)
    lease = streams.limiter_of().open(_stream_token())
    response = _event_stream(_leased(stream, lease))
    response.call_on_close(lease.release)  # also when the stream never started
    return response


def _event_stream(stream: Any) -> Response:
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _leased(stream: Iterator[str], lease: streams.StreamLease) -> Iterator[str]:
    """The stream, giving its place back the moment it ends (before the server closes it)."""
    try:
        yield from stream
    finally:
        lease.release()


def _stream_token() -> str | None:
    """Whose stream this is, for the per-token bound: the token's name; None on an open
    service, where every caller is the same anonymous one and only the worker bound holds."""
    if not current_app.config["SETTINGS"].auth_required:
        return None
    return getattr(g.get("caller"), "name", None)


@bp.get("/jobs/<path:job_id>/previews/<name>")
def job_preview(job_id: str, name: str) -> ResponseReturnValue:
    """A partial preview (or a finished image) of an asynchronous job, before it is stored."""
    path = _records().preview(job_id, name)
    if path is None:
        raise ImageNotFound(f"Preview {name[:64]!r} of job {job_id[:64]!r} not found.")
    match = PREVIEW_NAME.match(name)
    assert match is not None  # preview() checked the name
    fmt = next(f for f, ext in EXTENSIONS.items() if ext == match["ext"])
    response = send_file(path, mimetype=CONTENT_TYPES[fmt], max_age=3600, conditional=True)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.delete("/jobs/<job_path:job_id>")
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


def encode_cursor(position: tuple[int, str, str, int]) -> str:
    """An opaque cursor for a store position: URL-safe base64 of a small JSON array."""
    raw = strictjson.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str, str, int]:
    """The store position in a cursor this service issued; ValidationError otherwise."""
    bad = ValidationError(
        "'cursor' is not a cursor this service issued; pass next_cursor from the previous page.",
        details={"field": "cursor"},
    )
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, created, job_id, offset = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if not (
        _natural(stamp)
        and _natural(offset)
        and isinstance(created, str)
        and len(created) <= 64
        and isinstance(job_id, str)
        and normalize_id(job_id) == job_id
    ):
        raise bad
    return stamp, created, job_id, offset


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationError(
            f"'limit' must be an integer from 1 to {MAX_LIMIT}.", details={"field": "limit"}
        )
    return int(raw)


def _listed(metadata: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    requested = metadata.get("request", {})
    return {
        "id": image["id"],
        "url": f"/images/{image['id']}",
        "job_id": metadata["job_id"],
        "prompt": requested.get("prompt"),
        "model": requested.get("model"),
        "size": image.get("size"),
        "width": image.get("width"),
        "height": image.get("height"),
        "format": image.get("format"),
        "revised_prompt": image.get("revised_prompt"),
        "created_at": metadata.get("created_at"),
        "placeholder": metadata.get("placeholder", False),
    }


def _not_found(job_id: str) -> JobNotFound:
    canonical = normalize_id(job_id)
    if canonical is None:
        return JobNotFound(f"Job {job_id[:64]!r} not found: job ids are UUIDs.")
    return JobNotFound(f"Job {canonical} not found.")


def _store() -> ImageStore:
    return current_app.extensions["imagegen"]["store"]


def _records() -> JobRecords:
    return runner_of(current_app).records
