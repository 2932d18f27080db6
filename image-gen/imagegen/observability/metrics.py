"""Prometheus metrics counted across Gunicorn's worker processes, and GET /metrics.

The metrics are prometheus_client's, in its multiprocess mode: each process counts into
memory-mapped files of its own in the metrics directory (observability.countfiles), and a
scrape, whichever worker answers it, merges every process's files (`MultiProcessCollector`).
A file outlives its process, so the totals keep what recycled or killed workers counted;
gauges such as requests in flight count live processes only (Gunicorn's `child_exit` removes
a dead worker's, and a scrape skips a file no live process holds a `flock` on).

The values are ours (`_FileValue`, set as prometheus_client's value class before any metric
exists) for two reasons: the file's blocks are allocated before they are mapped, since
writing a page of a sparse file on a full disk kills the process with SIGBUS, whereas a
failed allocation is an OSError, after which counting pauses and the request goes on; and
the directory is the app's (`configure`), not an environment variable read at import.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from imagegen import __version__
from imagegen.apidoc import errors, operation, text_response
from imagegen.errors import ServiceError
from imagegen.observability import countfiles
from imagegen.upstream.client import AttemptReport
from imagegen.upstream.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidResponseError,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # the route label of a request that matched no route

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PAUSE_AFTER_ERROR = 1.0  # seconds without counting after the file could not be written


# --- this process's count files -------------------------------------------------------------


class _Files:
    """This process's count files, one per kind (counter, histogram, gauge_livesum)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.directory: Path | None = None
        self.files: dict[str, countfiles.AllocatedDict] = {}
        self.paused_until = 0.0

    def add(self, kind: str, key: str, amount: float) -> None:
        with self.lock:
            if self.directory is None or time.monotonic() < self.paused_until:
                return
            try:
                file = self.files.get(kind) or self._open(kind, self.directory)
                value, _ = file.read_value(key)
                file.write_value(key, value + amount, 0.0)
            except OSError as exc:
                # Counting must never fail a request: skip this update, retry in a while.
                self.paused_until = time.monotonic() + _PAUSE_AFTER_ERROR
                log.warning("cannot write the counts in %s: %s", self.directory, exc.strerror)

    def _open(self, kind: str, directory: Path) -> countfiles.AllocatedDict:
        """This process's file of `kind`, under a name no other process ever had (a live
        gauge's has the pid alone, which `mark_process_dead` looks for, and starts afresh)."""
        if kind.startswith(countfiles.LIVE_GAUGE_PREFIX):
            name = f"{kind}_{os.getpid()}{countfiles.SUFFIX}"
        else:
            name = f"{kind}_{os.getpid()}-{secrets.token_hex(4)}{countfiles.SUFFIX}"
        file = countfiles.create(directory / name, locked=True)
        self.files[kind] = file
        return file

    def use(self, directory: Path | None) -> None:
        """Count into `directory` from now on (None: nowhere)."""
        with self.lock:
            self.forget()
            self.directory = directory

    def forget(self) -> None:
        """Close this process's files; they stay, and scrapes go on reading them."""
        for file in self.files.values():
            file.close()
        self.files = {}
        self.paused_until = 0.0

    def after_fork(self) -> None:
        """In a forked child: write files of its own, never the parent's."""
        self.lock = threading.Lock()
        self.forget()


_files = _Files()
os.register_at_fork(after_in_child=_files.after_fork)


class _FileValue:
    """prometheus_client's value interface over this process's count files."""

    _multiprocess = True

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Iterable[str],
        labelvalues: Iterable[str],
        help_text: str,
        multiprocess_mode: str = "",
        **_: Any,
    ) -> None:
        self._kind = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self._key = mmap_key(metric_name, name, list(labelnames), list(labelvalues), help_text)

    def inc(self, amount: float) -> None:
        _files.add(self._kind, self._key, amount)

    def set(self, value: float, timestamp: float | None = None) -> None:
        raise NotImplementedError("the service's gauges only go up and down")

    def get(self) -> float:
        return 0.0  # the totals are read from every process's files, never from here

    def set_exemplar(self, exemplar: Any) -> None:
        return None

    def get_exemplar(self) -> None:
        return None


values.ValueClass = _FileValue  # before any metric exists

# --- the metrics ----------------------------------------------------------------------------

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "imagegen_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ("route", "method", "status"),
    registry=None,
)
HTTP_DURATION = Histogram(
    "imagegen_http_request_duration_seconds",
    "Time from the start of a request to its response, by route template and method.",
    ("route", "method"),
    buckets=_HTTP_BUCKETS,
    registry=None,
)
IN_FLIGHT = Gauge(
    "imagegen_http_requests_in_flight",
    "Requests being served now, over all live workers.",
    registry=None,
    multiprocess_mode="livesum",
)
EVENT_STREAMS = Gauge(
    "imagegen_event_streams_open",
    "Event streams (GET /jobs/<id>/events) open now, over all live workers.",
    registry=None,
    multiprocess_mode="livesum",
)
UPSTREAM_DURATION = Histogram(
    "imagegen_upstream_request_duration_seconds",
    "Time of each HTTP attempt to the upstream, by endpoint and outcome.",
    ("endpoint", "outcome"),
    buckets=_UPSTREAM_BUCKETS,
    registry=None,
)
UPSTREAM_ATTEMPTS = Counter(
    "imagegen_upstream_attempts_total",
    "HTTP attempts to the upstream (retries included), by endpoint and HTTP status or failure.",
    ("endpoint", "status"),
    registry=None,
)
UPSTREAM_FALLBACKS = Counter(
    "imagegen_upstream_fallbacks_total",
    "Requests passed from one named upstream to the next (models file), by both and why.",
    ("from_upstream", "to_upstream", "code"),
    registry=None,
)
IMAGES = Counter(
    "imagegen_images_generated_total",
    "Images made and stored, by model and operation.",
    ("model", "operation"),
    registry=None,
)
ERRORS = Counter(
    "imagegen_errors_total",
    "Error responses, by their JSON error code.",
    ("code",),
    registry=None,
)
CAP_REFUSALS = Counter(
    "imagegen_cap_refusals_total",
    "Requests refused by a usage cap, by scope and cap.",
    ("scope", "cap"),
    registry=None,
)
# Every family, in the order /metrics shows them, with its buckets if it is a histogram.
_FAMILIES: tuple[tuple[Counter | Gauge | Histogram, tuple[float, ...]], ...] = (
    (HTTP_REQUESTS, ()),
    (HTTP_DURATION, _HTTP_BUCKETS),
    (IN_FLIGHT, ()),
    (EVENT_STREAMS, ()),
    (UPSTREAM_DURATION, _UPSTREAM_BUCKETS),
    (UPSTREAM_ATTEMPTS, ()),
    (UPSTREAM_FALLBACKS, ()),
    (IMAGES, ()),
    (ERRORS, ()),
    (CAP_REFUSALS, ()),
)


_Metric = TypeVar("_Metric", Counter, Histogram)
_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def _series(metric: _Metric, *labels: str) -> _Metric:
    """`metric.labels(*labels)`, looked up in one dictionary (labels() checks and locks)."""
    child = _children.get((metric, labels))
    if child is None:
        child = _children.setdefault((metric, labels), metric.labels(*labels))
    return child  # type: ignore[no-any-return]


def images_generated(model: str, operation: str, count: int) -> None:
    """Count images a job stored (generate, edit, variation)."""
    _series(IMAGES, model, operation).inc(count)


def error_returned(code: str) -> None:
    """Count an error response by its JSON `code` (VALIDATION_ERROR, ...)."""
    _series(ERRORS, code).inc()


def cap_refused(scope: str, cap: str) -> None:
    """Count a request refused by a usage cap; the series appears on its first refusal."""
    _series(CAP_REFUSALS, str(scope), str(cap)).inc()


def configure(path: Path) -> None:
    """Count this process's metrics into `path` (one app per process, as in Gunicorn)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # The scrapes' lock file, made now so a scrape works even when no inode is left.
    os.close(os.open(path / countfiles.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
    if _files.directory != path:
        _files.use(path)


# --- reading every process's counts ---------------------------------------------------------


def exposition(path: Path) -> str:
    """Every metric, summed over all processes that counted into `path`: the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(path))
    return generate_latest(registry).decode("utf-8")


class _Collector:
    """The build info, then every family (HELP and TYPE even before its first sample)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "imagegen_build_info",
            "The running version of image-gen (always 1).",
            labels=["version"],
        )
        info.add_metric([__version__], 1.0)
        yield info
        merged = {metric.name: metric for metric in countfiles.merged(self.path)}
        for family, buckets in _FAMILIES:
            name, kind = family._name, family._type
            metric = merged.get(name) or Metric(name, family._documentation, kind)
            if buckets:
                metric.samples = _every_bucket(metric, buckets)
            else:
                metric.samples.sort(key=lambda s: sorted(s.labels.items()))
            yield metric


def _every_bucket(metric: Metric, buckets: tuple[float, ...]) -> list[Sample]:
    """A histogram's samples with every bucket of every series, cumulative, +Inf included:
    a file holds only the buckets its process observed."""
    found: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    others = []
    for sample in metric.samples:
        if sample.name.endswith("_bucket"):
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            found.setdefault(labels, {})[float(sample.labels["le"])] = sample.value
        else:
            others.append(sample)
    samples = []
    for labels, counts in sorted(found.items()):
        running = 0.0
        for bound in (*buckets, math.inf):
            running = counts.get(float(bound), running)
            le = floatToGoString(bound)
            samples.append(Sample(f"{metric.name}_bucket", {**dict(labels), "le": le}, running))
    return samples + sorted(others, key=lambda s: (sorted(s.labels.items()), s.name))


# --- where the service counts ---------------------------------------------------------------


def init_app(app: Flask, path: Path) -> None:
    """Count every request of `app` into `path` and serve GET /metrics.

    Register before other blueprints' before-request hooks, so a request they answer early
    is still timed and counted.
    """
    try:
        configure(path)
    except PermissionError:
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
    _series(HTTP_REQUESTS, route, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        _series(HTTP_DURATION, route, method).observe(time.perf_counter() - started)
    code = g.pop("error_code", None)  # set by the error answer (imagegen.errors)
    if code is not None:
        _series(ERRORS, code).inc()
    return response


def _request_ended(_: BaseException | None) -> None:
    if g.pop("metrics_started", None) is not None:
        IN_FLIGHT.dec()


def upstream_attempt(report: AttemptReport) -> None:
    """Time and count one upstream attempt (the client's `on_attempt`)."""
    status = str(report.status) if report.error is None else _failure(report.error)
    endpoint = _endpoint(report.method, report.url)
    _series(UPSTREAM_DURATION, endpoint, _outcome(status)).observe(report.seconds)
    _series(UPSTREAM_ATTEMPTS, endpoint, status).inc()


def upstream_fallback(from_upstream: str, to_upstream: str, code: str) -> None:
    """Count one request passed on to the next upstream (the router's `on_fallback`)."""
    _series(UPSTREAM_FALLBACKS, from_upstream, to_upstream, code).inc()


def _endpoint(method: str, url: str) -> str:
    if method == "GET":
        return "download"
    path = url.split("?", 1)[0].rstrip("/")
    for name in ("generations", "edits", "variations"):
        if path.endswith(f"/images/{name}"):
            return name
    return "other"


def _failure(exc: Exception) -> str:
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
    path = _files.directory
    body = exposition(path) if path is not None else ""
    return Response(body, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
