"""Webhook endpoints: what the admin API and the portal both call.

An endpoint is checked when it is saved (``endpoint_checks``: its URL, its host
resolved now, its event types and description; bad input is one 422 naming every
field, nothing changed). Every change is audited in its own transaction. An endpoint or a
delivery of another account, a deleted endpoint and a malformed id are all simply
not found. Deleting cancels the endpoint's pending deliveries; a test event and a
retry only write rows (due now) that the sender loop delivers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import asyncpg
import orjson
from aiohttp.abc import AbstractResolver

from admin import audit, ids
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.records import CLOSED
from meter.settings import Settings
from notifications.endpoint_checks import event_filter, field_errors, target_problem
from notifications.endpoint_records import (
    ROTATION_OVERLAP,
    Attempt,
    Delivery,
    Endpoint,
    new_secret,
)
from notifications.events import TEST_EVENT
from payments.outbox import EVENT

MAX_ENDPOINTS = 20  # per account, deleted ones not counted
_DELIVERY = (
    "select d.*, e.type as event_type from notification_deliveries d"
    " join outbox_events e on e.id = d.event_id"
)


class TooManyEndpoints(Conflict):
    slug = "too-many-webhook-endpoints"
    title = "The account has as many webhook endpoints as it may"


class EndpointDisabled(Conflict):
    slug = "webhook-endpoint-disabled"
    title = "The webhook endpoint is disabled; enable it first"


class DeliveryPending(Conflict):
    slug = "delivery-pending"
    title = "The delivery is already waiting to be sent"


class _Unchanged(Enum):
    UNCHANGED = "unchanged"


UNCHANGED = _Unchanged.UNCHANGED


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """A patch: None (``UNCHANGED`` for the description, which None clears) keeps a field."""

    url: str | None = None
    description: str | _Unchanged | None = UNCHANGED
    event_types: Sequence[str] | None = None
    enabled: bool | None = None


class WebhookEndpoints:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        resolver: AbstractResolver | None = None,  # None: the system's (tests bring theirs)
    ) -> None:
        self.pool = pool
        self.allow_private = settings.webhook_allow_private
        self.clock = clock
        self.resolver = resolver

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def _check(
        self,
        url: str | None,
        description: str | None,
        event_types: Sequence[str] | None,
    ) -> None:
        errors = field_errors(url, description, event_types)
        if url is not None and not any(f == "url" for f, _ in errors):
            problem = await target_problem(url, self.allow_private, self.resolver)
            if problem:
                errors.append(("url", problem))
        if errors:
            raise InvalidInput(errors)

    # -- endpoints -------------------------------------------------------------------

    async def endpoints(self, account_id: str) -> list[Endpoint]:
        await _account(self.pool, account_id)
        rows = await self.pool.fetch(
            "select * from webhook_endpoints where account_id = $1 and deleted_at is null"
            " order by created_at, id",
            account_id,
        )
        now = self.now()
        return [Endpoint.from_row(r, now) for r in rows]

    async def endpoint(self, account_id: str, endpoint_id: str) -> Endpoint:
        await _account(self.pool, account_id)
        return Endpoint.from_row(await _endpoint(self.pool, account_id, endpoint_id), self.now())

    async def create(
        self,
        actor: Actor,
        account_id: str,
        *,
        url: str,
        description: str | None = None,
        event_types: Sequence[str] = (),
        enabled: bool = True,
    ) -> tuple[Endpoint, str]:
        """The new endpoint and its signing secret, which is shown only this once."""
        await _account(self.pool, account_id)
        await self._check(url, description, event_types)
        secret = new_secret()
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            count = await conn.fetchval(
                "select count(*) from webhook_endpoints where account_id = $1"
                " and deleted_at is null",
                account_id,
            )
            if count >= MAX_ENDPOINTS:
                raise TooManyEndpoints(
                    f"{account_id} has {count} webhook endpoints, the most it may have;"
                    " delete one first"
                )
            row = await conn.fetchrow(
                "insert into webhook_endpoints (id, account_id, url, description, event_types,"
                " enabled, secret) values ($1, $2, $3, $4, $5, $6, $7) returning *",
                ids.new_id(ids.WEBHOOK_ENDPOINT),
                account_id,
                url,
                description,
                event_filter(event_types),
                enabled,
                secret,
            )
            endpoint = Endpoint.from_row(row, now)
            await audit.record(
                conn,
                actor,
                "webhook_endpoint.create",
                "webhook_endpoint",
                endpoint.id,
                account_id=account_id,
                after=endpoint,
            )
        return endpoint, secret

    async def patch(
        self, actor: Actor, account_id: str, endpoint_id: str, changes: EndpointChanges
    ) -> Endpoint:
        """Enabling an endpoint again clears why it was disabled and its failing streak."""
        await _account(self.pool, account_id)
        await _endpoint(self.pool, account_id, endpoint_id)
        description = None if changes.description is UNCHANGED else changes.description
        await self._check(changes.url, description, changes.event_types)
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            row = await _endpoint(conn, account_id, endpoint_id, lock=True)
            before = Endpoint.from_row(row, now)
            sets: dict[str, Any] = {}
            if changes.url is not None:
                sets["url"] = changes.url
            if changes.description is not UNCHANGED:
                sets["description"] = changes.description
            if changes.event_types is not None:
                sets["event_types"] = event_filter(changes.event_types)
            if changes.enabled is not None and changes.enabled != row["enabled"]:
                sets["enabled"] = changes.enabled
                if changes.enabled:
                    sets.update(disabled_reason=None, failing_since=None)
                else:
                    sets["disabled_reason"] = f"disabled by {actor.principal.name}"
            if not sets:
                return before
            row = await _update(conn, endpoint_id, sets)
            after = Endpoint.from_row(row, now)
            await audit.record(
                conn,
                actor,
                "webhook_endpoint.update",
                "webhook_endpoint",
                endpoint_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        return after

    async def delete(self, actor: Actor, account_id: str, endpoint_id: str) -> Endpoint:
        """Gone from every view; what was still to be sent to it is canceled."""
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True, open_only=False)
            row = await _endpoint(conn, account_id, endpoint_id, lock=True)
            before = Endpoint.from_row(row, now)
            await _update(conn, endpoint_id, {"enabled": False}, deleted=True)
            await conn.execute(
                "update notification_deliveries set status = 'canceled', finished_at = now(),"
                " lease_until = null, last_error = 'the endpoint was deleted'"
                " where endpoint_id = $1 and status = 'pending'",
                endpoint_id,
            )
            await audit.record(
                conn,
                actor,
                "webhook_endpoint.delete",
                "webhook_endpoint",
                endpoint_id,
                account_id=account_id,
                before=before,
            )
        return before

    async def rotate_secret(
        self, actor: Actor, account_id: str, endpoint_id: str
    ) -> tuple[Endpoint, str]:
        """A new secret, shown only this once; the one it replaces keeps signing beside
        it for 24 hours (a secret rotated out before that stops at once)."""
        secret = new_secret()
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            row = await _endpoint(conn, account_id, endpoint_id, lock=True)
            before = Endpoint.from_row(row, now)
            sets = {
                "secret": secret,
                "previous_secret": row["secret"],
                "previous_expires_at": now + ROTATION_OVERLAP,
            }
            after = Endpoint.from_row(await _update(conn, endpoint_id, sets), now)
            await audit.record(
                conn,
                actor,
                "webhook_endpoint.rotate_secret",
                "webhook_endpoint",
                endpoint_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        return after, secret

    # -- deliveries ------------------------------------------------------------------

    async def deliveries(
        self, account_id: str, endpoint_id: str, *, limit: int, before: str | None = None
    ) -> tuple[list[Delivery], str | None]:
        """The delivery log, newest first, each with its attempts; and the next cursor."""
        async with self.pool.acquire() as conn:
            await _account(conn, account_id)
            await _endpoint(conn, account_id, endpoint_id)
            args: list[Any] = [endpoint_id, limit + 1]
            where = ""
            if before:
                where = (
                    " and (d.created_at, d.id) < (select created_at, id"
                    " from notification_deliveries where id = $3 and endpoint_id = $1)"
                )
                args.append(before)
            rows = await conn.fetch(
                f"{_DELIVERY} where d.endpoint_id = $1{where}"
                " order by d.created_at desc, d.id desc limit $2",
                *args,
            )
            page = rows[:limit]
            log = await _attempts(conn, [r["id"] for r in page])
        items = [Delivery.from_row(r, log.get(r["id"], ())) for r in page]
        return items, (items[-1].id if len(rows) > limit else None)

    async def retry_delivery(
        self, actor: Actor, account_id: str, endpoint_id: str, delivery_id: str
    ) -> Delivery:
        """Due again now, whatever became of it, unless it is still waiting to be sent."""
        now = self.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            endpoint = await _endpoint(conn, account_id, endpoint_id, lock=True)
            _must_be_enabled(endpoint)
            before = await _delivery(conn, endpoint_id, delivery_id, lock=True)
            if before.status == "pending":
                raise DeliveryPending(
                    f"{delivery_id} is pending: it is tried at {before.next_attempt_at}"
                )
            await conn.execute(
                "update notification_deliveries set status = 'pending', next_attempt_at = $2,"
                " finished_at = null, lease_until = null where id = $1",
                delivery_id,
                now,
            )
            after = await _delivery(conn, endpoint_id, delivery_id)
            await audit.record(
                conn,
                actor,
                "webhook_delivery.retry",
                "webhook_delivery",
                delivery_id,
                account_id=account_id,
                before=_public(before),
                after=_public(after),
            )
        return after

    async def send_test(self, actor: Actor, account_id: str, endpoint_id: str) -> Delivery:
        """A ``webhook.test`` event for this endpoint alone, due now.

        The event is written already dispatched, so the dispatcher does not fan it out
        to the account's other endpoints; its one delivery is written here.
        """
        now = self.now()
        delivery_id = ids.new_id(ids.DELIVERY)
        event_id = ids.new_id(EVENT)
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            endpoint = await _endpoint(conn, account_id, endpoint_id, lock=True)
            _must_be_enabled(endpoint)
            data = {"endpoint_id": endpoint_id, "message": "A test event sent from meter."}
            await conn.execute(
                "insert into outbox_events (id, type, account_id, dedupe_key, data,"
                " dispatched_at) values ($1, $2, $3, $4, $5::jsonb, now())",
                event_id,
                TEST_EVENT,
                account_id,
                f"{TEST_EVENT}:{delivery_id}",
                orjson.dumps(data).decode(),
            )
            await conn.execute(
                "insert into notification_deliveries (id, event_id, account_id, channel,"
                " endpoint_id, status, next_attempt_at)"
                " values ($1, $2, $3, 'webhook', $4, 'pending', $5)",
                delivery_id,
                event_id,
                account_id,
                endpoint_id,
                now,
            )
            delivery = await _delivery(conn, endpoint_id, delivery_id)
            await audit.record(
                conn,
                actor,
                "webhook_endpoint.test",
                "webhook_delivery",
                delivery_id,
                account_id=account_id,
                after=_public(delivery),
            )
        return delivery


def _public(d: Delivery) -> dict[str, Any]:
    """A delivery for the audit log: its state, not the log of answers."""
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "endpoint_id": d.endpoint_id,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
    }


def _must_be_enabled(endpoint: asyncpg.Record) -> None:
    if not endpoint["enabled"]:
        why = endpoint["disabled_reason"] or "disabled"
        raise EndpointDisabled(f"{endpoint['id']} is disabled ({why}); enable it first")


async def _account(
    conn: Any, account_id: str, *, lock: bool = False, open_only: bool = True
) -> None:
    account = await repo.get_account(conn, account_id, for_update=lock)
    if account is None:
        raise NotFound(f"no account {account_id!r}")
    if lock and open_only and account.status == CLOSED:
        raise Conflict(f"account {account_id} is closed")


async def _endpoint(
    conn: Any, account_id: str, endpoint_id: str, *, lock: bool = False
) -> asyncpg.Record:
    """A live endpoint of the account; another's, a deleted one or a malformed id: 404."""
    not_found = NotFound(f"no webhook endpoint {endpoint_id!r}")
    if not ids.well_formed(endpoint_id, ids.WEBHOOK_ENDPOINT):
        raise not_found
    row = await conn.fetchrow(
        "select * from webhook_endpoints where id = $1 and account_id = $2"
        f" and deleted_at is null{' for update' if lock else ''}",
        endpoint_id,
        account_id,
    )
    if row is None:
        raise not_found
    return row


async def _delivery(
    conn: Any, endpoint_id: str, delivery_id: str, *, lock: bool = False
) -> Delivery:
    not_found = NotFound(f"no delivery {delivery_id!r}")
    if not ids.well_formed(delivery_id, ids.DELIVERY):
        raise not_found
    row = await conn.fetchrow(
        f"{_DELIVERY} where d.id = $1 and d.endpoint_id = $2{' for update of d' if lock else ''}",
        delivery_id,
        endpoint_id,
    )
    if row is None:
        raise not_found
    log = await _attempts(conn, [delivery_id])
    return Delivery.from_row(row, log.get(delivery_id, ()))


async def _attempts(conn: Any, delivery_ids: list[str]) -> dict[str, tuple[Attempt, ...]]:
    rows = await conn.fetch(
        "select * from delivery_attempts where delivery_id = any($1::text[])"
        " order by delivery_id, attempt",
        delivery_ids,
    )
    found: dict[str, list[Attempt]] = {}
    for r in rows:
        found.setdefault(r["delivery_id"], []).append(Attempt.from_row(r))
    return {k: tuple(v) for k, v in found.items()}


async def _update(
    conn: Any, endpoint_id: str, sets: dict[str, Any], *, deleted: bool = False
) -> asyncpg.Record:
    assignments = "".join(f"{name} = ${i}, " for i, name in enumerate(sets, start=2))
    row: asyncpg.Record = await conn.fetchrow(
        f"update webhook_endpoints set {assignments}updated_at = now(),"
        f" row_version = row_version + 1{', deleted_at = now()' if deleted else ''}"
        " where id = $1 returning *",
        endpoint_id,
        *sets.values(),
    )
    return row
