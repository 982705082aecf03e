"""Real traffic through the gateway, booked by two ledger worker processes, tells each
threshold and the daily budget once: one signed webhook each at a real receiver and one
email each at a real SMTP server (aiosmtpd), and the same again the next UTC day (the
gateway's clock moved), not before."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import aiohttp
from ledger_fixtures import wait_for
from mail_support import StartSmtp
from notifications_support import Receiver, receiving
from payments_support import ACTOR, USD, Paying
from test_notification_deliveries import endpoint
from test_payments_faults import upstream_url, workers

from admin import models
from gateway.testing import running_gateway
from meter.money import money
from meter.settings import Secret
from notifications.spend import SpendChange
from notifications.thresholds import PERCENT, Threshold

FIXTURES = (upstream_url,)
USAGE = ["usage.daily_threshold_passed", "usage.daily_limit_reached"]


async def calls(base: str, key: str, n: int) -> list[tuple[int, int]]:
    async with aiohttp.ClientSession() as http:
        out = []
        for _ in range(n):
            async with http.post(
                base + "/v1/chat/completions",
                data=b"{}",
                headers={"Authorization": f"Bearer {key}"},
            ) as r:
                await r.read()
                out.append((r.status, int(r.headers.get("X-Meter-Charged", "0"))))
        return out


def told(receiver: Receiver) -> Counter[tuple[str, int | None]]:
    return Counter((r.json["type"], r.json["data"].get("threshold")) for r in receiver.got)


async def test_each_threshold_and_the_budget_are_told_once_a_day(
    paying: Paying, upstream_url: str, tmp_path: Path, smtp_server: StartSmtp
) -> None:
    server = smtp_server()
    settings = paying.settings.replace(
        upstream_url=upstream_url,
        webhook_allow_private=True,
        payments_sweep_interval=0.1,
        smtp_url=Secret(f"smtp://127.0.0.1:{server.port}"),
    )
    account = await paying.account(credit=100 * USD)
    project = await paying.services.provisioning.create_project(
        ACTOR, account, models.NewProject(name="web")
    )
    key = (await paying.services.provisioning.create_api_key(ACTOR, project.id)).value.secret
    async with receiving() as receiver:
        await endpoint(paying, account, receiver.url, USAGE)
        with workers(settings, tmp_path / "workers.log", n=2):
            async with running_gateway(settings, clock=paying.clock) as (base, _):
                [(status, price)] = await calls(base, key, 1)
                assert status == 200 and price > 0
                await paying.services.spend.put(
                    ACTOR,
                    account,
                    SpendChange(True, 10 * price, (Threshold(PERCENT, 50), Threshold(PERCENT, 80))),
                )
                got = await calls(base, key, 11)
                assert [s for s, _ in got] == [200] * 9 + [429] * 2
                await receiver.wait_count(3, 30)
                expected = {
                    ("usage.daily_threshold_passed", 5 * price): 1,
                    ("usage.daily_threshold_passed", 8 * price): 1,
                    ("usage.daily_limit_reached", None): 1,
                }
                assert told(receiver) == expected
                mails = await server.inbox.wait_for(3)
                assert sorted(m["X-Meter-Event-Id"] for m in mails) == sorted(
                    r.id for r in receiver.got
                )

                paying.clock.offset += 86_400  # the next UTC day
                got = await calls(base, key, 10)
                assert [s for s, _ in got] == [200] * 10
                await receiver.wait_count(6, 30)
                await server.inbox.wait_for(6)
                await wait_for(lambda: _all_sent(paying), 30, "every delivery settled")
    assert told(receiver) == {k: 2 for k in expected}
    assert len({r.id for r in receiver.got}) == 6
    secret = await _secret(paying, account)
    assert all(r.verifies_with(secret) for r in receiver.got)
    days = sorted({r.json["data"]["day"] for r in receiver.got})
    assert len(days) == 2 and days[1] == days[0] + 1
    # Each event mailed once, to the billing address, in dollars, with the portal's page.
    received = server.inbox.received
    assert len(received) == 6
    assert {m.message["X-Meter-Event-Id"] for m in received} == {r.id for r in receiver.got}
    assert {tuple(m.recipients) for m in received} == {("billing@acme.test",)}
    threshold = next(
        m.message
        for m in received
        if m.message["X-Meter-Event-Type"] == "usage.daily_threshold_passed"
    )
    text = threshold.get_body(("plain",)).get_content()
    assert money(8 * price) in text or money(5 * price) in text
    assert "/spend-management" in text


async def _all_sent(paying: Paying) -> bool:
    left = await paying.pool.fetchval(
        "select count(*) from notification_deliveries where status <> 'succeeded'"
    )
    return bool(left == 0)


async def _secret(paying: Paying, account: str) -> str:
    secret: str = await paying.pool.fetchval(
        "select secret from webhook_endpoints where account_id = $1", account
    )
    return secret
