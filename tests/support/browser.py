"""Driving Debian's headless Chromium through Selenium for the web page tests."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def call(
    base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request to the service: (status, parsed JSON or the raw bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def wait(driver: Any, seconds: float = 20) -> Any:
    """A WebDriverWait: `.until(condition)` polls until it holds or the time is up."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds)


def cards(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#gallery > li.card")


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_full_page(driver: Any, path: Path) -> None:
    """A PNG of the whole page, not only the viewport, for a person to look at."""
    # Captured beyond the viewport there is no scrollbar, so take the full window width.
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def gallery_images_loaded(driver: Any) -> bool:
    """Every image in the gallery has arrived and decoded (a broken one has no width)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#gallery img')]"
        ".every((img) => img.complete && img.naturalWidth > 0)"
    )
