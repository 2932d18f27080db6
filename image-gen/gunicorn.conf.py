"""Gunicorn settings for image-gen: threads, because the work is waiting on the upstream.

Every request spends nearly all its time waiting for OpenAI (10-60 s, minutes at high
quality), so each worker process runs many threads. Sync workers would serve only
`workers` callers at a time. Override with the GUNICORN_* variables below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from types import FrameType

    from flask import Flask


class _Log(Protocol):
    """The part of Gunicorn's logger the hooks use."""

    def info(self, msg: str, /, *args: object) -> None: ...
    def error(self, msg: str, /, *args: object) -> None: ...


class _Server(Protocol):
    """The part of Gunicorn's arbiter the hooks use (its log is set before any hook runs)."""

    log: _Log


class _Worker(Protocol):
    """The part of a Gunicorn worker the hooks use: its pid and the app it loaded (wsgi:app)."""

    pid: int
    wsgi: Flask


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, "") or default)


# `gunicorn -c image-gen/gunicorn.conf.py wsgi:app` works from any directory.
pythonpath = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:5000")
worker_class = "gthread"
workers = _int("GUNICORN_WORKERS", 2)
# 600 threads: a call waits 10-60 s upstream, so a worker's capacity is the calls it can keep
# waiting. Measured with bench/scale.py (e), 1,000 calls at L = 5 s (bench/README.md): 100
# threads 6.1 x L (the calls queue for threads), 600 threads 3.4 x L, 1,000 threads 4.0 x L
# (then the workers' CPU is the limit). The pool starts threads as requests need them, so
# an idle worker holds few.
threads = _int("GUNICORN_THREADS", 600)
# Connections a worker holds (in flight + keep-alive) before it stops accepting more. An
# idle keep-alive connection waits in the worker's poller, not on a thread, so 500 of them
# cost a file descriptor each; beyond that a worker leaves new connections to the others.
worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", threads + 500)
backlog = 2048
# A gthread worker's heartbeat comes from its main loop, so a slow generation never
# trips this; it only catches a worker that is stuck as a whole. It stays above the
# request deadline (IMAGE_GEN_REQUEST_DEADLINE, default 540 s) all the same.
timeout = _int("GUNICORN_TIMEOUT", 600)
# On SIGTERM (docker stop), finish in-flight generations for up to this long.
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 120)
keepalive = 5
# Gunicorn answers over-long request lines (414) and headers (431) itself, in plain text,
# before the app sees them: allow the largest it supports.
limit_request_line = 8190
limit_request_field_size = 8190
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = max_requests // 10

# One request line per request comes from the app (with a request id), so no access log.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Works with a read-only root filesystem: heartbeat files in memory, no control socket.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
control_socket_disable = True
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server: _Server) -> None:
    """Read the models file and the client tokens file, which every worker then serves with,
    and start the counters of /metrics at zero: remove the last run's count files.

    A bad models file stops the start here naming its key path, a bad tokens file naming its
    line. No step imports the app (`imagegen.catalog.operator` needs only the catalog,
    `imagegen.access.tokens` only the standard library,
    `imagegen.observability.countfiles` only prometheus_client), so workers load its code
    afresh.
    """
    models_file = os.environ.get("IMAGE_GEN_MODELS_FILE", "").strip()
    if models_file:  # first: the tokens' `models=` may name its models
        from imagegen.catalog import operator

        try:
            models = operator.hold(Path(models_file))
        except operator.ModelsFileError as exc:
            raise RuntimeError(f"IMAGE_GEN_MODELS_FILE: {exc}") from None
        server.log.info(
            "models file: %d models, %d upstreams read from %s",
            len(models.file.models),
            len(models.file.upstreams),
            models.path,
        )
    tokens_file = os.environ.get("IMAGE_GEN_TOKENS_FILE", "").strip()
    if tokens_file:
        from imagegen.access import tokens

        try:
            held = tokens.hold(Path(tokens_file))
        except tokens.TokenFileError as exc:
            raise RuntimeError(f"IMAGE_GEN_TOKENS_FILE: {exc}") from None
        server.log.info("client tokens: %d read from %s", len(held.tokens), held.path)
    from imagegen.observability import countfiles
    from imagegen.storage.layout import Layout

    countfiles.clear(Layout.from_env(os.environ).metrics_dir)


def on_reload(server: _Server) -> None:
    """SIGHUP (`docker compose kill -s HUP`): read the models file and the tokens file again
    before Gunicorn replaces its workers, which then serve with them. A file that cannot be
    used is logged with its key path or line, and the last good one stays: the service never
    stops over it."""
    from imagegen.access import tokens
    from imagegen.catalog import operator

    models = operator.reload_held()
    if models is not None:
        held_models, models_error = models
        if models_error is None:
            server.log.info("models file reloaded from %s", held_models.path)
        else:
            server.log.error(
                "models file NOT reloaded, the last good one stays in use: %s", models_error
            )

    reloaded = tokens.reload_held()
    if reloaded is None:
        return
    held, error = reloaded
    if error is None:
        server.log.info("client tokens reloaded: %d read from %s", len(held.tokens), held.path)
    else:
        server.log.error(
            "client tokens NOT reloaded, the last good %d stay in use: %s", len(held.tokens), error
        )


def post_worker_init(worker: _Worker) -> None:
    """Run asynchronous jobs in every worker: adopt any left unfinished, and on SIGTERM start
    no new ones while in-flight requests drain (queued ones wait for the next process).
    Also: Gunicorn's own refusals (414, 431, malformed HTTP) answer in the JSON error shape."""
    import gc
    import signal

    from imagegen.observability.gunicorn_errors import install
    from imagegen.services import services

    install()
    jobs = services(worker.wsgi).jobs  # the app this worker loaded (wsgi:app)
    jobs.start()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        jobs.stop_claiming()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

    # The app's ~36,000 long-lived objects (Flask, Jinja, the catalog...) leave the cyclic
    # collector's view: a full collection took 8.6 ms over them, and ran every few requests.
    gc.collect()
    gc.freeze()


def child_exit(server: _Server, worker: _Worker) -> None:
    """In the master, once a worker has exited (killed, crashed or recycled): its requests in
    flight stop counting on /metrics (prometheus_client's `mark_process_dead`)."""
    from imagegen.observability import countfiles
    from imagegen.storage.layout import Layout

    countfiles.process_dead(worker.pid, Layout.from_env(os.environ).metrics_dir)


def worker_exit(server: _Server, worker: _Worker) -> None:
    """Give this worker's running jobs the graceful timeout to finish; the rest are adopted
    by the next process (Gunicorn kills the worker at the graceful timeout in any case).
    Then end the event streams its hub serves."""
    from imagegen.services import loaded_services

    # Gunicorn sets worker.wsgi only once the worker has loaded the app, which may have failed.
    found = loaded_services(getattr(worker, "wsgi", None))
    if found is not None:
        found.jobs.shutdown(timeout=graceful_timeout)
        found.hub.stop()  # its streams end once their jobs have; clients reconnect elsewhere
