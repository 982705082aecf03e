"""The admin API's SQL, and nothing else: asyncpg in, ``admin.records`` values out.

Every function takes a connection (or a pool: both have ``fetchrow``/``execute``)
so the caller decides what runs in one transaction. Each change of an account's
limits or status bumps ``config_version``; the Redis sync script applies a
version only once and never an older one, so concurrent updates land in Redis
in Postgres order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from admin.records import Account, ApiKey, LedgerEntry, Project
from grants import store as grant_store
from meter import entry_kinds, postgres_errors

Conn = Any  # asyncpg.Connection | asyncpg.Pool (asyncpg ships no type hints)

# Errors that mean "Postgres is unreachable", not "this query is wrong".
CONNECTION_ERRORS = postgres_errors.UNAVAILABLE

# Ledger kinds written here first and then credited in Redis. Usage and refunds
# start in Redis (the gateway's scripts) and reach Postgres already applied.
POSTGRES_FIRST_KINDS = entry_kinds.POSTGRES_FIRST

_KEY_COLUMNS = (
    "k.id, k.project_id, k.account_id, a.shard, k.key_hash, k.prefix,"
    " k.created_at, k.revoked_at, k.redis_synced"
)
_ENTRY_COLUMNS = (
    "e.id, e.account_id, a.shard, e.amount, e.balance_after, e.kind, e.description,"
    " e.idempotency_key, e.created_at, e.redis_applied"
)


async def ping(conn: Conn) -> None:
    await conn.fetchval("select 1")


# -- accounts ---------------------------------------------------------------------


async def insert_account(
    conn: Conn, account_id: str, name: str, billing_email: str | None, shard: int
) -> Account:
    row = await conn.fetchrow(
        "insert into accounts (id, name, billing_email, shard) values ($1, $2, $3, $4) returning *",
        account_id,
        name,
        billing_email,
        shard,
    )
    return Account.from_row(row)


async def get_account(conn: Conn, account_id: str, *, for_update: bool = False) -> Account | None:
    lock = " for update" if for_update else ""
    row = await conn.fetchrow(f"select * from accounts where id = $1{lock}", account_id)
    return None if row is None else Account.from_row(row)


async def update_account(
    conn: Conn, account_id: str, assignments: str, *args: Any, config: bool
) -> Account | None:
    """``update accounts set <assignments>`` ($2... are ``args``), bumping the versions.

    ``config``: the change is one Redis must see (limits, status), so it gets a new
    ``config_version``; every change gets a new ``row_version`` (the ETag).
    """
    bump = ", config_version = config_version + 1" if config else ""
    row = await conn.fetchrow(
        f"update accounts set {assignments}{bump}, row_version = row_version + 1,"
        " updated_at = now() where id = $1 returning *",
        account_id,
        *args,
    )
    return None if row is None else Account.from_row(row)


LIMITS = (
    "overage_line = $2, daily_hard_limit = $3, daily_notify_threshold = $4,"
    " low_balance_threshold = case when $6 then $5 else low_balance_threshold end"
)


def like_pattern(text: str) -> str:
    """``text`` anywhere, with LIKE's own characters matched literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_accounts(
    conn: Conn, *, after: str, limit: int, name: str | None, status: str | None
) -> list[Account]:
    """Keyset pages by id; ``name`` matches anywhere in the name, case-insensitively."""
    clauses, args = ["id > $1"], [after, limit]
    if name is not None:
        args.append(like_pattern(name))
        clauses.append(f"name ilike ${len(args)}")
    if status == "pending_deletion":
        clauses.append("status = 'active' and deletion_requested_at is not null")
    elif status == "active":
        clauses.append("status = 'active' and deletion_requested_at is null")
    elif status is not None:
        args.append(status)
        clauses.append(f"status = ${len(args)}")
    rows = await conn.fetch(
        f"select * from accounts where {' and '.join(clauses)} order by id limit $2", *args
    )
    return [Account.from_row(r) for r in rows]


async def owner_of(conn: Conn, table: str, object_id: str) -> str | None:
    """The account an object belongs to (None: no such object, or an operator token)."""
    assert table in ("projects", "api_keys", "api_tokens", "payments", "invoices")
    value: str | None = await conn.fetchval(
        f"select account_id from {table} where id = $1", object_id
    )
    return value


async def mark_account_synced(conn: Conn, account_id: str, version: int) -> None:
    await conn.execute(
        "update accounts set redis_version = greatest(redis_version, $2) where id = $1",
        account_id,
        version,
    )


async def unsynced_accounts(conn: Conn, after: str, limit: int) -> list[Account]:
    rows = await conn.fetch(
        "select * from accounts where redis_version < config_version and id > $1"
        " order by id limit $2",
        after,
        limit,
    )
    return [Account.from_row(r) for r in rows]


# -- projects ---------------------------------------------------------------------


async def insert_project(conn: Conn, project_id: str, account_id: str, name: str) -> Project:
    row = await conn.fetchrow(
        "insert into projects (id, account_id, name) values ($1, $2, $3) returning *",
        project_id,
        account_id,
        name,
    )
    return Project.from_row(row)


async def list_projects(conn: Conn, account_id: str) -> list[Project]:
    rows = await conn.fetch(
        "select * from projects where account_id = $1 order by created_at, id", account_id
    )
    return [Project.from_row(r) for r in rows]


async def get_project(conn: Conn, project_id: str) -> Project | None:
    row = await conn.fetchrow("select * from projects where id = $1", project_id)
    return None if row is None else Project.from_row(row)


# -- API keys ---------------------------------------------------------------------


async def insert_api_key(
    conn: Conn, key_id: str, project: Project, key_hash: str, prefix: str
) -> ApiKey:
    row = await conn.fetchrow(
        "with k as (insert into api_keys (id, project_id, account_id, key_hash, prefix)"
        " values ($1, $2, $3, $4, $5) returning *)"
        f" select {_KEY_COLUMNS} from k join accounts a on a.id = k.account_id",
        key_id,
        project.id,
        project.account_id,
        key_hash,
        prefix,
    )
    return ApiKey.from_row(row)


async def list_api_keys(conn: Conn, project_id: str) -> list[ApiKey]:
    rows = await conn.fetch(
        f"select {_KEY_COLUMNS} from api_keys k join accounts a on a.id = k.account_id"
        " where k.project_id = $1 order by k.created_at, k.id",
        project_id,
    )
    return [ApiKey.from_row(r) for r in rows]


async def revoke_api_key(conn: Conn, key_id: str) -> ApiKey | None:
    """Revoke once: a second call keeps the first ``revoked_at`` and changes nothing."""
    row = await conn.fetchrow(
        "with k as (update api_keys set revoked_at = coalesce(revoked_at, now()),"
        " redis_synced = redis_synced and revoked_at is not null"
        " where id = $1 returning *)"
        f" select {_KEY_COLUMNS} from k join accounts a on a.id = k.account_id",
        key_id,
    )
    return None if row is None else ApiKey.from_row(row)


async def mark_key_synced(conn: Conn, key_id: str, *, revoked: bool) -> None:
    """Mark only if the revocation state is still the one applied to Redis."""
    await conn.execute(
        "update api_keys set redis_synced = true where id = $1 and (revoked_at is not null) = $2",
        key_id,
        revoked,
    )


async def unsynced_api_keys(conn: Conn, after: str, limit: int) -> list[ApiKey]:
    rows = await conn.fetch(
        f"select {_KEY_COLUMNS} from api_keys k join accounts a on a.id = k.account_id"
        " where not k.redis_synced and k.id > $1 order by k.id limit $2",
        after,
        limit,
    )
    return [ApiKey.from_row(r) for r in rows]


# -- ledger -----------------------------------------------------------------------


async def entry_by_idempotency_key(
    conn: Conn, account_id: str, idempotency_key: str
) -> LedgerEntry | None:
    row = await conn.fetchrow(
        f"select {_ENTRY_COLUMNS} from ledger_entries e join accounts a on a.id = e.account_id"
        " where e.account_id = $1 and e.idempotency_key = $2",
        account_id,
        idempotency_key,
    )
    return None if row is None else LedgerEntry.from_row(row)


async def insert_credit(
    conn: Conn,
    account: Account,
    *,
    amount: int,
    kind: str,
    description: str,
    idempotency_key: str,
    grant_kind: str | None = None,
    expires_at: datetime | None = None,
    draw_first: str | None = None,
) -> LedgerEntry:
    """The entry, the balance it moves and its grant, in the caller's transaction.

    The caller holds the account row locked (``get_account(for_update=True)``),
    so ``account.balance`` is current and ``balance_after`` exact. A credit becomes a
    grant (``grant_kind``, ``expires_at``); a debit draws on the grants, those of the
    entry keyed ``draw_first`` first (``grants.store.on_entry``).
    """
    row = await conn.fetchrow(
        "with e as (insert into ledger_entries"
        " (account_id, amount, balance_after, kind, description, idempotency_key)"
        " values ($1, $2, $3, $4, $5, $6) returning *),"
        " b as (update accounts set balance = balance + $2, updated_at = now() where id = $1)"
        f" select {_ENTRY_COLUMNS} from e join accounts a on a.id = e.account_id",
        account.id,
        amount,
        account.balance + amount,
        kind,
        description,
        idempotency_key,
    )
    entry = LedgerEntry.from_row(row)
    await grant_store.on_entry(
        conn,
        account_id=account.id,
        entry_id=entry.id,
        kind=kind,
        amount=amount,
        balance_before=account.balance,
        grant_kind=grant_kind,
        expires_at=expires_at,
        draw_first=draw_first,
    )
    return entry


async def mark_entry_applied(conn: Conn, entry_id: int) -> None:
    await conn.execute("update ledger_entries set redis_applied = true where id = $1", entry_id)


async def unapplied_entries(conn: Conn, after: int, limit: int) -> list[LedgerEntry]:
    rows = await conn.fetch(
        f"select {_ENTRY_COLUMNS} from ledger_entries e join accounts a on a.id = e.account_id"
        " where not e.redis_applied and e.kind = any($3::text[]) and e.id > $1"
        " order by e.id limit $2",
        after,
        limit,
        list(POSTGRES_FIRST_KINDS),
    )
    return [LedgerEntry.from_row(r) for r in rows]
