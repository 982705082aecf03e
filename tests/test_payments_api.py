"""The payment routes over HTTP: bad input is refused clearly and charges nothing."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, PROBLEM, call, start, stripe_env


@pytest.fixture
async def api(aiohttp_client: Any, redis_url: str, database_url: str, stripe: Any) -> Any:
    client = await start(aiohttp_client, redis_url, database_url, **stripe_env(stripe))
    return client


async def customer_of(database_url: str, account: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        customer: str = await conn.fetchval(
            "select stripe_customer_id from payment_customers where account_id = $1", account
        )
    finally:
        await conn.close()
    return customer


async def paying_account(api: TestClient[Any, Any], double: Any, database_url: str) -> str:
    account = (await call(api, "POST", "/v1/accounts", {"name": "Acme"}, status=201))["id"]
    await call(api, "POST", f"/v1/accounts/{account}/setup-intents", status=201)
    customer = await customer_of(database_url, account)
    pm = double.attach_card(customer, "4242424242424242")
    listed = await call(api, "GET", f"/v1/accounts/{account}/payment-methods", status=200)
    assert [(m["id"], m["is_default"], m["last4"]) for m in listed["data"]] == [(pm, True, "4242")]
    return str(account)


@pytest.mark.parametrize(
    ("amount", "status", "field"),
    [
        (5.0, 422, "amount"),  # an integral float is not an amount
        ("5000000", 422, "amount"),
        (5_000_001, 422, "amount"),  # a fraction of a cent
        (4_990_000, 422, "amount"),  # below the bound
        (5_000_010_000, 422, "amount"),  # above it
        (-5_000_000, 422, "amount"),
    ],
)
async def test_a_bad_amount_is_refused_and_charges_nothing(
    api: TestClient[Any, Any], stripe: Any, database_url: str, amount: Any, status: int, field: str
) -> None:
    account = await paying_account(api, stripe, database_url)
    r = await api.post(
        f"/v1/accounts/{account}/purchases",
        json={"amount": amount, "idempotency_key": "k"},
        headers=AUTH,
    )
    body = await r.json(content_type=None)
    assert (r.status, r.content_type) == (status, PROBLEM), body
    assert [e["field"] for e in body["errors"]] == [field]
    assert stripe.charges() == []
    page = await call(api, "GET", f"/v1/accounts/{account}/payments", status=200)
    assert page["data"] == []


async def test_a_purchase_over_http_and_its_replay(
    api: TestClient[Any, Any], stripe: Any, database_url: str
) -> None:
    account = await paying_account(api, stripe, database_url)
    body = {"amount": 5_000_000, "idempotency_key": "once"}
    first = await call(api, "POST", f"/v1/accounts/{account}/purchases", body, status=201)
    assert (first["status"], first["amount"], first["card_last4"]) == (
        "succeeded",
        5_000_000,
        "4242",
    )
    assert first["stripe_reference"].startswith("pi_") and first["credit_entry_id"]
    again = await api.post(
        f"/v1/accounts/{account}/purchases",
        json=body,
        headers=AUTH,
    )
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == first["id"]
    assert len(stripe.charges()) == 1
    balance = await call(api, "GET", f"/v1/accounts/{account}/balance", status=200)
    assert balance["balance"] == 5_000_000
    history = await call(api, "GET", f"/v1/accounts/{account}/transactions", status=200)
    assert [(t["kind"], t["amount"]) for t in history["data"]] == [("purchase", 5_000_000)]
    assert (
        history["data"][0]["description"] == f"Card payment {first['stripe_reference']} (visa 4242)"
    )
    listed = await call(api, "GET", f"/v1/accounts/{account}/payments", status=200)
    assert [p["id"] for p in listed["data"]] == [first["id"]]
    one = await call(api, "GET", f"/v1/payments/{first['id']}", status=200)
    assert one["status"] == "succeeded"


async def test_a_declined_card_is_a_402_with_the_reason(
    api: TestClient[Any, Any], stripe: Any, database_url: str
) -> None:
    account = (await call(api, "POST", "/v1/accounts", {"name": "Acme"}, status=201))["id"]
    await call(api, "POST", f"/v1/accounts/{account}/setup-intents", status=201)
    customer = await customer_of(database_url, account)
    stripe.attach_card(customer, "4000000000000341")
    r = await api.post(
        f"/v1/accounts/{account}/purchases",
        json={"amount": 5_000_000, "idempotency_key": "d"},
        headers=AUTH,
    )
    body = await r.json(content_type=None)
    assert (r.status, body["type"].rsplit("/", 1)[1]) == (402, "payment-failed"), body
    assert body["payment_id"].startswith("pay_") and body["code"]
    balance = await call(api, "GET", f"/v1/accounts/{account}/balance", status=200)
    assert balance["balance"] == 0


async def test_payments_of_an_unknown_account_are_not_found(api: TestClient[Any, Any]) -> None:
    missing = "acct_0000000000000000000000"
    for method, path, body in [
        (
            "POST",
            f"/v1/accounts/{missing}/purchases",
            {"amount": 5_000_000, "idempotency_key": "k"},
        ),
        ("GET", f"/v1/accounts/{missing}/payment-methods", None),
        ("GET", f"/v1/accounts/{missing}/auto-recharge", None),
        ("GET", "/v1/payments/pay_0000000000000000000000", None),
    ]:
        r = await api.request(method, path, json=body, headers=AUTH)
        assert r.status == 404, (path, await r.text())
