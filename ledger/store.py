"""The worker's Postgres adapter: shard locks, offsets, day partitions, and the one
transaction that applies a batch. It translates; ``batching`` decides what to write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from grants import store as grant_store
from ledger.batching import Batch
from ledger.events import MS_PER_DAY, StreamId
from notifications import thresholds

NOTIFY = "notify_threshold"  # the admission script's signal of the operator's threshold

# Advisory lock key spaces (the two-int form: class, id).
SHARD_LOCK = 0x4C444752  # "LDGR": one lock per shard; the holder applies it
WORKER_LOCK = 0x4C444757  # "LDGW": one per live worker, to count them
PARTITION_LOCK = 0x4C444750  # "LDGP": serialises partition DDL

EPOCH = date(1970, 1, 1)
PARTITION_NAME = re.compile(r"^usage_events_p(\d{8})$")

# Dead clients are noticed by the server within about 5 + 2 * 3 seconds, so a lock held
# by a worker whose host vanished is released without waiting for the OS default (hours).
SESSION_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}

EVENT_COLUMNS = (
    "day",
    "shard",
    "stream_ms",
    "stream_seq",
    "kind",
    "account_id",
    "project_id",
    "key_id",
    "route",
    "amount",
    "call_day",
    "signals",
    "refund_of",
)


class OffsetMoved(Exception):
    """Postgres's offset for the shard is not the one the batch starts after: someone
    else applied it (or this worker lost its lock). Nothing was written."""


async def connect(
    dsn: str, *, name: str = "meter-ledger", connect_timeout: float = 5.0
) -> asyncpg.Connection:
    """A connection for the worker: keepalives on, no statement may hang forever, and
    ``name`` (pg_stat_activity.application_name) says which worker holds which locks."""
    return await asyncpg.connect(
        dsn,
        timeout=connect_timeout,
        command_timeout=60,
        server_settings={**SESSION_SETTINGS, "application_name": name},
    )


# -- ownership -----------------------------------------------------------------------


async def try_lock_shard(conn: asyncpg.Connection, shard: int) -> bool:
    return bool(
        await conn.fetchval("select pg_try_advisory_lock($1::int4, $2::int4)", SHARD_LOCK, shard)
    )


async def unlock_shard(conn: asyncpg.Connection, shard: int) -> None:
    await conn.fetchval("select pg_advisory_unlock($1::int4, $2::int4)", SHARD_LOCK, shard)


async def register_worker(conn: asyncpg.Connection, token: int) -> bool:
    return bool(
        await conn.fetchval("select pg_try_advisory_lock($1::int4, $2::int4)", WORKER_LOCK, token)
    )


async def count_workers(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "select count(*) from pg_locks l join pg_database d on d.oid = l.database"
            " where l.locktype = 'advisory' and l.granted and l.objsubid = 2"
            " and l.classid = $1::int4::oid and d.datname = current_database()",
            WORKER_LOCK,
        )
    )


# -- offsets and accounts ------------------------------------------------------------


async def load_offset(conn: asyncpg.Connection, shard: int) -> StreamId:
    await conn.execute(
        "insert into ledger_offsets (shard) values ($1) on conflict (shard) do nothing", shard
    )
    return StreamId.parse(
        await conn.fetchval("select last_id from ledger_offsets where shard = $1", shard)
    )


async def known_accounts(conn: asyncpg.Connection, account_ids: Iterable[str]) -> set[str]:
    rows = await conn.fetch("select id from accounts where id = any($1::text[])", list(account_ids))
    return {r["id"] for r in rows}


# -- day partitions of usage_events --------------------------------------------------


def partition_name(day: int) -> str:
    return f"usage_events_p{(EPOCH + timedelta(days=day)):%Y%m%d}"


def partition_day(name: str) -> int | None:
    m = PARTITION_NAME.match(name)
    if m is None:
        return None
    return (datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC).date() - EPOCH).days


async def existing_partitions(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'usage_events'::regclass"
    )
    return {d for r in rows if (d := partition_day(r["relname"])) is not None}


async def ensure_partitions(conn: asyncpg.Connection, days: Iterable[int]) -> None:
    """Create the day partitions that are missing (DDL in its own short transaction)."""
    wanted = set(days)
    if not wanted:
        return
    async with conn.transaction():
        await conn.execute("set local lock_timeout = '10s'")
        await conn.execute("select pg_advisory_xact_lock($1::int4, 0)", PARTITION_LOCK)
        missing = sorted(wanted - await existing_partitions(conn))
        for day in missing:
            await conn.execute(
                f"create table if not exists {partition_name(day)} partition of usage_events"
                f" for values from ({int(day)}) to ({int(day) + 1})"
            )


async def drop_partitions_before(conn: asyncpg.Connection, day: int) -> list[str]:
    """Drop the raw-event partitions of days before ``day`` (retention)."""
    dropped = []
    for old in sorted(d for d in await existing_partitions(conn) if d < day):
        async with conn.transaction():
            await conn.execute("set local lock_timeout = '2s'")
            await conn.execute("select pg_advisory_xact_lock($1::int4, 0)", PARTITION_LOCK)
            await conn.execute(f"drop table if exists {partition_name(old)}")
        dropped.append(partition_name(old))
    return dropped


# -- the batch -----------------------------------------------------------------------

APPLY_LINES = """
with line as (
    select * from unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
        as t(account_id, amount, kind, description, idempotency_key)
), moved as (
    update accounts a set balance = a.balance + line.amount
    from line where a.id = line.account_id
    returning a.id, a.balance
)
insert into ledger_entries
    (account_id, amount, balance_after, kind, description, idempotency_key, redis_applied)
select line.account_id, line.amount, moved.balance, line.kind, line.description,
       line.idempotency_key, true
from line join moved on moved.id = line.account_id
order by line.account_id
returning account_id, id, amount, balance_after
"""

UPSERT_ROLLUPS = """
insert into usage_rollups as u (account_id, day, route, calls, amount)
select * from unnest($1::text[], $2::int[], $3::text[], $4::bigint[], $5::bigint[])
on conflict (account_id, day, route) do update
    set calls = u.calls + excluded.calls, amount = u.amount + excluded.amount
"""

INSERT_SIGNALS = """
insert into account_signals (account_id, kind, day, shard, stream_id)
select a, k, d, $5, s from unnest($1::text[], $2::text[], $3::int[], $4::text[]) as t(a, k, d, s)
"""


def event_records(batch: Batch) -> list[tuple[Any, ...]]:
    shard = batch.shard
    return [
        (
            e.ms // MS_PER_DAY,
            shard,
            e.ms,
            e.seq,
            e.kind.encode(),
            e.account_id,
            e.project_id,
            e.key_id,
            e.route,
            e.amount,
            e.call_day,
            e.signals,
            e.refund_of,
        )
        for e in batch.events
    ]


async def apply_batch(
    conn: asyncpg.Connection, batch: Batch, *, step: Callable[[str], None] = lambda _: None
) -> None:
    """Write the whole batch and move the shard's offset, in one transaction.

    ``step`` is called at named points inside the transaction (the crash-injection
    hook of the fault tests).
    """
    async with conn.transaction():
        current = await conn.fetchval(
            "select last_id from ledger_offsets where shard = $1 for update", batch.shard
        )
        if current is None or StreamId.parse(current) != batch.after:
            raise OffsetMoved(
                f"shard {batch.shard}: offset is {current}, batch starts after {batch.after}"
            )
        if batch.events:
            await conn.copy_records_to_table(
                "usage_events", records=event_records(batch), columns=EVENT_COLUMNS
            )
        step("mid_insert")
        if batch.lines:
            lines = batch.lines
            written = await conn.fetch(
                APPLY_LINES,
                [x.account_id for x in lines],
                [x.amount for x in lines],
                [x.kind for x in lines],
                [x.description for x in lines],
                [x.idempotency_key for x in lines],
            )
            # The net usage draws on the accounts' grants (their rows are locked now).
            await grant_store.apply_lines(
                conn,
                [
                    grant_store.Line(r["account_id"], r["id"], r["amount"], r["balance_after"])
                    for r in written
                ],
            )
        if batch.rollups:
            rollups = batch.rollups
            await conn.execute(
                UPSERT_ROLLUPS,
                [r.account_id for r in rollups],
                [r.day for r in rollups],
                [r.route for r in rollups],
                [r.calls for r in rollups],
                [r.amount for r in rollups],
            )
        if batch.rollups:
            flagged = [(s.account_id, s.day) for s in batch.signals if s.kind == NOTIFY]
            await thresholds.fire(conn, [(r.account_id, r.day) for r in batch.rollups], flagged)
        if batch.signals:
            signals = batch.signals
            await conn.execute(
                INSERT_SIGNALS,
                [s.account_id for s in signals],
                [s.kind for s in signals],
                [s.day for s in signals],
                [s.stream_id for s in signals],
                batch.shard,
            )
            # Wakes the payments loop (delivered at commit, not before).
            await conn.execute("select pg_notify('meter_signals', '')")
        await conn.execute(
            "update ledger_offsets set last_id = $2, events_applied = events_applied + $3,"
            " updated_at = now() where shard = $1",
            batch.shard,
            str(batch.last),
            len(batch.events),
        )
        step("before_commit")
