"""Service settings, read once from environment variables and secret files."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import clock
from .catalog import SHUT_DOWN, get_model

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/run/secrets/openai_api_key"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PROVIDERS = ("openai", "placeholder")


class SettingsError(ValueError):
    """A setting has a value the service cannot start with."""


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with. Immutable; built once per app."""

    images_dir: Path = Path("images")
    provider: str = "openai"
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str = "none"  # "secret_file", "env" or "none": never the path or the value
    base_url: str = DEFAULT_BASE_URL
    default_model: str = "gpt-image-2"
    # Upstream timing. A GPT Image call at high quality takes minutes; the request deadline
    # bounds one /generate end to end (all attempts), and stays below Gunicorn's timeout.
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    request_deadline: float = 540.0
    max_retries: int = 2
    retry_backoff: float = 0.5
    max_retry_wait: float = 20.0
    max_parallel_upstream: int = 10  # per request; count is at most 10 anyway
    max_upstream_bytes: int = 256 * 1024 * 1024
    max_image_bytes: int = 64 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    log_prompts: bool = True
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise SettingsError(
                f"IMAGE_GEN_PROVIDER must be one of {', '.join(PROVIDERS)}, not {self.provider!r}"
            )
        if not self.base_url.startswith(("https://", "http://")):
            raise SettingsError("OPENAI_BASE_URL must be an http(s) URL")
        if self.max_retries < 0 or self.max_parallel_upstream < 1:
            raise SettingsError("retry and parallelism settings must be positive")
        if min(self.connect_timeout, self.read_timeout, self.request_deadline) <= 0:
            raise SettingsError("timeouts and the request deadline must be more than zero")
        model = get_model(self.default_model)
        if model is None or model.status(clock.today()) == SHUT_DOWN:
            raise SettingsError(
                f"IMAGE_GEN_DEFAULT_MODEL {self.default_model!r} is not a model the service can "
                "use; GET /models lists them"
            )

    @property
    def api_key_configured(self) -> bool:
        return bool(self.api_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; the key from its secret file first."""
        env = os.environ if environ is None else environ
        api_key, source = _read_api_key(env)
        kwargs: dict[str, object] = {
            "images_dir": Path(env.get("IMAGE_GEN_IMAGES_DIR", "images")),
            "provider": env.get("IMAGE_GEN_PROVIDER", "openai").strip().lower(),
            "api_key": api_key,
            "api_key_source": source,
            "base_url": env.get("OPENAI_BASE_URL", "").strip().rstrip("/") or DEFAULT_BASE_URL,
            "log_prompts": _bool(env, "IMAGE_GEN_LOG_PROMPTS", True),
            "fsync": _bool(env, "IMAGE_GEN_FSYNC", True),
        }
        if env.get("IMAGE_GEN_DEFAULT_MODEL", "").strip():
            kwargs["default_model"] = env["IMAGE_GEN_DEFAULT_MODEL"].strip()
        for name, key, kind in _NUMERIC:
            if env.get(name, "").strip():
                kwargs[key] = _number(name, env[name], kind)
        return cls(**kwargs)  # type: ignore[arg-type]


_NUMERIC = (
    ("OPENAI_CONNECT_TIMEOUT", "connect_timeout", float),
    ("OPENAI_TIMEOUT", "read_timeout", float),
    ("IMAGE_GEN_REQUEST_DEADLINE", "request_deadline", float),
    ("OPENAI_MAX_RETRIES", "max_retries", int),
    ("OPENAI_RETRY_BACKOFF", "retry_backoff", float),
    ("OPENAI_MAX_RETRY_WAIT", "max_retry_wait", float),
    ("IMAGE_GEN_MAX_PARALLEL_UPSTREAM", "max_parallel_upstream", int),
    ("IMAGE_GEN_MAX_IMAGE_BYTES", "max_image_bytes", int),
    ("IMAGE_GEN_MAX_UPSTREAM_BYTES", "max_upstream_bytes", int),
)


def _number(name: str, raw: str, kind: type) -> float | int:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw.strip()!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name} must be a finite number, zero or more, not {raw.strip()!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


def _read_api_key(env: Mapping[str, str]) -> tuple[str | None, str]:
    """Return (key, source). The secret file wins; the variable is a development fallback."""
    path = Path(env.get("OPENAI_API_KEY_FILE", "").strip() or DEFAULT_KEY_FILE)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    except OSError as exc:
        # The path is operator-chosen, never secret; the contents are.
        log.warning(
            "cannot read the API key file %s: %s (it must be readable by uid %d)",
            path,
            exc.strerror,
            os.getuid(),
        )
        key = ""
    except UnicodeDecodeError:
        log.warning("the API key file %s is not UTF-8 text; ignoring it", path)
        key = ""
    if key:
        return key, "secret_file"
    key = env.get("OPENAI_API_KEY", "").strip()
    if key:
        log.warning(
            "using OPENAI_API_KEY from the environment; mount it as the Docker secret "
            "openai_api_key in production"
        )
        return key, "env"
    return None, "none"
