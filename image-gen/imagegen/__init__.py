"""image-gen: an HTTP service that generates images through the OpenAI Images API.

The OpenAI key stays inside the service; agents and scripts only speak HTTP to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "1.0.0"

if TYPE_CHECKING:
    from flask import Flask

    from .settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the application: settings, store, provider, blueprints and error handlers.

    Importing the package itself loads nothing else: Gunicorn's master reads the tokens file
    with `imagegen.tokens` (gunicorn.conf.py) and leaves the app to each worker."""
    from flask import Flask

    from . import (
        compat,
        edits,
        generate,
        health,
        images,
        jobs,
        mcp,
        memory,
        metrics,
        models,
        openapi,
        ownership,
        usage,
        web,
    )
    from .auth import register_auth
    from .errors import ServiceError, register_error_handlers
    from .idempotency import register_idempotency
    from .ledger import Ledger
    from .logs import configure_logging, register_request_logging
    from .openai_client import OpenAIClient, RetryPolicy
    from .providers import MissingKeyProvider, OpenAIProvider, PlaceholderProvider, Provider
    from .settings import Settings
    from .store import ImageStore
    from .strictjson import StrictJSONProvider

    settings = settings or Settings.from_env()
    configure_logging()
    memory.keep_large_allocations_returnable()  # thumbnails' decoded images go back to the OS
    app = Flask(__name__)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json = StrictJSONProvider(app)  # no NaN or Infinity in answers or accepted bodies
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # "/images//<id>" is a JSON 404 like any other odd path, not an HTML redirect.
    app.url_map.merge_slashes = False

    refusal = None if settings.allow_root else ownership.root_refusal(settings.images_dir)
    if refusal:
        raise ServiceError(refusal)
    store = ImageStore(settings.images_dir, fsync=settings.fsync)
    store.prepare()
    store.sweep()

    provider: Provider
    if settings.provider == "placeholder":
        provider = PlaceholderProvider()
    elif settings.api_key:
        client = OpenAIClient(
            settings.base_url,
            settings.api_key,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retry=RetryPolicy(
                max_retries=settings.max_retries,
                backoff_base=settings.retry_backoff,
                max_retry_after=settings.max_retry_wait,
            ),
            max_response_bytes=settings.max_upstream_bytes,
            max_image_bytes=settings.max_image_bytes,
        )
        provider = OpenAIProvider(
            client,
            max_parallel=settings.max_parallel_upstream,
            current_model=settings.default_model,
        )
    else:
        provider = MissingKeyProvider()
    ledger = Ledger(store.root / ".ledger" / "ledger.sqlite3")
    ledger.prepare()
    app.extensions["imagegen"] = {"store": store, "provider": provider, "ledger": ledger}

    register_error_handlers(app)
    register_request_logging(app)
    metrics.init_app(app, metrics.directory(settings.images_dir, settings.metrics_dir))
    register_auth(app)  # after the request id is set; before idempotency, which is per token
    register_idempotency(app)
    for module in (generate, edits, images, health, models, compat, openapi, jobs, usage, web, mcp):
        app.register_blueprint(module.bp)
    return app
