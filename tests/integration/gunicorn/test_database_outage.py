"""The shared parts failing under real Gunicorn: a PostgreSQL server of the test's own that
is not yet running at start, or is stopped and started again under load, and (S3) a
SeaweedFS server stopped and started again. New work meanwhile is 503 with Retry-After,
never 500; nothing is lost; the service recovers by itself, without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.gunicorn_server import Service, launch_gunicorn
from tests.support.postgres import private_server
from tests.support.service import TEST_KEY, wait_for

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
RECOVERED_WITHIN = 30.0  # seconds from the server answering again to the service serving


def environment(tmp_path: Path, fake_openai: Any, name: str, **extra: str) -> dict[str, str]:
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    return {
        "GUNICORN_WORKERS": "2",
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
        "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "shared-images"),
        "IMAGE_GEN_METRICS_DIR": str(tmp_path / f"metrics-{name}"),
        "IMAGE_GEN_JOB_POLL_INTERVAL": "0.2",
        **extra,
    }


def database_state(service: Service) -> tuple[int, str]:
    answer = service.request("GET", "/health", timeout=15)
    return answer.status, answer.json()["dependencies"]["database"]["state"]


def healthy(service: Service) -> bool:
    return database_state(service) == (200, "ok")


def assert_database_unavailable(answer: Any) -> None:
    assert answer.status == 503, answer.body
    assert answer.json()["code"] == "DATABASE_UNAVAILABLE"
    assert int(answer.headers["retry-after"]) >= 1


def test_a_replica_started_before_its_database_serves_once_the_database_answers(
    tmp_path, fake_openai
):
    with private_server(started=False) as pg:  # nothing listens on its port yet
        env = environment(tmp_path, fake_openai, "a", IMAGE_GEN_DATABASE_URL=pg.dsn)
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
            assert done["status"] == "completed"
            assert service.worker_pids() == workers  # the same workers: none restarted
        finally:
            service.stop()
