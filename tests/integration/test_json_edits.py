"""OpenAI's JSON edit form on POST /v1/images/edits and POST /edit: `images` and `mask` as
`{image_url}` (data URLs, this service's own image URLs) or `{file_id}` (this service's image
ids), validated like the multipart form and sent upstream as multipart."""

from __future__ import annotations

import base64
import dataclasses
import io

import openai
import pytest

from imagegen.catalog.models import CATALOG
from tests.support.mcp import result_of, rpc, tools_by_name
from tests.support.pictures import PNG, jpeg, rgba_png, webp
from tests.support.service import job_files, read_metadata, sdk

MISSING = "0c517a97-436d-4849-a1fe-cf1050ba1449"


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


def ref(data: bytes, media: str = "image/png") -> dict:
    return {"image_url": data_url(data, media)}


def openai_error(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]


def generated(client) -> tuple[str, str]:
    """(image id, job id) of a new generated image (the fake's: an opaque 8x8 PNG)."""
    body = client.post("/generate", json={"prompt": "a cat"}).get_json()
    return body["images"][0]["id"], body["job_id"]


def stored_jobs(images_dir) -> list[dict]:
    """Every stored job's metadata, oldest first."""
    found = [p for p in images_dir.iterdir() if (p / "metadata.json").exists()]
    jobs = [read_metadata(images_dir, p.name) for p in found]
    return sorted(jobs, key=lambda job: job["created_at"])


def refused_without_effect(response, fake_openai, images_dir, before, status=400) -> dict:
    """The OpenAI-shaped error of a refused request that called nothing and stored nothing."""
    assert response.status_code == status, response.get_json()
    assert fake_openai.image_requests == []
    assert job_files(images_dir) == before
    return openai_error(response)


# --- accepted --------------------------------------------------------------------------------


def test_data_url_edit_goes_upstream_exactly_as_the_multipart_form(client, fake_openai, images_dir):
    fields = {"prompt": "add a scarf", "model": "gpt-image-2", "size": "1024x1024"}
    multipart = client.post(
        "/v1/images/edits",
        data={**fields, "n": "2", "quality": "low", "image": [(io.BytesIO(PNG), "a.png")]},
        content_type="multipart/form-data",
    )
    as_json = client.post(
        "/v1/images/edits", json={**fields, "n": 2, "quality": "low", "images": [ref(PNG)]}
    )

    assert multipart.status_code == as_json.status_code == 200, as_json.get_json()
    body = as_json.get_json()
    assert len(body["data"]) == 2 and all("b64_json" in item for item in body["data"])
    assert body["output_format"] == "png" and body["quality"] == "low"
    by_form, by_json = fake_openai.image_requests
    assert by_json.path == by_form.path == "/v1/images/edits"
    assert by_json.form == by_form.form
    assert [(f.name, f.content_type, f.data) for f in by_json.files] == [
        (f.name, f.content_type, f.data) for f in by_form.files
    ]
    sources = [job["source"] for job in stored_jobs(images_dir)]
    assert len(sources) == 2
    assert sources[0] == sources[1]
    assert sources[0]["images"][0]["origin"] == "upload"


def test_data_url_scheme_and_type_are_case_insensitive(client, fake_openai):
    url = data_url(PNG, "IMAGE/PNG").replace("data:", "DATA:").replace(";base64", ";BASE64")

    response = client.post("/v1/images/edits", json={"prompt": "x", "images": [{"image_url": url}]})

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[-1].files[0].data == PNG


def test_edit_route_takes_images_and_a_mask_as_data_urls(client, fake_openai, images_dir):
    image, mask = rgba_png(16, 16), rgba_png(16, 16)

    response = client.post(
        "/edit",
        json={
            "prompt": "hat",
            "images": [ref(image), ref(jpeg(), "image/jpeg")],
            "mask": ref(mask),
        },
    )

    assert response.status_code == 200, response.get_json()
    call = fake_openai.image_requests[-1]
    assert [f.name for f in call.files] == ["image[]", "image[]", "mask"]
    assert [f.data for f in call.files] == [image, jpeg(), mask]
    source = read_metadata(images_dir, response.get_json()["job_id"])["source"]
    assert [i["format"] for i in source["images"]] == ["png", "jpeg"]
    assert source["mask"]["origin"] == "upload" and source["mask"]["width"] == 16


@pytest.mark.parametrize(
    "reference",
    [
        lambda image_id: {"image_url": f"http://localhost/images/{image_id}"},
        lambda image_id: {"image_url": f"https://LOCALHOST/images/{image_id}"},
        lambda image_id: {"image_url": f"/images/{image_id}"},
        lambda image_id: {"file_id": image_id},
    ],
    ids=["absolute-url", "https-url", "path", "file-id"],
)
def test_this_services_own_images_are_read_from_the_store(
    client, fake_openai, images_dir, reference
):
    image_id, job_id = generated(client)
    stored = client.get(f"/images/{image_id}").data

    response = client.post(
        "/v1/images/edits", json={"prompt": "x", "images": [reference(image_id)]}
    )

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[-1].files[0].data == stored
    (edited,) = [job for job in stored_jobs(images_dir) if job["operation"] == "edit"]
    (recorded,) = edited["source"]["images"]
    assert recorded["origin"] == "stored"
    assert recorded["image_id"] == image_id and recorded["job_id"] == job_id


def test_a_v1_dall_e_answer_url_can_be_edited_again(client, fake_openai):
    fake_openai.image_bytes = rgba_png(8, 8)  # a square transparent result dall-e-2 can edit
    first = client.post(
        "/v1/images/edits",
        data={"model": "dall-e-2", "prompt": "x", "image": [(io.BytesIO(rgba_png()), "a.png")]},
        content_type="multipart/form-data",
    )
    url = first.get_json()["data"][0]["url"]

    again = client.post(
        "/v1/images/edits",
        json={"model": "dall-e-2", "prompt": "y", "images": [{"image_url": url}]},
    )

    assert again.status_code == 200, again.get_json()
    assert fake_openai.image_requests[-1].files[0].data == client.get(url).data


def test_stream_false_null_fields_and_the_end_user_are_taken(client, fake_openai):
    response = client.post(
        "/v1/images/edits",
        json={
            "prompt": "x",
            "images": [ref(PNG)],
            "stream": False,
            "quality": None,
            "user": "agent-7",
            "response_format": "b64_json",
        },
    )

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[-1].form == {
        "model": "gpt-image-2",
        "prompt": "x",
        "n": "1",
        "size": "auto",
        "safety_identifier": "agent-7",
    }


def test_moderation_goes_upstream_where_the_catalog_lets_edits_take_it(
    client, fake_openai, monkeypatch
):
    taken = client.post(
        "/v1/images/edits", json={"prompt": "x", "images": [ref(PNG)], "moderation": "low"}
    )
    assert taken.status_code == 200, taken.get_json()
    assert fake_openai.image_requests[-1].form["moderation"] == "low"

    model = CATALOG["gpt-image-2"]
    assert model.edits is not None
    edits = dataclasses.replace(
        model.edits,
        options={k: v for k, v in model.edits.options.items() if k != "moderation"},
    )
    monkeypatch.setitem(CATALOG, "gpt-image-2", dataclasses.replace(model, edits=edits))

    refused = client.post(
        "/v1/images/edits", json={"prompt": "x", "images": [ref(PNG)], "moderation": "low"}
    )

    assert refused.status_code == 400
    assert openai_error(refused)["param"] == "moderation"
    assert "gpt-image-2 edits" in openai_error(refused)["message"]
    assert len(fake_openai.image_requests) == 1


# --- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_url, words",
    [
        ("https://example.com/cat.png", "does not fetch"),
        ("http://169.254.169.254/latest/meta-data/", "does not fetch"),
        (f"http://localhost.evil.example/images/{MISSING}", "does not fetch"),
        (f"//evil.example/images/{MISSING}", "does not fetch"),
        (f"http://localhost/images/{MISSING}?width=64", "does not fetch"),
        (f"ftp://localhost/images/{MISSING}", "does not fetch"),
        ("file:///etc/passwd", "does not fetch"),
        ("cat.png", "does not fetch"),
        ("http://[::1/images/x", "does not fetch"),
        ("\x00\n", "does not fetch"),
        ("data:image/png;base64,@@@not base64@@@", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # unpadded
        (f"data:image/png;base64,{base64.b64encode(PNG).decode()[:20]}\n==", "not valid base64"),
        ("data:image/png,%89PNG", "not a base64 data URL"),
        ("data:;base64,AAAA", "no type"),
        (data_url(PNG, "text/plain"), "'text/plain'"),
        (data_url(b"GIF89a" + bytes(20), "image/gif"), "'image/gif'"),
        (data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"), "svg"),
        (data_url(b"hello, not an image", "image/png"), "not a PNG, JPEG or WebP"),
    ],
)
def test_bad_image_urls_are_refused_and_nothing_is_fetched(
    client, fake_openai, images_dir, image_url, words
):
    before = job_files(images_dir)

    response = client.post(
        "/v1/images/edits", json={"prompt": "x", "images": [ref(PNG), {"image_url": image_url}]}
    )

    error = refused_without_effect(response, fake_openai, images_dir, before)
    assert error["code"] == "validation_error" and error["param"] == "images[1]"
    assert words in error["message"]


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"images": "abc"}, "images", "non-empty list"),
        ({"images": []}, "images", "non-empty list"),
        ({"images": [ref(PNG)] * 17}, "images", "no model takes more than 16"),
        ({"images": ["data:image/png;base64,AAAA"]}, "images[0]", "must be an object"),
        ({"images": [{}]}, "images[0]", "names no image"),
        ({"images": [{"image_url": None}]}, "images[0]", "names no image"),
        ({"images": [{"image_url": "x", "file_id": MISSING}]}, "images[0]", "both"),
        ({"images": [{"url": "x"}]}, "images[0]", "unknown key"),
        ({"images": [{"image_url": 5}]}, "images[0]", "non-empty string"),
        ({"images": [{"file_id": "file-abc123"}]}, "images[0]", "OpenAI's Files ids"),
        ({"images": [ref(PNG)], "mask": "m.png"}, "mask", "must be an object"),
        ({"mask": ref(rgba_png())}, "images", "non-empty list"),
        ({"images": [ref(PNG)], "image_id": MISSING}, "image_id", "images"),
        ({"image": "a.png"}, "image", "'images'"),
        ({"images": [ref(PNG)], "mask": ref(PNG)}, "mask", "alpha channel"),
        ({"images": [ref(PNG)], "mask": ref(rgba_png(8, 8))}, "mask", "16x16"),
        ({"images": [ref(PNG)], "mask": ref(jpeg(), "image/jpeg")}, "mask", "JPEG"),
        ({"images": [ref(PNG)], "mask": ref(rgba_png()), "markup": ref(rgba_png())}, "markup", ""),
        ({"images": [ref(PNG)], "markup": ref(rgba_png())}, "markup", ""),
        ({"images": [ref(PNG)], "n": 0}, "n", "'n'"),
        ({"images": [ref(PNG)], "count": 2}, "count", "'n'"),
        ({"images": [ref(PNG)], "size": "7x7"}, "size", "not accepted"),
        ({"images": [ref(PNG)], "stream": True}, "stream", "Streaming"),
        ({"images": [ref(PNG)], "partial_images": 1}, "partial_images", ""),
        ({"images": [ref(PNG)], "input_fidelity": "high"}, "input_fidelity", ""),
        ({"images": [ref(PNG), ref(PNG)], "model": "dall-e-2"}, "images[1]", "at most 1"),
        ({"images": [ref(webp())], "model": "dall-e-2"}, "images[0]", "WEBP"),
    ],
)
def test_malformed_or_refused_json_edits_name_the_param(
    client, fake_openai, images_dir, body, param, words
):
    before = job_files(images_dir)

    response = client.post("/v1/images/edits", json={"prompt": "x", **body})

    error = refused_without_effect(response, fake_openai, images_dir, before)
    assert error["param"] == param and error["code"] == "validation_error"
    assert words in error["message"]


def test_unknown_file_id_or_own_url_is_404(client, fake_openai, images_dir):
    before = job_files(images_dir)

    for reference in ({"file_id": MISSING}, {"image_url": f"http://localhost/images/{MISSING}"}):
        response = client.post("/v1/images/edits", json={"prompt": "x", "images": [reference]})
        error = refused_without_effect(response, fake_openai, images_dir, before, status=404)
        assert error["code"] == "image_not_found"


def test_data_url_over_the_per_file_limit_is_413_before_decoding(settings, make_app, fake_openai):
    client = make_app(settings, max_upload_bytes=1000).test_client()
    big = rgba_png(pad_to=2000)

    for path in ("/v1/images/edits", "/edit"):
        response = client.post(path, json={"prompt": "x", "images": [ref(PNG), ref(big)]})
        assert response.status_code == 413, response.get_json()
        assert "IMAGE_GEN_MAX_UPLOAD_BYTES" in response.get_data(as_text=True)
    huge = {"image_url": "data:image/png;base64," + "A" * 10_000_000}
    response = client.post("/v1/images/edits", json={"prompt": "x", "images": [huge]})
    assert response.status_code == 413
    assert fake_openai.image_requests == []


def test_json_body_over_the_upload_total_is_413(settings, make_app, fake_openai):
    client = make_app(settings, max_upload_total_bytes=3000).test_client()

    response = client.post(
        "/v1/images/edits", json={"prompt": "x", "images": [ref(rgba_png(pad_to=4000))]}
    )

    assert response.status_code == 413
    assert "IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES" in openai_error(response)["message"]
    assert fake_openai.image_requests == []


def test_edit_route_refuses_bad_references_in_its_own_error_shape(client, fake_openai):
    response = client.post(
        "/edit", json={"prompt": "x", "images": [{"image_url": "https://example.com/a.png"}]}
    )

    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR" and body["field"] == "images[0]"
    assert "data URL" in body["error"]
    assert fake_openai.image_requests == []


def test_variations_keep_their_json_form(client, fake_openai):
    response = client.post("/variations", json={"images": [ref(rgba_png())]})

    assert response.status_code == 400
    assert response.get_json()["field"] in ("image_id", "images")
    assert fake_openai.image_requests == []


def test_a_json_edit_over_a_mebibyte_takes_an_idempotency_key(client, fake_openai):
    big = {"prompt": "x", "images": [ref(rgba_png(pad_to=1_200_000))]}

    first = client.post("/v1/images/edits", json=big, headers={"Idempotency-Key": "edit-1"})
    replay = client.post("/v1/images/edits", json=big, headers={"Idempotency-Key": "edit-1"})

    assert first.status_code == replay.status_code == 200, first.get_json()
    assert replay.get_json() == first.get_json()
    assert len(fake_openai.image_requests) == 1


def test_mcp_edit_image_takes_the_same_references(client, fake_openai):
    schema = tools_by_name(client)["edit_image"]["inputSchema"]["properties"]
    assert {"images", "mask"} <= set(schema)
    arguments = {"prompt": "a red fox", "images": [ref(PNG)]}

    answer = rpc(client, "tools/call", {"name": "edit_image", "arguments": arguments})

    job = result_of(answer)["structuredContent"]
    assert job["status"] == "completed"
    assert fake_openai.image_requests[-1].files[0].data == PNG


# --- the openai SDK against Gunicorn ------------------------------------------------------------


@pytest.mark.slow
def test_sdk_sends_the_json_form_and_parses_the_answer(upstream_service, fake_openai):
    client = sdk(upstream_service)
    body = {"model": "gpt-image-2", "prompt": "add a red scarf", "images": [ref(PNG)]}

    # openai 3.57.0's images.edit sends multipart only; its generic post sends OpenAI's JSON
    # form and parses the answer with the SDK's own ImagesResponse.
    result = client.post("/images/edits", body=body, cast_to=openai.types.ImagesResponse)

    (image,) = result.data or []
    assert image.b64_json and base64.b64decode(image.b64_json)
    assert result.output_format == "png"
    (call,) = fake_openai.image_requests
    assert call.path == "/v1/images/edits"
    assert [(f.name, f.data) for f in call.files] == [("image", PNG)]
    with pytest.raises(openai.BadRequestError) as refused:
        client.post(
            "/images/edits",
            body={**body, "images": [{"image_url": "http://169.254.169.254/"}]},
            cast_to=openai.types.ImagesResponse,
        )
    assert refused.value.param == "images[0]" and refused.value.code == "validation_error"
    assert len(fake_openai.image_requests) == 1
