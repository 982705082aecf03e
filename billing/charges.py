"""Paying an invoice: a card payment like a purchase, settled by the one ``settle``.

An open invoice with something due is charged off-session when it is finalized, then
again on the schedule ``METER_INVOICE_RETRY_DAYS`` (days after finalization) while it
fails; after the last failure the overdue policy applies (``METER_INVOICE_OVERDUE``:
the overage line drops to zero until it is paid, or the account is suspended). A
customer may pay it at any time (``POST /v1/invoices/{id}/pay``, the portal's Pay),
on-session, so 3-D Secure can be passed in the browser.

Each charge is a ``payments`` row (purpose ``invoice``) written before Stripe is
called; at most one is in flight per invoice (a partial unique index). A success
credits the account by the amount (an ``invoice_payment`` ledger entry, so the
balance climbs back towards zero) and marks the invoice paid, in the settlement's
transaction (``paid``); a failure schedules the next try (``failed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from admin import audit, ids
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, IdempotencyKeyReused, NotFound
from payments import outbox
from payments.records import Payment
from payments.service import Context, PaymentRefused, Payments, card_to_charge, send

ACTIVE = "active"
OFF_SESSION = "off_session"  # payments.reason of a charge nobody is there to authenticate


@dataclass(frozen=True, slots=True)
class Charge:
    payment: Payment
    client_secret: str | None  # for the browser when 3-D Secure is needed


async def pay(
    ctx: Context,
    actor: Actor,
    account_id: str,
    invoice_id: str,
    *,
    payment_method_id: str | None = None,
    idempotency_key: str | None = None,
) -> Charge:
    """The buyer pays what the account's open invoice owes, on-session (the admin API's
    ``POST /v1/invoices/{id}/pay`` and the portal's Pay): the payment, settled or waiting
    for 3-D Secure; a decline raises ``PaymentRefused`` (402), nothing credited."""
    ctx.stripe  # noqa: B018 - 503 before anything is written when not configured
    charge = await start(
        ctx,
        invoice_id,
        on_session=True,
        payment_method_id=payment_method_id,
        account_id=account_id,
        actor=actor,
        idempotency_key=idempotency_key,
    )
    assert charge is not None  # an account's own call raises instead
    p = charge.payment
    if p.status == "failed":
        raise PaymentRefused(
            p.failure_message or "the card was declined", code=p.failure_code, payment_id=p.id
        )
    return charge


def client_key(invoice_id: str, idempotency_key: str) -> str:
    """Where a client's key is kept: per invoice, apart from the scheduled tries'
    ``inv_...:<attempt>`` and from purchases' keys."""
    return f"{invoice_id}:pay:{idempotency_key}"


async def start(
    ctx: Context,
    invoice_id: str,
    *,
    on_session: bool = False,
    payment_method_id: str | None = None,
    account_id: str | None = None,
    actor: Actor | None = None,
    idempotency_key: str | None = None,
) -> Charge | None:
    """Charge what the invoice still owes; None when nothing is owed or the charge could
    not be made (recorded as a failure). ``account_id``: the caller's, checked; its
    ``idempotency_key`` seen before answers that payment (the invoice's row lock orders
    concurrent requests, so the second finds the first's)."""
    payments = Payments(ctx)
    async with ctx.pool.acquire() as conn, conn.transaction():
        inv = await conn.fetchrow("select * from invoices where id = $1 for update", invoice_id)
        if inv is None or (account_id is not None and inv["account_id"] != account_id):
            raise NotFound(f"no invoice {invoice_id!r}")
        attempt = inv["payment_attempts"] + 1
        key = f"{invoice_id}:{attempt}"
        if idempotency_key is not None:
            key = client_key(invoice_id, idempotency_key)
            first = await conn.fetchrow(
                "select * from payments where account_id = $1 and idempotency_key = $2",
                inv["account_id"],
                key,
            )
            if first is not None:
                return await _replay(payments, Payment.from_row(first), payment_method_id)
        owed = inv["amount_due"] - inv["amount_paid"]
        if inv["status"] != "open" or owed <= 0:
            if account_id is not None:
                raise InvoiceNotPayable(
                    f"invoice {invoice_id} is {inv['status']}: nothing to pay",
                    invoice_status=inv["status"],
                )
            return None
        flight = await conn.fetchrow(
            "select * from payments where invoice_id = $1 and status in"
            " ('pending', 'requires_action')",
            invoice_id,
        )
        if flight is not None:
            if account_id is not None:
                raise PaymentUnderWay(
                    f"a payment of invoice {invoice_id} is under way ({flight['id']})",
                    payment_id=flight["id"],
                )
            return None
        # The buyer's own call: their card, else the default, else NoPaymentMethod (409).
        card = (
            await payments._card_for(inv["account_id"], payment_method_id)
            if payment_method_id or account_id is not None
            else await card_to_charge(conn, inv["account_id"])
        )
        await conn.execute(
            "update invoices set payment_attempts = $2, next_charge_at = null where id = $1",
            invoice_id,
            attempt,
        )
        if card is None:
            await _failure(ctx, conn, inv, attempt, "no_payment_method", "No card on file.")
            return None
        p = Payment.from_row(
            await conn.fetchrow(
                "insert into payments (id, account_id, purpose, method, amount, status,"
                " idempotency_key, payment_method_id, card_brand, card_last4, lease_until,"
                " invoice_id, reason) values ($1, $2, 'invoice', 'card', $3, 'pending', $4, $5,"
                " $6, $7, $8, $9, $10) returning *",
                ids.new_id(ids.PAYMENT),
                inv["account_id"],
                owed,
                key,
                card.id,
                card.brand,
                card.last4,
                ctx.lease(),
                invoice_id,
                "on_session" if on_session else OFF_SESSION,
            )
        )
        if actor is not None:
            await audit.record(
                conn,
                actor,
                "invoice.pay",
                "invoice",
                invoice_id,
                account_id=p.account_id,
                after={"payment_id": p.id, "amount": p.amount, "payment_method_id": card.id},
            )
    customer = await payments.customer(p.account_id)
    settled, intent = await send(ctx, p, customer)
    secret = intent.client_secret if intent and settled.status == "requires_action" else None
    return Charge(settled, secret)


async def _replay(payments: Payments, p: Payment, payment_method_id: str | None) -> Charge:
    if payment_method_id is not None and payment_method_id != p.payment_method_id:
        raise IdempotencyKeyReused(
            f"this idempotency key paid with {p.payment_method_id} ({p.id})", payment_id=p.id
        )
    secret = await payments._client_secret(p) if p.status == "requires_action" else None
    return Charge(p, secret)


def retry_at(finalized_at: datetime, attempt: int, days: tuple[int, ...]) -> datetime | None:
    """When try ``attempt + 1`` is due after try ``attempt`` failed (None: given up)."""
    if attempt > len(days):
        return None
    return finalized_at + timedelta(days=days[attempt - 1])


async def failed(
    ctx: Context, conn: asyncpg.Connection, p: Payment, code: str | None, message: str | None
) -> None:
    """A charge of the invoice failed (in the settlement's transaction)."""
    inv = await conn.fetchrow("select * from invoices where id = $1 for update", p.invoice_id)
    if inv is not None:
        await _failure(ctx, conn, inv, inv["payment_attempts"], code, message, payment_id=p.id)


async def _failure(
    ctx: Context,
    conn: asyncpg.Connection,
    inv: Any,
    attempt: int,
    code: str | None,
    message: str | None,
    *,
    payment_id: str | None = None,
) -> None:
    nxt = retry_at(inv["finalized_at"], attempt, ctx.settings.invoice_retry_days)
    data = {
        "invoice_id": inv["id"],
        "number": inv["number"],
        "amount_due": inv["amount_due"] - inv["amount_paid"],
        "attempt": attempt,
        "code": code,
        "message": message,
        "payment_id": payment_id,
        "next_attempt_at": nxt.isoformat() if nxt else None,
    }
    await outbox.raise_event(
        conn,
        "invoice.payment_failed",
        inv["account_id"],
        f"invoice.payment_failed:{inv['id']}:{attempt}",
        data,
    )
    if nxt is not None:
        await conn.execute("update invoices set next_charge_at = $2 where id = $1", inv["id"], nxt)
        return
    await _overdue(ctx, conn, inv, data)


async def _overdue(ctx: Context, conn: asyncpg.Connection, inv: Any, data: dict[str, Any]) -> None:
    """The last try failed: the overdue policy, once."""
    if inv["overdue_at"] is not None:
        return
    account = await repo.get_account(conn, inv["account_id"], for_update=True)
    assert account is not None
    held = None
    if ctx.settings.invoice_overdue == "suspend":
        if account.status == ACTIVE:
            await repo.update_account(conn, account.id, "status = 'suspended'", config=True)
    else:
        held = account.overage_line
        if held:
            await repo.update_account(conn, account.id, "overage_line = 0", config=True)
    await conn.execute(
        "update invoices set overdue_at = now(), held_overage_line = $2 where id = $1",
        inv["id"],
        held,
    )
    await outbox.raise_event(
        conn,
        "invoice.overdue",
        inv["account_id"],
        f"invoice.overdue:{inv['id']}",
        {**data, "policy": ctx.settings.invoice_overdue},
    )


async def lift_overdue(conn: asyncpg.Connection, inv: Any, policy: str) -> None:
    """Undo what the overdue policy did for this invoice (it is paid, void or written
    off): the account resumed, or its overage line given back."""
    if inv["overdue_at"] is None:
        return
    account = await repo.get_account(conn, inv["account_id"], for_update=True)
    assert account is not None
    if policy == "suspend" and account.status == "suspended":
        await repo.update_account(conn, account.id, "status = 'active'", config=True)
    elif inv["held_overage_line"]:
        await repo.update_account(
            conn, account.id, "overage_line = $2", inv["held_overage_line"], config=True
        )


async def paid(ctx: Context, conn: asyncpg.Connection, p: Payment) -> None:
    """A charge of the invoice succeeded (in the settlement's transaction, after the
    credit): the invoice is paid, the overdue policy lifted, ``invoice.paid`` raised."""
    inv = await conn.fetchrow("select * from invoices where id = $1 for update", p.invoice_id)
    if inv is None:
        return
    amount_paid = inv["amount_paid"] + p.amount
    done = amount_paid >= inv["amount_due"]
    await conn.execute(
        "update invoices set amount_paid = $2, status = case when $3 then 'paid' else status end,"
        " paid_at = case when $3 then $4 else paid_at end, next_charge_at = null,"
        " row_version = row_version + 1 where id = $1",
        inv["id"],
        amount_paid,
        done,
        ctx.now(),  # the clock finalization dates the invoice by, too
    )
    if done:
        await lift_overdue(conn, inv, ctx.settings.invoice_overdue)
        await outbox.raise_event(
            conn,
            "invoice.paid",
            inv["account_id"],
            f"invoice.paid:{inv['id']}",
            {
                "invoice_id": inv["id"],
                "number": inv["number"],
                "amount_paid": amount_paid,
                "payment_id": p.id,
            },
        )


async def charge_due(ctx: Context, limit: int = 50) -> int:
    """Charge open invoices whose next try is due (any number of workers)."""
    if ctx.api is None:
        return 0
    rows = await ctx.pool.fetch(
        "select id from invoices where status = 'open' and next_charge_at <= $1"
        " order by next_charge_at limit $2",
        ctx.now(),
        limit,
    )
    for r in rows:
        await start(ctx, r["id"])
    return len(rows)


class InvoiceNotPayable(Conflict):
    slug = "invoice-not-payable"
    title = "The invoice has nothing to pay"


class PaymentUnderWay(Conflict):
    """Another payment of the invoice is in flight (``payment_id``): pending at Stripe,
    or waiting for its buyer's 3-D Secure."""

    title = "A payment of the invoice is under way"
