"""The model catalog's data: which models exist, what each accepts, and where that was read.

Validation reads this data; adding a model means adding an entry here, not new branches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TypedDict, Unpack

from imagegen.catalog.spec import MIB, Choice, InputSpec, IntRange, ModelSpec, Requires, SizeRule

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


class _Lifecycle(TypedDict, total=False):
    """The lifecycle fields of a ModelSpec that _gpt_image passes on as given."""

    deprecated_on: dt.date
    shutdown_on: dt.date
    replacement: str


class _Retirement(_Lifecycle):
    """A lifecycle shared by several models, with the page that announced it."""

    source: str


def _gpt_image(
    model_id: str,
    description: str,
    *,
    flexible: bool = True,
    options: Mapping[str, Choice | IntRange] = _GPT_IMAGE_OPTIONS,
    input_fidelity: Choice | None = None,
    source: str = _GUIDE,
    **lifecycle: Unpack[_Lifecycle],
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


_RETIRING_DEC_2026: _Retirement = {
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
