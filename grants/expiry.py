"""The expiry sweep of the ledger worker: each grant past its ``expires_at`` is ended once,
and what was left of it is removed by one ``grant_expiry`` ledger entry.

How this works
--------------
1. Find accounts with live grants whose expiry has passed (at most ``CLAIM``).
2. Wait for the book: a grant expiring at T is ended only once every usage event
   admitted before T is in the ledger (its shard's offset is at T or later, or the
   shard's stream holds nothing past the offset), so calls made before T draw on it.
3. One transaction: claim the accounts (``FOR UPDATE SKIP LOCKED``: another worker, a
   credit or a batch holding one leaves it to the next pass), read their due grants
   again, and for each write the entry (idempotency key ``grant_expiry:<grant id>``,
   unique per account) and end the grant with the amount it removed. Commit.
4. Then tell Redis (``credit.lua`` under the entry's id, once). A crash or an outage
   before that leaves the entry unapplied: the next pass, or the admin API's sync
   loop, applies it.

Two workers cannot end one grant: the account's row lock serialises them and the
second reads the grant as ended; a crash before the commit leaves nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from admin import repository as repo
from admin import sync
from admin.records import Account, LedgerEntry
from grants import store
from grants.metrics import GrantMetrics
from ledger import streams
from ledger.crash import CrashHook
from ledger.events import StreamId
from meter import postgres_errors
from meter.live_state import LiveState, StateUnavailable
from meter.settings import Settings
from meter.woken_loop import run_woken

log = logging.getLogger("meter.grants")

CLAIM = 100  # accounts per pass
PASSING: tuple[type[BaseException], ...] = (*postgres_errors.UNAVAILABLE, StateUnavailable)


@dataclass(frozen=True, slots=True)
class Swept:
    ended: int  # grants ended in this pass
    removed: int  # micros their entries removed
    skipped: int  # accounts with due grants another transaction held (a later pass)
    accounts: int = 0  # accounts with due grants found


@dataclass(slots=True)
class Sweeper:
    pool: asyncpg.Pool
    live: LiveState
    settings: Settings
    clock: Callable[[], float] = time.time
    crash: CrashHook = field(default_factory=CrashHook)
    metrics: GrantMetrics = field(default_factory=GrantMetrics)

    def _at(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    async def sweep(self) -> Swept:
        await self.apply_unapplied()
        now = self.clock()
        due = await self.pool.fetch(
            "select distinct g.account_id, a.shard from credit_grants g"
            " join accounts a on a.id = g.account_id"
            " where g.ended_at is null and g.expires_at <= $1 limit $2",
            self._at(now),
            CLAIM,
        )
        if not due:
            return Swept(0, 0, 0, 0)
        booked = {s: await self.booked_until(s, now) for s in {r["shard"] for r in due}}
        entries: list[LedgerEntry] = []
        ended = 0
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetch(
                "select * from accounts where id = any($1::text[]) order by id"
                " for update skip locked",
                [r["account_id"] for r in due],
            )
            for row in claimed:
                account = Account.from_row(row)
                grants = await conn.fetch(
                    "select * from credit_grants where account_id = $1 and ended_at is null"
                    " and expires_at <= $2 order by expires_at, created_at, id",
                    account.id,
                    self._at(booked[account.shard]),
                )
                for g in grants:
                    entry = None
                    if g["remaining"] > 0:
                        entry = await repo.insert_credit(
                            conn,
                            account,
                            amount=-g["remaining"],
                            kind=store.EXPIRY,
                            description=f"Expired: what was left of grant grt_{g['id']}",
                            idempotency_key=f"grant_expiry:{g['id']}",
                        )
                        entries.append(entry)
                        account = await repo.get_account(conn, account.id) or account
                    await conn.execute(
                        "update credit_grants set remaining = 0, ended_at = $2,"
                        " expired_amount = $3, expiry_entry_id = $4 where id = $1",
                        g["id"],
                        self._at(now),
                        g["remaining"],
                        entry.id if entry else None,
                    )
                    ended += 1
            if ended:
                self.crash("expiry_before_commit")
        if ended:
            self.crash("expiry_after_commit")
        removed = -sum(e.amount for e in entries)
        self.metrics.expired.inc(ended)
        self.metrics.expired_micros.inc(removed)
        for entry in entries:
            await self._tell_redis(entry)
        return Swept(ended, removed, len(due) - len(claimed), len(due))

    async def booked_until(self, shard: int, now: float) -> float:
        """The time before which every usage event of ``shard`` is in the ledger."""
        asked = min(now, self.clock())
        last = await streams.last_generated_id(self.live.redis, shard)
        raw = await self.pool.fetchval("select last_id from ledger_offsets where shard = $1", shard)
        offset = StreamId.parse(raw) if raw is not None else StreamId(0, 0)
        if last is None or last <= offset:
            return asked  # nothing waits in the stream: booked through the question
        return min(asked, offset.ms / 1000)

    async def apply_unapplied(self) -> None:
        """The Redis step of expiries whose step was lost (a crash, Redis away)."""
        rows = await self.pool.fetch(
            "select e.*, a.shard from ledger_entries e join accounts a on a.id = e.account_id"
            " where not e.redis_applied and e.kind = $1 order by e.id limit $2",
            store.EXPIRY,
            CLAIM,
        )
        for row in rows:
            await self._tell_redis(LedgerEntry.from_row(row))

    async def _tell_redis(self, entry: LedgerEntry) -> None:
        if not await sync.then_redis(
            f"grant expiry {entry.credit_id}", sync.apply_credit(self.pool, self.live, entry)
        ):
            self.metrics.deferred.inc()

    async def next_wait(self) -> float:
        """Seconds until the next expiry Postgres knows of, at most the sweep interval."""
        interval = self.settings.grant_sweep_interval
        soonest = await self.pool.fetchval(
            "select min(expires_at) from credit_grants"
            " where ended_at is null and expires_at is not null"
        )
        if soonest is None:
            return interval
        left = soonest.timestamp() - self.clock()
        # Due but not ended (the book is behind, or the account was held): look again
        # after about one ledger batch.
        return min(interval, left if left > 0 else max(0.05, self.settings.ledger_max_wait))

    async def step(self) -> float:
        swept = await self.sweep()
        if swept.ended:
            log.info("grants expired", extra={"grants": swept.ended, "micros": swept.removed})
        return 0.0 if swept.accounts >= CLAIM else await self.next_wait()


async def run(sweeper: Sweeper, stop: asyncio.Event) -> None:
    """Until ``stop``: sweep at each expiry, when a grant with an expiry is written
    (``NOTIFY meter_grants``), and every ``METER_GRANT_SWEEP_INTERVAL``."""
    await run_woken(
        sweeper.settings.database_url, store.CHANNEL, sweeper.step, stop, passing=PASSING, log=log
    )
