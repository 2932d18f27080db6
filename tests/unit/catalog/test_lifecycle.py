"""The model lifecycle on any day: statuses, model lists, refusals, warnings and the default
model's start-up check follow the catalog's dates.

Each check runs on the run's pinned day, a year either side of it, and the day before and
the day of every `deprecated_on` and `shutdown_on` in the catalog. The expected status comes
from the dates alone, not from `ModelSpec.status`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal

import pytest

from imagegen.catalog.models import CATALOG, MODELS
from imagegen.catalog.spec import ACTIVE, DEPRECATED, LEGACY, SHUT_DOWN, ModelSpec
from imagegen.settings import SettingsError
from tests.support.clock import DEFAULT_TODAY, TODAY_VARIABLE, PinnedClock, run_day
from tests.support.gunicorn_server import run_gunicorn


def years_from(day: dt.date, years: int) -> dt.date:
    """The same date `years` later (or earlier); 28 February for 29 February."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def boundary_days() -> list[dt.date]:
    """The day before and the day of each lifecycle date in the catalog."""
    dates = {d for m in MODELS for d in (m.deprecated_on, m.shutdown_on) if d is not None}
    return sorted({d - dt.timedelta(days=1) for d in dates} | dates)


PINNED = run_day()
DAYS = sorted({years_from(PINNED, -1), PINNED, years_from(PINNED, 1), *boundary_days()})


def expected_status(model: ModelSpec, day: dt.date) -> str:
    """What the catalog's dates say the model is on `day`."""
    if model.legacy:
        return LEGACY
    if model.shutdown_on is not None and day >= model.shutdown_on:
        return SHUT_DOWN
    if model.deprecated_on is not None and day >= model.deprecated_on:
        return DEPRECATED
    return ACTIVE


def having(status: str, day: dt.date) -> list[ModelSpec]:
    return [m for m in MODELS if expected_status(m, day) == status]


def usable(day: dt.date) -> list[str]:
    return [m.id for m in MODELS if expected_status(m, day) != SHUT_DOWN]


@pytest.fixture(params=DAYS, ids=str)
def day(request, today: PinnedClock) -> dt.date:
    """The service's today for this test, one of DAYS."""
    today.set(request.param)
    return request.param


def test_the_days_checked_see_every_status_and_every_change():
    seen = {expected_status(m, d) for m in MODELS for d in DAYS}
    assert seen == {ACTIVE, DEPRECATED, SHUT_DOWN, LEGACY}
    for model in MODELS:
        for date in (model.deprecated_on, model.shutdown_on):
            if date is not None:
                before = expected_status(model, date - dt.timedelta(days=1))
                assert before != expected_status(model, date) or model.legacy
                assert {date - dt.timedelta(days=1), date} <= set(DAYS)


# --- what the service says on each day ------------------------------------------------------


def test_models_endpoint_gives_each_model_its_status_on_the_day(client, day):
    body = client.get("/models").get_json()

    statuses = {m["id"]: m["status"] for m in body["models"]}
    assert statuses == {m.id: expected_status(m, day) for m in MODELS}
    for model in MODELS:
        one = client.get(f"/models/{model.id}").get_json()
        assert one["status"] == expected_status(model, day)
        assert one["shutdown_on"] == (model.shutdown_on and model.shutdown_on.isoformat())
        assert one["replacement"] == model.replacement


def test_v1_models_lists_exactly_the_models_usable_on_the_day(client, day):
    listed = [m["id"] for m in client.get("/v1/models").get_json()["data"]]

    assert listed == usable(day)
    for model in MODELS:
        answer = client.get(f"/v1/models/{model.id}")
        if model.id in listed:
            assert answer.status_code == 200 and answer.get_json()["id"] == model.id
        else:
            assert answer.status_code == 404
            assert answer.get_json()["error"]["code"] == "model_not_found"
            assert model.replacement in answer.get_json()["error"]["message"]


def test_openapi_and_mcp_offer_exactly_the_models_usable_on_the_day(client, day):
    spec = client.get("/openapi.json").get_json()
    tools = client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
        },
    ).get_json()["result"]["tools"]

    offered = spec["components"]["schemas"]["GenerateRequest"]["properties"]["model"]["enum"]
    assert offered == [*usable(day), None]
    (generate_tool,) = (t for t in tools if t["name"] == "generate_image")
    assert generate_tool["inputSchema"]["properties"]["model"]["enum"] == usable(day)


def test_a_model_shut_down_on_the_day_is_refused_naming_its_replacement(client, fake_openai, day):
    for model in having(SHUT_DOWN, day):
        native = client.post("/generate", json={"prompt": "x", "model": model.id})
        compat = client.post("/v1/images/generations", json={"prompt": "x", "model": model.id})

        assert native.status_code == 400, model.id
        body = native.get_json()
        assert body["field"] == "model" and body["replacement"] == model.replacement
        assert f"shut down on {model.shutdown_on}" in body["error"]
        assert compat.status_code == 400
        assert model.replacement in compat.get_json()["error"]["message"]
    assert fake_openai.requests == []


def test_a_model_deprecated_on_the_day_works_and_warns_of_its_shutdown(client, fake_openai, day):
    for model in having(DEPRECATED, day):
        response = client.post("/generate", json={"prompt": "x", "model": model.id})

        assert response.status_code == 200, response.get_json()
        (warning,) = response.get_json()["warnings"]
        assert str(model.shutdown_on) in warning and model.replacement in warning
    for model in having(ACTIVE, day):
        response = client.post("/generate", json={"prompt": "x", "model": model.id})

        assert response.status_code == 200, response.get_json()
        assert "warnings" not in response.get_json()
    sent = [request.json["model"] for request in fake_openai.image_requests]
    assert sent == [m.id for m in having(DEPRECATED, day) + having(ACTIVE, day)]


def test_the_default_model_is_checked_at_start_up_against_the_day(settings, day):
    for model in MODELS:
        if expected_status(model, day) == SHUT_DOWN:
            with pytest.raises(SettingsError, match=model.id):
                dataclasses.replace(settings, default_model=model.id)
        else:
            assert dataclasses.replace(settings, default_model=model.id).default_model == model.id


# --- the pinned clock itself -----------------------------------------------------------------


def test_the_run_day_is_the_default_unless_the_variable_moves_it():
    assert run_day({}) == DEFAULT_TODAY
    assert run_day({TODAY_VARIABLE: " "}) == DEFAULT_TODAY
    assert run_day({TODAY_VARIABLE: "2027-12-02"}) == dt.date(2027, 12, 2)
    with pytest.raises(ValueError, match=TODAY_VARIABLE):
        run_day({TODAY_VARIABLE: "next year"})


def test_every_test_starts_on_the_run_day(client):
    assert run_day(os.environ) == PINNED
    assert client.get("/models/gpt-image-1").get_json()["status"] == expected_status(
        CATALOG["gpt-image-1"], PINNED
    )


def test_the_runtime_reads_the_day_only_through_its_clock():
    from tests.support.gunicorn_server import REPO

    package = REPO / "image-gen" / "imagegen"
    for path in sorted(package.glob("*.py")):
        if path.name == "clock.py":
            continue
        text = path.read_text(encoding="utf-8")
        for wall_clock in ("date.today(", "datetime.now(", "datetime.utcnow(", "import today"):
            assert wall_clock not in text, f"{path.name} reads the day without imagegen.clock"


# --- under Gunicorn ---------------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_workers_answer_for_the_pinned_day_even_after_a_reload(tmp_path, today):
    """Two services, on gpt-image-1.5's last day and on its shutdown day: whatever the
    wall clock says, one of them would be wrong if the workers read it."""
    model = CATALOG["gpt-image-1.5"]
    body = {"prompt": "x", "model": model.id}
    for number, (day, status) in enumerate(
        [(model.shutdown_on - dt.timedelta(days=1), 200), (model.shutdown_on, 400)]
    ):
        today.set(day)
        with run_gunicorn(tmp_path / str(number), {"IMAGE_GEN_PROVIDER": "placeholder"}) as svc:
            first = svc.worker_pids()
            for reload in (False, True):
                if reload:
                    svc.process.send_signal(signal.SIGHUP)  # Gunicorn forks new workers
                    svc.wait_for_workers(2, exclude=set(first))
                answers = [svc.request("POST", "/generate", body) for _ in range(6)]
                assert {a.status for a in answers} == {status}, (day, reload, answers[0].body)
                if status == 200:
                    assert str(model.shutdown_on) in answers[0].json()["warnings"][0]
                else:
                    assert answers[0].json()["replacement"] == model.replacement
                listed = svc.get(f"/v1/models/{model.id}")[0]
                assert listed == (200 if status == 200 else 404)
