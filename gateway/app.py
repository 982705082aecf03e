"""The gateway's one wiring point: ``create_app(settings)``.

Routes (``/_meter/`` is reserved: never proxied, never metered):

    GET /_meter/healthz   200 while the process serves ({"status": "ok", "pid": ...})
    GET /_meter/readyz    200 when Redis answers PING and we are not draining, else 503
    GET /_meter/metrics   Prometheus text format (see gateway/metrics.py)
    *   /_meter/...       404 problem
    *   everything else   the metered proxy (gateway/proxy.py)

The Redis pool and the upstream session are opened and closed as a pair in
``cleanup_ctx``; nothing lives at module level.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from gateway import errors
from gateway.admission import DirectAdmitter
from gateway.identity import Identifier, KeyCache
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.pricing import PriceTable, load_prices
from gateway.proxy import Proxy
from gateway.upstream import AiohttpUpstream
from meter.live_state import LiveState
from meter.problems import PROBLEM_CONTENT_TYPE, render
from meter.settings import Settings

OPS_PREFIX = "/_meter"
# Redis is single-threaded: a few dozen connections keep it busy. Waiting for a
# free one is load, not an outage (the per-command timeout detects outages), so
# the wait gets a looser bound than a command.
REDIS_POOL_SIZE = 64
REDIS_POOL_WAIT_FACTOR = 10


@dataclass(slots=True)
class Runtime:
    """What the app opens at start-up; mutable because aiohttp freezes the app's mapping."""

    state: LiveState | None = None
    proxy: Proxy | None = None
    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", GatewayMetrics)
RUNTIME = web.AppKey("runtime", Runtime)


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    prices = load_prices(settings.prices_path)  # a bad table stops start-up here
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[RUNTIME] = Runtime()
    app.cleanup_ctx.append(_hot_path(prices, clock))
    app.router.add_get(OPS_PREFIX + "/healthz", _healthz)
    app.router.add_get(OPS_PREFIX + "/readyz", _readyz)
    app.router.add_get(OPS_PREFIX + "/metrics", _metrics)
    app.router.add_route("*", OPS_PREFIX + "/{tail:.*}", _ops_not_found)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


def open_live_state(settings: Settings) -> LiveState:
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_POOL_SIZE,
        timeout=settings.redis_timeout * REDIS_POOL_WAIT_FACTOR,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
    )
    return LiveState(aioredis.Redis.from_pool(pool))


def _hot_path(
    prices: PriceTable, clock: Callable[[], float]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings, metrics, runtime = app[SETTINGS], app[METRICS], app[RUNTIME]
        state = open_live_state(settings)
        upstream = AiohttpUpstream(
            settings.upstream_url,
            pool_size=settings.upstream_pool_size,
            timeout=settings.upstream_timeout,
            connect_timeout=settings.upstream_connect_timeout,
        )
        await upstream.open()
        try:
            runtime.state = state
            runtime.proxy = Proxy(
                identity=Identifier(
                    state, KeyCache(settings.key_cache_size, settings.negative_key_ttl), metrics
                ),
                prices=prices,
                admitter=DirectAdmitter(state, metrics),
                upstream=upstream,
                metrics=metrics,
                max_body_bytes=settings.max_body_bytes,
                refund_upstream_errors=settings.refund_upstream_errors,
                clock=clock,
            )
            yield
        finally:
            runtime.proxy = None
            await upstream.close()
            await state.close()

    return ctx


async def _proxy(request: web.Request) -> web.StreamResponse:
    proxy = request.app[RUNTIME].proxy
    assert proxy is not None
    return await proxy.handle(request)


def _problem(problem: errors.Refusal) -> web.Response:
    return web.Response(
        status=problem.status,
        body=render(problem),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def _json(doc: dict[str, object], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "pid": os.getpid()})


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.draining or runtime.state is None:
        return _problem(errors.Unavailable("draining"))
    try:
        async with asyncio.timeout(request.app[SETTINGS].redis_timeout):
            await runtime.state.redis.ping()
    except Exception as exc:
        return _problem(errors.StateUnavailable(f"redis ping failed: {type(exc).__name__}"))
    return _json({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _ops_not_found(request: web.Request) -> web.Response:
    return _problem(errors.NoRoute(f"{OPS_PREFIX}/ is reserved for the gateway's own endpoints"))
