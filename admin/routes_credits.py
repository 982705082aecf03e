"""Credits: money in, once per idempotency key.

A replay (same account, same ``idempotency_key``, same amount, description
and kind) answers ``200`` with the entry the first request created (which
answered ``201``), plus ``Idempotent-Replayed: true``; nothing more is
credited. The same key with a different body is a ``409``.
"""

from __future__ import annotations

from aiohttp import web

from admin import ids, validation, views
from admin.context import PROVISIONING
from admin.request_io import json_body, json_response, live_sync_headers, path_id

REPLAYED_HEADER = "Idempotent-Replayed"


async def add_credit(request: web.Request) -> web.Response:
    account_id = path_id(request, "account_id", ids.ACCOUNT, "account")
    credit = validation.credit(await json_body(request))
    written = await request.app[PROVISIONING].add_credit(account_id, credit)
    headers = live_sync_headers(request, written.live, "credit")
    if written.value.replayed:
        headers[REPLAYED_HEADER] = "true"
    return json_response(
        views.ledger_entry(written.value),
        status=200 if written.value.replayed else 201,
        headers=headers,
    )


def routes() -> list[web.RouteDef]:
    return [web.post("/v1/accounts/{account_id}/credits", add_credit)]
