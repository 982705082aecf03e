"""Credit grants under gateway traffic: the gateway's CPU per call with 1 and with N live
grants per account, and the ledger worker's, in one run.

    .venv/bin/python -m loadtests.grants_bench [--grants 50] [--pairs 2] [--seconds 10]

Runs the product as an operator does, each part its own process: Redis and
PostgreSQL (migrated), the echo upstream, the gateway, the ledger worker and the
admin API. Two sets of ``--accounts`` accounts are made through the admin API: set A
with one grant each (no expiry), set B with ``--grants`` grants each (all but one
with an expiry, days apart; the balance is the same). wrk then sends ``GET
/v1/bench`` ($0.001 a call) with the keys of one set, then the other, A B A B ...
``--pairs`` times, and each phase ends when the worker has booked every event.
Measured per phase, from ``/proc``: the CPU per admitted call of the gateway (the
admission script never reads grants, so this should not move) and of the ledger
worker and Postgres (which draw each batch's usage on the grants). Checked at the
end: for every account the book's balance equals Redis's and the live grants hold
it, and in set B the grants were drawn in spending order (every grant expiring
before a partly spent one is empty). Writes ``loadtests/results/grants-latest.json``
and ``.md``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from loadtests.recharge_bench import Admin
from meter import keys as key_layout
from meter import local_servers
from meter.devstack import child_environment
from meter.migrate import migrate
from meter.settings import Secret, Settings

from . import keyspace, measure, procstat, provenance, servers, wrk
from .harness import log
from .latest import finish
from .recharge_bench import start_ledger, wait_quiet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
TOKEN = "grants-bench-operator-token-0123456789"
PATH, PRICE = "/v1/bench", 1_000  # the default route of gateway/prices.toml
OPENING = 1_000_000_000  # $1,000 an account, whatever the number of grants
ROLES = ("gateway", "ledger", "postgres", "redis")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    key: str


async def provision(admin: Admin, name: str, n: int, grants: int) -> list[Account]:
    """``n`` accounts with a key and ``grants`` grants of OPENING in all."""
    out = []
    start = datetime.now(UTC) + timedelta(days=30)
    for i in range(n):
        body = {"name": f"Grants bench {name}{i}"}
        account = (await admin.call("POST", "/v1/accounts", body))["id"]
        project = await admin.call("POST", f"/v1/accounts/{account}/projects", {"name": "p"})
        key = (await admin.call("POST", f"/v1/projects/{project['id']}/keys"))["key"]
        for g in range(grants):
            credit: dict[str, Any] = {
                "amount": OPENING // grants,
                "description": f"Bench grant {g}",
                "idempotency_key": f"g{g}",
                "kind": "grant",
            }
            if g < grants - 1:  # the last one never expires
                at = start + timedelta(days=g)
                credit["expires_at"] = at.isoformat().replace("+00:00", "Z")
            await admin.call("POST", f"/v1/accounts/{account}/credits", credit)
        out.append(Account(account, key))
    return out


async def drained(db: asyncpg.Pool, r: aioredis.Redis, shards: int, within: float = 60) -> None:
    """Until every stream entry is at or below its shard's offset."""
    deadline = time.monotonic() + within
    while True:
        offsets = {x["shard"]: x["last_id"] for x in await db.fetch("select * from ledger_offsets")}
        behind = False
        for s in range(shards):
            last = await r.xrevrange(key_layout.usage_stream(s), "+", "-", count=1)
            if last:
                newest = tuple(int(p) for p in last[0][0].decode().split("-"))
                if tuple(int(p) for p in offsets.get(s, "0-0").split("-")) < newest:
                    behind = True
        if not behind:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the ledger worker did not catch up")
        await asyncio.sleep(0.05)


async def checks(
    db: asyncpg.Pool, r: aioredis.Redis, sets: dict[str, list[Account]]
) -> dict[str, Any]:
    """Book == Redis == the live grants, and set B drawn in spending order."""
    mismatched, out_of_order, accounts = [], [], 0
    for accounts_of in sets.values():
        for a in accounts_of:
            accounts += 1
            row = await db.fetchrow("select balance, shard from accounts where id = $1", a.id)
            live = int(await r.hget(key_layout.account(row["shard"], a.id), "bal") or 0)
            grants = await db.fetch(
                "select amount, remaining from credit_grants where account_id = $1"
                " and ended_at is null order by expires_at asc nulls last, created_at, id",
                a.id,
            )
            held = sum(g["remaining"] for g in grants)
            if not (row["balance"] == live and held == max(0, row["balance"])):
                mismatched.append(a.id)
            touched = [i for i, g in enumerate(grants) if g["remaining"] < g["amount"]]
            if touched and any(g["remaining"] for g in grants[: touched[-1]]):
                out_of_order.append(a.id)
    return {
        "accounts": accounts,
        "book_redis_grants_mismatched": mismatched,
        "drawn_out_of_order": out_of_order,
        "ok": not mismatched and not out_of_order,
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def run(a: argparse.Namespace, folder: Path) -> dict[str, Any]:
    redis_server = local_servers.start_redis(folder / "redis")
    pg = local_servers.start_postgres(folder / "pg")
    started: list[servers.Server] = []
    db: asyncpg.Pool | None = None
    admin: Admin | None = None
    r = aioredis.Redis.from_url(redis_server.url)
    phases: list[dict[str, Any]] = []
    try:
        await migrate(pg.url())
        db = await asyncpg.create_pool(pg.url(), min_size=1, max_size=2)
        upstream = servers.start_upstream(folder)
        started.append(upstream)
        settings = Settings.from_env(
            {},
            redis_url=redis_server.url,
            database_url=pg.url(),
            upstream_url=upstream.url,
            admin_token=Secret(TOKEN),
            reconcile_interval=0.0,
            log_level="warning",
        )
        env = child_environment(settings)
        admin_server = servers.start_admin(folder, env, "admin")
        started.append(admin_server)
        ledger = start_ledger(folder, env)
        started.append(ledger)
        gateway = servers.start_gateway(folder, env, 1, "gateway")
        started.append(gateway)
        admin = Admin(admin_server.url, TOKEN)
        sets = {
            "A": await provision(admin, "A", a.accounts, 1),
            "B": await provision(admin, "B", a.accounts, a.grants),
        }
        grants_of = {"A": 1, "B": a.grants}
        log(f"grants_bench: {a.accounts} accounts with 1 grant, {a.accounts} with {a.grants}")
        loads = {
            name: wrk.Load(
                keyspace.write_keys_file(folder / f"keys-{name}.txt", [x.key for x in s])
            )
            for name, s in sets.items()
        }
        probe = measure.Probe(
            {
                "gateway": gateway.pid,
                "ledger": ledger.pid,
                "postgres": pg.proc.pid,
                "redis": redis_server.proc.pid,
                "admin": admin_server.pid,
                "upstream": upstream.pid,
            }
        )
        url = gateway.url + PATH
        await asyncio.to_thread(
            measure.run_once, url, a.connections, a.warmup, loads["A"], probe, None
        )
        await drained(db, r, settings.shards)
        for pair in range(a.pairs):
            for name in ("A", "B"):
                quiet = wait_quiet(a.noise_threshold)
                # The worker's share is measured to the end of its booking, not the traffic.
                before = {role: procstat.cpu_seconds(probe.roles[role]) for role in ROLES}
                sample = await asyncio.to_thread(
                    measure.run_once, url, a.connections, a.seconds, loads[name], probe, None
                )
                await drained(db, r, settings.shards)
                after = {role: procstat.cpu_seconds(probe.roles[role]) for role in ROLES}
                calls = max(1, sample["ok"])
                sample.update(
                    pair=pair,
                    set=name,
                    grants=grants_of[name],
                    busy_before_cores=quiet,
                    cpu_us_per_call_booked={
                        role: (after[role] - before[role]) / calls * 1e6 for role in ROLES
                    },
                )
                phases.append(sample)
                log(
                    f"pair {pair + 1} {name} ({grants_of[name]} grants):"
                    f" gateway {sample['cpu_us_per_call']['gateway']:.1f} us/call,"
                    f" ledger {sample['cpu_us_per_call_booked']['ledger']:.1f} us/event,"
                    f" postgres {sample['cpu_us_per_call_booked']['postgres']:.1f} us/event,"
                    f" {sample['ok_rps']:,.0f} calls/s, {sample['non_2xx']} refused,"
                    f" {sample['foreign_cores']:.2f} cores elsewhere"
                )
        checked = await checks(db, r, sets)
    finally:
        await r.aclose()
        if admin is not None:
            await admin.close()
        if db is not None:
            await db.close()
        for server in reversed(started):
            server.stop()
        redis_server.stop()
        pg.stop()
    summary = {}
    for name in ("A", "B"):
        mine = [p for p in phases if p["set"] == name]
        summary[name] = {
            "grants": grants_of[name],
            "gateway_us_per_call": spread([p["cpu_us_per_call"]["gateway"] for p in mine]),
            "ledger_us_per_event": spread([p["cpu_us_per_call_booked"]["ledger"] for p in mine]),
            "postgres_us_per_event": spread(
                [p["cpu_us_per_call_booked"]["postgres"] for p in mine]
            ),
            "calls_per_s": spread([p["ok_rps"] for p in mine]),
            "refused": sum(p["non_2xx"] for p in mine),
        }
    return {
        "args": {k: v for k, v in vars(a).items() if k != "results_dir"},
        "summary": summary,
        "phases": phases,
        "checks": checked,
        "where": provenance.where(),
    }


def markdown(result: dict[str, Any]) -> str:
    a, s = result["args"], result["summary"]

    def cell(x: dict[str, float]) -> str:
        return f"{x['median']:.1f} ({x['min']:.1f}-{x['max']:.1f})"

    lines = [
        f"# Grants bench, {result['where']['date']}",
        "",
        f"`python -m loadtests.grants_bench --grants {a['grants']} --pairs {a['pairs']}"
        f" --seconds {a['seconds']:g} --accounts {a['accounts']}`,"
        f" {a['connections']} connections, phases A B alternating; medians (ranges) of"
        f" {a['pairs']} phases each.",
        "",
        "| live grants an account | gateway CPU us/call | ledger worker us/event"
        " | Postgres us/event | calls/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for name in ("A", "B"):
        x = s[name]
        lines.append(
            f"| {x['grants']} | {cell(x['gateway_us_per_call'])}"
            f" | {cell(x['ledger_us_per_event'])} | {cell(x['postgres_us_per_event'])}"
            f" | {x['calls_per_s']['median']:,.0f} |"
        )
    c = result["checks"]
    lines += [
        "",
        f"Checked: {c['accounts']} accounts, book == Redis == live grants:"
        f" {not c['book_redis_grants_mismatched']}; drawn in spending order:"
        f" {not c['drawn_out_of_order']}; calls refused: {s['A']['refused'] + s['B']['refused']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.grants_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--grants", type=int, default=50, help="live grants an account of set B")
    p.add_argument("--accounts", type=int, default=8, help="accounts in each set")
    p.add_argument("--pairs", type=int, default=2, help="A/B pairs (A B A B ...)")
    p.add_argument("--seconds", type=float, default=10.0, help="of traffic a phase")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--noise-threshold", type=float, default=0.35, metavar="CORES")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    with local_servers.scratch_folder("grants-bench-") as folder:
        result = asyncio.run(run(a, folder))
    return finish(a.results_dir, "grants", result, markdown(result), result["checks"]["ok"])


if __name__ == "__main__":
    sys.exit(main())
