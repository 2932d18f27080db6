"""GET /health: is the service up, and is it configured to generate."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from imagegen import __version__
from imagegen.access.tokens import TokensLoad
from imagegen.apidoc import errors, json_response, operation
from imagegen.books.interfaces import CapsBook
from imagegen.catalog.operator import ModelsLoad
from imagegen.clock import utc_now
from imagegen.services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
@operation(
    "health",
    tag="service",
    summary="Is the service up and configured (never the key)",
    responses={
        "200": json_response("Healthy.", "Health"),
        "503": json_response(
            "The image store cannot be written or reached, or the database cannot be reached.",
            "Health",
        ),
        **errors(500),
    },
)
def health() -> ResponseReturnValue:
    """Status, whether a key is configured (never the key), provider, default model, version,
    and the state of each dependency: the image store and the database (never a URL)."""
    settings = services().settings
    storage_ok = services().store.writable()
    database = _database_state(services().ledger)
    healthy = storage_ok and database != "unavailable"
    storage_kind = "s3" if settings.storage_url else "file"
    index_kind = (
        ("postgresql" if settings.database_url else "sqlite") if settings.storage_url else "files"
    )
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "api_key_configured": settings.api_key_configured,
        "api_key_source": settings.api_key_source,
        "provider": settings.provider,
        # Whether callers need a client token (False: open to anyone who can reach it).
        "auth_required": settings.auth_required,
        "default_model": settings.default_model,
        "storage_writable": storage_ok,
        "dependencies": {
            "storage": {
                "kind": storage_kind,
                "index": index_kind,
                "state": "ok" if storage_ok else "unavailable",
            },
            "database": {
                "kind": "postgresql" if settings.database_url else "sqlite",
                "state": database or "ok",
            },
        },
        "version": __version__,
        "timestamp": utc_now(),
    }
    if settings.provider == "azure":
        body["upstream"] = settings.upstream
    if database is not None:
        body["database"] = database
    if settings.tokens_load is not None:
        body["tokens"] = _tokens_state(settings.tokens_load)
    if settings.models_load is not None:
        body["models_file"] = _models_state(settings.models_load)
    return jsonify(body), 200 if healthy else 503


def _database_state(ledger: CapsBook) -> str | None:
    """ "ok" or "unavailable" with the books in PostgreSQL (never its URL); None on SQLite."""
    from imagegen.books.postgres import PostgresCapsBook

    if not isinstance(ledger, PostgresCapsBook):
        return None
    return "ok" if ledger.reachable() else "unavailable"


def _tokens_state(load: TokensLoad) -> dict[str, Any]:
    """When this worker's tokens were read, and whether the latest reload (SIGHUP) failed, in
    which case the last good tokens are served and the log says why. Never names a token."""
    return {
        "loaded_at": load.loaded_at,
        "last_reload": "failed" if load.failed_at else "ok",
        "reload_failed_at": load.failed_at,
        "reload_failed_line": load.failed_line,
    }


def _models_state(load: ModelsLoad) -> dict[str, Any]:
    """When this worker's models file was read, what it names (never a key), and whether the
    latest reload (SIGHUP) failed, in which case the last good file is served."""
    return {
        "loaded_at": load.loaded_at,
        "last_reload": "failed" if load.failed_at else "ok",
        "reload_failed_at": load.failed_at,
        "reload_failed_key": load.failed_key,
        "models": sorted(load.file.models),
        "upstreams": sorted(load.file.upstreams),
    }
