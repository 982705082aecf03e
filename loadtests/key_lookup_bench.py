"""Micro-benchmark of identify + admit: what a key-cache miss costs a call.

    .venv/bin/python -m loadtests.key_lookup_bench [--keys 20000] [--concurrency 64]

The gateway's own ``Identifier`` and ``PipelinedState`` (one pipelined hiredis
connection, admissions batched per loop pass across shards), against a real
Redis (started here unless ``--redis-url`` is given) holding ``--keys``
accounts with one API key each. ``--concurrency`` workers, like request
handlers, each identify and admit one call per key of their share, one after
the other, in three ways:

* ``miss, looked up``: an empty cache; the key's checksum, one HMGET (the calls
  of one loop pass share a socket write), then the admission (as on a cluster);
* ``miss, resolved by admit.lua``: an empty cache; the checksum, then the
  admission of a ``KeyCall``, whose key the script reads in the same step (as
  the gateway does on a single Redis); the answer fills the cache;
* ``hit``: the same keys again, all cached; the admission only.

Reported per call, median of ``--rounds``: client CPU (``time.process_time``)
and Redis CPU (INFO), and what each miss adds to a hit. Every round checks that
each key resolved to its own account and that every call was admitted. The
full benchmark's sweep shows what misses cost a whole proxied call (1,000,000
uniform keys miss a 100,000-key cache about 90 % of the time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import redis as redis_sync
import uvloop

from gateway.identity import Identifier, KeyCache
from gateway.metrics import GatewayMetrics
from meter import local_servers
from meter.hot_path_state import PipelinedState
from meter.live_state import Admission, Call, KeyCall, KeyRecord
from meter.money import utc_day

from . import keyspace, redis_side
from .harness import SHARDS
from .keyspace import BenchAccount
from .servers import run_command

MODES = ("miss, looked up", "miss, resolved by admit.lua", "hit")
ROUTE, PRICE = "bench", 1


def call_of(record: KeyRecord) -> Call:
    return Call(record.shard, record.account_id, record.project_id, record.key_id, ROUTE, PRICE)


async def one_round(
    url: str, accounts: list[BenchAccount], concurrency: int
) -> dict[str, tuple[float, float]]:
    """{mode: (client CPU us, Redis CPU us) per identified and admitted call}."""
    state = PipelinedState.from_url(url)
    admin = redis_sync.Redis.from_url(url)
    share = len(accounts) // concurrency
    day = utc_day(time.time())
    out: dict[str, tuple[float, float]] = {}
    try:
        if not await state.choose_batching():
            raise SystemExit("a single Redis is needed (this one is a cluster node)")

        async def one_call(identifier: Identifier, mode: str, key: str) -> Admission:
            if mode == "miss, resolved by admit.lua":
                digest = identifier.unresolved(key)
                admission = await state.admit(KeyCall(digest, ROUTE, PRICE), day)
                identifier.learn(digest, admission.key)
                return admission
            record = identifier.cached(key) if mode == "hit" else None
            if record is None:
                record = await identifier.identify(key)
            return (await state.admit(call_of(record), day))._replace(key=record)

        async def worker(identifier: Identifier, mode: str, mine: list[BenchAccount]) -> None:
            for account in mine:
                admission = await one_call(identifier, mode, account.key)
                if admission.key is None or admission.key.account_id != account.account_id:
                    raise SystemExit(f"{account.key} resolved to {admission.key}")
                if not admission.admitted:
                    raise SystemExit(f"{account.account_id}: {admission.outcome!r}")

        identifier = None
        for mode in MODES:
            if mode != "hit":  # each miss mode starts from an empty cache
                identifier = Identifier(state, KeyCache(len(accounts), 30.0), GatewayMetrics())
            assert identifier is not None
            redis0, cpu0 = redis_side.cpu_seconds(admin), time.process_time()
            await asyncio.gather(
                *(
                    worker(identifier, mode, accounts[i * share : (i + 1) * share])
                    for i in range(concurrency)
                )
            )
            cpu, redis = time.process_time() - cpu0, redis_side.cpu_seconds(admin) - redis0
            calls = share * concurrency
            out[mode] = (cpu / calls * 1e6, redis / calls * 1e6)
            if len(identifier.cache) != calls:
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
        "| per call (identify + admit) | client CPU us | Redis CPU us |\n|---|---:|---:|"
    )
    for mode in MODES:
        print(f"| {mode} | {median(mode, 0):.1f} | {median(mode, 1):.1f} |")
    for mode in MODES[:2]:
        extra = [median(mode, i) - median("hit", i) for i in (0, 1)]
        print(f"| {mode}: more than a hit | {extra[0]:+.1f} | {extra[1]:+.1f} |")
    return 0


if __name__ == "__main__":
    run_command(main)
