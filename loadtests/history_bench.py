"""Read-side speed on a large account: the balance history and usage queries of
ledger/history.py against an account with 10 million usage events.

    .venv/bin/python loadtests/history_bench.py --events 10000000

Starts its own PostgreSQL (unless --database-url), migrates, and writes with SQL
what the worker would have written for one account over 90 days: the raw events
(day partitions), their rollups (account, day, route; 20 routes), and one usage
ledger entry per 10 events (a busy account's batches), plus as many entries for
100 other accounts. Then it times each query many times and prints p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger import store  # noqa: E402
from ledger.history import transactions, usage  # noqa: E402
from ledger.history_query import TransactionsQuery, UsageQuery, to_day  # noqa: E402
from loadtests.servers import run_command  # noqa: E402
from meter import local_servers  # noqa: E402
from meter.migrate import migrate  # noqa: E402

DAYS = 90


async def fill(conn: asyncpg.Connection, events: int, today: int) -> None:
    per_day = -(-events // DAYS)
    await conn.execute(
        "insert into accounts (id, name, shard) select 'acct_' || g, 'A', g % 16"
        " from generate_series(0, 100) g"
    )
    await store.ensure_partitions(conn, range(today - DAYS + 1, today + 1))
    t = time.monotonic()
    for day in range(today - DAYS + 1, today + 1):
        await conn.execute(
            "insert into usage_events (day, shard, stream_ms, stream_seq, kind, account_id,"
            " project_id, key_id, route, amount, call_day, signals)"
            " select $1::int, 0, $1::int * 86400000::bigint + g * 86400000::bigint / $2, g, 'd',"
            " 'acct_0', 'prj_0', 'key_0', 'route' || (g % 20), 100 + g % 900, $1::int, 0"
            " from generate_series(0, $2 - 1) g",
            day,
            per_day,
        )
    print(f"wrote {per_day * DAYS:,} usage events in {time.monotonic() - t:.0f} s")
    t = time.monotonic()
    await conn.execute(
        "insert into usage_rollups (account_id, day, route, calls, amount)"
        " select account_id, call_day, route, count(*), sum(amount) from usage_events"
        " group by 1, 2, 3"
    )
    # One usage entry per 10 events of the big account, and as many for the others.
    await conn.execute(
        "insert into ledger_entries (account_id, amount, balance_after, kind, description,"
        " redis_applied, created_at)"
        " select 'acct_0', -sum(amount), 0, 'usage', 'Usage 10:00:00-10:00:01, 10 calls', true,"
        " to_timestamp(min(stream_ms) / 1000.0) from usage_events group by day, stream_seq / 10"
        " order by min(stream_ms)"
    )
    big = await conn.fetchval("select count(*) from ledger_entries")
    await conn.execute(
        "insert into ledger_entries (account_id, amount, balance_after, kind, description,"
        " redis_applied) select 'acct_' || (1 + g % 100), -1, 0, 'usage', 'Usage', true"
        " from generate_series(1, $1) g",
        big,
    )
    for table in ("ledger_entries", "usage_rollups", "usage_events"):
        await conn.execute(f"vacuum analyze {table}")
    print(
        f"wrote the rollups and {big:,} ledger entries for the account (+{big:,} for 100 others)"
        f" in {time.monotonic() - t:.0f} s"
    )


async def timed(label: str, make: Callable[[], Awaitable[object]], runs: int) -> None:
    await make()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await make()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    print(
        f"{label:<46} p50 {statistics.median(seconds) * 1e3:6.2f} ms"
        f"  p99 {seconds[int(len(seconds) * 0.99) - 1] * 1e3:6.2f} ms"
        f"  max {seconds[-1] * 1e3:6.2f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    today = date.today()
    t = to_day(today)
    tmp = None
    if args.database_url:
        dsn, server = args.database_url, None
    else:
        tmp = tempfile.mkdtemp(prefix="history-bench-")
        os.chmod(tmp, 0o755)
        server = local_servers.start_postgres(Path(tmp) / "pg")
        dsn = server.url()
    try:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        await fill(conn, args.events, t)
        ids = [
            r["id"]
            for r in await conn.fetch("select id from ledger_entries where account_id = 'acct_0'")
        ]
        rng = random.Random(1)
        oldest = min(ids)
        n = await conn.fetchval("select count(*) from usage_events where account_id = 'acct_0'")
        print(f"account acct_0: {n:,} usage events, {len(ids):,} ledger entries\n")
        runs = args.runs
        await timed(
            "transactions, first page (limit 50)",
            lambda: transactions(conn, "acct_0", TransactionsQuery(50)),
            runs,
        )
        await timed(
            "transactions, page at a random cursor (200)",
            lambda: transactions(conn, "acct_0", TransactionsQuery(200, rng.choice(ids))),
            runs,
        )
        await timed(
            "transactions, last page (oldest entries)",
            lambda: transactions(conn, "acct_0", TransactionsQuery(50, oldest + 20)),
            runs,
        )
        await timed(
            "usage by day, last 30 days (+today/yesterday)",
            lambda: usage(
                conn, "acct_0", UsageQuery(today - timedelta(days=29), today, "day"), today
            ),
            runs,
        )
        await timed(
            "usage by month, 12 months",
            lambda: usage(
                conn, "acct_0", UsageQuery(today - timedelta(days=365), today, "month"), today
            ),
            runs,
        )
        await timed(
            "usage by route, 90 days",
            lambda: usage(
                conn, "acct_0", UsageQuery(today - timedelta(days=89), today, "route"), today
            ),
            runs,
        )
        await conn.close()
    finally:
        if server is not None:
            pid_file = server.dir / "pgdata" / "postmaster.pid"
            if server.proc.poll() is None and pid_file.exists():  # fast shutdown
                os.kill(int(pid_file.read_text().split()[0]), 2)
                server.proc.wait(60)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--database-url")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    run_command(main)
