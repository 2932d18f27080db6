"""The shared parts failing under real Gunicorn: a PostgreSQL server of the test's own that
is not yet running at start, or is stopped and started again under load, and (S3) a
SeaweedFS server stopped and started again. New work meanwhile is 503 with Retry-After,
never 500; nothing is lost; the service recovers by itself, without a restart."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.gunicorn_server import HTTPAnswer, Service, launch_gunicorn, replica_environment
from tests.support.postgres import dsn_for, private_server
from tests.support.seaweed import SeaweedFS
from tests.support.service import wait_for

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
RECOVERED_WITHIN = 30.0  # seconds from the server answering again to the service serving
# Seconds PostgreSQL is down: longer than a job's upstream call and its lease, and than a
# request's wait for a pool connection (10 s): a call that starts as the server goes is
# refused then, however soon after its return the pool would have connected again.
OUTAGE = 15.0
JOB_LATENCY = 4.0  # seconds each asynchronous job's upstream call takes
LEASE = "5"  # IMAGE_GEN_JOB_LEASE_SECONDS: leases lapse during the outage
FINISHED_WITHIN = 60.0


def environment(tmp_path: Path, fake_openai: Any, name: str, **extra: str) -> dict[str, str]:
    return replica_environment(tmp_path, fake_openai, name, **extra)


def database_state(service: Service) -> tuple[int, str]:
    answer = service.request("GET", "/health", timeout=15)
    return answer.status, answer.json()["dependencies"]["database"]["state"]


def healthy(service: Service) -> bool:
    """The database ok in /health, asked ten times in a row (so of every worker, most likely:
    each has its own pool and schema)."""
    return all(database_state(service) == (200, "ok") for _ in range(10))


def assert_database_unavailable(answer: Any) -> None:
    assert answer.status == 503, answer.body
    assert answer.json()["code"] == "DATABASE_UNAVAILABLE"
    assert int(answer.headers["retry-after"]) >= 1


def test_a_replica_started_before_its_database_serves_once_the_database_answers(
    tmp_path, fake_openai
):
    with private_server(started=False) as pg:  # nothing listens on its port yet
        # One worker: each has its own pool and schema, and /health answers from either.
        env = environment(
            tmp_path, fake_openai, "a", GUNICORN_WORKERS="1", IMAGE_GEN_DATABASE_URL=pg.dsn
        )
        service = launch_gunicorn(tmp_path / "a", env, health=503)
        try:
            workers = service.worker_pids()
            assert database_state(service) == (503, "unavailable")
            assert_database_unavailable(service.request("POST", "/generate", {"prompt": "early"}))
            assert_database_unavailable(
                service.request("POST", "/generate", {"prompt": "early"}, headers=ASYNC)
            )
            assert fake_openai.image_requests == []  # nothing was started, nothing paid

            pg.start()  # the database comes up: the schema is migrated, no restart
            wait_for(lambda: healthy(service), RECOVERED_WITHIN, "the database reported ok")
            made = service.request("POST", "/generate", {"prompt": "now"})
            assert made.status == 200, made.body
            status, _, data = service.get(made.json()["images"][0]["url"])
            assert status == 200 and data.startswith(b"\x89PNG")
            queued = service.request("POST", "/generate", {"prompt": "later"}, headers=ASYNC)
            assert queued.status == 202, queued.body
            job_id = queued.json()["job_id"]
            done = wait_for(
                lambda: (
                    (body := service.request("GET", f"/jobs/{job_id}").json())["status"]
                    in ("completed", "failed")
                    and body
                ),
                30,
                "the job finishing",
            )
            assert done["status"] == "completed", done
            assert service.worker_pids() == workers  # the same workers: none restarted
        finally:
            service.stop()


def finished(service: Service, job_id: str, timeout: float = FINISHED_WITHIN) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (body := service.request("GET", f"/jobs/{job_id}").json())["status"]
            in ("completed", "failed")
            and body
        ),
        timeout,
        f"job {job_id} finishing",
    )


@contextmanager
def load(
    services: list[Service], prompt: str, *, asynchronous: bool = True
) -> Iterator[list[tuple[str, HTTPAnswer]]]:
    """Three clients sending quick calls, synchronous and (every third, if `asynchronous`)
    asynchronous ones, to every replica in turn until the block ends; every (kind, answer)
    is collected."""
    answers: list[tuple[str, HTTPAnswer]] = []
    stop = threading.Event()
    counter = itertools.count()

    def client() -> None:
        while not stop.is_set():
            n = next(counter)
            service = services[n % len(services)]
            body = {"prompt": f"{prompt} {n} [latency=0.1]"}
            kind = "async" if asynchronous and n % 3 == 0 else "sync"
            answer = service.request(
                "POST", "/generate", body, headers=ASYNC if kind == "async" else None, timeout=30
            )
            answers.append((kind, answer))
            time.sleep(0.05)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(40)


def assert_no_call_ran_twice_at_once(fake_openai: Any) -> None:
    """No two upstream calls for one prompt (one job) overlapped in time."""
    starts: dict[str, list[float]] = defaultdict(list)
    for request in fake_openai.image_requests:
        starts[request.json["prompt"]].append(request.time)
    for prompt, times in starts.items():
        times.sort()
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= JOB_LATENCY * 0.9 for gap in gaps if "[latency=4]" in prompt), prompt


def test_postgresql_stopped_and_started_under_load_loses_nothing(tmp_path, fake_openai):
    with private_server() as pg:
        dsn = pg.create_database()
        replicas = [
            launch_gunicorn(
                tmp_path / name,
                environment(
                    tmp_path,
                    fake_openai,
                    name,
                    IMAGE_GEN_DATABASE_URL=dsn,
                    IMAGE_GEN_JOB_LEASE_SECONDS=LEASE,
                ),
            )
            for name in ("a", "b")
        ]
        try:
            workers = [service.worker_pids() for service in replicas]
            running = []
            for n in range(4):
                body = {"prompt": f"through the outage {n} [latency={JOB_LATENCY:g}]"}
                answer = replicas[n % 2].request("POST", "/generate", body, headers=ASYNC)
                assert answer.status == 202, answer.body
                running.append(answer.json()["job_id"])
            wait_for(lambda: len(fake_openai.image_requests) >= 4, what="the jobs' upstream calls")

            with load(replicas, "under load") as answers:
                time.sleep(1.0)
                pg.halt()
                for service in replicas:
                    assert database_state(service) == (503, "unavailable")
                time.sleep(OUTAGE)
                pg.resume()
                for service in replicas:
                    wait_for(lambda s=service: healthy(s), RECOVERED_WITHIN, "database ok")
                time.sleep(2.0)

            statuses = sorted({answer.status for _, answer in answers})
            assert set(statuses) <= {200, 202, 503}, [a.body for _, a in answers]
            refused = [answer for _, answer in answers if answer.status == 503]
            assert refused, "no call met the outage"
            for answer in refused:
                assert_database_unavailable(answer)
            accepted = [a.json()["job_id"] for kind, a in answers if a.status == 202]
            made = [a.json() for kind, a in answers if a.status == 200]
            assert accepted and made

            for job_id in running + accepted:  # every job finishes, on whichever replica
                done = finished(replicas[1], job_id)
                assert done["status"] == "completed", done
                for image in done["images"]:
                    for service in replicas:
                        status, _, data = service.get(image["url"])
                        assert status == 200 and data.startswith(b"\x89PNG")
            for body in made:
                for service in replicas:
                    assert service.get(body["images"][0]["url"])[0] == 200
            assert_no_call_ran_twice_at_once(fake_openai)
            # The calls answered while the database was down were stored, not made again.
            for n in range(4):
                prompt = f"through the outage {n} [latency={JOB_LATENCY:g}]"
                calls = [r for r in fake_openai.image_requests if r.json["prompt"] == prompt]
                assert len(calls) == 1, prompt
            for service in replicas:  # new work again, on every worker (each has its pool)
                for n in range(4):
                    body = {"prompt": f"after {n} [latency=0.1]"}
                    assert service.request("POST", "/generate", body).status == 200
            assert [service.worker_pids() for service in replicas] == workers  # no restart
        finally:
            for service in replicas:
                service.stop()


def storage_state(service: Service) -> tuple[int, str]:
    answer = service.request("GET", "/health", timeout=15)
    return answer.status, answer.json()["dependencies"]["storage"]["state"]


def test_s3_stopped_and_started_under_load_refuses_new_work_and_recovers(tmp_path, fake_openai):
    with SeaweedFS.started(tmp_path / "weed") as weed:
        weed.create_bucket("outage")
        extra = {
            **weed.variables(),
            "IMAGE_GEN_STORAGE_URL": "s3://outage/images",
            "IMAGE_GEN_DATABASE_URL": dsn_for(tmp_path),
        }
        replicas = [
            launch_gunicorn(tmp_path / name, environment(tmp_path, fake_openai, name, **extra))
            for name in ("a", "b")
        ]
        try:
            workers = [service.worker_pids() for service in replicas]
            before = replicas[0].request("POST", "/generate", {"prompt": "before the outage"})
            assert before.status == 200, before.body

            with load(replicas, "while S3 goes", asynchronous=False) as answers:
                time.sleep(1.0)
                weed.stop()
                for service in replicas:
                    wait_for(
                        lambda s=service: storage_state(s) == (503, "unavailable"),
                        RECOVERED_WITHIN,
                        "storage reported unavailable",
                    )
                time.sleep(3.0)
                refused = replicas[1].request("POST", "/generate", {"prompt": "refused"})
                weed.start()
                for service in replicas:
                    wait_for(
                        lambda s=service: storage_state(s) == (200, "ok"),
                        RECOVERED_WITHIN,
                        "storage reported ok",
                    )
                time.sleep(1.0)

            assert refused.status == 503, refused.body
            assert refused.json()["code"] == "STORAGE_UNAVAILABLE"
            assert int(refused.headers["retry-after"]) >= 1
            statuses = {answer.status for _, answer in answers}
            # 202: the upstream had answered when S3 went; the job was kept in the spool.
            assert statuses <= {200, 202, 503}, [a.body for _, a in answers]
            for _, answer in answers:
                if answer.status == 503:
                    assert answer.json()["code"] == "STORAGE_UNAVAILABLE"
                    assert int(answer.headers["retry-after"]) >= 1
            made = [answer.json() for _, answer in answers if answer.status == 200]
            for body in [before.json(), *made]:  # nothing stored before or after is lost
                for service in replicas:
                    status, _, data = service.get(body["images"][0]["url"])
                    assert status == 200 and data.startswith(b"\x89PNG")
            kept = [answer.json() for _, answer in answers if answer.status == 202]
            for body in kept:  # kept while S3 was away: stored once it is back
                assert body["status"] == "storing"
                for service in replicas:
                    wait_for(
                        lambda s=service, url=body["images"][0]["url"]: s.get(url)[0] == 200,
                        2 * RECOVERED_WITHIN,  # and the flusher's longest pause
                        f"kept job {body['job_id']} stored",
                    )
            for service in replicas:  # new work again, without a restart
                after = service.request("POST", "/generate", {"prompt": "after the outage"})
                assert after.status == 200, after.body
            assert [service.worker_pids() for service in replicas] == workers
        finally:
            for service in replicas:
                service.stop()
