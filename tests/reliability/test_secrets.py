"""Secrets: across many flows (success, errors, a rejected key, an upstream that echoes the key,
crashes with tracebacks, a real Gunicorn run at debug log level) the key, or any identifying
piece of it, never appears in a response, a log line, a traceback or a file in the store."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from imagegen.services import services
from imagegen.settings import Settings
from imagegen.upstream.client import OpenAIClient
from tests.support import fake_openai as fake
from tests.support.reliability import leaked
from tests.support.service import TEST_KEY

ECHO = f"Incorrect API key provided: {TEST_KEY}. Your key is {TEST_KEY[:20]}... ({TEST_KEY})"


def _response_text(response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return headers + "\n" + response.get_data().decode("utf-8", "replace")


def _store_text(root: Path) -> str:
    parts = []
    for path in sorted(root.rglob("*")):
        parts.append(str(path))
        if path.is_file() and not path.is_symlink():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


# Each flow: (setup of the fake, request body). All run against one app, one after another.
FLOWS: list[tuple[str, Callable[[fake.FakeOpenAI], None], dict]] = [
    ("success", lambda f: None, {"prompt": "ok", "count": 2}),
    ("dall-e-url", lambda f: None, {"prompt": "url", "model": "dall-e-3", "count": 2}),
    ("401", lambda f: f.enqueue(fake.invalid_api_key()), {"prompt": "bad key"}),
    (
        "401-echo",
        lambda f: f.enqueue(fake.error(401, ECHO, "invalid_request_error", "invalid_api_key")),
        {"prompt": "echo"},
    ),
    ("400-echo", lambda f: f.enqueue(fake.bad_request(ECHO)), {"prompt": "echo"}),
    ("500-echo", lambda f: f.set_default(fake.server_error(500, ECHO)), {"prompt": "x"}),
    (
        "429-echo",
        lambda f: f.set_default(fake.error(429, ECHO, "requests", "rate_limit_exceeded")),
        {"prompt": "x"},
    ),
    (
        "moderation-echo",
        lambda f: f.enqueue(
            fake.error(400, "safety system: " + ECHO, "image_generation_user_error", None)
        ),
        {"prompt": "x"},
    ),
    (
        "policy-echo",
        lambda f: f.enqueue(
            fake.error(400, ECHO, "invalid_request_error", "content_policy_violation")
        ),
        {"prompt": "x"},
    ),
    ("model-gone-echo", lambda f: f.enqueue(fake.model_not_found(TEST_KEY)), {"prompt": "x"}),
    ("html-echo", lambda f: f.set_default(fake.non_json(502, ECHO.encode())), {"prompt": "x"}),
    (
        "200-echo-not-json",
        lambda f: f.enqueue(fake.non_json(200, ECHO.encode(), "application/json")),
        {"prompt": "x"},
    ),
    (
        "revised-prompt-echo",
        lambda f: f.enqueue(
            fake.FakeResponse(
                kind="raw",
                body=json.dumps(
                    {"data": [{"b64_json": "!!", "revised_prompt": ECHO}], "created": 1}
                ).encode(),
            )
        ),
        {"prompt": "x"},
    ),
    ("url-with-key", lambda f: f.enqueue(fake.url_to(f"file:///{TEST_KEY}")), {"prompt": "x"}),
    (
        "url-404-echo",
        lambda f: f.enqueue(fake.file_url_status(404, "text/plain", ECHO.encode())),
        {"prompt": "x", "model": "dall-e-2"},
    ),
    ("drop", lambda f: f.set_default(fake.drop_connection()), {"prompt": "x"}),
    ("invalid", lambda f: None, {"prompt": 5, "model": "dall-e-9"}),
    ("lone-surrogate-crash", lambda f: None, {"prompt": "\ud800 crash"}),
]


def test_the_key_never_leaks_through_responses_logs_tracebacks_or_files(
    settings, make_app, fake_openai, images_dir, service_logs
):
    client = make_app(replace(settings, max_retries=1)).test_client()
    seen: list[str] = []

    for name, setup, body in FLOWS:
        fake_openai.reset()
        setup(fake_openai)
        data = json.dumps(body)  # ensure_ascii: a lone surrogate travels as \ud800
        response = client.post("/generate", data=data, content_type="application/json")
        seen.append(f"--- {name}\n{_response_text(response)}")
        for record in fake_openai.requests:
            if not record.path.startswith("/v1/"):  # the key must not travel to image URLs
                assert record.header("authorization") is None, (name, record.path)
        if response.status_code == 200:
            for image in response.get_json()["images"]:
                seen.append(_response_text(client.get(image["url"])))
                seen.append(_response_text(client.delete(image["url"])))
    for path in ("/health", "/models", "/nope", "/images/x", "/openapi.json", "/"):
        seen.append(_response_text(client.get(path)))

    everything = "\n".join(seen)
    assert leaked(everything) == [], "the key is in a response"
    assert leaked(service_logs.text) == [], "the key is in the log"
    assert leaked(_store_text(images_dir)) == [], "the key is in the store"


@pytest.mark.parametrize(
    "where,response",
    [
        (
            "param",
            fake.error(400, "bad", "invalid_request_error", param=f"size {TEST_KEY}"),
        ),
        (
            "code",
            fake.error(400, "bad", "invalid_request_error", code=TEST_KEY),
        ),
        (
            "type",
            fake.error(400, "bad", TEST_KEY),
        ),
        (
            "x-request-id",
            fake.error(500, "bad", "server_error", headers={"x-request-id": TEST_KEY}),
        ),
    ],
)
def test_the_key_echoed_in_any_upstream_error_field_is_redacted(
    settings, make_app, fake_openai, service_logs, where, response
):
    client = make_app(replace(settings, max_retries=0)).test_client()
    fake_openai.enqueue(response)

    answer = client.post("/generate", json={"prompt": "x"})

    assert answer.status_code in (400, 502)
    assert leaked(_response_text(answer)) == [], f"the key in {where} reached the response"
    assert leaked(service_logs.text) == [], f"the key in {where} reached the log"


def test_reprs_and_settings_never_show_the_key(settings, make_app, tmp_path, service_logs):
    app = make_app(settings)
    parts = services(app)
    client = OpenAIClient(settings.base_url, TEST_KEY)
    env_settings = Settings.from_env(
        {
            "OPENAI_API_KEY_FILE": str(tmp_path / "missing"),
            "OPENAI_API_KEY": TEST_KEY,
            "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "env-images"),
        }
    )

    texts = [
        repr(settings),
        str(settings),
        repr(env_settings),
        repr(client),
        repr(parts),
        repr(vars(parts.provider)),
        repr(app.config),
    ]

    assert env_settings.api_key == TEST_KEY and env_settings.api_key_source == "env"
    for text in texts:
        assert leaked(text) == [], text[:300]
    assert leaked(service_logs.text) == []


@pytest.mark.slow
def test_a_real_gunicorn_run_at_debug_level_never_logs_the_key(start_gunicorn, fake_openai):
    """The key comes from the OPENAI_API_KEY fallback (the riskier path) and Gunicorn logs
    at debug level, which prints its whole configuration."""
    service = start_gunicorn(
        workers=1,
        threads=4,
        key=None,
        env={"OPENAI_API_KEY": TEST_KEY, "GUNICORN_LOG_LEVEL": "debug", "OPENAI_MAX_RETRIES": "0"},
    )
    answers = [
        service.request("GET", "/health"),
        service.request("POST", "/generate", {"prompt": "ok"}),
    ]
    for response in (
        fake.invalid_api_key(),
        fake.bad_request(ECHO),
        fake.server_error(500, ECHO),
        fake.non_json(502, ECHO.encode()),
    ):
        fake_openai.enqueue(response)
        answers.append(service.request("POST", "/generate", {"prompt": "flow"}))
    answers.append(service.request("POST", "/generate", {"prompt": "\ud800"}))
    answers.append(service.raw(b"GET /health HTTP/1.1\r\n" + b"X-H: v\r\n" * 200 + b"\r\n"))
    service.process.send_signal(signal.SIGTERM)
    service.process.wait(timeout=20)

    assert answers[0].json()["api_key_source"] == "env"
    for answer in answers:
        assert leaked(answer.body) == [] and leaked(json.dumps(answer.headers)) == []
    log = service.log_text()
    assert "path=/generate" in log
    assert leaked(log) == [], "the key is in Gunicorn's log"
    assert leaked(_store_text(service.images)) == []
