"""Fixtures of the dashboard tests (helpers in ``tests/dashboard/support.py``).

* ``dash`` (module): a federation of three sites with running nodes, the coordinator with a user
  store and the dashboard on HTTPS; one per test module, shared by its tests.
* ``browser`` (session): headless Debian Chromium driven by Playwright.
* ``page`` (function): a fresh browser context (no cookies) that accepts the federation's
  self-issued certificate, and a page in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.support import Dashboard, launch_browser, start_dashboard
from medfed.learn.base import TabularData


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, heart: dict[str, TabularData]) -> Iterator[Dashboard]:
    d = start_dashboard(Path(tmp_path_factory.mktemp("dash")), heart)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_browser(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()
