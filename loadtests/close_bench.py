"""The close of a billing period for many accounts: drafts, then their finalization.

    .venv/bin/python -m loadtests.close_bench [--accounts 100000] [--workers 1 [2 ...]]

Starts its own Redis and PostgreSQL (fsync off unless ``--durable``), migrates a seed
database and copies into it the book of period 2026-11 (``loadtests/close_seed.py``):
``--accounts`` accounts created before it, with usage rollups on a few days and routes,
prepaid credits that cover some of them and not others (an overage: a negative
balance), some without usage, some with a credit or usage after the end, a tenth on a
plan with a monthly fee. For each number of ``--workers`` the run gets a fresh copy of
that database (``create database ... template``) and an empty Redis (empty streams: the
ledger is caught up), then that many worker processes, each with its own pool and
``Closer`` (grace 0; its clock reads just after the period's end and runs on from
there; ``--fixed-clock``: it stays there, so every draft's ``finalize_after`` ties), run
in step:

  renew      ``subscriptions.renew_due`` (what the billing loop runs before a close)
  close      ``Closer.close_period``: a draft for every account
  finalize   ``Closer.finalize_due`` until it finds none: each draft numbered and opened

Measured per phase: the seconds from the start barrier to the last worker done,
accounts/s, ms an account, the CPU seconds of the worker processes, Postgres (its
process tree, backends that ended included) and Redis, from ``/proc``; and how often a
backend of the run waited on a lock (``pg_stat_activity`` sampled every 50 ms). Checked
at the end of each run, in SQL: one invoice per account, numbers gapless 1..N, each
invoice's usage equal to its usage lines and to the account's rollups of the period,
amount due + credits applied == usage + fee, and the usage, fee and amount due what the
seed says they must be (``close_seed.expected``). Writes
``loadtests/results/close-latest.json`` and ``.md``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import time
from datetime import timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from billing import subscriptions
from billing.invoices import Closer
from meter import local_servers
from meter.live_state import LiveState
from meter.migrate import migrate
from meter.settings import Settings

from . import close_seed, procstat, provenance
from .close_seed import PERIOD
from .harness import log
from .latest import finish

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
AT = PERIOD.end_at() + timedelta(minutes=2)  # the injected clock: just after the end
SEED_DB = "close_seed"
SHARDS = 16
PHASES = ("renew", "close", "finalize")
BARRIER_TIMEOUT = 3 * 3600.0


def settings_for(database_url: str, redis_url: str) -> Settings:
    return Settings.from_env(
        {},
        redis_url=redis_url,
        database_url=database_url,
        shards=SHARDS,
        invoice_grace=0.0,
        log_level="warning",
    )


async def _work(
    database_url: str, redis_url: str, barrier: Barrier, offset: float | None
) -> dict[str, Any]:
    settings = settings_for(database_url, redis_url)
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)
    live = LiveState.from_url(redis_url)
    clock = AT.timestamp if offset is None else (lambda: time.time() + offset)
    closer = Closer(pool, live, settings, clock=clock)
    out: dict[str, Any] = {}
    try:
        await pool.fetchval("select 1")
        for phase in PHASES:
            barrier.wait(BARRIER_TIMEOUT)  # all ready: go
            cpu, t = time.process_time(), time.perf_counter()
            if phase == "renew":
                done = await subscriptions.renew_due(
                    pool, live, closer.now(), settings.billing_anchor_day
                )
            elif phase == "close":
                done = await closer.close_period(PERIOD)
            else:
                done = await closer.finalize_due()  # every draft due, until none is left
            out[phase] = {
                "seconds": time.perf_counter() - t,
                "cpu_seconds": time.process_time() - cpu,
                "count": done,
            }
            barrier.wait(BARRIER_TIMEOUT)  # all done (Postgres's CPU read as backends last)
        barrier.wait(BARRIER_TIMEOUT)  # released
    finally:
        await live.close()
        await pool.close()
    return out


def worker(
    database_url: str, redis_url: str, barrier: Barrier, results: Any, offset: float | None
) -> None:
    """One closer process (spawned): its phases in step with the others'."""
    try:
        results.put(asyncio.run(_work(database_url, redis_url, barrier, offset)))
    except BaseException as exc:
        barrier.abort()
        results.put({"error": repr(exc)})
        raise


def postgres_cpu(postmaster: int) -> float:
    """The postmaster's tree, and the backends it has reaped (cutime + cstime)."""
    stat = Path(f"/proc/{postmaster}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    reaped = (int(rest[13]) + int(rest[14])) / procstat.CLOCK_TICKS
    return procstat.cpu_seconds(postmaster) + reaped


async def lock_waits(db: asyncpg.Connection, database: str, stop: asyncio.Event) -> list[int]:
    """Every 50 ms: how many of the run's backends wait on a lock."""
    samples = []
    while not stop.is_set():
        samples.append(
            await db.fetchval(
                "select count(*) from pg_stat_activity where datname = $1"
                " and wait_event_type = 'Lock'",
                database,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return samples


async def checks(
    conn: asyncpg.Connection, accounts: list[close_seed.Seeded], prefix: int
) -> dict[str, Any]:
    await conn.execute(
        "create temporary table bench_expected (account_id text primary key, usage bigint,"
        " fee bigint, due bigint)"
    )
    await conn.copy_records_to_table(
        "bench_expected", records=[(a.id, *close_seed.expected(a)) for a in accounts]
    )
    await conn.execute("analyze bench_expected")
    row = await conn.fetchrow(
        "with lines as (select invoice_id, coalesce(sum(amount) filter (where kind = 'usage'), 0)"
        "   as usage from invoice_lines group by invoice_id),"
        " rolled as (select account_id, sum(amount) as usage from usage_rollups"
        "   where day >= $2 and day < $3 group by account_id),"
        " inv as (select i.*, substr(i.number, $4 + 1)::bigint as n from invoices i"
        "   where i.period_start = $1)"
        " select (select count(*) from accounts) as accounts, count(*) as invoices,"
        " count(distinct i.account_id) as invoiced_accounts,"
        " count(*) filter (where i.status = 'draft') as drafts,"
        " count(i.n) as numbered, count(distinct i.n) as distinct_numbers,"
        " min(i.n) as first_number, max(i.n) as last_number,"
        " count(*) filter (where i.usage_amount <> coalesce(l.usage, 0)) as usage_not_lines,"
        " count(*) filter (where i.usage_amount <> coalesce(r.usage, 0)) as usage_not_rollups,"
        " count(*) filter (where i.amount_due + i.credits_applied"
        "   <> i.usage_amount + i.fee_amount + i.carried_amount) as unbalanced,"
        " count(*) filter (where e.account_id is null or i.usage_amount <> e.usage"
        "   or i.fee_amount <> e.fee or i.amount_due <> e.due) as not_expected,"
        " coalesce(sum(i.amount_due), 0)::bigint as amount_due,"
        " coalesce(sum(e.due), 0)::bigint as expected_due,"
        " count(*) filter (where i.amount_due > i.fee_amount) as with_overage,"
        " count(*) filter (where i.fee_amount > 0) as with_fee"
        " from inv i left join lines l on l.invoice_id = i.id"
        " left join rolled r on r.account_id = i.account_id"
        " left join bench_expected e on e.account_id = i.account_id",
        PERIOD.start,
        PERIOD.start_day,
        PERIOD.end_day,
        prefix,
    )
    c = dict(row)
    n = len(accounts)
    c["ok"] = (
        c["accounts"] == c["invoices"] == c["invoiced_accounts"] == c["numbered"] == n
        and c["drafts"] == 0
        and c["distinct_numbers"] == n
        and c["first_number"] == 1
        and c["last_number"] == n
        and c["usage_not_lines"] == c["usage_not_rollups"] == 0
        and c["unbalanced"] == c["not_expected"] == 0
        and c["amount_due"] == c["expected_due"]
    )
    return c


async def one_run(
    pg: local_servers.PostgresServer,
    redis: local_servers.RedisServer,
    workers: int,
    accounts: list[close_seed.Seeded],
    fixed_clock: bool,
) -> dict[str, Any]:
    redis_url, redis_pid = redis.url, redis.proc.pid
    database = f"close_w{workers}"
    await pg.execute(
        f"drop database if exists {database}", f"create database {database} template {SEED_DB}"
    )
    r = aioredis.Redis.from_url(redis_url)
    await r.flushall()
    await r.aclose()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    # The workers' clock reads AT now and runs on from there (or, fixed, stays at AT).
    offset = None if fixed_clock else AT.timestamp() - time.time()
    procs = [
        ctx.Process(target=worker, args=(pg.url(database), redis_url, barrier, results, offset))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    watcher = await asyncpg.connect(pg.url(database))
    phases: dict[str, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    try:
        for phase in PHASES:
            await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT)  # the workers are ready: go
            pg0, rd0 = postgres_cpu(pg.proc.pid), _cpu(redis_pid)
            t = time.perf_counter()
            stop = asyncio.Event()
            sampler = asyncio.create_task(lock_waits(watcher, database, stop))
            await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT)  # every worker is done
            seconds = time.perf_counter() - t
            stop.set()
            waits = await sampler
            phases[phase] = {
                "seconds": seconds,
                "postgres_cpu_seconds": postgres_cpu(pg.proc.pid) - pg0,
                "redis_cpu_seconds": _cpu(redis_pid) - rd0,
                "lock_wait_samples": len(waits),
                "samples_with_a_lock_wait": sum(1 for w in waits if w),
            }
        await asyncio.to_thread(barrier.wait, BARRIER_TIMEOUT)  # release them
        done = [await asyncio.to_thread(results.get, True, 600) for _ in procs]
    finally:
        if not done:
            barrier.abort()  # a worker failed, or we were stopped: let every wait end
        for p in procs:
            p.join(60 if done else 1)
            if p.is_alive():
                p.terminate()
    errors = [d["error"] for d in done if "error" in d]
    if errors:
        await watcher.close()
        raise RuntimeError(f"a closer failed: {errors}")
    n = len(accounts)
    for phase, x in phases.items():
        mine = [d[phase] for d in done]
        x["worker_seconds"] = [d["seconds"] for d in mine]
        x["closer_cpu_seconds"] = sum(d["cpu_seconds"] for d in mine)
        x["counts"] = [d["count"] for d in mine]
        x["accounts_per_s"] = n / x["seconds"]
        x["ms_per_account"] = x["seconds"] / n * 1000
    try:
        checked = await checks(
            watcher, accounts, len(settings_for(pg.url(database), redis_url).invoice_prefix)
        )
    finally:
        await watcher.close()
    log(
        f"close_bench: {workers} worker(s): renew {phases['renew']['seconds']:.1f} s,"
        f" close {phases['close']['seconds']:.1f} s, finalize"
        f" {phases['finalize']['seconds']:.1f} s; checks ok: {checked['ok']}"
    )
    return {"workers": workers, "phases": phases, "checks": checked}


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def _cpu(pid: int) -> float:
    return procstat.cpu_seconds(pid)


async def run(a: argparse.Namespace, folder: Path) -> dict[str, Any]:
    redis_server = local_servers.start_redis(folder / "redis")
    pg = local_servers.start_postgres(folder / "pg", durable=a.durable)
    try:
        await pg.execute(f"create database {SEED_DB}")
        await migrate(pg.url(SEED_DB))
        accounts = close_seed.plan(a.accounts, a.seed)
        t = time.perf_counter()
        conn = await asyncpg.connect(pg.url(SEED_DB))
        try:
            rows = await close_seed.write(conn, accounts, SHARDS)
            # The planner's statistics, as a database in use has them: each run's copy of
            # the template has them too, so neither run plans on empty ones (the first
            # run's close, planned before autovacuum had analyzed it, took half again
            # as much CPU as the second's).
            await conn.execute("analyze")
        finally:
            await conn.close()
        seeded = time.perf_counter() - t
        log(f"close_bench: seeded {rows} in {seeded:.1f} s")
        runs = []
        for workers in a.workers:
            load = loadavg()
            run_ = await one_run(pg, redis_server, workers, accounts, a.fixed_clock)
            run_["loadavg_before"] = load
            run_["loadavg_after"] = loadavg()
            runs.append(run_)
    finally:
        redis_server.stop()
        pg.stop()
    kinds = {
        k: sum(1 for x in accounts if x.kind == k)
        for k in (close_seed.NONE, close_seed.COVERED, close_seed.OVERAGE)
    }
    return {
        "args": {k: v for k, v in vars(a).items() if k != "results_dir"},
        "period": PERIOD.label,
        "seeded": {
            "rows": rows,
            "seconds": seeded,
            "kinds": kinds,
            "on_a_plan": sum(1 for x in accounts if x.plan),
            "later_credit": sum(1 for x in accounts if x.later_credit),
            "later_usage": sum(1 for x in accounts if x.later_usage),
        },
        "runs": runs,
        "checks": {"ok": all(r["checks"]["ok"] for r in runs)},
        "where": provenance.where(),
    }


def markdown(result: dict[str, Any]) -> str:
    a, s = result["args"], result["seeded"]
    kinds = ", ".join(f"{v:,} {k}" for k, v in s["kinds"].items())
    lines = [
        f"# Close bench, {result['where']['date']}",
        "",
        f"`python -m loadtests.close_bench --accounts {a['accounts']}"
        f" --workers {' '.join(map(str, a['workers']))}"
        f"{' --durable' if a['durable'] else ''}{' --fixed-clock' if a['fixed_clock'] else ''}`,"
        f" period {result['period']}, Postgres fsync {'on' if a['durable'] else 'off'},"
        f" clock {'fixed at' if a['fixed_clock'] else 'running from'} {AT:%Y-%m-%d %H:%M} UTC,"
        f" {result['where']['machine']['cores']} cores.",
        "",
        f"Seeded (COPY, {s['seconds']:.1f} s): {s['rows']['accounts']:,} accounts ({kinds}),"
        f" {s['on_a_plan']:,} on a plan with a fee, {s['later_credit']:,} with a credit and"
        f" {s['later_usage']:,} with usage after the end; {s['rows']['usage_rollups']:,}"
        f" rollups, {s['rows']['ledger_entries']:,} ledger entries.",
        "",
        "| workers | phase | seconds | accounts/s | ms an account | closers' CPU s"
        " | Postgres CPU s | Redis CPU s | lock waits | counts returned |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["runs"]:
        for phase in PHASES:
            x = r["phases"][phase]
            waits = x["samples_with_a_lock_wait"] / max(1, x["lock_wait_samples"])
            lines.append(
                f"| {r['workers']} | {phase} | {x['seconds']:.1f} | {x['accounts_per_s']:,.0f}"
                f" | {x['ms_per_account']:.2f} | {x['closer_cpu_seconds']:.1f}"
                f" | {x['postgres_cpu_seconds']:.1f} | {x['redis_cpu_seconds']:.1f}"
                f" | {waits:.0%} | {', '.join(f'{c:,}' for c in x['counts'])} |"
            )
    lines += ["", "Load average (1, 5, 15 min) before each run:"]
    lines += [f"{r['workers']} worker(s): {' '.join(r['loadavg_before'])}" for r in result["runs"]]
    lines += [""]
    for r in result["runs"]:
        c = r["checks"]
        lines.append(
            f"Checked, {r['workers']} worker(s): {c['invoices']:,} invoices for"
            f" {c['accounts']:,} accounts, numbers {c['first_number']}..{c['last_number']}"
            f" ({c['distinct_numbers']:,} distinct), {c['drafts']} drafts left; usage =="
            f" lines: {c['usage_not_lines'] == 0}, == rollups: {c['usage_not_rollups'] == 0};"
            f" due + credits == usage + fee: {c['unbalanced'] == 0}; as the seed expects:"
            f" {c['not_expected'] == 0} ({c['with_overage']:,} with overage,"
            f" {c['with_fee']:,} with a fee); ok: {c['ok']}."
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.close_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="closer processes; one run each"
    )
    p.add_argument("--seed", type=int, default=27)
    p.add_argument(
        "--fixed-clock",
        action="store_true",
        help="every closer's clock stays just after the end (all drafts' finalize_after tie)",
    )
    p.add_argument("--durable", action="store_true", help="Postgres with fsync on")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    with local_servers.scratch_folder("close-bench-") as folder:
        result = asyncio.run(run(a, folder))
    return finish(a.results_dir, "close", result, markdown(result), result["checks"]["ok"])


if __name__ == "__main__":
    sys.exit(main())
