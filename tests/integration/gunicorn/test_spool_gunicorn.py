"""The spool under real Gunicorn: a job kept while S3 was away, its replica stopped before S3
came back, is stored by the replica's next start; a crash's half-written entry and a damaged
one beside it do not stop the workers from booting, and are never stored."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_s3_storage import BUCKET, _use, bucket_keys
from tests.integration.test_spool import UPSTREAM_SECONDS, spooled
from tests.support.fake_openai import make_png, slow
from tests.support.gunicorn_server import HTTPAnswer, launch_gunicorn
from tests.support.postgres import dsn_for
from tests.support.seaweed import SeaweedFS
from tests.support.service import TEST_KEY, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def own_seaweed(tmp_path: Path, seaweed_server: SeaweedFS, monkeypatch) -> SeaweedFS:
    with SeaweedFS.started(tmp_path / "own-seaweed") as server:
        _use(server, monkeypatch)
        yield server


def test_a_replica_restarted_with_kept_jobs_stores_them_and_sets_damaged_entries_aside(
    tmp_path, fake_openai, own_seaweed
):
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    url = f"s3://{BUCKET}/restart"
    env = {
        **own_seaweed.variables(),
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
        "IMAGE_GEN_STORAGE_URL": url,
        "IMAGE_GEN_DATABASE_URL": dsn_for(tmp_path),
    }
    fake_openai.image_bytes = make_png(32, 32, (1, 2, 3))
    service = launch_gunicorn(tmp_path / "replica", env)
    try:
        asked = len(fake_openai.image_requests)
        fake_openai.enqueue(slow(UPSTREAM_SECONDS))
        answers: list[HTTPAnswer] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                service.request("POST", "/generate", {"prompt": "a fox"}, timeout=90)
            )
        )
        caller.start()
        wait_for(lambda: len(fake_openai.image_requests) > asked, timeout=30, what="upstream")
        own_seaweed.stop()
        caller.join(timeout=90)
    finally:
        service.stop()  # before S3 is back: only the next start can store the job
    assert answers and answers[0].status == 202, answers and answers[0].body
    job_id = answers[0].json()["job_id"]
    images = tmp_path / "replica" / "images"
    assert spooled(images) == [job_id]
    entry = images / ".spool" / job_id
    kept: dict[str, Any] = {p.name: p.read_bytes() for p in entry.iterdir()}
    crashed = images / ".spool" / ".tmp-crashed-writer"  # a process killed mid-write
    crashed.mkdir()
    (crashed / "001-half.png").write_bytes(b"\x89PNG\r\n")
    damaged = str(uuid.uuid4())
    (images / ".spool" / damaged).mkdir()
    (images / ".spool" / damaged / "metadata.json").write_bytes(b'{"job_id": "')

    own_seaweed.start()
    assert not [k for k in bucket_keys(own_seaweed, url) if k.startswith(job_id)]
    service = launch_gunicorn(tmp_path / "replica", env)  # boots despite the bad entries
    try:
        stored = wait_for(
            lambda: (
                (found := service.request("GET", f"/jobs/{job_id}")).status == 200
                and found.json()["status"] == "completed"
                and found.json()
            ),
            timeout=90,
            what="the kept job stored by the restarted replica",
        )
        for image in stored["images"]:
            status, _, data = service.get(f"/images/{image['id']}")
            name = next(n for n in kept if image["id"] in n)
            assert status == 200 and data == kept[name]
        assert service.request("GET", "/health").status == 200
    finally:
        service.stop()
    assert spooled(images) == []
    assert (images / ".spool" / ".damaged" / damaged / "metadata.json").exists()
    assert not [k for k in bucket_keys(own_seaweed, url) if k.startswith(damaged)]
    assert f"{job_id}/metadata.json" in bucket_keys(own_seaweed, url)
