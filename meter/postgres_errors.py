"""Which asyncpg errors mean "Postgres is unreachable right now", not "this query is wrong".

Shared by the admin API (answers 503) and the ledger worker (backs off and
reconnects): a server that is starting up (CannotConnectNow), shutting down
(AdminShutdown) or full (TooManyConnections) is an outage to ride out, and a
worker that treated it as a bug would die on every Postgres restart.
"""

from __future__ import annotations

import asyncio

import asyncpg

UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)
