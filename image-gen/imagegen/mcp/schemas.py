"""The MCP tools' input schemas, built from the service's own request schemas (api.schemas)
with descriptions written for an agent, and their output schemas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imagegen.api import schemas
from imagegen.catalog.models import MODELS
from imagegen.catalog.spec import SHUT_DOWN, Choice, IntRange, ModelSpec
from imagegen.imaging.inputs import default_model_for
from imagegen.mcp.protocol import MAX_INLINE_BYTES, THUMBNAIL_WIDTH, UUID


def _usable(today: Any) -> list[ModelSpec]:
    return [model for model in MODELS if model.status(today) != SHUT_DOWN]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI schema without its `null` (tools take "leave it out" instead)."""
    result = dict(schema)
    kinds = schema.get("type")
    if isinstance(kinds, list):
        rest = [kind for kind in kinds if kind != "null"]
        result["type"] = rest[0] if len(rest) == 1 else rest
    if "enum" in schema:
        result["enum"] = [value for value in schema["enum"] if value is not None]
    return result


def _per_model(models: Iterable[ModelSpec], describe: Callable[[ModelSpec], str | None]) -> str:
    """Models grouped by what `describe` says about them: "a, b: text; c: other text"."""
    groups: dict[str, list[str]] = {}
    for model in models:
        text = describe(model)
        if text is not None:
            groups.setdefault(text, []).append(model.id)
    return "; ".join(f"{', '.join(ids)}: {text}" for text, ids in groups.items())


def _model_notes(models: list[ModelSpec], default: str, today: Any) -> str:
    lines = []
    for model in models:
        status = model.status(today)
        tags = [tag for tag in ("default" if model.id == default else "", status) if tag]
        lines.append(f"{model.id} ({', '.join(tags)}): {model.description}")
    return (
        "The model; leave it out for the default. "
        + " ".join(lines)
        + " Prefer active models; list_models has each model's details."
    )


def _size_notes(models: list[ModelSpec], default_of: Callable[[ModelSpec], str | None]) -> str:
    def describe(model: ModelSpec) -> str:
        fixed = [size for size in model.sizes if size != "auto"]
        if model.size_rule is not None:
            text = f"{model.size_rule.describe()}, e.g. {', '.join(fixed[:4])}"
        else:
            text = ", ".join(fixed)
        if "auto" in model.sizes:
            text += ", or auto"
        return text + f" (default {default_of(model) or model.default_size})"

    return "WxH in pixels. " + _per_model(models, describe) + "."


def _option_notes(
    models: list[ModelSpec], name: str, options_of: Callable[[ModelSpec], Mapping[str, Any]]
) -> str:
    def describe(model: ModelSpec) -> str | None:
        spec = options_of(model).get(name)
        if isinstance(spec, Choice):
            return ", ".join(spec.values)
        if isinstance(spec, IntRange):
            return f"{spec.low}-{spec.high}"
        return None

    takers = _per_model(models, describe)
    others = [m.id for m in models if name not in options_of(m)]
    needs = sorted(
        {
            f"{name}{'=' + rule.value if rule.value else ''} needs {rule.other} "
            f"{' or '.join(rule.allowed)}"
            for model in models
            for rule in model.requires
            if rule.option == name and name in options_of(model)
        }
    )
    text = f"Leave it out for the upstream's default. {takers}."
    if needs:
        text += " " + "; ".join(needs) + "."
    if others:
        text += f" Not taken by {', '.join(others)}: leave it out there."
    return text


MCP_ARGUMENTS: dict[str, dict[str, Any]] = {
    "thumbnail": {
        "type": "boolean",
        "default": False,
        "description": f"true: also return each image inline as a {THUMBNAIL_WIDTH}-pixel JPEG "
        f"(together at most {MAX_INLINE_BYTES // 1024} KiB of base64), to look at the result. "
        "Leave it false to save context: the resource links are enough to use the images.",
    },
    "idempotency_key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "A fresh unique string (a UUID) for this request. If the call fails "
        "with a timeout or a lost connection, call again with the same key and arguments: "
        "you get the first call's answer instead of paying for the images twice.",
    },
}


def generate_schema(default_model: str, today: Any) -> dict[str, Any]:
    models = _usable(today)
    base = schemas.generate_request_schema(models, default_model)
    properties = {name: _not_null(schema) for name, schema in base["properties"].items()}
    properties["prompt"]["description"] = (
        "What to draw, in detail: subject, style, composition, colours, text to render. "
        + properties["prompt"]["description"].split(". ", 1)[-1]
    )
    properties["model"]["description"] = _model_notes(models, default_model, today)
    properties["size"]["description"] = _size_notes(models, lambda m: None)
    properties["count"]["description"] = "How many images, 1-10 (each one costs)."
    for name in properties:
        if any(name in model.options for model in models):
            properties[name]["description"] = _option_notes(models, name, lambda m: m.options)
    if "background" in properties:
        properties["background"]["description"] = (
            "The image's background (transparent or opaque). "
            + properties["background"]["description"]
        )
    return {
        "type": "object",
        "properties": {
            **properties,
            "background_job": {
                "type": "boolean",
                "default": False,
                "description": "true: return at once with a job_id (status queued) and poll "
                "get_job, instead of waiting for the images. Use it for high quality, large "
                "sizes or many images, which take minutes.",
            },
            **MCP_ARGUMENTS,
        },
        "required": ["prompt"],
        "additionalProperties": False,
    }


def edit_schema(default_model: str, today: Any) -> dict[str, Any]:
    models = _usable(today)
    default = default_model_for("edit", default_model, today)
    base = schemas.input_json_schema(models, default, "edit")
    properties = {name: _not_null(schema) for name, schema in base["properties"].items()}
    able = [model for model in models if model.edits is not None]
    properties["model"]["description"] = _model_notes(able, default, today)
    properties["size"]["description"] = _size_notes(
        able, lambda m: m.edits.default_size if m.edits else None
    )
    properties["count"]["description"] = "How many images, 1-10 (each one costs)."
    for name in properties:
        if any(model.edits and name in model.edits.options for model in able):
            properties[name]["description"] = _option_notes(
                able, name, lambda m: m.edits.options if m.edits else {}
            )
    properties["image_id"]["description"] = (
        "The id of a stored image to edit (from generate_image, edit_image or list_images). "
        "Give image_id or image_ids."
    )
    properties["image_ids"]["description"] = (
        "Several stored images to start from, in order (instead of image_id), up to each "
        "model's limit (list_models: edits.max_images)."
    )
    if "mask_id" in properties:
        properties["mask_id"]["description"] = (
            "A stored PNG with an alpha channel, the first image's size: its fully "
            "transparent areas are what gets edited. Leave it out to edit the whole image."
        )
    if "markup_id" in properties:
        properties["markup_id"]["description"] = (
            "GPT Image 2.6: a stored PNG with an alpha channel, the first image's size, clear "
            "except where it marks what to change (arrows, circles, notes). Not with mask_id."
        )
    return {
        "type": "object",
        "properties": {**properties, **MCP_ARGUMENTS},
        "required": ["prompt"] if "prompt" in properties else [],
        "additionalProperties": False,
    }


def fixed(schema: dict[str, Any]) -> Callable[[str, Any], dict[str, Any]]:
    return lambda default_model, today: schema


# --- output schemas ---------------------------------------------------------------------

UUID_STRING = {"type": "string", "pattern": UUID.pattern}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INTEGER = {"type": ["integer", "null"]}
_COST = {
    "type": "object",
    "description": "US dollars: estimated_usd reserved before the call, usd the real cost "
    "(from the upstream's token usage when it reports it), basis how usd was found (null "
    "with basis unpriced: an operator's model without a price).",
    "properties": {
        "estimated_usd": {"type": ["number", "null"]},
        "usd": {"type": ["number", "null"]},
        "basis": {"type": "string"},
    },
}
_JOB_IMAGE = {
    "type": "object",
    "required": ["id", "url", "status"],
    "properties": {
        "id": {"type": "string"},
        "url": {**_NULLABLE_STRING, "description": "The image; null once deleted."},
        "thumbnail_url": _NULLABLE_STRING,
        "size": _NULLABLE_STRING,
        "width": _NULLABLE_INTEGER,
        "height": _NULLABLE_INTEGER,
        "format": _NULLABLE_STRING,
        "revised_prompt": _NULLABLE_STRING,
        "status": {"type": "string", "description": "available, or deleted."},
    },
}
JOB_OUTPUT = {
    "type": "object",
    "required": ["job_id", "status", "images"],
    "properties": {
        "job_id": {"type": "string"},
        "status": {
            "type": "string",
            "description": "queued, running, storing (made, kept until the image store "
            "is back), completed or failed.",
        },
        "model": _NULLABLE_STRING,
        "placeholder": {"type": "boolean"},
        "images": {"type": "array", "items": _JOB_IMAGE},
        "cost": _COST,
        "usage": {"type": "object"},
        "progress": {"type": "object"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "retry_after": {"type": "integer", "description": "Seconds before polling again."},
        "error": _NULLABLE_STRING,
        "code": _NULLABLE_STRING,
        "thumbnails_omitted": {
            "type": "integer",
            "description": "Thumbnails left out to keep the result small.",
        },
    },
}
IMAGE_PAGE = {
    "type": "object",
    "required": ["images", "next_cursor"],
    "properties": {
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "url", "job_id"],
                "properties": {
                    "id": {"type": "string"},
                    "url": {"type": "string"},
                    "thumbnail_url": {"type": "string"},
                    "job_id": {"type": "string"},
                    "prompt": _NULLABLE_STRING,
                    "revised_prompt": _NULLABLE_STRING,
                    "model": _NULLABLE_STRING,
                    "size": _NULLABLE_STRING,
                    "width": _NULLABLE_INTEGER,
                    "height": _NULLABLE_INTEGER,
                    "format": _NULLABLE_STRING,
                    "created_at": _NULLABLE_STRING,
                    "placeholder": {"type": "boolean"},
                },
            },
        },
        "next_cursor": {
            **_NULLABLE_STRING,
            "description": "Pass as cursor for the next page; null on the last page.",
        },
    },
}
DELETED = {
    "type": "object",
    "required": ["id", "job_id", "deleted"],
    "properties": {
        "id": {"type": "string"},
        "job_id": {"type": "string"},
        "deleted": {"const": True},
    },
}
CATALOG = {
    "type": "object",
    "required": ["default_model", "models"],
    "properties": {
        "default_model": {"type": "string"},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {
                        "type": "string",
                        "description": "active, deprecated, legacy or shut_down.",
                    },
                },
            },
        },
    },
}
