"""Helpers of the ledger tests: provision accounts the way the admin API does, run a
worker in-process or as a real process, make traffic, and read the totals back.

No fixtures live here (conftest.py has the servers); tests import what they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from grants import store as grant_store
from ledger.book import credit_id
from ledger.metrics import LedgerMetrics
from ledger.worker import LedgerWorker, redis_client
from meter import keys, local_servers
from meter.live_state import AccountConfig, Admission, Call, LiveState
from meter.money import utc_day
from meter.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ("chat", "embed", "image")


def ledger_settings(redis_url: str, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        redis_url=redis_url,
        database_url=database_url,
        shards=4,
        ledger_batch=500,
        ledger_max_wait=0.05,
        ledger_lock_retry=0.2,
        reconcile_interval=0.0,
    )
    values.update(overrides)
    return Settings.from_env({}, **values)


def ledger_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a worker process needs to run with ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update(
        METER_REDIS_URL=settings.redis_url,
        METER_DATABASE_URL=settings.database_url,
        METER_SHARDS=str(settings.shards),
        METER_LEDGER_BATCH=str(settings.ledger_batch),
        METER_LEDGER_MAX_WAIT=str(settings.ledger_max_wait),
        METER_LEDGER_LOCK_RETRY=str(settings.ledger_lock_retry),
        METER_RECONCILE_INTERVAL=str(settings.reconcile_interval),
        METER_LEDGER_PORT="0",
        METER_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


def start_worker_process(
    settings: Settings, log: Path, **extra_env: str
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ledger"],
            cwd=ROOT,
            env=ledger_env(settings, **extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_for(
    condition: Callable[[], Awaitable[bool]], seconds: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


def fast_stop(server: local_servers.PostgresServer) -> None:
    """Stop Postgres with a fast shutdown (SIGINT to the postmaster: clients are cut off)."""
    server.stop()


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    shard: int
    project_id: str
    key_id: str

    def call(self, price: int, route: str = "chat") -> Call:
        return Call(self.shard, self.id, self.project_id, self.key_id, route, price)


async def provision(
    conn: asyncpg.Connection,
    state: LiveState,
    account_id: str,
    shards: int,
    balance: int,
    *,
    overage_line: int = 0,
    daily_hard_limit: int | None = None,
    daily_notify_threshold: int | None = None,
    low_balance_threshold: int | None = None,
    key_hash: str | None = None,
) -> Account:
    """Create an account with one project, one key and a first credit: Postgres first,
    then Redis, as the admin API does."""
    shard = keys.shard_of(account_id, shards)
    project_id, key_id = f"prj_{account_id}", f"key_{account_id}"
    await conn.execute(
        "insert into accounts (id, name, shard, overage_line, daily_hard_limit,"
        " daily_notify_threshold, low_balance_threshold) values ($1, $1, $2, $3, $4, $5, $6)",
        account_id,
        shard,
        overage_line,
        daily_hard_limit,
        daily_notify_threshold,
        low_balance_threshold,
    )
    await conn.execute(
        "insert into projects (id, account_id, name) values ($1, $2, 'p')", project_id, account_id
    )
    await conn.execute(
        "insert into api_keys (id, project_id, account_id, key_hash, prefix, redis_synced)"
        " values ($1, $2, $3, $4, 'mtr_test', true)",
        key_id,
        project_id,
        account_id,
        key_hash or f"hash_{account_id}",
    )
    await state.sync_account(
        shard,
        account_id,
        AccountConfig(
            1, overage_line, daily_hard_limit, daily_notify_threshold, low_balance_threshold, False
        ),
    )
    await conn.execute("update accounts set redis_version = 1 where id = $1", account_id)
    if balance:
        await add_credit(conn, state, account_id, shard, balance)
    return Account(account_id, shard, project_id, key_id)


async def add_credit(
    conn: asyncpg.Connection,
    state: LiveState | None,
    account_id: str,
    shard: int,
    amount: int,
    *,
    description: str = "Credits",
) -> int:
    """A credit as the admin API writes it (with its grant); ``state=None`` leaves Redis untouched
    (a crash between Postgres and Redis)."""
    async with conn.transaction():
        balance = await conn.fetchval(
            "update accounts set balance = balance + $2 where id = $1 returning balance",
            account_id,
            amount,
        )
        entry_id = await conn.fetchval(
            "insert into ledger_entries (account_id, amount, balance_after, kind, description,"
            " idempotency_key) values ($1, $2, $3, 'credit', $4, $5) returning id",
            account_id,
            amount,
            balance,
            description,
            f"credit-{random.getrandbits(64)}",
        )
        await grant_store.on_entry(
            conn,
            account_id=account_id,
            entry_id=entry_id,
            kind="credit",
            amount=amount,
            balance_before=balance - amount,
        )
    if state is not None:
        status, _ = await state.credit(shard, account_id, credit_id(entry_id), amount)
        assert status == 1
        await conn.execute("update ledger_entries set redis_applied = true where id = $1", entry_id)
    return int(entry_id)


@dataclass(slots=True)
class Traffic:
    """What the traffic generator saw Redis charge: admitted prices minus refunds."""

    charged: int = 0
    admitted: int = 0
    refunds: int = 0
    events: int = 0  # stream entries written: admitted, refunds, refusals with a signal
    signals: int = 0  # signal bits raised


async def make_traffic(
    state: LiveState,
    accounts: list[Account],
    calls: int,
    *,
    rng: random.Random,
    refund_every: int = 5,
    tally: Traffic | None = None,
    day: int | None = None,
) -> Traffic:
    tally = tally or Traffic()
    day = utc_day(time.time()) if day is None else day
    for i in range(calls):
        account = rng.choice(accounts)
        price = rng.randrange(1, 5_000)
        call = account.call(price, rng.choice(ROUTES))
        admission: Admission = await state.admit(call, day)
        tally.signals += bin(int(admission.signals)).count("1")
        if admission.event_id:
            tally.events += 1
        if not admission.admitted:
            continue
        tally.admitted += 1
        tally.charged += price
        if refund_every and i % refund_every == 0:
            refund = rng.randrange(1, price + 1)
            if await state.settle(call, admission, refund, day) == 1:
                tally.refunds += 1
                tally.events += 1
                tally.charged -= refund
    return tally


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **kwargs: object) -> AsyncIterator[LedgerWorker]:
    """A worker in this process, stopped (cleanly) on exit."""
    client = redis_client(settings)
    worker = LedgerWorker(
        settings, client, metrics=kwargs.pop("metrics", None) or LedgerMetrics(), **kwargs
    )  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await client.aclose()


async def owns_all(worker: LedgerWorker, shards: int) -> bool:
    return len(worker.owned) == shards


async def stream_lengths(state: LiveState, shards: int) -> int:
    return sum([await state.redis.xlen(keys.usage_stream(s)) for s in range(shards)])


async def caught_up(conn: asyncpg.Connection, state: LiveState, shards: int) -> bool:
    """Every stream entry is at or below its shard's offset in Postgres."""
    offsets = {
        r["shard"]: r["last_id"]
        for r in await conn.fetch("select shard, last_id from ledger_offsets")
    }
    for shard in range(shards):
        last = await state.redis.xrevrange(keys.usage_stream(shard), "+", "-", count=1)
        if not last:
            continue
        newest = tuple(int(x) for x in last[0][0].decode().split("-"))
        applied = tuple(int(x) for x in offsets.get(shard, "0-0").split("-"))
        if applied < newest:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Totals:
    usage: int  # -sum of the usage ledger entries
    events_net: int  # sum of raw debits minus refunds
    events: int
    duplicates: int
    rollup_net: int


async def totals(conn: asyncpg.Connection) -> Totals:
    usage = await conn.fetchval(
        "select coalesce(-sum(amount), 0) from ledger_entries where kind = 'usage'"
    )
    row = await conn.fetchrow(
        "select count(*) as n,"
        " coalesce(sum(case kind when 'd' then amount when 'r' then -amount else 0 end), 0) as net"
        " from usage_events"
    )
    duplicates = await conn.fetchval(
        "select count(*) from (select 1 from usage_events group by shard, stream_ms, stream_seq"
        " having count(*) > 1) d"
    )
    rollup = await conn.fetchval("select coalesce(sum(amount), 0) from usage_rollups")
    return Totals(int(usage), int(row["net"]), int(row["n"]), int(duplicates), int(rollup))


async def redis_debited(conn: asyncpg.Connection, state: LiveState) -> int:
    """Credits put in minus what Redis holds now: what Redis charged, in total."""
    credited = await conn.fetchval(
        "select coalesce(sum(amount), 0) from ledger_entries where kind <> 'usage'"
    )
    held = 0
    for r in await conn.fetch("select id, shard from accounts"):
        bal = await state.redis.hget(keys.account(r["shard"], r["id"]), "bal")
        held += int(bal or 0)
    return int(credited) - held
