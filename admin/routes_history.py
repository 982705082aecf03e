"""The balance history and usage of an account, read from the ledger (Postgres).

The queries live with the ledger that writes those tables (``ledger.history``);
this module only maps the routes onto them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from admin import ids
from admin.context import CLOCK, POOL
from admin.request_io import json_response, path_id
from ledger import history


async def transactions(request: web.Request) -> web.Response:
    account_id = path_id(request, "account_id", ids.ACCOUNT, "account")
    body = await history.transactions_response(request.app[POOL], account_id, request.query)
    return json_response(body)


async def usage(request: web.Request) -> web.Response:
    account_id = path_id(request, "account_id", ids.ACCOUNT, "account")
    today = datetime.fromtimestamp(request.app[CLOCK](), UTC).date()
    body = await history.usage_response(request.app[POOL], account_id, request.query, today)
    return json_response(body)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/accounts/{account_id}/transactions", transactions, allow_head=False),
        web.get("/v1/accounts/{account_id}/usage", usage, allow_head=False),
    ]
