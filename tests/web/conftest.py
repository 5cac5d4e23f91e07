"""Fixtures of the browser tests: a real server on loopback and a page in Debian's headless Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, make_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium must not reach for the network beyond loopback: these switches stop its background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'store.sqlite'}")
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium installed (.ci/run installs it)")
        pytest.skip("Debian's chromium package is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, timezone_id="UTC")
        context.set_default_timeout(30_000)
        yield context.new_page()
        browser.close()
