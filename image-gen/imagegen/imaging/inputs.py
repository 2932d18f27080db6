"""The input images of edits and variations, checked against what the model takes.

Input images are recognised by their content (PNG, JPEG, WebP), whatever their name, and
checked against the model's documented limits before any upstream call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from imagegen import clock
from imagegen.catalog.models import CATALOG
from imagegen.catalog.spec import MIB, SHUT_DOWN, InputSpec, IntRange, ModelSpec
from imagegen.errors import ValidationError
from imagegen.imaging.formats import CONTENT_TYPES, identify, png_has_alpha
from imagegen.imaging.request import ImageRequest, _checked, _model

OPERATIONS = {"edit": "edits", "variation": "variations"}  # operation -> its endpoint's name
_SPECS: dict[str, Callable[[ModelSpec], InputSpec | None]] = {
    "edit": lambda model: model.edits,
    "variation": lambda model: model.variations,
}


def operation_spec(model: ModelSpec, operation: str) -> InputSpec | None:
    """What `model` takes for an edit or a variation; None if it cannot do it."""
    return _SPECS[operation](model)


@dataclass(frozen=True)
class InputImage:
    """One input image of an edit or variation: its bytes, recognised by content, and origin."""

    data: bytes
    format: str
    width: int
    height: int
    field: str  # the request field it came in: "image", "image_ids", "mask_id", ...
    label: str  # how messages name it, e.g. "image 2 ('cat.png')"
    origin: Mapping[str, Any]  # what metadata records of its origin, e.g. {"image_id": ...}

    @classmethod
    def from_bytes(
        cls, data: bytes, *, field: str, label: str, origin: Mapping[str, Any] | None = None
    ) -> InputImage:
        """Recognise the bytes as PNG, JPEG or WebP whatever the file is called; 400 if not."""
        info = identify(data)
        if info is None:
            raise ValidationError(
                f"{capital(label)} is not a PNG, JPEG or WebP image (checked by its content, not "
                "its name).",
                details={"field": field},
            )
        return cls(data, info.format, info.width, info.height, field, label, origin or {})

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def has_alpha(self) -> bool:
        """Whether the image is a PNG with an alpha channel (or a transparent colour)."""
        return self.format == "png" and png_has_alpha(self.data)

    def record(self) -> dict[str, Any]:
        """What a job's metadata records about this input: never its bytes."""
        return {
            **self.origin,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class ImageInputs:
    """The images (and optional mask) an edit or variation starts from."""

    images: tuple[InputImage, ...]
    mask: InputImage | None = None
    markup: InputImage | None = None  # GPT Image 2.6: where to edit, drawn on a clear PNG

    def source(self) -> dict[str, Any]:
        """The job's `source` metadata: where each input came from and its digest."""
        source = {
            "images": [image.record() for image in self.images],
            "mask": self.mask.record() if self.mask else None,
        }
        if self.markup is not None:
            source["markup"] = self.markup.record()
        return source

    @property
    def extras(self) -> tuple[InputImage, ...]:
        """The mask and the markup, those sent."""
        return tuple(image for image in (self.mask, self.markup) if image is not None)


def parse_edit_request(
    body: Any,
    inputs: ImageInputs,
    *,
    operation: str,
    default_model: str,
    form: bool = False,
    today: dt.date | None = None,
) -> ImageRequest:
    """Check an edit's or variation's fields and input images against the model's catalog entry.

    `operation` is "edit" or "variation". With `form`, the fields came as multipart text, so
    integer fields are read from their digits.
    """
    if not isinstance(body, dict):
        raise ValidationError("The request body must be a JSON object.")
    today = today or clock.today()
    model = _model(body.get("model"), default_model, today)
    spec = input_spec(model, operation, today)
    if form:
        body = _from_form(body, spec)
    image_request = _checked(
        body,
        model,
        spec.options,
        default_size=spec.default_size or model.default_size,
        needs_prompt=spec.prompt,
        endpoint=f" {OPERATIONS[operation]}",
    )
    check_inputs(model, spec, inputs)
    rule = image_request.output_rule
    if inputs.mask is not None and rule is not None and not rule.mask:
        raise ValidationError(
            f"{model.id} takes no mask for {rule.format.upper()} output.",
            details={"field": inputs.mask.field},
        )
    return image_request


def input_spec(model: ModelSpec, operation: str, today: dt.date | None = None) -> InputSpec:
    """What `model` takes for this operation; a 400 naming the models that can do it if none."""
    spec = operation_spec(model, operation)
    if spec is not None:
        return spec
    able = [m.id for m in _able(operation, today or clock.today())]
    verb = "edit images" if operation == "edit" else "make variations"
    raise ValidationError(
        f"Model {model.id} cannot {verb}. Models that can: {', '.join(able)}.",
        details={"field": "model"},
    )


def default_model_for(operation: str, preferred: str, today: dt.date | None = None) -> str:
    """The model an edit or variation uses when none is named: the service's default model if
    it can, else the first usable catalog model that can (dall-e-2 for variations)."""
    model = CATALOG.get(preferred)
    if model is not None and operation_spec(model, operation) is not None:
        return preferred
    return next((m.id for m in _able(operation, today or clock.today())), preferred)


def _able(operation: str, today: dt.date) -> list[ModelSpec]:
    """The usable catalog models that can do this operation, in catalog order."""
    return [
        m
        for m in CATALOG.values()
        if operation_spec(m, operation) is not None and m.status(today) != SHUT_DOWN
    ]


MAX_INPUT_IMAGES = max(
    spec.max_images
    for model in CATALOG.values()
    for spec in (model.edits, model.variations)
    if spec is not None
)


def check_inputs(model: ModelSpec, spec: InputSpec, inputs: ImageInputs) -> None:
    """The input images and mask against the model's documented limits, before any upstream call."""
    images, mask = inputs.images, inputs.mask
    if not images:
        raise ValidationError("An input image is required ('image').", details={"field": "image"})
    if len(images) > spec.max_images:
        raise ValidationError(
            f"{model.id} takes at most {spec.max_images} input image(s); {len(images)} were sent.",
            details={"field": images[-1].field},
        )
    for image in images:
        if image.format not in spec.formats:
            raise ValidationError(
                f"{capital(image.label)} is a {image.format.upper()} image; {model.id} takes "
                f"{_listed(spec.formats)} only.",
                details={"field": image.field},
            )
        if len(image.data) >= spec.max_image_bytes:
            raise ValidationError(
                f"{capital(image.label)} is {len(image.data):,} bytes; {model.id} takes "
                f"images under {_megabytes(spec.max_image_bytes)}.",
                details={"field": image.field},
            )
        if spec.square and image.width != image.height:
            raise ValidationError(
                f"{capital(image.label)} is {image.width}x{image.height}; {model.id} takes square "
                "images only.",
                details={"field": image.field},
            )
    first = images[0]
    if inputs.markup is not None:
        _check_markup(model, spec, inputs.markup, first, mask, several=len(images) > 1)
    if mask is None:
        if spec.transparent_without_mask and not first.has_alpha():
            raise ValidationError(
                f"{model.id} edits the transparent areas of the image: send a PNG with an "
                "alpha channel, or a mask.",
                details={"field": first.field},
            )
        return
    if not spec.mask:
        raise ValidationError(f"{model.id} takes no mask.", details={"field": mask.field})
    _check_overlay(
        model,
        mask,
        first,
        "mask",
        "fully transparent where the image should change",
        spec.max_mask_bytes,
        several=len(images) > 1,
    )


def _check_markup(
    model: ModelSpec,
    spec: InputSpec,
    markup: InputImage,
    first: InputImage,
    mask: InputImage | None,
    *,
    several: bool,
) -> None:
    """A markup: only where the model takes one, never with a mask, and an overlay."""
    if not spec.markup:
        able = [m.id for m in CATALOG.values() if m.edits is not None and m.edits.markup]
        raise ValidationError(
            f"{model.id} takes no markup. Models that do: {', '.join(able) or 'none'}.",
            details={"field": markup.field},
        )
    if mask is not None:
        raise ValidationError(
            "Send a mask or a markup, not both: the markup shows where to edit, the mask "
            "which pixels may change.",
            details={"field": markup.field},
        )
    _check_overlay(
        model,
        markup,
        first,
        "markup",
        "clear except where you drew",
        spec.max_image_bytes,
        several=several,
    )


def _check_overlay(
    model: ModelSpec,
    overlay: InputImage,
    first: InputImage,
    what: str,
    meaning: str,
    max_bytes: int,
    *,
    several: bool,
) -> None:
    """A mask or a markup: a PNG with an alpha channel, under `max_bytes`, with the first
    image's dimensions."""
    if overlay.format != "png" or not overlay.has_alpha():
        raise ValidationError(
            f"The {what} must be a PNG with an alpha channel ({meaning}); {overlay.label} is a "
            f"{overlay.format.upper()} image"
            + (" without one." if overlay.format == "png" else "."),
            details={"field": overlay.field},
        )
    if len(overlay.data) >= max_bytes:
        raise ValidationError(
            f"The {what} is {len(overlay.data):,} bytes; {model.id} takes {what}s under "
            f"{_megabytes(max_bytes)}.",
            details={"field": overlay.field},
        )
    if (overlay.width, overlay.height) != (first.width, first.height):
        raise ValidationError(
            f"The {what} is {overlay.width}x{overlay.height}; it must have the dimensions of "
            f"the {'first ' if several else ''}image, {first.width}x{first.height}.",
            details={"field": overlay.field},
        )


def _from_form(body: dict[str, Any], spec: InputSpec) -> dict[str, Any]:
    """Multipart text fields as JSON would carry them: integer fields from their digits."""
    integers = {"count"} | {n for n, o in spec.options.items() if isinstance(o, IntRange)}
    return {
        key: int(value)
        if key in integers and isinstance(value, str) and value.isascii() and value.isdigit()
        else value
        for key, value in body.items()
    }


def capital(label: str) -> str:
    """A label such as "the mask" at the start of a sentence."""
    return label[:1].upper() + label[1:]


def _listed(formats: tuple[str, ...]) -> str:
    names = [name.upper() for name in formats]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _megabytes(limit: int) -> str:
    return f"{limit // MIB} MB" if limit % MIB == 0 else f"{limit:,} bytes"
