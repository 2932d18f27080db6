"""POST /edit and POST /variations: new images from input images, stored as ordinary jobs.

The input images come either as multipart/form-data uploads (checked by content and size) or,
in a JSON body, as the ids of images this service already stores, so an agent can edit what
it generated without downloading and uploading it again (imaging.uploads reads both), or as
OpenAI's JSON references (`images`, `mask`: data URLs or this service's images; edits only,
imaging.references reads them).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import UnsupportedMediaType

from imagegen.api.generate import make_images
from imagegen.api.parts import (
    ASYNC_PARAMETERS,
    STORED_JOB,
    accepted_response,
    input_body,
    input_errors,
)
from imagegen.apidoc import errors, operation
from imagegen.imaging.answers import answer_body
from imagegen.imaging.inputs import ImageInputs, default_model_for, parse_edit_request
from imagegen.imaging.references import ImageLinks, has_references, read_references
from imagegen.imaging.request import ImageRequest, read_json
from imagegen.imaging.uploads import is_multipart, read_edit_json, read_stored, read_uploads
from imagegen.jobs.resumable import kept_inputs
from imagegen.jobs.submit import respond_async
from imagegen.services import services
from imagegen.settings import Settings
from imagegen.storage.images import ImageStore

bp = Blueprint("edits", __name__)


@bp.post("/edit")
@operation(
    "editImages",
    tag="images",
    summary="Edit images with a prompt and store the results as one job",
    description="The input images are uploaded as multipart/form-data (`image`, repeated for "
    "several; `image[]` also works) or named by id in a JSON body (`image_id` or `image_ids`, "
    "images this service stores), or given in a JSON body as OpenAI's references: `images`, a "
    "list of `{image_url}` (a base64 `data:image/...` URL, decoded and checked like an upload, "
    "or the URL of an image this service stores; no other URL is fetched) or `{file_id}` (an "
    "image id of this service, not an OpenAI Files id). An optional `mask` (or `mask_id`, or in "
    "the references form a `mask` reference) is a PNG with an alpha "
    "channel and the first image's dimensions; its transparent areas are edited. Uploads are "
    "recognised by content (PNG, JPEG, WebP), and each model's limits (GET /models/{model_id}: "
    "`edits`) are checked before any upstream call; a model that cannot edit is a 400 naming "
    "those that can. The job's metadata records the inputs' ids or digests as `source`.",
    parameters=ASYNC_PARAMETERS,
    body=input_body("EditForm", "EditRequest"),
    responses={"200": STORED_JOB, **accepted_response(), **input_errors(), **errors(503)},
)
def edit() -> ResponseReturnValue:
    """Edit one or more images with a prompt; answer the job like POST /generate."""
    return _answer("edit")


@bp.post("/variations")
@operation(
    "createVariations",
    tag="images",
    summary="Variations of one image (dall-e-2), stored as one job",
    description="One square PNG, uploaded as multipart/form-data `image` or named by "
    "`image_id` in a JSON body; no prompt. Only models whose catalog entry has `variations` "
    "take it.",
    parameters=ASYNC_PARAMETERS,
    body=input_body("VariationForm", "VariationRequest"),
    responses={"200": STORED_JOB, **accepted_response(), **input_errors(), **errors(503)},
)
def variations() -> ResponseReturnValue:
    """Variations of one image (dall-e-2); answer the job like POST /generate."""
    return _answer("variation")


def _answer(operation: str) -> ResponseReturnValue:
    settings: Settings = services().settings
    multipart = is_multipart(request)
    if multipart:
        fields, inputs = read_uploads(request, settings)
    elif request.is_json and operation == "edit":
        body = read_edit_json(request, settings)
        if isinstance(body, dict) and has_references(body):
            fields, inputs = read_references(body, _store(), settings, ImageLinks.of(request))
        else:
            fields, inputs = read_stored(body, _store(), settings)
    elif request.is_json:
        fields, inputs = read_stored(read_json(request), _store(), settings)
    else:
        raise UnsupportedMediaType(
            "Send the image files as multipart/form-data, or JSON naming stored images "
            "('image_id') or carrying them as OpenAI's 'images' references, with "
            "'Content-Type: application/json'."
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
