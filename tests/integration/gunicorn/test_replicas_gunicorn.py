"""Two Gunicorn services on separate local directories, configured only by their environment
(IMAGE_GEN_STORAGE_URL, IMAGE_GEN_DATABASE_URL_FILE, the AWS variables), sharing one bucket
and one PostgreSQL database: an image made on A is served by B, a delete on B is seen by A,
and both list the same pages with the same cursors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gunicorn_server import Service, run_gunicorn
from tests.support.postgres import dsn_for
from tests.support.seaweed import SeaweedFS
from tests.support.service import TEST_KEY

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(tmp_path: Path, fake_openai, seaweed_server: SeaweedFS) -> Iterator[list[Service]]:
    seaweed_server.create_bucket("replicas")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "openai_api_key").write_text(TEST_KEY + "\n")
    (secrets / "database_url").write_text(dsn_for(tmp_path) + "\n")
    env = {
        **seaweed_server.variables(),
        "IMAGE_GEN_STORAGE_URL": f"s3://replicas/{uuid.uuid4().hex}",
        "IMAGE_GEN_DATABASE_URL_FILE": str(secrets / "database_url"),
        "OPENAI_API_KEY_FILE": str(secrets / "openai_api_key"),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_gunicorn(tmp_path / "a", env) as a, run_gunicorn(tmp_path / "b", env) as b:
        yield [a, b]


def pages(service: Service, limit: int) -> list[dict]:
    found, cursor = [], None
    for _ in range(50):  # bounded
        answer = service.request(
            "GET", f"/images?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        )
        assert answer.status == 200, answer.body
        found.append(answer.json())
        cursor = found[-1]["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("the listing never ended")


def test_two_gunicorn_replicas_share_images_deletes_and_listings(replicas, tmp_path):
    a, b = replicas
    made = []
    for n in range(3):
        answer = (a if n % 2 == 0 else b).request(
            "POST", "/generate", {"prompt": f"p{n}", "count": 2}
        )
        assert answer.status == 200, answer.body
        made.append(answer.json())

    for job in made:
        for image in job["images"]:
            on_a, on_b = a.get(f"/images/{image['id']}"), b.get(f"/images/{image['id']}")
            assert on_a[0] == on_b[0] == 200 and on_a[2] == on_b[2]
    assert pages(a, 4) == pages(b, 4)
    assert sum(len(page["images"]) for page in pages(a, 4)) == 6

    gone = made[0]["images"][1]["id"]
    assert b.request("DELETE", f"/images/{gone}").status == 200
    assert a.get(f"/images/{gone}")[0] == 404
    assert pages(a, 5) == pages(b, 5)
    assert gone not in json.dumps(pages(a, 5))

    for service in (a, b):
        health = service.request("GET", "/health")
        assert health.json()["dependencies"]["storage"] == {
            "kind": "s3",
            "index": "postgresql",
            "state": "ok",
        }
        assert "postgresql://" not in health.body.decode() + service.log_text()
        local = [p.name for p in service.images.iterdir() if not p.name.startswith(".")]
        assert local == []
