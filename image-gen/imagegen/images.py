"""GET and DELETE /images/<id>: fetch or remove one stored image by its exact id.

`GET /images/<id>?width=256` answers a downscaled copy (see thumbnails.py), cached by the
store beside the image, so an agent can look at an image without loading all of it.
"""

from __future__ import annotations

import io
from contextlib import suppress
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_file
from flask.typing import ResponseReturnValue

from . import thumbnails
from .errors import ImageNotFound
from .imagefmt import CONTENT_TYPES
from .store import ImageStore, StoredImage, thumbnail_name

bp = Blueprint("images", __name__)

MAX_AGE = 3600


@bp.get("/images/<path:image_id>")
def get_image(image_id: str) -> ResponseReturnValue:
    """The image's bytes (or a thumbnail) with its content type, a strong ETag, and 304."""
    variant = thumbnails.requested_variant(request.args)
    store: ImageStore = current_app.extensions["imagegen"]["store"]
    image = store.find_image(image_id)
    if variant is not None:
        return _thumbnail(store, image, variant)
    return _send(image, image.path, image.content_type, image.image_id, image.path.name)


@bp.delete("/images/<path:image_id>")
def delete_image(image_id: str) -> ResponseReturnValue:
    """Remove the image file and mark it deleted in its job's metadata."""
    image = current_app.extensions["imagegen"]["store"].delete_image(image_id)
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
    fmt = variant.format or image.format
    name = thumbnail_name(image, variant.suffix, fmt)
    cached = store.find_thumbnail(image, variant.suffix, fmt)
    if cached is not None:
        with suppress(ImageNotFound):  # dropped from the cache meanwhile: made again below
            return _send(image, cached, CONTENT_TYPES[fmt], name, name)
    data = thumbnails.render(image.path, variant, fmt, image.image_id)
    if data is None:  # already small enough and in that format: the stored file is the answer
        return _send(image, image.path, CONTENT_TYPES[fmt], name, name)
    store.save_thumbnail(image, variant.suffix, fmt, data)
    return _send(image, io.BytesIO(data), CONTENT_TYPES[fmt], name, name)


def _send(
    image: StoredImage, body: Path | io.BytesIO, mimetype: str, etag: str, filename: str
) -> Response:
    """Send bytes with the caching headers every image answer shares (ETag, 304, ranges)."""
    try:
        response = send_file(body, mimetype=mimetype, etag=etag, conditional=True, max_age=MAX_AGE)
    except FileNotFoundError:  # deleted between the lookup and the open
        raise ImageNotFound(f"Image {image.image_id} not found.") from None
    response.headers["Content-Disposition"] = f'inline; filename="{filename}"'
    return response
