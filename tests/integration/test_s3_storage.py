"""IMAGE_GEN_STORAGE_URL=s3://...: images, metadata.json and thumbnails in a bucket, their index
in PostgreSQL (or, without a database, in SQLite on the node), through the HTTP API, on a
real SeaweedFS and a real PostgreSQL; two apps on separate local directories sharing both
are one service; either one stopped is a 503 with Retry-After until it is back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from imagegen.storage import location
from tests.support.fake_openai import make_png
from tests.support.postgres import ThrowawayPostgres, dsn_for
from tests.support.seaweed import SeaweedFS
from tests.support.service import wait_for

BUCKET = "images"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

pytestmark = pytest.mark.slow


def _use(server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS variables of `server`, as an operator would set them, and its bucket."""
    server.create_bucket(BUCKET)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in server.variables().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket_url(seaweed_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> str:
    """A prefix of the bucket of its own for this test."""
    _use(seaweed_server, monkeypatch)
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex}"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return dsn_for(tmp_path)


@pytest.fixture
def replica(settings, make_app, tmp_path) -> Callable[..., FlaskClient]:
    """A client of an app with its own local directory, `name`, and these settings."""

    def build(name: str, **overrides: Any) -> FlaskClient:
        app = make_app(settings, images_dir=tmp_path / name, **overrides)
        return app.test_client()

    return build


def bucket_keys(server: SeaweedFS, url: str) -> dict[str, bytes]:
    """Every object under the URL's prefix: its key after the prefix, and its bytes."""
    bucket = location.parse(url)
    assert isinstance(bucket, location.Bucket)
    client = server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket.name, Prefix=f"{bucket.prefix}/"
    ):
        for entry in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket.name, Key=entry["Key"])["Body"].read()
            found[entry["Key"][len(bucket.prefix) + 1 :]] = body
    return found


def generate(client: FlaskClient, count: int = 1, prompt: str = "a fox") -> dict[str, Any]:
    response = client.post("/generate", json={"prompt": prompt, "count": count})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def every_page(client: FlaskClient, limit: int) -> list[dict[str, Any]]:
    """GET /images page after page by next_cursor: each page's JSON (bounded)."""
    pages, cursor = [], None
    for _ in range(100):
        query = f"/images?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(query)
        assert response.status_code == 200, response.get_json()
        pages.append(response.get_json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the listing never ended")


def listed_ids(pages: list[dict[str, Any]]) -> list[str]:
    return [image["id"] for page in pages for image in page["images"]]


def test_generate_get_list_thumbnails_and_delete_with_s3_and_postgresql(
    replica, fake_openai, bucket_url, database_url, seaweed_server, tmp_path
):
    client = replica("a", storage_url=bucket_url, database_url=database_url)
    fake_openai.image_bytes = make_png(64, 48, (10, 20, 30))  # big enough for a thumbnail
    first, second = generate(client, count=2), generate(client, count=1)

    keys = bucket_keys(seaweed_server, bucket_url)
    expected = {f"{first['job_id']}/metadata.json", f"{second['job_id']}/metadata.json"}
    for job in (first, second):
        for n, image in enumerate(job["images"], start=1):
            expected.add(f"{job['job_id']}/{n:03d}-{image['id']}.png")
    assert set(keys) == expected  # the documented layout, nothing else (no .lock)
    mirror = json.loads(keys[f"{first['job_id']}/metadata.json"])
    assert mirror["job_id"] == first["job_id"] and len(mirror["images"]) == 2
    local = [p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")]
    assert local == []  # no job folder on the node

    image = first["images"][1]
    got = client.get(f"/images/{image['id']}")
    assert got.status_code == 200 and got.mimetype == "image/png"
    assert got.data == keys[f"{first['job_id']}/002-{image['id']}.png"]
    assert got.headers["ETag"] == f'"{image["id"]}"'

    pages = every_page(client, limit=2)
    assert [len(page["images"]) for page in pages] == [2, 1]
    assert listed_ids(pages) == [second["images"][0]["id"], *(i["id"] for i in first["images"])]

    thumbnail = client.get(f"/images/{image['id']}?width=16")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/png"
    cached = [k for k in bucket_keys(seaweed_server, bucket_url) if "/thumbs/" in k]
    assert len(cached) == 1 and cached[0].startswith(f"{first['job_id']}/thumbs/{image['id']}-")
    assert client.get(f"/images/{image['id']}?width=16").data == thumbnail.data

    assert client.delete(f"/images/{image['id']}").status_code == 200
    assert client.get(f"/images/{image['id']}").get_json()["code"] == "IMAGE_NOT_FOUND"
    assert client.delete(f"/images/{image['id']}").status_code == 404
    keys = bucket_keys(seaweed_server, bucket_url)
    assert not [k for k in keys if image["id"] in k]  # the image and its thumbnail
    statuses = [i["status"] for i in json.loads(keys[f"{first['job_id']}/metadata.json"])["images"]]
    assert statuses == ["available", "deleted"]
    assert image["id"] not in listed_ids(every_page(client, limit=10))
    with psycopg.connect(database_url) as db:
        rows = db.execute("SELECT image_id, deleted FROM images ORDER BY deleted").fetchall()
    assert (image["id"], True) in rows and len(rows) == 3


def test_two_replicas_sharing_the_bucket_and_the_database_are_one_service(
    replica, fake_openai, bucket_url, database_url
):
    a = replica("a", storage_url=bucket_url, database_url=database_url)
    b = replica("b", storage_url=bucket_url, database_url=database_url)
    jobs = [generate(a, count=2), generate(b, count=1), generate(a, count=3)]

    for job in jobs:  # made on either, served by both, at once
        for image in job["images"]:
            on_a, on_b = a.get(f"/images/{image['id']}"), b.get(f"/images/{image['id']}")
            assert on_a.status_code == on_b.status_code == 200
            assert on_a.data == on_b.data
    assert every_page(a, limit=2) == every_page(b, limit=2)  # the same cursors too
    assert len(listed_ids(every_page(a, limit=2))) == 6

    gone = jobs[0]["images"][0]["id"]
    assert b.delete(f"/images/{gone}").status_code == 200
    assert a.get(f"/images/{gone}").status_code == 404
    assert a.delete(f"/images/{gone}").status_code == 404
    assert gone not in listed_ids(every_page(a, limit=4))
    assert every_page(a, limit=4) == every_page(b, limit=4)


def test_s3_without_a_database_keeps_its_index_in_sqlite_on_the_node(
    replica, fake_openai, bucket_url, tmp_path, seaweed_server
):
    client = replica("node", storage_url=bucket_url)
    job = generate(client, count=2)

    assert (tmp_path / "node" / ".index" / "images.sqlite3").is_file()
    assert client.get(f"/images/{job['images'][0]['id']}").status_code == 200
    worker = replica("node", storage_url=bucket_url)  # another worker on the same node
    assert listed_ids(every_page(worker, limit=1)) == [i["id"] for i in job["images"]]
    assert worker.delete(f"/images/{job['images'][0]['id']}").status_code == 200
    assert client.get(f"/images/{job['images'][0]['id']}").status_code == 404
    assert f"{job['job_id']}/metadata.json" in bucket_keys(seaweed_server, bucket_url)
    health = client.get("/health").get_json()
    assert health["dependencies"]["storage"] == {"kind": "s3", "index": "sqlite", "state": "ok"}


def test_health_names_each_dependency_and_never_the_bucket(
    replica, fake_openai, bucket_url, database_url
):
    client = replica("a", storage_url=bucket_url, database_url=database_url)

    response = client.get("/health")

    assert response.status_code == 200
    assert response.get_json()["dependencies"] == {
        "storage": {"kind": "s3", "index": "postgresql", "state": "ok"},
        "database": {"kind": "postgresql", "state": "ok"},
    }
    text = response.get_data(as_text=True)
    assert bucket_url.split("/")[-1] not in text and "127.0.0.1" not in text


def test_a_filesystem_store_says_so_in_health(client):
    assert client.get("/health").get_json()["dependencies"] == {
        "storage": {"kind": "file", "index": "files", "state": "ok"},
        "database": {"kind": "sqlite", "state": "ok"},
    }


def test_no_s3_credentials_anywhere_stops_the_start_naming_the_variables(
    settings, make_app, bucket_url, monkeypatch, tmp_path
):
    from imagegen.errors import ServiceError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    with pytest.raises(ServiceError) as refused:
        make_app(settings, storage_url=bucket_url)

    assert "AWS_ACCESS_KEY_ID" in str(refused.value)
    assert "AWS_SHARED_CREDENTIALS_FILE" in str(refused.value)


@pytest.fixture
def own_seaweed(tmp_path: Path, seaweed_server: SeaweedFS, monkeypatch) -> SeaweedFS:
    """A SeaweedFS of this test's own, to stop and start (the session's stays up)."""
    with SeaweedFS.started(tmp_path / "own-seaweed") as server:
        _use(server, monkeypatch)
        yield server


def test_stopped_s3_is_503_storage_unavailable_and_the_service_recovers_when_it_is_back(
    replica, fake_openai, own_seaweed, database_url, caplog
):
    url = f"s3://{BUCKET}/recovery"
    client = replica("a", storage_url=url, database_url=database_url)
    kept = generate(client, count=1)["images"][0]
    asked = len(fake_openai.image_requests)

    own_seaweed.stop()
    refused = client.post("/generate", json={"prompt": "a fox"})
    assert refused.status_code == 503
    assert refused.get_json()["code"] == "STORAGE_UNAVAILABLE"
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(fake_openai.image_requests) == asked  # the upstream was not paid for nothing
    served = client.get(f"/images/{kept['id']}")
    assert (served.status_code, served.get_json()["code"]) == (503, "STORAGE_UNAVAILABLE")
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["dependencies"]["storage"]["state"] == "unavailable"
    assert own_seaweed.endpoint not in health.get_data(as_text=True) + caplog.text

    own_seaweed.start()
    wait_for(lambda: client.get("/health").status_code == 200, timeout=60, what="healthy again")
    again = generate(client, count=1)
    assert client.get(f"/images/{kept['id']}").status_code == 200
    assert client.get(f"/images/{again['images'][0]['id']}").status_code == 200
    assert len(listed_ids(every_page(client, limit=10))) == 2


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
    server.halt()  # at once: the app's pool still holds connections
    server.stop()


def test_stopped_postgresql_is_503_database_unavailable_and_the_service_recovers(
    replica, fake_openai, bucket_url, own_postgres, caplog
):
    client = replica("a", storage_url=bucket_url, database_url=own_postgres.dsn)
    kept = generate(client, count=1)["images"][0]
    asked = len(fake_openai.image_requests)

    own_postgres.halt()
    for call in (
        lambda: client.post("/generate", json={"prompt": "a fox"}),
        lambda: client.get(f"/images/{kept['id']}"),
        lambda: client.get("/images"),
    ):
        refused = call()
        assert refused.status_code == 503
        assert refused.get_json()["code"] == "DATABASE_UNAVAILABLE"
        assert int(refused.headers["Retry-After"]) >= 1
    assert len(fake_openai.image_requests) == asked
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["dependencies"]["database"]["state"] == "unavailable"
    assert "postgresql://" not in health.get_data(as_text=True) + caplog.text

    own_postgres.resume()
    wait_for(lambda: client.get("/health").status_code == 200, timeout=60, what="healthy again")
    again = generate(client, count=1)
    assert client.get(f"/images/{kept['id']}").status_code == 200
    assert listed_ids(every_page(client, limit=10)) == [again["images"][0]["id"], kept["id"]]
