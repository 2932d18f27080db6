"""POST /edit and POST /variations end to end: uploads or stored ids in, the urllib client's
multipart calls to the fake OpenAI on a real socket, jobs on disk out."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time

import pytest

from imagegen.catalog.models import CATALOG
from imagegen.imaging.formats import identify
from imagegen.upstream.client import OpenAIClient
from imagegen.upstream.errors import APIStatusError
from imagegen.upstream.retry import Deadline, RetryPolicy
from imagegen.upstream.transport import FormFile, encode_multipart
from tests.support import fake_openai as fake
from tests.support.pictures import PNG, jpeg, rgba_png, webp
from tests.support.service import TEST_KEY, job_files, read_metadata

# --- test images ------------------------------------------------------------------------------


def upload(client, path: str = "/edit", files=(), **fields):
    """A multipart POST: `files` are (field, filename, bytes); `fields` are text."""
    data: dict = {key: str(value) for key, value in fields.items()}
    for field, name, content in files:
        data.setdefault(field, []).append((io.BytesIO(content), name))
    return client.post(path, data=data, content_type="multipart/form-data")


def edit(client, *images: bytes, **fields):
    fields.setdefault("prompt", "put a hat on it")
    return upload(
        client, "/edit", [("image", f"in-{n}.png", data) for n, data in enumerate(images)], **fields
    )


def on_disk(images_dir) -> list[str]:
    return job_files(images_dir)


# --- uploads to GPT Image models --------------------------------------------------------------


def test_edit_with_one_upload_stores_a_job_recording_its_source(client, fake_openai, images_dir):
    response = edit(client, PNG, size="1024x1024", quality="low")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "completed" and body["model"] == "gpt-image-2"
    (image,) = body["images"]
    assert image["url"] == f"/images/{image['id']}"
    assert image["prompt"] == "put a hat on it" and image["size"] == "1024x1024"
    assert identify(client.get(image["url"]).data) is not None

    (call,) = fake_openai.image_requests
    assert call.path == "/v1/images/edits" and call.is_multipart
    assert call.header("authorization") == f"Bearer {TEST_KEY}"
    assert call.form == {
        "model": "gpt-image-2",
        "prompt": "put a hat on it",
        "n": "1",
        "size": "1024x1024",
        "quality": "low",
    }
    (sent,) = call.files
    assert (sent.name, sent.filename, sent.content_type, sent.data) == (
        "image",
        "image-1.png",
        "image/png",
        PNG,
    )

    metadata = read_metadata(images_dir, body["job_id"])
    assert metadata["operation"] == "edit"
    assert metadata["request"]["prompt"] == "put a hat on it"
    assert metadata["source"] == {
        "images": [
            {
                "origin": "upload",
                "format": "png",
                "width": 16,
                "height": 16,
                "bytes": len(PNG),
                "sha256": hashlib.sha256(PNG).hexdigest(),
            }
        ],
        "mask": None,
    }


def test_several_uploads_go_upstream_as_image_array_in_order(client, fake_openai, images_dir):
    response = edit(client, PNG, jpeg(), webp(), prompt="a gift basket of these")

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    assert [(f.name, f.content_type, f.data) for f in call.files] == [
        ("image[]", "image/png", PNG),
        ("image[]", "image/jpeg", jpeg()),
        ("image[]", "image/webp", webp()),
    ]
    assert [f.filename for f in call.files] == ["image-1.png", "image-2.jpg", "image-3.webp"]
    source = read_metadata(images_dir, response.get_json()["job_id"])["source"]
    assert [i["format"] for i in source["images"]] == ["png", "jpeg", "webp"]


def test_image_array_field_name_is_accepted_too(client, fake_openai):
    files = [("image[]", "a.png", PNG), ("image[]", "b.png", PNG)]
    response = upload(client, "/edit", files, prompt="two")

    assert response.status_code == 200, response.get_json()
    assert len(fake_openai.image_requests[0].files) == 2


def test_mask_is_sent_upstream_and_recorded(client, fake_openai, images_dir):
    mask = rgba_png(16, 16)
    files = [("image", "in.png", PNG), ("mask", "mask.png", mask)]
    response = upload(client, "/edit", files, prompt="a pool in the masked area")

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    assert [(f.name, f.filename, f.content_type) for f in call.files] == [
        ("image", "image-1.png", "image/png"),
        ("mask", "mask.png", "image/png"),
    ]
    assert call.files[1].data == mask
    source = read_metadata(images_dir, response.get_json()["job_id"])["source"]
    assert source["mask"]["origin"] == "upload"
    assert source["mask"]["sha256"] == hashlib.sha256(mask).hexdigest()


def test_edit_options_are_sent_and_count_fans_in_one_call(client, fake_openai):
    response = edit(
        client,
        PNG,
        count=3,
        size="1536x1024",
        output_format="webp",
        output_compression=60,
        background="opaque",
    )

    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["images"]) == 3
    (call,) = fake_openai.image_requests
    assert call.form == {
        "model": "gpt-image-2",
        "prompt": "put a hat on it",
        "n": "3",
        "size": "1536x1024",
        "background": "opaque",
        "output_format": "webp",
        "output_compression": "60",
    }


def test_size_defaults_to_auto_for_gpt_image_edits(client, fake_openai):
    response = edit(client, PNG)

    assert response.status_code == 200
    assert fake_openai.image_requests[0].form["size"] == "auto"


def test_input_fidelity_is_taken_by_gpt_image_1_5_only(client, fake_openai, today):
    today.set(CATALOG["gpt-image-1.5"].deprecated_on)  # still served, with a warning
    accepted = edit(client, PNG, model="gpt-image-1.5", input_fidelity="high")
    refused = edit(client, PNG, model="gpt-image-2", input_fidelity="high")

    assert accepted.status_code == 200, accepted.get_json()
    assert accepted.get_json()["warnings"][0].startswith("Model gpt-image-1.5 shuts down")
    assert fake_openai.image_requests[0].form["input_fidelity"] == "high"
    assert refused.status_code == 400
    assert refused.get_json()["field"] == "input_fidelity"
    assert len(fake_openai.image_requests) == 1


def test_moderation_is_an_edit_option_of_gpt_image_models(client, fake_openai):
    taken = edit(client, PNG, moderation="low")
    bad = edit(client, PNG, moderation="high")

    assert taken.status_code == 200, taken.get_json()
    assert fake_openai.image_requests[0].form["moderation"] == "low"
    assert bad.status_code == 400
    assert bad.get_json()["field"] == "moderation"
    assert "low, auto" in bad.get_json()["error"]
    assert len(fake_openai.image_requests) == 1


def test_models_endpoint_describes_what_each_model_edits(client):
    described = {m["id"]: m for m in client.get("/models").get_json()["models"]}

    gpt = described["gpt-image-2"]["edits"]
    assert gpt["max_images"] == 16 and gpt["mask"] is True
    assert gpt["formats"] == ["png", "jpeg", "webp"]
    assert set(gpt["options"]) == {
        "quality",
        "background",
        "moderation",
        "output_format",
        "output_compression",
    }
    assert gpt["markup"] is False and described["gpt-image-2.6-flare"]["edits"]["markup"] is True
    assert described["gpt-image-1.5"]["edits"]["options"]["input_fidelity"]["enum"] == [
        "high",
        "low",
    ]
    assert described["gpt-image-1-mini"]["edits"]["options"]["input_fidelity"]["enum"] == ["low"]
    assert described["dall-e-2"]["edits"]["square"] is True
    assert described["dall-e-2"]["variations"]["prompt"] is False
    assert described["dall-e-3"]["edits"] is None and described["dall-e-3"]["variations"] is None
    assert described["gpt-image-2"]["variations"] is None


# --- images already stored, by id -------------------------------------------------------------


def generated(client) -> tuple[str, str]:
    """(image id, job id) of a new generated image (the fake's: an opaque 8x8 PNG)."""
    response = client.post("/generate", json={"prompt": "a cat"})
    assert response.status_code == 200
    body = response.get_json()
    return body["images"][0]["id"], body["job_id"]


def generated_image(client) -> str:
    return generated(client)[0]


def stored_bytes(client, image_id: str) -> bytes:
    return client.get(f"/images/{image_id}").data


def test_edit_by_image_id_sends_the_stored_image_and_records_its_id(
    client, fake_openai, images_dir
):
    image_id, job_id = generated(client)

    response = client.post("/edit", json={"image_id": image_id, "prompt": "give it a hat"})

    assert response.status_code == 200, response.get_json()
    call = fake_openai.image_requests[-1]
    assert call.path == "/v1/images/edits"
    assert call.files[0].data == stored_bytes(client, image_id)
    assert call.form["prompt"] == "give it a hat"
    source = read_metadata(images_dir, response.get_json()["job_id"])["source"]
    (recorded,) = source["images"]
    assert recorded["origin"] == "stored"
    assert recorded["image_id"] == image_id
    assert recorded["job_id"] == job_id
    assert recorded["sha256"] == hashlib.sha256(stored_bytes(client, image_id)).hexdigest()


def test_edit_by_image_ids_with_a_stored_mask(client, fake_openai, images_dir):
    first, second = generated_image(client), generated_image(client)
    fake_openai.image_bytes = rgba_png(8, 8)  # the next generated image is a usable mask
    mask_id = generated_image(client)
    fake_openai.image_bytes = None

    response = client.post(
        "/edit",
        json={"image_ids": [first, second], "mask_id": mask_id, "prompt": "both", "count": 2},
    )

    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["images"]) == 2
    call = fake_openai.image_requests[-1]
    assert [f.name for f in call.files] == ["image[]", "image[]", "mask"]
    assert [f.data for f in call.files] == [
        stored_bytes(client, first),
        stored_bytes(client, second),
        rgba_png(8, 8),
    ]
    source = read_metadata(images_dir, response.get_json()["job_id"])["source"]
    assert [i["image_id"] for i in source["images"]] == [first, second]
    assert source["mask"]["image_id"] == mask_id and source["mask"]["origin"] == "stored"


def test_stored_mask_without_alpha_is_refused(client, fake_openai, images_dir):
    image_id = generated_image(client)  # the fake's PNGs are opaque RGB
    before = on_disk(images_dir)
    calls = len(fake_openai.image_requests)

    response = client.post("/edit", json={"image_id": image_id, "mask_id": image_id, "prompt": "x"})

    assert response.status_code == 400
    assert response.get_json()["field"] == "mask_id"
    assert "alpha channel" in response.get_json()["error"]
    assert len(fake_openai.image_requests) == calls
    assert on_disk(images_dir) == before


def test_unknown_image_id_is_404_and_nothing_happens(client, fake_openai, images_dir):
    before = on_disk(images_dir)
    missing = "0c517a97-436d-4849-a1fe-cf1050ba1449"

    responses = [
        client.post("/edit", json={"image_id": missing, "prompt": "x"}),
        client.post("/edit", json={"image_ids": [missing], "prompt": "x"}),
        client.post("/edit", json={"image_id": "../etc/passwd", "prompt": "x"}),
        client.post("/variations", json={"image_id": missing}),
    ]

    for response in responses:
        assert response.status_code == 404
        assert response.get_json()["code"] == "IMAGE_NOT_FOUND"
    assert fake_openai.image_requests == []
    assert on_disk(images_dir) == before


def test_deleted_image_cannot_be_edited(client, fake_openai):
    image_id = generated_image(client)
    assert client.delete(f"/images/{image_id}").status_code == 200

    response = client.post("/edit", json={"image_id": image_id, "prompt": "x"})

    assert response.status_code == 404
    assert response.get_json()["code"] == "IMAGE_NOT_FOUND"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "x"}, "image_id"),
        ({"prompt": "x", "image_id": 5}, "image_id"),
        ({"prompt": "x", "image_ids": []}, "image_ids"),
        ({"prompt": "x", "image_ids": "abc"}, "image_ids"),
        ({"prompt": "x", "image_ids": [None]}, "image_ids"),
        ({"prompt": "x", "image_id": "a", "image_ids": ["b"]}, "image_ids"),
        ({"prompt": "x", "image_ids": ["0c517a97-436d-4849-a1fe-cf1050ba1449"] * 17}, "image_ids"),
        ([], None),
    ],
)
def test_malformed_json_inputs_are_refused(client, fake_openai, body, field):
    response = client.post("/edit", json=body)

    assert response.status_code == 400
    assert response.get_json()["code"] == "VALIDATION_ERROR"
    assert response.get_json().get("field") == field
    assert fake_openai.image_requests == []


def test_edit_json_takes_the_upload_limit_and_variation_json_one_mebibyte(
    settings, make_app, fake_openai
):
    # An edit's JSON may carry its images as data URLs (OpenAI's JSON form), so it has the
    # multipart body's limit; a variation's JSON only names stored images.
    client = make_app(settings, max_upload_total_bytes=2 * 1024 * 1024).test_client()
    over_the_upload_limit = json.dumps({"prompt": "x" * (2 * 1024 * 1024 + 10), "image_id": "x"})
    over_a_mebibyte = json.dumps({"image_id": "x", "padding": "x" * (1024 * 1024 + 10)})

    edit = client.post("/edit", data=over_the_upload_limit, content_type="application/json")
    variation = client.post("/variations", data=over_a_mebibyte, content_type="application/json")

    assert edit.status_code == 413 and variation.status_code == 413
    assert edit.get_json()["code"] == variation.get_json()["code"] == "PAYLOAD_TOO_LARGE"
    assert "IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES" in edit.get_json()["error"]
    assert fake_openai.image_requests == []


# --- refusing bad uploads ---------------------------------------------------------------------


def test_text_file_named_png_is_refused_by_content(client, fake_openai, images_dir):
    before = on_disk(images_dir)

    response = upload(client, "/edit", [("image", "x.png", b"just some text\n")], prompt="x")

    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR" and body["field"] == "image"
    assert "'x.png'" in body["error"] and "not a PNG, JPEG or WebP" in body["error"]
    assert fake_openai.image_requests == []
    assert on_disk(images_dir) == before


def test_upload_over_the_per_file_limit_is_413_json(settings, make_app, fake_openai, images_dir):
    client = make_app(settings, max_upload_bytes=1000).test_client()
    before = on_disk(images_dir)

    response = edit(client, rgba_png(pad_to=2000))

    assert response.status_code == 413
    body = response.get_json()
    assert body["code"] == "PAYLOAD_TOO_LARGE" and body["status"] == "failed"
    assert "1,000 bytes" in body["error"] and "IMAGE_GEN_MAX_UPLOAD_BYTES" in body["error"]
    assert fake_openai.image_requests == []
    assert on_disk(images_dir) == before


def test_body_over_the_total_upload_limit_is_413_json(settings, make_app, fake_openai):
    client = make_app(settings, max_upload_total_bytes=5000).test_client()

    response = edit(client, rgba_png(pad_to=3000), rgba_png(pad_to=3000))

    assert response.status_code == 413
    assert response.get_json()["code"] == "PAYLOAD_TOO_LARGE"
    assert "IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES" in response.get_json()["error"]
    assert fake_openai.image_requests == []


def test_uploads_may_be_larger_than_the_json_limit(client, fake_openai):
    big = rgba_png(pad_to=2 * 1024 * 1024)

    response = edit(client, big)

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[0].files[0].data == big


@pytest.mark.parametrize(
    "mask, message",
    [
        (rgba_png(32, 32), "it must have the dimensions of the image, 16x16"),
        (fake.make_png(16, 16), "alpha channel"),
        (jpeg(16, 16), "must be a PNG"),
    ],
)
def test_bad_masks_are_refused(client, fake_openai, images_dir, mask, message):
    before = on_disk(images_dir)
    files = [("image", "in.png", PNG), ("mask", "mask", mask)]

    response = upload(client, "/edit", files, prompt="x")

    assert response.status_code == 400
    assert response.get_json()["field"] == "mask"
    assert message in response.get_json()["error"]
    assert fake_openai.image_requests == []
    assert on_disk(images_dir) == before


def test_mask_is_compared_with_the_first_image(client, fake_openai):
    files = [
        ("image", "a.png", PNG),
        ("image", "b.png", rgba_png(32, 32)),
        ("mask", "m", rgba_png(16, 16)),
    ]

    response = upload(client, "/edit", files, prompt="x")

    assert response.status_code == 200, response.get_json()


def test_more_images_than_any_model_takes_are_refused(client, fake_openai):
    response = edit(client, *[PNG] * 17)

    assert response.status_code == 400
    assert "no model takes more than 16" in response.get_json()["error"]
    assert fake_openai.image_requests == []


@pytest.mark.parametrize(
    "case",
    ["image as text", "unknown file", "repeated field", "no image", "two masks"],
)
def test_malformed_multipart_is_refused(client, fake_openai, case):
    if case == "image as text":
        response = upload(client, "/edit", [], prompt="x", image="photo.png")
    elif case == "unknown file":
        response = upload(
            client, "/edit", [("image", "a.png", PNG), ("picture", "b.png", PNG)], prompt="x"
        )
    elif case == "repeated field":
        response = client.post(
            "/edit",
            data={"prompt": ["a", "b"], "image": (io.BytesIO(PNG), "a.png")},
            content_type="multipart/form-data",
        )
    elif case == "no image":
        response = upload(client, "/edit", [], prompt="x")
    else:
        files = [("image", "a.png", PNG), ("mask", "m1", rgba_png()), ("mask", "m2", rgba_png())]
        response = upload(client, "/edit", files, prompt="x")

    assert response.status_code == 400
    assert response.get_json()["code"] == "VALIDATION_ERROR"
    assert fake_openai.image_requests == []


def test_body_neither_multipart_nor_json_is_415(client, fake_openai):
    response = client.post("/edit", data=PNG, content_type="image/png")

    assert response.status_code == 415
    assert response.get_json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "multipart/form-data" in response.get_json()["error"]


def test_model_that_cannot_edit_is_refused_naming_those_that_can(client, fake_openai, today):
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    response = edit(client, PNG, model="dall-e-3")

    assert response.status_code == 400
    body = response.get_json()
    assert body["field"] == "model"
    assert body["error"].startswith("Model dall-e-3 cannot edit images. Models that can:")
    assert "gpt-image-2" in body["error"] and "dall-e-2" in body["error"]
    assert "gpt-image-1," not in body["error"]  # shut down: not offered
    assert fake_openai.image_requests == []


def test_shut_down_model_is_refused_naming_its_replacement(client, fake_openai, today):
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    response = edit(client, PNG, model="gpt-image-1")

    assert response.status_code == 400
    assert response.get_json()["replacement"] == "gpt-image-2.5-sunburst"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"count": "11"}, "count"),
        ({"count": "two"}, "count"),
        ({"size": "100x100"}, "size"),
        ({"output_compression": "50"}, "output_compression"),  # needs jpeg or webp
        ({"quality": "ultra"}, "quality"),
        ({"prompt": ""}, "prompt"),
        ({"style": "vivid"}, "style"),
    ],
)
def test_bad_fields_are_refused_like_generate(client, fake_openai, fields, field):
    response = edit(client, PNG, **fields)

    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert fake_openai.image_requests == []


# --- dall-e-2 edits and variations -----------------------------------------------------------


def test_dall_e_2_edit_downloads_url_answers_in_one_call(client, fake_openai, images_dir):
    response = edit(client, rgba_png(64, 64), model="dall-e-2", count=3, size="256x256")

    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["images"]) == 3
    (call,) = fake_openai.image_requests
    assert call.form == {
        "model": "dall-e-2",
        "prompt": "put a hat on it",
        "n": "3",
        "size": "256x256",
    }
    assert [f.name for f in call.files] == ["image"]
    downloads = [r for r in fake_openai.requests if r.path.startswith("/files/")]
    assert len(downloads) == 3


@pytest.mark.parametrize(
    "image, message",
    [
        (rgba_png(32, 16), "square images only"),
        (jpeg(16, 16), "PNG only"),
        (fake.make_png(16, 16), "transparent areas"),
        (rgba_png(16, 16, pad_to=4 * 1024 * 1024), "under 4 MB"),
    ],
)
def test_dall_e_2_edit_input_rules(client, fake_openai, image, message):
    response = edit(client, image, model="dall-e-2")

    assert response.status_code == 400
    assert response.get_json()["field"] == "image"
    assert message in response.get_json()["error"]
    assert fake_openai.image_requests == []


def test_dall_e_2_takes_one_image(client, fake_openai):
    response = edit(client, rgba_png(), rgba_png(), model="dall-e-2")

    assert response.status_code == 400
    assert "at most 1 input image" in response.get_json()["error"]


def test_dall_e_2_opaque_image_with_a_mask_is_accepted(client, fake_openai):
    files = [("image", "a.png", PNG), ("mask", "m.png", rgba_png(16, 16))]

    response = upload(client, "/edit", files, prompt="x", model="dall-e-2")

    assert response.status_code == 200, response.get_json()


def test_variation_defaults_to_dall_e_2_and_sends_no_prompt(client, fake_openai, images_dir):
    files = [("image", "v.png", PNG)]
    response = upload(client, "/variations", files, count=2, size="512x512")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"] == "dall-e-2" and len(body["images"]) == 2
    (call,) = fake_openai.image_requests
    assert call.path == "/v1/images/variations"
    assert call.form == {"model": "dall-e-2", "n": "2", "size": "512x512"}
    assert [(f.name, f.content_type, f.data) for f in call.files] == [("image", "image/png", PNG)]
    metadata = read_metadata(images_dir, body["job_id"])
    assert metadata["operation"] == "variation"
    assert metadata["source"]["images"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()


def test_variation_of_a_stored_image_by_id(client, fake_openai, images_dir):
    image_id = generated_image(client)

    response = client.post("/variations", json={"image_id": image_id, "count": 2})

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[-1].path == "/v1/images/variations"
    source = read_metadata(images_dir, response.get_json()["job_id"])["source"]
    assert source["images"][0]["image_id"] == image_id


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"model": "gpt-image-2"}, "model", "cannot make variations. Models that can: dall-e-2"),
        ({"prompt": "a hat"}, "prompt", "dall-e-2 variations"),
        ({"size": "1536x1024"}, "size", "256x256"),
    ],
)
def test_variation_refusals(client, fake_openai, fields, field, message):
    response = upload(client, "/variations", [("image", "v.png", PNG)], **fields)

    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert message in response.get_json()["error"]
    assert fake_openai.image_requests == []


def test_variation_of_a_non_square_image_is_refused(client, fake_openai):
    response = upload(client, "/variations", [("image", "v.png", fake.make_png(16, 8))])

    assert response.status_code == 400
    assert "square" in response.get_json()["error"]


# --- upstream failures ------------------------------------------------------------------------


def test_upstream_failure_writes_nothing(client, fake_openai, images_dir):
    before = on_disk(images_dir)
    fake_openai.set_default(fake.server_error())

    response = edit(client, PNG)

    assert response.status_code == 502
    assert response.get_json()["code"] == "UPSTREAM_ERROR"
    assert len(fake_openai.image_requests) == 3  # the first try and two retries
    bodies = {r.body for r in fake_openai.image_requests}
    assert len(bodies) == 1  # each retry resends the same multipart body
    assert on_disk(images_dir) == before


def test_retry_after_a_5xx_succeeds(client, fake_openai):
    fake_openai.enqueue(fake.server_error())

    response = edit(client, PNG)

    assert response.status_code == 200
    assert len(fake_openai.image_requests) == 2


def test_upstream_refusing_the_image_is_a_validation_error_naming_it(client, fake_openai):
    fake_openai.enqueue(fake.bad_request("Invalid image file.", "image", "invalid_image"))

    response = edit(client, PNG)

    assert response.status_code == 400
    assert response.get_json()["field"] == "image"
    assert "Invalid image file." in response.get_json()["error"]


def test_upstream_safety_refusal_is_a_content_policy_violation(client, fake_openai):
    fake_openai.enqueue(fake.moderation_blocked())

    response = edit(client, PNG)

    assert response.status_code == 400
    assert response.get_json()["code"] == "CONTENT_POLICY_VIOLATION"


def test_upstream_rate_limit_passes_retry_after(settings, make_app, fake_openai):
    client = make_app(settings, max_retries=0).test_client()
    fake_openai.enqueue(fake.rate_limited(retry_after="9"))

    response = upload(client, "/variations", [("image", "v.png", PNG)])

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "9"


def test_key_never_in_answers_metadata_or_logs(client, fake_openai, images_dir, caplog):
    caplog.set_level(logging.DEBUG)
    answers = [edit(client, PNG)]
    for failure in (
        fake.invalid_api_key(),
        fake.bad_request(f"echo {TEST_KEY}", "image"),
        fake.error(401, f"Incorrect API key provided: {TEST_KEY}", "invalid_request_error"),
    ):
        fake_openai.enqueue(failure)
        answers.append(edit(client, PNG))
    fake_openai.enqueue(fake.bad_request(f"bad {TEST_KEY}"))
    answers.append(upload(client, "/variations", [("image", "v.png", PNG)]))

    assert [a.status_code for a in answers] == [200, 500, 400, 500, 400]
    for answer in answers:
        assert TEST_KEY not in answer.get_data(as_text=True)
        assert "sk-proj" not in answer.get_data(as_text=True)
    assert TEST_KEY not in caplog.text
    for path in images_dir.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes()


# --- without an upstream ----------------------------------------------------------------------


def test_placeholder_edits_are_deterministic_and_follow_the_input_size(placeholder_client):
    def made(prompt: str, image: bytes) -> bytes:
        response = edit(placeholder_client, image, prompt=prompt)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["placeholder"] is True
        return placeholder_client.get(body["images"][0]["url"]).data

    first = made("a hat", PNG)
    info = identify(first)
    assert (info.width, info.height) == (16, 16)  # size auto: the input's
    assert made("a hat", PNG) == first
    assert made("a scarf", PNG) != first
    assert made("a hat", fake.make_png(16, 16, (0, 0, 200))) != first


def test_placeholder_variations_work_without_a_key(placeholder_client):
    response = upload(
        placeholder_client, "/variations", [("image", "v.png", PNG)], count=2, size="256x256"
    )

    assert response.status_code == 200, response.get_json()
    images = response.get_json()["images"]
    assert [(i["width"], i["height"]) for i in images] == [(256, 256), (256, 256)]
    assert images[0]["id"] != images[1]["id"]


def test_without_a_key_edits_explain_what_to_do(settings, make_app, fake_openai):
    client = make_app(settings, api_key=None, api_key_source="none").test_client()

    response = edit(client, PNG)

    assert response.status_code == 500
    assert "No OpenAI API key is configured" in response.get_json()["error"]
    assert fake_openai.image_requests == []


# --- the multipart encoding -------------------------------------------------------------------


def test_multipart_encoding_round_trips_through_the_fakes_parser(fake_openai):
    """The urllib client's hand-made multipart body, parsed as OpenAI's server would."""
    tricky = b"\x89PNG\r\n\x1a\n--image-gen-\r\n\r\n--\r\nContent-Disposition: x\r\n" + bytes(
        range(256)
    )
    body, content_type = encode_multipart(
        [("prompt", "line one\r\nline two: ünïcødé ✓"), ("n", "2")],
        [
            FormFile("image[]", "image-1.png", "image/png", tricky),
            FormFile("mask", "mask.png", "image/png", b""),
        ],
    )
    form, files = fake._parse_multipart(content_type, body)

    assert form == {"prompt": "line one\r\nline two: ünïcødé ✓", "n": "2"}
    assert [(f.name, f.filename, f.content_type, f.data) for f in files] == [
        ("image[]", "image-1.png", "image/png", tricky),
        ("mask", "mask.png", "image/png", b""),
    ]
    assert content_type.startswith("multipart/form-data; boundary=image-gen-")


def test_fake_upstream_refuses_bad_uploads_like_openai(fake_openai):
    """The fake's own checks, reached through the urllib client (the service checks first)."""
    client = OpenAIClient(fake_openai.base_url, TEST_KEY, retry=RetryPolicy(max_retries=0))

    def refused(fields, files, call=client.edit_images):
        with pytest.raises(APIStatusError) as raised:
            call(fields, files, Deadline(10))
        return raised.value

    text = refused(
        [("model", "gpt-image-2"), ("prompt", "x")],
        [FormFile("image", "x.png", "text/plain", b"hi")],
    )
    assert (text.status, text.param, text.code) == (400, "image", "invalid_image_format")
    mask = refused(
        [("model", "gpt-image-2"), ("prompt", "x")],
        [
            FormFile("image", "a.png", "image/png", PNG),
            FormFile("mask", "m.png", "image/png", rgba_png(8, 8)),
        ],
    )
    assert (mask.param, mask.code) == ("mask", "invalid_image")
    variation = refused(
        [("model", "gpt-image-2")],
        [FormFile("image", "a.png", "image/png", PNG)],
        client.create_variation,
    )
    assert (variation.param, variation.code) == ("model", "invalid_value")
    answer = client.create_variation(
        [("model", "dall-e-2"), ("response_format", "b64_json")],
        [FormFile("image", "a.png", "image/png", PNG)],
        Deadline(10),
    )
    assert identify(base64.b64decode(answer["data"][0]["b64_json"])) is not None
    assert fake_openai.image_requests[-1].files[0].size == len(PNG)


def test_an_edit_can_run_as_an_asynchronous_job(client, fake_openai):
    stored = client.post("/generate", json={"prompt": "a fox"}).get_json()
    accepted = client.post(
        "/edit",
        json={"prompt": "add a hat", "image_id": stored["images"][0]["id"]},
        headers={"Prefer": "respond-async"},
    )
    assert accepted.status_code == 202
    assert accepted.headers["Location"] == f"/jobs/{accepted.get_json()['job_id']}"
    assert accepted.headers["Preference-Applied"] == "respond-async"
    deadline = time.monotonic() + 15
    job = accepted.get_json()
    while job["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(accepted.headers["Location"]).get_json()
    assert job["status"] == "completed", job
    assert client.get(job["images"][0]["url"]).status_code == 200
    edited = fake_openai.requests[-1]
    assert edited.path.endswith("/images/edits")
