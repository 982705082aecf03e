"""Billing portal pages under load: p50/p99 with many signed-in sessions, on a big account.

    .venv/bin/python -m loadtests.portal_bench --events 10000000 --sessions 100

Starts its own Redis and PostgreSQL, migrates, and writes with SQL what the ledger
worker would have written for account ``acct_0`` over 90 days (``history_bench.fill``:
the raw usage events, their rollups, one usage ledger entry per 10 events). Then it
runs the admin API and the portal as child processes (``meter admin``, ``meter
portal``), adds ``--sessions`` members to the account, signs each in through a
one-time link of its own (``POST .../portal-sessions``, then ``GET /s/<token>``), and
has every session fetch one page after another for ``--seconds`` per page: the
overview, then the balance history. It reports each page's p50/p99/max, requests per
second and the portal's CPU per request (from /proc), and writes them to
``loadtests/results/portal-bench-latest.json`` and ``.md`` (the latest run only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from ledger.history_query import to_day
from loadtests import procstat
from loadtests.history_bench import fill
from loadtests.latest import write_latest
from meter import local_servers
from meter.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
TOKEN = "portal-bench-operator-token-0123456789"
ACCOUNT = "acct_0"
PAGES = (("overview", "/"), ("balance history", "/balance-history"))


def _env(redis_url: str, database_url: str, admin_port: int, portal_port: int) -> dict[str, str]:
    portal = f"http://127.0.0.1:{portal_port}"
    return {
        **os.environ,
        "METER_REDIS_URL": redis_url,
        "METER_DATABASE_URL": database_url,
        "METER_ADMIN_TOKEN": TOKEN,
        "METER_SHARDS": "16",
        "METER_ADMIN_PORT": str(admin_port),
        "METER_PORTAL_PORT": str(portal_port),
        "METER_PORTAL_PUBLIC_URL": portal,
        "METER_PORTAL_RETURN_URLS": portal,
        "METER_PORTAL_COOKIE_SECURE": "false",
        "METER_LOG_LEVEL": "WARNING",
    }


def _spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    meter = Path(sys.executable).with_name("meter")
    out = log.open("wb")
    return subprocess.Popen([str(meter), command], env=env, stdout=out, stderr=subprocess.STDOUT)


async def _wait(url: str, proc: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)  # polling a child's start-up; not test synchronisation
    raise RuntimeError(f"{url} did not answer within {within} s")


async def sign_in(admin: str, portal: str, sessions: int) -> list[aiohttp.ClientSession]:
    """``sessions`` members of the account, each signed in with a cookie jar of its own."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    signed: list[aiohttp.ClientSession] = []
    async with aiohttp.ClientSession(headers=auth) as api:
        for i in range(sessions):
            body = {"email": f"m{i}@bench.test", "name": f"Member {i}", "role": "owner"}
            async with api.post(f"{admin}/v1/accounts/{ACCOUNT}/members", json=body) as r:
                assert r.status == 201, await r.text()
                member = await r.json()
            link_body = {"member_id": member["id"], "return_url": portal}
            async with api.post(
                f"{admin}/v1/accounts/{ACCOUNT}/portal-sessions", json=link_body
            ) as r:
                assert r.status == 201, await r.text()
                url = (await r.json())["url"]
            session = aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                connector=aiohttp.TCPConnector(limit=1),
            )
            async with session.get(url, allow_redirects=True) as r:
                assert r.status == 200, await r.text()
            signed.append(session)
    return signed


async def load(
    sessions: list[aiohttp.ClientSession], url: str, seconds: float
) -> tuple[list[float], int]:
    """Every session fetches ``url`` back to back for ``seconds``: latencies, failures."""
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.monotonic() < end:
            started = time.perf_counter()
            async with session.get(url, allow_redirects=False) as r:
                await r.read()
                if r.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(s) for s in sessions))
    return latencies, failures


def _summary(latencies: list[float], failures: int, seconds: float, cpu: float) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in latencies)
    n = len(ms)
    return {
        "requests": n,
        "failures": failures,
        "req_per_s": round(n / seconds, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(n - 1, int(n * 0.99))], 2),
        "max_ms": round(ms[-1], 2),
        "portal_cpu_us_per_request": round(cpu / n * 1e6, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    os.chmod(tmp, 0o755)
    redis = local_servers.start_redis(tmp / "redis")
    pg = local_servers.start_postgres(tmp / "pg")
    procs: list[subprocess.Popen[bytes]] = []
    signed: list[aiohttp.ClientSession] = []
    try:
        dsn = pg.url()
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        await fill(conn, args.events, to_day(date.today()))
        events = await conn.fetchval(
            "select count(*) from usage_events where account_id = $1", ACCOUNT
        )
        entries = await conn.fetchval(
            "select count(*) from ledger_entries where account_id = $1", ACCOUNT
        )
        await conn.close()
        admin_port, portal_port = local_servers.free_port(), local_servers.free_port()
        env = _env(redis.url, dsn, admin_port, portal_port)
        admin = f"http://127.0.0.1:{admin_port}"
        portal = f"http://127.0.0.1:{portal_port}"
        procs.append(_spawn("admin", env, tmp / "admin.log"))
        procs.append(_spawn("portal", env, tmp / "portal.log"))
        await _wait(f"{admin}/healthz", procs[0])
        await _wait(f"{portal}/healthz", procs[1])
        signed = await sign_in(admin, portal, args.sessions)
        out: dict[str, Any] = {
            "events": events,
            "ledger_entries": entries,
            "sessions": args.sessions,
            "seconds_per_page": args.seconds,
            "pages": {},
        }
        for name, path in PAGES:
            await load(signed, portal + path, 1.0)  # warm the pool and the plans
            before = procstat.cpu_seconds(procs[1].pid)
            latencies, failures = await load(signed, portal + path, args.seconds)
            cpu = procstat.cpu_seconds(procs[1].pid) - before
            out["pages"][name] = _summary(latencies, failures, args.seconds, cpu)
        return out
    finally:
        for s in signed:
            await s.close()
        for p in procs:
            p.terminate()
            p.wait(30)
        redis.proc.terminate()
        pg_pid = pg.dir / "pgdata" / "postmaster.pid"
        if pg.proc.poll() is None and pg_pid.exists():
            os.kill(int(pg_pid.read_text().split()[0]), 2)
            pg.proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Portal pages, {result['sessions']} signed-in sessions fetching back to back,"
        f" {result['seconds_per_page']} s per page; account with {result['events']:,} usage"
        f" events and {result['ledger_entries']:,} ledger entries.",
        "",
        "| page | requests | failures | req/s | p50 ms | p99 ms | max ms | portal CPU us/req |",
        "|------|---------:|---------:|------:|-------:|-------:|-------:|------------------:|",
    ]
    for name, p in result["pages"].items():
        lines.append(
            f"| {name} | {p['requests']} | {p['failures']} | {p['req_per_s']} | {p['p50_ms']}"
            f" | {p['p99_ms']} | {p['max_ms']} | {p['portal_cpu_us_per_request']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    text = markdown(result)
    print(text)
    write_latest(args.results_dir, "portal-bench", result, text)
    failed = sum(page["failures"] for page in result["pages"].values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
