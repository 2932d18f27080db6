"""Three Gunicorn replicas, each on its own empty local directory, sharing one S3 bucket
(IMAGE_GEN_STORAGE_URL=s3://...), one PostgreSQL database (IMAGE_GEN_DATABASE_URL), one
tokens file and one fake upstream: caps are exact over the three, an Idempotency-Key racing
on all three makes one job, a job whose replica is SIGKILLed is finished by a replica
started afterwards on an empty directory, and listings and cursors are the same on each."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import fake_openai as fake
from tests.support.gunicorn_server import HTTPAnswer, Service, launch_gunicorn
from tests.support.postgres import dsn_for
from tests.support.seaweed import SeaweedFS
from tests.support.service import ALICE, BOB, TEST_KEY, bearer, line, wait_for

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
BUCKET = "three-replicas"
RESUMED_WITHIN = 60.0  # seconds from the kill: the lease (30 s), a poll, and the job again
Replicas = Callable[..., Service]
UPSTREAM_PATHS = {"generate": "/v1/images/generations", "edit": "/v1/images/edits"}


@pytest.fixture
def replicas(tmp_path: Path, fake_openai: Any, seaweed_server: SeaweedFS) -> Iterator[Replicas]:
    """Starts replicas (`replicas(name, **env)`), each on its own new local directory, on
    the test's bucket prefix, database and tokens file; every one is stopped afterwards."""
    seaweed_server.create_bucket(BUCKET)
    prefix = uuid.uuid4().hex
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "openai_api_key").write_text(TEST_KEY + "\n")
    (shared / "tokens").write_text(
        f"{line('alice', ALICE, 'images_per_hour=10')}\n{line('bob', BOB)}\n"
    )
    env = {
        **seaweed_server.variables(),
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "40",
        "IMAGE_GEN_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
        "IMAGE_GEN_DATABASE_URL": dsn_for(tmp_path),
        "IMAGE_GEN_TOKENS_FILE": str(shared / "tokens"),
        "IMAGE_GEN_JOB_POLL_INTERVAL": "0.2",
        "OPENAI_API_KEY_FILE": str(shared / "openai_api_key"),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
    }
    started: list[Service] = []

    def start(name: str, **extra: str) -> Service:
        directory = tmp_path / name
        assert not directory.exists()  # each replica's local directory is new and its own
        service = launch_gunicorn(directory, {**env, **extra})
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
    secrets = (TEST_KEY, ALICE, BOB, "postgresql://")
    for service in started:
        assert not [s for s in secrets if s in service.log_text()]
    client = seaweed_server.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/", MaxKeys=1000)
    for entry in listed.get("Contents", []):
        if entry["Key"].endswith("metadata.json"):
            text = client.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read().decode()
            assert not [s for s in secrets if s in text], entry["Key"]


def three(replicas: Replicas) -> list[Service]:
    return [replicas(name) for name in ("a", "b", "c")]


def no_secrets(answers: list[HTTPAnswer]) -> None:
    for answer in answers:
        text = answer.body.decode(errors="replace") + json.dumps(answer.headers)
        assert not [s for s in (TEST_KEY, ALICE, BOB, "postgresql://") if s in text]


def local_images(service: Service) -> list[str]:
    """What a replica left in its own directory besides its books (nothing, with S3)."""
    if not service.images.exists():
        return []
    return [p.name for p in service.images.iterdir() if not p.name.startswith(".")]


def fetch(service: Service, path: str) -> tuple[int, bytes]:
    """A GET with a client token: (status, body)."""
    answer = service.request("GET", path, headers=bearer(BOB))
    return answer.status, answer.body


def job(service: Service, job_id: str) -> dict[str, Any]:
    answer = service.request("GET", f"/jobs/{job_id}", headers=bearer(BOB))
    assert answer.status == 200, answer.body
    no_secrets([answer])
    body: dict[str, Any] = answer.json()
    return body


def finished(service: Service, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job's record once it has ended, as `service` answers it."""
    return wait_for(
        lambda: (record := job(service, job_id))["status"] in ("completed", "failed") and record,
        timeout,
        f"job {job_id} finishing",
    )


def spread(calls: list[tuple[Service, str, dict[str, Any], dict[str, str]]]) -> list[HTTPAnswer]:
    """Send every POST at once, each to its replica; the answers in the calls' order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(
            pool.map(lambda c: c[0].request("POST", c[1], c[2], headers=c[3], timeout=60), calls)
        )


# --- caps ------------------------------------------------------------------------------------
def test_thirty_calls_over_three_replicas_against_a_cap_of_ten_make_exactly_ten(
    replicas, fake_openai
):
    services = three(replicas)
    fake_openai.latency = 0.3  # every call overlaps the others
    answers = spread(
        [(services[n % 3], "/generate", {"prompt": f"fox {n}"}, bearer(ALICE)) for n in range(30)]
    )

    statuses = [answer.status for answer in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses
    assert {a.json()["code"] for a in answers if a.status == 429} == {"QUOTA_EXCEEDED"}
    assert all("retry-after" in a.headers for a in answers if a.status == 429)
    assert len(fake_openai.image_requests) == 10
    no_secrets(answers)
    for service in services:  # every replica counts the same ten
        usage = service.request("GET", "/usage", headers=bearer(ALICE)).json()["token"]
        assert usage["images_last_hour"] == 10
        listed = service.request("GET", "/images?limit=50", headers=bearer(ALICE)).json()
        assert len(listed["images"]) == 10 and listed["next_cursor"] is None
        assert local_images(service) == []


def test_thirty_async_calls_over_three_replicas_against_a_cap_of_ten_queue_exactly_ten(
    replicas, fake_openai
):
    services = three(replicas)
    fake_openai.latency = 0.2
    answers = spread(
        [
            (
                services[n % 3],
                "/generate",
                {"prompt": f"queued fox {n}"},
                {**ASYNC, **bearer(ALICE)},
            )
            for n in range(30)
        ]
    )

    statuses = [answer.status for answer in answers]
    assert statuses.count(202) == 10 and statuses.count(429) == 20, statuses
    assert {a.json()["code"] for a in answers if a.status == 429} == {"QUOTA_EXCEEDED"}
    no_secrets(answers)
    for n, answer in enumerate(a for a in answers if a.status == 202):
        done = finished(services[n % 3], answer.json()["job_id"], 60.0)
        assert done["status"] == "completed", done
    assert len(fake_openai.image_requests) == 10
    usage = services[2].request("GET", "/usage", headers=bearer(ALICE)).json()["token"]
    assert usage["images_last_hour"] == 10


# --- idempotency -----------------------------------------------------------------------------
def test_one_idempotency_key_racing_on_three_replicas_makes_one_job_and_one_call(
    replicas, fake_openai
):
    services = three(replicas)
    keys = [f"race-{n}-{uuid.uuid4()}" for n in range(5)]
    for key in keys:
        fake_openai.enqueue(fake.slow(0.5))  # the first call is still running as the rest land
        calls = [
            (
                service,
                "/generate",
                {"prompt": f"a fox for {key}"},
                {**bearer(BOB), "Idempotency-Key": key},
            )
            for service in services
            for _ in range(2)
        ]
        answers = spread(calls)
        no_secrets(answers)

        # The documented answers: the first request's 200, its replay (Idempotent-Replayed),
        # or 409 IDEMPOTENCY_KEY_IN_USE for one that waited the whole request deadline.
        first = [a for a in answers if a.status == 200 and "idempotent-replayed" not in a.headers]
        replayed = [a for a in answers if a.headers.get("idempotent-replayed") == "true"]
        in_use = [a for a in answers if a.status == 409]
        assert len(first) == 1, [a.status for a in answers]
        assert len(first) + len(replayed) + len(in_use) == len(answers)
        assert all(a.status == 200 for a in replayed)
        assert {a.json()["code"] for a in in_use} <= {"IDEMPOTENCY_KEY_IN_USE"}
        succeeded = [a.json() for a in first + replayed]
        assert len({body["job_id"] for body in succeeded}) == 1
        assert len({json.dumps(body["images"], sort_keys=True) for body in succeeded}) == 1
        image = succeeded[0]["images"][0]
        served = [fetch(service, f"/images/{image['id']}") for service in services]
        assert {status for status, _ in served} == {200}
        assert len({data for _, data in served}) == 1

    assert len(fake_openai.image_requests) == len(keys)  # one upstream call per key
    listed = services[0].request("GET", "/images?limit=50", headers=bearer(BOB)).json()
    assert len({image["job_id"] for image in listed["images"]}) == len(keys)


def test_one_idempotency_key_racing_on_three_replicas_queues_one_async_job(replicas, fake_openai):
    services = three(replicas)
    fake_openai.latency = 0.3
    jobs = []
    for n in range(3):
        key = f"async-race-{n}-{uuid.uuid4()}"
        headers = {**ASYNC, **bearer(BOB), "Idempotency-Key": key}
        calls = [(s, "/generate", {"prompt": f"queued once {n}"}, headers) for s in services * 2]
        answers = spread(calls)
        no_secrets(answers)
        assert {a.status for a in answers} <= {202, 409}, [a.status for a in answers]
        accepted = [a for a in answers if a.status == 202]
        assert sum("idempotent-replayed" not in a.headers for a in accepted) == 1
        assert {a.json()["code"] for a in answers if a.status == 409} <= {"IDEMPOTENCY_KEY_IN_USE"}
        ids = {a.json()["job_id"] for a in accepted}
        assert len(ids) == 1
        jobs.append(ids.pop())

    for n, job_id in enumerate(jobs):
        assert finished(services[n % 3], job_id)["status"] == "completed"
    assert len(fake_openai.image_requests) == len(jobs)  # one job, one call, per key


# --- a job seen from every replica --------------------------------------------------------------
def follow_events(service: Service, job_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Read /jobs/<id>/events over one connection until the stream ends."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    asked = urllib.request.Request(f"{service.url}/jobs/{job_id}/events", headers=bearer(BOB))
    with urllib.request.urlopen(asked, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            text = raw.decode().rstrip("\n")
            if text:
                name, _, value = text.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                events.append({"event": fields["event"], "data": json.loads(fields["data"])})
            fields = {}
    return events


def test_a_job_running_on_one_replica_streams_its_events_and_previews_from_the_others(
    replicas, fake_openai
):
    a, b, c = three(replicas)
    fake_openai.latency = 2.0
    answer = a.request(
        "POST", "/generate", {"prompt": "watched", "count": 2}, headers={**ASYNC, **bearer(BOB)}
    )
    assert answer.status == 202, answer.body
    job_id = answer.json()["job_id"]

    events = follow_events(b, job_id)  # A runs it, B tells it
    names = [event["event"] for event in events]
    assert names[-1] == "completed" and names.count("image") == 2, names
    assert "partial_image" in names and names.index("partial_image") < names.index("image")
    for event in events:
        if event["event"] in ("partial_image", "image"):
            status, data = fetch(c, event["data"]["url"])  # and C serves what it shows
            assert status == 200 and data.startswith(b"\x89PNG")
    done = events[-1]["data"]
    assert done == job(c, job_id) == job(a, job_id)
    no_secrets([answer])
    for image in done["images"]:
        served = {fetch(service, image["url"]) for service in (a, b, c)}
        assert len(served) == 1 and next(iter(served))[0] == 200


# --- a job outliving its replica ---------------------------------------------------------------
def kill_replica(service: Service) -> None:
    """SIGKILL the master and every worker, as a lost node would: the master is stopped
    first so that it cannot start a new worker in between."""
    os.kill(service.process.pid, signal.SIGSTOP)
    for pid in service.worker_pids():
        os.kill(pid, signal.SIGKILL)
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=10)
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in service.worker_pids()))


@pytest.mark.parametrize("operation", ["generate", "edit"])
def test_a_job_whose_replica_is_killed_is_finished_by_a_replica_started_afterwards(
    replicas, fake_openai, operation
):
    a = replicas("a")
    # B serves reads but looks for other replicas' unfinished jobs only every ten minutes,
    # so the job is left for C, which starts after A is gone, on an empty local directory.
    b = replicas("b", IMAGE_GEN_JOB_POLL_INTERVAL="600")
    body: dict[str, Any] = {"prompt": "outlive my replica [latency=4]", "count": 2}
    source = None
    if operation == "edit":  # its input, made on B, is kept in the database for the job
        made = b.request("POST", "/generate", {"prompt": "a cat"}, headers=bearer(BOB))
        assert made.status == 200, made.body
        body["image_id"] = made.json()["images"][0]["id"]
        source = fetch(b, f"/images/{body['image_id']}")[1]
    calls_before = len(fake_openai.image_requests)
    answer = a.request("POST", f"/{operation}", body, headers={**ASYNC, **bearer(BOB)})
    assert answer.status == 202, answer.body
    job_id = answer.json()["job_id"]
    wait_for(lambda: len(fake_openai.image_requests) > calls_before, what="the upstream call on A")
    assert job(b, job_id)["status"] == "running"  # B sees A's job, and leaves it to A

    kill_replica(a)
    killed = time.monotonic()
    cut_off = len(fake_openai.image_requests)
    c = replicas("c")
    assert local_images(c) == []

    done = finished(c, job_id, RESUMED_WITHIN)
    assert time.monotonic() - killed < RESUMED_WITHIN
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    assert f"adopting job job_id={job_id}" in c.log_text()
    assert f"adopting job job_id={job_id}" not in b.log_text()
    again = fake_openai.image_requests[cut_off:]
    assert again and {r.path for r in again} == {UPSTREAM_PATHS[operation]}  # C asked again
    if source is not None:
        assert all([f.data for f in r.files] == [source] for r in again)
    assert len(done["images"]) == 2
    for image in done["images"]:
        on_b, on_c = fetch(b, image["url"]), fetch(c, image["url"])
        assert on_b[0] == on_c[0] == 200
        assert on_b[1] == on_c[1] and on_b[1].startswith(b"\x89PNG")
    assert job(b, job_id) == done
    for service in (b, c):
        assert local_images(service) == []


# --- listings ----------------------------------------------------------------------------------
def pages(services: list[Service], limit: int) -> list[dict[str, Any]]:
    """Every page of the listing, the n-th asked of services[n % len(services)]."""
    found: list[dict[str, Any]] = []
    cursor = None
    for n in range(50):  # bounded
        query = f"/images?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        answer = services[n % len(services)].request("GET", query, headers=bearer(BOB))
        assert answer.status == 200, answer.body
        found.append(answer.json())
        cursor = found[-1]["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("the listing never ended")


def test_listings_and_cursors_are_the_same_on_every_replica(replicas, fake_openai):
    services = three(replicas)
    made = []
    for n in range(7):  # one after the other: a known order, newest job first
        answer = services[n % 3].request(
            "POST", "/generate", {"prompt": f"p{n}", "count": 1 + n % 2}, headers=bearer(BOB)
        )
        assert answer.status == 200, answer.body
        made.append(answer.json())
    expected = [image["id"] for body in reversed(made) for image in body["images"]]

    for limit in (2, 3):
        on_each = [pages([service], limit) for service in services]
        assert on_each[0] == on_each[1] == on_each[2]
        hopping = pages(services, limit)  # each cursor followed on the next replica
        assert hopping == on_each[0]
        assert [image["id"] for page in hopping for image in page["images"]] == expected
        assert all(len(page["images"]) <= limit for page in hopping)

    thumb = f"/images/{made[0]['images'][0]['id']}?width=16"
    made_on_a = services[0].request("GET", thumb, headers=bearer(BOB))
    assert made_on_a.status == 200
    for service in services[1:]:  # the thumbnail A made and cached, as B and C serve it
        again = service.request("GET", thumb, headers=bearer(BOB))
        assert again.status == 200 and again.body == made_on_a.body
        assert again.headers["etag"] == made_on_a.headers["etag"]

    gone = made[3]["images"][0]["id"]
    assert services[1].request("DELETE", f"/images/{gone}", headers=bearer(BOB)).status == 200
    after = [pages([service], 2) for service in services]
    assert after[0] == after[1] == after[2] == pages(services[::-1], 2)
    assert gone not in json.dumps(after[0])
    for service in services:
        assert fetch(service, f"/images/{gone}")[0] == 404
        assert local_images(service) == []
