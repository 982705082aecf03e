"""Sessions of the billing portal: a cookie's hash, a person, the account they view.

A session ends at the first of: ``ended_at`` set (sign out, sign out everywhere,
the member removed), ``expires_at`` (absolute, fixed when it starts) and
``last_seen_at`` older than the idle timeout. ``current`` checks all three and
slides ``last_seen_at`` in one statement. The session does not hold a role: the
portal re-reads the membership on every request (``membership``), so a role
change or a removal takes effect on the next page.

The CSRF token of a session is an HMAC of the cookie's value: a per-session secret
nothing stores, that a page on another origin cannot read or compute.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from admin import audit, ids
from admin.access import ActorType, Principal, Role
from admin.audit import Actor
from admin.records import CLOSED, Member

SESSION = "psess"
_COLUMNS = "id, person_id, account_id, return_url, created_at, last_seen_at, expires_at"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(cookie: str) -> str:
    return hmac.new(cookie.encode(), b"meter-portal-csrf", hashlib.sha256).hexdigest()


def csrf_ok(cookie: str, given: str | None) -> bool:
    """In constant time: ``given`` is this session's CSRF token."""
    return given is not None and hmac.compare_digest(csrf_token(cookie), given)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    person_id: str
    account_id: str
    return_url: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Session:
        return cls(**{name: row[name] for name in cls.__slots__})


async def start_session(
    conn: Any, *, person_id: str, account_id: str, return_url: str, max_age: float
) -> tuple[Session, str]:
    """A new session row (in the caller's transaction) and its cookie value."""
    cookie = secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        "insert into portal_sessions (id, token_hash, person_id, account_id, return_url,"
        " expires_at) values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))"
        f" returning {_COLUMNS}",
        ids.new_id(SESSION),
        digest(cookie),
        person_id,
        account_id,
        return_url,
        max_age,
    )
    return Session.from_row(row), cookie


def principal_of(member: Member) -> Principal:
    return Principal(ActorType.MEMBER, member.id, member.name, Role(member.role), member.account_id)


class PortalSessions:
    def __init__(self, pool: asyncpg.Pool, *, idle: float) -> None:
        self.pool = pool
        self.idle = idle

    async def current(self, cookie: str) -> Session | None:
        """The live session of a cookie, its idle clock restarted; None: none or ended."""
        if not 20 <= len(cookie) <= 100:
            return None
        row = await self.pool.fetchrow(
            "update portal_sessions set last_seen_at = now() where token_hash = $1"
            " and ended_at is null and expires_at > now()"
            " and last_seen_at > now() - make_interval(secs => $2)"
            f" returning {_COLUMNS}",
            digest(cookie),
            self.idle,
        )
        return None if row is None else Session.from_row(row)

    async def membership(self, session: Session) -> Member | None:
        """The person's membership of the account the session views, as it is now."""
        row = await self.pool.fetchrow(
            "select m.id, m.account_id, m.person_id, p.email, p.name, m.role, m.created_at,"
            " m.updated_at from members m join people p on p.id = m.person_id"
            " join accounts a on a.id = m.account_id"
            " where m.person_id = $1 and m.account_id = $2 and a.status <> $3",
            session.person_id,
            session.account_id,
            CLOSED,
        )
        return None if row is None else Member.from_row(row)

    async def switch(self, session: Session, account_id: str) -> bool:
        """View another account the person is a member of; False: not a member."""
        changed = await self.pool.fetchval(
            "update portal_sessions s set account_id = $2 where s.id = $1 and s.ended_at is null"
            " and exists (select 1 from members m join accounts a on a.id = m.account_id"
            " where m.person_id = s.person_id and m.account_id = $2 and a.status <> $3)"
            " returning s.id",
            session.id,
            account_id,
            CLOSED,
        )
        return changed is not None

    async def end(self, session: Session) -> None:
        await self.pool.execute(
            "update portal_sessions set ended_at = now() where id = $1 and ended_at is null",
            session.id,
        )

    async def end_all(self, actor: Actor, session: Session) -> int:
        """Sign the person out of every browser, this one included; audited."""
        async with self.pool.acquire() as conn, conn.transaction():
            ended = await conn.fetch(
                "update portal_sessions set ended_at = now() where person_id = $1"
                " and ended_at is null returning id",
                session.person_id,
            )
            await audit.record(
                conn,
                actor,
                "portal_session.end_all",
                "person",
                session.person_id,
                account_id=session.account_id,
                after={"sessions_ended": len(ended)},
            )
        return len(ended)
