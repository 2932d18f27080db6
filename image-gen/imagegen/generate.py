"""POST /generate: make images for a prompt and store them as one job."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from . import clock
from .catalog import DEPRECATED
from .logs import shorten
from .openai_client import Deadline
from .providers import Generation
from .validation import ImageRequest, parse_generate_request, read_json

bp = Blueprint("generate", __name__)
log = logging.getLogger(__name__)


@bp.post("/generate")
def generate() -> ResponseReturnValue:
    """Generate `count` images; answer the job id and a URL for each stored image."""
    settings = current_app.config["SETTINGS"]
    image_request = parse_generate_request(read_json(request), default_model=settings.default_model)
    metadata = create_job(image_request)
    body = job_response(metadata)
    if image_request.model.status(clock.today()) == DEPRECATED:
        model = image_request.model
        body["warnings"] = [
            f"Model {model.id} shuts down on {model.shutdown_on}; move to {model.replacement}."
        ]
    return jsonify(body)


def admit(image_request: ImageRequest, caller: Any = None) -> Any:
    """Check the caller may make these images and reserve them against the caps.

    Raises the error to answer (before any upstream call); returns the admission that
    `create_job` settles. Routes that answer before generating (asynchronous jobs) call it
    first, so a refusal is the answer instead of a failed job.
    """
    return None


def create_job(
    image_request: ImageRequest,
    *,
    produce: Callable[[Deadline], Generation] | None = None,
    operation: str = "generate",
    source: dict[str, Any] | None = None,
    caller: Any = None,
    admission: Any = None,
) -> dict[str, Any]:
    """Make images and store them as one job; return its metadata.

    Shared by every route that makes images (generations, edits, variations), so they log,
    time, account and store alike. `produce` makes the images (by default the provider's
    `generate`); `source` records what an edit or variation started from. `caller` is the
    client token's identity (from the request when not given); `admission` is what `admit`
    returned when the route admitted the request itself.
    """
    settings = current_app.config["SETTINGS"]
    parts = current_app.extensions["imagegen"]
    provider, store = parts["provider"], parts["store"]
    if produce is None:
        produce = lambda deadline: provider.generate(image_request, deadline)  # noqa: E731
    started = time.perf_counter()
    log.info(
        "generating request_id=%s operation=%s model=%s count=%d size=%s provider=%s prompt=%s",
        g.get("request_id"),
        operation,
        image_request.model.id,
        image_request.count,
        image_request.size,
        provider.name,
        shorten(image_request.prompt) if settings.log_prompts else "[not logged]",
    )
    generation = produce(Deadline(settings.request_deadline))
    extra: dict[str, Any] = {"provider": provider.name, "operation": operation}
    if source is not None:
        extra["source"] = source
    metadata = store.save_job(image_request.as_dict(), generation, extra=extra)
    log.info(
        "generated request_id=%s job_id=%s model=%s count=%d seconds=%.2f",
        g.get("request_id"),
        metadata["job_id"],
        image_request.model.id,
        len(metadata["images"]),
        time.perf_counter() - started,
    )
    return metadata


def job_response(metadata: dict[str, Any]) -> dict[str, Any]:
    """A stored job as the API shows it: ids and URLs, never image bytes."""
    requested = metadata["request"]
    images = [
        {
            "id": image["id"],
            "url": f"/images/{image['id']}",
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
    return body
