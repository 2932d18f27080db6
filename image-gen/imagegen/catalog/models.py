"""The model catalog's data: which models exist, what each accepts, and where that was read.

Validation reads this data; adding a model means adding an entry here, not new branches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TypedDict, Unpack

from imagegen.catalog.spec import (
    MIB,
    Choice,
    FrameSheet,
    InputSpec,
    IntRange,
    ModelSpec,
    OutputRule,
    Requires,
    SizeRule,
)

_GUIDE = "https://developers.openai.com/api/docs/guides/image-generation"


_DEPRECATIONS = "https://developers.openai.com/api/docs/deprecations"


_IMAGES_REFERENCE = "https://developers.openai.com/api/reference/resources/images/methods/generate"


_PROMPTING_26 = "https://developers.openai.com/api/docs/guides/image-prompting?model=gpt-image-2.6"


_GPT_IMAGE_OPTIONS: dict[str, Choice | IntRange] = {
    "quality": Choice(("low", "medium", "high", "auto")),
    "background": Choice(("transparent", "opaque", "auto")),
    "moderation": Choice(("low", "auto")),
    "output_format": Choice(("png", "jpeg", "webp")),
    "output_compression": IntRange(0, 100),
}


# Transparent backgrounds, read 2026-12-02:
#   OpenAI's Images API reference (create image and create image edit, `background`, as
#   openai-python 3.57.0 carries it; https://developers.openai.com/api/reference/resources/
#   images/methods/generate): "gpt-image-2.5-sunburst and gpt-image-2.5-flare, including
#   their 2026-09-08 snapshots, support opaque and transparent backgrounds ... For
#   gpt-image-2 and gpt-image-2-2026-04-21, this support is in preview."
#   OpenAI's GPT Image 2.6 prompting guide (https://developers.openai.com/api/docs/guides/
#   image-prompting?model=gpt-image-2.6): Flare and Sunburst "both support image
#   generation, editing, and transparent backgrounds."
# gpt-image-2 is still refused a transparent background: OpenAI calls its support a preview
# (openai-python PR #3703, 2026-08-20, changed "not supported" to "preview"), and callers of
# resellers report 400 "Transparent background is not supported for this model"
# (github.com/Wei-Shaw/sub2api/issues/7150, 2026-09-15; help.apiyi.com/en?p=30331). The
# report of 400s "since 2026-09-30" could not be verified on any page searched. (OpenAI's
# CLI reference, developers.openai.com/api/reference/cli/resources/images/index.md, still
# says requests for gpt-image-2 with a transparent background "will return an error".)
_GPT_IMAGE_2_OPTIONS = {**_GPT_IMAGE_OPTIONS, "background": Choice(("opaque", "auto"))}


_XHIGH_OPTIONS = {
    **_GPT_IMAGE_OPTIONS,
    "quality": Choice(("low", "medium", "high", "xhigh", "max", "auto")),
}


# GPT Image 2.6's `complexity`, read 2026-12-02: OpenAI's Images API reference (create
# image and create image edit, as openai-python 3.57.0 carries it) takes low|medium|high,
# "computation spent planning the image, independently of rendering quality", using "the
# image model's configured default when omitted"; the GPT Image 2.6 prompting guide
# (https://developers.openai.com/api/docs/guides/image-prompting?model=gpt-image-2.6) is
# where OpenAI tunes it, for 2.6 only. The default, high, is not on an OpenAI page found:
# it is what guides written from OpenAI's docs say ("high if omitted",
# https://apidog.com/blog/gpt-image-2-6-api/, 2026-11-05; docs.leonardo.ai
# gpt-image-26-sunburst, "Defaults to HIGH"; replicate.com openai/gpt-image-2.6-sunburst's
# input schema, default high). GPT Image 2.5 does not take it (ComfyUI's
# OpenAIGPTImageNodeV3: the 2.5 inputs "match the 2.6 models, except ... complexity").
# GIF and SVG output, read 2026-12-03: OpenAI's Images API reference (create image and
# create image edit) as w3cschool.cn translates it, updated 2026-11-11
# (https://www.w3cschool.cn/openai_api/openai_api-reference-resources-images-methods-edit.html):
# `frame_count` 2-16, default 9, "only with output_format=gif", the size must fit "the
# model's GIF size limits"; GIF output takes no streaming, partial images, mask or output
# compression and needs GIF preview access on the account; `frame_duration_ms` at least 20,
# default 200, rounded to 10 ms, at most 655,350 ms per frame as encoded. SVG: one image,
# drawn by an authoring model from a reference image (`complexity` sets the reference).
# The GIF size limits are not numbers on an OpenAI page: the frames are laid out on one
# sheet (dev.to/super_lewis, "animated-gifs-and-markup-guided-edits", 2026-11-05: six
# 1024x1024 frames were refused, the sheet "4096 px on its long side"), billed in steps of
# 2-8, 9, 10-12 and 13-16 frames (docs.comfy.org/built-in-nodes/OpenAIGPTImageGIFNode), and
# the sheet keeps the still image's budget of 8,294,400 pixels, frames in multiples of 16
# (docs.apiyi.com/en/api-capabilities/gpt-image-2/gpt-image-2-6, 2026-11-09: measured
# largest square frames 960 for 2-9 frames, 816 for 10-12, 720 for 13-16, which is that
# budget over 9, 12 and 16 cells). Transparent GIF and SVG backgrounds: the ComfyUI node
# takes `background` for GIFs; an SVG is transparent where it draws nothing.
_GIF_SHEET = FrameSheet(steps=(8, 9, 12, 16), multiple=16, min_pixels=655_360, max_pixels=8_294_400)


_GPT_IMAGE_26_OUTPUTS = (
    OutputRule(
        "gif",
        mask=False,
        partials=False,
        frames=_GIF_SHEET,
        default_size="auto",
        source=_IMAGES_REFERENCE,
    ),
    OutputRule("svg", max_count=1, partials=False, source=_IMAGES_REFERENCE),
)


_GPT_IMAGE_26_OPTIONS = {
    **_XHIGH_OPTIONS,
    "complexity": Choice(("low", "medium", "high")),
    "output_format": Choice(("png", "jpeg", "webp", "gif", "svg")),
    "frame_count": IntRange(2, 16),
    "frame_duration_ms": IntRange(20, 655_350),
}


_GPT_IMAGE_26_DEFAULTS: dict[str, str | int] = {
    "complexity": "high",
    "frame_count": 9,
    "frame_duration_ms": 200,
}


_GPT_IMAGE_REQUIRES = (
    Requires("output_compression", "output_format", ("jpeg", "webp")),
    Requires("background", "output_format", ("png", "webp"), value="transparent"),
)


_GPT_IMAGE_26_REQUIRES = (
    Requires("output_compression", "output_format", ("jpeg", "webp")),
    Requires("background", "output_format", ("png", "webp", "gif", "svg"), value="transparent"),
    Requires("frame_count", "output_format", ("gif",)),
    Requires("frame_duration_ms", "output_format", ("gif",)),
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


# `moderation` on edits, read 2026-12-03: OpenAI's OpenAPI description (2.3.0) lists it
# (low | auto, default auto) among the image edit's fields, EditImageBodyJsonParam as
# generated from it (docs.rs/crate/openai-client-base/0.16.0, src/models/
# edit_image_body_json_param.rs; hexdocs.pm/ex_openai/2.0.0-beta2, ExOpenAI.Components.
# EditImageBodyJsonParam): the 2025-11 reference left it out. Sent in either form.
# Markup-guided edits (GPT Image 2.6), read 2026-12-03: "a transparent PNG overlay (arrows,
# circles, annotations) with the same dimensions as the first reference image ... honored
# by models with markup-guided editing (OpenAI gpt-image-2.6)" (openrouter.ai/docs/
# client-sdks/python/components/markup.md); sent as the `markup` part, like the mask; not
# combinable with a mask (issue 16; apidog.com/blog/gpt-image-2-6-api, 2026-11-05, "a
# markup edit"). OpenAI's own page for the field was not found in English.
def _gpt_edits(
    options: Mapping[str, Choice | IntRange], input_fidelity: Choice | None, markup: bool
) -> InputSpec:
    taken = dict(options)
    if input_fidelity is not None:
        taken["input_fidelity"] = input_fidelity
    return InputSpec(
        max_images=16,
        formats=("png", "jpeg", "webp"),
        max_image_bytes=50 * MIB,
        options=taken,
        mask=True,
        markup=markup,
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
    defaults: Mapping[str, str | int] | None = None,
    requires: tuple[Requires, ...] = _GPT_IMAGE_REQUIRES,
    outputs: tuple[OutputRule, ...] = (),
    markup: bool = False,
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
        option_defaults={"output_format": "png", **(defaults or {})},
        requires=requires,
        output_rules=outputs,
        source=source,
        edits=_gpt_edits(options, input_fidelity, markup),
        **lifecycle,
    )


_RETIRING_DEC_2026: _Retirement = {
    "deprecated_on": dt.date(2026, 6, 2),
    "shutdown_on": dt.date(2026, 12, 1),
    "replacement": "gpt-image-2.6-sunburst",
    "source": _DEPRECATIONS,
}


_MODELS: tuple[ModelSpec, ...] = (
    _gpt_image(
        "gpt-image-2",
        "OpenAI's GPT Image 2: any size within bounds; no transparent background (a "
        "preview at OpenAI, refused by resellers).",
        options=_GPT_IMAGE_2_OPTIONS,
        source="https://developers.openai.com/api/docs/models/gpt-image-2",
    ),
    # Transparent background and quality up to max: OpenAI's Images API reference, read
    # 2026-12-02 (see _GPT_IMAGE_2_OPTIONS and _XHIGH_OPTIONS above).
    _gpt_image(
        "gpt-image-2.5-flare",
        "GPT Image 2.5, the faster tier; quality up to max; transparent background.",
        options=_XHIGH_OPTIONS,
        source=_IMAGES_REFERENCE,
    ),
    _gpt_image(
        "gpt-image-2.5-sunburst",
        "GPT Image 2.5, the detailed tier; quality up to max; transparent background.",
        options=_XHIGH_OPTIONS,
        source=_IMAGES_REFERENCE,
    ),
    # complexity and transparent backgrounds: the GPT Image 2.6 prompting guide and the
    # Images API reference, read 2026-12-02 (see _GPT_IMAGE_26_OPTIONS above). OpenAI
    # publishes no dated snapshot of the 2.6 models (the reference's model list names
    # gpt-image-2.6-flare and gpt-image-2.6-sunburst alone).
    _gpt_image(
        "gpt-image-2.6-flare",
        "GPT Image 2.6, the faster tier; quality up to max; complexity; transparent background; "
        "animated GIF and SVG output.",
        options=_GPT_IMAGE_26_OPTIONS,
        defaults=_GPT_IMAGE_26_DEFAULTS,
        requires=_GPT_IMAGE_26_REQUIRES,
        outputs=_GPT_IMAGE_26_OUTPUTS,
        markup=True,
        source=_PROMPTING_26,
    ),
    _gpt_image(
        "gpt-image-2.6-sunburst",
        "GPT Image 2.6, the detailed tier; quality up to max; complexity; transparent background; "
        "animated GIF and SVG output.",
        options=_GPT_IMAGE_26_OPTIONS,
        defaults=_GPT_IMAGE_26_DEFAULTS,
        requires=_GPT_IMAGE_26_REQUIRES,
        outputs=_GPT_IMAGE_26_OUTPUTS,
        markup=True,
        source=_PROMPTING_26,
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
        end_user_field="user",
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
        end_user_field="user",
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


# Dated snapshots, read 2026-12-02. A snapshot is validated, capped, priced and retired
# like its base and sent upstream by its own id.
#   gpt-image-2-2026-04-21, gpt-image-2.5-flare-2026-09-08, gpt-image-2.5-sunburst-2026-09-08:
#   OpenAI's Images API reference, create image `model` ("Supported models include ...",
#   https://developers.openai.com/api/reference/resources/images/methods/generate.md;
#   openai-python 3.57.0's ImageModel lists the same); the 2.5 dates also on
#   docs.apiyi.com/en/news/gpt-image-2-5-launch ("they currently point to
#   gpt-image-2.5-flare-2026-09-08 / gpt-image-2.5-sunburst-2026-09-08").
#   gpt-image-1.5-2025-12-16: the deprecations page (shut down with gpt-image-1.5 on
#   2026-12-01), https://developers.openai.com/api/docs/deprecations.
# No snapshot of gpt-image-1-mini, chatgpt-image-latest or the 2.6 models was found.
SNAPSHOTS: dict[str, str] = {
    "gpt-image-2-2026-04-21": "gpt-image-2",
    "gpt-image-2.5-flare-2026-09-08": "gpt-image-2.5-flare",
    "gpt-image-2.5-sunburst-2026-09-08": "gpt-image-2.5-sunburst",
    "gpt-image-1.5-2025-12-16": "gpt-image-1.5",
}


def _snapshot(base: ModelSpec, snapshot_id: str) -> ModelSpec:
    return dataclasses.replace(
        base,
        id=snapshot_id,
        snapshot_of=base.id,
        description=f"The {snapshot_id[len(base.id) + 1 :]} snapshot of {base.id}, "
        "pinned: validated and priced like it.",
    )


def _with_snapshots(models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
    """Each model followed by its snapshots."""
    return tuple(
        entry
        for model in models
        for entry in (
            model,
            *(_snapshot(model, snap) for snap, base in SNAPSHOTS.items() if base == model.id),
        )
    )


BUILT_IN: tuple[ModelSpec, ...] = _with_snapshots(_MODELS)


# The catalog this process serves with: the built-in models, then the operator's from the
# models file (catalog/operator.py installs them, in place, so every importer sees them).
MODELS: list[ModelSpec] = list(BUILT_IN)


CATALOG: dict[str, ModelSpec] = {model.id: model for model in MODELS}


_BUILT_IN: dict[str, ModelSpec] = dict(CATALOG)


_ALIASES: dict[str, str] = {}  # an operator alias -> the catalog model it is like


def get_model(model_id: str) -> ModelSpec | None:
    return CATALOG.get(model_id)


def get_built_in(model_id: str) -> ModelSpec | None:
    """A model of the catalog itself (snapshots included), never an operator's."""
    return _BUILT_IN.get(model_id)


def base_id(model_id: str) -> str:
    """The model a snapshot pins or an operator alias is like (the id itself otherwise)."""
    model_id = _ALIASES.get(model_id, model_id)
    return SNAPSHOTS.get(model_id, model_id)


def origin(model_id: str) -> tuple[str, str | None]:
    """Where a served model comes from: "catalog" or "models_file", and an alias's base."""
    return ("catalog" if model_id in _BUILT_IN else "models_file"), _ALIASES.get(model_id)


def use_operator_models(models: list[ModelSpec], aliases: dict[str, str]) -> None:
    """Serve the built-in models plus these (new models and aliases of built-in ones)."""
    MODELS[:] = [*BUILT_IN, *models]
    CATALOG.clear()
    CATALOG.update((model.id, model) for model in MODELS)
    _ALIASES.clear()
    _ALIASES.update(aliases)
