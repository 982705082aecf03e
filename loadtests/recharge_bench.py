"""Auto-recharge under gateway traffic: crossing to credit, and the gateway's CPU on and off.

    .venv/bin/python -m loadtests.recharge_bench [--pairs 3] [--seconds 10] [--accounts 8]

Runs the product as an operator does, each part its own process: Redis and
PostgreSQL (``meter.local_servers``, migrated), the echo upstream, the gateway,
the ledger worker (which runs the payments loop), the admin API and the Stripe
test double. Every account is made through the admin API: a project, a key, a
grant, a card made at the double with the real ``stripe`` library and attached to
the account's customer. wrk then sends ``GET /v1/bench`` ($0.001 a call) with the
accounts' keys, in phases that alternate, on / off, ``--pairs`` times:

* on: auto-recharge enabled, the threshold a little below each balance and the
  amount sized (from the warm-up's rate) so that each account falls below the
  threshold every ``--period`` seconds while the traffic flows;
* off: auto-recharge disabled and a grant that covers the phase: no crossing.

Between phases the traffic stops and the ledger worker drains (no pending signal,
no recharge in flight). Measured: (1) from the crossing call's admission
(``payments.crossed_at``: its usage stream id's milliseconds) to the recharge's
settlement (``payments.settled_at``, in the transaction whose commit is followed by
the credit into Redis), per recharge from Postgres, beside the ledger worker's
histogram ``meter_recharge_crossing_to_credit_seconds`` (which ends after the credit
reached Redis); (2) the gateway's CPU per admitted call (``/proc``, its process tree)
in each phase, and on / off per pair. Checked: every succeeded recharge has exactly
one ledger entry of kind ``recharge``, the double made as many charges, no call was
refused, no off phase crossed. Writes ``loadtests/results/recharge-latest.json`` and
``.md`` (the latest run only); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import stripe
from prometheus_client.parser import text_string_to_metric_families

from meter import local_servers, open_files, program_paths
from meter.devstack import child_environment
from meter.migrate import migrate
from meter.settings import Secret, Settings

from . import keyspace, measure, procstat, provenance, recharge_report, servers, wrk
from .harness import log
from .latest import write_latest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"
TOKEN = "recharge-bench-operator-token-0123456789"
DOUBLE_KEY, DOUBLE_PUBLISHABLE = "sk_test_double", "pk_test_double"
VISA = "4242424242424242"
PATH, PRICE = "/v1/bench", 1_000  # the default route of gateway/prices.toml
OPENING = 1_000_000_000  # $1,000 each: the threshold follows the balance, never near zero
CENT = 10_000
# Recharges of a cent or more: METER_CREDIT_PURCHASE_MIN ($5 by default) lowered for the
# bench, so that a few seconds of one account's traffic cross its threshold.
PURCHASE_MIN = CENT
LEAD_S = 0.3  # an on phase's threshold: this much of an account's spend below its balance
DRAIN_S = 60.0
HISTOGRAM = "meter_recharge_crossing_to_credit_seconds"


def cents_up(micros: float) -> int:
    return max(CENT, math.ceil(micros / CENT) * CENT)


def cents_down(micros: float) -> int:
    return int(micros // CENT) * CENT


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    key: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What the phases set: each on phase's recharge amount, how far below each balance
    its threshold goes (micros), and each off phase's grant."""

    accounts: list[Account]
    amount: int
    lead: int
    cover: int


class Admin:
    """The admin API with the bootstrap token."""

    def __init__(self, url: str, token: str = TOKEN) -> None:
        self.url = url
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as r:
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {await r.text()}")
            return await r.json()

    async def balance(self, account_id: str) -> int:
        return int((await self.call("GET", f"/v1/accounts/{account_id}/balance"))["balance"])

    async def recharge(self, account_id: str, enabled: bool, threshold: int, amount: int) -> None:
        body: dict[str, Any] = {"enabled": enabled, "threshold": threshold, "amount": amount}
        body |= {"max_per_day": None, "max_amount_per_day": None}
        await self.call("PUT", f"/v1/accounts/{account_id}/auto-recharge", body)

    async def grant(self, account_id: str, amount: int, key: str) -> None:
        body = {"amount": amount, "description": "Bench credit", "idempotency_key": key}
        await self.call("POST", f"/v1/accounts/{account_id}/credits", body | {"kind": "grant"})

    async def close(self) -> None:
        await self.http.close()


async def provision(
    admin: Admin, db: asyncpg.Pool, cards: stripe.StripeClient, n: int
) -> list[Account]:
    """``n`` accounts, each with a key, the opening grant and a default card."""
    out = []
    for i in range(n):
        body = {"name": f"Recharge bench {i}", "billing_email": f"b{i}@bench.test"}
        account = (await admin.call("POST", "/v1/accounts", body))["id"]
        project = await admin.call("POST", f"/v1/accounts/{account}/projects", {"name": "p"})
        key = (await admin.call("POST", f"/v1/projects/{project['id']}/keys"))["key"]
        await admin.grant(account, OPENING, "opening")
        await admin.call("POST", f"/v1/accounts/{account}/setup-intents")  # makes the customer
        customer = await db.fetchval(
            "select stripe_customer_id from payment_customers where account_id = $1", account
        )
        pm = cards.v1.payment_methods.create(
            {
                "type": "card",
                "card": {"number": VISA, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
            }
        )
        cards.v1.payment_methods.attach(pm.id, {"customer": customer})
        methods = await admin.call("GET", f"/v1/accounts/{account}/payment-methods")
        assert any(m["is_default"] for m in methods["data"]), methods
        out.append(Account(account, key))
    return out


async def drained(db: asyncpg.Pool, within: float = DRAIN_S) -> None:
    """Until the ledger worker has booked every event and settled every recharge."""
    deadline = time.monotonic() + within
    while True:
        busy = await db.fetchval(
            "select (select count(*) from account_signals where processed_at is null)"
            " + (select count(*) from payments where status = 'pending')"
        )
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained within {within:.0f} s: {busy} signals or payments")
        await asyncio.sleep(0.1)  # polling the worker's progress; nothing to await


async def counts(db: asyncpg.Pool) -> dict[str, int]:
    row = await db.fetchrow(
        "select (select count(*) from account_signals where kind = 'balance_low') as crossings,"
        " (select count(*) from payments where purpose = 'recharge') as recharges,"
        " (select count(*) from payments where purpose = 'recharge'"
        "   and status = 'succeeded') as succeeded"
    )
    return dict(row)


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        r.raise_for_status()
        return await r.read()


async def histogram(metrics_url: str) -> dict[str, Any]:
    """The ledger worker's crossing-to-credit histogram: count, sum, cumulative buckets."""
    text = (await fetch(metrics_url)).decode()
    out: dict[str, Any] = {"count": 0, "sum": 0.0, "buckets": {}}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                out["buckets"][s.labels["le"]] = s.value
            elif s.name.endswith("_count"):
                out["count"] = int(s.value)
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
    return out


async def crossing_to_credit(db: asyncpg.Pool) -> dict[str, float]:
    """Seconds from crossed_at to settled_at of every succeeded recharge of a crossing."""
    rows = await db.fetch(
        "select id, extract(epoch from settled_at - crossed_at)::float8 as s from payments"
        " where purpose = 'recharge' and status = 'succeeded' and reason = 'crossing'"
        " order by created_at"
    )
    return {r["id"]: r["s"] for r in rows}


async def sanity(db: asyncpg.Pool, double_url: str) -> dict[str, Any]:
    wrong = await db.fetchval(
        "select count(*) from (select p.id from payments p left join ledger_entries e"
        " on e.account_id = p.account_id and e.idempotency_key = p.id and e.kind = 'recharge'"
        " where p.purpose = 'recharge' and p.status = 'succeeded'"
        " group by p.id having count(e.id) <> 1) w"
    )
    entries = await db.fetchval("select count(*) from ledger_entries where kind = 'recharge'")
    statuses = {
        r["status"]: r["n"]
        for r in await db.fetch(
            "select status, count(*) as n from payments where purpose = 'recharge' group by 1"
        )
    }
    charges = len(orjson.loads(await fetch(double_url + "/_double/charges")))
    succeeded = statuses.get("succeeded", 0)
    return {
        "recharge_statuses": statuses,
        "succeeded_without_exactly_one_entry": wrong,
        "recharge_ledger_entries": entries,
        "double_charges": charges,
        "ok": wrong == 0 and entries == succeeded and charges == succeeded and succeeded > 0,
    }


def start_double(folder: Path) -> servers.Server:
    port = local_servers.free_port()
    log_path = folder / "stripe-double.log"
    argv = [sys.executable, "-m", "meter.stripe_double", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    server = servers.Server("stripe-double", f"http://127.0.0.1:{port}", proc, log_path)
    servers.wait_http(server, "/_double/ready")
    return server


def start_ledger(folder: Path, env: dict[str, str]) -> servers.Server:
    port = local_servers.free_port()
    log_path = folder / "ledger.log"
    env = {**env, "METER_LEDGER_HOST": "127.0.0.1", "METER_LEDGER_PORT": str(port)}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meter", "ledger"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    server = servers.Server("ledger", f"http://127.0.0.1:{port}", proc, log_path)
    servers.wait_http(server, "/readyz")
    return server


def wait_quiet(threshold: float, budget_s: float = 10.0) -> float:
    """Before a phase, until the machine is idle (within ``budget_s``): its busy cores."""
    deadline = time.monotonic() + budget_s
    busy = procstat.machine_busy_cores(0.5)
    while busy > threshold and time.monotonic() < deadline:
        busy = procstat.machine_busy_cores(0.5)
    return busy


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.started: list[servers.Server] = []
        self.phases: list[dict[str, Any]] = []
        self.settled: dict[str, float] = {}  # payment id -> crossing to credit (s)

    async def run(self) -> dict[str, Any]:
        a, folder = self.args, self.folder
        redis = local_servers.start_redis(folder / "redis")
        pg = local_servers.start_postgres(folder / "pg")
        db: asyncpg.Pool | None = None
        admin: Admin | None = None
        try:
            await migrate(pg.url())
            db = await asyncpg.create_pool(pg.url(), min_size=1, max_size=2)
            double = start_double(folder)
            self.started.append(double)
            upstream = servers.start_upstream(folder)
            self.started.append(upstream)
            settings = Settings.from_env(
                {},
                redis_url=redis.url,
                database_url=pg.url(),
                upstream_url=upstream.url,
                admin_token=Secret(TOKEN),
                stripe_secret_key=Secret(DOUBLE_KEY),
                stripe_publishable_key=DOUBLE_PUBLISHABLE,
                stripe_api_base=double.url,
                stripe_webhook_secret=Secret("whsec_x"),
                credit_purchase_min=PURCHASE_MIN,
                reconcile_interval=0.0,
                log_level="warning",
            )
            env = child_environment(settings)
            admin_server = servers.start_admin(folder, env, "admin")
            self.started.append(admin_server)
            ledger = start_ledger(folder, env)
            self.started.append(ledger)
            gateway = servers.start_gateway(folder, env, 1, "gateway")
            self.started.append(gateway)
            admin = Admin(admin_server.url)
            http = stripe.RequestsClient()  # closed below: no socket left to the collector
            try:
                cards = stripe.StripeClient(
                    DOUBLE_KEY, base_addresses={"api": double.url}, http_client=http
                )
                accounts = await provision(admin, db, cards, a.accounts)
            finally:
                http.close()
            log(f"recharge_bench: {len(accounts)} accounts with a card")
            keys = keyspace.write_keys_file(folder / "keys.txt", [x.key for x in accounts])
            load = wrk.Load(keys)
            probe = measure.Probe(
                {
                    "gateway": gateway.pid,
                    "ledger": ledger.pid,
                    "postgres": pg.proc.pid,
                    "redis": redis.proc.pid,
                    "stripe_double": double.pid,
                    "admin": admin_server.pid,
                    "upstream": upstream.pid,
                }
            )
            url = gateway.url + PATH

            def measured(seconds: float) -> dict[str, Any]:
                return measure.run_once(url, a.connections, seconds, load, probe, None)

            warm = await asyncio.to_thread(measured, a.warmup)
            per_account = warm["ok_rps"] / len(accounts) * PRICE  # micros a second
            amount = cents_up(per_account * a.period)
            lead = max(CENT, cents_up(per_account * LEAD_S))
            log(
                f"warm-up: {warm['ok_rps']:,.0f} calls/s, {per_account / 1e6:.4f} $/s an"
                f" account: recharges of {amount} micros, every ~{amount / per_account:.1f} s"
            )
            await drained(db)
            plan = Plan(accounts, amount, lead, cents_up(3 * per_account * a.seconds) + lead)
            retries, run = a.noise_retries, 0
            while sum(p["kept"] for p in self.phases) < 2 * a.pairs:
                pair = [
                    await self.phase(admin, db, plan, run, on, measured) for on in (True, False)
                ]
                run += 1
                noisy = any(p["foreign_cores"] > a.noise_threshold for p in pair)
                if noisy and retries > 0:
                    retries -= 1
                    log("  other programs used the CPU: the pair again")
                    continue
                for p in pair:
                    p["kept"] = True
            latencies = [s for p in self.phases if p["kept"] for s in p["latencies_s"]]
            checks = await sanity(db, double.url)
            hist = await histogram(ledger.url + "/metrics")
        finally:
            if admin is not None:
                await admin.close()
            if db is not None:
                await db.close()
            for server in reversed(self.started):
                server.stop()
            redis.stop()
            pg.stop()
        return recharge_report.result(
            args=vars(a) | {"results_dir": None},
            setup={
                "accounts": len(accounts),
                "price_micros": PRICE,
                "opening_micros": OPENING,
                "recharge_amount_micros": amount,
                "threshold_lead_micros": lead,
                "credit_purchase_min_micros": PURCHASE_MIN,
                "ledger_max_wait_s": settings.ledger_max_wait,
                "payments_sweep_interval_s": settings.payments_sweep_interval,
                "warmup": warm,
            },
            phases=self.phases,
            latencies=latencies,
            hist=hist,
            checks=checks,
            where={
                "machine": provenance.machine(),
                "versions": provenance.versions(),
                "git": provenance.git(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            },
        )

    async def phase(
        self,
        admin: Admin,
        db: asyncpg.Pool,
        plan: Plan,
        run: int,
        on: bool,
        measured: Callable[[float], dict[str, Any]],
    ) -> dict[str, Any]:
        """One phase: the settings, the traffic, the drain; what it did."""
        a = self.args
        for x in plan.accounts:
            threshold = cents_down(await admin.balance(x.id) - plan.lead)
            await admin.recharge(x.id, on, threshold, plan.amount)
            if not on:
                await admin.grant(x.id, plan.cover, f"off-{run}")
        # Counted from when the phase's settings are all in effect: what the last
        # phase's tail (or the switch itself) started is not this phase's.
        await drained(db)
        before = await counts(db)
        quiet = wait_quiet(a.noise_threshold, a.quiet_wait)
        sample = await asyncio.to_thread(measured, a.seconds)
        await drained(db)
        after = await counts(db)
        sample.update(
            pair=run,
            auto_recharge=on,
            kept=False,
            busy_before_cores=quiet,
            **{k: after[k] - before[k] for k in after},
        )
        # how often each account crossed: accounts x seconds / crossings
        crossed = sample["crossings"]
        sample["period_s"] = len(plan.accounts) * a.seconds / crossed if crossed else None
        seen = self.settled
        self.settled = await crossing_to_credit(db)
        sample["latencies_s"] = [s for i, s in self.settled.items() if i not in seen]
        self.phases.append(sample)
        log(
            f"pair {run + 1} {'on ' if on else 'off'}: "
            f"{sample['cpu_us_per_call']['gateway']:.1f} us/call,"
            f" {sample['ok_rps']:,.0f} calls/s, {sample['crossings']} crossings,"
            f" {sample['succeeded']} recharges, {sample['non_2xx']} refused,"
            f" {sample['foreign_cores']:.2f} cores elsewhere"
        )
        return sample


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.recharge_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--accounts", type=int, default=8)
    p.add_argument("--pairs", type=int, default=4, help="on/off pairs (A B A B ...)")
    p.add_argument("--seconds", type=float, default=10.0, help="of traffic a phase")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic first")
    p.add_argument("--period", type=float, default=2.0, help="seconds between crossings")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--noise-threshold", type=float, default=0.35, metavar="CORES")
    p.add_argument(
        "--quiet-wait", type=float, default=30.0, help="seconds a phase waits for a quiet machine"
    )
    p.add_argument(
        "--noise-retries", type=int, default=3, help="pairs run again when others used the CPU"
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if program_paths.find_wrk() is None:
        raise SystemExit("recharge_bench: wrk is not installed (make bench installs it)")
    open_files.raise_limit(65536)
    folder = Path(tempfile.mkdtemp(prefix="recharge-bench-"))
    folder.chmod(0o755)  # Postgres runs as postgres when we are root
    try:
        result = asyncio.run(Bench(args, folder).run())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = recharge_report.markdown(result)
    print(text)
    write_latest(args.results_dir, "recharge", result, text)
    for problem in result["problems"]:
        log(f"recharge_bench: {problem}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    servers.run_command(main)
