"""Idempotency-Key: a retried POST runs once and gets the first answer."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support import fake_openai as fake
from tests.support.jobs import finished
from tests.support.service import ALICE, BOB, bearer, job_files, line


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def test_a_retry_with_the_same_key_and_body_replays_the_first_answer(client, fake_openai):
    first = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=key("k-1"))
    again = client.post("/generate", json={"count": 2, "prompt": "a fox"}, headers=key("k-1"))
    assert first.status_code == again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(fake_openai.image_requests) == 1


def test_the_same_key_with_another_body_is_a_422(client, fake_openai, images_dir):
    client.post("/generate", json={"prompt": "a fox"}, headers=key("k-2"))
    before = job_files(images_dir)
    other = client.post("/generate", json={"prompt": "a cat"}, headers=key("k-2"))
    assert other.status_code == 422
    assert other.get_json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert job_files(images_dir) == before
    assert len(fake_openai.image_requests) == 1


def test_a_new_key_or_no_key_makes_a_new_job(client, fake_openai):
    one = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-3"))
    two = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-4"))
    three = client.post("/generate", json={"prompt": "a fox"})
    assert len({r.get_json()["job_id"] for r in (one, two, three)}) == 3


def test_keys_belong_to_one_token(with_tokens, fake_openai):
    client = with_tokens(line("alice", ALICE), line("bob", BOB))
    body = {"prompt": "a fox"}
    alice = client.post("/generate", json=body, headers={**bearer(ALICE), **key("shared")})
    bob = client.post("/generate", json=body, headers={**bearer(BOB), **key("shared")})
    assert alice.get_json()["job_id"] != bob.get_json()["job_id"]
    assert len(fake_openai.image_requests) == 2


def test_after_a_failure_the_key_is_free_and_the_retry_runs(client, fake_openai):
    fake_openai.enqueue(*[fake.server_error(500)] * 3)
    failed = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-5"))
    assert failed.status_code == 502
    retried = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-5"))
    assert retried.status_code == 200
    replay = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-5"))
    assert replay.get_json()["job_id"] == retried.get_json()["job_id"]
    assert len(fake_openai.image_requests) == 4  # 3 failed attempts, then one success


def test_a_retry_while_the_first_call_runs_waits_for_its_answer(app, fake_openai):
    fake_openai.enqueue(fake.slow(1.5))
    answers: dict[str, object] = {}

    def call(name: str) -> None:
        response = app.test_client().post(
            "/generate", json={"prompt": "slow fox"}, headers=key("k-6")
        )
        answers[name] = response

    first = threading.Thread(target=call, args=("first",))
    first.start()
    deadline = time.monotonic() + 5
    while not fake_openai.image_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    first.join(20)
    second.join(20)
    assert answers["first"].status_code == answers["second"].status_code == 200
    assert answers["second"].get_json()["job_id"] == answers["first"].get_json()["job_id"]
    assert answers["second"].headers["Idempotent-Replayed"] == "true"
    assert len(fake_openai.image_requests) == 1


def test_a_replay_names_the_prefer_and_webhook_headers_it_did_not_apply(client, fake_openai):
    body = {"prompt": "a fox"}
    first = client.post("/generate", json=body, headers={**key("k-9"), "Prefer": "respond-async"})
    assert first.status_code == 202
    job_id = first.get_json()["job_id"]

    replay = client.post(
        "/generate",
        json=body,
        headers={
            **key("k-9"),
            "Prefer": "wait=5",
            "Webhook-URL": "https://agent.example.com/hooks/image",
            "Webhook-Secret": "a-webhook-secret-for-tests-0123456789",
        },
    )

    assert replay.status_code == 202 and replay.get_json()["job_id"] == job_id
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Idempotent-Replay-Ignored"] == "Prefer, Webhook-URL, Webhook-Secret"
    assert replay.headers["Preference-Applied"] == "respond-async"  # the first request's
    assert "webhook" not in client.get(f"/jobs/{job_id}").get_json()
    plain = client.post("/generate", json=body, headers=key("k-9"))
    assert plain.get_json()["job_id"] == job_id
    assert "Idempotent-Replay-Ignored" not in plain.headers
    assert "Idempotent-Replay-Ignored" not in first.headers
    assert finished(client, job_id)["status"] == "completed"  # nothing waited for it
    assert len(fake_openai.image_requests) == 1


def test_keys_expire_after_the_configured_time(settings, make_app, fake_openai):
    client = make_app(settings, idempotency_ttl=0.5).test_client()
    first = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-7"))
    time.sleep(0.6)
    later = client.post("/generate", json={"prompt": "a fox"}, headers=key("k-7"))
    assert later.get_json()["job_id"] != first.get_json()["job_id"]
    assert "Idempotent-Replayed" not in later.headers


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_a_validation_error(client, fake_openai, value):
    response = client.post(
        "/generate", json={"prompt": "a fox"}, headers={"Idempotency-Key": value}
    )
    assert response.status_code == 400
    assert response.get_json()["code"] == "VALIDATION_ERROR"
    assert fake_openai.image_requests == []


def test_the_openai_compatible_endpoint_honours_the_key(client, fake_openai):
    body = {"model": "gpt-image-2", "prompt": "a fox"}
    one = client.post("/v1/images/generations", json=body, headers=key("k-8"))
    two = client.post("/v1/images/generations", json=body, headers=key("k-8"))
    assert one.status_code == 200 and two.get_json() == one.get_json()
    assert len(fake_openai.image_requests) == 1
