"""The double's own routes under ``/_double/`` and the state they control.

``GET ready``; ``GET|POST config`` (``{"idempotency": bool, "fail_next": {...} |
null}``, see faults.py); ``GET requests`` (the journal); ``GET charges``;
``DELETE data`` (localstripe's store and webhooks, our caches, logs, config).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from localstripe import resources, webhooks
from localstripe.errors import UserError

from meter.stripe_double import events, faults, idempotency, journal
from meter.stripe_double.errors import stripe_error


@dataclass(slots=True)
class DoubleState:
    idempotency_on: bool = True
    fault: faults.Fault | None = None
    cache: idempotency.IdempotencyCache = field(default_factory=idempotency.IdempotencyCache)
    log: list[dict[str, Any]] = field(default_factory=list)

    def api_middlewares(self) -> list[Any]:
        return [
            journal.middleware(self.log),
            idempotency.middleware(self.cache, lambda: self.idempotency_on),
            faults.middleware(self.take_fault),
        ]

    def take_fault(self, request: web.Request) -> faults.Fault | None:
        fault = self.fault
        if fault is None or request.method != fault.method:
            return None
        if not request.path.startswith(fault.path_prefix):
            return None
        fault.times -= 1
        if fault.times <= 0:
            self.fault = None
        return fault

    def describe(self) -> dict[str, Any]:
        return {
            "idempotency": self.idempotency_on,
            "fail_next": self.fault.describe() if self.fault else None,
        }

    def reset(self) -> None:
        events.cancel_pending()
        resources.store.clear()
        webhooks._webhooks.clear()
        self.cache.clear()
        self.log.clear()
        self.idempotency_on, self.fault = True, None


STATE = web.AppKey("stripe_double_state", DoubleState)


@web.middleware
async def bypass(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``/_double/`` is ours: no journal, no faults, no localstripe auth (the checkout
    page is opened by a browser)."""
    if not request.path.startswith("/_double/") or request.match_info.http_exception:
        return await handler(request)
    try:
        return await request.match_info.handler(request)
    except UserError as e:
        return e.to_response()  # type: ignore[no-any-return]


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].describe())


async def set_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return stripe_error(400, "invalid_request_error", "The body must be JSON")
    if not isinstance(body, dict) or set(body) - {"idempotency", "fail_next"}:
        return stripe_error(400, "invalid_request_error", "Expected idempotency, fail_next")
    if "idempotency" in body:
        if not isinstance(body["idempotency"], bool):
            return stripe_error(400, "invalid_request_error", "idempotency is true or false")
        state.idempotency_on = body["idempotency"]
    if "fail_next" in body:
        raw = body["fail_next"]
        try:
            state.fault = None if raw is None else faults.Fault.parse(raw)
        except (ValueError, TypeError, AttributeError) as e:
            return stripe_error(400, "invalid_request_error", f"fail_next: {e}")
    return web.json_response(state.describe())


async def requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].log)


async def charges(request: web.Request) -> web.Response:
    return web.json_response(journal.charges())


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"reset": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_double/ready", ready)
    app.router.add_get("/_double/config", get_config)
    app.router.add_post("/_double/config", set_config)
    app.router.add_get("/_double/requests", requests)
    app.router.add_get("/_double/charges", charges)
    app.router.add_delete("/_double/data", reset)
