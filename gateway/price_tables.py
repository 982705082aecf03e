"""Plans' prices, as the gateway settles the calls admitted at them.

admit.lua debits a call at its account's price table's price and says which table
(``Admission.price_table``); that price is what the call reserved, so refunds need
nothing more. Settling a variable-cost call by its units needs the table's unit prices
too: ``route`` reads the table from Redis the first time it is needed, and keeps it.
A plan's prices never change once made (``gateway.pricing.parse_override`` fits them to
the deployment's table), so a kept table never goes stale; plans are few, and the
bound only stops a flood of them from growing the process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.pricing import BadPrices, PriceTable, Route, parse_override
from meter.live_state import PriceSpec

log = logging.getLogger("meter.gateway")

Fetch = Callable[[int, str], Awaitable[PriceSpec | None]]


class PriceTables:
    def __init__(self, table: PriceTable, fetch: Fetch, size: int = 1024) -> None:
        self.table = table
        self.fetch = fetch
        self.size = size
        self._known: dict[str, dict[str, Route]] = {}

    async def route(self, shard: int, table_id: str, route: Route) -> Route:
        """``route`` at the prices of ``table_id``; the deployment's when the table does
        not price it."""
        routes = self._known.get(table_id)
        if routes is None:
            routes = await self._read(shard, table_id)
            if len(self._known) >= self.size:
                self._known.clear()
            self._known[table_id] = routes
        return routes.get(route.name, route)

    async def _read(self, shard: int, table_id: str) -> dict[str, Route]:
        spec = await self.fetch(shard, table_id)
        if spec is None:
            # admit.lua read this table's price a moment ago: it was removed since.
            log.warning("price table %s is gone; settling at the table's units", table_id)
            return {}
        try:
            return parse_override(self.table, spec)
        except BadPrices as exc:  # the deployment's table changed under the plan
            log.warning("price table %s does not fit the price table: %s", table_id, exc)
            return {}
