"""Client tokens, spending caps, costs and GET /usage, through the HTTP API."""

from __future__ import annotations

import math
import sqlite3
import threading

import openai
import pytest
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from imagegen.access.tokens import Limits
from imagegen.books.interfaces import CapExceeded
from imagegen.books.sqlite import SQLiteCapsBook
from imagegen.services import services
from tests.support import fake_openai as fake
from tests.support.service import (
    ALICE,
    BOB,
    OPS,
    TEST_KEY,
    bearer,
    job_files,
    line,
    read_metadata,
    wait_for,
)

# The fake upstream reports 50 text input tokens and 1056 image output tokens per image:
# at gpt-image-2's $5 and $30 per 1M tokens that is $0.00025 + $0.03168 per image.
ONE_IMAGE_USD = 0.00025 + 0.03168


@pytest.fixture
def team(with_tokens) -> FlaskClient:
    return with_tokens(line("alice", ALICE), line("bob", BOB), line("ops", OPS, "admin"))


# --- who may call ---------------------------------------------------------------------------


def test_an_open_service_serves_without_a_token_and_says_it_is_open(client, fake_openai):
    health = client.get("/health").get_json()
    assert health["auth_required"] is False
    response = client.post("/generate", json={"prompt": "a fox"})
    assert response.status_code == 200
    assert response.get_json()["client"] == "anonymous"


def test_an_open_service_ignores_an_authorization_header(client, fake_openai):
    response = client.post("/generate", json={"prompt": "a fox"}, headers=bearer("anything"))
    assert response.status_code == 200


def test_without_a_token_every_endpoint_but_health_answers_401(team, fake_openai, images_dir):
    for method, path in [
        ("POST", "/generate"),
        ("GET", "/images"),
        ("GET", "/models"),
        ("GET", "/usage"),
        ("GET", "/openapi.json"),
        ("GET", "/images/6f1c2d3e-0000-4000-8000-000000000000"),
        ("POST", "/v1/images/generations"),
    ]:
        response = team.open(path, method=method, json={"prompt": "a fox"})
        assert response.status_code == 401, path
        body = response.get_json()
        if path.startswith("/v1/"):  # OpenAI's error shape
            assert body["error"]["code"] == "authentication_required"
        else:
            assert (body["status"], body["code"]) == ("failed", "AUTHENTICATION_REQUIRED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    health = team.get("/health")
    assert health.status_code == 200 and health.get_json()["auth_required"] is True
    assert fake_openai.image_requests == []
    assert job_files(images_dir) == [".index"]


@pytest.mark.parametrize(
    "header",
    ["Bearer igt_wrong-0123456789abcdefghijkl", "Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer  a b"],
)
def test_a_wrong_or_malformed_token_answers_401_invalid_token(team, fake_openai, header):
    response = team.post("/generate", json={"prompt": "a fox"}, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.get_json()["code"] == "INVALID_TOKEN"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert fake_openai.image_requests == []


def test_a_valid_token_generates_and_its_name_is_recorded(team, fake_openai, images_dir):
    response = team.post("/generate", json={"prompt": "a fox"}, headers=bearer(ALICE))
    assert response.status_code == 200
    body = response.get_json()
    assert body["client"] == "alice"
    assert read_metadata(images_dir, body["job_id"])["client"] == "alice"
    image = team.get(body["images"][0]["url"], headers=bearer(BOB))
    assert image.status_code == 200 and image.mimetype == "image/png"


def test_an_admin_token_cannot_generate_but_reads_everyone_s_usage(team, fake_openai):
    refused = team.post("/generate", json={"prompt": "a fox"}, headers=bearer(OPS))
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "PERMISSION_DENIED"
    assert fake_openai.image_requests == []
    team.post("/generate", json={"prompt": "a fox", "count": 2}, headers=bearer(ALICE))
    usage = team.get("/usage", headers=bearer(OPS)).get_json()
    by_name = {entry["name"]: entry for entry in usage["tokens"]}
    assert set(by_name) == {"alice", "bob", "ops"}
    assert by_name["alice"]["images_last_hour"] == 2
    assert by_name["bob"]["images_last_hour"] == 0
    assert usage["global"]["images_last_day"] == 2


def test_a_client_token_sees_only_its_own_usage(team, fake_openai):
    team.post("/generate", json={"prompt": "a fox", "count": 3}, headers=bearer(ALICE))
    team.post("/generate", json={"prompt": "a cat"}, headers=bearer(BOB))
    usage = team.get("/usage", headers=bearer(BOB)).get_json()
    assert "tokens" not in usage
    assert usage["token"]["name"] == "bob"
    assert usage["token"]["images_last_hour"] == 1
    assert usage["token"]["usd_last_day"] == pytest.approx(ONE_IMAGE_USD)
    assert usage["global"]["images_last_hour"] == 4


@pytest.mark.parametrize(
    ("options", "body", "field"),
    [
        ("models=dall-e-3", {"model": "gpt-image-2"}, "model"),
        ("sizes=1024x1024", {"size": "1536x1024"}, "size"),
        ("qualities=low,medium", {"quality": "high"}, "quality"),
        ("qualities=low", {}, "quality"),  # no quality means "auto", which may cost the most
        ("max_count=2", {"count": 3}, "count"),
    ],
)
def test_a_token_limited_to_some_choices_is_refused_others(
    with_tokens, fake_openai, images_dir, options, body, field
):
    client = with_tokens(line("alice", ALICE, options))
    response = client.post("/generate", json={"prompt": "a fox", **body}, headers=bearer(ALICE))
    assert response.status_code == 403
    assert response.get_json()["code"] == "PERMISSION_DENIED"
    assert response.get_json()["field"] == field
    assert fake_openai.image_requests == []
    assert job_files(images_dir) == [".index"]


def test_a_token_limited_to_some_choices_may_use_them(with_tokens, fake_openai):
    client = with_tokens(line("alice", ALICE, "models=gpt-image-2", "qualities=low", "max_count=2"))
    response = client.post(
        "/generate", json={"prompt": "a fox", "quality": "low", "count": 2}, headers=bearer(ALICE)
    )
    assert response.status_code == 200


def test_the_openai_sdk_uses_a_client_token_as_its_api_key(team, fake_openai, images_dir):
    # The SDK needs a real socket: Werkzeug serves the app for this test.
    server = make_server("127.0.0.1", 0, team.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/v1"
        sdk = openai.OpenAI(api_key=ALICE, base_url=base, max_retries=0)
        result = sdk.images.generate(model="gpt-image-2", prompt="a fox")
        assert result.data[0].b64_json
        wrong = openai.OpenAI(api_key="igt_not-a-token-000000000000", base_url=base, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.images.generate(model="gpt-image-2", prompt="a fox")
    finally:
        server.shutdown()
        thread.join(5)
    assert len(fake_openai.image_requests) == 1
    assert fake_openai.image_requests[0].header("Authorization") == f"Bearer {TEST_KEY}"


# --- caps -----------------------------------------------------------------------------------


def test_a_token_over_its_hourly_cap_gets_429_quota_exceeded_with_retry_after(
    with_tokens, fake_openai
):
    client = with_tokens(line("alice", ALICE, "images_per_hour=3"), line("bob", BOB))
    ok = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=bearer(ALICE))
    assert ok.status_code == 200
    refused = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=bearer(ALICE))
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["code"] == "QUOTA_EXCEEDED"
    assert (body["scope"], body["cap"], body["limit"], body["used"]) == (
        "token",
        "images_per_hour",
        3,
        2,
    )
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    assert body["retry_after"] == int(refused.headers["Retry-After"])
    assert len(fake_openai.image_requests) == 1  # the refusal made no upstream call
    # One more image still fits, and another token is not affected.
    assert client.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE)).status_code == 200
    assert client.post("/generate", json={"prompt": "a"}, headers=bearer(BOB)).status_code == 200


def test_global_caps_hold_across_tokens_and_on_an_open_service(
    with_tokens, settings, make_app, fake_openai, tmp_path
):
    client = with_tokens(line("alice", ALICE), line("bob", BOB), cap_images_per_day=3)
    assert (
        client.post(
            "/generate", json={"prompt": "a", "count": 2}, headers=bearer(ALICE)
        ).status_code
        == 200
    )
    refused = client.post("/generate", json={"prompt": "a", "count": 2}, headers=bearer(BOB))
    assert refused.status_code == 429
    assert refused.get_json()["scope"] == "global"
    open_client = make_app(
        settings, images_dir=tmp_path / "open", cap_images_per_hour=1
    ).test_client()
    assert open_client.post("/generate", json={"prompt": "a"}).status_code == 200
    assert open_client.post("/generate", json={"prompt": "a"}).status_code == 429


def test_a_request_larger_than_a_whole_cap_is_a_validation_error_not_a_wait(
    with_tokens, fake_openai
):
    client = with_tokens(line("alice", ALICE, "images_per_hour=2"))
    response = client.post("/generate", json={"prompt": "a", "count": 3}, headers=bearer(ALICE))
    assert response.status_code == 400
    assert response.get_json()["code"] == "VALIDATION_ERROR"
    assert "Retry-After" not in response.headers


def test_the_dollar_cap_reserves_the_estimate_and_counts_the_real_cost(with_tokens, fake_openai):
    # A high-quality 1024x1024 gpt-image-2 image is estimated at $0.211 and, from the fake's
    # usage, really costs ~$0.032. With a $0.25 cap two fit (the first is settled at its real
    # cost before the second is reserved); the third estimate would cross it.
    client = with_tokens(line("alice", ALICE, "usd_per_day=0.25"))
    ask = {"prompt": "a", "quality": "high", "size": "1024x1024"}
    first = client.post("/generate", json=ask, headers=bearer(ALICE))
    assert first.status_code == 200
    assert first.get_json()["cost"] == {
        "estimated_usd": 0.211,
        "usd": pytest.approx(ONE_IMAGE_USD),
        "basis": "usage",
    }
    assert client.post("/generate", json=ask, headers=bearer(ALICE)).status_code == 200
    third = client.post("/generate", json=ask, headers=bearer(ALICE))
    assert third.status_code == 429
    assert third.get_json()["cap"] == "usd_per_day"
    usage = client.get("/usage", headers=bearer(ALICE)).get_json()["token"]
    assert usage["usd_last_day"] == pytest.approx(2 * ONE_IMAGE_USD)
    assert usage["caps"]["usd_per_day"]["remaining"] == pytest.approx(0.25 - 2 * ONE_IMAGE_USD)


def test_a_failed_upstream_call_gives_its_reservation_back(with_tokens, fake_openai, images_dir):
    client = with_tokens(line("alice", ALICE, "images_per_hour=1"))
    fake_openai.enqueue(*[fake.server_error(500)] * 3)
    failed = client.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE))
    assert failed.status_code == 502
    usage = client.get("/usage", headers=bearer(ALICE)).get_json()["token"]
    assert usage["images_last_hour"] == 0
    assert client.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE)).status_code == 200


def test_costs_are_recorded_in_metadata_for_each_basis(settings, make_app, fake_openai, images_dir):
    client = make_app(settings).test_client()
    gpt = client.post("/generate", json={"prompt": "a", "count": 2}).get_json()
    assert read_metadata(images_dir, gpt["job_id"])["cost"]["usd"] == pytest.approx(
        0.00025 + 0.03168 * 2  # one prompt in, two images out
    )
    dalle = client.post("/generate", json={"prompt": "a", "model": "dall-e-3"}).get_json()
    assert dalle["cost"] == {"estimated_usd": 0.04, "usd": 0.04, "basis": "price_table"}
    hd = client.post(
        "/generate", json={"prompt": "a", "model": "dall-e-3", "quality": "hd", "size": "1792x1024"}
    ).get_json()
    assert hd["cost"]["usd"] == 0.12
    placeholder = make_app(settings, provider="placeholder").test_client()
    free = placeholder.post("/generate", json={"prompt": "a"}).get_json()
    assert free["cost"] == {"estimated_usd": 0.0, "usd": 0.0, "basis": "placeholder"}


def test_retry_after_says_when_the_oldest_images_leave_the_window(tmp_path):
    now = [1_000_000.0]
    ledger = SQLiteCapsBook(tmp_path / "ledger.sqlite3", clock=lambda: now[0])
    ledger.prepare()
    cap = Limits(images_per_hour=3)
    reserve = lambda n: ledger.reserve(  # noqa: E731
        "alice", token_limits=cap, global_limits=Limits(), images=n, usd=0.0, model="gpt-image-2"
    )
    reserve(2)
    now[0] += 100
    reserve(1)
    now[0] += 100
    with pytest.raises(CapExceeded) as raised:
        reserve(1)
    assert raised.value.retry_after == pytest.approx(3400)  # the first 2 images leave first
    with pytest.raises(CapExceeded) as raised:
        reserve(3)
    assert raised.value.retry_after == pytest.approx(3500)  # all three must leave
    now[0] += 3401
    reserve(1)


def test_only_the_token_that_made_a_job_or_an_admin_may_delete_it(team, fake_openai, images_dir):
    made = team.post("/generate", json={"prompt": "a", "count": 2}, headers=bearer(ALICE))
    job = made.get_json()
    first, second = (image["url"] for image in job["images"])
    refused = team.delete(first, headers=bearer(BOB))
    assert refused.status_code == 403 and refused.get_json()["code"] == "PERMISSION_DENIED"
    assert team.delete(f"/jobs/{job['job_id']}", headers=bearer(BOB)).status_code == 403
    assert team.get(first, headers=bearer(BOB)).status_code == 200  # still there
    assert team.delete(first, headers=bearer(ALICE)).status_code == 200
    assert team.delete(f"/jobs/{job['job_id']}", headers=bearer(OPS)).status_code == 200
    assert team.get(second, headers=bearer(ALICE)).status_code == 404


def test_another_token_cannot_delete_an_asynchronous_job_that_was_never_stored(
    with_tokens, fake_openai
):
    team = with_tokens(
        line("alice", ALICE),
        line("bob", BOB),
        line("ops", OPS, "admin"),
        max_running_jobs=1,
        job_poll_interval=0.1,
    )
    runner = services(team.application).jobs
    alice_async = {**bearer(ALICE), "Prefer": "respond-async"}

    def status(job_id: str) -> str:
        return team.get(f"/jobs/{job_id}", headers=bearer(ALICE)).get_json()["status"]

    try:
        fake_openai.enqueue(fake.moderation_blocked())
        failed = team.post("/generate", json={"prompt": "no"}, headers=alice_async)
        failed_id = failed.get_json()["job_id"]
        wait_for(lambda: status(failed_id) == "failed", what="the job failed")
        holder = wait_for(runner.records.take_slot, what="the only slot")  # the next one waits
        queued = team.post("/generate", json={"prompt": "later"}, headers=alice_async)
        queued_id = queued.get_json()["job_id"]

        for job_id in (failed_id, queued_id):
            refused = team.delete(f"/jobs/{job_id}", headers=bearer(BOB))
            assert refused.status_code == 403, refused.get_json()
            assert refused.get_json()["code"] == "PERMISSION_DENIED"
        assert status(failed_id) == "failed"  # still there
        assert team.delete(f"/jobs/{failed_id}", headers=bearer(ALICE)).status_code == 200
        holder.release()
        wait_for(lambda: status(queued_id) == "completed", what="the queued job completed")
        assert team.delete(f"/jobs/{queued_id}", headers=bearer(OPS)).status_code == 200
    finally:
        runner.shutdown(5)


def test_the_sdk_is_told_not_to_retry_a_cap_that_frees_up_in_an_hour(with_tokens, fake_openai):
    client = with_tokens(line("alice", ALICE, "images_per_hour=1"))
    client.post("/generate", json={"prompt": "a"}, headers=bearer(ALICE))
    server = make_server("127.0.0.1", 0, client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sdk = openai.OpenAI(
            api_key=ALICE, base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=2
        )
        with pytest.raises(openai.RateLimitError) as raised:
            sdk.images.generate(model="gpt-image-2", prompt="a fox")
    finally:
        server.shutdown()
        thread.join(5)
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert raised.value.body["code"] == "quota_exceeded"
    usage = client.get("/usage", headers=bearer(ALICE)).get_json()["token"]
    assert usage["images_last_hour"] == 1


@pytest.mark.parametrize(
    "usd",
    [math.inf, math.nan, -math.inf, -0.5, 10**400],
    ids=["inf", "nan", "-inf", "-0.5", "10**400"],
)
def test_the_ledger_never_books_an_amount_that_is_not_finite_dollars(tmp_path, caplog, usd):
    path = tmp_path / "ledger.sqlite3"
    ledger = SQLiteCapsBook(path)
    ledger.prepare()
    caps = {"token_limits": Limits(), "global_limits": Limits(usd_per_day=5.0), "model": "m"}
    reservation = ledger.reserve("alice", images=1, usd=0.25, **caps)

    ledger.settle(reservation, usd=usd, job_id="job")

    assert ledger.usage(None)["usd_last_day"] == 0.25  # the estimate stays
    assert "settled at its estimate" in caplog.text
    with pytest.raises(ValueError, match="not an amount"):
        ledger.reserve("alice", images=1, usd=usd, **caps)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT usd, state FROM spend").fetchall() == [(0.25, "settled")]
    ledger.reserve("alice", images=1, usd=4.75, **caps)  # the cap still has its room


def test_the_ledger_forgets_entries_every_window_has_left_behind(tmp_path):
    now = [1_000_000.0]
    path = tmp_path / "ledger.sqlite3"
    ledger = SQLiteCapsBook(path, clock=lambda: now[0])
    ledger.prepare()
    for _ in range(499):
        ledger.reserve(
            "alice", token_limits=Limits(), global_limits=Limits(), images=1, usd=0.0, model="m"
        )
    now[0] += 3 * 86400
    ledger.reserve(
        "alice", token_limits=Limits(), global_limits=Limits(), images=1, usd=0.0, model="m"
    )
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM spend").fetchone()[0] == 1


def test_every_request_log_line_names_the_token_never_its_secret(team, fake_openai, caplog):
    caplog.set_level("INFO", logger="imagegen")
    team.get("/usage", headers=bearer(BOB))
    team.get("/usage", headers=bearer("igt_wrong-0123456789abcdefghijkl"))
    lines = [r.getMessage() for r in caplog.records if r.name == "imagegen.request"]
    assert any("path=/usage status=200" in m and m.endswith("client=bob") for m in lines)
    assert any("path=/usage status=401" in m and m.endswith("client=-") for m in lines)
    assert not any(BOB in m or "igt_wrong" in m for m in caplog.messages)
