"""The pieces of the API description several routes share: ids in paths, the headers of an
asynchronous call, upload bodies, image answers and the errors of an edit.
"""

from __future__ import annotations

from typing import Any

from imagegen.apidoc import (
    errors,
    header,
    header_param,
    json_response,
    path_param,
    query,
    ref,
    with_request_id,
)
from imagegen.imaging.formats import CONTENT_TYPES
from imagegen.imaging.thumbnails import MAX_EDGE, MIN_EDGE

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

IMAGE_ID = path_param("image_id", "The image's id (a UUID, any case).", UUID_PATTERN)
JOB_ID = path_param("job_id", "The job's id (a UUID, any case).", UUID_PATTERN)
MODEL_ID = path_param("model_id", "A model id, e.g. gpt-image-2.")

ASYNC_DESCRIPTION = (
    "With `Prefer: respond-async` (RFC 7240) the answer is 202 at once, with `Location: "
    "/jobs/{job_id}` to poll and the queued job; `Prefer: wait=N` waits up to N seconds "
    "(at most 60) and answers as without the header if the job ended by then, else 202. "
    "Without Prefer the call is synchronous. `Webhook-URL` (with `Webhook-Secret`, unless "
    "the operator configured one) asks for a signed POST when the job ends."
)

# The request headers of a route that can answer asynchronously.
ASYNC_PARAMETERS = (
    header_param(
        "Prefer",
        "`respond-async` answers 202 at once; `wait=N` waits up to N seconds first.",
    ),
    header_param(
        "Webhook-URL",
        "With respond-async: an http(s) URL to POST the finished job to (Standard "
        "Webhooks signature: webhook-id, webhook-timestamp, webhook-signature).",
    ),
    header_param(
        "Webhook-Secret",
        "The HMAC-SHA256 signing secret for Webhook-URL, 16-256 printable characters "
        "(`whsec_<base64>` is decoded, as Standard Webhooks do).",
    ),
)

IDEMPOTENCY_KEY = header_param(
    "Idempotency-Key",
    "Makes a retry safe: the same key and body within 24 h returns the first answer "
    "without generating again (1-255 ASCII characters). The retry's own Prefer, "
    "Webhook-URL and Webhook-Secret are not applied; the Idempotent-Replay-Ignored header "
    "names those it sent.",
)


# --- bodies -------------------------------------------------------------------------------


def input_body(form_name: str, json_name: str) -> dict[str, Any]:
    """An edit or variation: multipart uploads, or stored images named by id in JSON."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": form(form_name),
            "application/json": {"schema": ref(json_name)},
        },
    }


def multipart_body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": form(name)}}


def form(name: str) -> dict[str, Any]:
    """A multipart body: its schema, and image parts typed as the images they carry."""
    image_types = ", ".join(CONTENT_TYPES.values())
    return {
        "schema": ref(name),
        "encoding": {
            "image": {"contentType": image_types},
            "image[]": {"contentType": image_types},
            "mask": {"contentType": "image/png"},
        },
    }


# --- answers ------------------------------------------------------------------------------


def binary(description: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": with_request_id(headers),
        "content": {
            media: {"schema": {"type": "string", "contentMediaType": media}}
            for media in CONTENT_TYPES.values()
        },
    }


def storing_response() -> dict[str, Any]:
    """The 202 of a synchronous call whose images were made while the image store (or its
    database) could not be reached: kept, and stored once it answers (storage/spool.py)."""
    return {
        "202": {
            "description": "The images were made (and paid for) while the image store or its "
            "database could not be reached: kept by this replica and stored, with these ids, "
            "once it answers (a StoringJob). Poll Location after Retry-After.",
            "headers": with_request_id(
                {
                    "Location": header("/jobs/{job_id}: poll it.", required=True),
                    "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                }
            ),
            "content": {"application/json": {"schema": ref("StoringJob")}},
        }
    }


def accepted_response() -> dict[str, Any]:
    """The 202 of a route that answered asynchronously."""
    return {
        "202": {
            "description": "Accepted as an asynchronous job (Prefer: respond-async), or, "
            "without Prefer, made while the image store (or its database) could not be "
            "reached: the images are kept and stored once it answers (a StoringJob, "
            "`status: storing`; Preference-Applied is then absent).",
            "headers": with_request_id(
                {
                    "Location": header("/jobs/{job_id}: poll it.", required=True),
                    "Preference-Applied": header("`respond-async` (absent for a StoringJob)."),
                    "Retry-After": {"$ref": "#/components/headers/Retry-After"},
                }
            ),
            "content": {
                "application/json": {"schema": {"oneOf": [ref("PendingJob"), ref("StoringJob")]}}
            },
            "links": {
                "GetJob": {
                    "operationId": "getJob",
                    "parameters": {"job_id": "$response.body#/job_id"},
                },
                "GetJobEvents": {
                    "operationId": "getJobEvents",
                    "parameters": {"job_id": "$response.body#/job_id"},
                },
            },
        }
    }


def input_errors(*, schema: str = "Error", stored: bool = True) -> dict[str, Any]:
    """The errors of an edit or variation: generation's, plus unknown stored ids (404) and
    upload limits (413)."""
    statuses = (400, 404, 413, 415, 429, 500, 502, 504, 507) if stored else (400, 413, 415)
    responses = errors(*statuses, schema=schema)
    if not stored:
        responses.update(errors(429, 500, 502, 504, 507, schema=schema))
    else:
        responses["404"]["description"] = (
            "No stored image has the id named (`image_id`, a `file_id`, or an `image_url` of "
            "/images/{image_id}) (IMAGE_NOT_FOUND)."
        )
    responses["413"]["description"] = (
        "The multipart body (or an edit's JSON body) is over IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES, "
        "one file (or data URL image) over IMAGE_GEN_MAX_UPLOAD_BYTES, or a variation's JSON "
        "body over 1 MiB."
    )
    responses["415"]["description"] = (
        "The body is neither multipart/form-data nor application/json."
        if stored
        else "The body is not multipart/form-data."
    )
    return responses


# A stored job and its images: the 200 of POST /generate, /edit and /variations.
STORED_JOB = json_response("The stored job and a URL for each image.", "Job")


# --- what GET and HEAD /images/{image_id} share --------------------------------------------


def _image_parameters() -> tuple[dict[str, Any], ...]:
    """The image id, the thumbnail query and the conditional request headers."""
    edge = {"type": "integer", "minimum": MIN_EDGE, "maximum": MAX_EDGE}
    return (
        IMAGE_ID,
        query(
            "width",
            "Answer a thumbnail at most this many pixels wide, keeping the aspect ratio and "
            "never enlarging (an image narrower than this comes at its own size). The "
            "thumbnail is cached: asking again is a file read. Without `width` and `height` "
            "the stored image itself is answered.",
            edge,
        ),
        query(
            "height",
            "Answer a thumbnail at most this many pixels high (with `width`: fit in both).",
            edge,
        ),
        query(
            "format",
            "The thumbnail's format (default: the image's own); only with `width` or `height`. "
            "JPEG thumbnails of transparent images are flattened on white.",
            {"type": "string", "enum": list(CONTENT_TYPES)},
        ),
        header_param("If-None-Match", "An ETag from an earlier answer: 304 if it matches."),
        header_param("Range", "A byte range, e.g. `bytes=0-99`: 206 with those bytes."),
    )


IMAGE_PARAMETERS = _image_parameters()
IMAGE_HEADERS = {
    "ETag": header(
        "The image id, quoted: a strong validator; for a thumbnail the id and the variant "
        '(`"<id>-w256.png"`).',
        required=True,
    ),
    "Cache-Control": header("How long a client may keep the image."),
    "Content-Disposition": header("inline, with the stored (or thumbnail's) file name."),
}
