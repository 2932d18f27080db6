"""The web page in a real headless Chromium, against the service under Gunicorn in
placeholder mode: generate, see the images in the gallery with their prompts, delete them.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; skipped, with the
reason, when any of them is missing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegen.catalog.models import MODELS
from imagegen.catalog.spec import SHUT_DOWN
from tests.support.browser import (
    call,
    cards,
    console_errors,
    gallery_images_loaded,
    save_full_page,
    wait,
)
from tests.support.gunicorn_server import run_gunicorn

pytestmark = pytest.mark.slow

pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium==4.50.0)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

SCREENSHOT = Path(tempfile.gettempdir()) / "imagegen-page.png"
SCREENSHOT_ERROR = Path(tempfile.gettempdir()) / "imagegen-page-error.png"
SCREENSHOT_NARROW = Path(tempfile.gettempdir()) / "imagegen-page-narrow.png"
# Prompts are user content: this one must show up as text, never as markup.
HOSTILE_PROMPT = 'A fox & a hound <img src=x onerror="document.title=\'pwned\'"> "at dusk"'


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service under real Gunicorn, keyless, in placeholder mode; yields its base URL."""
    tmp = tmp_path_factory.mktemp("web")
    env = {"GUNICORN_THREADS": "4", "IMAGE_GEN_PROVIDER": "placeholder"}
    with run_gunicorn(tmp, env) as running:
        yield running.url


@pytest.fixture
def page(browser: Any, service: str) -> Any:
    """The page, freshly loaded on an empty store, once its models have arrived."""
    status, body = call(service, "GET", "/images?limit=200")
    assert status == 200
    for job_id in {image["job_id"] for image in body["images"]}:
        call(service, "DELETE", f"/jobs/{job_id}")
    browser.set_window_size(1280, 1000)
    browser.get(service + "/")
    wait(browser).until(lambda d: d.find_element(By.ID, "model").is_enabled())
    wait(browser).until(ec.visibility_of_element_located((By.ID, "gallery-empty")))
    browser.get_log("browser")  # start each test with an empty console
    return browser


def option_labels(driver: Any) -> list[str]:
    return [label.text for label in driver.find_elements(By.CSS_SELECTOR, "#model-options label")]


def test_form_shows_only_the_options_the_chosen_model_takes(page, today):
    assert not page.find_element(By.ID, "token-panel").is_displayed(), "no token is needed"
    assert not page.find_element(By.ID, "session").is_displayed()
    model = Select(page.find_element(By.ID, "model"))
    offered = [option.get_attribute("value") for option in model.options]
    assert offered == [m.id for m in MODELS if m.status(today()) != SHUT_DOWN]
    assert model.first_selected_option.get_attribute("value") == "gpt-image-2"

    model.select_by_value("dall-e-2")
    assert option_labels(page) == []
    sizes = [o.get_attribute("value") for o in Select(page.find_element(By.ID, "size")).options]
    assert sizes == ["256x256", "512x512", "1024x1024"]

    model.select_by_value("dall-e-3")
    assert option_labels(page) == ["Quality", "Style"]
    quality = Select(page.find_element(By.ID, "option-quality"))
    assert [o.get_attribute("value") for o in quality.options] == ["", "standard", "hd"]

    model.select_by_value("gpt-image-2")
    assert option_labels(page)[0] == "Quality"
    assert "Output format" in option_labels(page) and "Style" not in option_labels(page)
    quality = Select(page.find_element(By.ID, "option-quality"))
    assert [o.get_attribute("value") for o in quality.options] == [
        "",
        "low",
        "medium",
        "high",
        "auto",
    ]
    assert console_errors(page) == []


def test_generate_shows_images_with_their_prompt_then_delete_removes_them(page, service):
    Select(page.find_element(By.ID, "model")).select_by_value("dall-e-2")
    Select(page.find_element(By.ID, "size")).select_by_value("512x512")
    page.find_element(By.ID, "prompt").send_keys(HOSTILE_PROMPT)
    count = page.find_element(By.ID, "count")
    count.clear()
    count.send_keys("2")
    page.find_element(By.ID, "generate-button").click()

    wait(page).until(lambda d: len(cards(d)) == 2)
    wait(page).until(gallery_images_loaded)
    assert "Generated 2 images" in page.find_element(By.ID, "generate-status").text
    for card in cards(page):
        assert card.find_element(By.CSS_SELECTOR, ".prompt").text == HOSTILE_PROMPT
        assert len(card.find_elements(By.TAG_NAME, "img")) == 1, "the prompt became markup"
        image_id = card.get_attribute("data-image-id")
        url = f"{service}/images/{image_id}"
        # No token needed: plain, cacheable URLs (a thumbnail in the gallery).
        assert card.find_element(By.TAG_NAME, "img").get_attribute("src") == f"{url}?width=256"
        opened = card.find_element(By.LINK_TEXT, "Open")
        assert opened.get_attribute("href") == url
        download = card.find_element(By.LINK_TEXT, "Download")
        assert download.get_attribute("href") == url
        assert download.get_attribute("download") == f"image-{image_id}.png"
        assert "placeholder" in card.text
    assert page.title == "image-gen"
    save_full_page(page, SCREENSHOT)

    first, second = (card.get_attribute("data-image-id") for card in cards(page))
    cards(page)[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(page, 5).until(ec.alert_is_present())
    page.switch_to.alert.accept()
    wait(page).until(lambda d: len(cards(d)) == 1)
    assert cards(page)[0].get_attribute("data-image-id") == second
    assert call(service, "GET", f"/images/{first}")[0] == 404
    assert call(service, "GET", f"/images/{second}")[0] == 200

    cards(page)[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(page, 5).until(ec.alert_is_present())
    page.switch_to.alert.accept()
    wait(page).until(lambda d: not cards(d))
    assert page.find_element(By.ID, "gallery-empty").is_displayed()
    assert call(service, "GET", "/images")[1]["images"] == []

    page.refresh()
    wait(page).until(ec.visibility_of_element_located((By.ID, "gallery-empty")))
    assert cards(page) == []
    assert console_errors(page) == []


def test_dismissing_the_confirmation_keeps_the_image(page, service):
    status, job = call(service, "POST", "/generate", {"prompt": "keep me", "size": "1024x1024"})
    assert status == 200
    page.find_element(By.ID, "refresh").click()
    wait(page).until(lambda d: len(cards(d)) == 1)

    cards(page)[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(page, 5).until(ec.alert_is_present())
    page.switch_to.alert.dismiss()

    assert len(cards(page)) == 1
    assert call(service, "GET", job["images"][0]["url"])[0] == 200


def test_api_errors_are_shown_with_their_code(page):
    Select(page.find_element(By.ID, "model")).select_by_value("gpt-image-2")
    Select(page.find_element(By.ID, "size")).select_by_value("custom")
    custom = page.find_element(By.ID, "custom-size")
    assert custom.is_displayed()
    custom.send_keys("64x64")
    page.find_element(By.ID, "prompt").send_keys("too small")
    page.find_element(By.ID, "generate-button").click()

    error = wait(page).until(ec.visibility_of_element_located((By.ID, "generate-error")))
    assert "64x64" in error.text
    assert error.find_element(By.TAG_NAME, "code").text == "VALIDATION_ERROR"
    assert cards(page) == []
    save_full_page(page, SCREENSHOT_ERROR)


def test_load_more_pages_through_the_gallery(page, service):
    for n in range(3):
        body = {"prompt": f"batch {n}", "model": "dall-e-2", "size": "256x256", "count": 10}
        assert call(service, "POST", "/generate", body)[0] == 200
    page.find_element(By.ID, "refresh").click()
    wait(page).until(lambda d: len(cards(d)) == 24)
    more = page.find_element(By.ID, "load-more")
    assert more.is_displayed()

    more.click()

    wait(page).until(lambda d: len(cards(d)) == 30)
    assert not page.find_element(By.ID, "load-more").is_displayed()
    ids = [card.get_attribute("data-image-id") for card in cards(page)]
    assert len(set(ids)) == 30
    assert cards(page)[0].find_element(By.CSS_SELECTOR, ".prompt").text == "batch 2"


def test_page_fits_a_phone_screen(page, service):
    call(service, "POST", "/generate", {"prompt": "a small screen", "count": 2})
    page.set_window_size(390, 844)
    page.find_element(By.ID, "refresh").click()
    wait(page).until(lambda d: len(cards(d)) == 2)

    wait(page).until(gallery_images_loaded)
    overflow = page.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, "the page scrolls sideways on a phone"
    save_full_page(page, SCREENSHOT_NARROW)
