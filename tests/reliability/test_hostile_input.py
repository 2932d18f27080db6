"""Hostile input: odd ids on every <id> route, wrong JSON for every field, oversized and
deeply nested bodies, wrong content types and header floods (test client and real Gunicorn).

Every answer is a JSON 4xx from the app (Gunicorn's own plain-text 4xx only for abuse it
stops before the app: oversized request lines and header floods), nothing on disk changes,
and an invalid request never reaches the upstream.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegen.catalog.models import MODELS
from imagegen.catalog.spec import SHUT_DOWN, Choice, IntRange, ModelSpec
from tests.support.clock import run_day
from tests.support.reliability import assert_client_error, snapshot, store_problems

TODAY = run_day()  # what the `today` fixture pins every test here to
USABLE = [m for m in MODELS if m.status(TODAY) != SHUT_DOWN]
# Every model the catalog shuts down some day (legacy ones are sent upstream instead).
RETIRING = [m for m in MODELS if m.shutdown_on and not m.legacy]


def _shape(model: ModelSpec) -> tuple:
    return (
        model.family,
        model.sizes,
        model.size_rule,
        tuple((name, spec) for name, spec in model.options.items()),
        model.requires,
        model.max_count,
        model.per_call,
        model.max_prompt_chars,
    )


# One usable model per distinct set of rules: the table tests need not repeat twins.
DISTINCT = list({_shape(m): m for m in reversed(USABLE)}.values())[::-1]
ALL_FIELDS = sorted({"prompt", "count", "model", "size"} | {o for m in MODELS for o in m.options})


# --- an independent oracle: what the catalog says a field accepts ------------------------


def _size_ok(model: ModelSpec, value: str) -> bool:
    if value in model.sizes:
        return True
    rule = model.size_rule
    match = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", value)
    if rule is None or match is None:
        return False
    width, height = int(match[1]), int(match[2])
    return (
        width % rule.multiple == 0
        and height % rule.multiple == 0
        and max(width, height) <= rule.max_edge
        and max(width, height) / min(width, height) <= rule.max_ratio
        and rule.min_pixels <= width * height <= rule.max_pixels
    )


_ABSENT = object()


def field_accepts(model: ModelSpec, name: str, value: Any) -> bool:
    """Whether the catalog entry accepts `value` for field `name`.

    An absent field takes its default (prompt has none); JSON null means absent too (as
    test_null_count_means_the_default_like_every_other_field in
    tests/unit/catalog/test_catalog.py says).
    """
    if value is _ABSENT or value is None:
        return name != "prompt"
    if name == "prompt":
        return (
            isinstance(value, str)
            and bool(value.strip())
            and len(value) <= (model.max_prompt_chars)
        )
    if name == "count":
        return type(value) is int and 1 <= value <= model.max_count
    if name == "size":
        return isinstance(value, str) and _size_ok(model, value)
    spec = model.options.get(name)
    if isinstance(spec, Choice):
        return isinstance(value, str) and value in spec.values
    if isinstance(spec, IntRange):
        return type(value) is int and spec.low <= value <= spec.high
    return False  # a field this model does not take


def body_accepted(model: ModelSpec, body: dict[str, Any]) -> bool:
    """Whether a whole body (its model already chosen) is valid per the catalog."""
    if model.status(TODAY) == SHUT_DOWN:
        return False
    allowed = {"prompt", "count", "model", "size", *model.options}
    if any(key not in allowed for key in body):
        return False
    for name in allowed - {"model"}:
        if not field_accepts(model, name, body.get(name, _ABSENT)):
            return False
    for rule in model.requires:
        value = body.get(rule.option)
        if value is None or (rule.value is not None and value != rule.value):
            continue
        if body.get(rule.other, model.option_defaults.get(rule.other)) not in rule.allowed:
            return False
    return True


def base_body(model: ModelSpec, field: str) -> dict[str, Any]:
    """A valid body for `model` into which `field` can be put."""
    body: dict[str, Any] = {"prompt": "a red kite over dunes", "model": model.id}
    for rule in model.requires:  # e.g. output_compression needs jpeg, frame_count a GIF
        if rule.option == field and rule.value is None:
            body[rule.other] = rule.allowed[0]
    return body


def upstream_calls(model: ModelSpec, count: int) -> int:
    return math.ceil(count / model.per_call)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def stored(placeholder_client, images_dir):
    """Two jobs of two images each, one image deleted: real ids to abuse."""
    jobs = []
    for prompt in ("first job", "second job"):
        response = placeholder_client.post(
            "/generate", json={"prompt": prompt, "count": 2, "model": "dall-e-2", "size": "256x256"}
        )
        assert response.status_code == 200
        jobs.append(response.get_json())
    deleted = jobs[1]["images"][1]["id"]
    assert placeholder_client.delete(f"/images/{deleted}").status_code == 200
    return {"client": placeholder_client, "jobs": jobs, "deleted": deleted, "dir": images_dir}


HOSTILE_SUFFIXES = [
    "..",
    "../..",
    "../metadata.json",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "..%5c..%5cetc%5cpasswd",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "x%00y",
    "%00",
    "%0A",
    "%20",
    urllib.parse.quote("\u202e\u00e9t\u00e9"),
    urllib.parse.quote("\U0001f5bc\ufe0f"),
    "%FF%FE",
    "a" * 10_000,
    ".index",
    ".index%2F..",
    ".tmp-probe",
    ".lock",
    "metadata.json",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "{}",
    "*",
    "%25",
    "%3F%23",
]


def odd_ids(jobs: list[dict[str, Any]], deleted: str) -> list[str]:
    """Suffixes after /images/ that must never name an image (already URL-encoded): the
    hostile ones plus near misses of real ids, job ids and a deleted image's id."""
    image = jobs[0]["images"][0]["id"]
    job = jobs[0]["job_id"]
    # Every character in its fullwidth form (NFKC folds it back to the id): replacing only
    # some letters left an id without them unchanged (a 200, about 1 run in 70).
    fullwidth = image.translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})
    return [
        *HOSTILE_SUFFIXES,
        f"../{job}/metadata.json",
        f"..%2F{job}%2Fmetadata.json",
        f"./{image}",
        f"%2e/{image}",
        f"{image}/",
        f"{image}/..",
        f"{image}%2F..",
        f"{job}/{image}",
        f"{image}%00",
        f"{image}%00.png",
        f"{image}%0A",
        f"{image}%0D%0AX-Injected:%201",
        f"%20{image}",
        f"{image}%20",
        f"{image}.png",
        f"001-{image}.png",
        urllib.parse.quote(fullwidth),
        urllib.parse.quote("\u202e" + image),
        image[:8],
        image[:-1],
        image + "0",
        image.replace("-", ""),
        "{" + image + "}",
        "urn:uuid:" + image,
        job,
        jobs[1]["job_id"],
        job.upper(),
        deleted,
        deleted.upper(),
        f".index/{image}",
        ".index%2F" + image,
        image[:-1] + "g",
    ]


ODD_ID_COUNT = len(odd_ids([{"job_id": "j", "images": [{"id": "i"}]}] * 2, "d"))


def _image_bytes(client, jobs: list[dict[str, Any]], deleted: str) -> dict[str, bytes]:
    return {
        image["id"]: client.get(image["url"]).data
        for job in jobs
        for image in job["images"]
        if image["id"] != deleted
    }


# --- odd ids on every <id> route ---------------------------------------------------------


@pytest.mark.parametrize("which", range(ODD_ID_COUNT))
def test_odd_image_id_is_a_json_404_on_get_head_and_delete_and_changes_nothing(stored, which):
    client, jobs, deleted, root = stored["client"], stored["jobs"], stored["deleted"], stored["dir"]
    suffix = odd_ids(jobs, deleted)[which]
    before = snapshot(root)
    images_before = _image_bytes(client, jobs, deleted)

    for method in ("GET", "HEAD", "DELETE"):
        response = client.open(f"/images/{suffix}", method=method)

        where = (method, suffix[:80], response.status_code)
        assert response.status_code == 404, where
        assert response.mimetype == "application/json", where
        if method != "HEAD":
            assert response.get_json()["code"] in ("IMAGE_NOT_FOUND", "NOT_FOUND"), where
            assert response.get_json()["status"] == "failed"
            assert len(response.get_data()) < 4096, ("the error echoes unbounded input", where)
    assert snapshot(root) == before
    assert _image_bytes(client, jobs, deleted) == images_before


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH"])
def test_other_methods_on_an_image_are_json_405_and_change_nothing(stored, method):
    client, root = stored["client"], stored["dir"]
    image = stored["jobs"][0]["images"][0]
    before = snapshot(root)

    response = client.open(image["url"], method=method, json={"prompt": "x"})

    assert_client_error(response, 405, "METHOD_NOT_ALLOWED")
    assert snapshot(root) == before


def variable_routes(app) -> list[tuple[str, str]]:
    """(URL template with one {} for the variable, method) for every route taking an id."""
    routes = []
    for rule in app.url_map.iter_rules():
        if len(rule.arguments) != 1:
            continue
        template = re.sub(r"<[^>]+>", "{}", rule.rule)
        routes += [(template, m) for m in sorted(rule.methods - {"OPTIONS"})]
    return sorted(set(routes))


@pytest.mark.parametrize("which", range(len(HOSTILE_SUFFIXES)))
def test_every_route_taking_an_id_answers_hostile_ids_with_a_json_4xx(stored, which):
    """Routes are discovered from the URL map, so routes added later are covered too."""
    client, jobs, deleted, root = stored["client"], stored["jobs"], stored["deleted"], stored["dir"]
    suffix = HOSTILE_SUFFIXES[which]
    routes = variable_routes(client.application)
    assert ("/images/{}", "DELETE") in routes
    before = snapshot(root)
    images_before = _image_bytes(client, jobs, deleted)

    for template, method in routes:
        response = client.open(template.format(suffix), method=method, json={})
        where = (template, method, suffix[:40], response.status_code)
        assert 400 <= response.status_code < 500, where
        assert response.mimetype == "application/json", where
        if method != "HEAD":
            assert len(response.get_data()) < 4096, ("the error echoes unbounded input", where)

    assert snapshot(root) == before
    assert _image_bytes(client, jobs, deleted) == images_before


def test_another_jobs_image_id_names_only_that_image(stored):
    """Ids are exact: deleting job A's image leaves job B's images and metadata alone."""
    client, jobs, root = stored["client"], stored["jobs"], stored["dir"]
    target = jobs[0]["images"][1]
    other = snapshot(root / jobs[1]["job_id"])

    assert client.delete(target["url"]).status_code == 200

    assert snapshot(root / jobs[1]["job_id"]) == other
    assert client.get(jobs[0]["images"][0]["url"]).status_code == 200
    assert store_problems(root) == []


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_double_slash_in_an_image_path_is_a_json_error_not_a_redirect(stored, method):
    client, root = stored["client"], stored["dir"]
    image = stored["jobs"][0]["images"][0]
    before = snapshot(root)

    response = client.open(
        f"/images//{image['id']}", method=method, headers={"Host": "attacker.example"}
    )

    assert snapshot(root) == before
    assert response.mimetype == "application/json", (response.status_code, response.location)
    assert 400 <= response.status_code < 500


# --- wrong JSON for every field of POST /generate ----------------------------------------

WRONG_VALUES: list[Any] = [
    True,
    False,
    0,
    -1,
    1,
    2,
    11,
    101,
    2**63,
    -(2**63),
    10**40,
    1.0,
    1.5,
    -0.0,
    1e308,
    "",
    " ",
    "\n",
    "\t\u00a0",
    "1",
    "50",
    "auto",
    "AUTO",
    "png",
    "PNG",
    "png ",
    "jpeg",
    "hd",
    "standard",
    "vivid",
    "high",
    "xhigh",
    "transparent",
    "low",
    "1024x1024",
    "1024X1024",
    " 1024x1024",
    "1024x1024 ",
    "1024*1024",
    "0x0",
    "-1024x1024",
    "01024x1024",
    "1024x1024x1024",
    "256x256",
    "1792x1024",
    "2048x2048",
    "4096x4096",
    "null",
    "[]",
    "gpt-image-2",
    "x" * 5000,
    [],
    [1],
    ["1024x1024"],
    ["png"],
    {},
    {"value": 1},
    {"$gt": ""},
    [[[[[[]]]]]],
]


@pytest.mark.parametrize(
    "model,field",
    [(m, f) for m in DISTINCT for f in ("prompt", "count", "size", *m.options)],
    ids=lambda v: v.id if isinstance(v, ModelSpec) else v,
)
def test_every_field_accepts_exactly_what_the_catalog_says(
    client, fake_openai, images_dir, model, field
):
    """Each wrong value is a 400 naming the field, with no upstream call and no disk change;
    each right one succeeds."""
    failures = []
    for value in WRONG_VALUES:
        body = {**base_body(model, field), field: value}
        fake_openai.reset()
        before = snapshot(images_dir)
        response = client.post("/generate", json=body)
        if field_accepts(model, field, value):
            expected = upstream_calls(model, body.get("count") or 1)
            if response.status_code != 200 or len(fake_openai.image_requests) != expected:
                failures.append((value, response.status_code, response.get_json()))
            continue
        payload = response.get_json() or {}
        if (
            response.status_code != 400
            or payload.get("code") != "VALIDATION_ERROR"
            or payload.get("field") != field
            or fake_openai.requests
            or snapshot(images_dir) != before
        ):
            failures.append((str(value)[:40], response.status_code, payload))
    assert failures == []
    assert store_problems(images_dir) == []


@pytest.mark.parametrize(
    "value",
    [v for v in WRONG_VALUES if v not in [m.id for m in USABLE]],
    ids=lambda v: repr(v)[:24],
)
def test_wrong_model_values_are_refused_without_upstream(client, fake_openai, images_dir, value):
    response = client.post("/generate", json={"prompt": "x", "model": value})

    payload = assert_client_error(response, 400, "VALIDATION_ERROR")
    assert payload["field"] == "model"
    assert fake_openai.requests == []
    assert snapshot(images_dir) == {".index": ("dir", "")}


@pytest.mark.parametrize("model", RETIRING, ids=lambda m: m.id)
def test_shut_down_models_are_refused_with_their_replacement_whatever_else_is_sent(
    client, fake_openai, images_dir, model, today
):
    today.set(model.shutdown_on)
    for extra in ({}, {"count": 99}, {"size": []}, {"bogus": 1}):
        response = client.post("/generate", json={"prompt": "x", "model": model.id, **extra})

        payload = assert_client_error(response, 400, "VALIDATION_ERROR")
        assert payload["field"] == "model"
        assert payload["replacement"] == model.replacement
    assert fake_openai.requests == []


@pytest.mark.parametrize("model", USABLE, ids=lambda m: m.id)
def test_fields_of_other_models_are_refused_by_name(client, fake_openai, model):
    foreign = sorted(set(ALL_FIELDS) - {"prompt", "count", "model", "size", *model.options})
    for name in [*foreign, "response_format", "n", "stream", "__proto__", "", "PROMPT"]:
        response = client.post("/generate", json={"prompt": "x", "model": model.id, name: "x"})

        payload = assert_client_error(response, 400, "VALIDATION_ERROR")
        assert payload["field"] == name
    assert fake_openai.requests == []


# --- bodies: size, nesting, prompts, encodings, content types ----------------------------


@pytest.mark.parametrize("depth", [100, 900, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("field", ["prompt", "count", "model", "size", "quality", "bogus"])
@pytest.mark.parametrize("shape", ["[", '{"a":'])
def test_deeply_nested_field_values_are_a_json_400(client, fake_openai, depth, field, shape):
    nested = "[" * depth + "]" * depth if shape == "[" else shape * depth + "1" + "}" * depth
    body = f'{{"prompt": "x", "{field}": {nested}}}'

    response = client.post("/generate", data=body, content_type="application/json")

    assert_client_error(response, 400, "VALIDATION_ERROR")
    assert fake_openai.requests == []


@pytest.mark.parametrize(
    "body",
    [
        "{" + ",".join(f'"k{i}": {i}' for i in range(60_000)) + "}",
        '{"prompt": "x", "count": ' + "9" * 5_000 + "}",
        '{"prompt": "x", "count": 1e999999}',
        '{"prompt": "x", "count": NaN}',
        '{"prompt": "x", "count": -Infinity}',
        '{"prompt": "x", "prompt": 5}',
        '{"prompt": "x"} trailing',
        '{"prompt": "x"',
        "",
        "\ufeff{}",
        '{"prompt": "\\u0000"}' + " " * 10,
        "[" + ",".join(["{}"] * 50_000) + "]",
    ],
    ids=lambda b: b[:30],
)
def test_malformed_or_pathological_bodies_are_a_json_400(client, fake_openai, images_dir, body):
    response = client.post("/generate", data=body, content_type="application/json")

    assert response.status_code in (200, 400), response.status_code
    if response.status_code == 400:
        assert_client_error(response, 400, "VALIDATION_ERROR")
        assert fake_openai.requests == []
        assert snapshot(images_dir) == {".index": ("dir", "")}


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 4 * 1024 * 1024, 32 * 1024 * 1024])
def test_bodies_over_the_limit_are_413_before_anything_is_parsed(client, fake_openai, size):
    body = b'{"prompt": "' + b"x" * size + b'"}'

    response = client.post("/generate", data=body, content_type="application/json")

    assert_client_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert fake_openai.requests == []


@pytest.mark.parametrize("model", USABLE, ids=lambda m: m.id)
def test_prompt_length_limit_is_exact_per_model(client, fake_openai, images_dir, model):
    at_limit = client.post(
        "/generate", json={"prompt": "p" * model.max_prompt_chars, "model": model.id}
    )
    over = client.post(
        "/generate", json={"prompt": "p" * (model.max_prompt_chars + 1), "model": model.id}
    )

    assert at_limit.status_code == 200, at_limit.get_json()
    assert fake_openai.image_requests[0].json["prompt"] == "p" * model.max_prompt_chars
    payload = assert_client_error(over, 400, "VALIDATION_ERROR")
    assert payload["field"] == "prompt"
    assert len(fake_openai.image_requests) == 1
    assert store_problems(images_dir) == []


def test_prompt_of_multibyte_characters_counts_characters_and_round_trips(
    client, fake_openai, images_dir
):
    prompt = "🦉é\u0301漢" * 8_000  # 32,000 characters, ~100 kB of UTF-8

    response = client.post("/generate", json={"prompt": prompt})

    assert response.status_code == 200
    assert fake_openai.image_requests[0].json["prompt"] == prompt
    job = json.loads((images_dir / response.get_json()["job_id"] / "metadata.json").read_text())
    assert job["request"]["prompt"] == prompt


@pytest.mark.parametrize("provider", ["openai", "placeholder"])
def test_prompt_with_a_lone_surrogate_is_a_400_without_upstream_or_leftovers(
    settings, make_app, fake_openai, images_dir, provider
):
    client = make_app(settings, provider=provider).test_client()

    response = client.post(
        "/generate", data='{"prompt": "a \\ud800 b"}', content_type="application/json"
    )

    assert store_problems(images_dir) == []
    assert fake_openai.requests == []
    assert_client_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("field", ["model", "size", "quality", "output_format", "\ud800"])
def test_lone_surrogates_in_other_fields_are_a_json_400(client, fake_openai, field):
    value = "\\ud800" if field != "\ud800" else "x"
    name = "\\ud800" if field == "\ud800" else field
    body = f'{{"prompt": "x", "{name}": "{value}"}}'

    response = client.post("/generate", data=body, content_type="application/json")

    assert_client_error(response, 400, "VALIDATION_ERROR")
    assert fake_openai.requests == []


@pytest.mark.parametrize("size", ["2048x1152\n", "1024x1024\n"])
def test_size_with_a_trailing_newline_never_reaches_the_upstream(client, fake_openai, size):
    response = client.post("/generate", json={"prompt": "x", "size": size})

    assert fake_openai.requests == []
    assert_client_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "content_type,body,status,code",
    [
        (None, b'{"prompt": "x"}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("text/plain", b'{"prompt": "x"}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("text/json", b'{"prompt": "x"}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/xml", b"<prompt>x</prompt>", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/x-www-form-urlencoded", b"prompt=x", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("multipart/form-data; boundary=b", b"--b--", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/octet-stream", b"\x00\x01", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/jsonx", b'{"prompt": "x"}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("image/png", b"\x89PNG\r\n\x1a\n", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("", b'{"prompt": "x"}', 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/json", b"", 400, "VALIDATION_ERROR"),
        ("application/json", b'{"prompt": "\xff\xfe"}', 400, "VALIDATION_ERROR"),
        ("application/json; charset=latin-1", b'{"prompt": "caf\xe9"}', 400, "VALIDATION_ERROR"),
        ("application/json", b"\x00" * 1000, 400, "VALIDATION_ERROR"),
        ("application/json", b"prompt=x", 400, "VALIDATION_ERROR"),
    ],
)
def test_wrong_content_types_and_encodings_are_json_4xx(
    client, fake_openai, images_dir, content_type, body, status, code
):
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = client.post("/generate", data=body, headers=headers)

    assert_client_error(response, status, code)
    assert fake_openai.requests == []
    assert snapshot(images_dir) == {".index": ("dir", "")}


# --- headers through the test client -----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(f"X-Flood-{i}", "v" * 50) for i in range(5_000)],
        [("X-Big", "b" * 1_000_000)],
        [("X-Request-ID", "r" * 100_000)],
        [("X-Request-ID", "../../etc/passwd")],
        [("X-Request-ID", "\u00e9\u202e")],
        [("Content-Type", "application/json; " + "p=1; " * 20_000)],
        [("Content-Length", "not-a-number")],
        [("Accept", "*/*;q=" + "0" * 10_000)],
        [("If-None-Match", '"' + "x" * 100_000 + '"')],
        [("Range", "bytes=" + ",".join(f"{i}-{i}" for i in range(5_000)))],
        [("Cookie", "a=" + "c" * 100_000)],
    ],
    ids=[
        "5000-headers",
        "1MB-value",
        "huge-request-id",
        "path-request-id",
        "unicode-request-id",
        "huge-content-type",
        "bad-content-length",
        "huge-accept",
        "huge-if-none-match",
        "5000-ranges",
        "huge-cookie",
    ],
)
def test_header_abuse_never_makes_the_app_fail(stored, headers):
    client, root = stored["client"], stored["dir"]
    image = stored["jobs"][0]["images"][0]
    before = snapshot(root)

    answers = [
        client.get("/health", headers=headers),
        client.get(image["url"], headers=headers),
        client.post("/generate", data=b"{}", headers=[*headers, ("Content-Type", "text/plain")]),
        client.delete("/images/not-an-id", headers=headers),
    ]

    for response in answers:
        assert response.status_code < 500, response.get_data()[:200]
        if response.status_code >= 400:
            assert response.mimetype == "application/json"
        request_id = response.headers["X-Request-ID"]
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", request_id)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "path,headers",
    [
        ("/images/x%0Arequest_id=forged%20status=200", {}),
        ("/images/x%0D%0A2026-01-01%20INFO%20forged", {}),
        ("/health", {"X-Request-ID": "ok status=500 forged=1"}),
        ("/images/%1B%5B31mred%1B%5B0m", {}),
    ],
)
def test_hostile_paths_and_request_ids_cannot_forge_log_lines(
    placeholder_client, service_logs, path, headers
):
    response = placeholder_client.get(path, headers=headers)

    assert response.status_code in (200, 404)
    lines = [line for line in service_logs.lines if "imagegen.request" in line]
    assert lines, service_logs.lines
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
        keys = [token.split("=")[0] for token in line.split(" ") if "=" in token]
        assert len(keys) == len(set(keys)) and "forged" not in keys, line


# --- property-based: arbitrary JSON for each field ---------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=10,
)


def _near_misses(model: ModelSpec, field: str) -> st.SearchStrategy[Any]:
    """Values close to valid ones: boundaries, case and whitespace variants, wrong types."""
    if field in ("count", "output_compression"):
        return st.integers(-3, 110) | st.integers(-3, 110).map(float) | st.integers(0, 11).map(str)
    if field == "size":
        edges = st.integers(-16, 4200)
        sizes = st.builds(lambda w, h, sep: f"{w}{sep}{h}", edges, edges, st.sampled_from("xX*×"))
        return sizes | st.sampled_from(model.sizes).map(lambda s: f" {s}")
    if field == "prompt":
        return _TEXT.map(lambda s: s[:5].strip() + " " * 3) | st.just(
            "y" * (model.max_prompt_chars + 1)
        )
    spec = model.options.get(field)
    if isinstance(spec, Choice):
        base = st.sampled_from(spec.values)
        return base | base.map(str.upper) | base.map(lambda v: v + " ") | base.map(lambda v: [v])
    return JSON_VALUES


def _field_strategy(model: ModelSpec, field: str) -> st.SearchStrategy[Any]:
    values = JSON_VALUES | _near_misses(model, field)
    if field == "size":
        values = values | st.sampled_from(model.sizes).map(lambda v: v + "\n")
    return values


@st.composite
def model_field_value(draw) -> tuple[ModelSpec, str, Any]:
    model = draw(st.sampled_from(USABLE))
    field = draw(st.sampled_from(["prompt", "count", "size", *model.options]))
    return model, field, draw(_field_strategy(model, field))


def holds_non_finite(value: Any) -> bool:
    """Whether `value` holds NaN or an infinity anywhere: no JSON document can (strict
    parsers refuse Python's `NaN`/`Infinity`), so the service refuses the body as a whole."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(holds_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_non_finite(v) for v in value)
    return False


def post_raw_json(client, path: str, body: Any):
    """POST `body` as Python's json writes it, NaN and Infinity included (as some clients
    send them): the test client's own encoder is the service's, which refuses them."""
    return client.post(path, data=json.dumps(body), content_type="application/json")


def _check_answer(client, fake, root, model: ModelSpec, body: dict[str, Any], field=None):
    fake.reset()
    before = snapshot(root)
    response = post_raw_json(client, "/generate", body)
    assert response.status_code < 500, (body, response.get_json())
    if holds_non_finite(body):
        payload = assert_client_error(response, 400, "VALIDATION_ERROR")
        assert "not valid JSON" in payload["error"], payload
        assert fake.requests == [], body
    elif body_accepted(model, body):
        assert response.status_code == 200, (body, response.get_json())
        assert len(fake.image_requests) == upstream_calls(model, body.get("count") or 1)
    else:
        payload = assert_client_error(response, 400, "VALIDATION_ERROR")
        if field is not None:
            assert payload.get("field") == field, (body, payload)
        assert fake.requests == [], body
        assert snapshot(root) == before


_PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_PROPERTY
@given(case=model_field_value())
def test_property_any_json_value_for_a_field_is_accepted_iff_the_catalog_allows_it(
    client, fake_openai, images_dir, case
):
    model, field, value = case
    body = {**base_body(model, field), field: value}
    _check_answer(client, fake_openai, images_dir, model, body, field)


@_PROPERTY
@given(
    model_value=JSON_VALUES.filter(lambda v: v is not None)
    | st.sampled_from([m.id for m in MODELS]).map(str.upper)
)
def test_property_any_model_value_that_is_not_a_usable_id_is_refused(
    client, fake_openai, images_dir, model_value
):
    fake_openai.reset()
    response = post_raw_json(client, "/generate", {"prompt": "x", "model": model_value})
    payload = assert_client_error(response, 400, "VALIDATION_ERROR")
    assert payload.get("field") == (None if holds_non_finite(model_value) else "model"), payload
    assert fake_openai.requests == []


_FIELD_NAMES = st.sampled_from([*ALL_FIELDS, "response_format", "n"]) | _TEXT


@_PROPERTY
@given(
    model=st.sampled_from(USABLE),
    body=st.dictionaries(_FIELD_NAMES, JSON_VALUES, max_size=6),
)
def test_property_any_json_object_never_fails_the_service(
    client, fake_openai, images_dir, model, body
):
    body = {k: v for k, v in body.items() if k != "model"}
    _check_answer(client, fake_openai, images_dir, model, {**body, "model": model.id})
    assert store_problems(images_dir) == []


@_PROPERTY
@given(
    model=st.sampled_from(USABLE),
    body=st.dictionaries(
        _FIELD_NAMES | st.sampled_from(["response_format", "user", "stream"]),
        JSON_VALUES,
        max_size=6,
    ),
)
def test_property_the_openai_compatible_route_never_fails_and_refuses_before_the_upstream(
    client, fake_openai, images_dir, model, body
):
    """POST /v1/images/generations has OpenAI's field names and error shape, and the same
    promises: no 5xx, and a refused request reaches neither the upstream nor the disk."""
    if "/v1/images/generations" not in {r.rule for r in client.application.url_map.iter_rules()}:
        pytest.skip("no OpenAI-compatible route in this build")
    fake_openai.reset()
    before = snapshot(images_dir)
    body = {**{k: v for k, v in body.items() if k != "model"}, "model": model.id}

    response = post_raw_json(client, "/v1/images/generations", body)

    assert response.status_code < 500, (body, response.get_json())
    if response.status_code == 200:
        assert fake_openai.image_requests
        assert len(response.get_json()["data"]) == (body.get("n") or 1)
    else:
        assert response.status_code == 400, (body, response.get_json())
        assert isinstance(response.get_json()["error"]["message"], str)
        assert fake_openai.requests == [], body
        assert snapshot(images_dir) == before
    assert store_problems(images_dir) == []


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_property_any_json_that_is_not_an_object_is_refused(placeholder_client, body):
    response = placeholder_client.post(
        "/generate", data=json.dumps(body), content_type="application/json"
    )

    assert_client_error(response, 400, "VALIDATION_ERROR")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image_id=st.text(max_size=80))
def test_property_any_id_string_that_is_not_a_stored_image_is_a_json_404(
    placeholder_client, image_id
):
    path = "/images/" + urllib.parse.quote(image_id, safe="")

    for method in ("GET", "DELETE"):
        response = placeholder_client.open(path, method=method)

        assert response.status_code in (404, 405), response.status_code
        assert response.mimetype == "application/json"


# --- real Gunicorn over a raw socket -----------------------------------------------------


def _gunicorn_or_app_4xx(answer) -> str:
    """Who refused: 'app' (its answers carry X-Request-ID) or 'gunicorn' (before the app).
    Either way the answer is the JSON error shape."""
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])
    assert answer.content_type.startswith("application/json"), answer.body[:200]
    if answer.body:  # a HEAD answer has none
        body = json.loads(answer.body)
        assert body["status"] == "failed" and body["code"], body
    return "app" if "x-request-id" in answer.headers else "gunicorn"


def _request(line: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + body


_HOST = [("Host", "127.0.0.1"), ("Connection", "close")]

RAW_CASES: dict[str, tuple[Callable[[str], bytes], tuple[int, ...], str]] = {
    # name: (build(image_id) -> request bytes, accepted statuses, who answers)
    "200-headers": (
        lambda _: _request("GET /health HTTP/1.1", _HOST + [(f"X-H{i}", "v") for i in range(200)]),
        (400, 431),
        "gunicorn",
    ),
    "10000-headers": (
        lambda _: _request(
            "GET /health HTTP/1.1", _HOST + [(f"X-H{i}", "v") for i in range(10_000)]
        ),
        (400, 431),
        "gunicorn",
    ),
    "100kB-header-value": (
        lambda _: _request("GET /health HTTP/1.1", [*_HOST, ("X-Big", "b" * 100_000)]),
        (400, 431),
        "gunicorn",
    ),
    "1MB-header-value-on-generate": (
        lambda _: _request(
            "POST /generate HTTP/1.1",
            [*_HOST, ("Content-Type", "application/json"), ("X-Big", "b" * 1_000_000)],
        ),
        (400, 431),
        "gunicorn",
    ),
    "10k-char-id": (
        lambda _: _request("GET /images/" + "a" * 10_000 + " HTTP/1.1", _HOST),
        (400, 414),
        "gunicorn",
    ),
    "10k-char-id-delete": (
        lambda _: _request("DELETE /images/" + "a" * 10_000 + " HTTP/1.1", _HOST),
        (400, 414),
        "gunicorn",
    ),
    "nul-in-request-line": (
        lambda i: _request(f"GET /images/{i}\x00 HTTP/1.1", _HOST),
        (400,),
        "gunicorn",
    ),
    "raw-dotdot": (
        lambda _: _request("GET /images/../../../etc/passwd HTTP/1.1", _HOST),
        (404,),
        "app",
    ),
    "raw-dotdot-delete": (
        lambda i: _request(f"DELETE /images/../.index/{i} HTTP/1.1", _HOST),
        (404,),
        "app",
    ),
    "raw-encoded-slash": (
        lambda _: _request("GET /images/..%2F..%2Fetc%2Fpasswd HTTP/1.1", _HOST),
        (404,),
        "app",
    ),
    "raw-double-encoded": (
        lambda _: _request("DELETE /images/..%252F..%252Fetc HTTP/1.1", _HOST),
        (404,),
        "app",
    ),
    "raw-utf8-bytes-in-request-line": (
        lambda _: _request("GET /images/\u00c3\u00a9t\u00c3\u00a9 HTTP/1.1", _HOST),
        (400,),
        "gunicorn",
    ),
    "percent-encoded-utf8-id": (
        lambda _: _request("DELETE /images/%C3%A9t%C3%A9%E2%80%AE HTTP/1.1", _HOST),
        (404,),
        "app",
    ),
    "raw-head-odd-id": (
        lambda _: _request("HEAD /images/%00 HTTP/1.1", _HOST),
        (404,),
        "app",
    ),
    "declared-10GB-body": (
        lambda _: _request(
            "POST /generate HTTP/1.1",
            [*_HOST, ("Content-Type", "application/json"), ("Content-Length", "10000000000")],
        ),
        (413,),
        "app",
    ),
    "negative-content-length": (
        lambda _: _request(
            "POST /generate HTTP/1.1",
            [*_HOST, ("Content-Type", "application/json"), ("Content-Length", "-1")],
        ),
        (400,),
        "gunicorn",
    ),
    "two-content-lengths": (
        lambda _: _request(
            "POST /generate HTTP/1.1",
            [
                *_HOST,
                ("Content-Type", "application/json"),
                ("Content-Length", "2"),
                ("Content-Length", "20"),
            ],
            b"{}",
        ),
        (400,),
        "gunicorn",
    ),
    "cl-and-te-smuggling": (
        lambda _: _request(
            "POST /generate HTTP/1.1",
            [
                *_HOST,
                ("Content-Type", "application/json"),
                ("Content-Length", "4"),
                ("Transfer-Encoding", "chunked"),
            ],
            b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (400,),
        "gunicorn",
    ),
    "header-without-colon": (
        lambda _: _request("GET /health HTTP/1.1", [*_HOST, ("X-Broken\r\nno colon here", "")]),
        (400,),
        "gunicorn",
    ),
    "garbage-method": (
        lambda _: _request("G\x01T /health HTTP/1.1", _HOST),
        (400,),
        "gunicorn",
    ),
}


@pytest.mark.slow
def test_raw_http_abuse_against_gunicorn_is_4xx_and_never_reaches_a_5xx(
    start_gunicorn, fake_openai
):
    """Header floods and oversized request lines are refused by Gunicorn itself (400/414/431,
    in the JSON error shape too); the rest reaches the app. Workers survive it all."""
    service = start_gunicorn(workers=1, threads=4, env={"IMAGE_GEN_PROVIDER": "placeholder"})
    created = service.request("POST", "/generate", {"prompt": "keep me", "count": 2}).json()
    image_id = created["images"][0]["id"]
    before = snapshot(service.images)
    workers = service.worker_pids()

    seen = {}
    for name, (build, statuses, who) in RAW_CASES.items():
        answer = service.raw(build(image_id))
        assert answer.status in statuses, (name, answer.status, answer.body[:200])
        seen[name] = _gunicorn_or_app_4xx(answer)
        assert seen[name] == who, (name, answer.content_type, answer.body[:200])

    assert service.request("GET", f"/images/{image_id}").status == 200
    assert service.worker_pids() == workers, "a worker died"
    assert snapshot(service.images) == before
    assert fake_openai.requests == []
    log = service.log_text()
    assert "Traceback" not in log
    assert "status=5" not in log


def _chunked(body: bytes, size: int = 0x10000) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_413_through_gunicorn(start_gunicorn):
    service = start_gunicorn(workers=1, threads=4, env={"IMAGE_GEN_PROVIDER": "placeholder"})
    before = snapshot(service.images)
    body = b'{"prompt": "over the limit"}' + b" " * (2 * 1024 * 1024)
    headers = [*_HOST, ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]

    answer = service.raw(_request("POST /generate HTTP/1.1", headers, _chunked(body)))

    assert snapshot(service.images) == before, "a body over the limit was stored as a job"
    assert answer.status == 413, answer.body[:200]
    assert json.loads(answer.body)["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.slow
def test_a_chunked_body_within_the_limit_is_read_whole_through_gunicorn(start_gunicorn):
    service = start_gunicorn(workers=1, threads=4, env={"IMAGE_GEN_PROVIDER": "placeholder"})
    body = json.dumps({"prompt": "p" * 30_000, "count": 2}).encode()
    headers = [*_HOST, ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]

    answer = service.raw(_request("POST /generate HTTP/1.1", headers, _chunked(body, 999)))

    assert answer.status == 200, answer.body[:200]
    assert len(answer.json()["images"]) == 2
    assert answer.json()["images"][0]["prompt"] == "p" * 30_000


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GET", "DELETE", "HEAD"])
def test_odd_ids_through_gunicorn_are_json_404(start_gunicorn, method):
    service = start_gunicorn(workers=1, threads=4, env={"IMAGE_GEN_PROVIDER": "placeholder"})
    jobs = [service.request("POST", "/generate", {"prompt": p, "count": 2}).json() for p in "ab"]
    deleted = jobs[1]["images"][1]["id"]
    assert service.request("DELETE", f"/images/{deleted}").status == 200
    before = snapshot(service.images)

    for suffix in odd_ids(jobs, deleted):
        if len(suffix) > 4000:
            continue  # Gunicorn's request-line limit: covered by the raw test above
        answer = service.raw(_request(f"{method} /images/{suffix} HTTP/1.1", _HOST))
        assert answer.status == 404, (suffix[:60], answer.status, answer.body[:200])
        assert answer.content_type.startswith("application/json"), suffix[:60]

    assert snapshot(service.images) == before
    assert "Traceback" not in service.log_text()
