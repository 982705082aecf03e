"""The portal's payment pages: payment methods, add credits, auto recharge.

Pure parts first (dollars typed into forms, the Content-Security-Policy), then the
pages through the real portal and admin API on real Postgres and Redis, paying the
Stripe test double (tests/stripe_fixtures.py) with the real ``stripe`` library on
our side and the double's Stripe.js in a real chromium on the customer's side.
Saves docs/screenshots/payment-methods.png, add-credits.png and auto-recharge.png.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from browser import screenshot
from playwright.async_api import Page, expect
from portal_support import Provider, csrf_of, path_of, portal_settings, seed
from stripe_fixtures import StripeDouble
from test_admin_support import call

from admin.app import create_app as create_admin
from meter.local_servers import free_port
from meter.money import money
from meter.settings import Settings
from portal import csp
from portal.app import create_app as create_portal
from portal.forms import NOT_DOLLARS, SUB_CENT, dollars

VISA = "4242424242424242"
THREE_D_SECURE = "4000002500003155"
DECLINED_ON_CHARGE = "4000000000000341"
WEBHOOK_SECRET = "whsec_portal_payments_test"

# -- dollars typed into a form -----------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "micros"),
    [
        ("5", 5_000_000),
        ("5.00", 5_000_000),
        ("5.5", 5_500_000),
        ("0.01", 10_000),
        ("1,000.50", 1_000_500_000),
        ("$25", 25_000_000),
        (" 7 ", 7_000_000),
        ("1,000,000", 1_000_000_000_000),
        ("999999999999999.99", 999_999_999_999_999_990_000),
    ],
)
def test_dollars_become_exact_micros(typed: str, micros: int) -> None:
    assert dollars(typed) == micros


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("5.001", SUB_CENT),
        ("1,000.505", SUB_CENT),
        ("-5", NOT_DOLLARS),
        ("abc", NOT_DOLLARS),
        ("5.", NOT_DOLLARS),
        ("1,00", NOT_DOLLARS),
        ("1e3", NOT_DOLLARS),
        ("5 000", NOT_DOLLARS),
        ("١٢", NOT_DOLLARS),  # other scripts' digits are not our dollars
        ("1" * 16, NOT_DOLLARS),
        ("", "Required."),
    ],
)
def test_what_is_not_dollars_says_why(typed: str, why: str) -> None:
    assert dollars(typed) == why


# -- the Content-Security-Policy ----------------------------------------------------------


def _policy(**env: str) -> dict[str, str]:
    settings = Settings.from_env({"METER_DATABASE_URL": "postgresql://x/y", **env})
    directives = (d.strip().split(" ", 1) for d in csp.stripe_policy(settings).split(";"))
    return {name: value for name, value in directives}


def test_the_card_pages_allow_stripe_js_from_the_settings_and_never_inline() -> None:
    double = _policy(
        METER_STRIPE_JS_URL="http://127.0.0.1:9911/js.stripe.com/v3/",
        METER_STRIPE_API_BASE="http://127.0.0.1:9911",
    )
    assert double["script-src"] == "'self' http://127.0.0.1:9911"
    assert double["frame-src"] == "http://127.0.0.1:9911"
    assert double["connect-src"] == "http://127.0.0.1:9911"
    assert double["default-src"] == "'none'" and double["form-action"] == "'self'"
    real = _policy()
    assert real["script-src"] == "'self' https://js.stripe.com"
    assert real["frame-src"] == "https://js.stripe.com https://hooks.stripe.com"
    assert real["connect-src"] == "https://api.stripe.com"
    for policy in (double, real):
        assert not any("unsafe" in value for value in policy.values())
    assert "script-src" not in csp.POLICY


def test_an_origin_that_would_write_another_directive_is_refused() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        csp.origin("https://js.stripe.com;script-src *")


# -- the pages, with Stripe's double -------------------------------------------------------


def stripe_env(stripe: StripeDouble) -> dict[str, str]:
    return {
        "METER_STRIPE_SECRET_KEY": stripe.secret_key,
        "METER_STRIPE_PUBLISHABLE_KEY": stripe.publishable_key,
        "METER_STRIPE_API_BASE": stripe.api_base,
        "METER_STRIPE_JS_URL": f"{stripe.url}/js.stripe.com/v3/",
        "METER_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


@dataclass
class Stack:
    provider: Provider
    portal: TestServer
    pool: asyncpg.Pool
    stripe: StripeDouble

    def url(self, path: str) -> str:
        return str(self.portal.make_url(path))

    async def sign_in(self, page: Page, role: str = "owner") -> None:
        await page.goto(await self.provider.link(role))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    async def balance(self) -> int:
        aid = self.provider.account_id
        found = await call(self.provider.admin, "GET", f"/v1/accounts/{aid}/balance", status=200)
        return int(found["balance"])

    async def credits_of(self, payment_id: str) -> int:
        """Ledger entries a payment made: exactly one once it succeeded, else none."""
        n = await self.pool.fetchval(
            "select count(*) from ledger_entries where idempotency_key = $1", payment_id
        )
        return int(n)

    async def payments(self) -> list[asyncpg.Record]:
        return await self.pool.fetch("select * from payments order by created_at")  # type: ignore[no-any-return]


async def _stack(
    aiohttp_client: Any,
    aiohttp_server: Any,
    redis_url: str,
    database_url: str,
    env: dict[str, str],
    stripe: StripeDouble | None,
) -> AsyncIterator[Stack]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = portal_settings(redis_url, database_url, METER_PORTAL_PUBLIC_URL=public, **env)
    portal: TestServer = await aiohttp_server(create_portal(settings, clock=time.time), port=port)
    admin_settings = portal_settings(redis_url, database_url, METER_PORTAL_PUBLIC_URL=public, **env)
    provider = await seed(await aiohttp_client(create_admin(admin_settings, clock=time.time)))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield Stack(provider, portal, pool, stripe)  # type: ignore[arg-type]
    finally:
        await pool.close()


@pytest.fixture
async def stack(
    aiohttp_client: Any,
    aiohttp_server: Any,
    redis_url: str,
    database_url: str,
    stripe: StripeDouble,
) -> AsyncIterator[Stack]:
    env = stripe_env(stripe)
    async for s in _stack(aiohttp_client, aiohttp_server, redis_url, database_url, env, stripe):
        stripe.register_webhook(s.url("/stripe/webhook"), WEBHOOK_SECRET)
        yield s


@pytest.fixture
async def unpaid_stack(
    aiohttp_client: Any, aiohttp_server: Any, redis_url: str, database_url: str
) -> AsyncIterator[Stack]:
    """A portal without a Stripe key: the payment pages say so."""
    async for s in _stack(aiohttp_client, aiohttp_server, redis_url, database_url, {}, None):
        yield s


async def add_card(page: Page, stack: Stack, number: str, name: str = "Ada Lovelace") -> None:
    """Through the page and the double's Stripe.js card element, as a person would."""
    await page.goto(stack.url("/payment-methods"))
    await page.get_by_role("button", name="Add new credit card").click()
    await page.get_by_label("Name on card").fill(name)
    element = page.locator("#card-element")
    await element.get_by_placeholder("number").fill(number)
    await element.get_by_placeholder("exp_month").fill("12")
    await element.get_by_placeholder("exp_year").fill("34")
    await element.get_by_placeholder("cvc").fill("123")
    await element.get_by_placeholder("postal_code").fill("10115")
    await page.get_by_role("button", name="Save card").click()
    if number == THREE_D_SECURE:  # the card asks for authentication when saved, too
        await page.get_by_role("button", name="Complete authentication").click()
    await expect(page.get_by_text("Card added.")).to_be_visible()


async def buy(page: Page, stack: Stack, amount: str, card: str | None = None) -> None:
    await page.goto(stack.url("/credits"))
    await page.get_by_label("Payment amount (USD)").fill(amount)
    if card is not None:
        await page.get_by_label("Payment method").select_option(label=card)
    await page.get_by_role("button", name="Add to my balance").click()


def row_of(page: Page, last4: str) -> Any:
    return page.locator("table tbody tr", has_text=f"•••• {last4}")


async def test_a_card_is_added_with_stripe_js_and_five_dollars_bought_with_it(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    before = await stack.balance()
    await add_card(page, stack, VISA)
    row = row_of(page, "4242")
    await expect(row).to_contain_text("Visa")
    await expect(row).to_contain_text("Ada Lovelace")
    await expect(row).to_contain_text("12/2034")
    await expect(row.locator(".badge")).to_have_text("Default")
    await screenshot(page, "payment-methods")

    await buy(page, stack, "5")
    result = page.locator("#payment-result")
    after = before + 5_000_000
    await expect(result).to_contain_text(
        f"Added $5.00 to your balance with Visa •••• 4242. Your balance is now {money(after)}."
    )
    assert await stack.balance() == after
    (paid,) = await stack.payments()
    assert paid["status"] == "succeeded" and paid["amount"] == 5_000_000
    assert await stack.credits_of(paid["id"]) == 1
    assert [c["amount"] for c in stack.stripe.charges()] == [500]  # cents, succeeded
    charges = page.locator("table tbody tr")
    await expect(charges.first).to_contain_text("succeeded")
    await expect(charges.first).to_contain_text(paid["stripe_payment_intent"])
    await screenshot(page, "add-credits")

    await page.get_by_role("link", name="Balance history").click()
    line = page.locator("table tbody tr").first
    await expect(line).to_contain_text(re.compile(r"Card payment pi_\w+ \(visa 4242\)"))
    await expect(line).to_contain_text("+$5.00")


async def test_a_reload_or_double_submit_of_the_buy_form_charges_once(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await add_card(page, stack, VISA)
    await page.goto(stack.url("/credits"))
    form = page.locator("#buy-credits")
    fields = {
        "csrf_token": await form.locator("[name=csrf_token]").get_attribute("value") or "",
        "idempotency_key": await form.locator("[name=idempotency_key]").get_attribute("value")
        or "",
        "amount": "7.50",
        "payment_method": await page.get_by_label("Payment method").input_value(),
    }
    before = await stack.balance()
    for _ in range(3):  # what a double click and a reload of the POST send
        sent = await page.request.post(stack.url("/credits"), form=fields, max_redirects=0)
        assert sent.status == 303
    (paid,) = await stack.payments()
    assert sent.headers["location"] == f"/credits?payment={paid['id']}"
    assert await stack.balance() == before + 7_500_000
    assert await stack.credits_of(paid["id"]) == 1
    assert [c["metadata"]["payment_id"] for c in stack.stripe.charges()] == [paid["id"]]
    # A fresh rendering has a fresh key: a second purchase on purpose is a purchase.
    await page.reload()
    again = await page.locator("#buy-credits [name=idempotency_key]").get_attribute("value")
    assert again and again != fields["idempotency_key"]


async def test_a_3d_secure_card_passes_the_challenge_and_is_credited_once(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await add_card(page, stack, THREE_D_SECURE)
    before = await stack.balance()
    await buy(page, stack, "12.34")
    # payments.js runs confirmCardPayment at once: the double's challenge dialog.
    await page.get_by_role("button", name="Complete authentication").click()
    result = page.locator("#payment-result")
    await expect(result).to_contain_text("Added $12.34 to your balance with Visa •••• 3155.")
    (paid,) = await stack.payments()
    assert paid["status"] == "succeeded"
    # The completion route, the webhook and a reload all settle it: one credit.
    await page.reload()
    await expect(result).to_contain_text("Added $12.34")
    assert await stack.credits_of(paid["id"]) == 1
    assert await stack.balance() == before + 12_340_000


async def test_a_failed_challenge_fails_the_payment_and_credits_nothing(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await add_card(page, stack, THREE_D_SECURE)
    before = await stack.balance()
    await buy(page, stack, "6")
    await page.get_by_role("button", name="Fail authentication").click()
    await expect(page.locator("#payment-result")).to_contain_text("The payment of $6.00")
    await expect(page.locator("#payment-result")).to_contain_text("Nothing was added")
    (failed,) = await stack.payments()
    assert failed["status"] == "failed"
    assert await stack.credits_of(failed["id"]) == 0
    assert await stack.balance() == before


async def test_a_card_declined_when_charged_shows_the_reason_and_credits_nothing(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    await add_card(page, stack, DECLINED_ON_CHARGE)  # 0341 attaches, and declines charges
    before = await stack.balance()
    await buy(page, stack, "5")
    result = page.locator("#payment-result")
    await expect(result).to_contain_text("The payment of $5.00 with Visa •••• 0341 failed:")
    (failed,) = await stack.payments()
    assert failed["status"] == "failed" and failed["failure_message"]
    await expect(result).to_contain_text(failed["failure_message"])
    await expect(result).to_contain_text("Nothing was added to your balance.")
    assert await stack.credits_of(failed["id"]) == 0
    assert await stack.balance() == before
    await expect(page.locator("table tbody tr").first).to_contain_text("failed")


async def test_crypto_goes_by_stripes_checkout_and_is_credited_on_return(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    before = await stack.balance()
    await buy(page, stack, "40", card="Cryptocurrency")  # no card needed
    await page.get_by_role("link", name="Continue to checkout").click()
    await page.get_by_role("button", name="Pay with crypto").click()  # the double's page
    result = page.locator("#payment-result")
    await expect(result).to_contain_text(f"Your balance is now {money(before + 40_000_000)}.")
    (paid,) = await stack.payments()
    assert (paid["method"], paid["status"]) == ("crypto", "succeeded")
    assert page.url == stack.url(f"/credits?paid={paid['id']}")
    assert await stack.credits_of(paid["id"]) == 1


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("5.001", "Enter whole cents: at most two digits after the point."),
        ("-5", "Enter an amount in dollars and cents, like 25 or 25.00."),
        ("abc", "Enter an amount in dollars and cents, like 25 or 25.00."),
        ("4.99", "Enter an amount between $5.00 and $5,000.00."),
        ("5,000.01", "Enter an amount between $5.00 and $5,000.00."),
        ("", "Required."),
    ],
)
async def test_a_bad_amount_is_shown_beside_its_field_and_charges_nothing(
    stack: Stack, page: Page, typed: str, error: str
) -> None:
    await stack.sign_in(page)
    await add_card(page, stack, VISA)
    await page.goto(stack.url("/credits"))
    await expect(page.get_by_text("Enter an amount between $5.00 and $5,000.00.")).to_be_visible()
    await page.get_by_label("Payment amount (USD)").fill(typed)
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Add to my balance").click()
    assert (await posted.value).status == 422
    await expect(page.locator("#field-amount-error")).to_have_text(error)
    await expect(page.get_by_label("Payment amount (USD)")).to_have_attribute(
        "aria-invalid", "true"
    )
    await expect(page.get_by_label("Payment amount (USD)")).to_have_value(typed)
    assert await stack.payments() == []
    assert stack.stripe.charges() == []


async def test_set_default_and_delete_and_the_default_kept_while_auto_recharge_is_on(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page, "billing")  # billing holds payments:write, as owners do
    await add_card(page, stack, VISA)
    await add_card(page, stack, DECLINED_ON_CHARGE, name="Second Card")
    first, second = row_of(page, "4242"), row_of(page, "0341")
    await expect(first.locator(".badge")).to_have_text("Default")
    await second.get_by_role("button", name="Set as default").click()
    await expect(page.get_by_text("Default card changed.")).to_be_visible()
    await expect(second.locator(".badge")).to_have_text("Default")
    await expect(first.get_by_role("button", name="Set as default")).to_be_visible()
    defaults = await stack.pool.fetch("select last4 from payment_methods where is_default")
    assert [r["last4"] for r in defaults] == ["0341"]

    await first.get_by_role("button", name="Delete").click()
    await expect(page.get_by_text("Card deleted.")).to_be_visible()
    await expect(first).to_have_count(0)

    await page.get_by_role("link", name="Auto recharge").click()
    await page.get_by_label("Auto recharge", exact=True).check()
    await page.get_by_label("When the balance falls below (USD)").fill("2")
    await page.get_by_label("Amount to add (USD)").fill("10")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Auto recharge saved.")).to_be_visible()

    await page.get_by_role("link", name="Payment methods").click()
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await row_of(page, "0341").get_by_role("button", name="Delete").click()
    assert (await posted.value).status == 409
    await expect(page.get_by_role("alert")).to_contain_text(
        "this card is the default, which auto-recharge charges"
    )
    await expect(row_of(page, "0341")).to_have_count(1)
    left = await stack.pool.fetchval(
        "select count(*) from payment_methods where detached_at is null"
    )
    assert left == 1


async def test_auto_recharge_saves_and_shows_its_state(stack: Stack, page: Page) -> None:
    await stack.sign_in(page)
    await expect(page.locator("#recharge-state")).to_contain_text("Auto recharge is off.")
    await page.get_by_role("link", name="Auto recharge").click()
    await page.get_by_label("Auto recharge", exact=True).check()
    await page.get_by_label("When the balance falls below (USD)").fill("3")
    await page.get_by_label("Amount to add (USD)").fill("20")
    await page.get_by_role("button", name="Save changes").click()
    # Enabling without a card is refused by the service, and the page says why.
    await expect(page.get_by_role("alert")).to_contain_text("add a card first")
    assert await stack.pool.fetchval("select count(*) from auto_recharge") == 0

    await add_card(page, stack, VISA)
    await page.goto(stack.url("/auto-recharge"))
    await page.get_by_label("Auto recharge", exact=True).check()
    await page.get_by_label("When the balance falls below (USD)").fill("3")
    await page.get_by_label("tops up to a target balance").check()
    await page.get_by_label("Target balance (USD)").fill("2.50")  # not above the threshold
    await page.get_by_label("At most this many recharges a day").fill("many")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#field-max_per_day-error")).to_have_text(
        "Enter a whole number from 1 to 1000, or leave it empty."
    )
    await page.get_by_label("At most this many recharges a day").fill("2")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.locator("#field-target_balance-error")).to_have_text(
        "must be above the threshold"
    )
    await page.get_by_label("Target balance (USD)").fill("1,000")
    await page.get_by_label("At most this much a day (USD)").fill("2,000")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Auto recharge saved.")).to_be_visible()
    state = page.locator("#recharge-state")
    await expect(state.locator(".badge")).to_have_text("Enabled")
    await expect(state).to_contain_text(
        "Below $3.00, we top the balance up to $1,000.00 from Visa •••• 4242."
    )
    await expect(page.get_by_label("Target balance (USD)")).to_have_value("1,000.00")
    await expect(page.get_by_label("At most this many recharges a day")).to_have_value("2")
    saved = await stack.pool.fetchrow("select * from auto_recharge")
    assert (saved["enabled"], saved["threshold"], saved["amount"]) == (True, 3_000_000, None)
    assert (saved["target_balance"], saved["max_per_day"]) == (1_000_000_000, 2)
    assert saved["max_amount_per_day"] == 2_000_000_000
    await screenshot(page, "auto-recharge")

    # Paused by failures: the page says since when and why; the overview says it too.
    await stack.pool.execute(
        "update auto_recharge set paused_at = now(), consecutive_failures = 3,"
        " pause_reason = '3 recharges failed in a row; last: Your card was declined.'"
    )
    await page.reload()
    await expect(state.locator(".badge")).to_have_text("Paused")
    await expect(state).to_contain_text(
        "3 recharges failed in a row; last: Your card was declined."
    )
    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("#recharge-state .badge")).to_have_text("Paused")
    await expect(page.locator("#default-card")).to_contain_text("Visa •••• 4242")


async def test_the_card_pages_alone_relax_the_policy_for_stripe_js(
    stack: Stack, page: Page
) -> None:
    await stack.sign_in(page)
    listed = await page.goto(stack.url("/payment-methods"))
    assert listed is not None
    assert listed.headers["content-security-policy"] == csp.POLICY
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Add new credit card").click()
    policy = (await posted.value).headers["content-security-policy"]
    assert f"script-src 'self' {stack.stripe.url};" in policy
    assert "unsafe" not in policy
    assert await page.locator("script:not([src])").count() == 0  # no inline script at all
    form = page.locator("#card-setup")
    await expect(form).to_have_attribute("data-publishable-key", stack.stripe.publishable_key)
    await expect(form).to_have_attribute("data-client-secret", re.compile(r"^seti_\w+_secret_"))
    overview = await page.goto(stack.url("/"))
    assert overview is not None and overview.headers["content-security-policy"] == csp.POLICY


# -- who may: the viewer, and the route x role matrix ---------------------------------------

# Every payment route that changes something, with a form that would do it; delete
# last, so the writers' purchases still have the card. The owner pays the invoice; the
# billing member then finds it paid (409, not refused).
WRITES: list[tuple[str, dict[str, str]]] = [
    ("/payment-methods/setup", {}),
    ("/payment-methods", {"setup_intent_id": "seti_x"}),
    ("/payment-methods/{pm}/default", {}),
    ("/credits", {"amount": "5", "payment_method": "{pm}", "idempotency_key": "k-{role}"}),
    ("/credits/payments/{payment}/complete", {}),
    ("/invoices/{invoice}/pay", {"payment_method": "{pm}", "idempotency_key": "i-{role}"}),
    ("/invoices/{invoice}/payments/{payment}/complete", {}),
    ("/auto-recharge", {"enabled": "on", "threshold": "1", "mode": "amount", "amount": "5"}),
    ("/payment-methods/{pm}/delete", {}),
]
READS = [
    "/payment-methods",
    "/credits",
    "/auto-recharge",
    "/",
    "/invoices",
    "/invoices?view=charges",
    "/invoices/{invoice}",
]
MAY_PAY = {"owner": True, "billing": True, "admin": False, "viewer": False}


async def _signed_in(stack: Stack, aiohttp_client: Any, role: str) -> tuple[Any, str]:
    client: TestClient[Any, Any] = await aiohttp_client(stack.portal)
    response = await client.get(path_of(await stack.provider.link(role)), allow_redirects=False)
    assert response.status == 303
    return client, csrf_of(await (await client.get("/")).text())


async def _owed_invoice(stack: Stack) -> str:
    """An open invoice owing $1 of an earlier period, as a close and finalization leave
    it (the close itself is tested in test_invoices; paying one, in
    test_portal_invoice_payments)."""
    await stack.pool.execute(
        "insert into invoices (id, account_id, period_start, period_end, status, number,"
        " usage_amount, credits_applied, amount_due, balance_at_end, finalize_after,"
        " finalized_at) values ('inv_roles', $1, '2026-01-01', '2026-02-01', 'open',"
        " 'ROLES-1', 1000000, 0, 1000000, -1000000, now(), now())",
        stack.provider.account_id,
    )
    return "inv_roles"


async def _counts(stack: Stack) -> tuple[int, int, int, int]:
    """What a refused write must leave as it was: ours, and Stripe's."""
    return (
        await stack.pool.fetchval("select count(*) from audit_log"),
        await stack.pool.fetchval("select count(*) from payments"),
        await stack.pool.fetchval("select count(*) from auto_recharge"),
        len(stack.stripe.charges()),
    )


async def test_the_payment_routes_by_role(stack: Stack, aiohttp_client: Any, page: Page) -> None:
    """Reads for every role; writes for owner and billing only, and a refused write
    changes nothing (no payment, no audit entry, nothing at Stripe)."""
    await stack.sign_in(page)
    await add_card(page, stack, VISA)
    await buy(page, stack, "5")
    await expect(page.locator("#payment-result")).to_contain_text("Added $5.00")
    pm = await stack.pool.fetchval("select id from payment_methods")
    payment = await stack.pool.fetchval("select id from payments")
    invoice = await _owed_invoice(stack)
    signed = {role: await _signed_in(stack, aiohttp_client, role) for role in MAY_PAY}
    wrong: list[str] = []
    for role, (client, _) in signed.items():
        for template in READS:
            path = template.format(invoice=invoice)
            response = await client.get(path)
            if response.status != 200:
                wrong.append(f"GET {path} by {role}: {response.status}")
    for template, form in WRITES:
        for role, (client, csrf) in signed.items():
            ids = {"pm": pm, "payment": payment, "invoice": invoice, "role": role}
            path = template.format(**ids)
            data = {k: v.format(**ids) for k, v in form.items()}
            before = await _counts(stack)
            response = await client.post(
                path, data={**data, "csrf_token": csrf}, allow_redirects=False
            )
            if MAY_PAY[role]:
                if response.status == 403:
                    wrong.append(f"POST {path} by {role}: refused")
                continue
            if response.status != 403:
                wrong.append(f"POST {path} by {role}: {response.status}, want 403")
            elif "You may not do this" not in await response.text():
                wrong.append(f"POST {path} by {role}: not the refusal page")
            if await _counts(stack) != before:
                wrong.append(f"POST {path} by {role}: refused, yet something changed")
    assert wrong == [], "\n".join(wrong)
    # The writers' half did write: a second purchase each, one Stripe charge each, and
    # the owner's payment of the invoice.
    purposes = await stack.pool.fetch(
        "select purpose, idempotency_key from payments order by created_at"
    )
    assert [tuple(r) for r in purposes][1:] == [
        ("purchase", "k-owner"),
        ("purchase", "k-billing"),
        ("invoice", f"{invoice}:pay:i-owner"),
    ]
    assert await stack.pool.fetchval("select status from invoices") == "paid"


async def test_a_viewer_sees_no_pay_controls(stack: Stack, page: Page) -> None:
    await stack.sign_in(page, "viewer")
    for label in ("Payment methods", "Add credits", "Auto recharge"):
        await page.get_by_role("link", name=label, exact=True).click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(label)
        await expect(page.locator("main form")).to_have_count(0)
        await expect(page.locator("main button")).to_have_count(0)
    await expect(page.locator("#payments-read-only")).to_contain_text("may not change")
    await page.get_by_role("link", name="Add credits").click()
    await expect(page.locator("#payments-read-only")).to_contain_text("may not buy credits")
    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("a[href='/auto-recharge']", has_text="Details")).to_be_visible()
    await expect(page.locator("a[href='/spend-management']", has_text="Details")).to_be_visible()
    await expect(page.get_by_role("link", name="Modify")).to_have_count(0)


async def test_without_stripe_the_pages_say_so_and_offer_no_forms(
    unpaid_stack: Stack, page: Page
) -> None:
    await unpaid_stack.sign_in(page)
    for path, says in (
        ("/payment-methods", "cards cannot be added here"),
        ("/credits", "credits cannot be bought here"),
        ("/auto-recharge", "auto recharge cannot be turned on"),
    ):
        response = await page.goto(unpaid_stack.url(path))
        assert response is not None and response.status == 200
        await expect(page.locator("#payments-off")).to_contain_text(says)
        await expect(page.locator("main form")).to_have_count(0)
        assert response.headers["content-security-policy"] == csp.POLICY
    await page.goto(unpaid_stack.url("/"))
    await expect(page.locator("#recharge-state")).to_contain_text("Auto recharge is off.")
