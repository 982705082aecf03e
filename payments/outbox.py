"""The outbox: events for people and systems, written in the transaction of their cause.

Each occurrence has a dedupe key (``purchase.succeeded:pay_..``, ``recharge.refused_by_cap:
acct_..:20431``); a second raise of the same key changes nothing, so whoever settles a
payment first raises its event and the others do not. Delivery (email, webhooks) reads
this table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from admin.ids import new_id
from admin.repository import Conn

EVENT = "evt"


async def raise_event(
    conn: Conn, type_: str, account_id: str | None, dedupe_key: str, data: dict[str, Any]
) -> str | None:
    """The new event's id when this call raised it (None: it was raised before)."""
    raised = await raise_events(conn, [(type_, account_id, dedupe_key, data)])
    return raised.get(dedupe_key)


RAISE_MANY = """
insert into outbox_events (id, type, account_id, dedupe_key, data)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
on conflict (dedupe_key) do nothing
returning id, dedupe_key
"""


async def raise_events(
    conn: Conn, raised: Sequence[tuple[str, str | None, str, dict[str, Any]]]
) -> dict[str, str]:
    """Many at once (type, account, dedupe key, data): the dedupe keys raised now, with
    their event ids (one statement, one wake-up, for a batch's worth)."""
    if not raised:
        return {}
    rows = await conn.fetch(
        RAISE_MANY,
        [new_id(EVENT) for _ in raised],
        [r[0] for r in raised],
        [r[1] for r in raised],
        [r[2] for r in raised],
        [orjson.dumps(r[3]).decode() for r in raised],
    )
    if rows:
        await conn.execute("select pg_notify('meter_outbox', '')")
    return {r["dedupe_key"]: r["id"] for r in rows}


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
