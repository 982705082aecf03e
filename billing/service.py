"""Invoices as the admin API and the portal read them (the one service layer)."""

from __future__ import annotations

import asyncpg

from admin.errors import NotFound
from billing.invoices import Invoice, load

STATUSES = ("draft", "open", "paid", "void", "uncollectible")


class Invoices:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

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
