"""Deliveries with real ledger worker processes: a worker SIGKILLed while the receiver
holds its request, or at either side of the send, loses nothing. The event arrives (at
least once, always under the same ``webhook-id``) and the log ends in success."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from ledger_fixtures import wait_for
from notifications_support import receiving
from payments_support import Paying
from test_notification_deliveries import deliveries_of, endpoint, raise_event
from test_payments_faults import wait_exit, workers

FAST = {"webhook_allow_private": True, "delivery_lease": 1.0, "payments_sweep_interval": 0.1}


async def succeeded(paying: Paying, event: str) -> bool:
    rows = await deliveries_of(paying, event)
    return [r["status"] for r in rows] == ["succeeded"]


async def test_a_worker_killed_mid_delivery_loses_nothing(paying: Paying, tmp_path: Path) -> None:
    settings = paying.settings.replace(**FAST)
    account = await paying.account()
    async with receiving() as receiver:
        await endpoint(paying, account, receiver.url)
        receiver.hold = asyncio.Event()
        log = tmp_path / "workers.log"
        with workers(settings, log) as [first]:
            event = await raise_event(paying, account, "balance.low", "kill")
            await receiver.wait_count(1, 30)
            first.send_signal(signal.SIGKILL)
            assert await wait_exit(first, 10) == -signal.SIGKILL
        receiver.hold.set()
        with workers(settings, log, n=2):
            await receiver.wait_count(2, 30)
            await wait_for(lambda: succeeded(paying, event), 30, "the delivery recorded")
        assert {r.id for r in receiver.got} == {event}
        assert len(receiver.got) == 2


@pytest.mark.parametrize(
    ("point", "sent"), [("delivery_before_send", 1), ("delivery_after_send", 2)]
)
async def test_a_worker_killed_at_either_side_of_the_send_loses_nothing(
    paying: Paying, tmp_path: Path, point: str, sent: int
) -> None:
    settings = paying.settings.replace(**FAST)
    account = await paying.account()
    async with receiving() as receiver:
        await endpoint(paying, account, receiver.url)
        log = tmp_path / "workers.log"
        crash = {"METER_LEDGER_CRASH_POINTS": point, "METER_LEDGER_CRASH_PROBABILITY": "1"}
        with workers(settings, log, **crash) as [doomed]:
            event = await raise_event(paying, account, "balance.low", point)
            assert await wait_exit(doomed, 30) == -signal.SIGKILL
        assert len(receiver.got) == sent - 1
        [d] = await deliveries_of(paying, event)
        assert d["status"] == "pending" and d["lease_until"] is not None
        with workers(settings, log):
            await wait_for(lambda: succeeded(paying, event), 30, "the delivery recorded")
        assert len(receiver.got) == sent
        assert {r.id for r in receiver.got} == {event}
