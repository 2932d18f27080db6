"""Service settings, read once from environment variables and secret files."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imagegen import clock
from imagegen.access.tokens import Limits, Token, TokenFileError, TokensLoad, tokens_for
from imagegen.catalog import operator
from imagegen.catalog.models import get_model
from imagegen.catalog.spec import SHUT_DOWN
from imagegen.storage import location, ownership

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "/run/secrets/openai_api_key"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_KEY_FILE = "/run/secrets/azure_openai_api_key"
# The classic Azure path needs a dated api-version. Azure's image generation how-to uses
# 2025-04-01-preview for GPT Image generations and edits on the deployment path (the GA
# inference version it lists, 2024-10-21, serves DALL-E 3 only); read 2026-12-02 at
# https://learn.microsoft.com/en-us/azure/ai-services/openai/how-to/dall-e and
# https://learn.microsoft.com/en-us/azure/foundry/openai/api-version-lifecycle (which
# recommends the v1 API, IMAGE_GEN_AZURE_API=v1, that needs none).
DEFAULT_AZURE_API_VERSION = "2025-04-01-preview"
AZURE_APIS = ("deployments", "v1")
PROVIDERS = ("openai", "azure", "placeholder")
# IMAGE_GEN_JOB_LEASE_SECONDS: long enough to renew through a short pause (a renewal every
# third), short enough that a dead replica's jobs do not wait for ever.
JOB_LEASE_RANGE = (5.0, 600.0)
DATABASE_POOL_RANGE = (1, 100)  # IMAGE_GEN_DATABASE_POOL_SIZE, per worker process


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
    # Azure OpenAI (provider "azure"): the resource endpoint, the API form ("deployments":
    # the classic per-deployment path with api-version; "v1"), and model -> deployment pairs
    # (a model not named is served by a deployment of its own name).
    azure_endpoint: str | None = None
    azure_api: str = "deployments"
    azure_api_version: str = DEFAULT_AZURE_API_VERSION
    azure_deployments: tuple[tuple[str, str], ...] = ()
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
    # Image uploads (POST /edit, /variations and their /v1 forms): each file, and the whole
    # multipart body. JSON bodies keep max_request_bytes.
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_total_bytes: int = 100 * 1024 * 1024
    log_prompts: bool = True
    fsync: bool = True
    # False in the Docker image: the service refuses to start as the host's root there.
    allow_root: bool = True
    metrics_dir: Path | None = None  # None: <images_dir>/.metrics (see metrics.py)
    # Client tokens (None: the service is open, as the original was) and the caps that hold
    # for the whole service whatever the token.
    tokens_file: Path | None = None
    tokens: tuple[Token, ...] | None = field(default=None, repr=False)
    tokens_load: TokensLoad | None = None  # when and how the tokens were read (for /health)
    # The operator's models file (IMAGE_GEN_MODELS_FILE): aliases, new models, upstreams.
    models_load: operator.ModelsLoad | None = None
    cap_images_per_hour: int | None = None
    cap_images_per_day: int | None = None
    cap_usd_per_day: float | None = None
    idempotency_ttl: float = 86400.0
    # Asynchronous jobs (Prefer: respond-async): how many run at once across every worker and
    # replica sharing the images directory, how many may wait, how many times a job is
    # started (again after its process died), how long finished jobs' records are kept, how
    # often each worker looks for jobs to adopt, and the previews GPT Image models stream.
    max_running_jobs: int = 8
    max_queued_jobs: int = 100
    job_attempts: int = 2
    job_retention: float = 86400.0
    job_poll_interval: float = 1.0
    # Where leases are timed (PostgreSQL books): how long a job's or a running slot's lease
    # lives unrenewed (renewed every third of it), so how soon another replica takes up the
    # jobs of one that died. Shorter: quicker take-over, but a database pause of that long
    # makes a live replica let go of its jobs.
    job_lease_seconds: float = 30.0
    partial_images: int = 2
    # Event streams (GET /jobs/<id>/events) one worker serves at once, in all and per client
    # token. Under Gunicorn a stream costs a socket and a small buffer on the worker's stream
    # hub (jobs/hub.py), not a request thread, so one worker alone can take 1,000.
    max_streams: int = 1000
    max_streams_per_token: int = 10
    # Completion webhooks: the operator's signing secret (a caller may send its own), the
    # hosts they may go to (empty: any host with only public addresses; "*": any), attempts.
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_hosts: tuple[str, ...] = ()
    webhook_attempts: int = 6
    webhook_backoff: float = 2.0
    webhook_timeout: float = 10.0
    # IMAGE_GEN_DATABASE_URL (or _FILE): postgresql://... keeps the caps and the idempotency
    # keys in PostgreSQL, shared by replicas on any host; None: SQLite under the images
    # directory. It may hold a password: never in repr, logs or /health.
    database_url: str | None = field(default=None, repr=False)
    # IMAGE_GEN_DATABASE_POOL_SIZE: connections each worker process may hold to it at most.
    database_pool_size: int = 8
    # IMAGE_GEN_STORAGE_URL: s3://<bucket>/<prefix> keeps images, metadata.json and
    # thumbnails in that bucket (storage/location.py); None: files in images_dir (a file://
    # URL sets images_dir). The images directory still holds what is local to a host.
    storage_url: str | None = None

    def __post_init__(self) -> None:
        # Absolute, fixed at start-up: Flask's send_file reads a relative path against the
        # package directory, not the working directory the service was started in.
        object.__setattr__(self, "images_dir", Path(self.images_dir).absolute())
        if self.metrics_dir is not None:
            object.__setattr__(self, "metrics_dir", Path(self.metrics_dir).absolute())
        if self.provider not in PROVIDERS:
            raise SettingsError(
                f"IMAGE_GEN_PROVIDER must be one of {', '.join(PROVIDERS)}, not {self.provider!r}"
            )
        if not self.base_url.startswith(("https://", "http://")):
            raise SettingsError("OPENAI_BASE_URL must be an http(s) URL")
        self._check_azure()
        if self.max_retries < 0 or self.max_parallel_upstream < 1:
            raise SettingsError("retry and parallelism settings must be positive")
        if not 0 <= self.partial_images <= 3:
            raise SettingsError("IMAGE_GEN_PARTIAL_IMAGES must be 0, 1, 2 or 3")
        if min(self.max_running_jobs, self.job_attempts, self.webhook_attempts) < 1:
            raise SettingsError(
                "IMAGE_GEN_MAX_RUNNING_JOBS, IMAGE_GEN_JOB_ATTEMPTS and "
                "IMAGE_GEN_WEBHOOK_ATTEMPTS must be at least 1"
            )
        if min(self.max_streams, self.max_streams_per_token) < 1:
            raise SettingsError(
                "IMAGE_GEN_MAX_STREAMS and IMAGE_GEN_MAX_STREAMS_PER_TOKEN must be at least 1"
            )
        if min(self.job_poll_interval, self.webhook_timeout, self.job_retention) <= 0:
            raise SettingsError("job and webhook intervals and timeouts must be more than zero")
        if not JOB_LEASE_RANGE[0] <= self.job_lease_seconds <= JOB_LEASE_RANGE[1]:
            raise SettingsError(
                f"IMAGE_GEN_JOB_LEASE_SECONDS must be from {JOB_LEASE_RANGE[0]:g} to "
                f"{JOB_LEASE_RANGE[1]:g} seconds, not {self.job_lease_seconds:g}"
            )
        if self.idempotency_ttl <= 0:
            raise SettingsError("IMAGE_GEN_IDEMPOTENCY_TTL must be more than zero seconds")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise SettingsError("IMAGE_GEN_DATABASE_URL must be a postgresql:// URL")
        if self.database_url is not None and not _parses_as_conninfo(self.database_url):
            raise SettingsError(
                "IMAGE_GEN_DATABASE_URL cannot be read as a PostgreSQL URL (not shown: it may "
                "hold a password); percent-encode the special characters of the user and the "
                "password (%, @, :, /, ?, #, [, ]), and put an IPv6 host in brackets"
            )
        if not DATABASE_POOL_RANGE[0] <= self.database_pool_size <= DATABASE_POOL_RANGE[1]:
            raise SettingsError(
                f"IMAGE_GEN_DATABASE_POOL_SIZE must be from {DATABASE_POOL_RANGE[0]} to "
                f"{DATABASE_POOL_RANGE[1]} connections, not {self.database_pool_size}"
            )
        if self.storage_url is not None:
            try:
                where = location.parse(self.storage_url)
            except location.StorageURLError as exc:
                raise SettingsError(str(exc)) from None
            if not isinstance(where, location.Bucket):
                raise SettingsError("a file:// storage URL is given as the images directory")
            object.__setattr__(self, "storage_url", where.url)
        if min(self.connect_timeout, self.read_timeout, self.request_deadline) <= 0:
            raise SettingsError("timeouts and the request deadline must be more than zero")
        model = get_model(self.default_model)
        if model is None or model.status(clock.today()) == SHUT_DOWN:
            raise SettingsError(
                f"IMAGE_GEN_DEFAULT_MODEL {self.default_model!r} is not a model the service can "
                "use; GET /models lists them"
            )

    def _check_azure(self) -> None:
        if self.provider != "azure":
            return
        if not self.azure_endpoint or not self.azure_endpoint.startswith(("https://", "http://")):
            raise SettingsError(
                "the azure provider needs AZURE_OPENAI_ENDPOINT, an http(s) URL such as "
                "https://<resource>.openai.azure.com"
            )
        if self.azure_api not in AZURE_APIS:
            raise SettingsError(f"IMAGE_GEN_AZURE_API must be one of {', '.join(AZURE_APIS)}")
        if not self.api_key:
            raise SettingsError(
                "AZURE_OPENAI_ENDPOINT is set but no Azure OpenAI key was found: mount it as "
                "the secret named by AZURE_OPENAI_API_KEY_FILE (default "
                f"{DEFAULT_AZURE_KEY_FILE})"
            )

    @property
    def upstream(self) -> dict[str, str]:
        """What /health says of the upstream: its kind and, for Azure, the API form and
        version. Never the key, and never a path or URL that could carry one."""
        if self.provider != "azure":
            return {"kind": self.provider}
        described = {"kind": "azure", "api": self.azure_api}
        if self.azure_api == "deployments":
            described["api_version"] = self.azure_api_version
        return described

    @property
    def models_file(self) -> operator.ModelsFile | None:
        """The models file's checked contents, if there is one."""
        return self.models_load.file if self.models_load is not None else None

    @property
    def api_key_configured(self) -> bool:
        return bool(self.api_key)

    @property
    def auth_required(self) -> bool:
        return self.tokens is not None

    @property
    def global_limits(self) -> Limits:
        return Limits(
            images_per_hour=self.cap_images_per_hour,
            images_per_day=self.cap_images_per_day,
            usd_per_day=self.cap_usd_per_day,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; the key from its secret file first."""
        env = os.environ if environ is None else environ
        provider = _provider(env)
        if provider == "azure":
            api_key, source = _read_api_key(env, azure=True)
        else:
            api_key, source = _read_api_key(env)
        kwargs: dict[str, object] = {
            "images_dir": Path(env.get("IMAGE_GEN_IMAGES_DIR", "images")),
            "provider": provider,
            "api_key": api_key,
            "api_key_source": source,
            **(_azure_settings(env) if provider == "azure" else {}),
            "base_url": env.get("OPENAI_BASE_URL", "").strip().rstrip("/") or DEFAULT_BASE_URL,
            "log_prompts": _bool(env, "IMAGE_GEN_LOG_PROMPTS", True),
            "fsync": _bool(env, "IMAGE_GEN_FSYNC", True),
            "allow_root": _bool(env, "IMAGE_GEN_ALLOW_ROOT", True),
            "metrics_dir": Path(env["IMAGE_GEN_METRICS_DIR"].strip())
            if env.get("IMAGE_GEN_METRICS_DIR", "").strip()
            else None,
        }
        hosts = env.get("IMAGE_GEN_WEBHOOK_HOSTS", "")
        kwargs["webhook_hosts"] = tuple(h.strip().lower() for h in hosts.split(",") if h.strip())
        secret_file = env.get("IMAGE_GEN_WEBHOOK_SECRET_FILE", "").strip()
        if secret_file:
            kwargs["webhook_secret"] = _secret_file("IMAGE_GEN_WEBHOOK_SECRET_FILE", secret_file)
        kwargs["database_url"] = _read_database_url(env)
        kwargs.update(_storage(env))
        models_file = env.get("IMAGE_GEN_MODELS_FILE", "").strip()
        if models_file:  # before the tokens, whose `models=` may name its models
            try:
                models_load = operator.models_for(Path(models_file))
            except operator.ModelsFileError as exc:
                raise SettingsError(f"IMAGE_GEN_MODELS_FILE: {exc}") from None
            operator.install(models_load.file)
            kwargs["models_load"] = models_load
        tokens_file = env.get("IMAGE_GEN_TOKENS_FILE", "").strip()
        if tokens_file:
            try:
                load = tokens_for(Path(tokens_file))
            except TokenFileError as exc:
                raise SettingsError(f"IMAGE_GEN_TOKENS_FILE: {exc}") from None
            kwargs.update(tokens=load.tokens, tokens_file=load.path, tokens_load=load)
        if env.get("IMAGE_GEN_DEFAULT_MODEL", "").strip():
            kwargs["default_model"] = env["IMAGE_GEN_DEFAULT_MODEL"].strip()
        for name, key, kind in _NUMERIC:
            if env.get(name, "").strip():
                kwargs[key] = _number(name, env[name], kind)
        # kwargs maps field names to the values read above, each of its field's type; mypy
        # cannot match a dict's keys to the fields.
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
    ("IMAGE_GEN_MAX_UPLOAD_BYTES", "max_upload_bytes", int),
    ("IMAGE_GEN_CAP_IMAGES_PER_HOUR", "cap_images_per_hour", int),
    ("IMAGE_GEN_CAP_IMAGES_PER_DAY", "cap_images_per_day", int),
    ("IMAGE_GEN_CAP_USD_PER_DAY", "cap_usd_per_day", float),
    ("IMAGE_GEN_IDEMPOTENCY_TTL", "idempotency_ttl", float),
    ("IMAGE_GEN_MAX_UPLOAD_TOTAL_BYTES", "max_upload_total_bytes", int),
    ("IMAGE_GEN_MAX_RUNNING_JOBS", "max_running_jobs", int),
    ("IMAGE_GEN_MAX_QUEUED_JOBS", "max_queued_jobs", int),
    ("IMAGE_GEN_JOB_ATTEMPTS", "job_attempts", int),
    ("IMAGE_GEN_JOB_RETENTION", "job_retention", float),
    ("IMAGE_GEN_JOB_POLL_INTERVAL", "job_poll_interval", float),
    ("IMAGE_GEN_JOB_LEASE_SECONDS", "job_lease_seconds", float),
    ("IMAGE_GEN_DATABASE_POOL_SIZE", "database_pool_size", int),
    ("IMAGE_GEN_PARTIAL_IMAGES", "partial_images", int),
    ("IMAGE_GEN_MAX_STREAMS", "max_streams", int),
    ("IMAGE_GEN_MAX_STREAMS_PER_TOKEN", "max_streams_per_token", int),
    ("IMAGE_GEN_WEBHOOK_ATTEMPTS", "webhook_attempts", int),
    ("IMAGE_GEN_WEBHOOK_BACKOFF", "webhook_backoff", float),
    ("IMAGE_GEN_WEBHOOK_TIMEOUT", "webhook_timeout", float),
)


def _number(name: str, raw: str, kind: Callable[[str], float | int]) -> float | int:
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


def _secret_file(name: str, path: str) -> str:
    """The stripped content of the secret file setting `name` names; errors name the file,
    never what it holds."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else None
        raise SettingsError(f"{name} {path} cannot be read: {why or type(exc).__name__}") from None


def _parses_as_conninfo(url: str) -> bool:
    """Whether libpq can parse the URL. Checked at start because its parse error quotes
    the URL, password and all, which the connection pool would log at every try."""
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return False
    return True


def _read_database_url(env: Mapping[str, str]) -> str | None:
    """IMAGE_GEN_DATABASE_URL_FILE's content (a secret), else IMAGE_GEN_DATABASE_URL; None
    when neither is set."""
    path = env.get("IMAGE_GEN_DATABASE_URL_FILE", "").strip()
    if path:
        return _secret_file("IMAGE_GEN_DATABASE_URL_FILE", path) or None
    return env.get("IMAGE_GEN_DATABASE_URL", "").strip() or None


def _storage(env: Mapping[str, str]) -> dict[str, object]:
    """IMAGE_GEN_STORAGE_URL as settings: a bucket's URL, or a file:// URL's directory as the
    images directory (IMAGE_GEN_IMAGES_DIR may name the same one, no other)."""
    raw = env.get("IMAGE_GEN_STORAGE_URL", "").strip()
    if not raw:
        return {}
    try:
        where = location.parse(raw)
    except location.StorageURLError as exc:
        raise SettingsError(str(exc)) from None
    if isinstance(where, location.Bucket):
        return {"storage_url": where.url}
    named = env.get("IMAGE_GEN_IMAGES_DIR", "").strip()
    if named and Path(named).absolute() != where.absolute():
        raise SettingsError(
            "IMAGE_GEN_STORAGE_URL (file://) and IMAGE_GEN_IMAGES_DIR name different "
            "directories: set one of them"
        )
    return {"images_dir": where}


def _provider(env: Mapping[str, str]) -> str:
    """IMAGE_GEN_PROVIDER, or "azure" when AZURE_OPENAI_ENDPOINT is set and nothing names
    OpenAI; both configured without IMAGE_GEN_PROVIDER to choose is refused."""
    named = env.get("IMAGE_GEN_PROVIDER", "").strip().lower()
    if named or not env.get("AZURE_OPENAI_ENDPOINT", "").strip():
        return named or "openai"
    openai = [name for name in ("OPENAI_API_KEY_FILE", "OPENAI_BASE_URL") if env.get(name, "")]
    if openai:
        raise SettingsError(
            f"both AZURE_OPENAI_ENDPOINT and {' and '.join(openai)} are set: say which upstream "
            "to use with IMAGE_GEN_PROVIDER=azure or IMAGE_GEN_PROVIDER=openai"
        )
    if env.get("OPENAI_API_KEY", "").strip():
        log.warning("AZURE_OPENAI_ENDPOINT is set: OPENAI_API_KEY is not used")
    return "azure"


def _azure_settings(env: Mapping[str, str]) -> dict[str, object]:
    """The Azure fields from AZURE_OPENAI_ENDPOINT, IMAGE_GEN_AZURE_API, OPENAI_API_VERSION
    and IMAGE_GEN_AZURE_DEPLOYMENTS ("model=deployment,..."). An endpoint ending in
    /openai/v1 selects the v1 API."""
    endpoint = env.get("AZURE_OPENAI_ENDPOINT", "").strip().rstrip("/")
    api = env.get("IMAGE_GEN_AZURE_API", "").strip().lower()
    if not api:
        api = "v1" if endpoint.endswith("/openai/v1") else "deployments"
    pairs = []
    for entry in env.get("IMAGE_GEN_AZURE_DEPLOYMENTS", "").split(","):
        if not entry.strip():
            continue
        model, equals, deployment = (part.strip() for part in entry.partition("="))
        if not equals or not model or not deployment:
            raise SettingsError(
                "IMAGE_GEN_AZURE_DEPLOYMENTS takes model=deployment pairs separated by "
                f"commas, not {entry.strip()!r}"
            )
        pairs.append((model, deployment))
    return {
        "azure_endpoint": endpoint or None,
        "azure_api": api,
        "azure_api_version": env.get("OPENAI_API_VERSION", "").strip() or DEFAULT_AZURE_API_VERSION,
        "azure_deployments": tuple(pairs),
    }


def _read_api_key(env: Mapping[str, str], *, azure: bool = False) -> tuple[str | None, str]:
    """Return (key, source). The secret file wins; the variable is a development fallback.
    With `azure`, AZURE_OPENAI_API_KEY_FILE and AZURE_OPENAI_API_KEY are read instead."""
    prefix = "AZURE_OPENAI" if azure else "OPENAI"
    default = DEFAULT_AZURE_KEY_FILE if azure else DEFAULT_KEY_FILE
    path = Path(env.get(f"{prefix}_API_KEY_FILE", "").strip() or default)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    except PermissionError as exc:
        # The path and its owner are operator-chosen, never secret; the contents are.
        log.warning(
            "cannot read the API key file %s: %s. %s",
            path,
            exc.strerror,
            ownership.denied(path, ownership.READ_FILE, f"secrets/{Path(default).name}.txt"),
        )
        key = ""
    except OSError as exc:
        log.warning("cannot read the API key file %s: %s", path, exc.strerror)
        key = ""
    except UnicodeDecodeError:
        log.warning("the API key file %s is not UTF-8 text; ignoring it", path)
        key = ""
    if key:
        return key, "secret_file"
    key = env.get(f"{prefix}_API_KEY", "").strip()
    if key:
        log.warning(
            "using %s_API_KEY from the environment; mount it as the Docker secret %s in production",
            prefix,
            Path(default).name,
        )
        return key, "env"
    return None, "none"
