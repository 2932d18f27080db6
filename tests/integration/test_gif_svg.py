"""GPT Image 2.6's animated GIF and SVG output through the HTTP API against the fake upstream
(pinned clock): accepted where the catalog says, refused elsewhere naming what is accepted,
stored and served with their own types, and checked like any upstream image."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from tests.support import fake_openai as fake
from tests.support.jobs import ASYNC, finished
from tests.support.mcp import result_of, rpc, tools_by_name
from tests.support.pictures import rgba_png
from tests.support.service import bearer, job_files, line, read_metadata

GIF_MODELS = ("gpt-image-2.6-flare", "gpt-image-2.6-sunburst")
NOT_26 = ("gpt-image-2", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst-2026-09-08")
PNG = fake.make_png(16, 16)
TOKEN = "carol-secret-token-0123456789"


def refusal(response: Any, field: str) -> str:
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR", body
    assert body["field"] == field, body
    return body["error"]


def generate(client: FlaskClient, **fields: Any) -> Any:
    return client.post("/generate", json={"prompt": "a bouncing ball", **fields})


# --- accepted on 2.6, sent upstream as asked --------------------------------------------------


@pytest.mark.parametrize("model", GIF_MODELS)
def test_a_gif_is_made_stored_and_served_as_an_animated_gif(client, fake_openai, images_dir, model):
    response = generate(
        client, model=model, output_format="gif", frame_count=4, frame_duration_ms=120
    )

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    (image,) = body["images"]
    assert image["format"] == "gif"
    sent = fake_openai.image_requests[0].json
    assert (sent["output_format"], sent["frame_count"], sent["frame_duration_ms"]) == (
        "gif",
        4,
        120,
    )
    assert "stream" not in sent and "partial_images" not in sent
    served = client.get(image["url"])
    assert served.status_code == 200 and served.mimetype == "image/gif"
    with Image.open(io.BytesIO(served.data)) as picture:
        assert picture.format == "GIF" and picture.n_frames == 4
    files = job_files(images_dir)
    assert any(name.endswith(".gif") for name in files), files
    metadata = read_metadata(images_dir, body["job_id"])
    assert metadata["images"][0]["format"] == "gif"
    assert metadata["images"][0]["content_type"] == "image/gif"
    assert metadata["request"]["frame_count"] == 4


def test_gif_frames_default_to_upstreams_defaults_and_size_auto(client, fake_openai):
    response = generate(client, model="gpt-image-2.6-flare", output_format="gif")

    assert response.status_code == 200, response.get_json()
    sent = fake_openai.image_requests[0].json
    assert sent["size"] == "auto"  # the still image's default, 1024x1024 x 9 frames, won't fit
    assert "frame_count" not in sent and "frame_duration_ms" not in sent
    described = client.get("/models/gpt-image-2.6-flare").get_json()
    assert described["options"]["frame_count"] == {
        "type": "integer",
        "minimum": 2,
        "maximum": 16,
        "default": 9,
    }
    assert described["options"]["frame_duration_ms"]["default"] == 200
    assert described["options"]["frame_duration_ms"]["minimum"] == 20
    assert described["output_formats"]["gif"]["mask"] is False
    assert described["output_formats"]["gif"]["partial_images"] is False
    assert described["output_formats"]["gif"]["frames"]["frame_steps"] == [8, 9, 12, 16]
    assert described["output_formats"]["svg"]["max_count"] == 1


def test_an_svg_is_made_and_served_as_a_drawing_that_cannot_script_the_origin(client, fake_openai):
    response = generate(
        client, model="gpt-image-2.6-sunburst", output_format="svg", size="1024x1024"
    )

    assert response.status_code == 200, response.get_json()
    (image,) = response.get_json()["images"]
    assert image["format"] == "svg"
    served = client.get(image["url"])
    assert served.status_code == 200 and served.mimetype == "image/svg+xml"
    assert served.data.lstrip().startswith(b"<svg")
    policy = served.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert image["id"] in served.headers["Content-Disposition"]


def test_a_stored_svg_is_listed_and_deleted_like_any_image(client, fake_openai):
    image = generate(client, model="gpt-image-2.6-flare", output_format="svg").get_json()["images"][
        0
    ]

    listed = client.get("/images").get_json()
    assert image["id"] in [entry["id"] for entry in listed["images"]]
    assert client.delete(image["url"]).status_code == 200
    assert client.get(image["url"]).status_code == 404


# --- refused where the catalog says -----------------------------------------------------------


@pytest.mark.parametrize("model", NOT_26)
@pytest.mark.parametrize("fmt", ["gif", "svg"])
def test_models_before_26_refuse_gif_and_svg_naming_what_they_take(client, fake_openai, model, fmt):
    message = refusal(generate(client, model=model, output_format=fmt), "output_format")

    assert "png, jpeg, webp" in message
    assert fake_openai.image_requests == []


@pytest.mark.parametrize("field, value", [("frame_count", 4), ("frame_duration_ms", 100)])
@pytest.mark.parametrize("fmt", [None, "png", "svg"])
def test_frame_options_need_gif_output(client, fake_openai, field, value, fmt):
    options: dict[str, Any] = {"model": "gpt-image-2.6-flare", field: value}
    if fmt is not None:
        options["output_format"] = fmt

    assert "'output_format' to be one of gif" in refusal(generate(client, **options), field)
    assert fake_openai.image_requests == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("frame_count", 1),
        ("frame_count", 17),
        ("frame_count", "9"),
        ("frame_duration_ms", 19),
        ("frame_duration_ms", 655_351),
        ("frame_duration_ms", 1.5),
    ],
)
def test_frame_options_out_of_range_are_refused(client, fake_openai, field, value):
    message = refusal(
        generate(client, model="gpt-image-2.6-flare", output_format="gif", **{field: value}),
        field,
    )

    assert "must be an integer from" in message
    assert fake_openai.image_requests == []


def test_output_compression_is_refused_for_gif_and_svg(client, fake_openai):
    for fmt in ("gif", "svg"):
        response = generate(
            client, model="gpt-image-2.6-flare", output_format=fmt, output_compression=50
        )
        assert "jpeg, webp" in refusal(response, "output_compression")
    assert fake_openai.image_requests == []


def test_a_transparent_background_is_taken_for_gif_and_svg(client, fake_openai):
    for fmt in ("gif", "svg"):
        response = generate(
            client, model="gpt-image-2.6-flare", output_format=fmt, background="transparent"
        )
        assert response.status_code == 200, response.get_json()
    jpeg = generate(
        client, model="gpt-image-2.6-flare", output_format="jpeg", background="transparent"
    )
    assert "png, webp, gif, svg" in refusal(jpeg, "background")


def test_an_svg_is_one_image(client, fake_openai):
    message = refusal(
        generate(client, model="gpt-image-2.6-flare", output_format="svg", count=2), "count"
    )

    assert "from 1 to 1" in message and "SVG" in message
    assert fake_openai.image_requests == []


def test_gifs_may_be_several(client, fake_openai):
    response = generate(client, model="gpt-image-2.6-flare", output_format="gif", count=2)

    assert response.status_code == 200, response.get_json()
    assert [image["format"] for image in response.get_json()["images"]] == ["gif", "gif"]


@pytest.mark.parametrize(
    "size, frames, accepted",
    [
        ("512x512", 9, True),  # 9 cells of 262,144 pixels
        ("960x960", 9, True),  # exactly the 8,294,400-pixel sheet
        ("976x976", 9, False),  # over the sheet's budget
        ("960x960", 6, True),  # 2-8 frames: 8 cells
        ("816x816", 12, True),
        ("832x832", 12, False),
        ("720x720", 16, True),
        ("736x736", 16, False),
        ("1024x1024", 9, False),  # the still image's default is too large for 9 frames
        ("250x250", 9, False),  # not multiples of 16
        ("256x256", 2, False),  # 8 cells: 524,288 pixels, under the 655,360 minimum
    ],
)
def test_a_gif_frame_size_must_fit_the_sheet_of_its_frames(
    client, fake_openai, size, frames, accepted
):
    response = generate(
        client, model="gpt-image-2.6-flare", output_format="gif", size=size, frame_count=frames
    )

    if accepted:
        assert response.status_code == 200, response.get_json()
        assert fake_openai.image_requests[-1].json["size"] == size
    else:
        message = refusal(response, "size")
        assert f"{frames} frames" in message and "multiples of 16" in message


def test_a_gif_edit_takes_no_mask(client, fake_openai):
    response = client.post(
        "/edit",
        data={
            "prompt": "make it move",
            "model": "gpt-image-2.6-flare",
            "output_format": "gif",
            "image": (io.BytesIO(PNG), "a.png"),
            "mask": (io.BytesIO(rgba_png(16, 16)), "m.png"),
        },
        content_type="multipart/form-data",
    )

    assert "no mask for GIF" in refusal(response, "mask")
    assert fake_openai.image_requests == []


def test_a_gif_edit_without_a_mask_is_sent_as_multipart_fields(client, fake_openai):
    response = client.post(
        "/edit",
        data={
            "prompt": "make it move",
            "model": "gpt-image-2.6-sunburst",
            "output_format": "gif",
            "frame_count": "3",
            "image": (io.BytesIO(PNG), "a.png"),
        },
        content_type="multipart/form-data",
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["images"][0]["format"] == "gif"
    form = fake_openai.image_requests[0].form
    assert form["output_format"] == "gif" and form["frame_count"] == "3"


# --- thumbnails -------------------------------------------------------------------------------


def test_a_gif_thumbnail_is_a_png_still_of_its_first_frame(client, fake_openai):
    fake_openai.image_bytes = fake.make_gif(64, 32, 3, (10, 200, 30))
    image = generate(client, model="gpt-image-2.6-flare", output_format="gif").get_json()["images"][
        0
    ]

    thumb = client.get(f"{image['url']}?width=16")
    webp = client.get(f"{image['url']}?width=16&format=webp")

    assert thumb.status_code == 200 and thumb.mimetype == "image/png"
    with Image.open(io.BytesIO(thumb.data)) as picture:
        assert picture.size == (16, 8)
        assert picture.convert("RGB").getpixel((4, 4)) == (10, 200, 30)
    assert webp.status_code == 200 and webp.mimetype == "image/webp"


def test_an_svgs_thumbnail_is_the_drawing_itself_and_no_raster_is_made(client, fake_openai):
    image = generate(client, model="gpt-image-2.6-flare", output_format="svg").get_json()["images"][
        0
    ]

    thumb = client.get(image["thumbnail_url"])
    as_png = client.get(f"{image['url']}?width=64&format=png")

    assert thumb.status_code == 200 and thumb.mimetype == "image/svg+xml"
    assert thumb.data == client.get(image["url"]).data
    assert "sandbox" in thumb.headers["Content-Security-Policy"]
    assert "SVG" in refusal(as_png, "format")


# --- what the upstream sends is checked -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        fake.make_gif(8, 8, 2)[:-1],  # no trailer: cut short
        b"GIF89a\x00\x00\x00\x00",  # a header and nothing else
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaa">]><svg>&a;</svg>',
        b"<svg xmlns='http://www.w3.org/2000/svg'><unclosed></svg>",
        b"<html><body>not a drawing</body></html>",
        "<svg xmlns='http://www.w3.org/2000/svg'>\udcff</svg>".encode("utf-8", "surrogateescape"),
    ],
    ids=["gif-truncated", "gif-header-only", "svg-entities", "svg-malformed", "html", "bad-utf8"],
)
def test_a_bad_gif_or_svg_from_the_upstream_is_an_upstream_error_storing_nothing(
    client, fake_openai, images_dir, data
):
    fake_openai.image_bytes = data
    fmt = "gif" if data.startswith(b"GIF") else "svg"

    response = generate(client, model="gpt-image-2.6-flare", output_format=fmt)

    assert response.status_code == 502, response.get_json()
    assert response.get_json()["code"] == "UPSTREAM_ERROR"
    assert [name for name in job_files(images_dir) if not name.startswith(".index")] == []


@pytest.mark.parametrize("data", [fake.make_gif(8, 8, 2), fake.make_svg(8, 8)], ids=["gif", "svg"])
def test_a_gif_or_svg_from_a_model_that_makes_neither_is_refused(
    client, fake_openai, images_dir, data
):
    fake_openai.image_bytes = data

    response = generate(client, model="gpt-image-2")

    assert response.status_code == 502, response.get_json()
    assert "not a PNG, JPEG or WebP image" in response.get_json()["error"]
    assert [name for name in job_files(images_dir) if not name.startswith(".index")] == []


# --- asynchronous jobs, placeholders, tokens, schemas -----------------------------------------


@pytest.fixture
def jobs_client(make_jobs_app: Callable[..., Flask]) -> FlaskClient:
    return make_jobs_app().test_client()


def test_an_async_gif_streams_no_previews_and_completes(jobs_client, fake_openai):
    accepted = jobs_client.post(
        "/generate",
        json={"prompt": "a spinning top", "model": "gpt-image-2.6-flare", "output_format": "gif"},
        headers=ASYNC,
    )
    assert accepted.status_code == 202, accepted.get_json()

    done = finished(jobs_client, accepted.get_json()["job_id"])

    assert done["status"] == "completed", done
    assert done["images"][0]["format"] == "gif"
    sent = fake_openai.image_requests[0].json
    assert "stream" not in sent and "partial_images" not in sent


def test_the_placeholder_draws_gifs_and_svgs(placeholder_client):
    gif = placeholder_client.post(
        "/generate",
        json={
            "prompt": "p",
            "model": "gpt-image-2.6-flare",
            "output_format": "gif",
            "frame_count": 3,
        },
    )
    svg = placeholder_client.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2.6-flare", "output_format": "svg"}
    )

    gif_bytes = placeholder_client.get(gif.get_json()["images"][0]["url"]).data
    with Image.open(io.BytesIO(gif_bytes)) as picture:
        assert picture.format == "GIF" and picture.n_frames == 3
    svg_answer = placeholder_client.get(svg.get_json()["images"][0]["url"])
    assert svg_answer.mimetype == "image/svg+xml" and b"<svg" in svg_answer.data


@pytest.mark.parametrize("frames, cells", [(2, 8), (6, 8), (9, 9), (10, 12), (13, 16), (16, 16)])
def test_a_gif_is_estimated_as_the_sheet_of_its_frame_step(with_tokens, fake_openai, frames, cells):
    client = with_tokens(line("carol", TOKEN))
    still = {"prompt": "p", "model": "gpt-image-2.6-flare", "size": "512x512", "quality": "high"}

    gif = client.post(
        "/generate",
        json={**still, "output_format": "gif", "frame_count": frames},
        headers=bearer(TOKEN),
    )

    assert gif.status_code == 200, gif.get_json()
    single = 0.211 / 4  # a 512x512 still at high: a quarter of the listed 1024x1024's price
    assert gif.get_json()["cost"]["estimated_usd"] == pytest.approx(cells * single, rel=1e-4)


def test_a_gif_cap_refuses_a_sheet_a_still_would_fit(with_tokens, fake_openai):
    client = with_tokens(line("carol", TOKEN, "usd_per_day=0.5"))
    still = {"prompt": "p", "model": "gpt-image-2.6-flare", "quality": "high"}

    gif = client.post(
        "/generate",
        json={**still, "output_format": "gif", "frame_count": 16, "size": "512x512"},
        headers=bearer(TOKEN),
    )
    one = client.post("/generate", json={**still, "size": "1024x1024"}, headers=bearer(TOKEN))

    assert gif.status_code == 400, (
        gif.get_json()
    )  # 16 x $0.053 is more than the whole cap; $0.211 is not
    assert "usd_per_day" in str(gif.get_json())
    assert one.status_code == 200, one.get_json()
    assert len(fake_openai.image_requests) == 1


def test_openapi_and_mcp_schemas_offer_gif_and_svg_from_the_catalog(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    generate_props = schemas["GenerateRequest"]["properties"]
    tools = tools_by_name(client)
    tool_props = tools["generate_image"]["inputSchema"]["properties"]

    for props in (generate_props, tool_props):
        formats = str(props["output_format"])
        assert "gif" in formats and "svg" in formats
        assert "2" in str(props["frame_count"]) and "16" in str(props["frame_count"])
        assert "655350" in str(props["frame_duration_ms"])
    assert "needs output_format gif" in tool_props["frame_count"]["description"]
    assert "markup_id" in tools["edit_image"]["inputSchema"]["properties"]


def test_an_mcp_generated_gif_is_a_gif_resource(client, fake_openai):
    arguments = {"prompt": "a wave", "model": "gpt-image-2.6-flare", "output_format": "gif"}
    result = result_of(
        rpc(client, "tools/call", {"name": "generate_image", "arguments": arguments})
    )

    links = [item for item in result["content"] if item["type"] == "resource_link"]
    assert links and links[0]["mimeType"] == "image/gif"
    assert links[0]["name"].endswith(".gif")
