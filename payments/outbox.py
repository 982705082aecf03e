"""The outbox: events for people and systems, written in the transaction of their cause.

Each occurrence has a dedupe key (``purchase.succeeded:pay_..``, ``recharge.refused_by_cap:
acct_..:20431``); a second raise of the same key changes nothing, so whoever settles a
payment first raises its event and the others do not. Delivery (email, webhooks) reads
this table.
"""

from __future__ import annotations

from typing import Any

import orjson

from admin.ids import new_id
from admin.repository import Conn

EVENT = "evt"


async def raise_event(
    conn: Conn, type_: str, account_id: str | None, dedupe_key: str, data: dict[str, Any]
) -> str | None:
    """The new event's id when this call raised it (None: it was raised before)."""
    raised: str | None = await conn.fetchval(
        "insert into outbox_events (id, type, account_id, dedupe_key, data)"
        " values ($1, $2, $3, $4, $5::jsonb) on conflict (dedupe_key) do nothing returning id",
        new_id(EVENT),
        type_,
        account_id,
        dedupe_key,
        orjson.dumps(data).decode(),
    )
    if raised is not None:  # wakes the delivery loops, at commit
        await conn.execute("select pg_notify('meter_outbox', '')")
    return raised


async def events(conn: Conn, account_id: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "select id, type, dedupe_key, data, occurred_at from outbox_events"
        " where account_id = $1 order by occurred_at desc, id limit $2",
        account_id,
        limit,
    )
    return [
        {
            "id": r["id"],
            "type": r["type"],
            "data": orjson.loads(r["data"]),
            "occurred_at": r["occurred_at"],
        }
        for r in rows
    ]
