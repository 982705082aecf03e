"""The gateway's own endpoints: plain values in, a response out.

On the customer-facing port (the raw server hands ``/_meter/`` here, never proxied,
never metered), for load balancers:

GET /_meter/healthz   200 while the process serves ({"status": "ok", "pid": ...})
GET /_meter/readyz    200 when Redis answers PING and we are not draining, else 503
*   /_meter/...       404 problem (metrics included: they are not for customers)

On the operators' listener (``serve_operations``, METER_GATEWAY_METRICS_PORT):
``/metrics`` (Prometheus text format, gateway/metrics.py), ``/healthz``, ``/readyz``.
"""

from __future__ import annotations

import asyncio
import os

import orjson
from aiohttp import web

from gateway import errors
from gateway.headers import Pairs, text
from gateway.metrics import CONTENT_TYPE
from gateway.runtime import Runtime
from meter.problems import PROBLEM_CONTENT_TYPE, render

PREFIX = "/_meter/"
_JSON = [(b"Content-Type", b"application/json")]
_PROBLEM = [(b"Content-Type", PROBLEM_CONTENT_TYPE.encode())]
_METRICS = [(b"Content-Type", CONTENT_TYPE.encode())]

Answer = tuple[int, Pairs, bytes]


def problem(refusal: errors.Refusal) -> Answer:
    pairs = _PROBLEM + [(k.encode(), v.encode()) for k, v in refusal.headers.items()]
    return refusal.status, pairs, render(refusal)


async def answer(runtime: Runtime, method: str, target: str) -> Answer:
    path = target.partition("?")[0]
    if method in ("GET", "HEAD"):
        if path == PREFIX + "healthz":
            return 200, _JSON, orjson.dumps({"status": "ok", "pid": os.getpid()})
        if path == PREFIX + "readyz":
            return await _ready(runtime)
    return problem(errors.NoRoute(f"{PREFIX} is reserved for the gateway's own endpoints"))


async def serve_operations(runtime: Runtime, host: str, port: int) -> tuple[web.AppRunner, int]:
    """The operators' listener (metrics, health) of one worker: its runner and port.
    Scraped a few times a minute, so aiohttp's server is plenty here."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=runtime.metrics.exposition(), headers=dict(text(_METRICS)))

    async def health(request: web.Request) -> web.Response:
        status, pairs, body = await answer(runtime, "GET", PREFIX + request.path.lstrip("/"))
        return web.Response(status=status, body=body, headers=dict(text(pairs)))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]


async def _ready(runtime: Runtime) -> Answer:
    state = runtime.state
    if runtime.draining or state is None:
        return problem(errors.Unavailable("draining"))
    try:
        async with asyncio.timeout(runtime.settings.redis_timeout):
            await state.ping()
    except Exception as exc:
        return problem(errors.StateUnavailable(f"redis ping failed: {type(exc).__name__}"))
    return 200, _JSON, orjson.dumps({"status": "ready"})
