"""Browser tests: Debian's chromium driven by Playwright's async API (a pytest plugin,
loaded by conftest.py).

    async def test_overview(page: Page) -> None:
        await page.goto(url)
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
        await screenshot(page, "overview")

Fixtures: ``browser``, a headless chromium for this test; ``new_page``, a factory of
pages each in a context of its own (own cookies: one per person signed in; own
viewport); ``page``, one such page at a desktop size.

One browser per test, not per session: Playwright's connection belongs to the event
loop that started it, and each test has its own loop (asyncio_default_fixture_loop_scope
in pyproject.toml). A session browser would need every browser test, and the database
fixtures it uses, on a session loop, or a CDP attach to a chromium started outside
Playwright, without the flags Playwright launches it with. Launching is cheap beside
starting Playwright's driver, which each loop needs anyway.

Every wait has a deadline (``TIMEOUT_MS``) so a page that never shows what a test
waits for fails the test quickly; tests wait through Playwright's auto-waiting
locators and ``expect``, never by sleeping.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from meter.program_paths import find_chromium

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"

TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)

# Without the background-networking flags chromium keeps dialling Google's services,
# which this machine's closed network refuses.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

DESKTOP = (1280, 800)
PHONE = (375, 740)


class NewPage(Protocol):
    async def __call__(self, *, width: int = ..., height: int = ...) -> Page: ...


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    assert executable, "no chromium: `python -m meter.system_needs test` installs it"
    async with async_playwright() as playwright:
        # launch() gives the browser a new, empty profile folder (--user-data-dir) of
        # its own, removed on close.
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[NewPage]:
    contexts: list[BrowserContext] = []

    async def make(*, width: int = DESKTOP[0], height: int = DESKTOP[1]) -> Page:
        context = await browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            locale="en-US",
            timezone_id="UTC",
            color_scheme="light",
            reduced_motion="reduce",
        )
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        contexts.append(context)
        return await context.new_page()

    yield make
    for context in contexts:
        await context.close()


@pytest.fixture
async def page(new_page: NewPage) -> Page:
    return await new_page()


_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


async def screenshot(page: Page, name: str) -> Path:
    """The whole page as ``docs/screenshots/<name>.png`` (committed; the README shows
    them). Fixed viewport, scale, zone and no caret or animation, so a run that changes
    nothing on the page leaves the file as it was."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a screenshot's name is lowercase words and dashes: {name!r}")
    path = SCREENSHOTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=path, full_page=True, animations="disabled", caret="hide")
    return path
