"""`python -m imagegen.migrate`: a single-node images directory, made through the HTTP API, moves
with its books to S3 (a real SeaweedFS) and PostgreSQL (a real server); an app on the bucket
and the database then serves the same images and listing, keeps deleted images deleted, keeps
counting the caps and replays Idempotency-Keys. A run killed half-way continues when run
again; a second run changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from imagegen.access.tokens import parse_tokens
from tests.integration.test_s3_storage import BUCKET, bucket_keys
from tests.support.gunicorn_server import launch_gunicorn, service_environment
from tests.support.postgres import dsn_for
from tests.support.seaweed import SECRET_KEY, SeaweedFS, free_ports
from tests.support.service import ALICE, BOB, TEST_KEY, bearer, line, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-never-shown"  # the test server trusts any password; none may be printed
TOKENS = (line("alice", ALICE, "images_per_hour=4"), line("bob", BOB))
RUN_TIMEOUT = 120
# python -m imagegen.migrate, with the tests' pinned today (tests/support/pinned_command.py)
COMMAND = [sys.executable, "-m", "tests.support.pinned_command", "imagegen.migrate"]


@pytest.fixture
def bucket_url(seaweed_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> str:
    """A prefix of its own in the bucket; the AWS variables set for the apps of the test."""
    seaweed_server.create_bucket(BUCKET)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in seaweed_server.variables().items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/move-{uuid.uuid4().hex}"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The test's database, with a password in the URL (the server trusts any)."""
    return dsn_for(tmp_path).replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture
def target_env(settings, seaweed_server, bucket_url, database_url, tmp_path) -> dict[str, str]:
    """The replicas' environment: the bucket, the database, a local directory of their own."""
    env = service_environment({})
    return {
        **{k: v for k, v in env.items() if not k.startswith("AWS_")},
        **seaweed_server.variables(),
        "IMAGE_GEN_PROVIDER": "placeholder",
        "IMAGE_GEN_STORAGE_URL": bucket_url,
        "IMAGE_GEN_DATABASE_URL": database_url,
        "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "replica"),
        "IMAGE_GEN_FSYNC": "false",
    }


def migrate(
    env: dict[str, str], *args: str, source: Path | None = None
) -> subprocess.CompletedProcess[str]:
    where = [str(source)] if source is not None else []
    return subprocess.run(
        [*COMMAND, *args, *where],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def shows_no_secret(run: subprocess.CompletedProcess[str]) -> bool:
    text = run.stdout + run.stderr
    return PASSWORD not in text and SECRET_KEY not in text and "postgresql://" not in text


def every_page(client: FlaskClient, limit: int, who: str = ALICE) -> list[dict[str, Any]]:
    pages, cursor = [], None
    for _ in range(100):
        query = f"/images?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(query, headers=bearer(who))
        assert response.status_code == 200, response.get_json()
        pages.append(response.get_json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the listing never ended")


def generate(client: FlaskClient, who: str, count: int = 1, **headers: str) -> Any:
    response = client.post(
        "/generate", json={"prompt": "a fox", "count": count}, headers={**bearer(who), **headers}
    )
    assert response.status_code == 200, response.get_json()
    return response


def images_of(client: FlaskClient, jobs: list[dict[str, Any]]) -> dict[str, bytes]:
    found = {}
    for job in jobs:
        for image in job["images"]:
            response = client.get(f"/images/{image['id']}", headers=bearer(ALICE))
            if response.status_code == 200:
                found[image["id"]] = response.data
    return found


def database_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = {
        "spend": "SELECT token, at, images, usd, state, model, job_id FROM spend ORDER BY at",
        "idempotency": "SELECT token, key, state, status, body FROM idempotency ORDER BY key",
        "jobs": "SELECT job_id, listed, status, record::text FROM jobs ORDER BY job_id",
        "image_jobs": "SELECT job_id, stamp_ns, metadata::text FROM image_jobs ORDER BY job_id",
        "images": "SELECT image_id, job_id, key, deleted FROM images ORDER BY image_id",
    }
    with psycopg.connect(url) as db:
        return {name: db.execute(query).fetchall() for name, query in tables.items()}


def test_a_single_node_store_moves_to_s3_and_postgresql_with_its_images_and_books(
    make_jobs_app, settings, fake_openai, target_env, bucket_url, database_url, seaweed_server
):
    tokens = {"tokens": parse_tokens(TOKENS), "tokens_file": Path("tokens")}
    node = make_jobs_app(**tokens).test_client()
    first = generate(node, ALICE, count=2).get_json()
    second = generate(node, BOB).get_json()
    keyed = generate(node, ALICE, **{"Idempotency-Key": "move-1"})
    queued = node.post(
        "/generate",
        json={"prompt": "a heron"},
        headers={**bearer(BOB), "Prefer": "respond-async"},
    )
    assert queued.status_code == 202
    job_url = queued.headers["Location"]
    finished = wait_for(
        lambda: (
            (r := node.get(job_url, headers=bearer(BOB)).get_json())["status"] == "completed" and r
        ),
        what="the asynchronous job's completion",
    )
    gone = first["images"][1]["id"]
    assert node.delete(f"/images/{gone}", headers=bearer(ALICE)).status_code == 200
    jobs = [first, second, keyed.get_json(), finished]
    listing, served = every_page(node, limit=2), images_of(node, jobs)
    assert len(served) == 4 and gone not in served
    used = node.get("/usage", headers=bearer(ALICE)).get_json()["token"]
    assert used["images_last_hour"] == 3

    dry = migrate(target_env, "--dry-run", source=settings.images_dir)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "jobs: 4 would be copied" in dry.stdout
    assert "images: 4 would be copied" in dry.stdout
    assert "asynchronous jobs: 1 would be copied" in dry.stdout
    assert bucket_keys(seaweed_server, bucket_url) == {}

    moved = migrate(target_env, source=settings.images_dir)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "jobs: 4 copied, 0 already there, 0 skipped" in moved.stdout
    assert "images: 4 copied" in moved.stdout and "1 deleted kept as deleted" in moved.stdout
    assert "idempotency keys: 1 copied" in moved.stdout
    assert "result: complete" in moved.stdout
    assert shows_no_secret(moved)
    blobs, rows = bucket_keys(seaweed_server, bucket_url), database_rows(database_url)

    again = migrate(target_env, source=settings.images_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "jobs: 0 copied, 4 already there, 0 skipped" in again.stdout
    assert "caps ledger entries: 0 copied" in again.stdout
    assert "asynchronous jobs: 0 copied, 1 already there" in again.stdout
    assert bucket_keys(seaweed_server, bucket_url) == blobs
    assert database_rows(database_url) == rows

    replica = make_jobs_app(
        images_dir=Path(target_env["IMAGE_GEN_IMAGES_DIR"]),
        storage_url=bucket_url,
        database_url=database_url,
        **tokens,
    ).test_client()
    assert every_page(replica, limit=2) == listing
    assert images_of(replica, jobs) == served
    assert replica.get(f"/images/{gone}", headers=bearer(ALICE)).status_code == 404
    assert replica.get(job_url, headers=bearer(BOB)).get_json() == finished
    replayed = generate(replica, ALICE, **{"Idempotency-Key": "move-1"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_json()["job_id"] == keyed.get_json()["job_id"]
    calls = len(fake_openai.image_requests)
    over = replica.post("/generate", json={"prompt": "a", "count": 2}, headers=bearer(ALICE))
    assert over.status_code == 429 and over.get_json()["used"] == 3
    assert len(fake_openai.image_requests) == calls
    generate(replica, ALICE)  # the fourth image of the hour still fits

    # An image deleted through the replicas stays deleted when the command runs again.
    kept = first["images"][0]["id"]
    assert replica.delete(f"/images/{kept}", headers=bearer(ALICE)).status_code == 200
    assert migrate(target_env, source=settings.images_dir).returncode == 0
    assert replica.get(f"/images/{kept}", headers=bearer(ALICE)).status_code == 404
    # So do whole jobs, and an asynchronous job's record.
    for job, who in ((second, BOB), (finished, BOB)):
        assert replica.delete(f"/jobs/{job['job_id']}", headers=bearer(who)).status_code == 200
    after = migrate(target_env, source=settings.images_dir)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "jobs: 0 copied, 4 already there" in after.stdout
    for job in (second, finished):
        image = job["images"][0]["id"]
        assert replica.get(f"/images/{image}", headers=bearer(ALICE)).status_code == 404
    assert replica.get(job_url, headers=bearer(BOB)).status_code == 404


def test_a_run_killed_half_way_continues_when_run_again(
    settings, make_app, fake_openai, target_env, bucket_url, database_url
):
    node = make_app(settings).test_client()
    jobs = [node.post("/generate", json={"prompt": "a fox"}).get_json() for _ in range(30)]
    listing, served = every_page(node, limit=7), images_of(node, jobs)
    assert len(served) == 30

    running = subprocess.Popen(
        [*COMMAND, str(settings.images_dir)],
        cwd=REPO,
        env=target_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        copied = 0
        assert running.stderr is not None
        for _ in range(100):  # bounded: a line per job, and a few more
            text = running.stderr.readline()
            copied += ": copied" in text
            if copied == 3 or not text:
                break
        running.send_signal(signal.SIGKILL)
    finally:
        running.kill()
        running.communicate(timeout=RUN_TIMEOUT)
    assert copied == 3

    finished = migrate(target_env, source=settings.images_dir)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    counts = finished.stdout.split("jobs: ", 1)[1].split(",")[:2]
    again, already = (int(part.split()[0]) for part in counts)
    assert again + already == 30 and already >= 3 and again >= 1
    replica = make_app(
        settings,
        images_dir=Path(target_env["IMAGE_GEN_IMAGES_DIR"]),
        storage_url=bucket_url,
        database_url=database_url,
    ).test_client()
    assert every_page(replica, limit=7) == listing
    assert images_of(replica, jobs) == served


def test_an_unfinished_asynchronous_job_moves_once_its_node_is_stopped_and_a_replica_ends_it(
    make_jobs_app, fake_openai, target_env, bucket_url, database_url, tmp_path
):
    key = tmp_path / "openai_api_key"
    key.write_text(TEST_KEY + "\n")
    fake_openai.latency = 30.0  # the node is stopped while its upstream call is out
    env = {"OPENAI_API_KEY_FILE": str(key), "OPENAI_BASE_URL": fake_openai.base_url}
    node = launch_gunicorn(tmp_path / "node", {**env, "OPENAI_MAX_RETRIES": "0"})
    try:
        answer = node.request(
            "POST", "/generate", {"prompt": "a heron"}, headers={"Prefer": "respond-async"}
        )
        assert answer.status == 202
        job_id = answer.json()["job_id"]
        wait_for(lambda: fake_openai.image_requests, what="the node's upstream call")

        running = migrate(target_env, source=node.images)

        assert running.returncode == 1
        assert f"skipped asynchronous job {job_id}: a running process holds it" in running.stdout
        assert "result: NOT complete" in running.stdout
    finally:
        for pid in node.worker_pids():
            os.kill(pid, signal.SIGKILL)  # the node goes down with the job unfinished
        node.process.kill()
        node.process.wait(timeout=RUN_TIMEOUT)
    fake_openai.latency = 0.0

    moved = migrate(target_env, source=node.images)

    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "asynchronous jobs: 1 copied" in moved.stdout
    replica = make_jobs_app(
        images_dir=Path(target_env["IMAGE_GEN_IMAGES_DIR"]),
        storage_url=bucket_url,
        database_url=database_url,
    ).test_client()
    done = wait_for(
        lambda: (r := replica.get(f"/jobs/{job_id}").get_json())["status"] == "completed" and r,
        timeout=60,
        what="the moved job's completion on a replica",
    )
    image = replica.get(f"/images/{done['images'][0]['id']}")
    assert image.status_code == 200 and image.mimetype == "image/png"


def test_with_a_database_only_the_books_move_and_the_images_stay_in_the_shared_directory(
    settings, make_app, fake_openai, target_env, database_url
):
    tokens = {"tokens": parse_tokens(TOKENS), "tokens_file": Path("tokens")}
    node = make_app(settings, **tokens).test_client()
    first = generate(node, ALICE, count=3, **{"Idempotency-Key": "only-db"})
    env = {k: v for k, v in target_env.items() if k != "IMAGE_GEN_STORAGE_URL"}

    moved = migrate({**env, "IMAGE_GEN_IMAGES_DIR": str(settings.images_dir)})

    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "not moved: images: they stay in the images directory" in moved.stdout
    assert "caps ledger entries: 1 copied" in moved.stdout and shows_no_secret(moved)
    replica = make_app(settings, database_url=database_url, **tokens).test_client()
    assert images_of(replica, [first.get_json()]) == images_of(node, [first.get_json()])
    replayed = generate(replica, ALICE, count=3, **{"Idempotency-Key": "only-db"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    over = replica.post("/generate", json={"prompt": "a", "count": 2}, headers=bearer(ALICE))
    assert over.status_code == 429 and over.get_json()["used"] == 3


def test_with_a_bucket_only_the_images_move_and_the_books_stay_on_the_node(
    settings, make_app, fake_openai, target_env, bucket_url
):
    node = make_app(settings).test_client()
    jobs = [node.post("/generate", json={"prompt": "a", "count": 2}).get_json() for _ in "ab"]
    gone = jobs[0]["images"][0]["id"]
    assert node.delete(f"/images/{gone}").status_code == 200
    listing = every_page(node, limit=3)
    env = {k: v for k, v in target_env.items() if k != "IMAGE_GEN_DATABASE_URL"}

    moved = migrate({**env, "IMAGE_GEN_IMAGES_DIR": str(settings.images_dir)})

    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "jobs: 2 copied" in moved.stdout and "1 deleted kept as deleted" in moved.stdout
    assert "not moved: caps ledger, idempotency keys, asynchronous jobs" in moved.stdout
    replica = make_app(settings, storage_url=bucket_url).test_client()
    assert every_page(replica, limit=3) == listing
    assert replica.get(f"/images/{gone}").status_code == 404
    assert migrate({**env, "IMAGE_GEN_IMAGES_DIR": str(settings.images_dir)}).returncode == 0


def test_an_unreachable_bucket_stops_the_run_with_an_error_and_a_later_run_completes(
    settings, make_app, fake_openai, target_env
):
    node = make_app(settings).test_client()
    assert node.post("/generate", json={"prompt": "a fox"}).status_code == 200
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"

    failed = migrate({**target_env, "AWS_ENDPOINT_URL_S3": closed}, source=settings.images_dir)

    assert failed.returncode == 1
    assert "the bucket cannot be reached" in failed.stdout
    assert "result: NOT complete" in failed.stdout
    assert shows_no_secret(failed)
    done = migrate(target_env, source=settings.images_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "jobs: 1 copied" in done.stdout


def test_an_unreachable_database_stops_the_run_with_an_error_that_shows_no_password(
    settings, make_app, fake_openai, target_env
):
    node = make_app(settings).test_client()
    assert node.post("/generate", json={"prompt": "a fox"}).status_code == 200
    closed = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_ports(1)[0]}/nowhere"

    failed = migrate({**target_env, "IMAGE_GEN_DATABASE_URL": closed}, source=settings.images_dir)

    assert failed.returncode == 1
    assert "error: the database cannot be reached" in failed.stdout
    assert "jobs: 0 copied" in failed.stdout
    assert shows_no_secret(failed)


def test_the_command_refuses_settings_that_name_no_target(settings, tmp_path):
    env = {k: v for k, v in service_environment({}).items() if not k.startswith("AWS_")}
    (tmp_path / "images").mkdir()

    refused = migrate({**env, "IMAGE_GEN_IMAGES_DIR": str(tmp_path / "images")})

    assert refused.returncode == 2
    assert "nothing to move to" in refused.stderr
    helped = migrate(env, "--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout
