"""Credit grants: what each credit holds, until when, and in which order usage draws.

Every credit is a grant (``POST .../credits`` with ``grant_kind`` and ``expires_at``;
purchases and recharges are ``purchased`` grants without an expiry). Usage draws on
the live grant that expires first; the ledger worker computes it per batch, so a
grant's ``remaining`` follows the book (Postgres), not the live balance.
"""

from __future__ import annotations

from typing import Any

from admin import models
from admin.access import Permission as P
from admin.declared import Call, Operation, Reply
from grants.store import GrantRecord
from ledger import history_query
from ledger.errors import BadQuery
from ledger.history_query import page_limit
from meter import entry_kinds

A = "/v1/accounts/{account_id}"
PREFIX = "grt_"


def grant_model(g: GrantRecord) -> models.Grant:
    def entry(n: int | None) -> str | None:
        return None if n is None else entry_kinds.entry_id(n)

    return models.Grant(
        id=f"{PREFIX}{g.id}",
        account_id=g.account_id,
        kind=g.kind,  # type: ignore[arg-type]
        status="live" if g.ended_at is None else "expired",
        amount=g.amount,
        remaining=g.remaining,
        expires_at=g.expires_at,
        created_at=g.created_at,
        ended_at=g.ended_at,
        expired_amount=g.expired_amount,
        ledger_entry_id=entry(g.ledger_entry_id),
        expiry_entry_id=entry(g.expiry_entry_id),
    )


async def list_grants(call: Call[Any]) -> Reply:
    q = call.request.query
    errors: list[tuple[str, str]] = []
    limit = page_limit(
        q, errors, default=history_query.DEFAULT_LIMIT, maximum=history_query.MAX_LIMIT
    )
    cursor = q.get("cursor")
    before = None
    if cursor is not None:
        digits = cursor.removeprefix(PREFIX)
        if not cursor.startswith(PREFIX) or not digits.isascii() or not digits.isdigit():
            errors.append(("cursor", "must be the next_cursor of an earlier page"))
        else:
            before = int(digits)
    if errors:
        raise BadQuery(errors)
    provisioning = call.services.provisioning
    items, next_id = await provisioning.grants(call.account, limit=limit, before=before)
    live = await provisioning.live_grants(call.account)
    return Reply(
        models.GrantPage(
            data=[grant_model(g) for g in items],
            next_cursor=None if next_id is None else f"{PREFIX}{next_id}",
            live_remaining=sum(g.remaining for g in live),
        )
    )


OPERATIONS = [
    Operation(
        "GET",
        A + "/grants",
        "listGrants",
        "List the account's credit grants, live and expired, newest first",
        list_grants,
        P.READ,
        "account_id",
        {200: (models.GrantPage, "One page.")},
        errors=(400,),
        parameters=(
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": history_query.MAX_LIMIT},
                "description": "Grants per page.",
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "pattern": models.GRANT_ID_PATTERN},
                "description": "next_cursor of the page before.",
            },
        ),
    ),
]
