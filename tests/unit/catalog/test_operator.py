"""The models file's checks: every mistake names its key path; the catalog serves its models."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen.catalog import models as catalog
from imagegen.catalog import operator
from imagegen.catalog.pricing import pricing_for
from imagegen.settings import Settings, SettingsError
from imagegen.upstream.routing import upstream_for

KEY = "sk-upstream-secret-0123456789"


@pytest.fixture(autouse=True)
def _built_in_catalog() -> Iterator[None]:
    yield
    operator.install(None)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(KEY)
    return path


def parse(text: str, base: Path = Path()) -> operator.ModelsFile:
    return operator.parse_models_file(tomllib.loads(text), base=base)


def refusal(text: str, base: Path = Path()) -> str:
    with pytest.raises(operator.ModelsFileError) as raised:
        parse(text, base)
    return str(raised.value)


def test_an_alias_is_its_base_under_its_own_name():
    parsed = parse('[models."team-image"]\nlike = "gpt-image-2"\n')

    entry = parsed.models["team-image"]
    base = catalog.get_built_in("gpt-image-2")
    assert base is not None
    assert entry.like == "gpt-image-2" and entry.spec.id == "team-image"
    assert entry.spec.sizes == base.sizes and entry.spec.options == base.options
    assert entry.route.chain == ("default",)


def test_a_new_model_is_written_in_the_catalogs_terms():
    parsed = parse(
        '[models."grok-imagine-image"]\nfamily = "openai-compatible"\n'
        'sizes = ["1024x1024"]\ncount = { min = 1, max = 4 }\n'
        'options = { quality = ["standard", "hd"], steps = { min = 1, max = 50 } }\n'
    )

    spec = parsed.models["grok-imagine-image"].spec
    assert (spec.family, spec.sizes, spec.default_size) == (
        "openai-compatible",
        ("1024x1024",),
        "1024x1024",
    )
    assert spec.max_count == 4 and spec.per_call == 4
    assert spec.options["quality"].check("quality", "hd") == "hd"
    assert spec.options["steps"].check("steps", 50) == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[models."team-image"]\nfamily = "openai-compatible"\nsizes = ["1024x1024"]\n'
            'count = { max = "four" }\n',
            'models."team-image".count.max: must be an integer',
        ),
        ('[models."team-image"]\nlike = "gpt-image-2"\ncolour = "red"\n', "colour: unknown key"),
        ('[models."team-image"]\nlike = "gpt-image-9"\n', 'models."team-image".like:'),
        ('[models."x"]\nfamily = "diffusion"\nsizes = ["1024x1024"]\n', 'models."x".family'),
        ('[models."x"]\nfamily = "openai-compatible"\nsizes = ["big"]\n', 'models."x".sizes[0]'),
        ('[models."x"]\nsizes = ["1024x1024"]\n', 'models."x": needs `like`'),
        ('[models."x"]\nlike = "gpt-image-2"\nupstream = "xai"\n', 'models."x".upstream'),
        ('[models."gpt-image-2"]\nlike = "dall-e-2"\n', 'models."gpt-image-2".like: unknown'),
        ('[upstreams.xai]\nkind = "anthropic"\n', 'upstreams."xai".kind: must be one of'),
        ('[upstreams.xai]\nkind = "openai"\nbase_url = "ftp://x"\n', 'upstreams."xai".base_url'),
        ('[upstreams.default]\nkind = "openai"\n', 'upstreams."default": an upstream name'),
        ("[elsewhere]\n", "elsewhere: unknown key"),
    ],
)
def test_every_mistake_names_its_key_path(text, message):
    assert message in refusal(text)


NEW = '[models."x"]\nfamily = "openai-compatible"\nsizes = ["1024x1024"]\n'
QUALITIES = 'options = { quality = ["standard", "hd"] }\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NEW + "price = 0.04\n", 'models."x".price: must be a table'),
        (NEW + "price = {}\n", 'models."x".price: needs per_image'),
        (NEW + 'price = { per_image = "cheap" }\n', 'models."x".price.per_image: must be an'),
        (NEW + "price = { per_image = -0.01 }\n", "price.per_image: must be an amount of US"),
        (NEW + "price = { per_image = nan }\n", 'models."x".price.per_image: must be'),
        (NEW + "price = { per_image = inf }\n", "from 0 to 100"),
        (NEW + "price = { per_image = true }\n", 'models."x".price.per_image: must be'),
        (NEW + 'price = { per_image = 1, currency = "EUR" }\n', "price.currency: unknown key"),
        (NEW + "price = { per_image = {} }\n", "price.per_image: must name at least one"),
        (
            NEW + QUALITIES + "price = { per_image = { ultra = 0.1 } }\n",
            'models."x".price.per_image.ultra: is not a quality of this model (its qualities: '
            "standard, hd",
        ),
        (NEW + "price = { per_image = { hd = 0.1 } }\n", "per_image.hd: is not a quality"),
        (
            NEW + 'price = { per_image = { "2048x2048" = 0.1 } }\n',
            'models."x".price.per_image.2048x2048: is not a size of this model (1024x1024)',
        ),
        (
            NEW + QUALITIES + 'price = { per_image = { hd = { "1024x1024" = -1 } } }\n',
            "price.per_image.hd.1024x1024: must be an amount",
        ),
        (NEW + "price = { input_per_mtok = 5 }\n", "price.output_per_mtok: is required"),
        (NEW + "price = { output_per_mtok = 5 }\n", "price.input_per_mtok: is required"),
        (
            NEW + "price = { input_per_mtok = 5, output_per_mtok = 20000 }\n",
            "price.output_per_mtok: must be an amount of US dollars from 0 to 10000",
        ),
        (
            '[models."team"]\nlike = "gpt-image-2"\nprice = { per_image = { "100x100" = 1 } }\n',
            'models."team".price.per_image.100x100: is not a size',
        ),
        ('[models."gpt-image-2"]\nprice = { per_image = 1 }\n', 'gpt-image-2".price: unknown'),
    ],
)
def test_every_mistake_in_a_price_names_its_key_path(text, message):
    assert message in refusal(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NEW + 'edits = "yes"\n', 'models."x".edits: must be true, false or a table'),
        (NEW + "edits = { max_images = 17 }\n", 'models."x".edits.max_images: must be from 1'),
        (NEW + 'edits = { formats = ["gif"] }\n', "edits.formats: must be a list of png, jpeg"),
        (NEW + "edits = { formats = [] }\n", "edits.formats: must be a list"),
        (NEW + "edits = { mask = 1 }\n", 'models."x".edits.mask: must be true or false'),
        (NEW + "edits = { max_mask_bytes = 100 }\n", "edits.max_mask_bytes: needs mask = true"),
        (NEW + "edits = { max_image_bytes = 0 }\n", "edits.max_image_bytes: must be from 1"),
        (NEW + 'edits = { options = ["steps"] }\n', 'models."x".edits.options[0]: not an option'),
        (NEW + "edits = { colour = 1 }\n", 'models."x".edits.colour: unknown key'),
        (NEW + "variations = { mask = true }\n", 'models."x".variations.mask: unknown key'),
        (NEW + "variations = { max_images = 2 }\n", "variations.max_images: unknown key"),
        ('[models."t"]\nlike = "gpt-image-2"\nedits = true\n', 'models."t".edits: unknown key'),
    ],
)
def test_every_mistake_in_edits_or_variations_names_its_key_path(text, message):
    assert message in refusal(text)


def test_edits_and_variations_are_declared_in_the_catalogs_terms():
    parsed = parse(
        NEW + QUALITIES + "edits = true\nvariations = true\n"
        '[models."y"]\nfamily = "openai-compatible"\nsizes = ["1024x1024"]\n'
        + QUALITIES
        + 'edits = { max_images = 4, mask = true, formats = ["png"], options = [] }\n'
        'variations = { square = true, options = ["quality"] }\n'
    )

    plain, shaped = parsed.models["x"].spec, parsed.models["y"].spec
    assert plain.edits is not None and plain.variations is not None
    assert (plain.edits.max_images, plain.edits.mask, plain.edits.prompt) == (1, False, True)
    assert plain.edits.formats == ("png", "jpeg", "webp")
    assert plain.edits.max_image_bytes == 50 * 1024 * 1024
    assert list(plain.edits.options) == ["quality"] and plain.variations.options == {}
    assert (plain.variations.prompt, plain.variations.max_images) == (False, 1)
    assert shaped.edits is not None and shaped.variations is not None
    assert (shaped.edits.max_images, shaped.edits.mask, shaped.edits.formats) == (
        4,
        True,
        ("png",),
    )
    assert shaped.edits.options == {} and list(shaped.variations.options) == ["quality"]
    assert shaped.variations.square is True
    assert parse(NEW + "edits = false\n").models["x"].spec.edits is None
    assert parse(NEW).models["x"].spec.edits is None


def test_a_price_is_held_in_the_catalogs_terms_and_served_once_installed():
    parsed = parse(
        NEW + QUALITIES + "price = { per_image = { hd = 0.08 }, input_per_mtok = 2, "
        "output_per_mtok = 10, cached_input_per_mtok = 0.5 }\n"
        '[models."team"]\nlike = "gpt-image-2"\n'
        '[models."own"]\nlike = "gpt-image-2"\nprice = { per_image = 0.01 }\n'
        '[models."free"]\nfamily = "openai-compatible"\nsizes = ["auto"]\n'
    )
    operator.install(parsed)

    priced = pricing_for("x")
    assert priced is not None and priced.per_token is not None
    assert priced.estimate(quality="hd", size="1024x1024", count=2) == 0.16
    assert priced.estimate(quality=None, size="1024x1024", count=1) == 0.08
    assert priced.per_token.cached_image_input == 0.5 and priced.per_token.image_input == 2
    assert pricing_for("team") is pricing_for("gpt-image-2")
    own = pricing_for("own")
    assert own is not None and own.per_token is None
    assert own.estimate(quality="high", size="3072x2048", count=1) == 0.01  # one price for all
    assert pricing_for("free") is None
    operator.install(None)
    assert pricing_for("x") is pricing_for("gpt-image-2")  # unknown again: the fallback


def test_a_fallback_must_be_a_known_upstream_named_once(key_file):
    upstream = f'[upstreams.xai]\nkind = "openai"\nbase_url = "http://x"\nkey_file = "{key_file}"\n'

    missing = refusal(upstream + '[models."m"]\nlike = "gpt-image-2"\nfallbacks = ["xai", "z"]\n')
    twice = refusal(upstream + '[models."m"]\nlike = "gpt-image-2"\nfallbacks = ["default"]\n')

    assert missing.startswith("models.\"m\".fallbacks[1]: no upstream 'z'")
    assert twice.startswith('models."m".fallbacks: names an upstream twice')


def test_a_missing_key_file_is_named_and_a_key_is_never_shown(tmp_path, key_file):
    missing = refusal(
        '[upstreams.xai]\nkind = "openai"\nbase_url = "http://x"\nkey_file = "nope"\n', tmp_path
    )
    parsed = parse(
        f'[upstreams.xai]\nkind = "openai"\nbase_url = "http://x/v1/"\nkey_file = "{key_file}"\n'
    )

    assert missing.startswith('upstreams."xai".key_file: the file')
    assert parsed.upstreams["xai"].base_url == "http://x/v1"
    provider = upstream_for(parsed.upstreams["xai"], Settings())
    for shown in (repr(parsed), repr(parsed.upstreams), repr(provider), repr(vars(provider))):
        assert KEY not in shown


def test_azure_upstreams_and_deployments_are_read_and_built(key_file):
    parsed = parse(
        f'[upstreams.corp]\nkind = "azure"\nendpoint = "https://corp.openai.azure.com"\n'
        f'key_file = "{key_file}"\napi_version = "2025-04-01-preview"\n'
        '[models."gpt-image-2"]\ndeployment = "img-prod"\nupstream = "corp"\n'
    )

    corp = parsed.upstreams["corp"]
    assert (corp.kind, corp.base_url, corp.api_version) == (
        "azure",
        "https://corp.openai.azure.com",
        "2025-04-01-preview",
    )
    assert parsed.models["gpt-image-2"].route.deployment == "img-prod"
    assert parsed.models["gpt-image-2"].built_in
    provider = upstream_for(corp, Settings())
    assert provider.name == "azure"
    assert KEY not in repr(provider) and KEY not in repr(vars(provider))


def test_the_catalog_serves_the_files_models_until_it_is_replaced():
    operator.install(parse('[models."team-image"]\nlike = "gpt-image-2"\n'))

    assert catalog.get_model("team-image") is not None
    assert "team-image" in [model.id for model in catalog.MODELS]
    assert pricing_for("team-image") == pricing_for("gpt-image-2")
    assert catalog.origin("team-image") == ("models_file", "gpt-image-2")

    operator.install(None)
    assert catalog.get_model("team-image") is None
    assert catalog.origin("gpt-image-2") == ("catalog", None)


def test_a_bad_file_at_start_stops_the_settings_naming_the_key(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models."team-image"]\nlike = "gpt-image-2"\ncount = 3\n')

    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"IMAGE_GEN_MODELS_FILE": str(path), "IMAGE_GEN_PROVIDER": "placeholder"})

    assert str(raised.value).startswith('IMAGE_GEN_MODELS_FILE: models."team-image".count:')


def test_a_bad_reload_keeps_the_last_good_file_held(tmp_path, monkeypatch):
    monkeypatch.setattr(operator, "_held", None)
    path = tmp_path / "models.toml"
    path.write_text('[models."team-image"]\nlike = "gpt-image-2"\n')
    operator.hold(path)
    path.write_text('[models."team-image"]\nlike = "gpt-image-2"\nsize = 1\n')

    reloaded = operator.reload_held()

    assert reloaded is not None
    held, error = reloaded
    assert error is not None and error.key == 'models."team-image".size'
    assert held.failed_key == 'models."team-image".size' and held.failed_at is not None
    assert "team-image" in held.file.models and catalog.get_model("team-image") is not None
    assert operator.models_for(path) is held
