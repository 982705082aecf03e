"""Helpers of the grant tests: credit a grant the way the admin API does, spend through
the admission script, and read book, Redis and grants back to the micro."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger_fixtures import caught_up, wait_for
from payments_support import ACTOR, Paying

from admin import models
from meter.live_state import Admission, Call
from meter.money import utc_day


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def grant(
    paying: Paying,
    account: str,
    amount: int,
    *,
    kind: str = "promotional",
    expires_at: float | None = None,
    key: str | None = None,
) -> int:
    """A credit with its grant; returns the grant's id."""
    written = await paying.services.provisioning.add_credit(
        ACTOR,
        account,
        models.NewCredit(
            amount=amount,
            description=f"{kind} grant",
            idempotency_key=key or f"{kind}-{amount}-{expires_at}-{time.monotonic_ns()}",
            kind="grant",
            grant_kind=kind,  # type: ignore[arg-type]
            expires_at=None if expires_at is None else iso(expires_at),
        ),
    )
    assert written.live
    grant_id = await paying.pool.fetchval(
        "select id from credit_grants where ledger_entry_id = $1", written.value.entry.id
    )
    return int(grant_id)


async def spend(paying: Paying, account: str, price: int) -> tuple[Call, Admission]:
    """One call admitted (debited in Redis, its event in the stream)."""
    acct = await paying.services.provisioning.account(account)
    call = Call(acct.shard, acct.id, "proj_x", "key_x", "chat", price)
    admission = await paying.live.admit(call, utc_day(time.time()))
    assert admission.admitted
    return call, admission


async def refund(paying: Paying, spent: tuple[Call, Admission], amount: int) -> None:
    call, admission = spent
    assert await paying.live.settle(call, admission, amount, utc_day(time.time())) == 1


async def booked(paying: Paying) -> None:
    async def done() -> bool:
        async with paying.pool.acquire() as conn:
            return await caught_up(conn, paying.live, paying.settings.shards)

    await wait_for(done, 20, "the ledger caught up")


@dataclass(frozen=True, slots=True)
class Books:
    book: int  # accounts.balance
    redis: int  # the live balance
    live: dict[int, int]  # live grant id -> remaining
    ended: dict[int, int]  # expired grant id -> what its expiry removed
    expiries: list[int]  # amounts of the grant_expiry entries

    @property
    def held(self) -> int:
        return sum(self.live.values())


async def books(paying: Paying, account: str) -> Books:
    rows = await paying.pool.fetch(
        "select id, remaining, ended_at, expired_amount from credit_grants where account_id = $1",
        account,
    )
    expiries = await paying.pool.fetch(
        "select amount from ledger_entries where account_id = $1 and kind = 'grant_expiry'"
        " order by id",
        account,
    )
    return Books(
        await paying.book_balance(account),
        await paying.live_balance(account),
        {r["id"]: r["remaining"] for r in rows if r["ended_at"] is None},
        {r["id"]: r["expired_amount"] for r in rows if r["ended_at"] is not None},
        [r["amount"] for r in expiries],
    )


def consistent(b: Books) -> None:
    """Book == Redis, and the live grants hold the balance when it is not below zero."""
    assert b.book == b.redis
    assert b.held == max(0, b.book)
