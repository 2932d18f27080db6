"""Browsing the store: GET /images (newest first, by cursor) and GET/DELETE /jobs/<job_id>."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from .errors import ServiceError, ValidationError
from .generate import job_response
from .store import ImageStore, normalize_id

bp = Blueprint("jobs", __name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_MAX_CURSOR_CHARS = 512


class JobNotFound(ServiceError):
    status = 404
    code = "JOB_NOT_FOUND"


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
    """The job as /generate answered it, plus its request; deleted images have no URL."""
    metadata = _store().job_metadata(job_id)
    if metadata is None:
        raise _not_found(job_id)
    body = job_response(metadata)
    for image in body["images"]:
        if image["status"] != "available":
            image["url"] = None
    body["request"] = metadata["request"]
    return jsonify(body)


@bp.delete("/jobs/<path:job_id>")
def delete_job(job_id: str) -> ResponseReturnValue:
    """Remove the whole job: every image, its metadata and its directory."""
    metadata = _store().delete_job(job_id)
    if metadata is None:
        raise _not_found(job_id)
    canonical = normalize_id(job_id)
    count = len(metadata.get("images", []))
    return jsonify(
        {
            "status": "success",
            "message": f"Job {canonical} and its {count} image(s) deleted.",
            "job_id": canonical,
        }
    )


def encode_cursor(position: tuple[int, str, str, int]) -> str:
    """An opaque cursor for a store position: URL-safe base64 of a small JSON array."""
    raw = json.dumps(list(position), separators=(",", ":")).encode()
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
