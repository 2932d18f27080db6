"""Azure OpenAI end to end: /generate and /edit through the urllib client to the fake's Azure
paths (classic per-deployment with api-version, and v1), its api-key header, its errors."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from tests.support import fake_openai as fake
from tests.support.pictures import PNG
from tests.support.service import read_metadata

AZURE_KEY = "0123456789abcdef0123456789abcdef"  # Azure keys are hex, not sk-...
API_VERSION = "2025-04-01-preview"


@pytest.fixture
def azure_settings(settings, fake_openai):
    """Settings for Azure OpenAI (classic deployment paths) against the fake."""
    return replace(
        settings,
        provider="azure",
        api_key=AZURE_KEY,
        azure_endpoint=fake_openai.origin,
        azure_api="deployments",
        azure_api_version=API_VERSION,
    )


@pytest.fixture
def azure_client(azure_settings, make_app):
    return make_app(azure_settings).test_client()


@pytest.fixture
def v1_client(azure_settings, make_app):
    return make_app(azure_settings, azure_api="v1").test_client()


def _edit(client, **fields):
    data = {"prompt": "put a hat on it", "size": "1024x1024", **fields}
    data["image"] = [(io.BytesIO(PNG), "in.png")]
    return client.post("/edit", data=data, content_type="multipart/form-data")


def _raw_post(url: str, headers: dict[str, str]) -> urllib.error.HTTPError:
    """POST straight to the fake; the HTTP error it answers."""
    request = urllib.request.Request(url, data=b'{"prompt": "x"}', headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    return caught.value


def test_generate_on_azure_posts_to_the_deployment_with_api_version_and_api_key(
    azure_client, fake_openai, images_dir
):
    response = azure_client.post("/generate", json={"prompt": "a lighthouse", "size": "1024x1024"})

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    assert call.route == "/openai/deployments/gpt-image-2/images/generations"
    assert call.query == {"api-version": API_VERSION}
    assert call.auth_kind == "api-key" and call.header("api-key") == AZURE_KEY
    assert call.header("authorization") is None
    assert call.fields["model"] == "gpt-image-2" and call.fields["prompt"] == "a lighthouse"
    metadata = read_metadata(images_dir, response.get_json()["job_id"])
    assert metadata["provider"] == "azure"


def test_edit_on_azure_posts_the_form_to_the_deployments_edits_path(azure_client, fake_openai):
    response = _edit(azure_client, quality="low")

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    assert call.route == "/openai/deployments/gpt-image-2/images/edits"
    assert call.query == {"api-version": API_VERSION} and call.auth_kind == "api-key"
    assert call.is_multipart and call.fields["quality"] == "low"
    assert [part.name for part in call.files] == ["image"]


@pytest.mark.parametrize("operation", ["generate", "edit"])
def test_the_deployment_mapping_names_the_deployment_in_path_and_body(
    azure_settings, make_app, fake_openai, operation
):
    fake_openai.azure_deployments = {"img-prod"}
    app = make_app(azure_settings, azure_deployments=(("gpt-image-2", "img-prod"),))
    client = app.test_client()

    if operation == "generate":
        response = client.post("/generate", json={"prompt": "a lighthouse"})
    else:
        response = _edit(client)

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    assert call.deployment == "img-prod" and call.fields["model"] == "img-prod"
    assert response.get_json()["model"] == "gpt-image-2"


def test_a_missing_deployment_says_which_and_how_to_map_it(azure_client, fake_openai):
    fake_openai.azure_deployments = {"img-prod"}

    response = azure_client.post("/generate", json={"prompt": "a lighthouse"})

    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "no deployment" in message and "IMAGE_GEN_AZURE_DEPLOYMENTS" in message
    assert response.get_json()["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("operation", ["generate", "edit"])
def test_v1_api_takes_openais_paths_with_the_deployment_as_model(v1_client, fake_openai, operation):
    if operation == "generate":
        response = v1_client.post("/generate", json={"prompt": "a lighthouse"})
    else:
        response = _edit(v1_client)

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    path = "generations" if operation == "generate" else "edits"
    assert call.route == f"/openai/v1/images/{path}" and call.query == {}
    assert call.auth_kind == "api-key" and call.header("authorization") is None
    assert call.fields["model"] == "gpt-image-2"


def test_the_fake_answers_azures_404_without_an_api_version(fake_openai):
    url = f"{fake_openai.origin}/openai/deployments/gpt-image-2/images/generations"
    answer = _raw_post(url, {"api-key": AZURE_KEY})

    assert answer.code == 404
    assert json.loads(answer.read())["error"]["code"] == "404"


def test_the_fakes_classic_path_refuses_a_bearer_token(fake_openai):
    path = f"/openai/deployments/d/images/generations?api-version={API_VERSION}"
    answer = _raw_post(fake_openai.origin + path, {"Authorization": "Bearer k"})

    assert answer.code == 401
    (call,) = fake_openai.image_requests
    assert call.auth_kind == "bearer" and call.deployment == "d"


def test_an_azure_429_with_retry_after_is_retried_like_openais(azure_client, fake_openai):
    fake_openai.enqueue(fake.azure_rate_limited(retry_after=1))

    response = azure_client.post("/generate", json={"prompt": "a lighthouse"})

    assert response.status_code == 200, response.get_json()
    assert len(fake_openai.image_requests) == 2


def test_an_azure_429_that_persists_reaches_the_caller_with_retry_after(azure_client, fake_openai):
    fake_openai.set_default(fake.azure_rate_limited(retry_after=30))

    response = azure_client.post("/generate", json={"prompt": "a lighthouse"})

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert len(fake_openai.image_requests) == 1  # 30 s is beyond max_retry_wait


@pytest.mark.parametrize("operation", ["generate", "edit"])
def test_azures_content_filter_is_the_safety_error_and_not_retried(
    azure_client, fake_openai, operation
):
    fake_openai.set_default(fake.azure_content_filter())

    if operation == "generate":
        response = azure_client.post("/generate", json={"prompt": "something filtered"})
    else:
        response = _edit(azure_client)

    assert response.status_code == 400
    assert response.get_json()["code"] == "CONTENT_POLICY_VIOLATION"
    assert len(fake_openai.image_requests) == 1


def test_azures_401_says_the_credentials_were_rejected_without_the_key(
    azure_client, fake_openai, caplog
):
    fake_openai.set_default(fake.azure_error(401, "401", f"bad key {AZURE_KEY}"))

    with caplog.at_level(logging.DEBUG):
        response = azure_client.post("/generate", json={"prompt": "a lighthouse"})

    assert response.status_code in (500, 502)
    assert AZURE_KEY not in response.get_data(as_text=True)
    assert AZURE_KEY not in caplog.text


def test_the_key_is_in_no_log_answer_health_or_metadata(
    azure_client, fake_openai, images_dir, caplog
):
    with caplog.at_level(logging.DEBUG):
        generated = azure_client.post("/generate", json={"prompt": "a lighthouse"})
        health = azure_client.get("/health")

    assert generated.status_code == 200
    job = generated.get_json()["job_id"]
    texts = [
        generated.get_data(as_text=True),
        health.get_data(as_text=True),
        json.dumps(read_metadata(images_dir, job)),
        caplog.text,
    ]
    assert not [text for text in texts if AZURE_KEY in text]
    body = health.get_json()
    assert body["provider"] == "azure"
    assert body["upstream"] == {"kind": "azure", "api": "deployments", "api_version": API_VERSION}


def test_variations_are_refused_on_azure_without_a_call(azure_client, fake_openai):
    data = {"image": [(io.BytesIO(PNG), "in.png")], "model": "dall-e-2"}
    response = azure_client.post("/variations", data=data, content_type="multipart/form-data")

    assert response.status_code == 400, response.get_json()
    assert fake_openai.image_requests == []
