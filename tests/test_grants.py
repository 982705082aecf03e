"""Grants with a real ledger worker: usage draws on the grant that expires first, the
expiry sweep removes exactly what is left, and book == Redis == the live grants, to the
micro. The sweep runs in this process with the test's clock (the worker's own loop
has the same code; tests/test_grants_faults.py runs it in worker processes)."""

from __future__ import annotations

import time

import pytest
from grants_support import booked, books, consistent, grant, refund, spend
from ledger_fixtures import running_worker
from payments_support import ACTOR, USD, Paying

from admin import models, sync
from grants.expiry import Sweeper
from ledger.crash import CrashHook

HOUR = 3600.0


def sweeper(paying: Paying, **kwargs: object) -> Sweeper:
    return Sweeper(paying.pool, paying.live, paying.settings, paying.clock, **kwargs)  # type: ignore[arg-type]


async def test_usage_draws_the_grant_that_expires_first_and_refunds_go_back(
    paying: Paying,
) -> None:
    account = await paying.account()
    now = time.time()
    purchased = await grant(paying, account, 20 * USD, kind="purchased")
    promo = await grant(paying, account, 10 * USD, expires_at=now + HOUR)
    included = await grant(paying, account, 5 * USD, kind="included", expires_at=now + HOUR / 2)
    async with running_worker(paying.settings):
        await spend(paying, account, 7 * USD)
        await booked(paying)
        b = await books(paying, account)
        assert b.live == {included: 0, promo: 8 * USD, purchased: 20 * USD}
        consistent(b)

        call = await spend(paying, account, 2 * USD)
        await booked(paying)
        await refund(paying, call, 1_500_000)  # in a batch of its own: a net refund
        await booked(paying)
        b = await books(paying, account)
        assert b.live == {included: 0, promo: 7_500_000, purchased: 20 * USD}
        consistent(b)

        # One batch across two grants, then a refund of part of it: the newest draw
        # (the purchased grant's) is undone first.
        call = await spend(paying, account, 10 * USD)
        await booked(paying)
        assert (await books(paying, account)).live == {
            included: 0,
            promo: 0,
            purchased: 17_500_000,
        }
        await refund(paying, call, 3 * USD)
        await booked(paying)
        b = await books(paying, account)
        assert b.live == {included: 0, promo: 500_000, purchased: 20 * USD}
        consistent(b)
    assert b.book == 20_500_000


async def test_overage_is_covered_by_the_next_grant(paying: Paying) -> None:
    account = await paying.account()
    await paying.services.provisioning.set_limits(
        ACTOR,
        account,
        models.Limits(overage_line=5 * USD, daily_hard_limit=None, daily_notify_threshold=None),
        if_match=None,
    )
    first = await grant(paying, account, 2 * USD, kind="purchased")
    async with running_worker(paying.settings):
        await spend(paying, account, 5 * USD)
        await booked(paying)
        b = await books(paying, account)
        assert (b.book, b.live) == (-3 * USD, {first: 0})
        consistent(b)
        # A credit while the balance is below zero first pays the overage back.
        second = await grant(paying, account, 10 * USD, kind="purchased")
        b = await books(paying, account)
        assert (b.book, b.live) == (7 * USD, {first: 0, second: 7 * USD})
        consistent(b)
        # A call and its refund in the next batch: back to the grant it drew on.
        call = await spend(paying, account, USD)
        await booked(paying)
        await refund(paying, call, USD)
        await booked(paying)
        b = await books(paying, account)
        assert (b.book, b.live) == (7 * USD, {first: 0, second: 7 * USD})
        consistent(b)


async def test_an_expiry_removes_exactly_what_is_left_once_the_book_has_caught_up(
    paying: Paying,
) -> None:
    account = await paying.account()
    now = time.time()
    keep = await grant(paying, account, 3 * USD, kind="purchased")
    soon = await grant(paying, account, 5 * USD, expires_at=now + HOUR)
    spent = 1_234_567
    await spend(paying, account, spent)  # admitted before the expiry, not yet booked
    paying.clock.offset = 2 * HOUR
    sweep = sweeper(paying)
    # The call drew on the expiring grant: its expiry waits until the call is booked.
    assert (await sweep.sweep()).ended == 0
    assert (await books(paying, account)).live == {keep: 3 * USD, soon: 5 * USD}
    async with running_worker(paying.settings):
        await booked(paying)
    swept = await sweep.sweep()
    assert (swept.ended, swept.removed) == (1, 5 * USD - spent)
    b = await books(paying, account)
    assert b.live == {keep: 3 * USD}
    assert b.ended == {soon: 5 * USD - spent}
    assert b.expiries == [-(5 * USD - spent)]
    assert b.book == 3 * USD
    consistent(b)
    # Nothing is removed twice.
    assert (await sweep.sweep()).ended == 0
    assert (await books(paying, account)).expiries == [-(5 * USD - spent)]


async def test_a_spent_grant_expires_without_an_entry_and_usage_after_it_draws_the_next(
    paying: Paying,
) -> None:
    account = await paying.account()
    now = time.time()
    keep = await grant(paying, account, 3 * USD, kind="purchased")
    soon = await grant(paying, account, USD, kind="included", expires_at=now + HOUR)
    async with running_worker(paying.settings):
        await spend(paying, account, 2 * USD)
        await booked(paying)
        paying.clock.offset = 2 * HOUR
        assert (await sweeper(paying).sweep()).ended == 1
        await spend(paying, account, 500_000)
        await booked(paying)
    b = await books(paying, account)
    assert b.ended == {soon: 0} and b.expiries == []
    assert b.live == {keep: 1_500_000}
    consistent(b)


class Died(Exception):
    pass


def _die() -> None:
    raise Died


async def test_an_expiry_whose_redis_step_was_lost_is_applied_once_by_the_sync(
    paying: Paying,
) -> None:
    account = await paying.account()
    soon = await grant(paying, account, 4 * USD, expires_at=time.time() + HOUR)
    paying.clock.offset = 2 * HOUR
    hook = CrashHook(frozenset({"expiry_after_commit"}), 1.0, die=_die)
    with pytest.raises(Died):
        await sweeper(paying, crash=hook).sweep()
    b = await books(paying, account)
    assert (b.book, b.redis, b.ended) == (0, 4 * USD, {soon: 4 * USD})
    report = await sync.sync_once(paying.pool, paying.live)
    assert report.credits == 1
    consistent(await books(paying, account))
    # The sweep's own pass over unapplied expiries finds nothing left, and applies
    # nothing twice.
    await sweeper(paying).sweep()
    b = await books(paying, account)
    assert (b.book, b.redis, b.expiries) == (0, 0, [-4 * USD])


@pytest.mark.parametrize("point", ["expiry_before_commit", "expiry_after_commit"])
async def test_a_sweep_that_died_leaves_one_expiry_for_the_next(paying: Paying, point: str) -> None:
    account = await paying.account()
    soon = await grant(paying, account, 4 * USD, expires_at=time.time() + HOUR)
    keep = await grant(paying, account, USD, kind="purchased")
    paying.clock.offset = 2 * HOUR
    with pytest.raises(Died):
        await sweeper(paying, crash=CrashHook(frozenset({point}), 1.0, die=_die)).sweep()
    await sweeper(paying).sweep()
    b = await books(paying, account)
    assert (b.live, b.ended, b.expiries) == ({keep: USD}, {soon: 4 * USD}, [-4 * USD])
    consistent(b)
