"""Refunds of a succeeded payment, by an operator: Stripe's refund and one debit entry.

The refund row is written (and the amount reserved on the payment) before Stripe is
called, keyed by the operator's idempotency key; Stripe gets the refund id as its
idempotency key and in the metadata, and the debit's ledger entry is keyed by the
refund id. At most the unspent balance is refunded unless ``force`` says otherwise.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from admin import audit, sync
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput
from admin.ids import new_id
from meter.live_state import StateUnavailable
from meter.money import MICROS_PER_CENT, money
from payments import decisions, outbox
from payments.records import Payment, Refund
from payments.service import REFUND, Context, StripeUnavailable, get_payment
from payments.stripe_api import StripeFailure, Unavailable

log = logging.getLogger("meter.payments")


class RefundExceedsPayment(Conflict):
    slug = "refund-exceeds-payment"
    title = "The refund is more than what is left of the payment"


class RefundExceedsBalance(Conflict):
    slug = "refund-exceeds-balance"
    title = "The refund is more than the account has left unspent"


async def refund(
    ctx: Context,
    actor: Actor,
    payment_id: str,
    *,
    amount: int | None,
    force: bool,
    reason: str | None,
    idempotency_key: str,
) -> Refund:
    api = ctx.stripe
    async with ctx.pool.acquire() as conn, conn.transaction():
        p = await get_payment(conn, payment_id, for_update=True)
        row = await conn.fetchrow(
            "select * from payment_refunds where payment_id = $1 and idempotency_key = $2",
            p.id,
            idempotency_key,
        )
        if row is not None:
            existing = Refund.from_row(row)
            if amount is not None and existing.amount != amount:
                raise Conflict(
                    f"idempotency key {idempotency_key!r} was used for {existing.id}"
                    " with a different amount",
                    refund_id=existing.id,
                )
            if existing.status != "pending":
                return existing
            # Stripe's answer was lost: ask again under the same idempotency key.
            r, want, intent = existing, existing.amount, p.stripe_payment_intent
        else:
            r, want, intent = await _reserve(
                conn, actor, p, amount, force, reason, idempotency_key, ctx
            )
    assert intent is not None
    try:
        stripe_id, _status = await api.refund(
            intent,
            decisions.cents(want),
            {"refund_id": r.id, "payment_id": r.payment_id},
            idempotency_key=r.id,
        )
    except Unavailable as exc:
        raise StripeUnavailable(
            f"refund {r.id} is recorded as pending; send the same request again: {exc}",
            refund_id=r.id,
        ) from exc
    except StripeFailure as exc:
        return await _finish(ctx, r.id, None, str(exc))
    return await _finish(ctx, r.id, stripe_id, None)


async def sweep_refunds(ctx: Context, older_than: datetime) -> int:
    """Refunds left pending by a lost answer: settle from Stripe, else send once more.

    Stripe's refund list for the PaymentIntent is read first (it is consistent), so a
    refund Stripe made is recorded, not made twice, whatever Stripe's idempotency does.
    """
    rows = await ctx.pool.fetch(
        "select r.*, p.stripe_payment_intent from payment_refunds r"
        " join payments p on p.id = r.payment_id"
        " where r.status = 'pending' and r.created_at < $1 order by r.created_at limit 50",
        older_than,
    )
    for row in rows:
        r = Refund.from_row(row)  # reads its own columns of the joined row
        intent = row["stripe_payment_intent"]
        try:
            found = await ctx.stripe.find_refund(intent, r.id)
            if found is None:
                found = await ctx.stripe.refund(
                    intent,
                    decisions.cents(r.amount),
                    {"refund_id": r.id, "payment_id": r.payment_id},
                    idempotency_key=r.id,
                )
        except Unavailable as exc:
            log.warning("refund %s still pending: %s", r.id, exc)
            continue
        except StripeFailure as exc:
            await _finish(ctx, r.id, None, str(exc))
            continue
        await _finish(ctx, r.id, found[0], None)
    return len(rows)


async def _finish(ctx: Context, refund_id: str, stripe_id: str | None, error: str | None) -> Refund:
    entry = None
    async with ctx.pool.acquire() as conn, conn.transaction():
        r = Refund.from_row(
            await conn.fetchrow("select * from payment_refunds where id = $1 for update", refund_id)
        )
        if r.status != "pending":
            return r
        if error is not None:
            await conn.execute(
                "update payment_refunds set status = 'failed', failure_message = $2,"
                " settled_at = now() where id = $1",
                r.id,
                error,
            )
            await conn.execute(
                "update payments set refunded = refunded - $2 where id = $1", r.payment_id, r.amount
            )
        else:
            account = await repo.get_account(conn, r.account_id, for_update=True)
            assert account is not None
            entry = await repo.insert_credit(
                conn,
                account,
                amount=-r.amount,
                kind="payment_refund",
                description=f"Refund {stripe_id} of {r.payment_id}",
                idempotency_key=r.id,
                draw_first=r.payment_id,  # the purchase's own grant first
            )
            await conn.execute(
                "update payment_refunds set status = 'succeeded', stripe_refund = $2,"
                " ledger_entry_id = $3, settled_at = now() where id = $1",
                r.id,
                stripe_id,
                entry.id,
            )
            await outbox.raise_event(
                conn,
                "payment.refunded",
                r.account_id,
                f"payment.refunded:{r.id}",
                {"refund_id": r.id, "payment_id": r.payment_id, "amount": r.amount},
            )
        r = Refund.from_row(
            await conn.fetchrow("select * from payment_refunds where id = $1", refund_id)
        )
    if entry is not None:
        await sync.then_redis(f"refund {refund_id}", sync.apply_credit(ctx.pool, ctx.live, entry))
    return r


async def _reserve(
    conn: Any,
    actor: Actor,
    p: Payment,
    amount: int | None,
    force: bool,
    reason: str | None,
    idempotency_key: str,
    ctx: Context,
) -> tuple[Refund, int, str | None]:
    """Check and write a new refund, reserving its amount on the payment."""
    if p.status != "succeeded" or p.stripe_payment_intent is None:
        raise Conflict(f"payment {p.id} is {p.status}; only a succeeded card payment refunds")
    left = p.amount - p.refunded
    want = left if amount is None else amount
    if want > left or left == 0:  # the payment's state, not the request's shape
        raise RefundExceedsPayment(
            f"{money(left)} of {p.id} is left to refund, not {money(want)}",
            left=left,
        )
    if want % MICROS_PER_CENT or want <= 0:
        raise InvalidInput([("amount", "must be a positive whole number of cents")])
    account = await repo.get_account(conn, p.account_id, for_update=True)
    assert account is not None
    unspent = account.balance
    try:
        live = await ctx.live.read_account(account.shard, account.id)
        if live is not None:
            unspent = min(unspent, live.balance)
    except StateUnavailable:
        pass
    if want > max(0, unspent) and not force:
        raise RefundExceedsBalance(
            f"the account has {max(0, unspent)} micros unspent; refunding {want} would take"
            " back credit already spent (send force: true to refund anyway)",
            unspent=max(0, unspent),
        )
    r = Refund.from_row(
        await conn.fetchrow(
            "insert into payment_refunds (id, payment_id, account_id, amount, forced,"
            " reason, idempotency_key, status) values ($1, $2, $3, $4, $5, $6, $7,"
            " 'pending') returning *",
            new_id(REFUND),
            p.id,
            p.account_id,
            want,
            force,
            reason,
            idempotency_key,
        )
    )
    await conn.execute(
        "update payments set refunded = refunded + $2, updated_at = now() where id = $1",
        p.id,
        want,
    )
    await audit.record(
        conn, actor, "payment.refund", "refund", r.id, account_id=p.account_id, after=r
    )
    return r, want, p.stripe_payment_intent
