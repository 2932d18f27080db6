"""AzureClient against the fake on a real socket: streamed generations on both URL forms."""

from __future__ import annotations

import pytest

from imagegen.upstream.azure import AzureClient
from imagegen.upstream.retry import Deadline

AZURE_KEY = "00112233445566778899aabbccddeeff"


@pytest.mark.parametrize("v1", [False, True])
def test_streamed_generations_go_to_azures_path_with_the_api_key(fake_openai, v1):
    client = AzureClient(fake_openai.origin, AZURE_KEY, api_version="2025-04-01-preview", v1=v1)
    events: list[dict] = []

    answer = client.stream_images(
        {"model": "img-prod", "prompt": "a lighthouse", "n": 1, "partial_images": 1},
        Deadline(10),
        events.append,
    )

    assert len(answer["data"]) == 1
    assert [event["type"] for event in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    (call,) = fake_openai.image_requests
    if v1:
        assert call.route == "/openai/v1/images/generations" and call.query == {}
    else:
        assert call.deployment == "img-prod"
        assert call.query == {"api-version": "2025-04-01-preview"}
    assert call.auth_kind == "api-key" and call.fields["stream"] is True
