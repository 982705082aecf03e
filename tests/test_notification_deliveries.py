"""From the outbox to a real receiver on loopback: fan-out by filter, retries on the
schedule with the same id, Retry-After, 410 and 5 days of failures disabling an
endpoint (its owners told), redirects not followed, rotation's two signatures, and the
SSRF guard at connect time. The clock is injected, so hours of schedule take no time."""

from __future__ import annotations

import base64
import secrets
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from mail_support import StartSmtp
from notifications_support import Receiver, receiving
from payments_support import ACTOR, Paying

from admin.ids import WEBHOOK_ENDPOINT, new_id
from meter.local_servers import free_port
from meter.settings import Secret
from notifications import deliveries, loop, smtp, webhook_delivery
from notifications.deliveries import Outlet
from notifications.endpoints import EndpointChanges
from payments import outbox


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@pytest.fixture
async def outlet(paying: Paying) -> AsyncIterator[Outlet]:
    settings = paying.settings.replace(webhook_allow_private=True)
    out = Outlet(paying.pool, settings, webhook_delivery.session(True), clock=paying.clock)
    yield out
    await out.http.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r


async def endpoint(
    paying: Paying, account: str, url: str, types: list[str] | None = None, enabled: bool = True
) -> tuple[str, str]:
    """An endpoint made through the webhook endpoints service: (its id, its secret)."""
    hooks = paying.services.webhooks
    made, secret = await hooks.create(ACTOR, account, url=url, event_types=types or [])
    if not enabled:
        await hooks.patch(ACTOR, account, made.id, EndpointChanges(enabled=False))
    return made.id, secret


async def saved_while_public(paying: Paying, account: str, url: str) -> str:
    """An endpoint row whose host resolved to a public address when it was saved (so
    the save-time check passed), written as the service writes it."""
    eid = new_id(WEBHOOK_ENDPOINT)
    await paying.pool.execute(
        "insert into webhook_endpoints (id, account_id, url, secret) values ($1, $2, $3, $4)",
        eid,
        account,
        url,
        new_secret(),
    )
    return eid


async def raise_event(paying: Paying, account: str, type_: str, key: str) -> str:
    async with paying.pool.acquire() as conn, conn.transaction():
        eid = await outbox.raise_event(conn, type_, account, key, {"amount": 5_000_000})
    assert eid is not None
    return eid


async def deliveries_of(paying: Paying, event_id: str) -> list[dict[str, Any]]:
    rows = await paying.pool.fetch(
        "select * from notification_deliveries where event_id = $1 order by endpoint_id", event_id
    )
    return [dict(r) for r in rows]


async def attempts_of(paying: Paying, delivery_id: str) -> list[dict[str, Any]]:
    rows = await paying.pool.fetch(
        "select * from delivery_attempts where delivery_id = $1 order by attempt", delivery_id
    )
    return [dict(r) for r in rows]


async def pump(out: Outlet) -> int:
    """Fan out and send once, as one pass of the loop does."""
    await deliveries.dispatch(out)
    return await deliveries.send_due(out)


async def test_an_event_reaches_each_endpoint_whose_filter_takes_it_once_signed(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    account = await paying.account()
    all_, s_all = await endpoint(paying, account, receiver.url)
    credits, s_credits = await endpoint(paying, account, receiver.url, ["credits.added"])
    await endpoint(paying, account, receiver.url, ["balance.low"])  # filtered out
    await endpoint(paying, account, receiver.url, enabled=False)  # off
    other = await paying.account("Other")
    await endpoint(paying, other, receiver.url)  # another account's
    event = await raise_event(paying, account, "credits.added", "k1")

    assert await pump(outlet) == 2
    assert await pump(outlet) == 0  # nothing twice
    assert [r.id for r in receiver.got] == [event, event]
    secrets_seen = {s for r in receiver.got for s in (s_all, s_credits) if r.verifies_with(s)}
    assert secrets_seen == {s_all, s_credits}
    assert all(not r.verifies_with(new_secret()) for r in receiver.got)
    body = receiver.got[0].json
    assert body["id"] == event and body["type"] == "credits.added"
    assert (body["account_id"], body["data"]) == (account, {"amount": 5_000_000})
    assert body["created_at"].endswith("Z")
    assert body["portal_url"] == paying.settings.portal_public_url.rstrip("/") + "/credits"
    rows = await deliveries_of(paying, event)
    assert sorted(r["endpoint_id"] for r in rows) == sorted([all_, credits])
    assert {(r["status"], r["attempts"]) for r in rows} == {("succeeded", 1)}
    [attempt] = await attempts_of(paying, rows[0]["id"])
    assert (attempt["ok"], attempt["status_code"], attempt["excerpt"]) == (True, 200, "answer 200")


async def test_three_failures_then_success_retry_on_schedule_with_the_same_id(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    clock = paying.clock
    account = await paying.account()
    await endpoint(paying, account, receiver.url)
    event = await raise_event(paying, account, "balance.low", "k2")
    receiver.script = [500, 503, 502]
    assert await pump(outlet) == 1
    [d] = await deliveries_of(paying, event)
    assert d["status"] == "pending"
    for wait, failed in ((5, 2), (300, 3), (1800, 4)):
        # Not before its time: a second early changes nothing.
        due = (d["next_attempt_at"] - outlet.now()).total_seconds()
        assert wait * 0.9 - 1 <= due <= wait * 1.1 + 1
        clock.offset += due - 1
        assert await pump(outlet) == 0
        clock.offset += 1.01
        assert await pump(outlet) == 1
        [d] = await deliveries_of(paying, event)
        assert len(receiver.got) == failed
    assert d["status"] == "succeeded" and d["attempts"] == 4
    assert {r.id for r in receiver.got} == {event}
    log = await attempts_of(paying, d["id"])
    assert [(a["status_code"], a["ok"]) for a in log] == [
        (500, False),
        (503, False),
        (502, False),
        (200, True),
    ]
    assert all(a["error"] for a in log[:3]) and log[3]["error"] is None
    clock.offset += 86_400
    assert await pump(outlet) == 0  # once more after success, never again


async def test_retry_after_on_429_pushes_the_next_try_back(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    account = await paying.account()
    await endpoint(paying, account, receiver.url)
    event = await raise_event(paying, account, "balance.low", "k3")
    receiver.script, receiver.headers = [429], {"Retry-After": "3600"}
    await pump(outlet)
    [d] = await deliveries_of(paying, event)
    assert d["next_attempt_at"] - outlet.now() >= timedelta(seconds=3599)


async def test_410_disables_the_endpoint_cancels_its_queue_and_tells_the_owners(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    account = await paying.account()
    eid, _ = await endpoint(paying, account, receiver.url)
    first = await raise_event(paying, account, "balance.low", "k4")
    receiver.script = [410]
    await deliveries.dispatch(outlet)
    second = await raise_event(paying, account, "credits.added", "k5")
    await deliveries.dispatch(outlet)
    await deliveries.send_due(outlet, limit=1)  # the first only
    row = await paying.pool.fetchrow("select * from webhook_endpoints where id = $1", eid)
    assert (row["enabled"], row["disabled_reason"]) == (False, "the endpoint answered 410 Gone")
    [d1], [d2] = await deliveries_of(paying, first), await deliveries_of(paying, second)
    assert (d1["status"], d2["status"]) == ("failed", "canceled")
    [told] = await paying.events(account, "webhook_endpoint.disabled")
    assert eid in told["data"]
    await pump(outlet)
    assert len(receiver.got) == 1  # nothing more to a disabled endpoint


async def test_five_days_of_failures_disable_the_endpoint(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    account = await paying.account()
    eid, _ = await endpoint(paying, account, receiver.url)
    receiver.script = [500] * 1000
    days = 0
    while days < 8:  # an event a day, each failing (older ones retried meanwhile)
        await raise_event(paying, account, "balance.low", f"k6-{days}")
        await pump(outlet)
        if not await paying.pool.fetchval(
            "select enabled from webhook_endpoints where id = $1", eid
        ):
            break
        paying.clock.offset += 86_400
        days += 1
    assert days == 5  # disabled on the first failure 5 days after the first
    row = await paying.pool.fetchrow("select * from webhook_endpoints where id = $1", eid)
    assert row["enabled"] is False
    assert row["disabled_reason"] == "every delivery failed for 5 days"
    assert len(await paying.events(account, "webhook_endpoint.disabled")) == 1


async def test_a_redirect_is_a_failure_and_is_not_followed(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    account = await paying.account()
    await endpoint(paying, account, receiver.url.replace("/hooks", "/moved"))
    event = await raise_event(paying, account, "balance.low", "k7")
    await pump(outlet)
    [d] = await deliveries_of(paying, event)
    [a] = await attempts_of(paying, d["id"])
    assert (a["status_code"], a["ok"]) == (302, False)
    assert "not followed" in a["error"]
    assert receiver.got == []  # the redirect's target was never asked


async def test_during_a_rotation_both_secrets_verify_and_after_it_only_the_new(
    paying: Paying, outlet: Outlet, receiver: Receiver
) -> None:
    account = await paying.account()
    eid, old = await endpoint(paying, account, receiver.url)
    _, new = await paying.services.webhooks.rotate_secret(ACTOR, account, eid)
    await raise_event(paying, account, "balance.low", "k8")
    await pump(outlet)
    await paying.pool.execute(  # the 24 hours are over
        "update webhook_endpoints set previous_expires_at = $1", outlet.now()
    )
    await raise_event(paying, account, "balance.low", "k9")
    await pump(outlet)
    during, after = receiver.got
    assert during.verifies_with(old) and during.verifies_with(new)
    assert after.verifies_with(new) and not after.verifies_with(old)


class Answers(AbstractResolver):
    """A DNS the test controls: every name resolves to ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked += 1
        return [
            ResolveResult(
                hostname=host,
                host=self.address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_name_that_now_resolves_to_loopback_is_refused_at_connect(
    paying: Paying, receiver: Receiver, allow_private: bool
) -> None:
    """Saved while it resolved elsewhere; at delivery it answers 127.0.0.1."""
    dns = Answers("127.0.0.1")
    settings = paying.settings.replace(webhook_allow_private=allow_private)
    out = Outlet(
        paying.pool, settings, webhook_delivery.session(allow_private, dns), clock=paying.clock
    )
    account = await paying.account()
    port = receiver.url.split(":")[2].split("/")[0]
    await saved_while_public(paying, account, f"http://hooks.customer.example:{port}/hooks")
    event = await raise_event(paying, account, "balance.low", "k10")
    try:
        await pump(out)
    finally:
        await out.http.close()
    [d] = await deliveries_of(paying, event)
    [a] = await attempts_of(paying, d["id"])
    assert dns.asked == 1
    if allow_private:
        assert a["ok"] and len(receiver.got) == 1
    else:
        assert not a["ok"] and "loopback" in a["error"] and "target refused" in a["error"]
        assert receiver.got == [] and d["status"] == "pending"


async def test_a_card_is_told_expiring_once_a_month_before(paying: Paying, outlet: Outlet) -> None:
    account = await paying.account()
    pm = await paying.card(account)
    card = await paying.pool.fetchrow(
        "select exp_month, exp_year from payment_methods where id = $1", pm
    )
    first = datetime(card["exp_year"], card["exp_month"], 1, tzinfo=UTC)
    expires = (first + timedelta(days=32)).replace(day=1)  # valid through its month

    def at(moment: datetime) -> None:
        paying.clock.offset = moment.timestamp() - time.time()

    at(expires - timedelta(days=41))
    assert await loop.expiring_cards(outlet) == 0
    at(expires - timedelta(days=26))
    assert await loop.expiring_cards(outlet) == 1
    assert await loop.expiring_cards(outlet) == 0
    at(expires + timedelta(days=1))  # expired: no longer "expiring"
    assert await loop.expiring_cards(outlet) == 0
    [event] = await paying.events(account, "payment_method.expiring")
    assert pm in event["data"] and str(card["exp_year"]) in event["data"]


async def mail_outlet(paying: Paying, port: int) -> Outlet:
    settings = paying.settings.replace(smtp_url=Secret(f"smtp://127.0.0.1:{port}"))
    address = smtp.address_of(settings)
    assert address is not None
    mailer = deliveries.SmtpMailer(paying.pool, settings, address)
    return Outlet(
        paying.pool, settings, webhook_delivery.session(True), mailer=mailer, clock=paying.clock
    )


async def test_an_email_refused_for_good_fails_and_one_not_reached_is_retried(
    paying: Paying, smtp_server: StartSmtp
) -> None:
    server = smtp_server()
    account = await paying.account()  # billing@acme.test gets balance.low
    server.inbox.refuse = "550 5.1.1 no such mailbox"
    out = await mail_outlet(paying, server.port)
    try:
        refused = await raise_event(paying, account, "balance.low", "m1")
        await pump(out)
        [d] = await deliveries_of(paying, refused)
        assert (d["channel"], d["recipient"], d["status"]) == (
            "email",
            "billing@acme.test",
            "failed",
        )
        assert "550" in d["last_error"]
        server.inbox.refuse = None
        delivered = await raise_event(paying, account, "balance.low", "m2")
        await pump(out)
        [message] = await server.inbox.wait_for(1)
        assert message["X-Meter-Event-Id"] == delivered
        assert message["To"] == "billing@acme.test"
    finally:
        await out.http.close()
    closed = await mail_outlet(paying, free_port())  # nobody listens there
    try:
        lost = await raise_event(paying, account, "balance.low", "m3")
        await pump(closed)
        [d] = await deliveries_of(paying, lost)
        assert d["status"] == "pending" and d["attempts"] == 1 and d["last_error"]
    finally:
        await closed.http.close()
