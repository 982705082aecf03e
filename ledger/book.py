"""Reading the book (Postgres) for reconcile and repair: one consistent snapshot per
shard (REPEATABLE READ), so each balance and the shard's offset belong together.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from ledger.drift import BookAccount
from ledger.events import StreamId
from meter import entry_kinds, keys

# The kinds of ledger entry that are written to Postgres first and then applied to Redis
# by credit.lua under ``keys.credit_id(entry id)`` (the admin API's POSTGRES_FIRST_KINDS).
# The worker's own "usage" entries come from Redis and are stored already applied.
CREDIT_KINDS = entry_kinds.POSTGRES_FIRST


def credit_id(entry_id: int) -> str:
    """The id credit.lua remembers for a credit (shared with the admin API)."""
    return keys.credit_id(entry_id)


@dataclass(frozen=True, slots=True)
class ShardBook:
    shard: int
    offset: StreamId
    accounts: tuple[BookAccount, ...]


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """Everything repair needs about one account."""

    account_id: str
    balance: int
    config_version: int
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    low_balance_threshold: int | None
    suspended: bool
    spent_today: int  # from the rollups of today
    notify_fired_today: bool
    limit_fired_today: bool
    credits: tuple[tuple[str, int], ...]  # (credit id, created at ms), recent ones
    revoked_keys: tuple[str, ...]
    # Required and none on file: the gateway refuses the calls (status p) until one is.
    payment_method_required: bool = False
    price_table: str | None = None  # its plan's, when the plan has prices of its own


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_hash: str
    key_id: str
    project_id: str
    account_id: str


@dataclass(frozen=True, slots=True)
class RepairBook:
    shard: int
    offset: StreamId
    accounts: tuple[AccountRecord, ...]
    keys: tuple[KeyRow, ...]
    price_tables: tuple[tuple[str, dict[str, Any]], ...] = ()  # (plan id, its prices)


async def shards_in_use(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "select shard from accounts union select shard from ledger_offsets order by 1"
    )
    return [r["shard"] for r in rows]


async def _offset(conn: asyncpg.Connection, shard: int) -> StreamId:
    raw = await conn.fetchval("select last_id from ledger_offsets where shard = $1", shard)
    return StreamId(0, 0) if raw is None else StreamId.parse(raw)


async def read_shard(conn: asyncpg.Connection, shard: int) -> ShardBook:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        offset = await _offset(conn, shard)
        accounts = await conn.fetch(
            "select id, balance from accounts where shard = $1 order by id", shard
        )
        pending = await conn.fetch(
            "select e.id, e.account_id, e.amount from ledger_entries e"
            " join accounts a on a.id = e.account_id"
            " where not e.redis_applied and e.kind = any($2::text[]) and a.shard = $1"
            " order by e.id",
            shard,
            list(CREDIT_KINDS),
        )
    credits: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in pending:
        credits[r["account_id"]].append((credit_id(r["id"]), r["amount"]))
    return ShardBook(
        shard,
        offset,
        tuple(
            BookAccount(r["id"], r["balance"], tuple(credits.get(r["id"], ()))) for r in accounts
        ),
    )


async def read_shard_for_repair(
    conn: asyncpg.Connection, shard: int, today: int, credits_since_ms: int
) -> RepairBook:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        offset = await _offset(conn, shard)
        accounts = await conn.fetch(
            "select id, balance, config_version, overage_line, daily_hard_limit,"
            " daily_notify_threshold, low_balance_threshold, status,"
            " require_payment_method and not has_payment_method as payment_method_required,"
            " price_table from accounts where shard = $1 order by id",
            shard,
        )
        tables = await conn.fetch(
            "select id, prices from plans where id in"
            " (select price_table from accounts where shard = $1) order by id",
            shard,
        )
        spent = await conn.fetch(
            "select r.account_id, sum(r.amount)::bigint as amount from usage_rollups r"
            " join accounts a on a.id = r.account_id where a.shard = $1 and r.day = $2"
            " group by r.account_id",
            shard,
            today,
        )
        fired = await conn.fetch(
            "select distinct s.account_id, s.kind from account_signals s"
            " join accounts a on a.id = s.account_id where a.shard = $1 and s.day = $2"
            " and s.kind in ('notify_threshold', 'hard_limit')",
            shard,
            today,
        )
        credits = await conn.fetch(
            "select e.id, e.account_id,"
            " (extract(epoch from e.created_at) * 1000)::bigint as at_ms from ledger_entries e"
            " join accounts a on a.id = e.account_id where a.shard = $1"
            " and e.kind = any($3::text[]) and e.kind <> 'usage'"
            " and e.created_at >= to_timestamp($2::bigint / 1000.0) order by e.id",
            shard,
            credits_since_ms,
            list(CREDIT_KINDS),
        )
        api_keys = await conn.fetch(
            "select k.key_hash, k.id, k.project_id, k.account_id,"
            " k.revoked_at is not null as revoked from api_keys k"
            " join accounts a on a.id = k.account_id where a.shard = $1 order by k.id",
            shard,
        )
    spent_today = {r["account_id"]: r["amount"] for r in spent}
    fired_today = {(r["account_id"], r["kind"]) for r in fired}
    credit_ids: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in credits:
        credit_ids[r["account_id"]].append((credit_id(r["id"]), r["at_ms"]))
    revoked: dict[str, list[str]] = defaultdict(list)
    for r in api_keys:
        if r["revoked"]:
            revoked[r["account_id"]].append(r["id"])
    return RepairBook(
        shard,
        offset,
        tuple(
            AccountRecord(
                account_id=r["id"],
                balance=r["balance"],
                config_version=r["config_version"],
                overage_line=r["overage_line"],
                daily_hard_limit=r["daily_hard_limit"],
                daily_notify_threshold=r["daily_notify_threshold"],
                low_balance_threshold=r["low_balance_threshold"],
                suspended=r["status"] in ("suspended", "closed"),
                spent_today=spent_today.get(r["id"], 0),
                notify_fired_today=(r["id"], "notify_threshold") in fired_today,
                limit_fired_today=(r["id"], "hard_limit") in fired_today,
                credits=tuple(credit_ids.get(r["id"], ())),
                revoked_keys=tuple(revoked.get(r["id"], ())),
                payment_method_required=r["payment_method_required"],
                price_table=r["price_table"],
            )
            for r in accounts
        ),
        tuple(KeyRow(r["key_hash"], r["id"], r["project_id"], r["account_id"]) for r in api_keys),
        tuple((r["id"], orjson.loads(r["prices"])) for r in tables if r["prices"] is not None),
    )
