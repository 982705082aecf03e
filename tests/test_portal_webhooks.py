"""The portal's Webhooks page in a real chromium, over the real portal and admin API.

Nothing is delivered here (the sender loop lives in the ledger worker): where a test
needs a delivery that failed, it writes what the sender writes after a failed try.
Saves docs/screenshots/portal-webhooks.png.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from browser import screenshot
from playwright.async_api import Page, expect
from portal_support import portal_settings, seed
from test_portal_browser import Stack as BrowserStack

from admin.app import create_app as create_admin
from meter.local_servers import free_port
from portal.app import create_app as create_portal

HOOK_URL = "https://1.1.1.1/meter-hooks"  # public, written as an address: no DNS lookup


class Stack(BrowserStack):
    async def endpoints(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(  # type: ignore[no-any-return]
            "select * from webhook_endpoints where deleted_at is null order by created_at"
        )

    async def deliveries(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(  # type: ignore[no-any-return]
            "select * from notification_deliveries order by created_at"
        )


@pytest.fixture
async def stack(
    aiohttp_client: Any, aiohttp_server: Any, redis_url: str, database_url: str
) -> AsyncIterator[Stack]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"  # where the admin API's sign-in links point
    settings = portal_settings(redis_url, database_url, METER_PORTAL_PUBLIC_URL=public)
    portal: TestServer = await aiohttp_server(create_portal(settings, clock=time.time), port=port)
    admin = await aiohttp_client(create_admin(settings, clock=time.time))
    provider = await seed(admin)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield Stack(provider, portal, pool)
    finally:
        await pool.close()


async def add(page: Page, url: str, description: str = "", events: tuple[str, ...] = ()) -> None:
    await page.get_by_label("Endpoint URL").fill(url)
    await page.get_by_label("Description").fill(description)
    for event in events:
        await page.locator(f'[id="event-{event}"]').check()
    await page.get_by_role("button", name="Add endpoint").click()


async def test_an_endpoint_is_added_its_secret_shown_once_rotated_and_tested(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await page.get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Webhooks")
    await expect(page.locator("#no-endpoints")).to_be_visible()
    await add(page, HOOK_URL, "Production", ("balance.low", "usage.daily_limit_reached"))

    secret = await page.locator("#new-secret").inner_text()
    (saved,) = await stack.endpoints()
    assert secret == saved["secret"] and secret.startswith("whsec_")
    assert saved["event_types"] == ["usage.daily_limit_reached", "balance.low"]
    await expect(page.get_by_text("it is shown only this once")).to_be_visible()
    section = page.locator(f"#endpoint-{saved['id']}")
    await expect(section.locator(".badge").first).to_have_text("Enabled")
    await expect(section.locator(".endpoint-events")).to_have_text(
        "usage.daily_limit_reached, balance.low"
    )
    await expect(section.locator(".secret-prefix")).to_have_text(secret[:10] + "…")
    await page.goto(stack.url("/webhooks"))  # shown once: not on the page again
    await expect(page.locator("#new-secret")).to_have_count(0)
    assert secret not in await page.content()

    await section.get_by_role("button", name="Rotate secret").click()
    rotated = await page.locator("#new-secret").inner_text()
    assert rotated != secret and rotated == (await stack.endpoints())[0]["secret"]
    await expect(page.get_by_text("The secret it replaces keeps signing too")).to_be_visible()
    await expect(section.locator(".secret-prefix")).to_have_text(rotated[:10] + "…")
    assert (await stack.endpoints())[0]["previous_secret"] == secret

    await section.get_by_role("button", name="Send test event").click()
    await expect(page.get_by_text("Test event queued")).to_be_visible()
    row = section.locator("table tbody tr").first
    await expect(row).to_contain_text("webhook.test")
    await expect(row.locator(".badge")).to_have_text("pending")
    await expect(row.get_by_role("button", name="Retry")).to_have_count(0)  # already due
    (delivery,) = await stack.deliveries()
    assert (delivery["endpoint_id"], delivery["status"]) == (saved["id"], "pending")
    await page.goto(stack.url("/webhooks"))  # at the top: the header is sticky
    await expect(row.locator(".badge")).to_have_text("pending")
    await screenshot(page, "portal-webhooks")

    # What the sender leaves after a try the receiver answered 500, and no more tries.
    await stack.pool.execute(
        "insert into delivery_attempts (delivery_id, attempt, started_at, status_code,"
        " latency_ms, ok, error, excerpt) values ($1, 1, now(), 500, 31.4, false,"
        " 'answered 500', 'upstream <b>down</b>')",
        delivery["id"],
    )
    await stack.pool.execute(
        "update notification_deliveries set status = 'failed', attempts = 1,"
        " finished_at = now() where id = $1",
        delivery["id"],
    )
    await page.reload()
    await expect(row.locator(".badge")).to_have_text("failed")
    await row.locator("summary").click()
    await expect(row.locator(".attempts li")).to_contain_text("500, 31.4 ms, answered 500")
    await expect(row.locator(".excerpt")).to_have_text("upstream <b>down</b>")  # text, not HTML
    await row.get_by_role("button", name="Retry").click()
    await expect(page.get_by_text("Delivery queued to be sent again.")).to_be_visible()
    await expect(row.locator(".badge")).to_have_text("pending")
    assert [d["status"] for d in await stack.deliveries()] == ["pending"]

    await section.get_by_role("button", name="Disable").click()
    await expect(section.locator(".badge").first).to_have_text("Disabled")
    await expect(section.locator(".disabled-reason")).to_contain_text("disabled by Owner")
    await expect(section.get_by_role("button", name="Send test event")).to_have_count(0)
    await section.get_by_role("button", name="Enable").click()
    await expect(section.locator(".badge").first).to_have_text("Enabled")

    await section.get_by_role("button", name="Delete").click()
    await expect(page.get_by_text("Endpoint deleted")).to_be_visible()
    await expect(section).to_have_count(0)
    assert await stack.endpoints() == []
    assert [d["status"] for d in await stack.deliveries()] == ["canceled"]


@pytest.mark.parametrize(
    ("url", "description", "field", "error"),
    [
        ("http://127.0.0.1:8080/hook", "", "url", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/", "", "url", "169.254.169.254 is a cloud metadata"),
        ("http://user:pw@1.1.1.1/hook", "", "url", "must not carry credentials"),
        ("ftp://1.1.1.1/hook", "", "url", "Enter a URL that starts with https://"),
        ("", "", "url", "Required."),
        (HOOK_URL, "d" * 201, "description", "At most 200 characters."),
    ],
)
async def test_bad_input_comes_back_beside_its_field_and_saves_nothing(
    stack: Stack, page: Page, url: str, description: str, field: str, error: str
) -> None:
    await stack.sign_in(page, "admin")  # admins manage webhooks, as owners do
    await page.goto(stack.url("/webhooks"))
    audited = await stack.pool.fetchval("select count(*) from audit_log")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await add(page, url, description, ("balance.low",))
    assert (await posted.value).status == 422
    await expect(page.locator(f"#field-{field}-error")).to_contain_text(error)
    await expect(page.get_by_label("Endpoint URL")).to_have_value(url)
    await expect(page.locator('[id="event-balance.low"]')).to_be_checked()
    await expect(page.locator('[id="event-credits.added"]')).not_to_be_checked()
    await expect(page.locator("#new-secret")).to_have_count(0)
    assert await stack.endpoints() == []
    assert await stack.pool.fetchval("select count(*) from audit_log") == audited


@pytest.mark.parametrize("role", ["viewer", "billing"])
async def test_roles_without_webhooks_see_no_page_and_a_forged_post_changes_nothing(
    stack: Stack, page: Page, role: str
) -> None:
    await stack.sign_in(page)
    await page.goto(stack.url("/webhooks"))
    await add(page, HOOK_URL)
    (endpoint,) = await stack.endpoints()
    await page.context.clear_cookies()

    await stack.sign_in(page, role)
    await expect(page.get_by_role("link", name="Webhooks")).to_have_count(0)
    shown = await page.goto(stack.url("/webhooks"))
    assert shown is not None and shown.status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("You may not do this")
    assert HOOK_URL not in await page.content()
    csrf = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert csrf
    before = await stack.pool.fetchval("select count(*) from audit_log")
    for path, form in (
        ("/webhooks", {"url": "https://8.8.8.8/x"}),
        (f"/webhooks/{endpoint['id']}/rotate", {}),
        (f"/webhooks/{endpoint['id']}/test", {}),
        (f"/webhooks/{endpoint['id']}/delete", {}),
    ):
        forged = await page.request.post(stack.url(path), form={"csrf_token": csrf, **form})
        assert forged.status == 403, path
    assert await stack.pool.fetchval("select count(*) from audit_log") == before
    (still,) = await stack.endpoints()
    assert still["secret"] == endpoint["secret"] and await stack.deliveries() == []
