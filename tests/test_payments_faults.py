"""Auto-recharge with real processes: a race of 2,000 calls and two ledger workers, and
a worker SIGKILLed on either side of the call to Stripe.

Charges are counted at the Stripe double. Afterwards every charge has exactly one
credit, every crossing at most one charge, and the book equals Redis to the micro;
with the double's idempotency switched off too, so none of it rests on Stripe's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ledger_fixtures import caught_up, wait_for
from payments_support import (
    ACTOR,
    USD,
    Paying,
)

from admin import models
from gateway.testing import running_gateway
from meter import echo_upstream
from meter.devstack import child_environment
from meter.live_state import Call
from meter.money import utc_day
from meter.settings import Settings
from payments.recharges import RechargeChanges

ROOT = Path(__file__).resolve().parents[1]
CENT = 10_000


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = child_environment(settings)
    env.update(METER_LEDGER_PORT="0", METER_LOG_LEVEL="warning", **extra)
    return env


@contextlib.contextmanager
def workers(settings: Settings, log: Path, n: int = 1, **extra: str) -> Iterator[list[Any]]:
    procs = []
    with open(log, "ab") as out:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ledger"],
                    cwd=ROOT,
                    env=worker_env(settings, **extra),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("the worker did not die at its injected point")
        await asyncio.sleep(0.02)
    return proc.returncode


def rule(amount: int) -> RechargeChanges:
    return RechargeChanges(
        enabled=True,
        threshold=10 * USD,
        amount=amount,
        target_balance=None,
        max_per_day=None,
        max_amount_per_day=None,
    )


async def assert_each_charge_credited_once(paying: Paying, account: str) -> list[Any]:
    charged = [c for c in paying.double.charges() if c.get("metadata", {}).get("purpose")]
    rows = await paying.pool.fetch(
        "select * from payments where account_id = $1 and purpose = 'recharge'", account
    )
    entries = await paying.credits(account, "recharge")
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    assert len(charged) == len(succeeded) == len(entries)
    assert sorted(c["payment_intent"] for c in charged) == sorted(
        r["stripe_payment_intent"] for r in succeeded
    )
    assert sum(e["amount"] for e in entries) == sum(c["amount"] for c in charged) * CENT
    assert len({r["crossing"] for r in rows}) == len(rows)
    return rows


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    server = await echo_upstream.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("idempotency", [True, False])
async def test_2000_calls_and_two_workers_make_one_charge_per_crossing(
    paying: Paying, upstream_url: str, tmp_path: Path, idempotency: bool
) -> None:
    paying.double.configure(idempotency=idempotency)
    settings = paying.settings.replace(upstream_url=upstream_url)
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    project = await paying.services.provisioning.create_project(
        ACTOR, account, models.NewProject(name="race")
    )
    key = (await paying.services.provisioning.create_api_key(ACTOR, project.id)).value.secret
    await paying.recharges.put(ACTOR, account, rule(5 * USD))
    with workers(settings, tmp_path / "workers.log", n=2):
        async with running_gateway(settings) as (base, _runtime):
            connector = aiohttp.TCPConnector(limit=400)
            async with aiohttp.ClientSession(connector=connector) as http:

                async def one() -> tuple[int, int]:
                    async with http.post(
                        base + "/v1/chat/completions?units=1000",
                        data=b"{}",
                        headers={"Authorization": f"Bearer {key}"},
                    ) as r:
                        await r.read()
                        return r.status, int(r.headers.get("X-Meter-Charged", "0"))

                results = await asyncio.gather(*(one() for _ in range(2000)))
        statuses = {s for s, _ in results}
        assert statuses <= {200, 402}, statuses
        spent = sum(c for s, c in results if s == 200)
        # Crossed at least once: $12 fell below the $10 threshold. (Each call reserves
        # $0.10 before it is settled at $0.01, so how many of the 2,000 are admitted
        # depends on how fast recharges land; on a loaded machine, under 500.)
        assert spent >= 2 * USD

        async def settled_all() -> bool:
            pending = await paying.pool.fetchval(
                "select count(*) from payments where status in ('pending', 'requires_action')"
            )
            signals = await paying.pool.fetchval(
                "select count(*) from account_signals where processed_at is null"
            )
            async with paying.pool.acquire() as conn:
                return pending == 0 and signals == 0 and await caught_up(conn, paying.live, 4)

        await wait_for(settled_all, 60, "every crossing settled")
    rows = await assert_each_charge_credited_once(paying, account)
    crossings = await paying.pool.fetchval(
        "select count(*) from account_signals where account_id = $1 and kind = 'balance_low'",
        account,
    )
    assert 1 <= len(rows) <= crossings
    recharged = sum(r["amount"] for r in rows if r["status"] == "succeeded")
    assert await paying.live_balance(account) == 12 * USD + recharged - spent
    assert await paying.book_balance(account) == 12 * USD + recharged - spent


async def cross(paying: Paying, account: str, price: int) -> None:
    acct = await paying.services.provisioning.account(account)
    admitted = await paying.live.admit(
        Call(acct.shard, acct.id, "proj_x", "key_x", "chat", price), utc_day(time.time())
    )
    assert admitted.admitted


@pytest.mark.parametrize("idempotency", [True, False])
@pytest.mark.parametrize("point", ["payment_before_stripe", "payment_after_stripe"])
async def test_a_worker_killed_around_the_stripe_call_charges_and_credits_once(
    paying: Paying, tmp_path: Path, point: str, idempotency: bool
) -> None:
    paying.double.configure(idempotency=idempotency)
    settings = paying.settings.replace(payment_lease=1.0, payments_sweep_interval=0.1)
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule(20 * USD))
    log = tmp_path / "worker.log"
    with workers(
        settings, log, METER_LEDGER_CRASH_POINTS=point, METER_LEDGER_CRASH_PROBABILITY="1"
    ) as [proc]:
        await cross(paying, account, 3 * USD)
        assert await wait_exit(proc, 30) == -signal.SIGKILL
    [row] = await paying.pool.fetch("select * from payments where account_id = $1", account)
    assert row["status"] == "pending"
    charged = len(paying.double.charges())
    assert charged == (1 if point == "payment_after_stripe" else 0)
    with workers(settings, log):

        async def done() -> bool:
            status = await paying.pool.fetchval(
                "select status from payments where id = $1", row["id"]
            )
            return status == "succeeded"

        await wait_for(done, 30, "the sweep settled the recharge")
        await wait_for(lambda: _applied(paying, account), 10, "the credit in Redis")
        await wait_for(lambda: _booked(paying, account), 10, "the usage in the book")
    await assert_each_charge_credited_once(paying, account)
    assert len(paying.double.charges()) == 1
    assert await paying.live_balance(account) == 29 * USD


async def _applied(paying: Paying, account: str) -> bool:
    return await paying.live_balance(account) == 29 * USD


async def _booked(paying: Paying, account: str) -> bool:
    return await paying.book_balance(account) == 29 * USD
