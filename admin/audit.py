"""The audit log: every change, written in the transaction of the change itself.

``record`` takes the connection the change runs on, so the entry and the
change commit or roll back together. ``before`` and ``after`` are the object's
public fields (``snapshot``): never a secret or a hash of one. Reads walk
``(account_id, id desc)`` or the primary key with an ``aud_<id>`` cursor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from admin.access import Principal
from ledger.errors import BadQuery
from ledger.history_query import page_limit

Conn = Any

# Fields that must never reach the log, whatever object they are on.
SECRET_FIELDS = frozenset({"token_hash", "key_hash", "secret", "token", "key", "csrf"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, and from where: what every audit entry says."""

    principal: Principal
    request_id: str | None = None
    client_addr: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    account_id: str | None
    actor_type: str
    actor_id: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    client_addr: str | None
    created_at: datetime


def snapshot(value: Any) -> str | None:
    """A record's public fields as JSON text (datetimes in RFC 3339), for a jsonb column."""
    if value is None:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        fields = {n: getattr(value, n) for n in names if n not in SECRET_FIELDS}
    else:
        fields = {k: v for k, v in dict(value).items() if k not in SECRET_FIELDS}
    return orjson.dumps(fields, default=str).decode()


async def record(
    conn: Conn,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    *,
    account_id: str | None,
    before: Any = None,
    after: Any = None,
) -> None:
    await conn.execute(
        "insert into audit_log (account_id, actor_type, actor_id, action, object_type,"
        " object_id, before, after, request_id, client_addr)"
        " values ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10)",
        account_id,
        str(actor.principal.actor_type),
        actor.principal.actor_id,
        action,
        object_type,
        object_id,
        snapshot(before),
        snapshot(after),
        actor.request_id,
        actor.client_addr,
    )


def page_params(query: Mapping[str, str]) -> tuple[int, int]:
    """``limit`` and ``cursor`` (``aud_<id>``) of a page, or ``BadQuery`` naming each bad one."""
    errors: list[tuple[str, str]] = []
    limit = page_limit(query, errors, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    before = 2**63 - 1
    cursor = query.get("cursor")
    if cursor is not None:
        digits = cursor.removeprefix("aud_")
        if cursor.startswith("aud_") and digits.isascii() and digits.isdigit() and len(digits) < 19:
            before = int(digits)
        else:
            errors.append(("cursor", "must be the next_cursor of an earlier page"))
    if errors:
        raise BadQuery(errors)
    return limit, before


async def entries(
    conn: Conn, account_id: str | None, limit: int, before: int
) -> tuple[list[AuditEntry], str | None]:
    """Newest first; ``account_id`` None reads every account's (operators)."""
    where = "account_id = $3 and id < $1" if account_id is not None else "id < $1"
    args: list[Any] = [before, limit + 1] + ([account_id] if account_id is not None else [])
    rows = await conn.fetch(
        f"select * from audit_log where {where} order by id desc limit $2", *args
    )
    found = [_entry(r) for r in rows[:limit]]
    more = len(rows) > limit
    return found, (found[-1].id if more and found else None)


def _entry(r: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=f"aud_{r['id']}",
        account_id=r["account_id"],
        actor_type=r["actor_type"],
        actor_id=r["actor_id"],
        action=r["action"],
        object_type=r["object_type"],
        object_id=r["object_id"],
        before=orjson.loads(r["before"]) if r["before"] is not None else None,
        after=orjson.loads(r["after"]) if r["after"] is not None else None,
        request_id=r["request_id"],
        client_addr=r["client_addr"],
        created_at=r["created_at"],
    )
