"""Sign-in by email: a person asks at the portal; each of their accounts gets a link.

How this works: ``admit`` is the only step the request waits for, and it is the same
whether or not the address belongs to anyone: under a transaction lock on the address
(and then the client), it counts the requests of the last ``WINDOW`` seconds for the
address (stored as its SHA-256, never in the clear) and for the client, and records
this one if both are under their limits. Everything that depends on the address being
known (``links_for``: its memberships, one link each, minted as the provider's links
are) runs after the answer, in the portal's background, so neither the answer nor its
timing says whether the address is a member's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg

from admin.access import SYSTEM
from admin.audit import Actor
from admin.portal_links import PortalLinks
from admin.records import CLOSED

WINDOW = 15 * 60.0  # seconds
PER_ADDRESS = 3  # requests for one address within WINDOW
PER_CLIENT = 10  # requests from one client address within WINDOW


def address_hash(address: str) -> str:
    """One hash per mailbox however it is capitalised."""
    return hashlib.sha256(address.strip().casefold().encode()).hexdigest()


def within_limits(by_address: int, by_client: int) -> bool:
    """Whether one more request fits, given those made within the window."""
    return by_address < PER_ADDRESS and by_client < PER_CLIENT


@dataclass(frozen=True, slots=True)
class SigninLink:
    account_name: str
    url: str


class EmailSignin:
    def __init__(self, pool: asyncpg.Pool, links: PortalLinks) -> None:
        self.pool = pool
        self.links = links

    async def admit(self, address: str, client: str) -> bool:
        """Record the request and say True, or (over a limit) record nothing, say False."""
        hashed = address_hash(address)
        async with self.pool.acquire() as conn, conn.transaction():
            # Address first, then client, always: two requests never wait on each other
            # in a cycle.
            for key in (f"signin-address:{hashed}", f"signin-client:{client}"):
                await conn.execute("select pg_advisory_xact_lock(hashtextextended($1, 0))", key)
            await conn.execute(
                "delete from email_signin_requests where (address_hash = $1 or client = $2)"
                " and requested_at < now() - make_interval(secs => $3)",
                hashed,
                client,
                WINDOW,
            )
            counts = await conn.fetchrow(
                "select count(*) filter (where address_hash = $1) as by_address,"
                " count(*) filter (where client = $2) as by_client from email_signin_requests"
                " where (address_hash = $1 or client = $2)"
                " and requested_at >= now() - make_interval(secs => $3)",
                hashed,
                client,
                WINDOW,
            )
            if not within_limits(counts["by_address"], counts["by_client"]):
                return False
            await conn.execute(
                "insert into email_signin_requests (address_hash, client) values ($1, $2)",
                hashed,
                client,
            )
        return True

    async def links_for(
        self, address: str, *, request_id: str | None, client_addr: str | None
    ) -> list[SigninLink]:
        """One fresh link per open account the person of ``address`` is a member of;
        [] for an address nobody has."""
        rows = await self.pool.fetch(
            "select m.id, m.account_id, a.name from people p"
            " join members m on m.person_id = p.id join accounts a on a.id = m.account_id"
            " where lower(p.email) = lower($1) and a.status <> $2 order by a.name, a.id",
            address.strip(),
            CLOSED,
        )
        actor = Actor(SYSTEM, request_id, client_addr)
        minted = []
        for row in rows:
            link = await self.links.issue(actor, row["account_id"], row["id"], self.links.home_url)
            minted.append(SigninLink(row["name"], link.url))
        return minted
