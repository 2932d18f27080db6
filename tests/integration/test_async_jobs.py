"""Asynchronous jobs through the Flask app against the fake upstream: `Prefer: respond-async`
answers 202, polling and Server-Sent Events show progress and streamed previews, failures
are reported, the running jobs are bounded, jobs of a dead process are resumed or failed,
and completion webhooks are signed."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from imagegen.books.files import FileJobBook
from imagegen.jobs.prefer import MAX_WAIT, parse_prefer
from imagegen.jobs.webhooks import sign
from imagegen.services import services
from imagegen.settings import Settings
from imagegen.storage.images import ImageStore
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support import fake_openai as fake
from tests.support.gunicorn_server import free_port
from tests.support.jobs import ASYNC, SECRET, Receiver, finished, job, parse_sse, verify
from tests.support.metrics import scrape, value
from tests.support.pictures import rgba_png
from tests.support.service import TEST_KEY, wait_for


@pytest.fixture
def client(make_jobs_app: Callable[..., Flask]) -> FlaskClient:
    return make_jobs_app().test_client()


def read_events(client: FlaskClient, job_id: str, **headers: str) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/events", headers=headers, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    return parse_sse(b"".join(response.response).decode())


def records_of(settings: Settings) -> FileJobBook:
    return FileJobBook(settings.images_dir, fsync=False, max_running=settings.max_running_jobs)


# --- the 202 flow ---------------------------------------------------------------------------


def test_prefer_respond_async_answers_202_with_location_then_the_job_completes(client, fake_openai):
    fake_openai.latency = 0.5
    asked = {"prompt": "a lighthouse at dusk", "count": 2, "size": "1024x1024", "quality": "high"}

    response = client.post("/generate", json=asked, headers=ASYNC)

    assert response.status_code == 202
    body = response.get_json()
    job_id = body["job_id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"
    assert response.headers["Preference-Applied"] == "respond-async"
    assert response.headers["Retry-After"].isdigit()
    assert body["status"] in ("queued", "running")
    assert body["request"] == {**asked, "model": "gpt-image-2"}
    assert body["progress"] == {"images_done": 0, "count": 2, "partial_images": 0}
    assert body["images"] == []
    assert body["events_url"] == f"/jobs/{job_id}/events"

    done = finished(client, job_id)
    assert done["status"] == "completed"
    assert len(done["images"]) == 2
    for image in done["images"]:
        served = client.get(image["url"])
        assert served.status_code == 200 and served.mimetype == "image/png"
    listed = client.get(f"/images?job_id={job_id}").get_json()["images"]
    assert {image["id"] for image in listed} == {image["id"] for image in done["images"]}
    for answer in (body, done):
        assert "b64_json" not in json.dumps(answer)


def test_without_prefer_generate_stays_synchronous_and_does_not_stream(client, fake_openai):
    response = client.post("/generate", json={"prompt": "plain"})

    assert response.status_code == 200
    assert "Location" not in response.headers
    assert "Preference-Applied" not in response.headers
    body = response.get_json()
    assert body["status"] == "completed" and len(body["images"]) == 1
    assert "progress" not in body and "events_url" not in body
    assert "stream" not in fake_openai.image_requests[0].json


def test_polling_shows_streamed_previews_while_the_job_runs(client, fake_openai):
    fake_openai.latency = 1.5
    job_id = client.post("/generate", json={"prompt": "slowly"}, headers=ASYNC).get_json()["job_id"]

    running = wait_for(
        lambda: (body := job(client, job_id))["progress"]["partial_images"] >= 1 and body,
        what="a partial preview",
    )
    response = client.get(f"/jobs/{job_id}")
    assert running["status"] == "running"
    assert response.headers["Retry-After"].isdigit()
    preview = running["previews"][0]
    assert preview["image"] == 0 and preview["partial_image_index"] == 0
    served = client.get(preview["url"])
    assert served.status_code == 200 and served.mimetype == "image/png"
    assert served.data.startswith(b"\x89PNG")

    assert finished(client, job_id)["status"] == "completed"
    sent = fake_openai.image_requests[0].json
    assert sent["stream"] is True and sent["partial_images"] == 2


def test_events_arrive_in_order_and_end_with_the_completed_job(client, fake_openai):
    fake_openai.latency = 0.6
    job_id = client.post("/generate", json={"prompt": "two", "count": 2}, headers=ASYNC).get_json()[
        "job_id"
    ]

    events = read_events(client, job_id)

    assert [event["id"] for event in events] == list(range(1, len(events) + 1))
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "completed"]
    for image in (0, 1):
        partials = [
            e["data"]["partial_image_index"]
            for e in events
            if e["event"] == "partial_image" and e["data"]["image"] == image
        ]
        assert partials == [0, 1]
    done = [e["data"]["images_done"] for e in events if e["event"] == "image"]
    assert done == [1, 2]
    first_image = next(e["id"] for e in events if e["event"] == "image")
    assert any(e["event"] == "partial_image" and e["id"] < first_image for e in events)
    assert events[-1]["event"] == "completed"
    assert events[-1]["data"] == job(client, job_id)
    for event in events:
        if event["event"] in ("partial_image", "image"):
            assert client.get(event["data"]["url"]).status_code == 200


def test_events_resume_after_last_event_id_and_a_stored_job_has_one_event(client, fake_openai):
    job_id = client.post("/generate", json={"prompt": "resume"}, headers=ASYNC).get_json()["job_id"]
    everything = read_events(client, job_id)

    later = read_events(client, job_id, **{"Last-Event-ID": str(everything[1]["id"])})
    assert later == everything[2:]

    stored = client.post("/generate", json={"prompt": "sync"}).get_json()
    events = read_events(client, stored["job_id"])
    assert [e["event"] for e in events] == ["completed"]
    assert events[0]["data"]["images"][0]["id"] == stored["images"][0]["id"]


def test_a_client_that_has_every_event_of_an_ended_job_is_told_204_so_it_stops_reconnecting(
    client, fake_openai
):
    job_id = client.post("/generate", json={"prompt": "all"}, headers=ASYNC).get_json()["job_id"]
    last = read_events(client, job_id)[-1]["id"]
    stored = client.post("/generate", json={"prompt": "sync"}).get_json()["job_id"]

    for followed, seen in [(job_id, last), (job_id, last + 5), (stored, 1), (stored, 7)]:
        for asked in (
            {"headers": {"Last-Event-ID": str(seen)}},
            {"query_string": {"last_event_id": seen}},
        ):
            response = client.get(f"/jobs/{followed}/events", **asked)
            assert response.status_code == 204, (followed, seen)
            assert response.data == b""
    # One event short of the end still gets the rest as a stream.
    assert [e["id"] for e in read_events(client, job_id, **{"Last-Event-ID": str(last - 1)})] == [
        last
    ]


def test_disconnecting_from_the_events_leaves_the_job_running(client, fake_openai):
    fake_openai.latency = 1.0
    job_id = client.post("/generate", json={"prompt": "bye"}, headers=ASYNC).get_json()["job_id"]
    response = client.get(f"/jobs/{job_id}/events", buffered=False)
    stream = iter(response.response)
    assert next(stream).startswith(b"retry:")
    assert b"event: status" in next(stream)

    response.close()

    assert finished(client, job_id)["status"] == "completed"


def test_prefer_wait_answers_as_the_synchronous_call_when_done_in_time(client, fake_openai):
    response = client.post("/generate", json={"prompt": "quick"}, headers={"Prefer": "wait=20"})

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "completed" and len(body["images"]) == 1
    assert "Preference-Applied" not in response.headers

    fake_openai.latency = 3
    slow = client.post(
        "/generate", json={"prompt": "slow"}, headers={"Prefer": "respond-async, wait=1"}
    )
    assert slow.status_code == 202
    assert slow.get_json()["status"] in ("queued", "running")


def test_prefer_header_parsing():
    assert parse_prefer(["respond-async"]).respond_async
    assert parse_prefer(['handling=lenient, Respond-Async; x="a,b"']).respond_async
    waiting = parse_prefer(["wait=7"])
    assert waiting.asynchronous and not waiting.respond_async and waiting.wait == 7
    assert parse_prefer(["respond-async", "wait=100000"]).wait == MAX_WAIT
    assert not parse_prefer(["return=minimal", "wait=soon"]).asynchronous
    assert not parse_prefer([]).asynchronous


# --- failures ---------------------------------------------------------------------------------


def test_a_failed_job_reports_the_error_a_synchronous_call_would_have_answered(client, fake_openai):
    fake_openai.enqueue(fake.moderation_blocked())
    job_id = client.post("/generate", json={"prompt": "no"}, headers=ASYNC).get_json()["job_id"]

    done = finished(client, job_id)

    assert done["status"] == "failed"
    assert done["code"] == "CONTENT_POLICY_VIOLATION" and done["http_status"] == 400
    assert "safety system" in done["error"]
    events = read_events(client, job_id)
    assert events[-1]["event"] == "failed" and events[-1]["data"]["code"] == done["code"]
    assert client.get("/images").get_json()["images"] == []

    fake_openai.enqueue(fake.invalid_api_key())
    job_id = client.post("/generate", json={"prompt": "key"}, headers=ASYNC).get_json()["job_id"]
    done = finished(client, job_id)
    assert done["code"] == "SERVICE_ERROR" and done["http_status"] == 500
    assert TEST_KEY not in json.dumps(done)


def test_a_refusal_in_the_middle_of_the_stream_fails_the_job(client, fake_openai):
    partial = {
        "type": "image_generation.partial_image",
        "b64_json": base64.b64encode(fake.make_png()).decode(),
        "partial_image_index": 0,
    }
    refusal = {
        "type": "error",
        "error": {
            "type": "image_generation_user_error",
            "code": "moderation_blocked",
            "message": "Your request was rejected by the safety system.",
        },
    }
    stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (partial, refusal))
    fake_openai.enqueue(
        fake.FakeResponse(kind="raw", content_type="text/event-stream", body=stream.encode())
    )
    job_id = client.post("/generate", json={"prompt": "late"}, headers=ASYNC).get_json()["job_id"]

    done = finished(client, job_id)

    assert done["status"] == "failed" and done["code"] == "CONTENT_POLICY_VIOLATION"
    assert len(fake_openai.image_requests) == 1, "a refusal mid-stream is not retried"


def test_an_event_stream_with_crlf_comments_and_a_done_marker_is_understood(client, fake_openai):
    image = base64.b64encode(fake.make_png(4, 4)).decode()
    partial = {
        "type": "image_generation.partial_image",
        "b64_json": image,
        "partial_image_index": 0,
    }
    done = {"type": "image_generation.completed", "b64_json": image, "size": "1024x1024"}
    stream = (
        ": keep-alive\r\n\r\n"
        f"event: image_generation.partial_image\r\ndata: {json.dumps(partial)}\r\n\r\n"
        f"event: image_generation.completed\r\ndata: {json.dumps(done)}\r\n\r\n"
        "data: [DONE]\r\n\r\n"
    )
    fake_openai.enqueue(
        fake.FakeResponse(kind="raw", content_type="text/event-stream", body=stream.encode())
    )
    job_id = client.post("/generate", json={"prompt": "crlf"}, headers=ASYNC).get_json()["job_id"]

    body = finished(client, job_id)

    assert body["status"] == "completed"
    assert (body["images"][0]["width"], body["images"][0]["height"]) == (4, 4)
    assert [e["event"] for e in read_events(client, job_id)].count("partial_image") == 1


def test_an_upstream_that_answers_without_streaming_still_completes_the_job(client, fake_openai):
    answer = {"created": 1, "data": [{"b64_json": base64.b64encode(fake.make_png()).decode()}]}
    fake_openai.enqueue(fake.FakeResponse(kind="raw", body=json.dumps(answer).encode()))
    job_id = client.post("/generate", json={"prompt": "whole"}, headers=ASYNC).get_json()["job_id"]

    assert finished(client, job_id)["status"] == "completed"


def test_refusals_are_the_answer_and_queue_nothing(client, fake_openai, settings):
    bad = client.post("/generate", json={"prompt": ""}, headers=ASYNC)
    assert bad.status_code == 400 and bad.get_json()["code"] == "VALIDATION_ERROR"

    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "javascript:alert(1)", "gopher://x"):
        refused = client.post(
            "/generate",
            json={"prompt": "hook"},
            headers={**ASYNC, "Webhook-URL": url, "Webhook-Secret": SECRET},
        )
        assert refused.status_code == 400, url
        assert refused.get_json()["field"] == "Webhook-URL"
    no_secret = client.post(
        "/generate", json={"prompt": "hook"}, headers={**ASYNC, "Webhook-URL": "http://127.0.0.1/"}
    )
    assert no_secret.status_code == 400 and no_secret.get_json()["field"] == "Webhook-Secret"
    not_async = client.post(
        "/generate", json={"prompt": "hook"}, headers={"Webhook-URL": "http://127.0.0.1/"}
    )
    assert not_async.status_code == 400

    assert fake_openai.image_requests == []
    assert records_of(settings).active() == []


def test_webhooks_to_private_addresses_need_the_operator(make_jobs_app, fake_openai):
    client = make_jobs_app(webhook_hosts=()).test_client()
    for url in ("http://127.0.0.1:9/", "http://169.254.169.254/latest", "http://localhost/x"):
        refused = client.post(
            "/generate",
            json={"prompt": "hook"},
            headers={**ASYNC, "Webhook-URL": url, "Webhook-Secret": SECRET},
        )
        assert refused.status_code == 400, url
        assert "IMAGE_GEN_WEBHOOK_HOSTS" in refused.get_json()["error"]
    assert fake_openai.image_requests == []


def test_a_job_can_be_deleted_once_it_has_finished(client, fake_openai):
    fake_openai.latency = 1.0
    job_id = client.post("/generate", json={"prompt": "del"}, headers=ASYNC).get_json()["job_id"]

    early = client.delete(f"/jobs/{job_id}")
    assert early.status_code == 409 and early.get_json()["code"] == "JOB_NOT_FINISHED"

    done = finished(client, job_id)
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(done["images"][0]["url"]).status_code == 404

    fake_openai.latency = 0
    fake_openai.enqueue(fake.server_error(400))
    failed = client.post("/generate", json={"prompt": "x"}, headers=ASYNC).get_json()["job_id"]
    assert finished(client, failed)["status"] == "failed"
    assert client.delete(f"/jobs/{failed}").status_code == 200
    assert client.get(f"/jobs/{failed}").status_code == 404


def test_a_job_reads_completed_only_once_it_can_be_deleted(client, fake_openai):
    runner = services(client.application).jobs
    stored, go_on = threading.Event(), threading.Event()
    complete = runner._complete

    def slow_complete(job, metadata):  # the images are stored; the record is not updated yet
        stored.set()
        go_on.wait(10)
        complete(job, metadata)

    runner._complete = slow_complete
    job_id = client.post("/generate", json={"prompt": "x"}, headers=ASYNC).get_json()["job_id"]
    assert stored.wait(10), "the job never stored its images"
    try:
        assert job(client, job_id)["status"] == "running"
        assert client.delete(f"/jobs/{job_id}").status_code == 409
    finally:
        go_on.set()

    assert finished(client, job_id)["status"] == "completed"
    assert client.delete(f"/jobs/{job_id}").status_code == 200


# --- bounds -----------------------------------------------------------------------------------


def test_running_jobs_are_bounded_and_the_rest_wait_in_order(make_jobs_app, fake_openai):
    client = make_jobs_app(max_running_jobs=1, max_queued_jobs=2).test_client()
    fake_openai.latency = 2.5  # long enough that the checks below run while job 0 does

    def submit(prompt: str) -> str:
        return client.post("/generate", json={"prompt": prompt}, headers=ASYNC).get_json()["job_id"]

    # Job 0 must have left the queue before the queue is filled, or job 2 finds it full.
    ids = [submit("job 0")]
    wait_for(lambda: job(client, ids[0])["status"] == "running", what="the first job running")
    # "running" is recorded just before the upstream call is made.
    wait_for(lambda: len(fake_openai.image_requests) == 1, what="the first upstream call")
    ids += [submit("job 1"), submit("job 2")]
    second, third = job(client, ids[1]), job(client, ids[2])
    assert second["status"] == third["status"] == "queued"
    assert second["queue"] == {"ahead": 0, "running": 1, "max_running": 1}
    assert third["queue"]["ahead"] == 1
    full = client.post("/generate", json={"prompt": "one too many"}, headers=ASYNC)
    assert full.status_code == 503
    assert full.get_json()["code"] == "QUEUE_FULL" and full.headers["Retry-After"].isdigit()
    assert len(fake_openai.image_requests) == 1

    for job_id in ids:
        assert finished(client, job_id)["status"] == "completed"
    prompts = [request.json["prompt"] for request in fake_openai.image_requests]
    assert prompts == ["job 0", "job 1", "job 2"]


# --- jobs whose process died --------------------------------------------------------------


def orphan(
    app: Flask,
    settings: Settings,
    body: dict[str, Any] | Callable[[FlaskClient], Any],
    **record: Any,
) -> str:
    """A job accepted by `app` whose process then "dies": queued, unowned, optionally
    rewritten as if it had been running. `body` is /generate's, or a function that submits
    the job with the client it is given."""
    holder = records_of(services(app).settings).take_slot()  # keep the job from starting
    assert holder is not None
    client = app.test_client()
    submit = body if callable(body) else lambda c: c.post("/generate", json=body, headers=ASYNC)
    job_id = submit(client).get_json()["job_id"]
    services(app).jobs.shutdown(0)  # lets go of it, as a dead process would
    holder.release()
    if record:  # rewritten as the service writes records: whole, by a rename
        path = settings.images_dir / ".jobs" / job_id / "job.json"
        staged = path.with_name("job.json.test-tmp")
        staged.write_text(json.dumps({**json.loads(path.read_text()), **record}))
        os.replace(staged, path)
    return job_id


def test_a_queued_job_of_a_dead_process_is_run_by_another(make_jobs_app, settings, fake_openai):
    job_id = orphan(make_jobs_app(max_running_jobs=1), settings, {"prompt": "adopt me"})

    client = make_jobs_app(max_running_jobs=1).test_client()

    done = finished(client, job_id)
    assert done["status"] == "completed"
    assert [r.json["prompt"] for r in fake_openai.image_requests] == ["adopt me"]
    assert job(client, job_id)["images"][0]["prompt"] == "adopt me"


def test_a_job_let_go_of_while_a_slot_was_being_taken_for_it_gives_the_slot_back(
    make_jobs_app, fake_openai
):
    app = make_jobs_app(max_running_jobs=1)
    runner = services(app).jobs
    holder = records_of(services(app).settings).take_slot()  # the job waits for this slot
    assert holder is not None
    took, go_on = threading.Event(), threading.Event()
    take_slot = runner.records.take_slot

    def slow_take_slot(*args, **kwargs):
        slot = take_slot(*args, **kwargs)
        if slot is not None:
            took.set()
            go_on.wait(10)
        return slot

    # In place before the dispatcher starts: one already inside the real take_slot when
    # the holder lets go would take the slot unseen and run the job.
    runner.records.take_slot = slow_take_slot
    job_id = (
        app.test_client()
        .post("/generate", json={"prompt": "x"}, headers=ASYNC)
        .get_json()["job_id"]
    )
    holder.release()
    assert took.wait(10), "the dispatcher never took the freed slot"
    runner.shutdown(0)  # lets go of the queued job while the dispatcher holds its slot
    go_on.set()

    other = make_jobs_app(max_running_jobs=1).test_client()
    assert finished(other, job_id)["status"] == "completed"
    assert len(fake_openai.image_requests) == 1


def test_a_job_claimed_while_its_claimant_shuts_down_is_let_go_of(
    make_jobs_app, settings, fake_openai
):
    first, claimant = make_jobs_app(max_running_jobs=1), make_jobs_app(max_running_jobs=1)
    runner = services(claimant).jobs
    took, go_on = threading.Event(), threading.Event()
    claim = runner.records.claim

    def slow_claim(*args, **kwargs):
        claimed = claim(*args, **kwargs)
        if claimed is not None:
            took.set()
            go_on.wait(10)
        return claimed

    runner.records.claim = slow_claim  # before its dispatcher starts
    job_id = orphan(first, settings, {"prompt": "let go"})
    runner.ensure_started()
    assert took.wait(10), "the claimant never claimed the orphan"
    runner.shutdown(0)  # while its dispatcher holds the claimed job
    go_on.set()

    other = make_jobs_app(max_running_jobs=1).test_client()
    assert finished(other, job_id)["status"] == "completed"
    assert [r.json["prompt"] for r in fake_openai.image_requests] == ["let go"]


def test_an_interrupted_running_job_is_started_again(make_jobs_app, settings, fake_openai):
    job_id = orphan(
        make_jobs_app(max_running_jobs=1),
        settings,
        {"prompt": "again", "count": 2},
        status="running",
        attempts=1,
    )

    client = make_jobs_app().test_client()

    done = finished(client, job_id)
    assert done["status"] == "completed" and len(done["images"]) == 2
    statuses = [e["data"] for e in read_events(client, job_id) if e["event"] == "status"]
    assert [(s["status"], s["attempts"]) for s in statuses][-3:] == [
        ("queued", 1),
        ("running", 2),
        ("completed", 2),
    ]


def test_images_stored_just_before_the_process_died_are_not_made_again(
    make_jobs_app, settings, fake_openai
):
    job_id = orphan(
        make_jobs_app(max_running_jobs=1),
        settings,
        {"prompt": "stored"},
        status="running",
        attempts=2,
    )
    image = GeneratedImage(fake.make_png(), "png", 8, 8)
    request = {"prompt": "stored", "model": "gpt-image-2", "count": 1, "size": "1024x1024"}
    ImageStore.on_disk(settings.images_dir, fsync=False).save_job(
        request, Generation([image]), job_id=job_id
    )

    client = make_jobs_app().test_client()

    done = finished(client, job_id)
    assert done["status"] == "completed" and done["attempts"] == 2
    assert fake_openai.image_requests == []


def async_edit(files: list[tuple[str, str, bytes]], **fields: Any) -> Callable[[FlaskClient], Any]:
    """Submits an asynchronous multipart /edit: `files` are (field, filename, bytes)."""
    data: dict[str, Any] = {"prompt": "a hat", **fields}
    for field, name, content in files:
        data.setdefault(field, []).append((io.BytesIO(content), name))
    return lambda client: client.post(
        "/edit", data=data, content_type="multipart/form-data", headers=ASYNC
    )


def test_an_edit_whose_process_died_is_run_again_from_the_inputs_it_kept(
    make_jobs_app, settings, fake_openai
):
    image, mask = fake.make_png(16, 16, (200, 10, 10)), rgba_png(16, 16)
    files = [("image", "cat.png", image), ("mask", "mask.png", mask)]
    job_id = orphan(
        make_jobs_app(max_running_jobs=1),
        settings,
        async_edit(files, quality="low"),
        status="running",
        attempts=1,
    )
    kept = settings.images_dir / ".jobs" / job_id / "inputs"
    assert sorted(path.name for path in kept.iterdir()) == ["image-1.png", "mask.png"]

    client = make_jobs_app(max_running_jobs=1).test_client()

    done = finished(client, job_id)
    assert done["status"] == "completed" and done["attempts"] == 2
    (call,) = fake_openai.image_requests
    assert call.path == "/v1/images/edits"
    assert [(f.name, f.data) for f in call.files] == [("image", image), ("mask", mask)]
    assert call.form["prompt"] == "a hat" and call.form["quality"] == "low"
    assert job(client, job_id)["images"][0]["prompt"] == "a hat"
    wait_for(lambda: not kept.exists(), what="the inputs dropped once the job ended")
    fresh = async_edit(files, quality="low")(client).get_json()["job_id"]
    assert done["cost"]["estimated_usd"] == finished(client, fresh)["cost"]["estimated_usd"] > 0


def test_a_markup_edit_whose_process_died_is_run_again_with_its_markup(
    make_jobs_app, settings, fake_openai
):
    image, markup = fake.make_png(16, 16, (10, 200, 10)), rgba_png(16, 16)
    files = [("image", "cup.png", image), ("markup", "notes.png", markup)]
    job_id = orphan(
        make_jobs_app(max_running_jobs=1),
        settings,
        async_edit(files, model="gpt-image-2.6-flare"),
        status="running",
        attempts=1,
    )
    kept = settings.images_dir / ".jobs" / job_id / "inputs"
    assert sorted(path.name for path in kept.iterdir()) == ["image-1.png", "markup.png"]

    client = make_jobs_app(max_running_jobs=1).test_client()

    done = finished(client, job_id)
    assert done["status"] == "completed" and done["attempts"] == 2
    (call,) = fake_openai.image_requests
    assert [(f.name, f.data) for f in call.files] == [("image", image), ("markup", markup)]


def test_an_edit_whose_kept_inputs_are_gone_fails_with_a_clear_error(
    make_jobs_app, settings, fake_openai
):
    files = [("image", "cat.png", fake.make_png(16, 16, (200, 10, 10)))]
    job_id = orphan(make_jobs_app(max_running_jobs=1), settings, async_edit(files))
    for path in (settings.images_dir / ".jobs" / job_id / "inputs").iterdir():
        path.write_bytes(fake.make_png(16, 16, (0, 0, 0)))  # not what was uploaded

    client = make_jobs_app(max_running_jobs=1).test_client()

    done = finished(client, job_id)
    assert done["status"] == "failed" and done["code"] == "JOB_INTERRUPTED"
    assert "input images are no longer on disk" in done["error"]
    assert fake_openai.image_requests == []


def test_a_job_interrupted_too_often_fails_with_a_clear_error(make_jobs_app, settings, fake_openai):
    job_id = orphan(
        make_jobs_app(max_running_jobs=1),
        settings,
        {"prompt": "doomed"},
        status="running",
        attempts=2,
    )

    client = make_jobs_app(job_attempts=2).test_client()

    done = finished(client, job_id)
    assert done["status"] == "failed" and done["code"] == "JOB_INTERRUPTED"
    assert "Submit it again" in done["error"]
    assert fake_openai.image_requests == []


# --- webhooks ---------------------------------------------------------------------------------


def test_the_webhook_is_signed_and_retried_until_delivered(client, fake_openai):
    with Receiver(failures=1) as receiver:
        response = client.post(
            "/generate",
            json={"prompt": "call me"},
            headers={**ASYNC, "Webhook-URL": receiver.url, "Webhook-Secret": SECRET},
        )
        job_id = response.get_json()["job_id"]
        wait_for(lambda: len(receiver.received) == 2, what="a retried delivery")
        done = wait_for(
            lambda: (body := job(client, job_id))["webhook"]["status"] != "pending" and body,
            what="the webhook settled",
        )

    assert done["webhook"] == {"status": "delivered", "attempts": 2}
    (first_headers, _), (headers, body) = receiver.received
    assert first_headers["webhook-id"] == headers["webhook-id"]
    assert verify(headers, body, SECRET.encode())
    assert not verify(headers, body, b"another-secret-entirely-0123")
    assert not verify(headers, body.replace(b"completed", b"failed"), SECRET.encode())
    delivered = json.loads(body)
    assert delivered["type"] == "job.completed"
    assert delivered["data"]["job_id"] == job_id
    assert [i["id"] for i in delivered["data"]["images"]] == [i["id"] for i in done["images"]]
    assert "b64_json" not in body.decode()


def test_the_webhook_reports_a_failed_job_with_the_operators_secret(make_jobs_app, fake_openai):
    operator_secret = "whsec_" + base64.b64encode(b"operator-key-32-bytes-long-xxxxx").decode()
    client = make_jobs_app(webhook_secret=operator_secret).test_client()
    fake_openai.enqueue(fake.moderation_blocked())
    with Receiver() as receiver:
        client.post(
            "/generate", json={"prompt": "no"}, headers={**ASYNC, "Webhook-URL": receiver.url}
        )
        wait_for(lambda: receiver.received, what="the delivery")

    headers, body = receiver.received[0]
    assert verify(headers, body, b"operator-key-32-bytes-long-xxxxx")
    delivered = json.loads(body)
    assert delivered["type"] == "job.failed"
    assert delivered["data"]["code"] == "CONTENT_POLICY_VIOLATION"


def test_jobs_whose_webhook_is_still_being_delivered_hold_no_queue_place_or_slot(
    make_jobs_app, fake_openai
):
    # Nothing listens on the port, and the next attempt is a minute away: every delivery
    # stays pending for the whole test.
    client = make_jobs_app(
        max_running_jobs=1, max_queued_jobs=2, webhook_backoff=60.0
    ).test_client()
    unreachable = f"http://127.0.0.1:{free_port()}/hooks/image"
    hooked = {**ASYNC, "Webhook-URL": unreachable, "Webhook-Secret": SECRET}
    pending = []
    for n in range(2):
        answer = client.post("/generate", json={"prompt": f"hooked {n}"}, headers=hooked)
        assert answer.status_code == 202, answer.get_json()
        pending.append(answer.get_json()["job_id"])
        assert finished(client, pending[-1])["status"] == "completed"

    later = [client.post("/generate", json={"prompt": f"later {n}"}, headers=ASYNC) for n in (0, 1)]

    assert [answer.status_code for answer in later] == [202, 202], later[-1].get_json()
    for answer in later:  # one slot, and nothing else holds it
        assert finished(client, answer.get_json()["job_id"])["status"] == "completed"
    for job_id in pending:
        assert job(client, job_id)["webhook"]["status"] == "pending"


def test_a_webhook_its_process_did_not_deliver_is_delivered_by_another(make_jobs_app, fake_openai):
    with Receiver(failures=1) as receiver:
        first = make_jobs_app(webhook_backoff=60.0)  # the retry would wait a minute
        answer = first.test_client().post(
            "/generate",
            json={"prompt": "call me later"},
            headers={**ASYNC, "Webhook-URL": receiver.url, "Webhook-Secret": SECRET},
        )
        job_id = answer.get_json()["job_id"]
        wait_for(lambda: receiver.received, what="the first delivery")
        services(first).jobs.shutdown(5)  # its process stops before the retry

        client = make_jobs_app().test_client()
        done = wait_for(
            lambda: (body := job(client, job_id))["webhook"]["status"] != "pending" and body,
            what="the webhook delivered by the other process",
        )

    assert done["status"] == "completed"
    assert done["webhook"] == {"status": "delivered", "attempts": 2}
    (first_headers, _), (headers, body) = receiver.received
    assert headers["webhook-id"] == first_headers["webhook-id"]
    assert verify(headers, body, SECRET.encode())


def test_signatures_match_the_standard_webhooks_test_vector():
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_previews_and_records_stay_out_of_the_image_listing(client, fake_openai):
    job_id = client.post("/generate", json={"prompt": "hidden"}, headers=ASYNC).get_json()["job_id"]
    finished(client, job_id)

    listed = client.get("/images").get_json()["images"]
    assert [image["job_id"] for image in listed] == [job_id]
    assert client.get(f"/jobs/{job_id}/previews/..%2Fjob.json").status_code == 404
    assert client.get(f"/jobs/{job_id}/previews/job.json").status_code == 404


def test_streamed_upstream_calls_are_timed_and_counted_in_metrics(client, fake_openai):
    fake_openai.enqueue(fake.server_error(503))  # before any event: retried
    job_id = client.post("/generate", json={"prompt": "x"}, headers=ASYNC).get_json()["job_id"]

    assert finished(client, job_id)["status"] == "completed"
    samples = scrape(client)
    attempts = "imagegen_upstream_attempts_total"
    assert value(samples, attempts, endpoint="generations", status="503") == 1
    assert value(samples, attempts, endpoint="generations", status="200") == 1
    latency = "imagegen_upstream_request_duration_seconds_count"
    assert value(samples, latency, endpoint="generations", outcome="success") == 1
    assert [request.json["stream"] for request in fake_openai.image_requests] == [True, True]
