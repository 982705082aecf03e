"""The balance history and usage of an account, read from the ledger (Postgres).

The queries and their parameters live with the ledger that writes those tables
(``ledger.history``, ``ledger.history_query``); this module maps routes onto them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from admin import models
from admin.access import Permission as P
from admin.declared import Call, Operation, Reply
from ledger import history, history_query

_DATE = {
    "type": "string",
    "format": "date",
    "pattern": history_query.DATE_PATTERN,
    "description": "From 1970-01-01, the ledger's first day, on.",
}
_FROM = "30 days up to to; by month, the 1st of the month 11 months before to's."
_RANGE_RULES = (
    "from must not be after to (with their defaults), and the range may span at most"
    f" {history_query.MAX_RANGE_DAYS} days (to - from < {history_query.MAX_RANGE_DAYS});"
    " otherwise 400 bad-query naming from. Each parameter is checked first: any malformed"
    " one, an empty one (to=) included, is a 400 listing each in errors."
)


async def transactions(call: Call[Any]) -> Reply:
    body = await history.transactions_response(call.services.pool, call.account, call.request.query)
    return Reply(body)


async def usage(call: Call[Any]) -> Reply:
    today = datetime.fromtimestamp(call.services.clock(), UTC).date()
    body = await history.usage_response(call.services.pool, call.account, call.request.query, today)
    return Reply(body)


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


A = "/v1/accounts/{account_id}"
OPERATIONS = [
    Operation(
        "GET",
        A + "/transactions",
        "listTransactions",
        "The balance history, newest first (credits positive, debits negative)",
        transactions,
        P.READ,
        "account_id",
        {200: (models.TransactionPage, "One page.")},
        errors=(400,),
        parameters=(
            _q(
                "limit",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": history_query.MAX_LIMIT,
                    "default": history_query.DEFAULT_LIMIT,
                },
            ),
            _q(
                "cursor",
                {"type": "string", "pattern": history_query.CURSOR_PATTERN},
                "next_cursor of the page before, as it was returned.",
            ),
        ),
    ),
    Operation(
        "GET",
        A + "/usage",
        "getUsage",
        "Calls and amount charged, by day, month or route, with today and yesterday"
        " (from the ledger: lags the live state by the batch delay)",
        usage,
        P.READ,
        "account_id",
        {200: (models.Usage, "The usage.")},
        errors=(400,),
        description=_RANGE_RULES,
        parameters=(
            _q("from", _DATE, "The first day counted. Default: " + _FROM),
            _q("to", _DATE, "The last day counted (inclusive). Default: today."),
            _q("group_by", {"enum": list(history_query.GROUPS), "default": "day"}),
        ),
    ),
]
