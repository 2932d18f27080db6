"""The OpenAI-compatible routes, driven by the official `openai` SDK against real Gunicorn
(fake upstream and placeholder mode), plus request/response details through the test client."""

from __future__ import annotations

import base64
import datetime as dt
import time

import openai
import pytest

from imagegen.catalog.models import CATALOG, MODELS
from imagegen.catalog.spec import SHUT_DOWN
from imagegen.imaging.formats import identify
from tests.support import fake_openai as fake
from tests.support.service import CLIENT_TOKEN, TEST_KEY, read_metadata, sdk


def png_size(data: bytes) -> tuple[int, int]:
    info = identify(data)
    assert info is not None and info.format == "png"
    return info.width, info.height


# --- the SDK against Gunicorn ---------------------------------------------------------------


@pytest.mark.slow
def test_sdk_generates_b64_pngs_with_gpt_image_2_and_stores_the_job(upstream_service, fake_openai):
    result = sdk(upstream_service).images.generate(
        model="gpt-image-2", prompt="a lighthouse", n=2, size="1536x1024", quality="low"
    )

    assert len(result.data) == 2
    for image in result.data:
        assert image.url is None
        png_size(base64.b64decode(image.b64_json))
    assert result.output_format == "png"
    assert result.size == "1536x1024"
    assert result.quality == "low"
    assert result.usage is not None and result.usage.output_tokens > 0
    (call,) = fake_openai.image_requests
    assert call.json == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse",
        "n": 2,
        "size": "1536x1024",
        "quality": "low",
    }
    assert call.header("authorization") == f"Bearer {TEST_KEY}"
    returned = {base64.b64decode(image.b64_json) for image in result.data}
    jobs = [
        read_metadata(upstream_service.images, p.name)
        for p in upstream_service.images.iterdir()
        if not p.name.startswith(".")
    ]
    (stored,) = [job for job in jobs if job["request"]["prompt"] == "a lighthouse"]
    assert stored["request"]["count"] == 2
    job_dir = upstream_service.images / stored["job_id"]
    assert {(job_dir / image["file"]).read_bytes() for image in stored["images"]} == returned


@pytest.mark.slow
def test_sdk_dall_e_3_url_answers_download_the_stored_images(upstream_service, fake_openai):
    result = sdk(upstream_service).images.generate(
        model="dall-e-3", prompt="a red fox", n=2, response_format="url", style="natural"
    )

    assert len(result.data) == 2
    assert len(fake_openai.image_requests) == 2  # dall-e-3 makes one image per call
    for image in result.data:
        assert image.b64_json is None
        assert image.url.startswith(f"{upstream_service.url}/images/")
        assert image.revised_prompt and image.revised_prompt.startswith("a red fox")
        status, headers, body = upstream_service.get(image.url[len(upstream_service.url) :])
        assert status == 200 and headers["Content-Type"] == "image/png"
        png_size(body)
    for call in fake_openai.image_requests:
        assert call.json["n"] == 1 and call.json["style"] == "natural"
        assert "response_format" not in call.json


@pytest.mark.slow
def test_sdk_raises_bad_request_for_a_validation_error(upstream_service, fake_openai):
    client = sdk(upstream_service)

    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(model="gpt-image-2", prompt="x", n=11)
    with pytest.raises(openai.BadRequestError) as dall_e_only:
        client.images.generate(model="gpt-image-2", prompt="x", style="vivid")

    assert too_many.value.code == "validation_error"
    assert too_many.value.param == "n"
    assert "'n' must be an integer from 1 to 10" in too_many.value.message
    assert dall_e_only.value.param == "style"
    assert fake_openai.image_requests == []


@pytest.mark.slow
def test_sdk_raises_rate_limit_error_with_retry_after_when_upstream_limits(
    upstream_service, fake_openai
):
    fake_openai.enqueue(fake.rate_limited(retry_after="7"))

    with pytest.raises(openai.RateLimitError) as raised:
        sdk(upstream_service).images.generate(model="gpt-image-2", prompt="busy")

    assert raised.value.status_code == 429
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.type == "requests"
    assert raised.value.response.headers["retry-after"] == "7"


@pytest.mark.slow
def test_sdk_does_not_retry_a_failure_a_retry_cannot_fix(upstream_service, fake_openai):
    fake_openai.set_default(fake.invalid_api_key())

    with pytest.raises(openai.InternalServerError) as raised:
        sdk(upstream_service, max_retries=2).images.generate(model="gpt-image-2", prompt="x")

    assert raised.value.code == "service_error"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(fake_openai.image_requests) == 1


@pytest.mark.slow
def test_sdk_gets_not_found_for_routes_the_service_does_not_implement(upstream_service):
    client = sdk(upstream_service)

    with pytest.raises(openai.NotFoundError) as embeddings:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("gpt-5-image")

    assert embeddings.value.code == "not_found"
    assert "POST /v1/embeddings" in embeddings.value.message
    assert unknown.value.code == "model_not_found"


@pytest.mark.slow
def test_key_never_reaches_sdk_answers_errors_or_logs(upstream_service, fake_openai):
    client = sdk(upstream_service)
    answers = [
        client.images.with_raw_response.generate(model="gpt-image-2", prompt="ok").text,
        client.models.with_raw_response.list().text,
    ]
    for failure in (
        fake.invalid_api_key(),
        fake.bad_request(f"echo {TEST_KEY}"),
        fake.rate_limited(),
        fake.server_error(),
    ):
        fake_openai.enqueue(failure)
        with pytest.raises(openai.APIStatusError) as raised:
            client.images.generate(model="gpt-image-2", prompt="fails")
        answers.append(raised.value.response.text)
    time.sleep(0.5)  # let the workers write their last log lines

    for text in answers:
        assert TEST_KEY not in text
    assert TEST_KEY not in upstream_service.log.read_text()
    for call in fake_openai.image_requests:  # the client's token never goes upstream
        assert CLIENT_TOKEN not in call.header("authorization", "")


@pytest.mark.slow
def test_sdk_works_in_placeholder_mode(placeholder_service, today):
    client = sdk(placeholder_service)

    made = client.images.generate(model="gpt-image-2", prompt="a tree", size="1024x1536")
    urls = client.images.generate(model="dall-e-3", prompt="a tree", response_format="url")
    models = [model.id for model in client.models.list()]

    assert png_size(base64.b64decode(made.data[0].b64_json)) == (1024, 1536)
    status, _, body = placeholder_service.get(urls.data[0].url[len(placeholder_service.url) :])
    assert status == 200 and png_size(body) == (1024, 1024)
    assert models == [m.id for m in MODELS if m.status(today()) != SHUT_DOWN]


# --- request and response details, through the test client ----------------------------------


def openai_error(response, status: int, code: str, param: str | None = None) -> str:
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    return body["error"]["message"]


def test_null_fields_mean_not_given(placeholder_client):
    response = placeholder_client.post(
        "/v1/images/generations",
        json={"prompt": "x", "model": None, "n": None, "size": None, "user": None},
    )

    assert response.status_code == 200
    assert len(response.get_json()["data"]) == 1


def test_the_callers_safety_identifier_is_sent_upstream_and_wins_over_user(client, fake_openai):
    response = client.post(
        "/v1/images/generations",
        json={"prompt": "x", "model": "gpt-image-2", "user": "u-1", "safety_identifier": "s"},
    )

    assert response.status_code == 200
    (call,) = fake_openai.image_requests
    assert call.json["safety_identifier"] == "s" and "user" not in call.json


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "count": 2}, "count"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
        ({"prompt": "x", "user": 5}, "user"),
        ({"prompt": "x", "stream": True}, "stream"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_invalid_requests_are_openai_shaped_400s(placeholder_client, body, param):
    response = placeholder_client.post("/v1/images/generations", json=body)

    openai_error(response, 400, "validation_error", param)


def test_a_shut_down_model_names_its_replacement(placeholder_client, today):
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    response = placeholder_client.post(
        "/v1/images/generations", json={"prompt": "x", "model": "gpt-image-1"}
    )

    assert "gpt-image-2.5-sunburst" in openai_error(response, 400, "validation_error", "model")


def test_dall_e_answers_b64_json_when_asked(client, fake_openai):
    response = client.post(
        "/v1/images/generations",
        json={"prompt": "x", "model": "dall-e-2", "n": 3, "response_format": "b64_json"},
    )

    data = response.get_json()["data"]
    assert len(data) == 3 and all(set(item) == {"b64_json"} for item in data)
    (call,) = fake_openai.image_requests  # dall-e-2 makes three in one call
    assert call.json["n"] == 3 and "response_format" not in call.json


def test_url_answers_use_the_requests_host(placeholder_client):
    response = placeholder_client.post(
        "/v1/images/generations",
        json={"prompt": "x", "model": "dall-e-2"},
        base_url="https://images.example:8443",
    )

    (item,) = response.get_json()["data"]
    assert item["url"].startswith("https://images.example:8443/images/")
    image_id = item["url"].rsplit("/", 1)[1]
    assert placeholder_client.get(f"/images/{image_id}").status_code == 200


def test_gpt_image_answers_echo_what_was_made(placeholder_client):
    response = placeholder_client.post(
        "/v1/images/generations",
        json={
            "prompt": "x",
            "model": "gpt-image-2",
            "size": "auto",
            "quality": "high",
            "background": "auto",
            "output_format": "png",
        },
    )

    body = response.get_json()
    assert body["output_format"] == "png"
    assert body["size"] == "1024x1024"  # what "auto" made
    assert body["quality"] == "high"
    assert "background" not in body  # "auto" is not echoed
    assert isinstance(body["created"], int)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "validation_error"),
        ({"data": "{}", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        (
            {"data": '{"prompt": "' + "x" * (2 << 20) + '"}', "content_type": "application/json"},
            413,
            "payload_too_large",
        ),
    ],
)
def test_framework_errors_are_openai_shaped(placeholder_client, kwargs, status, code):
    response = placeholder_client.post("/v1/images/generations", **kwargs)

    openai_error(response, status, code)


def test_wrong_method_and_unknown_path_under_v1_are_openai_shaped(placeholder_client):
    wrong_method = placeholder_client.get("/v1/images/generations")
    unknown = placeholder_client.post("/v1/chat/completions", json={})

    openai_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["Allow"]
    assert "POST /v1/chat/completions" in openai_error(unknown, 404, "not_found")
    # Outside /v1 the service's own shape is unchanged.
    assert placeholder_client.get("/v1x").get_json()["code"] == "NOT_FOUND"


def test_upstream_failures_map_to_openai_statuses(client, fake_openai):
    fake_openai.set_default(fake.moderation_blocked())
    blocked = client.post("/v1/images/generations", json={"prompt": "x"})
    fake_openai.set_default(fake.server_error())
    failed = client.post("/v1/images/generations", json={"prompt": "x"})

    openai_error(blocked, 400, "content_policy_violation")
    assert blocked.get_json()["error"]["type"] == "image_generation_user_error"
    openai_error(failed, 502, "upstream_error")
    assert "x-should-retry" not in failed.headers  # a later try may work


def test_models_list_has_openai_shape_and_only_usable_models(placeholder_client, today):
    # The last day of gpt-image-1.5 (deprecated), after gpt-image-1's shutdown.
    today.set(CATALOG["gpt-image-1.5"].shutdown_on - dt.timedelta(days=1))
    body = placeholder_client.get("/v1/models").get_json()

    assert body["object"] == "list"
    ids = [model["id"] for model in body["data"]]
    assert "gpt-image-2" in ids and "gpt-image-1.5" in ids and "gpt-image-1" not in ids
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int) and model["owned_by"] == "openai"
    one = placeholder_client.get("/v1/models/gpt-image-1.5").get_json()
    assert one["id"] == "gpt-image-1.5" and one["shutdown_date"] == "2026-12-01"
