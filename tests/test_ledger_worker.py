"""The worker in-process against real Redis and Postgres: batches land exactly once,
the balance history reads well, streams are trimmed only after commit, signals are
kept, batches are bounded by size and time, shards move between workers."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
from ledger_fixtures import (
    Account,
    caught_up,
    ledger_settings,
    make_traffic,
    owns_all,
    provision,
    redis_debited,
    running_worker,
    stream_lengths,
    totals,
    wait_for,
)

from ledger import store
from ledger.events import MS_PER_DAY
from ledger.metrics import LedgerMetrics
from meter import keys
from meter.live_state import LiveState
from meter.money import usd, utc_day

SHARDS = 4


async def accounts(
    db: asyncpg.Connection, state: LiveState, n: int, balance: int = usd(100), **limits: int
) -> list[Account]:
    return [
        await provision(db, state, f"acct_{i:03d}", SHARDS, balance, **limits) for i in range(n)
    ]


async def test_every_event_lands_once_and_streams_are_trimmed(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 12)
    traffic = await make_traffic(live_state, accts, 600, rng=random.Random(1))
    settings = ledger_settings(redis_url, database_url)
    async with running_worker(settings) as worker:
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
        assert worker.owned == frozenset(range(SHARDS))
        more = await make_traffic(live_state, accts, 300, rng=random.Random(2))
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up again")

        async def trimmed() -> bool:
            return await stream_lengths(live_state, SHARDS) == 0

        await wait_for(trimmed, what="trim")
    t = await totals(db)
    assert t.duplicates == 0 and t.events == traffic.events + more.events
    assert t.usage == t.events_net == t.rollup_net == traffic.charged + more.charged
    assert t.usage == await redis_debited(db, live_state)
    # Each account's projection equals its last balance_after, and its Redis balance.
    rows = await db.fetch(
        "select a.id, a.shard, a.balance, (select balance_after from ledger_entries e"
        " where e.account_id = a.id order by id desc limit 1) as last from accounts a"
    )
    for r in rows:
        assert r["balance"] == r["last"]
        assert (
            int(await live_state.redis.hget(keys.account(r["shard"], r["id"]), "bal"))
            == r["balance"]
        )
    # One readable usage line per account per batch, never per event.
    lines = await db.fetchval("select count(*) from ledger_entries where kind = 'usage'")
    assert lines < t.events / 2
    description = await db.fetchval(
        "select description from ledger_entries where kind = 'usage' limit 1"
    )
    assert description.startswith(("Usage ", "Refunds ")) and "call" in description


async def test_signals_become_pending_work(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    (a,) = await accounts(
        db,
        live_state,
        1,
        balance=1_000,
        overage_line=500,
        daily_hard_limit=1_200,
        daily_notify_threshold=300,
        low_balance_threshold=800,
    )
    day = utc_day(time.time())
    seen = [await live_state.admit(a.call(400), day) for _ in range(4)]
    assert [s.admitted for s in seen] == [True, True, True, False]
    async with running_worker(ledger_settings(redis_url, database_url)):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    rows = await db.fetch("select kind, day, processed_at from account_signals order by id")
    assert [r["kind"] for r in rows] == [
        "notify_threshold",  # call 1: 400 of 300 spent
        "balance_low",  # call 1: 600 left, threshold 800
        "hard_limit",  # call 3: 1,200 of 1,200 spent
        "overage_started",  # call 3: balance -200
    ]
    assert all(r["day"] == day and r["processed_at"] is None for r in rows)
    # The refused 4th call raised nothing new (the limit had fired today): no event.
    assert (
        await db.fetchval(
            "select string_agg(kind::text, '' order by stream_ms, stream_seq) from usage_events"
        )
        == "ddd"
    )


async def test_a_refusal_that_raises_a_signal_is_kept_as_an_event(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    (a,) = await accounts(db, live_state, 1, daily_hard_limit=100)
    refused = await live_state.admit(a.call(500), utc_day(time.time()))
    assert not refused.admitted and refused.event_id
    async with running_worker(ledger_settings(redis_url, database_url)):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    assert await db.fetchval("select kind from account_signals") == "hard_limit"
    row = await db.fetchrow("select kind, amount from usage_events")
    assert (row["kind"], row["amount"]) == (b"x", 0)
    assert await db.fetchval("select count(*) from ledger_entries where kind = 'usage'") == 0


async def test_one_event_reaches_the_book_within_a_second_at_idle(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    (a,) = await accounts(db, live_state, 1)
    settings = ledger_settings(redis_url, database_url, ledger_max_wait=0.2)  # the default
    async with running_worker(settings) as worker:
        await wait_for(lambda: _owns(worker, SHARDS), what="the worker owning its shards")
        started = time.monotonic()
        await live_state.admit(a.call(123), utc_day(time.time()))

        async def booked() -> bool:
            return bool(await db.fetchval("select count(*) from usage_events"))

        await wait_for(booked, what="the event in the book")
        assert time.monotonic() - started < 1.0


async def test_batches_close_at_their_size(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 1)
    await make_traffic(live_state, accts, 95, rng=random.Random(3), refund_every=0)
    metrics = LedgerMetrics()
    settings = ledger_settings(redis_url, database_url, ledger_batch=10, ledger_max_wait=1.5)
    async with running_worker(settings, metrics=metrics):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    shard = str(accts[0].shard)
    assert metrics.registry.get_sample_value("meter_ledger_batches_total", {"shard": shard}) == 10
    assert (
        metrics.registry.get_sample_value("meter_ledger_events_applied_total", {"shard": shard})
        == 95
    )


async def test_events_of_unknown_accounts_and_junk_entries_do_not_stop_the_shard(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    (a,) = await accounts(db, live_state, 1)
    stream = keys.usage_stream(a.shard)
    await live_state.redis.xadd(
        stream, {"t": "d", "a": "ghost", "p": "p", "k": "k", "r": "chat", "m": "5", "d": "1"}
    )
    await live_state.redis.xadd(stream, {"junk": "1"})
    await live_state.admit(a.call(7), utc_day(time.time()))
    metrics = LedgerMetrics()
    async with running_worker(ledger_settings(redis_url, database_url), metrics=metrics):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    assert metrics.registry.get_sample_value("meter_ledger_orphan_events_total") == 1
    assert metrics.registry.get_sample_value("meter_ledger_malformed_events_total") == 1
    assert await db.fetchval("select count(*) from usage_events") == 2  # ghost's kept raw
    assert await db.fetchval("select -sum(amount) from ledger_entries where kind = 'usage'") == 7


async def test_old_partitions_are_dropped(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    today = int(time.time() * 1000) // MS_PER_DAY
    await store.ensure_partitions(db, [today - 10, today - 3, today - 2])
    settings = ledger_settings(redis_url, database_url, usage_retention_days=3)
    async with running_worker(settings):

        async def dropped() -> bool:
            return today - 3 not in await store.existing_partitions(db)

        await wait_for(dropped, what="retention")
    left = await store.existing_partitions(db)
    assert today - 10 not in left and {today - 2, today, today + 1} <= left


async def test_two_workers_split_the_shards_and_hand_them_over(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 8)
    settings = ledger_settings(redis_url, database_url)
    tally = await make_traffic(live_state, accts, 200, rng=random.Random(4))
    async with running_worker(settings) as first:
        await wait_for(lambda: _owns(first, SHARDS), what="the first worker owning every shard")
        async with running_worker(settings) as second:

            async def split() -> bool:
                return len(first.owned) == len(second.owned) == SHARDS // 2

            await wait_for(split, what="a fair split")
            assert not first.owned & second.owned
            await make_traffic(live_state, accts, 200, rng=random.Random(5), tally=tally)
            await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
        # The second stopped cleanly: the first takes its shards back.
        await wait_for(
            lambda: _owns(first, SHARDS), what="the first worker owning every shard again"
        )
        await make_traffic(live_state, accts, 200, rng=random.Random(6), tally=tally)
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    t = await totals(db)
    assert t.duplicates == 0 and t.events == tally.events and t.usage == tally.charged


async def test_a_stop_under_load_finishes_cleanly_and_a_restart_carries_on(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 6)
    settings = ledger_settings(redis_url, database_url, ledger_batch=50)
    tally = await make_traffic(live_state, accts, 300, rng=random.Random(7))
    async with running_worker(settings) as worker:
        producing = asyncio.create_task(
            make_traffic(live_state, accts, 300, rng=random.Random(8), tally=tally)
        )
        await wait_for(lambda: _owns(worker, SHARDS), what="owning")
    # Stopped mid-traffic: what it committed is consistent, locks are free.
    await producing
    assert (
        await db.fetchval(
            "select count(*) from pg_locks where locktype = 'advisory' and classid = $1::int4::oid",
            store.SHARD_LOCK,
        )
        == 0
    )
    async with running_worker(settings):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    t = await totals(db)
    assert t.duplicates == 0 and t.events == tally.events and t.usage == tally.charged


async def _owns(worker: object, n: int) -> bool:
    return len(worker.owned) == n  # type: ignore[attr-defined]


async def test_a_partition_dropped_behind_its_back_is_made_again(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    (a,) = await accounts(db, live_state, 1)
    day = utc_day(time.time())
    async with running_worker(ledger_settings(redis_url, database_url)):
        await live_state.admit(a.call(5), day)
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
        # Another worker's retention (or an operator) drops today's partition.
        await db.execute(
            f"drop table {store.partition_name(int(time.time() * 1000) // MS_PER_DAY)}"
        )
        await live_state.admit(a.call(7), day)
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up again")
    assert await db.fetchval("select sum(amount) from usage_events") == 7
    assert await db.fetchval("select -sum(amount) from ledger_entries where kind = 'usage'") == 12


async def test_the_worker_rides_out_postgres_terminating_its_connections(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    """An administrator shutdown (57P01, what a restarting server sends) is an outage to ride
    out: the worker reconnects, takes its shards back and books what came meanwhile."""
    accts = await accounts(db, live_state, 6)
    settings = ledger_settings(redis_url, database_url)
    async with running_worker(settings) as worker:
        await wait_for(lambda: owns_all(worker, SHARDS), what="the worker owning every shard")
        killed = await db.fetchval(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        )
        assert killed >= SHARDS  # one per owned shard, plus the control connection
        traffic = await make_traffic(live_state, accts, 200, rng=random.Random(9))
        await wait_for(lambda: owns_all(worker, SHARDS), seconds=20, what="the shards taken back")
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    t = await totals(db)
    assert t.duplicates == 0 and t.usage == traffic.charged == await redis_debited(db, live_state)
