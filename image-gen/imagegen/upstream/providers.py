"""Where images come from: OpenAI (or a compatible upstream), or the keyless placeholder."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from imagegen.catalog.spec import ModelSpec, OutputRule
from imagegen.errors import (
    ContentPolicyViolation,
    RateLimited,
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
    ValidationError,
)
from imagegen.imaging.formats import EXTENSIONS, decode_base64, identify, identify_output
from imagegen.imaging.inputs import ImageInputs
from imagegen.imaging.placeholder import placeholder_image
from imagegen.imaging.request import COMMON_FIELDS, END_USER_FIELDS, ImageRequest
from imagegen.upstream.client import OpenAIClient, add_usage
from imagegen.upstream.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    InvalidResponseError,
    OpenAIError,
)
from imagegen.upstream.retry import Deadline
from imagegen.upstream.transport import FormFile

log = logging.getLogger(__name__)
T = TypeVar("T")

_SAFETY_CODES = {"moderation_blocked", "content_policy_violation", "content_filter"}
_ECHOED = ("quality", "size", "background", "output_format")
_MODEL_GONE_CODES = {"model_not_found", "model_deprecated", "model_shutdown", "model_not_available"}
_INPUT_FIELDS = ("image", "image[]", "mask", "markup")
_PLACEHOLDER_MAX_EDGE = 2048  # placeholder edits at size "auto" follow the input, up to this
_PLACEHOLDER_GIF_FRAME = 512  # a placeholder GIF's frames at size "auto"
# A usage report is believed only if every count in it is a whole number from 0 to this. One
# upstream call reports well under 1.5 million tokens (10 images of gpt-image-2 at its
# largest size and dearest quality, or an edit with 16 inputs), so this is about 70 times
# the most, and its cost (a few thousand dollars per count at most) stays an exact float.
MAX_USAGE_TOKENS = 10**8
_USAGE_DEPTH = 3  # the report, its *_details, and one level below those


@dataclass(frozen=True)
class GeneratedImage:
    """One image's checked bytes and what the upstream said about it."""

    data: bytes
    format: str
    width: int
    height: int
    revised_prompt: str | None = None


@dataclass(frozen=True)
class Generation:
    images: list[GeneratedImage]
    usage: dict[str, Any] | None = None
    placeholder: bool = False
    # The upstream reported a usage that cannot be true (see checked_usage): not trusted for
    # the cost and not kept in `usage`.
    usage_invalid: bool = False
    # What the upstream says it made (quality, size, background, output_format), e.g. when
    # "auto" was asked for.
    upstream: dict[str, Any] | None = None
    served_by: str | None = None  # the named upstream that made it (upstream/routing.py)


class Progress(Protocol):
    """Told how a generation goes, as it goes (asynchronous jobs show it to their callers)."""

    def partial(self, image: int, index: int, data: bytes, fmt: str) -> None:
        """Partial preview `index` of image `image` (0-based in the request) arrived."""

    def image(self, image: int, generated: GeneratedImage) -> None:
        """Image `image` is finished (the job is stored once all are)."""


class Provider(Protocol):
    """Where images come from: what every provider does, for every operation."""

    name: str

    def generate(self, request: ImageRequest, deadline: Deadline) -> Generation: ...

    def generate_with_progress(
        self, request: ImageRequest, deadline: Deadline, progress: Progress, partial_images: int
    ) -> Generation:
        """`generate`, telling `progress` about partial previews (up to `partial_images` per
        image, where the upstream streams them) and each finished image."""
        ...

    def edit(
        self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline
    ) -> Generation: ...

    def vary(
        self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline
    ) -> Generation: ...


class PlaceholderProvider:
    """No key, no upstream call: deterministic PNGs of the requested size."""

    name = "placeholder"

    def generate(self, request: ImageRequest, deadline: Deadline) -> Generation:
        width, height = _dimensions(request.size)
        images = [
            _placeholder(request, request.prompt, width, height, index)
            for index in range(request.count)
        ]
        return Generation(images, placeholder=True)

    def generate_with_progress(
        self, request: ImageRequest, deadline: Deadline, progress: Progress, partial_images: int = 0
    ) -> Generation:
        """`generate`, reporting each image as it is drawn (there are no partial previews)."""
        generation = self.generate(request, deadline)
        for index, image in enumerate(generation.images):
            progress.image(index, image)
        return generation

    def edit(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        """Deterministic PNGs seeded by the prompt and the inputs' digests."""
        return self._derived(request, inputs, f"edit\x00{request.prompt}")

    def vary(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        """Deterministic PNGs seeded by the input's digest."""
        return self._derived(request, inputs, "variation")

    def _derived(self, request: ImageRequest, inputs: ImageInputs, seed: str) -> Generation:
        digest = hashlib.sha256()
        for image in (*inputs.images, *inputs.extras):
            digest.update(image.sha256.encode())
        if request.size == "auto":  # like the upstream: the output follows the first input
            first = inputs.images[0]
            scale = min(1.0, _PLACEHOLDER_MAX_EDGE / max(first.width, first.height))
            width = max(1, round(first.width * scale))
            height = max(1, round(first.height * scale))
        else:
            width, height = _dimensions(request.size)
        key = f"{seed}\x00{digest.hexdigest()}"
        images = [
            _placeholder(request, key, width, height, index) for index in range(request.count)
        ]
        return Generation(images, placeholder=True)


class MissingKeyProvider:
    """Stands in for OpenAI when no key is configured, so /generate explains what to do."""

    name = "openai"

    def generate(self, request: ImageRequest, deadline: Deadline) -> Generation:
        raise _no_key()

    def generate_with_progress(
        self, request: ImageRequest, deadline: Deadline, progress: Progress, partial_images: int
    ) -> Generation:
        raise _no_key()

    def edit(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        raise _no_key()

    def vary(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        raise _no_key()


def _no_key() -> ServiceError:
    return ServiceError(
        "No OpenAI API key is configured. Mount it as the Docker secret openai_api_key "
        "(see OPENAI_API_KEY_FILE), or run with IMAGE_GEN_PROVIDER=placeholder to try the "
        "service without one."
    )


class OpenAIProvider:
    """Generates through the OpenAI Images API, fanning out models that make one per call."""

    name = "openai"

    def __init__(self, client: OpenAIClient, *, max_parallel: int, current_model: str) -> None:
        self.client = client
        self.max_parallel = max_parallel
        self.current_model = current_model

    def generate(self, request: ImageRequest, deadline: Deadline) -> Generation:
        return self._fan_out(
            request,
            lambda _, n: self.client.generate_images(self.payload(request, n), deadline),
            deadline,
        )

    def generate_with_progress(
        self, request: ImageRequest, deadline: Deadline, progress: Progress, partial_images: int = 0
    ) -> Generation:
        """`generate`, telling `progress` about each partial preview and each finished image.

        With `partial_images` (1-3) a GPT Image model streams (`stream`, `partial_images`),
        one upstream call per image so each preview belongs to one image, the calls in
        parallel. Otherwise the calls are `generate`'s, each reporting its images as it ends.
        """
        rule = request.output_rule
        streaming = (
            partial_images > 0
            and request.model.family == "gpt-image"
            and (rule is None or rule.partials)  # GIF and SVG stream no previews
        )

        def send(start: int, n: int) -> dict[str, Any]:
            payload = self.payload(request, n)
            if not streaming:
                return self.client.generate_images(payload, deadline)
            return self.client.stream_images(
                {**payload, "partial_images": partial_images},
                deadline,
                lambda event: self._relay(event, start, progress, request.model),
            )

        return self._fan_out(
            request, send, deadline, per_call=1 if streaming else None, progress=progress
        )

    def _relay(
        self, event: dict[str, Any], image: int, progress: Progress, model: ModelSpec
    ) -> None:
        """Pass a partial preview on; one that is not a usable image (larger than the model
        makes, too) is skipped, not fatal."""
        if not event["type"].endswith(".partial_image"):
            return
        index = event.get("partial_image_index")
        try:
            data = decode_base64(event["b64_json"])
        except (ValueError, TypeError):
            data = b""
        info = identify(data) if len(data) <= self.client.max_image_bytes else None
        if info is None or not isinstance(index, int) or not 0 <= index <= 9:
            log.warning("skipping an unusable partial image from the upstream")
            return
        too_large = _beyond_model(model, info.width, info.height)
        if too_large:
            log.warning("skipping a partial image from the upstream: %s", too_large)
            return
        progress.partial(image, index, data, info.format)

    def _parallel(self, fn: Callable[..., T], calls: list[tuple[Any, ...]]) -> list[T]:
        """Run fn over calls, at most `max_parallel` at once; results in order.

        The first failure is raised once every started call has ended; calls not yet
        started are cancelled.
        """
        if len(calls) == 1:
            return [fn(*calls[0])]
        with ThreadPoolExecutor(
            max_workers=min(len(calls), self.max_parallel), thread_name_prefix="upstream"
        ) as pool:
            futures = [pool.submit(fn, *args) for args in calls]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def payload(self, request: ImageRequest, n: int) -> dict[str, Any]:
        """The upstream JSON body: always `model` (a snapshot's own id), only options the
        model takes, and the end user's identifier when there is one."""
        body = {
            "model": request.model.id,
            "prompt": request.prompt,
            "n": n,
            "size": request.size,
            **request.options,
        }
        if request.safety_identifier is not None:
            body[request.model.end_user_field] = request.safety_identifier
        return body

    def _image(
        self, item: Any, deadline: Deadline, model: ModelSpec, rule: OutputRule | None
    ) -> GeneratedImage:
        """One `data` item's image: its bytes (decoded or downloaded), checked to be of the
        kind asked for (`rule`: the GIF or SVG the request's output format names, else None
        for a PNG, JPEG or WebP) and, a raster, no larger than the model makes;
        InvalidResponseError otherwise."""
        if not isinstance(item, dict):
            raise InvalidResponseError("an item in the upstream's 'data' is not an object")
        encoded = item.get("b64_json")  # a str, or a memoryview of the answer's bytes
        if isinstance(encoded, str | memoryview):
            try:
                data = decode_base64(encoded)
            except ValueError:
                raise InvalidResponseError("the upstream sent invalid base64 image data") from None
        elif isinstance(item.get("url"), str):
            data = self.client.download(item["url"], deadline)
        else:
            raise InvalidResponseError("an upstream image has neither 'b64_json' nor 'url'")
        if len(data) > self.client.max_image_bytes:
            raise InvalidResponseError("an upstream image is larger than allowed")
        # Only the kind asked for: an SVG handed for a PNG would slip past an SVG's one image
        # per request, and reach a client that asked for a raster.
        made = [rule.format.upper()] if rule else ["PNG", "JPEG", "WebP"]
        info = identify_output(data)
        if info is None or info.format.upper() not in [name.upper() for name in made]:
            listed = made[0] if len(made) == 1 else ", ".join(made[:-1]) + " or " + made[-1]
            raise InvalidResponseError(f"the upstream sent bytes that are not a {listed} image")
        # A drawing's width and height are coordinates, not pixels made: only rasters are
        # held to the model's largest output.
        too_large = None if info.format == "svg" else _beyond_model(model, info.width, info.height)
        if too_large:
            raise InvalidResponseError(f"the upstream sent {too_large}")
        most = rule.frames.steps[-1] if rule and rule.frames else 1
        if info.frames > most:
            raise InvalidResponseError(
                f"the upstream sent a GIF of {info.frames:,} frames; a sheet holds {most}"
            )
        revised = item.get("revised_prompt")
        return GeneratedImage(
            data,
            info.format,
            info.width,
            info.height,
            revised if isinstance(revised, str) else None,
        )

    def edit(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        """Edit through POST /images/edits (multipart), fanning out like `generate`."""
        files = self.form_files(inputs)
        return self._fan_out(
            request,
            lambda _, n: self.client.edit_images(self.form_fields(request, n), files, deadline),
            deadline,
        )

    def vary(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        """Variations through POST /images/variations (multipart)."""
        files = self.form_files(inputs)
        return self._fan_out(
            request,
            lambda _, n: self.client.create_variation(
                self.form_fields(request, n), files, deadline
            ),
            deadline,
        )

    def form_fields(self, request: ImageRequest, n: int) -> list[tuple[str, str]]:
        """The multipart text fields: always `model`; the prompt if any; the model's options."""
        fields = [("model", request.model.id)]
        if request.prompt:
            fields.append(("prompt", request.prompt))
        fields += [("n", str(n)), ("size", request.size)]
        fields += [(name, str(value)) for name, value in request.options.items()]
        if request.safety_identifier is not None:
            fields.append((request.model.end_user_field, request.safety_identifier))
        return fields

    def form_files(self, inputs: ImageInputs) -> list[FormFile]:
        """The image parts: `image` for one image, `image[]` for several (as OpenAI's API
        reference sends them), then `mask`. File names are ours, never the client's."""
        field = "image" if len(inputs.images) == 1 else "image[]"
        files = [
            FormFile(
                field,
                f"image-{number}.{EXTENSIONS[image.format]}",
                image.content_type,
                image.data,
            )
            for number, image in enumerate(inputs.images, start=1)
        ]
        if inputs.mask is not None:
            files.append(FormFile("mask", "mask.png", "image/png", inputs.mask.data))
        if inputs.markup is not None:
            files.append(FormFile("markup", "markup.png", "image/png", inputs.markup.data))
        return files

    def _fan_out(
        self,
        request: ImageRequest,
        send: Callable[[int, int], dict[str, Any]],
        deadline: Deadline,
        *,
        per_call: int | None = None,
        progress: Progress | None = None,
    ) -> Generation:
        """`request.count` images in upstream calls of at most `per_call` (the model's by
        default), in parallel; `send(start, n)` makes the call for images start..start+n.
        Each finished image is reported to `progress`, if given, as its call ends."""
        per_call = per_call or request.model.per_call

        def call(start: int, n: int) -> Generation:
            part = self._collect(lambda n: send(start, n), n, deadline, request)
            if progress is not None:
                for offset, image in enumerate(part.images):
                    progress.image(start + offset, image)
            return part

        batches = [
            (start, min(per_call, request.count - start))
            for start in range(0, request.count, per_call)
        ]
        try:
            parts = self._parallel(call, batches)
        except OpenAIError as exc:
            raise self._service_error(exc, request) from None
        invalid = any(part.usage_invalid for part in parts)  # then the total is false too
        return Generation(
            [image for part in parts for image in part.images],
            usage=None if invalid else add_usage([part.usage for part in parts]),
            usage_invalid=invalid,
            upstream=parts[0].upstream,
        )

    def _collect(
        self,
        send: Callable[[int], dict[str, Any]],
        n: int,
        deadline: Deadline,
        request: ImageRequest,
    ) -> Generation:
        """One upstream call for `n` images: the checked images, usage and echoed settings.

        A usage report that cannot be true is logged and left out (`usage_invalid`)."""
        answer = send(n)
        items = answer["data"]
        if len(items) != n:
            raise InvalidResponseError(
                f"asked for {n} image(s), the upstream returned {len(items)}"
            )
        rule = request.output_rule
        images = self._parallel(
            self._image, [(item, deadline, request.model, rule) for item in items]
        )
        echoed = {k: answer[k] for k in _ECHOED if isinstance(answer.get(k), str)}
        usage, invalid = answer.get("usage"), False
        if usage is not None:
            try:
                usage = checked_usage(usage)
            except ValueError as exc:
                log.warning("the upstream's usage report is not believed: %s", exc)
                usage, invalid = None, True
        return Generation(images, usage=usage, usage_invalid=invalid, upstream=echoed or None)

    def _service_error(self, exc: OpenAIError, request: ImageRequest) -> ServiceError:
        """Translate an upstream failure into the error the client should act on."""
        if isinstance(exc, APITimeoutError):
            return UpstreamTimeout(
                "The image service upstream did not answer in time. "
                "Try again, perhaps with a lower quality or smaller size."
            )
        if isinstance(exc, APIConnectionError):
            log.warning("upstream connection failed: %s", exc)
            return UpstreamError("Cannot reach the image service upstream; try again later.")
        if isinstance(exc, InvalidResponseError):
            log.warning("unusable upstream answer: %s", exc)
            return UpstreamError(f"The image service upstream sent an unusable answer: {exc}.")
        assert isinstance(exc, APIStatusError)
        log.warning(
            "upstream error status=%s code=%s type=%s request_id=%s",
            exc.status,
            exc.code,
            exc.type,
            exc.request_id,
        )
        if exc.code in _SAFETY_CODES or (
            exc.type == "image_generation_user_error" and "safety" in exc.message.lower()
        ):
            return ContentPolicyViolation(
                "The prompt was rejected by the upstream safety system. Change the prompt and "
                f"try again. Upstream said: {exc.message}",
            )
        if exc.status in (401, 403):
            return ServiceError(
                "The service's OpenAI credentials were rejected; the operator "
                "must check the configured API key."
            )
        if exc.status == 429:
            if exc.code == "insufficient_quota" or exc.type == "insufficient_quota":
                return ServiceError(
                    "The OpenAI account behind this service has no quota left; "
                    "the operator must add credit."
                )
            return RateLimited(
                "OpenAI's rate limit was reached; retry after the time in Retry-After.",
                retry_after=exc.retry_after,
            )
        if (
            exc.code in _MODEL_GONE_CODES
            or exc.status == 404
            or (exc.param == "model" and exc.status < 500)
        ):
            return ValidationError(
                f"The upstream does not serve model {request.model.id}; use "
                f"{self.current_model} instead (GET /models lists the models).",
                details={"field": "model", "replacement": self.current_model},
            )
        if 400 <= exc.status < 500:
            known = exc.param in (
                *COMMON_FIELDS,
                *END_USER_FIELDS,
                *request.model.options,
                *_INPUT_FIELDS,
            )
            return ValidationError(
                f"The upstream rejected the request: {exc.message}",
                details={"field": exc.param} if known else None,
            )
        return UpstreamError(
            f"The image service upstream failed (HTTP {exc.status}); try again later."
        )


def _beyond_model(model: ModelSpec, width: int, height: int) -> str | None:
    """What is wrong with an upstream image of this size, if it is larger than `model` makes
    (no model's answer can be: a header declaring 50000x50000 is a lie or a bomb)."""
    bounds = model.largest_output
    if bounds.allows(width, height):
        return None
    return (
        f"a {width}x{height} image, larger than {model.id} makes "
        f"(at most {bounds.max_edge} pixels a side and {bounds.max_pixels:,} in all)"
    )


def _placeholder(
    request: ImageRequest, seed: str, width: int, height: int, index: int
) -> GeneratedImage:
    """A placeholder in the requested output format: a mosaic PNG (also for JPEG and WebP,
    as before), an SVG drawing, or a GIF of `frame_count` mosaics."""
    fmt = request.options.get("output_format")
    fmt = fmt if fmt in ("gif", "svg") else "png"
    if fmt == "gif" and request.size == "auto":
        width = height = _PLACEHOLDER_GIF_FRAME
    frames = int(request.option("frame_count") or 2)
    duration = int(request.option("frame_duration_ms") or 200)
    data = placeholder_image(fmt, seed, width, height, index, frames=frames, duration_ms=duration)
    return GeneratedImage(data, fmt, width, height)


def _dimensions(size: str) -> tuple[int, int]:
    if "x" not in size:  # "auto"
        return 1024, 1024
    width, height = size.split("x")
    return int(width), int(height)


def checked_usage(report: Any, depth: int = 1) -> dict[str, Any]:
    """The counts of one upstream answer's usage report; ValueError saying what is wrong.

    Every number in it, nested details included, must be a whole number from 0 to
    MAX_USAGE_TOKENS: a report with a negative, fractional, non-finite or absurd count
    (10**308 output tokens) is false as a whole. Values that are not numbers (text, null,
    true) are not counts and are left out, so nothing but counts is kept or echoed.
    """
    if not isinstance(report, dict):
        raise ValueError(f"it is a {type(report).__name__}, not an object")
    counts: dict[str, Any] = {}
    for key, value in report.items():
        name = str(key)[:40]
        if isinstance(value, dict):
            if depth >= _USAGE_DEPTH:
                raise ValueError(f"{name!r} is nested too deeply")
            counts[key] = checked_usage(value, depth + 1)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not isinstance(value, int) or not 0 <= value <= MAX_USAGE_TOKENS:
                raise ValueError(f"{name!r} is not a whole number from 0 to {MAX_USAGE_TOKENS:,}")
            counts[key] = value
    return counts
