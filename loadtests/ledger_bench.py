"""Ledger worker throughput: push N synthetic usage events through real worker
processes into Postgres and report events/s and the lag.

    .venv/bin/python loadtests/ledger_bench.py --events 1000000 --accounts 10000 --shards 16

Starts its own Redis and PostgreSQL (fsync on with --durable) unless --redis-url and
--database-url are given, provisions the accounts in Postgres (COPY), then:

  backlog  (default) XADD all events first (pipelined), then start the workers and
           time the drain: events/s into Postgres, from first to last commit.
  live     --rate R: a producer process XADDs R events/s while the workers run;
           reports the applied rate and the lag (age of the oldest event not yet
           committed, sampled every 100 ms) at p50/p99/max.

Every run ends by checking the book: events in Postgres == events produced, no
duplicate, sum of usage ledger entries == sum of event prices. With --grants N each
account holds N live credit grants, and the check adds: the live grants hold the
balances, and none was drawn before one that expires sooner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.servers import run_command  # noqa: E402
from meter import keys, local_servers  # noqa: E402
from meter.migrate import migrate  # noqa: E402

ROUTES = ("chat", "embed", "image", "audio", "search")


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def account_id(i: int) -> str:
    return f"acct_{i:07d}"


def produce(
    redis_url: str, shards: int, accounts: int, events: int, rate: float, seed: int
) -> None:
    """XADD ``events`` synthetic admissions, pipelined; at ``rate``/s when rate > 0."""
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(seed)
    day = str(int(time.time() // 86_400))
    ids = [account_id(i) for i in range(accounts)]
    shard_of = [keys.shard_of(a, shards) for a in ids]
    streams = [keys.usage_stream(s) for s in range(shards)]
    chunk = 2_000 if rate <= 0 else max(1, int(rate / 50))
    started = time.monotonic()
    sent = 0
    while sent < events:
        pipe = client.pipeline(transaction=False)
        n = min(chunk, events - sent)
        for _ in range(n):
            i = rng.randrange(accounts)
            a = ids[i]
            pipe.execute_command(
                "XADD", streams[shard_of[i]], "*",
                "t", "d", "a", a, "p", "prj_" + a, "k", "key_" + a,
                "r", ROUTES[i % len(ROUTES)], "m", str(100 + i % 900), "d", day, "g", "0",
            )  # fmt: skip
        pipe.execute()
        sent += n
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    client.close()


GRANT = 10**10  # micros each grant of --grants holds ($10,000)


async def provision(
    database_url: str, accounts: int, shards: int, thresholds: int = 0, grants: int = 0
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table(
            "accounts",
            records=[
                (account_id(i), account_id(i), keys.shard_of(account_id(i), shards), grants * GRANT)
                for i in range(accounts)
            ],
            columns=("id", "name", "shard", "balance"),
        )
        if grants:
            # --grants live grants an account, all but one expiring (days apart): each
            # batch draws its usage on them (grants/store.py), the soonest first.
            soon = datetime.now(UTC) + timedelta(days=30)
            await conn.copy_records_to_table(
                "credit_grants",
                records=[
                    (
                        account_id(i),
                        "promotional",
                        GRANT,
                        GRANT,
                        soon + timedelta(days=g) if g < grants - 1 else None,
                    )
                    for i in range(accounts)
                    for g in range(grants)
                ],
                columns=("account_id", "kind", "amount", "remaining", "expires_at"),
            )
        if thresholds:
            # Spend management on every account: one threshold passed at the first call
            # of the day (an event raised per account), the others never reached.
            await conn.copy_records_to_table(
                "spend_settings",
                records=[(account_id(i), True) for i in range(accounts)],
                columns=("account_id", "enabled"),
            )
            await conn.copy_records_to_table(
                "spend_thresholds",
                records=[
                    (f"thr_{i}_{t}", account_id(i), "absolute", 1 if t == 0 else 10**12 * t)
                    for i in range(accounts)
                    for t in range(thresholds)
                ],
                columns=("id", "account_id", "kind", "value"),
            )
        await conn.execute("analyze")
    finally:
        await conn.close()


@contextlib.contextmanager
def servers(args: argparse.Namespace) -> Iterator[tuple[str, str, int | None]]:
    """(redis url, database url, postmaster pid when we started it)."""
    if args.redis_url and args.database_url:
        yield args.redis_url, args.database_url, None
        return
    with local_servers.scratch_folder("ledger-bench-") as tmp:
        r = local_servers.start_redis(tmp / "redis")
        pg = local_servers.start_postgres(tmp / "pg", durable=args.durable)
        try:
            pid_file = pg.dir / "pgdata" / "postmaster.pid"
            yield r.url, pg.url(), int(pid_file.read_text().split()[0])
        finally:
            pid_file = pg.dir / "pgdata" / "postmaster.pid"
            if pg.proc.poll() is None and pid_file.exists():  # fast shutdown, see tests
                os.kill(int(pid_file.read_text().split()[0]), 2)
                pg.proc.wait(30)
            r.stop(kill=True)


def start_workers(
    args: argparse.Namespace, redis_url: str, database_url: str
) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update(
        METER_REDIS_URL=redis_url,
        METER_DATABASE_URL=database_url,
        METER_SHARDS=str(args.shards),
        METER_LEDGER_BATCH=str(args.batch),
        METER_LEDGER_MAX_WAIT=str(args.max_wait),
        METER_LEDGER_PORT="0",
        METER_RECONCILE_INTERVAL="0",
        METER_LOG_LEVEL="warning",
    )
    return [
        subprocess.Popen([sys.executable, "-m", "ledger"], cwd=ROOT, env=env)
        for _ in range(args.workers)
    ]


async def applied(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("select coalesce(sum(events_applied), 0) from ledger_offsets"))


async def oldest_unapplied_age(
    conn: asyncpg.Connection, client: aioredis.Redis, shards: int
) -> float:
    offsets = {
        r["shard"]: r["last_id"]
        for r in await conn.fetch("select shard, last_id from ledger_offsets")
    }
    now_ms = time.time() * 1000
    age = 0.0
    for s in range(shards):
        first = await client.xrange(keys.usage_stream(s), f"({offsets.get(s, '0-0')}", "+", count=1)
        if first:
            age = max(age, (now_ms - int(first[0][0].split(b"-")[0])) / 1000)
    return age


async def run(args: argparse.Namespace) -> None:
    with servers(args) as (redis_url, database_url, postmaster):
        await migrate(database_url)
        await provision(database_url, args.accounts, args.shards, args.thresholds, args.grants)
        conn = await asyncpg.connect(database_url)
        client = aioredis.Redis.from_url(redis_url)
        producer: multiprocessing.Process | None = None
        if args.rate <= 0:
            t = time.monotonic()
            parts = max(1, args.producers)
            procs = [
                multiprocessing.Process(
                    target=produce,
                    args=(
                        redis_url,
                        args.shards,
                        args.accounts,
                        args.events // parts + (i < args.events % parts),
                        0,
                        i,
                    ),
                )
                for i in range(parts)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            print(
                f"produced {args.events:,} events with pipelined XADD"
                f" in {time.monotonic() - t:.1f} s"
            )
        else:
            producer = multiprocessing.Process(
                target=produce,
                args=(redis_url, args.shards, args.accounts, args.events, args.rate, 1),
            )
            producer.start()
        pg_before = sum(cpu_seconds(p) for p in children(postmaster)) if postmaster else 0.0
        workers = start_workers(args, redis_url, database_url)
        lags: list[float] = []
        samples: list[tuple[float, int]] = []
        try:
            first_at: float | None = None
            deadline = time.monotonic() + args.timeout
            while True:
                n = await applied(conn)
                now = time.monotonic()
                samples.append((now, n))
                if n and first_at is None:
                    first_at = now
                if args.rate > 0:
                    lags.append(await oldest_unapplied_age(conn, client, args.shards))
                if n >= args.events:
                    break
                if now > deadline:
                    raise SystemExit(f"timed out: {n:,} of {args.events:,} applied")
                await asyncio.sleep(0.1)
            last_at = samples[-1][0]
            worker_cpu = sum(cpu_seconds(w.pid) for w in workers)
            pg_cpu = (
                sum(cpu_seconds(p) for p in children(postmaster)) - pg_before if postmaster else 0.0
            )
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)
            if producer is not None:
                producer.join()
        assert first_at is not None
        span = max(last_at - first_at, 1e-9)
        print(
            f"applied {args.events:,} events in {span:.2f} s (first to last commit): "
            f"{args.events / span:,.0f} events/s into Postgres "
            f"[{args.workers} worker process(es), {args.shards} shards, batch {args.batch}, "
            f"max wait {args.max_wait}s, fsync {'on' if args.durable else 'off'}]"
        )
        if lags:
            lags.sort()
            print(
                f"lag (oldest unapplied event): p50 {statistics.median(lags):.3f} s, "
                f"p99 {lags[int(len(lags) * 0.99) - 1]:.3f} s, max {lags[-1]:.3f} s "
                f"at {args.rate:,.0f} events/s offered"
            )
        print(
            f"CPU per event: worker processes {worker_cpu / args.events * 1e6:.1f} us"
            + (f", Postgres {pg_cpu / args.events * 1e6:.1f} us" if postmaster else "")
            + f" (wall {span / args.events * 1e6:.1f} us; {os.cpu_count()} cores, load avg "
            f"{os.getloadavg()[0]:.1f} at the end)"
        )
        n_events = await conn.fetchval("select count(*) from usage_events")
        dups = await conn.fetchval(
            "select count(*) from (select 1 from usage_events group by shard, stream_ms, stream_seq"
            " having count(*) > 1) d"
        )
        usage = await conn.fetchval("select -sum(amount) from ledger_entries where kind = 'usage'")
        priced = await conn.fetchval("select sum(amount) from usage_events")
        lines = await conn.fetchval("select count(*) from ledger_entries")
        print(
            f"book: {n_events:,} events, {dups} duplicates, {lines:,} ledger entries, "
            f"usage {usage:,} micros == events {priced:,} micros: {usage == priced}"
        )
        if args.grants:
            held = await conn.fetchval(
                "select sum(remaining) from credit_grants where ended_at is null"
            )
            kept = await conn.fetchval("select sum(greatest(balance, 0)) from accounts")
            drawn_first = await conn.fetchval(
                "select count(*) from credit_grants g where remaining < amount and exists"
                " (select 1 from credit_grants h where h.account_id = g.account_id"
                " and h.remaining > 0 and h.expires_at < g.expires_at)"
            )
            print(
                f"grants: {args.grants} an account, live grants hold {held:,} micros =="
                f" balances {kept:,}: {held == kept}; drawn out of spending order: {drawn_first}"
            )
        await client.aclose()
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--producers", type=int, default=2, help="producer processes (backlog mode)")
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--max-wait", type=float, default=0.2)
    p.add_argument(
        "--rate", type=float, default=0, help="live mode: events/s offered (0 = backlog mode)"
    )
    p.add_argument("--durable", action="store_true", help="Postgres with fsync on")
    p.add_argument(
        "--thresholds", type=int, default=0, help="spend thresholds on every account (0: none)"
    )
    p.add_argument(
        "--grants", type=int, default=0, help="live credit grants on every account (0: none)"
    )
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--redis-url")
    p.add_argument("--database-url")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    run_command(main)
