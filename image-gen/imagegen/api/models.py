"""GET /models: the model catalog, so an agent can discover what it may ask for."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from imagegen import clock
from imagegen.api.parts import MODEL_ID
from imagegen.apidoc import errors, json_response, operation
from imagegen.catalog import operator
from imagegen.catalog.models import MODELS, get_model
from imagegen.catalog.pricing import pricing_for
from imagegen.catalog.spec import ModelSpec
from imagegen.errors import ModelNotFound
from imagegen.services import services

bp = Blueprint("models", __name__)


@bp.get("/models")
@operation(
    "listModels",
    tag="models",
    summary="Every model with its lifecycle, sizes, counts and options",
    responses={
        "200": json_response("The catalog and the default model.", "ModelList"),
        **errors(500),
    },
)
def list_models() -> ResponseReturnValue:
    """Every model with its lifecycle, sizes, counts and options, and the default model."""
    today = clock.today()
    default = services().settings.default_model
    return jsonify(
        {
            "default_model": default,
            "models": [_entry(model, today) for model in MODELS],
        }
    )


@bp.get("/models/<path:model_id>")
@operation(
    "getModel",
    tag="models",
    summary="One model's catalog entry",
    parameters=[MODEL_ID],
    responses={"200": json_response("The model.", "Model"), **errors(404, 500)},
)
def show_model(model_id: str) -> ResponseReturnValue:
    """One model's entry."""
    model = get_model(model_id)
    if model is None:
        raise ModelNotFound(f"Unknown model {model_id[:64]!r}; GET /models lists them.")
    return jsonify(_entry(model, clock.today()))


def _entry(model: ModelSpec, today: dt.date) -> dict[str, Any]:
    """A model's catalog entry with its prices (what caps reserve and how costs settle) and
    where it comes from: the catalog or the operator's models file, and its upstream."""
    return {
        **model.describe(today),
        **operator.origin(services().settings.models_file, model.id),
        "pricing": pricing.as_dict() if (pricing := pricing_for(model.id)) else None,
    }
