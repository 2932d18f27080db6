"""Turn a client's JSON body into a checked `ImageRequest`, reading the model catalog."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from imagegen import clock, strictjson
from imagegen.catalog.models import CATALOG
from imagegen.catalog.spec import SHUT_DOWN, Choice, IntRange, ModelSpec, OutputRule
from imagegen.errors import ValidationError

COMMON_FIELDS = ("prompt", "count", "model", "size")
# Who the end user is, for OpenAI's abuse monitoring: the caller's own value, sent upstream
# as given (`safety_identifier` wins; `user` is its deprecated name). Without one, a token's
# caller is identified by a hash of the token's name (`identified`).
END_USER_FIELDS = ("safety_identifier", "user")
# OpenAI's limit for a safety_identifier, read 2026-12-02: "a maximum length of 64
# characters" (the Responses reference, quoted on learn.microsoft.com, ResponseObject.
# SafetyIdentifier). A translation of OpenAI's safety-checks guide (w3cschool.cn, 2026-11-09)
# gives 128 for image requests; no OpenAI page in English was found to confirm it, so the
# stricter 64 holds here.
MAX_SAFETY_IDENTIFIER = 64
_IDENTIFIER_PREFIX = "imagegen-"
_PRINTABLE = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"  # the schemas' rough form of isprintable


def read_json(request: Request) -> Any:
    """The request's JSON body; 415 unless it is JSON, 400 (VALIDATION_ERROR) if malformed."""
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as JSON with 'Content-Type: application/json'.")
    limit = request.max_content_length
    # A chunked body has no length to check up front, and Werkzeug stops reading it at the
    # limit without saying so: a body that fills the limit is taken as over it.
    if (
        request.content_length is None
        and limit is not None
        and len(request.get_data(cache=True)) >= limit
    ):
        raise RequestEntityTooLarge()
    try:
        return strictjson.loads(request.get_data(cache=True))
    except RecursionError:
        raise ValidationError("The JSON body is nested too deeply.") from None
    except ValueError as exc:  # json.JSONDecodeError, a non-finite number, bad UTF-8
        raise ValidationError(f"The body is not valid JSON: {str(exc)[:200]}.") from None


@dataclass(frozen=True)
class ImageRequest:
    """A validated generation request."""

    prompt: str
    model: ModelSpec
    count: int
    size: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # The end user's identifier sent upstream (never stored or logged): the caller's own,
    # or after `identified` the hash of its token's name.
    safety_identifier: str | None = None

    def option(self, name: str) -> Any:
        """An option as the upstream uses it: the caller's value, else the model's
        documented default (None when neither is known)."""
        return self.options.get(name, self.model.option_defaults.get(name))

    @property
    def output_rule(self) -> OutputRule | None:
        """The rule of the output format asked for (None: the model's own rules apply)."""
        return self.model.output_rule(self.options.get("output_format"))

    def as_dict(self) -> dict[str, Any]:
        """The request as metadata records it."""
        return {
            "prompt": self.prompt,
            "model": self.model.id,
            "count": self.count,
            "size": self.size,
            **self.options,
        }


def parse_generate_request(
    body: Any, *, default_model: str, today: dt.date | None = None
) -> ImageRequest:
    """Check every field against the catalog; raise ValidationError naming what is wrong."""
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.")
    today = today or clock.today()

    model = _model(body.get("model"), default_model, today)
    return _checked(body, model, model.options, default_size=model.default_size)


def _checked(
    body: dict[str, Any],
    model: ModelSpec,
    taken: Mapping[str, Choice | IntRange],
    *,
    default_size: str,
    needs_prompt: bool = True,
    endpoint: str = "",
) -> ImageRequest:
    """Check a body's fields for `model`, which takes the options `taken` on this endpoint."""
    common = set(COMMON_FIELDS) if needs_prompt else set(COMMON_FIELDS) - {"prompt"}
    allowed = common | set(taken)
    unknown = sorted(
        str(key)[:64] for key in body if key not in allowed and key not in END_USER_FIELDS
    )
    if unknown:
        listed = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" * (len(unknown) > 10))
        raise ValidationError(
            f"Unknown or unsupported field(s) for model {model.id}{endpoint}: {listed}. "
            f"{_taken_elsewhere(unknown[0])}It accepts: {', '.join(sorted(allowed))}.",
            details={"field": unknown[0]},
        )
    prompt = _prompt(body, model) if needs_prompt else ""
    options = _options(body, model, taken)
    rule = model.output_rule(options.get("output_format"))
    return ImageRequest(
        prompt=prompt,
        model=model,
        count=_count(body, model, rule),
        size=_size(body, model, default_size, rule, options),
        options=options,
        safety_identifier=_end_user(body),
    )


def _taken_elsewhere(name: str) -> str:
    """A hint naming the models that take an option this one does not ("" if none do)."""
    takers = [
        m.id
        for m in CATALOG.values()
        if m.snapshot_of is None
        and (name in m.options or (m.edits is not None and name in m.edits.options))
    ]
    return f"'{name}' is taken by {', '.join(takers)} only. " if takers else ""


def _end_user(body: dict[str, Any]) -> str | None:
    """The caller's own end-user identifier: `safety_identifier`, else `user`; empty is none."""
    for name in END_USER_FIELDS:
        value = body.get(name)
        if value is None or value == "":
            continue
        if (
            not isinstance(value, str)
            or not value.isprintable()
            or len(value) > MAX_SAFETY_IDENTIFIER
        ):
            raise ValidationError(
                f"'{name}' must be a string of up to {MAX_SAFETY_IDENTIFIER} printable "
                "characters: a stable id of your end user (a hash, not an email address).",
                details={"field": name},
            )
        return value
    return None


def end_user_schema() -> dict[str, dict[str, Any]]:
    """The end-user fields as JSON Schema properties, for the OpenAPI and MCP schemas."""
    text = {"type": "string", "maxLength": MAX_SAFETY_IDENTIFIER, "pattern": _PRINTABLE}
    return {
        "safety_identifier": {
            **text,
            "description": "Your end user's stable id (a hash, not an email address), sent "
            "upstream as given for OpenAI's abuse monitoring; without it a token's caller is "
            "identified by a hash of the token's name.",
        },
        "user": {**text, "description": "The older name of `safety_identifier`."},
    }


def safety_identifier_for(token_name: str) -> str:
    """The stable identifier of a token's caller: a truncated SHA-256 of the token's name
    (never of the token), prefixed, within OpenAI's 64 characters."""
    digest = hashlib.sha256(f"image-gen token name\x00{token_name}".encode()).hexdigest()
    return _IDENTIFIER_PREFIX + digest[:48]


def identified(request: ImageRequest, token_name: str | None) -> ImageRequest:
    """The request with the end user's identifier to send upstream: the caller's own if it
    gave one, else the hash of its token's name (`token_name` None: an open service, where
    every caller would share one identifier, so none is sent)."""
    if request.safety_identifier is not None or token_name is None:
        return request
    return dataclasses.replace(request, safety_identifier=safety_identifier_for(token_name))


def _prompt(body: dict[str, Any], model: ModelSpec) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValidationError(
            "'prompt' is required and must be a non-empty string.", details={"field": "prompt"}
        )
    if not _is_utf8(prompt):
        raise ValidationError(
            "'prompt' contains characters that are not valid Unicode (a lone surrogate).",
            details={"field": "prompt"},
        )
    if len(prompt) > model.max_prompt_chars:
        raise ValidationError(
            f"'prompt' is {len(prompt):,} characters; {model.id} accepts at most "
            f"{model.max_prompt_chars:,}.",
            details={"field": "prompt"},
        )
    return prompt


def _count(body: dict[str, Any], model: ModelSpec, rule: OutputRule | None) -> int:
    count = body.get("count")
    if count is None:
        count = 1
    most = model.max_count if rule is None or rule.max_count is None else rule.max_count
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
        kind = f" {rule.format.upper()}" if most != model.max_count and rule else ""
        raise ValidationError(
            f"'count' must be an integer from 1 to {most} for{kind} {model.id}"
            + (" images." if kind else "."),
            details={"field": "count"},
        )
    return count


def _size(
    body: dict[str, Any],
    model: ModelSpec,
    default_size: str,
    rule: OutputRule | None,
    options: Mapping[str, Any],
) -> str:
    size = body.get("size")
    frames, kind = (rule.frames, rule.format.upper()) if rule else (None, "")
    if size is None:
        size = rule.default_size if rule and rule.default_size else default_size
    if frames is not None:  # an animation: `size` is one frame's
        frame_count = options.get("frame_count", model.option_defaults.get("frame_count", 1))
        if not isinstance(size, str) or not frames.allows(size, int(frame_count)):
            raise ValidationError(
                f"'size' {size!r} is not accepted for a {kind} of "
                f"{frame_count} frames by {model.id}. It accepts "
                f"{frames.describe(int(frame_count))}.",
                details={"field": "size"},
            )
        return size
    if not isinstance(size, str) or not model.allows_size(size):
        accepted = ", ".join(model.sizes)
        if model.size_rule:
            accepted += f", or {model.size_rule.describe()}"
        raise ValidationError(
            f"'size' {size!r} is not accepted by {model.id}. It accepts: {accepted}.",
            details={"field": "size"},
        )
    return size


def _options(
    body: dict[str, Any], model: ModelSpec, taken: Mapping[str, Choice | IntRange]
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, spec in taken.items():
        value = body.get(name)
        if value is None:
            continue
        try:
            options[name] = spec.check(name, value)
        except ValueError as exc:
            raise ValidationError(f"{exc} for {model.id}.", details={"field": name}) from None

    for rule in model.requires:
        value = options.get(rule.option)
        if value is None or (rule.value is not None and value != rule.value):
            continue
        other = options.get(rule.other, model.option_defaults.get(rule.other))
        if other not in rule.allowed:
            shown = f"'{rule.option}': {value!r}" if rule.value else f"'{rule.option}'"
            raise ValidationError(
                f"{shown} needs '{rule.other}' to be one of {', '.join(rule.allowed)}.",
                details={"field": rule.option},
            )
    return options


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _model(value: Any, default_model: str, today: dt.date) -> ModelSpec:
    model_id = default_model if value is None else value
    if not isinstance(model_id, str):
        raise ValidationError("'model' must be a string.", details={"field": "model"})
    model = CATALOG.get(model_id)
    if model is None:
        available = sorted(m.id for m in CATALOG.values() if m.status(today) != SHUT_DOWN)
        raise ValidationError(
            f"Unknown model {model_id!r}. Available: {', '.join(available)} "
            "(GET /models describes each).",
            details={"field": "model"},
        )
    if model.status(today) == SHUT_DOWN:
        raise ValidationError(
            f"Model {model.id} was shut down on {model.shutdown_on}; use {model.replacement} "
            "instead.",
            details={"field": "model", "replacement": model.replacement},
        )
    return model
