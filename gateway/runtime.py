"""What a gateway worker opens at start-up: ``open_runtime``.

The hot path is wired here, once: the account state in Redis
(``meter.hot_path_state.PipelinedState``: pipelined commands, the admissions of
one loop pass in one script call), the upstream pool
(``gateway.upstream_pool.UpstreamPool``) and the ``Proxy`` built on them, opened
and closed as a pair, and the task that gives back what Redis could not when a
call ended (``refund_retry.py``: refunds it missed, and the debits of admission
batches whose reply was lost), with its spool on disk when
``METER_REFUND_SPOOL_DIR`` is set (``refund_spool.py``).

``METER_ADMIT_CROSS_SHARD=auto`` (the default) asks Redis once (``INFO
cluster``, retried in the background while Redis is away) whether it is a
cluster node: if not, the admissions of every shard go into one script call per
loop pass instead of one per shard. Until Redis has answered, batches are per
shard, which works on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.admission import DirectAdmitter
from gateway.errors import PortalLinks
from gateway.identity import Identifier, KeyCache
from gateway.metrics import GatewayMetrics
from gateway.price_tables import PriceTables
from gateway.pricing import PriceTable, load_prices
from gateway.proxy import Proxy
from gateway.refund_retry import RefundRetry
from gateway.refund_spool import RefundSpool, check_folder
from gateway.upstream_pool import UpstreamPool
from meter.hot_path_state import PipelinedState
from meter.live_state import StateUnavailable
from meter.settings import Settings

log = logging.getLogger("gateway.runtime")


@dataclass(slots=True)
class Runtime:
    """A worker's live objects; ``draining`` turns /readyz to 503 during shutdown."""

    settings: Settings
    metrics: GatewayMetrics
    state: PipelinedState | None = None
    proxy: Proxy | None = None
    batching: asyncio.Task[bool] | None = None  # METER_ADMIT_CROSS_SHARD=auto deciding
    draining: bool = False


def open_state(settings: Settings) -> PipelinedState:
    return PipelinedState.from_settings(settings, cross_shard=settings.admit_cross_shard == "true")


async def choose_batching(state: PipelinedState, retry_every: float) -> bool:
    """``METER_ADMIT_CROSS_SHARD=auto``: ask Redis until it answers; whether batches
    now span shards."""
    while True:
        try:
            across = await state.choose_batching()
        except StateUnavailable as exc:
            log.warning("redis did not say whether it is a cluster", extra={"error": str(exc)})
            await asyncio.sleep(retry_every)
            continue
        log.info("admission batches chosen", extra={"cross_shard": across})
        if not across:
            log.warning(
                "redis is a cluster node: the gateway follows no MOVED redirections, so calls"
                " of shards whose slots live on other nodes fail closed (503)"
            )
        return across


@contextlib.asynccontextmanager
async def open_runtime(
    runtime: Runtime,
    *,
    prices: PriceTable | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Runtime]:
    """Open Redis and the upstream client, build the proxy; close both on the way out."""
    settings, metrics = runtime.settings, runtime.metrics
    table = prices if prices is not None else load_prices(settings.prices_path)
    spool = None  # opened first: a folder refused leaves nothing open
    if settings.refund_spool_dir is not None:
        spool = RefundSpool(check_folder(settings.refund_spool_dir), metrics)
        spool.open()
    state = open_state(settings)
    upstream = UpstreamPool(
        settings.upstream_url,
        pool_size=settings.upstream_pool_size,
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        idle_timeout=settings.upstream_idle_timeout,
        metrics=metrics,
    )
    await upstream.open()
    if settings.admit_cross_shard == "auto":
        runtime.batching = asyncio.ensure_future(
            choose_batching(state, max(settings.redis_timeout, 0.1))
        )
    admitter = DirectAdmitter(state, metrics)
    refunds = RefundRetry(
        admitter,
        metrics,
        retry_for=settings.refund_retry_seconds,
        void=state.void,
        spool=spool,
    )
    state.batcher.lost = refunds.add_void  # a batch whose reply is lost is voided
    refunds.start()
    try:
        runtime.state = state
        runtime.proxy = Proxy(
            identity=Identifier(
                state, KeyCache(settings.key_cache_size, settings.negative_key_ttl), metrics
            ),
            prices=table,
            admitter=admitter,
            upstream=upstream,
            metrics=metrics,
            max_body_bytes=settings.max_body_bytes,
            refund_upstream_errors=settings.refund_upstream_errors,
            clock=clock,
            refund_retry=refunds,
            links=PortalLinks.under(settings.portal_public_url),
            price_tables=PriceTables(table, state.get_price_table),
        )
        yield runtime
    finally:
        runtime.proxy = None
        await refunds.close(settings.shutdown_grace)
        if runtime.batching is not None:
            runtime.batching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runtime.batching
        await upstream.close()
        await state.close()
