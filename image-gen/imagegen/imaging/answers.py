"""A stored job as the API answers it: ids and URLs, never image bytes."""

from __future__ import annotations

from typing import Any

from imagegen import clock
from imagegen.imaging.request import ImageRequest


def answer_body(image_request: ImageRequest, metadata: dict[str, Any]) -> dict[str, Any]:
    """The synchronous answer: the stored job, and a warning when its model is retiring."""
    body = job_response(metadata)
    if warnings := image_request.model.warnings(clock.today()):
        body["warnings"] = warnings
    return body


def job_response(metadata: dict[str, Any]) -> dict[str, Any]:
    """A stored job as the API shows it: ids and URLs, never image bytes."""
    requested = metadata["request"]
    images = [
        {
            "id": image["id"],
            "url": f"/images/{image['id']}",
            # A small copy for an agent to look at cheaply; None once the image is deleted.
            "thumbnail_url": f"/images/{image['id']}?width=256"
            if image.get("status", "available") == "available"
            else None,
            "prompt": requested["prompt"],
            "model": requested["model"],
            "size": image["size"],
            "width": image["width"],
            "height": image["height"],
            "format": image["format"],
            "revised_prompt": image.get("revised_prompt"),
            "status": image.get("status", "available"),
        }
        for image in metadata["images"]
    ]
    body: dict[str, Any] = {
        "job_id": metadata["job_id"],
        "status": metadata["status"],
        "created_at": metadata["created_at"],
        "model": requested["model"],
        "placeholder": metadata.get("placeholder", False),
        "images": images,
    }
    if metadata.get("usage"):
        body["usage"] = metadata["usage"]
    if metadata.get("client"):
        body["client"] = metadata["client"]
    if metadata.get("cost"):
        body["cost"] = metadata["cost"]
    if metadata.get("served_by"):  # the named upstream (models file) that made the images
        body["served_by"] = metadata["served_by"]
    return body
