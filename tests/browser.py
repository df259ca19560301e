"""Debian's Chromium driven by playwright, the way every browser test opens it.

The browser is the system's (`scripts/system-deps.sh` installs it), never one
playwright downloads. EVCHARGE_TEST_TIME_SCALE=3 gives every wait three times longer
on a slow machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright import sync_api

CHROMIUM = Path("/usr/bin/chromium")
SCALE = float(os.environ.get("EVCHARGE_TEST_TIME_SCALE", "1"))
LIVE_MS = int(1000 * SCALE)  # the promise: a change shows within a second
SLOW_MS = int(5000 * SCALE)  # page loads, reconnects
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No calls home: the machine has no internet, and a test talks only to loopback.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect = sync_api.expect


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: run `make system-deps` (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def opened(browser: Any, url: str, **context: Any) -> Iterator[Any]:
    """A fresh page at `url`; the test fails if the page threw an uncaught error meanwhile."""
    ctx = browser.new_context(**{"viewport": {"width": 1400, "height": 1000}, **context})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    try:
        yield page
    finally:
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def tile(page: Any, cp_id: str) -> Any:
    return page.locator(f'[data-testid="cp-tile"][data-cp-id="{cp_id}"]')
