"""Deterministic placeholder images: the keyless provider's, drawn with the stdlib (PNG,
SVG) and Pillow (an animated GIF of mosaics)."""

from __future__ import annotations

import colorsys
import hashlib
import io
import struct
import zlib

from PIL import Image

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


def placeholder_image(
    fmt: str,
    prompt: str,
    width: int,
    height: int,
    index: int = 0,
    *,
    frames: int = 2,
    duration_ms: int = 200,
) -> bytes:
    """A placeholder in `fmt` ("png", "svg" or "gif"), deterministic like `placeholder_png`."""
    if fmt == "svg":
        return placeholder_svg(prompt, width, height, index)
    if fmt == "gif":
        return placeholder_gif(prompt, width, height, index, frames, duration_ms)
    return placeholder_png(prompt, width, height, index)


def placeholder_svg(prompt: str, width: int, height: int, index: int = 0) -> bytes:
    """An SVG drawing of the mosaic: one rectangle per cell, colours from the prompt's hash."""
    digest = hashlib.sha256(f"{index}\x00{prompt}".encode()).digest()
    palette = _palette(digest)
    seeds = hashlib.sha512(digest).digest()
    cells = [
        f'<rect x="{c * width / GRID:g}" y="{r * height / GRID:g}" width="{width / GRID:g}" '
        f'height="{height / GRID:g}" fill="#{palette[seeds[r * GRID + c] % len(palette)].hex()}"/>'
        for r in range(GRID)
        for c in range(GRID)
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><desc>image-gen placeholder {digest.hex()}</desc>'
        + "".join(cells)
        + "</svg>"
    ).encode()


def placeholder_gif(
    prompt: str, width: int, height: int, index: int, frames: int, duration_ms: int
) -> bytes:
    """An animated GIF of `frames` mosaics, each shown `duration_ms`, looping."""
    pictures = [
        Image.open(io.BytesIO(placeholder_png(f"{prompt}\x00frame {n}", width, height, index)))
        for n in range(frames)
    ]
    out = io.BytesIO()
    pictures[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=duration_ms,
        loop=0,
    )
    return out.getvalue()


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
