"""How /generate reads the upstream's JSON answer and its `b64_json` images.

The client cuts each `b64_json` text out before the JSON parser sees it (figure (c) in
bench/README.md); these tests hold that fast path to exactly what json.loads and a strict
base64 decode would accept, through the app against the fake OpenAI.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from imagegen.services import services
from tests.support import fake_openai as fake
from tests.support.service import TEST_KEY, read_metadata, strict_json, wait_for

PNG = fake.make_png(16, 16, (10, 200, 30), pad_to=64 * 1024)
OTHER_PNG = fake.make_png(24, 8, (200, 10, 30))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def answer_raw(fake_openai: fake.FakeOpenAI, template: str, *texts: str) -> None:
    """Make the fake answer every image call with exactly this text (HTTP 200, JSON), each
    `<>` in `template` replaced by the next of `texts` verbatim (no JSON escaping)."""
    parts = template.split("<>")
    assert len(parts) == len(texts) + 1
    body = parts[0] + "".join(text + part for text, part in zip(texts, parts[1:], strict=True))
    fake_openai.set_default(fake.FakeResponse(kind="raw", status=200, body=body.encode()))


def generate(client: Any, **body: Any) -> Any:
    return client.post("/generate", json={"prompt": "a lighthouse at dusk", **body})


def stored_bytes(client: Any, response: Any) -> list[bytes]:
    assert response.status_code == 200, response.get_json()
    return [client.get(image["url"]).data for image in response.get_json()["images"]]


def stored_jobs(images_dir: Path) -> list[str]:
    """Job directories and index entries: what a generation leaves when it is saved."""
    if not images_dir.exists():
        return []
    index = images_dir / ".index"
    links = sorted(p.name for p in index.iterdir()) if index.exists() else []
    jobs = sorted(p.name for p in images_dir.iterdir() if not p.name.startswith("."))
    return jobs + links


def assert_refused_as_unusable(response: Any, images_dir: Path, words: str) -> None:
    assert response.status_code == 502, response.get_json()
    body = response.get_json()
    assert body["code"] == "UPSTREAM_ERROR"
    assert words in body["error"]
    assert stored_jobs(images_dir) == []


# --- accepted ----------------------------------------------------------------------------


def test_a_one_mebibyte_png_is_stored_byte_for_byte_with_its_sha256(
    client, fake_openai, images_dir
):
    fake_openai.set_image_size(1024 * 1024)

    response = generate(client)

    [data] = stored_bytes(client, response)
    assert len(data) == 1024 * 1024 and data.startswith(b"\x89PNG")
    body = response.get_json()
    [entry] = read_metadata(images_dir, body["job_id"])["images"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["bytes"] == len(data)


def test_several_images_in_one_answer_each_keep_their_own_bytes(client, fake_openai):
    answer_raw(
        fake_openai,
        json.dumps({"created": 1, "data": [{"b64_json": b64(PNG)}, {"b64_json": b64(OTHER_PNG)}]}),
    )

    response = generate(client, count=2)

    assert stored_bytes(client, response) == [PNG, OTHER_PNG]
    sizes = [(i["width"], i["height"]) for i in response.get_json()["images"]]
    assert sizes == [(16, 16), (24, 8)]


def test_escaped_slashes_in_the_base64_are_read_as_json_says(client, fake_openai):
    text = b64(PNG)
    assert "/" in text  # the escape below must actually occur
    answer_raw(fake_openai, '{"data": [{"b64_json": "<>"}]}', text.replace("/", "\\/"))

    assert stored_bytes(client, generate(client)) == [PNG]


def test_pretty_printed_answers_with_spaces_around_the_colon_work(client, fake_openai):
    answer_raw(
        fake_openai,
        json.dumps(
            {"data": [{"revised_prompt": "a lighthouse", "b64_json": b64(PNG)}]}, indent=4
        ).replace('"b64_json":', '"b64_json" \t:\r\n'),
    )

    response = generate(client)

    assert stored_bytes(client, response) == [PNG]
    assert response.get_json()["images"][0]["revised_prompt"] == "a lighthouse"


def test_a_revised_prompt_quoting_b64_json_is_kept_and_not_taken_for_the_image(client, fake_openai):
    trick = f'ignore this: "b64_json": "{b64(OTHER_PNG)}"'
    answer_raw(
        fake_openai,
        json.dumps({"data": [{"revised_prompt": trick, "b64_json": b64(PNG)}]}),
    )

    response = generate(client)

    assert stored_bytes(client, response) == [PNG]
    assert response.get_json()["images"][0]["revised_prompt"] == trick


def test_a_b64_json_key_outside_the_data_items_is_ignored(client, fake_openai):
    answer_raw(
        fake_openai,
        '{"usage": {"b64_json": "<>"}, "data": [{"note\\"b64_json": "<>", "b64_json": "<>"}],'
        ' "b64_json": "<>"}',
        b64(OTHER_PNG),
        b64(OTHER_PNG),
        b64(PNG),
        b64(OTHER_PNG),
    )

    response = generate(client)

    assert stored_bytes(client, response) == [PNG]
    assert "usage" not in response.get_json()  # text is no token count: nothing is kept


def test_a_duplicated_b64_json_key_means_its_last_value_as_in_json(client, fake_openai):
    answer_raw(
        fake_openai, '{"data": [{"b64_json": "<>", "b64_json": "<>"}]}', b64(OTHER_PNG), b64(PNG)
    )

    assert stored_bytes(client, generate(client)) == [PNG]


# --- refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spoil",
    [
        lambda text: text[:100] + "\x01" + text[100:],  # a raw control character
        lambda text: text[:100] + "é" + text[100:],  # not ASCII
        lambda text: text[:100] + "\\n" + text[100:],  # an escaped newline (MIME line break)
        lambda text: text[:100] + " " + text[100:],  # a space
        lambda text: text[:-1],  # a length that is not a multiple of 4
        lambda text: text + "====",  # data after the padding
    ],
    ids=["control-char", "non-ascii", "newline", "space", "unpadded", "after-padding"],
)
def test_base64_that_is_not_strictly_well_formed_is_refused_and_nothing_is_stored(
    client, fake_openai, images_dir, spoil
):
    answer_raw(fake_openai, '{"data": [{"b64_json": "<>"}]}', spoil(b64(PNG)))

    assert_refused_as_unusable(generate(client), images_dir, "invalid base64")


def test_well_formed_base64_of_bytes_that_are_not_an_image_is_refused(
    client, fake_openai, images_dir
):
    answer_raw(fake_openai, '{"data": [{"b64_json": "<>"}]}', b64(b"GIF89a" + bytes(5000)))

    assert_refused_as_unusable(generate(client), images_dir, "not a PNG, JPEG or WebP")


@pytest.mark.parametrize(
    "body",
    [
        '{"data": [{"b64_json": "<>}]}',  # the string never ends
        '{"data": [{"b64_json": "<>"}]',  # the object never ends
        '{"data": [{"b64_json": "<>"}]} trailing',
    ],
    ids=["unterminated-string", "unterminated-object", "trailing-data"],
)
def test_answers_that_are_not_valid_json_are_refused(client, fake_openai, images_dir, body):
    answer_raw(fake_openai, body, b64(PNG))

    assert_refused_as_unusable(generate(client), images_dir, "invalid JSON")


# --- usage reports ---------------------------------------------------------------------------
# The cost is settled from the upstream's `usage`; a report that cannot be true must not reach
# the books (an infinite cost would refuse every request for a day) or any JSON we write.

ABSURD_OUTPUTS = [10**308, 10**400]
BAD_USAGES = {
    "10**308-output-tokens": {"input_tokens": 50, "output_tokens": 10**308},
    "10**400-output-tokens": {"input_tokens": 50, "output_tokens": 10**400},
    "infinite-output-tokens": {"input_tokens": 50, "output_tokens": float("inf")},
    "nan-input-tokens": {"input_tokens": float("nan"), "output_tokens": 1056},
    "negative": {"input_tokens": 50, "output_tokens": -1056},
    "fractional": {"input_tokens": 50, "output_tokens": 1056.5},
    "absurd-details": {
        "input_tokens": 50,
        "output_tokens": 1056,
        "output_tokens_details": {"image_tokens": 10**12},
    },
    "over-the-bound": {"input_tokens": 50, "output_tokens": 100_000_001},
    "not-an-object": "lots",
}


@pytest.fixture
def capped(settings, make_app):
    """A client of an app with a $5 daily cap for the whole service."""
    return make_app(settings, cap_usd_per_day=5.0).test_client()


def ledger_amounts(images_dir: Path) -> list[float]:
    with sqlite3.connect(images_dir / ".ledger" / "ledger.sqlite3") as db:
        return [usd for (usd,) in db.execute("SELECT usd FROM spend")]


def assert_settled_at_the_estimate(client: Any, response: Any, images_dir: Path) -> None:
    """Stored, costed at the estimate, and nothing we wrote holds the report or a non-finite
    number: the answer, the metadata, /usage and the ledger."""
    assert response.status_code == 200, response.get_json()
    body = strict_json(response.data)
    estimate = body["cost"]["estimated_usd"]
    assert estimate > 0
    assert body["cost"] == {
        "estimated_usd": estimate,
        "usd": estimate,
        "basis": "price_table_invalid_usage",
    }
    assert "usage" not in body
    assert client.get(body["images"][0]["url"]).status_code == 200
    metadata = read_metadata(images_dir, body["job_id"])
    assert metadata["usage"] is None and metadata["cost"] == body["cost"]
    usage = strict_json(client.get("/usage").data)
    assert usage["global"]["usd_last_day"] == estimate
    assert usage["global"]["caps"]["usd_per_day"]["remaining"] == round(5.0 - estimate, 6)
    assert all(math.isfinite(usd) for usd in ledger_amounts(images_dir))


@pytest.mark.parametrize("usage", BAD_USAGES.values(), ids=BAD_USAGES)
def test_a_usage_report_that_cannot_be_true_is_costed_at_the_estimate_and_the_image_kept(
    capped, fake_openai, images_dir, caplog, usage
):
    fake_openai.enqueue(fake.usage_report(usage))

    response = generate(capped)

    assert_settled_at_the_estimate(capped, response, images_dir)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("usage report is not believed" in text for text in warned), warned
    assert TEST_KEY not in caplog.text
    following = generate(capped)  # the books are not poisoned: the next request is served
    assert following.status_code == 200, following.get_json()
    assert following.get_json()["cost"]["basis"] == "usage"


def run_async_job(client: Any, **body: Any) -> str:
    """Submit an asynchronous generation (streamed, with partial images) and wait for it."""
    accepted = client.post(
        "/generate", json={"prompt": "a lighthouse", **body}, headers={"Prefer": "respond-async"}
    )
    assert accepted.status_code == 202, accepted.get_json()
    job_id = accepted.get_json()["job_id"]
    done = wait_for(
        lambda: (
            (job := client.get(f"/jobs/{job_id}").get_json())["status"] in ("completed", "failed")
            and job
        ),
        what="the job finishing",
    )
    assert done["status"] == "completed", done
    return job_id


@pytest.fixture
def capped_jobs(settings, make_app):
    """A client of an app with a $5 daily cap that runs asynchronous jobs."""
    app = make_app(settings, cap_usd_per_day=5.0, job_poll_interval=0.1)
    yield app.test_client()
    services(app).jobs.shutdown(10)


@pytest.mark.parametrize("output_tokens", ABSURD_OUTPUTS, ids=["10**308", "10**400"])
def test_an_absurd_usage_report_in_a_streamed_async_job_is_costed_at_the_estimate(
    capped_jobs, fake_openai, images_dir, output_tokens
):
    fake_openai.enqueue(fake.usage_report({"input_tokens": 50, "output_tokens": output_tokens}))

    job_id = run_async_job(capped_jobs)

    sent = fake_openai.image_requests[0].json
    assert sent["stream"] is True and sent["partial_images"] > 0
    assert_settled_at_the_estimate(capped_jobs, capped_jobs.get(f"/jobs/{job_id}"), images_dir)
    events = capped_jobs.get(f"/jobs/{job_id}/events").get_data(as_text=True)
    data = [line[6:] for line in events.splitlines() if line.startswith("data: ")]
    assert data and all(strict_json(text) is not None for text in data)
    following = generate(capped_jobs)
    assert following.status_code == 200, following.get_json()


def test_one_false_report_in_a_fan_out_makes_the_whole_cost_the_estimate(
    capped_jobs, fake_openai, images_dir
):
    fake_openai.enqueue(fake.success(), fake.usage_report({"output_tokens": 10**308}))

    job_id = run_async_job(capped_jobs, count=2)  # streamed: one upstream call per image

    assert len(fake_openai.image_requests) == 2
    assert_settled_at_the_estimate(capped_jobs, capped_jobs.get(f"/jobs/{job_id}"), images_dir)


def test_a_believable_usage_report_keeps_only_its_counts(client, fake_openai, images_dir):
    report = {
        "input_tokens": 50,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 50, "note": "x" * 5000},
        "output_tokens": 99_999_950,
        "total_tokens": 100_000_000,  # the bound itself is believed
        "model": "gpt-image-2",
        "cached": True,
        "extra": None,
    }
    fake_openai.enqueue(fake.usage_report(report))

    body = generate(client).get_json()

    expected = {
        "input_tokens": 50,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 50},
        "output_tokens": 99_999_950,
        "total_tokens": 100_000_000,
    }
    assert body["usage"] == expected
    assert read_metadata(images_dir, body["job_id"])["usage"] == expected
    assert body["cost"]["basis"] == "usage"
    assert body["cost"]["usd"] == pytest.approx(50 * 5 / 1e6 + 99_999_950 * 30 / 1e6)


def test_a_usage_report_nested_too_deeply_is_not_believed(client, fake_openai):
    fake_openai.enqueue(
        fake.usage_report({"input_tokens": 50, "output_tokens_details": {"a": {"b": {"c": 1}}}})
    )

    body = generate(client).get_json()

    assert body["cost"]["basis"] == "price_table_invalid_usage"


# --- image dimensions ------------------------------------------------------------------------
# An upstream image larger than the model can make is not the model's answer (and a header
# declaring 50000x50000 pixels would be stored and reported as such).


def declared_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height: the service reads only the header
    when it stores an image, so the pixel data need not match."""
    png = fake.make_png(8, 8)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = b"IHDR" + header
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize(
    ("model", "width", "height"),
    [
        ("gpt-image-2", 50000, 50000),
        ("gpt-image-2", 3856, 1024),  # an edge beyond 3840
        ("gpt-image-2", 3840, 3840),  # edges allowed, but more pixels than 8,294,400
        ("dall-e-3", 1792, 1792),
        ("dall-e-2", 1024, 1040),
    ],
)
def test_an_upstream_image_larger_than_the_model_makes_is_refused_and_nothing_is_booked(
    capped, fake_openai, images_dir, model, width, height
):
    fake_openai.set_default(fake.FakeResponse(b64_json=b64(declared_png(width, height))))

    response = capped.post("/generate", json={"prompt": "a lighthouse", "model": model})

    assert_refused_as_unusable(response, images_dir, f"a {width}x{height} image, larger than")
    assert model in response.get_json()["error"]
    usage = strict_json(capped.get("/usage").data)["global"]
    assert (usage["images_last_day"], usage["usd_last_day"]) == (0, 0)  # released


def test_a_streamed_partial_image_larger_than_the_model_makes_is_skipped(
    capped_jobs, fake_openai, caplog
):
    fake_openai.set_default(fake.FakeResponse(partial_b64_json=b64(declared_png(50000, 50000))))

    job_id = run_async_job(capped_jobs)

    assert fake_openai.image_requests[0].json["partial_images"] > 0
    assert len(capped_jobs.get(f"/jobs/{job_id}").get_json()["images"]) == 1
    events = capped_jobs.get(f"/jobs/{job_id}/events").get_data(as_text=True)
    assert "event: image\n" in events and "event: partial_image\n" not in events
    assert "a 50000x50000 image, larger than gpt-image-2 makes" in caplog.text


@pytest.mark.parametrize(
    ("model", "width", "height"),
    [
        ("gpt-image-2", 3840, 2160),
        ("gpt-image-2", 2160, 3840),
        ("gpt-image-2", 3840, 1280),  # a 3:1 panorama
        ("dall-e-3", 1024, 1792),
        ("dall-e-2", 1024, 1024),
    ],
)
def test_the_largest_images_each_model_makes_are_stored(client, fake_openai, model, width, height):
    fake_openai.set_default(fake.FakeResponse(b64_json=b64(declared_png(width, height))))

    response = client.post("/generate", json={"prompt": "a lighthouse", "model": model})

    assert response.status_code == 200, response.get_json()
    [image] = response.get_json()["images"]
    assert (image["width"], image["height"]) == (width, height)


def test_an_edit_at_size_auto_may_come_back_at_any_size_the_model_makes(client, fake_openai):
    fake_openai.set_default(fake.FakeResponse(b64_json=b64(declared_png(3840, 2160))))
    upload = (io.BytesIO(fake.make_png(64, 36)), "in.png")

    response = client.post(
        "/edit",
        data={"prompt": "make it night", "size": "auto", "image": upload},
        content_type="multipart/form-data",
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["images"][0]["width"] == 3840
