"""The /v1 routes' component schemas: OpenAI's request fields with the catalog's values,
OpenAI's answer and error shapes. The /v1 operations bring them (`schemas=` on each), so
they are in the description exactly when the app serves /v1.
"""

from __future__ import annotations

from typing import Any

from imagegen.api.response_schemas import FORMATS, date, integer, string
from imagegen.api.schemas import (
    common_properties,
    input_form_schema,
    input_json_schema,
    nullable,
    option_properties,
)
from imagegen.apidoc import ref as _ref
from imagegen.catalog.spec import ModelSpec

Schema = dict[str, Any]

RESPONSE_FORMATS = ("url", "b64_json")


def components(models: list[ModelSpec], default_model: str, codes: list[str]) -> dict[str, Schema]:
    """Every /v1 component schema for `models` (those not shut down), by name."""
    return {
        "OpenAIImagesRequest": openai_request_schema(models, default_model),
        "OpenAIEditForm": openai_form_schema(models, default_model, "edit"),
        "OpenAIEditRequest": openai_edit_json_schema(models, default_model),
        "OpenAIVariationForm": openai_form_schema(models, default_model, "variation"),
        **openai_error_schema(codes),
        **OPENAI_SCHEMAS,
    }


def openai_request_schema(models: list[ModelSpec], default_model: str) -> Schema:
    """POST /v1/images/generations' body: OpenAI's field names, the catalog's values."""
    return {
        "type": "object",
        "description": "OpenAI's request; null means not given.",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            **common_properties(models, default_model),
            "n": nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": max(m.max_count for m in models),
                    "default": 1,
                    "description": "How many images.",
                }
            ),
            **option_properties(models),
            "response_format": nullable(
                {
                    "type": "string",
                    "enum": list(RESPONSE_FORMATS),
                    "description": "DALL-E models only; GPT Image models always answer b64_json.",
                }
            ),
            "stream": {
                "type": ["boolean", "null"],
                "enum": [False, None],
                "description": "Streaming is not supported.",
            },
        },
    }


def openai_edit_json_schema(models: list[ModelSpec], default_model: str) -> Schema:
    """OpenAI's JSON edit: `images` and `mask` references, `n`, and POST /edit's fields."""
    schema = input_json_schema(models, default_model, "edit")
    properties = schema["properties"]
    count = properties.pop("count")
    for name in ("image_id", "image_ids", "mask_id", "markup_id"):
        properties.pop(name, None)
    properties["n"] = count
    properties["response_format"] = nullable(
        {
            "type": "string",
            "enum": list(RESPONSE_FORMATS),
            "description": "DALL-E models only; GPT Image models always answer b64_json.",
        }
    )
    properties["stream"] = {
        "type": ["boolean", "null"],
        "enum": [False, None],
        "description": "Streaming is not supported.",
    }
    del schema["anyOf"]
    schema["description"] = "OpenAI's JSON edit: images as references; null means not given."
    schema["required"] = [*schema.get("required", []), "images"]
    return schema


def openai_form_schema(models: list[ModelSpec], default_model: str, operation: str) -> Schema:
    """OpenAI's multipart edit or variation: POST /edit's form with `n` and OpenAI's fields."""
    schema = input_form_schema(models, default_model, operation, count_field="n")
    properties = schema["properties"]
    properties["response_format"] = {
        "type": "string",
        "enum": list(RESPONSE_FORMATS),
        "description": "DALL-E models only; GPT Image models always answer b64_json.",
    }
    properties["stream"] = {
        "type": "boolean",
        "enum": [False],
        "description": "Streaming is not supported.",
    }
    return schema


def openai_error_schema(codes: list[str]) -> dict[str, Schema]:
    """OpenAI's error shape, its `code` the service's codes in lower case."""
    return {
        "OpenAIError": {
            "type": "object",
            "description": "OpenAI's error shape, on the /v1 routes.",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": string,
                        "type": {
                            "type": "string",
                            "enum": [
                                "invalid_request_error",
                                "image_generation_user_error",
                                "requests",
                                "server_error",
                            ],
                        },
                        "param": {"type": ["string", "null"]},
                        "code": {"type": "string", "enum": [code.lower() for code in codes]},
                    },
                }
            },
        },
    }


OPENAI_SCHEMAS: dict[str, Schema] = {
    "OpenAIImage": {
        "type": "object",
        "anyOf": [{"required": ["b64_json"]}, {"required": ["url"]}],
        "properties": {
            "b64_json": {"type": "string", "contentEncoding": "base64"},
            "url": {"type": "string", "format": "uri"},
            "revised_prompt": string,
        },
    },
    "OpenAIImagesResponse": {
        "type": "object",
        "required": ["created", "data"],
        "properties": {
            "created": {**integer, "description": "Unix seconds."},
            "data": {"type": "array", "items": _ref("OpenAIImage")},
            "usage": {
                "type": "object",
                "description": "The upstream's token counts (absent when it reported none, "
                "or a report that could not be true).",
            },
            "output_format": {"type": "string", "enum": FORMATS},
            "size": string,
            "quality": {
                "type": "string",
                "enum": ["low", "medium", "high", "xhigh", "max"],
            },
            "background": {"type": "string", "enum": ["transparent", "opaque"]},
        },
    },
    "OpenAIModel": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": string,
            "object": {"const": "model"},
            "created": {**integer, "description": "Always 0: the catalog has no dates."},
            "owned_by": string,
            "shutdown_date": date,
            "snapshot_of": {"type": ["string", "null"], "description": "A snapshot's base."},
            "origin": {"type": "string", "enum": ["catalog", "models_file"]},
            "like": {"type": ["string", "null"], "description": "An operator alias's base."},
        },
    },
    "OpenAIModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("OpenAIModel")},
        },
    },
}
