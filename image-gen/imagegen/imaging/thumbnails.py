"""Thumbnails: the `width`/`height`/`format` query of GET /images/<id>, and the resizing.

An agent looks at a 256-pixel copy instead of loading a multi-megabyte image into its
context. The aspect ratio is kept and an image is never enlarged.

The memory a worker spends on thumbnails stays bounded whatever the callers ask for: at most
`MAX_CONCURRENT` decodes run at once per process, each of an image of at most `MAX_PIXELS`
(the largest any model makes; larger ones are refused from their header, undecoded). Pillow
holds a decoded image at 4 bytes a pixel, so one decode costs about 33 MB (twice that while
a palette or 16-bit image is converted), and the image is reduced by a whole factor before
it is resampled (JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself; Pillow cannot
decode PNG or WebP reduced). After each thumbnail the memory goes back to the system (see
memory.py): measured with bench/thumbnail_memory.py, a worker's peak for 3840x2160 PNGs is
33 MB above its resting size for one and 68 MB for eight at once, and it returns to within
2 MB of it.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image
from werkzeug.datastructures import MultiDict

from imagegen.catalog.models import MODELS
from imagegen.errors import ImageNotFound, ServiceError, ValidationError
from imagegen.imaging import memory
from imagegen.imaging.formats import CONTENT_TYPES

log = logging.getLogger(__name__)

MIN_EDGE = 16
MAX_EDGE = 2048
FORMATS = tuple(CONTENT_TYPES)  # png, jpeg, webp
# The largest image any model makes (8,294,400 pixels: 3840x2160): no upstream image is
# stored larger, and one of this size decodes to 33 MB.
MAX_PIXELS = max(model.largest_output.max_pixels for model in MODELS)
MAX_CONCURRENT = 2
_INTEGER = re.compile(r"^[0-9]{1,6}$")
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_DECODED = [*_PIL_FORMATS, "GIF"]  # a GIF's thumbnail is of its first frame
_SAVE_OPTIONS: dict[str, tuple[str, dict[str, int]]] = {  # Pillow's format name, its options
    "png": ("PNG", {"compress_level": 6}),
    "jpeg": ("JPEG", {"quality": 85}),
    "webp": ("WEBP", {"quality": 80, "method": 4}),
}
# EXIF orientation -> the transposition that shows the image upright (as viewers do).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TURNING = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
}
_slots = threading.BoundedSemaphore(MAX_CONCURRENT)


@dataclass(frozen=True)
class Variant:
    """A requested thumbnail: a bounding box (either edge may be open) and an output format."""

    width: int | None
    height: int | None
    format: str | None

    @property
    def suffix(self) -> str:
        """The variant's part of its cache file name and ETag: `w256`, `h128` or `w256-h128`."""
        parts = [f"w{self.width}"] if self.width else []
        if self.height:
            parts.append(f"h{self.height}")
        return "-".join(parts)


def requested_variant(args: MultiDict[str, str]) -> Variant | None:
    """The thumbnail the query asks for, or None for the image itself.

    Only `width`, `height` and `format` are read; other query parameters are ignored, as they
    are without a thumbnail. Raises ValidationError naming the field at fault.
    """
    values = {name: _single(args, name) for name in ("width", "height", "format")}
    if all(value is None for value in values.values()):
        return None
    width, height = _edge("width", values["width"]), _edge("height", values["height"])
    fmt = values["format"]
    if fmt is not None and fmt not in FORMATS:
        raise ValidationError(
            f"'format' must be one of {', '.join(FORMATS)}, not {fmt[:32]!r}.",
            details={"field": "format"},
        )
    if width is None and height is None:
        raise ValidationError(
            "'format' applies to thumbnails: give 'width' (and/or 'height') too.",
            details={"field": "format"},
        )
    return Variant(width, height, fmt)


def fit(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """The largest size within the box that keeps `size`'s aspect ratio, never larger."""
    original_width, original_height = size
    scale = 1.0
    if width:
        scale = min(scale, width / original_width)
    if height:
        scale = min(scale, height / original_height)
    if scale >= 1.0:
        return size
    return (
        max(1, round(original_width * scale)),
        max(1, round(original_height * scale)),
    )


def render(source: BinaryIO, variant: Variant, fmt: str, image_id: str) -> bytes | None:
    """The thumbnail's bytes in `fmt`; None when the stored file already is that image.

    The stored file already is the answer when it fits the box and is in `fmt`. Raises
    ImageNotFound if the file vanished (deleted meanwhile), ServiceError if it cannot be
    decoded or is too large to decode.
    """
    try:
        with _slots:
            return _render(source, variant, fmt, image_id)
    except FileNotFoundError:
        raise ImageNotFound(f"Image {image_id} not found.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow reports damaged files as OSError (truncated), SyntaxError (broken PNG
        # chunks) or ValueError; the store checked the bytes when they were saved.
        log.warning(
            "cannot make a thumbnail of image %s: %s: %s", image_id, type(exc).__name__, exc
        )
        raise ServiceError(
            f"Image {image_id} is stored but cannot be decoded to make a thumbnail; "
            "fetch it without 'width'."
        ) from None
    finally:
        memory.trim()  # the decoded image is gone: give its pages back


def _render(source: BinaryIO, variant: Variant, fmt: str, image_id: str) -> bytes | None:
    with Image.open(source, formats=_DECODED) as image:
        if image.width * image.height > MAX_PIXELS:
            raise ServiceError(
                f"Image {image_id} is {image.width}x{image.height} pixels, too large to make "
                "a thumbnail of; fetch it without 'width'."
            )
        transpose = _ORIENTATIONS.get(image.getexif().get(0x0112, 1))
        turned = transpose in _TURNING
        shown = (image.height, image.width) if turned else image.size
        target = fit(shown, variant.width, variant.height)
        if target == shown and _PIL_FORMATS.get(str(image.format)) == fmt:
            return None
        stored_target = (target[1], target[0]) if turned else target
        if image.format == "JPEG":  # let libjpeg decode at 1/2, 1/4 or 1/8 scale
            image.draft(None, stored_target)
        image.load()
        picture = _resizable(image)
        if picture.size != stored_target:
            picture = picture.resize(stored_target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if transpose is not None:
            picture = picture.transpose(transpose)
        return _encode(picture, fmt)


def _resizable(image: Image.Image) -> Image.Image:
    """The image in a mode the resampling filters handle (palette and 16-bit ones are not)."""
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _encode(picture: Image.Image, fmt: str) -> bytes:
    if fmt == "jpeg" and picture.mode in ("RGBA", "LA"):  # JPEG has no alpha: flatten on white
        rgba = picture.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        picture = flat
    elif fmt == "webp" and picture.mode in ("L", "LA"):
        picture = picture.convert("RGBA" if picture.mode == "LA" else "RGB")
    out = io.BytesIO()
    pillow_format, options = _SAVE_OPTIONS[fmt]
    picture.save(out, pillow_format, **options)
    return out.getvalue()


def _single(args: MultiDict[str, str], name: str) -> str | None:
    """One query parameter's value; a parameter given twice is refused (which one counts?)."""
    values = args.getlist(name)
    if len(values) > 1:
        raise ValidationError(f"'{name}' is given more than once.", details={"field": name})
    return values[0] if values else None


def _edge(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    value = int(raw) if _INTEGER.match(raw) else None
    if value is None or not MIN_EDGE <= value <= MAX_EDGE:
        raise ValidationError(
            f"'{name}' must be a whole number of pixels from {MIN_EDGE} to {MAX_EDGE}, "
            f"not {raw[:32]!r}.",
            details={"field": name},
        )
    return value
