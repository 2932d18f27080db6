"""A hostile or broken upstream's GIFs and SVGs (GPT Image 2.6), through the HTTP API against
the fake upstream (pinned clock): each is a 502 UPSTREAM_ERROR, never a 500, and nothing of
it is stored; what is stored is whole."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.support import fake_openai as fake
from tests.support.jobs import ASYNC, finished
from tests.support.service import job_files

MODEL = "gpt-image-2.6-flare"
SVG_NS = 'xmlns="http://www.w3.org/2000/svg"'


def generate(client: Any, **fields: Any) -> Any:
    return client.post("/generate", json={"prompt": "a drawing", "model": MODEL, **fields})


def stored(images_dir: Any) -> list[str]:
    return [name for name in job_files(images_dir) if not name.startswith(".index")]


def assert_upstream_error(response: Any, images_dir: Any) -> None:
    assert response.status_code == 502, response.get_json()
    assert response.get_json()["code"] == "UPSTREAM_ERROR", response.get_json()
    assert stored(images_dir) == []


# --- an SVG's size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "svg",
    [
        f'<svg {SVG_NS} width="{"9" * 400}" height="5"/>',  # a float too large for an int
        f'<svg {SVG_NS} width="5" height="{"1" * 400}px"/>',
        f'<svg {SVG_NS} viewBox="0 0 inf inf"/>',
        f'<svg {SVG_NS} viewBox="0 0 1e309 16"/>',
        f'<svg {SVG_NS} viewBox="0 0 nan 16"/>',
    ],
    ids=["width-400-digits", "height-400-digits-px", "viewbox-inf", "viewbox-1e309", "viewbox-nan"],
)
def test_an_svg_whose_size_is_no_finite_number_is_an_upstream_error(
    client, fake_openai, images_dir, svg
):
    fake_openai.image_bytes = svg.encode()

    assert_upstream_error(generate(client, output_format="svg"), images_dir)


def test_an_async_svg_whose_size_overflows_fails_as_an_upstream_error(
    make_jobs_app: Callable[..., Flask], fake_openai
):
    client = make_jobs_app().test_client()
    fake_openai.image_bytes = f'<svg {SVG_NS} width="{"9" * 400}" height="5"/>'.encode()

    accepted = client.post(
        "/generate",
        json={"prompt": "a drawing", "model": MODEL, "output_format": "svg"},
        headers=ASYNC,
    )
    assert accepted.status_code == 202, accepted.get_json()

    done = finished(client, accepted.get_json()["job_id"])
    assert done["status"] == "failed" and done["code"] == "UPSTREAM_ERROR", done


# --- what was asked is what is taken ----------------------------------------------------------


@pytest.mark.parametrize(
    "asked, sent",
    [
        ({}, "svg"),  # a PNG by default
        ({"output_format": "png", "count": 3}, "svg"),  # three SVGs, where an SVG is one image
        ({"output_format": "webp"}, "gif"),
        ({"output_format": "gif"}, "svg"),
        ({"output_format": "svg"}, "gif"),
        ({"output_format": "gif"}, "png"),
        ({"output_format": "svg"}, "png"),
    ],
)
def test_an_upstream_image_in_another_kind_than_asked_is_an_upstream_error(
    client, fake_openai, images_dir, asked, sent
):
    fake_openai.image_bytes = {
        "svg": fake.make_svg(16, 16),
        "gif": fake.make_gif(16, 16, 2),
        "png": fake.make_png(16, 16),
    }[sent]

    assert_upstream_error(generate(client, **asked), images_dir)


def test_the_openai_form_never_hands_an_svg_as_the_png_it_asked_for(
    client, fake_openai, images_dir
):
    fake_openai.image_bytes = fake.make_svg(16, 16)

    response = client.post(
        "/v1/images/generations",
        json={"prompt": "a drawing", "model": MODEL, "response_format": "b64_json"},
    )

    assert response.status_code == 502, response.get_json()
    assert stored(images_dir) == []


# --- a GIF is whole, its frames on its screen -------------------------------------------------


def _gif_frame_on(screen: int, frame: int) -> bytes:
    """A GIF of a `screen`-pixel square logical screen holding one `frame`-pixel square frame:
    a viewer (and Pillow) grows its canvas to the frame."""
    small = fake.make_gif(16, 16, 1)
    header = small[:6] + struct.pack("<HH", screen, screen) + small[10:]
    assert header.count(b"\x2c\x00\x00\x00\x00") == 1  # one image descriptor, at 0,0
    at = header.index(b"\x2c\x00\x00\x00\x00")
    return header[: at + 5] + struct.pack("<HH", frame, frame) + header[at + 9 :]


WHOLE = fake.make_gif(16, 16, 3)


@pytest.mark.parametrize(
    "gif",
    [
        WHOLE[: len(WHOLE) // 2] + b";",  # cut in the middle of a frame, a trailer put back
        WHOLE[:13] + bytes(200) + b";",  # a header, noise and a trailer
        WHOLE[:-1] + b"\x2c" + b";",  # a frame cut off in its descriptor
        _gif_frame_on(16, 65_535),  # a 16x16 screen, a 65,535x65,535 frame: a bomb
        _gif_frame_on(16, 4_000),  # a frame 16 million pixels large on a small screen
        WHOLE[: 13 + 3 * 128 + 19] + b";",  # a header and a loop, no frame
        WHOLE + b"<script>",  # bytes after the trailer
    ],
    ids=[
        "cut-mid-frame",
        "noise",
        "cut-descriptor",
        "frame-65535",
        "frame-4000",
        "no-frame",
        "tail",
    ],
)
def test_a_gif_that_is_not_whole_or_draws_off_its_screen_is_an_upstream_error(
    client, fake_openai, images_dir, gif
):
    fake_openai.image_bytes = gif

    assert_upstream_error(generate(client, output_format="gif"), images_dir)


def test_a_gif_of_more_frames_than_a_sheet_holds_is_an_upstream_error(
    client, fake_openai, images_dir
):
    fake_openai.image_bytes = fake.make_gif(16, 16, 17)

    assert_upstream_error(generate(client, output_format="gif", frame_count=16), images_dir)


def test_a_whole_gif_padded_with_zeros_is_taken(client, fake_openai, images_dir):
    fake_openai.image_bytes = WHOLE + bytes(3)

    response = generate(client, output_format="gif")

    assert response.status_code == 200, response.get_json()
    assert client.get(response.get_json()["images"][0]["url"]).data == WHOLE + bytes(3)


# --- an SVG's shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth, taken", [(200, True), (300, False), (100_000, False)])
def test_an_svg_nested_deeper_than_256_elements_is_an_upstream_error(
    client, fake_openai, images_dir, depth, taken
):
    fake_openai.image_bytes = (
        f'<svg {SVG_NS} width="8" height="8">' + "<g>" * depth + "</g>" * depth + "</svg>"
    ).encode()

    response = generate(client, output_format="svg")

    if taken:
        assert response.status_code == 200, response.get_json()
    else:
        assert_upstream_error(response, images_dir)


# --- an SVG carries no script -----------------------------------------------------------------

XLINK = 'xmlns:xlink="http://www.w3.org/1999/xlink"'
HTML = 'xmlns:h="http://www.w3.org/1999/xhtml"'


@pytest.mark.parametrize(
    "inside, namespaces",
    [
        ("<script>fetch('/images')</script>", ""),
        ("<SCRIPT>alert(1)</SCRIPT>", ""),  # a script once inlined in HTML, which folds case
        ("<h:script>alert(1)</h:script>", HTML),  # XHTML's, run in an XML document too
        ("<h:iframe src='/'/>", HTML),
        ("<foreignObject><div xmlns='http://www.w3.org/1999/xhtml'/></foreignObject>", ""),
        ('<rect width="1" height="1" onclick="alert(1)"/>', ""),
        ('<rect width="1" height="1" ONload="alert(1)"/>', ""),
        ('<a href=" java&#x09;script:alert(1)"><text>go</text></a>', ""),
        ('<a xlink:href="JavaScript:alert(1)"><text>go</text></a>', XLINK),
        ('<a><animate attributeName="href" values="x;javascript:alert(1)"/></a>', ""),
        ('<set attributeName="onmouseover" to="alert(1)"/>', ""),
        ('<a href="vbscript:msgbox(1)"><text>go</text></a>', ""),
    ],
    ids=[
        "script",
        "script-upper",
        "xhtml-script",
        "xhtml-iframe",
        "foreign-object",
        "onclick",
        "onload-upper",
        "javascript-href-tab",
        "javascript-xlink",
        "animate-href",
        "set-handler",
        "vbscript",
    ],
)
def test_an_svg_that_could_run_script_is_an_upstream_error(
    client, fake_openai, images_dir, inside, namespaces
):
    drawing = f'<svg {SVG_NS} {namespaces} width="8" height="8">{inside}</svg>'
    fake_openai.image_bytes = drawing.encode()

    assert_upstream_error(generate(client, output_format="svg"), images_dir)


def test_an_svg_styled_to_fetch_an_xslt_is_an_upstream_error(client, fake_openai, images_dir):
    fake_openai.image_bytes = (
        '<?xml version="1.0"?><?xml-stylesheet type="text/xsl" href="/images/x"?>'
        f'<svg {SVG_NS} width="8" height="8"/>'
    ).encode()

    assert_upstream_error(generate(client, output_format="svg"), images_dir)


def test_a_rich_drawing_without_script_is_taken(client, fake_openai, images_dir):
    dot = base64.b64encode(fake.make_png(2, 2)).decode()
    drawing = (
        '<?xml version="1.0" encoding="UTF-8"?><?xml-foo bar?>'
        f'<svg {SVG_NS} {XLINK} xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'width="64" height="64" viewBox="0 0 64 64">'
        "<metadata><rdf:RDF/></metadata><title>a boat</title>"
        "<style>rect { fill: url(#sea); } .on { opacity: .5 }</style>"
        '<defs><linearGradient id="sea"><stop offset="0" stop-color="#06c"/>'
        "</linearGradient></defs>"
        '<rect class="on" width="64" height="64" opacity="0.9"/>'
        f'<image href="data:image/png;base64,{dot}" width="2" height="2"/>'
        '<a href="https://example.org/boats"><text x="4" y="60">boats</text></a>'
        '<circle r="4"><animate attributeName="r" values="4;8;4" dur="2s"/></circle>'
        '<use xlink:href="#sea"/>'
        "</svg>"
    )
    fake_openai.image_bytes = drawing.encode()

    response = generate(client, output_format="svg")

    assert response.status_code == 200, response.get_json()
    assert client.get(response.get_json()["images"][0]["url"]).data == drawing.encode()
