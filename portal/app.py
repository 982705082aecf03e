"""``create_app(settings)``: the billing portal's one wiring point.

The portal holds no business rules: each handler reads its input, calls the
service layer the admin API calls (``admin.services``) after ``admin.access`` has
said the signed-in member's role may, and renders one template. The Postgres pool
and the Redis live state are opened and closed as a pair in ``cleanup_ctx``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web

from admin.services import open_services
from meter.live_state import LiveState
from meter.settings import Settings
from portal import (
    csp,
    email_signin,
    pages_invoices,
    pages_keys,
    pages_money,
    pages_notifications,
    pages_payments,
    pages_people,
    pages_profile,
    pages_recharge,
    pages_spend,
    pages_subscription,
    pages_webhooks,
    signin,
    stripe_webhook,
)
from portal.context import CLOCK, SERVICES, SETTINGS, STRIPE_JS
from portal.rendering import Handler, problem_pages
from portal.session import MAX_FORM_BYTES, signed_in
from portal.templating import setup_templates

POOL_MAX_SIZE = 10
# No scripts, no frames, forms only to ourselves: what the pages need and nothing more
# (portal.csp: the card pages alone also allow Stripe.js).
SECURITY_HEADERS = {
    "Content-Security-Policy": csp.POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the sign-in link's token never leaves in a Referer
}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    if request.get(STRIPE_JS):
        response.headers["Content-Security-Policy"] = csp.stripe_policy(request.app[SETTINGS])
    return response


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    app = web.Application(
        client_max_size=MAX_FORM_BYTES,
        middlewares=[security_headers, problem_pages, signed_in],
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    setup_templates(app)
    pages = (
        signin,
        pages_money,
        pages_invoices,
        pages_payments,
        pages_recharge,
        pages_spend,
        pages_subscription,
        pages_profile,
        pages_people,
    )
    extra = (pages_notifications, pages_keys, pages_webhooks, email_signin, stripe_webhook)
    for module in (*pages, *extra):
        app.add_routes(module.routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=POOL_MAX_SIZE)
        live = LiveState.from_url(settings.redis_url, timeout=settings.redis_timeout, clock=clock)
        app[SERVICES] = open_services(pool, live, settings, clock)
        try:
            yield
        finally:
            await app[SERVICES].payments.close()
            await live.close()
            await pool.close()

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(email_signin.background)  # cleaned up first: it uses the pool
    return app
