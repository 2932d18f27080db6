"""Tests of the fake OpenAI Images API server itself, driven with urllib."""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

try:
    import fake_openai as fo
except ModuleNotFoundError:
    from tests.support import fake_openai as fo

AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture
def fake() -> Iterator[fo.FakeOpenAI]:
    with fo.FakeOpenAI() as server:
        yield server


def call(
    url: str,
    payload: Any = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send one request; return status, headers and body (HTTP errors included)."""
    all_headers = dict(AUTH)
    if payload is not None:
        data = json.dumps(payload).encode()
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def generate(fake: fo.FakeOpenAI, **params: Any) -> tuple[int, http.client.HTTPMessage, Any]:
    """POST /images/generations and decode the JSON answer."""
    url = f"{fake.base_url}/images/generations"
    status, headers, body = call(url, {"prompt": "a cat", **params})
    return status, headers, json.loads(body)


def png_info(data: bytes) -> tuple[int, int, list[bytes]]:
    """Validate a PNG (signature, CRCs, IDAT size); return width, height, chunk types."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds, idat = 8, [], b""
    width = height = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        kinds.append(kind)
        pos += 12 + length
    assert pos == len(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height, kinds


def error_of(body: bytes) -> dict[str, Any]:
    return json.loads(body)["error"]


def test_gpt_image_success_shape(fake: fo.FakeOpenAI) -> None:
    status, headers, body = generate(fake, model="gpt-image-1", n=2, size="32x16", quality="high")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"req_[0-9a-f]+", headers["x-request-id"])
    assert set(body) == {
        "created",
        "data",
        "background",
        "output_format",
        "quality",
        "size",
        "usage",
    }
    assert isinstance(body["created"], int)
    assert (body["background"], body["output_format"], body["quality"], body["size"]) == (
        "opaque",
        "png",
        "high",
        "32x16",
    )
    assert body["usage"] == {
        "input_tokens": 50,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
        "output_tokens": 2112,
        "total_tokens": 2162,
    }
    assert [set(item) for item in body["data"]] == [{"b64_json"}, {"b64_json"}]
    images = [base64.b64decode(item["b64_json"], validate=True) for item in body["data"]]
    assert [png_info(image)[:2] for image in images] == [(32, 16), (32, 16)]
    assert images[0] != images[1]


def test_missing_model_answers_like_gpt_image_with_defaults(fake: fo.FakeOpenAI) -> None:
    status, _, body = generate(fake, size="4096x4096", output_format="webp")
    assert status == 200
    assert body["quality"] == "medium" and body["output_format"] == "webp"
    assert body["size"] == "4096x4096"
    assert png_info(base64.b64decode(body["data"][0]["b64_json"]))[:2] == (8, 8)
    status, _, body = generate(fake, model="chatgpt-image-latest", size="auto", quality="auto")
    assert (body["size"], body["quality"]) == ("1024x1024", "medium")


def test_dalle3_url_download_and_revised_prompt(fake: fo.FakeOpenAI) -> None:
    status, _, body = generate(fake, model="dall-e-3", size="1024x1024")
    assert status == 200
    assert set(body) == {"created", "data"}
    (item,) = body["data"]
    assert set(item) == {"url", "revised_prompt"}
    assert item["revised_prompt"].startswith("a cat") and len(item["revised_prompt"]) > len("a cat")
    assert item["url"].startswith(f"{fake.origin}/files/") and item["url"].endswith(".png")

    status, headers, image = call(item["url"], headers={"Authorization": ""})
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    assert png_info(image)[:2] == (8, 8)
    assert fake.requests[-1].method == "GET"
    assert fake.requests[-1].path == urlsplit(item["url"]).path


def test_dalle2_honours_n_and_b64_response_format(fake: fo.FakeOpenAI) -> None:
    _, _, body = generate(fake, model="dall-e-2", n=3, response_format="b64_json", size="16x16")
    assert [set(item) for item in body["data"]] == [{"b64_json"}] * 3
    assert png_info(base64.b64decode(body["data"][0]["b64_json"]))[:2] == (16, 16)
    _, _, body = generate(fake, model="dall-e-2", n=2)
    assert [set(item) for item in body["data"]] == [{"url"}] * 2


def test_fixed_image_bytes_and_padding(fake: fo.FakeOpenAI) -> None:
    fake.set_image_size(5000)
    _, _, body = generate(fake)
    padded = base64.b64decode(body["data"][0]["b64_json"])
    assert len(padded) == 5000
    assert fo.PAD_CHUNK_TYPE in png_info(padded)[2]

    fake.image_bytes = b"\x89PNG fixed"
    _, _, body = generate(fake, model="dall-e-2", response_format="b64_json")
    assert base64.b64decode(body["data"][0]["b64_json"]) == b"\x89PNG fixed"


def test_error_helpers_status_body_and_headers(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(
        fo.rate_limited(retry_after="3", retry_after_ms=2500),
        fo.invalid_api_key(),
        fo.model_not_found("gpt-image-9"),
        fo.moderation_blocked(),
        fo.insufficient_quota(),
        fo.server_error(503),
        fo.content_policy_violation(),
        fo.bad_request("Invalid size.", "size"),
    )
    url = f"{fake.base_url}/images/generations"
    results = [call(url, {"prompt": "x"}) for _ in range(8)]

    status, headers, body = results[0]
    assert status == 429
    assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "2500"
    assert headers["Content-Type"] == "application/json"
    assert error_of(body)["type"] == "requests" and error_of(body)["code"] == "rate_limit_exceeded"
    assert set(error_of(body)) == {"message", "type", "param", "code"}

    assert results[1][0] == 401
    assert error_of(results[1][2]) == {
        "message": fo.INVALID_API_KEY_MESSAGE,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert results[2][0] == 404
    assert error_of(results[2][2])["message"] == (
        "The model `gpt-image-9` does not exist or you do not have access to it."
    )
    assert error_of(results[2][2])["code"] == "model_not_found"

    status, headers, body = results[3]
    assert (status, error_of(body)["type"], error_of(body)["code"]) == (
        400,
        "image_generation_user_error",
        "moderation_blocked",
    )
    assert error_of(body)["message"].startswith("Your request was rejected by the safety system.")
    assert headers["x-request-id"] in error_of(body)["message"]

    assert (results[4][0], error_of(results[4][2])["code"]) == (429, "insufficient_quota")
    assert "retry-after" not in results[4][1]
    assert (results[5][0], error_of(results[5][2])["type"]) == (503, "server_error")
    assert (results[6][0], error_of(results[6][2])["code"]) == (400, "content_policy_violation")
    assert error_of(results[7][2])["param"] == "size"
    assert all(re.fullmatch(r"req_[0-9a-f]+", r[1]["x-request-id"]) for r in results)


def test_queue_order_then_default_then_reset(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(fo.server_error(), fo.rate_limited())
    fake.enqueue(fo.success())
    statuses = [generate(fake)[0] for _ in range(4)]
    assert statuses == [500, 429, 200, 200]

    fake.set_default(fo.server_error(502))
    fake.enqueue(fo.success())
    assert [generate(fake)[0] for _ in range(3)] == [200, 502, 502]

    fake.latency = 5.0
    fake.enqueue(fo.invalid_api_key())
    fake.reset()
    assert fake.requests == [] and fake.latency == 0.0
    assert generate(fake)[0] == 200


def test_drop_connection_raises_on_client(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(fo.drop_connection())
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        call(f"{fake.base_url}/images/generations", {"prompt": "x"})
    assert len(fake.image_requests) == 1
    assert generate(fake)[0] == 200


def test_reset_mid_body_gives_incomplete_read(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(fo.reset_mid_body())
    request = urllib.request.Request(
        f"{fake.base_url}/images/generations", data=b'{"prompt": "x"}', headers=AUTH
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()


def test_payload_faults(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(
        fo.non_json(502),
        fo.truncated_b64(),
        fo.invalid_b64(),
        fo.not_an_image(),
        fo.url_to("file:///run/secrets/x"),
    )
    status, headers, body = call(f"{fake.base_url}/images/generations", {"prompt": "x"})
    assert (status, headers["Content-Type"]) == (502, "text/html")
    assert body == b"<html>Bad gateway</html>"

    _, _, truncated = generate(fake)
    with pytest.raises(binascii.Error):
        base64.b64decode(truncated["data"][0]["b64_json"])
    _, _, invalid = generate(fake)
    assert invalid["data"][0]["b64_json"] == "!!!notbase64"
    _, _, not_image = generate(fake)
    assert base64.b64decode(not_image["data"][0]["b64_json"]) == b"hello, not an image"
    _, _, url = generate(fake, model="dall-e-3")
    assert url["data"][0]["url"] == "file:///run/secrets/x"
    assert "revised_prompt" in url["data"][0]


def test_file_url_status_and_redirect(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(
        fo.file_url_status(404, "text/html", b"<html>gone</html>"),
        fo.redirect_url("http://169.254.169.254/latest/meta-data/"),
    )
    _, _, body = generate(fake, model="dall-e-2")
    status, headers, content = call(body["data"][0]["url"])
    assert (status, headers["Content-Type"], content) == (404, "text/html", b"<html>gone</html>")

    _, _, body = generate(fake, model="gpt-image-1")
    target = urlsplit(body["data"][0]["url"])
    conn = http.client.HTTPConnection(target.netloc, timeout=10)
    try:
        conn.request("GET", target.path)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 302
    assert response.getheader("Location") == "http://169.254.169.254/latest/meta-data/"


def test_recording(fake: fo.FakeOpenAI) -> None:
    before = time.monotonic()
    generate(fake, model="gpt-image-1", size="1024x1024")
    (record,) = fake.requests
    assert record.method == "POST" and record.path == "/v1/images/generations"
    assert record.header("authorization") == "Bearer sk-test"
    assert record.header("CONTENT-TYPE") == "application/json"
    assert record.header("x-missing", "dflt") == "dflt"
    assert record.json == {"prompt": "a cat", "model": "gpt-image-1", "size": "1024x1024"}
    assert record.params == record.json
    assert json.loads(record.body) == record.json
    assert "response_format" not in record.json and "style" not in record.json
    assert before <= record.time <= time.monotonic()


def test_multipart_edit_is_parsed(fake: fo.FakeOpenAI) -> None:
    boundary = "XyZb0und"
    image = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n\r\nbinary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="n"\r\n\r\n2\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image[]"; filename="in.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, raw = call(
        f"{fake.base_url}/images/edits",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200
    assert len(json.loads(raw)["data"]) == 2
    (record,) = fake.requests
    assert record.json is None
    assert record.form == {"model": "gpt-image-1", "n": "2"}
    assert [(f.name, f.filename, f.content_type, f.data) for f in record.files] == [
        ("image[]", "in.png", "image/png", image)
    ]


def test_auth_json_and_routing_errors_do_not_consume_queue(fake: fo.FakeOpenAI) -> None:
    fake.enqueue(fo.server_error())
    url = f"{fake.base_url}/images/generations"

    status, _, body = call(url, {"prompt": "x"}, headers={"Authorization": ""})
    assert status == 401 and error_of(body)["message"].startswith("You didn't provide an API key")

    status, _, body = call(url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and error_of(body)["type"] == "invalid_request_error"
    assert error_of(body)["message"].startswith("We could not parse the JSON body")

    status, _, body = call(f"{fake.base_url}/nope")
    assert status == 404 and error_of(body)["message"] == "Invalid URL (GET /v1/nope)"
    status, _, _ = call(f"{fake.origin}/files/unknown.png")
    assert status == 404

    assert generate(fake)[0] == 500
    status, _, decoded = generate(fake, n=0)
    assert status == 400 and decoded["error"]["param"] == "n"


def test_models_list(fake: fo.FakeOpenAI) -> None:
    status, _, body = call(f"{fake.base_url}/models")
    assert status == 200
    listing = json.loads(body)
    assert listing["object"] == "list"
    assert {"gpt-image-1", "dall-e-3"} <= {m["id"] for m in listing["data"]}
    status, _, body = call(f"{fake.base_url}/models/dall-e-9")
    assert status == 404 and error_of(body)["code"] == "model_not_found"


def test_keep_alive_connection_serves_several_requests(fake: fo.FakeOpenAI) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.server_port, timeout=10)
    try:
        for _ in range(3):
            conn.request(
                "POST",
                "/v1/images/generations",
                body=b'{"prompt": "x"}',
                headers={**AUTH, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            assert response.status == 200
            json.loads(response.read())
    finally:
        conn.close()
    assert len(fake.image_requests) == 3


def test_latency_is_concurrent_and_slow_adds_delay(fake: fo.FakeOpenAI) -> None:
    fake.latency = 0.3
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        status = generate(fake)[0]
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert statuses == [200] * 40
    assert 0.3 <= elapsed < 3.0

    fake.latency = 0.0
    fake.enqueue(fo.slow(0.3))
    started = time.monotonic()
    assert generate(fake)[0] == 200
    assert time.monotonic() - started >= 0.3


def test_a_latency_tag_in_the_prompt_sets_that_calls_wait(fake: fo.FakeOpenAI) -> None:
    fake.latency = 30.0
    started = time.monotonic()
    status, _, body = generate(fake, prompt="a quick cat [latency=0]")
    assert status == 200 and len(body["data"]) == 1
    assert time.monotonic() - started < 5.0  # not the server's 30 s

    fake.latency = 0.0
    started = time.monotonic()
    assert generate(fake, prompt="a slow cat [latency=0.4] [latency=9]")[0] == 200
    assert 0.4 <= time.monotonic() - started < 5.0  # the first tag counts

    fake.enqueue(fo.slow(0.2))  # a scripted delay still adds to it
    started = time.monotonic()
    assert generate(fake, prompt="[latency=.1] is not a tag; [latency=0.2] is")[0] == 200
    assert 0.4 <= time.monotonic() - started < 5.0


def test_a_latency_tag_applies_to_streamed_calls(fake: fo.FakeOpenAI) -> None:
    fake.latency = 30.0
    started = time.monotonic()
    status, headers, body = call(
        f"{fake.base_url}/images/generations",
        {"prompt": "[latency=0.3]", "model": "gpt-image-1", "stream": True, "partial_images": 1},
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body.count(b"event: ") == 2
    assert 0.3 <= time.monotonic() - started < 5.0


def test_prompt_latency_reads_only_well_formed_tags() -> None:
    assert fo.prompt_latency("a cat [latency=2.5]", 1.0) == 2.5
    assert fo.prompt_latency("a cat [latency=7200]", 1.0) == fo.MAX_PROMPT_LATENCY
    for prompt in ("a cat", "[latency=-1]", "[latency=abc]", "[latency=1e3]", "[Latency=2]", None):
        assert fo.prompt_latency(prompt, 1.0) == 1.0
    assert fo.prompt_latency(["[latency=2]"], 0.5) == 0.5


def test_held_calls_are_recorded_and_answer_only_once_released(fake: fo.FakeOpenAI) -> None:
    fake.hold()
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(prompt: str) -> None:
        status = generate(fake, prompt=prompt)[0]
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=worker, args=(f"held {n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(fake.image_requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(r.json["prompt"] for r in fake.image_requests) == ["held 0", "held 1", "held 2"]
    threads[0].join(timeout=0.3)
    assert threads[0].is_alive() and statuses == []  # recorded, not answered

    fake.release()
    for thread in threads:
        thread.join(timeout=5)
    assert statuses == [200] * 3

    fake.hold()
    fake.reset()  # a reset lets calls through again
    assert generate(fake)[0] == 200


def test_stop_interrupts_latency() -> None:
    fake = fo.FakeOpenAI().start()
    fake.latency = 30.0
    outcome: list[object] = []

    def worker() -> None:
        try:
            outcome.append(generate(fake)[0])
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 5
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3.0
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)


def test_command_line_entry_point() -> None:
    script = Path(fo.__file__)
    args = ["--port", "0", "--latency", "0.05", "--image-size-bytes", "3000"]
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"base_url=(\S+)", process.stdout.readline())
        assert match is not None
        status, _, body = call(f"{match.group(1)}/images/generations", {"prompt": "x"})
        assert status == 200
        assert len(base64.b64decode(json.loads(body)["data"][0]["b64_json"])) == 3000
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


def test_official_sdk_understands_the_fake(fake: fo.FakeOpenAI) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=10)
    result = client.images.generate(model="gpt-image-1", prompt="a cat", n=2)
    assert len(result.data) == 2 and result.usage.total_tokens == 50 + 2 * 1056
    assert client.images.generate(model="dall-e-3", prompt="a cat").data[0].revised_prompt

    fake.enqueue(fo.rate_limited(), fo.moderation_blocked(), fo.drop_connection())
    with pytest.raises(openai.RateLimitError) as rate:
        client.images.generate(model="gpt-image-1", prompt="a cat")
    assert rate.value.code == "rate_limit_exceeded" and rate.value.request_id
    with pytest.raises(openai.BadRequestError) as blocked:
        client.images.generate(model="gpt-image-1", prompt="a cat")
    assert blocked.value.code == "moderation_blocked"
    with pytest.raises(openai.APIConnectionError):
        client.images.generate(model="gpt-image-1", prompt="a cat")
