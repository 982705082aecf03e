"""Micro-benchmark of the gateway's API key lookup: what a key-cache miss costs.

    .venv/bin/python -m loadtests.key_lookup_bench [--keys 20000] [--concurrency 64]

The gateway's own ``Identifier`` over ``PipelinedState`` (one pipelined hiredis
connection), against a real Redis (started here unless ``--redis-url`` is
given) holding ``--keys`` accounts with one API key each. ``--concurrency``
workers, like request handlers, each identify their share of the keys one
after the other:

* ``miss``: an empty cache, so every call checks the key's checksum, sends one
  HMGET (the calls of one loop pass share a socket write) and caches the record;
* ``hit``: the same keys again, all cached.

Reported per identify, median of ``--rounds``: client CPU (``time.process_time``)
and Redis CPU (INFO), and the difference a miss makes. Every round checks that
each key resolved to its own account. The full benchmark's sweep shows what
the misses cost a whole call (1,000,000 uniform keys miss a 100,000-key cache
about 90 % of the time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis as redis_sync
import uvloop

from gateway.identity import Identifier, KeyCache
from gateway.metrics import GatewayMetrics
from meter import local_servers
from meter.hot_path_state import PipelinedState

from . import keyspace, redis_side
from .harness import SHARDS
from .keyspace import BenchAccount


async def one_round(
    url: str, accounts: list[BenchAccount], concurrency: int
) -> dict[str, tuple[float, float]]:
    """{"miss" | "hit": (client CPU us, Redis CPU us) per identify}."""
    state = PipelinedState.from_url(url)
    identifier = Identifier(state, KeyCache(len(accounts), 30.0), GatewayMetrics())
    admin = redis_sync.Redis.from_url(url)
    share = len(accounts) // concurrency
    out: dict[str, tuple[float, float]] = {}
    try:
        await state.ping()

        async def worker(mine: list[BenchAccount]) -> None:
            for account in mine:
                record = await identifier.identify(account.key)
                if record.account_id != account.account_id:
                    raise SystemExit(f"{account.key} resolved to {record.account_id}")

        for mode in ("miss", "hit"):
            redis0, cpu0 = redis_side.cpu_seconds(admin), time.process_time()
            await asyncio.gather(
                *(worker(accounts[i * share : (i + 1) * share]) for i in range(concurrency))
            )
            cpu, redis = time.process_time() - cpu0, redis_side.cpu_seconds(admin) - redis0
            calls = share * concurrency
            out[mode] = (cpu / calls * 1e6, redis / calls * 1e6)
        if len(identifier.cache) != share * concurrency:
            raise SystemExit(f"the cache holds {len(identifier.cache)} keys")
    finally:
        admin.close()
        await state.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", help="use this Redis (default: start one)")
    opts = parser.parse_args(argv)
    if opts.keys < opts.concurrency:
        parser.error("--keys must be at least --concurrency")

    accounts = list(keyspace.accounts(opts.keys, SHARDS))
    with tempfile.TemporaryDirectory(prefix="key-lookup-bench-") as tmp:
        server = None if opts.redis_url else local_servers.start_redis(Path(tmp))
        url = opts.redis_url or server.url  # type: ignore[union-attr]
        try:
            redis_side.provision(url, accounts)
            rounds = [
                uvloop.run(one_round(url, accounts, opts.concurrency)) for _ in range(opts.rounds)
            ]
        finally:
            if server is not None:
                server.stop()

    def median(mode: str, which: int) -> float:
        return statistics.median(r[mode][which] for r in rounds)

    print(
        f"\n{opts.keys:,} keys, concurrency {opts.concurrency}, median of {opts.rounds} rounds\n\n"
        "| per identify | client CPU us | Redis CPU us |\n|---|---:|---:|"
    )
    for mode in ("miss", "hit"):
        print(f"| {mode} | {median(mode, 0):.1f} | {median(mode, 1):.1f} |")
    extra = [median("miss", i) - median("hit", i) for i in (0, 1)]
    print(f"| a miss costs | {extra[0]:.1f} more | {extra[1]:.1f} more |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
