"""Members of billing accounts and the admin API's bearer tokens.

A person (one email) may be a member of several accounts, with one role on each.
Every account keeps at least one owner: removing or demoting the last one is a
409, decided under a lock on the account row, so two owners demoting each other
at once cannot both succeed. Tokens are ``mta_`` + 32 base62 characters (190
bits); only their SHA-256 is stored, and a revoked one fails at once (every
request looks its hash up).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import asyncpg

from admin import audit, ids, models
from admin import repository as repo
from admin.access import ActorType, Principal, Role, assignable
from admin.audit import Actor
from admin.errors import Conflict, Forbidden, LastOwner, NotFound
from admin.records import CLOSED, Member, Token

TOKEN_PREFIX = "mta_"
TOKEN_RANDOM_CHARS = 32
VISIBLE_TOKEN_CHARS = len(TOKEN_PREFIX) + 6

_MEMBER = (
    "select m.id, m.account_id, m.person_id, p.email, p.name, m.role, m.created_at,"
    " m.updated_at from members m join people p on p.id = m.person_id"
)
_TOKEN = "id, account_id, name, role, prefix, created_by, created_at, revoked_at"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class People:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- members ---------------------------------------------------------------------

    async def members(self, account_id: str) -> list[Member]:
        await _account(self.pool, account_id)
        rows = await self.pool.fetch(
            f"{_MEMBER} where m.account_id = $1 order by m.created_at, m.id", account_id
        )
        return [Member.from_row(r) for r in rows]

    async def member(self, account_id: str, member_id: str) -> Member:
        return await _member(self.pool, account_id, member_id)

    async def memberships(self, person_id: str) -> list[tuple[Member, str]]:
        """Every account the person belongs to, with the account's name."""
        rows = await self.pool.fetch(
            f"select q.*, a.name as account_name from ({_MEMBER} where m.person_id = $1) q"
            " join accounts a on a.id = q.account_id where a.status <> 'closed'"
            " order by a.name, a.id",
            person_id,
        )
        return [(Member.from_row(r), r["account_name"]) for r in rows]

    async def add_member(self, actor: Actor, account_id: str, new: models.NewMember) -> Member:
        if not assignable(actor.principal, Role(new.role)):
            raise Forbidden(f"only an owner may make someone {new.role}")
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            person_id = await conn.fetchval(
                "insert into people (id, email, name) values ($1, $2, $3)"
                " on conflict (lower(email)) do update set email = people.email returning id",
                ids.new_id(ids.PERSON),
                new.email,
                new.name,
            )
            member_id = await conn.fetchval(
                "insert into members (id, account_id, person_id, role) values ($1, $2, $3, $4)"
                " on conflict (account_id, person_id) do nothing returning id",
                ids.new_id(ids.MEMBER),
                account_id,
                person_id,
                new.role,
            )
            if member_id is None:
                raise Conflict(f"{new.email} is already a member of {account_id}")
            member = await _member(conn, account_id, member_id)
            await audit.record(
                conn,
                actor,
                "member.add",
                "member",
                member.id,
                account_id=account_id,
                after=member,
            )
        return member

    async def change_role(self, actor: Actor, account_id: str, member_id: str, role: str) -> Member:
        if not assignable(actor.principal, Role(role)):
            raise Forbidden(f"only an owner may make someone {role}")
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            before = await _member(conn, account_id, member_id)
            if before.role == role:
                return before
            if before.role == Role.OWNER:
                await _keep_an_owner(conn, account_id, member_id)
            await conn.execute(
                "update members set role = $2, updated_at = now() where id = $1", member_id, role
            )
            after = await _member(conn, account_id, member_id)
            await audit.record(
                conn,
                actor,
                "member.role",
                "member",
                member_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        return after

    async def remove_member(self, actor: Actor, account_id: str, member_id: str) -> Member:
        async with self.pool.acquire() as conn, conn.transaction():
            await _account(conn, account_id, lock=True)
            before = await _member(conn, account_id, member_id)
            if before.role == Role.OWNER:
                await _keep_an_owner(conn, account_id, member_id)
            await conn.execute("delete from portal_links where member_id = $1", member_id)
            await conn.execute(
                "update portal_sessions set ended_at = now() where person_id = $1"
                " and account_id = $2 and ended_at is null",
                before.person_id,
                account_id,
            )
            await conn.execute("delete from members where id = $1", member_id)
            await audit.record(
                conn,
                actor,
                "member.remove",
                "member",
                member_id,
                account_id=account_id,
                before=before,
            )
        return before

    # -- tokens ----------------------------------------------------------------------

    async def tokens(self, account_id: str | None) -> list[Token]:
        """An account's tokens, or (None) the operator tokens."""
        if account_id is not None:
            await _account(self.pool, account_id)
        rows = await self.pool.fetch(
            f"select {_TOKEN} from api_tokens where account_id is not distinct from $1"
            " order by created_at, id",
            account_id,
        )
        return [Token.from_row(r) for r in rows]

    async def create_token(
        self, actor: Actor, account_id: str | None, name: str, role: str
    ) -> tuple[Token, str]:
        """A new token and its secret (shown once). ``account_id`` None: an operator token."""
        if not assignable(actor.principal, Role(role)):
            raise Forbidden(f"a {actor.principal.role} may not create a {role} token")
        secret = TOKEN_PREFIX + "".join(
            secrets.choice(ids.ALPHABET) for _ in range(TOKEN_RANDOM_CHARS)
        )
        async with self.pool.acquire() as conn, conn.transaction():
            if account_id is not None:
                await _account(conn, account_id, lock=True, open_only=True)
            row = await conn.fetchrow(
                "insert into api_tokens (id, account_id, name, role, token_hash, prefix,"
                f" created_by) values ($1, $2, $3, $4, $5, $6, $7) returning {_TOKEN}",
                ids.new_id(ids.TOKEN),
                account_id,
                name,
                role,
                token_digest(secret),
                secret[:VISIBLE_TOKEN_CHARS],
                f"{actor.principal.actor_type}:{actor.principal.actor_id}",
            )
            token = Token.from_row(row)
            await audit.record(
                conn,
                actor,
                "token.create",
                "token",
                token.id,
                account_id=account_id,
                after=token,
            )
        return token, secret

    async def revoke_token(self, actor: Actor, token_id: str, *, operator: bool) -> Token:
        """Revoke once; ``operator`` says which kind the route revokes (the other is 404)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "update api_tokens set revoked_at = coalesce(revoked_at, now())"
                " where id = $1 and (account_id is null) = $2"
                f" returning {_TOKEN}",
                token_id,
                operator,
            )
            if row is None:
                raise NotFound(f"no token {token_id!r}")
            token = Token.from_row(row)
            await audit.record(
                conn,
                actor,
                "token.revoke",
                "token",
                token.id,
                account_id=token.account_id,
                after=token,
            )
        return token

    async def principal_of(self, token: str) -> Principal | None:
        """The principal a presented token stands for; None: unknown, revoked or closed."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        row = await self.pool.fetchrow(
            "select t.id, t.name, t.role, t.account_id from api_tokens t"
            " left join accounts a on a.id = t.account_id"
            " where t.token_hash = $1 and t.revoked_at is null"
            " and (a.id is null or a.status <> $2)",
            token_digest(token),
            CLOSED,
        )
        if row is None:
            return None
        kind = ActorType.OPERATOR_TOKEN if row["account_id"] is None else ActorType.ACCOUNT_TOKEN
        return Principal(kind, row["id"], row["name"], Role(row["role"]), row["account_id"])


async def _account(
    conn: Any, account_id: str, *, lock: bool = False, open_only: bool = True
) -> None:
    account = await repo.get_account(conn, account_id, for_update=lock)
    if account is None:
        raise NotFound(f"no account {account_id!r}")
    if lock and open_only and account.status == CLOSED:
        raise Conflict(f"account {account_id} is closed")


async def _member(conn: Any, account_id: str, member_id: str) -> Member:
    row = await conn.fetchrow(
        f"{_MEMBER} where m.id = $1 and m.account_id = $2", member_id, account_id
    )
    if row is None:
        raise NotFound(f"no member {member_id!r}")
    return Member.from_row(row)


async def _keep_an_owner(conn: Any, account_id: str, leaving: str) -> None:
    others = await conn.fetchval(
        "select count(*) from members where account_id = $1 and role = 'owner' and id <> $2",
        account_id,
        leaving,
    )
    if others == 0:
        raise LastOwner(f"{leaving} is the last owner of {account_id}; make another owner first")
