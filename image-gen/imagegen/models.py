"""GET /models: the model catalog, so an agent can discover what it may ask for."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from . import clock
from .catalog import MODELS, ModelSpec, get_model
from .errors import ServiceError
from .pricing import pricing_for

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
            "models": [_entry(model, today) for model in MODELS],
        }
    )


@bp.get("/models/<path:model_id>")
def show_model(model_id: str) -> ResponseReturnValue:
    """One model's entry."""
    model = get_model(model_id)
    if model is None:
        raise ModelNotFound(f"Unknown model {model_id[:64]!r}; GET /models lists them.")
    return jsonify(_entry(model, clock.today()))


def _entry(model: ModelSpec, today: dt.date) -> dict[str, Any]:
    """A model's catalog entry with its prices (what caps reserve and how costs settle)."""
    return {**model.describe(today), "pricing": pricing_for(model.id).as_dict()}
