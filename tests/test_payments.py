"""Buying credits through Stripe (the double): each charge once, each credit once.

Real Postgres, Redis and service layer; the real ``stripe`` library against the
Stripe double, which answers with Stripe's semantics (and can be told to ignore
idempotency keys, or to drop its answer after acting, the hazard exactly-once is for).
"""

from __future__ import annotations

import asyncio

import pytest
from payments_support import (
    ACTOR,
    DECLINED_WHEN_CHARGED,
    THREE_D_SECURE,
    USD,
    Paying,
)

from admin import models
from admin.errors import Conflict, InvalidInput, NotFound
from payments.loop import sweep
from payments.service import Context as PayContext
from payments.service import NoPaymentMethod, Payments, PaymentsNotConfigured


async def test_a_purchase_charges_once_and_credits_once(paying: Paying) -> None:
    account = await paying.account()
    pm = await paying.card(account)
    result = await paying.payments.purchase(
        ACTOR, account, amount=25 * USD, idempotency_key="buy-1"
    )
    p = result.payment
    assert (p.status, p.amount, p.payment_method_id, result.replayed) == (
        "succeeded",
        25 * USD,
        pm,
        False,
    )
    entries = await paying.credits(account, "purchase")
    assert [e["amount"] for e in entries] == [25 * USD]
    assert entries[0]["description"] == f"Card payment {p.stripe_payment_intent} (visa 4242)"
    assert await paying.live_balance(account) == 25 * USD
    assert await paying.book_balance(account) == 25 * USD
    assert [c["amount"] for c in paying.double.charges()] == [2500]
    assert len(await paying.events(account, "purchase.succeeded")) == 1
    assert len(await paying.events(account, "credits.added")) == 1

    again = await paying.payments.purchase(ACTOR, account, amount=25 * USD, idempotency_key="buy-1")
    assert again.replayed and again.payment.id == p.id
    assert len(paying.double.charges()) == 1
    assert len(await paying.credits(account, "purchase")) == 1
    with pytest.raises(Conflict, match="different amount"):
        await paying.payments.purchase(ACTOR, account, amount=30 * USD, idempotency_key="buy-1")


async def test_ten_concurrent_requests_with_one_key_charge_once(paying: Paying) -> None:
    account = await paying.account()
    await paying.card(account)
    results = await asyncio.gather(
        *(
            paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="same")
            for _ in range(10)
        )
    )
    assert len({r.payment.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert len(paying.double.charges()) == 1
    assert [e["amount"] for e in await paying.credits(account, "purchase")] == [5 * USD]
    assert await paying.live_balance(account) == 5 * USD


async def test_a_declined_card_credits_nothing_and_says_why(paying: Paying) -> None:
    account = await paying.account()
    await paying.card(account, DECLINED_WHEN_CHARGED)
    result = await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="d")
    p = result.payment
    assert p.status == "failed"
    assert p.failure_code and "declin" in (p.failure_message or "").lower()
    assert await paying.credits(account, "purchase") == []
    assert await paying.live_balance(account) == 0
    assert paying.double.charges() == []
    assert len(await paying.events(account, "purchase.failed")) == 1


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        (5 * USD - 10_000, "between"),
        (5_000 * USD + 10_000, "between"),
        (5 * USD + 1, "cents"),
    ],
)
async def test_bad_amounts_are_refused_before_anything_is_written(
    paying: Paying, amount: int, why: str
) -> None:
    account = await paying.account()
    await paying.card(account)
    with pytest.raises(InvalidInput) as caught:
        await paying.payments.purchase(ACTOR, account, amount=amount, idempotency_key="bad")
    assert why in str(caught.value.body())
    assert await paying.pool.fetchval("select count(*) from payments") == 0
    assert paying.double.charges() == []


async def test_another_accounts_card_is_refused(paying: Paying) -> None:
    mine, theirs = await paying.account("Mine"), await paying.account("Theirs")
    await paying.card(mine)
    their_card = await paying.card(theirs)
    with pytest.raises(InvalidInput, match="not a card of this account"):
        await paying.payments.purchase(
            ACTOR, mine, amount=5 * USD, idempotency_key="x", payment_method_id=their_card
        )
    with pytest.raises(NotFound):
        await paying.payments.set_default(ACTOR, mine, their_card)
    with pytest.raises(NotFound):
        await paying.payments.delete_method(ACTOR, mine, their_card)
    assert paying.double.charges() == []


async def test_no_card_is_a_clear_refusal(paying: Paying) -> None:
    account = await paying.account()
    with pytest.raises(NoPaymentMethod):
        await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="n")


async def test_without_a_stripe_key_payments_answer_not_configured(paying: Paying) -> None:
    ctx = paying.ctx
    bare = Payments(PayContext(ctx.pool, ctx.live, ctx.settings, None))
    account = await paying.account()
    with pytest.raises(PaymentsNotConfigured) as caught:
        await bare.purchase(ACTOR, account, amount=5 * USD, idempotency_key="k")
    assert caught.value.status == 503
    assert await bare.methods(account) == []


async def test_3d_secure_waits_for_the_buyer_then_credits_once(paying: Paying) -> None:
    account = await paying.account()
    await paying.card(account, THREE_D_SECURE)
    result = await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="3ds")
    p = result.payment
    assert p.status == "requires_action" and result.client_secret
    assert await paying.credits(account, "purchase") == []
    assert p.stripe_payment_intent is not None
    await paying.authenticate(p.stripe_payment_intent, result.client_secret)
    done = await paying.payments.refresh(account, p.id)
    assert done.payment.status == "succeeded"
    again = await paying.payments.refresh(account, p.id)
    assert again.payment.status == "succeeded"
    assert [e["amount"] for e in await paying.credits(account, "purchase")] == [5 * USD]
    assert len(paying.double.charges()) == 1


@pytest.mark.parametrize("idempotency", [True, False])
async def test_an_answer_lost_after_stripe_charged_is_settled_by_the_sweep_once(
    paying: Paying, idempotency: bool
) -> None:
    account = await paying.account()
    await paying.card(account)
    paying.double.configure(idempotency=idempotency)
    paying.double.configure(
        fail_next={"path_prefix": "/v1/payment_intents", "times": 1, "mode": "drop_after"}
    )
    result = await paying.payments.purchase(ACTOR, account, amount=7 * USD, idempotency_key="lost")
    assert result.payment.status == "pending"
    assert len(paying.double.charges()) == 1, "the double charged, then dropped its answer"
    paying.double.configure(fail_next=None)
    paying.clock.offset = paying.settings.payment_lease + 1
    assert await sweep(paying.ctx, paying.recharges) == 1
    p = await paying.payments.payment(account, result.payment.id)
    assert p.status == "succeeded"
    assert [e["amount"] for e in await paying.credits(account, "purchase")] == [7 * USD]
    assert await paying.live_balance(account) == 7 * USD
    assert len(paying.double.charges()) == 1  # asked by metadata, not charged again
    paying.clock.offset += paying.settings.payment_lease + 1
    await sweep(paying.ctx, paying.recharges)
    assert len(await paying.credits(account, "purchase")) == 1


async def test_a_purchase_that_never_reached_stripe_is_failed_not_charged(
    paying: Paying,
) -> None:
    account = await paying.account()
    await paying.card(account)
    paying.double.configure(
        fail_next={"path_prefix": "/v1/payment_intents", "times": 1, "mode": "error_before"}
    )
    result = await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="e")
    assert result.payment.status == "pending"
    paying.double.configure(fail_next=None)
    paying.clock.offset = paying.settings.payment_lease + 1
    await sweep(paying.ctx, paying.recharges)
    p = await paying.payments.payment(account, result.payment.id)
    assert (p.status, p.failure_code) == ("failed", "not_sent")
    assert paying.double.charges() == []
    assert await paying.credits(account, "purchase") == []


async def test_the_card_gate_follows_the_cards_on_file(paying: Paying) -> None:
    account = await paying.account()
    acct = await paying.services.provisioning.account(account)

    async def gated() -> bool:
        state = await paying.live.read_account(acct.shard, account)
        assert state is not None
        return state.payment_method_required

    await paying.services.provisioning.set_require_payment_method(ACTOR, account, True)
    assert await gated()
    pm = await paying.card(account)
    assert not await gated()
    await paying.payments.delete_method(ACTOR, account, pm)
    assert await gated()
    await paying.services.provisioning.set_require_payment_method(ACTOR, account, False)
    assert not await gated()


async def test_the_profile_and_verified_tax_ids_reach_the_stripe_customer(paying: Paying) -> None:
    account = await paying.account()
    customer = await paying.payments.customer(account)
    profiles = paying.services.profiles
    await profiles.put_profile(
        ACTOR,
        account,
        models.BillingProfileIn(
            legal_name="Acme GmbH",
            address_line1="Unter den Linden 1",
            city="Berlin",
            postal_code="10117",
            country="DE",
            invoice_email="invoices@acme.test",
        ),
        if_match=None,
    )
    tax = await profiles.add_tax_id(
        ACTOR, account, models.NewTaxId(type="eu_vat", country="DE", value="DE136695976")
    )
    client = paying.stripe_client()
    assert client.v1.customers.tax_ids.list(customer).data == []  # not verified yet
    await profiles.verify_tax_id(ACTOR, account, tax.id)
    seen = client.v1.customers.retrieve(customer)
    assert (seen.name, seen.email, seen.address.city) == (
        "Acme GmbH",
        "invoices@acme.test",
        "Berlin",
    )
    assert [(t.type, t.value) for t in client.v1.customers.tax_ids.list(customer).data] == [
        ("eu_vat", "DE136695976")
    ]
    # A second customer is never made, whoever asks.
    assert await paying.payments.customer(account) == customer
    assert await paying.pool.fetchval("select count(*) from payment_customers") == 1


async def test_a_customer_orphaned_by_a_crash_is_found_not_made_again(paying: Paying) -> None:
    account = await paying.account()
    # What a crash after Stripe's answer and before our commit leaves: a customer at
    # Stripe with our account id in its metadata, and our row without its id.
    await paying.pool.execute("insert into payment_customers (account_id) values ($1)", account)
    client = paying.stripe_client()
    orphan = client.v1.customers.create({"name": "Acme", "metadata": {"account_id": account}})
    paying.double.configure(idempotency=False)
    assert await paying.payments.customer(account) == orphan.id
    made = [r for r in paying.double.requests() if r["path"] == "/v1/customers"]
    assert [r["method"] for r in made] == ["POST"]  # only the orphan's own creation


async def test_a_purchase_left_waiting_for_3d_secure_is_canceled_in_time(paying: Paying) -> None:
    account = await paying.account()
    await paying.card(account, THREE_D_SECURE)
    result = await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="w")
    assert result.payment.status == "requires_action"
    paying.clock.offset = paying.settings.payment_lease + 1
    await sweep(paying.ctx, paying.recharges)  # the buyer may still come back
    assert (await paying.payments.payment(account, result.payment.id)).status == ("requires_action")
    paying.clock.offset = paying.settings.payment_action_timeout + 2 * paying.settings.payment_lease
    await sweep(paying.ctx, paying.recharges)
    p = await paying.payments.payment(account, result.payment.id)
    assert p.status == "canceled"
    assert p.stripe_payment_intent is not None
    intent = paying.stripe_client().v1.payment_intents.retrieve(p.stripe_payment_intent)
    assert intent.status == "canceled"
    assert await paying.credits(account, "purchase") == []
