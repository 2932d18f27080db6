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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imagegen.upstream.client import OpenAIClient
from imagegen.upstream.errors import APIStatusError
from imagegen.upstream.retry import Deadline
from imagegen.upstream.transport import FormFile, _Response

# Azure's image content filter answers 400 with error.code "contentFilter" (image how-to),
# "content_policy_violation", or "content_filter" with innererror.code
# "ResponsibleAIPolicyViolation" (the REST reference's error shape); read 2026-12-02.
_FILTER_CODES = {"contentfilter", "content_filter", "content_policy_violation"}
_FILTER_INNER = "ResponsibleAIPolicyViolation"


class AzureClient(OpenAIClient):
    """OpenAIClient on Azure's URLs, with the key in `api-key` and Azure's error bodies read.

    Every call names the model's deployment as `model` (`deployment_for`); the classic form
    puts it in the path too (as the openai SDK's AzureOpenAI does) with `api-version`. v1:
    OpenAI's paths under `{endpoint}/openai/v1`.
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        *,
        api_version: str,
        v1: bool,
        deployment_for: Callable[[str], str] = lambda model: model,
        **options: Any,
    ) -> None:
        root = azure_root(endpoint)
        super().__init__(f"{root}/openai/v1" if v1 else f"{root}/openai", api_key, **options)
        self.api_version = api_version
        self.v1 = v1
        self.deployment_for = deployment_for

    def __repr__(self) -> str:
        api = "v1" if self.v1 else f"api_version={self.api_version!r}"
        return f"AzureClient(base_url={self.base_url!r}, {api})"

    def generate_images(self, payload: Mapping[str, Any], deadline: Deadline) -> dict[str, Any]:
        """OpenAI's call with the deployment as `model`."""
        return super().generate_images(self._deployed(payload), deadline)

    def stream_images(
        self,
        payload: Mapping[str, Any],
        deadline: Deadline,
        on_event: Callable[[dict[str, Any]], None],
        *,
        path: str = "images/generations",
    ) -> dict[str, Any]:
        """OpenAI's streamed call with the deployment as `model`."""
        return super().stream_images(self._deployed(payload), deadline, on_event, path=path)

    def edit_images(
        self, fields: Sequence[tuple[str, str]], files: Sequence[FormFile], deadline: Deadline
    ) -> dict[str, Any]:
        """OpenAI's multipart edit with the deployment as `model`."""
        deployed = [
            (name, self.deployment_for(value) if name == "model" else value)
            for name, value in fields
        ]
        return super().edit_images(deployed, files, deadline)

    def create_variation(
        self, fields: Sequence[tuple[str, str]], files: Sequence[FormFile], deadline: Deadline
    ) -> dict[str, Any]:
        """Azure OpenAI has no image variations: refused here as the model not served,
        without a call."""
        raise APIStatusError(
            400, "Azure OpenAI serves no image variations", code="model_not_found", param="model"
        )

    def _deployed(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        model = payload.get("model")
        if not isinstance(model, str):
            return dict(payload)
        return {**payload, "model": self.deployment_for(model)}

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
        (its gateway's 401/403), content-filter codes (they become `content_filter` and are
        never retried), and a missing deployment, told as the request's fault with the
        setting that maps deployments (as a 404 it would read "model not served")."""
        error = super()._status_error(response)
        body = _json_object(response.body)
        details = body.get("error") if isinstance(body.get("error"), dict) else None
        if details is None and isinstance(body.get("message"), str):
            error.message = self.redact(body["message"])[:500]
        nested = (details or {}).get("innererror") or (details or {}).get("inner_error")
        inner_code = nested.get("code") if isinstance(nested, dict) else None
        if str(error.code or "").lower() in _FILTER_CODES or inner_code == _FILTER_INNER:
            error.code, error.should_retry = "content_filter", False
        if error.code == "DeploymentNotFound":
            error.status, error.param = 400, None
            error.message = (
                "the Azure OpenAI resource has no deployment of that name for this model; "
                "the operator maps models to deployments with IMAGE_GEN_AZURE_DEPLOYMENTS"
            )
        return error


def azure_root(endpoint: str) -> str:
    """The resource's origin from AZURE_OPENAI_ENDPOINT, without `/openai` or `/openai/v1`."""
    root = endpoint.strip().rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


def deployments_from(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """A `deployment_for`: the mapped deployment, or the model id itself (Azure deployments
    are often named after their model)."""
    table = dict(mapping)
    return lambda model: table.get(model, model)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
