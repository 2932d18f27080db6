"""POST /mcp through the Flask client: the JSON-RPC layer (errors, notifications, batches,
version negotiation, transport checks) and the tools as adapters over the HTTP API (schemas
from the catalog, results without image bytes, errors the agent can act on, tokens)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from imagegen.catalog.models import CATALOG, MODELS
from imagegen.catalog.spec import SHUT_DOWN
from imagegen.mcp import protocol
from imagegen.mcp import server as mcp
from tests.support.mcp import ACCEPT, V2025_06, result_of, rpc, tools_by_name
from tests.support.service import ALICE, BOB, OPS, TEST_KEY, bearer, job_files, line

TOOLS = {"list_models", "generate_image", "edit_image", "get_job", "list_images", "delete_image"}


def error_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert "result" not in body, body
    return body["error"]


def call_tool(client: FlaskClient, name: str, arguments: dict[str, Any], **kw: Any) -> dict:
    return result_of(rpc(client, "tools/call", {"name": name, "arguments": arguments}, **kw))


def error_text(result: dict[str, Any]) -> str:
    assert result["isError"] is True, result
    return result["content"][0]["text"]


# --- the JSON-RPC layer -------------------------------------------------------------------


def test_initialize_agrees_on_the_client_revision_it_speaks(placeholder_client):
    for version in ("2025-11-25", "2025-06-18", "2025-03-26"):
        params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t"}}
        result = result_of(rpc(placeholder_client, "initialize", params, headers=ACCEPT))

        assert result["protocolVersion"] == version
        assert result["capabilities"] == {
            "tools": {"listChanged": False},
            "resources": {"subscribe": False, "listChanged": False},
        }
        assert result["serverInfo"]["name"] == "image-gen"
        assert "generate_image" in result["instructions"]


def test_initialize_offers_its_newest_revision_for_one_it_does_not_speak(placeholder_client):
    params = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t"}}
    result = result_of(rpc(placeholder_client, "initialize", params, headers=ACCEPT))
    assert result["protocolVersion"] == mcp.PROTOCOL_VERSIONS[0]

    error = error_of(rpc(placeholder_client, "initialize", {"capabilities": {}}, headers=ACCEPT))
    assert error["code"] == -32602


def test_malformed_json_is_a_parse_error_with_a_null_id(placeholder_client):
    for data in (b"{not json", b'{"jsonrpc": "2.0", "id": 1, "method": "ping"', b"\xff\xfe{}"):
        response = placeholder_client.post("/mcp", data=data, content_type="application/json")
        body = response.get_json()
        assert response.status_code == 200
        assert body["id"] is None and body["error"]["code"] == -32700


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "method": "ping"},  # no "jsonrpc"
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1},  # neither a request nor a response
        {"jsonrpc": "2.0", "id": None, "method": "ping"},  # MCP ids are strings or integers
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        "ping",
        None,
    ],
)
def test_a_message_that_is_not_a_json_rpc_request_is_an_invalid_request(
    placeholder_client, message
):
    body = json.dumps(message)
    response = placeholder_client.post(
        "/mcp", data=body, content_type="application/json", headers=V2025_06
    )
    assert error_of(response)["code"] == -32600


def test_an_unknown_method_is_method_not_found_with_the_request_id(placeholder_client):
    response = rpc(placeholder_client, "prompts/list", request_id="abc")
    assert response.get_json()["id"] == "abc"
    assert error_of(response)["code"] == -32601


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tools/call", {"arguments": {}}),  # no name
        ("tools/call", {"name": "no_such_tool", "arguments": {}}),
        ("tools/call", {"name": "list_models", "arguments": ["not", "an", "object"]}),
        ("resources/read", {}),
        ("resources/list", {"cursor": 5}),
    ],
)
def test_bad_params_are_invalid_params(placeholder_client, method, params):
    assert error_of(rpc(placeholder_client, method, params))["code"] == -32602


def test_params_that_are_not_an_object_are_invalid_params(placeholder_client):
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1, 2]}
    response = placeholder_client.post("/mcp", json=message, headers=V2025_06)
    assert error_of(response)["code"] == -32602


def test_ping_answers_an_empty_result(placeholder_client):
    assert result_of(rpc(placeholder_client, "ping")) == {}


def test_notifications_and_responses_are_accepted_with_202_and_no_body(placeholder_client):
    for message in (
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}},
        {"jsonrpc": "2.0", "method": "notifications/whatever-this-is"},
        {"jsonrpc": "2.0", "id": 9, "result": {}},  # a response to a request it never sent
    ):
        response = placeholder_client.post("/mcp", json=message, headers=V2025_06)
        assert response.status_code == 202
        assert response.data == b""
        assert "Content-Type" not in response.headers


def test_a_batch_under_2025_03_26_answers_each_request_in_an_array(placeholder_client):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "no/such"},
        {"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {"protocolVersion": "x"}},
        17,
    ]
    # Without MCP-Protocol-Version the transport says to assume 2025-03-26, which has batches.
    response = placeholder_client.post("/mcp", json=batch, headers=ACCEPT)
    answers = response.get_json()

    assert response.status_code == 200
    assert [a["id"] for a in answers] == [1, 2, 3, None]
    assert answers[0]["result"] == {}
    assert answers[1]["error"]["code"] == -32601
    assert answers[2]["error"]["code"] == -32600  # initialize must not be batched
    assert answers[3]["error"]["code"] == -32600

    only_notifications = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert placeholder_client.post("/mcp", json=only_notifications).status_code == 202
    assert error_of(placeholder_client.post("/mcp", json=[]))["code"] == -32600


def test_a_batch_under_2025_06_18_is_refused(placeholder_client):
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]
    for version in ("2025-06-18", "2025-11-25"):
        headers = {**ACCEPT, "MCP-Protocol-Version": version}
        response = placeholder_client.post("/mcp", json=batch, headers=headers)
        error = error_of(response)
        assert error["code"] == -32600 and version in error["message"]


def test_an_unsupported_protocol_version_header_is_400(placeholder_client):
    response = rpc(placeholder_client, "ping", headers={**ACCEPT, "MCP-Protocol-Version": "1999"})
    body = response.get_json()
    assert response.status_code == 400
    assert (body["code"], body["field"]) == ("VALIDATION_ERROR", "MCP-Protocol-Version")


def test_transport_refusals_use_the_service_error_shape(placeholder_client):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    not_json = placeholder_client.post("/mcp", data=json.dumps(ping), content_type="text/plain")
    html_only = placeholder_client.post("/mcp", json=ping, headers={"Accept": "text/html"})
    other_site = placeholder_client.post(
        "/mcp", json=ping, headers={**V2025_06, "Origin": "http://evil.example"}
    )
    same_site = placeholder_client.post(
        "/mcp", json=ping, headers={**V2025_06, "Origin": "http://localhost"}
    )
    stream = placeholder_client.get("/mcp", headers={"Accept": "text/event-stream"})

    assert (not_json.status_code, not_json.get_json()["code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert (html_only.status_code, html_only.get_json()["code"]) == (406, "NOT_ACCEPTABLE")
    assert (other_site.status_code, other_site.get_json()["code"]) == (403, "PERMISSION_DENIED")
    assert same_site.status_code == 200
    assert stream.status_code == 405 and "POST" in stream.headers["Allow"]


# --- tools/list: schemas from the catalog -------------------------------------------------


def test_tools_list_has_each_tool_with_a_strict_object_schema_and_an_output_schema(
    placeholder_client,
):
    tools = tools_by_name(placeholder_client)

    assert set(tools) == TOOLS
    for tool in tools.values():
        schema = tool["inputSchema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        # Some hosts refuse a combinator at the top of a tool's input schema.
        assert not {"anyOf", "oneOf", "allOf"} & set(schema)
        assert tool["outputSchema"]["type"] == "object"
        assert tool["title"] and len(tool["description"]) > 80
    assert tools["delete_image"]["annotations"]["destructiveHint"] is True
    assert tools["list_models"]["annotations"]["readOnlyHint"] is True


def test_generate_image_schema_comes_from_the_catalog(placeholder_client, today):
    today.set(CATALOG["gpt-image-1"].shutdown_on)
    schema = tools_by_name(placeholder_client)["generate_image"]["inputSchema"]
    props = schema["properties"]
    usable = [m for m in MODELS if m.status(today()) != SHUT_DOWN]

    assert schema["required"] == ["prompt"]
    assert props["model"]["enum"] == [m.id for m in usable]
    assert "gpt-image-1" not in props["model"]["enum"]  # shut down
    assert props["model"]["default"] == "gpt-image-2"
    assert (props["count"]["minimum"], props["count"]["maximum"]) == (1, 10)
    assert {"low", "medium", "high", "auto", "xhigh", "max", "standard", "hd"} == set(
        props["quality"]["enum"]
    )
    assert "dall-e-3: standard, hd" in props["quality"]["description"]
    assert "xhigh, max" in props["quality"]["description"]
    assert "multiples of 16" in props["size"]["description"]
    assert "dall-e-3: 1024x1024, 1792x1024, 1024x1792" in props["size"]["description"]
    assert props["output_compression"] == {
        **props["output_compression"],
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
    }
    assert "needs output_format jpeg or webp" in props["output_compression"]["description"]
    for extra in ("thumbnail", "background_job", "idempotency_key"):
        assert extra in props
    assert all("null" not in json.dumps(p.get("type")) for p in props.values())


def test_edit_image_schema_offers_only_models_that_edit(placeholder_client):
    props = tools_by_name(placeholder_client)["edit_image"]["inputSchema"]["properties"]

    assert "dall-e-3" not in props["model"]["enum"] and "dall-e-2" in props["model"]["enum"]
    assert {"image_id", "image_ids", "mask_id", "prompt"} <= set(props)
    assert props["moderation"]["enum"] == ["low", "auto"]  # GPT Image edits take it
    assert "markup_id" in props  # GPT Image 2.6's markup-guided edits


def test_a_2025_03_26_client_gets_no_titles_output_schemas_or_structured_results(
    placeholder_client,
):
    tools = tools_by_name(placeholder_client, headers=ACCEPT)
    assert all("outputSchema" not in t and "title" not in t for t in tools.values())

    result = call_tool(placeholder_client, "generate_image", {"prompt": "a fox"}, headers=ACCEPT)
    assert "structuredContent" not in result
    assert {item["type"] for item in result["content"]} == {"text"}
    structured = json.loads(result["content"][1]["text"])
    assert structured["images"][0]["url"].startswith("http://localhost/images/")


# --- tools/call ---------------------------------------------------------------------------


def test_generate_answers_ids_resource_links_and_cost_but_no_image_bytes(client, fake_openai):
    result = call_tool(client, "generate_image", {"prompt": "a fox", "model": "dall-e-3"})
    job = result["structuredContent"]
    links = [c for c in result["content"] if c["type"] == "resource_link"]

    assert result["isError"] is False
    assert job["status"] == "completed" and job["model"] == "dall-e-3"
    assert job["cost"]["basis"] == "price_table" and job["cost"]["usd"] > 0
    image = job["images"][0]
    assert image["revised_prompt"]  # the fake revises dall-e-3 prompts, as OpenAI does
    assert links == [
        {
            "type": "resource_link",
            "uri": f"http://localhost/images/{image['id']}",
            "name": f"{image['id']}.png",
            "title": "a fox",
            "description": links[0]["description"],
            "mimeType": "image/png",
        }
    ]
    assert image["revised_prompt"][:40] in links[0]["description"]
    assert json.loads(result["content"][1]["text"]) == job  # the structured result, as text
    assert not [c for c in result["content"] if c["type"] in ("image", "resource")]
    assert TEST_KEY not in json.dumps(result)


def test_a_field_the_model_does_not_take_is_a_tool_error_naming_it(placeholder_client, images_dir):
    before = job_files(images_dir)
    arguments = {"prompt": "a fox", "model": "dall-e-2", "quality": "high"}
    text = error_text(call_tool(placeholder_client, "generate_image", arguments))

    assert text.startswith("VALIDATION_ERROR: ")
    assert '"field": "quality"' in text and '"http_status": 400' in text
    assert job_files(images_dir) == before


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("get_job", {"job_id": "../images"}, "'job_id' must be a job id"),
        ("get_job", {}, "'job_id' is required"),
        ("delete_image", {"image_id": "x", "extra": 1}, "'image_id' must be an image id"),
        ("list_images", {"limit": 0}, "'limit' must be an integer from 1 to 200"),
        ("list_images", {"colour": "red"}, "Unknown argument(s): colour"),
        ("list_models", {"verbose": True}, "Unknown argument(s): verbose"),
        ("generate_image", {"prompt": "x", "thumbnail": "yes"}, "'thumbnail' must be true"),
    ],
)
def test_arguments_the_mcp_layer_reads_are_checked_as_tool_errors(
    placeholder_client, name, arguments, says
):
    text = error_text(call_tool(placeholder_client, name, arguments))
    assert text.startswith("VALIDATION_ERROR: ") and says in text


def test_get_job_list_images_and_delete_image_follow_the_http_api(placeholder_client):
    job = call_tool(placeholder_client, "generate_image", {"prompt": "a fox", "count": 2})
    job = job["structuredContent"]
    first, second = (image["id"] for image in job["images"])

    got = call_tool(placeholder_client, "get_job", {"job_id": job["job_id"]})["structuredContent"]
    listed = call_tool(placeholder_client, "list_images", {"limit": 1})
    deleted = call_tool(placeholder_client, "delete_image", {"image_id": first})
    again = call_tool(placeholder_client, "delete_image", {"image_id": first})
    after = call_tool(placeholder_client, "get_job", {"job_id": job["job_id"]})

    assert got["images"] == job["images"]
    assert len(listed["structuredContent"]["images"]) == 1
    assert listed["structuredContent"]["next_cursor"]
    assert [c["type"] for c in listed["content"]] == ["text", "text", "resource_link"]
    assert deleted["structuredContent"] == {"id": first, "job_id": job["job_id"], "deleted": True}
    assert error_text(again).startswith("IMAGE_NOT_FOUND: ")
    statuses = {i["id"]: (i["status"], i["url"]) for i in after["structuredContent"]["images"]}
    assert statuses[first] == ("deleted", None)
    assert statuses[second][0] == "available"
    unknown = call_tool(placeholder_client, "get_job", {"job_id": "6f1c2d3e-0000-4000-8000-0"})
    assert error_text(unknown).startswith("VALIDATION_ERROR")


def test_list_models_answers_the_catalog_without_source_links(placeholder_client):
    result = call_tool(placeholder_client, "list_models", {})
    catalog = result["structuredContent"]

    assert catalog["default_model"] == "gpt-image-2"
    assert [m["id"] for m in catalog["models"]] == [m.id for m in MODELS]
    assert "source" not in json.dumps(catalog)
    assert "usable now: gpt-image-2" in result["content"][0]["text"]


def test_edit_image_makes_a_new_job_from_a_stored_image(client, fake_openai):
    made = call_tool(client, "generate_image", {"prompt": "a fox"})["structuredContent"]
    image_id = made["images"][0]["id"]

    edited = call_tool(client, "edit_image", {"prompt": "a red fox", "image_id": image_id})

    job = edited["structuredContent"]
    assert job["status"] == "completed" and job["job_id"] != made["job_id"]
    assert fake_openai.image_requests[-1].path.endswith("/images/edits")


def test_thumbnail_true_adds_small_jpeg_copies_inline(placeholder_client):
    arguments = {"prompt": "a fox", "count": 2, "size": "1536x1024", "thumbnail": True}
    result = call_tool(placeholder_client, "generate_image", arguments)
    images = [c for c in result["content"] if c["type"] == "image"]

    assert len(images) == 2
    for item in images:
        data = base64.b64decode(item["data"])
        assert item["mimeType"] == "image/jpeg" and data.startswith(b"\xff\xd8")
    assert sum(len(item["data"]) for item in images) <= protocol.MAX_INLINE_BYTES
    assert "thumbnails_omitted" not in result["structuredContent"]


def test_thumbnails_beyond_the_size_bound_are_left_out_and_counted(placeholder_client, monkeypatch):
    first = call_tool(placeholder_client, "generate_image", {"prompt": "a fox", "thumbnail": True})
    one = len(next(c for c in first["content"] if c["type"] == "image")["data"])
    monkeypatch.setattr(protocol, "MAX_INLINE_BYTES", one + one // 2)  # room for one, not two

    arguments = {"prompt": "a fox", "count": 3, "thumbnail": True}
    result = call_tool(placeholder_client, "generate_image", arguments)

    images = [c for c in result["content"] if c["type"] == "image"]
    assert len(images) == 1
    assert result["structuredContent"]["thumbnails_omitted"] == 2
    assert len(result["structuredContent"]["images"]) == 3


def test_background_job_answers_at_once_and_get_job_follows_it(placeholder_client):
    arguments = {"prompt": "a fox", "background_job": True}
    accepted = call_tool(placeholder_client, "generate_image", arguments)["structuredContent"]

    assert accepted["status"] in ("queued", "running", "completed")
    for _ in range(100):
        job = call_tool(placeholder_client, "get_job", {"job_id": accepted["job_id"]})
        if job["structuredContent"]["status"] == "completed":
            break
        assert "Call get_job" in job["content"][0]["text"]
        time.sleep(0.05)
    assert job["structuredContent"]["status"] == "completed"
    assert len(job["structuredContent"]["images"]) == 1


def test_the_same_idempotency_key_returns_the_first_job_without_a_second_upstream_call(
    client, fake_openai
):
    arguments = {"prompt": "a fox", "idempotency_key": "5b0f6b1e-3f6c-4d1e-9d7a-2c1f0e8b9a44"}
    first = call_tool(client, "generate_image", arguments, request_id=1)
    second = call_tool(client, "generate_image", arguments, request_id=2)

    assert first["structuredContent"] == second["structuredContent"]
    assert len(fake_openai.image_requests) == 1
    other = call_tool(client, "generate_image", {**arguments, "prompt": "a wolf"})
    assert error_text(other).startswith("IDEMPOTENCY_KEY_REUSED: ")


def test_an_idempotency_key_on_the_mcp_post_itself_does_not_leak_into_the_tool_call(
    client, fake_openai
):
    # The app-wide hook claims the key for the POST /mcp; the tool's own request to
    # /generate must run in a context of its own, or it would settle the outer claim.
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a fox"}},
    }
    headers = {**V2025_06, "Idempotency-Key": "outer-key-1"}
    first = client.post("/mcp", json=message, headers=headers)
    second = client.post("/mcp", json=message, headers=headers)

    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.get_json() == second.get_json()
    assert len(fake_openai.image_requests) == 1


# --- resources ----------------------------------------------------------------------------


def test_resources_read_answers_an_image_url_as_a_blob(placeholder_client):
    job = call_tool(placeholder_client, "generate_image", {"prompt": "a fox"})
    uri = job["structuredContent"]["images"][0]["url"]

    contents = result_of(rpc(placeholder_client, "resources/read", {"uri": uri}))["contents"]
    small = result_of(rpc(placeholder_client, "resources/read", {"uri": uri + "?width=64"}))

    stored = placeholder_client.get(uri.removeprefix("http://localhost")).data
    assert contents == [
        {"uri": uri, "mimeType": "image/png", "blob": base64.b64encode(stored).decode()}
    ]
    thumb = base64.b64decode(small["contents"][0]["blob"])
    assert thumb.startswith(b"\x89PNG") and len(thumb) < len(stored)


def test_resources_read_refuses_an_image_over_the_bound_and_says_what_to_do(
    placeholder_client, monkeypatch
):
    job = call_tool(placeholder_client, "generate_image", {"prompt": "a fox"})
    uri = job["structuredContent"]["images"][0]["url"]
    monkeypatch.setattr(protocol, "MAX_INLINE_BYTES", 400)

    error = error_of(rpc(placeholder_client, "resources/read", {"uri": uri}))

    assert error["code"] == -32602
    assert f"{uri}?width=256" in error["message"] and "fetch" in error["message"]
    assert error["data"]["limit"] == 300 and error["data"]["bytes"] > 300


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost/images/6f1c2d3e-0000-4000-8000-000000000000",  # no such image
        "http://elsewhere.example/images/6f1c2d3e-0000-4000-8000-000000000000",
        "http://localhost/jobs/6f1c2d3e-0000-4000-8000-000000000000",
        "http://localhost/images/../generate",
        "file:///etc/passwd",
    ],
)
def test_resources_read_of_anything_but_a_stored_image_is_not_found(placeholder_client, uri):
    error = error_of(rpc(placeholder_client, "resources/read", {"uri": uri}))
    assert error["code"] == -32002 and error["data"] == {"uri": uri}


def test_resources_list_pages_through_stored_images_and_templates_name_the_url(
    placeholder_client,
):
    call_tool(placeholder_client, "generate_image", {"prompt": "a fox", "count": 2})
    listed = result_of(rpc(placeholder_client, "resources/list"))
    templates = result_of(rpc(placeholder_client, "resources/templates/list"))

    assert len(listed["resources"]) == 2 and "nextCursor" not in listed
    assert all(r["mimeType"] == "image/png" for r in listed["resources"])
    template = templates["resourceTemplates"][0]["uriTemplate"]
    assert template == "http://localhost/images/{image_id}{?width,height,format}"
    bad = error_of(rpc(placeholder_client, "resources/list", {"cursor": "nope"}))
    assert bad["code"] == -32602 and "cursor" in bad["message"]


# --- tokens -------------------------------------------------------------------------------


@pytest.fixture
def team(with_tokens) -> FlaskClient:
    return with_tokens(
        line("alice", ALICE), line("bob", BOB, "images_per_hour=1"), line("ops", OPS, "admin")
    )


def test_mcp_needs_a_token_like_every_endpoint(team, fake_openai):
    missing = rpc(team, "ping")
    wrong = rpc(team, "ping", headers={**V2025_06, **bearer("igt_wrong-0123456789abcdef")})

    assert (missing.status_code, missing.get_json()["code"]) == (401, "AUTHENTICATION_REQUIRED")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (wrong.status_code, wrong.get_json()["code"]) == (401, "INVALID_TOKEN")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert result_of(rpc(team, "ping", headers={**V2025_06, **bearer(ALICE)})) == {}


def test_tool_calls_are_made_as_the_caller_with_its_caps_and_rights(team, fake_openai):
    alice, bob, ops = ({**V2025_06, **bearer(token)} for token in (ALICE, BOB, OPS))
    made = call_tool(team, "generate_image", {"prompt": "a fox"}, headers=alice)
    image_id = made["structuredContent"]["images"][0]["id"]

    assert call_tool(team, "generate_image", {"prompt": "one"}, headers=bob)["isError"] is False
    capped = error_text(call_tool(team, "generate_image", {"prompt": "two"}, headers=bob))
    admin = error_text(call_tool(team, "generate_image", {"prompt": "x"}, headers=ops))
    not_hers = error_text(call_tool(team, "delete_image", {"image_id": image_id}, headers=bob))

    assert capped.startswith("QUOTA_EXCEEDED: ") and "retry_after: " in capped
    assert '"cap": "images_per_hour"' in capped and '"http_status": 429' in capped
    assert admin.startswith("PERMISSION_DENIED: ")
    assert not_hers.startswith("PERMISSION_DENIED: ")
    assert len(fake_openai.image_requests) == 2
