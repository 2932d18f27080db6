"""POST /edit and POST /variations: new images from input images, stored as ordinary jobs.

The input images come either as multipart/form-data uploads (checked by content and size) or,
in a JSON body, as the ids of images this service already stores, so an agent can edit what
it generated without downloading and uploading it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Request, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from . import asyncjobs
from .errors import ImageNotFound, ValidationError
from .generate import answer_body, create_job
from .imagefmt import EXTENSIONS
from .jobrecords import JobRecords
from .openai_client import Deadline
from .providers import Generation
from .settings import Settings
from .store import ImageStore
from .validation import (
    MAX_INPUT_IMAGES,
    ImageInputs,
    ImageRequest,
    InputImage,
    capital,
    default_model_for,
    parse_edit_request,
    read_json,
)

bp = Blueprint("edits", __name__)

IMAGE_FIELDS = ("image", "image[]")  # file fields for input images; `image[]` as OpenAI's
MASK_FIELD = "mask"


@bp.post("/edit")
def edit() -> ResponseReturnValue:
    """Edit one or more images with a prompt; answer the job like POST /generate."""
    return _answer("edit")


@bp.post("/variations")
def variations() -> ResponseReturnValue:
    """Variations of one image (dall-e-2); answer the job like POST /generate."""
    return _answer("variation")


def _answer(operation: str) -> ResponseReturnValue:
    settings: Settings = current_app.config["SETTINGS"]
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
    produce = _producer(image_request, inputs, operation)
    source = inputs.source()
    accepted = asyncjobs.respond_async(
        image_request,
        operation=operation,
        produce=produce,
        source=source,
        inputs=_kept_inputs(inputs),
    )
    if accepted is not None:
        return accepted
    metadata = create_job(image_request, produce=produce, operation=operation, source=source)
    return jsonify(answer_body(image_request, metadata))


def run_job(image_request: ImageRequest, inputs: ImageInputs, operation: str) -> dict[str, Any]:
    """Make the images through the provider and store them as one job recording its source."""
    return create_job(
        image_request,
        produce=_producer(image_request, inputs, operation),
        operation=operation,
        source=inputs.source(),
    )


# --- asynchronous edits outlive their process: the inputs are kept with the job record --------

_DESCRIBED = ("format", "width", "height", "bytes", "sha256")  # what InputImage.record adds


def _kept_inputs(inputs: ImageInputs) -> dict[str, bytes]:
    """The files an asynchronous edit keeps until it ends, named by position."""
    kept = {
        f"image-{n}.{EXTENSIONS[image.format]}": image.data
        for n, image in enumerate(inputs.images, start=1)
    }
    if inputs.mask is not None:
        kept[f"mask.{EXTENSIONS[inputs.mask.format]}"] = inputs.mask.data
    return kept


def _rebuild(record: dict[str, Any], settings: Settings, records: JobRecords) -> asyncjobs.Rebuilt:
    """An edit or variation whose process died, from its record and the kept inputs."""

    def kept(name: str, entry: dict[str, Any], field: str, label: str) -> InputImage:
        data = records.read_input(record["job_id"], f"{name}.{EXTENSIONS[entry['format']]}")
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise asyncjobs.JobInterrupted(
                f"The process running this {record['operation']} stopped, and its input "
                "images are no longer on disk, so it cannot be started again. Submit it again."
            )
        origin = {key: value for key, value in entry.items() if key not in _DESCRIBED}
        return InputImage.from_bytes(data, field=field, label=label, origin=origin)

    source, operation = record["source"], record["operation"]
    images = tuple(
        kept(f"image-{n}", entry, "image", f"image {n}")
        for n, entry in enumerate(source["images"], start=1)
    )
    mask = kept("mask", source["mask"], MASK_FIELD, "the mask") if source.get("mask") else None
    inputs = ImageInputs(images, mask)
    image_request = parse_edit_request(
        record["request"],
        inputs,
        operation=operation,
        default_model=default_model_for(operation, settings.default_model),
    )
    return asyncjobs.Rebuilt(image_request, _producer(image_request, inputs, operation))


asyncjobs.resumable("edit", _rebuild)
asyncjobs.resumable("variation", _rebuild)


def _producer(
    image_request: ImageRequest, inputs: ImageInputs, operation: str
) -> Callable[[Deadline], Generation]:
    """What makes the images: the provider's edit or variation of these inputs."""
    provider = current_app.extensions["imagegen"]["provider"]
    if operation == "edit":
        return lambda deadline: provider.edit(image_request, inputs, deadline)
    return lambda deadline: provider.vary(image_request, inputs, deadline)


def is_multipart(req: Request) -> bool:
    return req.mimetype == "multipart/form-data"


def read_uploads(req: Request, settings: Settings) -> tuple[dict[str, str], ImageInputs]:
    """The text fields and the uploaded images of a multipart body, within the upload limits.

    The whole body may be `max_upload_total_bytes` (JSON bodies keep the smaller general
    limit), each file `max_upload_bytes`; over either is 413.
    """
    limit = settings.max_upload_total_bytes
    req.max_content_length = limit
    try:
        form, files = req.form, req.files
    except RequestEntityTooLarge:
        if req.content_length is not None and req.content_length <= limit:
            raise RequestEntityTooLarge(
                f"A text field is larger than {req.max_form_memory_size or 0:,} bytes, or the "
                f"form has more than {req.max_form_parts or 0:,} parts."
            ) from None
        raise RequestEntityTooLarge(
            f"The upload is larger than {limit:,} bytes, the most this service takes in one "
            "request (IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES)."
        ) from None
    fields: dict[str, str] = {}
    for key in form:
        values = form.getlist(key)
        if key in (*IMAGE_FIELDS, MASK_FIELD):
            raise ValidationError(
                f"'{key}' must be sent as a file (e.g. curl -F '{key}=@picture.png').",
                details={"field": key},
            )
        if len(values) > 1:
            raise ValidationError(
                f"'{key[:64]}' was sent {len(values)} times; send it once.",
                details={"field": key[:64]},
            )
        fields[key] = values[0]
    unexpected = sorted(key[:64] for key in files if key not in (*IMAGE_FIELDS, MASK_FIELD))
    if unexpected:
        raise ValidationError(
            f"Unexpected file field(s): {', '.join(unexpected[:10])}. Send the images as "
            "'image' (repeated for several) and the mask as 'mask'.",
            details={"field": unexpected[0]},
        )
    uploads = [(name, item) for name in IMAGE_FIELDS for item in files.getlist(name)]
    if len(uploads) > MAX_INPUT_IMAGES:
        raise ValidationError(
            f"{len(uploads)} images were sent; no model takes more than {MAX_INPUT_IMAGES}.",
            details={"field": uploads[-1][0]},
        )
    images = tuple(
        _upload(item, name, f"image {number}", settings.max_upload_bytes)
        for number, (name, item) in enumerate(uploads, start=1)
    )
    masks = files.getlist(MASK_FIELD)
    if len(masks) > 1:
        raise ValidationError("Send at most one 'mask'.", details={"field": MASK_FIELD})
    mask = _upload(masks[0], MASK_FIELD, "the mask", settings.max_upload_bytes) if masks else None
    if not images:
        raise ValidationError(
            "An image to start from is required: upload it as the file field 'image'.",
            details={"field": "image"},
        )
    return fields, ImageInputs(images, mask)


def _upload(item: FileStorage, field: str, label: str, limit: int) -> InputImage:
    data = item.stream.read(limit + 1)
    if item.filename:
        label = f"{label} ({item.filename[:64]!r})"
    if len(data) > limit:
        raise RequestEntityTooLarge(
            f"{capital(label)} is larger than {limit:,} bytes, the most this service takes "
            "per file (IMAGE_GEN_MAX_UPLOAD_BYTES)."
        )
    return InputImage.from_bytes(data, field=field, label=label, origin={"origin": "upload"})


def read_stored(
    body: Any, store: ImageStore, settings: Settings
) -> tuple[dict[str, Any], ImageInputs]:
    """The fields of a JSON body and the stored images its `image_id`/`image_ids`/`mask_id` name.

    An unknown (or deleted) id is 404 IMAGE_NOT_FOUND; nothing is read before every id is a
    string.
    """
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.")
    fields = dict(body)
    single, several = fields.pop("image_id", None), fields.pop("image_ids", None)
    mask_id = fields.pop("mask_id", None)
    if single is not None and several is not None:
        raise ValidationError(
            "Send 'image_id' or 'image_ids', not both.", details={"field": "image_ids"}
        )
    if single is not None:
        field, ids = "image_id", [single]
    elif several is not None:
        field, ids = "image_ids", several
        if not isinstance(ids, list) or not ids:
            raise ValidationError(
                "'image_ids' must be a non-empty list of image ids.", details={"field": field}
            )
        if len(ids) > MAX_INPUT_IMAGES:
            raise ValidationError(
                f"'image_ids' names {len(ids)} images; no model takes more than "
                f"{MAX_INPUT_IMAGES}.",
                details={"field": field},
            )
    else:
        raise ValidationError(
            "Name the image to start from with 'image_id' (or 'image_ids', a list), or upload "
            "it as multipart/form-data 'image'.",
            details={"field": "image_id"},
        )
    named = [(field, image_id) for image_id in ids]
    if mask_id is not None:
        named.append(("mask_id", mask_id))
    for name, value in named:
        if not isinstance(value, str):
            raise ValidationError(
                f"'{name}' must be an image id (a string).", details={"field": name}
            )
    images = tuple(
        _stored(store, image_id, field, f"image {image_id[:64]}", settings.max_upload_bytes)
        for image_id in ids
    )
    mask = None
    if mask_id is not None:
        mask = _stored(
            store, mask_id, "mask_id", f"the mask {mask_id[:64]}", settings.max_upload_bytes
        )
    return fields, ImageInputs(images, mask)


def _stored(store: ImageStore, image_id: str, field: str, label: str, limit: int) -> InputImage:
    stored = store.find_image(image_id)
    try:
        if stored.path.stat().st_size > limit:
            raise ValidationError(
                f"{capital(label)} is larger than {limit:,} bytes, the most this service "
                "takes as an input image (IMAGE_GEN_MAX_UPLOAD_BYTES).",
                details={"field": field},
            )
        data = stored.path.read_bytes()
    except FileNotFoundError:  # deleted since the lookup
        raise ImageNotFound(f"Image {stored.image_id} not found.") from None
    origin = {"origin": "stored", "image_id": stored.image_id, "job_id": stored.job_id}
    return InputImage.from_bytes(data, field=field, label=label, origin=origin)


def _store() -> ImageStore:
    return current_app.extensions["imagegen"]["store"]
