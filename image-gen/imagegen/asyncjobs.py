"""Asynchronous jobs: `Prefer: respond-async` answers 202 at once, a runner makes the images.

A route adopts it in one line, after validating its request:

    if (answer := asyncjobs.respond_async(image_request)) is not None:
        return answer

Without a `Prefer: respond-async` (or `wait=N`) header that returns None and the route stays
synchronous, exactly as before. With one, the caller is admitted (a refusal is the answer),
the job is recorded under the images directory (jobrecords.py) and queued, and the answer is
`202 Accepted` with `Location: /jobs/<id>`.

Each Gunicorn worker has one JobRunner: a dispatcher thread and one daemon thread per
running job. A job is run by the process that accepted it; it holds the job's flock until
the job is finished and its webhook delivered. At most `IMAGE_GEN_MAX_RUNNING_JOBS` jobs run
at once over all processes (slot locks); the rest wait, in submission order per process.
A job that has ended leaves the queue at once: delivering its webhook (retries, backoff)
takes neither a queue place nor a slot.
Every dispatcher also looks, every `IMAGE_GEN_JOB_POLL_INTERVAL` seconds and at start-up,
for unfinished jobs nobody holds: their process died (SIGKILL, a crash, a recycled worker, a
restarted container). A queued one is simply run. A running one is started again if it has
been started fewer than `IMAGE_GEN_JOB_ATTEMPTS` times (the interrupted call may already have
been billed), else failed with JOB_INTERRUPTED. An edit or variation keeps its input images
with its record until it ends, so it is resumed the same way.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from . import clock, webhooks
from .clock import utc_now
from .errors import RetryLater, ServiceError, ValidationError, error_response
from .jobrecords import FINAL, JobRecords, Ownership, new_marker, preview_name
from .openai_client import Deadline
from .providers import GeneratedImage, Generation
from .settings import Settings
from .validation import ImageRequest, parse_generate_request

log = logging.getLogger(__name__)

MAX_WAIT = 60.0  # the longest Prefer: wait=N honoured: proxies cut requests at about 100 s
POLL_HINT = {"queued": 5, "running": 2}  # Retry-After on an unfinished job, in seconds
_SWEEP_EVERY = 3600.0
_RUNNERS: weakref.WeakSet[JobRunner] = weakref.WeakSet()


class QueueFull(RetryLater):
    """Too many asynchronous jobs are waiting; come back after Retry-After."""

    status = 503
    code = "QUEUE_FULL"


class JobNotFinished(ServiceError):
    """The job is queued or running: it can be deleted once it has finished."""

    status = 409
    code = "JOB_NOT_FINISHED"


class JobInterrupted(ServiceError):
    """The process running the job died and the job is not started again."""

    status = 500
    code = "JOB_INTERRUPTED"


# --- Prefer (RFC 7240) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Preference:
    """What a request's Prefer headers ask for, of what this service honours."""

    respond_async: bool = False
    wait: float | None = None

    @property
    def asynchronous(self) -> bool:
        return self.respond_async or self.wait is not None


_PREFERENCE = re.compile(r'(?:[^,"]|"[^"]*")+')


def parse_prefer(values: Iterable[str]) -> Preference:
    """`respond-async` and `wait=N` from Prefer header values; anything else is ignored."""
    respond_async, wait = False, None
    for value in values:
        for item in _PREFERENCE.findall(value):
            token = item.split(";", 1)[0]
            name, _, raw = token.partition("=")
            name, raw = name.strip().lower(), raw.strip().strip('"')
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and raw.isascii() and raw.isdigit() and len(raw) <= 9:
                wait = min(float(raw), MAX_WAIT)
    return Preference(respond_async, wait)


# --- the one-line adoption for routes -----------------------------------------------------


def respond_async(
    image_request: ImageRequest,
    *,
    operation: str = "generate",
    produce: Callable[[Deadline], Generation] | None = None,
    source: dict[str, Any] | None = None,
    respond: Callable[[dict[str, Any]], ResponseReturnValue] | None = None,
    inputs: dict[str, bytes] | None = None,
) -> ResponseReturnValue | None:
    """Queue the request as an asynchronous job if its Prefer header asks; None otherwise.

    `produce`, `operation` and `source` are as for `create_job`. With `Prefer: wait=N` and
    the job finished in time, the answer is what the synchronous call answers: `respond`
    (default: the /generate body) for the stored job, or the job's error. A job with its
    own `produce` (an edit) is resumed after its process dies only if its operation has a
    rebuilder (`resumable`) and it gave the `inputs` that rebuilder reads; otherwise it is
    failed with JOB_INTERRUPTED.
    """
    preference = parse_prefer(request.headers.getlist("Prefer"))
    if not preference.asynchronous:
        if request.headers.get(webhooks.URL_HEADER) is not None:
            raise ValidationError(
                f"{webhooks.URL_HEADER} needs 'Prefer: respond-async': a webhook reports an "
                "asynchronous job.",
                details={"field": webhooks.URL_HEADER},
            )
        return None
    from .generate import admit, input_count

    runner = runner_of(current_app)
    webhook = _webhook_from_headers(runner.settings)
    runner.check_capacity()
    caller = g.get("caller")
    admission = admit(image_request, caller, input_images=input_count(source))
    record = runner.submit(
        image_request,
        operation=operation,
        produce=produce,
        source=source,
        caller=caller,
        admission=admission,
        webhook=webhook,
        inputs=inputs,
    )
    job_id = record["job_id"]
    if preference.wait and runner.wait(job_id, preference.wait):
        finished = runner.records.read(job_id) or record
        if finished["status"] == "completed":
            metadata = runner.store.job_metadata(job_id)
            if metadata is not None:
                return (respond or _sync_answer(image_request))(metadata)
        if finished["status"] == "failed":
            return _error_answer(finished["error"])
    return accepted(runner.records.read(job_id) or record, runner)


def accepted(record: dict[str, Any], runner: JobRunner) -> Response:
    """202 Accepted: the job, where to poll it, and how soon."""
    response = jsonify(pending_body(record, runner.records))
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{record['job_id']}"
    response.headers["Preference-Applied"] = "respond-async"
    response.headers["Retry-After"] = str(POLL_HINT.get(record["status"], 2))
    return response


def _sync_answer(image_request: ImageRequest) -> Callable[[dict[str, Any]], Response]:
    def answer(metadata: dict[str, Any]) -> Response:
        from .generate import answer_body

        return jsonify(answer_body(image_request, metadata))

    return answer


def _error_answer(error: dict[str, Any]) -> Response:
    extra = {k: v for k, v in error.items() if k not in ("error", "code", "http_status")}
    response = error_response(error["http_status"], error["code"], error["error"], **extra)
    if "retry_after" in error:
        response.headers["Retry-After"] = str(error["retry_after"])
    return response


def _warnings(image_request: ImageRequest) -> dict[str, Any]:
    warnings = image_request.model.warnings(clock.today())
    return {"warnings": warnings} if warnings else {}


def _webhook_from_headers(settings: Settings) -> tuple[str, str | None] | None:
    """(URL, the caller's own secret or None for the operator's) from the request headers."""
    url = request.headers.get(webhooks.URL_HEADER)
    secret = request.headers.get(webhooks.SECRET_HEADER)
    if url is None:
        if secret is not None:
            raise ValidationError(
                f"{webhooks.SECRET_HEADER} was sent without {webhooks.URL_HEADER}.",
                details={"field": webhooks.URL_HEADER},
            )
        return None
    webhooks.check_url(url, settings.webhook_hosts)
    if secret is not None:
        webhooks.check_secret(secret)
    elif settings.webhook_secret is None:
        raise ValidationError(
            f"Send {webhooks.SECRET_HEADER} with {webhooks.URL_HEADER}: this service has no "
            "signing secret of its own (IMAGE_GEN_WEBHOOK_SECRET_FILE).",
            details={"field": webhooks.SECRET_HEADER},
        )
    return url, secret


# --- how jobs look to callers -----------------------------------------------------------------


def pending_body(record: dict[str, Any], records: JobRecords | None = None) -> dict[str, Any]:
    """A job that is not stored yet (queued, running) or failed, as the API shows it."""
    job_id = record["job_id"]
    body: dict[str, Any] = {
        "job_id": job_id,
        "status": record["status"],
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
        "model": record["request"].get("model"),
        "operation": record["operation"],
        "request": record["request"],
        "progress": record["progress"],
        "images": [],
        "previews": record["previews"],
        "attempts": record["attempts"],
        "events_url": f"/jobs/{job_id}/events",
    }
    if record["status"] == "queued" and records is not None:
        busy = records.busy_slots()
        earlier = sum(1 for marker, _ in records.active() if marker < record["marker"])
        body["queue"] = {
            "ahead": max(0, earlier - busy),
            "running": busy,
            "max_running": records.max_running,
        }
    if record["status"] == "failed" and record.get("error"):
        body.update(record["error"])
    if record.get("warnings"):
        body["warnings"] = record["warnings"]
    if record.get("webhook"):
        hook = record["webhook"]
        body["webhook"] = {"status": hook["status"], "attempts": hook["attempts"]}
    return body


def completed_body(
    metadata: dict[str, Any], record: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A stored job as GET /jobs/<id> shows it: /generate's answer plus the request, and for
    an asynchronous job (its `record`) how many times it was started."""
    from .generate import job_response

    body = job_response(metadata)
    for image in body["images"]:
        if image["status"] != "available":
            image["url"] = None
            if "thumbnail_url" in image:
                image["thumbnail_url"] = None
    body["request"] = metadata["request"]
    if record is not None:
        body["attempts"] = record["attempts"]
    return body


def _emit(record: dict[str, Any], event: str, data: dict[str, Any]) -> None:
    """Append an event (for GET /jobs/<id>/events) with the next id and a copy of `data`."""
    events = record["events"]
    number = events[-1]["id"] + 1 if events else 1
    events.append({"id": number, "event": event, "data": copy.deepcopy(data)})


def _status_data(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": record["job_id"],
        "status": record["status"],
        "progress": record["progress"],
        "attempts": record["attempts"],
    }


# --- resuming: how to rebuild a job from its record --------------------------------------


@dataclass(frozen=True)
class Rebuilt:
    """A job rebuilt from its record: the request and what makes its images (None: the
    provider's generate)."""

    request: ImageRequest
    produce: Callable[[Deadline], Generation] | None = None


# From the record, the settings, and the records (for inputs kept with the job).
Rebuild = Callable[[dict[str, Any], Settings, JobRecords], Rebuilt]

_REBUILDERS: dict[str, Rebuild] = {
    "generate": lambda record, settings, _: Rebuilt(
        parse_generate_request(record["request"], default_model=settings.default_model)
    ),
}


def resumable(operation: str, rebuild: Rebuild) -> None:
    """Let jobs of `operation` be started again from their record after their process died."""
    _REBUILDERS[operation] = rebuild


# --- the runner ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    """A job this process owns: queued here, running here, or finishing its webhook."""

    record: dict[str, Any]
    ownership: Ownership
    image_request: ImageRequest | None = None
    produce: Callable[[Deadline], Generation] | None = None
    caller: Any = None
    admission: Any = None
    ended: threading.Event = field(default_factory=threading.Event)  # completed or failed
    done: threading.Event = field(default_factory=threading.Event)  # and let go of
    mutex: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_id(self) -> str:
        return self.record["job_id"]


class JobRunner:
    """One process's share of the asynchronous jobs: its queue, its running jobs, adoption."""

    def __init__(self, app: Flask, records: JobRecords, settings: Settings) -> None:
        self.app = app
        self.records = records
        self.settings = settings
        self._lock = threading.Lock()
        self._owned: dict[str, _Job] = {}
        self._queue: list[_Job] = []  # owned and waiting for a slot, oldest marker first
        self._wake = threading.Event()
        self._stop = threading.Event()  # set on shutdown: start nothing, cut waits short
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._last_sweep = 0.0
        _RUNNERS.add(self)

    @property
    def store(self) -> Any:
        return self.app.extensions["imagegen"]["store"]

    # --- accepting --------------------------------------------------------------------

    def check_capacity(self) -> None:
        """QueueFull when `max_queued_jobs` jobs already wait (over every process)."""
        active, busy = self.records.active(), self.records.busy_slots()
        waiting = len(active) - busy
        if waiting >= self.settings.max_queued_jobs:
            # A job whose record has just said it ended is still listed for a moment (its
            # marker moves next, or its process died in between): count only unfinished ones.
            waiting = sum(1 for _, job_id in active if not self._ended(job_id)) - busy
        if waiting >= self.settings.max_queued_jobs:
            raise QueueFull(
                f"{waiting} asynchronous jobs are waiting, the most this service queues; "
                "try again after Retry-After seconds.",
                retry_after=30,
            )

    def _ended(self, job_id: str) -> bool:
        record = self.records.read(job_id)
        return record is None or record["status"] in FINAL

    def submit(
        self,
        image_request: ImageRequest,
        *,
        operation: str,
        produce: Callable[[Deadline], Generation] | None,
        source: dict[str, Any] | None,
        caller: Any,
        admission: Any,
        webhook: tuple[str, str | None] | None,
        inputs: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Record and queue a job this process will run; return its record. `inputs` are
        kept with the record (see JobRecords.create) for the operation's rebuilder."""
        job_id = str(uuid.uuid4())
        now = utc_now()
        record: dict[str, Any] = {
            "job_id": job_id,
            "status": "queued",
            "operation": operation,
            "created_at": now,
            "updated_at": now,
            "marker": new_marker(job_id),
            "request": image_request.as_dict(),
            "source": source,
            "request_id": g.get("request_id"),
            "caller": getattr(caller, "name", None),
            "resumable": (produce is None or inputs is not None) and operation in _REBUILDERS,
            "attempts": 0,
            "runner": None,
            "progress": {"images_done": 0, "count": image_request.count, "partial_images": 0},
            "previews": [],
            "events": [],
            "error": None,
            **_warnings(image_request),
            "webhook": None
            if webhook is None
            else {"url": webhook[0], "status": "pending", "attempts": 0, "error": None},
        }
        _emit(record, "status", _status_data(record))
        ownership = self.records.create(
            record, webhook_secret=webhook[1] if webhook else None, inputs=inputs
        )
        job = _Job(record, ownership, image_request, produce, caller, admission)
        with self._lock:
            self._owned[job_id] = job
            self._queue.append(job)
        log.info(
            "job queued request_id=%s job_id=%s operation=%s model=%s count=%d",
            record["request_id"],
            job_id,
            operation,
            image_request.model.id,
            image_request.count,
        )
        self.ensure_started()
        self._wake.set()
        return record

    def wait(self, job_id: str, timeout: float) -> bool:
        """Wait up to `timeout` s for a job this process owns to end; True if it has."""
        with self._lock:
            job = self._owned.get(job_id)
        return True if job is None else job.ended.wait(timeout)

    def notice(self, record: dict[str, Any]) -> None:
        """A reader saw this unfinished job: if nobody holds it, adopt it now."""
        if record["status"] not in FINAL and not self.records.is_owned(record["job_id"]):
            self.ensure_started()
            self._wake.set()

    # --- the dispatcher ---------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the dispatcher thread (again, after a fork) unless shutting down."""
        with self._lock:
            if self._stop.is_set():
                return
            alive = self._thread is not None and self._thread.is_alive()
            if alive and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="imagegen-jobs", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("job dispatcher: unexpected error")
            self._wake.wait(self.settings.job_poll_interval)
            self._wake.clear()

    def _tick(self) -> None:
        self._start_queued()
        self._adopt_orphans()
        self._start_queued()
        if time.monotonic() - self._last_sweep > _SWEEP_EVERY or not self._last_sweep:
            self._last_sweep = time.monotonic()
            removed = self.records.sweep(self.settings.job_retention)
            if removed:
                log.info("job records swept: %d", removed)

    def _start_queued(self) -> None:
        """Start this process's queued jobs, oldest first, while slots are free."""
        while not self._stop.is_set():
            with self._lock:
                if not self._queue:
                    return
                job = self._queue[0]
            slot = self.records.take_slot()
            if slot is None:
                return
            with self._lock:
                queued = job in self._queue  # shutdown() may have let go of it meanwhile
                if queued:
                    self._queue.remove(job)
            if not queued:
                slot.release()
                continue
            threading.Thread(
                target=self._run,
                args=(job, slot),
                name=f"imagegen-job-{job.job_id[:8]}",
                daemon=True,
            ).start()

    def _adopt_orphans(self) -> None:
        """Take every unfinished job, and every undelivered webhook, whose process is gone."""
        for marker, job_id in self.records.active() + self.records.delivering():
            if self._stop.is_set():
                return
            with self._lock:
                if job_id in self._owned:
                    continue
            ownership = self.records.own(job_id)
            if ownership is None:
                if self.records.read(job_id) is None and self.records.marker_age(marker) > 60:
                    self.records.drop_marker(marker)  # a submission that died half-way
                continue
            record = self.records.read(job_id)
            if record is None or record.get("marker") != marker:
                ownership.release()
                if record is None:
                    self.records.drop_marker(marker)
                continue
            self._adopt(_Job(record, ownership))

    def _adopt(self, job: _Job) -> None:
        record = job.record
        status = record["status"]
        log.warning(
            "adopting job job_id=%s status=%s attempts=%d (its process is gone)",
            job.job_id,
            status,
            record["attempts"],
        )
        with self._lock:
            self._owned[job.job_id] = job
        stored = self.store.job_metadata(job.job_id) if status not in FINAL else None
        if stored is not None:  # its process died between storing the images and saying so
            self._complete(job, stored)
        elif status == "running" and record["attempts"] >= self.settings.job_attempts:
            self._fail(
                job,
                JobInterrupted(
                    f"The process running this job stopped (killed, crashed or restarted) "
                    f"after it had been started {record['attempts']} time(s); it is not "
                    "started again, and any images it made were not kept. Submit it again."
                ),
            )
        if record["status"] in FINAL:
            threading.Thread(target=self._finish, args=(job,), daemon=True).start()
            return
        if status == "running":
            self._update(
                job,
                lambda r: r.update(status="queued", runner=None),
                event="status",
                durable=True,
            )
        with self._lock:
            self._queue.append(job)
            self._queue.sort(key=lambda queued: queued.record["marker"])

    # --- running ----------------------------------------------------------------------

    def _run(self, job: _Job, slot: Ownership) -> None:
        try:
            with self.app.app_context():
                g.request_id = job.record.get("request_id")
                runner = {"pid": os.getpid(), "host": socket.gethostname()}
                self._update(
                    job,
                    lambda r: r.update(status="running", attempts=r["attempts"] + 1, runner=runner),
                    event="status",
                    durable=True,
                )
                try:
                    metadata = self._make(job)
                except ServiceError as exc:
                    self._fail(job, exc)
                except Exception:
                    log.exception("job %s failed unexpectedly", job.job_id)
                    self._fail(job, ServiceError("Internal error; see the service log."))
                else:
                    self._complete(job, metadata)
        except Exception:
            log.exception("job %s: cannot record its progress", job.job_id)
        finally:
            slot.release()
            self._wake.set()  # a slot is free
        self._finish(job)

    def _make(self, job: _Job) -> dict[str, Any]:
        """Make and store the job's images (or find them stored by a runner that died)."""
        from .generate import create_job

        record = job.record
        stored = self.store.job_metadata(job.job_id)
        if stored is not None:
            return stored
        image_request, caller, admission = job.image_request, job.caller, job.admission
        produce = job.produce
        if image_request is None:
            rebuild = _REBUILDERS.get(record["operation"]) if record.get("resumable") else None
            if rebuild is None:
                raise JobInterrupted(
                    f"The process that accepted this {record['operation']} job stopped before "
                    "it finished, and its inputs were not kept, so it cannot be resumed. "
                    "Submit it again."
                )
            rebuilt = rebuild(record, self.settings, self.records)
            image_request, produce = rebuilt.request, rebuilt.produce
            caller = self._restore_caller(record.get("caller"))  # create_job admits it again
        produce = produce or self._progressive(job, image_request)
        return create_job(
            image_request,
            produce=produce,
            operation=record["operation"],
            source=record.get("source"),
            caller=caller,
            admission=admission,
            job_id=job.job_id,
        )

    def _progressive(
        self, job: _Job, image_request: ImageRequest
    ) -> Callable[[Deadline], Generation] | None:
        """The provider's generate that reports previews and finished images, if it can."""
        provider = self.app.extensions["imagegen"]["provider"]
        method = getattr(provider, "generate_with_progress", None)
        if method is None or job.record["operation"] != "generate":
            return None
        progress = _JobProgress(self, job)
        partials = self.settings.partial_images
        return lambda deadline: method(image_request, deadline, progress, partials)

    def _restore_caller(self, name: str | None) -> Any:
        """The caller of an adopted job, from its token's name (None: an open service)."""
        if name is None:
            return None
        from .tokens import ANONYMOUS_CALLER, Caller

        tokens = getattr(self.settings, "tokens", None)
        if tokens is None:
            return ANONYMOUS_CALLER
        for token in tokens:
            if token.name == name:
                return Caller(
                    token.name, admin=token.admin, limits=token.limits, authenticated=True
                )
        raise JobInterrupted(
            "The process running this job stopped, and the client token that submitted it is "
            "no longer configured, so it is not resumed."
        )

    def _complete(self, job: _Job, metadata: dict[str, Any]) -> None:
        body = completed_body(metadata, job.record)
        count = len(metadata.get("images", []))

        def mutate(record: dict[str, Any]) -> None:
            record["status"] = "completed"
            record["progress"]["images_done"] = count
            record["error"] = None
            _emit(record, "status", _status_data(record))
            _emit(record, "completed", body)

        self._update(job, mutate, durable=True)
        job.ended.set()

    def _fail(self, job: _Job, exc: ServiceError) -> None:
        error = {"error": exc.message, "code": exc.code, "http_status": exc.status}
        error.update(exc.details)
        log.info("job failed job_id=%s code=%s", job.job_id, exc.code)

        def mutate(record: dict[str, Any]) -> None:
            record["status"] = "failed"
            record["error"] = error
            _emit(record, "status", _status_data(record))
            _emit(record, "failed", pending_body(record))

        self._update(job, mutate, durable=True)
        job.ended.set()

    def _finish(self, job: _Job) -> None:
        """Take the ended job off the queue, deliver its webhook, and let go of it."""
        try:
            hook = job.record.get("webhook")
            pending = bool(hook) and hook["status"] == "pending"
            self.records.drop_inputs(job.job_id)
            self.records.end(job.record, webhook_pending=pending)
            if pending and not self._deliver(job):
                return  # interrupted by shutdown: the next process delivers it
            self.records.finish(job.record)
        except Exception:
            log.exception("job %s: cannot finish", job.job_id)
        finally:
            with self._lock:
                self._owned.pop(job.job_id, None)
            job.ownership.release()
            job.ended.set()
            job.done.set()

    def _deliver(self, job: _Job) -> bool:
        """Send the webhook; False if shutdown interrupted it."""
        record = job.record
        hook = record["webhook"]
        secret = self.records.webhook_secret(job.job_id) or self.settings.webhook_secret
        status = record["status"]
        if status == "completed":
            metadata = self.store.job_metadata(job.job_id)
            data = completed_body(metadata, record) if metadata else pending_body(record)
        else:
            data = pending_body(record)
        if secret is None:
            result = webhooks.Delivery(False, 0, "no signing secret is configured any more")
        else:
            result = webhooks.deliver(
                hook["url"],
                secret,
                f"job_{job.job_id}_{status}",
                webhooks.payload(f"job.{status}", data, utc_now()),
                hosts=self.settings.webhook_hosts,
                attempts=max(1, self.settings.webhook_attempts - hook["attempts"]),
                backoff=self.settings.webhook_backoff,
                timeout=self.settings.webhook_timeout,
                stop=self._stop,
            )
        log.info(
            "webhook job_id=%s delivered=%s attempts=%d error=%s",
            job.job_id,
            result.delivered,
            result.attempts,
            result.error,
        )

        def mutate(record: dict[str, Any]) -> None:
            hook = record["webhook"]
            hook["attempts"] += result.attempts
            hook["error"] = result.error
            if not result.interrupted:
                hook["status"] = "delivered" if result.delivered else "failed"

        self._update(job, mutate, durable=True)
        return not result.interrupted

    def _update(
        self,
        job: _Job,
        mutate: Callable[[dict[str, Any]], Any],
        *,
        event: str | None = None,
        durable: bool = False,
    ) -> None:
        """Change the owned record in memory and on disk (an `event` appends the status)."""
        with job.mutex:
            mutate(job.record)
            job.record["updated_at"] = utc_now()
            if event == "status":
                _emit(job.record, "status", _status_data(job.record))
            self.records.write(job.record, durable=durable)

    # --- stopping ---------------------------------------------------------------------

    def stop_claiming(self) -> None:
        """Start no more jobs (SIGTERM): queued ones stay for the next process."""
        self._stop.set()
        self._wake.set()

    def shutdown(self, timeout: float) -> None:
        """Stop claiming, give running jobs up to `timeout` s, and let go of queued ones.

        Jobs still running afterwards are cut short when the process exits; the next
        process adopts them (an interrupted run counts as an attempt).
        """
        self.stop_claiming()
        deadline = time.monotonic() + timeout
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            for job in queued:
                self._owned.pop(job.job_id, None)
            running = list(self._owned.values())
        for job in queued:
            job.ownership.release()
        for job in running:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, min(2.0, deadline - time.monotonic())))


class _JobProgress:
    """Records a running job's previews and finished images as the provider reports them."""

    def __init__(self, runner: JobRunner, job: _Job) -> None:
        self.runner = runner
        self.job = job

    def partial(self, image: int, index: int, data: bytes, fmt: str) -> None:
        url = self._save(preview_name(image, fmt, index), data)
        if url is None:
            return
        entry = {"image": image, "partial_image_index": index, "url": url}

        def mutate(record: dict[str, Any]) -> None:
            record["previews"].append(entry)
            record["progress"]["partial_images"] += 1
            _emit(record, "partial_image", {"job_id": record["job_id"], **entry})

        self._update(mutate)

    def image(self, image: int, generated: GeneratedImage) -> None:
        url = self._save(preview_name(image, generated.format), generated.data)
        entry = {"image": image, "partial_image_index": None, "url": url}

        def mutate(record: dict[str, Any]) -> None:
            progress = record["progress"]
            progress["images_done"] += 1
            if url is not None:
                record["previews"].append(entry)
            _emit(
                record,
                "image",
                {
                    "job_id": record["job_id"],
                    **entry,
                    "images_done": progress["images_done"],
                    "count": progress["count"],
                },
            )

        self._update(mutate)

    def _save(self, name: str, data: bytes) -> str | None:
        try:
            self.runner.records.save_preview(self.job.job_id, name, data)
        except OSError as exc:
            log.warning("preview %s of job %s not kept: %s", name, self.job.job_id, exc)
            return None
        return f"/jobs/{self.job.job_id}/previews/{name}"

    def _update(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        try:
            self.runner._update(self.job, mutate)
        except OSError as exc:  # progress is a courtesy: never fail the generation for it
            log.warning("progress of job %s not recorded: %s", self.job.job_id, exc)


# --- wiring -------------------------------------------------------------------------------


def install(app: Flask) -> JobRunner:
    """Give the app its job records and runner; adopt at once any job left unfinished, or
    webhook left undelivered."""
    settings: Settings = app.config["SETTINGS"]
    records = JobRecords(
        settings.images_dir, fsync=settings.fsync, max_running=settings.max_running_jobs
    )
    runner = JobRunner(app, records, settings)
    app.extensions["imagegen"]["jobs"] = runner
    if records.active() or records.delivering():
        runner.ensure_started()
    return runner


def runner_of(app: Flask) -> JobRunner:
    return app.extensions["imagegen"]["jobs"]


def start_runners() -> None:
    """Start every runner's dispatcher in this process (Gunicorn's post_worker_init)."""
    for runner in list(_RUNNERS):
        runner.ensure_started()


def stop_claiming() -> None:
    """Start no new job in this process (on SIGTERM, while requests drain)."""
    for runner in list(_RUNNERS):
        runner.stop_claiming()


def shutdown_runners(timeout: float) -> None:
    """Let this process's running jobs finish for up to `timeout` s (Gunicorn's worker_exit)."""
    deadline = time.monotonic() + timeout
    for runner in list(_RUNNERS):
        runner.shutdown(max(0.0, deadline - time.monotonic()))
