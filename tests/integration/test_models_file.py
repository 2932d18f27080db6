"""The operator's models file through HTTP: aliases and new models, named upstreams, fallback
from a 429ing upstream to the next (two fake upstreams) and none on a refusal."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from imagegen.access.tokens import parse_tokens
from imagegen.catalog import operator
from imagegen.services import services
from imagegen.settings import Settings
from tests.support import fake_openai as fake
from tests.support.fake_openai import FakeOpenAI
from tests.support.jobs import finished
from tests.support.mcp import result_of, rpc, tools_by_name
from tests.support.pictures import PNG, jpeg, rgba_png
from tests.support.service import ALICE, TEST_KEY, bearer, line, read_metadata

XAI_KEY = "xai-key-0123456789-never-shown"

MODELS_FILE = """
[upstreams.xai]
kind = "openai"
base_url = "{second}"
key_file = "xai_key"

[models."team-image"]
like = "gpt-image-2"
fallbacks = ["xai"]

[models."grok-imagine-image"]
family = "openai-compatible"
sizes = ["1024x1024", "1536x1024"]
count = {{ min = 1, max = 4 }}
options = {{ quality = ["standard", "hd"] }}
upstream = "xai"

[models."gpt-image-2"]
deployment = "img-prod"

[models."local-image"]
family = "openai-compatible"
sizes = ["1024x1024", "1536x1024"]
count = {{ min = 1, max = 4 }}
options = {{ quality = ["standard", "hd"] }}
upstream = "xai"
edits = {{ max_images = 2, mask = true }}
variations = {{ formats = ["png"] }}

[models."local-image".price]
per_image = {{ standard = 0.04, hd = {{ "1024x1024" = 0.08, "1536x1024" = 0.12 }} }}
input_per_mtok = 2.0
output_per_mtok = 10.0
source = "https://example.test/local-image/pricing"

[models."metered-image"]
family = "openai-compatible"
sizes = ["1024x1024"]
upstream = "xai"
price = {{ input_per_mtok = 1.0, output_per_mtok = 4.0 }}

[models."cheap-image"]
like = "gpt-image-2"
price = {{ per_image = 0.01 }}
"""


@pytest.fixture(scope="module")
def second_upstream() -> Iterator[FakeOpenAI]:
    """Another fake upstream (the named upstream `xai`)."""
    with FakeOpenAI() as second:
        yield second


@pytest.fixture
def xai(second_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    second_upstream.reset()
    yield second_upstream
    second_upstream.reset()


@pytest.fixture
def models_file(tmp_path: Path, xai: FakeOpenAI) -> Iterator[Path]:
    """The models file above, its `xai` upstream the second fake; the catalog is the built-in
    one again afterwards."""
    (tmp_path / "xai_key").write_text(XAI_KEY + "\n")
    path = tmp_path / "models.toml"
    path.write_text(MODELS_FILE.format(second=xai.base_url))
    yield path
    operator.install(None)


@pytest.fixture
def routed_app(
    settings: Settings, make_app: Callable[..., Flask], models_file: Path
) -> Callable[..., Flask]:
    """An app serving the models file (plus setting overrides), upstream retries off. The
    catalog includes its models at once, as Settings.from_env does before reading tokens."""
    load = operator.models_for(models_file)
    operator.install(load.file)

    def build(**overrides: object) -> Flask:
        return make_app(settings, models_load=load, max_retries=0, **overrides)

    return build


@pytest.fixture
def routed(routed_app: Callable[..., Flask]) -> FlaskClient:
    return routed_app().test_client()


def generate(client: FlaskClient, **body: object) -> tuple[int, dict]:
    answer = client.post("/generate", json={"prompt": "a lighthouse", **body})
    return answer.status_code, answer.get_json()


# --- aliases and new models -----------------------------------------------------------------


def test_an_alias_is_validated_like_its_base_and_sent_by_its_own_name(routed, fake_openai):
    status, body = generate(routed, model="team-image", size="2048x1152", quality="low")

    assert status == 200, body
    assert body["model"] == "team-image"
    (call,) = fake_openai.image_requests
    assert call.json["model"] == "team-image"
    assert call.json["size"] == "2048x1152"
    assert body["served_by"] == "default"
    # gpt-image-2 takes no transparent background, so neither does its alias.
    status, refused = generate(routed, model="team-image", background="transparent")
    assert status == 400 and refused["code"] == "VALIDATION_ERROR"
    assert len(fake_openai.image_requests) == 1


def test_a_new_model_is_served_by_its_upstream_within_its_own_sizes_and_counts(
    routed, fake_openai, xai, images_dir
):
    status, body = generate(routed, model="grok-imagine-image", count=2, quality="hd")

    assert status == 200, body
    assert fake_openai.image_requests == []
    (call,) = xai.image_requests
    assert call.json["model"] == "grok-imagine-image" and call.json["quality"] == "hd"
    assert call.header("authorization") == f"Bearer {XAI_KEY}"
    assert body["served_by"] == "xai"
    assert read_metadata(images_dir, body["job_id"])["served_by"] == "xai"
    for asked in ({"size": "2048x2048"}, {"count": 5}, {"quality": "low"}):
        status, refused = generate(routed, model="grok-imagine-image", **asked)
        assert status == 400 and refused["code"] == "VALIDATION_ERROR", asked
    assert len(xai.image_requests) == 1


def test_get_models_shows_operator_models_and_where_they_come_from(routed):
    listed = {m["id"]: m for m in routed.get("/models").get_json()["models"]}

    alias, new, built_in = (
        listed["team-image"],
        listed["grok-imagine-image"],
        listed["gpt-image-2"],
    )
    assert (alias["origin"], alias["like"], alias["upstream"]) == (
        "models_file",
        "gpt-image-2",
        "default",
    )
    assert alias["fallbacks"] == ["xai"] and alias["sizes"] == built_in["sizes"]
    assert alias["pricing"] == built_in["pricing"]  # priced like its base
    assert (new["origin"], new["family"], new["upstream"]) == (
        "models_file",
        "openai-compatible",
        "xai",
    )
    assert new["count"] == {"min": 1, "max": 4} and new["sizes"] == ["1024x1024", "1536x1024"]
    assert (built_in["origin"], built_in["like"]) == ("catalog", None)
    assert listed["dall-e-2"]["origin"] == "catalog"
    assert routed.get("/models/team-image").get_json()["like"] == "gpt-image-2"
    v1 = {m["id"]: m for m in routed.get("/v1/models").get_json()["data"]}
    assert v1["team-image"]["origin"] == "models_file" and v1["team-image"]["like"] == "gpt-image-2"


def test_openapi_and_mcp_schemas_name_operator_models(routed):
    spec = json.dumps(routed.get("/openapi.json").get_json())
    tools = json.dumps(tools_by_name(routed))

    for text in (spec, tools):
        assert "grok-imagine-image" in text and "team-image" in text


def test_a_token_may_be_limited_to_an_operator_model(routed_app, fake_openai):
    tokens = parse_tokens([line("alice", ALICE, "models=team-image")])
    client = routed_app(tokens=tokens, tokens_file=Path("tokens")).test_client()

    allowed = client.post(
        "/generate", json={"prompt": "p", "model": "team-image"}, headers=bearer(ALICE)
    )
    refused = client.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2"}, headers=bearer(ALICE)
    )

    assert allowed.status_code == 200, allowed.get_json()
    assert refused.status_code == 403


# --- prices ---------------------------------------------------------------------------------


def capped_client(routed_app: Callable[..., Flask], limits: str) -> FlaskClient:
    tokens = parse_tokens([line("alice", ALICE, limits)])
    return routed_app(tokens=tokens, tokens_file=Path("tokens")).test_client()


def test_a_priced_new_model_reserves_its_table_price_and_settles_from_its_token_rates(
    routed_app, xai, images_dir
):
    client = capped_client(routed_app, "usd_per_day=1")
    xai.enqueue(fake.usage_report({"input_tokens": 100, "output_tokens": 3000}))

    answer = client.post(
        "/generate",
        json={"prompt": "p", "model": "local-image", "quality": "hd", "size": "1536x1024"}
        | {"count": 2},
        headers=bearer(ALICE),
    )

    assert answer.status_code == 200, answer.get_json()
    cost = answer.get_json()["cost"]
    real = (100 * 2.0 + 3000 * 10.0) / 1e6
    assert cost == {"estimated_usd": 0.24, "usd": pytest.approx(real), "basis": "usage"}
    assert read_metadata(images_dir, answer.get_json()["job_id"])["cost"] == cost
    spent = client.get("/usage", headers=bearer(ALICE)).get_json()["token"]["usd_last_day"]
    assert spent == pytest.approx(real, abs=1e-6)


def test_a_priced_new_model_is_refused_at_the_cap_by_its_own_price(routed_app, xai):
    client = capped_client(routed_app, "usd_per_day=0.1")

    refused = client.post(
        "/generate",
        json={"prompt": "p", "model": "local-image", "quality": "hd", "count": 2},
        headers=bearer(ALICE),
    )

    assert refused.status_code == 400, refused.get_json()  # $0.16 > the whole $0.10 cap
    assert refused.get_json()["cap"] == "usd_per_day"
    assert xai.image_requests == []


def test_an_alias_with_a_price_of_its_own_costs_that_price(routed, fake_openai):
    status, body = generate(routed, model="cheap-image", count=3, quality="high")

    assert status == 200, body
    # Its price has no token rates: the upstream's usage does not reprice it.
    assert body["cost"] == {"estimated_usd": 0.03, "usd": 0.03, "basis": "price_table"}
    assert fake_openai.image_requests[0].json["model"] == "cheap-image"


def test_get_models_shows_the_operators_prices(routed):
    listed = {m["id"]: m for m in routed.get("/models").get_json()["models"]}

    local = listed["local-image"]["pricing"]
    assert local["per_image"] == {
        "usd_per_image": {
            "standard": {"1024x1024": 0.04, "1536x1024": 0.04},
            "hd": {"1024x1024": 0.08, "1536x1024": 0.12},
        },
        "source": "https://example.test/local-image/pricing",
    }
    assert local["per_token"]["usd_per_1m_text_input_tokens"] == 2.0
    assert local["per_token"]["usd_per_1m_image_output_tokens"] == 10.0
    assert local["read_on"] is None
    assert listed["metered-image"]["pricing"]["per_image"] is None
    assert listed["cheap-image"]["pricing"]["per_image"]["usd_per_image"]["high"] == {
        size: 0.01 for size in listed["gpt-image-2"]["sizes"] if size != "auto"
    }
    assert listed["team-image"]["pricing"] == listed["gpt-image-2"]["pricing"]
    assert listed["grok-imagine-image"]["pricing"] is None
    assert routed.get("/models/grok-imagine-image").get_json()["pricing"] is None


def test_a_new_model_without_a_price_has_an_unknown_cost(routed, xai, images_dir):
    status, body = generate(routed, model="grok-imagine-image")

    assert status == 200, body
    assert body["cost"] == {"estimated_usd": None, "usd": None, "basis": "unpriced"}
    assert read_metadata(images_dir, body["job_id"])["cost"] == body["cost"]
    assert len(xai.image_requests) == 1


def test_an_unpriced_models_async_job_and_mcp_answer_say_its_cost_is_unknown(routed_app, xai):
    app = routed_app(job_poll_interval=0.1)
    client = app.test_client()
    try:
        accepted = client.post(
            "/generate",
            json={"prompt": "p", "model": "grok-imagine-image"},
            headers={"Prefer": "respond-async"},
        )
        assert accepted.status_code == 202, accepted.get_json()
        done = finished(client, accepted.get_json()["job_id"])
        called = rpc(
            client,
            "tools/call",
            {"name": "generate_image", "arguments": {"prompt": "p", "model": "grok-imagine-image"}},
        )
    finally:
        services(app).jobs.shutdown(10)

    assert done["status"] == "completed", done
    assert done["cost"] == {"estimated_usd": None, "usd": None, "basis": "unpriced"}
    result = result_of(called)
    assert result["structuredContent"]["cost"]["basis"] == "unpriced"
    assert "cost unknown" in result["content"][0]["text"]


def test_a_token_rates_only_model_is_costed_from_its_usage(routed, xai):
    xai.enqueue(fake.usage_report({"input_tokens": 1000, "output_tokens": 5000}))

    status, body = generate(routed, model="metered-image")

    assert status == 200, body
    assert body["cost"] == {
        "estimated_usd": None,
        "usd": pytest.approx((1000 * 1.0 + 5000 * 4.0) / 1e6),
        "basis": "usage",
    }


@pytest.mark.parametrize("model", ["grok-imagine-image", "metered-image"])
def test_a_token_with_a_dollar_cap_may_not_use_a_model_it_cannot_estimate(routed_app, xai, model):
    client = capped_client(routed_app, "usd_per_day=5")
    uncapped = capped_client(routed_app, "images_per_day=10")

    refused = client.post("/generate", json={"prompt": "p", "model": model}, headers=bearer(ALICE))
    allowed = uncapped.post(
        "/generate", json={"prompt": "p", "model": model}, headers=bearer(ALICE)
    )

    assert refused.status_code == 403
    error = refused.get_json()
    assert error["code"] == "PERMISSION_DENIED"
    assert (error["field"], error["cap"], error["scope"]) == ("model", "usd_per_day", "token")
    assert model in error["error"] and "usd_per_day" in error["error"]
    assert allowed.status_code == 200, allowed.get_json()
    assert len(xai.image_requests) == 1  # the refusal sent nothing upstream


def test_a_service_dollar_cap_refuses_an_unpriced_model_for_everyone(routed_app, xai):
    client = routed_app(cap_usd_per_day=5.0).test_client()

    refused = client.post("/generate", json={"prompt": "p", "model": "grok-imagine-image"})
    v1 = client.post("/v1/images/generations", json={"prompt": "p", "model": "grok-imagine-image"})
    priced = client.post("/generate", json={"prompt": "p", "model": "local-image"})

    assert refused.status_code == 403
    assert (refused.get_json()["code"], refused.get_json()["scope"]) == (
        "PERMISSION_DENIED",
        "global",
    )
    assert "the service's usd_per_day cap" in refused.get_json()["error"]
    assert v1.status_code == 403 and v1.get_json()["error"]["code"] == "permission_denied"
    assert priced.status_code == 200, priced.get_json()
    assert len(xai.image_requests) == 1


# --- edits and variations of new models ---------------------------------------------------


def upload(client: FlaskClient, path: str, files: list[tuple[str, bytes]], **fields: str):
    """A multipart POST: `files` are (field, bytes)."""
    data: dict[str, Any] = dict(fields)
    for number, (field, content) in enumerate(files):
        data.setdefault(field, []).append((io.BytesIO(content), f"in-{number}.png"))
    return client.post(path, data=data, content_type="multipart/form-data")


def test_a_new_model_that_edits_gets_its_images_and_mask_on_its_upstream(
    routed, fake_openai, xai, images_dir
):
    mask = rgba_png(16, 16)
    files = [("image", PNG), ("image", rgba_png(16, 16)), ("mask", mask)]

    answer = upload(
        routed, "/edit", files, model="local-image", prompt="a hat", quality="hd", count="2"
    )

    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["served_by"] == "xai" and len(body["images"]) == 2
    assert fake_openai.image_requests == []
    (call,) = xai.image_requests
    assert call.path == "/v1/images/edits"
    assert (call.form["model"], call.form["prompt"], call.form["quality"], call.form["n"]) == (
        "local-image",
        "a hat",
        "hd",
        "2",
    )
    assert [f.name for f in call.files] == ["image[]", "image[]", "mask"]
    assert call.files[2].data == mask
    # Its price reserves two hd images plus its inputs at its own image-input rate.
    assert body["cost"]["estimated_usd"] == pytest.approx(2 * 0.08 + 2 * 6000 * 2.0 / 1e6)
    assert read_metadata(images_dir, body["job_id"])["operation"] == "edit"


@pytest.mark.parametrize(
    ("model", "files", "fields", "message"),
    [
        ("local-image", [("image", PNG)] * 3, {}, "local-image takes at most 2 input image(s)"),
        ("grok-imagine-image", [("image", PNG)], {}, "Model grok-imagine-image cannot edit"),
        ("local-image", [("image", PNG)], {"style": "vivid"}, "style"),
    ],
)
def test_edits_a_new_model_does_not_take_are_refused_before_any_call(
    routed, fake_openai, xai, model, files, fields, message
):
    answer = upload(routed, "/edit", files, model=model, prompt="a hat", **fields)

    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["code"] == "VALIDATION_ERROR"
    assert message in answer.get_json()["error"]
    assert xai.image_requests == [] and fake_openai.image_requests == []


def test_the_v1_edit_route_sends_a_new_model_to_its_upstream(routed, xai):
    answer = upload(routed, "/v1/images/edits", [("image", PNG)], model="local-image", prompt="p")

    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["data"][0]["b64_json"]
    (call,) = xai.image_requests
    assert call.path == "/v1/images/edits" and call.form["model"] == "local-image"


def test_a_new_model_that_makes_variations_gets_them_from_its_upstream(routed, xai):
    xai.variation_models.add("local-image")

    answer = upload(routed, "/variations", [("image", PNG)], model="local-image", count="2")
    v1 = upload(routed, "/v1/images/variations", [("image", PNG)], model="local-image")

    assert answer.status_code == 200, answer.get_json()
    assert len(answer.get_json()["images"]) == 2 and answer.get_json()["served_by"] == "xai"
    assert v1.status_code == 200, v1.get_json()
    assert v1.get_json()["data"][0]["b64_json"]
    first, second = xai.image_requests
    assert first.path == second.path == "/v1/images/variations"
    assert first.form == {"model": "local-image", "n": "2", "size": "1024x1024"}


@pytest.mark.parametrize(
    ("model", "image", "message"),
    [
        ("local-image", jpeg(), "local-image takes PNG only"),
        ("grok-imagine-image", PNG, "Model grok-imagine-image cannot make variations"),
    ],
)
def test_variations_a_new_model_does_not_take_are_refused(routed, xai, model, image, message):
    answer = upload(routed, "/variations", [("image", image)], model=model)

    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["code"] == "VALIDATION_ERROR"
    assert message in answer.get_json()["error"]
    assert xai.image_requests == []


def test_get_models_shows_what_a_new_model_edits_and_varies(routed):
    listed = {m["id"]: m for m in routed.get("/models").get_json()["models"]}

    edits, variations = listed["local-image"]["edits"], listed["local-image"]["variations"]
    assert (edits["max_images"], edits["mask"], edits["prompt"]) == (2, True, True)
    assert edits["formats"] == ["png", "jpeg", "webp"] and "quality" in edits["options"]
    assert (variations["max_images"], variations["prompt"], variations["formats"]) == (
        1,
        False,
        ["png"],
    )
    assert variations["options"] == {} and variations["mask"] is False
    assert listed["grok-imagine-image"]["edits"] is None
    assert listed["grok-imagine-image"]["variations"] is None


# --- fallbacks ------------------------------------------------------------------------------


def test_a_429_from_the_upstream_falls_back_to_the_next_which_is_named(
    routed, fake_openai, xai, images_dir
):
    fake_openai.enqueue(fake.rate_limited(retry_after="0"))

    status, body = generate(routed, model="team-image")

    assert status == 200, body
    assert len(fake_openai.image_requests) == 1
    (call,) = xai.image_requests
    assert call.json["model"] == "team-image"
    assert body["served_by"] == "xai"
    assert read_metadata(images_dir, body["job_id"])["served_by"] == "xai"
    scraped = routed.get("/metrics").get_data(as_text=True)
    assert (
        'imagegen_upstream_fallbacks_total{code="RATE_LIMIT_EXCEEDED",from_upstream="default",'
        'to_upstream="xai"} 1.0' in scraped
    )


@pytest.mark.parametrize(
    "failure", [fake.server_error(503), fake.drop_connection()], ids=["5xx", "connection"]
)
def test_a_5xx_or_a_dropped_connection_falls_back_too(routed, fake_openai, xai, failure):
    fake_openai.enqueue(failure)

    status, body = generate(routed, model="team-image")

    assert status == 200, body
    assert body["served_by"] == "xai" and len(xai.image_requests) == 1


@pytest.mark.parametrize(
    "refusal",
    [fake.bad_request("Invalid size", param="size"), fake.moderation_blocked()],
    ids=["400", "safety"],
)
def test_a_refusal_is_answered_without_trying_another_upstream(routed, fake_openai, xai, refusal):
    fake_openai.enqueue(refusal)

    status, body = generate(routed, model="team-image")

    assert status == 400, body
    assert len(fake_openai.image_requests) == 1
    assert xai.image_requests == []


def test_the_last_upstreams_failure_is_the_answer(routed, fake_openai, xai):
    fake_openai.enqueue(fake.rate_limited(retry_after="0"))
    xai.enqueue(fake.server_error(500))

    status, body = generate(routed, model="team-image")

    assert status == 502 and body["code"] == "UPSTREAM_ERROR"
    assert len(fake_openai.image_requests) == 1 and len(xai.image_requests) == 1


def test_no_upstream_key_appears_in_health_models_or_logs(
    routed, fake_openai, caplog, images_dir, models_file
):
    fake_openai.enqueue(fake.rate_limited(retry_after="0"))
    status, body = generate(routed, model="team-image")
    assert status == 200

    health = routed.get("/health").get_json()
    assert health["models_file"]["upstreams"] == ["xai"]
    assert health["models_file"]["last_reload"] == "ok"
    seen = [
        json.dumps(health),
        routed.get("/models").get_data(as_text=True),
        caplog.text,
        json.dumps(read_metadata(images_dir, body["job_id"])),
        repr(operator.models_for(models_file)),
        repr(operator.models_for(models_file).file),
    ]
    for text in seen:
        assert XAI_KEY not in text and TEST_KEY not in text


AZURE_KEY = "0123456789abcdef0123456789abcdef"  # Azure keys are hex: shown nowhere either


def test_an_azure_upstream_of_the_file_serves_its_model_on_the_deployment_it_names(
    settings, make_app, tmp_path, second_upstream
):
    second_upstream.reset()
    (tmp_path / "azure_key").write_text(AZURE_KEY + "\n")
    path = tmp_path / "azure.toml"
    path.write_text(
        f'[upstreams.corp]\nkind = "azure"\nendpoint = "{second_upstream.origin}"\n'
        'key_file = "azure_key"\napi_version = "2025-04-01-preview"\n'
        '[models."gpt-image-2"]\ndeployment = "img-prod"\nupstream = "corp"\n'
    )
    load = operator.models_for(path)
    operator.install(load.file)
    try:
        client = make_app(settings, models_load=load, max_retries=0).test_client()
        status, body = generate(client, model="gpt-image-2")
    finally:
        operator.install(None)

    assert status == 200, body
    assert body["served_by"] == "corp"
    (call,) = second_upstream.image_requests
    assert call.route == "/openai/deployments/img-prod/images/generations"
    assert call.query == {"api-version": "2025-04-01-preview"}
    assert call.auth_kind == "api-key" and call.header("authorization") is None
    assert AZURE_KEY not in json.dumps(body)
