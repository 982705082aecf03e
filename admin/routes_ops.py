"""Probes, metrics and the API description: no token needed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from admin import operations
from admin import repository as repo
from admin.context import LIVE, METRICS, POOL
from admin.errors import ServiceUnavailable
from admin.request_io import json_response

PROBE_TIMEOUT = 2.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving; says nothing about its dependencies."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Postgres and Redis both answer; a 503 takes the replica out of rotation."""
    checks = {
        "postgres": await _check(repo.ping(request.app[POOL])),
        "redis": await _check(request.app[LIVE].redis.ping()),
    }
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, result in checks.items() if result != "ok")
    raise ServiceUnavailable(f"not ready: {failing}", checks=checks)


async def _check(probe: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(probe, PROBE_TIMEOUT)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(operations.document())


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz, allow_head=False),
        web.get("/readyz", readyz, allow_head=False),
        web.get("/metrics", metrics, allow_head=False),
        web.get("/v1/openapi.json", openapi_document, allow_head=False),
    ]
