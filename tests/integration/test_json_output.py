"""No JSON the service writes holds NaN or Infinity: a value that would is a handled error.

Python's json module writes `NaN` and `Infinity` unless told not to, and strict parsers
refuse them. Every writer goes through `imagegen.strictjson` (or the app's JSON provider).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from imagegen.books.files import FileJobBook
from imagegen.jobs import events, webhooks
from imagegen.storage.images import ImageStore
from imagegen.storage.layout import Layout
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support.fake_openai import make_png
from tests.support.service import strict_json

PACKAGE = Path(__file__).resolve().parents[2] / "image-gen" / "imagegen"
NOT_FINITE = [float("nan"), float("inf"), float("-inf")]


def test_every_json_writer_in_the_service_refuses_nan_and_infinity():
    writers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\bjson\.dumps?\(", text):
                writers.append((path.relative_to(PACKAGE).as_posix(), number, text.strip()))
    # strictjson is the one place that calls json.dumps; mcp/stdio.py is stdlib only.
    assert [w[0] for w in writers] == ["mcp/stdio.py", "strictjson.py"], writers
    assert all("allow_nan=False" in w[2] for w in writers), writers


@pytest.mark.parametrize("value", NOT_FINITE)
def test_an_answer_that_would_hold_a_non_finite_number_is_a_json_500(app, value):
    @app.get("/test-not-finite")
    def not_finite() -> Any:
        from flask import jsonify

        return jsonify({"usd": value})

    response = app.test_client().get("/test-not-finite")

    assert response.status_code == 500
    body = strict_json(response.data)
    assert body["code"] == "SERVICE_ERROR"


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_request_body_with_a_non_finite_number_is_refused_as_bad_json(client, fake_openai, text):
    response = client.post(
        "/generate",
        data=f'{{"prompt": "a fox", "output_compression": {text}}}',
        content_type="application/json",
    )

    malformed = client.post("/generate", data='{"prompt": ', content_type="application/json")

    assert response.status_code == 400
    body = strict_json(response.data)
    assert body["code"] == "VALIDATION_ERROR"
    # Refused as a body, like any malformed JSON, not as a field, and saying why.
    assert "field" not in body
    assert body["error"].startswith("The body is not valid JSON: ")
    assert malformed.get_json()["error"].startswith("The body is not valid JSON: ")
    assert ("too large" if text == "1e400" else text.lstrip("-")) in body["error"]
    assert fake_openai.image_requests == []


@pytest.mark.parametrize("value", NOT_FINITE)
def test_job_metadata_with_a_non_finite_number_is_refused_and_nothing_is_stored(tmp_path, value):
    Layout(tmp_path).prepare()
    store = ImageStore.on_disk(tmp_path, fsync=False)
    generation = Generation([GeneratedImage(make_png(), "png", 8, 8)])

    with pytest.raises(ValueError, match="JSON"):
        store.save_job({"prompt": "a fox"}, generation, extra={"cost": {"usd": value}})

    assert sorted(p.name for p in tmp_path.iterdir()) == [".index"]
    assert list((tmp_path / ".index").iterdir()) == []


@pytest.mark.parametrize("value", NOT_FINITE)
def test_a_job_record_with_a_non_finite_number_is_refused_and_the_old_one_kept(tmp_path, value):
    records = FileJobBook(tmp_path, fsync=False)
    record = {"job_id": "0b6c3f4e-8a51-4f0e-9a57-5d1f3c2b1a00", "marker": "m1", "status": "queued"}
    lease = records.submit(record)

    with pytest.raises(ValueError, match="JSON"):
        records.write(lease, {**record, "progress": value})
    lease.release()

    assert records.read(record["job_id"]) == record
    assert [p.name for p in (records.root / record["job_id"]).iterdir() if "tmp" in p.name] == []


@pytest.mark.parametrize("value", NOT_FINITE)
def test_events_and_webhook_payloads_refuse_non_finite_numbers(value):
    with pytest.raises(ValueError, match="JSON"):
        events.format_event({"id": 1, "event": "progress", "data": {"usd": value}})
    with pytest.raises(ValueError, match="JSON"):
        webhooks.payload("job.completed", {"usd": value}, "2026-01-01T00:00:00Z")
