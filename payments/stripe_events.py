"""Stripe's webhook events, each applied once: ``POST /stripe/webhook`` on the portal.

The signature is checked with the ``stripe`` library. The event's id is inserted into
``stripe_events`` in the same transaction as its effect, so a redelivery (Stripe
retries, a replay) finds the row and changes nothing. Events may come in any order
and before our own API call heard Stripe's answer: a payment is found by the
``payment_id`` in the object's metadata, and ``settle`` only ever moves forward
(a success wins over everything).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import stripe

from admin import repository as repo
from admin import sync
from admin.errors import BadRequest
from admin.records import LedgerEntry
from payments import outbox
from payments.decisions import micros_of_cents
from payments.service import (
    Context,
    Payments,
    PaymentsNotConfigured,
    Report,
    Settled,
    account_of_customer,
    after_settle,
    settle_in,
)
from payments.stripe_api import construct_event, intent_of

log = logging.getLogger("meter.payments")

INTENT_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.requires_action",
        "payment_intent.processing",
    }
)
CHECKOUT_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    }
)


class BadSignature(BadRequest):
    slug = "bad-webhook-signature"
    title = "The Stripe-Signature header does not match this payload"


def verify(ctx: Context, payload: bytes, signature: str | None) -> Any:
    secret = ctx.settings.stripe_webhook_secret
    if not secret:
        raise PaymentsNotConfigured("set METER_STRIPE_WEBHOOK_SECRET to receive Stripe's events")
    try:
        return construct_event(payload, signature or "", secret.reveal())
    except (ValueError, stripe.SignatureVerificationError) as exc:
        ctx.metrics.webhooks.labels("bad_signature").inc()
        raise BadSignature(str(exc)) from exc


async def receive(ctx: Context, payload: bytes, signature: str | None) -> str:
    """Verify and apply one delivery; returns applied, duplicate or ignored."""
    event = verify(ctx, payload, signature)
    etype = str(event["type"])
    obj = event["data"]["object"]
    settled: Settled | None = None
    refresh: str | None = None
    refunded: LedgerEntry | None = None
    async with ctx.pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "insert into stripe_events (id, type, object_id) values ($1, $2, $3)"
            " on conflict (id) do nothing returning id",
            str(event["id"]),
            etype,
            str(obj.get("id")) if hasattr(obj, "get") else None,
        )
        if fresh is None:
            ctx.metrics.webhooks.labels("duplicate").inc()
            return "duplicate"
        if etype in INTENT_EVENTS:
            settled = await _intent(ctx, conn, obj)
        elif etype in CHECKOUT_EVENTS:
            settled = await _checkout(ctx, conn, etype, obj)
        elif etype == "payment_method.detached":
            refresh = await _detached(conn, obj)
        elif etype == "payment_method.attached":
            refresh = await account_of_customer(ctx, _str(obj.get("customer")))
        elif etype == "charge.refunded":
            refunded = await _refunded_elsewhere(conn, obj)
    applied = settled is not None or refresh is not None or refunded is not None
    result = "applied" if applied else "ignored"
    if settled is not None:
        await after_settle(ctx, settled)
    if refunded is not None:
        await sync.then_redis(
            f"refund at Stripe {event['id']}", sync.apply_credit(ctx.pool, ctx.live, refunded)
        )
    if refresh is not None:
        try:
            await Payments(ctx).refresh_methods(refresh)
        except Exception as exc:  # the copy is refreshed again on the next read
            log.warning("cards of %s not refreshed: %s", refresh, exc)
    ctx.metrics.webhooks.labels(result).inc()
    return result


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value.get("id"))


async def _payment_id(conn: asyncpg.Connection, metadata: Any, column: str, ref: str) -> str | None:
    wanted = (metadata or {}).get("payment_id")
    if wanted:
        found = await conn.fetchval("select id from payments where id = $1", wanted)
        if found:
            return str(found)
    found = await conn.fetchval(f"select id from payments where {column} = $1", ref)
    return None if found is None else str(found)


async def _intent(ctx: Context, conn: asyncpg.Connection, obj: Any) -> Settled | None:
    intent = intent_of(obj)
    payment_id = await _payment_id(conn, intent.metadata, "stripe_payment_intent", intent.id)
    if payment_id is None:
        log.info("payment intent %s is not one of our payments", intent.id)
        return None
    return await settle_in(ctx, conn, payment_id, Report.of_intent(intent))


async def _checkout(ctx: Context, conn: asyncpg.Connection, etype: str, obj: Any) -> Settled | None:
    payment_id = await _payment_id(
        conn, obj.get("metadata"), "stripe_checkout_session", str(obj["id"])
    )
    if payment_id is None:
        return None
    intent = _str(obj.get("payment_intent"))
    if etype == "checkout.session.expired":
        report = Report("canceled")
    elif etype == "checkout.session.async_payment_failed":
        report = Report("failed", intent, "payment_failed", "The crypto payment failed.")
    elif obj.get("payment_status") == "paid":
        report = Report("succeeded", intent)
    else:
        return None  # completed, but the payment is still on its way (async)
    return await settle_in(ctx, conn, payment_id, report)


async def _refunded_elsewhere(conn: asyncpg.Connection, obj: Any) -> LedgerEntry | None:
    """A refund Stripe made that we did not start (its dashboard): debit the difference.

    Our own refunds reserve their amount on the payment before Stripe is called, so
    for them Stripe's total equals ours and nothing is written. The entry is keyed by
    the charge and Stripe's total, so a redelivered event debits nothing more.
    """
    intent = _str(obj.get("payment_intent"))
    if intent is None:
        return None
    row = await conn.fetchrow(
        "select * from payments where stripe_payment_intent = $1 for update", intent
    )
    if row is None or row["status"] != "succeeded":
        return None
    total = micros_of_cents(int(obj.get("amount_refunded") or 0))
    missing = min(total, row["amount"]) - row["refunded"]
    if missing <= 0:
        return None
    account = await repo.get_account(conn, row["account_id"], for_update=True)
    assert account is not None
    key = f"stripe-refund:{obj['id']}:{total}"
    if await repo.entry_by_idempotency_key(conn, account.id, key) is not None:
        return None
    entry = await repo.insert_credit(
        conn,
        account,
        amount=-missing,
        kind="payment_refund",
        description=f"Refund at Stripe of {intent} ({row['id']})",
        idempotency_key=key,
        draw_first=row["id"],  # the purchase's own grant first
    )
    await conn.execute(
        "update payments set refunded = refunded + $2, updated_at = now() where id = $1",
        row["id"],
        missing,
    )
    await outbox.raise_event(
        conn,
        "payment.refunded",
        account.id,
        f"payment.refunded:{key}",
        {"payment_id": row["id"], "amount": missing, "source": "stripe"},
    )
    return entry


async def _detached(conn: asyncpg.Connection, obj: Any) -> str | None:
    """A card removed at Stripe (perhaps not by us): drop our copy; the account to refresh."""
    account = await conn.fetchval(
        "update payment_methods set detached_at = now(), is_default = false"
        " where id = $1 and detached_at is null returning account_id",
        str(obj["id"]),
    )
    return None if account is None else str(account)
