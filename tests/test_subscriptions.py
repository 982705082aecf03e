"""Plans and subscriptions: what a start, a change and a cancel cost (pure, against
plain arithmetic), and, through the Stripe double and real usage, the period's invoice
billing the next period's fee in advance, included credits granted once per period, and
an invoice payment giving the balance back its overage only. Money to the micro."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_fixtures import running_worker
from notifications_support import spend
from payments_support import ACTOR, USD, Paying
from test_invoice_charges import at, invoice
from test_invoices import DEC, booked, closer, overage_account

from admin.errors import Conflict, InvalidInput
from billing import charges, plans, subscriptions
from billing.plans import NEXT_PERIOD, NOW, Plan
from billing.subscriptions import NewPlan, SubscriptionChange

CENT = 10_000
JAN = DEC.next()
DAY = timedelta(days=1)


def plan(fee: int, included: int = 0, name: str = "P") -> Plan:
    return Plan("plan_x", name, "", fee, included, None, None, True)


# -- pure ---------------------------------------------------------------------------------


def test_a_start_costs_the_rest_of_the_period_by_the_second() -> None:
    pro = plan(31 * USD, 62 * USD)
    assert plans.start(pro, DEC, DEC.start_at()) == plans.Start(31 * USD, 62 * USD)
    assert plans.start(pro, DEC, DEC.start_at() + 30 * DAY) == plans.Start(USD, 2 * USD)
    assert plans.start(pro, DEC, DEC.end_at()) == plans.Start(0, 0)
    # Half a cent rounds up, less rounds down: a card is charged cents.
    odd = plan(10 * CENT)
    third = DEC.start_at() + timedelta(seconds=31 * 86_400 * 2 // 3)
    assert plans.start(odd, DEC, third).charge == 3 * CENT  # 3.33 cents


@settings(deadline=None)
@given(
    fees=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(
        lambda t: (min(t) * CENT, max(t) * CENT)
    ),
    first=st.integers(0, 31 * 86_400),
    then=st.integers(0, 31 * 86_400),
)
def test_an_upgrade_at_once_bills_each_plan_for_its_own_time_to_a_cent(
    fees: tuple[int, int], first: int, then: int
) -> None:
    first, then = min(first, then), max(first, then)
    old, new = plan(fees[0]), plan(fees[1])
    t0, t1 = DEC.start_at() + timedelta(seconds=first), DEC.start_at() + timedelta(seconds=then)
    total = plans.start(old, DEC, t0).charge + plans.change_now(old, new, DEC, t1).charge
    period = 31 * 86_400
    exact = (
        old.monthly_fee * (period - first) + (new.monthly_fee - old.monthly_fee) * (period - then)
    ) / period
    assert abs(total - exact) <= 1.5 * CENT + 3  # three roundings to the cent, three floors
    assert plans.change_now(old, new, DEC, t1).charge >= 0


def test_when_a_change_takes_effect() -> None:
    basic, pro = plan(10 * USD, name="Basic"), plan(30 * USD, name="Pro")
    assert plans.effective(basic, pro, None) == NOW
    assert plans.effective(pro, basic, None) == NEXT_PERIOD
    assert plans.effective(basic, pro, NEXT_PERIOD) == NEXT_PERIOD
    with pytest.raises(ValueError, match="costs less"):
        plans.effective(pro, basic, NOW)


def test_a_fee_names_the_days_it_covers() -> None:
    pro = plan(20 * USD, name="Pro")
    assert plans.fee_description(pro, JAN) == "Pro plan, Jan 1 \N{EN DASH} Jan 31, 2027"
    mid = DEC.start_at() + 15 * DAY
    assert plans.proration_description(pro, DEC, mid, None) == (
        "Pro plan, Dec 16 \N{EN DASH} Dec 31, 2026 (prorated)"
    )


# -- with Postgres, Redis and the Stripe double -------------------------------------------


async def make_plan(paying: Paying, name: str, fee: int, included: int = 0, **limits: int) -> Plan:
    return await paying.services.subscriptions.create_plan(
        ACTOR,
        NewPlan(name, "", fee, included, limits.get("daily_budget"), limits.get("overage_line")),
    )


async def basic_and_pro(paying: Paying) -> tuple[str, Plan, Plan]:
    """An account with a card, and two plans: Basic ($5, $2 included), Pro ($20, $10)."""
    account, _ = await overage_account(paying)
    await paying.card(account)
    basic = await make_plan(paying, "Basic", 5 * USD, 2 * USD)
    return account, basic, await make_plan(paying, "Pro", 20 * USD, 10 * USD)


async def charges_of(paying: Paying, account: str) -> list[dict[str, object]]:
    rows = await paying.pool.fetch(
        "select * from subscription_charges where account_id = $1 order by id", account
    )
    return [dict(r) for r in rows]


async def included(paying: Paying, account: str) -> list[dict[str, object]]:
    rows = await paying.pool.fetch(
        "select * from credit_grants where account_id = $1 and kind = 'included' order by id",
        account,
    )
    return [dict(r) for r in rows]


def freeze(paying: Paying, moment: datetime) -> None:
    """Every service's clock at ``moment``; the subscriptions' stands still there."""
    at(paying, moment)
    paying.services.subscriptions.clock = moment.timestamp


def share(amount: int, moment: datetime) -> int:
    """``amount`` for the whole seconds left of December at ``moment``, in micros."""
    left = int((DEC.end_at() - moment).total_seconds())
    return amount * left // (31 * 86_400)


def in_cents(micros: int) -> int:
    return (micros + CENT // 2) // CENT * CENT


async def test_a_paid_plan_needs_a_card_and_a_start_is_prorated(paying: Paying) -> None:
    account, _ = await overage_account(paying)
    pro = await make_plan(
        paying, "Pro", 20 * USD, 10 * USD, overage_line=80 * USD, daily_budget=30 * USD
    )
    subs = paying.services.subscriptions
    mid = datetime(2026, 12, 16, tzinfo=UTC)
    freeze(paying, mid)
    with pytest.raises(Conflict, match="add a card"):
        await subs.put(ACTOR, account, SubscriptionChange(pro.id))
    assert await subs.subscription(account) is None and await charges_of(paying, account) == []
    await paying.card(account)
    before = await paying.book_balance(account)
    sub, made = await subs.put(ACTOR, account, SubscriptionChange(pro.id))
    assert made and sub.plan.id == pro.id and sub.period == DEC and sub.status == "active"
    assert sub.started_at == mid  # the 16th: 16 of 31 days left
    [charge] = await charges_of(paying, account)
    assert charge["kind"] == "proration" and charge["billed_period"] == DEC.start
    assert charge["amount"] == in_cents(share(20 * USD, sub.started_at))
    assert abs(charge["amount"] - 20 * USD * 16 / 31) <= CENT
    [grant] = await included(paying, account)
    assert grant["amount"] == share(10 * USD, sub.started_at)
    assert grant["expires_at"] == DEC.end_at()
    assert await paying.book_balance(account) == before + grant["amount"]
    assert await paying.live_balance(account) == before + grant["amount"]  # the gateway's too
    limits = await paying.services.provisioning.account(account)
    assert (limits.overage_line, limits.daily_hard_limit) == (80 * USD, 30 * USD)
    budget = await paying.services.spend.view(account)
    assert budget.enabled and budget.daily_budget == 30 * USD
    # Putting the same plan again changes nothing that costs money.
    again, made = await subs.put(ACTOR, account, SubscriptionChange(pro.id))
    assert not made and again.plan.id == pro.id
    assert len(await charges_of(paying, account)) == 1 and len(await included(paying, account)) == 1


async def test_the_close_bills_usage_and_the_next_fee_and_payment_restores_only_overage(
    paying: Paying,
) -> None:
    account, shard = await overage_account(paying)  # $10 of purchased credits
    await paying.card(account)
    pro = await make_plan(paying, "Pro", 20 * USD, 10 * USD)
    mid = datetime(2026, 12, 16, tzinfo=UTC)
    freeze(paying, mid)
    sub, _ = await paying.services.subscriptions.put(ACTOR, account, SubscriptionChange(pro.id))
    [dec_grant] = await included(paying, account)
    async with running_worker(paying.settings):
        await spend(paying.live, shard, account, 25 * USD, DEC.end_day - 1)
        await booked(paying)
    after_end = JAN.start_at() + timedelta(minutes=2)
    at(paying, after_end)
    c = closer(paying, after_end)
    assert await c.close_period(DEC) == 1
    assert await c.close_period(DEC) == 0  # again: nothing left to close
    inv_id = await paying.pool.fetchval("select id from invoices where account_id = $1", account)
    lines = await paying.pool.fetch(
        "select * from invoice_lines where invoice_id = $1 order by position", inv_id
    )
    kinds = [(r["kind"], r["description"]) for r in lines]
    assert kinds[0][0] == "usage"
    assert kinds[1] == ("fee", "Pro plan, Dec 16 \N{EN DASH} Dec 31, 2026 (prorated)")
    assert kinds[2] == ("fee", "Pro plan, Jan 1 \N{EN DASH} Jan 31, 2027")
    assert kinds[3][0] == "credits_applied"
    prorated_fee = in_cents(share(20 * USD, sub.started_at))
    owed = 25 * USD - 10 * USD - int(dec_grant["amount"])  # usage beyond both grants
    overage = owed - owed % CENT
    row = await invoice(paying, inv_id)
    assert row["fee_amount"] == prorated_fee + 20 * USD
    assert row["amount_due"] == overage + prorated_fee + 20 * USD
    assert row["credits_applied"] == 25 * USD - overage
    assert sum(r["amount"] for r in lines) == row["amount_due"]
    assert all(ch["invoice_id"] == inv_id for ch in await charges_of(paying, account))
    # January's credits were granted at its start, once, and expire at its end.
    jan_grant = (await included(paying, account))[1]
    assert jan_grant["amount"] == 10 * USD and jan_grant["expires_at"] == JAN.end_at()

    await c.finalize_due()
    balance = await paying.book_balance(account)
    assert await charges.charge_due(paying.ctx) == 1
    paid = await invoice(paying, inv_id)
    assert paid["status"] == "paid" and paid["amount_paid"] == paid["amount_due"]
    assert [ch["amount"] for ch in paying.double.charges()] == [paid["amount_due"] // CENT]
    [entry] = await paying.credits(account, "invoice_payment")
    assert entry["amount"] == overage  # the fee was never owed by the balance
    assert await paying.book_balance(account) == balance + overage
    assert await paying.live_balance(account) == balance + overage


async def test_a_downgrade_waits_for_the_next_period_and_cancel_ends_at_its_end(
    paying: Paying,
) -> None:
    account, basic, pro = await basic_and_pro(paying)
    subs = paying.services.subscriptions
    freeze(paying, datetime(2026, 12, 10, tzinfo=UTC))
    await subs.put(ACTOR, account, SubscriptionChange(pro.id))
    with pytest.raises(Conflict, match="costs less"):
        await subs.put(ACTOR, account, SubscriptionChange(basic.id, effective=NOW))
    sub, _ = await subs.put(ACTOR, account, SubscriptionChange(basic.id))
    assert sub.plan.id == pro.id and sub.next_plan is not None and sub.next_plan.id == basic.id
    assert len(await charges_of(paying, account)) == 1  # the start only
    upcoming = await paying.services.invoices.upcoming(account)
    assert [f.amount for f in upcoming.fees][-1] == 5 * USD  # January's fee will be Basic's

    at(paying, JAN.start_at() + timedelta(seconds=1))
    assert await subscriptions.renew_due(paying.pool, paying.live, JAN.start_at(), 1) == 1
    sub = await subs.subscription(account)
    assert sub is not None and sub.plan.id == basic.id and sub.next_plan is None
    fee = (await charges_of(paying, account))[-1]
    assert (fee["kind"], fee["amount"], fee["billed_period"]) == ("fee", 5 * USD, DEC.start)
    assert (await included(paying, account))[-1]["amount"] == 2 * USD

    # Cancel at the period's end: January runs on; February brings no fee, no credits.
    await subs.put(ACTOR, account, SubscriptionChange(basic.id, cancel_at_period_end=True))
    count, grants = len(await charges_of(paying, account)), len(await included(paying, account))
    feb = JAN.next()
    await subscriptions.renew_due(paying.pool, paying.live, feb.start_at(), 1)
    sub = await subs.subscription(account)
    assert sub is not None and sub.status == "canceled" and sub.canceled_at == feb.start_at()
    assert len(await charges_of(paying, account)) == count
    assert len(await included(paying, account)) == grants


async def test_an_upgrade_at_once_bills_the_difference_and_grants_the_extra(
    paying: Paying,
) -> None:
    account, basic, pro = await basic_and_pro(paying)
    subs = paying.services.subscriptions
    freeze(paying, DEC.start_at())
    await subs.put(ACTOR, account, SubscriptionChange(basic.id))
    moved = datetime(2026, 12, 21, tzinfo=UTC)
    freeze(paying, moved)
    sub, _ = await subs.put(ACTOR, account, SubscriptionChange(pro.id))
    assert sub.plan.id == pro.id
    start, change = await charges_of(paying, account)
    assert start["amount"] == 5 * USD  # a full month from the 1st
    expected = in_cents(share(20 * USD, moved)) - in_cents(share(5 * USD, moved))
    assert change["kind"] == "proration" and change["amount"] == expected
    assert change["description"].startswith("Change from Basic to Pro, Dec 21")
    grants = await included(paying, account)
    assert [g["amount"] for g in grants] == [
        2 * USD,
        share(10 * USD, moved) - share(2 * USD, moved),
    ]


async def test_workers_renewing_at_once_record_one_fee_and_grant_once(paying: Paying) -> None:
    pro = await make_plan(paying, "Pro", 20 * USD, 10 * USD)
    accounts = []
    for n in range(6):
        account = await paying.account(f"A{n}")
        await paying.card(account)
        freeze(paying, DEC.start_at() + timedelta(hours=n))
        await paying.services.subscriptions.put(ACTOR, account, SubscriptionChange(pro.id))
        accounts.append(account)
    renewed = await asyncio.gather(
        *(
            subscriptions.renew_due(paying.pool, paying.live, JAN.start_at(), 1, limit=2)
            for _ in range(3)
        )
    )
    assert sum(renewed) == len(accounts)
    for account in accounts:
        fees = [ch for ch in await charges_of(paying, account) if ch["kind"] == "fee"]
        assert [(f["amount"], f["billed_period"]) for f in fees] == [(20 * USD, DEC.start)]
        jan = [g for g in await included(paying, account) if g["expires_at"] == JAN.end_at()]
        assert [g["amount"] for g in jan] == [10 * USD]
    assert await subscriptions.renew_due(paying.pool, paying.live, JAN.start_at(), 1) == 0


async def test_plans_refuse_fractions_of_a_cent_and_a_second_plan_of_the_same_name(
    paying: Paying,
) -> None:
    with pytest.raises(InvalidInput):
        await make_plan(paying, "Odd", 5 * USD + 1)
    await make_plan(paying, "Pro", 20 * USD)
    with pytest.raises(Conflict):
        await make_plan(paying, "Pro", 30 * USD)
    withdrawn = await make_plan(paying, "Old", 0)
    await paying.services.subscriptions.set_offered(ACTOR, withdrawn.id, False)
    account = await paying.account()
    with pytest.raises(Conflict, match="no longer offered"):
        await paying.services.subscriptions.put(ACTOR, account, SubscriptionChange(withdrawn.id))
    offered = await paying.services.subscriptions.plans(offered_only=True)
    assert [p.name for p in offered] == ["Pro"]
