"""How /generate reads the upstream's JSON answer and its `b64_json` images.

The client cuts each `b64_json` text out before the JSON parser sees it (figure (c) in
bench/README.md); these tests hold that fast path to exactly what json.loads and a strict
base64 decode would accept, through the app against the fake OpenAI.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests import fake_openai as fake
from tests.conftest import read_metadata

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
    assert response.get_json()["usage"] == {"b64_json": b64(OTHER_PNG)}  # passed on untouched


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
