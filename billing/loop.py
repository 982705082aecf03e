"""The billing loop of the ledger worker: renew subscriptions into the new period, close
the last period once it is booked, and finalize drafts whose grace has run out.

Every sweep interval it looks at the last period that has ended; until
``billing_periods`` records it closed, it closes it as soon as the ledger holds all of
its usage (``Closer.close_period``). Any number of workers run it side by side: the
invoice is unique per account and period and each account is closed under its row
lock; drafts are finalized under ``SKIP LOCKED``; open invoices whose next try is due
are charged (``billing.charges``).
"""

from __future__ import annotations

import asyncio
import logging

from billing import charges, periods, subscriptions
from billing.invoices import Closer, NotCaughtUp, PeriodOpen
from meter import postgres_errors
from meter.live_state import StateUnavailable
from meter.woken_loop import run_woken
from payments.service import Context
from payments.stripe_api import StripeFailure

log = logging.getLogger("meter.billing")

CHANNEL = "meter_billing"
PASSING: tuple[type[BaseException], ...] = (
    *postgres_errors.UNAVAILABLE,
    StateUnavailable,
    StripeFailure,
)


async def step(closer: Closer, payments: Context | None = None) -> None:
    anchor = closer.settings.billing_anchor_day
    # Subscriptions renew at the period's start, whether or not its close can run yet.
    await subscriptions.renew_due(closer.pool, closer.live, closer.now(), anchor)
    period = periods.last_closed(closer.now(), anchor)
    closed = await closer.pool.fetchval(
        "select 1 from billing_periods where period_start = $1", period.start
    )
    if closed is None:
        try:
            written = await closer.close_period(period)
            log.info("period closed", extra={"period": period.label, "invoices": written})
        except (NotCaughtUp, PeriodOpen) as exc:
            log.info("period not closed yet: %s", exc)
    await closer.finalize_due()
    if payments is not None:
        await charges.charge_due(payments)


async def run(closer: Closer, stop: asyncio.Event, payments: Context | None = None) -> None:
    async def once() -> float:
        await step(closer, payments)
        return closer.settings.payments_sweep_interval

    await run_woken(closer.settings.database_url, CHANNEL, once, stop, passing=PASSING, log=log)
