"""`meter ledger`: the worker, its payments, notifications, billing and grant expiry
loops (payments/loop.py, notifications/loop.py, billing/loop.py, grants/expiry.py) and
its HTTP server
(/metrics, /healthz, /readyz) in one process, on uvloop, with JSON logs. SIGTERM or
SIGINT ends it gracefully: each shard finishes the batch in hand (or rolls it back after
``METER_SHUTDOWN_GRACE``), its lock is released, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

import asyncpg
import uvloop
from aiohttp import web

from billing import loop as billing_loop
from billing.invoices import Closer
from grants import expiry
from grants.metrics import GrantMetrics
from ledger.app import create_app
from ledger.crash import CrashHook
from ledger.metrics import LedgerMetrics
from ledger.worker import create_worker, redis_client
from meter.live_state import LiveState
from meter.logs import setup_logging
from meter.settings import Settings
from notifications import loop as notifications_loop
from notifications.deliveries import open_outlet
from notifications.metrics import NotificationMetrics
from payments import loop as payments_loop
from payments.metrics import PaymentMetrics
from payments.service import open_context

log = logging.getLogger("meter.ledger")


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = LedgerMetrics()
    client = redis_client(settings)
    worker = create_worker(settings, client, metrics)
    runner = web.AppRunner(create_app(worker, metrics, client), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.ledger_host, settings.ledger_port)
    await site.start()
    log.info("ledger worker started", extra={"worker": worker.name, "listen": runner.addresses})
    # min_size=0: the worker starts while Postgres is away; /readyz says so.
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4)
    live = LiveState.from_url(settings.redis_url, timeout=settings.redis_timeout)
    ctx = open_context(pool, live, settings, metrics=PaymentMetrics(metrics.registry))
    payments = asyncio.create_task(payments_loop.run(ctx, stop), name="payments")
    outlet = open_outlet(pool, settings, metrics=NotificationMetrics(metrics.registry))
    notifying = asyncio.create_task(notifications_loop.run(outlet, stop), name="notifications")
    closer = Closer(pool, live, settings, crash=CrashHook.from_settings(settings))
    billing = asyncio.create_task(billing_loop.run(closer, stop, ctx), name="billing")
    sweeper = expiry.Sweeper(
        pool,
        live,
        settings,
        crash=CrashHook.from_settings(settings),
        metrics=GrantMetrics(metrics.registry),
    )
    expiring = asyncio.create_task(expiry.run(sweeper, stop), name="grant-expiry")
    try:
        await worker.run(stop)
    finally:
        log.info("ledger worker stopping", extra={"worker": worker.name})
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(
                asyncio.gather(payments, notifying, billing, expiring), settings.shutdown_grace
            )
        await runner.cleanup()
        await client.aclose()
        if ctx.api is not None:
            await ctx.api.close()
        await outlet.http.close()
        await live.close()
        await pool.close()


def main(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT (blocking)."""
    setup_logging(settings.log_level)
    # A batch makes ~20 container objects per event (the reply, the events, the COPY
    # records): with the default threshold the cyclic GC would run every few dozen
    # events. Nothing here makes cycles worth chasing that often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    uvloop.run(serve(settings))
