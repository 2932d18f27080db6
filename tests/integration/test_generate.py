"""POST /generate end to end: the app, its urllib client and the fake OpenAI on a real socket."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest

from imagegen.catalog.models import CATALOG
from imagegen.imaging.formats import identify
from tests.support import fake_openai as fake
from tests.support.service import TEST_KEY, job_files, read_metadata


def generate(client, **body):
    return client.post("/generate", json={"prompt": "a lighthouse at dusk", **body})


# --- success -----------------------------------------------------------------------------


def test_generate_with_default_model_stores_image_and_answers_documented_shape(
    client, fake_openai, images_dir
):
    response = generate(client)

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "completed"
    assert body["model"] == "gpt-image-2"
    (image,) = body["images"]
    assert image["url"] == f"/images/{image['id']}"
    assert image["prompt"] == "a lighthouse at dusk"
    assert image["model"] == "gpt-image-2"
    assert image["size"] == "1024x1024"
    assert (image["width"], image["height"]) == (8, 8)  # what the fake really sent
    assert image["format"] == "png"
    stored = images_dir / body["job_id"] / f"001-{image['id']}.png"
    assert stored.is_file()
    assert client.get(image["url"]).data == stored.read_bytes()


def test_gpt_image_request_sends_model_and_options_but_never_dalle_only_fields(client, fake_openai):
    response = generate(
        client,
        model="gpt-image-2",
        count=3,
        size="2048x1152",
        quality="high",
        output_format="webp",
        output_compression=80,
        moderation="low",
        background="opaque",
    )

    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["images"]) == 3
    (call,) = fake_openai.image_requests
    assert call.json == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse at dusk",
        "n": 3,
        "size": "2048x1152",
        "quality": "high",
        "output_format": "webp",
        "output_compression": 80,
        "moderation": "low",
        "background": "opaque",
    }
    assert "response_format" not in call.json and "style" not in call.json
    assert call.header("authorization") == f"Bearer {TEST_KEY}"


def test_dalle3_count_fans_out_one_upstream_call_per_image(client, fake_openai, images_dir):
    response = generate(client, model="dall-e-3", count=3, quality="hd", style="natural")

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [i["model"] for i in body["images"]] == ["dall-e-3"] * 3
    calls = fake_openai.image_requests
    assert len(calls) == 3
    assert all(c.json["n"] == 1 and c.json["style"] == "natural" for c in calls)
    assert all(c.json["model"] == "dall-e-3" for c in calls)
    names = sorted(p.name for p in (images_dir / body["job_id"]).glob("*.png"))
    assert [n[:4] for n in names] == ["001-", "002-", "003-"]
    assert all(i["revised_prompt"] for i in body["images"])


def test_dalle_url_answers_are_downloaded_and_stored_byte_identical(client, fake_openai):
    png = fake.make_png(16, 16, (1, 2, 3))
    fake_openai.image_bytes = png

    response = generate(client, model="dall-e-2", count=2, size="256x256")

    assert response.status_code == 200, response.get_json()
    assert len(fake_openai.image_requests) == 1  # dall-e-2 makes up to 10 in one call
    assert fake_openai.image_requests[0].json["n"] == 2
    downloads = [r for r in fake_openai.requests if r.path.startswith("/files/")]
    assert len(downloads) == 2
    for image in response.get_json()["images"]:
        assert client.get(image["url"]).data == png


def test_metadata_records_request_images_and_usage_without_the_key(client, fake_openai, images_dir):
    body = generate(client, count=2, quality="low").get_json()

    metadata = read_metadata(images_dir, body["job_id"])
    assert metadata["job_id"] == body["job_id"]
    assert metadata["created_at"].endswith("Z")
    assert metadata["request"] == {
        "prompt": "a lighthouse at dusk",
        "model": "gpt-image-2",
        "count": 2,
        "size": "1024x1024",
        "quality": "low",
    }
    assert [i["id"] for i in metadata["images"]] == [i["id"] for i in body["images"]]
    for entry in metadata["images"]:
        data = (images_dir / body["job_id"] / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["status"] == "available"
    assert metadata["usage"]["output_tokens"] > 0
    raw = (images_dir / body["job_id"] / "metadata.json").read_text()
    assert TEST_KEY not in raw


# --- placeholder and keyless ---------------------------------------------------------------


def test_placeholder_mode_makes_real_pngs_of_the_requested_size_without_upstream(
    placeholder_client, fake_openai
):
    response = placeholder_client.post(
        "/generate", json={"prompt": "a fox", "size": "1536x1024", "count": 2}
    )

    assert response.status_code == 200
    body = response.get_json()
    assert body["placeholder"] is True
    for image in body["images"]:
        data = placeholder_client.get(image["url"]).data
        info = identify(data)
        assert (info.format, info.width, info.height) == ("png", 1536, 1024)
    assert fake_openai.requests == []


def test_placeholder_images_are_deterministic_and_differ_by_prompt(placeholder_client):
    def first_image(prompt):
        body = placeholder_client.post("/generate", json={"prompt": prompt}).get_json()
        return placeholder_client.get(body["images"][0]["url"]).data

    assert first_image("a fox") == first_image("a fox")
    assert first_image("a fox") != first_image("a whale")


def test_without_a_key_generate_explains_how_to_configure_one(settings, make_app, fake_openai):
    client = make_app(settings, api_key=None, api_key_source="none").test_client()

    health = client.get("/health").get_json()
    response = generate(client)

    assert health["api_key_configured"] is False
    assert response.status_code == 500
    assert response.get_json()["code"] == "SERVICE_ERROR"
    assert "openai_api_key" in response.get_json()["error"]
    assert fake_openai.requests == []


# --- models and lifecycle ------------------------------------------------------------------


def test_shut_down_model_is_refused_locally_naming_its_replacement(client, fake_openai, today):
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    response = generate(client, model="gpt-image-1")

    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR"
    assert "gpt-image-2" in body["error"] and "shut down" in body["error"]
    assert fake_openai.requests == []


def test_upstream_model_not_found_becomes_client_error_naming_a_current_model(client, fake_openai):
    fake_openai.enqueue(fake.model_not_found("dall-e-3"))

    response = generate(client, model="dall-e-3")

    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR"
    assert "gpt-image-2" in body["error"]
    assert len(fake_openai.image_requests) == 1  # a 4xx is never retried


def test_models_endpoint_lists_the_catalog_with_lifecycle(client, today):
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    body = client.get("/models").get_json()

    by_id = {m["id"]: m for m in body["models"]}
    assert body["default_model"] == "gpt-image-2"
    assert by_id["gpt-image-2"]["status"] == "active"
    assert by_id["gpt-image-1"]["status"] == "shut_down"
    assert by_id["gpt-image-1"]["replacement"]
    assert by_id["dall-e-3"]["options"]["style"]["enum"] == ["vivid", "natural"]
    assert by_id["gpt-image-2"]["size_rule"]["max_edge"] == 3840
    assert client.get("/models/gpt-image-2").get_json()["id"] == "gpt-image-2"
    assert client.get("/models/nope").get_json()["code"] == "MODEL_NOT_FOUND"


# --- upstream errors -----------------------------------------------------------------------


def test_generate_returns_429_with_retry_after_when_upstream_limits(client, fake_openai):
    fake_openai.set_default(fake.rate_limited(retry_after="30"))

    response = generate(client)

    assert response.status_code == 429
    assert response.get_json()["code"] == "RATE_LIMIT_EXCEEDED"
    assert response.headers["Retry-After"] == "30"
    assert len(fake_openai.image_requests) == 1  # 30 s is beyond what we wait for


def test_short_rate_limit_is_retried_and_succeeds(client, fake_openai):
    fake_openai.enqueue(fake.rate_limited(retry_after=None, retry_after_ms="50"))

    response = generate(client)

    assert response.status_code == 200
    assert len(fake_openai.image_requests) == 2


@pytest.mark.parametrize("retry_after", ["1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "soon", "-3"])
def test_any_retry_after_form_ends_in_a_json_answer(client, fake_openai, retry_after):
    fake_openai.set_default(fake.rate_limited(retry_after=retry_after))

    response = generate(client)

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1


def test_server_errors_are_retried_then_reported_as_502(client, fake_openai, images_dir):
    fake_openai.set_default(fake.server_error(503))

    response = generate(client)

    assert response.status_code == 502
    assert response.get_json()["code"] == "UPSTREAM_ERROR"
    assert len(fake_openai.image_requests) == 3  # the first try and two retries
    assert job_files(images_dir) == [".index"]


def test_server_error_that_recovers_succeeds(client, fake_openai):
    fake_openai.enqueue(fake.server_error(500), fake.non_json(502))

    response = generate(client)

    assert response.status_code == 200
    assert len(fake_openai.image_requests) == 3


def test_rejected_key_is_a_service_error_that_reveals_nothing(client, fake_openai, caplog):
    fake_openai.enqueue(fake.invalid_api_key())

    response = generate(client)

    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "SERVICE_ERROR"
    assert "sk-" not in response.get_data(as_text=True)
    assert TEST_KEY not in caplog.text
    assert len(fake_openai.image_requests) == 1


def test_exhausted_quota_is_not_retried(client, fake_openai):
    fake_openai.enqueue(fake.insufficient_quota())

    response = generate(client)

    assert response.status_code == 500
    assert "quota" in response.get_json()["error"]
    assert len(fake_openai.image_requests) == 1


@pytest.mark.parametrize("blocked", [fake.moderation_blocked, fake.content_policy_violation])
def test_safety_block_tells_the_agent_to_change_the_prompt(client, fake_openai, blocked):
    fake_openai.enqueue(blocked())

    response = generate(client)

    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "CONTENT_POLICY_VIOLATION"
    assert "prompt" in body["error"]
    assert len(fake_openai.image_requests) == 1


def test_upstream_timeout_becomes_504(settings, make_app, fake_openai, images_dir):
    client = make_app(settings, read_timeout=0.3, request_deadline=1.0, max_retries=0).test_client()
    fake_openai.enqueue(fake.slow(3))

    response = generate(client)

    assert response.status_code == 504
    assert response.get_json()["code"] == "UPSTREAM_TIMEOUT"
    assert job_files(images_dir) == [".index"]


@pytest.mark.parametrize(
    "fault",
    [fake.drop_connection, fake.reset_mid_body],
    ids=["dropped", "reset-mid-body"],
)
def test_dropped_connection_is_retried(client, fake_openai, fault):
    fake_openai.enqueue(fault())

    response = generate(client)

    assert response.status_code == 200
    assert len(fake_openai.image_requests) == 2


@pytest.mark.parametrize(
    "answer",
    [fake.invalid_b64, fake.truncated_b64, fake.not_an_image],
    ids=["invalid-base64", "truncated-base64", "not-an-image"],
)
def test_unusable_image_data_is_502_and_stores_nothing(client, fake_openai, images_dir, answer):
    fake_openai.set_default(answer())

    response = generate(client)

    assert response.status_code == 502
    assert response.get_json()["code"] == "UPSTREAM_ERROR"
    assert job_files(images_dir) == [".index"]


@pytest.mark.parametrize(
    "url",
    [
        "file:///run/secrets/openai_api_key",
        "ftp://127.0.0.1/x.png",
        "http://example.com/x.png",
        "data:image/png;base64,AAAA",
    ],
)
def test_unsafe_image_urls_are_never_fetched(client, fake_openai, images_dir, tmp_path, url):
    fake_openai.set_default(fake.url_to(url))

    response = generate(client, model="dall-e-2")

    assert response.status_code == 502
    assert TEST_KEY not in response.get_data(as_text=True)
    assert job_files(images_dir) == [".index"]


def test_redirect_to_a_file_url_is_refused(client, fake_openai, images_dir):
    fake_openai.set_default(fake.redirect_url("file:///etc/passwd"))

    response = generate(client, model="dall-e-2")

    assert response.status_code == 502
    assert job_files(images_dir) == [".index"]


def test_redirect_within_the_upstream_is_followed(client, fake_openai):
    png = fake.make_png(8, 8, (9, 9, 9))
    target = fake.file_url_status(200, "image/png", png)
    fake_openai.enqueue(target)
    first = generate(client, model="dall-e-2").get_json()
    stored_url = next(r.path for r in fake_openai.requests if r.path.startswith("/files/"))
    fake_openai.enqueue(fake.redirect_url(fake_openai.origin + stored_url))

    response = generate(client, model="dall-e-2")

    assert first["status"] == "completed"
    assert response.status_code == 200
    assert client.get(response.get_json()["images"][0]["url"]).data == png


@pytest.mark.parametrize(
    "status,ctype,body", [(404, "text/html", b"gone"), (200, "text/html", b"<html>hi</html>")]
)
def test_image_url_that_fails_or_serves_html_is_502(
    client, fake_openai, images_dir, status, ctype, body
):
    fake_openai.set_default(fake.file_url_status(status, ctype, body))

    response = generate(client, model="dall-e-2")

    assert response.status_code == 502
    assert job_files(images_dir) == [".index"]


def test_fan_out_failure_of_one_call_fails_the_job_without_partial_files(
    client, fake_openai, images_dir
):
    fake_openai.enqueue(fake.success(), fake.bad_request("Invalid prompt", param="prompt"))

    response = generate(client, model="dall-e-3", count=2)

    assert response.status_code == 400
    assert job_files(images_dir) == [".index"]


def test_b64_answer_is_decoded_exactly(client, fake_openai):
    png = fake.make_png(4, 4, (250, 0, 0))
    fake_openai.set_default(fake.FakeResponse(b64_json=base64.b64encode(png).decode()))

    body = generate(client).get_json()

    assert client.get(body["images"][0]["url"]).data == png


def test_upstream_error_messages_never_echo_a_key(client, fake_openai):
    fake_openai.enqueue(fake.bad_request(f"Bad thing with {TEST_KEY} and sk-other123456"))

    response = generate(client)

    text = response.get_data(as_text=True)
    assert response.status_code == 400
    assert TEST_KEY not in text and "sk-other" not in text


def test_generation_request_is_logged_with_job_id_model_and_count(client, caplog):
    caplog.set_level("INFO", logger="imagegen")

    body = generate(client, count=2).get_json()

    line = next(r.getMessage() for r in caplog.records if "generated" in r.getMessage())
    assert f"job_id={body['job_id']}" in line
    assert "model=gpt-image-2" in line and "count=2" in line
    assert any(
        "status=200" in r.getMessage() and "path=/generate" in r.getMessage()
        for r in caplog.records
    )


def test_stored_files_live_in_documented_layout(client, images_dir: Path):
    body = generate(client, count=2).get_json()

    job = images_dir / body["job_id"]
    assert sorted(p.name for p in job.iterdir() if not p.name.startswith(".")) == sorted(
        [
            f"001-{body['images'][0]['id']}.png",
            f"002-{body['images'][1]['id']}.png",
            "metadata.json",
        ]
    )


def test_deprecated_model_still_works_and_warns_of_its_shutdown(client, fake_openai, today):
    model = CATALOG["gpt-image-1.5"]
    today.set(model.shutdown_on - dt.timedelta(days=1))
    response = generate(client, model="gpt-image-1.5")

    body = response.get_json()
    assert response.status_code == 200
    assert "2026-12-01" in body["warnings"][0]
    assert fake_openai.image_requests[0].json["model"] == "gpt-image-1.5"

    today.set(model.shutdown_on)
    refused = generate(client, model="gpt-image-1.5")
    assert refused.status_code == 400
    assert "gpt-image-2.6-sunburst" in refused.get_json()["error"]
    assert len(fake_openai.image_requests) == 1
