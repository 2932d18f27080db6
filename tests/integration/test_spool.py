"""Images the upstream made (and billed) while S3 stopped answering are not lost: the job is
kept in the images directory's spool, answered 202 `storing`, and stored, byte for byte,
once S3 is back, without a restart. Real SeaweedFS (stopped mid-call), real PostgreSQL, the
fake upstream made slow so that S3 can be stopped while the call is upstream."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from imagegen.books.interfaces import FINAL
from imagegen.jobs import runner
from imagegen.services import services
from imagegen.storage.spool import KEPT_FOR, SUPERSEDED
from tests.integration.test_s3_storage import BUCKET, _use, bucket_keys, every_page, listed_ids
from tests.support.fake_openai import FakeOpenAI, make_png, slow
from tests.support.jobs import ASYNC
from tests.support.postgres import ThrowawayPostgres, dsn_for
from tests.support.seaweed import SeaweedFS
from tests.support.service import wait_for

pytestmark = pytest.mark.slow

UPSTREAM_SECONDS = 6.0  # long enough to stop SeaweedFS while the call is upstream
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def own_seaweed(tmp_path: Path, seaweed_server: SeaweedFS, monkeypatch) -> SeaweedFS:
    """A SeaweedFS of this test's own, to stop and start."""
    with SeaweedFS.started(tmp_path / "own-seaweed") as server:
        _use(server, monkeypatch)
        yield server


def spooled(images: Path) -> list[str]:
    """The job ids of whole entries in the spool of the images directory `images`."""
    spool = images / ".spool"
    return sorted(p.name for p in spool.iterdir() if UUID.match(p.name)) if spool.exists() else []


def stop_while_upstream(
    fake_openai: FakeOpenAI, server: SeaweedFS, call: Callable[[], TestResponse]
) -> TestResponse:
    """Run `call` (one upstream call, made slow) and stop `server` while it is upstream."""
    asked = len(fake_openai.image_requests)
    fake_openai.enqueue(slow(UPSTREAM_SECONDS))
    answers: list[TestResponse] = []
    caller = threading.Thread(target=lambda: answers.append(call()))
    caller.start()
    wait_for(lambda: len(fake_openai.image_requests) > asked, timeout=30, what="upstream call")
    server.stop()
    caller.join(timeout=90)
    assert answers, "the call never answered"
    return answers[0]


def submit_upstream(client: FlaskClient, fake_openai: FakeOpenAI) -> tuple[str, int]:
    """Submit an asynchronous job whose upstream call is slow; return once it is upstream,
    with the job id and the number of upstream calls before it."""
    asked = len(fake_openai.image_requests)
    fake_openai.enqueue(slow(UPSTREAM_SECONDS))
    accepted = client.post("/generate", json={"prompt": "a fox"}, headers=ASYNC)
    assert accepted.status_code == 202
    job_id: str = accepted.get_json()["job_id"]
    wait_for(lambda: len(fake_openai.image_requests) > asked, timeout=30, what="upstream call")
    return job_id, asked


def replica_upstream(
    make_jobs_app: Callable[..., Flask],
    fake_openai: FakeOpenAI,
    url: str,
    postgres: ThrowawayPostgres,
    images: Path,
) -> tuple[Flask, dict[str, Any], str, int]:
    """A replica on the bucket `url` and `postgres` (short leases) with an asynchronous job
    upstream: the app, the options for its peers, the job id, the upstream calls before."""
    options = {"storage_url": url, "database_url": postgres.dsn, "job_lease_seconds": 5}
    app = make_jobs_app(images_dir=images, **options)
    job_id, asked = submit_upstream(app.test_client(), fake_openai)
    return app, options, job_id, asked


def job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    return body


def assert_completed_once(
    client: FlaskClient, job_id: str, images: Path, upstream_calls: int, fake_openai: FakeOpenAI
) -> None:
    """The job completes (within 90 s), made once: started once, `upstream_calls` upstream
    calls in all, its image served and the spool empty."""
    completed = wait_for(
        lambda: (found := job(client, job_id))["status"] in ("completed", "failed") and found,
        timeout=90,
        what="the job finished",
    )
    assert completed["status"] == "completed", completed
    assert completed["attempts"] == 1  # never made again
    assert len(fake_openai.image_requests) == upstream_calls
    assert client.get(f"/images/{completed['images'][0]['id']}").status_code == 200
    assert spooled(images) == []


def test_images_made_while_s3_stops_are_kept_answered_202_and_stored_once_it_is_back(
    settings, make_app, fake_openai, own_seaweed, tmp_path
):
    url = f"s3://{BUCKET}/spool"
    images = tmp_path / "a"
    client = make_app(
        settings, images_dir=images, storage_url=url, database_url=dsn_for(tmp_path)
    ).test_client()
    fake_openai.image_bytes = make_png(40, 30, (200, 100, 50))
    key = {"Idempotency-Key": "kept-once"}

    answer = stop_while_upstream(
        fake_openai,
        own_seaweed,
        lambda: client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=key),
    )

    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    job_id = body["job_id"]
    assert body["status"] == "storing" and len(body["images"]) == 2
    assert answer.headers["Location"] == f"/jobs/{job_id}"
    assert int(answer.headers["Retry-After"]) >= 1
    assert spooled(images) == [job_id]
    kept = json.loads((images / ".spool" / job_id / "metadata.json").read_bytes())
    kept_bytes = {
        image["id"]: (images / ".spool" / job_id / image["file"]).read_bytes()
        for image in kept["images"]
    }
    assert [image["id"] for image in body["images"]] == list(kept_bytes)
    assert job(client, job_id)["status"] == "storing"
    asked = len(fake_openai.image_requests)
    replay = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=key)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["job_id"] == job_id
    assert len(fake_openai.image_requests) == asked  # not made (nor paid for) twice

    own_seaweed.start()  # the same data and ports: S3 is back; the app is not restarted
    stored = wait_for(
        lambda: (found := job(client, job_id))["status"] == "completed" and found,
        timeout=90,
        what="the kept job stored",
    )

    assert [image["id"] for image in stored["images"]] == list(kept_bytes)
    in_bucket = bucket_keys(own_seaweed, url)
    for image in kept["images"]:
        served = client.get(f"/images/{image['id']}")
        assert served.status_code == 200
        assert served.data == kept_bytes[image["id"]] == in_bucket[f"{job_id}/{image['file']}"]
        assert hashlib.sha256(served.data).hexdigest() == image["sha256"]
    assert json.loads(in_bucket[f"{job_id}/metadata.json"]) == kept
    assert listed_ids(every_page(client, limit=10)) == list(kept_bytes)
    assert spooled(images) == []
    again = client.post("/generate", json={"prompt": "a fox", "count": 2}, headers=key)
    assert again.status_code == 202 and again.get_json()["job_id"] == job_id  # still replayed


def kept_on_one_of_two(
    settings, make_app, fake_openai: FakeOpenAI, server: SeaweedFS, tmp_path: Path, prefix: str
) -> tuple[FlaskClient, FlaskClient, dict[str, Any]]:
    """Two replicas (own directories, one bucket and database); a call to the first kept in
    its spool as `server` stops: (first, second, its 202 answer's body)."""
    url, dsn = f"s3://{BUCKET}/{prefix}", dsn_for(tmp_path)
    on_a, on_b = (
        make_app(
            settings, images_dir=tmp_path / name, storage_url=url, database_url=dsn
        ).test_client()
        for name in ("a", "b")
    )
    answer = stop_while_upstream(
        fake_openai, server, lambda: on_a.post("/generate", json={"prompt": "a fox"})
    )
    assert answer.status_code == 202, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    assert spooled(tmp_path / "a") == [body["job_id"]] and spooled(tmp_path / "b") == []
    return on_a, on_b, body


def test_a_job_kept_by_one_replica_is_storing_on_another_and_served_by_it_once_stored(
    settings, make_app, fake_openai, own_seaweed, tmp_path
):
    _, on_b, body = kept_on_one_of_two(
        settings, make_app, fake_openai, own_seaweed, tmp_path, "spool-replicas"
    )

    job_id, image_id = body["job_id"], body["images"][0]["id"]
    elsewhere = on_b.get(f"/jobs/{job_id}")  # the replica that does not keep it says so too
    assert elsewhere.status_code == 200, elsewhere.get_json()
    assert elsewhere.get_json()["status"] == "storing"
    assert [image["id"] for image in elsewhere.get_json()["images"]] == [image_id]
    assert int(elsewhere.headers["Retry-After"]) >= 1

    own_seaweed.start()
    stored = wait_for(
        lambda: (found := job(on_b, job_id))["status"] == "completed" and found,
        timeout=90,
        what="the kept job stored, seen from the other replica",
    )
    assert [image["id"] for image in stored["images"]] == [image_id]
    assert on_b.get(f"/images/{image_id}").status_code == 200
    assert spooled(tmp_path / "a") == []


def test_a_kept_job_whose_entry_is_damaged_is_not_said_storing_by_any_replica(
    settings, make_app, fake_openai, own_seaweed, tmp_path
):
    on_a, on_b, body = kept_on_one_of_two(
        settings, make_app, fake_openai, own_seaweed, tmp_path, "spool-replicas-damaged"
    )
    job_id = body["job_id"]
    assert job(on_b, job_id)["status"] == "storing"
    entry = tmp_path / "a" / ".spool" / job_id
    kept = json.loads((entry / "metadata.json").read_bytes())
    (entry / kept["images"][0]["file"]).write_bytes(b"\x89PNG")  # truncated on the disk

    own_seaweed.start()
    wait_for(
        lambda: (tmp_path / "a" / ".spool" / ".damaged" / job_id).is_dir(),
        timeout=90,
        what="the damaged entry set aside",
    )

    for client in (on_a, on_b):
        assert wait_for(
            lambda c=client: c.get(f"/jobs/{job_id}").status_code == 404,
            timeout=10,
            what="the job no longer said storing",
        )
        assert client.get(f"/images/{kept['images'][0]['id']}").status_code == 404


def test_an_async_job_whose_images_are_kept_is_storing_then_completes_when_s3_is_back(
    settings, make_jobs_app, fake_openai, own_seaweed, tmp_path
):
    url = f"s3://{BUCKET}/spool-async"
    images = tmp_path / "b"
    client = make_jobs_app(
        images_dir=images, storage_url=url, database_url=dsn_for(tmp_path)
    ).test_client()
    job_id, asked = submit_upstream(client, fake_openai)
    own_seaweed.stop()

    storing = wait_for(
        lambda: (found := job(client, job_id))["status"] != "running" and found,
        timeout=60,
        what="the job past running",
    )
    assert storing["status"] == "storing"
    assert spooled(images) == [job_id]

    own_seaweed.start()
    assert_completed_once(client, job_id, images, asked + 1, fake_openai)


@pytest.fixture
def own_postgres() -> ThrowawayPostgres:
    """A PostgreSQL server of this test's own, to halt and resume."""
    server = ThrowawayPostgres()
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        server.stop()
        pytest.skip(f"the embedded PostgreSQL server cannot run here: {exc}")
    yield server
    server.halt()
    server.stop()


def test_images_made_while_the_index_database_stops_are_kept_and_stored_once_it_is_back(
    settings, make_app, fake_openai, seaweed_server, own_postgres, monkeypatch, tmp_path
):
    _use(seaweed_server, monkeypatch)
    url = f"s3://{BUCKET}/spool-db-{uuid.uuid4().hex}"
    images = tmp_path / "c"
    client = make_app(
        settings, images_dir=images, storage_url=url, database_url=own_postgres.dsn
    ).test_client()
    asked = len(fake_openai.image_requests)
    fake_openai.enqueue(slow(UPSTREAM_SECONDS))
    answers: list[TestResponse] = []
    caller = threading.Thread(
        target=lambda: answers.append(client.post("/generate", json={"prompt": "a fox"}))
    )
    caller.start()
    wait_for(lambda: len(fake_openai.image_requests) > asked, timeout=30, what="upstream call")
    own_postgres.halt()
    caller.join(timeout=120)

    assert answers and answers[0].status_code == 202, answers and answers[0].get_json()
    body = answers[0].get_json()
    job_id, image_id = body["job_id"], body["images"][0]["id"]
    assert spooled(images) == [job_id]
    # Its flusher may have put the images already; the marker waits for the index.
    assert f"{job_id}/metadata.json" not in bucket_keys(seaweed_server, url)

    own_postgres.resume()
    wait_for(lambda: spooled(images) == [], timeout=90, what="the spool flushed")
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "completed"
    assert client.get(f"/images/{image_id}").status_code == 200
    assert listed_ids(every_page(client, limit=10)) == [image_id]
    assert f"{job_id}/metadata.json" in bucket_keys(seaweed_server, url)


def test_an_async_job_whose_kept_entry_is_damaged_fails_and_the_other_kept_jobs_complete(
    settings, make_jobs_app, fake_openai, own_seaweed, tmp_path
):
    url = f"s3://{BUCKET}/spool-damaged"
    images = tmp_path / "d"
    client = make_jobs_app(
        images_dir=images, storage_url=url, database_url=dsn_for(tmp_path)
    ).test_client()
    asked = len(fake_openai.image_requests)
    ids = []
    for prompt in ("a fox", "a hare"):
        fake_openai.enqueue(slow(UPSTREAM_SECONDS))
        accepted = client.post("/generate", json={"prompt": prompt}, headers=ASYNC)
        assert accepted.status_code == 202
        ids.append(accepted.get_json()["job_id"])
    wait_for(lambda: len(fake_openai.image_requests) == asked + 2, timeout=30, what="upstream")
    own_seaweed.stop()
    for job_id in ids:
        wait_for(lambda j=job_id: job(client, j)["status"] == "storing", timeout=60, what="storing")
    damaged, whole = ids
    entry = images / ".spool" / damaged
    kept = json.loads((entry / "metadata.json").read_bytes())
    (entry / kept["images"][0]["file"]).write_bytes(b"\x89PNG")  # truncated on the disk

    own_seaweed.start()
    failed = wait_for(
        lambda: (found := job(client, damaged))["status"] != "storing" and found,
        timeout=90,
        what="the damaged job ended",
    )
    completed = wait_for(
        lambda: (found := job(client, whole))["status"] == "completed" and found,
        timeout=90,
        what="the whole job stored",
    )

    assert failed["status"] == "failed" and failed["code"] == "JOB_INTERRUPTED", failed
    assert "could not be kept" in failed["error"] and "Submit the job again" in failed["error"]
    assert client.get(f"/images/{kept['images'][0]['id']}").status_code == 404
    assert (images / ".spool" / ".damaged" / damaged).is_dir()  # kept for the operator
    assert client.get(f"/images/{completed['images'][0]['id']}").status_code == 200
    assert completed["attempts"] == 1 and failed["attempts"] == 1  # neither made again
    assert len(fake_openai.image_requests) == asked + 2
    assert spooled(images) == []


def test_an_async_job_made_while_the_index_database_stops_is_kept_and_completes_once_it_is_back(
    settings, make_jobs_app, fake_openai, seaweed_server, own_postgres, monkeypatch, tmp_path
):
    _use(seaweed_server, monkeypatch)
    url = f"s3://{BUCKET}/spool-db-async-{uuid.uuid4().hex}"
    images = tmp_path / "e"
    # A short lease: it lapses while the database is away, as a long outage's would.
    client = make_jobs_app(
        images_dir=images, storage_url=url, database_url=own_postgres.dsn, job_lease_seconds=5
    ).test_client()
    job_id, asked = submit_upstream(client, fake_openai)
    own_postgres.halt()
    wait_for(lambda: spooled(images) == [job_id], timeout=60, what="the job kept")
    time.sleep(15)  # the record's writes give up (10 s each) and the lease lapses

    own_postgres.resume()
    wait_for(lambda: client.get("/health").status_code == 200, 60, "the database answering")
    assert_completed_once(client, job_id, images, asked + 1, fake_openai)


def test_a_job_kept_before_its_process_could_say_so_is_not_made_again_by_the_next_one(
    settings, make_jobs_app, fake_openai, own_seaweed, own_postgres, tmp_path
):
    url = f"s3://{BUCKET}/spool-adopted"
    images = tmp_path / "f"
    options = {"images_dir": images, "storage_url": url, "database_url": own_postgres.dsn}
    first = make_jobs_app(job_lease_seconds=5, **options)
    job_id, asked = submit_upstream(first.test_client(), fake_openai)
    own_postgres.halt()
    wait_for(lambda: spooled(images) == [job_id], timeout=60, what="the job kept")
    own_seaweed.stop()  # the bucket away too, until the next process has taken the job up
    # Its process goes away before the database is back: its record still says running.
    services(first).jobs.shutdown(60)
    own_postgres.resume()

    client = make_jobs_app(**options).test_client()
    wait_for(
        lambda: client.get("/health").get_json()["dependencies"]["database"]["state"] == "ok",
        60,
        "the database answering",
    )
    storing = wait_for(
        lambda: (found := job(client, job_id))["status"] != "running" and found,
        timeout=60,
        what="the job taken up",
    )
    assert storing["status"] == "storing", storing
    own_seaweed.start()
    assert_completed_once(client, job_id, images, asked + 1, fake_openai)


def test_a_copy_noted_only_after_another_replica_took_the_job_up_is_the_one_that_stands(
    settings, make_jobs_app, fake_openai, own_seaweed, own_postgres, tmp_path
):
    # The database goes away while the call is upstream: the copy is kept with no note, and
    # the job's lease lapses. Another replica takes the job up and asks again; meanwhile the
    # keeper comes back and stores its copy. The copy made again is not stored over it.
    url = f"s3://{BUCKET}/spool-late-note"
    keeper_dir, away = tmp_path / "a", tmp_path / "away"
    keeper, options, job_id, asked = replica_upstream(
        make_jobs_app, fake_openai, url, own_postgres, keeper_dir
    )
    own_postgres.halt()
    wait_for(lambda: spooled(keeper_dir) == [job_id], timeout=60, what="the job kept")
    services(keeper).jobs.shutdown(60)  # it lets go; its record still says running
    away.mkdir()
    shutil.move(keeper_dir / ".spool" / job_id, away / job_id)  # out of its flusher's sight
    kept = json.loads((away / job_id / "metadata.json").read_bytes())
    own_postgres.resume()

    fake_openai.enqueue(slow(UPSTREAM_SECONDS))
    other = make_jobs_app(images_dir=tmp_path / "b", **options).test_client()
    wait_for(lambda: len(fake_openai.image_requests) == asked + 2, timeout=60, what="asked again")
    shutil.move(away / job_id, keeper_dir / ".spool" / job_id)
    back = make_jobs_app(images_dir=keeper_dir, **options).test_client()
    wait_for(lambda: spooled(keeper_dir) == [], timeout=60, what="the first copy stored")

    completed = wait_for(
        lambda: (found := job(other, job_id))["status"] in FINAL and found,
        timeout=60,
        what="the job finished",
    )
    assert completed["status"] == "completed", completed
    assert completed["attempts"] == 2
    first = [image["id"] for image in kept["images"]]
    for client in (other, back):
        assert [image["id"] for image in job(client, job_id)["images"]] == first
        assert client.get(f"/images/{first[0]}").status_code == 200
    assert len(fake_openai.image_requests) == asked + 2
    objects = bucket_keys(own_seaweed, url)  # the first copy's, and nothing of the second
    names = ["metadata.json", *(image["file"] for image in kept["images"])]
    assert sorted(objects) == sorted(f"{job_id}/{name}" for name in names)
    mirrored = json.loads(objects[f"{job_id}/metadata.json"])
    assert [image["id"] for image in mirrored["images"]] == first
    # Both calls were billed: the one made again counts in the caps, settled, not released.
    with psycopg.connect(own_postgres.dsn, autocommit=True) as db:
        spent = db.execute("SELECT state, job_id FROM spend ORDER BY id").fetchall()
    assert len(spent) == 2 and spent[1] == ("settled", job_id), spent


def test_an_async_job_whose_keeping_replica_is_lost_is_made_again_and_its_copy_never_stored(
    settings, make_jobs_app, fake_openai, own_seaweed, own_postgres, tmp_path, monkeypatch
):
    # The waiting replica gives up after its own wait of KEPT_FOR (shortened here) and only
    # on a note that the database's clock also says has not been renewed for KEPT_FOR.
    monkeypatch.setattr(runner, "KEPT_FOR", 3.0)
    url = f"s3://{BUCKET}/spool-lost"
    keeper_dir, lost_disk = tmp_path / "a", tmp_path / "lost-disk"
    keeper, options, job_id, asked = replica_upstream(
        make_jobs_app, fake_openai, url, own_postgres, keeper_dir
    )
    own_seaweed.stop()
    storing = wait_for(
        lambda: (found := job(keeper.test_client(), job_id))["status"] != "running" and found,
        timeout=60,
        what="the job past running",
    )
    assert storing["status"] == "storing" and spooled(keeper_dir) == [job_id]
    kept = json.loads((keeper_dir / ".spool" / job_id / "metadata.json").read_bytes())
    kept_image = kept["images"][0]["id"]

    # The keeping replica is lost with its disk: its runner stops, its spool entry goes.
    services(keeper).jobs.shutdown(60)
    lost_disk.mkdir()
    shutil.move(keeper_dir / ".spool" / job_id, lost_disk / job_id)
    own_seaweed.start()

    def unheard_of() -> None:  # KEPT_FOR passes without a renewal: aged, not waited for
        with psycopg.connect(own_postgres.dsn, autocommit=True) as db:
            db.execute(
                "UPDATE kept_jobs SET kept_at = now() - make_interval(secs => %s) "
                "WHERE job_id = %s AND NOT abandoned",
                (KEPT_FOR + 60, job_id),
            )

    unheard_of()
    other = make_jobs_app(images_dir=tmp_path / "b", **options).test_client()
    completed = wait_for(
        lambda: unheard_of() or ((found := job(other, job_id))["status"] in FINAL and found),
        timeout=90,
        what="the job made again and finished",
    )
    assert completed["status"] == "completed", completed
    assert completed["attempts"] == 2
    assert len(fake_openai.image_requests) == asked + 2  # paid again: nothing else had them
    made = [image["id"] for image in completed["images"]]
    assert len(made) == 1 and made != [kept_image]
    assert other.get(f"/images/{made[0]}").status_code == 200

    # The lost replica comes back with its disk: its copy is set aside, never stored.
    (keeper_dir / ".spool").mkdir(exist_ok=True)
    shutil.move(lost_disk / job_id, keeper_dir / ".spool" / job_id)
    back = make_jobs_app(images_dir=keeper_dir, **options).test_client()
    superseded = keeper_dir / ".spool" / SUPERSEDED
    wait_for(lambda: (superseded / job_id).is_dir(), timeout=60, what="the copy set aside")
    assert spooled(keeper_dir) == []
    for client in (back, other):
        assert [image["id"] for image in job(client, job_id)["images"]] == made
        assert client.get(f"/images/{kept_image}").status_code == 404
    assert len(fake_openai.image_requests) == asked + 2
