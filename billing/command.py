"""`meter close-period`: the period close the ledger worker runs, by hand.

It closes the period for every account (or one), then finalizes the drafts whose
grace has run out. Running it again changes nothing: each invoice is unique per
account and period, and a finalized one stays as it is.
"""

from __future__ import annotations

import asyncpg

from billing import periods
from billing.invoices import Closer, NotCaughtUp, PeriodOpen
from meter.live_state import LiveState
from meter.settings import Settings


async def close_period(settings: Settings, label: str | None, account_id: str | None) -> int:
    anchor = settings.billing_anchor_day
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    live = LiveState.from_url(settings.redis_url, timeout=settings.redis_timeout)
    try:
        closer = Closer(pool, live, settings)
        try:
            period = (
                periods.parse(label, anchor) if label else periods.last_closed(closer.now(), anchor)
            )
        except ValueError as exc:
            print(f"meter close-period: {exc}")
            return 2
        try:
            written = await closer.close_period(period, account_id)
        except (PeriodOpen, NotCaughtUp) as exc:
            print(f"meter close-period: {exc}; nothing was closed")
            return 1
        finalized = await closer.finalize_due()
        print(
            f"period {period.label} ({period.start} to {period.end}): {written} invoice(s),"
            f" {finalized} finalized now"
        )
        return 0
    finally:
        await live.close()
        await pool.close()
