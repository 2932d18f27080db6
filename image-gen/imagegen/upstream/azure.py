"""Azure OpenAI: the same Images API behind Azure's URLs, `api-key` header and error bodies.

Two URL forms, both read 2026-12-02:
- classic, per deployment: `POST {endpoint}/openai/deployments/{deployment}/images/generations`
  (and `/images/edits`) `?api-version=...`, the key in an `api-key` header
  (https://learn.microsoft.com/en-us/azure/ai-services/openai/how-to/dall-e and the REST
  reference https://learn.microsoft.com/en-us/azure/ai-services/openai/reference);
- v1: `POST {endpoint}/openai/v1/images/generations`, OpenAI's shape with the deployment as
  `model`, no dated api-version (https://learn.microsoft.com/en-us/azure/foundry/openai/api-version-lifecycle).
The openai SDK's AzureOpenAI (openai/lib/azure.py, 3.57.0) builds the classic URL the same way:
`{AZURE_OPENAI_ENDPOINT}/openai` + `/deployments/{model}` for images, `api-version` from
OPENAI_API_VERSION as a query, the body's `model` kept, the key as `api-key`.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from imagegen.errors import ServiceError, ValidationError
from imagegen.imaging.inputs import ImageInputs
from imagegen.imaging.request import ImageRequest
from imagegen.settings import Settings
from imagegen.upstream.client import AttemptObserver, OpenAIClient
from imagegen.upstream.errors import APIStatusError, OpenAIError
from imagegen.upstream.providers import Generation, OpenAIProvider, client_options
from imagegen.upstream.retry import Deadline
from imagegen.upstream.transport import _Response

# Azure's image content filter answers 400 with error.code "contentFilter" (image how-to),
# "content_policy_violation", or "content_filter" with innererror.code
# "ResponsibleAIPolicyViolation" (the REST reference's error shape); read 2026-12-02.
_FILTER_CODES = {"contentfilter", "content_filter", "content_policy_violation"}
_FILTER_INNER = "ResponsibleAIPolicyViolation"


class AzureClient(OpenAIClient):
    """OpenAIClient on Azure's URLs, with the key in `api-key` and Azure's error bodies read.

    Classic: the deployment is the body's `model` (as the openai SDK's AzureOpenAI does) and
    every call carries `api-version`. v1: OpenAI's paths under `{endpoint}/openai/v1`.
    """

    def __init__(
        self, endpoint: str, api_key: str, *, api_version: str, v1: bool, **options: Any
    ) -> None:
        root = azure_root(endpoint)
        super().__init__(f"{root}/openai/v1" if v1 else f"{root}/openai", api_key, **options)
        self.api_version = api_version
        self.v1 = v1

    def __repr__(self) -> str:
        api = "v1" if self.v1 else f"api_version={self.api_version!r}"
        return f"AzureClient(base_url={self.base_url!r}, {api})"

    def url_for(self, path: str, model: str | None) -> str:
        """v1: OpenAI's path; classic: the deployment's path with `api-version`."""
        if self.v1:
            return f"{self.base_url}/{path}"
        if not model:
            raise ValueError("an Azure deployment call needs the deployment as `model`")
        deployment = urllib.parse.quote(model, safe="")
        query = urllib.parse.urlencode({"api-version": self.api_version})
        return f"{self.base_url}/deployments/{deployment}/{path}?{query}"

    def auth_headers(self) -> dict[str, str]:
        """Azure's key header (both URL forms take it; no Authorization is sent)."""
        return {"api-key": self._api_key}

    def _status_error(self, response: _Response) -> APIStatusError:
        """OpenAI's reading, plus Azure's shapes: a top-level `{"statusCode", "message"}`
        (its gateway's 401/403) and content-filter codes, which become `content_filter`
        and are never retried."""
        error = super()._status_error(response)
        body = _json_object(response.body)
        inner = body.get("error") if isinstance(body.get("error"), dict) else None
        if inner is None and isinstance(body.get("message"), str):
            error.message = self.redact(body["message"])[:500]
        details = inner or {}
        nested = details.get("innererror") or details.get("inner_error")
        inner_code = nested.get("code") if isinstance(nested, dict) else None
        if str(error.code or "").lower() in _FILTER_CODES or inner_code == _FILTER_INNER:
            error.code, error.should_retry = "content_filter", False
        return error


def azure_root(endpoint: str) -> str:
    """The resource's origin from AZURE_OPENAI_ENDPOINT, without `/openai` or `/openai/v1`."""
    root = endpoint.strip().rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


def is_v1_endpoint(endpoint: str) -> bool:
    """Whether the endpoint names the v1 API itself (`.../openai/v1`)."""
    return endpoint.strip().rstrip("/").endswith("/openai/v1")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class AzureProvider(OpenAIProvider):
    """OpenAIProvider whose calls name the model's Azure deployment as `model`."""

    name = "azure"

    def __init__(
        self,
        client: AzureClient,
        *,
        deployment_for: Callable[[str], str],
        max_parallel: int,
        current_model: str,
    ) -> None:
        super().__init__(client, max_parallel=max_parallel, current_model=current_model)
        self.deployment_for = deployment_for

    def payload(self, request: ImageRequest, n: int) -> dict[str, Any]:
        """OpenAI's body with the deployment as `model`."""
        return {**super().payload(request, n), "model": self.deployment_for(request.model.id)}

    def form_fields(self, request: ImageRequest, n: int) -> list[tuple[str, str]]:
        """OpenAI's form fields with the deployment as `model`."""
        deployment = self.deployment_for(request.model.id)
        return [
            (name, deployment if name == "model" else value)
            for name, value in super().form_fields(request, n)
        ]

    def vary(self, request: ImageRequest, inputs: ImageInputs, deadline: Deadline) -> Generation:
        """Azure OpenAI serves no image variations (its API has generations and edits)."""
        raise ValidationError(
            "Azure OpenAI has no image variations; use /edit with a prompt instead.",
            details={"field": "model"},
        )

    def _service_error(self, exc: OpenAIError, request: ImageRequest) -> ServiceError:
        """OpenAI's translation, but a missing deployment says which one and how to map it."""
        if isinstance(exc, APIStatusError) and exc.code == "DeploymentNotFound":
            deployment = self.deployment_for(request.model.id)
            return ValidationError(
                f"The Azure OpenAI resource has no deployment {deployment!r} for model "
                f"{request.model.id}; the operator maps models to deployments with "
                "IMAGE_GEN_AZURE_DEPLOYMENTS.",
                details={"field": "model"},
            )
        return super()._service_error(exc, request)


def deployments_from(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """A `deployment_for`: the mapped deployment, or the model id itself (Azure deployments
    are often named after their model)."""
    table = dict(mapping)
    return lambda model: table.get(model, model)


def azure_provider(
    endpoint: str,
    key: str,
    api_version: str,
    deployment_for: Callable[[str], str],
    v1: bool,
    *,
    settings: Settings,
    on_attempt: AttemptObserver | None = None,
) -> AzureProvider:
    """An Azure OpenAI provider; `settings` gives the timeouts, retries and parallelism."""
    client = AzureClient(
        endpoint,
        key,
        api_version=api_version,
        v1=v1,
        **client_options(settings, on_attempt),
    )
    return AzureProvider(
        client,
        deployment_for=deployment_for,
        max_parallel=settings.max_parallel_upstream,
        current_model=settings.default_model,
    )
