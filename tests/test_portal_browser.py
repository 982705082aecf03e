"""The billing portal in a real browser: chromium (Playwright) against the real portal
and admin API servers on loopback, with real Postgres and Redis.

Each page is saved as docs/screenshots/portal-*.png for the README.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from browser import NewPage, screenshot
from playwright.async_api import Page, expect
from portal_support import Provider, portal_settings, seed
from test_admin_support import call

from admin.app import create_app as create_admin
from meter.money import money
from portal.app import create_app as create_portal


@dataclass
class Stack:
    provider: Provider
    portal: TestServer
    pool: asyncpg.Pool

    def url(self, path: str) -> str:
        return str(self.portal.make_url(path))

    async def sign_in(self, page: Page, role: str = "owner") -> None:
        await page.goto(await self.provider.link(role))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")


@pytest.fixture
async def stack(
    aiohttp_client: Any, aiohttp_server: Any, redis_url: str, database_url: str
) -> AsyncIterator[Stack]:
    portal: TestServer = await aiohttp_server(
        create_portal(portal_settings(redis_url, database_url), clock=time.time)
    )
    public = str(portal.make_url("")).rstrip("/")
    admin_app = create_admin(
        portal_settings(redis_url, database_url, METER_PORTAL_PUBLIC_URL=public), clock=time.time
    )
    provider = await seed(await aiohttp_client(admin_app), "Acme")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield Stack(provider, portal, pool)
    finally:
        await pool.close()


def stat(page: Page, label: str) -> Any:
    return page.locator(".stat", has=page.locator(".stat-label", has_text=label)).locator(
        ".stat-value"
    )


async def test_the_overview_shows_the_admin_apis_numbers(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    aid = stack.provider.account_id
    admin = stack.provider.admin
    balance = await call(admin, "GET", f"/v1/accounts/{aid}/balance", status=200)
    usage = await call(admin, "GET", f"/v1/accounts/{aid}/usage?group_by=month", status=200)
    await expect(stat(page, "Total credits")).to_have_text(money(25_000_000))
    await expect(page.get_by_text("$20.00 granted, $5.00 purchased")).to_be_visible()
    await expect(stat(page, "Usage this period")).to_have_text(money(usage["data"][-1]["amount"]))
    await expect(stat(page, "Remaining credits")).to_have_text(money(balance["balance"]))
    await expect(stat(page, "Overage protection")).to_have_text(money(balance["overage_line"]))
    await expect(stat(page, "Spent today")).to_have_text(money(balance["spent_today"]))
    await expect(page.get_by_text("of a $5.00 daily hard limit")).to_be_visible()
    await expect(stat(page, "Available to use")).to_have_text(money(balance["available"]))
    await expect(stat(page, "Account status")).to_have_text(balance["status"])
    await expect(page.locator("#invoice-email")).to_have_text("billing@acme.test")
    await expect(page.get_by_role("link", name="Edit address")).to_be_visible()
    await expect(page.get_by_role("link", name="Edit email")).to_be_visible()
    await screenshot(page, "portal-overview")

    await page.get_by_role("link", name="Balance history").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Balance history")
    history = await call(admin, "GET", f"/v1/accounts/{aid}/transactions", status=200)
    rows = page.locator("table tbody tr")
    await expect(rows).to_have_count(len(history["data"]))
    first = history["data"][0]
    await expect(rows.first).to_contain_text(first["id"])
    await expect(rows.first).to_contain_text(first["description"])
    await expect(rows.first).to_contain_text(money(first["amount"], signed=True))
    await expect(stat(page, "Usage today")).to_have_text(money(usage["today"]["amount"]))
    await screenshot(page, "portal-balance-history")
    await page.get_by_role("link", name="Summary").click()
    await expect(page.get_by_text("Monthly usage")).to_be_visible()
    await screenshot(page, "portal-balance-summary")


async def test_the_owner_edits_the_profile_and_bad_input_is_shown_beside_its_field(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await page.get_by_role("link", name="Edit address").click()
    await page.get_by_label("Company name").fill("Acme GmbH")
    await page.get_by_label("Address 1").fill("Hauptstraße 1")
    await page.get_by_label("City").fill("Berlin")
    await page.get_by_label("Postal code").fill("10115")
    await page.get_by_label("Country").select_option("DE")
    await page.get_by_label("Invoice email").fill("invoices@acme.test")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Billing profile saved.")).to_be_visible()
    aid = stack.provider.account_id
    profile = await call(
        stack.provider.admin, "GET", f"/v1/accounts/{aid}/billing-profile", status=200
    )
    assert (profile["legal_name"], profile["city"], profile["country"]) == (
        "Acme GmbH",
        "Berlin",
        "DE",
    )
    assert profile["invoice_email"] == "invoices@acme.test"
    await screenshot(page, "portal-billing-profile")

    await page.get_by_label("Invoice email").fill("not an email")
    await page.get_by_label("Company name").fill("Changed Ltd")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Save changes").click()
    assert (await posted.value).status == 422
    error = page.locator("#field-invoice_email-error")
    await expect(error).to_have_text("Enter an email address like name@example.com.")
    await expect(page.get_by_label("Invoice email")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Company name")).to_have_value("Changed Ltd")
    await screenshot(page, "portal-billing-profile-error")
    again = await call(
        stack.provider.admin, "GET", f"/v1/accounts/{aid}/billing-profile", status=200
    )
    assert again == profile  # nothing changed

    # Someone else saves meanwhile: this tab's form is stale.
    await page.goto(stack.url("/billing-profile"))
    await call(
        stack.provider.admin,
        "PUT",
        f"/v1/accounts/{aid}/billing-profile",
        {**{k: profile[k] for k in ("legal_name", "city", "country")}, "po_number": "PO-7"},
        status=200,
    )
    await page.get_by_label("Company name").fill("Stale Ltd")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("changed since you opened it")).to_be_visible()
    await expect(page.get_by_label("Purchase order (PO) number")).to_have_value("PO-7")


async def test_tax_settings_add_and_show_status(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    await page.get_by_role("link", name="Tax settings").click()
    await page.get_by_label("Type").select_option("eu_vat")
    await page.get_by_label("Country").select_option("DE")
    await page.get_by_label("Number").fill("DE136695975")
    await page.get_by_role("button", name="Add tax registration").click()
    await expect(page.locator(".field-invalid")).to_have_count(1)
    await page.get_by_label("Number").fill("DE136695976")
    await page.get_by_label("Description").fill("European VAT number")
    await page.get_by_role("button", name="Add tax registration").click()
    await expect(page.get_by_text("Tax registration added.")).to_be_visible()
    row = page.locator("table tbody tr").first
    await expect(row).to_contain_text("DE136695976")
    await expect(row.locator(".badge")).to_have_text("unverified")
    await screenshot(page, "portal-tax-settings")


async def test_the_owner_adds_a_member(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    await page.get_by_role("link", name="Members").click()
    await page.get_by_label("Email").fill("new.person@acme.test")
    await page.get_by_label("Name", exact=True).fill("New Person")
    await page.get_by_label("Role", exact=True).select_option("billing")
    await page.get_by_role("button", name="Add member").click()
    await expect(page.get_by_text("Member added.")).to_be_visible()
    await expect(page.get_by_role("cell", name="new.person@acme.test")).to_be_visible()
    aid = stack.provider.account_id
    listed = await call(stack.provider.admin, "GET", f"/v1/accounts/{aid}/members", status=200)
    added = [m for m in listed["data"] if m["email"] == "new.person@acme.test"]
    assert [m["role"] for m in added] == ["billing"]
    await screenshot(page, "portal-members")


async def test_settings_and_api_keys(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_label("Project name").fill("web")
    await page.get_by_role("button", name="Create project").click()
    await expect(page.get_by_text("Project created.")).to_be_visible()
    await page.get_by_role("button", name="Create key").click()
    key = await page.locator("#new-key").inner_text()
    assert key.startswith("mtr_")
    await screenshot(page, "portal-api-keys")
    await page.goto(stack.url("/api-keys"))  # the key is not shown again
    await expect(page.locator("#new-key")).to_have_count(0)
    await page.get_by_role("link", name="Settings", exact=True).click()
    await expect(page.get_by_role("button", name="Request deletion")).to_be_visible()
    await screenshot(page, "portal-settings")


async def test_a_viewer_sees_no_edit_controls_and_a_forged_post_is_refused(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page, "viewer")
    await expect(page.get_by_role("link", name="Edit address")).to_have_count(0)
    await expect(page.get_by_role("link", name="API keys")).to_have_count(0)
    await page.get_by_role("link", name="Billing profile").click()
    await expect(page.locator("form[action='/billing-profile']")).to_have_count(0)
    await page.get_by_role("link", name="Members").click()
    await expect(page.get_by_role("button", name="Add member")).to_have_count(0)
    await expect(page.get_by_role("button", name="Remove")).to_have_count(0)
    await screenshot(page, "portal-viewer-members")
    # The viewer's own session and CSRF token, posting what the page did not offer.
    csrf = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert csrf
    before = await stack.pool.fetchval("select count(*) from audit_log")
    forged = await page.request.post(
        stack.url("/billing-profile"),
        form={"csrf_token": csrf, "legal_name": "Forged", "version": "0"},
    )
    assert forged.status == 403
    member = await page.request.post(
        stack.url("/members"),
        form={"csrf_token": csrf, "email": "x@evil.test", "name": "X", "role": "owner"},
    )
    assert member.status == 403
    assert (await page.request.get(stack.url("/api-keys"))).status == 403
    assert await stack.pool.fetchval("select count(*) from audit_log") == before
    aid = stack.provider.account_id
    profile = await call(
        stack.provider.admin, "GET", f"/v1/accounts/{aid}/billing-profile", status=200
    )
    assert profile["legal_name"] is None


async def test_a_post_without_the_csrf_token_is_refused(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    refused = await page.request.post(
        stack.url("/members"), form={"email": "x@acme.test", "name": "X", "role": "owner"}
    )
    assert refused.status == 403
    assert "nothing was changed" in await refused.text()
    aid = stack.provider.account_id
    listed = await call(stack.provider.admin, "GET", f"/v1/accounts/{aid}/members", status=200)
    assert "x@acme.test" not in [m["email"] for m in listed["data"]]


async def test_a_reused_or_expired_link_is_refused(stack: Stack, new_page: NewPage) -> None:
    link = await stack.provider.link()
    first, second = await new_page(), await new_page()
    await first.goto(link)
    await expect(first.get_by_role("heading", level=1)).to_have_text("Overview")
    response = await second.goto(link)
    assert response is not None and response.status == 410
    await expect(second.get_by_text("expired or was already used")).to_be_visible()
    assert await second.context.cookies() == []
    await screenshot(second, "portal-link-expired")

    expired = await stack.provider.link("admin")
    await stack.pool.execute("update portal_links set expires_at = now() - interval '1 second'")
    third = await new_page()
    response = await third.goto(expired)
    assert response is not None and response.status == 410
    await expect(third.get_by_text("expired or was already used")).to_be_visible()
    sessions = await stack.pool.fetchval("select count(*) from portal_sessions")
    assert sessions == 1
