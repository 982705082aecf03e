"""The period close with real ledger worker processes: two workers, and a worker
SIGKILLed at each step of the close (after the lines, before the number, after the
number), give one invoice per account and period, numbers without gaps, and the
money of each to the micro."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from ledger_fixtures import running_worker, wait_for
from notifications_support import spend
from payments_support import ACTOR, USD, Paying
from test_payments_faults import wait_exit, workers

from admin import models
from billing import periods

NOV = periods.parse("2026-11")  # ended before these tests run (2026-12 onward)
ACCOUNTS = 4


async def old_accounts(paying: Paying) -> dict[str, int]:
    """Accounts that existed in November, each with $10 of credits and usage on its last
    day, booked by the ledger: account -> what it used."""
    made: dict[str, int] = {}
    for i in range(ACCOUNTS):
        account = await paying.account(f"Old {i}", credit=10 * USD)
        await paying.services.provisioning.set_limits(
            ACTOR,
            account,
            models.Limits(
                overage_line=50 * USD, daily_hard_limit=None, daily_notify_threshold=None
            ),
            if_match=None,
        )
        for table, column in (("accounts", "id"), ("ledger_entries", "account_id")):
            await paying.pool.execute(  # opened, and credited, in November
                f"update {table} set created_at = $2 where {column} = $1", account, NOV.start_at()
            )
        made[account] = (3 + 4 * i) * USD  # $3, $7, $11, $15: two draw overage
    async with running_worker(paying.settings):  # the applier only: no close runs here
        for account, used in made.items():
            shard = (await paying.services.provisioning.account(account)).shard
            await spend(paying.live, shard, account, used, NOV.end_day - 1)

        async def booked() -> bool:
            total = await paying.pool.fetchval(
                "select coalesce(sum(amount), 0) from usage_rollups where day = $1",
                NOV.end_day - 1,
            )
            return bool(total == sum(made.values()))

        await wait_for(booked, 20, "November's usage booked")
    return made


async def assert_one_invoice_each(paying: Paying, used: dict[str, int]) -> None:
    rows = await paying.pool.fetch(
        "select * from invoices where period_start = $1 order by number", NOV.start
    )
    assert sorted(r["account_id"] for r in rows) == sorted(used)
    assert [r["number"] for r in rows] == [f"INV-{n:06d}" for n in range(1, len(used) + 1)]
    for r in rows:
        want = used[r["account_id"]]
        assert r["usage_amount"] == want
        assert r["amount_due"] == max(0, want - 10 * USD)
        assert r["credits_applied"] == min(want, 10 * USD)
        assert r["status"] == ("open" if want > 10 * USD else "paid")
    entries = await paying.pool.fetchval(
        "select count(*) from ledger_entries where kind = 'credits_applied'"
    )
    assert entries == len(used)


def fast(paying: Paying) -> object:
    return paying.settings.replace(invoice_grace=0.0, payments_sweep_interval=0.1)


async def all_finalized(paying: Paying) -> bool:
    left = await paying.pool.fetchval(
        "select count(*) from invoices where period_start = $1 and status <> 'draft'", NOV.start
    )
    return bool(left == ACCOUNTS)


async def test_two_workers_close_a_period_once(paying: Paying, tmp_path: Path) -> None:
    used = await old_accounts(paying)
    with workers(fast(paying), tmp_path / "workers.log", n=2):  # type: ignore[arg-type]
        await wait_for(lambda: all_finalized(paying), 30, "the period closed and finalized")
    await assert_one_invoice_each(paying, used)


@pytest.mark.parametrize(
    "point", ["close_after_lines", "close_before_number", "close_after_number"]
)
async def test_a_worker_killed_at_each_step_of_a_close(
    paying: Paying, tmp_path: Path, point: str
) -> None:
    used = await old_accounts(paying)
    settings = fast(paying)
    log = tmp_path / "workers.log"
    crash = {"METER_LEDGER_CRASH_POINTS": point, "METER_LEDGER_CRASH_PROBABILITY": "1"}
    with workers(settings, log, **crash) as [doomed]:  # type: ignore[arg-type]
        assert await wait_exit(doomed, 30) == -signal.SIGKILL
    counter = await paying.pool.fetchval("select next from invoice_counter")
    assert counter == 1  # a number taken by a rolled-back finalization is not lost
    with workers(settings, log):  # type: ignore[arg-type]
        await wait_for(lambda: all_finalized(paying), 30, "the period closed and finalized")
    await assert_one_invoice_each(paying, used)


@pytest.mark.parametrize("point", ["payment_before_stripe", "payment_after_stripe"])
async def test_a_worker_killed_around_an_invoices_charge_charges_it_once(
    paying: Paying, tmp_path: Path, point: str
) -> None:
    used = await old_accounts(paying)
    for account in used:
        await paying.card(account)
    settings = paying.settings.replace(
        invoice_grace=0.0, payments_sweep_interval=0.1, payment_lease=1.0
    )
    log = tmp_path / "workers.log"
    crash = {"METER_LEDGER_CRASH_POINTS": point, "METER_LEDGER_CRASH_PROBABILITY": "1"}
    with workers(settings, log, **crash) as [doomed]:
        assert await wait_exit(doomed, 30) == -signal.SIGKILL
    owing = {a: u - 10 * USD for a, u in used.items() if u > 10 * USD}

    async def all_paid() -> bool:
        left = await paying.pool.fetchval(
            "select count(*) from invoices where period_start = $1 and status <> 'paid'", NOV.start
        )
        return bool(left == 0)

    with workers(settings, log):
        await wait_for(all_paid, 30, "every invoice paid")
    charged = sorted(c["amount"] * 10_000 for c in paying.double.charges())
    assert charged == sorted(owing.values())  # one charge per owing invoice
    for account, owed in owing.items():
        [entry] = await paying.credits(account, "invoice_payment")
        assert entry["amount"] == owed
        assert await paying.book_balance(account) == 10 * USD - used[account] + owed == 0
