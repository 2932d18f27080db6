"""Unit tests of the model catalog and of `parse_generate_request`, which reads it."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagegen.catalog.models import CATALOG, MODELS, SNAPSHOTS, get_model
from imagegen.catalog.pricing import pricing_for
from imagegen.catalog.spec import ACTIVE, DEPRECATED, LEGACY, SHUT_DOWN
from imagegen.errors import ValidationError
from imagegen.imaging.request import (
    END_USER_FIELDS,
    ImageRequest,
    identified,
    parse_generate_request,
    safety_identifier_for,
)

TODAY = dt.date(2026, 11, 25)
FLEXIBLE_MODELS = (
    "gpt-image-2",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.6-flare",
    "gpt-image-2.6-sunburst",
)
XHIGH_MODELS = FLEXIBLE_MODELS[1:]
RETIRING_DEC_2026 = ("gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest")
FIXED_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")


def parse(body: Any, *, default_model: str = "gpt-image-2", today: dt.date = TODAY) -> ImageRequest:
    return parse_generate_request(body, default_model=default_model, today=today)


def refused(body: Any, **kwargs: Any) -> ValidationError:
    """Parse a body that must be refused; return the ValidationError."""
    with pytest.raises(ValidationError) as raised:
        parse(body, **kwargs)
    return raised.value


def rule_allows(width: int, height: int) -> bool:
    """The documented gpt-image-2 size rule, in integer arithmetic."""
    long_edge, short_edge = max(width, height), min(width, height)
    return (
        width % 16 == 0
        and height % 16 == 0
        and long_edge <= 3840
        and long_edge <= 3 * short_edge
        and 655_360 <= width * height <= 8_294_400
    )


def size_is_valid_for_gpt_image_2(size: str) -> bool:
    if size == "auto":
        return True
    match = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", size, flags=re.ASCII)
    return bool(match) and rule_allows(int(match[1]), int(match[2]))


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        "1024x1024",
        "auto",
        "1536x1024",
        "2048x2048",
        "1024x640",  # exactly the minimum pixel count
        "1280x512",  # minimum pixel count at ratio 2.5
        "3840x2160",  # exactly the maximum pixel count
        "2160x3840",
        "3840x1280",  # longest edge and ratio exactly 3
        "1280x3840",
        "1776x592",  # ratio exactly 3
        "1008x672",
    ],
)
@pytest.mark.parametrize("model", FLEXIBLE_MODELS)
def test_flexible_models_accept_sizes_within_the_rule(model: str, size: str) -> None:
    assert parse({"prompt": "a cat", "model": model, "size": size}).size == size


@pytest.mark.parametrize(
    "size",
    [
        "1032x1024",  # width not a multiple of 16
        "1024x1032",  # height not a multiple of 16
        "1008x640",  # 645,120 pixels: below the minimum
        "3840x2176",  # 8,355,840 pixels: above the maximum
        "3856x1296",  # longest edge 3856 > 3840 (pixels and ratio fine)
        "3840x1264",  # ratio 3.04 > 3 (pixels and edge fine)
        "1536x496",  # ratio 3.10 > 3
        "4096x4096",
        "16x16",
    ],
)
@pytest.mark.parametrize("model", FLEXIBLE_MODELS)
def test_flexible_models_refuse_sizes_just_outside_the_rule(model: str, size: str) -> None:
    error = refused({"prompt": "a cat", "model": model, "size": size})

    assert error.details == {"field": "size"}
    assert repr(size) in error.message
    assert "multiples of 16" in error.message


@pytest.mark.parametrize(
    "size",
    [
        "",
        " 1024x1024",
        "1024x1024 ",
        "1024X1024",
        "1024*1024",
        "1024×1024",
        "01024x1024",
        "1024x01024",
        "-1024x1024",
        "1024.0x1024",
        "1024x",
        "x1024",
        "1024x1024x1024",
        "１０２４x１０２４",
        "AUTO",
        "1024",
    ],
)
def test_malformed_size_strings_are_refused(size: str) -> None:
    assert refused({"prompt": "a cat", "size": size}).details == {"field": "size"}


@pytest.mark.parametrize("size", ["1024x1024\n", "2048x1152\n"])
def test_size_with_trailing_newline_is_refused(size: str) -> None:
    with pytest.raises(ValidationError):
        parse({"prompt": "a cat", "model": "gpt-image-2", "size": size})


@given(
    width=st.integers(1, 4200) | st.integers(1, 262).map(lambda k: k * 16),
    height=st.integers(1, 4200) | st.integers(1, 262).map(lambda k: k * 16),
)
@settings(max_examples=400, deadline=None)
@example(width=1024, height=640)
@example(width=1008, height=640)
@example(width=3840, height=1280)
@example(width=3840, height=1264)
@example(width=3840, height=2160)
@example(width=3840, height=2176)
@example(width=3856, height=1296)
def test_wxh_sizes_are_accepted_exactly_when_they_satisfy_the_rule(width: int, height: int) -> None:
    size = f"{width}x{height}"
    try:
        parse({"prompt": "p", "model": "gpt-image-2", "size": size})
    except ValidationError:
        accepted = False
    else:
        accepted = True

    assert accepted == rule_allows(width, height), size


_PREFIXES = st.sampled_from(["", " ", "0", "+", "-", "\t"])
_SEPARATORS = st.sampled_from(["x", "X", "×", "*", ",", "xx"])
_SUFFIXES = st.sampled_from(["", " ", "px", "\t", "x16", "\r"])
_EDGES = st.integers(0, 5000) | st.integers(1, 262).map(lambda k: k * 16)
_SIZE_STRINGS = (
    st.text(max_size=20)
    | st.from_regex(r"\A[0-9]{1,6}x[0-9]{1,6}\Z")
    | st.builds(
        lambda p, w, s, h, q: f"{p}{w}{s}{h}{q}", _PREFIXES, _EDGES, _SEPARATORS, _EDGES, _SUFFIXES
    )
)


@given(size=_SIZE_STRINGS)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@example(size="1024x1024 ")
@example(size=" 1024x1024")
@example(size="01024x1024")
@example(size="١٠٢٤x١٠٢٤")
def test_arbitrary_size_strings_are_accepted_exactly_when_they_satisfy_the_rule(
    size: str,
) -> None:
    try:
        result = parse({"prompt": "p", "model": "gpt-image-2", "size": size})
    except ValidationError:
        accepted = False
    else:
        accepted = True
        assert result.size == size

    assert accepted == size_is_valid_for_gpt_image_2(size), repr(size)


@pytest.mark.parametrize("model", RETIRING_DEC_2026)
@pytest.mark.parametrize("size", FIXED_GPT_SIZES)
def test_older_gpt_image_models_accept_their_fixed_sizes(model: str, size: str) -> None:
    assert parse({"prompt": "p", "model": model, "size": size}).size == size


@pytest.mark.parametrize("model", RETIRING_DEC_2026)
@pytest.mark.parametrize("size", ["2048x2048", "1024x640", "3840x2160", "1792x1024"])
def test_older_gpt_image_models_refuse_sizes_only_the_rule_would_allow(
    model: str, size: str
) -> None:
    error = refused({"prompt": "p", "model": model, "size": size})

    assert "1536x1024" in error.message
    assert "multiples of 16" not in error.message


@pytest.mark.parametrize(
    ("model", "good", "bad"),
    [
        ("dall-e-3", ["1024x1024", "1792x1024", "1024x1792"], ["auto", "512x512", "1536x1024"]),
        ("dall-e-2", ["256x256", "512x512", "1024x1024"], ["auto", "1792x1024", "2048x2048"]),
    ],
)
def test_dall_e_models_accept_only_their_fixed_sizes(
    model: str, good: list[str], bad: list[str]
) -> None:
    for size in good:
        assert parse({"prompt": "p", "model": model, "size": size}).size == size
    for size in bad:
        assert refused({"prompt": "p", "model": model, "size": size}).details == {"field": "size"}


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_missing_or_null_size_means_the_models_default_size(model: str) -> None:
    early = dt.date(2026, 1, 1)
    spec = CATALOG[model]

    assert parse({"prompt": "p", "model": model}, today=early).size == spec.default_size
    assert parse({"prompt": "p", "model": model, "size": None}, today=early).size == (
        spec.default_size
    )


# --- per-model options ----------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["low", "medium", "high", "auto"])
@pytest.mark.parametrize("model", FLEXIBLE_MODELS + RETIRING_DEC_2026)
def test_gpt_image_models_accept_standard_quality_values(model: str, quality: str) -> None:
    result = parse({"prompt": "p", "model": model, "quality": quality})

    assert result.options == {"quality": quality}


@pytest.mark.parametrize("quality", ["xhigh", "max"])
@pytest.mark.parametrize("model", XHIGH_MODELS)
def test_xhigh_and_max_quality_are_accepted_on_2_5_and_2_6(model: str, quality: str) -> None:
    assert parse({"prompt": "p", "model": model, "quality": quality}).options["quality"] == quality


@pytest.mark.parametrize("quality", ["xhigh", "max"])
@pytest.mark.parametrize("model", ("gpt-image-2", *RETIRING_DEC_2026))
def test_xhigh_and_max_quality_are_refused_before_2_5(model: str, quality: str) -> None:
    error = refused({"prompt": "p", "model": model, "quality": quality})

    assert error.details == {"field": "quality"}
    assert "low, medium, high, auto" in error.message
    assert model in error.message


@pytest.mark.parametrize("quality", ["standard", "hd"])
def test_dall_e_3_takes_its_own_quality_values(quality: str) -> None:
    assert parse({"prompt": "p", "model": "dall-e-3", "quality": quality}).options == {
        "quality": quality
    }
    assert refused({"prompt": "p", "model": "gpt-image-2", "quality": quality}).details == {
        "field": "quality"
    }


def test_dall_e_3_refuses_gpt_image_quality_values() -> None:
    assert refused({"prompt": "p", "model": "dall-e-3", "quality": "high"}).details == {
        "field": "quality"
    }


@pytest.mark.parametrize("style", ["vivid", "natural"])
def test_style_is_accepted_on_dall_e_3(style: str) -> None:
    assert parse({"prompt": "p", "model": "dall-e-3", "style": style}).options == {"style": style}


def test_unknown_style_value_is_refused_on_dall_e_3() -> None:
    error = refused({"prompt": "p", "model": "dall-e-3", "style": "bold"})

    assert error.details == {"field": "style"}
    assert "vivid, natural" in error.message


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2.6-sunburst", "dall-e-2"])
def test_style_is_an_unknown_field_on_other_models(model: str) -> None:
    error = refused({"prompt": "p", "model": model, "style": "vivid"})

    assert error.details == {"field": "style"}
    assert "style" in error.message


def test_gpt_image_2_refuses_a_transparent_background() -> None:
    error = refused({"prompt": "p", "model": "gpt-image-2", "background": "transparent"})

    assert error.details == {"field": "background"}
    assert "opaque, auto" in error.message


@pytest.mark.parametrize("background", ["opaque", "auto"])
def test_gpt_image_2_accepts_opaque_and_auto_backgrounds(background: str) -> None:
    result = parse({"prompt": "p", "model": "gpt-image-2", "background": background})

    assert result.options == {"background": background}


@pytest.mark.parametrize("model", [*XHIGH_MODELS, *RETIRING_DEC_2026])
@pytest.mark.parametrize("output_format", [None, "png", "webp"])
def test_transparent_background_is_accepted_with_png_or_webp(
    model: str, output_format: str | None
) -> None:
    body = {"prompt": "p", "model": model, "background": "transparent"}
    if output_format:
        body["output_format"] = output_format

    assert parse(body).options["background"] == "transparent"


@pytest.mark.parametrize("model", ["gpt-image-1.5", "gpt-image-2.5-flare"])
def test_transparent_background_with_jpeg_is_refused(model: str) -> None:
    body = {"prompt": "p", "model": model, "background": "transparent", "output_format": "jpeg"}
    error = refused(body)

    assert error.details == {"field": "background"}
    assert "output_format" in error.message
    assert "png, webp" in error.message


def test_opaque_background_with_jpeg_is_accepted() -> None:
    body = {
        "prompt": "p",
        "model": "gpt-image-1.5",
        "background": "opaque",
        "output_format": "jpeg",
    }

    assert parse(body).options == {"background": "opaque", "output_format": "jpeg"}


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
@pytest.mark.parametrize("compression", [0, 55, 100])
def test_output_compression_is_accepted_with_jpeg_or_webp(
    output_format: str, compression: int
) -> None:
    body = {
        "prompt": "p",
        "output_format": output_format,
        "output_compression": compression,
    }

    assert parse(body).options == {
        "output_format": output_format,
        "output_compression": compression,
    }


@pytest.mark.parametrize("output_format", [None, "png"])
def test_output_compression_without_jpeg_or_webp_is_refused(output_format: str | None) -> None:
    body: dict[str, Any] = {"prompt": "p", "output_compression": 50}
    if output_format:
        body["output_format"] = output_format
    error = refused(body)

    assert error.details == {"field": "output_compression"}
    assert "jpeg, webp" in error.message


@pytest.mark.parametrize("compression", [-1, 101, 1000, True, False, 50.0, "50"])
def test_output_compression_out_of_range_or_not_an_integer_is_refused(compression: Any) -> None:
    body = {"prompt": "p", "output_format": "jpeg", "output_compression": compression}
    error = refused(body)

    assert error.details == {"field": "output_compression"}
    assert "0 to 100" in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [("output_format", "gif"), ("moderation", "high"), ("quality", "HIGH")],
)
def test_option_values_outside_the_catalog_are_refused(name: str, value: str) -> None:
    assert refused({"prompt": "p", name: value}).details == {"field": name}


def test_dall_e_2_takes_no_options_at_all() -> None:
    for name in ("quality", "style", "background", "output_format"):
        error = refused({"prompt": "p", "model": "dall-e-2", name: "auto"})
        assert error.details == {"field": name}
        assert "It accepts: count, model, prompt, size." in error.message


# --- count ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 10])
@pytest.mark.parametrize("model", ["gpt-image-2", "dall-e-3", "dall-e-2", "gpt-image-1.5"])
def test_count_within_bounds_is_accepted(model: str, count: int) -> None:
    assert parse({"prompt": "p", "model": model, "count": count}).count == count


def test_missing_count_means_one_image() -> None:
    assert parse({"prompt": "p"}).count == 1


def test_null_count_means_the_default_like_every_other_field() -> None:
    assert parse({"prompt": "p", "count": None}).count == 1


@pytest.mark.parametrize("count", [0, -1, 11, 10**30, True, False, 1.0, 2.5, "2", [2], {}])
def test_count_out_of_bounds_or_not_an_integer_is_refused(count: Any) -> None:
    error = refused({"prompt": "p", "count": count})

    assert error.details == {"field": "count"}
    assert "from 1 to 10" in error.message


# --- prompt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, "", "   ", "\n\t", 42, 1.5, True, ["a"], {"a": 1}])
def test_prompt_must_be_a_non_empty_string(prompt: Any) -> None:
    error = refused({"prompt": prompt})

    assert error.details == {"field": "prompt"}
    assert "'prompt' is required" in error.message


def test_missing_prompt_is_refused() -> None:
    assert refused({"model": "gpt-image-2"}).details == {"field": "prompt"}


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("dall-e-2", 1000),
        ("dall-e-3", 4000),
        ("gpt-image-2", 32_000),
        ("gpt-image-1.5", 32_000),
        ("gpt-image-2.6-sunburst", 32_000),
    ],
)
def test_prompt_length_limit_depends_on_the_model(model: str, limit: int) -> None:
    assert parse({"prompt": "a" * limit, "model": model}).prompt == "a" * limit

    error = refused({"prompt": "a" * (limit + 1), "model": model})
    assert error.details == {"field": "prompt"}
    assert f"{limit:,}" in error.message
    assert f"{limit + 1:,}" in error.message


def test_prompt_is_kept_exactly_as_sent() -> None:
    prompt = "  A fox 🦊 in the snow\n  "

    assert parse({"prompt": prompt}).prompt == prompt


# --- fields and models ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["n", "response_format", "seed", "Prompt", ""])
def test_unknown_field_is_refused_naming_it_and_the_accepted_fields(field: str) -> None:
    error = refused({"prompt": "p", field: "x"})

    assert error.details == {"field": field}
    assert f"model gpt-image-2: {field}." in error.message
    assert (
        "It accepts: background, count, model, moderation, output_compression, "
        "output_format, prompt, quality, size." in error.message
    )


def test_several_unknown_fields_are_all_named() -> None:
    error = refused({"prompt": "p", "zeta": 1, "alpha": 2})

    assert "alpha, zeta" in error.message
    assert error.details == {"field": "alpha"}


def test_shut_down_model_is_refused_naming_its_replacement() -> None:
    error = refused({"prompt": "p", "model": "gpt-image-1"})

    assert error.details == {"field": "model", "replacement": "gpt-image-2.5-sunburst"}
    assert "shut down on 2026-10-23" in error.message
    assert "use gpt-image-2.5-sunburst instead" in error.message


def test_shut_down_model_is_refused_from_its_shutdown_day_and_accepted_the_day_before() -> None:
    assert parse({"prompt": "p", "model": "gpt-image-1"}, today=dt.date(2026, 10, 22)).model.id == (
        "gpt-image-1"
    )
    refused({"prompt": "p", "model": "gpt-image-1"}, today=dt.date(2026, 10, 23))


@pytest.mark.parametrize("model", RETIRING_DEC_2026)
def test_deprecated_model_is_accepted_until_its_shutdown_date(model: str) -> None:
    for day in (dt.date(2026, 6, 2), TODAY, dt.date(2026, 11, 30)):
        assert parse({"prompt": "p", "model": model}, today=day).model.id == model


@pytest.mark.parametrize("model", RETIRING_DEC_2026)
def test_deprecated_model_is_refused_from_2026_12_01_naming_its_replacement(model: str) -> None:
    for day in (dt.date(2026, 12, 1), dt.date(2027, 3, 1)):
        error = refused({"prompt": "p", "model": model}, today=day)
        assert error.details == {"field": "model", "replacement": "gpt-image-2.6-sunburst"}
        assert "gpt-image-2.6-sunburst" in error.message


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3"])
@pytest.mark.parametrize("day", [TODAY, dt.date(2030, 1, 1)])
def test_legacy_dall_e_models_are_still_accepted(model: str, day: dt.date) -> None:
    assert parse({"prompt": "p", "model": model}, today=day).model.id == model


def test_default_model_is_used_when_model_is_missing_or_null() -> None:
    assert parse({"prompt": "p"}, default_model="dall-e-3").model.id == "dall-e-3"
    assert parse({"prompt": "p", "model": None}, default_model="dall-e-2").model.id == "dall-e-2"


def test_explicit_model_overrides_the_default() -> None:
    result = parse({"prompt": "p", "model": "gpt-image-2.5-flare"}, default_model="dall-e-2")

    assert result.model.id == "gpt-image-2.5-flare"


def test_default_model_sets_which_fields_are_accepted() -> None:
    assert parse({"prompt": "p", "style": "vivid"}, default_model="dall-e-3").options == {
        "style": "vivid"
    }
    assert refused({"prompt": "p", "style": "vivid"}).details == {"field": "style"}


def test_unknown_model_is_refused_listing_only_models_still_served() -> None:
    error = refused({"prompt": "p", "model": "gpt-5-image"}, today=dt.date(2026, 12, 1))

    assert error.details == {"field": "model"}
    assert "'gpt-5-image'" in error.message
    listed = re.search(r"Available: (.*) \(GET /models", error.message)
    assert listed is not None
    names = set(listed[1].split(", "))
    assert "gpt-image-2" in names
    assert "dall-e-3" in names
    assert not names & {"gpt-image-1", *RETIRING_DEC_2026}


@pytest.mark.parametrize("model", ["GPT-IMAGE-2", " gpt-image-2", "gpt-image-2 ", ""])
def test_model_ids_are_matched_exactly(model: str) -> None:
    assert refused({"prompt": "p", "model": model}).details == {"field": "model"}


@pytest.mark.parametrize("body", [None, [], ["prompt"], "a cat", 42, 1.5, True])
def test_body_that_is_not_a_json_object_is_refused(body: Any) -> None:
    assert "JSON object" in refused(body).message


_WRONG_TYPES: list[tuple[str, Any, dict[str, Any]]] = [
    *[("prompt", v, {}) for v in (42, 1.5, True, [], {})],
    *[("count", v, {}) for v in ("1", 1.5, True, [], {})],
    *[("model", v, {}) for v in (42, 1.5, True, [], {}, ["gpt-image-2"])],
    *[("size", v, {}) for v in (1024, 1.5, True, [], {}, [1024, 1024])],
    *[
        (name, v, {})
        for name in ("quality", "background", "moderation", "output_format")
        for v in (1, 1.5, True, [], {}, ["auto"])
    ],
    *[("output_compression", v, {"output_format": "jpeg"}) for v in ("50", 50.5, True, [], {})],
    *[("style", v, {"model": "dall-e-3"}) for v in (1, True, [], {"vivid": True})],
]


@pytest.mark.parametrize(("field", "value", "others"), _WRONG_TYPES)
def test_wrong_json_type_for_any_field_is_a_validation_error_naming_it(
    field: str, value: Any, others: dict[str, Any]
) -> None:
    body = {"prompt": "p", **others, field: value}

    assert refused(body).details["field"] == field


def test_valid_request_is_recorded_with_every_field() -> None:
    body = {
        "prompt": "a lighthouse",
        "model": "gpt-image-2.6-flare",
        "count": 3,
        "size": "2048x1152",
        "quality": "xhigh",
        "output_format": "webp",
        "output_compression": 80,
    }
    result = parse(body)

    assert result.as_dict() == body
    assert result.model is CATALOG["gpt-image-2.6-flare"]


def test_options_left_out_are_not_invented() -> None:
    assert parse({"prompt": "p"}).as_dict() == {
        "prompt": "p",
        "model": "gpt-image-2",
        "count": 1,
        "size": "1024x1024",
    }


# --- the catalog data -----------------------------------------------------------------------


def test_catalog_ids_are_unique_and_looked_up_exactly() -> None:
    assert len({m.id for m in MODELS}) == len(MODELS)
    assert get_model("gpt-image-2") is CATALOG["gpt-image-2"]
    assert get_model("gpt-image-3") is None


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_every_models_default_and_listed_sizes_are_accepted_by_it(model: Any) -> None:
    assert model.allows_size(model.default_size)
    for size in model.sizes:
        assert model.allows_size(size)
        if model.size_rule and size != "auto":
            width, height = (int(v) for v in size.split("x"))
            assert rule_allows(width, height), size


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_every_model_says_the_largest_image_it_makes_and_it_holds_every_size_it_takes(
    model: Any,
) -> None:
    largest = model.largest_output
    described = model.describe(TODAY)["largest_output"]

    assert described == {"max_edge": largest.max_edge, "max_pixels": largest.max_pixels}
    for size in model.sizes:
        if size != "auto":
            width, height = (int(v) for v in size.split("x"))
            assert largest.allows(width, height) and largest.allows(height, width), size
    if model.size_rule:
        assert largest.max_edge == model.size_rule.max_edge
        assert largest.max_pixels == model.size_rule.max_pixels
    assert not largest.allows(largest.max_edge + 1, 1)
    assert not largest.allows(largest.max_edge, largest.max_pixels // largest.max_edge + 1)


def test_the_largest_outputs_are_those_of_the_sizes_openai_lists() -> None:
    largest = {m.id: m.largest_output.as_dict() for m in MODELS}

    assert largest["gpt-image-2"] == {"max_edge": 3840, "max_pixels": 3840 * 2160}
    assert largest["gpt-image-1.5"] == {"max_edge": 1536, "max_pixels": 1536 * 1024}
    assert largest["dall-e-3"] == {"max_edge": 1792, "max_pixels": 1792 * 1024}
    assert largest["dall-e-2"] == {"max_edge": 1024, "max_pixels": 1024 * 1024}


@pytest.mark.parametrize(
    ("model", "day", "status"),
    [
        ("gpt-image-2", TODAY, ACTIVE),
        ("gpt-image-1.5", dt.date(2026, 6, 1), ACTIVE),
        ("gpt-image-1.5", dt.date(2026, 6, 2), DEPRECATED),
        ("gpt-image-1.5", dt.date(2026, 11, 30), DEPRECATED),
        ("gpt-image-1.5", dt.date(2026, 12, 1), SHUT_DOWN),
        ("gpt-image-1", TODAY, SHUT_DOWN),
        ("dall-e-3", dt.date(2030, 1, 1), LEGACY),
    ],
)
def test_model_status_follows_its_lifecycle_dates(model: str, day: dt.date, status: str) -> None:
    assert CATALOG[model].status(day) == status
    assert CATALOG[model].describe(day)["status"] == status


@pytest.mark.parametrize(("snapshot", "base"), sorted(SNAPSHOTS.items()))
def test_a_snapshot_is_its_base_under_its_own_id(snapshot: str, base: str) -> None:
    pinned, moving = CATALOG[snapshot], CATALOG[base]

    assert pinned.snapshot_of == base and moving.snapshot_of is None
    for name in ("sizes", "size_rule", "options", "option_defaults", "requires", "edits"):
        assert getattr(pinned, name) == getattr(moving, name), name
    for day in (TODAY, dt.date(2026, 12, 1), dt.date(2027, 6, 1)):
        assert pinned.status(day) == moving.status(day)
    assert pricing_for(snapshot) is pricing_for(base)
    assert snapshot.startswith(base + "-")


def test_a_snapshot_is_covered_by_its_bases_name_but_not_the_other_way() -> None:
    snapshot, base = CATALOG["gpt-image-2-2026-04-21"], CATALOG["gpt-image-2"]

    assert snapshot.named_in({"gpt-image-2"}) and snapshot.named_in({snapshot.id})
    assert not base.named_in({snapshot.id})
    assert not CATALOG["gpt-image-2.5-flare-2026-09-08"].named_in({"gpt-image-2"})


def test_only_gpt_image_26_takes_complexity_and_it_defaults_to_high() -> None:
    takers = {m.id for m in MODELS if "complexity" in m.options}

    assert takers == {"gpt-image-2.6-flare", "gpt-image-2.6-sunburst"}
    for model in takers:
        assert CATALOG[model].option_defaults["complexity"] == "high"
        assert "complexity" in (CATALOG[model].edits.options)
    result = parse({"prompt": "p", "model": "gpt-image-2.6-flare", "complexity": "medium"})
    assert result.options == {"complexity": "medium"}


def test_the_token_identifier_is_stable_hex_within_openais_limit_and_keeps_the_callers() -> None:
    value = safety_identifier_for("alice")

    assert value == safety_identifier_for("alice") != safety_identifier_for("bob")
    assert re.fullmatch(r"imagegen-[0-9a-f]{48}", value)
    request = parse({"prompt": "p"})
    assert identified(request, "alice").safety_identifier == value
    assert identified(request, None).safety_identifier is None
    own = parse({"prompt": "p", "safety_identifier": "mine"})
    assert identified(own, "alice").safety_identifier == "mine"
    assert "safety_identifier" not in identified(own, "alice").as_dict()


def test_described_model_states_its_limits() -> None:
    described = CATALOG["dall-e-3"].describe(TODAY)

    assert described["count"] == {"min": 1, "max": 10}
    assert described["max_prompt_chars"] == 4000
    assert described["shutdown_on"] == "2026-05-12"
    assert described["replacement"] == "gpt-image-2"
    assert set(described["options"]) == {"quality", "style"}
    assert described["options"]["style"]["enum"] == ["vivid", "natural"]
    assert described["size_rule"] is None
    assert CATALOG["gpt-image-2"].describe(TODAY)["size_rule"]["multiple_of"] == 16


# --- arbitrary bodies -----------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "png", "jpeg", "vivid", "transparent", "1024x1024", "xhigh"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
_FIELDS = st.sampled_from(
    [
        "prompt",
        "count",
        "model",
        "size",
        "quality",
        "style",
        "background",
        "moderation",
        "output_format",
        "output_compression",
        "complexity",
        "safety_identifier",
        "user",
    ]
)
_FIELD_VALUES = st.one_of(
    _JSON,
    st.sampled_from(sorted(CATALOG)),
    st.integers(-2, 12),
    st.sampled_from(["1024x1024", "1792x1024", "2048x1152", "auto", "256x256"]),
)
_BODIES = st.dictionaries(_FIELDS | st.text(max_size=8), _FIELD_VALUES, max_size=8) | _JSON


@given(
    body=_BODIES,
    default_model=st.sampled_from(sorted(CATALOG)),
    today=st.dates(dt.date(2025, 1, 1), dt.date(2028, 1, 1)),
)
@settings(max_examples=600, deadline=None)
def test_arbitrary_json_bodies_give_a_valid_request_or_a_validation_error(
    body: Any, default_model: str, today: dt.date
) -> None:
    try:
        result = parse_generate_request(body, default_model=default_model, today=today)
    except ValidationError as exc:
        assert exc.status == 400
        assert exc.message
        return

    assert result.model.status(today) != SHUT_DOWN
    assert isinstance(result.prompt, str)
    assert result.prompt.strip()
    assert len(result.prompt) <= result.model.max_prompt_chars
    assert 1 <= result.count <= result.model.max_count
    assert result.model.allows_size(result.size)
    assert set(result.options) <= set(result.model.options)
    assert set(body) <= {
        "prompt",
        "count",
        "model",
        "size",
        *END_USER_FIELDS,
        *result.model.options,
    }
    assert result.safety_identifier is None or 0 < len(result.safety_identifier) <= 64
