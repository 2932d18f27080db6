"""image-gen: an HTTP service that generates images through the OpenAI Images API.

The OpenAI key stays inside the service; agents and scripts only speak HTTP to it.
`create_app` builds the whole service and shows all of its wiring; importing the package
itself loads nothing else (Gunicorn's master reads the tokens file with
`imagegen.access.tokens` and leaves the app to each worker).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

__version__ = "1.0.0"

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask

    from imagegen.services import Services
    from imagegen.settings import Settings
    from imagegen.storage.layout import Layout
    from imagegen.upstream.client import AttemptReport


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application: settings, services, request hooks, blueprints, job runner."""
    from flask import Flask

    from imagegen import services as service_registry
    from imagegen.access.auth import register_auth
    from imagegen.access.idempotency import register_idempotency
    from imagegen.api import edits, generate, health, images, jobs, models, openapi, usage, web
    from imagegen.compat import openai as compat
    from imagegen.errors import DatabaseUnavailable, register_error_handlers
    from imagegen.imaging import memory
    from imagegen.mcp import server as mcp
    from imagegen.observability import metrics
    from imagegen.observability.logs import configure_logging, register_request_logging
    from imagegen.settings import Settings
    from imagegen.strictjson import StrictJSONProvider

    settings = settings or Settings.from_env()
    configure_logging()
    memory.keep_large_allocations_returnable()  # thumbnails' decoded images go back to the OS
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, JSON_SORT_KEYS=False)
    app.json = StrictJSONProvider(app)  # no NaN or Infinity in answers or accepted bodies
    app.json.sort_keys = False
    # "/images//<id>" is a JSON 404 like any other odd path, not an HTML redirect.
    app.url_map.merge_slashes = False
    app.url_map.converters["job_path"] = jobs.JobPathConverter

    # --- services: the stores, the books, the provider, the core operation, the runner ---
    layout, built = build_services(
        settings, on_attempt=metrics.upstream_attempt, on_fallback=metrics.upstream_fallback
    )
    service_registry.attach(app, built)

    # --- request hooks, in the order they run ----------------------------------------------
    register_error_handlers(app)
    register_request_logging(app)
    metrics.init_app(app, layout.metrics_dir)
    register_auth(app)  # after the request id is set; before idempotency, which is per token
    register_idempotency(app)

    # --- the routes ----------------------------------------------------------------------
    for module in (generate, edits, images, jobs, health, models, usage, web, openapi):
        app.register_blueprint(module.bp)
    app.register_blueprint(compat.bp)  # /v1: OpenAI's shapes
    app.register_blueprint(mcp.bp)  # /mcp: the tools over the same routes

    # A job or webhook left unfinished by a process that died is taken up at once (and if
    # the database cannot say yet, the runner looks once it can).
    try:
        unfinished = bool(built.records.active() or built.records.delivering())
    except DatabaseUnavailable:
        unfinished = True
    if unfinished:
        built.jobs.ensure_started()
    return app


def build_services(
    settings: Settings,
    *,
    on_attempt: Callable[[AttemptReport], None] | None = None,
    on_fallback: Callable[[str, str, str], None] | None = None,
) -> tuple[Layout, Services]:
    """The images directory's layout, checked, and every service built on it: the books
    (caps, idempotency keys, jobs), the image store (files, or a bucket), the upstream
    provider (reporting each attempt to `on_attempt`, each fallback to another upstream to
    `on_fallback`), the core operation, the job runner, the
    stream bounds and the hub that serves event streams."""
    from imagegen.books.open import open_books
    from imagegen.catalog import operator
    from imagegen.errors import DatabaseUnavailable, ServiceError
    from imagegen.imaging.core import ImageMaker
    from imagegen.jobs.hub import StreamHub
    from imagegen.jobs.runner import JobRunner
    from imagegen.jobs.streams import StreamLimiter
    from imagegen.services import Services
    from imagegen.storage import ownership
    from imagegen.storage.layout import Layout
    from imagegen.storage.open import open_store
    from imagegen.upstream.routing import routed_provider_for

    refusal = None if settings.allow_root else ownership.root_refusal(settings.images_dir)
    if refusal:
        raise ServiceError(refusal)
    layout = Layout(settings.images_dir, metrics=settings.metrics_dir)
    layout.prepare()
    pool = schema = None  # one pool per process, for the books and the image index
    if settings.database_url:
        from imagegen.books.migrations import Schema
        from imagegen.books.postgres import open_pool

        pool = open_pool(settings.database_url, max_size=settings.database_pool_size)
        schema = Schema()
    books = open_books(
        layout,
        fsync=settings.fsync,
        max_running=settings.max_running_jobs,
        database_url=settings.database_url,
        pool=pool,
        schema=schema,
    )
    store = open_store(
        layout, fsync=settings.fsync, storage_url=settings.storage_url, pool=pool, schema=schema
    )
    with contextlib.suppress(DatabaseUnavailable):  # the database's leftovers wait for next time
        store.sweep()
    store.resume_kept()  # jobs an earlier process kept in the spool: stored when it can
    operator.install(settings.models_file)  # the catalog: built-in and the operator's models
    provider = routed_provider_for(settings, on_attempt=on_attempt, on_fallback=on_fallback)
    maker = ImageMaker(settings, store, provider, books.caps)
    jobs = JobRunner(books.jobs, maker, settings)
    return layout, Services(
        settings=settings,
        store=store,
        records=books.jobs,
        provider=provider,
        ledger=books.caps,
        idempotency=books.idempotency,
        maker=maker,
        jobs=jobs,
        streams=StreamLimiter(settings.max_streams, settings.max_streams_per_token),
        hub=StreamHub(books.jobs, jobs.notice),
    )
