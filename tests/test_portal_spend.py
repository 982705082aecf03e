"""The portal's Spend Management page (seed 001) in a real chromium: the toggle, the
daily budget and thresholds saved through the one service (so the gateway's limit
follows), field errors that change nothing, and who may change it.
Saves docs/screenshots/spend-management.png."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from browser import screenshot
from playwright.async_api import Page, expect
from test_portal_payments import Stack, _signed_in, _stack

ROLES_MAY = {"owner": True, "admin": True, "billing": False, "viewer": False}


@pytest.fixture
async def stack(
    aiohttp_client: Any, aiohttp_server: Any, redis_url: str, database_url: str
) -> AsyncIterator[Stack]:
    async for s in _stack(aiohttp_client, aiohttp_server, redis_url, database_url, {}, None):
        yield s


async def limit(stack: Stack) -> Any:
    return await stack.pool.fetchval(
        "select daily_hard_limit from accounts where id = $1", stack.provider.account_id
    )


async def test_an_owner_sets_a_budget_and_thresholds(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    await page.get_by_role("link", name="Spend management").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Spend management")
    await expect(page.locator(".stats")).to_contain_text("Credits consumed today")
    await expect(page.locator(".stats")).to_contain_text("Disabled")
    await page.get_by_label("Spend management", exact=True).check()
    await page.get_by_label("Daily credit usage budget (USD)").fill("25")
    await page.get_by_label("Threshold 1", exact=True).fill("50")
    await page.locator("#field-unit-0").select_option("percent")
    await page.get_by_label("Threshold 2", exact=True).fill("5.50")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Spend management saved.")).to_be_visible()
    await expect(page.locator("#thresholds")).to_contain_text("50 % ($12.50)")
    await expect(page.locator("#thresholds")).to_contain_text("$5.50")
    await expect(page.locator(".stats")).to_contain_text("Daily budget $25.00")
    assert await limit(stack) == 25_000_000
    await screenshot(page, "spend-management")

    await page.get_by_label("Spend management", exact=True).uncheck()
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Spend management saved.")).to_be_visible()
    assert await limit(stack) is None
    # Kept for when it is switched on again.
    await expect(page.get_by_label("Daily credit usage budget (USD)")).to_have_value("25.00")


async def test_bad_input_comes_back_beside_its_field_and_changes_nothing(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await page.goto(stack.url("/spend-management"))
    before = await limit(stack)
    await page.get_by_label("Spend management", exact=True).check()
    await page.get_by_label("Daily credit usage budget (USD)").fill("ten")
    await page.get_by_label("Threshold 1", exact=True).fill("150")
    await page.locator("#field-unit-0").select_option("percent")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#field-daily_budget-error")).to_be_visible()
    await expect(page.locator("#field-threshold-0-error")).to_have_text(
        "Enter a whole percentage from 1 to 100."
    )
    await expect(page.get_by_label("Threshold 1", exact=True)).to_have_value("150")
    # A share of no budget: the service's own rule, shown on the form.
    await page.get_by_label("Daily credit usage budget (USD)").fill("")
    await page.get_by_label("Threshold 1", exact=True).fill("80")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#thresholds-error")).to_have_text(
        "a percentage needs a daily budget"
    )
    assert await limit(stack) == before
    count = await stack.pool.fetchval("select count(*) from spend_settings")
    assert count == 0


async def test_who_may_change_spend_management(stack: Stack, aiohttp_client: Any) -> None:
    form = {"enabled": "on", "daily_budget": "3", "threshold-0": "1", "unit-0": "usd"}
    wrong = []
    for role, may in ROLES_MAY.items():
        client, csrf = await _signed_in(stack, aiohttp_client, role)
        page = await client.get("/spend-management")
        html = await page.text()
        if page.status != 200 or ('id="spend-management"' in html) != may:
            wrong.append(f"GET by {role}: {page.status}, form shown: {not may}")
        before = await stack.pool.fetchval("select count(*) from audit_log")
        sent = await client.post(
            "/spend-management", data={**form, "csrf_token": csrf}, allow_redirects=False
        )
        after = await stack.pool.fetchval("select count(*) from audit_log")
        if may and (sent.status != 303 or after != before + 1):
            wrong.append(f"POST by {role}: {sent.status}")
        if not may and (sent.status != 403 or after != before):
            wrong.append(f"POST by {role}: {sent.status}, want 403 and nothing changed")
    assert wrong == []
