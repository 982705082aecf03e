"""The gateway's answers for payments through the real HTTP stack: an account that must add
a payment method first (402 payment-method-required), and a no-credit 402 that says what
its auto-recharge is doing, each linking to the portal page that fixes it."""

from __future__ import annotations

import pytest

# The gateway fixtures live with the functional tests (tests/ is on sys.path under pytest).
from test_gateway import PRICE, Gateway, MakeGateway, make_gateway, problem, upstream

from meter import keys
from meter.live_state import AccountConfig

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module

PORTAL = "https://billing.example.com"


def config(
    version: int, *, suspended: bool = False, payment_method_required: bool
) -> AccountConfig:
    return AccountConfig(version, 0, None, None, None, suspended, payment_method_required)


async def sync(gw: Gateway, version: int, **kw: bool) -> None:
    assert gw.account is not None
    rec = gw.account.record
    assert await gw.state.sync_account(rec.shard, rec.account_id, config(version, **kw))


async def test_402_until_a_payment_method_is_added(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(account={"payment_method_required": True}, portal_public_url=PORTAL)
    # The first call's key is resolved by the admission script, the second's is cached.
    for _ in range(2):
        reply = await gw.call()
        doc = problem(reply, 402, "payment-method-required")
        assert doc["title"] == "Add a payment method to use the API"
        assert doc["add_payment_method_url"] == PORTAL + "/payment-methods"
        assert "X-Meter-Charged" not in reply.headers
    assert await gw.metric("meter_gateway_refusals_total", reason="payment-method-required") == 2
    assert (gw.echo.received, await gw.balance(), await gw.events()) == (0, 100_000, [])

    await sync(gw, 2, payment_method_required=False)  # a card was added

    assert (await gw.call()).status == 200
    assert (gw.echo.received, await gw.balance()) == (1, 100_000 - PRICE)
    assert [e["t"] for e in await gw.events()] == ["d"]


async def test_a_suspended_account_that_needs_a_payment_method_is_403(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(account={"suspended": True, "payment_method_required": True})
    problem(await gw.call(), 403, "account-suspended")
    await sync(gw, 2, suspended=False, payment_method_required=True)
    problem(await gw.call(), 402, "payment-method-required")
    assert (gw.echo.received, await gw.balance(), await gw.events()) == (0, 100_000, [])


@pytest.mark.parametrize(
    ("rch", "auto_recharge", "detail"),
    [
        (
            keys.RECHARGE_IN_FLIGHT,
            "in_flight",
            "An auto-recharge is in progress; retry in a few seconds.",
        ),
        (
            keys.RECHARGE_DECLINED,
            "declined",
            "Your last auto-recharge was declined; update your payment method.",
        ),
        (
            keys.RECHARGE_PAUSED,
            "paused",
            "Auto-recharge is paused after repeated failures; update your payment method or"
            " add credits.",
        ),
        (None, None, "Add credits to make more calls."),
    ],
)
async def test_402_no_credit_says_what_auto_recharge_is_doing(
    make_gateway: MakeGateway, rch: str | None, auto_recharge: str | None, detail: str
) -> None:
    gw = await make_gateway(balance=PRICE + 500, portal_public_url=PORTAL + "/")
    assert gw.account is not None
    rec = gw.account.record
    assert (await gw.call()).status == 200
    await gw.state.set_recharge_state(rec.shard, rec.account_id, rch)

    reply = await gw.call()

    doc = problem(reply, 402, "insufficient-credits")
    assert doc.get("auto_recharge") == auto_recharge
    assert doc["detail"] == detail
    assert doc["add_credits_url"] == PORTAL + "/credits"
    assert (doc["price"], doc["available"]) == (PRICE, 500)
    assert (reply.header("X-Credits-Available"), reply.header("X-Meter-Charged")) == (500, 0)
    assert (gw.echo.received, await gw.balance(), len(await gw.events())) == (1, 500, 1)


async def test_the_links_default_to_the_portal_public_url(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=0, account={"payment_method_required": True})
    doc = problem(await gw.call(), 402, "payment-method-required")
    assert doc["add_payment_method_url"] == "http://127.0.0.1:8083/payment-methods"
