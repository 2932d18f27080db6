"""Unit tests of `imagegen.openai_client`: retry rules, URL policy, and real-socket calls."""

from __future__ import annotations

import base64
import email.utils
import json
import math
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagegen.upstream.client import OpenAIClient
from imagegen.upstream.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidResponseError,
    OpenAIError,
)
from imagegen.upstream.retry import Deadline, RetryPolicy, parse_retry_after
from tests.support.fake_openai import (
    FakeOpenAI,
    FakeResponse,
    bad_request,
    drop_connection,
    error,
    file_url_status,
    insufficient_quota,
    invalid_api_key,
    non_json,
    rate_limited,
    redirect_url,
    reset_mid_body,
    server_error,
    slow,
)
from tests.support.service import TEST_KEY

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GPT_PAYLOAD = {"model": "gpt-image-2", "prompt": "a red fox", "n": 1, "size": "16x16"}
DALL_E_PAYLOAD = {"model": "dall-e-2", "prompt": "a red fox", "n": 1, "size": "16x16"}


def status_error(
    status: int,
    *,
    code: str | None = None,
    retry_after: float | None = None,
    should_retry: bool | None = None,
) -> APIStatusError:
    return APIStatusError(
        status, "boom", code=code, retry_after=retry_after, should_retry=should_retry
    )


# --- parse_retry_after ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0", 0.0), (" 7 ", 7.0), ("1.5", 1.5), ("0.25", 0.25), ("120", 120.0)],
)
def test_retry_after_in_seconds_is_parsed(value: str, expected: float) -> None:
    assert parse_retry_after({"retry-after": value}) == expected


def test_retry_after_header_name_is_case_insensitive() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"RETRY-AFTER-MS": "1500"}) == 1.5


def test_retry_after_ms_takes_precedence_over_retry_after() -> None:
    assert parse_retry_after({"retry-after": "30", "retry-after-ms": "250"}) == 0.25


@pytest.mark.parametrize("bad_ms", ["abc", "-5", "nan", "inf", ""])
def test_unusable_retry_after_ms_falls_back_to_retry_after(bad_ms: str) -> None:
    assert parse_retry_after({"retry-after": "4", "retry-after-ms": bad_ms}) == 4.0


def test_retry_after_http_date_in_the_future_gives_the_seconds_until_then() -> None:
    now = 1_800_000_000
    header = email.utils.formatdate(now + 120, usegmt=True)

    assert parse_retry_after({"retry-after": header}, now=now) == 120.0


def test_retry_after_http_date_in_the_past_means_no_wait() -> None:
    now = 1_800_000_000
    header = email.utils.formatdate(now - 3600, usegmt=True)

    assert parse_retry_after({"retry-after": header}, now=now) == 0.0


@pytest.mark.parametrize(
    "value",
    ["soon", "1e", "2 seconds", "Wed, 99 Foo 2015 07:28:00 GMT", "\x00", "0x10", "--1", "1..2"],
)
def test_garbage_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) is None


@pytest.mark.parametrize("value", ["-1", "-0.5", "-86400"])
def test_negative_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) is None
    assert parse_retry_after({"retry-after-ms": value}) is None


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_non_finite_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) is None


@pytest.mark.parametrize("value", ["1e10", "99999999", "86401"])
def test_huge_retry_after_in_seconds_is_capped_at_one_day(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) == 86_400.0


@pytest.mark.parametrize("value", ["1e20", "86400001", "1" + "0" * 30, "1.7e308"])
def test_huge_retry_after_ms_is_capped_at_one_day_after_turning_it_into_seconds(
    value: str,
) -> None:
    assert parse_retry_after({"retry-after-ms": value}) == 86_400.0


def test_retry_after_ms_just_under_a_day_is_kept_to_the_millisecond() -> None:
    assert parse_retry_after({"retry-after-ms": "86399999"}) == 86_399.999


@pytest.mark.parametrize("value", ["inf", "nan", "-1e20", "-1", "1" + "0" * 400, "1e400"])
def test_non_finite_or_negative_retry_after_ms_is_ignored(value: str) -> None:
    assert parse_retry_after({"retry-after-ms": value}) is None
    assert parse_retry_after({"retry-after-ms": value, "retry-after": "7"}) == 7.0


def test_huge_retry_after_http_date_is_capped_like_seconds() -> None:
    value = parse_retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})

    assert value is not None
    assert value <= 86_400.0


def test_missing_or_empty_retry_after_gives_none() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": ""}) is None
    assert parse_retry_after({"x-request-id": "req_1"}) is None


_HEADER_NAMES = st.sampled_from(["retry-after", "Retry-After", "retry-after-ms", "x-other"])
_HEADER_VALUES = (
    st.text(max_size=40)
    | st.floats().map(str)
    | st.integers(-(10**30), 10**30).map(str)
    | st.datetimes().map(lambda d: email.utils.format_datetime(d) + " GMT")
)


@given(
    headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=3),
    now=st.floats(0, 4e9),
)
@settings(max_examples=500, deadline=None)
@example(headers={"retry-after": "Mon, 01 Jan 99999 00:00:00 GMT"}, now=0.0)
@example(headers={"retry-after": "Fri, 31 Dec 9999 23:59:59 +9999"}, now=0.0)
@example(headers={"retry-after-ms": "1e309", "retry-after": "nan"}, now=0.0)
def test_parse_retry_after_never_raises_and_never_returns_a_negative_or_non_finite_wait(
    headers: dict[str, str], now: float
) -> None:
    value = parse_retry_after(headers, now=now)

    assert value is None or (math.isfinite(value) and value >= 0)


# --- RetryPolicy ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 520])
def test_transient_statuses_are_retried(status: int) -> None:
    assert RetryPolicy().should_retry(status_error(status), attempt=0)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 415, 422])
def test_client_errors_are_never_retried(status: int) -> None:
    assert not RetryPolicy().should_retry(status_error(status), attempt=0)


def test_insufficient_quota_is_never_retried_even_on_429() -> None:
    assert not RetryPolicy().should_retry(status_error(429, code="insufficient_quota"), 0)


def test_x_should_retry_header_overrides_the_status_rule() -> None:
    policy = RetryPolicy()

    assert not policy.should_retry(status_error(503, should_retry=False), 0)
    assert policy.should_retry(status_error(400, should_retry=True), 0)


def test_retry_after_over_the_cap_is_not_retried_but_at_the_cap_is() -> None:
    policy = RetryPolicy(max_retry_after=20.0)

    assert not policy.should_retry(status_error(429, retry_after=20.5), 0)
    assert not policy.should_retry(status_error(503, retry_after=20.5, should_retry=True), 0)
    assert policy.should_retry(status_error(429, retry_after=20.0), 0)


def test_connection_failures_and_timeouts_are_retried_but_bad_answers_are_not() -> None:
    policy = RetryPolicy()

    assert policy.should_retry(APIConnectionError("refused"), 0)
    assert policy.should_retry(APITimeoutError("slow"), 0)
    assert not policy.should_retry(InvalidResponseError("not json"), 0)
    assert not policy.should_retry(OpenAIError("other"), 0)


@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
def test_attempts_are_bounded_by_max_retries(max_retries: int) -> None:
    policy = RetryPolicy(max_retries=max_retries)
    errors: list[OpenAIError] = [status_error(503), APIConnectionError("x")]

    for failure in errors:
        allowed = [a for a in range(10) if policy.should_retry(failure, a)]
        assert allowed == list(range(max_retries))


def test_delay_uses_retry_after_when_given() -> None:
    policy = RetryPolicy(backoff_base=5.0)

    assert policy.delay(0, 1.25) == 1.25
    assert policy.delay(3, 0.0) == 0.0
    assert policy.delay(0, -3.0) == 0.0


def test_delay_backs_off_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=8.0)

    for attempt in range(8):
        ceiling = min(8.0, 0.5 * 2**attempt)
        for _ in range(50):
            assert 0.75 * ceiling <= policy.delay(attempt) <= ceiling


def test_delay_never_exceeds_backoff_max() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=3.0)

    assert all(policy.delay(attempt) <= 3.0 for attempt in range(64))


# --- Deadline -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_on_its_clock() -> None:
    clock = FakeClock()
    deadline = Deadline(10.0, clock=clock)

    assert deadline.remaining() == 10.0
    clock.now += 4.0
    assert deadline.check() == 6.0


@pytest.mark.parametrize("elapsed", [10.0, 10.5, 1000.0])
def test_deadline_check_raises_timeout_once_time_is_up(elapsed: float) -> None:
    clock = FakeClock()
    deadline = Deadline(10.0, clock=clock)
    clock.now += elapsed

    with pytest.raises(APITimeoutError):
        deadline.check()
    assert deadline.remaining() <= 0


def test_zero_deadline_is_already_over() -> None:
    with pytest.raises(APITimeoutError):
        Deadline(0.0).check()


# --- the key never shows ----------------------------------------------------------------


def test_client_repr_shows_the_base_url_but_never_the_key() -> None:
    client = OpenAIClient("https://api.openai.com/v1/", TEST_KEY)

    assert TEST_KEY not in repr(client)
    assert TEST_KEY not in str(client)
    assert "https://api.openai.com/v1" in repr(client)


@pytest.mark.parametrize("key", [TEST_KEY, "not-shaped-like-openai-secret-42"])
def test_redact_removes_the_key_from_text(key: str) -> None:
    client = OpenAIClient("https://api.openai.com/v1", key)

    redacted = client.redact(f"Incorrect API key provided: {key}. Check it.")

    assert key not in redacted
    assert "[redacted]" in redacted
    assert redacted.startswith("Incorrect API key provided: ")


def test_redact_removes_anything_shaped_like_an_openai_key() -> None:
    client = OpenAIClient("https://api.openai.com/v1", TEST_KEY)

    redacted = client.redact("keys sk-abc***xyz and sk-proj-OTHER_key-123 leaked")

    assert "sk-abc" not in redacted
    assert "sk-proj" not in redacted
    assert redacted.count("[redacted]") == 2


def test_redact_leaves_ordinary_text_alone() -> None:
    client = OpenAIClient("https://api.openai.com/v1", TEST_KEY)
    text = "Rate limit reached for gpt-image-2; ask again in 2s (task-id 42)."

    assert client.redact(text) == text


# --- download URL policy (network stubbed at the socket) ----------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every TCP connection attempt and refuse it, so no real network is used."""
    attempts: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def no_retry_client(base_url: str) -> OpenAIClient:
    return OpenAIClient(base_url, TEST_KEY, retry=RetryPolicy(max_retries=0))


@pytest.mark.parametrize(
    ("base_url", "url", "host"),
    [
        ("https://api.openai.com/v1", "https://cdn.example.com/img.png", "cdn.example.com"),
        ("http://127.0.0.1:9/v1", "https://cdn.example.com/img.png", "cdn.example.com"),
        ("http://api.internal:8080/v1", "http://api.internal:8080/files/a.png", "api.internal"),
        ("http://127.0.0.1:9/v1", "http://localhost:1234/a.png", "localhost"),
        ("http://localhost:9/v1", "http://127.0.0.2/a.png", "127.0.0.2"),
        ("http://127.0.0.1:9/v1", "http://[::1]:5/a.png", "::1"),
    ],
)
def test_download_is_attempted_for_allowed_urls(
    connections: list[tuple[str, int]], base_url: str, url: str, host: str
) -> None:
    with pytest.raises(APIConnectionError):
        no_retry_client(base_url).download(url, Deadline(5))

    assert [address[0] for address in connections] == [host]


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("https://api.openai.com/v1", "file:///etc/passwd"),
        ("https://api.openai.com/v1", "ftp://example.com/a.png"),
        ("https://api.openai.com/v1", "data:image/png;base64,iVBORw0KGgo="),
        ("https://api.openai.com/v1", "gopher://example.com/1"),
        ("https://api.openai.com/v1", "//example.com/a.png"),
        ("https://api.openai.com/v1", "/etc/passwd"),
        ("https://api.openai.com/v1", "http://cdn.example.com/a.png"),
        ("https://api.openai.com/v1", "http://127.0.0.1/a.png"),
        ("http://127.0.0.1:9/v1", "file:///etc/passwd"),
        ("http://127.0.0.1:9/v1", "http://example.com/a.png"),
        ("http://127.0.0.1:9/v1", "http://10.0.0.1/a.png"),
        ("http://127.0.0.1:9/v1", "http://169.254.169.254/latest/meta-data"),
        ("http://api.internal:8080/v1", "http://api.internal:8081/a.png"),
        ("http://api.internal:8080/v1", "http://other.internal:8080/a.png"),
        ("http://api.internal:8080/v1", "http://127.0.0.1:8080/a.png"),
    ],
)
def test_download_refuses_unsafe_urls_without_connecting(
    connections: list[tuple[str, int]], base_url: str, url: str
) -> None:
    with pytest.raises(InvalidResponseError, match="refusing to download"):
        no_retry_client(base_url).download(url, Deadline(5))

    assert connections == []


# --- generate_images against the fake upstream ----------------------------------------------


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(fake_openai: FakeOpenAI, sleeps: list[float]) -> Callable[..., OpenAIClient]:
    """A client of the fake whose retry waits are recorded instead of slept."""

    def build(**overrides: Any) -> OpenAIClient:
        options: dict[str, Any] = {
            "read_timeout": 5.0,
            "connect_timeout": 5.0,
            "retry": RetryPolicy(max_retries=2, backoff_base=0.001, max_retry_after=20.0),
            "sleep": sleeps.append,
        }
        options.update(overrides)
        return OpenAIClient(fake_openai.base_url, TEST_KEY, **options)

    return build


def image_calls(fake: FakeOpenAI) -> int:
    return len(fake.image_requests)


def file_calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.startswith("/files/"))


def test_generate_returns_the_upstream_answer_and_sends_the_payload(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    answer = make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert len(answer["data"]) == 1
    assert base64.b64decode(answer["data"][0]["b64_json"]).startswith(PNG_SIGNATURE)
    [request] = fake_openai.image_requests
    assert request.method == "POST"
    assert request.path == "/v1/images/generations"
    assert request.json == GPT_PAYLOAD


def test_generate_sends_the_key_as_a_bearer_authorization_header(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    [request] = fake_openai.image_requests
    assert request.header("authorization") == f"Bearer {TEST_KEY}"
    assert request.header("content-type") == "application/json"
    assert (request.header("user-agent") or "").startswith("image-gen/")


def test_generate_retries_transient_failures_then_succeeds(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], sleeps: list[float]
) -> None:
    fake_openai.enqueue(server_error(500), rate_limited(retry_after="0"), server_error(503))
    client = make_client(retry=RetryPolicy(max_retries=3, backoff_base=0.001))

    answer = client.generate_images(GPT_PAYLOAD, Deadline(10))

    assert len(answer["data"]) == 1
    assert image_calls(fake_openai) == 4
    assert len(sleeps) == 3
    assert sleeps[1] == 0.0


def test_generate_waits_as_long_as_retry_after_says(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], sleeps: list[float]
) -> None:
    fake_openai.enqueue(rate_limited(retry_after="1.5"), rate_limited("9", retry_after_ms="250"))

    make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert sleeps == [1.5, 0.25]
    assert image_calls(fake_openai) == 3


def test_generate_raises_status_error_with_status_and_code_when_retries_run_out(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], sleeps: list[float]
) -> None:
    fake_openai.set_default(rate_limited(retry_after="0"))

    with pytest.raises(APIStatusError) as raised:
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert raised.value.status == 429
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.type == "requests"
    assert raised.value.retry_after == 0.0
    assert (raised.value.request_id or "").startswith("req_")
    assert image_calls(fake_openai) == 3
    assert len(sleeps) == 2


def test_generate_gives_up_on_server_errors_after_max_retries(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_default(server_error(503))

    with pytest.raises(APIStatusError) as raised:
        make_client(retry=RetryPolicy(max_retries=1, backoff_base=0.001)).generate_images(
            GPT_PAYLOAD, Deadline(10)
        )

    assert raised.value.status == 503
    assert raised.value.type == "server_error"
    assert image_calls(fake_openai) == 2


def test_bad_request_is_not_retried(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], sleeps: list[float]
) -> None:
    fake_openai.set_default(bad_request("Invalid size '7x7'.", param="size", code="invalid_value"))

    with pytest.raises(APIStatusError) as raised:
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert raised.value.status == 400
    assert raised.value.code == "invalid_value"
    assert raised.value.param == "size"
    assert raised.value.message == "Invalid size '7x7'."
    assert image_calls(fake_openai) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (invalid_api_key(), 401, "invalid_api_key"),
        (insufficient_quota(), 429, "insufficient_quota"),
        (rate_limited(retry_after="60"), 429, "rate_limit_exceeded"),
        (error(503, "busy", "server_error", headers={"x-should-retry": "false"}), 503, None),
    ],
    ids=["invalid-key", "insufficient-quota", "retry-after-over-cap", "x-should-retry-false"],
)
def test_errors_the_policy_refuses_to_retry_are_sent_exactly_once(
    fake_openai: FakeOpenAI,
    make_client: Callable[..., OpenAIClient],
    behaviour: FakeResponse,
    status: int,
    code: str | None,
) -> None:
    fake_openai.set_default(behaviour)

    with pytest.raises(APIStatusError) as raised:
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert (raised.value.status, raised.value.code) == (status, code)
    assert image_calls(fake_openai) == 1


def test_x_should_retry_true_makes_a_bad_request_retried(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.enqueue(
        error(400, "try again", "invalid_request_error", headers={"x-should-retry": "true"})
    )

    answer = make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert answer["data"]
    assert image_calls(fake_openai) == 2


@pytest.mark.parametrize("fault", [drop_connection, reset_mid_body], ids=["drop", "reset"])
def test_broken_connections_are_retried(
    fake_openai: FakeOpenAI,
    make_client: Callable[..., OpenAIClient],
    fault: Callable[[], FakeResponse],
) -> None:
    fake_openai.enqueue(fault())

    answer = make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert answer["data"]
    assert image_calls(fake_openai) == 2


def test_connection_that_always_drops_raises_connection_error_after_retries(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_default(drop_connection())

    with pytest.raises(APIConnectionError) as raised:
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert not isinstance(raised.value, APITimeoutError)
    assert image_calls(fake_openai) == 3


def test_non_json_error_page_becomes_a_status_error(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_default(non_json(502))

    with pytest.raises(APIStatusError) as raised:
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert raised.value.status == 502
    assert raised.value.message == "HTTP 502"
    assert raised.value.code is None
    assert image_calls(fake_openai) == 3


@pytest.mark.parametrize(
    "body", [b"not json at all", b'{"created": 1}', b'{"data": {"b64_json": "x"}}', b"[]"]
)
def test_unusable_success_body_is_an_invalid_response_and_not_retried(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], body: bytes
) -> None:
    fake_openai.set_default(FakeResponse(kind="raw", status=200, body=body))

    with pytest.raises(InvalidResponseError):
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert image_calls(fake_openai) == 1


def test_upstream_error_message_echoing_the_key_is_redacted(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_default(bad_request(f"Incorrect API key provided: {TEST_KEY}."))

    with pytest.raises(APIStatusError) as raised:
        make_client().generate_images(GPT_PAYLOAD, Deadline(10))

    assert TEST_KEY not in str(raised.value)
    assert TEST_KEY not in raised.value.message
    assert "[redacted]" in raised.value.message


def test_slow_upstream_raises_timeout_after_the_read_timeout(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_default(slow(3))
    client = make_client(read_timeout=0.2, retry=RetryPolicy(max_retries=0))

    with pytest.raises(APITimeoutError):
        client.generate_images(GPT_PAYLOAD, Deadline(10))

    assert image_calls(fake_openai) == 1


def test_request_deadline_bounds_a_call_even_with_a_long_read_timeout(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_default(slow(3))
    client = make_client(read_timeout=60.0, retry=RetryPolicy(max_retries=5, backoff_base=0.001))

    with pytest.raises(APITimeoutError):
        client.generate_images(GPT_PAYLOAD, Deadline(0.5))

    assert image_calls(fake_openai) == 1


def test_expired_deadline_sends_nothing(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    with pytest.raises(APITimeoutError):
        make_client().generate_images(GPT_PAYLOAD, Deadline(-1))

    assert fake_openai.requests == []


def test_answer_larger_than_max_response_bytes_is_refused_and_not_retried(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    with pytest.raises(InvalidResponseError, match="larger than allowed"):
        make_client(max_response_bytes=200).generate_images(GPT_PAYLOAD, Deadline(10))

    assert image_calls(fake_openai) == 1


def test_answer_exactly_at_max_response_bytes_is_accepted(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    body = json.dumps({"data": [{"b64_json": "eHh4"}]}).encode()
    fake_openai.set_default(FakeResponse(kind="raw", status=200, body=body))

    answer = make_client(max_response_bytes=len(body)).generate_images(GPT_PAYLOAD, Deadline(10))

    # The base64 text comes as a view of the answer's bytes, not a copy.
    assert bytes(answer["data"][0]["b64_json"]) == b"eHh4"


# --- download against the fake upstream -----------------------------------------------------


def dall_e_url(client: OpenAIClient) -> str:
    return client.generate_images(DALL_E_PAYLOAD, Deadline(10))["data"][0]["url"]


def test_download_fetches_the_image_an_answer_points_to(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    client = make_client()
    url = dall_e_url(client)

    data = client.download(url, Deadline(10))

    assert data.startswith(PNG_SIGNATURE)
    assert file_calls(fake_openai) == 1


def test_download_follows_a_redirect_to_the_same_upstream(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    client = make_client()
    real = dall_e_url(client)
    fake_openai.enqueue(redirect_url(real, status=307))
    redirecting = dall_e_url(client)

    data = client.download(redirecting, Deadline(10))

    assert data == client.download(real, Deadline(10))
    assert data.startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://example.com/a.png",
    ],
)
def test_download_refuses_a_redirect_to_an_unsafe_url(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], location: str
) -> None:
    client = make_client()
    fake_openai.enqueue(redirect_url(location))
    url = dall_e_url(client)

    with pytest.raises(InvalidResponseError, match="refusing to download"):
        client.download(url, Deadline(10))

    assert file_calls(fake_openai) == 1


def test_download_stops_after_max_redirects(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    client = make_client()
    real = dall_e_url(client)
    fake_openai.enqueue(redirect_url(real))
    url = dall_e_url(client)

    with pytest.raises(InvalidResponseError, match="too many times"):
        client.download(url, Deadline(10), max_redirects=0)


def test_download_refuses_a_redirect_without_location(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    client = make_client()
    fake_openai.enqueue(file_url_status(302))
    url = dall_e_url(client)

    with pytest.raises(InvalidResponseError, match="without a Location"):
        client.download(url, Deadline(10))


def test_download_larger_than_max_image_bytes_is_refused(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    fake_openai.set_image_size(5000)
    client = make_client(max_image_bytes=1000)
    url = dall_e_url(client)

    with pytest.raises(InvalidResponseError, match="larger than allowed"):
        client.download(url, Deadline(10))

    assert file_calls(fake_openai) == 1


def test_download_of_a_missing_file_is_an_invalid_response_not_retried(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient]
) -> None:
    client = make_client()
    fake_openai.enqueue(file_url_status(404))
    url = dall_e_url(client)

    with pytest.raises(InvalidResponseError, match="answered HTTP 404"):
        client.download(url, Deadline(10))

    assert file_calls(fake_openai) == 1


def test_download_retries_a_file_server_error_then_reports_it(
    fake_openai: FakeOpenAI, make_client: Callable[..., OpenAIClient], sleeps: list[float]
) -> None:
    client = make_client()
    fake_openai.enqueue(file_url_status(503))
    url = dall_e_url(client)

    with pytest.raises(InvalidResponseError, match="answered HTTP 503"):
        client.download(url, Deadline(10))

    assert file_calls(fake_openai) == 3
    assert len(sleeps) == 2
