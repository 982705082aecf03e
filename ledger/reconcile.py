"""`meter reconcile [--repair]`: prove Redis agrees with the book, or rebuild Redis from it.

How a shard is checked without stopping anything
------------------------------------------------
1. Hold the shard's trimming (ledger_hold.lua) so the worker keeps committing but
   leaves the entries in the stream for a moment.
2. Read the book (REPEATABLE READ): balances, pending credits and the shard's offset.
3. Read, in one Lua call, the Redis balances and the stream's newest entry id.
   Admissions move a balance and append their event atomically, so those
   balances contain exactly the events up to that id.
4. Read the entries between the offset and that id, then check the stream was not
   trimmed past the offset meanwhile (the hold expired): else start again at 2.
5. Compare (``drift``). A drifting account is checked once more; only a drift
   seen twice is reported (a credit committed between steps 2 and 3 shows once).

Repair does 1, 2 and 4 the other way round: it reads the entries after the offset
first, then one Lua call per chunk of accounts sets each balance to the book's
minus those entries, adding whatever the gateway appended since.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeAlias, TypeVar

import asyncpg
import redis.asyncio as aioredis

from ledger import book, streams
from ledger.drift import (
    AccountDrift,
    BookAccount,
    Report,
    account_drift,
    merge,
    net_debits_by_account,
    spent_by_account,
)
from ledger.events import MS_PER_DAY, MalformedEvent, UsageEvent, parse_event
from ledger.metrics import LedgerMetrics
from meter import keys
from meter.live_state import KeyRecord, LiveState, StateUnavailable
from meter.money import NONE
from meter.settings import Settings

Db: TypeAlias = asyncpg.Connection | asyncpg.Pool
T = TypeVar("T")

HOLD_MS = 30_000
ACCOUNTS_PER_CALL = 500
ATTEMPTS = 5


class ReconcileError(RuntimeError):
    """The shard kept moving under us (or Redis failed); nothing was concluded."""


@contextlib.asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


@contextlib.asynccontextmanager
async def _held(client: aioredis.Redis, shard: int) -> AsyncIterator[None]:
    token = uuid.uuid4().hex
    await streams.hold(client, shard, token, HOLD_MS)
    try:
        yield
    finally:
        with contextlib.suppress(StateUnavailable):
            await streams.hold(client, shard, token, 0)


def _events(entries: Sequence[streams.Entry]) -> list[UsageEvent]:
    out = []
    for entry_id, fields in entries:
        with contextlib.suppress(MalformedEvent):
            out.append(parse_event(entry_id, fields))
    return out


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- reconcile -----------------------------------------------------------------------


async def check_shard(conn: asyncpg.Connection, client: aioredis.Redis, shard: int) -> Report:
    async with _held(client, shard):
        for _ in range(ATTEMPTS):
            report = await _check_once(conn, client, shard)
            if report is not None:
                return report
    raise ReconcileError(
        f"shard {shard}: the stream was trimmed past the book's offset {ATTEMPTS} times"
    )


async def _check_once(
    conn: asyncpg.Connection, client: aioredis.Redis, shard: int
) -> Report | None:
    snapshot = await book.read_shard(conn, shard)
    reads: list[tuple[Sequence[BookAccount], streams.RedisBalances]] = []
    for chunk in _chunks(snapshot.accounts, ACCOUNTS_PER_CALL):
        balances = await streams.read_balances(
            client,
            shard,
            snapshot.offset,
            [(a.account_id, [c for c, _ in a.pending_credits]) for a in chunk],
        )
        if balances is None:
            return None
        reads.append((chunk, balances))
    newest = max((b.newest for _, b in reads), default=snapshot.offset)
    events = _events(await streams.read_range(client, shard, snapshot.offset, newest))
    if await streams.trimmed_through(client, shard) > snapshot.offset:
        return None
    drifts: list[AccountDrift] = []
    for chunk, balances in reads:
        seen = [e for e in events if (e.ms, e.seq) <= (balances.newest.ms, balances.newest.seq)]
        unapplied = net_debits_by_account(seen)
        for account in chunk:
            d = account_drift(
                shard,
                account,
                unapplied.get(account.account_id, 0),
                balances.balances[account.account_id],
                balances.applied_credits[account.account_id],
            )
            if not d.agrees:
                drifts.append(d)
    return Report((shard,), len(snapshot.accounts), tuple(drifts))


async def reconcile(
    db: Db, client: aioredis.Redis, shards: Sequence[int] | None = None, *, confirm: bool = True
) -> Report:
    """Compare every account of ``shards`` (default: all in use); see the module doc."""
    async with _connection(db) as conn:
        if shards is None:
            shards = await book.shards_in_use(conn)
        reports = []
        for shard in shards:
            report = await check_shard(conn, client, shard)
            if confirm and not report.ok:
                again = await check_shard(conn, client, shard)
                first = {d.account_id for d in report.drifts}
                report = Report(
                    again.shards,
                    again.checked,
                    tuple(d for d in again.drifts if d.account_id in first),
                )
            reports.append(report)
        return merge(reports)


async def reconcile_and_export(
    db: Db,
    client: aioredis.Redis,
    shards: Sequence[int],
    metrics: LedgerMetrics,
) -> Report:
    """The worker's periodic pass over its shards: reconcile and set the drift gauges."""
    report = await reconcile(db, client, shards)
    for shard, (total, count) in report.by_shard().items():
        metrics.drift_micros.labels(str(shard)).set(total)
        metrics.drift_accounts.labels(str(shard)).set(count)
    metrics.reconcile_runs.labels("ok" if report.ok else "drift").inc()
    return report


# -- repair --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepairReport:
    shards: tuple[int, ...]
    created: int  # account hashes that were missing
    rebuilt: int  # account hashes that existed and were set from the book
    api_keys: int

    def render(self) -> str:
        return (
            f"repaired {len(self.shards)} shards: {self.created:,} accounts recreated, "
            f"{self.rebuilt:,} rebuilt, {self.api_keys:,} API keys restored"
        )


def _opt(value: int | None) -> int:
    return NONE if value is None else value


def repair_plan(
    records: Sequence[book.AccountRecord], events: Sequence[UsageEvent], today: int
) -> list[streams.RepairAccount]:
    """What each account's hash becomes, counting the entries read after the offset."""
    unapplied = net_debits_by_account(events)
    spent = spent_by_account(events, today)
    return [
        streams.RepairAccount(
            account_id=r.account_id,
            balance=r.balance - unapplied.get(r.account_id, 0),
            spent_today=max(0, r.spent_today + spent.get(r.account_id, 0)),
            version=r.config_version,
            overage_line=r.overage_line,
            daily_hard_limit=_opt(r.daily_hard_limit),
            daily_notify_threshold=_opt(r.daily_notify_threshold),
            low_balance_threshold=_opt(r.low_balance_threshold),
            status=keys.account_status(
                suspended=r.suspended,
                payment_method_required=r.payment_method_required,
                price_table=r.price_table,
            ),
            notify_fired_day=today if r.notify_fired_today else NONE,
            limit_fired_day=today if r.limit_fired_today else NONE,
            credits=r.credits,
            revoked_keys=r.revoked_keys,
        )
        for r in records
    ]


async def repair_shard(
    conn: asyncpg.Connection, client: aioredis.Redis, shard: int, *, now: float
) -> RepairReport:
    today = int(now * 1000) // MS_PER_DAY
    since_ms = int(now * 1000) - keys.CREDIT_MEMORY_MS
    async with _held(client, shard):
        for _ in range(ATTEMPTS):
            snapshot = await book.read_shard_for_repair(conn, shard, today, since_ms)
            newest = await streams.newest_id(client, shard)
            through = max(newest, snapshot.offset) if newest is not None else snapshot.offset
            events = _events(await streams.read_range(client, shard, snapshot.offset, through))
            created = rebuilt = 0
            for table_id, spec in snapshot.price_tables:  # before a status names one
                await LiveState(client).put_price_table_on(shard, table_id, spec)
            for chunk in _chunks(repair_plan(snapshot.accounts, events, today), ACCOUNTS_PER_CALL):
                result = await streams.repair_accounts(
                    client, shard, snapshot.offset, through, today, chunk
                )
                if result is None:
                    break
                created += result.created
                rebuilt += result.rebuilt
            else:
                state = LiveState(client)
                for k in snapshot.keys:
                    await state.put_api_key(
                        k.key_hash, KeyRecord(k.key_id, k.project_id, k.account_id, shard)
                    )
                return RepairReport((shard,), created, rebuilt, len(snapshot.keys))
    raise ReconcileError(
        f"shard {shard}: the stream was trimmed past the book's offset {ATTEMPTS} times"
    )


async def repair(
    db: Db,
    client: aioredis.Redis,
    shards: Sequence[int] | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> RepairReport:
    """Rebuild the Redis state of every account of ``shards`` from the book."""
    async with _connection(db) as conn:
        if shards is None:
            shards = await book.shards_in_use(conn)
        parts = [await repair_shard(conn, client, shard, now=clock()) for shard in shards]
    return RepairReport(
        tuple(s for p in parts for s in p.shards),
        sum(p.created for p in parts),
        sum(p.rebuilt for p in parts),
        sum(p.api_keys for p in parts),
    )


rebuild = repair  # `command`'s flag is named like the CLI's --repair


# -- the command ---------------------------------------------------------------------


async def command(settings: Settings, *, repair: bool = False, out: TextIO | None = None) -> int:
    """`meter reconcile [--repair]`: prints the report; returns the exit status: 0 agree,
    1 drift, 2 could not tell (Postgres or Redis unreachable, or the stream kept moving)."""
    out = out or sys.stdout
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"reconcile failed: postgres unreachable: {exc}", file=out)
        return 2
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=max(5.0, settings.redis_timeout),
        socket_connect_timeout=5.0,
    )
    try:
        shards = list(range(settings.shards))
        if repair:
            print((await rebuild(conn, client, shards)).render(), file=out)
        report = await reconcile(conn, client, shards)
        print(report.render(), file=out)
        return 0 if report.ok else 1
    except (ReconcileError, StateUnavailable, asyncpg.PostgresError, OSError) as exc:
        print(f"reconcile failed: {exc}", file=out)
        return 2
    finally:
        await client.aclose()
        await conn.close()


__all__ = [
    "ReconcileError",
    "RepairReport",
    "Report",
    "command",
    "reconcile",
    "reconcile_and_export",
    "repair",
]
