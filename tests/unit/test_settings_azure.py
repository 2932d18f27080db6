"""Azure OpenAI from the environment alone: which upstream is chosen, where its key comes from,
the API form and version, the deployment mapping, and the configurations refused at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from imagegen.settings import DEFAULT_AZURE_API_VERSION, Settings, SettingsError
from imagegen.upstream.azure import AzureClient
from imagegen.upstream.providers import OpenAIProvider
from imagegen.upstream.routing import provider_for

AZURE_KEY = "fedcba9876543210fedcba9876543210"
ENDPOINT = "https://example-resource.openai.azure.com"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "azure_openai_api_key"
    path.write_text(AZURE_KEY + "\n", encoding="utf-8")
    return path


def azure_env(key_file: Path, **values: str) -> dict[str, str]:
    return {"AZURE_OPENAI_ENDPOINT": ENDPOINT, "AZURE_OPENAI_API_KEY_FILE": str(key_file), **values}


def test_the_endpoint_alone_selects_azure_with_the_key_from_its_file(key_file: Path) -> None:
    result = Settings.from_env(azure_env(key_file))

    assert result.provider == "azure" and result.azure_endpoint == ENDPOINT
    assert result.api_key == AZURE_KEY and result.api_key_source == "secret_file"
    assert result.azure_api == "deployments"
    assert result.azure_api_version == DEFAULT_AZURE_API_VERSION
    assert AZURE_KEY not in repr(result)


def test_the_environment_key_is_a_fallback_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "none"
    with caplog.at_level(logging.WARNING):
        result = Settings.from_env(azure_env(missing, AZURE_OPENAI_API_KEY=AZURE_KEY))

    assert result.api_key == AZURE_KEY and result.api_key_source == "env"
    assert "AZURE_OPENAI_API_KEY from the environment" in caplog.text
    assert AZURE_KEY not in caplog.text


def test_no_azure_key_anywhere_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AZURE_OPENAI_API_KEY_FILE"):
        Settings.from_env(azure_env(tmp_path / "none"))


def test_openai_settings_beside_the_endpoint_are_refused_as_ambiguous(key_file: Path) -> None:
    for name in ("OPENAI_API_KEY_FILE", "OPENAI_BASE_URL"):
        with pytest.raises(SettingsError, match=f"AZURE_OPENAI_ENDPOINT and {name}"):
            Settings.from_env(azure_env(key_file, **{name: "https://x.example/v1"}))


def test_image_gen_provider_settles_an_ambiguous_configuration(key_file: Path) -> None:
    both = azure_env(key_file, OPENAI_API_KEY_FILE=str(key_file))

    assert Settings.from_env({**both, "IMAGE_GEN_PROVIDER": "azure"}).provider == "azure"
    assert Settings.from_env({**both, "IMAGE_GEN_PROVIDER": "openai"}).provider == "openai"


def test_the_azure_provider_without_an_endpoint_stops_start_up(key_file: Path) -> None:
    env = {"IMAGE_GEN_PROVIDER": "azure", "AZURE_OPENAI_API_KEY_FILE": str(key_file)}
    with pytest.raises(SettingsError, match="AZURE_OPENAI_ENDPOINT"):
        Settings.from_env(env)


def test_api_version_and_deployments_come_from_the_environment(key_file: Path) -> None:
    result = Settings.from_env(
        azure_env(
            key_file,
            OPENAI_API_VERSION="2024-10-21",
            IMAGE_GEN_AZURE_DEPLOYMENTS="gpt-image-2=img-prod, gpt-image-1.5 = img-15",
        )
    )

    assert result.azure_api_version == "2024-10-21"
    assert result.azure_deployments == (("gpt-image-2", "img-prod"), ("gpt-image-1.5", "img-15"))


def test_a_malformed_deployment_mapping_stops_start_up(key_file: Path) -> None:
    with pytest.raises(SettingsError, match="model=deployment"):
        Settings.from_env(azure_env(key_file, IMAGE_GEN_AZURE_DEPLOYMENTS="gpt-image-2"))


@pytest.mark.parametrize(
    ("endpoint", "api", "expected"),
    [
        (f"{ENDPOINT}/openai/v1/", "", "v1"),
        (ENDPOINT, "v1", "v1"),
        (ENDPOINT, "", "deployments"),
    ],
)
def test_the_v1_api_is_chosen_by_endpoint_or_setting(
    key_file: Path, endpoint: str, api: str, expected: str
) -> None:
    env = azure_env(key_file, AZURE_OPENAI_ENDPOINT=endpoint, IMAGE_GEN_AZURE_API=api)
    result = Settings.from_env(env)

    assert result.azure_api == expected
    provider = provider_for(result)
    assert isinstance(provider, OpenAIProvider) and provider.name == "azure"
    assert isinstance(provider.client, AzureClient)
    assert provider.client.base_url == (
        f"{ENDPOINT}/openai/v1" if expected == "v1" else f"{ENDPOINT}/openai"
    )


def test_an_unknown_api_form_stops_start_up(key_file: Path) -> None:
    with pytest.raises(SettingsError, match="IMAGE_GEN_AZURE_API"):
        Settings.from_env(azure_env(key_file, IMAGE_GEN_AZURE_API="v2"))


def test_classic_urls_name_the_deployment_and_api_version_and_the_client_hides_the_key() -> None:
    client = AzureClient(ENDPOINT, AZURE_KEY, api_version="2025-04-01-preview", v1=False)

    assert client.url_for("images/edits", "img prod") == (
        f"{ENDPOINT}/openai/deployments/img%20prod/images/edits?api-version=2025-04-01-preview"
    )
    assert client.auth_headers() == {"api-key": AZURE_KEY}
    assert AZURE_KEY not in repr(client)
    assert client.redact(f"key {AZURE_KEY}") == "key [redacted]"


def test_without_the_endpoint_openai_stays_the_upstream(tmp_path: Path) -> None:
    result = Settings.from_env({"OPENAI_API_KEY_FILE": str(tmp_path / "none")})

    assert result.provider == "openai" and result.azure_endpoint is None
    assert result.upstream == {"kind": "openai"}
    assert provider_for(result).name == "openai"
