"""Who is emailed what: an account's invoice email and its members' opt-ins.

Mail about the types in ``events.EMAILED`` goes to the account's billing address, the
invoice email of its notification settings or else its ``billing_email``; about the
types in ``events.TO_OWNERS``, to its owners; and about any type, to the members who
opted in to it. ``recipients`` is that rule, for the dispatcher.

Writes lock the account row, check the ETag (``row_version``) under the lock, and
write their audit entry in the same transaction, as the billing profile's do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from admin import audit
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.provisioning import check_etag
from admin.records import CLOSED
from notifications.events import EMAILED, EVENT_TYPES, TO_OWNERS

_MEMBERS = (
    "select m.id as member_id, p.name, p.email, m.role,"
    " coalesce(array_agg(s.event_type order by s.event_type)"
    " filter (where s.event_type is not null), array[]::text[]) as event_types"
    " from members m join people p on p.id = m.person_id"
    " left join notification_subscriptions s on s.member_id = m.id"
    " where m.account_id = $1 {only} group by m.id, p.name, p.email, m.role, m.created_at"
    " order by m.created_at, m.id"
)


@dataclass(frozen=True, slots=True)
class MemberSubscriptions:
    member_id: str
    name: str
    email: str
    role: str
    event_types: tuple[str, ...]  # in EVENT_TYPES' order

    @classmethod
    def from_row(cls, row: Any) -> MemberSubscriptions:
        chosen = set(row["event_types"])
        return cls(
            row["member_id"],
            row["name"],
            row["email"],
            row["role"],
            tuple(t for t in EVENT_TYPES if t in chosen),
        )


@dataclass(frozen=True, slots=True)
class NotificationSettings:
    account_id: str
    invoice_email: str | None
    billing_email: str | None
    row_version: int  # 0: never written
    updated_at: datetime | None
    members: tuple[MemberSubscriptions, ...]

    @property
    def recipient(self) -> str | None:
        """Where billing notices go now."""
        return self.invoice_email or self.billing_email

    @property
    def etag(self) -> str:
        return f'"n{self.row_version}"'


def unique_addresses(addresses: Iterable[str | None]) -> list[str]:
    """In order, each address once however it is capitalised (the first spelling kept)."""
    seen: set[str] = set()
    out: list[str] = []
    for address in addresses:
        if not address or address.casefold() in seen:
            continue
        seen.add(address.casefold())
        out.append(address)
    return out


def chosen_types(event_types: Iterable[str]) -> tuple[str, ...]:
    """The types, each once, in the catalogue's order; an unknown one is InvalidInput."""
    wanted = set(event_types)
    unknown = sorted(wanted - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput([("event_types", f"not an event type: {', '.join(unknown)}")])
    return tuple(t for t in EVENT_TYPES if t in wanted)


async def recipients(conn: Any, account_id: str, event_type: str) -> list[str]:
    """Every address an event of ``event_type`` is mailed to, each once (case-insensitive):
    the billing address (EMAILED), the owners (TO_OWNERS), then the members opted in."""
    found: list[str | None] = []
    if event_type in EMAILED:
        found.append(
            await conn.fetchval(
                "select coalesce(n.invoice_email, a.billing_email) from accounts a"
                " left join notification_settings n on n.account_id = a.id where a.id = $1",
                account_id,
            )
        )
    if event_type in TO_OWNERS:
        rows = await conn.fetch(
            "select p.email from members m join people p on p.id = m.person_id"
            " where m.account_id = $1 and m.role = 'owner' order by m.created_at, m.id",
            account_id,
        )
        found.extend(r["email"] for r in rows)
    rows = await conn.fetch(
        "select p.email from notification_subscriptions s join members m on m.id = s.member_id"
        " join people p on p.id = m.person_id where m.account_id = $1 and s.event_type = $2"
        " order by m.created_at, m.id",
        account_id,
        event_type,
    )
    found.extend(r["email"] for r in rows)
    return unique_addresses(found)


class Preferences:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def settings(self, account_id: str) -> NotificationSettings:
        return await _settings(self.pool, account_id)

    async def put_settings(
        self, actor: Actor, account_id: str, invoice_email: str | None, *, if_match: str | None
    ) -> NotificationSettings:
        async with self.pool.acquire() as conn, conn.transaction():
            await _open_account(conn, account_id)
            before = await _settings(conn, account_id)
            check_etag(before.etag, if_match)
            await conn.execute(
                "insert into notification_settings (account_id, invoice_email) values ($1, $2)"
                " on conflict (account_id) do update set invoice_email = excluded.invoice_email,"
                " row_version = notification_settings.row_version + 1, updated_at = now()",
                account_id,
                invoice_email,
            )
            after = await _settings(conn, account_id)
            await audit.record(
                conn,
                actor,
                "notification_settings.update",
                "notification_settings",
                account_id,
                account_id=account_id,
                before=_audited(before),
                after=_audited(after),
            )
        return after

    async def put_subscriptions(
        self, actor: Actor, account_id: str, member_id: str, event_types: Sequence[str]
    ) -> MemberSubscriptions:
        """Replace what one member is emailed about. Who may is the caller's check
        (``access.require_member``)."""
        chosen = chosen_types(event_types)
        async with self.pool.acquire() as conn, conn.transaction():
            await _open_account(conn, account_id)
            before = await _member(conn, account_id, member_id)
            await conn.execute(
                "delete from notification_subscriptions where member_id = $1", member_id
            )
            await conn.executemany(
                "insert into notification_subscriptions (member_id, event_type) values ($1, $2)",
                [(member_id, t) for t in chosen],
            )
            after = await _member(conn, account_id, member_id)
            await audit.record(
                conn,
                actor,
                "notification_subscriptions.update",
                "member",
                member_id,
                account_id=account_id,
                before={"event_types": list(before.event_types)},
                after={"event_types": list(after.event_types)},
            )
        return after


async def _open_account(conn: Any, account_id: str) -> None:
    """Locked, so a write's ETag check holds at commit."""
    account = await repo.get_account(conn, account_id, for_update=True)
    if account is None:
        raise NotFound(f"no account {account_id!r}")
    if account.status == CLOSED:
        raise Conflict(f"account {account_id} is closed")


async def _settings(conn: Any, account_id: str) -> NotificationSettings:
    row = await conn.fetchrow(
        "select a.id, a.billing_email, n.invoice_email, coalesce(n.row_version, 0) as version,"
        " n.updated_at from accounts a left join notification_settings n on n.account_id = a.id"
        " where a.id = $1",
        account_id,
    )
    if row is None:
        raise NotFound(f"no account {account_id!r}")
    members = await conn.fetch(_MEMBERS.format(only=""), account_id)
    return NotificationSettings(
        account_id=row["id"],
        invoice_email=row["invoice_email"],
        billing_email=row["billing_email"],
        row_version=row["version"],
        updated_at=row["updated_at"],
        members=tuple(MemberSubscriptions.from_row(m) for m in members),
    )


async def _member(conn: Any, account_id: str, member_id: str) -> MemberSubscriptions:
    row = await conn.fetchrow(_MEMBERS.format(only="and m.id = $2"), account_id, member_id)
    if row is None:
        raise NotFound(f"no member {member_id!r}")
    return MemberSubscriptions.from_row(row)


def _audited(s: NotificationSettings) -> dict[str, Any]:
    return {"invoice_email": s.invoice_email, "recipient": s.recipient}
