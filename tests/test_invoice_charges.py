"""Paying invoices through the Stripe test double: charged at finalization, once; a
declined card retried on the schedule, then the overdue policy until the buyer pays
with another card, which lifts it; the buyer's own pay, once per idempotency key. The
money is checked to the micro."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from ledger_fixtures import running_worker
from notifications_support import spend
from payments_support import ACTOR, DECLINED_WHEN_CHARGED, USD, Paying
from test_invoices import DEC, booked, overage_account

from admin.errors import Conflict, IdempotencyKeyReused, NotFound
from admin.services import open_services
from billing import charges
from billing.charges import InvoiceNotPayable
from billing.invoices import Closer
from payments.service import NoPaymentMethod, PaymentRefused


async def owing(paying: Paying, card: str) -> tuple[str, str, str]:
    """An account that used $15 against $10 of credits in December, with ``card``; its
    invoice closed and finalized at 00:02 on January 1st: (account, invoice, card)."""
    account, shard = await overage_account(paying)
    pm = await paying.card(account, card)
    async with running_worker(paying.settings):
        await spend(paying.live, shard, account, 15 * USD, DEC.end_day - 1)
        await booked(paying)
    at(paying, DEC.end_at() + timedelta(minutes=2))
    closer = Closer(
        paying.pool, paying.live, paying.settings.replace(invoice_grace=0.0), clock=paying.clock
    )
    await closer.close_period(DEC)
    assert await closer.finalize_due() == 1
    invoice = await paying.pool.fetchval("select id from invoices where account_id = $1", account)
    return account, invoice, pm


def at(paying: Paying, moment: datetime) -> None:
    paying.clock.offset = moment.timestamp() - time.time()


async def invoice(paying: Paying, invoice_id: str) -> dict[str, object]:
    return dict(await paying.pool.fetchrow("select * from invoices where id = $1", invoice_id))


async def overage_line(paying: Paying, account: str) -> int:
    return int(
        await paying.pool.fetchval("select overage_line from accounts where id = $1", account)
    )


async def test_an_open_invoice_is_charged_once_and_the_balance_climbs_back(paying: Paying) -> None:
    account, inv, _ = await owing(paying, "4242424242424242")
    assert (await invoice(paying, inv))["amount_due"] == 5 * USD
    assert await paying.book_balance(account) == -5 * USD
    assert await charges.charge_due(paying.ctx) == 1
    assert await charges.charge_due(paying.ctx) == 0  # paid: never again
    row = await invoice(paying, inv)
    assert (row["status"], row["amount_paid"]) == ("paid", 5 * USD)
    [payment] = await paying.pool.fetch("select * from payments where invoice_id = $1", inv)
    assert (payment["status"], payment["amount"], payment["purpose"]) == (
        "succeeded",
        5 * USD,
        "invoice",
    )
    [entry] = await paying.credits(account, "invoice_payment")
    assert entry["amount"] == 5 * USD and entry["description"].startswith("Invoice payment pi_")
    assert await paying.book_balance(account) == 0
    assert await paying.live_balance(account) == 0
    assert [c["amount"] for c in paying.double.charges()] == [500]
    assert len(await paying.events(account, "invoice.paid")) == 1


async def test_a_declined_invoice_is_retried_then_overdue_until_paid_by_another_card(
    paying: Paying,
) -> None:
    account, inv, _ = await owing(paying, DECLINED_WHEN_CHARGED)
    finalized = (await invoice(paying, inv))["finalized_at"]
    assert isinstance(finalized, datetime)
    assert await charges.charge_due(paying.ctx) == 1
    for days in (1, 3, 5, 7):  # METER_INVOICE_RETRY_DAYS: days after finalization
        row = await invoice(paying, inv)
        assert row["next_charge_at"] == finalized + timedelta(days=days)
        at(paying, finalized + timedelta(days=days) - timedelta(seconds=1))
        assert await charges.charge_due(paying.ctx) == 0  # not before its time
        at(paying, finalized + timedelta(days=days))
        assert await charges.charge_due(paying.ctx) == 1
    row = await invoice(paying, inv)
    assert (row["status"], row["payment_attempts"], row["next_charge_at"]) == ("open", 5, None)
    assert row["overdue_at"] is not None and row["held_overage_line"] == 50 * USD
    assert await overage_line(paying, account) == 0  # the overage line is blocked
    assert len(await paying.events(account, "invoice.payment_failed")) == 5
    assert len(await paying.events(account, "invoice.overdue")) == 1
    assert paying.double.charges() == []  # declined every time: nothing taken

    good = await paying.card(account, "4242424242424242")
    charge = await charges.start(
        paying.ctx, inv, on_session=True, payment_method_id=good, account_id=account, actor=ACTOR
    )
    assert charge is not None and charge.payment.status == "succeeded"
    row = await invoice(paying, inv)
    assert (row["status"], row["amount_paid"]) == ("paid", 5 * USD)
    assert await overage_line(paying, account) == 50 * USD  # lifted once paid
    assert await paying.book_balance(account) == 0
    assert [c["amount"] for c in paying.double.charges()] == [500]


async def close_january(paying: Paying, account: str) -> dict[str, Any]:
    """January (no usage) closed and finalized at 00:02 on February 1st: its invoice."""
    jan = DEC.next()
    at(paying, jan.end_at() + timedelta(minutes=2))
    closer = Closer(
        paying.pool, paying.live, paying.settings.replace(invoice_grace=0.0), clock=paying.clock
    )
    await closer.close_period(jan)
    await closer.finalize_due()
    row = await paying.pool.fetchrow(
        "select * from invoices where account_id = $1 and period_start = $2", account, jan.start
    )
    lines = await paying.pool.fetch(
        "select kind, description, amount from invoice_lines where invoice_id = $1"
        " order by position",
        row["id"],
    )
    return {**dict(row), "lines": [tuple(line) for line in lines]}


async def test_a_void_invoice_is_no_longer_charged_and_its_debt_is_carried_forward(
    paying: Paying,
) -> None:
    account, inv, _ = await owing(paying, DECLINED_WHEN_CHARGED)
    await charges.charge_due(paying.ctx)  # declined: retried tomorrow
    voided = await paying.services.invoices.close_out(ACTOR, inv, "void")
    assert voided.status == "void"
    at(paying, DEC.end_at() + timedelta(days=30))
    assert await charges.charge_due(paying.ctx) == 0
    with pytest.raises(Conflict):
        await paying.services.invoices.close_out(ACTOR, inv, "uncollectible")
    [audit] = await paying.pool.fetch(
        "select * from audit_log where object_id = $1 and action = 'invoice.void'", inv
    )
    assert audit["account_id"] == account
    assert await paying.book_balance(account) == -5 * USD  # still owed
    upcoming = await paying.services.invoices.upcoming(account)  # mid-January
    assert (upcoming.due.carried, upcoming.due.amount_due) == (5 * USD, 5 * USD)
    # January used nothing; its invoice bills the $5 December's void invoice no longer does.
    jan = await close_january(paying, account)
    assert (jan["usage_amount"], jan["credits_applied"]) == (0, 0)
    assert (jan["carried_amount"], jan["amount_due"], jan["status"]) == (5 * USD, 5 * USD, "open")
    assert jan["lines"] == [("carried_forward", "Balance carried forward", 5 * USD)]
    good = await paying.card(account, "4242424242424242")
    paid = await charges.pay(paying.ctx, ACTOR, account, jan["id"], payment_method_id=good)
    assert paid.payment.status == "succeeded"
    assert await paying.book_balance(account) == 0  # the debt paid, once
    assert await paying.live_balance(account) == 0
    assert [c["amount"] for c in paying.double.charges()] == [500]


async def test_an_uncollectible_invoice_keeps_its_debt_and_is_not_billed_again(
    paying: Paying,
) -> None:
    account, inv, _ = await owing(paying, DECLINED_WHEN_CHARGED)
    await paying.services.invoices.close_out(ACTOR, inv, "uncollectible")
    jan = await close_january(paying, account)
    assert (jan["carried_amount"], jan["amount_due"], jan["status"]) == (0, 0, "paid")
    assert jan["lines"] == []
    assert await paying.book_balance(account) == -5 * USD  # written off, owed on the book


async def test_under_suspend_an_overdue_account_resumes_once_its_invoice_is_written_off(
    paying: Paying,
) -> None:
    suspending = open_services(
        paying.pool, paying.live, paying.settings.replace(invoice_overdue="suspend"), paying.clock
    )
    try:
        account, inv, _ = await owing(paying, DECLINED_WHEN_CHARGED)
        finalized = (await invoice(paying, inv))["finalized_at"]
        assert await charges.charge_due(suspending.payments.ctx) == 1
        for days in (1, 3, 5, 7):
            at(paying, finalized + timedelta(days=days))
            assert await charges.charge_due(suspending.payments.ctx) == 1
        assert await status(paying, account) == "suspended"
        assert await overage_line(paying, account) == 50 * USD  # suspend holds no line
        await suspending.invoices.close_out(ACTOR, inv, "uncollectible")
        assert await status(paying, account) == "active"
        assert await overage_line(paying, account) == 50 * USD
        assert await paying.book_balance(account) == -5 * USD  # written off, still owed
    finally:
        await suspending.payments.close()


async def status(paying: Paying, account: str) -> str:
    return str(await paying.pool.fetchval("select status from accounts where id = $1", account))


async def test_the_buyers_pay_answers_a_resent_key_with_the_first_payment(
    paying: Paying,
) -> None:
    """``charges.pay``, what the API's POST .../pay and the portal's Pay call: five
    requests at once with one key are one payment and one charge, with the double's
    idempotency off; the key with another card is refused; a new key on the paid
    invoice has nothing to pay."""
    paying.double.configure(idempotency=False)
    account, inv, _ = await owing(paying, "4242424242424242")

    def pay(key: str, card: str | None = None) -> Any:
        return charges.pay(
            paying.ctx, ACTOR, account, inv, payment_method_id=card, idempotency_key=key
        )

    paid = await asyncio.gather(*(pay("k") for _ in range(5)))
    assert {c.payment.id for c in paid} == {paid[0].payment.id}
    assert {c.payment.status for c in paid} <= {"pending", "succeeded"}
    assert (await pay("k")).payment.status == "succeeded"
    assert [c["amount"] for c in paying.double.charges()] == [500]
    assert (await invoice(paying, inv))["status"] == "paid"
    assert await paying.book_balance(account) == 0
    other = await paying.card(account, "4242424242424242")
    with pytest.raises(IdempotencyKeyReused):
        await pay("k", other)
    with pytest.raises(InvoiceNotPayable):
        await pay("another")
    assert len(paying.double.charges()) == 1


async def test_the_buyers_pay_says_why_when_declined_or_without_a_card(paying: Paying) -> None:
    account, inv, pm = await owing(paying, DECLINED_WHEN_CHARGED)
    with pytest.raises(PaymentRefused) as declined:
        await charges.pay(paying.ctx, ACTOR, account, inv, idempotency_key="d")
    assert declined.value.extra["payment_id"]
    with pytest.raises(PaymentRefused):  # the same key: the same answer, not a second try
        await charges.pay(paying.ctx, ACTOR, account, inv, idempotency_key="d")
    [failed] = await paying.pool.fetch("select * from payments where invoice_id = $1", inv)
    assert failed["status"] == "failed"
    row = await invoice(paying, inv)
    assert (row["status"], row["amount_paid"], row["payment_attempts"]) == ("open", 0, 1)
    assert await paying.book_balance(account) == -5 * USD
    await paying.payments.delete_method(ACTOR, account, pm)
    with pytest.raises(NoPaymentMethod):  # no card at all: a 409, nothing recorded
        await charges.pay(paying.ctx, ACTOR, account, inv)
    assert (await invoice(paying, inv))["payment_attempts"] == 1
    other = await paying.account("Other")
    with pytest.raises(NotFound):  # another account's call
        await charges.pay(paying.ctx, ACTOR, other, inv)
