"""The balance history and usage queries behind the admin API's

    GET /v1/accounts/{id}/transactions?limit=&cursor=
    GET /v1/accounts/{id}/usage?from=&to=&group_by=day|month|route

Plain async functions over an asyncpg connection or pool, returning exactly the
response bodies. Both stay index-only-fast however large the account: the history
is a keyset walk down ``ledger_entries (account_id, id desc)`` (one entry per
account per batch, never per event), and usage reads ``usage_rollups`` (one row
per account, day and route), never the raw events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from ledger.errors import UnknownAccount
from ledger.history_query import (
    LAST_ENTRY_ID,
    TransactionsQuery,
    UsageQuery,
    encode_cursor,
    periods,
    routes,
    to_day,
    transactions_query,
    usage_query,
)
from meter import entry_kinds

Db: TypeAlias = asyncpg.Connection | asyncpg.Pool

# The keyset walk: one statement for every page, down ledger_entries_account
# (account_id, id desc) from the cursor. "(select $1::text)" rather than "$1" on
# purpose: the planner then cannot look the account up in its statistics, so it never
# judges an account big enough to walk the primary key backwards and filter instead
# (for a big account whose entries are not the table's newest that read a million rows:
# 95 ms instead of 0.2 ms), in custom and generic plans alike; the subquery's value is
# still an index condition, so the scan seeks straight to the cursor.
PAGE = (
    "select id, description, created_at, amount, balance_after, kind from ledger_entries"
    " where account_id = (select $1::text) and id < $2 order by id desc limit $3"
)
NO_CURSOR = LAST_ENTRY_ID  # above every entry id


@dataclass(frozen=True, slots=True)
class Transaction:
    id: int  # shown as its public id, le_<id> (entry_kinds.entry_id)
    description: str
    created_at: str  # ISO 8601, UTC
    amount: int  # signed micros: credits positive, debits negative
    balance_after: int
    kind: str


@dataclass(frozen=True, slots=True)
class TransactionPage:
    data: tuple[Transaction, ...]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": [
                {
                    "id": entry_kinds.entry_id(t.id),
                    "description": t.description,
                    "created_at": t.created_at,
                    "amount": t.amount,
                    "balance_after": t.balance_after,
                    "kind": t.kind,
                }
                for t in self.data
            ],
            "next_cursor": self.next_cursor,
        }


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def _account_exists(db: Db, account_id: str) -> bool:
    return bool(
        await db.fetchval("select exists(select 1 from accounts where id = $1)", account_id)
    )


async def transactions(
    db: Db, account_id: str, query: TransactionsQuery | None = None
) -> TransactionPage:
    """One page of the balance history, newest first."""
    query = query or TransactionsQuery()
    before = NO_CURSOR if query.before_id is None else query.before_id
    rows = await db.fetch(PAGE, account_id, before, query.limit + 1)
    if not rows and not await _account_exists(db, account_id):
        raise UnknownAccount(f"no account {account_id}")
    page = rows[: query.limit]
    data = tuple(
        Transaction(
            r["id"],
            r["description"],
            _iso(r["created_at"]),
            r["amount"],
            r["balance_after"],
            r["kind"],
        )
        for r in page
    )
    more = len(rows) > query.limit
    return TransactionPage(data, encode_cursor(page[-1]["id"]) if more else None)


async def transactions_response(
    db: Db, account_id: str, params: Mapping[str, str]
) -> dict[str, Any]:
    """The whole route: query string in, response body out (raises LedgerError)."""
    return (await transactions(db, account_id, transactions_query(params))).to_dict()


async def usage(db: Db, account_id: str, query: UsageQuery, today: date) -> dict[str, Any]:
    """Usage over the query's range, plus today and yesterday for the spend view."""
    start, end = to_day(query.start), to_day(query.end)
    if query.group_by == "route":
        rows = await db.fetch(
            "select route, sum(calls)::bigint as calls, sum(amount)::bigint as amount"
            " from usage_rollups where account_id = $1 and day between $2 and $3 group by route",
            account_id,
            start,
            end,
        )
        data = routes((r["route"], r["calls"], r["amount"]) for r in rows)
    else:
        rows = await db.fetch(
            "select day, sum(calls)::bigint as calls, sum(amount)::bigint as amount"
            " from usage_rollups where account_id = $1 and day between $2 and $3 group by day",
            account_id,
            start,
            end,
        )
        data = periods(query, {r["day"]: (r["calls"], r["amount"]) for r in rows})
    t = to_day(today)
    recent = {
        r["day"]: (r["calls"], r["amount"])
        for r in await db.fetch(
            "select day, sum(calls)::bigint as calls, sum(amount)::bigint as amount"
            " from usage_rollups where account_id = $1 and day between $2 and $3 group by day",
            account_id,
            t - 1,
            t,
        )
    }
    if not rows and not recent and not await _account_exists(db, account_id):
        raise UnknownAccount(f"no account {account_id}")

    def day_summary(day: date) -> dict[str, Any]:
        calls, amount = recent.get(to_day(day), (0, 0))
        return {"date": day.isoformat(), "calls": calls, "amount": amount}

    return {
        "data": data,
        "today": day_summary(today),
        "yesterday": day_summary(today - timedelta(days=1)),
    }


async def usage_response(
    db: Db, account_id: str, params: Mapping[str, str], today: date
) -> dict[str, Any]:
    """The whole route: query string in, response body out (raises LedgerError)."""
    return await usage(db, account_id, usage_query(params, today), today)


async def credit_totals(db: Db, account_id: str) -> tuple[int, int]:
    """(granted, purchased) micros over the account's life: the overview's total credits.

    Grants are the provider's gifts and plan credits; purchases are paid credits and
    auto-recharges. Refunds of usage are neither (they undo a debit). ``kind <> 'usage'``
    lets the planner read the partial index ``ledger_entries_credits``: a busy account
    has millions of usage entries and a handful of credits.
    """
    row = await db.fetchrow(
        "select coalesce(sum(amount) filter (where kind = 'grant'), 0)::bigint as granted,"
        " coalesce(sum(amount) filter (where kind in ('credit', 'recharge', 'purchase')), 0)"
        "::bigint as purchased from ledger_entries"
        " where account_id = $1 and kind <> 'usage' and amount > 0",
        account_id,
    )
    return int(row["granted"]), int(row["purchased"])
