"""One-time sign-in links of the billing portal: minted by the provider, redeemed once.

The provider's backend asks for a link for one member of one account (as Stripe's
customer portal does); the URL carries ``secrets.token_urlsafe(32)`` (256 bits).
Only its SHA-256 is stored. Redeeming is one ``update ... where redeemed_at is null
and expires_at > now() returning``: of two redemptions racing, exactly one gets
the row, and in the same transaction it starts the session and writes the audit
entry. Every time is the database's ``now()``, so portal replicas never disagree.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg

from admin import audit, models
from admin import repository as repo
from admin.access import ActorType, Principal, Role
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.portal_sessions import Session, start_session
from admin.records import CLOSED

LINK_PATH = "/s/"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def link_id(token_hash: str) -> str:
    """What the audit log calls a link: a short piece of its hash, never the token."""
    return "pl_" + token_hash[:16]


def return_url_allowed(url: str, allowlist: Sequence[str]) -> bool:
    """Whether ``url`` is under one of the allowed origins or URL prefixes.

    Same scheme, host and port; and the path at or below the entry's path, on a
    segment boundary ("https://app.test/billing" allows "/billing" and "/billing/x",
    not "/billing-evil"). User info, backslashes and control characters are refused.
    """
    if any(c in url for c in "\\") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return False
    try:
        given = urlsplit(url)
        port = given.port or _DEFAULT_PORTS.get(given.scheme)
    except ValueError:
        return False
    if given.scheme not in _DEFAULT_PORTS or not given.hostname or "@" in given.netloc:
        return False
    for entry in allowlist:
        allowed = urlsplit(entry)
        if (allowed.scheme, allowed.hostname, allowed.port or _DEFAULT_PORTS[allowed.scheme]) != (
            given.scheme,
            given.hostname,
            port,
        ):
            continue
        prefix = allowed.path.rstrip("/")
        path = given.path or "/"
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return True
    return False


@dataclass(frozen=True, slots=True)
class LinkRules:
    public_url: str = "http://127.0.0.1:8083"
    return_urls: tuple[str, ...] = ()
    ttl: float = 300.0
    session_max: float = 43_200.0


@dataclass(frozen=True, slots=True)
class MintedLink:
    url: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Redeemed:
    session: Session
    cookie: str  # the session cookie's value: set once on the response, never stored


class PortalLinks:
    def __init__(self, pool: asyncpg.Pool, rules: LinkRules) -> None:
        self.pool = pool
        self.rules = rules

    async def create(
        self, actor: Actor, account_id: str, new: models.NewPortalSession
    ) -> MintedLink:
        if not return_url_allowed(new.return_url, self.rules.return_urls):
            raise InvalidInput(
                [("return_url", "must start with one of the allowed return URLs (ask us)")]
            )
        return await self.issue(actor, account_id, new.member_id, new.return_url)

    @property
    def home_url(self) -> str:
        """Where "Back to the app" goes from a session we started ourselves (sign-in by
        email): the first allowed return URL, else the portal."""
        return self.rules.return_urls[0] if self.rules.return_urls else self.rules.public_url

    async def issue(
        self, actor: Actor, account_id: str, member_id: str, return_url: str
    ) -> MintedLink:
        """A link for ``member_id`` of ``account_id``; ``return_url`` is the caller's to
        check (``create`` checks the provider's against the allowed list)."""
        secret = secrets.token_urlsafe(32)
        token_hash = digest(secret)
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            if account.status == CLOSED:
                raise Conflict(f"account {account_id} is closed")
            member = await conn.fetchval(
                "select id from members where id = $1 and account_id = $2",
                member_id,
                account_id,
            )
            if member is None:
                raise NotFound(f"no member {member_id!r}")
            expires_at = await conn.fetchval(
                "insert into portal_links (token_hash, account_id, member_id, return_url,"
                " expires_at) values ($1, $2, $3, $4, now() + make_interval(secs => $5))"
                " returning expires_at",
                token_hash,
                account_id,
                member_id,
                return_url,
                self.rules.ttl,
            )
            await audit.record(
                conn,
                actor,
                "portal_link.create",
                "portal_link",
                link_id(token_hash),
                account_id=account_id,
                after={
                    "member_id": member_id,
                    "return_url": return_url,
                    "expires_at": expires_at,
                },
            )
        url = self.rules.public_url.rstrip("/") + LINK_PATH + secret
        return MintedLink(url, expires_at)

    async def redeem(
        self, secret: str, *, request_id: str | None, client_addr: str | None
    ) -> Redeemed | None:
        """The session a link starts; None: unknown, expired, used, or its member gone."""
        if not 20 <= len(secret) <= 100:
            return None
        token_hash = digest(secret)
        async with self.pool.acquire() as conn, conn.transaction():
            link = await conn.fetchrow(
                "update portal_links set redeemed_at = now() where token_hash = $1"
                " and redeemed_at is null and expires_at > now()"
                " returning account_id, member_id, return_url",
                token_hash,
            )
            if link is None:
                return None
            member = await conn.fetchrow(
                "select m.id, m.person_id, m.role, p.name from members m"
                " join people p on p.id = m.person_id join accounts a on a.id = m.account_id"
                " where m.id = $1 and m.account_id = $2 and a.status <> $3",
                link["member_id"],
                link["account_id"],
                CLOSED,
            )
            if member is None:
                return None
            session, cookie = await start_session(
                conn,
                person_id=member["person_id"],
                account_id=link["account_id"],
                return_url=link["return_url"],
                max_age=self.rules.session_max,
            )
            principal = Principal(
                ActorType.MEMBER,
                member["id"],
                member["name"],
                Role(member["role"]),
                link["account_id"],
            )
            await audit.record(
                conn,
                Actor(principal, request_id, client_addr),
                "portal_link.redeem",
                "portal_link",
                link_id(token_hash),
                account_id=link["account_id"],
                after={"member_id": member["id"], "session_id": session.id},
            )
        return Redeemed(session, cookie)
