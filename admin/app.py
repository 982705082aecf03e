"""``create_app(settings)``: the admin API's one wiring point.

Resources are opened and closed as pairs in ``cleanup_ctx``: the Postgres
pool and the Redis live state, then the background sync loop that re-applies
to Redis whatever a crash or an outage left unapplied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web

from admin import declared, middlewares, operations, protocol_log, routes_ops, sync
from admin.auth import TokenAuthenticator
from admin.context import CLOCK, FIRST_SYNC_DONE, LIVE, METRICS, POOL, SERVICES, SETTINGS
from admin.metrics import AdminMetrics
from admin.services import open_services
from meter.live_state import LiveState
from meter.settings import ConfigError, Settings
from payments.metrics import PaymentMetrics

POOL_MAX_SIZE = 10


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    if not settings.admin_token:
        raise ConfigError("METER_ADMIN_TOKEN is empty: the admin API needs a bearer token to start")
    metrics = AdminMetrics()
    app = web.Application(
        client_max_size=settings.admin_max_body_bytes,
        handler_args=protocol_log.handler_args(),
        middlewares=[
            middlewares.observe(metrics),
            middlewares.problems(),
            middlewares.authenticate(TokenAuthenticator.from_settings(settings)),
        ],
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[CLOCK] = clock
    app.add_routes(routes_ops.routes())
    app.add_routes(
        declared.route_defs(operations.ALL, lambda op: metrics.live_deferred.labels(op).inc())
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        # min_size=0: the API starts while Postgres is still coming up; /readyz tells.
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=POOL_MAX_SIZE)
        live = LiveState.from_url(settings.redis_url, timeout=settings.redis_timeout, clock=clock)
        app[POOL] = pool
        app[LIVE] = live
        app[SERVICES] = open_services(
            pool, live, settings, clock, payment_metrics=PaymentMetrics(metrics.registry)
        )
        try:
            yield
        finally:
            await app[SERVICES].payments.close()
            await live.close()
            await pool.close()

    async def sync_loop(app: web.Application) -> AsyncIterator[None]:
        first_done = app[FIRST_SYNC_DONE] = asyncio.Event()

        def on_report(report: sync.SyncReport) -> None:
            metrics.record_sync(report)
            first_done.set()

        def on_failure(exc: BaseException) -> None:
            metrics.sync_failures.inc()
            first_done.set()

        loop = sync.sync_forever(
            app[POOL], app[LIVE], settings.sync_interval, on_report=on_report, on_failure=on_failure
        )
        task = asyncio.create_task(loop, name="admin-sync")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(sync_loop)
    return app
