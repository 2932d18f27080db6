"""GET and DELETE /images/<id>: fetch or remove one stored image by its exact id.

`GET /images/<id>?width=256` answers a downscaled copy (see thumbnails.py), cached by the
store beside the image, so an agent can look at an image without loading all of it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from typing import Any, BinaryIO

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from imagegen import strictjson
from imagegen.api.parts import IMAGE_HEADERS, IMAGE_ID, IMAGE_PARAMETERS, UUID_PATTERN, binary
from imagegen.apidoc import bare, errors, json_response, operation, query
from imagegen.errors import ValidationError
from imagegen.imaging import thumbnails
from imagegen.imaging.formats import CONTENT_TYPES, SVG_POLICY
from imagegen.services import services
from imagegen.storage.images import ImageStore, StoredImage, normalize_id, thumbnail_name

bp = Blueprint("images", __name__)

MAX_AGE = 3600


@bp.get("/images/<path:image_id>")
@operation(
    "getImage",
    method="get",
    tag="images",
    summary="The image's bytes, or a thumbnail of it",
    description="Other query parameters are ignored.",
    parameters=IMAGE_PARAMETERS,
    responses={
        "200": binary("The image (or thumbnail), typed by its format.", IMAGE_HEADERS),
        "206": binary("The requested byte range.", IMAGE_HEADERS),
        "304": bare("Not modified: the If-None-Match ETag matches."),
        "400": json_response(
            "A bad thumbnail parameter: `width` or `height` not a whole number from "
            f"{thumbnails.MIN_EDGE} to {thumbnails.MAX_EDGE}, an unknown `format`, `format` "
            "alone, or a parameter given twice (VALIDATION_ERROR, with `field`).",
            "Error",
        ),
        **errors(404, 416, 500, 503),
    },
)
@operation(
    "headImage",
    method="head",
    tag="images",
    summary="The image's headers without its bytes",
    parameters=IMAGE_PARAMETERS,
    responses={
        "200": bare("The image exists.", IMAGE_HEADERS),
        "206": bare("The requested byte range exists.", IMAGE_HEADERS),
        "304": bare("Not modified: the If-None-Match ETag matches."),
        "400": bare("A bad thumbnail parameter."),
        "404": bare("No image has this id."),
        "416": bare("The range is outside the image."),
        "500": bare("Unexpected failure."),
        "503": bare("The image store or the database cannot be reached; retry after Retry-After."),
    },
)
def get_image(image_id: str) -> ResponseReturnValue:
    """The image's bytes (or a thumbnail) with its content type, a strong ETag, and 304."""
    variant = thumbnails.requested_variant(request.args)
    store: ImageStore = services().store
    if variant is not None:
        return _thumbnail(store, store.find_image(image_id), variant)
    image, stream = store.open_found(image_id)
    response = _send(
        stream, image.size, image.modified, image.content_type, image.image_id, image.name
    )
    if image.format == "svg":  # a drawing opened from here may not script this origin
        response.headers["Content-Security-Policy"] = SVG_POLICY
    return response


@bp.delete("/images/<path:image_id>")
@operation(
    "deleteImage",
    tag="images",
    summary="Delete one image",
    description="The file is removed and the image is marked deleted in its job.",
    parameters=[IMAGE_ID],
    responses={
        "200": json_response("The image is gone.", "DeletedImage"),
        **errors(404, 500, 503, 507),
    },
)
def delete_image(image_id: str) -> ResponseReturnValue:
    """Remove the image file and mark it deleted in its job's metadata."""
    image = services().store.delete_image(image_id)
    return jsonify(
        {
            "status": "success",
            "message": f"Image {image.image_id} deleted.",
            "id": image.image_id,
            "job_id": image.job_id,
        }
    )


def _thumbnail(store: ImageStore, image: StoredImage, variant: thumbnails.Variant) -> Response:
    """A thumbnail from the store's cache, or made, cached and sent.

    Its ETag names the image and the variant (`<id>-w256.png`), so every variant validates
    on its own; the bytes behind one ETag never change, as the image itself never does.
    """
    if image.format == "svg":  # a drawing scales by itself: its thumbnail is the drawing
        if variant.format is not None:
            raise ValidationError(
                f"Image {image.image_id} is an SVG drawing; it is not turned into "
                f"{variant.format.upper()}. Fetch it without 'format': it scales by itself.",
                details={"field": "format"},
            )
        response = _send(
            store.open_image(image),
            image.size,
            image.modified,
            image.content_type,
            image.image_id,
            image.name,
        )
        response.headers["Content-Security-Policy"] = SVG_POLICY
        return response
    # A GIF's thumbnail is a still of its first frame, a PNG unless another format is asked.
    fmt = variant.format or ("png" if image.format == "gif" else image.format)
    name = thumbnail_name(image, variant.suffix, fmt)
    mimetype = CONTENT_TYPES[fmt]
    cached = store.open_thumbnail(image, variant.suffix, fmt)  # None if dropped meanwhile
    if cached is not None:
        return _send(cached.stream, cached.info.size, cached.info.modified, mimetype, name, name)
    with store.open_image(image) as source:
        data = thumbnails.render(source, variant, fmt, image.image_id)
    if data is None:  # already small enough and in that format: the stored file is the answer
        return _send(store.open_image(image), image.size, image.modified, mimetype, name, name)
    store.save_thumbnail(image, variant.suffix, fmt, data)
    return _send(io.BytesIO(data), len(data), None, mimetype, name, name)


def _send(
    body: BinaryIO, size: int, modified: float | None, mimetype: str, etag: str, filename: str
) -> Response:
    """Send a stream with the caching headers every image answer shares (ETag, Last-Modified,
    304, ranges), as Flask's send_file does for a file on disk."""
    response = current_app.response_class(
        wrap_file(request.environ, body), mimetype=mimetype, direct_passthrough=True
    )
    response.content_length = size
    if modified is not None:
        response.last_modified = modified  # type: ignore[assignment]
    response.cache_control.public = True
    response.cache_control.max_age = MAX_AGE
    response.expires = int(time.time() + MAX_AGE)  # type: ignore[assignment]
    response.set_etag(etag)
    response.headers["Content-Disposition"] = f'inline; filename="{filename}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    try:  # in place: a 304, a 206 for a range, or the whole 200
        response.make_conditional(request.environ, accept_ranges=True, complete_length=size)
    except RequestedRangeNotSatisfiable:
        body.close()
        raise
    return response


# --- GET /images: browsing, newest first, by cursor ----------------------------------------

DEFAULT_LIMIT = 50


MAX_LIMIT = 200


_MAX_CURSOR_CHARS = 512


@bp.get("/images")
@operation(
    "listImages",
    tag="images",
    summary="List stored images, newest job first",
    parameters=[
        query(
            "limit",
            "Images per page; empty means the default.",
            {
                "anyOf": [{"type": "integer", "minimum": 1, "maximum": 200}, {"const": ""}],
                "default": 50,
            },
        ),
        query(
            "cursor",
            "The `next_cursor` of the previous page; any other value is refused.",
            {"type": "string", "maxLength": 512},
        ),
        query("job_id", "Only this job's images.", {"type": "string", "pattern": UUID_PATTERN}),
    ],
    responses={"200": json_response("A page of images.", "ImagePage"), **errors(400, 500, 503)},
    links={"NextPage": ("listImages", {"cursor": "$response.body#/next_cursor"})},
)
def list_images() -> ResponseReturnValue:
    """Stored images, newest job first: `limit` per page, `cursor` for the next, `job_id` filter."""
    limit = _limit(request.args.get("limit"))
    after = decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None
    job_id = request.args.get("job_id")
    if job_id is not None and normalize_id(job_id) is None:
        raise ValidationError("'job_id' must be a job id (a UUID).", details={"field": "job_id"})
    items, following = services().store.list_images(limit=limit, after=after, job_id=job_id)
    return jsonify(
        {
            "images": [_listed(metadata, image) for metadata, image in items],
            "next_cursor": encode_cursor(following) if following else None,
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
