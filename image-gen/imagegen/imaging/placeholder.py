"""Deterministic placeholder PNGs: the keyless provider's images, drawn with the stdlib."""

from __future__ import annotations

import colorsys
import hashlib
import struct
import zlib

GRID = 8


def placeholder_png(prompt: str, width: int, height: int, index: int = 0) -> bytes:
    """A `width`x`height` RGB PNG: an 8x8 mosaic whose colours come from the prompt's hash.

    The same prompt and index always give the same bytes; different prompts give visibly
    different mosaics (a different base hue and cell pattern).
    """
    digest = hashlib.sha256(f"{index}\x00{prompt}".encode()).digest()
    palette = _palette(digest)
    seeds = hashlib.sha512(digest).digest()  # 64 bytes: one per cell
    col_edges = _edges(width)
    row_edges = _edges(height)

    rows = []
    for r in range(GRID):
        line = bytearray(b"\x00")  # filter type 0 for this scanline
        for c in range(GRID):
            colour = palette[seeds[r * GRID + c] % len(palette)]
            line += colour * (col_edges[c + 1] - col_edges[c])
        rows.append(bytes(line) * (row_edges[r + 1] - row_edges[r]))

    text = b"Comment\x00image-gen placeholder " + digest.hex().encode()
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            _chunk(b"tEXt", text),
            _chunk(b"IDAT", zlib.compress(b"".join(rows), 6)),
            _chunk(b"IEND", b""),
        )
    )


def _palette(digest: bytes) -> list[bytes]:
    """Five colours around a base hue drawn from the digest."""
    base = digest[0] / 255
    colours = []
    for i in range(5):
        hue = (base + i * 0.07 + (digest[i + 1] % 16) / 160) % 1.0
        lightness = 0.25 + 0.5 * (digest[i + 6] / 255)
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
        colours.append(bytes((int(r * 255), int(g * 255), int(b * 255))))
    return colours


def _edges(length: int) -> list[int]:
    return [length * i // GRID for i in range(GRID + 1)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
