"""The web page when the service needs client tokens, in a real headless Chromium against
the service under Gunicorn in placeholder mode with a tokens file: the page asks for a token,
refuses a wrong one, sends the right one on every call, and shows images fetched with it.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; skipped, with the
reason, when any of them is missing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import (
    call,
    cards,
    console_errors,
    gallery_images_loaded,
    save_full_page,
    wait,
)
from tests.support.gunicorn_server import run_gunicorn
from tests.support.service import ALICE, BOB, OPS, bearer, line

pytestmark = pytest.mark.slow

pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium==4.50.0)"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

SHOTS = Path(tempfile.gettempdir()) / "shots"
TOKEN_KEY = "image-gen.token"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service under real Gunicorn in placeholder mode, needing client tokens."""
    tmp = tmp_path_factory.mktemp("web-tokens")
    tokens = tmp / "tokens"
    tokens.write_text(
        "\n".join(
            [
                line("alice", ALICE, "usd_per_day=5"),
                line("bob", BOB, "models=dall-e-2", "images_per_hour=1"),
                line("ops", OPS, "admin"),
            ]
        )
        + "\n"
    )
    env = {
        "GUNICORN_THREADS": "4",
        "IMAGE_GEN_PROVIDER": "placeholder",
        "IMAGE_GEN_TOKENS_FILE": str(tokens),
    }
    with run_gunicorn(tmp, env) as running:
        yield running.url


@pytest.fixture
def page(browser: Any, service: str) -> Any:
    """The page on an empty store, in a tab with no token stored, showing the token form."""
    status, body = call(service, "GET", "/images?limit=200", headers=bearer(OPS))
    assert status == 200
    for job_id in {image["job_id"] for image in body["images"]}:
        call(service, "DELETE", f"/jobs/{job_id}", headers=bearer(OPS))
    browser.set_window_size(1280, 1000)
    browser.get(service + "/")
    browser.execute_script("sessionStorage.clear(); localStorage.clear();")
    browser.refresh()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "token-panel")))
    browser.get_log("browser")  # start each test with an empty console
    return browser


def enter_token(driver: Any, token: str) -> None:
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "token-button").click()


def sign_in(driver: Any, token: str) -> None:
    """Enter a valid token and wait until the form and the (empty) gallery are ready."""
    enter_token(driver, token)
    wait(driver).until(lambda d: d.find_element(By.ID, "model").is_enabled())
    wait(driver).until(ec.visibility_of_element_located((By.ID, "gallery-empty")))


def stored_token(driver: Any) -> Any:
    return driver.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')")


def generate(driver: Any, prompt: str, model: str = "dall-e-2", count: int = 1) -> None:
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    field = driver.find_element(By.ID, "prompt")
    field.clear()
    field.send_keys(prompt)
    count_field = driver.find_element(By.ID, "count")
    count_field.clear()
    count_field.send_keys(str(count))
    driver.find_element(By.ID, "generate-button").click()


def delete_card(driver: Any, card: Any) -> None:
    card.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(driver, 5).until(ec.alert_is_present())
    driver.switch_to.alert.accept()


def test_page_asks_for_a_token_refuses_a_wrong_one_and_works_with_the_right_one(
    page, service, tmp_path
):
    assert not page.find_element(By.ID, "generate-form").is_displayed()
    assert not page.find_element(By.ID, "gallery").is_displayed()
    assert page.find_element(By.CSS_SELECTOR, "label[for=token]").text == "Client token"
    save_full_page(page, SHOTS / "token-form.png")

    enter_token(page, "igt_not-a-token-anyone-issued")
    error = wait(page).until(ec.visibility_of_element_located((By.ID, "token-error")))
    assert "not valid" in error.text
    assert error.find_element(By.TAG_NAME, "code").text == "INVALID_TOKEN"
    assert not page.find_element(By.ID, "generate-form").is_displayed()
    assert stored_token(page) is None
    save_full_page(page, SHOTS / "token-form-error.png")
    page.get_log("browser")  # the refused call's 401 is logged by Chromium itself

    sign_in(page, ALICE)
    assert not page.find_element(By.ID, "token-panel").is_displayed()
    assert stored_token(page) == ALICE
    assert page.execute_script("return localStorage.length") == 0
    usage = page.find_element(By.ID, "usage")
    assert usage.text.startswith("alice · 0 images this hour")
    assert "(cap $5.00)" in usage.text

    generate(page, "a lighthouse, fetched with a token", count=2)
    wait(page).until(lambda d: len(cards(d)) == 2)
    wait(page).until(gallery_images_loaded)
    for card in cards(page):
        src = card.find_element(By.TAG_NAME, "img").get_attribute("src")
        assert src.startswith(f"blob:{service}/"), src
    wait(page).until(lambda d: "2 images this hour" in d.find_element(By.ID, "usage").text)
    save_full_page(page, SHOTS / "gallery-with-token.png")

    first = cards(page)[0]
    image_id = first.get_attribute("data-image-id")
    status, original = call(service, "GET", f"/images/{image_id}", headers=bearer(ALICE))
    assert status == 200 and original.startswith(b"\x89PNG")

    main = page.current_window_handle
    first.find_element(By.LINK_TEXT, "Open").click()
    wait(page).until(lambda d: len(d.window_handles) == 2)
    page.switch_to.window(next(h for h in page.window_handles if h != main))
    wait(page).until(lambda d: d.current_url.startswith("blob:"))
    wait(page).until(
        lambda d: d.execute_script("const i = document.images[0]; return i && i.naturalWidth")
    )
    # The blob tab inherits the page's CSP, so Chromium's image viewer may not style
    # (centre) the image with its own inline styles; the image itself shows.
    viewer_styles = "Applying inline style violates the following Content Security Policy"
    assert [m for m in console_errors(page) if viewer_styles not in m] == []
    page.close()
    page.switch_to.window(main)

    page.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    first.find_element(By.LINK_TEXT, "Download").click()
    saved = tmp_path / f"image-{image_id}.png"
    wait(page).until(lambda d: saved.exists() and saved.read_bytes() == original)

    delete_card(page, first)
    wait(page).until(lambda d: len(cards(d)) == 1)
    assert call(service, "GET", f"/images/{image_id}", headers=bearer(ALICE))[0] == 404
    delete_card(page, cards(page)[0])
    wait(page).until(lambda d: not cards(d))
    assert page.find_element(By.ID, "gallery-empty").is_displayed()
    assert console_errors(page) == []


def test_the_token_lasts_for_the_tab_until_forgotten(page):
    sign_in(page, ALICE)
    page.refresh()
    wait(page).until(lambda d: d.find_element(By.ID, "model").is_enabled())
    assert not page.find_element(By.ID, "token-panel").is_displayed()
    assert page.find_element(By.ID, "usage").text.startswith("alice · ")

    page.find_element(By.ID, "forget-token").click()

    assert page.find_element(By.ID, "token-panel").is_displayed()
    assert not page.find_element(By.ID, "generate-form").is_displayed()
    assert not page.find_element(By.ID, "token-error").is_displayed()
    assert stored_token(page) is None
    page.refresh()
    wait(page).until(ec.visibility_of_element_located((By.ID, "token-panel")))


def test_a_refused_stored_token_is_dropped_and_the_form_says_why(page):
    page.execute_script(f"sessionStorage.setItem('{TOKEN_KEY}', 'igt_revoked-long-ago-0123456')")
    page.refresh()

    error = wait(page).until(ec.visibility_of_element_located((By.ID, "token-error")))
    assert error.find_element(By.TAG_NAME, "code").text == "INVALID_TOKEN"
    assert not page.find_element(By.ID, "generate-form").is_displayed()
    assert stored_token(page) is None


def test_permission_and_quota_errors_are_shown_readably(page):
    sign_in(page, BOB)
    assert "(cap 1)" in page.find_element(By.ID, "usage").text

    generate(page, "a model bob may not use", model="gpt-image-2")
    error = wait(page).until(ec.visibility_of_element_located((By.ID, "generate-error")))
    assert error.text.startswith("This token may not do that.")
    assert "dall-e-2" in error.text
    assert error.find_element(By.TAG_NAME, "code").text == "PERMISSION_DENIED"

    generate(page, "bob's one image this hour")
    wait(page).until(lambda d: len(cards(d)) == 1)
    assert not page.find_element(By.ID, "generate-error").is_displayed()

    generate(page, "one too many")
    error = wait(page).until(ec.visibility_of_element_located((By.ID, "generate-error")))
    assert error.text.startswith("A cap set by the service's operator is reached.")
    assert error.find_element(By.TAG_NAME, "code").text == "QUOTA_EXCEEDED"
    assert "try again in about" in error.text
    assert len(cards(page)) == 1
    save_full_page(page, SHOTS / "quota-error.png")
