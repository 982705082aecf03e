"""Billing periods and their invoices: periods and the money of a close (pure, and by
hypothesis), then closes of real usage booked by a real ledger worker, tied to the
rollups and the ledger to the micro; exactly once under concurrent closers; gapless
numbers; frozen buyers; the "Applied credit balance to invoice" entry."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_fixtures import caught_up, running_worker, wait_for
from notifications_support import spend
from payments_support import ACTOR, USD, Paying
from test_admin_support import call, start
from test_payments_faults import upstream_url

from admin import models
from billing import periods
from billing.estimates import estimate
from billing.invoices import Closer, Due, NotCaughtUp, PeriodOpen, credited_share
from billing.periods import Period
from gateway.testing import running_gateway

FIXTURES = (upstream_url,)

# -- periods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "anchor", "start", "end"),
    [
        (date(2026, 12, 31), 1, date(2026, 12, 1), date(2027, 1, 1)),
        (date(2027, 1, 1), 1, date(2027, 1, 1), date(2027, 2, 1)),
        (date(2027, 2, 28), 1, date(2027, 2, 1), date(2027, 3, 1)),
        (date(2027, 1, 14), 15, date(2026, 12, 15), date(2027, 1, 15)),
        (date(2027, 1, 15), 15, date(2027, 1, 15), date(2027, 2, 15)),
    ],
)
def test_a_day_belongs_to_one_period(day: date, anchor: int, start: date, end: date) -> None:
    assert periods.containing(day, anchor) == Period(start, end)


def test_the_last_millisecond_and_the_first_fall_either_side() -> None:
    end = datetime(2027, 1, 1, tzinfo=UTC)
    assert periods.at(end - timedelta(milliseconds=1)).label == "2026-12"
    assert periods.at(end).label == "2027-01"
    assert periods.last_closed(end).label == "2026-12"
    assert periods.parse("2026-12") == Period(date(2026, 12, 1), date(2027, 1, 1))
    for bad in ("2026-13", "26-12", "december"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            periods.parse(bad)


@given(
    usage=st.integers(0, 10**12),
    fee=st.integers(0, 10**5).map(lambda cents: cents * 10_000),
    balance=st.integers(-(10**12), 10**12),
    billed=st.integers(0, 10**12),
)
def test_due_and_credits_applied_add_up_to_what_was_used(
    usage: int, fee: int, balance: int, billed: int
) -> None:
    due = Due(usage, fee, balance, billed)
    assert due.amount_due + due.credits_applied == usage + fee + due.carried
    assert fee <= due.amount_due <= usage + fee + due.carried  # the fee never from credits
    assert 0 <= due.credits_applied <= usage
    owed = max(0, -balance - billed)  # what the balance owes and no invoice bills yet
    assert due.overage_due + due.carried <= owed  # never more
    assert owed - (due.overage_due + due.carried) < 2 * 10_000  # a fraction of a cent waits
    assert due.amount_due % 10_000 == 0 and due.carried % 10_000 == 0  # what a card can take
    if owed <= usage:
        assert due.carried == 0  # the period's own overage
    else:
        assert due.credits_applied == usage - due.overage_due < 10_000  # no credits left


@given(
    overage=st.integers(0, 10**6).map(lambda cents: cents * 10_000),
    fee=st.integers(0, 10**6).map(lambda cents: cents * 10_000),
    payments=st.lists(st.integers(1, 10**6).map(lambda cents: cents * 10_000), max_size=6),
)
def test_invoice_payments_give_the_balance_back_its_overage_and_never_the_fee(
    overage: int, fee: int, payments: list[int]
) -> None:
    paid, credited = 0, 0
    for amount in payments:
        share = credited_share(overage + fee, fee, paid, amount)
        assert 0 <= share <= amount
        paid, credited = paid + amount, credited + share
    assert credited == min(paid, overage)


# -- closes of real usage -----------------------------------------------------------------

DEC = periods.parse("2026-12")
LAST_DAY, FIRST_DAY = DEC.end_day - 1, DEC.end_day  # 2026-12-31, 2027-01-01


def closer(paying: Paying, at: datetime, **settings: object) -> Closer:
    s = paying.settings.replace(invoice_grace=0.0, **settings)
    return Closer(paying.pool, paying.live, s, clock=lambda: at.timestamp())


async def overage_account(paying: Paying, name: str = "Acme") -> tuple[str, int]:
    account = await paying.account(name, credit=10 * USD)
    await paying.services.provisioning.set_limits(
        ACTOR,
        account,
        models.Limits(overage_line=50 * USD, daily_hard_limit=None, daily_notify_threshold=None),
        if_match=None,
    )
    return account, (await paying.services.provisioning.account(account)).shard


async def booked(paying: Paying) -> None:
    async def done() -> bool:
        async with paying.pool.acquire() as conn:
            return await caught_up(conn, paying.live, paying.settings.shards)

    await wait_for(done, 20, "the usage booked")


async def test_an_invoice_ties_to_the_rollups_and_the_ledger_to_the_micro(
    paying: Paying,
) -> None:
    account, shard = await overage_account(paying)
    async with running_worker(paying.settings):
        for price in (7 * USD, 5 * USD):  # the period's last day: $12
            await spend(paying.live, shard, account, price, LAST_DAY)
        await spend(paying.live, shard, account, 3 * USD, FIRST_DAY)  # the next period's
        await booked(paying)
    after_end = DEC.end_at() + timedelta(minutes=2)
    c = closer(paying, after_end)
    assert await c.close_period(DEC) == 1
    [row] = await paying.pool.fetch("select * from invoices where account_id = $1", account)
    lines = await paying.pool.fetch(
        "select * from invoice_lines where invoice_id = $1 order by position", row["id"]
    )
    rollups = await paying.pool.fetchval(
        "select sum(amount) from usage_rollups where account_id = $1 and day >= $2 and day < $3",
        account,
        DEC.start_day,
        DEC.end_day,
    )
    used = await paying.pool.fetchval(
        "select -sum(amount) from ledger_entries where account_id = $1 and kind = 'usage'",
        account,
    )
    assert rollups == 12 * USD and used == 15 * USD  # the book holds both periods' usage
    assert sum(r["amount"] for r in lines if r["kind"] == "usage") == rollups
    assert [(r["route"], r["calls"]) for r in lines if r["kind"] == "usage"] == [("chat", 2)]
    # $10 of credits, $12 used: $2 overage at the end of December (January's $3 after).
    assert (row["balance_at_end"], row["amount_due"], row["credits_applied"]) == (
        -2 * USD,
        2 * USD,
        10 * USD,
    )
    assert row["usage_amount"] == row["amount_due"] + row["credits_applied"]
    assert [r["amount"] for r in lines if r["kind"] == "credits_applied"] == [-10 * USD]
    assert await paying.book_balance(account) == -5 * USD


async def test_a_close_is_once_whoever_runs_it_and_however_often(paying: Paying) -> None:
    accounts = [(await overage_account(paying, f"A{i}"))[0] for i in range(5)]
    c = closer(paying, DEC.end_at() + timedelta(minutes=2))
    got = await asyncio.gather(*(c.close_period(DEC) for _ in range(3)))
    assert sum(got) >= 5  # each closer counts what it wrote or found
    assert await c.close_period(DEC) == 0  # nothing left to close
    rows = await paying.pool.fetch(
        "select account_id from invoices where period_start = $1", DEC.start
    )
    assert sorted(r["account_id"] for r in rows) == sorted(accounts)
    closed = await paying.pool.fetchrow(
        "select * from billing_periods where period_start = $1", DEC.start
    )
    assert closed["invoices"] == 5


async def test_a_walk_passes_over_an_account_held_elsewhere_and_comes_back_for_it(
    paying: Paying,
) -> None:
    """Workers share the walk: an account whose row another transaction holds is left
    while the rest are closed, then closed once it is free, before the walk returns."""
    accounts = [(await overage_account(paying, f"W{i}"))[0] for i in range(4)]
    held = accounts[1]
    c = closer(paying, DEC.end_at() + timedelta(minutes=2))
    async with paying.pool.acquire() as other, other.transaction():
        await other.execute("select 1 from accounts where id = $1 for update", held)
        walk = asyncio.ensure_future(c.close_period(DEC))

        async def invoiced() -> set[str]:
            rows = await paying.pool.fetch(
                "select account_id from invoices where period_start = $1", DEC.start
            )
            return {r["account_id"] for r in rows}

        async def waiting_for_the_lock() -> bool:
            return bool(
                await paying.pool.fetchval(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                )
            )

        await wait_for(waiting_for_the_lock, 20, "the walk waiting for the held account")
        assert await invoiced() == set(accounts) - {held}  # the others, while it was held
        assert not walk.done()
    assert await walk == 4
    assert await invoiced() == set(accounts)
    closed = await paying.pool.fetchval(
        "select invoices from billing_periods where period_start = $1", DEC.start
    )
    assert closed == 4


async def test_one_finalizing_call_finalizes_every_draft_due(paying: Paying) -> None:
    """More drafts than one batch of the walk (200) and than the old cap of 100."""
    await paying.pool.execute(
        "insert into accounts (id, name, shard) select 'acct_bulk' || g, 'Bulk', 0"
        " from generate_series(1, 230) g"
    )
    c = closer(paying, DEC.end_at() + timedelta(minutes=2))
    assert await c.close_period(DEC) == 230
    assert await c.finalize_due() == 230
    numbers = await paying.pool.fetch("select number from invoices order by number")
    assert [r["number"] for r in numbers] == [f"INV-{n:06d}" for n in range(1, 231)]
    assert await c.finalize_due(limit=5) == 0


async def test_not_before_the_end_nor_before_the_ledger_has_the_usage(paying: Paying) -> None:
    account, shard = await overage_account(paying)
    with pytest.raises(PeriodOpen):
        await closer(paying, DEC.end_at() - timedelta(milliseconds=1)).close_period(DEC)
    await spend(paying.live, shard, account, USD, LAST_DAY)  # not booked: no worker runs
    with pytest.raises(NotCaughtUp):
        await closer(paying, DEC.end_at() + timedelta(minutes=2)).close_period(DEC)
    assert await paying.pool.fetchval("select count(*) from invoices") == 0


async def test_finalizing_numbers_without_gaps_freezes_the_buyer_and_shows_credits_applied(
    paying: Paying,
) -> None:
    heavy, shard = await overage_account(paying, "Heavy")
    idle, _ = await overage_account(paying, "Idle")
    await paying.services.profiles.put_profile(
        ACTOR, heavy, models.BillingProfileIn(legal_name="Heavy GmbH", country="DE"), if_match=None
    )
    async with running_worker(paying.settings):
        await spend(paying.live, shard, heavy, 4 * USD, LAST_DAY)
        await booked(paying)
    at = DEC.end_at() + timedelta(minutes=2)
    c = closer(paying, at, invoice_prefix="T-", seller_name="Meter Ltd")
    await c.close_period(DEC)
    assert await asyncio.gather(c.finalize_due(), c.finalize_due()) in ([2, 0], [0, 2], [1, 1])
    rows = {
        r["account_id"]: r
        for r in await paying.pool.fetch(
            "select * from invoices where period_start = $1", DEC.start
        )
    }
    assert sorted(r["number"] for r in rows.values()) == ["T-000001", "T-000002"]
    h, i = rows[heavy], rows[idle]
    # $4 used of $10 of credits: nothing due, so paid at once, for the record.
    assert (h["status"], h["amount_due"], h["credits_applied"]) == ("paid", 0, 4 * USD)
    assert i["status"] == "paid" and i["usage_amount"] == 0 and i["paid_at"] == at
    assert h["due_at"] == at + timedelta(days=14)
    assert orjson.loads(h["buyer"])["name"] == "Heavy GmbH"
    assert orjson.loads(h["seller"])["name"] == "Meter Ltd"
    # A later edit of the profile does not rewrite the invoice.
    await paying.services.profiles.put_profile(
        ACTOR, heavy, models.BillingProfileIn(legal_name="Renamed AG", country="DE"), if_match=None
    )
    again = await paying.pool.fetchval("select buyer from invoices where id = $1", h["id"])
    assert orjson.loads(again)["name"] == "Heavy GmbH"
    [entry] = await paying.credits(heavy, "credits_applied")
    assert entry["amount"] == 0 and entry["balance_after"] == 6 * USD
    assert (
        entry["description"] == f"Applied credit balance to invoice {h['number']}: $4.00 of $4.00"
    )
    [event] = await paying.events(heavy, "invoice.finalized")
    assert h["id"] in event["data"]
    assert await c.finalize_due() == 0  # finalized once


async def test_the_invoices_api_lists_reads_and_keeps_accounts_apart(
    aiohttp_client: Any, redis_url: str, database_url: str, paying: Paying
) -> None:
    client = await start(aiohttp_client, redis_url, database_url)
    mine = (await call(client, "POST", "/v1/accounts", {"name": "Mine"}, status=201))["id"]
    other = (await call(client, "POST", "/v1/accounts", {"name": "Other"}, status=201))["id"]
    at = DEC.end_at() + timedelta(minutes=2)
    await closer(paying, at).close_period(DEC)
    page = await call(client, "GET", f"/v1/accounts/{mine}/invoices", status=200)
    [inv] = page["data"]
    assert (inv["status"], inv["number"], inv["period_start"], inv["period_end"]) == (
        "draft",
        None,
        "2026-12-01",
        "2027-01-01",
    )
    assert (inv["usage"], inv["amount_due"], inv["lines"]) == (0, 0, [])
    assert await closer(paying, at).finalize_due() == 2
    got = await call(client, "GET", f"/v1/invoices/{inv['id']}", status=200)
    assert got["status"] == "paid" and got["number"].startswith("INV-")
    assert got["buyer"]["name"] == "Mine" and got["seller"]["name"] == "Meter"
    assert (await call(client, "GET", f"/v1/accounts/{mine}/invoices?status=open", status=200))[
        "data"
    ] == []
    problem = await call(client, "GET", f"/v1/accounts/{mine}/invoices?status=late", status=400)
    assert problem["errors"][0]["field"] == "status"
    # Another account's token sees this invoice as not found.
    token = await call(
        client, "POST", f"/v1/accounts/{other}/tokens", {"name": "o", "role": "owner"}, status=201
    )
    async with client.get(
        f"/v1/invoices/{inv['id']}", headers={"Authorization": f"Bearer {token['token']}"}
    ) as r:
        assert r.status == 404


async def test_calls_either_side_of_midnight_land_in_their_own_periods(
    paying: Paying, upstream_url: str
) -> None:
    """Through the real gateway, whose clock reads 23:59:59.999 on the period's last day,
    then 00:00:00.000 on the next period's first."""
    account, _ = await overage_account(paying)
    project = await paying.services.provisioning.create_project(
        ACTOR, account, models.NewProject(name="web")
    )
    key = (await paying.services.provisioning.create_api_key(ACTOR, project.id)).value.secret
    end = DEC.end_at().timestamp()
    moments = iter([end - 0.001, end])
    now = [end - 0.001]

    def clock() -> float:
        return now[0]

    settings = paying.settings.replace(upstream_url=upstream_url)
    async with running_worker(settings), running_gateway(settings, clock=clock) as (base, _):
        charged = []
        async with aiohttp.ClientSession() as http:
            for moment in moments:
                now[0] = moment
                async with http.post(
                    base + "/v1/chat/completions",
                    data=b"{}",
                    headers={"Authorization": f"Bearer {key}"},
                ) as r:
                    assert r.status == 200
                    charged.append(int(r.headers["X-Meter-Charged"]))
        await booked(paying)
    await closer(paying, DEC.end_at() + timedelta(minutes=2)).close_period(DEC)
    [inv] = await paying.pool.fetch("select * from invoices where account_id = $1", account)
    assert inv["usage_amount"] == charged[0]
    january = await paying.pool.fetchval(
        "select sum(calls) from usage_rollups where account_id = $1 and day = $2",
        account,
        DEC.end_day,
    )
    assert january == 1


def test_the_forecast_is_month_to_date_plus_the_recent_rate() -> None:
    start, end = DEC.start_day, DEC.end_day
    today = start + 10  # 2026-12-11
    by_day = {start + d: USD for d in range(10)} | {today: USD // 2}
    e = estimate(by_day, start, end, today)
    assert (e.month_to_date, e.daily_rate, e.days_left) == (10 * USD + USD // 2, USD, 20)
    assert e.forecast == 10 * USD + USD // 2 + USD // 2 + 20 * USD
    assert "last 7 complete UTC days" in e.method
    first = estimate({start: 3 * USD}, start, end, start)  # the period's first day
    assert (first.daily_rate, first.forecast) == (3 * USD, 3 * USD + 30 * 3 * USD)


async def test_the_upcoming_invoice_and_the_estimate_of_the_running_period(
    paying: Paying,
) -> None:
    account, shard = await overage_account(paying)
    today = int(paying.clock() // 86_400)
    async with running_worker(paying.settings):
        await spend(paying.live, shard, account, 12 * USD, today)
        await booked(paying)
    up = await paying.services.invoices.upcoming(account)
    assert up.period == periods.at(paying.clock())
    assert (up.due.usage, up.due.amount_due, up.due.credits_applied) == (
        12 * USD,
        2 * USD,
        10 * USD,
    )
    assert await paying.pool.fetchval("select count(*) from invoices") == 0  # nothing written
    _, e = await paying.services.invoices.estimated_spend(account)
    assert e.month_to_date == 12 * USD and e.forecast >= e.month_to_date
