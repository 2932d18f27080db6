"""Several upstreams: each model served by one, falling back to others in order.

The models file (catalog/operator.py) names upstreams besides the default one
(OPENAI_BASE_URL) and routes each model to one of them, with `fallbacks`. A request falls
back to the next upstream on a rate limit (429), a 5xx or unusable answer, a connection
error or a timeout, never on a refusal of the request itself (400, a safety block, a
rejected key, an exhausted quota). The generation names the upstream that served it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

from imagegen.catalog.operator import DEFAULT_UPSTREAM, ModelsFile, UpstreamConfig
from imagegen.errors import RateLimited, UpstreamError, UpstreamTimeout
from imagegen.imaging.inputs import ImageInputs
from imagegen.imaging.request import ImageRequest
from imagegen.settings import Settings, SettingsError
from imagegen.upstream.azure import AzureClient, deployments_from
from imagegen.upstream.client import AttemptObserver, OpenAIClient
from imagegen.upstream.options import client_options
from imagegen.upstream.providers import (
    Generation,
    MissingKeyProvider,
    OpenAIProvider,
    PlaceholderProvider,
    Progress,
    Provider,
)
from imagegen.upstream.retry import Deadline

log = logging.getLogger(__name__)

# What one upstream failing with lets the next one try: it may well serve the same request.
FALLBACK_ERRORS = (RateLimited, UpstreamError, UpstreamTimeout)

FallbackObserver = Callable[[str, str, str], None]  # (from upstream, to upstream, error code)


def azure_provider(
    endpoint: str,
    key: str,
    api_version: str,
    deployment_for: Callable[[str], str],
    v1: bool,
    *,
    settings: Settings,
    on_attempt: AttemptObserver | None = None,
) -> OpenAIProvider:
    """Azure OpenAI (upstream.azure): `settings` gives timeouts, retries and parallelism."""
    client = AzureClient(
        endpoint,
        key,
        api_version=api_version,
        v1=v1,
        deployment_for=deployment_for,
        **client_options(settings, on_attempt),
    )
    provider = OpenAIProvider(
        client, max_parallel=settings.max_parallel_upstream, current_model=settings.default_model
    )
    provider.name = "azure"
    return provider


def provider_for(settings: Settings, *, on_attempt: AttemptObserver | None = None) -> Provider:
    """The provider the settings ask for: the placeholder, OpenAI (or a compatible upstream)
    with the key, Azure OpenAI, or one that explains the missing key. `on_attempt` hears of
    each upstream attempt (the metrics count them)."""
    if settings.provider == "placeholder":
        return PlaceholderProvider()
    if not settings.api_key:
        return MissingKeyProvider()
    if settings.provider == "azure" and settings.azure_endpoint:
        return azure_provider(
            settings.azure_endpoint,
            settings.api_key,
            settings.azure_api_version,
            deployment_for(settings),
            settings.azure_api == "v1",
            settings=settings,
            on_attempt=on_attempt,
        )
    return openai_provider(settings, settings.base_url, settings.api_key, on_attempt=on_attempt)


def openai_provider(
    settings: Settings, base_url: str, api_key: str, *, on_attempt: AttemptObserver | None = None
) -> OpenAIProvider:
    """OpenAI (or a compatible upstream) at `base_url`, timed and retried as the settings say."""
    client = OpenAIClient(base_url, api_key, **client_options(settings, on_attempt))
    return OpenAIProvider(
        client, max_parallel=settings.max_parallel_upstream, current_model=settings.default_model
    )


def deployment_for(settings: Settings) -> Callable[[str], str]:
    """A model's Azure deployment: the models file's `deployment`, else the
    IMAGE_GEN_AZURE_DEPLOYMENTS mapping, else the model id itself."""
    mapped = dict(settings.azure_deployments)
    models_file = settings.models_file
    if models_file is not None:
        for model_id, entry in models_file.models.items():
            if entry.route.deployment:
                mapped[model_id] = entry.route.deployment
    return deployments_from(mapped)


def upstream_for(
    config: UpstreamConfig, settings: Settings, *, on_attempt: AttemptObserver | None = None
) -> Provider:
    """The provider for one named upstream of the models file, with its key read from its
    key file (the key goes no further than its client)."""
    assert config.key_file is not None
    try:
        key = config.key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"upstream {config.name!r}: cannot read its key_file {config.key_file}: "
            f"{type(exc).__name__}"
        ) from None
    if not key:
        raise SettingsError(f"upstream {config.name!r}: its key_file {config.key_file} is empty")
    if config.kind == "azure":  # base_url is the resource's endpoint (or its /openai/v1)
        return azure_provider(
            config.base_url,
            key,
            config.api_version or settings.azure_api_version,
            deployment_for(settings),
            config.base_url.rstrip("/").endswith("/openai/v1"),
            settings=settings,
            on_attempt=on_attempt,
        )
    return openai_provider(settings, config.base_url, key, on_attempt=on_attempt)


def routed_provider_for(
    settings: Settings,
    *,
    on_attempt: AttemptObserver | None = None,
    on_fallback: FallbackObserver | None = None,
) -> Provider:
    """The provider the settings ask for; with a models file that routes models to named
    upstreams, one that picks each request's upstream and falls back."""
    default = provider_for(settings, on_attempt=on_attempt)
    models_file = settings.models_file
    if settings.provider == "placeholder" or models_file is None or not models_file.upstreams:
        return default
    upstreams = {DEFAULT_UPSTREAM: default}
    for name, config in models_file.upstreams.items():
        upstreams[name] = upstream_for(config, settings, on_attempt=on_attempt)
    return RoutingProvider(upstreams, models_file, on_fallback=on_fallback)


class RoutingProvider:
    """Sends each request to its model's upstream, then to its fallbacks in order."""

    name = "openai"

    def __init__(
        self,
        upstreams: Mapping[str, Provider],
        models_file: ModelsFile,
        *,
        on_fallback: FallbackObserver | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.models_file = models_file
        self.on_fallback = on_fallback

    def generate(self, request: ImageRequest, deadline: Deadline) -> Generation:
        return self._routed(request, deadline, lambda up: up.generate(request, deadline))

    def generate_with_progress(
        self, request: ImageRequest, deadline: Deadline, progress: Progress, partial_images: int
    ) -> Generation:
        return self._routed(
            request,
            deadline,
            lambda up: up.generate_with_progress(request, deadline, progress, partial_images),
        )

    def edit(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        return self._routed(request, deadline, lambda up: up.edit(request, inputs, deadline))

    def vary(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        return self._routed(request, deadline, lambda up: up.vary(request, inputs, deadline))

    def _routed(
        self, request: ImageRequest, deadline: Deadline, call: Callable[[Provider], Generation]
    ) -> Generation:
        """`call` on each upstream of the model's route until one serves it; the last
        upstream's failure (or any that is not worth another upstream) is raised."""
        chain = self.models_file.route(request.model.id).chain
        for index, name in enumerate(chain):
            try:
                generation = call(self.upstreams[name])
            except FALLBACK_ERRORS as exc:
                last = index + 1 == len(chain)
                if last or deadline.remaining() <= 0:
                    raise
                log.warning(
                    "upstream %s failed for model=%s (%s); falling back to %s",
                    name,
                    request.model.id,
                    exc.code,
                    chain[index + 1],
                )
                if self.on_fallback is not None:
                    self.on_fallback(name, chain[index + 1], exc.code)
                continue
            return dataclasses.replace(generation, served_by=name)
        raise AssertionError("a route names at least one upstream")  # pragma: no cover
