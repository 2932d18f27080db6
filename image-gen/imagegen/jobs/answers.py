"""Asynchronous jobs as the API shows them, and the events their records carry."""

from __future__ import annotations

import copy
from typing import Any

from imagegen.books.interfaces import JobBook
from imagegen.imaging.formats import OUTPUT_EXTENSIONS


def pending_body(record: dict[str, Any], records: JobBook | None = None) -> dict[str, Any]:
    """A job that is not stored yet (queued, running) or failed, as the API shows it."""
    job_id = record["job_id"]
    body: dict[str, Any] = {
        "job_id": job_id,
        "status": record["status"],
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
        "model": record["request"].get("model"),
        "operation": record["operation"],
        "request": record["request"],
        "progress": record["progress"],
        "images": [],
        "previews": record["previews"],
        "attempts": record["attempts"],
        "events_url": f"/jobs/{job_id}/events",
    }
    if record["status"] == "queued" and records is not None:
        busy = records.busy_slots()
        earlier = sum(1 for marker, _ in records.active() if marker < record["marker"])
        body["queue"] = {
            "ahead": max(0, earlier - busy),
            "running": busy,
            "max_running": records.max_running,
        }
    if record["status"] == "failed" and record.get("error"):
        body.update(record["error"])
    if record.get("warnings"):
        body["warnings"] = record["warnings"]
    if record.get("webhook"):
        hook = record["webhook"]
        body["webhook"] = {"status": hook["status"], "attempts": hook["attempts"]}
    return body


def storing_body(metadata: dict[str, Any]) -> dict[str, Any]:
    """A synchronous job kept in this replica's spool (storage/spool.py): made, not yet
    stored. Its images' URLs answer once it is."""
    return {
        "job_id": metadata["job_id"],
        "status": "storing",
        "created_at": metadata.get("created_at"),
        "model": metadata.get("request", {}).get("model"),
        "operation": metadata.get("operation", "generate"),
        "request": metadata.get("request"),
        "images": [
            {"id": image["id"], "url": f"/images/{image['id']}"}
            for image in metadata.get("images", [])
        ],
    }


def completed_body(
    metadata: dict[str, Any], record: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A stored job as GET /jobs/<id> shows it: /generate's answer plus the request, and for
    an asynchronous job (its `record`) how many times it was started."""
    from imagegen.imaging.answers import job_response

    body = job_response(metadata)
    for image in body["images"]:
        if image["status"] != "available":
            image["url"] = None
            if "thumbnail_url" in image:
                image["thumbnail_url"] = None
    body["request"] = metadata["request"]
    if record is not None:
        body["attempts"] = record["attempts"]
    return body


def emit(record: dict[str, Any], event: str, data: dict[str, Any]) -> None:
    """Append an event (for GET /jobs/<id>/events) with the next id and a copy of `data`."""
    events = record["events"]
    number = events[-1]["id"] + 1 if events else 1
    events.append({"id": number, "event": event, "data": copy.deepcopy(data)})


def status_data(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": record["job_id"],
        "status": record["status"],
        "progress": record["progress"],
        "attempts": record["attempts"],
    }


def preview_name(image: int, fmt: str, partial: int | None = None) -> str:
    """The name of image `image`'s partial preview `partial` (or of its finished copy), as
    JobBook.save_preview keeps it and /jobs/<id>/previews/<name> serves it."""
    ext = OUTPUT_EXTENSIONS[fmt]
    return f"i{image}.{ext}" if partial is None else f"p{image}-{partial}.{ext}"
