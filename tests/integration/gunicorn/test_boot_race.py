"""No worker fails to boot because of another worker's files.

Every worker prepares and sweeps the shared images directory as it boots (`create_app`),
while the other workers write jobs into it. Seen once on a fresh directory: a booting
worker's sweep listed another worker's `.tmp-probe-<pid>`, which that worker removed before
the sweep looked at it; the FileNotFoundError stopped the boot, and Gunicorn's master exits
when a worker fails to boot.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from imagegen.books.sqlite import SQLiteCapsBook
from tests.support.gunicorn_server import Service, run_gunicorn
from tests.support.scans import change_after_listing
from tests.support.service import wait_for

HUPS = 8  # each replaces every worker at once
HUP_EVERY = 1.0  # seconds
WRITERS = 6
RECENT_STAGING = 3000
PROBES = 100_000  # at most, about 1 ms apart


def boots(service: Service) -> int:
    return service.log_text().count("Booting worker")


def exited(service: Service) -> bool:
    """Whether Gunicorn's master has exited (it does when a worker fails to boot)."""
    return service.process.poll() is not None


def first_error(log: str) -> str:
    """The log from its first traceback on (its end if it has none), for a failure message."""
    start = log.find("Traceback")
    return log[start : start + 3000] if start >= 0 else log[-3000:]


def test_a_worker_boots_while_another_removes_its_probe_after_the_listing(
    settings, make_app, monkeypatch
):
    settings.images_dir.mkdir(parents=True)
    probe = settings.images_dir / ".tmp-probe-4242"  # another worker's prepare(), mid-probe
    probe.mkdir()

    def other_worker(entries):
        if probe.exists():
            probe.rmdir()

    listings = change_after_listing(monkeypatch, settings.images_dir, other_worker)
    app = make_app(settings)

    assert listings[0] >= 1
    assert app.test_client().get("/health").status_code == 200


@pytest.mark.slow
def test_workers_booting_again_and_again_while_clients_write_jobs_all_boot(tmp_path):
    env = {
        "IMAGE_GEN_PROVIDER": "placeholder",
        "GUNICORN_WORKERS": "8",
        "GUNICORN_THREADS": "4",
        "GUNICORN_MAX_REQUESTS": "5",  # and every few requests a worker is recycled
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
    }
    # Staging left by writers within the hour: each sweep looks at every one, which widens
    # the time between its listing and its look at a live writer's staging directory.
    # Before the fix, with them and the other replicas' probes, each of 3 runs saw a worker
    # fail to boot on a staging directory or a probe that vanished after the listing.
    images = tmp_path / "images"
    images.mkdir()
    for number in range(RECENT_STAGING):
        (images / f".tmp-recent-{number}").mkdir()
    with run_gunicorn(tmp_path, env) as service:
        stop = threading.Event()
        answers: Counter[int] = Counter()
        failures: list[str] = []

        def write_jobs(number: int) -> None:
            sent = 0
            while not stop.is_set():
                sent += 1
                asynchronous = (number + sent) % 2 == 0
                headers = {"Prefer": "respond-async"} if asynchronous else {}
                body = {"prompt": f"job {number}-{sent}", "model": "dall-e-2", "size": "256x256"}
                try:
                    answer = service.request("POST", "/generate", body, headers=headers)
                except OSError as exc:
                    failures.append(f"writer {number}: {exc!r}")
                    return
                answers[answer.status] += 1

        def probe_like_other_replicas() -> None:
            # What each booting worker's prepare() does, back to back: another replica's
            # workers on the same volume, booting all the time.
            for number in range(PROBES):
                if stop.is_set():
                    return
                probe = images / f".tmp-probe-replica-{number}"
                probe.mkdir()
                probe.rmdir()
                time.sleep(0.001)

        writers = [threading.Thread(target=write_jobs, args=(n,)) for n in range(WRITERS)]
        writers.append(threading.Thread(target=probe_like_other_replicas))
        for writer in writers:
            writer.start()
        try:
            for _ in range(HUPS):
                time.sleep(HUP_EVERY)
                if exited(service):
                    break
                wanted = boots(service) + 8
                service.process.send_signal(signal.SIGHUP)
                wait_for(lambda n=wanted: boots(service) >= n or exited(service), 60, "a round")
            time.sleep(HUP_EVERY)
        finally:
            stop.set()
            for writer in writers:
                writer.join(timeout=60)
        log = service.log_text()
        assert "Worker failed to boot" not in log, first_error(log)
        assert not exited(service), first_error(log)
        service.wait_for_workers(8)
        log = service.log_text()

    assert "Traceback" not in log, first_error(log)
    assert sum(1 for p in images.iterdir() if p.name.startswith(".tmp-recent-")) == RECENT_STAGING
    assert log.count("Booting worker") >= 8 * (HUPS + 1)
    assert failures == []
    assert set(answers) <= {200, 202}, answers
    assert answers[200] > WRITERS and answers[202] > WRITERS, "too few jobs were written"


def test_workers_that_create_the_ledger_at_the_same_moment_all_boot(tmp_path):
    """Workers of a fresh service create the caps ledger at once. SQLite's switch to WAL can
    answer "database is locked" at once, without waiting; seen failing a worker's boot (and so
    the whole service) in a container. Threads race the same way processes do, only faster."""
    failures: list[str] = []
    for attempt in range(200):  # bounded: 200 fresh ledgers, 8 preparing each at once
        path = tmp_path / f"ledger-{attempt}.sqlite3"
        barrier = threading.Barrier(8, timeout=30)

        def prepare(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                SQLiteCapsBook(path).prepare()
            except Exception as exc:  # what a worker's boot would die of
                failures.append(repr(exc))

        workers = [threading.Thread(target=prepare) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    assert failures == []
