"""The worker's small HTTP server: /metrics, /healthz, /readyz.

/healthz answers while the process runs; /readyz only while the worker's control
connection to Postgres answers and Redis answers a PING.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ledger.metrics import LedgerMetrics
from ledger.worker import LedgerWorker

WORKER = web.AppKey("worker", LedgerWorker)
METRICS = web.AppKey("metrics", LedgerMetrics)
REDIS = web.AppKey("redis", aioredis.Redis)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    problems = []
    if not worker.ready:
        problems.append("postgres")
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), 1.0)
    except Exception:  # any failure means not ready
        problems.append("redis")
    body = {
        "status": "ok" if not problems else "unavailable",
        "unavailable": problems,
        "owned_shards": sorted(worker.owned),
    }
    return web.json_response(body, status=503 if problems else 200)


def create_app(
    worker: LedgerWorker, metrics: LedgerMetrics, redis: aioredis.Redis
) -> web.Application:
    app = web.Application()
    app[WORKER] = worker
    app[METRICS] = metrics
    app[REDIS] = redis
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
