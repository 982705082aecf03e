"""Faults with real processes: the worker SIGKILLed at every point of its loop while
calls flow, a worker killed while another runs, Postgres stopped under traffic.
Afterwards the book equals what Redis charged, micro for micro, with every event
exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from ledger_fixtures import (
    Account,
    Traffic,
    caught_up,
    fast_stop,
    ledger_settings,
    make_traffic,
    owns_all,
    provision,
    redis_debited,
    running_worker,
    start_worker_process,
    stream_lengths,
    totals,
    wait_for,
)

from ledger import store
from ledger.reconcile import reconcile
from meter import keys, local_servers
from meter.live_state import LiveState
from meter.migrate import migrate
from meter.money import usd
from meter.settings import CRASH_POINTS, Settings

SHARDS = 4


async def accounts(db: asyncpg.Connection, state: LiveState, n: int) -> list[Account]:
    out = []
    for i in range(n):
        limits: dict[str, int] = {}
        if i % 4 == 1:  # reaches its daily hard limit: refusals with a signal
            limits = dict(daily_hard_limit=60_000, daily_notify_threshold=30_000)
        elif i % 4 == 2:  # falls below its low-balance threshold
            limits = dict(low_balance_threshold=usd(1000) - 40_000)
        out.append(await provision(db, state, f"acct_{i:03d}", SHARDS, usd(1000), **limits))
    return out


@contextlib.asynccontextmanager
async def flowing(state: LiveState, accts: list[Account], seed: int) -> AsyncIterator[Traffic]:
    """Calls (with refunds) keep coming until the block ends."""
    tally = Traffic()
    stop = asyncio.Event()
    rng = random.Random(seed)

    async def loop() -> None:
        while not stop.is_set():
            await make_traffic(state, accts, 20, rng=rng, tally=tally, refund_every=4)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(loop())
    try:
        yield tally
    finally:
        stop.set()
        await task


async def entries_added(state: LiveState) -> int:
    total = 0
    for shard in range(SHARDS):
        if await state.redis.exists(keys.usage_stream(shard)):
            total += int(
                (await state.redis.xinfo_stream(keys.usage_stream(shard)))["entries-added"]
            )
    return total


async def assert_book_equals_redis(
    db: asyncpg.Connection, state: LiveState, tally: Traffic
) -> None:
    t = await totals(db)
    assert t.duplicates == 0
    assert t.events == tally.events == await entries_added(state)
    assert t.usage == t.events_net == t.rollup_net == tally.charged
    assert t.usage == await redis_debited(db, state)
    assert await db.fetchval("select count(*) from account_signals") == tally.signals
    stale = await db.fetchval(
        "select count(*) from accounts a where a.balance <> coalesce((select balance_after"
        " from ledger_entries e where e.account_id = a.id order by id desc limit 1), 0)"
    )
    assert stale == 0
    report = await reconcile(db, state.redis)
    assert report.ok, report.render()


async def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("the worker did not crash at its injected point")
        await asyncio.sleep(0.01)
    return proc.returncode


async def offsets(db: asyncpg.Connection) -> dict[int, str]:
    return {
        r["shard"]: r["last_id"]
        for r in await db.fetch("select shard, last_id from ledger_offsets")
    }


async def test_kill_9_at_every_point_of_the_loop_loses_and_doubles_nothing(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    accts = await accounts(db, live_state, 16)
    settings = ledger_settings(redis_url, database_url, ledger_batch=40, ledger_max_wait=0.01)
    log = tmp_path / "worker.log"
    rng = random.Random(11)
    kills: list[str] = []
    async with flowing(live_state, accts, seed=12) as tally:
        for i in range(24):
            if i % 4 == 3:
                # A kill from outside at a random moment once the worker is busy.
                proc = start_worker_process(settings, log)
                before = await offsets(db)
                await wait_for(lambda b=before: _moved(db, b), what="a committed batch")  # type: ignore[misc]
                await asyncio.sleep(rng.uniform(0, 0.05))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append("random")
            else:
                point = CRASH_POINTS[i % len(CRASH_POINTS)]
                proc = start_worker_process(
                    settings,
                    log,
                    METER_LEDGER_CRASH_POINTS=point,
                    METER_LEDGER_CRASH_PROBABILITY="0.5",
                )
                assert await wait_exit(proc, 20) == -signal.SIGKILL
                kills.append(point)
    assert len(kills) >= 20 and set(kills) == {*CRASH_POINTS, "random"}
    async with running_worker(settings):
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    assert tally.admitted > 100 and tally.refunds > 10 and tally.signals > 0
    await assert_book_equals_redis(db, live_state, tally)


async def _moved(db: asyncpg.Connection, before: dict[int, str]) -> bool:
    return await offsets(db) != before


async def shard_holders(db: asyncpg.Connection) -> dict[str, int]:
    """worker name -> number of shard locks it holds (each on a connection of its own)."""
    rows = await db.fetch(
        "select a.application_name as worker, count(*) as n from pg_locks l"
        " join pg_stat_activity a on a.pid = l.pid where l.locktype = 'advisory' and l.granted"
        " and l.classid = $1::int4::oid and l.objsubid = 2 group by a.application_name",
        store.SHARD_LOCK,
    )
    return {r["worker"]: r["n"] for r in rows}


async def test_a_killed_workers_shards_are_taken_over(
    db: asyncpg.Connection, live_state: LiveState, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    accts = await accounts(db, live_state, 12)
    settings = ledger_settings(redis_url, database_url, ledger_lock_retry=0.5)
    first = start_worker_process(settings, tmp_path / "a.log")
    second = start_worker_process(settings, tmp_path / "b.log")
    try:
        async with flowing(live_state, accts, seed=21) as tally:

            async def split() -> bool:
                return sorted((await shard_holders(db)).values()) == [2, 2]

            await wait_for(split, what="two workers splitting the shards")
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed_at = time.monotonic()

            async def one_holds_all() -> bool:
                return list((await shard_holders(db)).values()) == [SHARDS]

            await wait_for(one_holds_all, seconds=10, what="the survivor taking every shard")
            takeover = time.monotonic() - killed_at
            before = await offsets(db)
            await wait_for(lambda: _all_moved(db, before), what="every shard applied again")
        await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0  # a graceful stop
        first.kill()
    assert takeover < 3.0
    await assert_book_equals_redis(db, live_state, tally)


async def _all_moved(db: asyncpg.Connection, before: dict[int, str]) -> bool:
    now = await offsets(db)
    return all(now.get(s) != before.get(s) for s in range(SHARDS))


@pytest.fixture
async def own_postgres() -> AsyncIterator[local_servers.PostgresServer]:
    """A Postgres of this test's own: stopping it must not hurt the shared one. (Its
    folder must be reachable by the postgres user, which pytest's tmp_path is not.)"""
    with tempfile.TemporaryDirectory(prefix="meter-ledger-pg-") as tmp:
        os.chmod(tmp, 0o755)
        server = local_servers.start_postgres(Path(tmp) / "pg")
        try:
            await migrate(server.url())
            yield server
        finally:
            fast_stop(server)


async def test_postgres_down_under_traffic_then_the_worker_catches_up(
    own_postgres: local_servers.PostgresServer, live_state: LiveState, redis_url: str
) -> None:
    database_url = own_postgres.url()
    db = await asyncpg.connect(database_url)
    accts = await accounts(db, live_state, 8)
    await db.close()
    settings: Settings = ledger_settings(redis_url, database_url)
    async with running_worker(settings) as worker:
        async with flowing(live_state, accts, seed=31) as tally:
            await wait_for(lambda: owns_all(worker, SHARDS), what="the worker owning every shard")
            fast_stop(own_postgres)
            down_at, served = time.monotonic(), tally.admitted
            backlog_start = await stream_lengths(live_state, SHARDS)

            async def backlog_grew() -> bool:
                backlog = await stream_lengths(live_state, SHARDS)
                return (
                    time.monotonic() - down_at > 1.5
                    and tally.admitted > served + 1_000
                    and backlog > backlog_start + 1_000
                )

            # The gateway side keeps serving; the streams hold what the book has not.
            await wait_for(backlog_grew, what="calls served and a backlog while Postgres is down")
            own_postgres.restart()
            await wait_for(
                lambda: owns_all(worker, SHARDS), seconds=20, what="the worker back on every shard"
            )
        db = await asyncpg.connect(database_url)
        try:
            await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
            await assert_book_equals_redis(db, live_state, tally)
        finally:
            await db.close()
