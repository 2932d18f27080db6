"""The MCP tools: each an adapter over the service's own HTTP API (mcp.loopback), with its
schemas (mcp.schemas) and the hints a host shows. Results carry ids, URLs as resource links
and costs, never image bytes unless the caller asks for small inline thumbnails.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imagegen import strictjson
from imagegen.catalog.spec import SHUT_DOWN
from imagegen.imaging.formats import CONTENT_TYPES, OUTPUT_CONTENT_TYPES, OUTPUT_EXTENSIONS
from imagegen.mcp import protocol
from imagegen.mcp.loopback import Answer, absolute, call
from imagegen.mcp.protocol import THUMBNAIL_FORMAT, THUMBNAIL_WIDTH, UUID, is_structured
from imagegen.mcp.schemas import (
    CATALOG,
    DELETED,
    IMAGE_PAGE,
    JOB_OUTPUT,
    MCP_ARGUMENTS,
    UUID_STRING,
    edit_schema,
    fixed,
    generate_schema,
)

DEFAULT_LIST_LIMIT = 20


class ArgumentError(Exception):
    """A tool argument the MCP layer itself checks is wrong: a tool error the agent can fix."""


@dataclass
class ToolResult:
    """A tool's answer: structured data, a summary, resource links, and inline images."""

    structured: dict[str, Any]
    summary: str
    links: list[dict[str, Any]]
    images: list[dict[str, Any]]

    def render(self, version: str) -> dict[str, Any]:
        """The CallToolResult for `version` (2025-03-26 knows no links or structured output)."""
        content: list[dict[str, Any]] = [
            {"type": "text", "text": self.summary},
            {"type": "text", "text": strictjson.dumps(self.structured, ensure_ascii=False)},
        ]
        if is_structured(version):
            content += [{"type": "resource_link", **link} for link in self.links]
        content += self.images
        result: dict[str, Any] = {"content": content, "isError": False}
        if is_structured(version):
            result["structuredContent"] = self.structured
        return result


def failure(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A tool error the agent can act on: its code, message and details, in text."""
    text = f"{code}: {message}"
    if details:
        text += "\n" + strictjson.dumps(dict(details), ensure_ascii=False)
    return {"content": [{"type": "text", "text": text}], "isError": True}


class ToolFailure(Exception):
    """A tool's call to the HTTP API failed: the result is this error, with isError."""

    def __init__(self, answer: Answer) -> None:
        body = answer.error()
        super().__init__(body["error"])
        details = {k: v for k, v in body.items() if k not in ("error", "status", "code")}
        retry_after = details.get("retry_after") or answer.headers.get("Retry-After")
        if retry_after is not None:
            details["retry_after"] = int(retry_after) if str(retry_after).isdigit() else retry_after
        details["http_status"] = answer.status
        self.code = str(body.get("code", "SERVICE_ERROR"))
        self.message = body["error"]
        if retry_after is not None:
            self.message += f" (retry_after: {details['retry_after']} seconds)"
        self.details = details


@dataclass(frozen=True)
class Tool:
    """One MCP tool: its schemas (built from the catalog when listed) and its adapter."""

    name: str
    title: str
    description: str
    input_schema: Callable[[str, Any], dict[str, Any]]
    output_schema: dict[str, Any]
    hints: dict[str, bool]
    adapter: Callable[[dict[str, Any]], ToolResult]


# --- arguments the MCP layer reads itself ------------------------------------------------


def _flag(arguments: dict[str, Any], name: str) -> bool:
    value = arguments.pop(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ArgumentError(f"'{name}' must be true or false.")
    return value


def _text(arguments: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = arguments.pop(name, None)
    if value is None:
        if required:
            raise ArgumentError(f"'{name}' is required.")
        return None
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"'{name}' must be a non-empty string.")
    return value


def _uuid(arguments: dict[str, Any], name: str, what: str) -> str:
    value = _text(arguments, name, required=True)
    assert value is not None
    if not UUID.match(value):
        raise ArgumentError(f"'{name}' must be {what} id (a UUID such as the tools answer).")
    return value


def _no_more(arguments: dict[str, Any]) -> None:
    if arguments:
        raise ArgumentError(
            f"Unknown argument(s): {', '.join(sorted(arguments))[:200]}; tools/list has the schema."
        )


# --- the tools ----------------------------------------------------------------------------


def _generate(arguments: dict[str, Any]) -> ToolResult:
    """POST /generate with the arguments as the body; 202 when `background_job` asks."""
    body = dict(arguments)
    thumbnail, background = _flag(body, "thumbnail"), _flag(body, "background_job")
    headers = _idempotency(body)
    if background:
        headers["Prefer"] = "respond-async"
    answer = call("POST", "/generate", body=body, headers=headers)
    return _job_result(answer, thumbnail=thumbnail)


def _edit(arguments: dict[str, Any]) -> ToolResult:
    """POST /edit with stored images named by id."""
    body = dict(arguments)
    thumbnail = _flag(body, "thumbnail")
    headers = _idempotency(body)
    answer = call("POST", "/edit", body=body, headers=headers)
    return _job_result(answer, thumbnail=thumbnail)


def _idempotency(body: dict[str, Any]) -> dict[str, str]:
    key = _text(body, "idempotency_key")
    return {"Idempotency-Key": key} if key is not None else {}


def _get_job(arguments: dict[str, Any]) -> ToolResult:
    """GET /jobs/<job_id>: a finished job's images, or a running one's progress."""
    arguments = dict(arguments)
    job_id = _uuid(arguments, "job_id", "a job")
    thumbnail = _flag(arguments, "thumbnail")
    _no_more(arguments)
    return _job_result(call("GET", f"/jobs/{job_id}"), thumbnail=thumbnail)


def _list_images(arguments: dict[str, Any]) -> ToolResult:
    """GET /images: a page of stored images, newest first."""
    arguments = dict(arguments)
    limit = arguments.pop("limit", DEFAULT_LIST_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
        raise ArgumentError("'limit' must be an integer from 1 to 200.")
    query = {"limit": str(limit)}
    cursor = _text(arguments, "cursor")
    if cursor is not None:
        query["cursor"] = cursor
    if arguments.get("job_id") is not None:
        query["job_id"] = _uuid(arguments, "job_id", "a job")
    arguments.pop("job_id", None)
    _no_more(arguments)
    answer = call("GET", "/images", query=query)
    if answer.status != 200:
        raise ToolFailure(answer)
    page = answer.json()
    images = [
        {**image, "url": absolute(image["url"]), "thumbnail_url": thumbnail_url(image["url"])}
        for image in page["images"]
    ]
    structured = {"images": images, "next_cursor": page.get("next_cursor")}
    more = " More with cursor=next_cursor." if page.get("next_cursor") else ""
    summary = f"{len(images)} image(s), newest first.{more}"
    links = [resource(image) for image in page["images"]]
    return ToolResult(structured, summary, links, [])


def _delete_image(arguments: dict[str, Any]) -> ToolResult:
    """DELETE /images/<image_id>."""
    arguments = dict(arguments)
    image_id = _uuid(arguments, "image_id", "an image")
    _no_more(arguments)
    answer = call("DELETE", f"/images/{image_id}")
    if answer.status != 200:
        raise ToolFailure(answer)
    body = answer.json()
    structured = {"id": body["id"], "job_id": body["job_id"], "deleted": True}
    return ToolResult(structured, body["message"], [], [])


def _list_models(arguments: dict[str, Any]) -> ToolResult:
    """GET /models, without the source links (the agent needs the facts, not their pages)."""
    _no_more(dict(arguments))
    answer = call("GET", "/models")
    if answer.status != 200:
        raise ToolFailure(answer)
    catalog = _without_sources(answer.json())
    usable = [m["id"] for m in catalog["models"] if m["status"] != SHUT_DOWN]
    summary = (
        f"{len(catalog['models'])} models; usable now: {', '.join(usable)}; default "
        f"{catalog['default_model']}. Each lists its sizes (or size_rule), count range and "
        "options; edits says whether edit_image takes it."
    )
    return ToolResult(catalog, summary, [], [])


def _without_sources(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_sources(v) for k, v in value.items() if k != "source"}
    if isinstance(value, list):
        return [_without_sources(v) for v in value]
    return value


def _job_result(answer: Answer, *, thumbnail: bool) -> ToolResult:
    """A job answer (200 stored, 202 accepted, or a pending/failed job) as a tool result."""
    if answer.status not in (200, 202):
        raise ToolFailure(answer)
    body = answer.json()
    structured: dict[str, Any] = {
        "job_id": body["job_id"],
        "status": body["status"],
        "model": body.get("model"),
        "placeholder": bool(body.get("placeholder", False)),
        "images": [_job_image(image) for image in body.get("images", [])],
    }
    for key in ("cost", "usage", "progress", "warnings"):
        if body.get(key) is not None:
            structured[key] = body[key]
    status = body["status"]
    if status == "failed":
        structured["error"] = body.get("error")
        structured["code"] = body.get("code")
    retry_after = answer.headers.get("Retry-After")
    if status in ("queued", "running", "storing") and retry_after and retry_after.isdigit():
        structured["retry_after"] = int(retry_after)
    # A storing job's images (kept until the store is back) are not served yet.
    stored = status != "storing"
    available = [image for image in body.get("images", []) if stored and image.get("url")]
    links = [resource(image) for image in available]
    images: list[dict[str, Any]] = []
    if thumbnail:
        images, omitted = _thumbnails([image["id"] for image in available])
        if omitted:
            structured["thumbnails_omitted"] = omitted
    return ToolResult(structured, _job_summary(structured), links, images)


def _job_image(image: dict[str, Any]) -> dict[str, Any]:
    url = image.get("url")
    return {
        "id": image["id"],
        "url": absolute(url) if url else None,
        "thumbnail_url": thumbnail_url(url) if url else None,
        "size": image.get("size"),
        "width": image.get("width"),
        "height": image.get("height"),
        "format": image.get("format"),
        "revised_prompt": image.get("revised_prompt"),
        "status": image.get("status", "available"),
    }


def thumbnail_url(path: str) -> str:
    return f"{absolute(path)}?width={THUMBNAIL_WIDTH}"


def _job_summary(job: dict[str, Any]) -> str:
    status, job_id = job["status"], job["job_id"]
    if status == "completed":
        cost = job.get("cost") or {}
        usd = cost.get("usd")
        priced = f"; cost ${usd:.4f} ({cost.get('basis')})" if usd is not None else ""
        if usd is None and cost.get("basis") == "unpriced":
            priced = "; cost unknown (the model has no price)"
        kind = " placeholder" if job.get("placeholder") else ""
        return (
            f"Job {job_id} completed: {len(job['images'])}{kind} image(s) with {job['model']}"
            f"{priced}. Each image's URL is a resource link; read it with resources/read "
            f"(?width={THUMBNAIL_WIDTH} for a small copy)."
        )
    if status == "failed":
        return f"Job {job_id} failed: {job.get('code')}: {job.get('error')}"
    progress = job.get("progress") or {}
    done = (
        f" ({progress['images_done']} of {progress['count']} image(s) done)"
        if "images_done" in progress and "count" in progress
        else ""
    )
    wait = job.get("retry_after", 2)
    return f"Job {job_id} is {status}{done}. Call get_job with this job_id in {wait} s."


def _thumbnails(image_ids: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Small JPEG copies of the images as image content, within protocol.MAX_INLINE_BYTES of base64.

    Returns the content items and how many were left out to stay within the bound.
    """
    items: list[dict[str, Any]] = []
    omitted = 0
    budget = protocol.MAX_INLINE_BYTES
    for image_id in image_ids:
        answer = call(
            "GET",
            f"/images/{image_id}",
            query={"width": str(THUMBNAIL_WIDTH), "format": THUMBNAIL_FORMAT},
            max_bytes=budget * 3 // 4,
        )
        if answer.status != 200 or answer.truncated:
            omitted += 1
            continue
        data = base64.b64encode(answer.body).decode("ascii")
        budget -= len(data)
        items.append({"type": "image", "data": data, "mimeType": CONTENT_TYPES[THUMBNAIL_FORMAT]})
    return items, omitted


def resource(image: dict[str, Any], *, titled: bool = True) -> dict[str, Any]:
    """A stored image as a resource (resources/list) or a resource link (tool results)."""
    fmt = image.get("format") or "png"
    entry: dict[str, Any] = {
        "uri": absolute(image["url"]),
        "name": f"{image['id']}.{OUTPUT_EXTENSIONS.get(fmt, fmt)}",
        "description": _image_description(image),
        "mimeType": OUTPUT_CONTENT_TYPES.get(fmt, "application/octet-stream"),
    }
    if titled and image.get("prompt"):
        entry["title"] = shorten(image["prompt"], 80)
    return entry


def _image_description(image: dict[str, Any]) -> str:
    parts = [
        f"{image.get('model') or 'image'}, {image.get('width')}x{image.get('height')} "
        f"{image.get('format')}"
    ]
    if image.get("revised_prompt"):
        parts.append(f"revised prompt: {shorten(image['revised_prompt'], 300)}")
    parts.append(f"a {THUMBNAIL_WIDTH}-pixel copy: {thumbnail_url(image['url'])}")
    return "; ".join(parts)


def shorten(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_COSTS = "Errors are results with isError: the text starts with the error code."

# Tool annotations (hints to the host; tools/list copies them).
_READ_ONLY = {"readOnlyHint": True, "openWorldHint": False}
_MAKES_IMAGES = {
    "readOnlyHint": False,
    "destructiveHint": False,
    "idempotentHint": False,
    "openWorldHint": True,
}

TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name="list_models",
            title="List image models",
            description="The image models this service offers: for each its status (active, "
            "deprecated with a shut-down date and replacement, legacy, shut_down), the sizes "
            "it takes (or its size rule), how many images per call, each option's allowed "
            "values, and whether edit_image takes it. Call it before choosing a model, size "
            "or option you are not sure of.",
            input_schema=fixed({"type": "object", "additionalProperties": False}),
            output_schema=CATALOG,
            hints=_READ_ONLY,
            adapter=_list_models,
        ),
        Tool(
            name="generate_image",
            title="Generate images",
            description="Generate images from a text prompt with OpenAI's image models (the "
            "service holds the OpenAI key). Answers the job: job_id, and for each image its "
            "id, its URL as a resource link, the revised prompt, plus the cost in US dollars. "
            "No image bytes by default: read a link with resources/read (?width=256 for a "
            "small copy) or set thumbnail: true. Takes 10-60 s, minutes at high quality or "
            "large sizes: set background_job: true to get a job_id at once and poll get_job. "
            "A field the chosen model does not take is refused (list_models says which). "
            + _COSTS
            + " QUOTA_EXCEEDED: the key holder's cap is reached, wait retry_after seconds; "
            "PERMISSION_DENIED: your token may not use that model, size, quality or count "
            "(the message lists what it may); CONTENT_POLICY_VIOLATION: rephrase the prompt.",
            input_schema=generate_schema,
            output_schema=JOB_OUTPUT,
            hints=_MAKES_IMAGES,
            adapter=_generate,
        ),
        Tool(
            name="edit_image",
            title="Edit images",
            description="Make new images from stored ones and a prompt: image_id (or "
            "image_ids) names images this service stores, e.g. from generate_image; an "
            "optional mask_id marks the area to change. The prompt describes the whole "
            "result, not only the change. Answers a new job like generate_image (the inputs "
            "are kept). Only models whose list_models entry has edits take it. " + _COSTS,
            input_schema=edit_schema,
            output_schema=JOB_OUTPUT,
            hints=_MAKES_IMAGES,
            adapter=_edit,
        ),
        Tool(
            name="get_job",
            title="Get a job",
            description="A job by id: when completed, its images (URLs as resource links, "
            "revised prompts) and cost; while queued or running, its progress and retry_after "
            "(seconds to wait before asking again); when failed, its error code and message. "
            "Use it to follow generate_image with background_job: true.",
            input_schema=fixed(
                {
                    "type": "object",
                    "properties": {
                        "job_id": {**UUID_STRING, "description": "The job_id a tool answered."},
                        "thumbnail": MCP_ARGUMENTS["thumbnail"],
                    },
                    "required": ["job_id"],
                    "additionalProperties": False,
                }
            ),
            output_schema=JOB_OUTPUT,
            hints=_READ_ONLY,
            adapter=_get_job,
        ),
        Tool(
            name="list_images",
            title="List stored images",
            description="Images this service stores, newest first, with their prompts, sizes "
            "and URLs (as resource links). Page with cursor (the previous answer's "
            "next_cursor); job_id keeps one job's images.",
            input_schema=fixed(
                {
                    "type": "object",
                    "properties": {
                        "limit": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 200,
                            "default": DEFAULT_LIST_LIMIT,
                            "description": "Images per page.",
                        },
                        "cursor": {
                            "type": "string",
                            "description": "next_cursor from the previous page.",
                        },
                        "job_id": {**UUID_STRING, "description": "Only this job's images."},
                    },
                    "additionalProperties": False,
                }
            ),
            output_schema=IMAGE_PAGE,
            hints=_READ_ONLY,
            adapter=_list_images,
        ),
        Tool(
            name="delete_image",
            title="Delete an image",
            description="Delete one stored image by id (its file is removed; its job keeps "
            "the record). Only the token that made it (or an admin) may. Cannot be undone.",
            input_schema=fixed(
                {
                    "type": "object",
                    "properties": {"image_id": {**UUID_STRING, "description": "The image's id."}},
                    "required": ["image_id"],
                    "additionalProperties": False,
                }
            ),
            output_schema=DELETED,
            hints={
                "readOnlyHint": False,
                "destructiveHint": True,
                "idempotentHint": True,
                "openWorldHint": False,
            },
            adapter=_delete_image,
        ),
    )
}
