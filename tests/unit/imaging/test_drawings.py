"""Reading an upstream SVG costs memory in proportion to its bytes, not to its elements: a
drawing of a quarter of a million (nested) elements is read without building them."""

from __future__ import annotations

import tracemalloc

import pytest

from imagegen.imaging.formats import ImageInfo, identify_output

SIZE = 1024 * 1024  # an eighth of the most taken: a tree of it takes some 40 MB
OPEN = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="32">'


def peak_bytes(data: bytes) -> tuple[ImageInfo | None, int]:
    tracemalloc.start()
    try:
        info = identify_output(data)
        return info, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def filled(unit: bytes) -> bytes:
    """An SVG of as many `unit`s as fit in SIZE bytes."""
    return OPEN + unit * ((SIZE - len(OPEN) - 6) // len(unit)) + b"</svg>"


@pytest.mark.parametrize(
    "data",
    [
        filled(b"<g/>"),  # a quarter of a million elements side by side
        filled(b'<path d="M0 0"/>'),
        filled(b"<g>" * 100 + b"</g>" * 100),  # nested, within the depth a drawing may have
    ],
    ids=["wide", "paths", "nested"],
)
def test_an_svg_of_many_elements_is_read_in_memory_near_its_size(data):
    info, peak = peak_bytes(data)

    assert info == ImageInfo("svg", 64, 32)
    assert peak < 2 * len(data), f"{peak:,} bytes to read {len(data):,}"


def test_an_svg_nested_deeper_than_a_drawing_needs_is_refused_early():
    deep = OPEN + b"<g>" * 150_000 + b"</g>" * 150_000 + b"</svg>"

    info, peak = peak_bytes(deep)

    assert info is None
    assert peak < 2 * len(deep)
