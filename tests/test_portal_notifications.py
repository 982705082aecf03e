"""The portal's Notifications page, and signing in by email.

Through the real portal and admin API on real Postgres and Redis, with a real SMTP
server on loopback (tests/mail_support.py) receiving what the portal sends; the pages
in a real chromium. Saves docs/screenshots/notifications.png and sign-in.png.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from browser import screenshot
from mail_support import SmtpServer, StartSmtp
from playwright.async_api import Page, expect
from portal_support import Provider, portal_settings, seed
from test_admin_support import call

from admin.app import create_app as create_admin
from admin.email_signin import PER_ADDRESS, PER_CLIENT
from meter.local_servers import free_port
from portal.app import create_app as create_portal

LINK = re.compile(r"http://127\.0\.0\.1:\d+/s/[\w-]+")
LOW = "The balance fell below the low-balance threshold"
ADDED = "Credits were added to the balance"


@dataclass
class Stack:
    provider: Provider
    portal: TestServer
    pool: asyncpg.Pool
    smtp: SmtpServer
    restart: Callable[..., Any]

    def url(self, path: str) -> str:
        return str(self.portal.make_url(path))

    async def sign_in(self, page: Page, role: str = "owner") -> None:
        await page.goto(await self.provider.link(role))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    async def settings(self) -> dict[str, Any]:
        aid = self.provider.account_id
        found: dict[str, Any] = await call(
            self.provider.admin, "GET", f"/v1/accounts/{aid}/notification-settings", status=200
        )
        return found

    async def opt_ins(self) -> dict[str, list[str]]:
        return {m["email"]: m["event_types"] for m in (await self.settings())["members"]}

    async def finish(self) -> None:
        """Stop the portal: it waits for the sign-in emails it is still sending."""
        await self.portal.close()


@pytest.fixture
async def stack(
    aiohttp_client: Any,
    aiohttp_server: Any,
    redis_url: str,
    database_url: str,
    smtp_server: StartSmtp,
) -> AsyncIterator[Stack]:
    mail = smtp_server()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {"METER_PORTAL_PUBLIC_URL": public, "METER_SMTP_URL": f"smtp://127.0.0.1:{mail.port}"}

    async def start_portal(**more: str) -> TestServer:
        settings = portal_settings(redis_url, database_url, **{**env, **more})
        server: TestServer = await aiohttp_server(
            create_portal(settings, clock=time.time), port=port
        )
        return server

    portal = await start_portal()
    admin = await aiohttp_client(
        create_admin(portal_settings(redis_url, database_url, **env), clock=time.time)
    )
    provider = await seed(admin)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield Stack(provider, portal, pool, mail, start_portal)
    finally:
        await pool.close()


# -- the Notifications page ----------------------------------------------------------


async def test_an_owner_sets_the_billing_email_and_a_members_choices(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await (
        page.get_by_role("navigation", name="Sections")
        .get_by_role("link", name="Notifications")
        .click()
    )
    await expect(page.get_by_role("heading", level=1)).to_have_text("Notifications")
    await expect(page.locator("#recipient")).to_contain_text("billing@acme.test")
    await page.get_by_label("Email", exact=True).fill("invoices@acme.test")
    await page.get_by_role("button", name="Update").click()
    await expect(page.get_by_text("Billing email saved.")).to_be_visible()
    await expect(page.locator("#recipient")).to_contain_text("invoices@acme.test")
    assert (await stack.settings())["invoice_email"] == "invoices@acme.test"

    # Every member's column, for an owner.
    for name in ("Owner", "Admin", "Billing", "Viewer"):
        await expect(page.get_by_label(f"Email {name}: {LOW}")).to_be_visible()
    await page.get_by_label(f"Email Viewer: {LOW}").check()
    await page.get_by_label(f"Email Viewer: {ADDED}").check()
    await page.get_by_label(f"Email Owner: {ADDED}").check()
    await page.get_by_role("button", name="Save choices").click()
    await expect(page.get_by_text("Email choices saved.")).to_be_visible()
    await expect(page.get_by_label(f"Email Viewer: {LOW}")).to_be_checked()
    await expect(page.get_by_label(f"Email Admin: {LOW}")).not_to_be_checked()
    await screenshot(page, "notifications")
    chosen = await stack.opt_ins()
    assert chosen["viewer@acme.test"] == ["balance.low", "credits.added"]
    assert chosen["owner@acme.test"] == ["credits.added"]
    assert chosen["admin@acme.test"] == chosen["billing@acme.test"] == []

    await page.get_by_label(f"Email Viewer: {LOW}").uncheck()
    await page.get_by_role("button", name="Save choices").click()
    await expect(page.get_by_text("Email choices saved.")).to_be_visible()
    assert (await stack.opt_ins())["viewer@acme.test"] == ["credits.added"]


async def test_a_bad_billing_email_comes_back_beside_its_field_and_changes_nothing(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page, "billing")
    await page.goto(stack.url("/notifications"))
    field = page.get_by_label("Email", exact=True)
    await field.fill("not an address")
    await page.get_by_role("button", name="Update").click()
    await expect(page.locator("#field-invoice_email-error")).to_have_text(
        "Enter an email address like name@example.com."
    )
    await expect(field).to_have_value("not an address")
    await expect(field).to_have_attribute("aria-invalid", "true")
    assert (await stack.settings())["invoice_email"] is None


async def test_a_stale_billing_email_form_is_refused_and_shows_the_current_one(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await page.goto(stack.url("/notifications"))
    aid = stack.provider.account_id
    await call(
        stack.provider.admin,
        "PUT",
        f"/v1/accounts/{aid}/notification-settings",
        {"invoice_email": "meanwhile@acme.test"},
        status=200,
    )
    await page.get_by_label("Email", exact=True).fill("mine@acme.test")
    await page.get_by_role("button", name="Update").click()
    await expect(page.get_by_text("was changed since you opened this page")).to_be_visible()
    await expect(page.get_by_label("Email", exact=True)).to_have_value("meanwhile@acme.test")
    assert (await stack.settings())["invoice_email"] == "meanwhile@acme.test"


async def test_a_viewer_sees_and_saves_only_their_own_choices(stack: Stack, page: Page) -> None:
    await stack.sign_in(page, "viewer")
    await page.goto(stack.url("/notifications"))
    await expect(page.locator("#invoice-email")).to_have_count(0)  # not theirs to change
    await expect(page.locator("#recipient")).to_contain_text("billing@acme.test")
    await expect(page.get_by_label(f"Email Viewer: {LOW}")).to_be_visible()
    await expect(page.get_by_label(f"Email Owner: {LOW}")).to_have_count(0)
    await page.get_by_label(f"Email Viewer: {LOW}").check()
    await page.get_by_role("button", name="Save choices").click()
    await expect(page.get_by_text("Email choices saved.")).to_be_visible()
    assert (await stack.opt_ins())["viewer@acme.test"] == ["balance.low"]

    # The same form, forged to name the owner too: refused, and nothing changes.
    form = page.locator("#opt-ins")
    token = await form.locator("[name=csrf_token]").get_attribute("value") or ""
    owner, viewer = stack.provider.members["owner"], stack.provider.members["viewer"]
    forged = await page.request.post(
        stack.url("/notifications/opt-ins"),
        multipart={"csrf_token": token, "member": owner, "optin": f"{owner}:balance.low"},
    )
    assert forged.status == 403
    tampered = await page.request.post(
        stack.url("/notifications/opt-ins"),
        multipart={"csrf_token": token, "member": viewer, "optin": f"{viewer}:no.such.type"},
    )
    assert tampered.status == 422 and "nothing was saved" in await tampered.text()
    invoice = await page.request.post(
        stack.url("/notifications/invoice-email"),
        form={"csrf_token": token, "invoice_email": "mine@acme.test", "version": "0"},
    )
    assert invoice.status == 403
    assert (await stack.opt_ins())["owner@acme.test"] == []
    assert (await stack.opt_ins())["viewer@acme.test"] == ["balance.low"]
    assert (await stack.settings())["invoice_email"] is None


# -- signing in by email ----------------------------------------------------------------


async def _ask(stack: Stack, address: str, **headers: str) -> tuple[int, str, str]:
    """POST the sign-in form as a browser would: (status, where it sends us, the page)."""
    async with (
        ClientSession() as http,
        http.post(
            stack.url("/sign-in"), data={"email": address}, headers=headers, allow_redirects=False
        ) as answer,
    ):
        location = answer.headers.get("Location", "")
        return answer.status, location, await answer.text()


async def test_a_member_gets_one_link_per_account_and_each_signs_in_once(
    stack: Stack, page: Page
) -> None:
    admin = stack.provider.admin
    other = await call(admin, "POST", "/v1/accounts", {"name": "Beta Labs"}, status=201)
    await call(
        admin,
        "POST",
        f"/v1/accounts/{other['id']}/members",
        {"email": "owner@acme.test", "name": "Owner", "role": "billing"},
        status=201,
    )
    await page.goto(stack.url("/"))  # signed out: the page offers the form
    await expect(page.get_by_role("heading", level=1)).to_have_text("You are signed out")
    await page.goto(stack.url("/sign-in"))
    await page.get_by_label("Your email").fill("Owner@Acme.test")
    await screenshot(page, "sign-in")
    await page.get_by_role("button", name="Email me a sign-in link").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
    await expect(page.locator("#signin-sent")).to_contain_text("If this address belongs")

    (mail,) = await stack.smtp.inbox.wait_for(1)
    assert mail["To"] == "Owner@Acme.test"
    assert mail["Subject"] == "Your sign-in links to the billing portal"
    text = mail.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    links = LINK.findall(body)
    assert len(links) == 2 and "Sign in to Acme:" in body and "Sign in to Beta Labs:" in body
    assert body.index("Sign in to Acme") < body.index("Sign in to Beta Labs")
    acme, beta = links

    await page.goto(acme)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    await expect(page.locator(".account-name")).to_have_text("Acme")
    await page.goto(acme)  # used: it signs in once
    await expect(page.get_by_role("heading", level=1)).to_have_text("This link has expired")
    await page.goto(beta)
    await expect(page.locator(".account-name")).to_have_text("Beta Labs")
    redeemed = await stack.pool.fetchval(
        "select count(*) from portal_links where redeemed_at is not null"
    )
    assert redeemed == 2


async def test_an_unknown_address_gets_the_same_answer_and_no_mail(stack: Stack) -> None:
    known = await _ask(stack, "viewer@acme.test")
    unknown = await _ask(stack, "nobody@nowhere.test")
    assert known[:2] == unknown[:2] == (303, "/sign-in/sent")
    assert known[2] == unknown[2]
    (mail,) = await stack.smtp.inbox.wait_for(1)
    assert mail["To"] == "viewer@acme.test"
    await stack.finish()  # every email the portal was sending has gone
    assert [r.recipients for r in stack.smtp.inbox.received] == [["viewer@acme.test"]]
    hashes = await stack.pool.fetch("select address_hash, client from email_signin_requests")
    assert len(hashes) == 2 and all(len(r["address_hash"]) == 64 for r in hashes)
    assert not any("@" in r["address_hash"] for r in hashes)


async def test_requests_are_limited_per_address_and_per_client(stack: Stack) -> None:
    for _ in range(PER_ADDRESS):
        assert (await _ask(stack, "viewer@acme.test"))[:2] == (303, "/sign-in/sent")
    status, _, page = await _ask(stack, "VIEWER@acme.test")  # the same mailbox
    assert status == 429 and "Too many sign-in requests" in page
    others = [f"someone{i}@nowhere.test" for i in range(PER_CLIENT - PER_ADDRESS)]
    for address in others:
        assert (await _ask(stack, address))[0] == 303
    assert (await _ask(stack, "fresh@nowhere.test"))[0] == 429  # this client asked enough
    await stack.finish()
    assert len(stack.smtp.inbox.received) == PER_ADDRESS  # one per admitted request
    assert await stack.pool.fetchval("select count(*) from email_signin_requests") == PER_CLIENT


async def test_a_bad_address_or_another_sites_form_sends_nothing(stack: Stack) -> None:
    status, _, page = await _ask(stack, "not an address")
    assert status == 422 and "Enter an email address like name@example.com." in page
    status, _, _ = await _ask(stack, "viewer@acme.test", Origin="https://evil.example")
    assert status == 403
    status, _, _ = await _ask(stack, "viewer@acme.test", **{"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert (await _ask(stack, "viewer@acme.test", Origin=stack.url("/").rstrip("/")))[0] == 303
    await stack.finish()
    assert len(stack.smtp.inbox.received) == 1
    assert await stack.pool.fetchval("select count(*) from email_signin_requests") == 1


async def test_without_smtp_the_request_is_logged_and_nothing_is_sent(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.portal.close()
    stack.portal = await stack.restart(METER_SMTP_URL="")
    before = await stack.pool.fetchval("select count(*) from portal_links")
    with caplog.at_level(logging.WARNING, logger="portal.email_signin"):
        assert (await _ask(stack, "viewer@acme.test"))[:2] == (303, "/sign-in/sent")
        await stack.finish()
    assert [r.getMessage() for r in caplog.records] == [
        "sign-in by email asked for, but METER_SMTP_URL is not set"
    ]
    assert await stack.pool.fetchval("select count(*) from portal_links") == before
    assert stack.smtp.inbox.received == []
