"""The browser tests' service and page: a real `jobformer serve` with an API key and a real `jobformer
worker` (tests/conftest.py, ``service``), calm heartbeats (a browser, the API and training share a busy
CPU); a chromium page on it (tests/ui/browser.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.procs import CALM_HEARTBEATS, Service
from tests.ui.browser import API_KEY, open_page


@pytest.fixture
def service_options() -> dict:
    return {"api_keys": (API_KEY,), "heartbeats": CALM_HEARTBEATS}


@pytest.fixture
def page(service: Service) -> Iterator[Any]:
    yield from open_page(service.url)
