"""Reconcile and repair against real Redis and Postgres: agreement while everything
moves, injected drift found, a flushed Redis rebuilt."""

from __future__ import annotations

import asyncio
import io
import random

import asyncpg
from ledger_fixtures import (
    Account,
    add_credit,
    caught_up,
    ledger_settings,
    make_traffic,
    provision,
    running_worker,
    wait_for,
)

from ledger.book import credit_id
from ledger.metrics import LedgerMetrics
from ledger.reconcile import command, reconcile, repair
from ledger.worker import create_worker
from meter import keys
from meter.live_state import LiveState
from meter.money import usd

SHARDS = 4


async def accounts(db: asyncpg.Connection, state: LiveState, n: int) -> list[Account]:
    return [
        await provision(db, state, f"acct_{i:03d}", SHARDS, usd(50), low_balance_threshold=usd(49))
        for i in range(n)
    ]


async def test_agrees_with_everything_still_in_the_streams(
    db: asyncpg.Connection, live_state: LiveState
) -> None:
    accts = await accounts(db, live_state, 8)
    await make_traffic(live_state, accts, 300, rng=random.Random(1))
    report = await reconcile(db, live_state.redis, range(SHARDS))
    assert report.ok, report.render()
    assert report.checked == 8


async def test_agrees_while_the_worker_applies_and_calls_flow(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 10)
    settings = ledger_settings(redis_url, database_url, ledger_batch=20, ledger_max_wait=0.005)
    async with running_worker(settings):
        traffic = asyncio.create_task(make_traffic(live_state, accts, 1_500, rng=random.Random(2)))
        passes = 0
        while not traffic.done() or passes < 3:
            report = await reconcile(db, live_state.redis, range(SHARDS), confirm=False)
            assert report.ok, report.render()
            passes += 1
        await traffic
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    assert (await reconcile(db, live_state.redis)).ok


async def test_pending_credits_are_not_drift(db: asyncpg.Connection, live_state: LiveState) -> None:
    (a,) = await accounts(db, live_state, 1)
    # Committed in Postgres, not yet in Redis (the admin API crashed in between) ...
    entry = await add_credit(db, None, a.id, a.shard, usd(5))
    assert (await reconcile(db, live_state.redis)).ok
    # ... then applied in Redis but not yet marked in Postgres.
    assert (await live_state.credit(a.shard, a.id, credit_id(entry), usd(5)))[0] == 1
    assert (await reconcile(db, live_state.redis)).ok


async def test_injected_drift_is_found_and_reported(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 5)
    await make_traffic(live_state, accts, 100, rng=random.Random(3))
    victim = accts[2]
    await live_state.redis.hincrby(keys.account(victim.shard, victim.id), "bal", 1_234)
    await live_state.redis.delete(keys.account(accts[4].shard, accts[4].id))
    report = await reconcile(db, live_state.redis)
    assert not report.ok
    drifts = {d.account_id: d for d in report.drifts}
    assert drifts[victim.id].drift == 1_234
    assert drifts[accts[4].id].missing
    out = io.StringIO()
    assert await command(ledger_settings(redis_url, database_url), out=out) == 1
    assert victim.id in out.getvalue() and "+1,234" in out.getvalue()


async def test_the_worker_exports_the_drift(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    (a,) = await accounts(db, live_state, 1)
    await live_state.redis.hincrby(keys.account(a.shard, a.id), "bal", -77)
    metrics = LedgerMetrics()
    settings = ledger_settings(redis_url, database_url, reconcile_interval=0.05)
    client = live_state.redis
    worker = create_worker(settings, client, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def exported() -> bool:
        value = metrics.registry.get_sample_value(
            "meter_reconcile_drift_micros", {"shard": str(a.shard)}
        )
        return value == -77

    try:
        await wait_for(exported, what="drift gauge")
    finally:
        stop.set()
        await task


async def test_repair_rebuilds_a_flushed_redis(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 8)
    await db.execute("update api_keys set revoked_at = now() where account_id = $1", accts[0].id)
    await make_traffic(live_state, accts, 200, rng=random.Random(4))
    settings = ledger_settings(redis_url, database_url)
    async with running_worker(settings):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    book = {r["id"]: r["balance"] for r in await db.fetch("select id, balance from accounts")}
    await live_state.redis.flushall()
    assert not (await reconcile(db, live_state.redis)).ok

    result = await repair(db, live_state.redis)
    assert (result.created, result.rebuilt, result.api_keys) == (8, 0, 8)
    assert (await reconcile(db, live_state.redis)).ok
    for a in accts:
        state = await live_state.read_account(a.shard, a.id)
        assert state is not None and state.balance == book[a.id]
        assert state.low_balance_threshold == usd(49)
        record = await live_state.get_api_key(f"hash_{a.id}")
        assert record is not None and (record.account_id, record.shard) == (a.id, a.shard)
    # Revocations are back, and the old credits count as applied.
    assert (
        await live_state.redis.hget(
            keys.account(accts[0].shard, accts[0].id), f"rk:{accts[0].key_id}"
        )
        == b"1"
    )
    first_credit = await db.fetchval(
        "select id from ledger_entries where account_id = $1 and kind = 'credit'", accts[1].id
    )
    assert (await live_state.credit(accts[1].shard, accts[1].id, credit_id(first_credit), usd(50)))[
        0
    ] == 0
    # The gateway can admit again, and the worker carries on from its offset.
    more = await make_traffic(live_state, accts[1:], 50, rng=random.Random(5))
    assert more.admitted == 50
    async with running_worker(settings):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up after repair")
    assert (await reconcile(db, live_state.redis)).ok


async def test_repair_while_the_worker_and_calls_run(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 6)
    settings = ledger_settings(redis_url, database_url, ledger_batch=25, ledger_max_wait=0.005)
    async with running_worker(settings):
        traffic = asyncio.create_task(make_traffic(live_state, accts, 800, rng=random.Random(6)))
        repairs = 0
        while not traffic.done():
            await repair(db, live_state.redis)
            repairs += 1
        await traffic
        assert repairs > 0
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    report = await reconcile(db, live_state.redis)
    assert report.ok, report.render()


async def test_repair_command_then_zero_drift(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str
) -> None:
    accts = await accounts(db, live_state, 3)
    await make_traffic(live_state, accts, 30, rng=random.Random(7))
    await live_state.redis.flushall()
    out = io.StringIO()
    assert await command(ledger_settings(redis_url, database_url), repair=True, out=out) == 0
    text = out.getvalue()
    assert "3 accounts recreated" in text and "0 drifting" in text


async def test_the_command_says_when_it_cannot_tell(redis_url: str) -> None:
    from meter.local_servers import free_port

    settings = ledger_settings(redis_url, f"postgresql://meter@127.0.0.1:{free_port()}/meter")
    out = io.StringIO()
    assert await command(settings, out=out) == 2
    assert out.getvalue().startswith("reconcile failed: postgres unreachable")
