"""Prometheus metrics counted across Gunicorn's worker processes, and GET /metrics.

Each process counts into a file of its own in the metrics directory: a memory-mapped table
of (sample, labels) -> float that only that process writes, so counting is a dictionary
lookup and an 8-byte store under a thread lock, with no system call. A scrape, whichever
worker answers it, adds up every process's file. A file outlives its process, so the totals
keep what recycled or killed workers counted; the scrape folds the files of dead processes
(a process holds a `flock` on its file while it lives) into `archive.json`, written
atomically, and deletes them. Gauges such as requests in flight are summed over live
processes only. The text is Prometheus' exposition format 0.0.4, written here: no client
library at run time.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import json
import logging
import math
import mmap
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, g, request

from imagegen import __version__, strictjson
from imagegen.apidoc import errors, operation, text_response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # the route label of a request that matched no route
DIRECTORY_NAME = ".metrics"  # under the images directory unless IMAGE_GEN_METRICS_DIR is set

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

Key = tuple[str, tuple[str, ...]]  # (sample name, label values in the family's order)
F = TypeVar("F", bound=Callable[..., Any])

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# gunicorn.conf.py's on_starting removes files by these names (and DIRECTORY_NAME) too.
_FILE_PREFIX = "process-"
_FILE_SUFFIX = ".metrics"
_ARCHIVE = "archive.json"
_LOCK = ".lock"
# Native formats: CPython packs and unpacks those with one 8-byte memcpy (a single store or
# load), where "<d" goes byte by byte and could be seen, or killed, half-written.
_USED = struct.Struct("Q")  # file header: bytes in use, the header included
_KEY_LENGTH = struct.Struct("Q")  # each entry: key length, key (padded to 8), value
_VALUE = struct.Struct("d")
_INITIAL_SIZE = 64 * 1024
_PAUSE_AFTER_ERROR = 1.0  # seconds without counting after the file could not be written


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


# --- the metrics ----------------------------------------------------------------------------


class _Family:
    """A metric family: its name, help text, type and label names."""

    kind = ""

    def __init__(self, name: str, documentation: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        _FAMILIES.append(self)

    def lines(self, found: Mapping[str, Mapping[tuple[str, ...], float]]) -> Iterator[str]:
        for values, value in sorted(found.get(self.name, {}).items()):
            if len(values) == len(self.labels):
                yield _sample(self.name, zip(self.labels, values, strict=True), value)


class Counter(_Family):
    """A total that only goes up, summed over every process the service ever ran."""

    kind = "counter"

    def inc(self, *values: str, amount: float = 1.0) -> None:
        record([((self.name, values), amount)])


class Gauge(_Family):
    """A current value, summed over the processes alive at scrape time."""

    kind = "gauge"

    def inc(self, *values: str, amount: float = 1.0) -> None:
        record([((self.name, values), amount)])

    def dec(self, *values: str, amount: float = 1.0) -> None:
        record([((self.name, values), -amount)])


class Histogram(_Family):
    """Observations counted into buckets; stored per bucket, exposed cumulatively."""

    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labels: Iterable[str], buckets: Iterable[float]
    ) -> None:
        super().__init__(name, documentation, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._les = (*(_number(b) for b in self.buckets), "+Inf")
        self._bucket, self._sum = f"{name}_bucket", f"{name}_sum"

    def entries(self, seconds: float, *values: str) -> list[tuple[Key, float]]:
        """What one observation adds: one to its own bucket, its value to the sum."""
        le = self._les[bisect.bisect_left(self.buckets, seconds)]
        return [
            ((self._bucket, (*values, le)), 1.0),
            ((self._sum, values), seconds),
        ]

    def observe(self, seconds: float, *values: str) -> None:
        record(self.entries(seconds, *values))

    def lines(self, found: Mapping[str, Mapping[tuple[str, ...], float]]) -> Iterator[str]:
        per_bucket: dict[tuple[str, ...], dict[str, float]] = {}
        for values, value in found.get(self._bucket, {}).items():
            if len(values) == len(self.labels) + 1:
                per_bucket.setdefault(values[:-1], {})[values[-1]] = value
        sums = found.get(self._sum, {})
        for values in sorted(per_bucket):
            labels = list(zip(self.labels, values, strict=True))
            running = 0.0
            for le in self._les:
                running += per_bucket[values].get(le, 0.0)
                yield _sample(self._bucket, [*labels, ("le", le)], running)
            yield _sample(self._sum, labels, sums.get(values, 0.0))
            yield _sample(f"{self.name}_count", labels, running)


_FAMILIES: list[_Family] = []

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "imagegen_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ("route", "method", "status"),
)
HTTP_DURATION = Histogram(
    "imagegen_http_request_duration_seconds",
    "Time from the start of a request to its response, by route template and method.",
    ("route", "method"),
    _HTTP_BUCKETS,
)
IN_FLIGHT = Gauge(
    "imagegen_http_requests_in_flight", "Requests being served now, over all live workers."
)
EVENT_STREAMS = Gauge(
    "imagegen_event_streams_open",
    "Event streams (GET /jobs/<id>/events) open now, over all live workers.",
)
UPSTREAM_DURATION = Histogram(
    "imagegen_upstream_request_duration_seconds",
    "Time of each HTTP attempt to the upstream, by endpoint and outcome.",
    ("endpoint", "outcome"),
    _UPSTREAM_BUCKETS,
)
UPSTREAM_ATTEMPTS = Counter(
    "imagegen_upstream_attempts_total",
    "HTTP attempts to the upstream (retries included), by endpoint and HTTP status or failure.",
    ("endpoint", "status"),
)
IMAGES = Counter(
    "imagegen_images_generated_total",
    "Images made and stored, by model and operation.",
    ("model", "operation"),
)
ERRORS = Counter("imagegen_errors_total", "Error responses, by their JSON error code.", ("code",))
CAP_REFUSALS = Counter(
    "imagegen_cap_refusals_total",
    "Requests refused by a usage cap, by scope and cap.",
    ("scope", "cap"),
)
_BUILD_INFO = "imagegen_build_info"
_LIVE_ONLY = frozenset(f.name for f in _FAMILIES if isinstance(f, Gauge))


def images_generated(model: str, operation: str, count: int) -> None:
    """Count images a job stored (generate, edit, variation)."""
    IMAGES.inc(model, operation, amount=count)


def error_returned(code: str) -> None:
    """Count an error response by its JSON `code` (VALIDATION_ERROR, ...)."""
    ERRORS.inc(code)


def cap_refused(scope: str, cap: str) -> None:
    """Count a request refused by a usage cap; the series appears on its first refusal."""
    CAP_REFUSALS.inc(str(scope), str(cap))


# --- counting into this process's file ------------------------------------------------------


class _Recorder:
    """This process's counts: a memory-mapped file that only this process writes.

    The file is created, locked and given its header under a temporary name, then renamed
    into place, so a scrape never sees it unlocked (which would mean its writer is dead). A
    new key is appended before the header's byte count covers it, and every value is one
    aligned 8-byte store, so a reader, or a writer killed mid-update, never exposes half an
    entry. The file's blocks are allocated before they are mapped: writing a page of a
    sparse file on a full disk kills the process with SIGBUS, whereas a failed allocation is
    an OSError, after which counting pauses and the request goes on.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._used = 0
        self._offsets: dict[Key, int] = {}
        self._paused_until = 0.0

    def add(self, entries: Iterable[tuple[Key, float]]) -> None:
        with self._lock:
            if self._paused_until and time.monotonic() < self._paused_until:
                return
            try:
                if self._map is None:
                    self._open()
                for key, amount in entries:
                    offset = self._offsets.get(key)
                    if offset is None:
                        offset = self._append(key)
                    (value,) = _VALUE.unpack_from(self._map, offset)  # type: ignore[arg-type]
                    _VALUE.pack_into(self._map, offset, value + amount)  # type: ignore[arg-type]
            except OSError as exc:
                # Counting must never fail a request: skip this update, retry in a while.
                self._paused_until = time.monotonic() + _PAUSE_AFTER_ERROR
                log.warning("cannot write the counts in %s: %s", self.directory, exc.strerror)

    def _open(self) -> None:
        name = f"{_FILE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{_FILE_SUFFIX}"
        staging = self.directory / f".tmp-{name}"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._fd, self._used, self._offsets = fd, _USED.size, {}
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            _allocate(fd, _INITIAL_SIZE)
            self._map = mmap.mmap(fd, _INITIAL_SIZE)
            _USED.pack_into(self._map, 0, _USED.size)
            os.rename(staging, self.directory / name)
        except BaseException:
            self._forget()
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise

    def _append(self, key: Key) -> int:
        """Add a key with the value 0; return where its value is."""
        assert self._fd is not None and self._map is not None
        encoded = strictjson.dumps([key[0], *key[1]], separators=(",", ":")).encode()
        padded = (len(encoded) + 7) & ~7
        start, end = self._used, self._used + _KEY_LENGTH.size + padded + _VALUE.size
        if end > len(self._map):
            size = max(2 * len(self._map), end)
            _allocate(self._fd, size)
            grown = mmap.mmap(self._fd, size)
            self._map.close()
            self._map = grown
        _KEY_LENGTH.pack_into(self._map, start, len(encoded))
        self._map[start + _KEY_LENGTH.size : start + _KEY_LENGTH.size + len(encoded)] = encoded
        self._used = end
        _USED.pack_into(self._map, 0, end)
        self._offsets[key] = end - _VALUE.size
        return end - _VALUE.size

    def close(self) -> None:
        """Stop writing; the file stays, and the next scrape archives it."""
        with self._lock:
            self._forget()

    def after_fork(self) -> None:
        """In a forked child: write a file of its own, never the parent's."""
        self._lock = threading.Lock()
        self._forget()

    def _forget(self) -> None:
        if self._map is not None:
            self._map.close()
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._map, self._used, self._offsets = None, None, 0, {}


def _allocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of real blocks (not a hole), or raise OSError."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:  # macOS, for development only
        os.ftruncate(fd, size)


_recorder: _Recorder | None = None
_configure_lock = threading.Lock()


def record(entries: Iterable[tuple[Key, float]]) -> None:
    """Add to this process's counts (nothing happens before `configure`)."""
    recorder = _recorder
    if recorder is not None:
        recorder.add(entries)


def configure(directory: Path) -> None:
    """Count this process's metrics into `directory` (one app per process, as in Gunicorn)."""
    global _recorder
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The scrapes' lock file, made now so a scrape works even when no inode is left.
    os.close(os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
    with _configure_lock:
        if _recorder is not None and _recorder.directory == directory:
            return
        if _recorder is not None:
            _recorder.close()
        _recorder = _Recorder(directory)


def _after_fork_in_child() -> None:
    if _recorder is not None:
        _recorder.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def directory(images_dir: Path, configured: Path | None = None) -> Path:
    """The metrics directory: the configured one, else a hidden one in the images directory."""
    return Path(configured) if configured else Path(images_dir) / DIRECTORY_NAME


# --- reading every process's counts ---------------------------------------------------------


def collect(path: Path) -> dict[Key, float]:
    """Every sample summed over all processes: live ones, dead ones and the archive.

    Scrapes take the directory's lock in turn; a dead process's file is added to the archive
    (written atomically) before it is deleted, and the archive names the files it holds, so
    a scrape killed half-way never counts a file twice.
    """
    with _directory_lock(path):
        archive = _read_archive(path)
        totals = dict(archive["samples"])
        dead: list[tuple[str, dict[Key, float]]] = []
        with os.scandir(path) as entries:
            names = sorted(e.name for e in entries if _is_process_file(e.name))
        for name in names:
            if name in archive["absorbed"]:
                continue
            alive = _alive(path / name)
            if alive is None:
                continue  # deleted since the listing
            values = _read_file(path / name)
            for key, value in values.items():
                if alive or key[0] not in _LIVE_ONLY:
                    totals[key] = totals.get(key, 0.0) + value
            if not alive:
                dead.append((name, values))
        if dead:
            try:
                _absorb(path, archive, dead)
            except OSError as exc:  # a full disk: the files stay, and are read next time
                log.warning("cannot archive dead processes' counts: %s", exc.strerror)
    return totals


@contextlib.contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_process_file(name: str) -> bool:
    return name.startswith(_FILE_PREFIX) and name.endswith(_FILE_SUFFIX)


def _alive(path: Path) -> bool | None:
    """Whether the process writing `path` still runs (it holds a lock); None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_file(path: Path) -> dict[Key, float]:
    """The samples in one process's file, up to the last complete entry."""
    values: dict[Key, float] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return values
    try:
        for _ in range(5):  # the writer may grow the file between our looks
            size = os.fstat(fd).st_size
            if size < _USED.size:
                return values
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
                (used,) = _USED.unpack_from(mapped, 0)
                if used > size:
                    continue
                _parse(mapped, used, values)
                return values
        return values
    finally:
        os.close(fd)


def _parse(mapped: mmap.mmap, used: int, values: dict[Key, float]) -> None:
    offset = _USED.size
    while offset + _KEY_LENGTH.size <= used:
        (length,) = _KEY_LENGTH.unpack_from(mapped, offset)
        start = offset + _KEY_LENGTH.size
        end = start + ((length + 7) & ~7) + _VALUE.size
        if length == 0 or end > used:
            return
        try:
            name, *labels = json.loads(mapped[start : start + length])
        except (ValueError, UnicodeDecodeError, TypeError):
            return
        (value,) = _VALUE.unpack_from(mapped, end - _VALUE.size)
        if math.isfinite(value):
            values[(str(name), tuple(str(v) for v in labels))] = value
        offset = end


def _read_archive(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / _ARCHIVE).read_bytes())
        samples = {(str(s[0]), tuple(s[1])): float(s[2]) for s in data["samples"]}
        return {"absorbed": set(data["absorbed"]), "samples": samples}
    except FileNotFoundError:
        return {"absorbed": set(), "samples": {}}


def _absorb(path: Path, archive: dict[str, Any], dead: list[tuple[str, dict[Key, float]]]) -> None:
    """Fold dead processes' counts into the archive, then delete their files."""
    samples: dict[Key, float] = archive["samples"]
    for _, values in dead:
        for key, value in values.items():
            if key[0] not in _LIVE_ONLY:
                samples[key] = samples.get(key, 0.0) + value
    absorbed = sorted(
        {name for name in archive["absorbed"] if (path / name).exists()}
        | {name for name, _ in dead}
    )
    document = {
        "absorbed": absorbed,
        "samples": [[name, list(labels), value] for (name, labels), value in samples.items()],
    }
    staging = path / f".tmp-{_ARCHIVE}"
    staging.write_text(strictjson.dumps(document), encoding="utf-8")
    os.replace(staging, path / _ARCHIVE)
    for name, _ in dead:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / name)


# --- the exposition format ------------------------------------------------------------------


def render(totals: Mapping[Key, float]) -> str:
    """The text exposition format 0.0.4: HELP and TYPE for every family, then its samples."""
    found: dict[str, dict[tuple[str, ...], float]] = {}
    for (name, labels), value in totals.items():
        found.setdefault(name, {})[labels] = value
    lines = [
        f"# HELP {_BUILD_INFO} The running version of image-gen (always 1).",
        f"# TYPE {_BUILD_INFO} gauge",
        _sample(_BUILD_INFO, [("version", __version__)], 1.0),
    ]
    for family in _FAMILIES:
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        lines.extend(family.lines(found))
    return "\n".join(lines) + "\n"


def _sample(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    pairs = ",".join(f'{label}="{_escape_label(v)}"' for label, v in labels)
    return f"{name}{{{pairs}}} {_number(value)}" if pairs else f"{name} {_number(value)}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


# --- where the service counts ---------------------------------------------------------------


def init_app(app: Flask, path: Path) -> None:
    """Count every request of `app` into `path` and serve GET /metrics.

    Register before other blueprints' before-request hooks, so a request they answer early
    is still timed and counted.
    """
    try:
        configure(path)
    except PermissionError:
        from imagegen.errors import ServiceError

        raise ServiceError(
            f"The metrics directory {path} is not writable by uid {os.getuid()}; "
            "set IMAGE_GEN_METRICS_DIR to a writable directory"
        ) from None
    app.before_request(_request_started)
    app.after_request(_request_answered)
    app.teardown_request(_request_ended)
    app.register_blueprint(bp)


def _request_started() -> None:
    g.metrics_started = time.perf_counter()  # also says "counted in flight" to the teardown
    IN_FLIGHT.inc()


def _request_answered(response: Response) -> Response:
    current = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    rule = current.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    method = current.method if current.method in _METHODS else "other"
    entries: list[tuple[Key, float]] = [
        ((HTTP_REQUESTS.name, (route, method, str(response.status_code))), 1.0)
    ]
    started = g.get("metrics_started")
    if started is not None:
        entries += HTTP_DURATION.entries(time.perf_counter() - started, route, method)
    code = g.pop("error_code", None)  # set by the error answer (imagegen.errors)
    if code is not None:
        entries.append(((ERRORS.name, (code,)), 1.0))
    record(entries)
    return response


def _request_ended(_: BaseException | None) -> None:
    if g.pop("metrics_started", None) is not None:
        IN_FLIGHT.dec()


def upstream_attempt(send: F) -> F:
    """Decorate the client's one-exchange function: time and count each upstream attempt."""

    @functools.wraps(send)
    def timed(client: Any, *args: Any, **kwargs: Any) -> Any:
        method = kwargs["method"] if "method" in kwargs else args[0]
        url = kwargs["url"] if "url" in kwargs else args[1]
        return _timed(method, url, lambda: send(client, *args, **kwargs))

    return timed  # type: ignore[return-value]


def upstream_stream(stream: F) -> F:
    """Decorate the client's streamed exchange (a POST, url first): time each attempt to its
    last event and count it, as `upstream_attempt` does for the others."""

    @functools.wraps(stream)
    def timed(client: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        return _timed("POST", url, lambda: stream(client, url, *args, **kwargs))

    return timed  # type: ignore[return-value]


def _timed(method: str, url: str, call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        result = call()
    except Exception as exc:
        _upstream_done(method, url, _failure(exc), time.perf_counter() - started)
        raise
    _upstream_done(method, url, str(getattr(result, "status", 200)), time.perf_counter() - started)
    return result


def _upstream_done(method: str, url: str, status: str, seconds: float) -> None:
    endpoint = _endpoint(method, url)
    entries = UPSTREAM_DURATION.entries(seconds, endpoint, _outcome(status))
    entries.append(((UPSTREAM_ATTEMPTS.name, (endpoint, status)), 1.0))
    record(entries)


def _endpoint(method: str, url: str) -> str:
    if method == "GET":
        return "download"
    path = url.split("?", 1)[0].rstrip("/")
    for name in ("generations", "edits", "variations"):
        if path.endswith(f"/images/{name}"):
            return name
    return "other"


def _failure(exc: Exception) -> str:
    from imagegen.upstream.errors import (
        APIConnectionError,
        APIStatusError,
        APITimeoutError,
        InvalidResponseError,
    )

    if isinstance(exc, APIStatusError):  # a streamed exchange's error status or error event
        return str(exc.status)
    if isinstance(exc, APITimeoutError):
        return "timeout"
    if isinstance(exc, APIConnectionError):
        return "connection_error"
    if isinstance(exc, InvalidResponseError):
        return "invalid_response"
    return "error"


_OUTCOMES = {"2": "success", "3": "redirect", "4": "client_error", "5": "server_error"}


def _outcome(status: str) -> str:
    """An attempt's outcome label: a class of HTTP status, or the failure itself."""
    if not status.isdigit():
        return status
    if status == "429":
        return "rate_limited"
    return _OUTCOMES.get(status[0], "other")


@bp.get("/metrics")
@operation(
    "metrics",
    tag="service",
    summary="Prometheus metrics, summed over every worker process",
    responses={
        "200": text_response("Prometheus' text exposition format, version 0.0.4.", "text/plain"),
        **errors(500),
    },
)
def scrape() -> Response:
    """Every metric, summed over all of the service's processes, in Prometheus' text format."""
    recorder = _recorder
    body = render(collect(recorder.directory)) if recorder is not None else render({})
    return Response(body, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
