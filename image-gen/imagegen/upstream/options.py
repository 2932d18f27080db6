"""The upstream client's options from the settings: timeouts, retry policy, byte caps."""

from __future__ import annotations

from typing import Any

from imagegen.settings import Settings
from imagegen.upstream.client import AttemptObserver
from imagegen.upstream.retry import RetryPolicy


def client_options(settings: Settings, on_attempt: AttemptObserver | None = None) -> dict[str, Any]:
    """Keyword arguments for OpenAIClient (and AzureClient) from the settings; `on_attempt`
    hears of each HTTP attempt."""
    return {
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "retry": RetryPolicy(
            max_retries=settings.max_retries,
            backoff_base=settings.retry_backoff,
            max_retry_after=settings.max_retry_wait,
        ),
        "max_response_bytes": settings.max_upstream_bytes,
        "max_image_bytes": settings.max_image_bytes,
        "on_attempt": on_attempt,
    }
