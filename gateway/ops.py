"""The gateway's own endpoints, for both server layers: plain values in, a response out.

GET /_meter/healthz   200 while the process serves ({"status": "ok", "pid": ...})
GET /_meter/readyz    200 when Redis answers PING and we are not draining, else 503
GET /_meter/metrics   Prometheus text format (see gateway/metrics.py)
*   /_meter/...       404 problem (``/_meter/`` is never proxied, never metered)
"""

from __future__ import annotations

import asyncio
import os

import orjson

from gateway import errors
from gateway.headers import Pairs
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
        if path == PREFIX + "metrics":
            return 200, _METRICS, runtime.metrics.exposition()
    return problem(errors.NoRoute(f"{PREFIX} is reserved for the gateway's own endpoints"))


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
