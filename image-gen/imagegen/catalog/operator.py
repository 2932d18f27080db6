"""The operator's models file (IMAGE_GEN_MODELS_FILE): aliases, new models, named upstreams.

A TOML file, read at start-up and on SIGHUP like the tokens file (the Gunicorn master reads
it, every worker serves with what it holds; a file broken on a reload keeps the last good
one). Every mistake names its key path, e.g. `models."team-image".count.max: must be an
integer`. Only the standard library and the catalog are imported, so the master can read it
without loading the app.

    [upstreams.xai]                 # a named upstream besides the default one
    kind = "openai"                 # "openai" or "azure"
    base_url = "https://api.x.ai/v1"
    key_file = "/run/secrets/xai_key"

    [models."team-image"]           # an alias: validated like its base, sent by its own name
    like = "gpt-image-2"
    fallbacks = ["xai"]

    [models."grok-imagine-image"]   # a new model, in the catalog's terms
    family = "openai-compatible"
    sizes = ["1024x1024"]
    count = { min = 1, max = 4 }
    upstream = "xai"
    price = { per_image = 0.07 }    # or per quality and size; token rates settle from usage
    edits = { max_images = 4, mask = true }   # or `edits = true`; `variations` likewise

    [models."gpt-image-2"]          # a built-in model served by an Azure deployment
    deployment = "img-prod"
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagegen.catalog import models as catalog
from imagegen.catalog import pricing
from imagegen.catalog.pricing import ImagePrices, Pricing, TokenRates
from imagegen.catalog.spec import MIB, Choice, InputSpec, IntRange, ModelSpec
from imagegen.clock import utc_now

DEFAULT_UPSTREAM = "default"  # OPENAI_BASE_URL and OPENAI_API_KEY_FILE
KINDS = ("openai", "azure")
OPERATOR_FAMILY = "openai-compatible"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_UPSTREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")
_ROUTE_KEYS = ("upstream", "fallbacks", "deployment")
_ALIAS_KEYS = ("like", "description", "price", *_ROUTE_KEYS)
_NEW_KEYS = (
    "family",
    "description",
    "sizes",
    "default_size",
    "count",
    "per_call",
    "max_prompt_chars",
    "options",
    "price",
    "edits",
    "variations",
    *_ROUTE_KEYS,
)
# What `edits = { ... }` and `variations = { ... }` may say (variations take one image, no
# prompt and no mask), and what `true` means: OpenAI's limits for GPT Image edits, except
# that one image and no mask are assumed until the file says more.
_EDIT_KEYS = ("max_images", "formats", "max_image_bytes", "mask", "max_mask_bytes", "square")
_VARIATION_KEYS = ("formats", "max_image_bytes", "square", "options")
_INPUT_FORMATS = ("png", "jpeg", "webp")
_MAX_INPUT_IMAGES = 16
_MAX_INPUT_BYTES = 50 * MIB
_MAX_MASK_BYTES = 4 * MIB
_TOKEN_RATES = (
    "input_per_mtok",
    "image_input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
)
_PRICE_KEYS = ("per_image", *_TOKEN_RATES, "source")
_MAX_USD_PER_IMAGE = 100.0
_MAX_USD_PER_MTOK = 10_000.0
_UPSTREAM_KEYS = ("kind", "base_url", "endpoint", "key_file", "api_version")
_MAX_PROMPT_CHARS = 32_000


class ModelsFileError(ValueError):
    """The models file cannot be used; the message names the key path at fault."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key  # the key path at fault, when one is


@dataclass(frozen=True)
class UpstreamConfig:
    """A named upstream: where it is and the file holding its key (never the key)."""

    name: str
    kind: str  # "openai" or "azure"
    base_url: str
    key_file: Path | None = None
    api_version: str | None = None  # Azure's api-version


@dataclass(frozen=True)
class Route:
    """Which upstream serves a model, those tried after it, and its Azure deployment."""

    upstream: str = DEFAULT_UPSTREAM
    fallbacks: tuple[str, ...] = ()
    deployment: str | None = None

    @property
    def chain(self) -> tuple[str, ...]:
        """The upstreams in the order they are tried."""
        return (self.upstream, *self.fallbacks)


@dataclass(frozen=True)
class OperatorModel:
    """One `[models."<id>"]` entry: its spec, where it comes from and how it is routed."""

    spec: ModelSpec
    route: Route
    like: str | None = None  # an alias's base
    built_in: bool = False  # an override of a catalog model (its spec unchanged)
    # Its `price`; None: a new model has none, an alias costs what its base costs.
    pricing: Pricing | None = None


@dataclass(frozen=True)
class ModelsFile:
    """The whole file, checked: its models (by id) and named upstreams (by name)."""

    models: Mapping[str, OperatorModel] = field(default_factory=dict)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)

    def route(self, model_id: str) -> Route:
        """The route of a model (the default upstream for one the file does not name)."""
        entry = self.models.get(model_id)
        return entry.route if entry is not None else Route()


@dataclass(frozen=True)
class ModelsLoad:
    """The file read from `path` at `loaded_at`; `failed_at` and `failed_key` say that a later
    reload failed (the models are then the last good ones)."""

    path: Path
    file: ModelsFile = field(repr=False)
    loaded_at: str
    failed_at: str | None = None
    failed_key: str | None = None


def _fail(key: str, message: str) -> ModelsFileError:
    return ModelsFileError(f"{key}: {message}", key=key)


def _path(*parts: str) -> str:
    return ".".join(parts)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _key(name: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _quoted(name)


def load_models_file(path: Path) -> ModelsFile:
    """Read and check the whole file; raise ModelsFileError naming the first bad key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelsFileError(
            f"the models file {path} does not exist (IMAGE_GEN_MODELS_FILE names it)"
        ) from None
    except OSError as exc:
        raise ModelsFileError(f"cannot read the models file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ModelsFileError(f"the models file {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelsFileError(f"the models file {path} is not valid TOML: {exc}") from None
    return parse_models_file(data, base=Path(path).parent)


def parse_models_file(data: Mapping[str, Any], *, base: Path = Path()) -> ModelsFile:
    """Check parsed TOML: upstreams first (models name them), then each model."""
    _known(data, ("models", "upstreams"), "")
    upstreams = {
        name: _upstream(name, entry, base)
        for name, entry in _table(data.get("upstreams", {}), "upstreams").items()
    }
    models: dict[str, OperatorModel] = {}
    for model_id, entry in _table(data.get("models", {}), "models").items():
        key = _path("models", _quoted(model_id))
        if not _NAME.match(model_id):
            raise _fail(key, "a model id is 1-128 letters, digits, '.', '_', ':' or '-'")
        models[model_id] = _model(model_id, _table(entry, key), key, upstreams)
    return ModelsFile(models, upstreams)


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key or "the file", "must be a table")
    return value


def _known(entry: Mapping[str, Any], known: tuple[str, ...], key: str) -> None:
    for name in entry:
        if name not in known:
            where = _path(key, name) if key else name
            raise _fail(where, f"unknown key (known here: {', '.join(known)})")


def _string(entry: Mapping[str, Any], name: str, key: str, *, required: bool = False) -> str | None:
    value = entry.get(name)
    if value is None:
        if required:
            raise _fail(_path(key, name), "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(_path(key, name), "must be a non-empty string")
    return value.strip()


def _integer(entry: Mapping[str, Any], name: str, key: str, low: int, high: int) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(_path(key, name), "must be an integer")
    if not low <= value <= high:
        raise _fail(_path(key, name), f"must be from {low} to {high}")
    return value


def _upstream(name: str, entry: Any, base: Path) -> UpstreamConfig:
    key = _path("upstreams", _quoted(name))
    entry = _table(entry, key)
    if not _UPSTREAM_NAME.match(name) or name == DEFAULT_UPSTREAM:
        raise _fail(
            key,
            "an upstream name is 1-32 lower-case letters, digits, '_' or '-' "
            f"(and not {DEFAULT_UPSTREAM!r}, the OPENAI_BASE_URL upstream)",
        )
    _known(entry, _UPSTREAM_KEYS, key)
    kind = _string(entry, "kind", key, required=True)
    if kind not in KINDS:
        raise _fail(_path(key, "kind"), f"must be one of {', '.join(KINDS)}")
    url_key = "endpoint" if kind == "azure" and "endpoint" in entry else "base_url"
    if kind == "openai" and "endpoint" in entry:
        raise _fail(_path(key, "endpoint"), "is for azure upstreams; use base_url")
    if kind == "openai" and "api_version" in entry:
        raise _fail(_path(key, "api_version"), "is for azure upstreams")
    if "endpoint" in entry and "base_url" in entry:
        raise _fail(_path(key, "endpoint"), "give base_url or endpoint, not both")
    url = _string(entry, url_key, key, required=True)
    assert url is not None
    if not re.match(r"^https?://[^/\s]+", url):
        raise _fail(_path(key, url_key), "must be an http:// or https:// URL")
    key_file = _string(entry, "key_file", key, required=True)
    assert key_file is not None
    key_path = base / key_file
    if not key_path.is_file():
        raise _fail(_path(key, "key_file"), f"the file {key_path} does not exist")
    return UpstreamConfig(
        name=name,
        kind=kind,
        base_url=url.rstrip("/"),
        key_file=key_path,
        api_version=_string(entry, "api_version", key),
    )


def _route(entry: Mapping[str, Any], key: str, upstreams: Mapping[str, Any]) -> Route:
    known = (DEFAULT_UPSTREAM, *upstreams)
    upstream = _string(entry, "upstream", key) or DEFAULT_UPSTREAM
    if upstream not in known:
        raise _fail(_path(key, "upstream"), f"no upstream {upstream!r} (known: {', '.join(known)})")
    fallbacks = entry.get("fallbacks", [])
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
        raise _fail(_path(key, "fallbacks"), "must be a list of upstream names")
    for index, name in enumerate(fallbacks):
        if name not in known:
            raise _fail(
                f"{_path(key, 'fallbacks')}[{index}]",
                f"no upstream {name!r} (known: {', '.join(known)})",
            )
    chain = (upstream, *fallbacks)
    if len(set(chain)) != len(chain):
        raise _fail(_path(key, "fallbacks"), "names an upstream twice (or the model's own)")
    return Route(upstream, tuple(fallbacks), _string(entry, "deployment", key))


def _model(
    model_id: str, entry: dict[str, Any], key: str, upstreams: Mapping[str, Any]
) -> OperatorModel:
    built_in = catalog.get_built_in(model_id)
    if built_in is not None:
        _known(entry, _ROUTE_KEYS, key)
        return OperatorModel(built_in, _route(entry, key, upstreams), built_in=True)
    if "like" in entry:
        _known(entry, _ALIAS_KEYS, key)
        like = _string(entry, "like", key, required=True)
        assert like is not None
        base = catalog.get_built_in(like)
        if base is None:
            raise _fail(_path(key, "like"), f"{like!r} is not a catalog model (GET /models)")
        description = _string(entry, "description", key) or f"An alias of {like}."
        spec = replace(base, id=model_id, snapshot_of=None, description=description)
        return OperatorModel(
            spec, _route(entry, key, upstreams), like=like, pricing=_price(entry, key, spec)
        )
    if "family" not in entry:
        raise _fail(key, f"needs `like` (an alias) or `family = {OPERATOR_FAMILY!r}` (a new model)")
    _known(entry, _NEW_KEYS, key)
    spec = _new_model(model_id, entry, key)
    return OperatorModel(spec, _route(entry, key, upstreams), pricing=_price(entry, key, spec))


def _new_model(model_id: str, entry: dict[str, Any], key: str) -> ModelSpec:
    """A model the catalog does not know, from its sizes, counts and options."""
    if entry["family"] != OPERATOR_FAMILY:
        raise _fail(_path(key, "family"), f"must be {OPERATOR_FAMILY!r}")
    sizes = entry.get("sizes")
    if not isinstance(sizes, list) or not sizes:
        raise _fail(_path(key, "sizes"), "must be a non-empty list of sizes like '1024x1024'")
    for index, size in enumerate(sizes):
        if not isinstance(size, str) or not (_SIZE.match(size) or size == "auto"):
            raise _fail(f"{_path(key, 'sizes')}[{index}]", "must be 'WxH' or 'auto'")
    default_size = _string(entry, "default_size", key) or sizes[0]
    if default_size not in sizes:
        raise _fail(_path(key, "default_size"), "must be one of the sizes")
    count_key = _path(key, "count")
    count = _table(entry.get("count", {}), count_key)
    _known(count, ("min", "max"), count_key)
    _integer(count, "min", count_key, 1, 1)  # the service always takes 1 and up
    max_count = _integer(count, "max", count_key, 1, 10) or 1
    per_call = _integer(entry, "per_call", key, 1, max_count) or max_count
    prompt = _integer(entry, "max_prompt_chars", key, 1, _MAX_PROMPT_CHARS)
    options = _options(entry.get("options", {}), _path(key, "options"))
    return ModelSpec(
        id=model_id,
        family=OPERATOR_FAMILY,
        description=_string(entry, "description", key) or "An operator's model.",
        sizes=tuple(sizes),
        default_size=default_size,
        max_count=max_count,
        per_call=per_call,
        max_prompt_chars=prompt or _MAX_PROMPT_CHARS,
        options=options,
        source="models_file",
        edits=_inputs(entry, "edits", key, options),
        variations=_inputs(entry, "variations", key, options),
    )


def _inputs(
    entry: Mapping[str, Any], name: str, key: str, options: Mapping[str, Choice | IntRange]
) -> InputSpec | None:
    """`edits` or `variations`: false (the default), true, or a table of what it takes.
    Edits take the model's options, variations none (OpenAI's shape); `options = [...]`
    names the ones they take instead."""
    value = entry.get(name, False)
    key = _path(key, name)
    edits = name == "edits"
    if isinstance(value, bool):
        if not value:
            return None
        value = {}
    elif not isinstance(value, dict):
        raise _fail(key, "must be true, false or a table")
    _known(value, (*_EDIT_KEYS, "options") if edits else _VARIATION_KEYS, key)
    formats = value.get("formats", list(_INPUT_FORMATS))
    if (
        not isinstance(formats, list)
        or not formats
        or not all(isinstance(f, str) and f in _INPUT_FORMATS for f in formats)
    ):
        raise _fail(_path(key, "formats"), f"must be a list of {', '.join(_INPUT_FORMATS)}")
    mask = _flag(value, "mask", key)
    if "max_mask_bytes" in value and not mask:
        raise _fail(_path(key, "max_mask_bytes"), "needs mask = true")
    taken = value.get("options", list(options) if edits else [])
    if not isinstance(taken, list) or not all(isinstance(o, str) for o in taken):
        raise _fail(_path(key, "options"), "must be a list of the model's option names")
    for index, option in enumerate(taken):
        if option not in options:
            known = ", ".join(options) or "none"
            raise _fail(
                f"{_path(key, 'options')}[{index}]", f"not an option of this model ({known})"
            )
    return InputSpec(
        max_images=_integer(value, "max_images", key, 1, _MAX_INPUT_IMAGES) or 1,
        formats=tuple(dict.fromkeys(formats)),
        max_image_bytes=_integer(value, "max_image_bytes", key, 1, _MAX_INPUT_BYTES)
        or _MAX_INPUT_BYTES,
        options={option: options[option] for option in taken},
        prompt=edits,
        mask=mask,
        max_mask_bytes=_integer(value, "max_mask_bytes", key, 1, _MAX_MASK_BYTES)
        or _MAX_MASK_BYTES,
        square=_flag(value, "square", key),
        source="models_file",
    )


def _flag(entry: Mapping[str, Any], name: str, key: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise _fail(_path(key, name), "must be true or false")
    return value


def _options(value: Any, key: str) -> dict[str, Choice | IntRange]:
    """`options = { quality = ["low", "high"], steps = { min = 1, max = 50 } }`."""
    options: dict[str, Choice | IntRange] = {}
    for name, spec in _table(value, key).items():
        where = _path(key, name)
        if not re.match(r"^[a-z][a-z0-9_]{0,39}$", name) or name in ("model", "prompt", "n"):
            raise _fail(where, "an option name is lower-case letters, digits and '_'")
        if isinstance(spec, list) and spec and all(isinstance(v, str) and v for v in spec):
            options[name] = Choice(tuple(spec))
        elif isinstance(spec, dict):
            _known(spec, ("min", "max"), where)
            low = _integer(spec, "min", where, -(2**31), 2**31)
            high = _integer(spec, "max", where, -(2**31), 2**31)
            if low is None or high is None or low > high:
                raise _fail(where, "needs integers min <= max")
            options[name] = IntRange(low, high)
        else:
            raise _fail(where, "must be a list of strings or { min, max }")
    return options


def _price(entry: Mapping[str, Any], key: str, spec: ModelSpec) -> Pricing | None:
    """`price = { per_image = 0.04 }`, per quality and/or size, and/or token rates (US
    dollars per 1M tokens, settling the real cost from the upstream's `usage`)."""
    if "price" not in entry:
        return None
    key = _path(key, "price")
    table = _table(entry["price"], key)
    _known(table, _PRICE_KEYS, key)
    source = _string(table, "source", key) or "models_file"
    per_image = None
    if "per_image" in table:
        prices, by_area = _per_image(table["per_image"], _path(key, "per_image"), spec)
        per_image = ImagePrices(prices, source, by_area=by_area)
    rates = {name: _usd(table, name, key, _MAX_USD_PER_MTOK) for name in _TOKEN_RATES}
    per_token = None
    if any(rate is not None for rate in rates.values()):
        for name in ("input_per_mtok", "output_per_mtok"):
            if rates[name] is None:
                raise _fail(_path(key, name), "is required with the other token rates")
        text_input, output = rates["input_per_mtok"], rates["output_per_mtok"]
        assert text_input is not None and output is not None
        image_input = rates["image_input_per_mtok"]
        per_token = TokenRates(
            text_input=text_input,
            image_input=text_input if image_input is None else image_input,
            image_output=output,
            text_output=output,
            cached_text_input=rates["cached_input_per_mtok"],
            cached_image_input=rates["cached_input_per_mtok"],
            source=source,
        )
    if per_image is None and per_token is None:
        raise _fail(key, "needs per_image and/or input_per_mtok with output_per_mtok")
    return Pricing(per_image, per_token, read_on=None)


def _per_image(value: Any, key: str, spec: ModelSpec) -> tuple[dict[str, dict[str, float]], bool]:
    """Per-image prices as the catalog holds them (quality -> size -> USD), from one price,
    `{ quality = price }`, `{ "WxH" = price }` or `{ quality = { "WxH" = price } }`, and
    whether a size not listed scales by area (only when prices are given by size)."""
    option = spec.options.get("quality")
    qualities = [q for q in option.values if q != "auto"] if isinstance(option, Choice) else []
    sizes = [size for size in spec.sizes if size != "auto"] or ["auto"]
    if not isinstance(value, dict):
        price = _amount(value, key, _MAX_USD_PER_IMAGE)
        flat = {quality: dict.fromkeys(sizes, price) for quality in qualities or ["standard"]}
        return flat, False
    if not value:
        raise _fail(key, "must name at least one quality or size")
    if all(_SIZE.match(name) for name in value):
        by_size = _by_size(value, key, spec)
        return {quality: dict(by_size) for quality in qualities or ["standard"]}, True
    table: dict[str, dict[str, float]] = {}
    by_area = False
    for quality, prices in value.items():
        where = _path(key, _key(quality))
        if quality not in qualities:
            known = f"its qualities: {', '.join(qualities)}" if qualities else "it takes none"
            raise _fail(where, f"is not a quality of this model ({known}; or give sizes 'WxH')")
        if isinstance(prices, dict):
            table[quality], by_area = _by_size(prices, where, spec), True
        else:
            table[quality] = dict.fromkeys(sizes, _amount(prices, where, _MAX_USD_PER_IMAGE))
    return table, by_area


def _by_size(value: dict[str, Any], key: str, spec: ModelSpec) -> dict[str, float]:
    if not value:
        raise _fail(key, "must name at least one size")
    prices = {}
    for size, price in value.items():
        where = _path(key, _key(size))
        if not (_SIZE.match(size) and spec.allows_size(size)):
            raise _fail(where, f"is not a size of this model ({', '.join(spec.sizes)})")
        prices[size] = _amount(price, where, _MAX_USD_PER_IMAGE)
    return prices


def _usd(entry: Mapping[str, Any], name: str, key: str, high: float) -> float | None:
    return None if entry.get(name) is None else _amount(entry[name], _path(key, name), high)


def _amount(value: Any, key: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, "must be an amount of US dollars, like 0.04")
    if not 0 <= value <= high:  # NaN fails this too
        raise _fail(key, f"must be an amount of US dollars from 0 to {high:g}")
    return float(value)


# --- the models file a process serves with ---------------------------------------------
# As with the tokens file: under Gunicorn the master holds it, and every worker forks with it.

_held: ModelsLoad | None = None


def hold(path: Path) -> ModelsLoad:
    """Read the models file and hold it for the processes forked from this one (Gunicorn's
    master, at start-up); the catalog includes its models. Raises ModelsFileError."""
    global _held
    path = Path(path).absolute()
    _held = ModelsLoad(path, load_models_file(path), utc_now())
    install(_held.file)
    return _held


def reload_held() -> tuple[ModelsLoad, ModelsFileError | None] | None:
    """Read the held file again (SIGHUP): what is now held and the error if the file could
    not be used (the last good one stays). None if nothing is held."""
    global _held
    if _held is None:
        return None
    try:
        _held = ModelsLoad(_held.path, load_models_file(_held.path), utc_now())
    except ModelsFileError as exc:
        _held = dataclasses.replace(_held, failed_at=utc_now(), failed_key=exc.key)
        return _held, exc
    install(_held.file)
    return _held, None


def models_for(path: Path) -> ModelsLoad:
    """The models file this process serves with: its master's for `path`, else the file as
    it is now. Raises ModelsFileError."""
    path = Path(path).absolute()
    if _held is not None and _held.path == path:
        return _held
    return ModelsLoad(path, load_models_file(path), utc_now())


def install(models_file: ModelsFile | None) -> None:
    """Make the catalog this process serves with: the built-in models and the file's."""
    entries = models_file.models.values() if models_file is not None else ()
    catalog.use_operator_models(
        [entry.spec for entry in entries if not entry.built_in],
        {entry.spec.id: entry.like for entry in entries if entry.like is not None},
    )
    pricing.use_operator_prices(
        {
            entry.spec.id: entry.pricing
            for entry in entries
            if not entry.built_in and (entry.like is None or entry.pricing is not None)
        }
    )


def origin(models_file: ModelsFile | None, model_id: str) -> dict[str, Any]:
    """Where a model comes from, as GET /models shows it: `origin` (the catalog or the models
    file), an alias's base (`like`), its `upstream` and `fallbacks`."""
    entry = models_file.models.get(model_id) if models_file is not None else None
    if entry is None:
        return {"origin": "catalog", "like": None, "upstream": DEFAULT_UPSTREAM, "fallbacks": []}
    return {
        "origin": "catalog" if entry.built_in else "models_file",
        "like": entry.like,
        "upstream": entry.route.upstream,
        "fallbacks": list(entry.route.fallbacks),
    }
