"""What images cost: a per-image estimate to reserve before the call, the real cost after.

The estimate is reserved against the spending caps before any upstream call. GPT Image
models answer with `usage` (tokens), and the real cost is computed from per-token rates,
so the books match OpenAI's invoice. DALL-E answers carry no usage: the table price is
the cost.

Prices are US dollars, standard tier, read on 2026-11-25 (sources next to each table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegen.catalog.models import base_id

PRICES_READ_ON = "2026-11-25"

_GUIDE = "https://developers.openai.com/api/docs/guides/image-generation#calculating-costs"
_PRICING = "https://developers.openai.com/api/docs/pricing"


@dataclass(frozen=True)
class TokenRates:
    """US dollars per 1M tokens.

    Cached input tokens (`input_tokens_details.cached_tokens`, a part of the input tokens)
    cost the cached rates; a cached rate of None is one OpenAI does not publish, and those
    tokens cost the full input rate.
    """

    text_input: float
    image_input: float
    image_output: float
    text_output: float = 0.0
    cached_text_input: float | None = None
    cached_image_input: float | None = None
    source: str = _PRICING

    def cost(self, usage: Mapping[str, Any]) -> float | None:
        """The cost of one upstream answer's `usage`, or None if it has no token counts."""
        input_tokens = _count(usage.get("input_tokens"))
        output_tokens = _count(usage.get("output_tokens"))
        if input_tokens is None and output_tokens is None:
            return None
        input_details = usage.get("input_tokens_details")
        output_details = usage.get("output_tokens_details")
        if isinstance(input_details, Mapping):
            image_in = _count(input_details.get("image_tokens")) or 0
            text_in = _count(input_details.get("text_tokens"))
            if text_in is None:
                text_in = max((input_tokens or 0) - image_in, 0)
            cached_text, cached_image = self._cached(input_details, text_in, image_in)
        else:
            image_in, text_in = 0, input_tokens or 0
            cached_text = cached_image = 0
        if isinstance(output_details, Mapping):
            text_out = _count(output_details.get("text_tokens")) or 0
            image_out = _count(output_details.get("image_tokens"))
            if image_out is None:
                image_out = max((output_tokens or 0) - text_out, 0)
        else:
            text_out, image_out = 0, output_tokens or 0
        dollars = (
            (text_in - cached_text) * self.text_input
            + cached_text * self._cached_text_rate
            + (image_in - cached_image) * self.image_input
            + cached_image * self._cached_image_rate
            + image_out * self.image_output
            + text_out * self.text_output
        )
        return dollars / 1_000_000

    @property
    def _cached_text_rate(self) -> float:
        return self.text_input if self.cached_text_input is None else self.cached_text_input

    @property
    def _cached_image_rate(self) -> float:
        return self.image_input if self.cached_image_input is None else self.cached_image_input

    def _cached(self, details: Mapping[str, Any], text_in: int, image_in: int) -> tuple[int, int]:
        """How many of the text and image input tokens were cached, each at most their count.

        `cached_tokens_details` splits them (as OpenAI's Realtime usage does); a bare
        `cached_tokens` is split the dearer way: first to the kind whose cached rate saves
        less, so the books never count less than was billed."""
        split = details.get("cached_tokens_details")
        if isinstance(split, Mapping):
            text = min(_count(split.get("text_tokens")) or 0, text_in)
            image = min(_count(split.get("image_tokens")) or 0, image_in)
            return text, image
        cached = min(_count(details.get("cached_tokens")) or 0, text_in + image_in)
        text_saves = self.text_input - self._cached_text_rate
        image_saves = self.image_input - self._cached_image_rate
        if text_saves <= image_saves:
            text = min(cached, text_in)
            return text, cached - text
        image = min(cached, image_in)
        return cached - image, image

    def as_dict(self) -> dict[str, Any]:
        return {
            "usd_per_1m_text_input_tokens": self.text_input,
            "usd_per_1m_cached_text_input_tokens": self.cached_text_input,
            "usd_per_1m_image_input_tokens": self.image_input,
            "usd_per_1m_cached_image_input_tokens": self.cached_image_input,
            "usd_per_1m_image_output_tokens": self.image_output,
            "usd_per_1m_text_output_tokens": self.text_output,
            "source": self.source,
        }


@dataclass(frozen=True)
class ImagePrices:
    """Per-image output prices by quality and size, as OpenAI's tables list them."""

    table: Mapping[str, Mapping[str, float]]  # quality -> size -> USD
    source: str = _GUIDE
    # The quality the upstream uses when none is sent (None: "auto", priced at the dearest).
    default_quality: str | None = None
    # Estimated price of the qualities OpenAI's table does not list, as a multiple of
    # "high" (xhigh/max on 2.5/2.6): a reservation only, settled from `usage`.
    extra_qualities: Mapping[str, float] | None = None
    # An unlisted size costs the nearest listed size's price scaled by area; False: unscaled
    # (an operator's one price per image, whatever its size).
    by_area: bool = True

    def estimate(self, quality: str | None, size: str) -> float:
        """One image's price. Unknown sizes scale the nearest listed size by area;
        'auto' (or no) quality and size reserve the dearest listed choice."""
        qualities = dict(self.table)
        quality = quality or self.default_quality
        if quality in (None, "auto") or (
            quality not in qualities and quality not in (self.extra_qualities or {})
        ):
            return max(self._size_price(prices, size) for prices in qualities.values())
        if quality in qualities:
            return self._size_price(qualities[quality], size)
        factor = (self.extra_qualities or {})[quality]
        return factor * self._size_price(qualities["high"], size)

    def _size_price(self, prices: Mapping[str, float], size: str) -> float:
        if size in prices:
            return prices[size]
        area = _area(size)
        if area is None:  # "auto": the dearest listed size
            return max(prices.values())
        nearest = min(prices, key=lambda listed: abs((_area(listed) or 0) - area))
        if not self.by_area:
            return prices[nearest]
        return prices[nearest] * area / (_area(nearest) or area)

    def as_dict(self) -> dict[str, Any]:
        return {
            "usd_per_image": {quality: dict(sizes) for quality, sizes in self.table.items()},
            "source": self.source,
        }


@dataclass(frozen=True)
class Pricing:
    """One model's prices: per-image to estimate, per-token (when it reports usage) to settle.

    An operator's model (IMAGE_GEN_MODELS_FILE) may have token rates only: then nothing can
    be estimated before the call (`estimate` is None) and the cost is known from `usage`.
    """

    per_image: ImagePrices | None
    per_token: TokenRates | None = None
    # Estimated input-image tokens for one edit input (high fidelity), to reserve for edits.
    input_image_tokens: int = 6_000
    read_on: str | None = PRICES_READ_ON  # None: the operator's own price

    def estimate(
        self, *, quality: str | None, size: str, count: int, input_images: int = 0
    ) -> float | None:
        """US dollars to reserve for `count` images (plus the inputs of an edit); None when
        there is no per-image price to estimate from."""
        if self.per_image is None:
            return None
        output = self.per_image.estimate(quality, size) * count
        if input_images and self.per_token:
            output += input_images * self.input_image_tokens * self.per_token.image_input / 1e6
        return round(output, 6)

    def cost(self, usage: Mapping[str, Any] | None) -> float | None:
        """The real cost from the upstream's `usage`, or None when it has none."""
        if not usage or self.per_token is None:
            return None
        cost = self.per_token.cost(usage)
        return round(cost, 6) if cost is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_image": self.per_image.as_dict() if self.per_image else None,
            "per_token": self.per_token.as_dict() if self.per_token else None,
            "read_on": self.read_on,
        }


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _area(size: str) -> int | None:
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        return None
    return int(width) * int(height)


_SQUARE, _PORTRAIT, _LANDSCAPE = "1024x1024", "1024x1536", "1536x1024"


def _table(**qualities: tuple[float, float, float]) -> dict[str, dict[str, float]]:
    """quality=(square, portrait, landscape) prices."""
    return {
        quality: {_SQUARE: square, _PORTRAIT: portrait, _LANDSCAPE: landscape}
        for quality, (square, portrait, landscape) in qualities.items()
    }


# Per-image: OpenAI's image-generation guide, "Calculating costs" (copy of 2026-07-27).
# Per-token: the pricing page as quoted by copies of it (gpt-image-1-mini from its model page).
# Cached input rates, read 2026-12-03 (figures per 1M tokens, text / image):
#   gpt-image-1: $1.25 / $2.50, OpenAI's model page
#     (https://developers.openai.com/ja-JP/api/docs/models/gpt-image-1, "Cached input").
#   gpt-image-1-mini: $0.20 / $0.25, OpenAI's model page
#     (https://developers.openai.com/de-DE/api/docs/models/gpt-image-1-mini).
#   gpt-image-1.5 (and chatgpt-image-latest, priced like it): $1.25 / $2.00, from third-party
#     copies of OpenAI's table only (imagine.art/blogs/gpt-image-1-5-pricing, 2026-03-27);
#     OpenAI's own page was not found.
#   gpt-image-2: $1.25 / $2.00, from third-party copies of OpenAI's pricing page only
#     (tokenmix.ai/blog/gpt-image-2-pricing-cost-signals-2026 and
#     gptimage2.to/blog/how-much-will-gpt-image-2-api-cost, both 2026-04-29).
#   gpt-image-2.5 and 2.6: no cached rate published on any page found: None, so cached
#     tokens cost the full input rate.
# The Images API reference (openai-python 3.3.1's images_response.py, 2026-08-21) lists only
# `image_tokens` and `text_tokens` in `usage.input_tokens_details`: OpenAI's image answers
# report no cached count today. The rates apply when an answer carries
# `input_tokens_details.cached_tokens` (the Responses API's name for it) or a
# `cached_tokens_details` split (the Realtime API's).
_GPT_IMAGE_2_TABLE = ImagePrices(
    _table(low=(0.006, 0.005, 0.005), medium=(0.053, 0.041, 0.041), high=(0.211, 0.165, 0.165)),
    extra_qualities={"xhigh": 2.0, "max": 4.0},
)
_GPT_IMAGE_2 = Pricing(
    _GPT_IMAGE_2_TABLE,
    TokenRates(
        text_input=5.00,
        image_input=8.00,
        image_output=30.00,
        cached_text_input=1.25,
        cached_image_input=2.00,
    ),
)
# gpt-image-2.5 / 2.6: OpenAI lists the same token rates as gpt-image-2 (pricing page as
# quoted 2026-09 and 2026-11) but no cached rates; their per-image table is not published,
# so gpt-image-2's is used for the reservation.
_GPT_IMAGE_25 = Pricing(
    _GPT_IMAGE_2_TABLE, TokenRates(text_input=5.00, image_input=8.00, image_output=30.00)
)
_GPT_IMAGE_15 = Pricing(
    ImagePrices(
        _table(low=(0.009, 0.013, 0.013), medium=(0.034, 0.05, 0.05), high=(0.133, 0.2, 0.2))
    ),
    TokenRates(
        text_input=5.00,
        image_input=8.00,
        image_output=32.00,
        cached_text_input=1.25,
        cached_image_input=2.00,
    ),
)
_GPT_IMAGE_1_MINI = Pricing(
    ImagePrices(
        _table(low=(0.005, 0.006, 0.006), medium=(0.011, 0.015, 0.015), high=(0.036, 0.052, 0.052))
    ),
    TokenRates(
        text_input=2.00,
        image_input=2.50,
        image_output=8.00,
        cached_text_input=0.20,
        cached_image_input=0.25,
        source="https://developers.openai.com/api/docs/models/gpt-image-1-mini",
    ),
)
_GPT_IMAGE_1 = Pricing(
    ImagePrices(
        _table(low=(0.011, 0.016, 0.016), medium=(0.042, 0.063, 0.063), high=(0.167, 0.25, 0.25))
    ),
    TokenRates(
        text_input=5.00,
        image_input=10.00,
        image_output=40.00,
        cached_text_input=1.25,
        cached_image_input=2.50,
        source="https://developers.openai.com/api/docs/models/gpt-image-1",
    ),
)
# DALL-E: openai.com/pricing as last published for them (the models are gone from OpenAI).
_DALL_E_SOURCE = "https://openai.com/api/pricing (DALL-E prices as last listed, 2023-12)"
_DALL_E_3 = Pricing(
    ImagePrices(
        {
            "standard": {"1024x1024": 0.040, "1024x1792": 0.080, "1792x1024": 0.080},
            "hd": {"1024x1024": 0.080, "1024x1792": 0.120, "1792x1024": 0.120},
        },
        source=_DALL_E_SOURCE,
        default_quality="standard",
    )
)
_DALL_E_2 = Pricing(
    ImagePrices(
        {"standard": {"256x256": 0.016, "512x512": 0.018, "1024x1024": 0.020}},
        source=_DALL_E_SOURCE,
        default_quality="standard",
    )
)

PRICING: dict[str, Pricing] = {
    "gpt-image-2": _GPT_IMAGE_2,
    "gpt-image-2.5-flare": _GPT_IMAGE_25,
    "gpt-image-2.5-sunburst": _GPT_IMAGE_25,
    "gpt-image-2.6-flare": _GPT_IMAGE_25,
    "gpt-image-2.6-sunburst": _GPT_IMAGE_25,
    "gpt-image-1.5": _GPT_IMAGE_15,
    "chatgpt-image-latest": _GPT_IMAGE_15,
    "gpt-image-1-mini": _GPT_IMAGE_1_MINI,
    "gpt-image-1": _GPT_IMAGE_1,
    "dall-e-3": _DALL_E_3,
    "dall-e-2": _DALL_E_2,
}
# A model added to the catalog without prices of its own is priced like the default model.
FALLBACK = _GPT_IMAGE_2

# The operator's prices (catalog/operator.py installs them with the models file): one per
# new model (None when its entry has no `price`) and per alias that has a `price` of its own.
_OPERATOR: dict[str, Pricing | None] = {}


def use_operator_prices(prices: Mapping[str, Pricing | None]) -> None:
    """Price the operator's models so (in place, so every importer sees them)."""
    _OPERATOR.clear()
    _OPERATOR.update(prices)


def pricing_for(model_id: str) -> Pricing | None:
    """A model's prices; a snapshot costs what its base costs, an alias what its base costs
    unless it has a `price` of its own. None: an operator's new model without a price."""
    if model_id in _OPERATOR:
        return _OPERATOR[model_id]
    return PRICING.get(base_id(model_id), FALLBACK)
