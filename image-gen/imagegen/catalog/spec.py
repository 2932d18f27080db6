"""The terms the catalog is written in: a model's options, sizes, inputs and lifecycle.

`ModelSpec` says what one model accepts (sizes, counts, options and their rules, edits and
variations) and where it stands in OpenAI's lifecycle on a given day.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACTIVE = "active"


DEPRECATED = "deprecated"  # still served, with a shut-down date announced


SHUT_DOWN = "shut_down"  # refused locally, naming the replacement


LEGACY = "legacy"  # OpenAI stopped serving it; sent upstream for OpenAI-compatible providers


@dataclass(frozen=True)
class Choice:
    """A string option with a fixed set of values."""

    values: tuple[str, ...]

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise ValueError(f"'{name}' must be one of {', '.join(self.values)}")
        return value

    def describe(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True)
class IntRange:
    """An integer option within inclusive bounds."""

    low: int
    high: int

    def check(self, name: str, value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (self.low <= value <= self.high)
        ):
            raise ValueError(f"'{name}' must be an integer from {self.low} to {self.high}")
        return value

    def describe(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class Requires:
    """`option` (optionally only when it has `value`) needs `other` to be one of `allowed`."""

    option: str
    other: str
    allowed: tuple[str, ...]
    value: str | None = None


_SIZE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")


@dataclass(frozen=True)
class SizeRule:
    """Any `WxH` within bounds, as the newer GPT Image models accept."""

    multiple: int
    max_edge: int
    max_ratio: float
    min_pixels: int
    max_pixels: int

    def allows(self, size: str) -> bool:
        match = _SIZE.fullmatch(size)
        if not match:
            return False
        width, height = int(match[1]), int(match[2])
        return (
            width % self.multiple == 0
            and height % self.multiple == 0
            and max(width, height) <= self.max_edge
            and max(width, height) / min(width, height) <= self.max_ratio
            and self.min_pixels <= width * height <= self.max_pixels
        )

    def describe(self) -> str:
        return (
            f"any WxH with both edges multiples of {self.multiple}, longest edge at most "
            f"{self.max_edge}, aspect ratio at most {self.max_ratio:g}:1, and "
            f"{self.min_pixels:,} to {self.max_pixels:,} pixels in total"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "multiple_of": self.multiple,
            "max_edge": self.max_edge,
            "max_aspect_ratio": self.max_ratio,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }


@dataclass(frozen=True)
class OutputBounds:
    """The largest image a model makes: its longest edge and its pixel count."""

    max_edge: int
    max_pixels: int

    def allows(self, width: int, height: int) -> bool:
        return max(width, height) <= self.max_edge and width * height <= self.max_pixels

    def as_dict(self) -> dict[str, int]:
        return {"max_edge": self.max_edge, "max_pixels": self.max_pixels}


@dataclass(frozen=True)
class FrameSheet:
    """How an animation's frames are made: laid out on one sheet, whose cells are the frame
    count rounded up to a step; the sheet must fit the model's pixel budget.

    `size` then names one frame (edges multiples of `multiple`); `steps` are the largest
    frame count of each step with its cell count, as the frames are billed.
    """

    steps: tuple[int, ...]  # the top frame count of each step: 8, 9, 12, 16
    multiple: int
    min_pixels: int
    max_pixels: int

    def cells(self, frame_count: int) -> int:
        """The cells of the sheet for `frame_count` frames (its billing step)."""
        return next((top for top in self.steps if frame_count <= top), self.steps[-1])

    def allows(self, size: str, frame_count: int) -> bool:
        if size == "auto":
            return True
        match = _SIZE.fullmatch(size)
        if not match:
            return False
        width, height = int(match[1]), int(match[2])
        sheet = width * height * self.cells(frame_count)
        return (
            width % self.multiple == 0
            and height % self.multiple == 0
            and self.min_pixels <= sheet <= self.max_pixels
        )

    def describe(self, frame_count: int) -> str:
        return (
            f"'auto' or one frame's WxH with both edges multiples of {self.multiple}, where "
            f"the frame's pixels times {self.cells(frame_count)} (the sheet of {frame_count} "
            f"frames) come to {self.min_pixels:,} to {self.max_pixels:,}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "frame_steps": list(self.steps),
            "multiple_of": self.multiple,
            "min_sheet_pixels": self.min_pixels,
            "max_sheet_pixels": self.max_pixels,
        }


@dataclass(frozen=True)
class OutputRule:
    """What a model's output format changes: fewer images, no mask or previews, frames."""

    format: str
    max_count: int | None = None  # None: the model's own
    mask: bool = True  # an edit may carry a mask
    partials: bool = True  # the upstream can stream partial previews
    frames: FrameSheet | None = None  # an animation: `size` is one frame's
    default_size: str | None = None  # None: the model's own
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_count": self.max_count,
            "mask": self.mask,
            "partial_images": self.partials,
            "frames": self.frames.as_dict() if self.frames else None,
            "default_size": self.default_size,
            "source": self.source,
        }


MIB = 1024 * 1024


@dataclass(frozen=True)
class InputSpec:
    """What one image-input endpoint (edits or variations) takes for a model.

    The limits are the upstream's documented ones, checked before any upstream call; the
    service's own upload limits are settings.
    """

    max_images: int  # input images per request
    formats: tuple[str, ...]  # recognised by content: png, jpeg, webp
    max_image_bytes: int  # per input image
    options: Mapping[str, Choice | IntRange] = field(default_factory=dict)
    prompt: bool = True  # variations take no prompt
    mask: bool = False  # takes a mask: a PNG with an alpha channel, the first image's size
    max_mask_bytes: int = 4 * MIB
    # Takes a markup: a transparent PNG the size of the first image, drawn on (arrows,
    # circles, notes) where the edit goes; never with a mask.
    markup: bool = False
    square: bool = False  # input images must be square
    transparent_without_mask: bool = False  # no mask: the image's own alpha is the mask
    default_size: str | None = None  # None: the model's default size
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """The capability as `GET /models` shows it."""
        return {
            "max_images": self.max_images,
            "formats": list(self.formats),
            "max_image_bytes": self.max_image_bytes,
            "prompt": self.prompt,
            "mask": self.mask,
            "max_mask_bytes": self.max_mask_bytes if self.mask else None,
            "markup": self.markup,
            "square": self.square,
            "default_size": self.default_size,
            "options": {name: spec.describe() for name, spec in self.options.items()},
            "source": self.source,
        }


@dataclass(frozen=True)
class ModelSpec:
    """One model: its lifecycle, what it accepts and how its upstream answers."""

    id: str
    family: str  # "gpt-image" (answers b64_json) or "dall-e" (answers url by default)
    description: str
    sizes: tuple[str, ...]
    default_size: str
    max_count: int
    per_call: int  # images one upstream call may return; count above it fans out
    max_prompt_chars: int
    options: Mapping[str, Choice | IntRange] = field(default_factory=dict)
    option_defaults: Mapping[str, str | int] = field(default_factory=dict)  # upstream's
    # Output formats with rules of their own (GIF, SVG); the others follow the model's.
    output_rules: tuple[OutputRule, ...] = ()
    requires: tuple[Requires, ...] = ()
    size_rule: SizeRule | None = None
    deprecated_on: dt.date | None = None
    shutdown_on: dt.date | None = None
    replacement: str | None = None
    legacy: bool = False
    source: str = ""
    edits: InputSpec | None = None  # POST /edit: images (and a prompt) in, images out
    variations: InputSpec | None = None  # POST /variations: one image in, variations out
    snapshot_of: str | None = None  # a dated snapshot: validated and priced like this base
    # The upstream field that names the end user: OpenAI's `safety_identifier`, or the
    # `user` of the DALL-E API (which has no safety_identifier).
    end_user_field: str = "safety_identifier"

    def named_in(self, names: frozenset[str] | set[str]) -> bool:
        """Whether a list of model names covers this model: its id, or its base's for a
        snapshot (a token allowed `gpt-image-2` may pin `gpt-image-2-2026-04-21`)."""
        return self.id in names or (self.snapshot_of is not None and self.snapshot_of in names)

    def status(self, today: dt.date) -> str:
        if self.legacy:
            return LEGACY
        if self.shutdown_on and today >= self.shutdown_on:
            return SHUT_DOWN
        if self.deprecated_on and today >= self.deprecated_on:
            return DEPRECATED
        return ACTIVE

    def warnings(self, today: dt.date) -> list[str]:
        """What an answer made with this model tells the caller: its shutdown date, if near."""
        if self.status(today) != DEPRECATED:
            return []
        return [f"Model {self.id} shuts down on {self.shutdown_on}; move to {self.replacement}."]

    def output_rule(self, fmt: str | None) -> OutputRule | None:
        """The rule of an output format (None: the model's own rules apply)."""
        return next((rule for rule in self.output_rules if rule.format == fmt), None)

    def allows_size(self, size: str) -> bool:
        return size in self.sizes or bool(self.size_rule and self.size_rule.allows(size))

    @property
    def largest_output(self) -> OutputBounds:
        """The largest image the model makes, at any size it takes ("auto", edits and
        variations included): the bounds of its listed sizes and of its size rule."""
        listed = [(int(m[1]), int(m[2])) for s in self.sizes if (m := _SIZE.fullmatch(s))]
        edges = [max(size) for size in listed]
        pixels = [width * height for width, height in listed]
        if self.size_rule is not None:
            edges.append(self.size_rule.max_edge)
            pixels.append(self.size_rule.max_pixels)
        return OutputBounds(max(edges), max(pixels))

    def describe(self, today: dt.date) -> dict[str, Any]:
        """The model as `GET /models` shows it to an agent."""
        return {
            "id": self.id,
            "snapshot_of": self.snapshot_of,
            "family": self.family,
            "status": self.status(today),
            "description": self.description,
            "deprecated_on": _iso(self.deprecated_on),
            "shutdown_on": _iso(self.shutdown_on),
            "replacement": self.replacement,
            "count": {"min": 1, "max": self.max_count},
            "max_prompt_chars": self.max_prompt_chars,
            "sizes": list(self.sizes),
            "size_rule": self.size_rule.as_dict() if self.size_rule else None,
            "largest_output": self.largest_output.as_dict(),
            "default_size": self.default_size,
            "options": {
                name: {**spec.describe(), "default": self.option_defaults.get(name)}
                for name, spec in self.options.items()
            },
            "output_formats": {rule.format: rule.as_dict() for rule in self.output_rules},
            "edits": self.edits.describe() if self.edits else None,
            "variations": self.variations.describe() if self.variations else None,
            "source": self.source,
        }


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None
