"""Upstream faults from the fake server: each ends in the documented code, or in success after
bounded retries, within a bounded time, and leaves no partial file or orphan directory."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from tests.support import fake_openai as fake
from tests.support.reliability import assert_client_error, snapshot, store_problems

EMPTY_STORE = {".index": ("dir", "")}


@pytest.fixture
def fault_settings(settings):
    """Short timeouts, two retries with tiny backoff, Retry-After honoured up to 2 s."""
    return replace(
        settings,
        read_timeout=0.6,
        request_deadline=4.0,
        max_retries=2,
        retry_backoff=0.01,
        max_retry_wait=2.0,
    )


@pytest.fixture
def fault_client(fault_settings, make_app):
    return make_app(fault_settings).test_client()


def _png(size: int = 8) -> bytes:
    return fake.make_png(size, size, (10, 200, 30))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Fault:
    """A scripted upstream behaviour and what the service must make of it."""

    setup: Callable[[fake.FakeOpenAI], None]
    status: int
    code: str | None  # None for success
    calls: tuple[int, int]  # inclusive range of upstream /images calls
    seconds: float  # the whole request must end within this
    model: str = "gpt-image-2"
    count: int = 1
    retry_after: str | None = None
    settings: dict[str, Any] | None = None


def _queue(*responses: fake.FakeResponse) -> Callable[[fake.FakeOpenAI], None]:
    return lambda f: f.enqueue(*responses)


def _default(response: fake.FakeResponse) -> Callable[[fake.FakeOpenAI], None]:
    return lambda f: f.set_default(response)


def _latency(seconds: float) -> Callable[[fake.FakeOpenAI], None]:
    def setup(f: fake.FakeOpenAI) -> None:
        f.latency = seconds

    return setup


def _raw(status: int, body: bytes, headers: dict[str, str] | None = None) -> fake.FakeResponse:
    return fake.FakeResponse(kind="raw", status=status, body=body, headers=headers or {})


def _with_headers(response: fake.FakeResponse, **headers: str) -> fake.FakeResponse:
    return replace(response, headers={**response.headers, **headers})


FAULTS: dict[str, Fault] = {
    # --- connection-level faults: retried, then 502 ---------------------------------------
    "drop-once-then-ok": Fault(_queue(fake.drop_connection()), 200, None, (2, 2), 3),
    "drop-always": Fault(_default(fake.drop_connection()), 502, "UPSTREAM_ERROR", (3, 3), 3),
    "reset-mid-body-once": Fault(_queue(fake.reset_mid_body()), 200, None, (2, 2), 3),
    "reset-mid-body-always": Fault(
        _default(fake.reset_mid_body()), 502, "UPSTREAM_ERROR", (3, 3), 3
    ),
    # --- timeouts: per attempt (read timeout) and overall (request deadline) --------------
    "slow-once-then-ok": Fault(_queue(fake.slow(2)), 200, None, (2, 2), 3),
    "slow-always": Fault(_latency(3), 504, "UPSTREAM_TIMEOUT", (1, 3), 3),
    "slower-than-deadline": Fault(
        _latency(6),
        504,
        "UPSTREAM_TIMEOUT",
        (1, 1),
        3,
        settings={"read_timeout": 30.0, "request_deadline": 1.5},
    ),
    # --- answers we cannot use: not retried, 502 ------------------------------------------
    "truncated-b64": Fault(_queue(fake.truncated_b64()), 502, "UPSTREAM_ERROR", (1, 1), 2),
    "invalid-b64": Fault(_queue(fake.invalid_b64()), 502, "UPSTREAM_ERROR", (1, 1), 2),
    "b64-of-half-a-png": Fault(
        _queue(fake.FakeResponse(b64_json=_b64(_png(32)[:60]))), 502, "UPSTREAM_ERROR", (1, 1), 2
    ),
    "b64-not-an-image": Fault(_queue(fake.not_an_image()), 502, "UPSTREAM_ERROR", (1, 1), 2),
    "b64-html": Fault(
        _queue(fake.FakeResponse(b64_json=_b64(b"<html><body>hi</body></html>"))),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
    ),
    "too-few-images": Fault(
        _queue(_raw(200, b'{"created": 1, "data": []}')), 502, "UPSTREAM_ERROR", (1, 1), 2
    ),
    "data-not-a-list": Fault(
        _queue(_raw(200, b'{"created": 1, "data": {"b64_json": "x"}}')),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
    ),
    "item-not-an-object": Fault(
        _queue(_raw(200, b'{"data": ["iVBORw0KGgo="]}')), 502, "UPSTREAM_ERROR", (1, 1), 2
    ),
    "b64-wrong-type": Fault(
        _queue(_raw(200, b'{"data": [{"b64_json": 12345}]}')), 502, "UPSTREAM_ERROR", (1, 1), 2
    ),
    "200-html": Fault(
        _queue(fake.non_json(200, b"<html>gateway</html>")), 502, "UPSTREAM_ERROR", (1, 1), 2
    ),
    "200-empty": Fault(_queue(_raw(200, b"")), 502, "UPSTREAM_ERROR", (1, 1), 2),
    "200-json-array": Fault(_queue(_raw(200, b"[1, 2]")), 502, "UPSTREAM_ERROR", (1, 1), 2),
    "image-over-the-cap": Fault(
        lambda f: f.set_image_size(300_000),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        3,
        settings={"max_image_bytes": 100_000},
    ),
    "answer-over-the-cap": Fault(
        lambda f: f.set_image_size(300_000),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        3,
        settings={"max_upstream_bytes": 200_000},
    ),
    # --- DALL-E URLs: 404, HTML, 5xx, foreign schemes -------------------------------------
    "url-404": Fault(
        _queue(fake.file_url_status(404, "application/xml", b"<Error>BlobNotFound</Error>")),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
        model="dall-e-3",
    ),
    "url-serves-html": Fault(
        _queue(fake.file_url_status(200, "text/html", b"<!doctype html><title>x</title>")),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
        model="dall-e-3",
    ),
    "url-html-labelled-png": Fault(
        _queue(fake.file_url_status(200, "image/png", b"<html>not a png</html>")),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
        model="dall-e-2",
    ),
    "url-500": Fault(
        _queue(fake.file_url_status(500, "text/plain", b"oops")),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        3,
        model="dall-e-3",
    ),
    "url-file-scheme": Fault(
        _queue(fake.url_to("file:///etc/passwd")), 502, "UPSTREAM_ERROR", (1, 1), 2, "dall-e-3"
    ),
    "url-redirect-to-file": Fault(
        _queue(fake.redirect_url("file:///etc/passwd")),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
        model="dall-e-3",
    ),
    "url-ftp-scheme": Fault(
        _queue(fake.url_to("ftp://127.0.0.1/x.png")), 502, "UPSTREAM_ERROR", (1, 1), 2, "dall-e-2"
    ),
    "url-one-of-three-404": Fault(
        _queue(fake.success(), fake.file_url_status(404), fake.success()),
        502,
        "UPSTREAM_ERROR",
        (3, 3),
        3,
        model="dall-e-3",
        count=3,
    ),
    # --- non-JSON and odd error bodies ----------------------------------------------------
    "502-html": Fault(_default(fake.non_json(502)), 502, "UPSTREAM_ERROR", (3, 3), 3),
    "500-plain-text": Fault(
        _default(fake.non_json(500, b"Internal Server Error", "text/plain")),
        502,
        "UPSTREAM_ERROR",
        (3, 3),
        3,
    ),
    "503-empty-body": Fault(_default(_raw(503, b"")), 502, "UPSTREAM_ERROR", (3, 3), 3),
    "500-error-is-a-string": Fault(
        _default(_raw(500, b'{"error": "boom"}')), 502, "UPSTREAM_ERROR", (3, 3), 3
    ),
    "400-html": Fault(
        _queue(fake.non_json(400, b"<html>400 Bad Request</html>")),
        400,
        "VALIDATION_ERROR",
        (1, 1),
        2,
    ),
    "400-error-null": Fault(
        _queue(_raw(400, b'{"error": null}')), 400, "VALIDATION_ERROR", (1, 1), 2
    ),
    "429-plain-text": Fault(
        _default(fake.non_json(429, b"Too Many Requests", "text/plain")),
        429,
        "RATE_LIMIT_EXCEEDED",
        (3, 3),
        3,
    ),
    # --- 5xx that recover, or not ---------------------------------------------------------
    "500-once-then-ok": Fault(_queue(fake.server_error()), 200, None, (2, 2), 3),
    "500-twice-then-ok": Fault(
        _queue(fake.server_error(), fake.server_error(503)), 200, None, (3, 3), 3
    ),
    "500-three-times": Fault(_queue(*[fake.server_error()] * 3), 502, "UPSTREAM_ERROR", (3, 3), 3),
    "500-should-not-retry": Fault(
        _default(_with_headers(fake.server_error(), **{"x-should-retry": "false"})),
        502,
        "UPSTREAM_ERROR",
        (1, 1),
        2,
    ),
    "fan-out-one-branch-fails": Fault(
        lambda f: (f.enqueue(fake.success()), f.set_default(fake.server_error())),
        502,
        "UPSTREAM_ERROR",
        (3, 7),
        4,
        model="dall-e-3",
        count=3,
    ),
    "fan-out-recovers": Fault(
        _queue(fake.server_error(), fake.drop_connection()),
        200,
        None,
        (5, 5),
        4,
        model="dall-e-3",
        count=3,
    ),
    # --- 429 storms and Retry-After in every shape ----------------------------------------
    "429-storm": Fault(
        _default(fake.rate_limited("1")), 429, "RATE_LIMIT_EXCEEDED", (3, 3), 3.5, retry_after="1"
    ),
    "429-once-then-ok": Fault(_queue(fake.rate_limited("0.2")), 200, None, (2, 2), 2),
    "429-retry-after-an-hour": Fault(
        _default(fake.rate_limited("3600")),
        429,
        "RATE_LIMIT_EXCEEDED",
        (1, 1),
        1.5,
        retry_after="3600",
    ),
    "429-retry-after-ms": Fault(
        _default(fake.rate_limited(None, retry_after_ms="150")),
        429,
        "RATE_LIMIT_EXCEEDED",
        (3, 3),
        2,
        retry_after="1",
    ),
    "429-retry-after-ms-1e20": Fault(
        _default(fake.rate_limited(None, retry_after_ms="1e20")),
        429,
        "RATE_LIMIT_EXCEEDED",
        (1, 1),
        1.5,
        retry_after="86400",
    ),
    "429-retry-after-decimal": Fault(
        _default(fake.rate_limited("0.3")), 429, "RATE_LIMIT_EXCEEDED", (3, 3), 2, retry_after="1"
    ),
    "429-retry-after-past-date": Fault(
        _default(fake.rate_limited("Wed, 21 Oct 2015 07:28:00 GMT")),
        429,
        "RATE_LIMIT_EXCEEDED",
        (3, 3),
        2,
    ),
    "429-retry-after-garbage": Fault(
        _default(fake.rate_limited("soon, maybe")), 429, "RATE_LIMIT_EXCEEDED", (3, 3), 2
    ),
    "429-retry-after-nan": Fault(
        _default(fake.rate_limited("NaN")), 429, "RATE_LIMIT_EXCEEDED", (3, 3), 2
    ),
    "429-retry-after-negative": Fault(
        _default(fake.rate_limited("-30")), 429, "RATE_LIMIT_EXCEEDED", (3, 3), 2
    ),
    "429-retry-after-huge-number": Fault(
        _default(fake.rate_limited("1e999")), 429, "RATE_LIMIT_EXCEEDED", (1, 3), 2
    ),
    "429-retry-after-year-9999": Fault(
        _default(fake.rate_limited("Fri, 31 Dec 9999 23:59:59 GMT")),
        429,
        "RATE_LIMIT_EXCEEDED",
        (1, 1),
        1.5,
    ),
    "429-insufficient-quota": Fault(
        _default(fake.insufficient_quota()), 500, "SERVICE_ERROR", (1, 1), 1.5
    ),
    # --- errors that are the client's or the operator's -----------------------------------
    "401-bad-key": Fault(_default(fake.invalid_api_key()), 500, "SERVICE_ERROR", (1, 1), 1.5),
    "moderation-blocked": Fault(
        _queue(fake.moderation_blocked()), 400, "CONTENT_POLICY_VIOLATION", (1, 1), 1.5
    ),
    "model-not-found": Fault(
        _queue(fake.model_not_found("gpt-image-2")), 400, "VALIDATION_ERROR", (1, 1), 1.5
    ),
    "400-never-retried": Fault(
        _default(fake.bad_request("Invalid size", param="size")),
        400,
        "VALIDATION_ERROR",
        (1, 1),
        1.5,
    ),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_upstream_fault_ends_in_the_documented_answer_in_bounded_time_leaving_no_debris(
    fault_settings, make_app, fake_openai, images_dir, name
):
    fault = FAULTS[name]
    client = make_app(fault_settings, **(fault.settings or {})).test_client()
    fault.setup(fake_openai)

    started = time.monotonic()
    response = client.post(
        "/generate", json={"prompt": "a fault", "model": fault.model, "count": fault.count}
    )
    elapsed = time.monotonic() - started

    calls = len(fake_openai.image_requests)
    assert fault.calls[0] <= calls <= fault.calls[1], (calls, response.get_json())
    assert elapsed <= fault.seconds, f"took {elapsed:.2f}s"
    assert store_problems(images_dir) == []
    if fault.code is None:
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert len(body["images"]) == fault.count
        jobs = [p for p in images_dir.iterdir() if not p.name.startswith(".")]
        assert len(jobs) == 1
        for image in body["images"]:
            assert client.get(image["url"]).status_code == 200
        return
    payload = assert_client_error(response, fault.status, fault.code)
    assert snapshot(images_dir) == EMPTY_STORE, "a failed job left files behind"
    if fault.status == 429:
        retry_after = response.headers["Retry-After"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert payload["retry_after"] == int(retry_after)
        if fault.retry_after is not None:
            assert retry_after == fault.retry_after


def test_file_urls_are_never_fetched(fault_client, fake_openai, images_dir):
    """A foreign-scheme URL fails without any request, to the fake or elsewhere."""
    fake_openai.enqueue(fake.url_to("file:///run/secrets/openai_api_key"))

    response = fault_client.post("/generate", json={"prompt": "x", "model": "dall-e-3"})

    assert_client_error(response, 502, "UPSTREAM_ERROR")
    assert [r.path for r in fake_openai.requests] == ["/v1/images/generations"]
    assert snapshot(images_dir) == EMPTY_STORE


def test_a_429_storm_over_concurrent_callers_ends_for_every_caller_in_bounded_time(
    fault_settings, make_app, fake_openai, images_dir
):
    app = make_app(fault_settings)
    fake_openai.set_default(fake.rate_limited("1"))
    answers: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        started = time.monotonic()
        response = app.test_client().post("/generate", json={"prompt": f"storm {n}"})
        with lock:
            answers.append(
                (
                    response.status_code,
                    response.headers.get("Retry-After"),
                    time.monotonic() - started,
                )
            )

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(answers) == 8
    assert {(status, retry) for status, retry, _ in answers} == {(429, "1")}
    assert max(seconds for *_, seconds in answers) < 4
    assert len(fake_openai.image_requests) == 8 * 3
    assert snapshot(images_dir) == EMPTY_STORE


def test_after_a_storm_the_service_recovers_at_once(fault_client, fake_openai, images_dir):
    fake_openai.set_default(fake.server_error(503))
    failed = [fault_client.post("/generate", json={"prompt": f"down {n}"}) for n in range(3)]
    fake_openai.set_default(None)

    recovered = fault_client.post("/generate", json={"prompt": "up again"})

    assert [r.status_code for r in failed] == [502, 502, 502]
    assert recovered.status_code == 200
    assert store_problems(images_dir) == []


# --- an upstream that trickles bytes: the request deadline must still hold ---------------


@dataclass
class Trickler:
    """A raw TCP server on 127.0.0.1 that answers one byte at a time, forever (until stopped)."""

    port: int
    stop: threading.Event


@pytest.fixture
def trickler(request) -> Iterator[Trickler]:
    mode = request.param
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if mode == "headers":
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                )
            while not stop.wait(0.2):
                conn.sendall(b"a" if mode == "headers" else b" ")
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield Trickler(listener.getsockname()[1], stop)
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
        for conn in connections:
            conn.close()


@pytest.mark.parametrize("trickler", ["headers", "body"], indirect=True)
def test_an_upstream_trickling_bytes_still_ends_in_504_by_the_deadline(
    settings, make_app, trickler, images_dir
):
    app = make_app(
        settings,
        base_url=f"http://127.0.0.1:{trickler.port}/v1",
        read_timeout=1.0,
        request_deadline=2.0,
        max_retries=0,
    )
    result: dict[str, Any] = {}

    def call() -> None:
        result["response"] = app.test_client().post("/generate", json={"prompt": "trickle"})

    started = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=3.5)
    elapsed = time.monotonic() - started
    trickler.stop.set()  # let the request end either way, so nothing outlives the test
    thread.join(timeout=5)

    assert elapsed < 3.4, f"/generate was still running after {elapsed:.1f}s (deadline 2s)"
    assert_client_error(result["response"], 504, "UPSTREAM_TIMEOUT")
    assert snapshot(images_dir) == EMPTY_STORE
