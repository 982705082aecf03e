"""From the outbox to people and systems: fan-out, then sends that lose nothing.

``dispatch`` claims outbox events not yet fanned out (``FOR UPDATE SKIP LOCKED``) and,
in the same transaction, writes one delivery per webhook endpoint whose filter takes
the type and one per email recipient, then marks the events dispatched. ``send_due``
claims due deliveries by a lease (``METER_DELIVERY_LEASE``) under ``SKIP LOCKED``,
sends them outside any transaction, and records each attempt: success ends the
delivery; a failure schedules the next try (``retry_schedule``) or gives up, and may
disable the endpoint, which tells its owners. A worker killed mid-send leaves the
delivery leased; when the lease runs out another worker sends it again under the same
``webhook-id`` (at least once; receivers dedupe by the id).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, Protocol

import asyncpg
import orjson

from admin.ids import DELIVERY, new_id
from admin.repository import Conn
from billing import invoices, render
from ledger.crash import CrashHook
from meter.settings import Settings
from notifications import events, mail, preferences, retry_schedule, smtp, webhook_delivery
from notifications.endpoint_records import signing_secrets
from notifications.metrics import NotificationMetrics
from notifications.webhook_delivery import Attempt
from payments import outbox

log = logging.getLogger("meter.notifications")

CLAIM = 100
SEND_AT_ONCE = 16


class Mailer(Protocol):
    """Email as the deliveries see it (notifications.mail and .smtp behind it)."""

    async def recipients(self, conn: Conn, account_id: str, type_: str) -> list[str]: ...

    async def send(self, event: dict[str, Any], recipient: str, message_id: str) -> Attempt: ...


@dataclass
class Outlet:
    """What the delivery loop sends with (one per process)."""

    pool: asyncpg.Pool
    settings: Settings
    http: Any  # aiohttp.ClientSession from webhook_delivery.session
    mailer: Mailer | None = None
    clock: Callable[[], float] = time.time
    metrics: NotificationMetrics = field(default_factory=NotificationMetrics)
    crash: CrashHook = field(default_factory=CrashHook)
    rng: random.Random = field(default_factory=random.Random)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


# Events whose email carries the invoice (data.invoice_id) as a PDF.
INVOICE_ATTACHED = frozenset({"invoice.finalized"})


class SmtpMailer:
    """Email through ``METER_SMTP_URL``: recipients from the notification preferences,
    messages from the templates (an invoice's event with its PDF attached); a 5xx is
    permanent, anything else is tried again."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, address: smtp.SmtpAddress) -> None:
        self.pool = pool
        self.settings = settings
        self.address = address
        self.tls_context: ssl.SSLContext | None = None  # a private CA's, for tests

    async def recipients(self, conn: Conn, account_id: str, type_: str) -> list[str]:
        return await preferences.recipients(conn, account_id, type_)

    async def send(self, event: dict[str, Any], recipient: str, message_id: str) -> Attempt:
        started = time.monotonic()
        name = await self.pool.fetchval(
            "select name from accounts where id = $1", event["account_id"]
        )
        message = mail.compose(
            event, recipient, self.settings, message_id=message_id, account_name=name
        )
        if event["type"] in INVOICE_ATTACHED:
            await self.attach_invoice(message, event)
        try:
            await smtp.send(self.address, message, tls_context=self.tls_context)
        except smtp.MailFailed as exc:
            took = round((time.monotonic() - started) * 1000, 1)
            return Attempt(False, exc.code, took, exc.detail, "", permanent=exc.permanent)
        return Attempt(True, 250, round((time.monotonic() - started) * 1000, 1), None, "")

    async def attach_invoice(self, message: EmailMessage, event: dict[str, Any]) -> None:
        """The invoice as it is now, printed: ``INV-000001.pdf``."""
        invoice_id = str((event.get("data") or {}).get("invoice_id", ""))
        async with self.pool.acquire() as conn:
            invoice = await invoices.load(conn, invoice_id)
        if invoice is None or invoice.account_id != event["account_id"]:
            log.warning("event %s names no invoice of its account: sent without a PDF", event["id"])
            return
        message.add_attachment(
            await render.pdf_off_loop(invoice),
            maintype="application",
            subtype="pdf",
            filename=render.filename(invoice),
        )


def open_outlet(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    metrics: NotificationMetrics | None = None,
) -> Outlet:
    """The outlet as the settings configure it (email only with METER_SMTP_URL)."""
    return Outlet(
        pool,
        settings,
        webhook_delivery.session(settings.webhook_allow_private),
        mailer=SmtpMailer(pool, settings, address)
        if (address := smtp.address_of(settings))
        else None,
        clock=clock,
        metrics=metrics or NotificationMetrics(),
        crash=CrashHook.from_settings(settings),
    )


def event_of(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "type": row["type"],
        "account_id": row["account_id"],
        "occurred_at": row["occurred_at"],
        "data": orjson.loads(row["data"]),
    }


# -- fan-out --------------------------------------------------------------------------


async def dispatch(out: Outlet) -> int:
    """Fan out one claim of undispatched events; returns how many events it took."""
    async with out.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "select * from outbox_events where dispatched_at is null"
            " order by occurred_at, id limit $1 for update skip locked",
            CLAIM,
        )
        for row in rows:
            await _fan_out(out, conn, row)
        if rows:
            await conn.execute(
                "update outbox_events set dispatched_at = $2 where id = any($1::text[])",
                [r["id"] for r in rows],
                out.now(),
            )
    out.metrics.events.inc(len(rows))
    return len(rows)


async def _fan_out(out: Outlet, conn: Conn, event: asyncpg.Record) -> None:
    account_id, type_ = event["account_id"], event["type"]
    if account_id is None or type_ == events.TEST_EVENT:
        return
    now = out.now()
    endpoints = await conn.fetch(
        "select id from webhook_endpoints where account_id = $1 and deleted_at is null"
        " and enabled and (cardinality(event_types) = 0 or $2 = any(event_types))",
        account_id,
        type_,
    )
    for e in endpoints:
        await conn.execute(
            "insert into notification_deliveries (id, event_id, account_id, channel,"
            " endpoint_id, next_attempt_at) values ($1, $2, $3, 'webhook', $4, $5)"
            " on conflict do nothing",
            new_id(DELIVERY),
            event["id"],
            account_id,
            e["id"],
            now,
        )
    if out.mailer is None:
        return
    for address in await out.mailer.recipients(conn, account_id, type_):
        await conn.execute(
            "insert into notification_deliveries (id, event_id, account_id, channel,"
            " recipient, next_attempt_at) values ($1, $2, $3, 'email', $4, $5)"
            " on conflict do nothing",
            new_id(DELIVERY),
            event["id"],
            account_id,
            address,
            now,
        )


# -- sending --------------------------------------------------------------------------

CLAIM_DUE = """
update notification_deliveries set lease_until = $1, attempts = attempts + 1
where id in (
    select id from notification_deliveries
    where status = 'pending' and next_attempt_at <= $2
      and (lease_until is null or lease_until <= $2)
    order by next_attempt_at limit $3 for update skip locked)
returning *
"""


async def send_due(out: Outlet, limit: int = CLAIM) -> int:
    """Send one claim of due deliveries; returns how many it claimed."""
    now = out.now()
    lease = now + timedelta(seconds=out.settings.delivery_lease)
    claimed = await out.pool.fetch(CLAIM_DUE, lease, now, limit)
    if not claimed:
        return 0
    gate = asyncio.Semaphore(SEND_AT_ONCE)

    async def one(d: asyncpg.Record) -> None:
        async with gate:
            try:
                await _send_one(out, d)
            except (OSError, asyncpg.PostgresConnectionError) as exc:  # the lease brings it back
                log.warning("delivery %s not recorded: %s", d["id"], exc)

    await asyncio.gather(*(one(d) for d in claimed))
    return len(claimed)


async def _send_one(out: Outlet, d: asyncpg.Record) -> None:
    row = await out.pool.fetchrow("select * from outbox_events where id = $1", d["event_id"])
    assert row is not None  # a delivery's event is never removed
    event = event_of(row)
    endpoint = None
    if d["channel"] == "webhook":
        endpoint = await out.pool.fetchrow(
            "select * from webhook_endpoints where id = $1", d["endpoint_id"]
        )
        if endpoint is None or endpoint["deleted_at"] is not None or not endpoint["enabled"]:
            await _cancel(out, d, "the endpoint was disabled or deleted")
            return
    out.crash("delivery_before_send")
    started = out.now()
    if endpoint is not None:
        body = orjson.dumps(events.payload(event, out.settings.portal_public_url))
        attempt = await webhook_delivery.deliver(
            out.http,
            endpoint["url"],
            signing_secrets(endpoint, started),
            event["id"],
            body,
            allow_private=out.settings.webhook_allow_private,
            now=started,
        )
    elif out.mailer is not None:
        attempt = await out.mailer.send(event, d["recipient"], d["id"])
    else:
        attempt = Attempt(False, None, 0.0, "email is not configured (METER_SMTP_URL)", "")
    out.crash("delivery_after_send")
    out.metrics.send_seconds.labels(d["channel"]).observe(attempt.latency_ms / 1000)
    outcome = await record(out, d, endpoint, started, attempt)
    out.metrics.attempts.labels(d["channel"], outcome).inc()


async def _cancel(out: Outlet, d: asyncpg.Record, why: str) -> None:
    await out.pool.execute(
        "update notification_deliveries set status = 'canceled', lease_until = null,"
        " last_error = $2, finished_at = $3 where id = $1 and status = 'pending'",
        d["id"],
        why,
        out.now(),
    )
    out.metrics.attempts.labels(d["channel"], "canceled").inc()


async def record(
    out: Outlet,
    d: asyncpg.Record,
    endpoint: asyncpg.Record | None,
    started: datetime,
    attempt: Attempt,
) -> str:
    """Write one attempt and what follows it, in one transaction; returns the outcome
    (succeeded, retry, failed)."""
    now = out.now()
    async with out.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "insert into delivery_attempts (delivery_id, attempt, started_at, status_code,"
            " latency_ms, ok, error, excerpt) values ($1, $2, $3, $4, $5, $6, $7, $8)"
            " on conflict do nothing",
            d["id"],
            d["attempts"],
            started,
            attempt.status,
            attempt.latency_ms,
            attempt.ok,
            attempt.error,
            attempt.excerpt,
        )
        if attempt.ok:
            await conn.execute(
                "update notification_deliveries set status = 'succeeded', lease_until = null,"
                " last_error = null, finished_at = $2 where id = $1",
                d["id"],
                now,
            )
            if endpoint is not None:
                await conn.execute(
                    "update webhook_endpoints set failing_since = null where id = $1",
                    endpoint["id"],
                )
            return "succeeded"
        failing_since = None
        if endpoint is not None:
            failing_since = await conn.fetchval(
                "update webhook_endpoints set failing_since = coalesce(failing_since, $2)"
                " where id = $1 returning failing_since",
                endpoint["id"],
                started,
            )
        nxt = retry_schedule.after_failure(
            d["attempts"],
            now,
            status=attempt.status,
            retry_after=attempt.retry_after,
            failing_since=failing_since,
            rng=out.rng,
        )
        if attempt.permanent:
            nxt = retry_schedule.Next(None, False, "the mail server refused it for good")
        if nxt.retry_at is not None:
            await conn.execute(
                "update notification_deliveries set next_attempt_at = $2, lease_until = null,"
                " last_error = $3 where id = $1",
                d["id"],
                nxt.retry_at,
                attempt.error,
            )
        else:
            await conn.execute(
                "update notification_deliveries set status = 'failed', lease_until = null,"
                " last_error = $2, finished_at = $3 where id = $1",
                d["id"],
                f"{attempt.error}; {nxt.reason}" if nxt.reason else attempt.error,
                now,
            )
        why = nxt.reason or "disabled"
        if nxt.disable_endpoint and endpoint and await disable_endpoint(conn, endpoint, why, now):
            out.metrics.endpoints_disabled.inc()
    return "retry" if nxt.retry_at is not None else "failed"


async def disable_endpoint(
    conn: Conn, endpoint: asyncpg.Record, reason: str, now: datetime
) -> bool:
    """Turn the endpoint off, cancel what waits for it, and tell the account's owners."""
    disabled = await conn.fetchval(
        "update webhook_endpoints set enabled = false, disabled_reason = $2, updated_at = $3,"
        " row_version = row_version + 1 where id = $1 and enabled returning id",
        endpoint["id"],
        reason,
        now,
    )
    if disabled is None:
        return False
    await conn.execute(
        "update notification_deliveries set status = 'canceled', lease_until = null,"
        " last_error = $2, finished_at = $3 where endpoint_id = $1 and status = 'pending'",
        endpoint["id"],
        f"the endpoint was disabled: {reason}",
        now,
    )
    await outbox.raise_event(
        conn,
        "webhook_endpoint.disabled",
        endpoint["account_id"],
        f"webhook_endpoint.disabled:{endpoint['id']}:{now.isoformat()}",
        {"endpoint_id": endpoint["id"], "url": endpoint["url"], "reason": reason},
    )
    return True


async def next_due(out: Outlet) -> float | None:
    """Seconds until the next pending delivery is due (or its lease runs out)."""
    row = await out.pool.fetchrow(
        "select count(*) as n,"
        " min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at))) as at"
        " from notification_deliveries where status = 'pending'"
    )
    out.metrics.pending.set(row["n"])
    at = row["at"]
    if at is None:
        return None
    return max(0.0, float((at - out.now()).total_seconds()))
