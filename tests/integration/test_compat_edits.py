"""POST /v1/images/edits and /v1/images/variations: the official `openai` SDK against real
Gunicorn (fake upstream and placeholder mode), plus request/response details through the
test client."""

from __future__ import annotations

import base64
import io
import time
import warnings

import openai
import pytest

from imagegen.imaging.formats import identify
from tests.support import fake_openai as fake
from tests.support.gunicorn_server import Service, run_gunicorn
from tests.support.pictures import PNG, jpeg, rgba_png
from tests.support.service import TEST_KEY, read_metadata, sdk


def vary(client: openai.OpenAI, **options):
    """client.images.create_variation, whose SDK deprecation warning (OpenAI retired the
    endpoint; this service still serves it for dall-e-2 upstreams) is expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.images.create_variation(**options)


def decoded(b64: str | None) -> bytes:
    assert b64 is not None
    data = base64.b64decode(b64)
    assert identify(data) is not None
    return data


def stored_jobs(service: Service) -> list[dict]:
    return [
        read_metadata(service.images, p.name)
        for p in service.images.iterdir()
        if not p.name.startswith(".")
    ]


# --- the SDK against Gunicorn ---------------------------------------------------------------


@pytest.mark.slow
def test_sdk_edits_one_image_and_gets_b64_json(upstream_service, fake_openai):
    result = sdk(upstream_service).images.edit(
        model="gpt-image-2",
        image=("photo.png", PNG, "image/png"),
        prompt="add a red scarf",
        size="1024x1024",
        quality="low",
    )

    (image,) = result.data
    assert image.url is None
    returned = decoded(image.b64_json)
    assert result.output_format == "png" and result.quality == "low"
    assert result.usage is not None
    (call,) = fake_openai.image_requests
    assert call.path == "/v1/images/edits"
    assert call.form == {
        "model": "gpt-image-2",
        "prompt": "add a red scarf",
        "n": "1",
        "size": "1024x1024",
        "quality": "low",
    }
    assert [(f.name, f.content_type, f.data) for f in call.files] == [("image", "image/png", PNG)]
    (job,) = [
        j for j in stored_jobs(upstream_service) if j["request"]["prompt"] == "add a red scarf"
    ]
    assert job["operation"] == "edit"
    assert job["source"]["images"][0]["origin"] == "upload"
    stored = upstream_service.images / job["job_id"] / job["images"][0]["file"]
    assert stored.read_bytes() == returned


@pytest.mark.slow
def test_sdk_edits_several_images_with_a_mask(upstream_service, fake_openai):
    mask = rgba_png(16, 16)
    result = sdk(upstream_service).images.edit(
        model="gpt-image-2",
        image=[("a.png", PNG, "image/png"), ("b.jpg", jpeg(), "image/jpeg")],
        mask=("mask.png", mask, "image/png"),
        prompt="a gift basket",
        n=2,
    )

    assert len(result.data) == 2
    (call,) = fake_openai.image_requests
    assert [(f.name, f.content_type) for f in call.files] == [
        ("image[]", "image/png"),
        ("image[]", "image/jpeg"),
        ("mask", "image/png"),
    ]
    assert [f.data for f in call.files] == [PNG, jpeg(), mask]
    assert call.form["n"] == "2"


@pytest.mark.slow
def test_sdk_dall_e_2_variations_answer_urls_to_this_service(upstream_service, fake_openai):
    result = vary(
        sdk(upstream_service),
        model="dall-e-2",
        image=("v.png", PNG, "image/png"),
        n=2,
        size="256x256",
    )

    assert len(result.data) == 2
    for image in result.data:
        assert image.b64_json is None
        assert image.url.startswith(f"{upstream_service.url}/images/")
        status, headers, body = upstream_service.get(image.url[len(upstream_service.url) :])
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert identify(body) is not None
    (call,) = fake_openai.image_requests
    assert call.path == "/v1/images/variations"
    assert call.form == {"model": "dall-e-2", "n": "2", "size": "256x256"}


@pytest.mark.slow
def test_sdk_dall_e_2_edit_with_b64_json_response_format(upstream_service, fake_openai):
    result = sdk(upstream_service).images.edit(
        model="dall-e-2",
        image=("in.png", rgba_png(32, 32), "image/png"),
        prompt="a lighthouse",
        response_format="b64_json",
    )

    decoded(result.data[0].b64_json)
    (call,) = fake_openai.image_requests
    assert "response_format" not in call.form  # the service downloads what it stores


@pytest.mark.slow
def test_sdk_raises_bad_request_for_refused_inputs(upstream_service, fake_openai):
    client = sdk(upstream_service)

    with pytest.raises(openai.BadRequestError) as text_file:
        client.images.edit(model="gpt-image-2", image=("x.png", b"not an image"), prompt="x")
    with pytest.raises(openai.BadRequestError) as cannot_edit:
        client.images.edit(model="dall-e-3", image=("a.png", PNG), prompt="x")
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.edit(model="gpt-image-2", image=("a.png", PNG), prompt="x", n=11)
    with pytest.raises(openai.BadRequestError) as no_variations:
        vary(client, model="gpt-image-2", image=("a.png", PNG))

    assert text_file.value.code == "validation_error" and text_file.value.param == "image"
    assert "not a PNG, JPEG or WebP" in text_file.value.message
    assert cannot_edit.value.param == "model"
    assert "Models that can:" in cannot_edit.value.message
    assert too_many.value.param == "n"
    assert "'n' must be an integer from 1 to 10" in too_many.value.message
    assert "Models that can: dall-e-2" in no_variations.value.message
    assert fake_openai.image_requests == []


@pytest.mark.slow
def test_sdk_gets_413_for_an_upload_over_the_limit(tmp_path, fake_openai):
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY)
    env = {
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "IMAGE_GEN_MAX_UPLOAD_BYTES": "2000",
    }
    with run_gunicorn(tmp_path, env) as service:
        with pytest.raises(openai.APIStatusError) as raised:
            sdk(service).images.edit(
                model="gpt-image-2", image=("big.png", rgba_png(pad_to=5000)), prompt="x"
            )
        assert raised.value.status_code == 413
        assert raised.value.code == "payload_too_large"
        assert "IMAGE_GEN_MAX_UPLOAD_BYTES" in raised.value.message
        assert stored_jobs(service) == []
        assert list((service.images / ".index").iterdir()) == []
    assert fake_openai.image_requests == []


@pytest.mark.slow
def test_key_never_reaches_sdk_answers_or_logs(upstream_service, fake_openai):
    client = sdk(upstream_service)
    answers = [
        client.images.with_raw_response.edit(
            model="gpt-image-2", image=("a.png", PNG), prompt="ok"
        ).text
    ]
    for failure in (fake.invalid_api_key(), fake.bad_request(f"echo {TEST_KEY}", "image")):
        fake_openai.enqueue(failure)
        with pytest.raises(openai.APIStatusError) as raised:
            client.images.edit(model="gpt-image-2", image=("a.png", PNG), prompt="fails")
        answers.append(raised.value.response.text)
    fake_openai.enqueue(fake.server_error(message=f"oops {TEST_KEY}"))
    with pytest.raises(openai.APIStatusError) as raised:
        vary(client, model="dall-e-2", image=("a.png", PNG))
    answers.append(raised.value.response.text)
    time.sleep(0.5)  # let the workers write their last log lines

    for text in answers:
        assert TEST_KEY not in text
    assert TEST_KEY not in upstream_service.log.read_text()
    assert fake_openai.image_requests[0].header("authorization") == f"Bearer {TEST_KEY}"


@pytest.mark.slow
def test_sdk_edits_and_variations_work_keyless_in_placeholder_mode(placeholder_service):
    client = sdk(placeholder_service)

    edited = client.images.edit(model="gpt-image-2", image=("a.png", PNG), prompt="a hat", n=2)
    varied = vary(client, image=("a.png", PNG), n=1, size="256x256", response_format="b64_json")

    first, second = (decoded(image.b64_json) for image in edited.data)
    assert first != second
    assert (identify(first).width, identify(first).height) == (16, 16)  # auto: the input's
    assert identify(decoded(varied.data[0].b64_json)).width == 256


# --- details through the test client ---------------------------------------------------------


def post_form(client, path: str, files=(), **fields):
    data: dict = {key: str(value) for key, value in fields.items()}
    for field, name, content in files:
        data.setdefault(field, []).append((io.BytesIO(content), name))
    return client.post(path, data=data, content_type="multipart/form-data")


def openai_error(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_edit_neither_multipart_nor_json_is_415_in_openai_shape(client, fake_openai):
    response = client.post("/v1/images/edits", data="prompt=x", content_type="text/plain")

    assert response.status_code == 415
    error = openai_error(response)
    assert error["code"] == "unsupported_media_type"
    assert "multipart/form-data" in error["message"] and "JSON" in error["message"]


def test_variation_sent_as_json_is_415_in_openai_shape(client, fake_openai):
    response = client.post("/v1/images/variations", json={"image": "a.png"})

    assert response.status_code == 415
    assert "multipart/form-data" in openai_error(response)["message"]


def test_openai_only_fields_are_translated_ignored_or_sent(client, fake_openai):
    response = post_form(
        client,
        "/v1/images/edits",
        [("image", "a.png", PNG)],
        prompt="x",
        n=2,
        user="agent-7",
        safety_identifier="abc",
        stream="false",
        response_format="b64_json",
    )

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert len(body["data"]) == 2 and all("b64_json" in item for item in body["data"])
    assert body["output_format"] == "png"
    (call,) = fake_openai.image_requests
    assert call.form == {
        "model": "gpt-image-2",
        "prompt": "x",
        "n": "2",
        "size": "auto",
        "safety_identifier": "abc",  # the caller's own; it wins over `user`
    }


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"stream": "true"}, "stream"),
        ({"partial_images": "2"}, "partial_images"),
        ({"count": "2"}, "count"),
        ({"response_format": "jpeg"}, "response_format"),
        ({"n": "0"}, "n"),
    ],
)
def test_refused_openai_fields_name_the_param(client, fake_openai, fields, param):
    response = post_form(
        client, "/v1/images/edits", [("image", "a.png", PNG)], prompt="x", **fields
    )

    assert response.status_code == 400
    error = openai_error(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert fake_openai.image_requests == []


def test_upload_over_the_total_limit_is_413_in_openai_shape(settings, make_app, fake_openai):
    client = make_app(settings, max_upload_total_bytes=3000).test_client()

    response = post_form(
        client, "/v1/images/variations", [("image", "a.png", rgba_png(pad_to=4000))]
    )

    assert response.status_code == 413
    assert openai_error(response)["code"] == "payload_too_large"


def test_variation_answers_url_unless_b64_json_is_asked(client, fake_openai):
    as_url = post_form(client, "/v1/images/variations", [("image", "a.png", PNG)])
    as_b64 = post_form(
        client, "/v1/images/variations", [("image", "a.png", PNG)], response_format="b64_json"
    )

    assert as_url.status_code == 200 and as_b64.status_code == 200
    (item,) = as_url.get_json()["data"]
    assert item["url"].startswith("http://localhost/images/")
    assert client.get(item["url"][len("http://localhost") :]).status_code == 200
    decoded(as_b64.get_json()["data"][0]["b64_json"])
    assert "output_format" not in as_url.get_json()  # DALL-E answers echo nothing


def test_unknown_v1_route_lists_the_edit_routes(client):
    response = client.post("/v1/images/nope")

    assert response.status_code == 404
    assert "/v1/images/edits and /v1/images/variations" in openai_error(response)["message"]
