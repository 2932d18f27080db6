"""POST /edit and POST /variations: new images from input images, stored as ordinary jobs.

The input images come either as multipart/form-data uploads (checked by content and size) or,
in a JSON body, as the ids of images this service already stores, so an agent can edit what
it generated without downloading and uploading it again (imaging.uploads reads both).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import UnsupportedMediaType

from imagegen.api.generate import make_images
from imagegen.imaging.answers import answer_body
from imagegen.imaging.inputs import ImageInputs, default_model_for, parse_edit_request
from imagegen.imaging.request import ImageRequest, read_json
from imagegen.imaging.uploads import is_multipart, read_stored, read_uploads
from imagegen.jobs.resumable import kept_inputs
from imagegen.jobs.submit import respond_async
from imagegen.services import services
from imagegen.settings import Settings
from imagegen.storage.images import ImageStore

bp = Blueprint("edits", __name__)


@bp.post("/edit")
def edit() -> ResponseReturnValue:
    """Edit one or more images with a prompt; answer the job like POST /generate."""
    return _answer("edit")


@bp.post("/variations")
def variations() -> ResponseReturnValue:
    """Variations of one image (dall-e-2); answer the job like POST /generate."""
    return _answer("variation")


def _answer(operation: str) -> ResponseReturnValue:
    settings: Settings = services().settings
    multipart = is_multipart(request)
    if multipart:
        fields, inputs = read_uploads(request, settings)
    elif request.is_json:
        fields, inputs = read_stored(read_json(request), _store(), settings)
    else:
        raise UnsupportedMediaType(
            "Send the image files as multipart/form-data, or JSON naming stored images "
            "('image_id') with 'Content-Type: application/json'."
        )
    image_request = parse_edit_request(
        fields,
        inputs,
        operation=operation,
        default_model=default_model_for(operation, settings.default_model),
        form=multipart,
    )
    produce = services().maker.producer(inputs, operation)
    source = inputs.source()
    accepted = respond_async(
        image_request,
        operation=operation,
        produce=produce,
        source=source,
        inputs=kept_inputs(inputs),
    )
    if accepted is not None:
        return accepted
    metadata = make_images(image_request, produce=produce, operation=operation, source=source)
    return jsonify(answer_body(image_request, metadata))


def run_job(image_request: ImageRequest, inputs: ImageInputs, operation: str) -> dict[str, Any]:
    """Make the images through the provider and store them as one job recording its source."""
    return make_images(
        image_request,
        produce=services().maker.producer(inputs, operation),
        operation=operation,
        source=inputs.source(),
    )


def _store() -> ImageStore:
    return services().store
