"""Stripe's error object (``{"error": {"type": ..., "message": ...}}``) for the double's
own answers, and the 500 ``api_error`` Stripe gives when an endpoint fails inside."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


def stripe_error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, **extra}}, status=status)


@web.middleware
async def render_unexpected(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A crash in localstripe becomes an answer, so the idempotency layer saves and
    replays it as Stripe does with its 500s."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("localstripe failed on %s %s", request.method, request.path)
        return stripe_error(500, "api_error", "An unexpected error occurred in the double.")
