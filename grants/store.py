"""Credit grants in Postgres: written in the transaction of the ledger entry that moves
them. It translates; ``spending`` decides.

Every writer holds the account's row lock before it touches the account's grants (a
credit locks the account; a ledger batch's balance update locks it; the expiry sweep
claims accounts with FOR UPDATE SKIP LOCKED), so one account's grants are never
written by two transactions at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grants import spending
from grants.spending import Grant, Moved

Conn = Any  # asyncpg.Connection | asyncpg.Pool
CHANNEL = "meter_grants"  # told of every grant with an expiry (the sweep re-plans)
EXPIRY = "grant_expiry"

# The grant kind of a credit entry whose writer named none.
DEFAULT_KIND = {
    "credit": spending.PURCHASED,
    "grant": spending.PROMOTIONAL,
    "recharge": spending.PURCHASED,
    "purchase": spending.PURCHASED,
    "adjustment": spending.PURCHASED,
}

_LIVE = (
    "select id, account_id, amount, remaining, expires_at, created_at, drawn, taken"
    " from credit_grants where account_id = any($1::text[]) and ended_at is null"
)


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A grant as the read side shows it, live or past."""

    id: int
    account_id: str
    kind: str
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    ended_at: datetime | None
    expired_amount: int | None
    ledger_entry_id: int | None
    expiry_entry_id: int | None


def _grant(row: Any) -> Grant:
    return Grant(
        row["id"],
        row["amount"],
        row["remaining"],
        row["expires_at"],
        row["created_at"],
        row["drawn"],
        row["taken"],
    )


async def live(conn: Conn, account_ids: Iterable[str]) -> dict[str, list[Grant]]:
    by_account: dict[str, list[Grant]] = defaultdict(list)
    for row in await conn.fetch(_LIVE, list(account_ids)):
        by_account[row["account_id"]].append(_grant(row))
    return by_account


async def write(conn: Conn, changed: Sequence[Grant]) -> None:
    if changed:
        await conn.execute(
            "update credit_grants g set remaining = u.remaining, drawn = u.drawn, taken = u.taken"
            " from unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])"
            " as u(id, remaining, drawn, taken) where g.id = u.id",
            [g.id for g in changed],
            [g.remaining for g in changed],
            [g.drawn for g in changed],
            [g.taken for g in changed],
        )


async def on_entry(
    conn: Conn,
    *,
    account_id: str,
    entry_id: int,
    kind: str,
    amount: int,
    balance_before: int,
    grant_kind: str | None = None,
    expires_at: datetime | None = None,
    draw_first: str | None = None,
) -> None:
    """What a ledger entry written outside the batches does to the account's grants, in
    its transaction: a credit becomes a grant; a debit (a payment refund) draws on them,
    ``draw_first`` (the refunded payment: its entry's idempotency key) first."""
    if kind == EXPIRY or amount == 0:
        return  # the sweep ends the grant itself
    grants = (await live(conn, [account_id])).get(account_id, [])
    if amount < 0:
        first = None
        if draw_first is not None:
            first = await conn.fetchval(
                "select g.id from credit_grants g join ledger_entries e on e.id = g.ledger_entry_id"
                " where e.account_id = $1 and e.idempotency_key = $2 and g.ended_at is null",
                account_id,
                draw_first,
            )
        await write(conn, spending.debit(grants, -amount, first=first).changed)
        return
    remaining, drawn, taken = spending.opening(grants, balance_before, amount)
    await conn.execute(
        "insert into credit_grants"
        " (account_id, ledger_entry_id, kind, amount, remaining, expires_at, drawn, taken)"
        " values ($1, $2, $3, $4, $5, $6, $7, $8)",
        account_id,
        entry_id,
        grant_kind or DEFAULT_KIND.get(kind, spending.PURCHASED),
        amount,
        remaining,
        expires_at,
        drawn,
        taken,
    )
    if expires_at is not None:
        await conn.execute("select pg_notify($1, '')", CHANNEL)


@dataclass(frozen=True, slots=True)
class Line:
    """A ledger batch's net usage line of one account, as written."""

    account_id: str
    entry_id: int
    amount: int  # signed: usage negative
    balance_after: int


# A debit line needs only the grants it will draw on: in spending order, those whose
# predecessors hold less than the debit. Postgres picks them (and the account's highest
# draw number), so a batch does not carry every live grant of every account to Python.
_NEEDED = """
select * from (
    select g.id, g.account_id, g.amount, g.remaining, g.expires_at, g.created_at, g.drawn,
           g.taken, n.need, max(g.drawn) over (partition by g.account_id) as top,
           sum(g.remaining) over (partition by g.account_id
               order by g.expires_at asc nulls last, g.created_at, g.id) - g.remaining as before
    from credit_grants g
    join unnest($1::text[], $2::bigint[]) as n(account_id, need) on n.account_id = g.account_id
    where g.ended_at is null
) x where x.remaining > 0 and x.before < x.need
"""


async def apply_lines(conn: Conn, lines: Sequence[Line]) -> None:
    """Draw a batch's net usage on the grants of its accounts (in the batch's transaction,
    whose balance update holds the account rows)."""
    debits = [x for x in lines if x.amount < 0]
    backs = [x for x in lines if x.amount > 0]
    changed: list[Grant] = []
    residual: list[tuple[Line, int]] = []
    if debits:
        needed: dict[str, list[Grant]] = defaultdict(list)
        tops: dict[str, int] = {}
        rows = await conn.fetch(
            _NEEDED, [x.account_id for x in debits], [-x.amount for x in debits]
        )
        for row in rows:
            needed[row["account_id"]].append(_grant(row))
            tops[row["account_id"]] = row["top"]
        for x in debits:
            if x.account_id in needed:
                mine = needed[x.account_id]
                changed += spending.debit(mine, -x.amount, top=tops[x.account_id]).changed
    if backs:
        grants = await live(conn, {x.account_id for x in backs})
        for x in backs:
            moved: Moved = spending.line(
                grants.get(x.account_id, ()), x.balance_after - x.amount, x.amount
            )
            changed += moved.changed
            if moved.residual:
                residual.append((x, moved.residual))
    await write(conn, changed)
    if residual:
        await conn.execute(
            "insert into credit_grants (account_id, ledger_entry_id, kind, amount, remaining)"
            " select a, e, $4, r, r from unnest($1::text[], $2::bigint[], $3::bigint[])"
            " as t(a, e, r)",
            [x.account_id for x, _ in residual],
            [x.entry_id for x, _ in residual],
            [r for _, r in residual],
            spending.REFUND,
        )


# -- the read side --------------------------------------------------------------------


async def grant_of_entry(conn: Conn, entry_id: int) -> GrantRecord | None:
    row = await conn.fetchrow("select * from credit_grants where ledger_entry_id = $1", entry_id)
    return None if row is None else _record(row)


def _record(row: Any) -> GrantRecord:
    return GrantRecord(**{name: row[name] for name in GrantRecord.__slots__})


async def page(
    conn: Conn, account_id: str, *, limit: int, before: int | None
) -> tuple[list[GrantRecord], int | None]:
    """The account's grants, newest first; the id to continue before, or None."""
    rows = await conn.fetch(
        "select * from credit_grants where account_id = $1 and ($2::bigint is null or id < $2)"
        " order by id desc limit $3",
        account_id,
        before,
        limit + 1,
    )
    records = [_record(r) for r in rows[:limit]]
    return records, (records[-1].id if len(rows) > limit else None)


async def live_records(conn: Conn, account_id: str) -> list[GrantRecord]:
    """The live grants in spending order (what usage draws on next first)."""
    rows = await conn.fetch(
        "select * from credit_grants where account_id = $1 and ended_at is null"
        " order by expires_at asc nulls last, created_at, id",
        account_id,
    )
    return [_record(r) for r in rows]
