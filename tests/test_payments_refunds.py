"""Refunds of a card payment by an operator: Stripe's refund and one debit, at most the
unspent balance unless forced, once per idempotency key."""

from __future__ import annotations

import pytest
from payments_support import ACTOR, USD, Paying

from admin.errors import Conflict
from meter.live_state import Call
from meter.money import utc_day
from payments.loop import sweep
from payments.refunds import RefundExceedsBalance, RefundExceedsPayment, refund
from payments.service import StripeUnavailable


async def bought(paying: Paying, amount: int = 20 * USD) -> tuple[str, str]:
    account = await paying.account()
    await paying.card(account)
    result = await paying.payments.purchase(ACTOR, account, amount=amount, idempotency_key="b")
    assert result.payment.status == "succeeded"
    return account, result.payment.id


async def test_a_partial_refund_debits_once_per_key(paying: Paying) -> None:
    account, payment = await bought(paying)
    r = await refund(
        paying.ctx, ACTOR, payment, amount=5 * USD, force=False, reason=None, idempotency_key="r1"
    )
    assert (r.status, r.amount) == ("succeeded", 5 * USD) and r.stripe_refund
    again = await refund(
        paying.ctx, ACTOR, payment, amount=5 * USD, force=False, reason=None, idempotency_key="r1"
    )
    assert again.id == r.id
    entries = await paying.credits(account, "payment_refund")
    assert [e["amount"] for e in entries] == [-5 * USD]
    assert entries[0]["description"] == f"Refund {r.stripe_refund} of {payment}"
    assert await paying.live_balance(account) == 15 * USD
    [charge] = paying.double.charges()
    assert charge["amount_refunded"] == 500
    p = await paying.payments.payment(account, payment)
    assert p.refunded == 5 * USD
    with pytest.raises(Conflict, match="different amount"):
        await refund(
            paying.ctx,
            ACTOR,
            payment,
            amount=6 * USD,
            force=False,
            reason=None,
            idempotency_key="r1",
        )


async def test_more_than_the_unspent_balance_needs_force(paying: Paying) -> None:
    account, payment = await bought(paying)
    acct = await paying.services.provisioning.account(account)
    spent = await paying.live.admit(
        Call(acct.shard, acct.id, "proj_x", "key_x", "chat", 18 * USD), utc_day(paying.clock())
    )
    assert spent.admitted
    with pytest.raises(RefundExceedsBalance) as caught:
        await refund(
            paying.ctx, ACTOR, payment, amount=None, force=False, reason=None, idempotency_key="x"
        )
    assert caught.value.body()["unspent"] == 2 * USD
    assert await paying.credits(account, "payment_refund") == []
    assert paying.double.charges()[0]["amount_refunded"] == 0
    forced = await refund(
        paying.ctx,
        ACTOR,
        payment,
        amount=None,
        force=True,
        reason="chargeback",
        idempotency_key="y",
    )
    assert (forced.status, forced.amount, forced.forced) == ("succeeded", 20 * USD, True)
    assert await paying.live_balance(account) == -18 * USD
    with pytest.raises(RefundExceedsPayment, match=r"\$0.00 of pay_\w+ is left to refund"):
        await refund(
            paying.ctx, ACTOR, payment, amount=USD, force=True, reason=None, idempotency_key="z"
        )


@pytest.mark.parametrize("acted", [True, False])
async def test_a_refund_whose_answer_was_lost_is_settled_by_the_sweep_once(
    paying: Paying, acted: bool
) -> None:
    account, payment = await bought(paying)
    paying.double.configure(idempotency=False)
    mode = "drop_after" if acted else "error_before"
    paying.double.configure(fail_next={"path_prefix": "/v1/refunds", "times": 1, "mode": mode})
    with pytest.raises(StripeUnavailable):
        await refund(
            paying.ctx,
            ACTOR,
            payment,
            amount=4 * USD,
            force=False,
            reason=None,
            idempotency_key="lost",
        )
    assert paying.double.charges()[0]["amount_refunded"] == (400 if acted else 0)
    assert await paying.credits(account, "payment_refund") == []
    paying.clock.offset = paying.settings.payment_lease + 1
    await sweep(paying.ctx, paying.recharges)
    assert paying.double.charges()[0]["amount_refunded"] == 400  # made once, either way
    assert [e["amount"] for e in await paying.credits(account, "payment_refund")] == [-4 * USD]
    assert await paying.live_balance(account) == 16 * USD
    await sweep(paying.ctx, paying.recharges)
    assert len(await paying.credits(account, "payment_refund")) == 1
