"""The notifications loop of the ledger worker: fan out the outbox, send what is due.

It wakes on ``NOTIFY meter_outbox`` (sent by the transaction that raised an event) and
when the next delivery falls due, else every sweep interval; any number of workers run
it side by side (``deliveries`` claims with ``SKIP LOCKED``). Once an hour it also
raises ``payment_method.expiring`` for cards that expire within a month.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from meter import postgres_errors
from meter.woken_loop import run_woken
from notifications import deliveries
from notifications.deliveries import Outlet
from payments import outbox

log = logging.getLogger("meter.notifications")

CHANNEL = "meter_outbox"
PASSING: tuple[type[BaseException], ...] = (*postgres_errors.UNAVAILABLE, OSError)
EXPIRY_CHECK = 3600.0
EXPIRY_NOTICE = timedelta(days=31)


async def expiring_cards(out: Outlet) -> int:
    """Raise ``payment_method.expiring`` once per card and expiry date, a month before."""
    now = out.now()
    rows = await out.pool.fetch(
        "select id, account_id, brand, last4, exp_month, exp_year from payment_methods"
        " where detached_at is null"
        " and make_date(exp_year, exp_month, 1) + interval '1 month' > $1"
        " and make_date(exp_year, exp_month, 1) + interval '1 month' <= $2",
        now.replace(tzinfo=None),
        (now + EXPIRY_NOTICE).replace(tzinfo=None),
    )
    raised = 0
    for r in rows:
        expires = datetime(r["exp_year"], r["exp_month"], 1).date()
        async with out.pool.acquire() as conn, conn.transaction():
            if await outbox.raise_event(
                conn,
                "payment_method.expiring",
                r["account_id"],
                f"payment_method.expiring:{r['id']}:{expires:%Y-%m}",
                {
                    "payment_method_id": r["id"],
                    "brand": r["brand"],
                    "last4": r["last4"],
                    "exp_month": r["exp_month"],
                    "exp_year": r["exp_year"],
                },
            ):
                raised += 1
    return raised


async def run(out: Outlet, stop: asyncio.Event) -> None:
    """Until ``stop``: dispatch and send when told or when something falls due."""
    next_expiry_check = 0.0

    async def step() -> float:
        nonlocal next_expiry_check
        if out.clock() >= next_expiry_check:
            await expiring_cards(out)
            next_expiry_check = out.clock() + EXPIRY_CHECK
        dispatched = await deliveries.dispatch(out)
        sent = await deliveries.send_due(out)
        if dispatched >= deliveries.CLAIM or sent >= deliveries.CLAIM:
            return 0.0
        due = await deliveries.next_due(out)
        wait = out.settings.payments_sweep_interval
        return wait if due is None else min(wait, due)

    await run_woken(out.settings.database_url, CHANNEL, step, stop, passing=PASSING, log=log)
