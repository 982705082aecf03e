"""Paying an invoice from the portal (issue 27), the Payment history's Invoices and
Charges views (seed 003) and the overview's figures of the billing period, through the
real portal and admin API on real Postgres and Redis, with the Stripe test double; the
payments in a real chromium too, with the double's Stripe.js (3-D Secure included).

The invoice is a real one: an account with $25 of credits used $30 on 31 December 2026
(booked by a ledger worker), and December was closed and finalized on an injected clock
at 00:02 on 1 January 2027, so it owes $5. Saves docs/screenshots/invoice-paid.png and
invoices-charges.png.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from browser import screenshot
from ledger_fixtures import running_worker
from notifications_support import spend
from payments_support import (
    ACTOR,
    DECLINED_WHEN_CHARGED,
    THREE_D_SECURE,
    VISA,
    Clock,
    authenticate,
)
from playwright.async_api import Page, expect
from portal_support import Provider, csrf_of, portal_settings, seed
from stripe_fixtures import StripeDouble
from test_admin_support import call
from test_invoices import DEC, booked
from test_portal_browser import stat
from test_portal_payments import MAY_PAY, _signed_in, add_card, stripe_env

from admin.app import create_app as create_admin
from admin.services import Services, open_services
from billing.invoices import Closer
from meter.live_state import LiveState
from meter.local_servers import free_port
from meter.money import money, usd
from meter.settings import Settings
from portal.app import create_app as create_portal
from portal.formatting import utc_datetime

USD = usd(1)
NO_OVERAGE_CAP = {
    "overage_line": 50 * USD,
    "daily_hard_limit": None,
    "daily_notify_threshold": None,
}


@dataclass
class Stack:
    provider: Provider
    portal: TestServer
    settings: Settings
    pool: asyncpg.Pool
    live: LiveState
    services: Services
    clock: Clock
    stripe: StripeDouble

    @property
    def account_id(self) -> str:
        return self.provider.account_id

    def url(self, path: str) -> str:
        return str(self.portal.make_url(path))

    async def sign_in(self, page: Page, role: str = "owner") -> None:
        await page.goto(await self.provider.link(role))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    def at(self, moment: datetime) -> None:
        """The portal's, the admin API's and the services' now."""
        self.clock.offset = moment.timestamp() - time.time()

    async def card(self, number: str) -> str:
        """A card attached at Stripe as Stripe.js leaves it, and copied to us."""
        customer = await self.services.payments.customer(self.account_id)
        pm = self.stripe.attach_card(customer, number)
        await self.services.payments.refresh_methods(self.account_id)
        return pm

    async def owing(self, account_id: str | None = None, *, january: int = 0) -> str:
        """$30 of calls on 31 December (and ``january`` micros on 1 January), booked;
        December closed and finalized at 00:02 on 1 January: the invoice's id."""
        aid = account_id or self.account_id
        shard = await self.pool.fetchval("select shard from accounts where id = $1", aid)
        async with running_worker(self.settings):
            await spend(self.live, shard, aid, 30 * USD, DEC.end_day - 1)
            if january:
                await spend(self.live, shard, aid, january, DEC.end_day)
            await booked(self)  # type: ignore[arg-type]
        self.at(DEC.end_at() + timedelta(minutes=2))
        closer = Closer(
            self.pool, self.live, self.settings.replace(invoice_grace=0.0), clock=self.clock
        )
        assert await closer.close_period(DEC, account_id=aid) == 1
        assert await closer.finalize_due() == 1
        return str(await self.pool.fetchval("select id from invoices where account_id = $1", aid))

    async def invoice(self, invoice_id: str) -> asyncpg.Record:
        return await self.pool.fetchrow("select * from invoices where id = $1", invoice_id)

    async def book_balance(self) -> int:
        aid = self.account_id
        return int(await self.pool.fetchval("select balance from accounts where id = $1", aid))

    async def live_balance(self) -> int:
        account = await self.services.provisioning.account(self.account_id)
        state = await self.live.read_account(account.shard, account.id)
        assert state is not None
        return state.balance

    async def invoice_credits(self) -> list[int]:
        rows = await self.pool.fetch(
            "select amount from ledger_entries where account_id = $1 and kind = 'invoice_payment'",
            self.account_id,
        )
        return [r["amount"] for r in rows]

    async def counts(self) -> tuple[int, int, int, int]:
        """What a refused or pointless Pay must leave as it was: ours, and Stripe's."""
        return (
            await self.pool.fetchval("select count(*) from audit_log"),
            await self.pool.fetchval("select count(*) from payments"),
            await self.pool.fetchval("select count(*) from ledger_entries"),
            len(self.stripe.charges()),
        )


@pytest.fixture
async def stack(
    aiohttp_client: Any,
    aiohttp_server: Any,
    redis_url: str,
    database_url: str,
    stripe: StripeDouble,
) -> AsyncIterator[Stack]:
    clock = Clock()
    port = free_port()
    settings = portal_settings(
        redis_url,
        database_url,
        METER_PORTAL_PUBLIC_URL=f"http://127.0.0.1:{port}",
        **stripe_env(stripe),
    )
    portal: TestServer = await aiohttp_server(create_portal(settings, clock=clock), port=port)
    provider = await seed(await aiohttp_client(create_admin(settings, clock=clock)))
    aid = provider.account_id
    await call(provider.admin, "PUT", f"/v1/accounts/{aid}/limits", NO_OVERAGE_CAP, status=200)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    live = LiveState.from_url(redis_url, timeout=2.0)
    services = open_services(pool, live, settings, clock)
    try:
        yield Stack(provider, portal, settings, pool, live, services, clock, stripe)
    finally:
        await services.payments.close()
        await live.close()
        await pool.close()


_FORM = re.compile(r'<form[^>]*id="pay-invoice".*?</form>', re.S)


def pay_form(html: str) -> dict[str, str]:
    """The Pay form's fields as the page rendered them (the default card chosen)."""
    found = _FORM.search(html)
    assert found, "no Pay form on the page"
    form = found.group(0)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form)
    chosen = re.search(r'<option value="([^"]+)" selected>', form)
    assert key and chosen
    return {
        "csrf_token": csrf_of(form),
        "idempotency_key": key.group(1),
        "payment_method": chosen.group(1),
    }


def text_of(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# -- the Pay form, by invoice and by role ---------------------------------------------------


async def test_the_pay_form_is_on_payable_invoices_only_and_for_those_who_may_pay(
    stack: Stack, aiohttp_client: Any
) -> None:
    inv = await stack.owing()
    await stack.card(VISA)
    # January closed and left a draft (its grace is long): not payable.
    jan = DEC.next()
    stack.at(jan.end_at() + timedelta(minutes=2))
    closer = Closer(
        stack.pool, stack.live, stack.settings.replace(invoice_grace=86_400.0), clock=stack.clock
    )
    assert await closer.close_period(jan, account_id=stack.account_id) == 1
    draft = await stack.pool.fetchval("select id from invoices where status = 'draft'")
    wrong = []
    signed = {role: await _signed_in(stack, aiohttp_client, role) for role in MAY_PAY}  # type: ignore[arg-type]
    for role, may in MAY_PAY.items():
        client, _ = signed[role]
        shown = await client.get(f"/invoices/{inv}")
        listing = await (await client.get("/invoices")).text()
        if shown.status != 200 or ('id="pay-invoice"' in await shown.text()) != may:
            wrong.append(f"the Pay form for {role}: {shown.status}, want it {may}")
        if (f'href="/invoices/{inv}#pay"' in listing) != may:
            wrong.append(f"the list's Pay for {role}, want it {may}")
        if 'id="pay-invoice"' in await (await client.get(f"/invoices/{draft}")).text():
            wrong.append(f"a Pay form on the draft for {role}")
        if f'href="/invoices/{draft}#pay"' in listing:
            wrong.append(f"the list's Pay on the draft for {role}")
    assert wrong == []

    owner, _ = signed["owner"]
    form = pay_form(await (await owner.get(f"/invoices/{inv}")).text())
    before = await stack.counts()
    for role in ("admin", "viewer"):  # the form as an owner has it, posted by those who may not
        client, csrf = signed[role]
        refused = await client.post(
            f"/invoices/{inv}/pay", data={**form, "csrf_token": csrf}, allow_redirects=False
        )
        assert refused.status == 403, role
        assert "You may not do this" in await refused.text()
    posted = await owner.post(f"/invoices/{draft}/pay", data=form, allow_redirects=False)
    assert posted.status == 409
    assert (
        "This invoice cannot be paid: it is still a draft, payable once it is finalized."
        " Nothing was charged." in text_of(await posted.text())
    )
    assert await stack.counts() == before
    assert (await stack.invoice(inv))["status"] == "open"


async def test_without_its_csrf_token_nothing_is_charged_and_a_double_submit_charges_once(
    stack: Stack, aiohttp_client: Any
) -> None:
    stack.stripe.configure(idempotency=False)  # once is our doing, not Stripe's
    inv = await stack.owing()
    await stack.card(VISA)
    assert await stack.book_balance() == -5 * USD
    client, _ = await _signed_in(stack, aiohttp_client, "owner")  # type: ignore[arg-type]
    form = pay_form(await (await client.get(f"/invoices/{inv}")).text())
    before = await stack.counts()
    no_token = {k: v for k, v in form.items() if k != "csrf_token"}
    for fields in (no_token, {**form, "csrf_token": "0" * 64}):
        refused = await client.post(f"/invoices/{inv}/pay", data=fields, allow_redirects=False)
        assert refused.status == 403
        assert "This form has expired" in await refused.text()
    assert await stack.counts() == before

    # A double click (at once) and a reload of the POST (later): one payment, one charge.
    sent = await asyncio.gather(
        *(client.post(f"/invoices/{inv}/pay", data=form, allow_redirects=False) for _ in range(3))
    )
    reloaded = await client.post(f"/invoices/{inv}/pay", data=form, allow_redirects=False)
    [payment] = await stack.pool.fetch("select * from payments where invoice_id = $1", inv)
    where = f"/invoices/{inv}?payment={payment['id']}"
    assert [(r.status, r.headers["Location"]) for r in (*sent, reloaded)] == [(303, where)] * 4
    assert payment["status"] == "succeeded" and payment["amount"] == 5 * USD
    assert [c["metadata"]["payment_id"] for c in stack.stripe.charges()] == [payment["id"]]
    assert [c["amount"] for c in stack.stripe.charges()] == [500]
    row = await stack.invoice(inv)
    assert (row["status"], row["amount_paid"]) == ("paid", 5 * USD)
    assert await stack.invoice_credits() == [5 * USD]
    assert await stack.book_balance() == 0 and await stack.live_balance() == 0

    shown = await client.get(where)
    page = text_of(await shown.text())
    assert shown.status == 200
    assert "Paid $5.00 with Visa •••• 4242. The invoice is paid: thank you." in page
    assert 'id="pay-invoice"' not in await shown.text()
    # A new key for a paid invoice: nothing to pay, nothing charged.
    after = await stack.counts()
    again = await client.post(
        f"/invoices/{inv}/pay", data={**form, "idempotency_key": "new"}, allow_redirects=False
    )
    assert again.status == 409
    assert "This invoice cannot be paid: it is already paid." in text_of(await again.text())
    assert await stack.counts() == after


async def test_a_declined_card_leaves_the_invoice_open_and_the_balance_as_it_was(
    stack: Stack, aiohttp_client: Any
) -> None:
    inv = await stack.owing()
    await stack.card(DECLINED_WHEN_CHARGED)  # attaches, and declines when charged
    book, live = await stack.book_balance(), await stack.live_balance()
    client, _ = await _signed_in(stack, aiohttp_client, "billing")  # type: ignore[arg-type]
    form = pay_form(await (await client.get(f"/invoices/{inv}")).text())
    for _ in range(2):  # and the same form again: the same decline, no second try
        declined = await client.post(f"/invoices/{inv}/pay", data=form, allow_redirects=False)
        assert declined.status == 402
        page = await declined.text()
        assert "The payment failed: Your card was declined" in text_of(page)
        assert "Nothing was charged and the invoice is still open." in text_of(page)
    [failed] = await stack.pool.fetch("select * from payments where invoice_id = $1", inv)
    assert failed["status"] == "failed"
    # The page offers Pay again, with a key of its own, and says the charge failed.
    assert pay_form(page)["idempotency_key"] != form["idempotency_key"]
    assert "We could not charge your card for this invoice: $5.00 is still to pay." in (
        text_of(page)
    )
    row = await stack.invoice(inv)
    assert (row["status"], row["amount_paid"], row["paid_at"]) == ("open", 0, None)
    assert await stack.book_balance() == book == -5 * USD
    assert await stack.live_balance() == live
    assert await stack.invoice_credits() == []
    assert stack.stripe.charges() == []


async def test_a_challenge_left_unanswered_is_taken_up_again_by_the_next_pay(
    stack: Stack, aiohttp_client: Any
) -> None:
    """The buyer closed the page during 3-D Secure: the payment waits (one in flight per
    invoice), and Pay, with a fresh form, brings back its challenge, not a second charge."""
    inv = await stack.owing()
    await stack.card(THREE_D_SECURE)
    client, _ = await _signed_in(stack, aiohttp_client, "owner")  # type: ignore[arg-type]
    first = await client.post(
        f"/invoices/{inv}/pay", data=pay_form(await (await client.get(f"/invoices/{inv}")).text())
    )
    [waiting] = await stack.pool.fetch("select * from payments where invoice_id = $1", inv)
    assert (first.status, waiting["status"]) == (200, "requires_action")
    assert 'id="authenticate"' in await first.text()
    again = await client.post(
        f"/invoices/{inv}/pay", data=pay_form(await (await client.get(f"/invoices/{inv}")).text())
    )
    page = await again.text()
    assert again.status == 200
    action = f'action="/invoices/{inv}/payments/{waiting["id"]}/complete"'
    assert f'<form id="authenticate" method="post" {action}' in page
    secret = re.search(r'data-client-secret="([^"]+)"', page)
    assert secret
    assert await stack.pool.fetchval("select count(*) from payments") == 1
    await authenticate(stack.stripe, waiting["stripe_payment_intent"], secret.group(1))
    done = await client.post(
        f"/invoices/{inv}/payments/{waiting['id']}/complete",
        data={"csrf_token": csrf_of(page)},
        allow_redirects=False,
    )
    assert done.status == 303
    assert done.headers["Location"] == f"/invoices/{inv}?payment={waiting['id']}"
    assert (await stack.invoice(inv))["status"] == "paid"
    assert await stack.invoice_credits() == [5 * USD]
    assert [c["amount"] for c in stack.stripe.charges()] == [500]


async def test_another_accounts_invoice_is_not_found_and_not_paid(
    stack: Stack, aiohttp_client: Any
) -> None:
    admin = stack.provider.admin
    other = await call(admin, "POST", "/v1/accounts", {"name": "Other"}, status=201)
    await call(admin, "PUT", f"/v1/accounts/{other['id']}/limits", NO_OVERAGE_CAP, status=200)
    theirs = await stack.owing(other["id"])  # $30 of overage owed, open
    ours = await stack.owing()
    await stack.card(VISA)
    client, _ = await _signed_in(stack, aiohttp_client, "owner")  # type: ignore[arg-type]
    form = pay_form(await (await client.get(f"/invoices/{ours}")).text())
    before = await stack.counts()
    paid = await client.post(f"/invoices/{ours}/pay", data=form, allow_redirects=False)
    [ours_paid] = await stack.pool.fetch("select id from payments where invoice_id = $1", ours)
    after = await stack.counts()
    for method, path in (
        ("GET", f"/invoices/{theirs}"),
        ("GET", f"/invoices/{ours}?payment=pay_nosuch"),
        ("POST", f"/invoices/{theirs}/pay"),
        ("POST", f"/invoices/{theirs}/payments/{ours_paid['id']}/complete"),
    ):
        data = form if method == "POST" else None
        response = await client.request(method, path, data=data, allow_redirects=False)
        assert response.status == 404, path
        assert "Not found" in await response.text()
    assert paid.status == 303 and after != before
    assert await stack.counts() == after
    assert (await stack.invoice(theirs))["status"] == "open"


# -- the Payment history: Invoices or Charges -------------------------------------------------


def history(html: str) -> str:
    return html[html.index('id="payment-history"') :]


def current_view(html: str) -> str:
    [view] = re.findall(r'aria-current="page">([^<]+)</a>', history(html))
    return str(view)


async def test_the_payment_history_shows_the_paid_invoices_or_every_charge(
    stack: Stack, aiohttp_client: Any
) -> None:
    inv = await stack.owing()
    await stack.card(VISA)
    bought = await stack.services.payments.purchase(
        ACTOR, stack.account_id, amount=7 * USD, idempotency_key="buy"
    )
    assert bought.payment.status == "succeeded"
    client, _ = await _signed_in(stack, aiohttp_client, "viewer")  # type: ignore[arg-type]
    owner, _ = await _signed_in(stack, aiohttp_client, "owner")  # type: ignore[arg-type]
    form = pay_form(await (await owner.get(f"/invoices/{inv}")).text())
    assert (
        await owner.post(f"/invoices/{inv}/pay", data=form, allow_redirects=False)
    ).status == 303
    number = (await stack.invoice(inv))["number"]
    paid = await stack.pool.fetchrow("select * from payments where invoice_id = $1", inv)

    for path in ("/invoices", "/invoices?view=invoices", "/invoices?view=bogus", "/invoices?view="):
        response = await client.get(path)
        assert response.status == 200, path
        html = await response.text()
        assert current_view(html) == "Invoices", path
        assert f'href="/invoices/{inv}">{number}</a>' in history(html)
        assert "Credit purchase" not in history(html)
    assert 'href="/invoices?view=charges#payment-history"' in html

    response = await client.get("/invoices?view=charges")
    html = await response.text()
    assert current_view(html) == "Charges"
    rows = [text_of(r) for r in re.findall(r"<tr>(.*?)</tr>", history(html), re.S)]
    assert rows[1:] == [  # newest first, after the header
        f"{utc_datetime(paid['created_at'])} Invoice {number} Visa •••• 4242 $5.00 succeeded"
        f" {paid['stripe_payment_intent']}",
        f"{utc_datetime(bought.payment.created_at)} Credit purchase Visa •••• 4242 $7.00"
        f" succeeded {bought.payment.stripe_payment_intent}",
    ]
    assert f'<a href="/invoices/{inv}">Invoice {number}</a>' in history(html)
    # The Add credits page lists the same charges, the invoice's named as such.
    credits = text_of(await (await client.get("/credits")).text())
    assert f"Invoice {number}" not in credits and "Invoice payment Visa •••• 4242 $5.00" in credits


# -- paying in the browser --------------------------------------------------------------------


async def test_the_upcoming_invoice_is_paid_with_a_card_and_the_balance_is_back_at_zero(
    stack: Stack, page: Page
) -> None:
    inv = await stack.owing()
    number = (await stack.invoice(inv))["number"]
    await stack.sign_in(page)
    await add_card(page, stack, VISA)  # through the page and the double's Stripe.js
    await page.get_by_role("link", name="Invoices", exact=True).click()
    await expect(page.locator("#action-required")).to_contain_text("Nothing is past due.")
    row = page.locator("#upcoming tbody tr", has_text=number)
    await expect(row).to_contain_text("15 Jan 2027")
    await expect(row).to_contain_text("$5.00")
    await row.get_by_role("link", name="Pay").click()

    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Invoice {number}")
    await expect(page.get_by_label("Card")).to_have_value(
        await stack.pool.fetchval("select id from payment_methods where is_default")
    )
    await page.get_by_label("Card").select_option(label="Visa •••• 4242 (default)")
    await page.get_by_role("button", name="Pay $5.00").click()
    result = page.locator("#payment-result")
    await expect(result).to_have_text(
        "Paid $5.00 with Visa •••• 4242. The invoice is paid: thank you."
    )
    await expect(page.locator("#invoice-status")).to_have_text("Paid")
    totals = page.locator("#invoice-totals")
    await expect(totals.locator("tr", has_text="Amount remaining")).to_contain_text("$0.00")
    await expect(page.locator("#pay-invoice")).to_have_count(0)
    paid = await stack.pool.fetchrow("select * from payments where invoice_id = $1", inv)
    assert page.url == stack.url(f"/invoices/{inv}?payment={paid['id']}")
    await screenshot(page, "invoice-paid")

    await page.get_by_role("link", name="All invoices").click()
    await expect(page.locator("#upcoming tbody tr", has_text=number)).to_have_count(0)
    paid_row = page.locator("#payment-history tbody tr", has_text=number)
    # Its payment date: today by the portal's clock (the injected one), as finalization's.
    await expect(paid_row.locator("td").nth(2)).to_have_text("1 Jan 2027")
    await page.locator("#payment-history").get_by_role("link", name="Charges").click()
    await expect(
        page.locator("#payment-history").get_by_role("link", name="Charges")
    ).to_have_attribute("aria-current", "page")
    charge = page.locator("#payment-history tbody tr").first
    for shown in (f"Invoice {number}", "Visa •••• 4242", "$5.00", "succeeded"):
        await expect(charge).to_contain_text(shown)
    await page.evaluate("window.scrollTo(0, 0)")  # the link's #payment-history scrolled
    await screenshot(page, "invoices-charges")

    row = await stack.invoice(inv)
    assert (row["status"], row["amount_paid"]) == ("paid", 5 * USD)
    assert await stack.invoice_credits() == [5 * USD]
    assert await stack.book_balance() == 0 and await stack.live_balance() == 0  # to the micro
    assert [c["amount"] for c in stack.stripe.charges()] == [500]
    await page.get_by_role("link", name="Overview").click()
    await expect(stat(page, "Remaining credits")).to_have_text("$0.00")


async def test_a_3d_secure_card_fails_the_challenge_then_passes_it_and_pays_once(
    stack: Stack, page: Page
) -> None:
    inv = await stack.owing()
    number = (await stack.invoice(inv))["number"]
    await stack.card(THREE_D_SECURE)
    stack.at((await stack.invoice(inv))["due_at"] + timedelta(days=1))  # past due
    await stack.sign_in(page)
    await page.get_by_role("link", name="Invoices", exact=True).click()
    row = page.locator("#action-required tbody tr", has_text=number)
    await expect(row).to_contain_text("Past due")
    await row.get_by_role("link", name="Pay").click()
    await expect(page.get_by_role("alert")).to_contain_text("This invoice is past due")

    # payments.js runs confirmCardPayment at once: the double's challenge dialog.
    await page.get_by_role("button", name="Pay $5.00").click()
    async with page.expect_response(lambda r: "/complete" in r.url) as completed:
        await page.get_by_role("button", name="Fail authentication").click()
    assert (await completed.value).status == 402
    await expect(page.locator(".flash-error")).to_contain_text("The payment failed")
    assert (await stack.invoice(inv))["status"] == "open"
    assert await stack.book_balance() == -5 * USD and await stack.invoice_credits() == []

    await page.get_by_role("button", name="Pay $5.00").click()  # the page offers it again
    await page.get_by_role("button", name="Complete authentication").click()
    await expect(page.locator("#payment-result")).to_have_text(
        "Paid $5.00 with Visa •••• 3155. The invoice is paid: thank you."
    )
    await page.reload()  # the result page asks again: still one credit
    await expect(page.locator("#payment-result")).to_contain_text("The invoice is paid")
    statuses = await stack.pool.fetch(
        "select status from payments where invoice_id = $1 order by created_at", inv
    )
    assert [r["status"] for r in statuses] == ["failed", "succeeded"]
    assert await stack.invoice_credits() == [5 * USD]
    assert await stack.book_balance() == 0 and await stack.live_balance() == 0
    assert [c["amount"] for c in stack.stripe.charges()] == [500]  # the succeeded ones
    await page.get_by_role("link", name="All invoices").click()
    await expect(page.locator("#action-required")).to_contain_text("Nothing is past due.")
    await expect(page.locator("#payment-history tbody tr", has_text=number)).to_have_count(1)


# -- the overview's period ----------------------------------------------------------------------


async def test_the_overview_shows_the_periods_usage_and_estimate_as_the_service_has_them(
    stack: Stack, page: Page
) -> None:
    await stack.owing(january=3 * USD)  # and $3 on 1 January, the running period's
    await stack.sign_in(page)
    up = await stack.services.invoices.upcoming(stack.account_id)
    period, estimate = await stack.services.invoices.estimated_spend(stack.account_id)
    # January so far: $3 of usage, all beyond the credits (December's invoice bills the rest).
    assert (up.due.usage, up.due.amount_due) == (3 * USD, 3 * USD)
    assert estimate.forecast == 3 * USD + 30 * 3 * USD  # today's rate for the 30 days left
    card = page.locator("#this-period")
    await expect(card).to_contain_text("1 Jan 2027 to 31 Jan 2027 (UTC)")
    await expect(stat(page, "Usage this period")).to_have_text(money(up.due.usage))
    await expect(card).to_contain_text("it will be on your next invoice")
    await expect(stat(page, "Estimated monthly spend")).to_have_text(money(estimate.forecast))
    await expect(stat(page, "Due on your next invoice so far")).to_have_text(
        money(up.due.amount_due)
    )
    await expect(page.locator("#estimate-method")).to_contain_text(estimate.method)
    assert period == up.period
    await card.get_by_role("link", name="View invoices").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Invoices")
