"""The service under real Gunicorn: slow upstreams do not stall other callers, count>1 fans
out in parallel, SIGTERM lets in-flight generations finish, and the key never reaches a log."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator

import pytest

from tests.support import fake_openai as fake
from tests.support.gunicorn_server import Service, run_gunicorn
from tests.support.service import TEST_KEY, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path, fake_openai) -> Iterator[Service]:
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    env = {
        "GUNICORN_GRACEFUL_TIMEOUT": "20",
        "IMAGE_GEN_FSYNC": "true",
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
    }
    with run_gunicorn(tmp_path, env) as svc:
        yield svc


def in_background(fn, *args):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=fn(*args)), daemon=True)
    thread.start()
    return thread, result


def test_slow_generation_does_not_stall_other_callers(service, fake_openai):
    fake_openai.enqueue(fake.slow(4))
    slow, slow_result = in_background(service.request, "POST", "/generate", {"prompt": "slow"})
    wait_for(lambda: len(fake_openai.image_requests) == 1, 10.0, "the upstream call")

    health = service.request("GET", "/health")
    quick = service.request("POST", "/generate", {"prompt": "quick"})

    assert health[0] == 200 and quick[0] == 200
    assert slow.is_alive(), "the other callers finished while the slow call was still running"
    slow.join(timeout=30)
    assert slow_result["value"][0] == 200


def test_count_on_one_image_model_calls_upstream_in_parallel(service, fake_openai):
    fake_openai.latency = 1.5

    status, body = service.request(
        "POST", "/generate", {"prompt": "four", "model": "dall-e-3", "count": 4}
    )

    assert status == 200, body
    calls = fake_openai.image_requests
    assert len(calls) == 4
    # Every call reached the upstream before the first could have been answered.
    arrivals = sorted(c.time for c in calls)
    assert arrivals[-1] - arrivals[0] < fake_openai.latency


def test_sigterm_lets_an_in_flight_generation_finish(service, fake_openai):
    fake_openai.enqueue(fake.slow(2))
    call, result = in_background(service.request, "POST", "/generate", {"prompt": "finish me"})
    wait_for(lambda: len(fake_openai.image_requests) == 1, 10.0, "the upstream call")

    service.process.send_signal(signal.SIGTERM)
    call.join(timeout=30)

    status, body = result["value"]
    assert status == 200
    job_id = json.loads(body)["job_id"]
    assert (service.images / job_id / "metadata.json").is_file()
    assert service.process.wait(timeout=30) == 0


def test_key_never_reaches_logs_responses_or_metadata(service, fake_openai):
    responses = [
        service.request("GET", "/health"),
        service.request("POST", "/generate", {"prompt": "ok", "count": 2}),
    ]
    fake_openai.enqueue(fake.invalid_api_key())
    responses.append(service.request("POST", "/generate", {"prompt": "bad key"}))
    fake_openai.enqueue(fake.bad_request(f"echo {TEST_KEY}"))
    responses.append(service.request("POST", "/generate", {"prompt": "echo"}))
    service.process.send_signal(signal.SIGTERM)
    service.process.wait(timeout=30)

    for _, body in responses:
        assert TEST_KEY.encode() not in body
    assert TEST_KEY not in service.log.read_text()
    for path in service.images.rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes()
    assert "path=/generate status=200" in service.log.read_text()
