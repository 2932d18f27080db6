"""Browsing the store: GET /images (newest first, by cursor), GET and DELETE /jobs/<job_id>,
and the web page's server side (GET /, its static files)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from imagegen.imaging.placeholder import placeholder_png
from imagegen.services import services
from imagegen.storage.images import ImageStore
from imagegen.upstream.providers import GeneratedImage, Generation
from tests.support.service import SERVICE_STATE, job_files, read_metadata


def generate(client: FlaskClient, prompt: str, count: int = 1) -> dict[str, Any]:
    """One placeholder job of small images; a short pause keeps created_at strictly ordered."""
    response = client.post(
        "/generate", json={"prompt": prompt, "count": count, "model": "dall-e-2", "size": "256x256"}
    )
    assert response.status_code == 200, response.get_json()
    time.sleep(0.002)
    return response.get_json()


def listing(client: FlaskClient, query: str = "") -> dict[str, Any]:
    response = client.get(f"/images{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def walk(client: FlaskClient, limit: int, query: str = "") -> tuple[list[str], int]:
    """Every image id, page by page, following next_cursor; and how many pages it took."""
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = listing(client, f"?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else ""))
        pages += 1
        assert len(page["images"]) <= limit
        ids += [image["id"] for image in page["images"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert page["images"], "a page with a next cursor must not be empty"


def store_of(client: FlaskClient) -> ImageStore:
    return services(client.application).store


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    body = response.get_json()
    assert body == {**body, "status": "failed", "code": code}
    assert isinstance(body["error"], str) and body["error"]


# --- GET /images ------------------------------------------------------------------------------


def test_images_lists_newest_job_first_with_prompt_and_urls(placeholder_client):
    first = generate(placeholder_client, "first: a red fox")
    second = generate(placeholder_client, "second: <b>two</b> owls", count=2)
    third = generate(placeholder_client, "third: a whale")

    body = listing(placeholder_client)

    expected = [third["images"][0], *second["images"], first["images"][0]]
    assert [image["id"] for image in body["images"]] == [image["id"] for image in expected]
    assert body["next_cursor"] is None
    owl = body["images"][1]
    assert owl == {
        **owl,
        "url": f"/images/{owl['id']}",
        "job_id": second["job_id"],
        "prompt": "second: <b>two</b> owls",
        "model": "dall-e-2",
        "size": "256x256",
        "format": "png",
        "created_at": second["created_at"],
        "placeholder": True,
    }
    assert placeholder_client.get(owl["url"]).status_code == 200


def test_images_is_empty_on_an_empty_store(placeholder_client):
    assert listing(placeholder_client) == {"images": [], "next_cursor": None}


def test_pagination_returns_every_image_once_in_listing_order(placeholder_client):
    jobs = [generate(placeholder_client, f"job {n}", count=1 + n % 3) for n in range(8)]
    everything = [image["id"] for job in reversed(jobs) for image in job["images"]]

    for limit in (1, 2, 3, 5, len(everything), 200):
        ids, pages = walk(placeholder_client, limit)
        assert ids == everything, f"limit={limit}"
        assert pages == max(1, -(-len(everything) // limit))


def test_default_page_holds_fifty_images(placeholder_client):
    store = store_of(placeholder_client)
    for n in range(6):
        store.save_job(*small_job(f"bulk {n}", count=10))

    body = listing(placeholder_client)

    assert len(body["images"]) == 50
    assert body["next_cursor"]
    rest = listing(placeholder_client, f"?cursor={body['next_cursor']}")
    assert len(rest["images"]) == 10
    assert rest["next_cursor"] is None


def test_pages_stay_consistent_when_jobs_come_and_go_between_requests(placeholder_client):
    jobs = [generate(placeholder_client, f"job {n}", count=2) for n in range(5)]
    first_page = listing(placeholder_client, "?limit=3")
    assert [i["job_id"] for i in first_page["images"]] == [jobs[4]["job_id"]] * 2 + [
        jobs[3]["job_id"]
    ]

    newcomer = generate(placeholder_client, "arrived after page one")
    assert placeholder_client.delete(f"/jobs/{jobs[1]['job_id']}").status_code == 200
    rest, _ = walk(placeholder_client, 3, "")  # a fresh walk sees the newcomer first
    assert rest[0] == newcomer["images"][0]["id"]

    ids = [i["id"] for i in first_page["images"]]
    cursor = first_page["next_cursor"]
    while cursor:
        page = listing(placeholder_client, f"?limit=3&cursor={cursor}")
        ids += [i["id"] for i in page["images"]]
        cursor = page["next_cursor"]
    expected = [
        image["id"] for job in reversed(jobs) if job is not jobs[1] for image in job["images"]
    ]
    assert ids == expected


def test_job_id_filter_lists_only_that_job_and_pages_within_it(placeholder_client):
    generate(placeholder_client, "other")
    job = generate(placeholder_client, "three cats", count=3)
    generate(placeholder_client, "another")

    body = listing(placeholder_client, f"?job_id={job['job_id']}")
    ids, pages = walk(placeholder_client, 2, f"&job_id={job['job_id'].upper()}")

    assert [i["id"] for i in body["images"]] == [i["id"] for i in job["images"]]
    assert {i["job_id"] for i in body["images"]} == {job["job_id"]}
    assert ids == [i["id"] for i in job["images"]]
    assert pages == 2


def test_job_id_filter_for_an_unknown_job_is_an_empty_list(placeholder_client):
    generate(placeholder_client, "something")

    body = listing(placeholder_client, f"?job_id={uuid.uuid4()}")

    assert body == {"images": [], "next_cursor": None}


@pytest.mark.parametrize("job_id", ["abc", "../etc", "0" * 36, "%00"])
def test_malformed_job_id_filter_is_a_validation_error(placeholder_client, job_id):
    assert_error(placeholder_client.get(f"/images?job_id={job_id}"), 400, "VALIDATION_ERROR")


def test_deleted_images_and_emptied_jobs_are_not_listed(placeholder_client):
    kept = generate(placeholder_client, "kept", count=3)
    emptied = generate(placeholder_client, "emptied", count=2)
    placeholder_client.delete(kept["images"][1]["url"])
    for image in emptied["images"]:
        placeholder_client.delete(image["url"])

    ids, _ = walk(placeholder_client, 1)

    assert ids == [kept["images"][0]["id"], kept["images"][2]["id"]]


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "x",
        "!!!!",
        "%00",
        "a" * 600,
        _cursor({"a": 1}),
        _cursor([1, "", "not-a-uuid", 0]),
        _cursor([-1, "", str(uuid.uuid4()), 0]),
        _cursor([1, "", str(uuid.uuid4()), -1]),
        _cursor([1.5, "", str(uuid.uuid4()), 0]),
        _cursor([True, "", str(uuid.uuid4()), 0]),
        _cursor([1, "", str(uuid.uuid4()).upper(), 0]),
        _cursor([1, "", str(uuid.uuid4())]),
        _cursor("abcd"),
        _cursor(None),
    ],
)
def test_bad_cursor_is_a_validation_error(placeholder_client, cursor):
    generate(placeholder_client, "x")

    response = placeholder_client.get(f"/images?cursor={cursor}")

    assert_error(response, 400, "VALIDATION_ERROR")
    assert response.get_json()["field"] == "cursor"


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "1.5", "1e2", "٣", " 5"])
def test_bad_limit_is_a_validation_error(placeholder_client, limit):
    response = placeholder_client.get("/images", query_string={"limit": limit})

    assert_error(response, 400, "VALIDATION_ERROR")
    assert response.get_json()["field"] == "limit"


def test_listing_ignores_staging_trash_stray_and_damaged_entries(placeholder_client, images_dir):
    job = generate(placeholder_client, "real")
    copy = images_dir / f".tmp-deleted-{uuid.uuid4().hex}"
    os.makedirs(copy)
    (copy / "metadata.json").write_bytes(
        (images_dir / job["job_id"] / "metadata.json").read_bytes()
    )
    (images_dir / ".tmp-staging").mkdir()
    (images_dir / str(uuid.uuid4())).write_text("a stray file named like a job")
    (images_dir / str(uuid.uuid4())).mkdir()  # a directory without metadata
    (images_dir / str(uuid.uuid4()).upper()).mkdir()
    (images_dir / "notes").mkdir()
    for damaged in (b"[]", b"{not json", b'"text"'):
        job_dir = images_dir / str(uuid.uuid4())
        job_dir.mkdir()
        (job_dir / ".lock").touch()
        (job_dir / "metadata.json").write_bytes(damaged)

    body = listing(placeholder_client)

    assert [i["id"] for i in body["images"]] == [job["images"][0]["id"]]


# --- GET /jobs/<job_id> -----------------------------------------------------------------------


def test_get_job_answers_like_generate_plus_its_request(placeholder_client):
    job = generate(placeholder_client, "a lighthouse", count=2)

    response = placeholder_client.get(f"/jobs/{job['job_id']}")

    assert response.status_code == 200
    body = response.get_json()
    assert {key: value for key, value in body.items() if key != "request"} == job
    assert body["request"] == {
        "prompt": "a lighthouse",
        "model": "dall-e-2",
        "count": 2,
        "size": "256x256",
    }


def test_get_job_shows_deleted_images_without_a_url(placeholder_client):
    job = generate(placeholder_client, "two ships", count=2)
    placeholder_client.delete(job["images"][0]["url"])

    body = placeholder_client.get(f"/jobs/{job['job_id'].upper()}").get_json()

    gone, kept = body["images"]
    assert gone["status"] == "deleted" and gone["url"] is None
    assert kept["status"] == "available" and kept["url"] == f"/images/{kept['id']}"


ODD_JOB_IDS = [
    "a",
    "..",
    "../metadata.json",
    "..%2F..%2Fetc%2Fpasswd",
    ".index",
    ".tmp-probe",
    "%00",
    "x" * 5000,
    "00000000-0000-0000-0000-000000000000",
    "00000000-0000-0000-0000-00000000000g",
]


@pytest.mark.parametrize("job_id", ODD_JOB_IDS)
def test_unknown_or_malformed_job_is_job_not_found(placeholder_client, images_dir, job_id):
    job = generate(placeholder_client, "stays")
    before = job_files(images_dir)

    got = placeholder_client.get(f"/jobs/{job_id}")
    deleted = placeholder_client.delete(f"/jobs/{job_id}")

    for response in (got, deleted):
        assert_error(response, 404, "JOB_NOT_FOUND")
        assert len(response.get_json()["error"]) < 200
    assert job_files(images_dir) == before
    assert placeholder_client.get(f"/jobs/{job['job_id']}").status_code == 200


def test_an_image_id_is_not_a_job_id(placeholder_client):
    job = generate(placeholder_client, "x")

    response = placeholder_client.get(f"/jobs/{job['images'][0]['id']}")

    assert_error(response, 404, "JOB_NOT_FOUND")


# --- DELETE /jobs/<job_id> --------------------------------------------------------------------


def test_delete_job_removes_files_links_and_directory_and_spares_other_jobs(
    placeholder_client, images_dir
):
    other = generate(placeholder_client, "other", count=2)
    other_files = job_files(images_dir)
    job = generate(placeholder_client, "doomed", count=3)
    placeholder_client.delete(job["images"][2]["url"])

    response = placeholder_client.delete(f"/jobs/{job['job_id']}")

    assert response.status_code == 200
    body = response.get_json()
    assert body == {**body, "status": "success", "job_id": job["job_id"]}
    assert job["job_id"] in body["message"]
    assert job_files(images_dir) == other_files
    assert not (images_dir / job["job_id"]).exists()
    for image in job["images"]:
        assert placeholder_client.get(image["url"]).status_code == 404
        assert not (images_dir / ".index" / image["id"]).is_symlink()
    assert_error(placeholder_client.get(f"/jobs/{job['job_id']}"), 404, "JOB_NOT_FOUND")
    assert listing(placeholder_client, f"?job_id={job['job_id']}")["images"] == []
    for image in other["images"]:
        assert placeholder_client.get(image["url"]).status_code == 200
    assert read_metadata(images_dir, other["job_id"])["images"][0]["status"] == "available"


def test_deleting_a_job_twice_is_job_not_found(placeholder_client):
    job = generate(placeholder_client, "once")
    placeholder_client.delete(f"/jobs/{job['job_id']}")

    assert_error(placeholder_client.delete(f"/jobs/{job['job_id']}"), 404, "JOB_NOT_FOUND")


def test_a_job_with_damaged_metadata_can_still_be_deleted(placeholder_client, images_dir):
    job_dir = images_dir / str(uuid.uuid4())
    job_dir.mkdir(parents=True)
    (job_dir / "metadata.json").write_bytes(b"{not json")

    response = placeholder_client.delete(f"/jobs/{job_dir.name}")

    assert response.status_code == 200
    assert not job_dir.exists()
    assert [p for p in images_dir.iterdir() if p.name not in {".index", *SERVICE_STATE}] == []


def test_concurrent_deletes_of_one_job_succeed_exactly_once(placeholder_client, images_dir):
    job = generate(placeholder_client, "contested", count=3)
    kept = generate(placeholder_client, "kept", count=1)
    root = store_of(placeholder_client).blobs.root
    # Separate stores open separate lock files, as separate Gunicorn workers do.
    stores = [ImageStore.on_disk(root, fsync=False) for _ in range(8)]
    results: list[Any] = []
    barrier = threading.Barrier(len(stores))

    def delete(store: ImageStore) -> None:
        barrier.wait()
        results.append(store.delete_job(job["job_id"]))

    threads = [threading.Thread(target=delete, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sum(result is not None for result in results) == 1
    assert len(results) == len(stores)
    assert sorted(set(os.listdir(images_dir)) - SERVICE_STATE) == sorted([".index", kept["job_id"]])
    assert os.listdir(images_dir / ".index") == [kept["images"][0]["id"]]


def test_readers_see_a_whole_job_or_none_while_it_is_deleted(placeholder_client):
    store = store_of(placeholder_client)
    jobs = [store.save_job(*small_job(f"job {n}", count=4)) for n in range(30)]
    reader = ImageStore.on_disk(store.blobs.root, fsync=False)
    seen: list[list[tuple[str, str]]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                items, _ = reader.list_images(limit=200)
                seen.append([(metadata["job_id"], image["id"]) for metadata, image in items])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for job in jobs:
        assert store.delete_job(job["job_id"]) is not None
    done.set()
    for thread in threads:
        thread.join(timeout=30)

    assert not errors
    assert seen
    for snapshot in seen:
        per_job: dict[str, int] = {}
        for job_id, _ in snapshot:
            per_job[job_id] = per_job.get(job_id, 0) + 1
        assert set(per_job.values()) <= {4}
    assert store.list_images(limit=10) == ([], None)
    assert [
        name for name in os.listdir(store.blobs.root) if name not in {".index", *SERVICE_STATE}
    ] == []


# --- many jobs ----------------------------------------------------------------------------------


def small_job(prompt: str, count: int = 1) -> tuple[dict[str, Any], Generation]:
    images = [GeneratedImage(placeholder_png(prompt, 8, 8, n), "png", 8, 8) for n in range(count)]
    request = {"prompt": prompt, "model": "gpt-image-2", "count": count, "size": "8x8"}
    return request, Generation(images, placeholder=True)


def test_listing_two_thousand_jobs_pages_through_all_of_them(placeholder_client, monkeypatch):
    store = store_of(placeholder_client)
    jobs = [store.save_job(*small_job(f"job {n}", count=1 + n % 2)) for n in range(2000)]
    for job in jobs[::7]:
        store.delete_image(job["images"][0]["id"])
    expected = {
        image["id"]
        for job in jobs
        for index, image in enumerate(job["images"])
        if not (index == 0 and job in jobs[::7])
    }

    collected: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = listing(placeholder_client, "?limit=200" + (f"&cursor={cursor}" if cursor else ""))
        collected += page["images"]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    ids = [image["id"] for image in collected]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    created = [image["created_at"] for image in collected]
    assert created == sorted(created, reverse=True), "not newest first"
    assert collected[0]["job_id"] == jobs[-1]["job_id"]
    middle = jobs[1000]
    filtered = listing(placeholder_client, f"?job_id={middle['job_id']}")["images"]
    assert [i["id"] for i in filtered] == [i["id"] for i in middle["images"]][
        1 if middle in jobs[::7] else 0 :
    ]

    # One page reads the metadata of the jobs on it (and of jobs stored in the same clock
    # tick, to order them), not of every job in the store.
    fresh = ImageStore.on_disk(store.blobs.root, fsync=False)
    reads: list[str] = []
    original = ImageStore.job_metadata

    def counting(self: ImageStore, job_id: str) -> dict[str, Any] | None:
        reads.append(job_id)
        return original(self, job_id)

    monkeypatch.setattr(ImageStore, "job_metadata", counting)
    items, _ = fresh.list_images(limit=10)
    assert len(items) == 10
    assert len(reads) < 500, f"{len(reads)} metadata reads for one page of 10"


# --- the web page (server side; tests/browser drives it in Chromium) ---------------------------


def test_page_is_html_with_the_form_gallery_and_a_strict_csp(placeholder_client):
    response = placeholder_client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for fragment in ('id="generate-form"', 'id="prompt"', 'id="model"', 'id="gallery"'):
        assert fragment in html
    assert "Placeholder mode" in html
    assert "<script>" not in html and " style=" not in html  # nothing inline: the CSP forbids it
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "http://" not in html and "https://" not in html  # no third-party assets


def test_page_warns_when_no_key_is_configured(settings, make_app):
    client = make_app(settings, api_key=None, api_key_source="none").test_client()

    html = client.get("/").get_data(as_text=True)

    assert "No OpenAI key is configured" in html


@pytest.mark.parametrize(
    ("path", "mimetype"),
    [("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")],
)
def test_page_assets_are_served_by_the_app(placeholder_client, path, mimetype):
    response = placeholder_client.get(path)

    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.data


def test_page_script_never_writes_html(placeholder_client):
    script = placeholder_client.get("/static/app.js").get_data(as_text=True)

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_unknown_static_file_is_a_json_404(placeholder_client):
    response = placeholder_client.get("/static/nope.js")

    assert_error(response, 404, "NOT_FOUND")
