"""The expiry sweep in real ledger worker processes: two of them, each SIGKILLed on
either side of the expiry's commit, still end each grant once with one entry of
exactly what was left, and Redis follows the book to the micro."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from grants_support import booked, books, consistent, grant, spend
from ledger_fixtures import wait_for
from payments_support import USD, Paying
from test_payments_faults import workers

ACCOUNTS = 12


async def died(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


def crash(point: str) -> dict[str, str]:
    return {"METER_LEDGER_CRASH_POINTS": point, "METER_LEDGER_CRASH_PROBABILITY": "1"}


async def test_two_workers_killed_around_the_expiry_commit_expire_each_grant_once(
    paying: Paying, tmp_path: Path
) -> None:
    rng = random.Random(27)
    log = tmp_path / "workers.log"
    expires = time.time() + 4.0
    accounts: dict[str, int] = {}  # account -> what its calls spent
    expiring: dict[str, list[int]] = {}
    for i in range(ACCOUNTS):
        account = await paying.account(name=f"acct {i}")
        await grant(paying, account, 2 * USD, kind="purchased")
        expiring[account] = [
            await grant(paying, account, 3 * USD, kind="included", expires_at=expires),
            await grant(paying, account, USD, expires_at=expires),
        ]
        accounts[account] = 0
        for _ in range(rng.randrange(0, 6)):
            price = rng.randrange(1, USD)
            await spend(paying, account, price)
            accounts[account] += price

    async def ended() -> int:
        return int(
            await paying.pool.fetchval(
                "select count(*) from credit_grants where ended_at is not null"
            )
        )

    # Both die inside the transaction of their first expiry: nothing is ended.
    with workers(paying.settings, log, 2, **crash("expiry_before_commit")) as procs:
        for p in procs:
            await wait_for(lambda p=p: died(p), 30, "a worker killed before its commit")
            assert p.returncode == -signal.SIGKILL
    assert await ended() == 0
    assert (
        await paying.pool.fetchval(
            "select count(*) from ledger_entries where kind = 'grant_expiry'"
        )
        == 0
    )

    # The first to commit dies before telling Redis; the other may end the rest (and
    # die the same way) or find them ended and tell Redis what the first could not.
    with workers(paying.settings, log, 2, **crash("expiry_after_commit")) as procs:

        async def one_died() -> bool:
            return any(p.poll() is not None for p in procs)

        await wait_for(one_died, 30, "a worker killed after its commit")
        await wait_for(lambda: _ended_all(paying), 30, "every grant ended")
    assert any(p.returncode == -signal.SIGKILL for p in procs)

    with workers(paying.settings, log, 2):
        await booked(paying)

        async def redis_follows() -> bool:
            for account in accounts:
                b = await books(paying, account)
                if b.book != b.redis:
                    return False
            return True

        await wait_for(redis_follows, 30, "Redis caught up with the expiries")

    per_grant = await paying.pool.fetch(
        "select g.id, g.expired_amount, count(e.id) as entries, coalesce(sum(e.amount), 0) as sum"
        " from credit_grants g left join ledger_entries e on e.kind = 'grant_expiry'"
        " and e.account_id = g.account_id and e.idempotency_key = 'grant_expiry:' || g.id"
        " where g.expires_at is not null group by g.id, g.expired_amount"
    )
    assert len(per_grant) == 2 * ACCOUNTS
    for row in per_grant:
        assert row["entries"] == (1 if row["expired_amount"] else 0)
        assert row["sum"] == -row["expired_amount"]
    for account, spent in accounts.items():
        b = await books(paying, account)
        consistent(b)
        # The calls drew on the expiring grants first (3 + 1 USD); the expiry took the rest.
        assert sum(b.ended[g] for g in expiring[account]) == max(0, 4 * USD - spent)
        assert b.book == 6 * USD - spent - max(0, 4 * USD - spent)


async def _ended_all(paying: Paying) -> bool:
    left = await paying.pool.fetchval(
        "select count(*) from credit_grants where ended_at is null and expires_at is not null"
    )
    return left == 0
