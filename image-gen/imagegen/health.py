"""GET /health: is the service up, and is it configured to generate."""

from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from . import __version__
from .clock import utc_now

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Status, whether a key is configured (never the key), provider, default model, version."""
    settings = current_app.config["SETTINGS"]
    store = current_app.extensions["imagegen"]["store"]
    storage_ok = os.access(store.root, os.W_OK)
    body = {
        "status": "healthy" if storage_ok else "unhealthy",
        "api_key_configured": settings.api_key_configured,
        "api_key_source": settings.api_key_source,
        "provider": settings.provider,
        # Whether callers need a client token (False: open to anyone who can reach it).
        "auth_required": settings.auth_required,
        "default_model": settings.default_model,
        "storage_writable": storage_ok,
        "version": __version__,
        "timestamp": utc_now(),
    }
    return jsonify(body), 200 if storage_ok else 503
