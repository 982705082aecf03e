"""Reading requests and writing JSON answers: the one place handlers touch HTTP details."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from admin import ids, validation
from admin.context import METRICS
from admin.errors import NotFound

JSON = "application/json"
# Set on a write whose Redis step was left to the sync loop (applied within
# METER_SYNC_INTERVAL once Redis answers again).
LIVE_SYNC_HEADER = "Meter-Live-Sync"


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object (``client_max_size`` makes an oversize body a 413 here)."""
    return validation.json_object(await request.read(), request.content_type, required=required)


def path_id(request: web.Request, name: str, prefix: str, noun: str) -> str:
    """An id from the path; one that cannot exist is simply not found (no query)."""
    value = request.match_info[name]
    if not ids.well_formed(value, prefix):
        raise NotFound(f"no {noun} {value!r}")
    return value


def json_response(
    doc: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=JSON, headers=headers)


def live_sync_headers(request: web.Request, live: bool, kind: str) -> dict[str, str]:
    """Headers of a committed write; counts the writes whose Redis step was deferred."""
    if live:
        return {}
    request.app[METRICS].live_deferred.labels(kind).inc()
    return {LIVE_SYNC_HEADER: "pending"}
