"""Every failure, ours or the framework's, is JSON {"error", "status": "failed", "code"}."""

from __future__ import annotations

import json

import pytest

from tests.support.service import job_files


def assert_json_error(response, status, code):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "failed"
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


def test_unknown_route_is_json_404(client):
    assert_json_error(client.get("/no/such/thing"), 404, "NOT_FOUND")


def test_wrong_method_is_json_405_with_allow_header(client):
    response = client.put("/generate", json={})

    assert_json_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]


def test_invalid_json_is_validation_error(client, images_dir, fake_openai):
    response = client.post("/generate", data="{not json", content_type="application/json")

    assert_json_error(response, 400, "VALIDATION_ERROR")
    assert fake_openai.requests == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_wrong_content_type_is_415(client, content_type, fake_openai):
    response = client.post("/generate", data='{"prompt": "x"}', content_type=content_type)

    assert_json_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert fake_openai.requests == []


def test_oversized_body_is_413(client, fake_openai):
    body = json.dumps({"prompt": "x" * (2 * 1024 * 1024)})

    response = client.post("/generate", data=body, content_type="application/json")

    assert_json_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert fake_openai.requests == []


def test_deeply_nested_json_is_a_validation_error(client, fake_openai):
    body = "[" * 100_000 + "]" * 100_000

    response = client.post("/generate", data=body, content_type="application/json")

    assert_json_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("body", ["[]", '"prompt"', "42", "null"])
def test_non_object_body_is_a_validation_error(client, body):
    response = client.post("/generate", data=body, content_type="application/json")

    assert_json_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "fields,field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "count": 0}, "count"),
        ({"prompt": "x", "count": 11}, "count"),
        ({"prompt": "x", "count": "2"}, "count"),
        ({"prompt": "x", "count": True}, "count"),
        ({"prompt": "x", "size": "1000x1000"}, "size"),
        ({"prompt": "x", "size": 1024}, "size"),
        ({"prompt": "x", "model": "dall-e-9"}, "model"),
        ({"prompt": "x", "model": ["gpt-image-2"]}, "model"),
        ({"prompt": "x", "quality": "hd"}, "quality"),
        ({"prompt": "x", "style": "vivid"}, "style"),
        ({"prompt": "x", "background": "transparent"}, "background"),
        ({"prompt": "x", "output_compression": 50}, "output_compression"),
        ({"prompt": "x", "model": "dall-e-2", "quality": "hd"}, "quality"),
        ({"prompt": "x", "model": "dall-e-3", "size": "256x256"}, "size"),
        ({"prompt": "x" * 1001, "model": "dall-e-2"}, "prompt"),
    ],
)
def test_bad_fields_are_refused_naming_the_field_without_upstream_or_disk_change(
    client, fake_openai, images_dir, fields, field
):
    response = client.post("/generate", json=fields)

    assert_json_error(response, 400, "VALIDATION_ERROR")
    assert response.get_json()["field"] == field
    assert fake_openai.requests == []
    assert job_files(images_dir) == [".index"]


def test_health_reports_configuration_without_the_key(client):
    from tests.support.service import TEST_KEY

    response = client.get("/health")

    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["api_key_configured"] is True
    assert body["api_key_source"] == "secret_file"
    assert body["provider"] == "openai"
    assert body["default_model"] == "gpt-image-2"
    assert body["timestamp"].endswith("Z")
    assert TEST_KEY not in response.get_data(as_text=True)


def test_every_response_carries_a_request_id(client):
    chosen = client.get("/health", headers={"X-Request-ID": "agent-42"})
    generated = client.get("/nope")

    assert chosen.headers["X-Request-ID"] == "agent-42"
    assert len(generated.headers["X-Request-ID"]) == 32
