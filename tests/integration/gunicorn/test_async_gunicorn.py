"""Asynchronous jobs under real Gunicorn with several workers and the fake upstream (slow,
streaming partial images): submit and poll from any worker, follow the events, disconnect,
SIGKILL the worker running a job, bound the running jobs and the queue (under concurrent
submissions too), and restart the whole service with jobs in flight. A job always ends
completed or failed, never stuck."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imagegen.books.files import FileJobBook
from tests.support.gunicorn_server import (
    HTTPAnswer,
    Service,
    launch_gunicorn,
    read_head,
    run_gunicorn,
)
from tests.support.jobs import SECRET, Receiver, verify
from tests.support.metrics import scrape_service, value
from tests.support.service import TEST_KEY, wait_for

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}


def environment(tmp_path: Path, fake_openai: Any, **extra: str) -> dict[str, str]:
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    return {
        "GUNICORN_WORKERS": "3",
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
        "IMAGE_GEN_JOB_POLL_INTERVAL": "0.2",
        "IMAGE_GEN_MAX_RUNNING_JOBS": "2",
        "IMAGE_GEN_MAX_QUEUED_JOBS": "3",
        "IMAGE_GEN_WEBHOOK_HOSTS": "127.0.0.1",
        "IMAGE_GEN_WEBHOOK_BACKOFF": "0.1",
        **extra,
    }


@pytest.fixture
def service(tmp_path: Path, fake_openai: Any) -> Iterator[Service]:
    with run_gunicorn(tmp_path / "service", environment(tmp_path, fake_openai)) as running:
        yield running


def submit(service: Service, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    answer = service.request("POST", "/generate", body, headers={**ASYNC, **headers})
    assert answer.status == 202, answer.body
    assert answer.headers["location"] == f"/jobs/{answer.json()['job_id']}"
    return answer.json()


def job(service: Service, job_id: str) -> dict[str, Any]:
    answer = service.request("GET", f"/jobs/{job_id}")
    assert answer.status == 200, answer.body
    return answer.json()


def finished(service: Service, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(
        lambda: (body := job(service, job_id))["status"] in ("completed", "failed") and body,
        timeout,
        f"job {job_id} finishing",
    )


def runner_pid(service: Service, job_id: str) -> int:
    """The pid of the worker running the job, from its record on disk."""
    record = json.loads((service.images / ".jobs" / job_id / "job.json").read_text())
    return record["runner"]["pid"]


def follow_events(service: Service, job_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Read /jobs/<id>/events over one connection until the stream ends."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    url = f"{service.url}/jobs/{job_id}/events"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                events.append(
                    {
                        "id": int(fields["id"]),
                        "event": fields["event"],
                        "data": json.loads(fields["data"]),
                    }
                )
            fields = {}
    return events


def test_submit_then_poll_and_follow_events_from_any_worker(service, fake_openai):
    fake_openai.latency = 1.0
    with Receiver() as receiver:
        accepted = submit(
            service,
            {"prompt": "across workers", "count": 2},
            **{"Webhook-URL": receiver.url, "Webhook-Secret": SECRET},
        )
        job_id = accepted["job_id"]
        assert accepted["status"] in ("queued", "running")

        events = follow_events(service, job_id)
        polled = [job(service, job_id) for _ in range(6)]  # new connections: any worker
        wait_for(lambda: receiver.received, what="the webhook")

    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    names = [e["event"] for e in events]
    assert names[-1] == "completed" and names.count("image") == 2
    assert names.index("partial_image") < names.index("image")
    done = events[-1]["data"]
    for body in polled:
        assert body == {**done, "webhook": body["webhook"]}
    for image in done["images"]:
        status, headers, data = service.get(image["url"])
        assert status == 200 and data.startswith(b"\x89PNG")
    headers, body = receiver.received[0]
    assert verify(headers, body, SECRET.encode())
    assert json.loads(body)["data"]["job_id"] == job_id


def test_sigkill_of_the_worker_running_an_edit_runs_it_again_from_its_kept_input(
    service, fake_openai
):
    made = service.request("POST", "/generate", {"prompt": "a cat"})
    assert made.status == 200, made.body
    image_id = made.json()["images"][0]["id"]
    source = service.request("GET", f"/images/{image_id}").body
    fake_openai.latency = 1.5
    answer = service.request(
        "POST", "/edit", {"prompt": "add a hat", "image_id": image_id}, headers=ASYNC
    )
    assert answer.status == 202, answer.body
    job_id = answer.json()["job_id"]
    wait_for(lambda: len(fake_openai.image_requests) == 2, what="the upstream edit call")

    os.kill(runner_pid(service, job_id), signal.SIGKILL)

    done = finished(service, job_id)
    assert done["status"] == "completed" and done["attempts"] == 2
    first_edit, second_edit = fake_openai.image_requests[1:]
    assert first_edit.path == second_edit.path == "/v1/images/edits"
    assert [f.data for f in second_edit.files] == [f.data for f in first_edit.files] == [source]
    kept = service.images / ".jobs" / job_id / "inputs"
    wait_for(lambda: not kept.exists(), what="the inputs dropped once the job ended")


def test_sigkill_of_the_worker_running_a_job_resumes_it_then_fails_it(service, fake_openai):
    fake_openai.latency = 1.5
    job_id = submit(service, {"prompt": "kill my worker"})["job_id"]
    wait_for(lambda: len(fake_openai.image_requests) == 1, what="the upstream call")
    first = runner_pid(service, job_id)

    os.kill(first, signal.SIGKILL)

    resumed = wait_for(
        lambda: (
            (body := job(service, job_id))["status"] == "running" and body["attempts"] == 2 and body
        ),
        what="the job started again",
    )
    wait_for(lambda: len(fake_openai.image_requests) == 2, what="the second upstream call")
    second = runner_pid(service, job_id)
    assert second != first and resumed["status"] == "running"
    os.kill(second, signal.SIGKILL)

    done = finished(service, job_id)
    assert done["status"] == "failed" and done["code"] == "JOB_INTERRUPTED"
    assert done["attempts"] == 2
    assert len(fake_openai.image_requests) == 2

    again = submit(service, {"prompt": "after the kills"})["job_id"]
    fake_openai.latency = 0.2
    assert finished(service, again)["status"] == "completed"
    service.wait_for_workers(3, exclude={first, second})


def test_running_jobs_are_bounded_across_workers_and_the_queue_is_bounded(service, fake_openai):
    fake_openai.latency = 1.5
    # The first two must have left the queue before it is filled, or the fifth finds it full.
    ids = [submit(service, {"prompt": f"bounded {n}"})["job_id"] for n in range(2)]
    wait_for(
        lambda: sum(job(service, i)["status"] == "running" for i in ids) == 2,
        what="two jobs running",
    )
    ids += [submit(service, {"prompt": f"bounded {n}"})["job_id"] for n in range(2, 5)]
    statuses = [job(service, i)["status"] for i in ids]
    assert statuses.count("running") == 2 and statuses.count("queued") == 3
    full = service.request("POST", "/generate", {"prompt": "too many"}, headers=ASYNC)
    assert full.status == 503 and full.json()["code"] == "QUEUE_FULL"

    for job_id in ids:
        assert finished(service, job_id)["status"] == "completed"
    assert len(fake_openai.image_requests) == 5


def poll(predicate: Callable[[], Any], what: str, looks: int = 600, timeout: float = 30.0) -> Any:
    """`predicate`'s first truthy answer, asked every 50 ms, `looks` times at most and for
    `timeout` s at most."""
    deadline = time.monotonic() + timeout
    for _ in range(looks):
        answer = predicate()
        if answer:
            return answer
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {looks} looks or {timeout} s")


def submit_at_once(service: Service, prompts: list[str]) -> list[HTTPAnswer]:
    """One asynchronous POST /generate per prompt, each from its own thread, all let go
    together by a barrier; the answers in the prompts' order."""
    barrier = threading.Barrier(len(prompts))

    def post(prompt: str) -> HTTPAnswer:
        barrier.wait(timeout=10)
        return service.request("POST", "/generate", {"prompt": prompt}, headers=ASYNC)

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        futures = [pool.submit(post, prompt) for prompt in prompts]
        return [future.result(timeout=60) for future in futures]


def test_concurrent_submissions_over_two_workers_fill_the_queue_exactly(tmp_path, fake_openai):
    # 1 running and 3 waiting at most. Nothing may end during the race (the upstream is held),
    # and the first job must hold the one running slot before it: until then it is waiting
    # itself, and the race would find room for 3 jobs or 4 depending on the dispatcher.
    # fsync on (the service's default) widens a submission's count-to-listing window to a few
    # ms: with the book's .queue lock taken out, 4 of 5 runs admitted 4 to 6 racers.
    env = environment(
        tmp_path,
        fake_openai,
        GUNICORN_WORKERS="2",
        IMAGE_GEN_MAX_RUNNING_JOBS="1",
        IMAGE_GEN_FSYNC="true",
    )
    assert env["IMAGE_GEN_MAX_QUEUED_JOBS"] == "3"
    fake_openai.hold()
    with run_gunicorn(tmp_path / "service", env) as service:
        try:
            first = submit(service, {"prompt": "holds the slot"})["job_id"]
            poll(lambda: job(service, first)["status"] == "running", "the first job running")
            poll(lambda: len(fake_openai.image_requests) == 1, "the first upstream call held")

            racers = [f"racer {n}" for n in range(11)]
            answers = submit_at_once(service, racers)

            answered = zip(racers, answers, strict=True)
            accepted = {p: a.json()["job_id"] for p, a in answered if a.status == 202}
            refused = [answer for answer in answers if answer.status != 202]
            assert len(accepted) == 3, [(a.status, a.body) for a in answers]
            for answer in answers:
                if answer.status == 202:
                    assert answer.headers["location"] == f"/jobs/{answer.json()['job_id']}"
            for answer in refused:
                assert answer.status == 503, answer.body
                assert answer.json()["code"] == "QUEUE_FULL", answer.body
                assert int(answer.headers["retry-after"]) > 0
                assert "location" not in answer.headers and "job_id" not in answer.json()
            ids = [first, *accepted.values()]
            assert [job(service, i)["status"] for i in ids] == ["running", *["queued"] * 3]
            late = service.request("POST", "/generate", {"prompt": "late"}, headers=ASYNC)
            assert late.status == 503 and late.json()["code"] == "QUEUE_FULL"
            assert len(fake_openai.image_requests) == 1
        finally:
            fake_openai.release()

        done = [
            poll(
                lambda i=i: (body := job(service, i))["status"] in ("completed", "failed") and body,
                f"job {i} finishing",
            )
            for i in ids
        ]
        assert [body["status"] for body in done] == ["completed"] * 4, done
        for body in done:
            assert len(body["images"]) == 1
            status, _, data = service.get(body["images"][0]["url"])
            assert status == 200 and data.startswith(b"\x89PNG")
        listed = service.request("GET", "/images?limit=50").json()["images"]

    made = sorted(["holds the slot", *accepted])
    assert sorted(request.json["prompt"] for request in fake_openai.image_requests) == made
    assert sorted(image["prompt"] for image in listed) == made


def test_clients_that_disconnect_do_not_lose_their_job(service, fake_openai):
    fake_openai.latency = 1.0
    body = json.dumps({"prompt": "gone before the answer"}).encode()
    head = (
        f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Prefer: respond-async\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_RDWR)

    job_id = submit(service, {"prompt": "stop reading the events"})["job_id"]
    with urllib.request.urlopen(f"{service.url}/jobs/{job_id}/events", timeout=10) as stream:
        assert stream.readline().startswith(b"retry:")
    assert finished(service, job_id)["status"] == "completed"

    def stored_prompts() -> set[str]:
        listed = service.request("GET", "/images?limit=50").json()["images"]
        return {image["prompt"] for image in listed}

    wait_for(lambda: "gone before the answer" in stored_prompts(), what="the abandoned job")


def test_a_restart_of_the_whole_service_keeps_jobs_in_flight(tmp_path, fake_openai):
    env = environment(tmp_path, fake_openai, IMAGE_GEN_MAX_RUNNING_JOBS="1")
    directory = tmp_path / "service"
    fake_openai.latency = 1.5
    first = launch_gunicorn(directory, env)
    try:
        running = submit(first, {"prompt": "in flight"})["job_id"]
        queued = submit(first, {"prompt": "waiting"})["job_id"]
        wait_for(lambda: job(first, running)["status"] == "running", what="the first job")
        # Killed mid-call: "running" is recorded just before the upstream call is made.
        wait_for(lambda: len(fake_openai.image_requests) == 1, what="the first upstream call")
        assert job(first, queued)["status"] == "queued"
        for pid in [*first.worker_pids(), first.process.pid]:  # the container is killed
            os.kill(pid, signal.SIGKILL)
        first.process.wait(timeout=10)
    finally:
        first.stop()

    with run_gunicorn(directory, env) as second:
        done = {job_id: finished(second, job_id) for job_id in (running, queued)}

    assert done[running]["status"] == done[queued]["status"] == "completed"
    assert done[running]["attempts"] == 2 and done[queued]["attempts"] == 1
    prompts = sorted(request.json["prompt"] for request in fake_openai.image_requests)
    assert prompts == ["in flight", "in flight", "waiting"]


def test_sigterm_lets_a_running_job_finish_before_the_worker_exits(tmp_path, fake_openai):
    env = environment(tmp_path, fake_openai)
    directory = tmp_path / "service"
    fake_openai.latency = 1.5
    with run_gunicorn(directory, env) as first:
        job_id = submit(first, {"prompt": "finish me"})["job_id"]
        wait_for(lambda: job(first, job_id)["status"] == "running", what="the job running")
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=30) == 0

    with run_gunicorn(directory, env) as second:
        done = job(second, job_id)
    assert done["status"] == "completed" and done["attempts"] == 1
    assert len(fake_openai.image_requests) == 1


def open_event_stream(service: Service, job_id: str) -> tuple[socket.socket, HTTPAnswer]:
    """A raw connection asking for the job's events, and the answer's head (a refusal's
    whole JSON body); the connection stays open for the stream."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(
        f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    return sock, read_head(sock)


def follow_until(
    service: Service, job_id: str, wanted: int, attempts: int
) -> tuple[list[socket.socket], list[HTTPAnswer]]:
    """Ask for the job's events `attempts` times at most, until `wanted` streams are open:
    the open streams, and the refusals (whose connections are closed, as clients do)."""
    following: list[socket.socket] = []
    refused: list[HTTPAnswer] = []
    for _ in range(attempts):
        if len(following) == wanted:
            break
        sock, head = open_event_stream(service, job_id)
        if head.status == 200:
            assert head.content_type.startswith("text/event-stream")
            following.append(sock)
        else:
            sock.close()
            refused.append(head)
    return following, refused


def health_seconds(service: Service) -> float:
    started = time.monotonic()
    assert service.request("GET", "/health", timeout=5).status == 200
    return time.monotonic() - started


def streams_open(service: Service) -> float:
    return value(scrape_service(service), "imagegen_event_streams_open")


@contextlib.contextmanager
def queued_job(service: Service) -> Iterator[str]:
    """A job that stays queued (the test holds the only running slot): its streams stay open."""
    holder = FileJobBook(service.images, fsync=False, max_running=1).take_slot()
    assert holder is not None
    try:
        yield submit(service, {"prompt": "watched by many"})["job_id"]
    finally:
        holder.release()


def test_300_clients_following_a_job_leave_health_answering_and_the_excess_is_refused(tmp_path):
    env = {
        "IMAGE_GEN_PROVIDER": "placeholder",
        "GUNICORN_THREADS": "100",
        "IMAGE_GEN_MAX_STREAMS": "25",  # 25 streams per worker, so 300 clients overflow it
        "IMAGE_GEN_MAX_RUNNING_JOBS": "1",
    }
    sockets: list[socket.socket] = []
    with run_gunicorn(tmp_path / "service", env) as service, queued_job(service) as job_id:
        try:
            probes, refused = [], []
            for _ in range(6):  # 300 in all, /health asked between each 50
                following, refusals = follow_until(service, job_id, wanted=50, attempts=50)
                sockets += following
                refused += refusals
                probes.append(health_seconds(service))

            assert 0 < len(sockets) <= 2 * 25 and len(sockets) + len(refused) == 300
            for answer in refused:
                assert answer.status == 503, answer
                assert answer.json()["code"] == "TOO_MANY_STREAMS"
                assert answer.json()["scope"] == "worker"
                assert answer.headers["retry-after"].isdigit()
            assert streams_open(service) == len(sockets)
            assert max(probes) < 1.0, probes
            print(
                f"{len(sockets)} of 300 streams open, {len(refused)} refused; "
                f"/health {max(probes) * 1000:.0f} ms at most"
            )
        finally:
            for sock in sockets:
                sock.close()


def test_230_event_streams_closed_at_once_give_their_threads_back_within_seconds(tmp_path):
    env = {
        "IMAGE_GEN_PROVIDER": "placeholder",
        "GUNICORN_THREADS": "150",
        "IMAGE_GEN_MAX_STREAMS": "120",  # 240 streams over the two workers
        "IMAGE_GEN_MAX_RUNNING_JOBS": "1",
    }
    sockets: list[socket.socket] = []
    with run_gunicorn(tmp_path / "service", env) as service, queued_job(service) as job_id:
        try:
            sockets, _ = follow_until(service, job_id, wanted=230, attempts=400)
            assert len(sockets) == 230
            assert streams_open(service) == 230
            busy = health_seconds(service)

            closed_at = time.monotonic()
            for sock in sockets:
                sock.close()
            wait_for(lambda: streams_open(service) == 0, timeout=5, what="the streams' end")
            freed = time.monotonic() - closed_at
            after = health_seconds(service)
            sockets, _ = follow_until(service, job_id, wanted=230, attempts=400)
            again = time.monotonic() - closed_at

            assert len(sockets) == 230  # every thread came back
            assert max(busy, after) < 1.0, (busy, after)
            print(
                f"230 streams: /health {busy * 1000:.0f} ms while open; closed at once, all "
                f"ended {freed * 1000:.0f} ms later; 230 open again after {again * 1000:.0f} ms"
            )
        finally:
            for sock in sockets:
                sock.close()
