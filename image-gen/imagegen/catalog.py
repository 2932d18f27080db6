"""The model catalog: which models exist, what each accepts, and where that was read.

Validation reads this data; adding a model means adding an entry here, not new branches.
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
    option_defaults: Mapping[str, str] = field(default_factory=dict)  # upstream's defaults
    requires: tuple[Requires, ...] = ()
    size_rule: SizeRule | None = None
    deprecated_on: dt.date | None = None
    shutdown_on: dt.date | None = None
    replacement: str | None = None
    legacy: bool = False
    source: str = ""
    edits: InputSpec | None = None  # POST /edit: images (and a prompt) in, images out
    variations: InputSpec | None = None  # POST /variations: one image in, variations out

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
            "edits": self.edits.describe() if self.edits else None,
            "variations": self.variations.describe() if self.variations else None,
            "source": self.source,
        }


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


# --- The data ----------------------------------------------------------------------------
# Read on 2026-11-25 from stored copies of OpenAI's pages (see each entry's `source`):
#   guide   https://developers.openai.com/api/docs/guides/image-generation (copy of 2026-07-27):
#           sizes rule for gpt-image-2, no transparent background on gpt-image-2, 32,000-char
#           prompts, output_compression only with jpeg/webp, response_format/style DALL-E only.
#   deprecations  https://developers.openai.com/api/docs/deprecations: gpt-image-1 shut down
#           2026-10-23 (notice 2026-04-22); gpt-image-1-mini, gpt-image-1.5 and
#           chatgpt-image-latest shut down 2026-12-01 (notice 2026-06-02), replacements
#           gpt-image-2.6-sunburst / -flare; dall-e-2 and dall-e-3 shut down 2026-05-12.
#   2.5/2.6 xhigh|max quality and transparent backgrounds: OpenAI's model pages name the models;
#           the extra values are from launch notes by API resellers, not yet an OpenAI page.

_GUIDE = "https://developers.openai.com/api/docs/guides/image-generation"
_DEPRECATIONS = "https://developers.openai.com/api/docs/deprecations"

_GPT_IMAGE_OPTIONS: dict[str, Choice | IntRange] = {
    "quality": Choice(("low", "medium", "high", "auto")),
    "background": Choice(("transparent", "opaque", "auto")),
    "moderation": Choice(("low", "auto")),
    "output_format": Choice(("png", "jpeg", "webp")),
    "output_compression": IntRange(0, 100),
}
_GPT_IMAGE_2_OPTIONS = {**_GPT_IMAGE_OPTIONS, "background": Choice(("opaque", "auto"))}
_XHIGH_OPTIONS = {
    **_GPT_IMAGE_OPTIONS,
    "quality": Choice(("low", "medium", "high", "xhigh", "max", "auto")),
}
_GPT_IMAGE_REQUIRES = (
    Requires("output_compression", "output_format", ("jpeg", "webp")),
    Requires("background", "output_format", ("png", "webp"), value="transparent"),
)
_GPT_IMAGE_1_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
_FLEXIBLE = SizeRule(
    multiple=16, max_edge=3840, max_ratio=3.0, min_pixels=655_360, max_pixels=8_294_400
)
_FLEXIBLE_SIZES = (
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "2048x2048",
    "2048x1152",
    "3840x2160",
    "2160x3840",
    "auto",
)


# Edits and variations: read on 2026-11-25 from OpenAI's API reference (as the docstrings of
# openai-python 3.57.0's images.edit and images.create_variation carry it):
#   GPT Image models edit up to 16 png, webp or jpg images, each under 50 MB, with an optional
#   mask: a PNG under 4 MB with the first image's dimensions, whose transparent areas are
#   edited. The edit endpoint takes quality, background, output_format and output_compression
#   but not moderation. input_fidelity: high|low on gpt-image-1.5, only low on
#   gpt-image-1-mini, "omit this parameter" on gpt-image-2 (nothing said for later models, so
#   they do not take it either). Sizes default to auto.
#   dall-e-2 edits one square PNG under 4 MB; without a mask its transparent areas are edited.
#   Variations: dall-e-2 only (the endpoint is retired at OpenAI), one square PNG under 4 MB.
_EDITS_REFERENCE = "https://platform.openai.com/docs/api-reference/images/createEdit"
_VARIATIONS_REFERENCE = "https://platform.openai.com/docs/api-reference/images/createVariation"


def _gpt_edits(
    options: Mapping[str, Choice | IntRange], input_fidelity: Choice | None
) -> InputSpec:
    taken = {name: spec for name, spec in options.items() if name != "moderation"}
    if input_fidelity is not None:
        taken["input_fidelity"] = input_fidelity
    return InputSpec(
        max_images=16,
        formats=("png", "jpeg", "webp"),
        max_image_bytes=50 * MIB,
        options=taken,
        mask=True,
        default_size="auto",
        source=_EDITS_REFERENCE,
    )


def _gpt_image(
    model_id: str,
    description: str,
    *,
    flexible: bool = True,
    options: Mapping[str, Choice | IntRange] = _GPT_IMAGE_OPTIONS,
    input_fidelity: Choice | None = None,
    source: str = _GUIDE,
    **lifecycle: Any,
) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        family="gpt-image",
        description=description,
        sizes=_FLEXIBLE_SIZES if flexible else _GPT_IMAGE_1_SIZES,
        size_rule=_FLEXIBLE if flexible else None,
        default_size="1024x1024",
        max_count=10,
        per_call=10,
        max_prompt_chars=32_000,
        options=options,
        option_defaults={"output_format": "png"},
        requires=_GPT_IMAGE_REQUIRES,
        source=source,
        edits=_gpt_edits(options, input_fidelity),
        **lifecycle,
    )


_RETIRING_DEC_2026 = {
    "deprecated_on": dt.date(2026, 6, 2),
    "shutdown_on": dt.date(2026, 12, 1),
    "replacement": "gpt-image-2.6-sunburst",
    "source": _DEPRECATIONS,
}

MODELS: tuple[ModelSpec, ...] = (
    _gpt_image(
        "gpt-image-2",
        "OpenAI's GPT Image 2 (snapshot gpt-image-2-2026-04-21): any "
        "size within bounds; no transparent background.",
        options=_GPT_IMAGE_2_OPTIONS,
        source="https://developers.openai.com/api/docs/models/gpt-image-2",
    ),
    _gpt_image(
        "gpt-image-2.5-flare",
        "GPT Image 2.5, the faster tier; quality up to max.",
        options=_XHIGH_OPTIONS,
        source=_DEPRECATIONS,
    ),
    _gpt_image(
        "gpt-image-2.5-sunburst",
        "GPT Image 2.5, the detailed tier; quality up to max.",
        options=_XHIGH_OPTIONS,
        source=_DEPRECATIONS,
    ),
    _gpt_image(
        "gpt-image-2.6-flare",
        "GPT Image 2.6, the faster tier; quality up to max.",
        options=_XHIGH_OPTIONS,
        source=_DEPRECATIONS,
    ),
    _gpt_image(
        "gpt-image-2.6-sunburst",
        "GPT Image 2.6, the detailed tier; quality up to max.",
        options=_XHIGH_OPTIONS,
        source=_DEPRECATIONS,
    ),
    _gpt_image(
        "gpt-image-1.5",
        "GPT Image 1.5 (shuts down 2026-12-01).",
        flexible=False,
        input_fidelity=Choice(("high", "low")),
        **_RETIRING_DEC_2026,
    ),
    _gpt_image(
        "gpt-image-1-mini",
        "GPT Image 1 mini (shuts down 2026-12-01).",
        flexible=False,
        input_fidelity=Choice(("low",)),
        **_RETIRING_DEC_2026,
    ),
    _gpt_image(
        "chatgpt-image-latest",
        "The image model ChatGPT uses (shuts down 2026-12-01).",
        flexible=False,
        **_RETIRING_DEC_2026,
    ),
    _gpt_image(
        "gpt-image-1",
        "The first GPT Image model (shut down 2026-10-23).",
        flexible=False,
        deprecated_on=dt.date(2026, 4, 22),
        shutdown_on=dt.date(2026, 10, 23),
        replacement="gpt-image-2.5-sunburst",
        source=_DEPRECATIONS,
    ),
    ModelSpec(
        id="dall-e-3",
        family="dall-e",
        description="DALL-E 3: one image per upstream call (count>1 runs calls in parallel). "
        "OpenAI shut it down on 2026-05-12; OpenAI-compatible upstreams may still serve it.",
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        default_size="1024x1024",
        max_count=10,
        per_call=1,
        max_prompt_chars=4_000,
        options={
            "quality": Choice(("standard", "hd")),
            "style": Choice(("vivid", "natural")),
        },
        shutdown_on=dt.date(2026, 5, 12),
        replacement="gpt-image-2",
        legacy=True,
        source=_DEPRECATIONS,
    ),
    ModelSpec(
        id="dall-e-2",
        family="dall-e",
        description="DALL-E 2: square sizes, up to 10 images in one call. "
        "OpenAI shut it down on 2026-05-12; OpenAI-compatible upstreams may still serve it.",
        sizes=("256x256", "512x512", "1024x1024"),
        default_size="1024x1024",
        max_count=10,
        per_call=10,
        max_prompt_chars=1_000,
        shutdown_on=dt.date(2026, 5, 12),
        replacement="gpt-image-2",
        legacy=True,
        source=_DEPRECATIONS,
        edits=InputSpec(
            max_images=1,
            formats=("png",),
            max_image_bytes=4 * MIB,
            mask=True,
            square=True,
            transparent_without_mask=True,
            source=_EDITS_REFERENCE,
        ),
        variations=InputSpec(
            max_images=1,
            formats=("png",),
            max_image_bytes=4 * MIB,
            prompt=False,
            square=True,
            source=_VARIATIONS_REFERENCE,
        ),
    ),
)

CATALOG: dict[str, ModelSpec] = {model.id: model for model in MODELS}


def get_model(model_id: str) -> ModelSpec | None:
    return CATALOG.get(model_id)
