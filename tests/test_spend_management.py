"""Spend management: the daily budget the gateway enforces, and thresholds that fire once
a UTC day each, from usage the ledger worker books (real Redis, Postgres, worker)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_fixtures import running_worker, wait_for
from notifications_support import spend
from payments_support import ACTOR, USD, Paying

from admin import models
from admin.errors import InvalidInput, PreconditionFailed
from meter.money import utc_day
from notifications.spend import SpendChange
from notifications.thresholds import ABSOLUTE, PERCENT, Threshold, passed

EVENT = "usage.daily_threshold_passed"


def pct(v: int) -> Threshold:
    return Threshold(PERCENT, v)


def usd(v: float) -> Threshold:
    return Threshold(ABSOLUTE, int(v * USD))


def test_passed_takes_what_the_spend_reached_once_each_lowest_first() -> None:
    budget = 10 * USD
    ts = [pct(80), usd(2), pct(20), pct(50), usd(8)]
    got = passed(8 * USD, budget, ts, already=[2 * USD])
    # 20 % and $2 are the same $2, already passed; 80 % and $8 are one amount.
    assert [p.amount for p in got] == [5 * USD, 8 * USD]
    assert passed(8 * USD, None, [pct(50)], []) == []  # a share of no budget is nothing
    assert passed(USD - 1, budget, [pct(10)], []) == []


@given(
    spent=st.integers(0, 10**9),
    budget=st.none() | st.integers(1, 10**9),
    ts=st.lists(
        st.builds(Threshold, st.just(ABSOLUTE), st.integers(1, 10**9))
        | st.builds(Threshold, st.just(PERCENT), st.integers(1, 100)),
        max_size=8,
    ),
    already=st.lists(st.integers(0, 10**9), max_size=4),
)
def test_passed_agrees_with_a_plain_model(
    spent: int, budget: int | None, ts: list[Threshold], already: list[int]
) -> None:
    amounts = set()
    for t in ts:
        a = t.value if t.kind == ABSOLUTE else (None if budget is None else budget * t.value // 100)
        if a is not None and 0 < a <= spent and a not in already:
            amounts.add(a)
    assert [p.amount for p in passed(spent, budget, ts, already)] == sorted(amounts)


def change(enabled: bool, budget: int | None, *ts: Threshold) -> SpendChange:
    return SpendChange(enabled, budget, ts)


async def events(paying: Paying, account: str) -> list[dict[str, Any]]:
    rows = await paying.events(account, EVENT)
    return sorted((orjson.loads(r["data"]) for r in rows), key=lambda d: (d["day"], d["threshold"]))


async def test_the_budget_is_the_gateways_daily_limit_and_switching_off_keeps_it(
    paying: Paying,
) -> None:
    account = await paying.account(credit=50 * USD)
    spend_mgmt = paying.services.spend
    view = await spend_mgmt.view(account)
    assert (view.enabled, view.daily_budget, view.thresholds, view.etag) == (
        False,
        None,
        (),
        '"s0"',
    )

    view = await spend_mgmt.put(ACTOR, account, change(True, 10 * USD, pct(50)), if_match='"s0"')
    acct = await paying.services.provisioning.account(account)
    live = await paying.live.read_account(acct.shard, account)
    assert live is not None
    assert (acct.daily_hard_limit, live.daily_hard_limit) == (10 * USD, 10 * USD)
    assert [(t.kind, t.value, t.amount) for t in view.thresholds] == [(PERCENT, 50, 5 * USD)]

    view = await spend_mgmt.put(ACTOR, account, change(False, 10 * USD, pct(50)))
    acct = await paying.services.provisioning.account(account)
    live = await paying.live.read_account(acct.shard, account)
    assert live is not None
    assert (acct.daily_hard_limit, live.daily_hard_limit) == (None, None)
    assert (view.enabled, view.daily_budget, view.etag) == (False, 10 * USD, '"s2"')
    with pytest.raises(PreconditionFailed):
        await spend_mgmt.put(ACTOR, account, change(True, USD), if_match='"s1"')
    audit = await paying.pool.fetch(
        "select action from audit_log where account_id = $1 and object_type = 'spend_management'",
        account,
    )
    assert [a["action"] for a in audit] == ["spend_management.update"] * 2


@pytest.mark.parametrize(
    ("c", "field"),
    [
        (change(True, None, pct(50)), "notify_thresholds"),
        (change(True, USD, pct(0)), "notify_thresholds[0]"),
        (change(True, USD, pct(101)), "notify_thresholds[0]"),
        (change(True, 0), "daily_budget"),
        (change(True, USD, *(usd(i + 1) for i in range(11))), "notify_thresholds"),
    ],
)
async def test_bad_settings_are_refused_and_change_nothing(
    paying: Paying, c: SpendChange, field: str
) -> None:
    account = await paying.account()
    with pytest.raises(InvalidInput) as caught:
        await paying.services.spend.put(ACTOR, account, c)
    assert field in [f for f, _ in caught.value.errors]
    view = await paying.services.spend.view(account)
    assert (view.enabled, view.version, view.thresholds) == (False, 0, ())


async def test_each_threshold_fires_once_a_day_and_again_the_next(paying: Paying) -> None:
    account = await paying.account(credit=100 * USD)
    shard = (await paying.services.provisioning.account(account)).shard
    await paying.services.spend.put(
        ACTOR, account, change(True, 10 * USD, pct(20), pct(50), usd(2.5))
    )
    today = utc_day(paying.clock())
    async with running_worker(paying.settings):
        for _ in range(3):
            await spend(paying.live, shard, account, USD, today)

        async def fired(n: int) -> bool:
            return len(await events(paying, account)) == n

        await wait_for(lambda: fired(2), 20, "20 % and $2.50")
        for _ in range(3):  # $6: 50 % passes; 20 % and $2.50 stay passed
            await spend(paying.live, shard, account, USD, today)
        await wait_for(lambda: fired(3), 20, "50 %")

        # Saving the same thresholds fires nothing; a new one below today's spend fires
        # at once (in the request), one equal to a passed amount does not.
        await paying.services.spend.put(
            ACTOR, account, change(True, 10 * USD, pct(20), pct(50), usd(2.5))
        )
        assert await fired(3)
        view = await paying.services.spend.put(
            ACTOR, account, change(True, 10 * USD, pct(25), pct(30), pct(50))
        )
        assert await fired(4)
        assert [(t.value, t.passed_today) for t in view.thresholds] == [
            (25, True),
            (30, True),
            (50, True),
        ]
        assert (view.spent_today, view.spent_yesterday) == (6 * USD, 0)

        await spend(paying.live, shard, account, 3 * USD, today + 1)  # the next UTC day
        await wait_for(lambda: fired(6), 20, "25 % and 30 % the next day")
    got = await events(paying, account)
    assert [(e["day"], e["threshold"], e["threshold_kind"]) for e in got] == [
        (today, 2 * USD, PERCENT),
        (today, int(2.5 * USD), ABSOLUTE),
        (today, 3 * USD, PERCENT),
        (today, 5 * USD, PERCENT),
        (today + 1, int(2.5 * USD), PERCENT),
        (today + 1, 3 * USD, PERCENT),
    ]
    assert all(e["daily_budget"] == 10 * USD for e in got)
    assert [e["spent"] for e in got][:2] == [3 * USD, 3 * USD]


async def test_switched_off_only_the_operators_threshold_fires_once(paying: Paying) -> None:
    account = await paying.account(credit=100 * USD)
    acct = await paying.services.provisioning.account(account)
    await paying.services.spend.put(ACTOR, account, change(False, 10 * USD, usd(1)))
    await paying.services.provisioning.set_limits(
        ACTOR,
        account,
        models.Limits(overage_line=0, daily_hard_limit=None, daily_notify_threshold=2 * USD),
        if_match=None,
    )
    async with running_worker(paying.settings):
        for _ in range(4):
            await spend(paying.live, acct.shard, account, USD)

        async def booked_all() -> bool:
            booked = await paying.pool.fetchval(
                "select coalesce(sum(amount), 0) from usage_rollups where account_id = $1",
                account,
            )
            return bool(booked == 4 * USD)

        await wait_for(booked_all, 20, "the usage booked")
        # The admission script's signal of the same threshold raises nothing more.
        assert await paying.recharges.process_signals() >= 1
    got = await events(paying, account)
    assert [(e["threshold"], e["spent"]) for e in got] == [(2 * USD, got[0]["spent"])]
    assert 2 * USD <= got[0]["spent"] <= 4 * USD
