"""The service's component schemas in one place: the request bodies, built from the model
catalog (they also feed the MCP tools' input schemas), and the answers' shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imagegen.api.parts import UUID_PATTERN
from imagegen.api.response_schemas import response_schemas
from imagegen.catalog.spec import Choice, InputSpec, IntRange, ModelSpec
from imagegen.errors import HTTP_CODES, ServiceError
from imagegen.imaging.inputs import OPERATIONS
from imagegen.imaging.request import end_user_schema

Schema = dict[str, Any]

# What a `size` can look like for some model; GET /models/{id} has each model's rule.
SIZE_PATTERN = "^(auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4})$"


def components(models: list[ModelSpec], default_model: str) -> dict[str, Schema]:
    """The component schemas of the service's own routes for `models` (those not shut
    down), by name; the /v1 routes bring theirs (compat.schemas)."""
    schemas = response_schemas(error_codes())
    requests = {
        "GenerateRequest": generate_request_schema(models, default_model),
        "EditForm": input_form_schema(models, default_model, "edit"),
        "EditRequest": input_json_schema(models, default_model, "edit"),
        "VariationForm": input_form_schema(models, default_model, "variation"),
        "VariationRequest": input_json_schema(models, default_model, "variation"),
    }
    return copy.deepcopy({**schemas, **requests})


def error_codes() -> list[str]:
    """Every `code` the service can answer: its error classes' and Werkzeug errors'."""
    codes = {"SERVICE_ERROR", "HTTP_ERROR", *HTTP_CODES.values()}
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


def nullable(schema: Schema) -> Schema:
    """`schema` or null (the service treats null as "not given" for these fields)."""
    result = dict(schema)
    result["type"] = [schema["type"], "null"]
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


# --- generation ---------------------------------------------------------------------------


def generate_request_schema(models: list[ModelSpec], default_model: str) -> Schema:
    """POST /generate's body: the union of what the usable models take."""
    return {
        "type": "object",
        "description": "Which sizes, counts and options a model takes is in GET /models; "
        "this schema is their union.",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            **common_properties(models, default_model),
            "count": {
                "type": "integer",
                "minimum": 1,
                "maximum": max(m.max_count for m in models),
                "default": 1,
                "description": "How many images.",
            },
            **option_properties(models),
        },
    }


def common_properties(models: list[ModelSpec], default_model: str) -> dict[str, Schema]:
    return {
        "prompt": {
            "type": "string",
            "minLength": 1,
            "maxLength": max(m.max_prompt_chars for m in models),
            "pattern": r"\S",
            "description": "What to draw. Each model has its own limit: "
            + ", ".join(f"{m.id} {m.max_prompt_chars:,}" for m in models)
            + " characters.",
        },
        "model": nullable(
            {
                "type": "string",
                "enum": [m.id for m in models],
                "default": default_model,
                "description": "A model that is not shut down (GET /models).",
            }
        ),
        "size": nullable(
            {
                "type": "string",
                "pattern": SIZE_PATTERN,
                "description": "WxH or auto. Each model lists its sizes, and the newer GPT "
                "Image models take any WxH within bounds (GET /models/{id}).",
            }
        ),
        **{name: nullable(schema) for name, schema in end_user_schema().items()},
    }


def option_properties(
    models: Iterable[ModelSpec],
    options_of: Callable[[ModelSpec], Mapping[str, Choice | IntRange]] = lambda m: m.options,
) -> dict[str, Schema]:
    """Each option any model takes, with the union of its values and who takes it."""
    takers: dict[str, list[ModelSpec]] = {}
    for model in models:
        for name in options_of(model):
            takers.setdefault(name, []).append(model)
    properties = {}
    for name, owners in takers.items():
        specs = [options_of(m)[name] for m in owners]
        if all(isinstance(s, Choice) for s in specs):
            values: list[str] = []
            for spec in specs:
                values += [v for v in spec.values if v not in values]  # type: ignore[union-attr]
            schema: Schema = {"type": "string", "enum": values}
        elif all(isinstance(s, IntRange) for s in specs):
            schema = {
                "type": "integer",
                "minimum": min(s.low for s in specs),  # type: ignore[union-attr]
                "maximum": max(s.high for s in specs),  # type: ignore[union-attr]
            }
        else:
            raise TypeError(f"option {name!r} is not the same kind for every model")
        schema["description"] = "Taken by " + ", ".join(m.id for m in owners) + "."
        properties[name] = nullable(schema)
    return properties


# --- edits and variations -----------------------------------------------------------------


def _input_models(models: list[ModelSpec], operation: str) -> list[tuple[ModelSpec, InputSpec]]:
    return [(m, spec) for m in models if (spec := getattr(m, OPERATIONS[operation])) is not None]


def _input_properties(
    models: list[ModelSpec], default_model: str, operation: str, *, as_json: bool
) -> dict[str, Schema]:
    """The fields an edit or variation takes besides its images: the catalog's union."""
    able = _input_models(models, operation)
    maybe = nullable if as_json else (lambda schema: schema)
    owners = [m for m, _ in able]
    default = default_model if default_model in [m.id for m in owners] else owners[0].id
    properties: dict[str, Schema] = {}
    if any(spec.prompt for _, spec in able):
        prompted = [m for m, spec in able if spec.prompt]
        properties["prompt"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": max(m.max_prompt_chars for m in prompted),
            "pattern": r"\S",
            "description": "What the result should show (the whole image, not only the "
            "edited area). Limits: "
            + ", ".join(f"{m.id} {m.max_prompt_chars:,}" for m in prompted)
            + " characters.",
        }
    properties["model"] = maybe(
        {
            "type": "string",
            "enum": [m.id for m in owners],
            "default": default,
            "description": "A model that takes this operation (GET /models).",
        }
    )
    properties["size"] = maybe(
        {
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "WxH, or auto (the output follows the input) where the model "
            "takes it; each model lists its sizes (GET /models/{id}).",
        }
    )
    specs = {m.id: spec for m, spec in able}
    options = option_properties(owners, lambda m: specs[m.id].options)
    if not as_json:  # multipart fields are text: never null
        options = {name: _not_null(schema) for name, schema in options.items()}
    end_user = {name: maybe(schema) for name, schema in end_user_schema().items()}
    return {**properties, **options, **end_user}


def _not_null(schema: Schema) -> Schema:
    result = dict(schema)
    result["type"] = next(t for t in schema["type"] if t != "null")
    if "enum" in schema:
        result["enum"] = [v for v in schema["enum"] if v is not None]
    return result


def input_form_schema(
    models: list[ModelSpec], default_model: str, operation: str, *, count_field: str = "count"
) -> Schema:
    """A multipart edit or variation: the image files and the text fields."""
    able = _input_models(models, operation)
    max_images = max(spec.max_images for _, spec in able)
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    count = {
        "type": "integer",
        "minimum": 1,
        "maximum": max(m.max_count for m, _ in able),
        "default": 1,
        "description": "How many images.",
    }
    properties: dict[str, Schema] = {
        **_input_properties(models, default_model, operation, as_json=False),
        count_field: count,
    }
    if max_images > 1:
        files = {
            "type": "array",
            "minItems": 1,
            "maxItems": max_images,
            "items": binary,
            "description": "The image(s) to start from: PNG, JPEG or WebP as each model takes "
            f"(up to {max_images}).",
        }
        properties["image"] = files
        properties["image[]"] = {**files, "description": "Another name for `image`."}
        required: Schema = {"anyOf": [{"required": ["image"]}, {"required": ["image[]"]}]}
    else:
        properties["image"] = {**binary, "description": "The square PNG to start from."}
        required = {"required": ["image"]}
    if any(spec.mask for _, spec in able):
        properties["mask"] = {
            **binary,
            "description": "A PNG with an alpha channel and the first image's dimensions; "
            "its fully transparent areas are edited.",
        }
    if any(spec.markup for _, spec in able):
        properties["markup"] = {**binary, "description": MARKUP_DESCRIPTION}
    if "prompt" in properties:
        required.setdefault("required", []).append("prompt")
    return {
        "type": "object",
        "description": "Fields as multipart/form-data text; images as file parts.",
        **required,
        "additionalProperties": False,
        "properties": properties,
    }


def input_json_schema(models: list[ModelSpec], default_model: str, operation: str) -> Schema:
    """A JSON edit or variation: images this service stores, named by id."""
    able = _input_models(models, operation)
    max_images = max(spec.max_images for _, spec in able)
    image_id = {"type": "string", "pattern": UUID_PATTERN}
    properties: dict[str, Schema] = {
        **_input_properties(models, default_model, operation, as_json=True),
        "count": nullable(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": max(m.max_count for m, _ in able),
                "default": 1,
                "description": "How many images.",
            }
        ),
        "image_id": nullable({**image_id, "description": "A stored image to start from."}),
        "image_ids": nullable(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": max_images,
                "items": image_id,
                "description": "Stored images to start from, in order (instead of `image_id`).",
            }
        ),
    }
    if any(spec.mask for _, spec in able):
        properties["mask_id"] = nullable(
            {**image_id, "description": "A stored PNG with an alpha channel to use as the mask."}
        )
    if any(spec.markup for _, spec in able):
        properties["markup_id"] = nullable(
            {**image_id, "description": f"A stored markup. {MARKUP_DESCRIPTION}"}
        )
    ways: list[Schema] = [{"required": ["image_id"]}, {"required": ["image_ids"]}]
    if operation == "edit":  # OpenAI's JSON form too (not mixed with the ids)
        properties.update(reference_properties(max_images))
        ways.append({"required": ["images"]})
    schema: Schema = {
        "type": "object",
        "description": "Images by id"
        + (", or as OpenAI's `images` references" if operation == "edit" else "")
        + "; the other fields as for the multipart form.",
        "anyOf": ways,
        "additionalProperties": False,
        "properties": properties,
    }
    if "prompt" in properties:
        schema["required"] = ["prompt"]
    return schema


MARKUP_DESCRIPTION = (
    "A PNG with an alpha channel and the first image's dimensions, clear except where it "
    "marks what to change (arrows, circles, notes); not with a mask. GPT Image 2.6 only."
)


def reference_properties(max_images: int) -> dict[str, Schema]:
    """OpenAI's JSON edit form: `images` and `mask` as references (imaging.references)."""
    return {
        "images": {
            "type": "array",
            "minItems": 1,
            "maxItems": max_images,
            "items": image_reference("An image to start from."),
            "description": "The images to start from, in order (OpenAI's JSON form).",
        },
        "mask": image_reference(
            "A PNG with an alpha channel and the first image's dimensions; its fully "
            "transparent areas are edited."
        ),
        "markup": image_reference(MARKUP_DESCRIPTION),
    }


def image_reference(description: str) -> Schema:
    """One image reference: exactly one of `image_url` or `file_id`."""
    return {
        "type": "object",
        "description": description,
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {
            "image_url": {
                "type": "string",
                "minLength": 1,
                "description": "A base64 data URL (data:image/png;base64,..., also image/jpeg "
                "or image/webp), decoded and checked like an upload; or the URL of an image "
                "this service stores (/images/{image_id}, on this host). No other URL is "
                "fetched.",
            },
            "file_id": {
                "type": "string",
                "pattern": UUID_PATTERN,
                "description": "An image id of this service (as `image_id`); OpenAI Files ids "
                "are refused: the service cannot read your OpenAI account's files.",
            },
        },
    }
