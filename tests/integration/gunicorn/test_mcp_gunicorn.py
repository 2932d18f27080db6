"""The MCP interface under real Gunicorn, driven by the official `mcp` client SDK over both
transports: Streamable HTTP straight to /mcp, and stdio through `python -m imagegen mcp-stdio`
(or the file run with the standard library only), with client tokens, a cap, the placeholder
provider and the fake upstream."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from imagegen.mcp import protocol
from imagegen.mcp import server as mcp
from tests.support.gunicorn_server import REPO, Service, free_port, run_gunicorn
from tests.support.service import ALICE, BOB, TEST_KEY, line

pytestmark = pytest.mark.slow

T = TypeVar("T")
CAROL = "igt_carol-0123456789abcdefghijklmno"
SCRIPT = REPO / "image-gen" / "imagegen" / "mcp" / "stdio.py"
SESSION_TIMEOUT = 120  # seconds for one whole conversation with the service
TOOLS = {"list_models", "generate_image", "edit_image", "get_job", "list_images", "delete_image"}


def run(conversation: Callable[[], Awaitable[T]]) -> T:
    """Run one async conversation to its end, within SESSION_TIMEOUT."""

    async def bounded() -> T:
        with anyio.fail_after(SESSION_TIMEOUT):
            return await conversation()

    return anyio.run(bounded)


@contextlib.asynccontextmanager
async def over_http(
    service: Service, token: str | None, *, initialize: bool = True
) -> AsyncIterator[ClientSession]:
    """An SDK session over Streamable HTTP, sending `token` as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60)) as http,
        streamable_http_client(f"{service.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        if initialize:
            await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def over_stdio(
    service: Service,
    token: str | None,
    log: Path,
    *,
    stdlib_only: bool = False,
    initialize: bool = True,
) -> AsyncIterator[ClientSession]:
    """An SDK session with the stdio command, which forwards to `service`."""
    # -S: no site-packages, so neither Flask nor anything else installed is importable.
    args = ["-S", str(SCRIPT)] if stdlib_only else ["-m", "imagegen", "mcp-stdio"]
    env = {"IMAGE_GEN_URL": service.url, "PYTHONPATH": str(REPO / "image-gen")}
    if token:
        env["IMAGE_GEN_TOKEN"] = token
    parameters = StdioServerParameters(command=sys.executable, args=args, env=env, cwd=REPO)
    with open(log, "a") as errlog:
        async with (
            stdio_client(parameters, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            if initialize:
                await session.initialize()
            yield session


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens.txt"
    lines = [
        line("alice", ALICE),
        line("bob", BOB, "images_per_hour=1"),
        line("carol", CAROL, "images_per_hour=1"),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Placeholder mode with tokens: alice, and bob and carol who may make one image an hour."""
    directory = tmp_path_factory.mktemp("mcp-service")
    env = {
        "IMAGE_GEN_PROVIDER": "placeholder",
        "IMAGE_GEN_TOKENS_FILE": str(tokens_file(directory)),
    }
    with run_gunicorn(directory, env) as running:
        yield running


@pytest.fixture
def upstream(tmp_path: Path, fake_openai: Any) -> Iterator[Service]:
    """The OpenAI provider against the fake upstream, with the key in a file, and tokens."""
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(TEST_KEY + "\n")
    env = {
        "OPENAI_API_KEY_FILE": str(key_file),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_RETRY_BACKOFF": "0.01",
        "IMAGE_GEN_TOKENS_FILE": str(tokens_file(tmp_path)),
    }
    with run_gunicorn(tmp_path / "service", env) as running:
        yield running


def fetch(service: Service, url: str, token: str = ALICE) -> tuple[int, bytes]:
    """GET an absolute URL of the service over HTTP, with a token."""
    answer = service.request(
        "GET", url.removeprefix(service.url), headers={"Authorization": f"Bearer {token}"}
    )
    return answer.status, answer.body


def links(result: Any) -> list[Any]:
    return [item for item in result.content if item.type == "resource_link"]


def inline_images(result: Any) -> list[Any]:
    return [item for item in result.content if item.type == "image"]


# --- Streamable HTTP ----------------------------------------------------------------------


def test_http_client_initializes_and_lists_tools_with_their_schemas(service):
    async def conversation() -> tuple[Any, Any]:
        async with over_http(service, ALICE) as session:
            return session.initialize_result, await session.list_tools()

    initialized, listed = run(conversation)

    assert initialized.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
    assert initialized.protocol_version in mcp.PROTOCOL_VERSIONS
    assert initialized.server_info.name == "image-gen"
    assert initialized.capabilities.tools is not None
    assert initialized.capabilities.resources is not None
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOLS
    generate = tools["generate_image"]
    assert "gpt-image-2" in generate.input_schema["properties"]["model"]["enum"]
    assert generate.input_schema["required"] == ["prompt"]
    assert generate.output_schema["required"] == ["job_id", "status", "images"]


def test_http_generate_read_edit_list_and_delete(service):
    async def conversation() -> dict[str, Any]:
        async with over_http(service, ALICE) as session:
            made = await session.call_tool("generate_image", {"prompt": "a lighthouse"})
            link = links(made)[0]
            read = await session.read_resource(link.uri)
            image_id = made.structured_content["images"][0]["id"]
            edited = await session.call_tool(
                "edit_image", {"prompt": "a lighthouse at night", "image_id": image_id}
            )
            job_id = edited.structured_content["job_id"]
            got = await session.call_tool("get_job", {"job_id": job_id})
            listed = await session.call_tool("list_images", {"job_id": job_id})
            return {
                "made": made,
                "link": link,
                "read": read,
                "edited": edited,
                "got": got,
                "listed": listed,
            }

    async def deletion(image_id: str, uri: Any) -> tuple[Any, MCPError]:
        async with over_http(service, ALICE) as session:
            deleted = await session.call_tool("delete_image", {"image_id": image_id})
            with pytest.raises(MCPError) as gone:
                await session.read_resource(uri)
            return deleted, gone.value

    answers = run(conversation)

    made = answers["made"]
    assert made.is_error is False
    image = made.structured_content["images"][0]
    assert str(answers["link"].uri) == image["url"] == f"{service.url}/images/{image['id']}"
    assert answers["link"].mime_type == "image/png"
    assert made.structured_content["cost"] == {
        "estimated_usd": 0.0,
        "usd": 0.0,
        "basis": "placeholder",
    }
    assert not inline_images(made)  # no image bytes unless asked for
    blob = base64.b64decode(answers["read"].contents[0].blob)
    assert fetch(service, image["url"]) == (200, blob)
    edited = answers["edited"].structured_content
    assert edited["status"] == "completed" and edited["job_id"] != made.structured_content["job_id"]
    assert answers["got"].structured_content["images"] == edited["images"]
    listed = answers["listed"].structured_content["images"]
    assert [i["id"] for i in listed] == [i["id"] for i in edited["images"]]
    deleted, gone = run(lambda: deletion(image["id"], answers["link"].uri))
    assert deleted.structured_content["deleted"] is True
    assert gone.error.code == -32002
    assert fetch(service, image["url"])[0] == 404


def test_http_a_wrong_or_missing_token_is_refused_with_401(service):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    wrong = service.request(
        "POST", "/mcp", ping, headers={**accept, "Authorization": "Bearer igt_wrong-0123456789ab"}
    )
    missing = service.request("POST", "/mcp", ping, headers=accept)

    assert (wrong.status, wrong.json()["code"]) == (401, "INVALID_TOKEN")
    assert wrong.headers["www-authenticate"].startswith("Bearer ")
    assert (missing.status, missing.json()["code"]) == (401, "AUTHENTICATION_REQUIRED")

    async def conversation() -> MCPError | None:
        async with over_http(service, "igt_wrong-0123456789ab", initialize=False) as session:
            try:
                await session.initialize()
            except MCPError as refused:
                return refused
        return None

    assert isinstance(run(conversation), MCPError)


def test_http_a_token_at_its_cap_gets_a_tool_error_with_the_wait(service):
    async def conversation() -> tuple[Any, Any]:
        async with over_http(service, CAROL) as session:
            first = await session.call_tool("generate_image", {"prompt": "one"})
            second = await session.call_tool("generate_image", {"prompt": "two"})
            return first, second

    first, second = run(conversation)

    assert first.is_error is False
    assert second.is_error is True
    text = second.content[0].text
    assert text.startswith("QUOTA_EXCEEDED: ")
    details = json.loads(text.split("\n", 1)[1])
    assert details["cap"] == "images_per_hour" and details["http_status"] == 429
    assert 0 < details["retry_after"] <= 3600
    assert f"retry_after: {details['retry_after']} seconds" in text


def test_http_a_background_job_is_followed_with_get_job(service):
    async def conversation() -> tuple[Any, Any]:
        async with over_http(service, ALICE) as session:
            arguments = {"prompt": "a slow one", "count": 2, "background_job": True}
            accepted = await session.call_tool("generate_image", arguments)
            job_id = accepted.structured_content["job_id"]
            for _ in range(200):
                job = await session.call_tool("get_job", {"job_id": job_id})
                if job.structured_content["status"] in ("completed", "failed"):
                    break
                await anyio.sleep(0.05)
            return accepted, job

    accepted, job = run(conversation)

    assert accepted.structured_content["status"] in ("queued", "running", "completed")
    assert job.structured_content["status"] == "completed"
    assert len(links(job)) == 2


# --- stdio --------------------------------------------------------------------------------


def test_stdio_command_drives_the_same_tools_with_a_token(service, tmp_path):
    log = tmp_path / "stdio.log"

    async def conversation() -> dict[str, Any]:
        async with over_stdio(service, ALICE, log) as session:
            tools = await session.list_tools()
            made = await session.call_tool("generate_image", {"prompt": "a harbour", "count": 2})
            read = await session.read_resource(links(made)[0].uri)
            image_id = made.structured_content["images"][1]["id"]
            edited = await session.call_tool("edit_image", {"prompt": "x", "image_id": image_id})
            deleted = await session.call_tool("delete_image", {"image_id": image_id})
            return {
                "version": session.initialize_result.protocol_version,
                "tools": tools,
                "made": made,
                "read": read,
                "edited": edited,
                "deleted": deleted,
            }

    answers = run(conversation)

    assert answers["version"] in mcp.PROTOCOL_VERSIONS
    assert {tool.name for tool in answers["tools"].tools} == TOOLS
    made = answers["made"].structured_content
    assert len(made["images"]) == 2
    blob = base64.b64decode(answers["read"].contents[0].blob)
    assert fetch(service, made["images"][0]["url"]) == (200, blob)
    assert answers["edited"].structured_content["status"] == "completed"
    assert answers["deleted"].is_error is False
    text = log.read_text()
    assert f"forwarding MCP messages to {service.url}/mcp with a client token" in text
    assert ALICE not in text


def test_stdio_with_a_wrong_token_answers_a_clear_error(service, tmp_path):
    log = tmp_path / "stdio.log"

    async def conversation() -> MCPError | None:
        wrong = "igt_wrong-0123456789ab"
        async with over_stdio(service, wrong, log, stdlib_only=True, initialize=False) as session:
            try:
                await session.initialize()
            except MCPError as refused:
                return refused
        return None

    refused = run(conversation)

    assert isinstance(refused, MCPError)
    assert "HTTP 401 INVALID_TOKEN" in refused.error.message
    assert "IMAGE_GEN_TOKEN" in refused.error.message
    assert refused.error.data["http_status"] == 401
    assert "HTTP 401 INVALID_TOKEN" in log.read_text()
    assert "igt_wrong-0123456789ab" not in log.read_text()


def test_stdio_at_a_cap_passes_the_tool_error_through(service, tmp_path):
    async def conversation() -> Any:
        async with over_stdio(service, BOB, tmp_path / "stdio.log") as session:
            return await session.call_tool("generate_image", {"prompt": "more"})

    # Use bob's one image an hour (whether or not this is the first call).
    service.request(
        "POST", "/generate", {"prompt": "use the cap"}, headers={"Authorization": f"Bearer {BOB}"}
    )
    result = run(conversation)

    assert result.is_error is True
    assert result.content[0].text.startswith("QUOTA_EXCEEDED: ")


def run_stdio(
    args: list[str], stdin: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The stdlib-only stdio command to the end of `stdin`, in an environment of only `env`."""
    return subprocess.run(
        [sys.executable, "-S", str(SCRIPT), *args],
        input=stdin,
        env=env or {},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stdio_answers_requests_not_notifications_and_exits_at_end_of_input(service):
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "two", "method": "no/such/method"},
    ]
    finished = run_stdio(
        ["--url", service.url],
        "".join(json.dumps(m) + "\n" for m in messages) + "\n",
        {"IMAGE_GEN_TOKEN": ALICE},
    )

    assert finished.returncode == 0, finished.stderr
    answers = sorted(
        (json.loads(row) for row in finished.stdout.splitlines()), key=lambda a: str(a["id"])
    )
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": {}},
        {
            "jsonrpc": "2.0",
            "id": "two",
            "error": {"code": -32601, "message": "Method not found: no/such/method"},
        },
    ]


def test_stdio_reports_an_unreachable_service_and_a_bad_configuration(tmp_path):
    ping = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}) + "\n"
    nobody = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    unreachable = run_stdio(["--url", nobody], ping)
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    misconfigured = run_stdio(["--token-file", str(empty)], ping)

    assert unreachable.returncode == 0
    answer = json.loads(unreachable.stdout)
    assert answer["id"] == 7 and answer["error"]["code"] == -32000
    assert f"Cannot reach image-gen at {nobody}/mcp" in answer["error"]["message"]
    assert misconfigured.returncode == 2 and misconfigured.stdout == ""
    assert "is empty" in misconfigured.stderr


def test_stdio_never_writes_nan_or_infinity_even_for_a_request_id_that_is_one():
    line = '{"jsonrpc": "2.0", "id": NaN, "method": "ping"}\n'
    nobody = f"http://127.0.0.1:{free_port()}"

    finished = run_stdio(["--url", nobody], line + json.dumps({"id": 8, "method": "ping"}) + "\n")

    assert finished.returncode == 0, finished.stderr
    rows = finished.stdout.splitlines()
    assert "NaN" not in finished.stdout
    assert [json.loads(row)["id"] for row in rows] == [8]  # the NaN line is not JSON-RPC


# --- the fake upstream: real costs, revised prompts, and the result size bound --------------


def test_fake_upstream_results_carry_cost_and_revised_prompt_and_stay_small(upstream, fake_openai):
    fake_openai.set_image_size(2_000_000)  # every upstream image is a 2 MB PNG

    async def conversation() -> dict[str, Any]:
        async with over_http(upstream, ALICE) as session:
            plain = await session.call_tool("generate_image", {"prompt": "a lighthouse"})
            with_thumbnails = await session.call_tool(
                "generate_image", {"prompt": "a lighthouse", "count": 3, "thumbnail": True}
            )
            dalle = await session.call_tool(
                "generate_image", {"prompt": "a lighthouse", "model": "dall-e-3"}
            )
            uri = plain.structured_content["images"][0]["url"]
            with pytest.raises(MCPError) as too_large:
                await session.read_resource(uri)
            small = await session.read_resource(f"{uri}?width=256&format=jpeg")
            return {
                "plain": plain,
                "thumbnails": with_thumbnails,
                "dalle": dalle,
                "too_large": too_large.value,
                "small": small,
            }

    answers = run(conversation)

    plain = answers["plain"]
    cost = plain.structured_content["cost"]
    assert cost["basis"] == "usage" and cost["usd"] == pytest.approx(0.00025 + 0.03168)
    assert not inline_images(plain)
    assert len(plain.model_dump_json()) < 20_000  # a 2 MB image, and a small result
    thumbnails = inline_images(answers["thumbnails"])
    assert len(thumbnails) == 3
    assert sum(len(item.data) for item in thumbnails) <= protocol.MAX_INLINE_BYTES
    assert all(base64.b64decode(item.data).startswith(b"\xff\xd8") for item in thumbnails)
    assert len(answers["thumbnails"].model_dump_json()) < 1_000_000
    revised = answers["dalle"].structured_content["images"][0]["revised_prompt"]
    assert revised and revised[:40] in links(answers["dalle"])[0].description
    too_large = answers["too_large"].error
    assert too_large.code == -32602
    assert "?width=256" in too_large.message and too_large.data["bytes"] >= 2_000_000
    small = answers["small"].contents[0]
    assert small.mime_type == "image/jpeg" and len(small.blob) <= protocol.MAX_INLINE_BYTES
    everything = "".join(a.model_dump_json() for a in answers.values() if hasattr(a, "content"))
    assert TEST_KEY not in everything
    assert TEST_KEY not in upstream.log_text()
    assert len(fake_openai.image_requests) == 3
