"""Invoices as the admin API and the portal read them (the one service layer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from admin import audit
from admin.audit import Actor
from admin.errors import Conflict, NotFound
from billing import charges, periods, plans, subscriptions
from billing.estimates import Estimate, estimate
from billing.invoices import Due, Fee, Invoice, figures, load, unbilled_fees
from billing.periods import Period
from meter.money import utc_day

STATUSES = ("draft", "open", "paid", "void", "uncollectible")


@dataclass(frozen=True, slots=True)
class Upcoming:
    """The current period's invoice so far (nothing is written)."""

    account_id: str
    period: Period
    lines: list[tuple[str, int, int]]  # route, calls, amount
    due: Due
    fees: tuple[Fee, ...] = ()  # prorations so far, and the next period's fee in advance


class Invoices:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Callable[[], float] = time.time,
        anchor: int = 1,
        overdue_policy: str = "block_overage",
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.anchor = anchor
        self.overdue_policy = overdue_policy

    async def upcoming(self, account_id: str) -> Upcoming:
        period = periods.at(self.clock(), self.anchor)
        async with self.pool.acquire() as conn:
            balance = await conn.fetchval("select balance from accounts where id = $1", account_id)
            if balance is None:
                raise NotFound(f"no account {account_id!r}")
            fees = await unbilled_fees(conn, account_id, period)
            sub = await subscriptions.load(conn, account_id, self.anchor)
            if sub is not None and sub.status == "active" and not sub.cancel_at_period_end:
                plan, following = sub.next_plan or sub.plan, period.next(self.anchor)
                if plan.monthly_fee:
                    fees.append(Fee(plans.fee_description(plan, following), plan.monthly_fee))
            routes, due = await figures(conn, account_id, balance, period, fees)
        return Upcoming(
            account_id,
            period,
            [(r["route"], r["calls"], r["amount"]) for r in routes],
            due,
            tuple(fees),
        )

    async def estimated_spend(self, account_id: str) -> tuple[Period, Estimate]:
        period = periods.at(self.clock(), self.anchor)
        today = utc_day(self.clock())
        async with self.pool.acquire() as conn:
            if await conn.fetchval("select 1 from accounts where id = $1", account_id) is None:
                raise NotFound(f"no account {account_id!r}")
            rows = await conn.fetch(
                "select day, sum(amount)::bigint as amount from usage_rollups"
                " where account_id = $1 and day >= $2 and day <= $3 group by day",
                account_id,
                min(period.start_day, today - 7),
                today,
            )
        by_day = {r["day"]: r["amount"] for r in rows}
        return period, estimate(by_day, period.start_day, period.end_day, today)

    async def invoices(
        self, account_id: str, *, status: str | None, limit: int, before: str | None = None
    ) -> tuple[list[Invoice], str | None]:
        """Newest period first; ``before`` is the last invoice id of the previous page."""
        async with self.pool.acquire() as conn:
            if await conn.fetchval("select 1 from accounts where id = $1", account_id) is None:
                raise NotFound(f"no account {account_id!r}")
            args: list[object] = [account_id, limit + 1, status]
            where = " and ($3::text is null or status = $3)"
            if before:
                where += (
                    " and (period_start, id) < (select period_start, id from invoices"
                    " where id = $4 and account_id = $1)"
                )
                args.append(before)
            rows = await conn.fetch(
                f"select id from invoices where account_id = $1{where}"
                " order by period_start desc, id desc limit $2",
                *args,
            )
            items = [i for r in rows[:limit] if (i := await load(conn, r["id"])) is not None]
        return items, (items[-1].id if len(rows) > limit else None)

    async def invoice(self, account_id: str, invoice_id: str) -> Invoice:
        async with self.pool.acquire() as conn:
            found = await load(conn, invoice_id)
        if found is None or found.account_id != account_id:
            raise NotFound(f"no invoice {invoice_id!r}")
        return found

    async def close_out(self, actor: Actor, invoice_id: str, status: str) -> Invoice:
        """An operator voids an open invoice or marks it uncollectible (audited): it is no
        longer charged, and an overdue policy it caused is lifted. Its amount stays owed
        on the balance; a later invoice bills it only as far as that period's own usage
        goes (an invoice's amount due never exceeds its usage and fee)."""
        assert status in ("void", "uncollectible")
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("select * from invoices where id = $1 for update", invoice_id)
            if row is None:
                raise NotFound(f"no invoice {invoice_id!r}")
            if row["status"] != "open":
                raise Conflict(f"invoice {invoice_id} is {row['status']}; only an open one can be")
            flight = await conn.fetchval(
                "select id from payments where invoice_id = $1 and status in"
                " ('pending', 'requires_action')",
                invoice_id,
            )
            if flight is not None:
                raise Conflict(f"a payment of invoice {invoice_id} is under way ({flight})")
            before = await load(conn, invoice_id)
            await conn.execute(
                "update invoices set status = $2, next_charge_at = null,"
                " voided_at = case when $2 = 'void' then now() end,"
                " row_version = row_version + 1 where id = $1",
                invoice_id,
                status,
            )
            await charges.lift_overdue(conn, row, self.overdue_policy)
            after = await load(conn, invoice_id)
            await audit.record(
                conn,
                actor,
                f"invoice.{status}",
                "invoice",
                invoice_id,
                account_id=row["account_id"],
                before={"status": before.status if before else None},
                after={"status": after.status if after else None},
            )
        assert after is not None
        return after
