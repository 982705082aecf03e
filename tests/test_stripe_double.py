"""The Stripe test double through the real ``stripe`` library: what it adds to
localstripe (idempotency keys, card errors, search, Checkout, events, faults)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from stripe import (
    APIConnectionError,
    APIError,
    CardError,
    IdempotencyError,
    InvalidRequestError,
    StripeClient,
    Webhook,
)
from stripe_fixtures import StripeDouble

from meter.local_servers import free_port
from meter.stripe_double.idempotency import TTL_SECONDS, IdempotencyCache, InFlight, Mismatch, Saved
from meter.stripe_double.search_query import QueryError, parse

WEBHOOK_SECRET = "whsec_test_double"
EVENT_TIMEOUT = 10.0


def card(client: StripeClient, number: str) -> str:
    pm = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    return pm.id


def customer_with_card(client: StripeClient, number: str = "4242424242424242") -> tuple[str, str]:
    cus = client.v1.customers.create(params={"metadata": {"account_id": "acc_1"}})
    pm = card(client, number)
    client.v1.payment_methods.attach(pm, params={"customer": cus.id})
    return cus.id, pm


def off_session(customer: str | None, pm: str, amount: int = 1500, **extra: Any) -> dict[str, Any]:
    params = {"amount": amount, "currency": "eur", "payment_method": pm, "confirm": True}
    params |= {"off_session": True, **extra}
    if customer:
        params["customer"] = customer
    return params


# Idempotency keys


def test_replay_returns_the_first_payment_intent_and_charges_once(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    params = off_session(cus, pm, metadata={"purchase_id": "pur_1"})
    first = client.v1.payment_intents.create(params=params, options={"idempotency_key": "buy-1"})
    again = client.v1.payment_intents.create(params=params, options={"idempotency_key": "buy-1"})

    assert first.status == "succeeded"
    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert first.last_response.headers.get("Idempotent-Replayed") is None
    assert [c["payment_intent"] for c in stripe.charges()] == [first.id]
    posts = [r for r in stripe.requests() if r["path"] == "/v1/payment_intents"]
    assert [(r["idempotency_key"], r["replayed"]) for r in posts] == [
        ("buy-1", False),
        ("buy-1", True),
    ]
    assert posts[0]["object_id"] == first.id
    assert posts[0]["params"]["metadata"] == {"purchase_id": "pur_1"}


def test_keys_are_per_api_key(stripe: StripeDouble) -> None:
    client = stripe.client()
    other = stripe.client("sk_test_other")
    cus, pm = customer_with_card(client)
    a = client.v1.payment_intents.create(
        params=off_session(cus, pm), options={"idempotency_key": "k"}
    )
    b = other.v1.payment_intents.create(
        params=off_session(cus, pm), options={"idempotency_key": "k"}
    )
    assert a.id != b.id
    assert len(stripe.charges()) == 2


def test_same_key_other_parameters_is_an_idempotency_error(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    client.v1.payment_intents.create(params=off_session(cus, pm), options={"idempotency_key": "k"})
    with pytest.raises(IdempotencyError) as caught:
        client.v1.payment_intents.create(
            params=off_session(cus, pm, amount=999), options={"idempotency_key": "k"}
        )
    assert caught.value.http_status == 400
    assert caught.value.error is not None and caught.value.error.type == "idempotency_error"
    with pytest.raises(IdempotencyError):  # another endpoint, same key
        client.v1.customers.create(options={"idempotency_key": "k"})
    assert len(stripe.charges()) == 1


def test_errors_are_replayed_too(stripe: StripeDouble) -> None:
    client = stripe.client()
    pm = card(client, "4000000000000002")
    answers = []
    for _ in range(2):
        with pytest.raises(CardError) as caught:
            client.v1.payment_intents.create(
                params=off_session(None, pm), options={"idempotency_key": "declined"}
            )
        answers.append(caught.value)
    assert answers[0].json_body == answers[1].json_body
    assert answers[1].headers is not None
    assert answers[1].headers.get("Idempotent-Replayed") == "true"
    charges = [k for k in _store_charges(stripe)]
    assert len(charges) == 1  # one failed charge: the endpoint ran once


def _store_charges(stripe: StripeDouble) -> list[str]:
    """Every charge the double made, failed or not (``charges()`` lists successes)."""
    listed = stripe.client().v1.charges.list(params={"limit": 100})
    return [c.id for c in listed.data]


def test_with_idempotency_off_the_same_key_charges_twice(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    assert stripe.configure(idempotency=False)["idempotency"] is False
    first = client.v1.payment_intents.create(
        params=off_session(cus, pm), options={"idempotency_key": "k"}
    )
    again = client.v1.payment_intents.create(
        params=off_session(cus, pm), options={"idempotency_key": "k"}
    )
    assert first.id != again.id
    assert len(stripe.charges()) == 2


async def test_a_key_still_in_flight_gets_409(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    stripe.configure(
        fail_next={"path_prefix": "/v1/payment_intents", "mode": "delay", "seconds": 2}
    )
    form = {"amount": "700", "currency": "eur", "customer": cus, "payment_method": pm}
    form |= {"confirm": "true", "off_session": "true"}
    headers = {"Authorization": f"Bearer {stripe.secret_key}", "Idempotency-Key": "slow"}
    url = stripe.api_base + "/v1/payment_intents"
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(http.post(url, data=form, headers=headers))
        await _until(lambda: any(r["idempotency_key"] == "slow" for r in stripe.requests()))
        async with http.post(url, data=form, headers=headers) as second:
            assert second.status == 409
            assert (await second.json())["error"]["type"] == "idempotency_error"
        async with await first as answered:
            assert answered.status == 200
    assert len(stripe.charges()) == 1


async def _until(condition: Any) -> None:
    """Poll the double (another process: nothing to wait on) until ``condition``."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_idempotency_cache_keeps_keys_a_day() -> None:
    cache = IdempotencyCache()
    fp = ("POST", "/v1/customers", (("email", "a@b.c"),))
    assert cache.claim("sk", "k", fp, now=0) is None
    assert cache.claim("sk", "k", fp, now=1) == InFlight()
    cache.settle("sk", "k", Saved(200, b"{}", "application/json"))
    assert cache.claim("sk", "k", fp, now=TTL_SECONDS - 1) == Saved(200, b"{}", "application/json")
    assert isinstance(cache.claim("sk", "k", ("POST", "/v1/customers", ()), now=2), Mismatch)
    assert cache.claim("sk", "k", fp, now=TTL_SECONDS) is None  # forgotten: a new request


def test_an_answer_given_before_the_endpoint_is_not_saved() -> None:
    cache = IdempotencyCache()
    fp = ("POST", "/v1/customers", b"")
    assert cache.claim("sk", "k", fp, now=0) is None
    cache.settle("sk", "k", None)
    assert cache.claim("sk", "k", fp, now=1) is None


# Card errors and off-session authentication


def test_off_session_payment_needing_authentication_is_a_card_error(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client, "4000002760003184")
    with pytest.raises(CardError) as caught:
        client.v1.payment_intents.create(params=off_session(cus, pm))
    error = caught.value.error
    assert caught.value.http_status == 402
    assert caught.value.code == "authentication_required"
    assert error is not None and error.type == "card_error"
    assert error.decline_code == "authentication_required"
    assert error.payment_intent is not None
    assert error.payment_intent.status == "requires_payment_method"
    pi = client.v1.payment_intents.retrieve(error.payment_intent.id)
    assert pi.last_payment_error is not None
    assert pi.last_payment_error.code == "authentication_required"
    assert stripe.charges() == []


def test_a_card_set_up_off_session_needs_no_authentication_later(stripe: StripeDouble) -> None:
    """4000002500003155 asks for 3-D Secure when set up, then not off-session. The setup
    is driven with the requests localstripe's Stripe.js makes for confirmCardSetup
    (JSON body, publishable key, no Authorization header)."""
    client = stripe.client()
    cus = client.v1.customers.create()
    si = client.v1.setup_intents.create(params={"customer": cus.id, "usage": "off_session"})
    assert si.client_secret is not None
    card_data = {"number": "4000002500003155", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    body = {
        "key": stripe.publishable_key,
        "use_stripe_sdk": True,
        "client_secret": si.client_secret,
    }
    first = _js_post(
        stripe,
        f"/v1/setup_intents/{si.id}/confirm",
        body | {"payment_method_data": {"type": "card", "card": card_data}},
    )
    assert first["status"] == "requires_action"
    done = _js_post(stripe, f"/v1/setup_intents/{si.id}/confirm", body)  # "Complete authentication"
    assert done["status"] == "succeeded"

    cards = client.v1.payment_methods.list(params={"customer": cus.id, "type": "card"})
    assert [m.id for m in cards.data] == [done["payment_method"]]
    pi = client.v1.payment_intents.create(params=off_session(cus.id, done["payment_method"]))
    assert pi.status == "succeeded"
    assert len(stripe.charges()) == 1

    unsaved = card(client, "4000002500003155")
    with pytest.raises(CardError) as caught:
        client.v1.payment_intents.create(params=off_session(None, unsaved))
    assert caught.value.code == "authentication_required"


def _js_post(stripe: StripeDouble, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        stripe.url + path, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.parametrize(
    ("number", "attach", "code", "decline_code"),
    [
        ("4000000000000341", True, "card_declined", "generic_decline"),
        ("4000000000000002", False, "card_declined", "generic_decline"),
        ("4000000000009995", False, "card_declined", "insufficient_funds"),
        ("4000000000000069", False, "expired_card", "expired_card"),
    ],
)
def test_a_declined_charge_is_stripes_card_error(
    stripe: StripeDouble, number: str, attach: bool, code: str, decline_code: str
) -> None:
    client = stripe.client()
    if attach:
        cus, pm = customer_with_card(client, number)
    else:
        cus, pm = None, card(client, number)
    with pytest.raises(CardError) as caught:
        client.v1.payment_intents.create(params=off_session(cus, pm))
    error = caught.value.error
    assert caught.value.http_status == 402
    assert (caught.value.code, error and error.decline_code) == (code, decline_code)
    assert error is not None and error.type == "card_error"
    assert error.payment_intent is not None
    assert error.payment_intent.status == "requires_payment_method"
    assert error.payment_intent.last_payment_error.decline_code == decline_code
    assert error.charge and error.payment_method and error.payment_method.id == pm
    assert stripe.charges() == []


def test_attaching_a_declining_card_is_a_card_error(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus = client.v1.customers.create()
    pm = card(client, "4000000000009995")
    with pytest.raises(CardError) as caught:
        client.v1.payment_methods.attach(pm, params={"customer": cus.id})
    assert caught.value.code == "card_declined"
    assert caught.value.error is not None
    assert caught.value.error.decline_code == "insufficient_funds"


def test_payment_intent_keeps_description_and_receipt_fields(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    created = client.v1.payment_intents.create(
        params=off_session(
            cus,
            pm,
            description="Credits: 15.00 EUR",
            statement_descriptor_suffix="CREDITS",
            receipt_email="a@example.com",
        )
    )
    pi = client.v1.payment_intents.retrieve(created.id)
    assert (pi.description, pi.statement_descriptor_suffix, pi.receipt_email) == (
        "Credits: 15.00 EUR",
        "CREDITS",
        "a@example.com",
    )


# Search and lists


def test_search_finds_payment_intents_and_customers_by_metadata(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    other = client.v1.customers.create(params={"metadata": {"account_id": "acc_2"}})
    wanted = client.v1.payment_intents.create(
        params=off_session(cus, pm, metadata={"purchase_id": "pur_x", "kind": "recharge"})
    )
    client.v1.payment_intents.create(params=off_session(cus, pm, metadata={"purchase_id": "pur_y"}))

    found = client.v1.payment_intents.search(params={"query": "metadata['purchase_id']:'pur_x'"})
    assert found.object == "search_result"
    assert [p.id for p in found.data] == [wanted.id]
    assert found.has_more is False and found.next_page is None
    both = client.v1.payment_intents.search(
        params={"query": "metadata['purchase_id']:'pur_x' AND metadata['kind']:'other'"}
    )
    assert both.data == []
    people = client.v1.customers.search(params={"query": 'metadata["account_id"]:"acc_2"'})
    assert [c.id for c in people.data] == [other.id]
    with pytest.raises(InvalidRequestError):
        client.v1.customers.search(params={"query": "metadata['a']:'b' AND"})


def test_search_query_language() -> None:
    q = parse("metadata['purchase_id']:'pur_x' AND status:\"succeeded\" AND -currency:'usd'")
    obj = {"metadata": {"purchase_id": "pur_x"}, "status": "succeeded", "currency": "eur"}
    assert q.matches(obj)
    assert not q.matches(obj | {"currency": "usd"})
    assert parse("status:'a' OR status:'b'").matches({"status": "b"})
    assert parse("amount:1500").matches({"amount": 1500})
    for bad in ["", "status:'a' AND status:'b' OR status:'c'", "status:'a' status:'b'", "x"]:
        with pytest.raises(QueryError):
            parse(bad)


def test_payment_intents_list_by_customer_newest_first(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    other, other_pm = customer_with_card(client)
    ids = [client.v1.payment_intents.create(params=off_session(cus, pm)).id for _ in range(3)]
    client.v1.payment_intents.create(params=off_session(other, other_pm))
    listed = client.v1.payment_intents.list(params={"customer": cus, "limit": 2})
    assert [p.id for p in listed.data] == [ids[2], ids[1]]
    assert listed.has_more is True


# Webhook events and Checkout


@dataclass
class Receiver:
    url: str
    queue: asyncio.Queue[tuple[bytes, str]] = field(default_factory=asyncio.Queue)

    async def wait_for(self, kind: str) -> Any:
        """The next event of ``kind``, its signature checked as our code will check it."""
        async with asyncio.timeout(EVENT_TIMEOUT):
            while True:
                payload, signature = await self.queue.get()
                event = Webhook.construct_event(payload.decode(), signature, WEBHOOK_SECRET)
                if event.type == kind:
                    return event


@pytest.fixture
async def webhooks(stripe: StripeDouble) -> AsyncIterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        receiver.queue.put_nowait((await request.read(), request.headers["Stripe-Signature"]))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stripe.register_webhook(receiver.url, WEBHOOK_SECRET)
    yield receiver
    await runner.cleanup()


def checkout_params(customer: str) -> dict[str, Any]:
    return {
        "mode": "payment",
        "payment_method_types": ["crypto"],
        "customer": customer,
        "client_reference_id": "acc_1",
        "metadata": {"purchase_id": "pur_c"},
        "payment_intent_data": {"metadata": {"purchase_id": "pur_c"}},
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 2500,
                    "product_data": {"name": "Credits"},
                },
                "quantity": 2,
            }
        ],
        "success_url": "http://shop.test/done?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://shop.test/cancelled",
    }


async def test_completed_checkout_sends_a_signed_event(
    stripe: StripeDouble, webhooks: Receiver
) -> None:
    client = stripe.client()
    cus = client.v1.customers.create()
    session = client.v1.checkout.sessions.create(params=checkout_params(cus.id))
    assert (session.status, session.payment_status, session.amount_total) == (
        "open",
        "unpaid",
        5000,
    )
    assert session.url == f"{stripe.url}/_double/checkout/{session.id}"

    stripe.complete_checkout(session.id)
    event = await webhooks.wait_for("checkout.session.completed")

    assert event.data.object.id == session.id
    assert event.data.object.payment_status == "paid"
    done = client.v1.checkout.sessions.retrieve(session.id)
    assert done.status == "complete" and done.url is None
    assert isinstance(done.payment_intent, str)
    pi = client.v1.payment_intents.retrieve(done.payment_intent)
    assert pi.status == "succeeded" and pi.metadata.to_dict() == {"purchase_id": "pur_c"}
    [charge] = stripe.charges()
    assert (charge["amount"], charge["currency"], charge["payment_intent"]) == (5000, "usd", pi.id)


async def test_checkout_page_pays_or_cancels(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus = client.v1.customers.create()
    session = client.v1.checkout.sessions.create(params=checkout_params(cus.id))
    assert session.url is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(session.url) as page:
            text = await page.text()
        assert "50.00 USD" in text and "Pay with crypto" in text and "Cancel" in text
        async with http.post(session.url + "/cancel", allow_redirects=False) as cancelled:
            assert (cancelled.status, cancelled.headers["Location"]) == (
                303,
                "http://shop.test/cancelled",
            )
        assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
        async with http.post(session.url + "/pay", allow_redirects=False) as paid:
            assert paid.status == 303
            assert paid.headers["Location"] == f"http://shop.test/done?session={session.id}"
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"


def test_an_expired_checkout_cannot_be_paid(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus = client.v1.customers.create()
    session = client.v1.checkout.sessions.create(params=checkout_params(cus.id))
    expired = client.v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired"
    with pytest.raises(urllib.error.HTTPError) as caught:
        stripe.complete_checkout(session.id)
    assert caught.value.code == 400
    caught.value.close()
    assert stripe.charges() == []


async def test_card_and_refund_events(stripe: StripeDouble, webhooks: Receiver) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    attached = await webhooks.wait_for("payment_method.attached")
    assert (attached.data.object.id, attached.data.object.customer) == (pm, cus)

    pi = client.v1.payment_intents.create(params=off_session(cus, pm))
    client.v1.refunds.create(params={"payment_intent": pi.id})
    refunded = await webhooks.wait_for("charge.refunded")
    assert refunded.data.object.payment_intent == pi.id
    assert refunded.data.object.refunded is True

    client.v1.payment_methods.detach(pm)
    detached = await webhooks.wait_for("payment_method.detached")
    assert detached.data.object.id == pm


async def test_setup_intent_events(stripe: StripeDouble, webhooks: Receiver) -> None:
    client = stripe.client()
    cus = client.v1.customers.create()
    si = client.v1.setup_intents.create(params={"customer": cus.id, "usage": "off_session"})
    pm = card(client, "4242424242424242")
    client.v1.setup_intents.confirm(si.id, params={"payment_method": pm})
    attached = await webhooks.wait_for("payment_method.attached")
    assert attached.data.object.customer == cus.id
    succeeded = await webhooks.wait_for("setup_intent.succeeded")
    assert succeeded.data.object.id == si.id


# Faults


def test_drop_after_charges_but_the_caller_never_hears(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    stripe.configure(fail_next={"path_prefix": "/v1/payment_intents", "mode": "drop_after"})
    with pytest.raises(APIConnectionError):
        client.v1.payment_intents.create(
            params=off_session(cus, pm), options={"idempotency_key": "d"}
        )
    assert len(stripe.charges()) == 1

    retried = client.v1.payment_intents.create(
        params=off_session(cus, pm), options={"idempotency_key": "d"}
    )
    assert retried.last_response.headers.get("Idempotent-Replayed") == "true"
    assert [c["payment_intent"] for c in stripe.charges()] == [retried.id]
    dropped = [r for r in stripe.requests() if r["fault"] == "drop_after"]
    assert [r["object_id"] for r in dropped] == [retried.id]


def test_the_librarys_own_retry_recovers_a_dropped_answer(stripe: StripeDouble) -> None:
    client = stripe.client(max_network_retries=2)
    cus, pm = customer_with_card(client)
    stripe.configure(fail_next={"path_prefix": "/v1/payment_intents", "mode": "drop_after"})
    pi = client.v1.payment_intents.create(params=off_session(cus, pm))
    assert pi.status == "succeeded"
    assert len(stripe.charges()) == 1


def test_error_before_performs_nothing(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    stripe.configure(fail_next={"path_prefix": "/v1/payment_intents", "mode": "error_before"})
    with pytest.raises(APIError) as caught:
        client.v1.payment_intents.create(
            params=off_session(cus, pm), options={"idempotency_key": "e"}
        )
    assert caught.value.http_status == 500
    assert stripe.charges() == []
    pi = client.v1.payment_intents.create(
        params=off_session(cus, pm), options={"idempotency_key": "e"}
    )
    assert pi.last_response.headers.get("Idempotent-Replayed") is None  # nothing was saved
    assert len(stripe.charges()) == 1


def test_reset_empties_the_double(stripe: StripeDouble) -> None:
    client = stripe.client()
    cus, pm = customer_with_card(client)
    client.v1.payment_intents.create(params=off_session(cus, pm))
    stripe.configure(idempotency=False)
    stripe.reset()
    assert stripe.charges() == [] and stripe.requests() == []
    assert stripe.configure()["idempotency"] is True
    with pytest.raises(InvalidRequestError):
        client.v1.customers.retrieve(cus)
