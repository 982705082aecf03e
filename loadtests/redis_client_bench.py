"""Micro-benchmark of the hot path's Redis client: N admissions at concurrency C, three ways.

    .venv/bin/python -m loadtests.redis_client_bench [--calls 60000] [--concurrency 64]

* ``redis-asyncio``: ``LiveState.admit``, one EVALSHA per call through redis.asyncio
  (a connection pool; what the gateway had before issue 4).
* ``pipe-per-call``: one EVALSHA per call through ``RedisPipe`` (one raw, pipelined
  hiredis connection).
* ``batched``: ``PipelinedState.admit``: the calls of one loop pass in one admit.lua
  call per shard (one Redis Cluster slot each), through the same pipe.
* ``batched-cross-shard``: the same with ``cross_shard=True``: one admit.lua call
  per loop pass whatever the shards (a single Redis only).

Each mode runs ``--rounds`` times on a Redis of its own (started here unless
``--redis-url`` is given); the median round is reported: calls/s, client CPU
microseconds per call (``time.process_time``), Redis CPU per call and Redis
round trips (EVALSHA calls) per call, from INFO. Every round checks exactness:
the balance fell by admitted x price and the streams grew by one event per
admission.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis as redis_sync
import uvloop

from meter import keys, local_servers
from meter.hot_path_state import PipelinedState
from meter.live_state import (
    AccountConfig,
    Admission,
    BatchIds,
    Call,
    LiveState,
    admit_arguments,
)
from meter.live_state import parse_admit_reply as parse
from meter.redis_pipe import RedisPipe
from meter.scripts import ADMIT

from . import redis_side
from .servers import run_command

DAY = 20_400
PRICE = 1
MODES = ("redis-asyncio", "pipe-per-call", "batched", "batched-cross-shard")


@dataclass
class Round:
    mode: str
    calls: int
    seconds: float
    calls_per_s: float
    client_cpu_us_per_call: float
    redis_cpu_us_per_call: float
    redis_round_trips_per_call: float


def redis_counters(admin: redis_sync.Redis) -> tuple[float, int]:
    stats = admin.info("commandstats")
    evalsha = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return redis_side.cpu_seconds(admin), evalsha


def total_balance(admin: redis_sync.Redis, calls: list[Call]) -> int:
    accounts = {(c.shard, c.account_id) for c in calls}
    return sum(int(admin.hget(keys.account(s, a), "bal") or 0) for s, a in accounts)


async def provision(url: str, accounts: list[tuple[int, str]]) -> None:
    state = LiveState.from_url(url)
    try:
        config = AccountConfig(1, 0, None, None, None, False)
        for shard, account in accounts:
            await state.sync_account(shard, account, config)
            await state.credit(shard, account, "seed", 10**15)
    finally:
        await state.close()


async def run_round(mode: str, url: str, calls: list[Call], concurrency: int) -> Round:
    admit: Callable[[Call], Awaitable[Admission]]
    close: Callable[[], Awaitable[None]]
    if mode == "redis-asyncio":
        live = LiveState.from_url(url, max_connections=concurrency)
        admit, close = (lambda c: live.admit(c, DAY)), live.close
    elif mode == "pipe-per-call":
        pipe = RedisPipe(url)
        batch_ids = BatchIds()

        async def admit_one(c: Call) -> Admission:
            key = batch_ids.key(c.shard)
            key_names, args = admit_arguments([c], DAY, c.shard, key, keep_record=False)
            return parse(await pipe.evalsha(ADMIT, key_names, args))[0]

        admit, close = admit_one, pipe.close
    else:
        fast = PipelinedState.from_url(url, cross_shard=mode == "batched-cross-shard")
        admit, close = (lambda c: fast.admit(c, DAY)), fast.close

    for c in calls[:200]:  # connect, load the script
        await admit(c)
    admin = redis_sync.Redis.from_url(url)
    streams = {keys.usage_stream(c.shard) for c in calls}
    admin.delete(*streams)
    balances_before = total_balance(admin, calls)
    redis_cpu0, evalsha0 = redis_counters(admin)
    admitted = 0
    per_worker = len(calls) // concurrency

    async def worker(i: int) -> None:
        nonlocal admitted
        for c in calls[i * per_worker : (i + 1) * per_worker]:
            result = await admit(c)
            admitted += result.admitted

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    redis_cpu1, evalsha1 = redis_counters(admin)
    n = per_worker * concurrency
    balances_after = total_balance(admin, calls)
    events = sum(admin.xlen(s) for s in streams)
    admin.close()
    await close()
    if not (admitted == n == events and balances_before - balances_after == n * PRICE):
        raise SystemExit(f"{mode}: NOT EXACT: {admitted=} {n=} {events=}")
    return Round(
        mode,
        n,
        round(seconds, 3),
        round(n / seconds),
        round(cpu / n * 1e6, 1),
        round((redis_cpu1 - redis_cpu0) / n * 1e6, 1),
        round((evalsha1 - evalsha0) / n, 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--redis-url", help="use this Redis (default: start one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    opts = parser.parse_args(argv)

    accounts = [
        (keys.shard_of(f"acct_{i}", opts.shards), f"acct_{i}") for i in range(opts.accounts)
    ]
    calls = [
        Call(shard, account, "proj_1", "key_1", "chat", PRICE)
        for shard, account in (accounts[i % len(accounts)] for i in range(opts.calls))
    ]
    run = uvloop.run if opts.loop == "uvloop" else asyncio.run
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        server = None if opts.redis_url else local_servers.start_redis(Path(tmp))
        url = opts.redis_url or server.url  # type: ignore[union-attr]
        try:
            run(provision(url, accounts))
            results: dict[str, Round] = {}
            for mode in opts.modes.split(","):
                rounds = [
                    run(run_round(mode, url, calls, opts.concurrency)) for _ in range(opts.rounds)
                ]
                results[mode] = sorted(rounds, key=lambda r: r.calls_per_s)[len(rounds) // 2]
                all_rates = [r.calls_per_s for r in rounds]
                print(f"  {mode}: rounds {all_rates} calls/s", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()

    print(
        f"\n{opts.calls} admissions, concurrency {opts.concurrency}, {opts.accounts} accounts "
        f"on {opts.shards} shards, {opts.loop}, median of {opts.rounds}\n"
    )
    header = ("mode", "calls/s", "client CPU us/call", "Redis CPU us/call", "Redis calls/call")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    base = results.get("redis-asyncio")
    for r in results.values():
        ratio = f" ({r.calls_per_s / base.calls_per_s:.1f}x)" if base and r is not base else ""
        print(
            f"| {r.mode} | {r.calls_per_s}{ratio} | {r.client_cpu_us_per_call} | "
            f"{r.redis_cpu_us_per_call} | {r.redis_round_trips_per_call} |"
        )
    if opts.json:
        opts.json.write_text(json.dumps({m: asdict(r) for m, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    run_command(main)
