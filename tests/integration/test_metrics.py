"""GET /metrics: Prometheus' text format, counts by route template, upstream attempts, images
and error codes, and totals that hold across Gunicorn workers, killed and recycled ones too."""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from imagegen import __version__
from imagegen.observability import metrics
from tests.support import fake_openai as fake
from tests.support.gunicorn_server import REPO, Service, run_gunicorn
from tests.support.metrics import CONTENT_TYPE, Samples, parse, scrape, scrape_service, value
from tests.support.scans import change_after_listing
from tests.support.service import TEST_KEY, mounted_tmpfs, wait_for


def requests_total(samples: Samples, route: str, method: str = "GET", status: str = "200"):
    return value(samples, "imagegen_http_requests_total", route=route, method=method, status=status)


# --- one process, through the Flask test client ---------------------------------------------


def test_metrics_are_prometheus_text_with_help_and_type_for_every_family(client):
    response = client.get("/metrics")
    text = response.get_data(as_text=True)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "imagegen_build_info": "gauge",
        "imagegen_http_requests": "counter",
        "imagegen_http_request_duration_seconds": "histogram",
        "imagegen_http_requests_in_flight": "gauge",
        "imagegen_upstream_request_duration_seconds": "histogram",
        "imagegen_upstream_attempts": "counter",
        "imagegen_images_generated": "counter",
        "imagegen_errors": "counter",
        "imagegen_cap_refusals": "counter",
    }
    assert {name: families[name].type for name in expected} == expected
    for name in expected:
        full = name + ("_total" if expected[name] == "counter" else "")
        assert f"# HELP {full} " in text and f"# TYPE {full} {expected[name]}\n" in text
    samples = parse(text)
    assert value(samples, "imagegen_build_info", version=__version__) == 1
    # The scrape itself is in flight while it is rendered.
    assert value(samples, "imagegen_http_requests_in_flight") == 1


def test_requests_are_counted_by_route_template_method_and_status(client):
    unknown = [str(uuid.uuid4()) for _ in range(3)]
    for image_id in unknown:
        assert client.get(f"/images/{image_id}").status_code == 404
    assert client.get("/models").status_code == 200
    assert client.get("/no/such/route").status_code == 404
    assert client.put("/health").status_code == 405
    assert client.open("/health", method="BREW").status_code == 405

    response = client.get("/metrics")
    samples = parse(response.get_data(as_text=True))

    assert requests_total(samples, "/images/<path:image_id>", status="404") == 3
    assert requests_total(samples, "/models") == 1
    assert requests_total(samples, metrics.UNMATCHED, status="404") == 1
    assert requests_total(samples, metrics.UNMATCHED, "PUT", "405") == 1
    assert requests_total(samples, metrics.UNMATCHED, "other", "405") == 1
    text = response.get_data(as_text=True)
    assert "/no/such/route" not in text and "BREW" not in text
    assert not any(image_id in text for image_id in unknown)


def test_histogram_buckets_are_cumulative_and_count_equals_the_inf_bucket(client):
    for _ in range(5):
        client.get("/models")
    client.get("/health")

    text = client.get("/metrics").get_data(as_text=True)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    series: dict[frozenset, list] = {}
    for sample in families["imagegen_http_request_duration_seconds"].samples:
        labels = frozenset((k, v) for k, v in sample.labels.items() if k != "le")
        series.setdefault(labels, []).append(sample)
    models = frozenset({("route", "/models"), ("method", "GET")})
    assert models in series
    for samples in series.values():
        buckets = [s for s in samples if s.name.endswith("_bucket")]
        bounds = [float(s.labels["le"]) for s in buckets]
        counts = [s.value for s in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf")
        assert counts == sorted(counts), "buckets must be cumulative"
        (count,) = [s.value for s in samples if s.name.endswith("_count")]
        (total,) = [s.value for s in samples if s.name.endswith("_sum")]
        assert count == counts[-1]
        assert total >= 0
    assert [s.value for s in series[models] if s.name.endswith("_count")] == [5]


def test_error_responses_are_counted_by_their_code(client):
    client.post("/generate", data="{not json", content_type="application/json")
    client.post("/generate", json={"prompt": ""})
    client.get(f"/images/{uuid.uuid4()}")
    client.get("/nowhere")

    samples = scrape(client)

    assert value(samples, "imagegen_errors_total", code="VALIDATION_ERROR") == 2
    assert value(samples, "imagegen_errors_total", code="IMAGE_NOT_FOUND") == 1
    assert value(samples, "imagegen_errors_total", code="NOT_FOUND") == 1


def test_generated_images_are_counted_by_model_and_operation(client, fake_openai):
    assert client.post("/generate", json={"prompt": "two", "count": 2}).status_code == 200
    assert client.post("/generate", json={"prompt": "one", "model": "dall-e-3"}).status_code == 200

    samples = scrape(client)

    name = "imagegen_images_generated_total"
    assert value(samples, name, model="gpt-image-2", operation="generate") == 2
    assert value(samples, name, model="dall-e-3", operation="generate") == 1


def test_every_upstream_attempt_is_timed_and_counted_by_status(client, fake_openai):
    fake_openai.enqueue(fake.server_error(503))
    assert client.post("/generate", json={"prompt": "retried"}).status_code == 200
    assert client.post("/generate", json={"prompt": "url", "model": "dall-e-3"}).status_code == 200

    samples = scrape(client)

    attempts = "imagegen_upstream_attempts_total"
    assert value(samples, attempts, endpoint="generations", status="503") == 1
    assert value(samples, attempts, endpoint="generations", status="200") == 2
    assert value(samples, attempts, endpoint="download", status="200") == 1
    latency = "imagegen_upstream_request_duration_seconds_count"
    assert value(samples, latency, endpoint="generations", outcome="server_error") == 1
    assert value(samples, latency, endpoint="generations", outcome="success") == 2
    assert value(samples, latency, endpoint="download", outcome="success") == 1
    assert len(fake_openai.image_requests) == 3


def test_failed_upstream_attempts_are_counted_by_failure(client, fake_openai, settings):
    for _ in range(settings.max_retries + 1):
        fake_openai.enqueue(fake.drop_connection())
    fake_openai.enqueue(fake.rate_limited(retry_after=60))

    assert client.post("/generate", json={"prompt": "dropped"}).status_code == 502
    assert client.post("/generate", json={"prompt": "limited"}).status_code == 429
    samples = scrape(client)

    attempts = "imagegen_upstream_attempts_total"
    assert value(samples, attempts, endpoint="generations", status="connection_error") == 3
    assert value(samples, attempts, endpoint="generations", status="429") == 1
    latency = "imagegen_upstream_request_duration_seconds_count"
    assert value(samples, latency, endpoint="generations", outcome="rate_limited") == 1
    assert value(samples, "imagegen_errors_total", code="UPSTREAM_ERROR") == 1
    assert value(samples, "imagegen_errors_total", code="RATE_LIMIT_EXCEEDED") == 1


def test_cap_refusals_are_absent_until_counted_and_label_values_are_escaped(client):
    assert not any(name == "imagegen_cap_refusals_total" for name, _ in scrape(client))
    scope = 'client "ci\\bot"\nsecond line'

    metrics.cap_refused(scope, "images_per_day")
    metrics.cap_refused(scope, "images_per_day")
    metrics.cap_refused("global", "usd_per_day")
    text = client.get("/metrics").get_data(as_text=True)

    assert 'scope="client \\"ci\\\\bot\\"\\nsecond line"' in text
    samples = parse(text)
    name = "imagegen_cap_refusals_total"
    assert value(samples, name, scope=scope, cap="images_per_day") == 2
    assert value(samples, name, scope="global", cap="usd_per_day") == 1


def test_in_flight_counts_requests_being_served(client, fake_openai):
    fake_openai.enqueue(fake.slow(3))
    done: dict = {}
    slow = threading.Thread(
        target=lambda: done.update(
            status=client.post("/generate", json={"prompt": "s"}).status_code
        )
    )
    slow.start()
    try:
        wait_for(lambda: len(fake_openai.image_requests) == 1, 10.0, "the upstream call")
        during = scrape(client)
    finally:
        slow.join(timeout=30)
    after = scrape(client)

    assert done["status"] == 200
    assert value(during, "imagegen_http_requests_in_flight") == 2
    assert value(after, "imagegen_http_requests_in_flight") == 1


def test_metrics_live_in_a_hidden_directory_the_image_listing_ignores(client, images_dir):
    assert client.get("/models").status_code == 200
    scrape(client)

    assert any((images_dir / ".metrics").iterdir())
    listing = client.get("/images")
    assert listing.status_code == 200 and listing.get_json()["images"] == []


def count_file(directory, kind: str = "counter"):
    """This process's count file of `kind` (prometheus_client's multiprocess layout)."""
    (live,) = directory.glob(f"{kind}_{os.getpid()}-*.db")
    return live


def test_a_file_left_half_written_by_a_killed_writer_is_read_up_to_its_last_entry(
    client, images_dir
):
    for _ in range(4):
        client.get("/models")
    directory = images_dir / ".metrics"
    live = count_file(directory)
    # A dead writer's copy of the file, cut off in the middle of a new entry: the header
    # counts the entry, but its key never arrived.
    data = bytearray(live.read_bytes())
    used = int.from_bytes(data[:4], "little")
    data[used : used + 4] = (40).to_bytes(4, "little")
    data[:4] = (used + 64).to_bytes(4, "little")
    (directory / "counter_1.db").write_bytes(bytes(data))

    samples = scrape(client)

    # The live worker's four, the dead copy's four, and nothing from the half entry; the
    # next scrape reads the dead copy, now ending at its last complete entry, the same way.
    assert requests_total(samples, "/models") == 8
    assert requests_total(scrape(client), "/models") == 8


def test_dead_processes_files_are_archived_once_even_by_a_scrape_stopped_half_way(
    client, images_dir
):
    for _ in range(4):
        client.get("/models")
    directory = images_dir / ".metrics"
    dead = directory / "counter_1-dead.db"  # what a killed worker left: no lock on it
    dead.write_bytes(count_file(directory).read_bytes())
    left = dead.read_bytes()
    timings = directory / "histogram_1-dead.db"
    timings.write_bytes(count_file(directory, "histogram").read_bytes())

    samples = scrape(client)
    assert requests_total(samples, "/models") == 8
    duration = "imagegen_http_request_duration_seconds"
    models = {"route": "/models", "method": "GET"}
    assert value(samples, f"{duration}_count", **models) == 8
    assert value(samples, f"{duration}_bucket", **models, le="+Inf") == 8
    assert not dead.exists() and (directory / "counter_archive.db").exists()
    assert not timings.exists() and (directory / "histogram_archive.db").exists()
    assert value(scrape(client), f"{duration}_count", **models) == 8
    # A scrape stopped between writing the archive and deleting what it holds.
    dead.write_bytes(left)

    assert requests_total(scrape(client), "/models") == 8
    assert not dead.exists()
    assert requests_total(scrape(client), "/models") == 8


def test_a_scrape_skips_a_dead_processes_file_removed_after_the_listing(
    client, images_dir, monkeypatch
):
    for _ in range(4):
        client.get("/models")
    directory = images_dir / ".metrics"
    dead = directory / "counter_1.db"
    dead.write_bytes(count_file(directory).read_bytes())

    # Another Gunicorn starting on this directory clears it between listing and reading.
    listings = change_after_listing(monkeypatch, directory, lambda entries: dead.unlink())

    assert requests_total(scrape(client), "/models") == 4
    assert listings == [1]


def test_gunicorn_start_clears_count_files_even_as_others_remove_them(tmp_path, monkeypatch):
    conf = runpy.run_path(str(REPO / "image-gen" / "gunicorn.conf.py"))
    directory = tmp_path / "metrics"
    directory.mkdir()
    names = ["counter_1.db", "histogram_2.db", ".tmp-gauge_livesum_3.db", "gauge_livesum_4.db"]
    names += ["process-5-ee.metrics", "archive.json"]  # the last release's own format
    for name in [*names, ".lock", "notes.txt"]:
        (directory / name).write_bytes(b"")
    monkeypatch.setenv("IMAGE_GEN_METRICS_DIR", str(directory))

    def another_start(entries):
        for name in names[:2]:
            (directory / name).unlink(missing_ok=True)

    listings = change_after_listing(monkeypatch, directory, another_start)
    conf["on_starting"](None)

    assert listings[0] >= 1
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "notes.txt"]


# --- several processes, under real Gunicorn -------------------------------------------------


def models_served(service: Service) -> float:
    return requests_total(scrape_service(service), "/models")


def send_concurrently(service: Service, count: int) -> None:
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda _: service.request("GET", "/models").status, range(count)))
    assert statuses == [200] * count


def writers_of(service: Service, route: str = "/models") -> int:
    """How many process files hold requests to `route` (the test's premise: several)."""
    directory = service.images / ".metrics"
    found = 0
    for path in directory.glob("counter_*-*.db"):  # the processes' files, not the archive
        keys = [json.loads(key) for key, *_ in MmapedDict.read_all_values_from_file(str(path))]
        if any(k[1] == "imagegen_http_requests_total" and k[2]["route"] == route for k in keys):
            found += 1
    return found


@pytest.fixture
def gunicorn(tmp_path) -> Iterator[Service]:
    with run_gunicorn(tmp_path, {"GUNICORN_WORKERS": "3", "GUNICORN_THREADS": "4"}) as service:
        yield service


@pytest.mark.slow
def test_one_scrape_reports_every_workers_requests(gunicorn):
    sent = 0
    for _ in range(20):  # until at least two workers have served some
        send_concurrently(gunicorn, 30)
        sent += 30
        if writers_of(gunicorn) >= 2:
            break
    assert writers_of(gunicorn) >= 2, "one worker served everything; the test proves nothing"

    for _ in range(6):  # whichever worker answers the scrape
        assert models_served(gunicorn) == sent


@pytest.mark.slow
def test_counts_of_sigkilled_workers_survive_their_respawn(gunicorn):
    send_concurrently(gunicorn, 40)
    old = set(gunicorn.worker_pids())
    assert len(old) == 3

    for pid in old:
        os.kill(pid, signal.SIGKILL)
    gunicorn.wait_for_workers(3, exclude=old)

    assert models_served(gunicorn) == 40
    send_concurrently(gunicorn, 10)
    assert models_served(gunicorn) == 50
    assert models_served(gunicorn) == 50


@pytest.mark.slow
def test_recycled_workers_keep_their_counts(tmp_path):
    env = {"GUNICORN_MAX_REQUESTS": "7", "GUNICORN_THREADS": "2"}
    with run_gunicorn(tmp_path, env) as service:
        first = set(service.worker_pids())
        for _ in range(40):
            assert service.request("GET", "/models").status == 200

        assert models_served(service) == 40
        assert not first & set(service.worker_pids()), "no worker was recycled"
        assert models_served(service) == 40
        # Scrapes folded the files of the workers that exited into the archive: what is
        # left is the live workers' (and those of any recycled since the last scrape).
        assert len(list((service.images / ".metrics").glob("counter_*-*.db"))) <= 4


@pytest.mark.slow
def test_in_flight_requests_of_a_killed_worker_are_not_counted(tmp_path, fake_openai):
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY)
    env = {
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_MAX_RETRIES": "0",
    }
    fake_openai.enqueue(fake.slow(60))
    with run_gunicorn(tmp_path, env) as service:
        caller = threading.Thread(
            target=lambda: _ignore_errors(service.request, "POST", "/generate", {"prompt": "s"}),
            daemon=True,
        )
        caller.start()
        wait_for(lambda: len(fake_openai.image_requests) == 1, 10.0, "the upstream call")
        assert value(scrape_service(service), "imagegen_http_requests_in_flight") == 2

        old = set(service.worker_pids())
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        service.wait_for_workers(2, exclude=old)

        assert value(scrape_service(service), "imagegen_http_requests_in_flight") == 1
        caller.join(timeout=30)


def _ignore_errors(call, *args) -> None:
    """Call, ignoring the connection error a SIGKILLed worker leaves its caller with."""
    with contextlib.suppress(OSError):
        call(*args)


@pytest.mark.slow
@pytest.mark.parametrize("own_directory", [False, True], ids=["default-dir", "metrics-dir-set"])
def test_counts_start_at_zero_when_gunicorn_starts_again(tmp_path, own_directory):
    env = {"IMAGE_GEN_METRICS_DIR": str(tmp_path / "metrics")} if own_directory else {}
    with run_gunicorn(tmp_path, env) as service:
        send_concurrently(service, 5)
        assert models_served(service) == 5
    counted = tmp_path / "metrics" if own_directory else service.images / ".metrics"
    assert list(counted.glob("counter_*.db"))

    with run_gunicorn(tmp_path, env) as service:
        assert models_served(service) == 0
        send_concurrently(service, 2)
        assert models_served(service) == 2


FULL_DISK_SCRIPT = """
import errno, os, sys, time
sys.path[:0] = ["image-gen", "."]
from pathlib import Path
from imagegen.observability import metrics

disk = Path(sys.argv[1])
metrics.configure(disk / "metrics")
metrics.cap_refused("before", "cap")
try:
    with open(disk / "filler", "wb") as filler:
        while True:
            filler.write(bytes(65536))
            filler.flush()
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
for number in range(2000):  # far more series than the first 64 KiB hold
    metrics.cap_refused(f"while-full-{number}", "cap")
os.unlink(disk / "filler")
time.sleep(1.5)  # counting resumes a second after a failed write
metrics.cap_refused("after", "cap")
sys.stdout.write(metrics.exposition(disk / "metrics"))
"""


def test_a_full_disk_pauses_counting_instead_of_killing_the_process(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "size=256k") as disk:
        result = subprocess.run(
            [sys.executable, "-c", FULL_DISK_SCRIPT, str(disk)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    samples = parse(result.stdout)
    name = "imagegen_cap_refusals_total"
    assert value(samples, name, scope="before", cap="cap") == 1
    assert value(samples, name, scope="after", cap="cap") == 1
