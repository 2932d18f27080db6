"""GET /models: the model catalog, so an agent can discover what it may ask for."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from . import clock
from .catalog import MODELS, get_model
from .errors import ServiceError

bp = Blueprint("models", __name__)


class ModelNotFound(ServiceError):
    status = 404
    code = "MODEL_NOT_FOUND"


@bp.get("/models")
def list_models() -> ResponseReturnValue:
    """Every model with its lifecycle, sizes, counts and options, and the default model."""
    today = clock.today()
    default = current_app.config["SETTINGS"].default_model
    return jsonify(
        {
            "default_model": default,
            "models": [model.describe(today) for model in MODELS],
        }
    )


@bp.get("/models/<path:model_id>")
def show_model(model_id: str) -> ResponseReturnValue:
    """One model's entry."""
    model = get_model(model_id)
    if model is None:
        raise ModelNotFound(f"Unknown model {model_id[:64]!r}; GET /models lists them.")
    return jsonify(model.describe(clock.today()))
