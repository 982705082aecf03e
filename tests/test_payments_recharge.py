"""Auto-recharge: one charge per fall below the threshold, caps, back-off and pause.

A real admission (admit.lua) takes the balance below the threshold, the real ledger
worker records the crossing, and the payments loop's steps (``process_signals``,
``sweep``) run here one at a time so each test says what happened in between.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ledger_fixtures import running_worker, wait_for
from payments_support import (
    ACTOR,
    DECLINED_WHEN_CHARGED,
    USD,
    Paying,
)

from meter import keys
from meter.live_state import Call
from meter.money import utc_day
from payments.loop import sweep
from payments.recharges import RechargeChanges
from payments.service import NoPaymentMethod, PaymentMethodInUse


def rule(**kw: Any) -> RechargeChanges:
    base: dict[str, Any] = {
        "enabled": True,
        "threshold": 10 * USD,
        "amount": 20 * USD,
        "target_balance": None,
        "max_per_day": None,
        "max_amount_per_day": None,
    }
    base.update(kw)
    return RechargeChanges(**base)


async def spend(paying: Paying, account_id: str, price: int) -> None:
    account = await paying.services.provisioning.account(account_id)
    call = Call(account.shard, account.id, "proj_test", "key_test", "chat", price)
    admitted = await paying.live.admit(call, utc_day(paying.clock()))
    assert admitted.admitted, admitted


async def crossings(paying: Paying) -> int:
    """Let the ledger worker record what was admitted; then process its signals."""

    async def recorded() -> bool:
        pending = await paying.pool.fetchval(
            "select count(*) from account_signals where processed_at is null"
        )
        return bool(pending)

    await wait_for(recorded, 10, "the crossing recorded by the ledger worker")
    return await paying.recharges.process_signals()


async def recharges(paying: Paying, account_id: str) -> list[Any]:
    return await paying.pool.fetch(
        "select * from payments where account_id = $1 and purpose = 'recharge' order by crossing",
        account_id,
    )


async def gateway_sees(paying: Paying, account_id: str) -> str | None:
    """The advisory recharge state the gateway's 402 explains itself with."""
    account = await paying.services.provisioning.account(account_id)
    raw = await paying.live.redis.hget(keys.account(account.shard, account_id), "rch")
    return None if raw is None else raw.decode()


async def test_one_crossing_one_charge_one_credit(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule())
    async with running_worker(paying.settings):
        await spend(paying, account, 3 * USD)
        assert await crossings(paying) == 1
    rows = await recharges(paying, account)
    assert [(r["status"], r["amount"], r["crossing"]) for r in rows] == [("succeeded", 20 * USD, 1)]
    entries = await paying.credits(account, "recharge")
    assert [e["amount"] for e in entries] == [20 * USD]
    assert entries[0]["description"].startswith("Auto recharge pi_")
    assert await paying.live_balance(account) == 29 * USD
    assert [c["amount"] for c in paying.double.charges()] == [2000]
    assert len(await paying.events(account, "recharge.succeeded")) == 1
    assert len(await paying.events(account, "balance.low")) == 1
    # Processing again, or a level check, finds nothing to do.
    assert await paying.recharges.process_signals() == 0
    assert await paying.recharges.level_check() == 0
    assert len(paying.double.charges()) == 1


async def test_a_target_balance_closes_the_whole_gap_in_one_charge(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule(amount=None, target_balance=50 * USD))
    async with running_worker(paying.settings):
        await spend(paying, account, 4 * USD + 5_000)
        await crossings(paying)
    assert [r["amount"] for r in await recharges(paying, account)] == [42 * USD + 10_000]
    assert await paying.live_balance(account) == 50 * USD + 5_000


async def test_concurrent_loops_make_one_charge_per_crossing(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule())
    async with running_worker(paying.settings):
        await spend(paying, account, 3 * USD)

        async def recorded() -> bool:
            return bool(await paying.pool.fetchval("select count(*) from account_signals"))

        await wait_for(recorded, 10, "the crossing")
        await asyncio.gather(
            *(paying.recharges.process_signals() for _ in range(4)),
            *(paying.recharges.level_check() for _ in range(4)),
        )
        await asyncio.gather(*(paying.recharges.process_signals() for _ in range(4)))
    assert len(paying.double.charges()) == 1
    assert len(await paying.credits(account, "recharge")) == 1


async def test_a_balance_still_low_after_a_recharge_is_recharged_again(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule(amount=5 * USD))
    async with running_worker(paying.settings):
        await spend(paying, account, 11 * USD)  # 1 left; +5 is still below 10
        await crossings(paying)
    assert await paying.live_balance(account) == 6 * USD
    assert await paying.recharges.level_check() == 1  # no new signal from the gateway
    await paying.recharges.process_signals()
    assert await paying.live_balance(account) == 11 * USD
    assert [r["crossing"] for r in await recharges(paying, account)] == [1, 2]
    assert await paying.recharges.level_check() == 0


async def test_a_cap_refusal_is_recorded_and_told_never_skipped(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule(amount=5 * USD, max_per_day=1))
    async with running_worker(paying.settings):
        await spend(paying, account, 11 * USD)
        await crossings(paying)
    assert await paying.recharges.level_check() == 1
    await paying.recharges.process_signals()
    rows = await recharges(paying, account)
    assert [(r["status"], r["failure_code"]) for r in rows] == [
        ("succeeded", None),
        ("refused", "max_per_day"),
    ]
    assert len(await paying.events(account, "recharge.refused_by_cap")) == 1
    assert await paying.recharges.level_check() == 0  # refused once, not every sweep
    assert len(paying.double.charges()) == 1


async def test_declines_back_off_then_pause_until_the_settings_change(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account, DECLINED_WHEN_CHARGED)
    await paying.recharges.put(ACTOR, account, rule())
    async with running_worker(paying.settings):
        await spend(paying, account, 3 * USD)
        await crossings(paying)
    view = await paying.recharges.view(account)
    assert view.state == "backing_off" and view.settings is not None
    assert view.settings.consecutive_failures == 1
    assert await gateway_sees(paying, account) == "d"
    assert await paying.recharges.level_check() == 0  # backing off: no retry yet
    for failures in (2, 3):
        paying.clock.offset += paying.settings.recharge_backoff * 2 ** (failures - 2) + 1
        assert await paying.recharges.level_check() == 1
        await paying.recharges.process_signals()
        view = await paying.recharges.view(account)
        assert view.settings is not None and view.settings.consecutive_failures == failures
    assert view.state == "paused" and "3 recharges failed" in (view.settings.pause_reason or "")
    assert len(await paying.events(account, "recharge.paused")) == 1
    assert await gateway_sees(paying, account) == "p"
    assert len(await paying.events(account, "recharge.failed")) == 3
    paying.clock.offset += 10 * paying.settings.recharge_backoff
    assert await paying.recharges.level_check() == 0  # paused stays paused
    assert await paying.credits(account, "recharge") == []
    await paying.card(account)  # a good card, made the default
    good = [m for m in await paying.payments.methods(account) if m.brand == "visa"]
    await paying.payments.set_default(ACTOR, account, good[-1].id)
    await paying.recharges.put(ACTOR, account, rule())  # a change ends the pause
    await paying.recharges.process_signals()
    assert [e["amount"] for e in await paying.credits(account, "recharge")] == [20 * USD]
    assert (await paying.recharges.view(account)).state == "on"
    assert await gateway_sees(paying, account) is None


async def test_settings_changed_while_a_recharge_is_in_flight(paying: Paying) -> None:
    account = await paying.account(credit=12 * USD)
    await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule())
    paying.double.configure(
        fail_next={"path_prefix": "/v1/payment_intents", "times": 1, "mode": "drop_after"}
    )
    async with running_worker(paying.settings):
        await spend(paying, account, 3 * USD)
        await crossings(paying)
    [flight] = await recharges(paying, account)
    assert flight["status"] == "pending"  # Stripe charged; we did not hear
    assert (await paying.recharges.view(account)).state == "in_flight"
    assert await gateway_sees(paying, account) == "i"
    await paying.recharges.put(ACTOR, account, rule(amount=40 * USD, threshold=15 * USD))
    assert await paying.recharges.level_check() == 0  # one in flight: no second
    paying.clock.offset = paying.settings.payment_lease + 1
    await sweep(paying.ctx, paying.recharges)
    rows = await recharges(paying, account)
    assert [(r["status"], r["amount"]) for r in rows] == [("succeeded", 20 * USD)]
    assert len(paying.double.charges()) == 1
    assert await paying.live_balance(account) == 29 * USD


async def test_auto_recharge_needs_a_card_and_keeps_its_default(paying: Paying) -> None:
    account = await paying.account()
    with pytest.raises(NoPaymentMethod):
        await paying.recharges.put(ACTOR, account, rule())
    pm = await paying.card(account)
    await paying.recharges.put(ACTOR, account, rule())
    with pytest.raises(PaymentMethodInUse, match="auto-recharge"):
        await paying.payments.delete_method(ACTOR, account, pm)
    await paying.recharges.put(ACTOR, account, rule(enabled=False))
    await paying.payments.delete_method(ACTOR, account, pm)
    assert await paying.payments.methods(account) == []
