"""The portal's Invoices pages (seeds 001 and 002) in a real chromium: four months of an
account's real invoices (booked usage, closed and finalized on an injected clock) in the
three groups, one invoice as the page its PDF prints, the Download PDF link giving that
PDF, another account's invoice not found, and every role reading them (paying them:
test_portal_invoice_payments.py).
Saves docs/screenshots/invoices.png and docs/screenshots/invoice.png."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pypdf
import pytest
from aiohttp.test_utils import TestServer
from browser import screenshot
from ledger_fixtures import caught_up, running_worker, wait_for
from playwright.async_api import Page, expect
from portal_support import Provider, portal_settings, seed
from test_admin_support import call
from test_portal_payments import _signed_in

from admin.app import create_app as create_admin
from billing import periods
from billing.invoices import Closer
from meter.live_state import Call, LiveState
from meter.local_servers import free_port
from meter.money import usd
from meter.settings import Settings
from portal.app import create_app as create_portal

# The portal's "now": January's invoice (due 15 Feb) is past due, February's (due 24 Apr)
# is not, March's is still a draft.
NOW = datetime(2027, 4, 20, 12, tzinfo=UTC)
# Acme has $25 of credits; a month's calls, on its last day: (period, dollars).
MONTHS = (("2026-12", 10), ("2027-01", 20), ("2027-02", 3), ("2027-03", 2))
ROLES = ("owner", "admin", "billing", "viewer")


@dataclass
class Stack:
    provider: Provider
    portal: TestServer
    pool: asyncpg.Pool
    invoices: dict[str, str]  # period label -> Acme's invoice id
    other_invoice: str  # an invoice of another account

    def url(self, path: str) -> str:
        return str(self.portal.make_url(path))

    async def sign_in(self, page: Page, role: str = "owner") -> None:
        await page.goto(await self.provider.link(role))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")


def at(moment: datetime) -> Any:
    return lambda: moment.timestamp()


async def close(settings: Settings, live: LiveState, pool: asyncpg.Pool, **only: Any) -> None:
    """Each month closed the minute after it ends; December's and January's finalized at
    once, February's on 10 Apr (due 24 Apr), March's left a draft."""

    def closer(moment: datetime, grace: float = 0.0) -> Closer:
        return Closer(pool, live, settings.replace(invoice_grace=grace), clock=at(moment))

    for label, _ in MONTHS:
        period = periods.parse(label)
        after = period.end_at() + timedelta(minutes=1)
        grace = 30 * 86_400.0 if label == "2027-03" else 0.0
        await closer(after, grace).close_period(period, **only)
        if label in ("2026-12", "2027-01"):
            assert await closer(after).finalize_due() == 1
    assert await closer(datetime(2027, 4, 10, tzinfo=UTC)).finalize_due() == 1


@pytest.fixture
async def stack(
    aiohttp_client: Any, aiohttp_server: Any, redis_url: str, database_url: str
) -> AsyncIterator[Stack]:
    port = free_port()
    settings = portal_settings(
        redis_url,
        database_url,
        METER_PORTAL_PUBLIC_URL=f"http://127.0.0.1:{port}",
        METER_SELLER_NAME="Meter Ltd",
        METER_SELLER_ADDRESS="1 Main Street;London EC1A 1AA;GB",
    )
    clock = at(NOW)
    portal: TestServer = await aiohttp_server(create_portal(settings, clock=clock), port=port)
    provider = await seed(await aiohttp_client(create_admin(settings, clock=clock)))
    aid = provider.account_id
    limits = {"overage_line": usd(50), "daily_hard_limit": None, "daily_notify_threshold": None}
    await call(provider.admin, "PUT", f"/v1/accounts/{aid}/limits", limits, status=200)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    live = LiveState.from_url(redis_url, timeout=2.0)
    try:
        shard = await pool.fetchval("select shard from accounts where id = $1", aid)
        async with running_worker(settings):
            for label, dollars in MONTHS:
                day = periods.parse(label).end_day - 1
                admitted = await live.admit(
                    Call(shard, aid, "proj_x", "key_x", "chat", usd(dollars)), day
                )
                assert admitted.admitted, admitted

            async def booked() -> bool:
                async with pool.acquire() as conn:
                    return await caught_up(conn, live, settings.shards)

            await wait_for(booked, 20, "the usage booked")
        await close(settings, live, pool)
        rows = await pool.fetch("select id, period_start from invoices where account_id = $1", aid)
        invoices = {f"{r['period_start']:%Y-%m}": r["id"] for r in rows}
        # Another account, made after Acme's closes, with an invoice of its own.
        other = await call(provider.admin, "POST", "/v1/accounts", {"name": "Other"}, status=201)
        april = periods.parse("2027-04")
        after = Closer(pool, live, settings, clock=at(april.end_at() + timedelta(minutes=1)))
        assert await after.close_period(april, account_id=other["id"]) == 1
        theirs = await pool.fetchval("select id from invoices where account_id = $1", other["id"])
        yield Stack(provider, portal, pool, invoices, theirs)
    finally:
        await live.close()
        await pool.close()


async def test_the_invoices_in_their_three_groups_and_one_as_its_pdf_prints_it(
    stack: Stack, page: Page
) -> None:
    rows = await stack.pool.fetch(
        "select number, amount_due from invoices where account_id = $1",
        stack.provider.account_id,
    )
    amounts = dict(rows)
    assert amounts == {"INV-000001": 0, "INV-000002": usd(5), "INV-000003": usd(3), None: usd(2)}
    await stack.sign_in(page, "viewer")
    await page.get_by_role("link", name="Invoices", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Invoices")
    action = page.locator("#action-required tbody tr")
    await expect(action).to_have_count(1)
    await expect(action).to_contain_text("INV-000002")
    await expect(action).to_contain_text("15 Feb 2027")
    await expect(action).to_contain_text("Past due")
    await expect(action).to_contain_text("$5.00")
    upcoming = page.locator("#upcoming tbody tr")
    await expect(upcoming).to_have_count(2)  # newest period first: March's draft
    await expect(upcoming.nth(0)).to_contain_text("DRAFT")
    await expect(upcoming.nth(0)).to_contain_text("$2.00")
    await expect(upcoming.nth(1)).to_contain_text("INV-000003")
    await expect(upcoming.nth(1)).to_contain_text("24 Apr 2027")
    await expect(upcoming.nth(1)).to_contain_text("$3.00")
    history = page.locator("#payment-history tbody tr")
    await expect(history).to_have_count(1)
    await expect(history).to_contain_text("INV-000001")
    await expect(history).to_contain_text("1 Jan 2027")  # paid when finalized: nothing due
    await screenshot(page, "invoices")

    await action.get_by_role("link", name="View").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Invoice INV-000002")
    await expect(page.locator("#invoice-number")).to_have_text("INV-000002")
    await expect(page.get_by_role("alert")).to_contain_text("past due")
    totals = page.locator("#invoice-totals")
    await expect(totals.locator("tr", has_text="Amount due")).to_contain_text("$5.00")
    await expect(totals.locator("tr", has_text="Applied credit balance")).to_contain_text("-$15.00")
    await expect(page.locator("#invoice-seller")).to_contain_text("Meter Ltd")
    await expect(page.locator("#invoice-buyer")).to_contain_text("Acme")
    # The PDF's stylesheet styles the page too (the portal's CSP allows only its own).
    weight = await page.locator("#invoice-number").evaluate("e => getComputedStyle(e).fontWeight")
    assert weight == "700"
    await screenshot(page, "invoice")

    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Download PDF").click()
    download = await downloading.value
    assert download.suggested_filename == "INV-000002.pdf"
    saved = await download.path()
    reader = pypdf.PdfReader(io.BytesIO(saved.read_bytes()))
    text = " ".join(" ".join(p.extract_text() for p in reader.pages).split())
    assert "INV-000002" in text and "Amount due $5.00" in text
    assert "Applied credit balance -$15.00" in text and "Usage: chat (1 call) 1 $20.00" in text


async def test_another_accounts_invoice_is_not_found(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    for path in (f"/invoices/{stack.other_invoice}", f"/invoices/{stack.other_invoice}.pdf"):
        response = await page.goto(stack.url(path))
        assert response is not None and response.status == 404, path
        await expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    response = await page.goto(stack.url("/invoices/not-an-id"))
    assert response is not None and response.status == 404
    # Acme's own draft opens, marked DRAFT, without a number.
    response = await page.goto(stack.url(f"/invoices/{stack.invoices['2027-03']}"))
    assert response is not None and response.status == 200
    await expect(page.get_by_role("heading", level=1)).to_have_text("Draft invoice")
    await expect(page.locator("#invoice-number")).to_have_text("DRAFT")


async def test_every_role_reads_the_invoices_and_their_pdfs(
    stack: Stack, aiohttp_client: Any
) -> None:
    jan = stack.invoices["2027-01"]
    wrong = []
    for role in ROLES:
        client, _ = await _signed_in(stack, aiohttp_client, role)  # type: ignore[arg-type]
        listing = await client.get("/invoices")
        if listing.status != 200 or f"/invoices/{jan}.pdf" not in await listing.text():
            wrong.append(f"/invoices by {role}: {listing.status}")
        charges = await client.get("/invoices?view=charges")
        if charges.status != 200 or 'aria-current="page">Charges</a>' not in await charges.text():
            wrong.append(f"/invoices?view=charges by {role}: {charges.status}")
        pdf = await client.get(f"/invoices/{jan}.pdf")
        body = await pdf.read()
        if (pdf.status, pdf.content_type, body[:5]) != (200, "application/pdf", b"%PDF-"):
            wrong.append(f"the PDF by {role}: {pdf.status} {pdf.content_type}")
        elif pdf.headers["Content-Disposition"] != 'attachment; filename="INV-000002.pdf"':
            wrong.append(f"the PDF by {role}: {pdf.headers['Content-Disposition']}")
    assert wrong == []
