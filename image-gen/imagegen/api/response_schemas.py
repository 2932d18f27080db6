"""The shapes the service answers, as OpenAPI component schemas, grouped by area.

`api.schemas.components` puts them together with the request bodies (built from the catalog);
the /v1 shapes are compat.schemas'.
"""

from __future__ import annotations

from typing import Any

from imagegen.apidoc import ref as _ref
from imagegen.imaging.formats import OUTPUT_CONTENT_TYPES
from imagegen.settings import PROVIDERS

Schema = dict[str, Any]

FORMATS = list(OUTPUT_CONTENT_TYPES)
string: Schema = {"type": "string"}
integer: Schema = {"type": "integer"}
boolean: Schema = {"type": "boolean"}
date: Schema = {"type": ["string", "null"], "format": "date"}


def error_schemas(codes: list[str]) -> dict[str, Schema]:
    """Error: every error answer outside /v1, with every error `code`."""
    return {
        "Error": {
            "type": "object",
            "description": "Every error outside /v1. Some carry more fields: `field` (the "
            "request field at fault), `replacement` (a model to use instead), "
            "`retry_after` (seconds).",
            "required": ["error", "status", "code"],
            "properties": {
                "error": {"type": "string", "description": "What went wrong, for a person."},
                "status": {"const": "failed"},
                "code": {"type": "string", "enum": codes},
                "field": string,
                "replacement": {"type": ["string", "null"]},
                "retry_after": integer,
            },
        },
    }


IMAGE_SCHEMAS: dict[str, Schema] = {
    "StoredImage": {
        "type": "object",
        "required": [
            "id",
            "url",
            "prompt",
            "model",
            "size",
            "width",
            "height",
            "format",
            "revised_prompt",
            "status",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "url": {
                "type": ["string", "null"],
                "description": "/images/{id}; null once the image is deleted.",
            },
            "thumbnail_url": {
                "type": ["string", "null"],
                "description": "/images/{id}?width=256: a small copy to look at cheaply; "
                "null once the image is deleted.",
            },
            "prompt": string,
            "model": string,
            "size": {"type": "string", "description": "The size asked for (WxH)."},
            "width": integer,
            "height": integer,
            "format": {"type": "string", "enum": FORMATS},
            "revised_prompt": {"type": ["string", "null"]},
            "status": {"type": "string", "enum": ["available", "deleted"]},
        },
    },
    "ListedImage": {
        "type": "object",
        "required": [
            "id",
            "url",
            "job_id",
            "prompt",
            "model",
            "size",
            "format",
            "created_at",
            "placeholder",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "url": string,
            "job_id": {"type": "string", "format": "uuid"},
            "prompt": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "size": {"type": ["string", "null"]},
            "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]},
            "format": {"type": ["string", "null"]},
            "revised_prompt": {"type": ["string", "null"]},
            "created_at": {"type": ["string", "null"]},
            "placeholder": boolean,
        },
    },
    "ImagePage": {
        "type": "object",
        "required": ["images", "next_cursor"],
        "properties": {
            "images": {"type": "array", "items": _ref("ListedImage")},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last.",
            },
        },
    },
    "DeletedImage": {
        "type": "object",
        "required": ["status", "message", "id", "job_id"],
        "properties": {
            "status": {"const": "success"},
            "message": string,
            "id": {"type": "string", "format": "uuid"},
            "job_id": {"type": "string", "format": "uuid"},
        },
    },
}


def job_schemas(codes: list[str]) -> dict[str, Schema]:
    """A stored job, an asynchronous one on its way (or failed), its events and previews."""
    return {
        "Job": {
            "type": "object",
            "required": ["job_id", "status", "created_at", "model", "placeholder", "images"],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"const": "completed"},
                "created_at": {"type": "string", "format": "date-time"},
                "model": string,
                "placeholder": {
                    **boolean,
                    "description": "True when the keyless placeholder provider drew them.",
                },
                "images": {"type": "array", "items": _ref("StoredImage")},
                "usage": {
                    "type": "object",
                    "description": "The upstream's token counts (absent when it reported none, "
                    "or a report that could not be true).",
                },
                "client": {
                    **string,
                    "description": "The name of the client token that made the job "
                    "('anonymous' when the service runs without tokens).",
                },
                "cost": _ref("Cost"),
                "warnings": {"type": "array", "items": string},
                "request": {
                    "type": "object",
                    "description": "The checked request (GET /jobs/{job_id} only).",
                },
                "attempts": {
                    "type": "integer",
                    "description": "An asynchronous job (GET /jobs/{job_id} only): how many "
                    "times it was started; more than 1 after its process died mid-run.",
                },
                "webhook": {
                    "type": "object",
                    "description": "An asynchronous job's completion webhook (GET /jobs/{job_id} "
                    "only): `status` pending, delivered or failed, and `attempts`.",
                },
            },
        },
        "StoringJob": {
            "type": "object",
            "description": "A job whose images the upstream made (and was paid for) while the "
            "image store or its database could not be reached: kept by the replica that made "
            "them and stored, with these ids and bytes, as soon as the store answers. Poll "
            "`Location` (GET /jobs/{job_id}) after Retry-After; the image URLs answer once it "
            "is stored. A retry with the same Idempotency-Key replays this answer.",
            "required": ["job_id", "status", "images"],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {"const": "storing"},
                "message": string,
                "created_at": {"type": "string", "format": "date-time"},
                "model": string,
                "operation": string,
                "request": {"type": "object", "description": "What was asked."},
                "images": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["id", "url"],
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "url": {**string, "description": "Answers once the job is stored."},
                        },
                    },
                },
                "retry_after": integer,
            },
        },
        "PendingJob": {
            "type": "object",
            "description": "An asynchronous job before it is stored (queued, running) or that "
            "failed. A failed job carries the error as a synchronous call would have answered "
            "it: `error`, `code`, `http_status` (and `field`, `retry_after`...).",
            "required": [
                "job_id",
                "status",
                "created_at",
                "updated_at",
                "model",
                "operation",
                "request",
                "progress",
                "images",
                "previews",
                "attempts",
                "events_url",
            ],
            "properties": {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "storing", "failed"],
                    "description": "storing: the images are made (and paid for) and kept by "
                    "the replica that made them until the image store (or its database) "
                    "answers again; then the job completes.",
                },
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "model": string,
                "operation": string,
                "request": {"type": "object", "description": "What was asked."},
                "progress": {
                    "type": "object",
                    "required": ["images_done", "count", "partial_images"],
                    "properties": {
                        "images_done": integer,
                        "count": integer,
                        "partial_images": {
                            **integer,
                            "description": "Partial previews received so far.",
                        },
                    },
                },
                "images": {
                    "type": "array",
                    "maxItems": 0,
                    "description": "Empty: the images are the Job's once it is completed.",
                },
                "previews": {"type": "array", "items": _ref("JobPreview")},
                "attempts": {
                    **integer,
                    "description": "Times the job was started (again after its process died).",
                },
                "events_url": string,
                "queue": {
                    "type": "object",
                    "description": "While queued: jobs ahead (about), running, and the bound.",
                    "properties": {"ahead": integer, "running": integer, "max_running": integer},
                },
                "error": string,
                "code": {"type": "string", "enum": codes},
                "http_status": integer,
                "warnings": {"type": "array", "items": string},
                "webhook": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                        "attempts": integer,
                    },
                },
            },
        },
        "JobEvent": {
            "type": "object",
            "description": "One Server-Sent Event of GET /jobs/{job_id}/events.",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {
                    "type": "string",
                    "enum": ["status", "partial_image", "image", "completed", "failed"],
                },
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "description": "status: job_id, status, progress, attempts. partial_image "
                    "and image: job_id, image, partial_image_index, url (image adds "
                    "images_done, count). completed: the Job. failed: the PendingJob.",
                },
            },
        },
        "JobPreview": {
            "type": "object",
            "required": ["image", "partial_image_index", "url"],
            "properties": {
                "image": {**integer, "description": "Which image of the job (0-based)."},
                "partial_image_index": {
                    "type": ["integer", "null"],
                    "description": "The upstream's partial image index; null: the image is "
                    "finished (stored with the job once all are).",
                },
                "url": string,
            },
        },
        "DeletedJob": {
            "type": "object",
            "required": ["status", "message", "job_id"],
            "properties": {
                "status": {"const": "success"},
                "message": string,
                "job_id": {"type": "string", "format": "uuid"},
            },
        },
        "Cost": {
            "type": "object",
            "description": "What the job cost in US dollars: `estimated_usd` was reserved "
            "against the caps before the upstream call; `usd` is the real cost, from the "
            "upstream's token usage (`basis: usage`) or the per-image price table "
            "(`price_table`, or `price_table_invalid_usage` when the upstream's usage report "
            "could not be true: a count that is not a whole number from 0 to 100,000,000). "
            "An operator's model without a per-image price has a null `estimated_usd`, and "
            "`basis: unpriced` with a null `usd` unless its token rates priced the usage.",
            "required": ["estimated_usd", "usd", "basis"],
            "properties": {
                "estimated_usd": {"type": ["number", "null"], "minimum": 0},
                "usd": {"type": ["number", "null"], "minimum": 0},
                "basis": {
                    "type": "string",
                    "enum": [
                        "usage",
                        "price_table",
                        "price_table_invalid_usage",
                        "placeholder",
                        "unpriced",
                    ],
                },
            },
        },
    }


# A file the Gunicorn master reads again on SIGHUP (tokens, models): when, and how it went.
_RELOADED: Schema = {
    "loaded_at": {"type": "string", "format": "date-time"},
    "last_reload": {"type": "string", "enum": ["ok", "failed"]},
    "reload_failed_at": {"type": ["string", "null"], "format": "date-time"},
}

SERVICE_SCHEMAS: dict[str, Schema] = {
    "UsageFigures": {
        "type": "object",
        "required": ["images_last_hour", "images_last_day", "usd_last_day", "limits", "caps"],
        "properties": {
            "name": string,
            "admin": boolean,
            "images_last_hour": {"type": "integer", "minimum": 0},
            "images_last_day": {"type": "integer", "minimum": 0},
            "usd_last_day": {"type": "number", "minimum": 0},
            "usd_reserved": {"type": "number", "minimum": 0},
            "limits": {"type": "object"},
            "caps": {
                "type": "object",
                "description": "Each cap that is set: its limit and what is left.",
                "additionalProperties": {
                    "type": "object",
                    "required": ["limit", "remaining"],
                    "properties": {
                        "limit": {"type": "number"},
                        "remaining": {"type": "number"},
                    },
                },
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["timestamp", "global", "auth_required"],
        "properties": {
            "timestamp": {"type": "string", "format": "date-time"},
            "auth_required": boolean,
            "windows": {"type": "object"},
            "token": _ref("UsageFigures"),
            "tokens": {
                "type": "array",
                "description": "Every token (admin tokens only).",
                "items": _ref("UsageFigures"),
            },
            "global": _ref("UsageFigures"),
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "api_key_configured", "timestamp"],
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
            "api_key_configured": boolean,
            "api_key_source": {"type": "string", "enum": ["secret_file", "env", "none"]},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "upstream": {
                "type": "object",
                "description": "With Azure OpenAI: the API form (deployments or v1) and, "
                "for deployments, the api-version sent. Never the key or endpoint.",
                "required": ["kind"],
                "properties": {
                    "kind": string,
                    "api": {"type": "string", "enum": ["deployments", "v1"]},
                    "api_version": string,
                },
            },
            "default_model": string,
            "storage_writable": boolean,
            "database": {
                "type": "string",
                "enum": ["ok", "unavailable"],
                "description": "With IMAGE_GEN_DATABASE_URL: whether PostgreSQL answers "
                "(unavailable: unhealthy, 503).",
            },
            "dependencies": {
                "type": "object",
                "description": "Each shared part the service depends on, its kind and "
                "state (unavailable: unhealthy, 503). Never a URL, bucket or path.",
                "required": ["storage", "database"],
                "properties": {
                    "storage": {
                        "type": "object",
                        "required": ["kind", "index", "state"],
                        "properties": {
                            "kind": {
                                "type": "string",
                                "enum": ["file", "s3"],
                                "description": "The images directory, or the bucket of "
                                "IMAGE_GEN_STORAGE_URL.",
                            },
                            "index": {
                                "type": "string",
                                "enum": ["files", "sqlite", "postgresql"],
                                "description": "Where the image index and job metadata are kept.",
                            },
                            "state": {"type": "string", "enum": ["ok", "unavailable"]},
                        },
                    },
                    "database": {
                        "type": "object",
                        "required": ["kind", "state"],
                        "properties": {
                            "kind": {"type": "string", "enum": ["sqlite", "postgresql"]},
                            "state": {"type": "string", "enum": ["ok", "unavailable"]},
                        },
                    },
                },
            },
            "auth_required": {
                **boolean,
                "description": "Whether callers need a client token (false: open).",
            },
            "version": string,
            "timestamp": {"type": "string", "format": "date-time"},
            "tokens": {
                "type": "object",
                "description": "With a tokens file: when this worker's tokens were read "
                "and whether the latest reload (SIGHUP) failed, in which case the last "
                "good tokens are in use.",
                "required": ["loaded_at", "last_reload"],
                "properties": {
                    **_RELOADED,
                    "reload_failed_line": {"type": ["integer", "null"], "minimum": 1},
                },
            },
            "models_file": {
                "type": "object",
                "description": "With a models file (IMAGE_GEN_MODELS_FILE): when this "
                "worker's copy was read, its models and upstreams (never a key), and whether "
                "the latest reload (SIGHUP) failed, in which case the last good one is in use.",
                "required": ["loaded_at", "last_reload"],
                "properties": {
                    **_RELOADED,
                    "reload_failed_key": {"type": ["string", "null"]},
                    "models": {"type": "array", "items": string},
                    "upstreams": {"type": "array", "items": string},
                },
            },
        },
    },
}

MODEL_SCHEMAS: dict[str, Schema] = {
    "Model": {
        "type": "object",
        "required": ["id", "family", "status", "count", "sizes", "default_size", "options"],
        "properties": {
            "pricing": {
                "type": ["object", "null"],
                "description": "US dollars: `per_image` (by quality and size, the estimate "
                "reserved against spending caps) and `per_token` (per 1M tokens, the rates "
                "that settle the real cost from the upstream's usage), with sources and "
                "the date they were read (`read_on` null: the operator's own price). Null: "
                "an operator's model without a price (no cost is known; a token with a "
                "usd_per_day cap may not use it).",
            },
            "id": string,
            "family": string,
            "status": {
                "type": "string",
                "enum": ["active", "deprecated", "shut_down", "legacy"],
            },
            "description": string,
            "snapshot_of": {"type": ["string", "null"], "description": "A snapshot's base."},
            "origin": {
                "type": "string",
                "enum": ["catalog", "models_file"],
                "description": "Where the model comes from: the built-in catalog or the "
                "operator's models file (IMAGE_GEN_MODELS_FILE); `source` is the page its "
                "facts were read from.",
            },
            "like": {
                "type": ["string", "null"],
                "description": "An operator alias's base model: validated and priced like it.",
            },
            "upstream": {
                "type": "string",
                "description": "The upstream that serves it (`default`: OPENAI_BASE_URL).",
            },
            "fallbacks": {
                "type": "array",
                "items": string,
                "description": "Upstreams tried in order on a 429, 5xx or timeout.",
            },
            "deprecated_on": date,
            "shutdown_on": date,
            "replacement": {"type": ["string", "null"]},
            "count": {
                "type": "object",
                "required": ["min", "max"],
                "properties": {"min": integer, "max": integer},
            },
            "max_prompt_chars": integer,
            "sizes": {"type": "array", "items": string},
            "size_rule": {"type": ["object", "null"]},
            "largest_output": {
                "type": "object",
                "description": "The largest image the model makes (`max_edge` pixels on "
                "the longest side, `max_pixels` in all), at any size; an upstream image "
                "beyond it is refused as an unusable answer.",
                "required": ["max_edge", "max_pixels"],
                "properties": {"max_edge": integer, "max_pixels": integer},
            },
            "default_size": string,
            "edits": {
                "type": ["object", "null"],
                "description": "What POST /edit takes for this model (null: no edits): "
                "`max_images`, input `formats`, `max_image_bytes`, `mask`, "
                "`max_mask_bytes`, `square`, `default_size` and the edit `options`.",
            },
            "variations": {
                "type": ["object", "null"],
                "description": "What POST /variations takes (null: no variations).",
            },
            "options": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "enum": ["string", "integer"]},
                        "enum": {"type": "array", "items": string},
                        "minimum": integer,
                        "maximum": integer,
                        "default": {"type": ["string", "integer", "null"]},
                    },
                },
            },
            "source": string,
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["default_model", "models"],
        "properties": {
            "default_model": string,
            "models": {"type": "array", "items": _ref("Model")},
        },
    },
}


def response_schemas(codes: list[str]) -> dict[str, Schema]:
    """Every answer's schema, by component name."""
    return {
        **error_schemas(codes),
        **IMAGE_SCHEMAS,
        **job_schemas(codes),
        **SERVICE_SCHEMAS,
        **MODEL_SCHEMAS,
    }
