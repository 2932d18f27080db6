"""Issue 16's catalog pieces through the HTTP API against the fake upstream (pinned clock):
snapshot ids, GPT Image 2.6's `complexity`, transparent backgrounds, `safety_identifier`."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from imagegen.access.tokens import parse_tokens
from imagegen.catalog.models import CATALOG, SNAPSHOTS
from imagegen.catalog.pricing import pricing_for
from imagegen.imaging.request import MAX_SAFETY_IDENTIFIER
from tests.support import fake_openai as fake
from tests.support.mcp import tools_by_name
from tests.support.service import bearer, line, read_metadata

PNG = fake.make_png(16, 16)
ALICE, BOB = "alice-secret-token-0123456789", "bob-secret-token-0123456789"
COMPLEXITY_MODELS = ("gpt-image-2.6-flare", "gpt-image-2.6-sunburst")
NO_COMPLEXITY = (
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-sunburst-2026-09-08",
    "dall-e-3",
)
TRANSPARENT_MODELS = (
    "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.6-flare",
    "gpt-image-2.6-sunburst",
)


def upload(client: FlaskClient, path: str, **fields: Any) -> Any:
    """A multipart edit of one small PNG with these text fields."""
    data: dict[str, Any] = {key: str(value) for key, value in fields.items()}
    data["image"] = (io.BytesIO(PNG), "a.png")
    return client.post(path, data=data, content_type="multipart/form-data")


def refusal(response: Any, field: str) -> str:
    """The VALIDATION_ERROR's message, after checking it names `field`."""
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["field"] == field
    return body["error"]


def openai_refusal(response: Any, param: str) -> str:
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error" and error["param"] == param
    return error["message"]


@pytest.fixture
def tokens_client(settings, make_app) -> FlaskClient:
    """Two client tokens: alice may use only gpt-image-2 (and so its snapshots), bob any."""
    tokens = parse_tokens([line("alice", ALICE, "models=gpt-image-2"), line("bob", BOB)])
    return make_app(settings, tokens=tokens, tokens_file=Path("tokens")).test_client()


def expected_identifier(name: str) -> str:
    digest = hashlib.sha256(f"image-gen token name\x00{name}".encode()).hexdigest()
    return "imagegen-" + digest[:48]


# --- (a) snapshots --------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", ["gpt-image-2-2026-04-21", "gpt-image-2.5-flare-2026-09-08"])
def test_a_snapshot_is_generated_and_sent_upstream_by_its_own_id(client, fake_openai, snapshot):
    response = client.post("/generate", json={"prompt": "a kite", "model": snapshot})

    assert response.status_code == 200, response.get_json()
    (call,) = fake_openai.image_requests
    assert call.json["model"] == snapshot
    assert response.get_json()["model"] == snapshot


def test_a_snapshot_is_validated_like_its_base(client, fake_openai):
    wide = client.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2-2026-04-21", "size": "3840x1280"}
    )
    xhigh = client.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2-2026-04-21", "quality": "xhigh"}
    )
    sunburst_max = client.post(
        "/generate",
        json={"prompt": "p", "model": "gpt-image-2.5-sunburst-2026-09-08", "quality": "max"},
    )

    assert wide.status_code == 200  # gpt-image-2's size rule
    assert "gpt-image-2-2026-04-21" in refusal(xhigh, "quality")
    assert sunburst_max.status_code == 200
    assert [c.json["model"] for c in fake_openai.image_requests] == [
        "gpt-image-2-2026-04-21",
        "gpt-image-2.5-sunburst-2026-09-08",
    ]


def test_a_snapshot_follows_its_bases_lifecycle(client, fake_openai, today):
    deprecated = client.post("/generate", json={"prompt": "p", "model": "gpt-image-1.5-2025-12-16"})
    assert deprecated.status_code == 200
    assert any("shuts down on 2026-12-01" in w for w in deprecated.get_json()["warnings"])

    today.set(CATALOG["gpt-image-1.5"].shutdown_on)
    gone = client.post("/generate", json={"prompt": "p", "model": "gpt-image-1.5-2025-12-16"})

    assert "gpt-image-2.6-sunburst" in refusal(gone, "model")
    assert len(fake_openai.image_requests) == 1


def test_a_snapshot_edits_like_its_base_and_is_sent_as_asked(client, fake_openai):
    edit = upload(client, "/edit", prompt="a hat", model="gpt-image-2.5-flare-2026-09-08")
    compat = upload(client, "/v1/images/edits", prompt="a hat", model="gpt-image-2-2026-04-21")

    assert edit.status_code == 200, edit.get_json()
    assert compat.status_code == 200, compat.get_json()
    assert [c.form["model"] for c in fake_openai.image_requests] == [
        "gpt-image-2.5-flare-2026-09-08",
        "gpt-image-2-2026-04-21",
    ]


def test_models_lists_each_snapshot_after_its_base_with_the_bases_prices(client):
    listed = client.get("/models").get_json()["models"]
    ids = [m["id"] for m in listed]
    by_id = {m["id"]: m for m in listed}

    for snapshot, base in SNAPSHOTS.items():
        entry = by_id[snapshot]
        assert entry["snapshot_of"] == base
        assert ids.index(snapshot) > ids.index(base)
        assert entry["pricing"] == by_id[base]["pricing"]
        assert entry["options"] == by_id[base]["options"]
        assert entry["status"] == by_id[base]["status"]
    assert by_id["gpt-image-2"]["snapshot_of"] is None
    one = client.get("/models/gpt-image-2-2026-04-21")
    assert one.status_code == 200 and one.get_json()["snapshot_of"] == "gpt-image-2"
    assert pricing_for("gpt-image-2-2026-04-21") is pricing_for("gpt-image-2")


def test_v1_models_lists_the_usable_snapshots(client, today):
    listed = {m["id"]: m for m in client.get("/v1/models").get_json()["data"]}

    assert listed["gpt-image-2-2026-04-21"]["snapshot_of"] == "gpt-image-2"
    assert listed["gpt-image-2.5-flare-2026-09-08"]["snapshot_of"] == "gpt-image-2.5-flare"
    assert listed["gpt-image-2"]["snapshot_of"] is None
    one = client.get("/v1/models/gpt-image-2.5-sunburst-2026-09-08")
    assert one.status_code == 200
    assert one.get_json()["snapshot_of"] == "gpt-image-2.5-sunburst"
    today.set(CATALOG["gpt-image-1.5"].shutdown_on)
    assert "gpt-image-1.5-2025-12-16" not in [
        m["id"] for m in client.get("/v1/models").get_json()["data"]
    ]


def test_v1_generations_send_a_snapshot_as_asked(client, fake_openai):
    response = client.post(
        "/v1/images/generations", json={"prompt": "p", "model": "gpt-image-2-2026-04-21"}
    )

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[0].json["model"] == "gpt-image-2-2026-04-21"


def test_a_token_allowed_a_base_model_may_pin_its_snapshots_but_not_other_models(
    tokens_client, fake_openai
):
    snapshot = tokens_client.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2-2026-04-21"}, headers=bearer(ALICE)
    )
    other = tokens_client.post(
        "/generate",
        json={"prompt": "p", "model": "gpt-image-2.5-flare-2026-09-08"},
        headers=bearer(ALICE),
    )

    assert snapshot.status_code == 200, snapshot.get_json()
    assert other.status_code == 403
    body = other.get_json()
    assert (body["field"], body["allowed"]) == ("model", ["gpt-image-2"])


def test_a_token_allowed_only_a_snapshot_may_not_use_the_moving_base(settings, make_app):
    tokens = parse_tokens([line("pinned", ALICE, "models=gpt-image-2-2026-04-21")])
    pinned = make_app(settings, tokens=tokens, tokens_file=Path("tokens")).test_client()

    base = pinned.post("/generate", json={"prompt": "p"}, headers=bearer(ALICE))
    snapshot = pinned.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2-2026-04-21"}, headers=bearer(ALICE)
    )

    assert base.status_code == 403
    assert snapshot.status_code == 200


# --- (b) complexity -------------------------------------------------------------------------


@pytest.mark.parametrize("model", COMPLEXITY_MODELS)
@pytest.mark.parametrize("value", ["low", "medium", "high"])
def test_complexity_is_sent_upstream_as_given(client, fake_openai, model, value):
    response = client.post(
        "/generate", json={"prompt": "a poster", "model": model, "complexity": value}
    )

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[0].json["complexity"] == value


def test_complexity_left_out_is_not_sent_and_models_say_it_defaults_to_high(client, fake_openai):
    response = client.post("/generate", json={"prompt": "p", "model": "gpt-image-2.6-flare"})
    described = client.get("/models/gpt-image-2.6-sunburst").get_json()

    assert response.status_code == 200
    assert "complexity" not in fake_openai.image_requests[0].json
    assert described["options"]["complexity"] == {
        "type": "string",
        "enum": ["low", "medium", "high"],
        "default": "high",
    }
    assert described["edits"]["options"]["complexity"]["enum"] == ["low", "medium", "high"]
    assert "complexity" not in client.get("/models/gpt-image-2.5-flare").get_json()["options"]


@pytest.mark.parametrize("model", NO_COMPLEXITY)
def test_complexity_is_refused_for_models_that_do_not_take_it(client, fake_openai, model):
    response = client.post("/generate", json={"prompt": "p", "model": model, "complexity": "low"})

    message = refusal(response, "complexity")
    assert f"model {model}: complexity." in message
    assert "'complexity' is taken by gpt-image-2.6-flare, gpt-image-2.6-sunburst only." in message
    assert fake_openai.image_requests == []


def test_a_complexity_outside_its_values_is_refused(client, fake_openai):
    response = client.post(
        "/generate", json={"prompt": "p", "model": "gpt-image-2.6-flare", "complexity": "max"}
    )

    assert "must be one of low, medium, high" in refusal(response, "complexity")
    assert fake_openai.image_requests == []


def test_complexity_reaches_edits_and_the_v1_routes(client, fake_openai):
    edit = upload(client, "/edit", prompt="p", model="gpt-image-2.6-sunburst", complexity="low")
    v1_edit = upload(
        client, "/v1/images/edits", prompt="p", model="gpt-image-2.6-flare", complexity="medium"
    )
    v1_generation = client.post(
        "/v1/images/generations",
        json={"prompt": "p", "model": "gpt-image-2.6-flare", "complexity": "high"},
    )

    for response in (edit, v1_edit, v1_generation):
        assert response.status_code == 200, response.get_json()
    edits, generation = fake_openai.image_requests[:2], fake_openai.image_requests[2]
    assert [c.form["complexity"] for c in edits] == ["low", "medium"]
    assert generation.json["complexity"] == "high"


def test_complexity_is_refused_on_v1_and_edits_for_models_that_do_not_take_it(client, fake_openai):
    v1 = client.post(
        "/v1/images/generations",
        json={"prompt": "p", "model": "gpt-image-2.5-sunburst", "complexity": "low"},
    )
    edit = upload(client, "/edit", prompt="p", model="gpt-image-2", complexity="low")
    v1_edit = upload(client, "/v1/images/edits", prompt="p", complexity="low")

    assert "gpt-image-2.6-flare" in openai_refusal(v1, "complexity")
    assert "gpt-image-2.6-flare" in refusal(edit, "complexity")
    assert "gpt-image-2.6-flare" in openai_refusal(v1_edit, "complexity")
    assert fake_openai.image_requests == []


# --- (c) transparent backgrounds ------------------------------------------------------------


@pytest.mark.parametrize("model", TRANSPARENT_MODELS)
def test_gpt_image_25_26_and_their_snapshots_take_a_transparent_background(
    client, fake_openai, model
):
    response = client.post(
        "/generate", json={"prompt": "a sticker", "model": model, "background": "transparent"}
    )

    assert response.status_code == 200, response.get_json()
    assert fake_openai.image_requests[0].json["background"] == "transparent"
    enum = client.get(f"/models/{model}").get_json()["options"]["background"]["enum"]
    assert "transparent" in enum


@pytest.mark.parametrize("model", ["gpt-image-2", "gpt-image-2-2026-04-21"])
def test_gpt_image_2_and_its_snapshot_still_refuse_a_transparent_background(
    client, fake_openai, model
):
    response = client.post(
        "/generate", json={"prompt": "p", "model": model, "background": "transparent"}
    )
    edit = upload(client, "/edit", prompt="p", model=model, background="transparent")

    assert "opaque, auto" in refusal(response, "background")
    assert "opaque, auto" in refusal(edit, "background")
    assert fake_openai.image_requests == []


# --- (d) safety_identifier ------------------------------------------------------------------


def test_a_tokens_caller_is_identified_upstream_by_a_stable_hash_of_the_tokens_name(
    tokens_client, fake_openai
):
    for secret in (ALICE, ALICE, BOB):
        response = tokens_client.post("/generate", json={"prompt": "p"}, headers=bearer(secret))
        assert response.status_code == 200, response.get_json()

    sent = [c.json["safety_identifier"] for c in fake_openai.image_requests]
    assert sent == [expected_identifier("alice")] * 2 + [expected_identifier("bob")]
    assert all(len(value) <= MAX_SAFETY_IDENTIFIER for value in sent)
    for value in sent:
        assert ALICE not in value and BOB not in value and "alice" not in value
        assert hashlib.sha256(ALICE.encode()).hexdigest()[:16] not in value


def test_the_callers_own_identifier_is_sent_as_given_and_user_stands_for_it(
    tokens_client, fake_openai
):
    own = tokens_client.post(
        "/generate", json={"prompt": "p", "safety_identifier": "end-user-7f3a"}, headers=bearer(BOB)
    )
    user = tokens_client.post(
        "/generate", json={"prompt": "p", "user": "end-user-9"}, headers=bearer(BOB)
    )
    empty = tokens_client.post(
        "/generate", json={"prompt": "p", "safety_identifier": ""}, headers=bearer(BOB)
    )

    assert own.status_code == user.status_code == empty.status_code == 200
    sent = [c.json for c in fake_openai.image_requests]
    assert [body["safety_identifier"] for body in sent] == [
        "end-user-7f3a",
        "end-user-9",
        expected_identifier("bob"),
    ]
    assert all("user" not in body for body in sent)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("safety_identifier", "x" * (MAX_SAFETY_IDENTIFIER + 1)),
        ("safety_identifier", 42),
        ("user", ["u"]),
        ("safety_identifier", "line\nbreak"),
    ],
)
def test_an_unusable_identifier_is_refused_before_any_call(client, fake_openai, field, value):
    response = client.post("/generate", json={"prompt": "p", field: value})

    assert f"up to {MAX_SAFETY_IDENTIFIER}" in refusal(response, field)
    assert fake_openai.image_requests == []


def test_an_open_service_sends_no_identifier_of_its_own(client, fake_openai):
    anonymous = client.post("/generate", json={"prompt": "p"})
    own = client.post("/generate", json={"prompt": "p", "safety_identifier": "abc"})

    assert anonymous.status_code == own.status_code == 200
    first, second = fake_openai.image_requests
    assert "safety_identifier" not in first.json
    assert second.json["safety_identifier"] == "abc"


def test_edits_and_v1_carry_the_identifier_in_their_form(tokens_client, fake_openai):
    edit = tokens_client.post(
        "/edit",
        data={"prompt": "p", "image": (io.BytesIO(PNG), "a.png")},
        content_type="multipart/form-data",
        headers=bearer(BOB),
    )
    v1_edit = tokens_client.post(
        "/v1/images/edits",
        data={"prompt": "p", "user": "agent-7", "image": (io.BytesIO(PNG), "a.png")},
        content_type="multipart/form-data",
        headers=bearer(BOB),
    )
    v1 = tokens_client.post("/v1/images/generations", json={"prompt": "p"}, headers=bearer(BOB))

    for response in (edit, v1_edit, v1):
        assert response.status_code == 200, response.get_json()
    first, second, third = fake_openai.image_requests
    assert first.form["safety_identifier"] == expected_identifier("bob")
    assert second.form["safety_identifier"] == "agent-7"
    assert third.json["safety_identifier"] == expected_identifier("bob")


def test_dall_e_models_get_the_identifier_as_user(tokens_client, fake_openai):
    response = tokens_client.post(
        "/generate", json={"prompt": "p", "model": "dall-e-3", "count": 2}, headers=bearer(BOB)
    )

    assert response.status_code == 200, response.get_json()
    for call in fake_openai.image_requests:  # one call per image
        assert call.json["user"] == expected_identifier("bob")
        assert "safety_identifier" not in call.json


def test_the_identifier_is_neither_stored_nor_logged(
    tokens_client, fake_openai, images_dir, caplog
):
    response = tokens_client.post(
        "/generate",
        json={"prompt": "p", "safety_identifier": "end-user-secretish"},
        headers=bearer(BOB),
    )

    assert response.status_code == 200
    metadata = read_metadata(images_dir, response.get_json()["job_id"])
    assert "end-user-secretish" not in str(metadata)
    assert expected_identifier("bob") not in str(metadata)
    assert "end-user-secretish" not in caplog.text


def test_an_asynchronous_job_sends_the_identifier_too(settings, make_jobs_app, fake_openai):
    tokens = parse_tokens([line("bob", BOB)])
    client = make_jobs_app(tokens=tokens, tokens_file=Path("tokens")).test_client()

    accepted = client.post(
        "/generate",
        json={"prompt": "p", "model": "gpt-image-2.6-flare", "complexity": "low"},
        headers={"Prefer": "respond-async", **bearer(BOB)},
    )
    assert accepted.status_code == 202, accepted.get_json()
    deadline = time.monotonic() + 15
    while not fake_openai.image_requests and time.monotonic() < deadline:
        time.sleep(0.05)

    (call,) = fake_openai.image_requests
    assert call.json["safety_identifier"] == expected_identifier("bob")
    assert call.json["complexity"] == "low"


def test_placeholder_mode_takes_the_fields_and_calls_nothing(placeholder_client, fake_openai):
    response = placeholder_client.post(
        "/generate",
        json={
            "prompt": "p",
            "model": "gpt-image-2.6-flare",
            "complexity": "low",
            "safety_identifier": "abc",
        },
    )

    assert response.status_code == 200
    assert fake_openai.requests == []


# --- where the options show up: OpenAPI and MCP, both built from the catalog ---------------


def test_openapi_and_mcp_schemas_carry_snapshots_complexity_and_the_identifier(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    generate = schemas["GenerateRequest"]["properties"]
    tool = tools_by_name(client)["generate_image"]["inputSchema"]["properties"]

    for properties in (generate, schemas["OpenAIImagesRequest"]["properties"], tool):
        assert "gpt-image-2-2026-04-21" in properties["model"]["enum"]
        assert properties["complexity"]["enum"][:3] == ["low", "medium", "high"]
        assert properties["safety_identifier"]["maxLength"] == MAX_SAFETY_IDENTIFIER
    assert "gpt-image-2.6-flare" in generate["complexity"]["description"]
