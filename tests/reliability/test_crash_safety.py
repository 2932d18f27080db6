"""Crash safety: SIGKILL the only Gunicorn worker while it writes a large job, many times.

Afterwards every job directory on disk is complete (valid metadata.json, every image with
the sha256 it records) or absent. What a killed writer leaves is only staging debris, `.tmp-*`
directories and index links to jobs that never landed, and `ImageStore.sweep` removes it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imagegen.storage.images import ImageStore
from tests.support.reliability import store_problems

pytestmark = pytest.mark.slow

ROUNDS = 15
TIME_BUDGET = 75.0  # seconds for all rounds; stop early (after MIN_ROUNDS) past it
MIN_ROUNDS = 6
IMAGE_BYTES = 8 * 1024 * 1024
COUNT = 2


def _generate_in_background(service, prompt: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["answer"] = service.request(
                "POST", "/generate", {"prompt": prompt, "count": COUNT}, timeout=30
            )
        except (OSError, http.client.HTTPException) as exc:  # the worker died under us
            result["error"] = exc  # (mid-answer it is an IncompleteRead, not an OSError)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return False


def _staging(root: Path) -> set[str]:
    """Names of the staging directories in the images directory now."""
    try:
        return {entry.name for entry in os.scandir(root) if entry.name.startswith(".tmp-")}
    except FileNotFoundError:
        return set()


def test_sigkill_while_writing_leaves_only_complete_jobs_or_sweepable_debris(
    start_gunicorn, fake_openai
):
    fake_openai.set_image_size(IMAGE_BYTES)
    service = start_gunicorn(workers=1, threads=4, env={"IMAGE_GEN_FSYNC": "1"})
    root = service.images
    rng = random.Random(6)

    # Calibrate: how long from the upstream call arriving to the answer.
    thread, result = _generate_in_background(service, "calibration")
    assert _wait(lambda: len(fake_openai.image_requests) == 1, 15)
    arrived = time.monotonic()
    thread.join(timeout=30)
    span = time.monotonic() - arrived
    assert result["answer"].status == 200, result
    completed = {result["answer"].json()["job_id"]}

    outcomes = {"answered": 0, "killed": 0, "killed_mid_write": 0}
    started = time.monotonic()
    rounds = 0
    for rounds in range(1, ROUNDS + 1):
        (worker,) = service.worker_pids()
        calls = len(fake_openai.image_requests)
        old = _staging(root)
        thread, result = _generate_in_background(service, f"round {rounds}")
        assert _wait(lambda c=calls: len(fake_openai.image_requests) > c, 15)
        if rounds % 2:
            # Aim at the write itself: wait for the staging directory, then a little more.
            _wait(lambda o=old: bool(_staging(root) - o), span * 2)
            time.sleep(rng.uniform(0, 0.04))
        else:
            # Spread the rest over the whole download-decode-write span.
            time.sleep(span * rng.uniform(0.2, 1.1))
        mid_write = bool(_staging(root) - old)
        os.kill(worker, signal.SIGKILL)
        thread.join(timeout=30)
        answer = result.get("answer")
        if answer is not None and answer.status == 200:
            outcomes["answered"] += 1
            completed.add(answer.json()["job_id"])
        else:
            outcomes["killed"] += 1
            outcomes["killed_mid_write"] += mid_write
        service.wait_for_workers(1, exclude={worker})
        if rounds >= MIN_ROUNDS and time.monotonic() - started > TIME_BUDGET:
            break

    assert outcomes["killed"] >= 3, outcomes
    assert outcomes["killed_mid_write"] >= 1, ("no kill landed during a write", outcomes)
    problems = store_problems(root, allow_staging=True)
    assert problems == [], problems

    jobs = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert completed <= {p.name for p in jobs}, "a job that was answered 200 is gone"
    for job in jobs:
        metadata = json.loads((job / "metadata.json").read_bytes())
        assert len(metadata["images"]) == COUNT
        for image in metadata["images"]:
            answer = service.request("GET", f"/images/{image['id']}")
            assert answer.status == 200
            assert hashlib.sha256(answer.body).hexdigest() == image["sha256"]
            assert len(answer.body) == IMAGE_BYTES

    removed = ImageStore.on_disk(root, fsync=False).sweep(older_than=0)
    assert store_problems(root) == [], "sweep left staging debris"
    assert removed >= 0
    assert {p.name for p in root.iterdir() if not p.name.startswith(".")} == {
        p.name for p in jobs
    }, "sweep removed a complete job"

    fake_openai.set_image_size(None)
    after = service.request("POST", "/generate", {"prompt": "after the storm"})
    assert after.status == 200
    assert store_problems(root) == []
    print(f"crash rounds={rounds} outcomes={outcomes} span={span:.2f}s removed={removed}")
