"""What a job costs when the upstream reports cached input tokens, through HTTP against the
fake upstream: the cached rates where OpenAI publishes them, the full rate where it does not,
in the answer, the job's metadata, /usage and GET /models."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import fake_openai as fake
from tests.support.service import read_metadata, strict_json


def generate(client: Any, **body: Any) -> dict[str, Any]:
    answer = client.post("/generate", json={"prompt": "a lighthouse at dusk", **body})
    assert answer.status_code == 200, answer.get_json()
    return strict_json(answer.data)


def usage(text: int, image: int, output: int, **cached: Any) -> dict[str, Any]:
    return {
        "input_tokens": text + image,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image, **cached},
        "output_tokens": output,
        "total_tokens": text + image + output,
    }


@pytest.fixture
def capped(settings, make_app):
    """A client of an app with a $5 daily cap for the whole service (so /usage counts $)."""
    return make_app(settings, cap_usd_per_day=5.0).test_client()


def test_cached_text_tokens_cost_the_cached_text_rate(capped, fake_openai, images_dir):
    # gpt-image-2: text $5 (cached $1.25), image $8 (cached $2), output $30 per 1M tokens.
    report = usage(1500, 500, 1056, cached_tokens=1200)
    fake_openai.enqueue(fake.usage_report(report))

    body = generate(capped, model="gpt-image-2")

    expected = (300 * 5.00 + 1200 * 1.25 + 500 * 8.00 + 1056 * 30.00) / 1e6
    assert body["cost"]["basis"] == "usage"
    assert body["cost"]["usd"] == pytest.approx(expected)
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 1200
    metadata = read_metadata(images_dir, body["job_id"])
    assert metadata["cost"] == body["cost"]
    assert strict_json(capped.get("/usage").data)["global"]["usd_last_day"] == pytest.approx(
        expected, abs=1e-6
    )


def test_a_bare_cached_count_is_split_the_way_that_costs_more(client, fake_openai):
    # 1,200 cached of 200 text + 1,800 image tokens: 200 are text (which saves less when
    # cached), the other 1,000 image tokens.
    fake_openai.enqueue(fake.usage_report(usage(200, 1800, 1056, cached_tokens=1200)))

    body = generate(client, model="gpt-image-2")

    expected = (200 * 1.25 + 800 * 8.00 + 1000 * 2.00 + 1056 * 30.00) / 1e6
    assert body["cost"]["usd"] == pytest.approx(expected)


def test_a_split_of_cached_tokens_prices_each_kind_at_its_cached_rate(client, fake_openai):
    split = {
        "cached_tokens": 1400,
        "cached_tokens_details": {"text_tokens": 400, "image_tokens": 1000},
    }
    fake_openai.enqueue(fake.usage_report(usage(500, 3000, 4160, **split)))

    body = generate(client, model="gpt-image-2")

    expected = (100 * 5.00 + 400 * 1.25 + 2000 * 8.00 + 1000 * 2.00 + 4160 * 30.00) / 1e6
    assert body["cost"] == {
        "estimated_usd": body["cost"]["estimated_usd"],
        "usd": pytest.approx(expected),
        "basis": "usage",
    }


def test_more_cached_tokens_than_input_tokens_cost_no_less_than_all_input_cached(
    client, fake_openai
):
    hostile = {
        "cached_tokens": 90_000_000,
        "cached_tokens_details": {"text_tokens": 90_000_000, "image_tokens": 0},
    }
    fake_openai.enqueue(
        fake.usage_report(usage(100, 0, 1056, cached_tokens=90_000_000)),
        fake.usage_report(usage(100, 50, 1056, **hostile)),
    )

    bare = generate(client, model="gpt-image-2")
    split = generate(client, model="gpt-image-2")

    assert bare["cost"]["usd"] == pytest.approx((100 * 1.25 + 1056 * 30.00) / 1e6)
    assert split["cost"]["usd"] == pytest.approx((100 * 1.25 + 50 * 8.00 + 1056 * 30.00) / 1e6)


def test_cached_tokens_of_a_model_without_published_cached_rates_cost_the_full_rate(
    client, fake_openai
):
    fake_openai.enqueue(
        fake.usage_report(usage(1500, 500, 1056, cached_tokens=1200)),
        fake.usage_report(usage(1500, 500, 1056)),
    )

    cached = generate(client, model="gpt-image-2.6-sunburst")
    uncached = generate(client, model="gpt-image-2.6-sunburst")

    full = (1500 * 5.00 + 500 * 8.00 + 1056 * 30.00) / 1e6
    assert cached["cost"]["usd"] == pytest.approx(full)
    assert uncached["cost"]["usd"] == pytest.approx(full)


def test_a_snapshot_costs_its_base_s_cached_rates(client, fake_openai):
    fake_openai.enqueue(fake.usage_report(usage(1000, 0, 1056, cached_tokens=1000)))

    body = generate(client, model="gpt-image-2-2026-04-21")

    assert body["cost"]["usd"] == pytest.approx((1000 * 1.25 + 1056 * 30.00) / 1e6)


def test_get_models_shows_the_cached_rates_and_null_where_unpublished(client):
    listed = {m["id"]: m for m in client.get("/models").get_json()["models"]}

    rates = {
        model: (
            listed[model]["pricing"]["per_token"]["usd_per_1m_cached_text_input_tokens"],
            listed[model]["pricing"]["per_token"]["usd_per_1m_cached_image_input_tokens"],
        )
        for model in ("gpt-image-2", "gpt-image-1.5", "gpt-image-1-mini", "gpt-image-1")
    }
    assert rates == {
        "gpt-image-2": (1.25, 2.00),
        "gpt-image-1.5": (1.25, 2.00),
        "gpt-image-1-mini": (0.20, 0.25),
        "gpt-image-1": (1.25, 2.50),
    }
    for model in ("gpt-image-2.5-flare", "gpt-image-2.6-sunburst"):
        per_token = listed[model]["pricing"]["per_token"]
        assert per_token["usd_per_1m_cached_text_input_tokens"] is None
        assert per_token["usd_per_1m_cached_image_input_tokens"] is None
        assert per_token["usd_per_1m_text_input_tokens"] == 5.00
    assert listed["dall-e-2"]["pricing"]["per_token"] is None
