"""Many clients generating, reading and deleting at once across two Gunicorn workers.

The placeholder provider makes deterministic PNGs, so every image has an independent oracle:
`placeholder_png(prompt, width, height, index)`. No image is lost or mixed up: a GET returns
exactly that image, or 404 only once a DELETE of it was sent; exactly one DELETE of an image
succeeds; afterwards every metadata.json is valid and agrees with the files beside it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from imagegen.imaging.placeholder import placeholder_png
from imagegen.services import services
from tests.support.reliability import store_problems

pytestmark = pytest.mark.slow

CLIENTS = 8
DURATION = 8.0  # seconds of mixed traffic
SIZES = ("256x256", "512x512")


@dataclass(frozen=True)
class Made:
    job_id: str
    prompt: str
    size: str
    index: int

    def expected(self) -> bytes:
        width, height = (int(n) for n in self.size.split("x"))
        return placeholder_png(self.prompt, width, height, self.index)


@dataclass
class Ledger:
    """What the clients did, shared under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    made: dict[str, Made] = field(default_factory=dict)
    jobs: dict[str, list[str]] = field(default_factory=dict)
    delete_sent: dict[str, float] = field(default_factory=dict)
    deleted_ok: Counter = field(default_factory=Counter)
    job_delete_sent: set[str] = field(default_factory=set)
    jobs_deleted_ok: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    expected_bytes: dict[str, bytes] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def expected(self, image_id: str) -> bytes:
        with self.lock:
            cached = self.expected_bytes.get(image_id)
        if cached is None:
            cached = self.made[image_id].expected()
            with self.lock:
                self.expected_bytes[image_id] = cached
        return cached


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _client(port: int, ledger: Ledger, seed: int, stop: float) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        roll = rng.random()
        try:
            if roll < 0.35 or not ledger.made:
                _generate(port, ledger, rng, seed)
            elif roll < 0.75:
                _get(port, ledger, rng)
            elif roll < 0.96:
                _delete(port, ledger, rng)
            else:
                _delete_job(port, ledger, rng)
        except Exception as exc:  # any transport failure is a finding, not a crash
            ledger.fail(f"{type(exc).__name__}: {exc}")


def _generate(port: int, ledger: Ledger, rng: random.Random, seed: int) -> None:
    count, size = rng.randint(1, 3), rng.choice(SIZES)
    prompt = f"client {seed} {uuid.uuid4().hex[:8]}"
    body = {"prompt": prompt, "model": "dall-e-2", "size": size, "count": count}
    status, _, raw = _call(port, "POST", "/generate", body)
    if status != 200:
        ledger.fail(f"generate answered {status}: {raw[:200]!r}")
        return
    answer = json.loads(raw)
    ids = [image["id"] for image in answer["images"]]
    if len(ids) != count or any(i["prompt"] != prompt for i in answer["images"]):
        ledger.fail(f"generate answered the wrong images: {answer}")
    with ledger.lock:
        ledger.ops["generate"] += 1
        ledger.jobs[answer["job_id"]] = ids
        for index, image_id in enumerate(ids):
            ledger.made[image_id] = Made(answer["job_id"], prompt, size, index)
    _check_get(port, ledger, ids[0])  # read your own write


def _pick(ledger: Ledger, rng: random.Random) -> str:
    with ledger.lock:
        ids = list(ledger.made)
    recent = ids[-12:]  # bias towards recent images, so clients collide on them
    return rng.choice(recent if rng.random() < 0.6 else ids)


def _get(port: int, ledger: Ledger, rng: random.Random) -> None:
    _check_get(port, ledger, _pick(ledger, rng))


def _check_get(port: int, ledger: Ledger, image_id: str) -> None:
    status, headers, body = _call(port, "GET", f"/images/{image_id}")
    with ledger.lock:
        ledger.ops["get"] += 1
        delete_was_sent = (
            image_id in ledger.delete_sent or ledger.made[image_id].job_id in ledger.job_delete_sent
        )
    if status == 200:
        if body != ledger.expected(image_id):
            ledger.fail(f"GET {image_id} returned bytes of another image")
        if headers.get("ETag") != f'"{image_id}"':
            ledger.fail(f"GET {image_id} has ETag {headers.get('ETag')}")
    elif status == 404:
        if not delete_was_sent:
            ledger.fail(f"GET {image_id} was 404 but nobody deleted it")
        if json.loads(body).get("code") != "IMAGE_NOT_FOUND":
            ledger.fail(f"GET {image_id} 404 body {body[:200]!r}")
    else:
        ledger.fail(f"GET {image_id} answered {status}: {body[:200]!r}")


def _delete(port: int, ledger: Ledger, rng: random.Random) -> None:
    image_id = _pick(ledger, rng)
    if rng.random() < 0.3:  # a sibling from the same job: contention on the job's lock
        with ledger.lock:
            siblings = ledger.jobs[ledger.made[image_id].job_id]
        image_id = rng.choice(siblings)
    with ledger.lock:
        ledger.delete_sent.setdefault(image_id, time.monotonic())
    status, _, body = _call(port, "DELETE", f"/images/{image_id}")
    with ledger.lock:
        ledger.ops["delete"] += 1
        if status == 200:
            ledger.deleted_ok[image_id] += 1
    if status == 200:
        if json.loads(body).get("id") != image_id:
            ledger.fail(f"DELETE {image_id} answered for another image: {body[:200]!r}")
    elif status != 404:
        ledger.fail(f"DELETE {image_id} answered {status}: {body[:200]!r}")


def _delete_job(port: int, ledger: Ledger, rng: random.Random) -> None:
    job_id = ledger.made[_pick(ledger, rng)].job_id
    with ledger.lock:
        ledger.job_delete_sent.add(job_id)
    status, _, body = _call(port, "DELETE", f"/jobs/{job_id}")
    with ledger.lock:
        ledger.ops["delete_job"] += 1
        if status == 200:
            ledger.jobs_deleted_ok[job_id] += 1
    if status not in (200, 404):
        ledger.fail(f"DELETE /jobs/{job_id} answered {status}: {body[:200]!r}")


def test_concurrent_generate_get_delete_never_loses_or_mixes_images(start_gunicorn):
    service = start_gunicorn(
        workers=2, threads=8, env={"IMAGE_GEN_PROVIDER": "placeholder", "IMAGE_GEN_FSYNC": "1"}
    )
    ledger = Ledger()
    stop = time.monotonic() + DURATION
    threads = [
        threading.Thread(target=_client, args=(service.port, ledger, seed, stop), daemon=True)
        for seed in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DURATION + 30)
    assert not any(t.is_alive() for t in threads), "a client hung"

    assert ledger.errors == [], ledger.errors[:10]
    assert ledger.ops["generate"] >= 20 and ledger.ops["get"] >= 20, ledger.ops
    assert ledger.ops["delete"] >= 10 and ledger.ops["delete_job"] >= 1, ledger.ops
    # Exactly one DELETE of each image (or of its job) that clients asked to delete succeeded.
    gone_jobs = set(ledger.jobs_deleted_ok)
    assert gone_jobs == ledger.job_delete_sent
    assert {j: n for j, n in ledger.jobs_deleted_ok.items() if n != 1} == {}
    assert {i: n for i, n in ledger.deleted_ok.items() if n != 1} == {}
    survivors = {i for i in ledger.delete_sent if ledger.made[i].job_id not in gone_jobs}
    assert survivors <= set(ledger.deleted_ok)

    root = service.images
    assert store_problems(root) == []
    on_disk = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    assert on_disk == set(ledger.jobs) - gone_jobs, "jobs lost, or jobs nobody made"
    for job_id, ids in ledger.jobs.items():
        if job_id in gone_jobs:
            continue
        metadata = json.loads((root / job_id / "metadata.json").read_bytes())
        assert [image["id"] for image in metadata["images"]] == ids
        for image in metadata["images"]:
            path = root / job_id / image["file"]
            if image["id"] in ledger.deleted_ok:
                assert image["status"] == "deleted" and not path.exists()
                continue
            assert image["status"] == "available"
            expected = ledger.expected(image["id"])
            assert hashlib.sha256(expected).hexdigest() == image["sha256"]
            assert path.read_bytes() == expected
    for image_id in list(ledger.made)[:40]:  # and the service agrees, image by image
        status, _, body = _call(service.port, "GET", f"/images/{image_id}")
        if image_id in ledger.deleted_ok or ledger.made[image_id].job_id in gone_jobs:
            assert status == 404
        else:
            assert status == 200 and body == ledger.expected(image_id)

    pids = set(re.findall(r"\[(\d+)\] imagegen\.request: .* path=/generate", service.log_text()))
    assert len(pids) >= 2, "the traffic never reached both workers"
    print(f"concurrency ops={dict(ledger.ops)} jobs={len(ledger.jobs)} workers={len(pids)}")


# --- the worst interleavings, forced deterministically in one process --------------------


@pytest.fixture
def racing(placeholder_client, monkeypatch):
    """A store whose next index lookup is followed, before it returns, by another caller's
    action (`after_lookup(action)`, action(image_id, job_id)): the window between finding
    an image in the index and reading its blob, which GET, DELETE and thumbnails all pass."""
    store = services(placeholder_client.application).store
    original = store.index.find

    def after_lookup(action):
        def find(image_id):
            found = original(image_id)
            monkeypatch.setattr(store.index, "find", original)
            if found is not None:
                action(image_id, found[0])
            return found

        monkeypatch.setattr(store.index, "find", find)

    job = placeholder_client.post(
        "/generate", json={"prompt": "race", "count": 2, "model": "dall-e-2", "size": "256x256"}
    ).get_json()
    return placeholder_client, store, job, after_lookup


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("other", ["delete-image", "delete-job"])
def test_a_request_whose_image_vanishes_after_the_lookup_is_a_clean_404(
    racing, images_dir, method, other
):
    client, store, job, after_lookup = racing
    if other == "delete-job" and not hasattr(store, "delete_job"):
        pytest.skip("this store has no delete_job")
    image = job["images"][0]
    if other == "delete-image":
        after_lookup(lambda image_id, _job_id: store.delete_image(image_id))
    else:
        after_lookup(lambda _image_id, job_id: store.delete_job(job_id))

    response = client.open(image["url"], method=method)

    assert response.status_code == 404, response.get_data()[:200]
    assert response.get_json()["code"] == "IMAGE_NOT_FOUND"
    assert store_problems(images_dir) == []
