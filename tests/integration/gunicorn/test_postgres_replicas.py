"""Two Gunicorn services (two replicas) sharing one PostgreSQL database and one images
directory, with the fake upstream: a job whose replica is SIGKILLed mid-call is finished by
the other within a minute (within the default 30 s lease of IMAGE_GEN_JOB_LEASE_SECONDS, or
a shorter one), and IMAGE_GEN_MAX_RUNNING_JOBS counts the jobs of both."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gunicorn_server import (
    GUNICORN_COMMAND,
    REPO,
    Service,
    launch_gunicorn,
    replica_environment,
    service_environment,
)
from tests.support.postgres import dsn_for
from tests.support.service import wait_for

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
RESUMED_WITHIN = 60.0  # seconds from the kill: the lease (30 s), a poll, and the job again
# With IMAGE_GEN_JOB_LEASE_SECONDS=5: the lease, a poll and the job again, well inside the
# default lease alone.
SHORT_LEASE_RESUMED_WITHIN = 20.0


def environment(tmp_path: Path, fake_openai: Any, name: str, **extra: str) -> dict[str, str]:
    return replica_environment(
        tmp_path, fake_openai, name, IMAGE_GEN_DATABASE_URL=dsn_for(tmp_path), **extra
    )


@pytest.fixture
def replicas(tmp_path: Path, fake_openai: Any) -> Iterator[Any]:
    """Starts replicas on the shared database and images (`replicas(name, **env)`); every
    one is stopped afterwards."""
    started: list[Service] = []

    def start(name: str, **extra: str) -> Service:
        env = environment(tmp_path, fake_openai, name, **extra)
        service = launch_gunicorn(tmp_path / name, env)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def submit(service: Service, prompt: str) -> str:
    answer = service.request("POST", "/generate", {"prompt": prompt}, headers=ASYNC)
    assert answer.status == 202, answer.body
    return str(answer.json()["job_id"])


def job(service: Service, job_id: str) -> dict[str, Any]:
    answer = service.request("GET", f"/jobs/{job_id}")
    assert answer.status == 200, answer.body
    body: dict[str, Any] = answer.json()
    return body


def finished(service: Service, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(
        lambda: (body := job(service, job_id))["status"] in ("completed", "failed") and body,
        timeout,
        f"job {job_id} finishing",
    )


def kill_replica(service: Service) -> None:
    """SIGKILL the master and every worker at once, as a lost node or container would."""
    for pid in [*service.worker_pids(), service.process.pid]:
        os.kill(pid, signal.SIGKILL)
    service.process.wait(timeout=10)


def test_a_job_whose_replica_is_killed_mid_call_is_finished_by_the_other(replicas, fake_openai):
    a, b = replicas("a"), replicas("b")
    fake_openai.latency = 3.0
    job_id = submit(a, "survive my replica")
    wait_for(lambda: len(fake_openai.image_requests) == 1, what="the upstream call on A")
    assert job(b, job_id)["status"] == "running"  # B sees A's job, and leaves it to A

    kill_replica(a)
    killed = time.monotonic()

    done = finished(b, job_id, timeout=RESUMED_WITHIN)
    assert time.monotonic() - killed < RESUMED_WITHIN
    assert done["status"] == "completed" and done["attempts"] == 2
    assert len(fake_openai.image_requests) == 2  # the cut-off call, then B's
    for image in done["images"]:
        status, _, data = b.get(image["url"])
        assert status == 200 and data.startswith(b"\x89PNG")


def test_a_short_job_lease_has_a_killed_replicas_job_resumed_sooner(replicas, fake_openai):
    a, b = (replicas(name, IMAGE_GEN_JOB_LEASE_SECONDS="5") for name in ("a", "b"))
    fake_openai.latency = 3.0
    job_id = submit(a, "come back soon")
    wait_for(lambda: len(fake_openai.image_requests) == 1, what="the upstream call on A")

    kill_replica(a)
    killed = time.monotonic()

    done = finished(b, job_id, timeout=SHORT_LEASE_RESUMED_WITHIN)
    assert time.monotonic() - killed < SHORT_LEASE_RESUMED_WITHIN  # the 30 s lease could not
    assert done["status"] == "completed" and done["attempts"] == 2
    assert len(fake_openai.image_requests) == 2


def test_a_job_lease_out_of_range_stops_the_start_naming_the_setting(tmp_path):
    env = service_environment(
        {
            "GUNICORN_BIND": "127.0.0.1:0",
            "GUNICORN_WORKERS": "1",
            "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "images"),
            "IMAGE_GEN_PROVIDER": "placeholder",
            "IMAGE_GEN_JOB_LEASE_SECONDS": "2",
        }
    )
    result = subprocess.run(
        GUNICORN_COMMAND, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "IMAGE_GEN_JOB_LEASE_SECONDS must be from 5 to 600 seconds, not 2" in output


def test_max_running_jobs_counts_the_jobs_running_on_every_replica(replicas, fake_openai):
    a, b = (replicas(name, IMAGE_GEN_MAX_RUNNING_JOBS="1") for name in ("a", "b"))
    fake_openai.latency = 1.0

    ids = [submit(service, f"one at a time {n}") for n, service in enumerate((a, b, a, b))]
    seen_running = []
    while len(seen_running) < 20:  # sampled while they run, from both replicas
        statuses = [job((a, b)[n % 2], job_id)["status"] for n, job_id in enumerate(ids)]
        seen_running.append(statuses.count("running"))
        time.sleep(0.1)

    assert max(seen_running) == 1
    for job_id in ids:
        assert finished(b, job_id)["status"] == "completed"
    times = sorted(request.time for request in fake_openai.image_requests)
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.9 * fake_openai.latency, gaps  # each call began once the last ended
