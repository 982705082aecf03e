"""The payments loop of the ledger worker: signals to recharges, and the sweep.

It wakes on ``NOTIFY meter_signals`` (sent by the batch transaction that recorded a
signal) or every sweep interval. Each pass claims pending signals (see
``recharges``); the sweep takes the unsettled payments whose lease ran out, asks
Stripe what became of them (by PaymentIntent id, else by the payment id in its
metadata) and settles them (pending refunds likewise): a recharge Stripe never saw is
sent again under the same idempotency key, a purchase Stripe never saw is failed (its
buyer has gone), and a purchase left waiting for 3-D Secure past
``METER_PAYMENT_ACTION_TIMEOUT`` is canceled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from meter import postgres_errors
from meter.live_state import StateUnavailable
from meter.woken_loop import run_woken
from payments.recharges import CLAIM, Recharges
from payments.records import Payment
from payments.refunds import sweep_refunds
from payments.service import Context, Payments, Report, send, settle, settle_from_stripe
from payments.stripe_api import StripeFailure

log = logging.getLogger("meter.payments")

CHANNEL = "meter_signals"
PASSING: tuple[type[BaseException], ...] = (
    *postgres_errors.UNAVAILABLE,
    StateUnavailable,
    StripeFailure,
)
SWEEP_BATCH = 50


async def sweep(ctx: Context, recharges: Recharges) -> int:
    """One pass over payments whose lease ran out; returns how many it looked at."""
    rows = await ctx.pool.fetch(
        "update payments set lease_until = $1, attempts = attempts + 1, updated_at = now()"
        " where id in (select id from payments where status in ('pending', 'requires_action')"
        " and lease_until < $3 order by lease_until limit $2 for update skip locked)"
        " returning *",
        ctx.lease(),
        SWEEP_BATCH,
        ctx.now(),
    )
    for row in rows:
        p = Payment.from_row(row)
        try:
            await _sweep_one(ctx, recharges, p)
        except StripeFailure as exc:
            ctx.metrics.sweeps.labels("stripe_unavailable").inc()
            log.warning("sweep could not settle %s: %s", p.id, exc)
    if ctx.api is not None:
        await recharges.level_check()
        await sweep_refunds(ctx, ctx.now() - timedelta(seconds=ctx.settings.payment_lease))
    paused = await ctx.pool.fetchval(
        "select count(*) from auto_recharge where enabled and paused_at is not null"
    )
    ctx.metrics.recharges_paused.set(paused)
    return len(rows)


async def _sweep_one(ctx: Context, recharges: Recharges, p: Payment) -> None:
    if ctx.api is None:
        return
    settled = await settle_from_stripe(ctx, p)
    if settled.status not in ("pending", "requires_action"):
        ctx.metrics.sweeps.labels("settled").inc()
        return
    known = settled.stripe_payment_intent or settled.stripe_checkout_session
    age = ctx.now() - settled.created_at
    if known is None and settled.method == "card":
        if settled.purpose == "recharge":
            ctx.metrics.sweeps.labels("resent").inc()
            await recharges.start(settled)
        elif settled.purpose == "invoice" and settled.off_session:
            ctx.metrics.sweeps.labels("resent").inc()
            await send(ctx, settled, await Payments(ctx).customer(settled.account_id))
        else:
            ctx.metrics.sweeps.labels("failed_unsent").inc()
            await settle(
                ctx,
                p.id,
                Report(
                    "failed",
                    None,
                    "not_sent",
                    "The payment did not reach the card processor; nothing was charged.",
                ),
            )
        return
    if age > timedelta(seconds=ctx.settings.payment_action_timeout):
        ctx.metrics.sweeps.labels("expired").inc()
        if settled.stripe_payment_intent:
            with contextlib.suppress(StripeFailure):
                await ctx.stripe.cancel_intent(settled.stripe_payment_intent)
        latest = await settle_from_stripe(ctx, settled)
        if latest.status in ("pending", "requires_action"):
            await settle(ctx, p.id, Report("canceled"))
        return
    ctx.metrics.sweeps.labels("waiting").inc()


async def run(ctx: Context, stop: asyncio.Event) -> None:
    """Until ``stop``: process signals when told, sweep every interval."""
    recharges = Recharges(ctx, Payments(ctx))
    next_sweep = 0.0

    async def step() -> float:
        nonlocal next_sweep
        claimed = await recharges.process_signals()
        if ctx.clock() >= next_sweep:
            await sweep(ctx, recharges)
            next_sweep = ctx.clock() + ctx.settings.payments_sweep_interval
        return 0.0 if claimed >= CLAIM else max(0.0, next_sweep - ctx.clock())

    await run_woken(ctx.settings.database_url, CHANNEL, step, stop, passing=PASSING, log=log)
