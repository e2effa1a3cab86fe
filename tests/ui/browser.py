"""What the browser tests share: Debian's chromium driven by Playwright for Python (pointed at the system
browser: nothing downloads one), the API key the ``service`` of tests/ui/conftest.py has, signing in and
screenshots (saved under tests/ui/screenshots/, git-ignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

API_KEY = "ui-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = os.environ.get("JOBFORMER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def playwright() -> Any:
    """Playwright, for chromium from the system package. Missing in CI (CI=true) is a failure: the test
    must run there; elsewhere a skip saying what to install."""

    def missing(message: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).is_file():
        missing(f"chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run installs it)")
    return sync_api


def open_page(base_url: str) -> Iterator[Any]:
    """A chromium page on ``base_url`` (downloads accepted); fails afterwards if the page raised."""
    sync_api = playwright()
    SCREENSHOTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(
            base_url=base_url, viewport={"width": 1360, "height": 1000}, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        context.close()
        browser.close()
    assert errors == [], f"the page raised: {errors}"


def sign_in(page: Any) -> None:
    """Open the dashboard and give it the key, as a person does; back on the jobs list."""
    from playwright.sync_api import expect

    page.goto("/")
    page.fill("#api-key", API_KEY)
    page.click("text=Continue")
    expect(page.locator("#jobs-table")).to_be_visible()


def shot(page: Any, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")  # a full-page shot of a scrolled page repeats the sticky bar
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
