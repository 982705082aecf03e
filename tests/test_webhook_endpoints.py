"""Webhook endpoints (notifications/endpoints.py) against a real Postgres.

The service is called as the admin API and the portal call it, with a clock the
test sets and the one I/O seam it has, the DNS resolver, answered by the test
(``Dns``: names the test gives addresses; no lookup leaves the machine). Nothing
is sent here: deliveries are rows that the sender loop sends.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from notifications_support import receiving
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from test_admin_support import NOW, Clock

from admin import ids
from admin import repository as repo
from admin.access import SYSTEM
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from meter.settings import Settings
from notifications import deliveries, webhook_delivery
from notifications.deliveries import Outlet
from notifications.endpoint_records import ROTATION_OVERLAP, signing_secrets
from notifications.endpoints import (
    MAX_ENDPOINTS,
    DeliveryPending,
    EndpointChanges,
    EndpointDisabled,
    TooManyEndpoints,
    WebhookEndpoints,
)
from notifications.events import EVENT_TYPES, TEST_EVENT
from notifications.webhook_delivery import signature

ACTOR = Actor(SYSTEM, "test-request")
PUBLIC = "https://hooks.example.com/meter"  # resolves to a public address (Dns below)
NAMES = {
    "hooks.example.com": ["1.1.1.1", "2606:4700:4700::1111"],
    "mixed.example.com": ["127.0.0.1", "1.1.1.1"],
    "loopback.example.com": ["127.0.0.1", "::1"],
    "metadata.example.com": ["169.254.169.254"],
    "private.example.com": ["10.0.0.7"],
}


class Dns(AbstractResolver):
    """The DNS the test controls: each name its addresses; any other does not resolve."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host}: name not known")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.names[host]
        ]

    async def close(self) -> None:
        pass


@dataclass
class Hooks:
    pool: asyncpg.Pool
    clock: Clock
    dns: Dns
    service: WebhookEndpoints
    account: str
    other: str  # another account

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now, UTC)

    def with_private(self) -> WebhookEndpoints:
        settings = Settings.from_env({}, webhook_allow_private=True)
        return WebhookEndpoints(self.pool, settings, self.clock, resolver=self.dns)

    async def create(self, account: str | None = None, **fields: Any) -> tuple[str, str]:
        endpoint, secret = await self.service.create(
            ACTOR, account or self.account, **{"url": PUBLIC, **fields}
        )
        return endpoint.id, secret

    async def row(self, endpoint_id: str) -> asyncpg.Record:
        return await self.pool.fetchrow(
            "select * from webhook_endpoints where id = $1", endpoint_id
        )

    async def counts(self) -> tuple[int, int, int, int]:
        """What a refused call must leave as it was."""
        return (
            await self.pool.fetchval("select count(*) from webhook_endpoints"),
            await self.pool.fetchval("select count(*) from notification_deliveries"),
            await self.pool.fetchval("select count(*) from outbox_events"),
            await self.pool.fetchval("select count(*) from audit_log"),
        )

    async def fail(self, delivery_id: str, attempts: int = 1) -> None:
        """What the sender leaves after ``attempts`` failed tries and no more to come."""
        for n in range(1, attempts + 1):
            await self.pool.execute(
                "insert into delivery_attempts (delivery_id, attempt, started_at, status_code,"
                " latency_ms, ok, error, excerpt) values ($1, $2, $3, 500, 12.5, false,"
                " 'answered 500', 'oops')",
                delivery_id,
                n,
                self.now(),
            )
        await self.pool.execute(
            "update notification_deliveries set status = 'failed', attempts = $2,"
            " finished_at = $3, last_error = 'answered 500' where id = $1",
            delivery_id,
            attempts,
            self.now(),
        )


@pytest.fixture
async def hooks(database_url: str) -> AsyncIterator[Hooks]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    clock = Clock()
    dns = Dns(NAMES)
    service = WebhookEndpoints(pool, Settings.from_env({}), clock, resolver=dns)
    a, b = ids.new_id(ids.ACCOUNT), ids.new_id(ids.ACCOUNT)
    for account_id, name in ((a, "Acme"), (b, "Other")):
        await repo.insert_account(pool, account_id, name, None, 0)
    try:
        yield Hooks(pool, clock, dns, service, a, b)
    finally:
        await pool.close()


def decoded(secret: str) -> bytes:
    assert secret.startswith("whsec_")
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


# -- secrets ----------------------------------------------------------------------------


async def test_the_secret_is_whsec_and_32_random_bytes_and_is_shown_only_once(
    hooks: Hooks,
) -> None:
    first, secret = await hooks.create(description="Production")
    _, another = await hooks.create()
    assert len(decoded(secret)) == 32 and decoded(secret) != decoded(another)
    assert (await hooks.row(first))["secret"] == secret  # kept, to sign with
    shown = [await hooks.service.endpoint(hooks.account, first)]
    shown += await hooks.service.endpoints(hooks.account)
    for endpoint in shown:
        assert secret not in repr(endpoint) and another not in repr(endpoint)
    assert shown[0].secret_prefix == secret[:10] and shown[0].rotating_until is None
    logged = await hooks.pool.fetch("select before, after from audit_log")
    assert len(logged) == 2 and all(secret not in str(r["after"]) for r in logged)
    # The library a receiver uses verifies what is signed with it.
    body, at = b'{"id":"evt_1"}', datetime.now(UTC)
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature([secret], "evt_1", at, body),
    }
    assert Webhook(secret).verify(body, headers) == {"id": "evt_1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(another).verify(body, headers)


async def test_a_rotation_signs_with_both_secrets_for_24_hours_then_with_the_new_one(
    hooks: Hooks,
) -> None:
    endpoint_id, old = await hooks.create()
    rotated, new = await hooks.service.rotate_secret(ACTOR, hooks.account, endpoint_id)
    assert new != old and len(decoded(new)) == 32 and rotated.secret_prefix == new[:10]
    assert rotated.rotating_until == hooks.now() + ROTATION_OVERLAP
    row = await hooks.row(endpoint_id)
    body, msg = b'{"type":"balance.low"}', "evt_rotation"

    def verifying(at: datetime) -> list[str]:
        """Which of the two secrets verify a delivery signed as the sender signs at ``at``."""
        sent = datetime.now(UTC)  # the header's timestamp: the receiver checks it is recent
        headers = {
            "webhook-id": msg,
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": signature(signing_secrets(row, at), msg, sent, body),
        }
        ok = []
        for name, secret in (("old", old), ("new", new)):
            try:
                Webhook(secret).verify(body, headers)
                ok.append(name)
            except WebhookVerificationError:
                pass
        return ok

    assert verifying(hooks.now()) == ["old", "new"]
    assert verifying(hooks.now() + ROTATION_OVERLAP - timedelta(seconds=1)) == ["old", "new"]
    assert verifying(hooks.now() + ROTATION_OVERLAP) == ["new"]
    hooks.clock.now = NOW + ROTATION_OVERLAP.total_seconds()
    assert (await hooks.service.endpoint(hooks.account, endpoint_id)).rotating_until is None


async def test_a_second_rotation_ends_the_first_ones_overlap(hooks: Hooks) -> None:
    endpoint_id, first = await hooks.create()
    _, second = await hooks.service.rotate_secret(ACTOR, hooks.account, endpoint_id)
    hooks.clock.now += 3600
    _, third = await hooks.service.rotate_secret(ACTOR, hooks.account, endpoint_id)
    row = await hooks.row(endpoint_id)
    assert signing_secrets(row, hooks.now()) == [third, second]
    assert first not in signing_secrets(row, hooks.now())


# -- what may be saved --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("http://10.1.2.3:8080/hook", "10.1.2.3 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1 is a loopback address"),
        ("http://100.64.0.1/hook", "100.64.0.1 is a carrier-grade NAT address"),
        ("http://0.0.0.0/hook", "0.0.0.0 is the unspecified address"),
        ("http://loopback.example.com/hook", "resolves to no public address"),
        ("http://metadata.example.com/hook", "169.254.169.254 is a cloud metadata address"),
        ("http://nowhere.example.com/hook", "nowhere.example.com does not resolve"),
        ("http://user:pw@hooks.example.com/hook", "must not carry credentials"),
        ("ftp://hooks.example.com/hook", "must be http or https"),
        ("https://hooks.example.com:99999/", "not a URL"),
        ("https:///no-host", "has no host"),
    ],
)
async def test_a_url_that_may_not_receive_webhooks_is_refused_when_saved(
    hooks: Hooks, url: str, why: str
) -> None:
    endpoint_id, _ = await hooks.create()
    before = await hooks.counts()
    with pytest.raises(InvalidInput) as refused:
        await hooks.create(url=url)
    (field, message), *more = refused.value.errors
    assert (field, more) == ("url", []) and why in message, refused.value.errors
    with pytest.raises(InvalidInput) as patched:
        await hooks.service.patch(ACTOR, hooks.account, endpoint_id, EndpointChanges(url=url))
    assert [f for f, _ in patched.value.errors] == ["url"]
    assert await hooks.counts() == before
    assert (await hooks.row(endpoint_id))["url"] == PUBLIC


async def test_a_name_the_system_resolver_cannot_encode_is_a_field_error(hooks: Hooks) -> None:
    """No lookup is made: IDNA refuses a label of 64 characters before any query."""
    system = WebhookEndpoints(hooks.pool, Settings.from_env({}), hooks.clock)
    host = "a" * 64 + ".example.com"
    with pytest.raises(InvalidInput) as refused:
        await system.create(ACTOR, hooks.account, url=f"https://{host}/hook")
    assert refused.value.errors == [("url", f"{host} is not a host name")]


async def test_a_name_with_one_public_address_is_saved(hooks: Hooks) -> None:
    """The sender connects only to the public ones (webhook_delivery.GuardedResolver)."""
    endpoint_id, _ = await hooks.create(url="https://mixed.example.com/hook")
    assert (await hooks.row(endpoint_id))["url"] == "https://mixed.example.com/hook"
    assert "mixed.example.com" in hooks.dns.asked


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://10.1.2.3/hook",
        "http://[::1]:9000/hook",
        "http://loopback.example.com/hook",
        "http://private.example.com/hook",
    ],
)
async def test_private_targets_are_saved_where_the_deployment_allows_them(
    hooks: Hooks, url: str
) -> None:
    endpoint, _ = await hooks.with_private().create(ACTOR, hooks.account, url=url)
    assert (await hooks.row(endpoint.id))["url"] == url


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://metadata.example.com/"]
)
async def test_cloud_metadata_stays_refused_with_private_targets_allowed(
    hooks: Hooks, url: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        await hooks.with_private().create(ACTOR, hooks.account, url=url)
    assert refused.value.errors == [("url", refused.value.errors[0][1])]
    assert "cloud metadata" in refused.value.errors[0][1]
    assert await hooks.pool.fetchval("select count(*) from webhook_endpoints") == 0


async def test_every_bad_field_is_named_at_once_and_nothing_is_saved(hooks: Hooks) -> None:
    with pytest.raises(InvalidInput) as refused:
        await hooks.create(
            url="ftp://x", description="d" * 201, event_types=["balance.low", "no.such"]
        )
    assert [f for f, _ in refused.value.errors] == ["url", "description", "event_types"]
    assert "'no.such'" in refused.value.errors[2][1]
    assert await hooks.counts() == (0, 0, 0, 0)


async def test_the_event_filter_is_kept_once_each_in_the_catalogues_order(hooks: Hooks) -> None:
    wanted = ["recharge.failed", "balance.low", "recharge.failed"]
    endpoint_id, _ = await hooks.create(event_types=wanted, description="d" * 200)
    assert (await hooks.row(endpoint_id))["event_types"] == ["balance.low", "recharge.failed"]
    every, _ = await hooks.create()
    assert (await hooks.row(every))["event_types"] == []  # every event
    assert set(EVENT_TYPES) >= {"balance.low", "recharge.failed"}


async def test_an_account_has_at_most_its_share_of_endpoints(hooks: Hooks) -> None:
    made = [(await hooks.create())[0] for _ in range(MAX_ENDPOINTS)]
    with pytest.raises(TooManyEndpoints):
        await hooks.create()
    await hooks.create(account=hooks.other)  # another account's share is its own
    await hooks.service.delete(ACTOR, hooks.account, made[0])
    await hooks.create()
    assert len(await hooks.service.endpoints(hooks.account)) == MAX_ENDPOINTS


# -- changes ------------------------------------------------------------------------------


async def test_enabling_again_clears_why_it_was_disabled_and_its_failing_streak(
    hooks: Hooks,
) -> None:
    endpoint_id, _ = await hooks.create(description="first")
    off = await hooks.service.patch(
        ACTOR, hooks.account, endpoint_id, EndpointChanges(enabled=False)
    )
    assert (off.enabled, off.disabled_reason) == (False, "disabled by system")
    await hooks.pool.execute(  # as the sender leaves an endpoint it gave up on
        "update webhook_endpoints set disabled_reason = 'the endpoint answered 410 Gone',"
        " failing_since = $2 where id = $1",
        endpoint_id,
        hooks.now() - timedelta(days=5),
    )
    on = await hooks.service.patch(
        ACTOR,
        hooks.account,
        endpoint_id,
        EndpointChanges(enabled=True, description=None, event_types=["balance.low"]),
    )
    assert (on.enabled, on.disabled_reason, on.failing_since) == (True, None, None)
    assert (on.description, on.event_types) == (None, ("balance.low",))
    audited = await hooks.pool.fetch(
        "select action from audit_log where object_id = $1 order by id", endpoint_id
    )
    assert [r["action"] for r in audited] == [
        "webhook_endpoint.create",
        "webhook_endpoint.update",
        "webhook_endpoint.update",
    ]
    same = await hooks.service.patch(ACTOR, hooks.account, endpoint_id, EndpointChanges())
    assert same == on
    assert await hooks.pool.fetchval("select count(*) from audit_log") == 3


async def test_another_accounts_endpoint_is_not_found_as_a_missing_one_is(hooks: Hooks) -> None:
    theirs, _ = await hooks.create(account=hooks.other)
    delivery = await hooks.service.send_test(ACTOR, hooks.other, theirs)
    mine, _ = await hooks.create()
    missing = ids.new_id(ids.WEBHOOK_ENDPOINT)
    s, a = hooks.service, hooks.account
    calls = {
        "endpoint": lambda e: s.endpoint(a, e),
        "patch": lambda e: s.patch(ACTOR, a, e, EndpointChanges(enabled=False)),
        "delete": lambda e: s.delete(ACTOR, a, e),
        "rotate": lambda e: s.rotate_secret(ACTOR, a, e),
        "deliveries": lambda e: s.deliveries(a, e, limit=10),
        "test": lambda e: s.send_test(ACTOR, a, e),
        "retry": lambda e: s.retry_delivery(ACTOR, a, e, delivery.id),
    }
    before = await hooks.counts()
    for name, run in calls.items():
        for endpoint_id in (theirs, missing, "we_bad-shape", "not-an-id"):
            with pytest.raises(NotFound) as found:
                await run(endpoint_id)
            assert found.value.detail == f"no webhook endpoint {endpoint_id!r}", name
    # Their delivery through my endpoint: no such delivery, exactly as a made-up one.
    for delivery_id in (delivery.id, ids.new_id(ids.DELIVERY), "dlv_x;"):
        with pytest.raises(NotFound) as found:
            await s.retry_delivery(ACTOR, a, mine, delivery_id)
        assert found.value.detail == f"no delivery {delivery_id!r}"
    assert await hooks.counts() == before
    theirs_row = await hooks.row(theirs)
    assert (theirs_row["enabled"], theirs_row["deleted_at"]) == (True, None)


# -- deliveries ---------------------------------------------------------------------------


async def test_a_test_event_is_one_dispatched_event_and_one_delivery_due_now(
    hooks: Hooks,
) -> None:
    endpoint_id, _ = await hooks.create(event_types=["balance.low"])  # tests ignore filters
    first = await hooks.service.send_test(ACTOR, hooks.account, endpoint_id)
    second = await hooks.service.send_test(ACTOR, hooks.account, endpoint_id)
    events = await hooks.pool.fetch("select * from outbox_events order by dedupe_key")
    assert [e["type"] for e in events] == [TEST_EVENT, TEST_EVENT]
    assert len({e["dedupe_key"] for e in events}) == 2
    assert all(e["dispatched_at"] is not None for e in events)  # the dispatcher skips it
    assert all(e["account_id"] == hooks.account for e in events)
    rows = await hooks.pool.fetch("select * from notification_deliveries order by id")
    assert {r["id"] for r in rows} == {first.id, second.id}
    for r in rows:
        assert (r["channel"], r["endpoint_id"], r["status"]) == ("webhook", endpoint_id, "pending")
        assert (r["next_attempt_at"], r["attempts"], r["recipient"]) == (hooks.now(), 0, None)
        assert r["event_id"] in {e["id"] for e in events}
    assert (first.event_type, first.status, first.attempt_log) == (TEST_EVENT, "pending", ())
    audited = await hooks.pool.fetchval(
        "select count(*) from audit_log where action = 'webhook_endpoint.test'"
    )
    assert audited == 2


async def test_retry_makes_a_finished_delivery_due_now_and_refuses_a_pending_one(
    hooks: Hooks,
) -> None:
    endpoint_id, _ = await hooks.create()
    delivery = await hooks.service.send_test(ACTOR, hooks.account, endpoint_id)
    with pytest.raises(DeliveryPending):
        await hooks.service.retry_delivery(ACTOR, hooks.account, endpoint_id, delivery.id)
    await hooks.fail(delivery.id, attempts=2)
    hooks.clock.now += 7200
    again = await hooks.service.retry_delivery(ACTOR, hooks.account, endpoint_id, delivery.id)
    assert (again.status, again.next_attempt_at, again.finished_at) == (
        "pending",
        hooks.now(),
        None,
    )
    assert again.attempts == 2 and len(again.attempt_log) == 2  # the log is kept
    row = await hooks.pool.fetchrow(
        "select * from notification_deliveries where id = $1", delivery.id
    )
    assert (row["status"], row["next_attempt_at"], row["event_id"]) == (
        "pending",
        hooks.now(),
        delivery.event_id,  # the same webhook-id as before
    )
    await hooks.pool.execute(
        "update notification_deliveries set status = 'succeeded' where id = $1", delivery.id
    )
    await hooks.service.patch(ACTOR, hooks.account, endpoint_id, EndpointChanges(enabled=False))
    before = await hooks.counts()
    with pytest.raises(EndpointDisabled):
        await hooks.service.retry_delivery(ACTOR, hooks.account, endpoint_id, delivery.id)
    with pytest.raises(EndpointDisabled):
        await hooks.service.send_test(ACTOR, hooks.account, endpoint_id)
    assert await hooks.counts() == before
    assert isinstance(EndpointDisabled(), Conflict) and EndpointDisabled.status == 409


async def test_deleting_an_endpoint_cancels_only_its_pending_deliveries(hooks: Hooks) -> None:
    endpoint_id, _ = await hooks.create()
    kept_id, _ = await hooks.create()
    done = await hooks.service.send_test(ACTOR, hooks.account, endpoint_id)
    waiting = await hooks.service.send_test(ACTOR, hooks.account, endpoint_id)
    other = await hooks.service.send_test(ACTOR, hooks.account, kept_id)
    await hooks.fail(done.id)
    deleted = await hooks.service.delete(ACTOR, hooks.account, endpoint_id)
    assert deleted.id == endpoint_id
    statuses = dict(await hooks.pool.fetch("select id, status from notification_deliveries"))
    assert statuses == {done.id: "failed", waiting.id: "canceled", other.id: "pending"}
    assert [e.id for e in await hooks.service.endpoints(hooks.account)] == [kept_id]
    with pytest.raises(NotFound):
        await hooks.service.endpoint(hooks.account, endpoint_id)
    with pytest.raises(NotFound):
        await hooks.service.delete(ACTOR, hooks.account, endpoint_id)
    row = await hooks.row(endpoint_id)
    assert row["deleted_at"] is not None and row["enabled"] is False
    canceled = await hooks.pool.fetchrow(
        "select * from notification_deliveries where id = $1", waiting.id
    )
    assert canceled["finished_at"] is not None and canceled["lease_until"] is None


async def test_the_delivery_log_pages_newest_first_with_every_attempt(hooks: Hooks) -> None:
    endpoint_id, _ = await hooks.create()
    made = []
    for _ in range(5):
        made.append(await hooks.service.send_test(ACTOR, hooks.account, endpoint_id))
        hooks.clock.now += 1
    await hooks.fail(made[0].id, attempts=3)
    first, cursor = await hooks.service.deliveries(hooks.account, endpoint_id, limit=3)
    assert [d.id for d in first] == [d.id for d in reversed(made)][:3] and cursor == first[-1].id
    rest, end = await hooks.service.deliveries(hooks.account, endpoint_id, limit=3, before=cursor)
    assert [d.id for d in rest] == [made[1].id, made[0].id] and end is None
    oldest = rest[-1]
    assert (oldest.status, oldest.attempts, oldest.last_error) == ("failed", 3, "answered 500")
    assert [a.attempt for a in oldest.attempt_log] == [1, 2, 3]
    attempt = oldest.attempt_log[0]
    assert (attempt.status_code, attempt.latency_ms, attempt.ok) == (500, 12.5, False)
    assert (attempt.error, attempt.excerpt, attempt.started_at) == (
        "answered 500",
        "oops",
        hooks.now(),
    )


# -- with the sender ----------------------------------------------------------------------


async def test_the_sender_delivers_a_test_event_and_a_retry_with_both_secrets(
    hooks: Hooks,
) -> None:
    """The rows written here are the ones the ledger worker's sender sends."""
    hooks.clock.now = time.time()  # the receiver checks the signature's timestamp
    service = hooks.with_private()
    settings = Settings.from_env({}, webhook_allow_private=True)
    out = Outlet(hooks.pool, settings, webhook_delivery.session(True), clock=hooks.clock)
    try:
        async with receiving() as receiver:
            endpoint, old = await service.create(ACTOR, hooks.account, url=receiver.url)
            _, new = await service.rotate_secret(ACTOR, hooks.account, endpoint.id)
            sent = await service.send_test(ACTOR, hooks.account, endpoint.id)
            assert await deliveries.send_due(out) == 1
            await service.retry_delivery(ACTOR, hooks.account, endpoint.id, sent.id)
            assert await deliveries.send_due(out) == 1
            first, again = await receiver.wait_count(2)
    finally:
        await out.http.close()
    assert first.id == again.id == sent.event_id  # the same webhook-id on the retry
    assert first.json["type"] == TEST_EVENT and first.json["data"]["endpoint_id"] == endpoint.id
    assert all(r.verifies_with(old) and r.verifies_with(new) for r in (first, again))
    (logged,), _ = await service.deliveries(hooks.account, endpoint.id, limit=5)
    assert (logged.status, logged.attempts) == ("succeeded", 2)
    assert [(a.attempt, a.status_code, a.ok) for a in logged.attempt_log] == [
        (1, 200, True),
        (2, 200, True),
    ]
    assert logged.attempt_log[0].excerpt == "answer 200"
