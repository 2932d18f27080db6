"""Recognise image bytes by content: format and dimensions, without decoding pixels."""

from __future__ import annotations

import binascii
import codecs
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

_simd_b64decode: Callable[..., bytes] | None  # pybase64's b64decode(text, validate=True)
try:  # SIMD base64: 1.4 MB in 0.1 ms where binascii's byte loop takes 3-7 ms (bench/README.md)
    from pybase64 import b64decode as _simd_b64decode
except ImportError:  # pragma: no cover - pybase64 is a pinned runtime dependency
    _simd_b64decode = None

# Raster formats: what the service takes in (uploads, data URLs) and makes thumbnails as.
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# What a model may make: the rasters, and GPT Image 2.6's animated GIF and SVG.
OUTPUT_CONTENT_TYPES = {**CONTENT_TYPES, "gif": "image/gif", "svg": "image/svg+xml"}
OUTPUT_EXTENSIONS = {**EXTENSIONS, "gif": "gif", "svg": "svg"}
# An SVG is served under this policy: no script, no fetch, its own inline styles only, so
# a drawing opened straight from the service cannot act on the service's origin.
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
MAX_SVG_BYTES = 8 * 1024 * 1024
# Deeper than libxml2 reads by default (256): no drawing needs it, and a viewer recursing
# down millions of levels may not come back.
MAX_SVG_DEPTH = 256

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    frames: int = 1  # an animated GIF's

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def decode_base64(text: str | bytes | memoryview) -> bytes:
    """Strict standard base64 to bytes: no whitespace, no other characters, exact padding.

    Raises ValueError (binascii.Error is one) for anything else, non-ASCII text included.
    """
    if _simd_b64decode is not None:
        return _simd_b64decode(text, validate=True)
    return decode_base64_stdlib(text)


def decode_base64_stdlib(text: str | bytes | memoryview) -> bytes:
    """`decode_base64` with the standard library only: what runs without pybase64."""
    return binascii.a2b_base64(text, strict_mode=True)


def identify(data: bytes) -> ImageInfo | None:
    """Return the format and size of PNG, JPEG or WebP bytes, or None if they are not one."""
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png(data)
        if data.startswith(b"\xff\xd8\xff"):
            return _jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except (struct.error, IndexError):
        return None
    return None


def identify_output(data: bytes) -> ImageInfo | None:
    """Like `identify`, and also a whole GIF or SVG, as a model may make them.

    An SVG must be UTF-8 XML whose root is an `svg` element, with no document type (so no
    entity can be declared or expanded), at most MAX_SVG_BYTES; its size comes from its
    `width` and `height` in pixels, else from its `viewBox` (0x0 when it states neither).
    """
    info = identify(data)
    if info is not None:
        return info
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data.lstrip()[:1] == b"<":
        return _svg(data)
    return None


def png_has_alpha(data: bytes) -> bool:
    """Whether PNG bytes carry transparency: an alpha channel, or a tRNS chunk before IDAT."""
    try:
        if data[25] in (4, 6):  # IHDR colour type: grey + alpha, RGB + alpha
            return True
        pos = 8
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind = data[pos + 4 : pos + 8]
            if kind == b"tRNS":
                return True
            if kind in (b"IDAT", b"IEND"):
                return False
            pos += 12 + length
    except (IndexError, struct.error):
        return False
    return False


def _png(data: bytes) -> ImageInfo | None:
    if data[12:16] != b"IHDR" or not data.endswith(b"IEND\xaeB`\x82"):
        return None  # a PNG cut short has no IEND chunk at its end
    width, height = struct.unpack(">II", data[16:24])
    return _sized("png", width, height)


def _jpeg(data: bytes) -> ImageInfo | None:
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # no end-of-image marker: truncated
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return _sized("jpeg", width, height)
        pos += 2 + length
    return None


def _webp(data: bytes) -> ImageInfo | None:
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        return None  # truncated
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return _sized("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return _sized("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _sized("webp", width, height)
    return None


def _gif(data: bytes) -> ImageInfo | None:
    """A whole GIF: its blocks walked from the header to the trailer (zeros may follow), at
    least one frame, every frame within the logical screen (a viewer, Pillow too, grows its
    canvas to a frame beyond it, so the screen would understate what decoding costs)."""
    try:
        width, height, flags = struct.unpack_from("<HHB", data, 6)
        at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        frames = 0
        while data[at] != 0x3B:  # the trailer
            if data[at] == 0x21:  # an extension: its label, then its sub-blocks
                at = _gif_sub_blocks(data, at + 2)
            elif data[at] == 0x2C:  # a frame: its descriptor, palette, code size, data
                left, top, w, h, local = struct.unpack_from("<HHHHB", data, at + 1)
                if w == 0 or h == 0 or left + w > width or top + h > height:
                    return None
                at += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
                at = _gif_sub_blocks(data, at + 1)
                frames += 1
            else:
                return None
    except (struct.error, IndexError):
        return None  # cut short
    if frames == 0 or data[at + 1 :].strip(b"\x00"):
        return None
    info = _sized("gif", width, height)
    return ImageInfo("gif", width, height, frames) if info else None


def _gif_sub_blocks(data: bytes, at: int) -> int:
    """The offset after the sub-blocks starting at `at` (each a length byte, then that many
    bytes; a zero length ends them); IndexError if the data ends first."""
    while data[at]:
        at += 1 + data[at]
    return at + 1


_LENGTH = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:px)?\s*")


def _svg(data: bytes) -> ImageInfo | None:
    """An SVG drawing, read as it streams through expat: no tree is built, so the memory it
    takes is that of a chunk, however many elements it has."""
    if len(data) > MAX_SVG_BYTES:
        return None
    reader = _SvgReader()
    # UTF-8 whatever the XML declaration says; the decoder checks it (expat lets surrogates by).
    utf8 = codecs.getincrementaldecoder("utf-8")()
    parser = expat.ParserCreate(encoding="utf-8", namespace_separator=" ")
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.StartDoctypeDeclHandler = reader.doctype
    parser.ProcessingInstructionHandler = reader.instruction
    try:
        for at in range(0, len(data), _SVG_CHUNK):
            chunk = data[at : at + _SVG_CHUNK]
            utf8.decode(chunk)
            parser.Parse(chunk, False)
        utf8.decode(b"", True)
        parser.Parse(b"", True)
    except (expat.ExpatError, UnicodeDecodeError, _NotADrawing):
        return None
    root = reader.root
    if root is None:
        return None
    width, height = _svg_length(root.get("width")), _svg_length(root.get("height"))
    if width is None or height is None:
        box = (root.get("viewBox") or "").replace(",", " ").split()
        try:
            width, height = float(box[2]), float(box[3])
        except (IndexError, ValueError):
            width = height = 0.0
    # A length too long for a float is infinite; inf and nan are no size at all.
    if not (0 <= width <= 65_535 and 0 <= height <= 65_535):
        return None
    return ImageInfo("svg", round(width), round(height))


_SVG_CHUNK = 1 << 16
_SVG_ROOTS = ("svg", "http://www.w3.org/2000/svg svg")  # expat's "namespace name"


class _NotADrawing(Exception):
    """Raised from the expat handlers: these bytes are no SVG drawing the service keeps."""


# What could run script where the drawing is shown: a document of its own (a blob: tab of
# the web page, a download, an MCP host) or inlined in HTML, which folds case. The service's
# SVG_POLICY stops all of it on its own answers; a drawing needs none of it.
_ACTIVE_ELEMENTS = frozenset({"script", "foreignobject", "handler", "listener"})
_XHTML = "http://www.w3.org/1999/xhtml"
_SCRIPT_SCHEMES = ("javascript:", "vbscript:")
_INVISIBLE = re.compile(r"[\x00-\x20]+")  # what a browser skips in a URL's scheme


class _SvgReader:
    """Expat's handlers for one SVG: the root's attributes and the depth; no document type,
    since a DTD could declare entities (billion laughs), and a drawing needs none; nothing
    that runs script (_ACTIVE_ELEMENTS, XHTML, on* handlers, javascript: URLs, XSLT)."""

    def __init__(self) -> None:
        self.root: dict[str, str] | None = None
        self.depth = 0

    def start(self, name: str, attributes: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        if namespace == _XHTML or local.lower() in _ACTIVE_ELEMENTS:
            raise _NotADrawing(local)
        for key, value in attributes.items():
            if key.rpartition(" ")[2][:2].lower() == "on":
                raise _NotADrawing(key)
            if key == "attributeName" and value.strip()[:2].lower() == "on":
                raise _NotADrawing(value)  # an animation setting a handler
            if any(scheme in _INVISIBLE.sub("", value).lower() for scheme in _SCRIPT_SCHEMES):
                raise _NotADrawing(key)
        if self.root is None:
            if name not in _SVG_ROOTS:
                raise _NotADrawing(name)
            self.root = attributes
        self.depth += 1
        if self.depth > MAX_SVG_DEPTH:
            raise _NotADrawing("too deep")

    def end(self, name: str) -> None:
        self.depth -= 1

    def doctype(self, *declaration: Any) -> None:
        raise _NotADrawing("a document type")

    def instruction(self, target: str, data: str) -> None:
        if target.lower() == "xml-stylesheet":  # an XSLT could turn the drawing into a page
            raise _NotADrawing(target)


def _svg_length(value: str | None) -> float | None:
    """A width or height in pixels ("512", "512px"); None for percentages, ems and the like."""
    match = _LENGTH.fullmatch(value or "")
    return float(match[1]) if match else None


def _sized(fmt: str, width: int, height: int) -> ImageInfo | None:
    return ImageInfo(fmt, width, height) if width > 0 and height > 0 else None
