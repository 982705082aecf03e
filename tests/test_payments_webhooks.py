"""Stripe's webhook on the portal: signed, applied once, in any order.

The Stripe double delivers real signed events to a receiver here; the test then
hands them to the portal's ``POST /stripe/webhook`` as often and in whatever order
it likes, the way Stripe's retries and races would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from payments_support import (
    ACTOR,
    USD,
    WEBHOOK_SECRET,
    Paying,
)

from payments.loop import sweep
from payments.refunds import refund
from portal.app import create_app as create_portal


class Deliveries:
    """What the double sent, by event type."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[dict[str, Any], bytes, str]] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.events.put_nowait((orjson.loads(body), body, request.headers["Stripe-Signature"]))
        return web.Response(text="ok")

    async def next(self, type_: str, seconds: float = 15.0) -> tuple[dict[str, Any], bytes, str]:
        async with asyncio.timeout(seconds):
            while True:
                event = await self.events.get()
                if event[0]["type"] == type_:
                    return event


@pytest.fixture
async def deliveries(paying: Paying) -> AsyncIterator[Deliveries]:
    received = Deliveries()
    app = web.Application()
    app.router.add_post("/hook", received.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    paying.double.register_webhook(str(server.make_url("/hook")), WEBHOOK_SECRET)
    yield received
    await server.close()


@pytest.fixture
async def portal(paying: Paying, aiohttp_client: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_portal(paying.settings))
    return client


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


async def post(portal: TestClient[Any, Any], body: bytes, signature: str) -> tuple[int, Any]:
    r = await portal.post(
        "/stripe/webhook",
        data=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )
    return r.status, await r.json(content_type=None)


async def test_the_same_event_ten_times_credits_once(
    paying: Paying, deliveries: Deliveries, portal: TestClient[Any, Any]
) -> None:
    account = await paying.account()
    await paying.card(account)
    # Our call never hears Stripe's answer: only the webhook can tell us.
    paying.double.configure(
        fail_next={"path_prefix": "/v1/payment_intents", "times": 1, "mode": "drop_after"}
    )
    result = await paying.payments.purchase(ACTOR, account, amount=9 * USD, idempotency_key="w")
    assert result.payment.status == "pending"
    _event, body, signature = await deliveries.next("payment_intent.succeeded")
    answers = [await post(portal, body, signature) for _ in range(10)]
    assert [a[1]["result"] for a in answers] == ["applied"] + ["duplicate"] * 9
    assert {a[0] for a in answers} == {200}
    p = await paying.payments.payment(account, result.payment.id)
    assert p.status == "succeeded" and p.stripe_payment_intent == _event["data"]["object"]["id"]
    assert [e["amount"] for e in await paying.credits(account, "purchase")] == [9 * USD]
    assert await paying.live_balance(account) == 9 * USD
    # The sweep, coming later, finds it settled and credits nothing more.
    paying.clock.offset = paying.settings.payment_lease + 1
    await sweep(paying.ctx, paying.recharges)
    assert len(await paying.credits(account, "purchase")) == 1


async def test_events_out_of_order_move_a_payment_only_forward(
    paying: Paying, deliveries: Deliveries, portal: TestClient[Any, Any]
) -> None:
    account = await paying.account()
    await paying.card(account)
    result = await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="o")
    event, _body, _sig = await deliveries.next("payment_intent.succeeded")
    # A late "failed" for the same intent (a retry from before it succeeded) changes nothing.
    late = dict(event, id="evt_late_failure", type="payment_intent.payment_failed")
    late["data"] = {"object": dict(event["data"]["object"], status="requires_payment_method")}
    body = orjson.dumps(late)
    status, answer = await post(portal, body, sign(body))
    assert (status, answer["result"]) == (200, "applied")
    p = await paying.payments.payment(account, result.payment.id)
    assert p.status == "succeeded"
    assert len(await paying.credits(account, "purchase")) == 1


async def test_a_card_detached_at_stripe_leaves_our_list(
    paying: Paying, portal: TestClient[Any, Any]
) -> None:
    account = await paying.account()
    pm = await paying.card(account)
    paying.stripe_client().v1.payment_methods.detach(pm)
    event = {
        "id": "evt_detached_1",
        "object": "event",
        "type": "payment_method.detached",
        "data": {"object": {"id": pm, "object": "payment_method", "customer": None}},
    }
    body = orjson.dumps(event)
    status, answer = await post(portal, body, sign(body))
    assert (status, answer["result"]) == (200, "applied")
    assert await paying.payments.methods(account) == []
    account_row = await paying.services.provisioning.account(account)
    assert account_row.has_payment_method is False


@pytest.mark.parametrize(
    "signature",
    ["", "t=1,v1=00", "garbage", sign(b"{}", "whsec_someone_else")],
)
async def test_a_bad_signature_is_refused_and_changes_nothing(
    paying: Paying, portal: TestClient[Any, Any], signature: str
) -> None:
    account = await paying.account()
    await paying.card(account)
    result = await paying.payments.purchase(ACTOR, account, amount=5 * USD, idempotency_key="s")
    forged = {
        "id": "evt_forged",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_forged",
                "object": "payment_intent",
                "status": "succeeded",
                "amount": 100000,
                "metadata": {"payment_id": result.payment.id},
            }
        },
    }
    r = await portal.post(
        "/stripe/webhook", data=orjson.dumps(forged), headers={"Stripe-Signature": signature}
    )
    assert r.status == 400
    assert r.content_type == "application/problem+json"
    assert (await r.json(content_type=None))["type"].endswith("bad-webhook-signature")
    assert await paying.pool.fetchval("select count(*) from stripe_events") == 0
    assert len(await paying.credits(account, "purchase")) == 1


async def test_crypto_is_paid_at_a_checkout_and_credited_on_its_completion(
    paying: Paying, deliveries: Deliveries, portal: TestClient[Any, Any]
) -> None:
    account = await paying.account()
    result = await paying.payments.purchase(
        ACTOR, account, amount=50 * USD, idempotency_key="c", method="crypto"
    )
    p = result.payment
    assert p.status == "pending" and p.stripe_checkout_session
    assert result.checkout_url and p.stripe_checkout_session in result.checkout_url
    assert await paying.credits(account, "purchase") == []
    paying.double.complete_checkout(p.stripe_checkout_session)
    _event, body, signature = await deliveries.next("checkout.session.completed")
    for _ in range(3):
        assert (await post(portal, body, signature))[0] == 200
    done = await paying.payments.payment(account, p.id)
    assert done.status == "succeeded"
    entries = await paying.credits(account, "purchase")
    assert [e["amount"] for e in entries] == [50 * USD]
    assert entries[0]["description"].startswith("Crypto payment ")
    assert await paying.live_balance(account) == 50 * USD


async def test_a_refund_made_at_stripe_is_debited_once_ours_are_not_twice(
    paying: Paying, deliveries: Deliveries, portal: TestClient[Any, Any]
) -> None:
    account = await paying.account()
    await paying.card(account)
    result = await paying.payments.purchase(ACTOR, account, amount=10 * USD, idempotency_key="r")
    p = result.payment
    assert p.stripe_payment_intent is not None
    # Someone refunds $3 in Stripe's dashboard: we hear of it only by the webhook.
    paying.stripe_client().v1.refunds.create(
        {"payment_intent": p.stripe_payment_intent, "amount": 300}
    )
    _event, body, signature = await deliveries.next("charge.refunded")
    for _ in range(3):
        assert (await post(portal, body, signature))[0] == 200
    entries = await paying.credits(account, "payment_refund")
    assert [e["amount"] for e in entries] == [-3 * USD]
    assert await paying.live_balance(account) == 7 * USD
    assert (await paying.payments.payment(account, p.id)).refunded == 3 * USD
    # Our own refund of $2: its event finds Stripe's total equal to ours.
    await refund(
        paying.ctx, ACTOR, p.id, amount=2 * USD, force=False, reason=None, idempotency_key="o"
    )
    _event, body, signature = await deliveries.next("charge.refunded")
    assert (await post(portal, body, signature))[0] == 200
    assert [e["amount"] for e in await paying.credits(account, "payment_refund")] == [
        -3 * USD,
        -2 * USD,
    ]
    assert await paying.live_balance(account) == 5 * USD
