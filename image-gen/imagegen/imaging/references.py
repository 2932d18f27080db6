"""OpenAI's JSON edit form: input images as references (`image_url` or `file_id`), read here.

The wire format, read 2026-12-02: OpenAI's OpenAPI description (2.3.0), as the generated
`openai-client-base` crate carries it (docs.rs, `EditImageBodyJsonParam` and `ImageRefParam`):
POST /v1/images/edits with `Content-Type: application/json` takes `images` (1 to 16
`{"image_url": ...}` or `{"file_id": ...}` objects), an optional `mask` (one such object),
`prompt`, `model`, `n`, `size`, `quality`, `background`, `output_format`,
`output_compression`, `input_fidelity`, `moderation`, `user`, `stream` and `partial_images`;
"JSON edits support GPT image models". `image_url` is an https URL or a
`data:image/...;base64,...` URL; `file_id` names an upload to OpenAI's Files API. The openai
Python SDK (3.57.0, `images.edit`) sends only the multipart form.

What this service does with a reference, so that it never fetches a URL a caller names (no
server-side request forgery) and every job's inputs are bytes it holds:
- a base64 `data:` URL of a PNG, JPEG or WebP image is decoded here and treated exactly as an
  uploaded file (the upload limits, the content check, stored with the job);
- an http(s) URL of one of this service's own images (`/images/<id>` on the host the request
  came to, as `/v1` answers DALL-E results, or that path alone) is read from the store;
  any other URL is refused;
- `file_id` is an image id of this service (the ids `/edit` takes as `image_id`): OpenAI's
  Files ids belong to an account this service never sees, and a job must keep its inputs.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from imagegen.errors import ValidationError
from imagegen.imaging.formats import CONTENT_TYPES, decode_base64
from imagegen.imaging.inputs import MAX_INPUT_IMAGES, ImageInputs, InputImage
from imagegen.imaging.uploads import stored_image, uploaded
from imagegen.settings import Settings
from imagegen.storage.images import ImageStore
from imagegen.storage.index import normalize_id

REFERENCE_FIELDS = ("images", "mask", "markup")  # OpenAI's JSON form
# The declared types a data URL may carry; the content decides the format, as for uploads.
DATA_URL_TYPES = frozenset({*CONTENT_TYPES.values(), "image/jpg"})
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.ASCII | re.I)
_MAX_SHOWN = 64  # characters of a caller's value quoted in a message


class ImageLinks:
    """How this service's own image URLs look from one request: its host and script root."""

    def __init__(self, host: str, root: str = "") -> None:
        self.host = host.lower()
        self.prefix = f"{root.rstrip('/')}/images/"

    @classmethod
    def of(cls, req: Request) -> ImageLinks:
        """The links of the service as the request reached it."""
        return cls(req.host, req.script_root)

    def image_id(self, url: str) -> str | None:
        """The image id an http(s) URL (or a bare path) of GET /images/<id> names, else None."""
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unclosed IPv6 host: not a URL of this service
            return None
        if parts.query or parts.fragment or not parts.path.startswith(self.prefix):
            return None
        foreign = parts.scheme not in ("http", "https") or parts.netloc.lower() != self.host
        if (parts.scheme or parts.netloc) and foreign:
            return None
        image_id = parts.path[len(self.prefix) :]
        return image_id if image_id and "/" not in image_id else None


def has_references(body: dict[str, Any]) -> bool:
    """Whether a JSON edit body uses OpenAI's form (`images`, `mask`) for its inputs."""
    return any(name in body for name in REFERENCE_FIELDS)


def read_references(
    body: Any, store: ImageStore, settings: Settings, links: ImageLinks
) -> tuple[dict[str, Any], ImageInputs]:
    """The other fields of an OpenAI JSON edit body, and the images its references name.

    Every reference is checked for shape before any is decoded or read, so a malformed one
    costs nothing; a bad one is a 400 naming it (`images[2]`, `mask`), nothing changes.
    """
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.")
    fields = dict(body)
    for name in ("image", "image[]", "image_id", "image_ids", "mask_id", "markup_id"):
        if name in fields:
            raise ValidationError(
                f"'{name}' is not part of OpenAI's JSON edit form: send the images as "
                "'images': [{\"image_url\": \"data:image/png;base64,...\"}] (or a 'file_id' "
                "that is an image id of this service).",
                details={"field": name},
            )
    refs, mask_ref = fields.pop("images", None), fields.pop("mask", None)
    markup_ref = fields.pop("markup", None)
    if not isinstance(refs, list) or not refs:
        raise ValidationError(
            "'images' must be a non-empty list of image references, each "
            '{"image_url": ...} or {"file_id": ...}.',
            details={"field": "images"},
        )
    if len(refs) > MAX_INPUT_IMAGES:
        raise ValidationError(
            f"'images' names {len(refs)} images; no model takes more than {MAX_INPUT_IMAGES}.",
            details={"field": "images"},
        )
    named = [(f"images[{n}]", f"image {n + 1}", ref) for n, ref in enumerate(refs)]
    if mask_ref is not None:
        named.append(("mask", "the mask", mask_ref))
    if markup_ref is not None:
        named.append(("markup", "the markup", markup_ref))
    checked = [(field, label, _shape(ref, field)) for field, label, ref in named]
    read = [
        _read(kind, value, field, label, store, settings, links)
        for field, label, (kind, value) in checked
    ]
    markup = read.pop() if markup_ref is not None else None
    mask = read.pop() if mask_ref is not None else None
    return fields, ImageInputs(tuple(read), mask, markup)


def _shape(ref: Any, field: str) -> tuple[str, str]:
    """The reference's kind ("image_url" or "file_id") and its string value; 400 otherwise."""
    if not isinstance(ref, dict):
        raise ValidationError(
            f'\'{field}\' must be an object: {{"image_url": ...}} or {{"file_id": ...}}.',
            details={"field": field},
        )
    given = {key: value for key, value in ref.items() if value is not None}
    unknown = sorted(str(key)[:_MAX_SHOWN] for key in given if key not in ("image_url", "file_id"))
    if unknown or len(given) != 1:
        problem = (
            f"has unknown key(s) {', '.join(unknown[:5])}"
            if unknown
            else ("names no image" if not given else "has both 'image_url' and 'file_id'")
        )
        raise ValidationError(
            f"'{field}' {problem}: give exactly one of 'image_url' or 'file_id'.",
            details={"field": field},
        )
    ((kind, value),) = given.items()
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"'{field}.{kind}' must be a non-empty string.", details={"field": field}
        )
    return kind, value


def _read(
    kind: str,
    value: str,
    field: str,
    label: str,
    store: ImageStore,
    settings: Settings,
    links: ImageLinks,
) -> InputImage:
    """One reference as an input image: decoded, or read from the store."""
    limit = settings.max_upload_bytes
    if kind == "file_id":
        if normalize_id(value) is None:
            raise ValidationError(
                f"'{field}.file_id' {value[:_MAX_SHOWN]!r} is not an image id of this service. "
                "OpenAI's Files ids are not accepted: the service cannot read your OpenAI "
                "account's files. Send the image as a data URL in 'image_url', or name an "
                "image this service stores (GET /images lists them).",
                details={"field": field},
            )
        return stored_image(store, value, field, f"{label} ({value[:_MAX_SHOWN]})", limit)
    if value[:5].lower() == "data:":
        return uploaded(_data_url_bytes(value, field, limit), field, label, limit)
    image_id = links.image_id(value)
    if image_id is None:
        raise ValidationError(
            f"'{field}.image_url' must be a base64 data URL (data:image/png;base64,...) or the "
            "URL of an image this service stores (/images/<id>): the service does not fetch "
            "other URLs.",
            details={"field": field},
        )
    return stored_image(store, image_id, field, f"{label} ({image_id[:_MAX_SHOWN]})", limit)


def _data_url_bytes(url: str, field: str, limit: int) -> bytes:
    """The bytes of a `data:image/...;base64,` URL, within `limit` once decoded; 400 if the URL
    is not one, 413 (before decoding) if it is too large."""
    match = _DATA_URL.match(url)
    params = match["params"].lower().split(";")[1:] if match else []
    declared = match["type"].strip().lower() if match else ""
    if match is None or "base64" not in params:
        raise ValidationError(
            f"'{field}.image_url' is not a base64 data URL: send "
            "data:image/png;base64,<the image's bytes in base64>.",
            details={"field": field},
        )
    if declared not in DATA_URL_TYPES:
        raise ValidationError(
            f"'{field}.image_url' declares {declared[:_MAX_SHOWN] or 'no type'!r}; send a PNG, "
            "JPEG or WebP image (data:image/png, image/jpeg or image/webp).",
            details={"field": field},
        )
    text = url[match.end() :]
    if len(text) > (limit + 2) // 3 * 4:
        raise RequestEntityTooLarge(
            f"The image in '{field}' is larger than {limit:,} bytes, the most this service takes "
            "per file (IMAGE_GEN_MAX_UPLOAD_BYTES)."
        )
    try:
        return decode_base64(text)
    except ValueError:
        raise ValidationError(
            f"'{field}.image_url' is not valid base64 after 'base64,' (standard alphabet, "
            "padded, no whitespace).",
            details={"field": field},
        ) from None
