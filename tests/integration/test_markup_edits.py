"""GPT Image 2.6's markup-guided edits through the HTTP API against the fake upstream (pinned
clock): a transparent PNG the size of the first image, marking where to edit, sent upstream
as the `markup` part; refused where the catalog says, never with a mask."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import fake_openai as fake
from tests.support.jobs import ASYNC, finished
from tests.support.pictures import PNG, jpeg, rgba_png
from tests.support.service import job_files, read_metadata

MODELS_26 = ("gpt-image-2.6-flare", "gpt-image-2.6-sunburst")
MARKUP = rgba_png(16, 16)


def multipart(client: FlaskClient, path: str, *, markup: bytes | None = MARKUP, **fields: Any):
    data: dict[str, Any] = {"prompt": "make the circled cup a teapot", **fields}
    data["image"] = (io.BytesIO(PNG), "photo.png")
    if markup is not None:
        data["markup"] = (io.BytesIO(markup), "notes.png")
    return client.post(path, data=data, content_type="multipart/form-data")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def sent_markup(fake_openai) -> fake.UploadedFile:
    (call,) = fake_openai.image_requests
    (part,) = [f for f in call.files if f.name == "markup"]
    return part


def refused(response: Any, field: str, fake_openai, images_dir) -> str:
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR" and body["field"] == field, body
    assert fake_openai.image_requests == []
    assert [n for n in job_files(images_dir) if not n.startswith(".index")] == []
    return body["error"]


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS_26)
@pytest.mark.parametrize("path", ["/edit", "/v1/images/edits"])
def test_a_multipart_markup_goes_upstream_as_its_own_part(
    client, fake_openai, images_dir, model, path
):
    response = multipart(client, path, model=model)

    assert response.status_code == 200, response.get_json()
    part = sent_markup(fake_openai)
    assert part.data == MARKUP and part.content_type == "image/png"
    assert part.filename == "markup.png"  # our name, never the caller's
    if path == "/edit":
        metadata = read_metadata(images_dir, response.get_json()["job_id"])
        assert metadata["source"]["markup"]["format"] == "png"
        assert metadata["source"]["markup"]["width"] == 16
        assert len(metadata["source"]["markup"]["sha256"]) == 64


def test_the_json_form_takes_a_markup_reference(client, fake_openai):
    response = client.post(
        "/v1/images/edits",
        json={
            "prompt": "replace what is circled",
            "model": "gpt-image-2.6-flare",
            "images": [{"image_url": data_url(PNG)}],
            "markup": {"image_url": data_url(MARKUP)},
        },
    )

    assert response.status_code == 200, response.get_json()
    assert sent_markup(fake_openai).data == MARKUP


def test_a_stored_image_is_a_markup_by_id(client, fake_openai):
    fake_openai.image_bytes = MARKUP
    markup_id = client.post("/generate", json={"prompt": "a clear layer"}).get_json()["images"]
    fake_openai.image_bytes = PNG
    photo = client.post("/generate", json={"prompt": "a cup"}).get_json()["images"][0]["id"]

    response = client.post(
        "/edit",
        json={
            "prompt": "a teapot where circled",
            "model": "gpt-image-2.6-sunburst",
            "image_id": photo,
            "markup_id": markup_id[0]["id"],
        },
    )

    assert response.status_code == 200, response.get_json()
    call = fake_openai.image_requests[-1]
    assert [f.data for f in call.files if f.name == "markup"] == [MARKUP]
    assert [f.data for f in call.files if f.name == "image"] == [PNG]


def test_an_async_markup_edit_keeps_and_sends_its_markup(
    make_jobs_app: Callable[..., Flask], fake_openai
):
    client = make_jobs_app().test_client()
    accepted = client.post(
        "/edit",
        data={
            "prompt": "as marked",
            "model": "gpt-image-2.6-flare",
            "image": (io.BytesIO(PNG), "a.png"),
            "markup": (io.BytesIO(MARKUP), "m.png"),
        },
        content_type="multipart/form-data",
        headers=ASYNC,
    )
    assert accepted.status_code == 202, accepted.get_json()

    done = finished(client, accepted.get_json()["job_id"])

    assert done["status"] == "completed", done
    assert sent_markup(fake_openai).data == MARKUP


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2.5-flare", "dall-e-2"])
def test_models_without_markup_refuse_it_naming_those_that_take_it(
    client, fake_openai, images_dir, model
):
    square = {"model": model}
    message = refused(multipart(client, "/edit", **square), "markup", fake_openai, images_dir)

    assert f"{model} takes no markup" in message
    assert "gpt-image-2.6-flare" in message and "gpt-image-2.6-sunburst" in message


def test_a_markup_and_a_mask_together_are_refused(client, fake_openai, images_dir):
    response = client.post(
        "/edit",
        data={
            "prompt": "p",
            "model": "gpt-image-2.6-flare",
            "image": (io.BytesIO(PNG), "a.png"),
            "mask": (io.BytesIO(rgba_png(16, 16)), "mask.png"),
            "markup": (io.BytesIO(MARKUP), "m.png"),
        },
        content_type="multipart/form-data",
    )

    assert "mask or a markup, not both" in refused(response, "markup", fake_openai, images_dir)


@pytest.mark.parametrize(
    "markup, words",
    [
        (PNG, "without one"),  # an opaque PNG: nothing is transparent
        (jpeg(16, 16), "JPEG"),
        (rgba_png(32, 16), "32x16"),
        (b"not an image at all", "not a PNG, JPEG or WebP"),
    ],
    ids=["opaque", "jpeg", "wrong-size", "garbage"],
)
def test_a_bad_markup_is_refused_naming_why(client, fake_openai, images_dir, markup, words):
    response = multipart(client, "/edit", model="gpt-image-2.6-flare", markup=markup)

    assert words in refused(response, "markup", fake_openai, images_dir)


def test_two_markups_are_refused(client, fake_openai, images_dir):
    response = client.post(
        "/edit",
        data={
            "prompt": "p",
            "model": "gpt-image-2.6-flare",
            "image": (io.BytesIO(PNG), "a.png"),
            "markup": [(io.BytesIO(MARKUP), "m1.png"), (io.BytesIO(MARKUP), "m2.png")],
        },
        content_type="multipart/form-data",
    )

    assert "at most one 'markup'" in refused(response, "markup", fake_openai, images_dir)


def test_markup_is_described_by_the_models_openapi_and_mcp(client):
    described = client.get("/models/gpt-image-2.6-flare").get_json()
    spec = client.get("/openapi.json").get_json()

    assert described["edits"]["markup"] is True
    assert client.get("/models/gpt-image-2").get_json()["edits"]["markup"] is False
    schemas = spec["components"]["schemas"]
    with_markup = sorted(name for name, schema in schemas.items() if "markup" in str(schema))
    assert with_markup, "no request schema names the markup"
    assert any("markup_id" in schema.get("properties", {}) for schema in schemas.values())
