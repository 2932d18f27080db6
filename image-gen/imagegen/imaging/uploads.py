"""Where an edit's input images come from: multipart uploads, stored images named by id, or
the references of OpenAI's JSON edit form.

Uploads are read within the service's upload limits and checked by content; a JSON body
names images the service already stores (`image_id`, `image_ids`, `mask_id`, `markup_id`), or
carries OpenAI's `images`, `mask` and `markup` references (imaging.references reads those).
"""

from __future__ import annotations

from typing import Any

from flask import Request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge

from imagegen.errors import ValidationError
from imagegen.imaging.inputs import MAX_INPUT_IMAGES, ImageInputs, InputImage, capital
from imagegen.imaging.request import read_json
from imagegen.settings import Settings
from imagegen.storage.images import ImageStore

IMAGE_FIELDS = ("image", "image[]")  # file fields for input images; `image[]` as OpenAI's


MASK_FIELD = "mask"


MARKUP_FIELD = "markup"  # GPT Image 2.6's markup-guided edits


_EXTRA_FIELDS = (MASK_FIELD, MARKUP_FIELD)  # one file each


def is_multipart(req: Request) -> bool:
    return req.mimetype == "multipart/form-data"


def read_edit_json(req: Request, settings: Settings) -> Any:
    """The JSON body of an edit, which may carry images as data URLs: like a multipart body it
    may be `max_upload_total_bytes`; over it is 413."""
    req.max_content_length = settings.max_upload_total_bytes
    try:
        return read_json(req)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(
            f"The JSON body is larger than {settings.max_upload_total_bytes:,} bytes, the most "
            "this service takes in one request (IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES)."
        ) from None


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
        if key in (*IMAGE_FIELDS, *_EXTRA_FIELDS):
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
    unexpected = sorted(key[:64] for key in files if key not in (*IMAGE_FIELDS, *_EXTRA_FIELDS))
    if unexpected:
        raise ValidationError(
            f"Unexpected file field(s): {', '.join(unexpected[:10])}. Send the images as "
            "'image' (repeated for several), the mask as 'mask' and a markup as 'markup'.",
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
    extras: dict[str, InputImage | None] = {}
    for name in _EXTRA_FIELDS:
        parts = files.getlist(name)
        if len(parts) > 1:
            raise ValidationError(f"Send at most one '{name}'.", details={"field": name})
        label = f"the {name}"
        extras[name] = _upload(parts[0], name, label, settings.max_upload_bytes) if parts else None
    if not images:
        raise ValidationError(
            "An image to start from is required: upload it as the file field 'image'.",
            details={"field": "image"},
        )
    return fields, ImageInputs(images, extras[MASK_FIELD], extras[MARKUP_FIELD])


def _upload(item: FileStorage, field: str, label: str, limit: int) -> InputImage:
    data = item.stream.read(limit + 1)
    if item.filename:
        label = f"{label} ({item.filename[:64]!r})"
    return uploaded(data, field, label, limit)


def uploaded(data: bytes, field: str, label: str, limit: int) -> InputImage:
    """Bytes the caller sent (a file part, a data URL) as an input image: 413 over `limit`."""
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
    markup_id = fields.pop("markup_id", None)
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
    if markup_id is not None:
        named.append(("markup_id", markup_id))
    for name, value in named:
        if not isinstance(value, str):
            raise ValidationError(
                f"'{name}' must be an image id (a string).", details={"field": name}
            )
    images = tuple(
        stored_image(store, image_id, field, f"image {image_id[:64]}", settings.max_upload_bytes)
        for image_id in ids
    )
    mask = markup = None
    if mask_id is not None:
        mask = stored_image(
            store, mask_id, "mask_id", f"the mask {mask_id[:64]}", settings.max_upload_bytes
        )
    if markup_id is not None:
        markup = stored_image(
            store, markup_id, "markup_id", f"the markup {markup_id[:64]}", settings.max_upload_bytes
        )
    return fields, ImageInputs(images, mask, markup)


def stored_image(
    store: ImageStore, image_id: str, field: str, label: str, limit: int
) -> InputImage:
    stored = store.find_image(image_id)
    if stored.size > limit:
        raise ValidationError(
            f"{capital(label)} is larger than {limit:,} bytes, the most this service "
            "takes as an input image (IMAGE_GEN_MAX_UPLOAD_BYTES).",
            details={"field": field},
        )
    data = store.read_image(stored)  # ImageNotFound if deleted since the lookup
    origin = {"origin": "stored", "image_id": stored.image_id, "job_id": stored.job_id}
    return InputImage.from_bytes(data, field=field, label=label, origin=origin)
