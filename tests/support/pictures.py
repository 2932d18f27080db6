"""Small real images for upload tests: PNG (with alpha), JPEG and WebP."""

from __future__ import annotations

import struct
import zlib

from tests.support import fake_openai as fake


def rgba_png(width: int = 16, height: int = 16, pad_to: int | None = None) -> bytes:
    """A valid RGBA PNG, half transparent (a mask, or a dall-e-2 input), optionally padded."""
    row = b"\x00" + b"\x10\x20\x30\x00" * (width // 2) + b"\x10\x20\x30\xff" * (width - width // 2)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    head = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    )
    body = chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")
    padding = b""
    if pad_to is not None:
        padding = chunk(b"fkPd", bytes(max(0, pad_to - len(head) - len(body) - 12)))
    return head + padding + body


def jpeg(width: int = 16, height: int = 16) -> bytes:
    """The smallest JPEG the service and the fake recognise: SOF0 with the size, then EOI."""
    return (
        b"\xff\xd8\xff\xc0"
        + struct.pack(">HBHHB", 11, 8, height, width, 1)
        + b"\x01\x11\x00\xff\xd9"
    )


def webp(width: int = 16, height: int = 16) -> bytes:
    """A lossless WebP header with the size (enough to be recognised by content)."""
    bits = (width - 1) | (height - 1) << 14
    chunk = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits) + b"\x00"
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


PNG = fake.make_png(16, 16, (200, 10, 10))
