"""GET and DELETE /images/<id>: fetch or remove one stored image by its exact id."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, send_file
from flask.typing import ResponseReturnValue

from .errors import ImageNotFound

bp = Blueprint("images", __name__)


@bp.get("/images/<path:image_id>")
def get_image(image_id: str) -> ResponseReturnValue:
    """The image's bytes with its content type, a strong ETag, and 304 on If-None-Match."""
    image = current_app.extensions["imagegen"]["store"].find_image(image_id)
    try:
        response = send_file(
            image.path,
            mimetype=image.content_type,
            etag=image.image_id,
            conditional=True,
            max_age=3600,
        )
    except FileNotFoundError:  # deleted between the lookup and the open
        raise ImageNotFound(f"Image {image.image_id} not found.") from None
    response.headers["Content-Disposition"] = f'inline; filename="{image.path.name}"'
    return response


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
