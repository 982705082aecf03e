"""Stripe's Search API for PaymentIntents, Customers and Charges, and listing
PaymentIntents by customer (both missing in localstripe).

The query language is in search_query.py. Results are newest first, paged with an
opaque ``page``.
Stripe's search lags writes by up to a minute; the double's does not.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from localstripe import resources
from localstripe.errors import UserError
from localstripe.server import unflatten_data

from meter.stripe_double.search_query import QueryError, parse

SEARCHABLE = {"payment_intents": "payment_intent", "customers": "customer", "charges": "charge"}


def newest_first(object_name: str) -> list[Any]:
    # The store keeps insertion order; `created` has only whole seconds.
    prefix = object_name + ":"
    return [obj for key, obj in reversed(list(resources.store.items())) if key.startswith(prefix)]


def search_handler(collection: str) -> Any:
    object_name = SEARCHABLE[collection]

    async def search(request: web.Request) -> web.Response:
        data = unflatten_data(request.query)
        expand = data.pop("expand", None)
        try:
            query = parse(str(data.get("query", "")))
        except QueryError as e:
            raise UserError(400, f"Invalid search query: {e}") from None
        limit = resources.try_convert_to_int(data.get("limit", 10))
        start = resources.try_convert_to_int(data.get("page", 0))
        if not isinstance(limit, int) or not 1 <= limit <= 100 or not isinstance(start, int):
            raise UserError(400, "Bad request")
        found = [o._export(expand=expand) for o in newest_first(object_name)]
        found = [o for o in found if query.matches(o)]
        page = found[start : start + limit]
        more = start + limit < len(found)
        return web.json_response(
            {
                "object": "search_result",
                "data": page,
                "has_more": more,
                "next_page": str(start + limit) if more else None,
                "url": f"/v1/{collection}/search",
            }
        )

    return search


def install_list_by_customer() -> None:
    """``GET /v1/payment_intents?customer=``: newest first, as Stripe lists."""

    def list_all(
        cls: Any,
        /,
        url: str,
        customer: str | None = None,
        limit: Any = None,
        starting_after: str | None = None,
        **unexpected: Any,
    ) -> Any:
        if unexpected:
            raise UserError(400, "Unexpected " + ", ".join(unexpected))
        li = resources.List(url, limit=limit, starting_after=starting_after)
        li._list = [
            pi
            for pi in newest_first("payment_intent")
            if customer is None or pi.customer == customer
        ]
        return li

    resources.PaymentIntent._api_list_all = classmethod(list_all)


def add_routes(app: web.Application) -> None:
    # A plain path is resolved before localstripe's /v1/<collection>/{id}.
    for collection in SEARCHABLE:
        app.router.add_get(f"/v1/{collection}/search", search_handler(collection))
