"""Refunds waiting for Redis outlive the gateway that owes them (METER_REFUND_SPOOL_DIR):
what one gateway leaves at shutdown, the next one on the same folder gives back, once.
(A worker killed outright: tests/test_gateway_service.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gateway import (
    PRICE,
    Gateway,
    MakeGateway,
    behind_relay,
    make_gateway,
    problem,
    refund_missed,
    upstream,
)

from gateway.refund_spool import PendingRefund, PendingVoid, waiting
from gateway.testing import until

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module


def spooled(folder: Path) -> list[PendingRefund | PendingVoid]:
    """What waits in every spool file of ``folder``."""
    found = []
    for path in sorted(folder.glob("*.spool")):
        works, unreadable = waiting(path.read_bytes())
        assert unreadable == 0
        found += works
    return found


async def next_gateway(make_gateway: MakeGateway, first: Gateway, **overrides: object) -> Gateway:
    """A second gateway on the same Redis (directly) and the same spool folder."""
    gw = await make_gateway(balance=0, **overrides)
    gw.account = first.account
    return gw


async def test_a_refund_left_at_shutdown_is_given_back_by_the_next_gateway(
    make_gateway: MakeGateway, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    first, relay = await behind_relay(
        make_gateway, redis_url, shutdown_grace=0.3, refund_spool_dir=str(spool)
    )
    await refund_missed(first, relay)
    [work] = spooled(spool)
    assert isinstance(work, PendingRefund)
    assert (work.amount, work.reason) == (PRICE, "upstream_5xx")
    await first.stop()  # Redis still away: the grace runs out
    assert first.runtime.metrics.refunds_dropped.value == 0  # left, not given up
    [left] = [r for r in caplog.records if r.getMessage() == "refund left in the spool"]
    assert left.levelname == "ERROR"  # a record to credit from, should the folder be lost
    assert (left.event_id, left.micros) == (work.event_id, PRICE)  # type: ignore[attr-defined]
    assert spooled(spool) == [work]
    assert await first.balance() == 100_000 - PRICE

    second = await next_gateway(make_gateway, first, refund_spool_dir=str(spool))
    assert await second.metric("meter_gateway_refunds_claimed_total") == 1
    await until(lambda: second.runtime.metrics.refunds_pending.value == 0, within=15)
    assert await second.balance() == 100_000
    assert [e["t"] for e in await second.events()] == ["d", "r"]  # booked once
    assert await second.metric("meter_gateway_refunds_total", reason="upstream_5xx") == 1
    assert spooled(spool) == []  # nothing waits any more
    await second.stop()
    assert list(spool.iterdir()) == []


async def test_a_lost_admission_batch_left_at_shutdown_is_voided_by_the_next_gateway(
    make_gateway: MakeGateway, redis_url: str, tmp_path: Path
) -> None:
    """The call was answered 503 and its batch's reply lost; Redis stays away until the
    gateway has stopped. The next gateway asks void.lua, which finds the debit."""
    spool = tmp_path / "spool"
    first, relay = await behind_relay(
        make_gateway, redis_url, shutdown_grace=0.3, refund_spool_dir=str(spool)
    )
    assert (await first.call()).status == 200  # the key is cached: the next call is batched
    relay.replies = False
    problem(await first.call(), 503, "state-unavailable")
    await relay.cut()
    await first.stop()
    [work] = spooled(spool)
    assert isinstance(work, PendingVoid) and len(work.calls) == 1
    assert await first.balance() == 100_000 - 2 * PRICE  # the lost batch did run

    second = await next_gateway(make_gateway, first, refund_spool_dir=str(spool))
    await until(lambda: second.runtime.metrics.refunds_pending.value == 0, within=15)
    assert await second.balance() == 100_000 - PRICE  # the first call only
    assert [e["t"] for e in await second.events()] == ["d", "d", "r"]
    assert await second.metric("meter_gateway_refunds_total", reason="lost_reply") == 1
    assert await second.metric("meter_gateway_refunds_dropped_total") == 0


async def test_a_live_gateways_refunds_are_not_claimed(
    make_gateway: MakeGateway, redis_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first, relay = await behind_relay(make_gateway, redis_url, refund_spool_dir=str(spool))
    await refund_missed(first, relay)
    second = await next_gateway(make_gateway, first, refund_spool_dir=str(spool))
    assert await second.metric("meter_gateway_refunds_claimed_total") == 0
    assert len(list(spool.glob("*.spool"))) == 2
    await relay.start()
    await until(lambda: first.runtime.metrics.refunds_pending.value == 0, within=15)
    assert await first.balance() == 100_000
    assert [e["t"] for e in await first.events()] == ["d", "r"]
    assert await second.metric("meter_gateway_refunds_total", reason="upstream_5xx") == 0
    await relay.cut()


async def test_a_claimed_refund_past_the_retry_period_is_given_up(
    make_gateway: MakeGateway, redis_url: str, tmp_path: Path
) -> None:
    """The retry period counts from the first failed try, not from the claim: a refund
    tried past it could land after settle.lua's once-per-call marker expired."""
    spool = tmp_path / "spool"
    first, relay = await behind_relay(
        make_gateway, redis_url, shutdown_grace=0.3, refund_spool_dir=str(spool)
    )
    await refund_missed(first, relay)
    await first.stop()  # 0.3 s of grace have passed since the first try
    second = await next_gateway(
        make_gateway, first, refund_spool_dir=str(spool), refund_retry_seconds=0.2
    )
    await until(lambda: second.runtime.metrics.refunds_dropped.value == 1, within=10)
    assert await second.balance() == 100_000 - PRICE  # not given back behind the operator
    assert [e["t"] for e in await second.events()] == ["d"]
    assert spooled(spool) == []


async def test_a_refused_spool_folder_stops_start_up(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(Exception, match=r"METER_REFUND_SPOOL_DIR=.*others may write to it"):
        await make_gateway(refund_spool_dir=str(folder))
