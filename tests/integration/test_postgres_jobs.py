"""IMAGE_GEN_DATABASE_URL: the asynchronous jobs in PostgreSQL, through the HTTP API against a
real server (tests/support/postgres.py): jobs run and are followed from any app on the
database, previews and edit inputs live in it, the running jobs are one bound for every app,
and a runner whose lease was taken from it lets go of the job without writing it."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask

from imagegen.books.migrations import migrate
from imagegen.books.postgres_jobs import PostgresJobBook
from imagegen.services import services
from tests.support import fake_openai as fake
from tests.support.jobs import ASYNC, finished, job
from tests.support.postgres import dsn_for, pool_for
from tests.support.service import wait_for


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return dsn_for(tmp_path)


@pytest.fixture
def pg_jobs_app(make_jobs_app, database_url) -> Callable[..., Flask]:
    """Apps with quick job polling on the test's database."""
    return lambda **overrides: make_jobs_app(database_url=database_url, **overrides)


def rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as db:
        return db.execute(query).fetchall()


def test_an_async_job_is_kept_in_the_database_and_followed_from_another_app(
    pg_jobs_app, fake_openai, database_url, images_dir
):
    fake_openai.latency = 1.0
    client = pg_jobs_app().test_client()
    other = pg_jobs_app().test_client()  # another replica on the same images directory

    accepted = client.post("/generate", json={"prompt": "a heron"}, headers=ASYNC)
    assert accepted.status_code == 202
    job_id = accepted.get_json()["job_id"]
    running = wait_for(
        lambda: (body := job(other, job_id))["progress"]["partial_images"] >= 1 and body,
        what="a partial preview seen from the other app",
    )
    preview = other.get(running["previews"][0]["url"])
    assert preview.status_code == 200 and preview.mimetype == "image/png"
    assert preview.data.startswith(b"\x89PNG") and preview.headers["ETag"]
    again = other.get(
        running["previews"][0]["url"], headers={"If-None-Match": preview.headers["ETag"]}
    )
    assert again.status_code == 304

    done = finished(other, job_id)
    assert done["status"] == "completed" and len(done["images"]) == 1
    assert rows(database_url, "SELECT job_id, status, listed FROM jobs") == [
        (job_id, "completed", None)
    ]
    assert not (images_dir / ".jobs").exists()  # nothing of the job book on disk
    assert len(fake_openai.image_requests) == 1


def test_an_edit_keeps_its_inputs_in_the_database_until_it_ends(
    pg_jobs_app, fake_openai, database_url
):
    fake_openai.latency = 1.0
    client = pg_jobs_app().test_client()
    image = fake.make_png(16, 16, (200, 10, 10))
    data = {"prompt": "a hat", "image": [(io.BytesIO(image), "cat.png")]}
    accepted = client.post("/edit", data=data, content_type="multipart/form-data", headers=ASYNC)
    assert accepted.status_code == 202
    job_id = accepted.get_json()["job_id"]

    kept = rows(database_url, "SELECT job_id, name, data FROM job_inputs")
    assert kept == [(job_id, "image-1.png", image)]
    assert finished(client, job_id)["status"] == "completed"
    assert rows(database_url, "SELECT * FROM job_inputs") == []


def test_the_running_jobs_are_bounded_over_every_app_on_the_database(pg_jobs_app, fake_openai):
    fake_openai.latency = 1.0
    apps = [pg_jobs_app(max_running_jobs=1), pg_jobs_app(max_running_jobs=1)]
    clients = [app.test_client() for app in apps]

    ids = [
        c.post("/generate", json={"prompt": f"one at a time {n}"}, headers=ASYNC).get_json()[
            "job_id"
        ]
        for n, c in enumerate(clients)
    ]

    for job_id in ids:
        assert finished(clients[0], job_id)["status"] == "completed"
    first, second = sorted(request.time for request in fake_openai.image_requests)
    assert second - first >= 0.9 * fake_openai.latency  # the second began once the first ended


def test_a_runner_whose_lease_is_taken_writes_nothing_more_and_the_job_runs_once_at_a_time(
    pg_jobs_app, fake_openai, database_url, tmp_path
):
    fake_openai.latency = 1.5
    app = pg_jobs_app()
    client = app.test_client()
    job_id = client.post("/generate", json={"prompt": "stolen"}, headers=ASYNC).get_json()["job_id"]
    wait_for(lambda: len(fake_openai.image_requests) == 1, what="the upstream call")
    # Another replica takes the job, as if this one had not renewed its lease in time.
    thief_pool = pool_for(tmp_path)
    migrate(thief_pool)
    thief = PostgresJobBook(thief_pool)
    with psycopg.connect(database_url) as db:
        db.execute("UPDATE jobs SET lease_until = clock_timestamp() WHERE job_id = %s", (job_id,))
    claimed = thief.claim("replica-b", 60)
    assert claimed is not None and claimed.record["job_id"] == job_id
    held = thief.read(job_id)

    assert services(app).jobs.wait(job_id, 30)  # the runner lets go of the job

    assert thief.read(job_id) == held  # and wrote nothing after losing it
    assert job(client, job_id)["status"] == "running"
    assert client.get("/images").get_json()["images"] == []  # nor stored anything

    claimed.lease.release()  # the other replica lets go: this app adopts and runs it again
    done = finished(client, job_id, timeout=30)
    assert done["status"] == "completed" and done["attempts"] == 2
    assert len(fake_openai.image_requests) == 2
    assert len(client.get("/images").get_json()["images"]) == 1


def cut_off(database_url: str, allowed: bool) -> None:
    """Refuse (and end) every connection to the test's database, or let them in again: the
    database out of the service's reach, then back."""
    name = database_url.rsplit("/", 1)[1]
    server_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


@pytest.mark.slow
def test_images_the_upstream_made_while_the_database_was_away_are_kept_and_the_job_completes(
    pg_jobs_app, fake_openai, database_url
):
    fake_openai.latency = 2.0
    app = pg_jobs_app()
    client = app.test_client()
    job_id = client.post("/generate", json={"prompt": "kept"}, headers=ASYNC).get_json()["job_id"]
    wait_for(lambda: len(fake_openai.image_requests) == 1, what="the upstream call")

    cut_off(database_url, allowed=False)
    try:
        away = client.post("/generate", json={"prompt": "refused"}, headers=ASYNC)
        assert away.status_code == 503 and away.get_json()["code"] == "DATABASE_UNAVAILABLE"
        wait_for(
            lambda: len(client.get("/images").get_json()["images"]) == 1,
            timeout=20,
            what="the images stored while the database is away",
        )
        # Away until the runner has given up writing the record (each write waits for the
        # pool's 10 s): the job is left to whoever takes it up once its lease has passed.
        assert services(app).jobs.wait(job_id, 90)
    finally:
        cut_off(database_url, allowed=True)

    # The pool reconnects with a backoff that has grown over the outage: 503 until then.
    wait_for(lambda: client.get("/health").status_code == 200, 60, "the database answering")
    done = finished(client, job_id, timeout=60)
    assert done["status"] == "completed" and done["images"][0]["prompt"] == "kept"
    assert done["attempts"] == 1
    assert len(fake_openai.image_requests) == 1


# The service-wide caps' advisory lock, which every reservation takes (books/postgres.py).
CAPS_LOCK = ("caps:*",)


def waiting_for_the_caps(db: psycopg.Connection[Any]) -> set[int]:
    """The server processes of the test's database waiting for an advisory lock."""
    found = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    ).fetchall()
    return {pid for (pid,) in found}


def test_a_job_cut_off_from_the_database_before_its_upstream_call_runs_once_it_is_back(
    pg_jobs_app, fake_openai, database_url
):
    gone = pg_jobs_app()
    services(gone).jobs.stop_claiming()  # its process goes away with the job still queued
    accepted = gone.test_client().post("/generate", json={"prompt": "a lighthouse"}, headers=ASYNC)
    assert accepted.status_code == 202
    job_id = accepted.get_json()["job_id"]
    services(gone).jobs.shutdown(5)  # lets go of it: another app takes it up

    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", CAPS_LOCK)
        client = pg_jobs_app().test_client()
        assert job(client, job_id)["status"] == "queued"  # a reader: this app takes it up
        reserving = wait_for(
            lambda: waiting_for_the_caps(holder), what="the job's reservation waiting"
        )
        # Its connection is cut while it reserves: the database out of reach, for this run.
        holder.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (list(reserving),)
        )
        wait_for(
            lambda: (
                waiting_for_the_caps(holder) - reserving
                or job(client, job_id)["status"] == "failed"
            ),
            what="the job reserving again (or failed)",
        )
        body = job(client, job_id)
        assert body["status"] in ("queued", "running"), body
        assert fake_openai.image_requests == []  # nothing was asked of the upstream yet
        holder.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", CAPS_LOCK)

    done = finished(client, job_id, timeout=30)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1  # the start cut off before its upstream call is not counted
    assert len(fake_openai.image_requests) == 1
    assert len(client.get("/images").get_json()["images"]) == 1
