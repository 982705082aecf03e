"""The portal's Subscription page (seed 003) in a real chromium: subscribe (a paid plan
asks for a card first, and changes nothing until there is one), move to a cheaper plan
from the next period, cancel at period end and resume, all through the one subscription
service; and who may. Saves docs/screenshots/subscription.png."""

from __future__ import annotations

from typing import Any

from browser import screenshot
from playwright.async_api import Page, expect
from test_admin_support import call
from test_portal_payments import (
    VISA,
    Stack,
    _signed_in,
    add_card,
    stack,  # noqa: F401  (the fixture: on the Stripe double)
)

ROLES_MAY = {"owner": True, "admin": False, "billing": True, "viewer": False}


async def plan(on: Stack, name: str, fee: int, included: int) -> str:
    made = await call(
        on.provider.admin,
        "POST",
        "/v1/plans",
        {"name": name, "monthly_fee": fee, "included_credits": included},
        status=201,
    )
    return str(made["id"])


async def subscription(on: Stack) -> Any:
    return await on.pool.fetchrow(
        "select * from subscriptions where account_id = $1", on.provider.account_id
    )


async def test_an_owner_subscribes_moves_down_and_cancels(
    stack: Stack,  # noqa: F811
    page: Page,
) -> None:
    pro = await plan(stack, "Pro", 20_000_000, 10_000_000)
    basic = await plan(stack, "Basic", 5_000_000, 2_000_000)
    await stack.sign_in(page)
    await page.get_by_role("link", name="Subscription").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Subscription")
    await expect(page.locator("#current-plan")).to_contain_text("No plan")
    rows = page.locator("#plans tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("Basic")  # cheapest first

    # No card yet: refused, shown, nothing written.
    await page.get_by_role("button", name="Subscribe to Pro").click()
    await expect(page.locator(".flash-error")).to_contain_text("add a card")
    assert await subscription(stack) is None

    await add_card(page, stack, VISA)
    balance = await stack.balance()
    await page.goto(stack.url("/subscription"))
    await page.get_by_role("button", name="Subscribe to Pro").click()
    await expect(page.get_by_text("Subscribed.")).to_be_visible()
    await expect(page.locator("#current-plan")).to_contain_text("Pro")
    await expect(page.locator("#current-plan")).to_contain_text("$20.00")
    row = await subscription(stack)
    assert row["plan_id"] == pro and row["status"] == "active"
    granted = await stack.pool.fetchval(
        "select amount from credit_grants where account_id = $1 and kind = 'included'",
        stack.provider.account_id,
    )
    assert 0 < granted <= 10_000_000 and await stack.balance() == balance + granted
    await screenshot(page, "subscription")

    await page.get_by_role("button", name="Switch to Basic").click()
    await expect(page.get_by_text("Plan change scheduled for the next period.")).to_be_visible()
    await expect(page.locator("#plans")).to_contain_text("Next period")
    row = await subscription(stack)
    assert (row["plan_id"], row["next_plan_id"]) == (pro, basic)
    await page.get_by_role("button", name="Keep Pro").click()
    assert (await subscription(stack))["next_plan_id"] is None

    await page.get_by_role("button", name="Cancel at period end").click()
    await expect(page.get_by_text("The subscription ends when this period ends.")).to_be_visible()
    await expect(page.locator("#current-plan")).to_contain_text("Ends")
    assert (await subscription(stack))["cancel_at_period_end"] is True
    await page.get_by_role("button", name="Resume subscription").click()
    await expect(page.get_by_text("The subscription continues.")).to_be_visible()
    assert (await subscription(stack))["cancel_at_period_end"] is False


async def test_who_may_change_the_subscription(
    stack: Stack,  # noqa: F811
    aiohttp_client: Any,
) -> None:
    free = await plan(stack, "Free", 0, 1_000_000)
    await plan(stack, "Hobby", 0, 2_000_000)  # a plan to switch to, once on Free
    wrong = []
    for role, may in ROLES_MAY.items():
        client, csrf = await _signed_in(stack, aiohttp_client, role)
        page = await client.get("/subscription")
        html = await page.text()
        if page.status != 200 or ('name="action" value="subscribe"' in html) != may:
            wrong.append(f"GET by {role}: {page.status}, buttons shown: {not may}")
        before = await stack.pool.fetchval("select count(*) from audit_log")
        sent = await client.post(
            "/subscription",
            data={"action": "subscribe", "plan_id": free, "csrf_token": csrf},
            allow_redirects=False,
        )
        after = await stack.pool.fetchval("select count(*) from audit_log")
        if may and (sent.status != 303 or after != before + 1):
            wrong.append(f"POST by {role}: {sent.status}")
        if not may and (sent.status != 403 or after != before):
            wrong.append(f"POST by {role}: {sent.status}, want 403 and nothing changed")
        no_csrf = await client.post(
            "/subscription", data={"action": "subscribe", "plan_id": free}, allow_redirects=False
        )
        if no_csrf.status != 403:
            wrong.append(f"POST by {role} without a CSRF token: {no_csrf.status}")
    assert wrong == []
    # A plan that is not there: the page again with the reason, nothing changed.
    client, csrf = await _signed_in(stack, aiohttp_client, "owner")
    before = await stack.pool.fetchval("select count(*) from audit_log")
    sent = await client.post(
        "/subscription", data={"action": "subscribe", "plan_id": "plan_nope", "csrf_token": csrf}
    )
    assert sent.status == 422 and "There is no plan" in await sent.text()
    assert await stack.pool.fetchval("select count(*) from audit_log") == before


async def test_a_plan_with_its_own_prices_is_made_through_the_api_and_shown(
    stack: Stack,  # noqa: F811
    page: Page,
) -> None:
    admin = stack.provider.admin
    refused = await call(
        admin,
        "POST",
        "/v1/plans",
        {"name": "Odd", "monthly_fee": 0, "prices": {"chat": {"price": 1}}},
        status=422,
    )
    assert [e["field"] for e in refused["errors"]] == ["prices"]
    assert "variable-cost" in refused["errors"][0]["message"]
    made = await call(
        admin,
        "POST",
        "/v1/plans",
        {
            "name": "Metered",
            "monthly_fee": 0,
            "prices": {"embeddings": {"price": 50}, "chat": {"units": {"units": 4}}},
        },
        status=201,
    )
    assert made["prices"] == {  # fitted: the table's reserve where none was given
        "chat": {"max_price": 100_000, "price": None, "units": {"units": 4}},
        "embeddings": {"max_price": None, "price": 50, "units": None},
    }
    listed = await call(admin, "GET", "/v1/plans", status=200)
    assert [p["name"] for p in listed["data"]] == ["Metered"]  # "Odd" was never made
    await stack.sign_in(page)
    await page.goto(stack.url("/subscription"))
    prices = page.get_by_role("list", name="Metered's own prices")
    await expect(prices.get_by_role("listitem")).to_have_text(
        [
            "chat: $0.000004 a unit of units, at most $0.100000 a call",
            "embeddings: $0.000050 a call",
        ]
    )
