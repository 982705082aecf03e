"""Races through the whole stack: 2,000 concurrent calls, money for exactly 100.

Every call is in flight at once (one client connection each, cold key cache),
so admissions hit Redis concurrently from many pooled connections; the
admission script alone decides, and it must never let one micro too many through.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

# The gateway fixtures live with the functional tests (tests/ is on sys.path under pytest).
from test_gateway import (
    CHAT_MAX,
    PRICE,
    Gateway,
    MakeGateway,
    make_gateway,
    upstream,
)

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module

CALLS = 2_000
FITS = 100


async def storm(gw: Gateway, n: int = CALLS, **kw: object) -> Counter[int]:
    replies = await asyncio.gather(*(gw.call(**kw) for _ in range(n)))  # type: ignore[arg-type]
    return Counter(r.status for r in replies)


@pytest.mark.timeout(60)
async def test_balance_for_exactly_100_calls(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=FITS * PRICE)
    assert await storm(gw) == {200: FITS, 402: CALLS - FITS}
    assert gw.echo.received == FITS
    assert await gw.balance() == 0
    events = await gw.events()
    assert len(events) == FITS and {e["t"] for e in events} == {"d"}


@pytest.mark.timeout(60)
async def test_daily_hard_limit_for_exactly_100_calls(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=10 * FITS * PRICE, account={"daily_hard_limit": FITS * PRICE})
    assert await storm(gw) == {200: FITS, 429: CALLS - FITS}
    assert gw.echo.received == FITS
    assert await gw.balance() == 9 * FITS * PRICE
    assert gw.account is not None
    rec = gw.account.record
    state = await gw.state.read_account(rec.shard, rec.account_id)
    assert state is not None and state.spent_today == FITS * PRICE
    events = await gw.events()
    assert len(events) == FITS and {e["t"] for e in events} == {"d"}


@pytest.mark.timeout(60)
async def test_overage_line_for_exactly_100_calls(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=40 * PRICE, account={"overage_line": 60 * PRICE})
    assert await storm(gw) == {200: FITS, 402: CALLS - FITS}
    assert gw.echo.received == FITS
    assert await gw.balance() == -60 * PRICE
    assert len(await gw.events()) == FITS


@pytest.mark.timeout(60)
async def test_concurrent_reserves_and_settlements_add_up(make_gateway: MakeGateway) -> None:
    initial = 20 * CHAT_MAX
    gw = await make_gateway(balance=initial)
    rng = random.Random(7)
    units = [rng.choice(["0", "17", "4999", "5000", "99999", "garbage"]) for _ in range(500)]
    replies = await asyncio.gather(
        *(gw.call("/v1/chat/x", method="POST", headers={"X-Echo-Units": u}) for u in units)
    )
    ok = [r for r in replies if r.status == 200]
    assert {r.status for r in replies} <= {200, 402}
    assert len(ok) == gw.echo.received >= 20  # refunds free credit for more than 20 reserves
    charged = sum(r.header("X-Meter-Charged") or 0 for r in ok)
    assert await gw.balance() == initial - charged >= 0
    fields = await gw.events()
    debited = sum(int(e["m"]) for e in fields if e["t"] == "d")
    refunded = sum(int(e["m"]) for e in fields if e["t"] == "r")
    assert debited - refunded == charged
