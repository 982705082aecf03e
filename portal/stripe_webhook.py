"""``POST /stripe/webhook``: Stripe's events reach us on the service facing the internet.

No session, no CSRF token: the Stripe-Signature header is the authentication
(``payments.stripe_events`` checks it). Answers are JSON: 200 once applied (or
already applied, or not ours), 400 for a bad signature, 503 while payments are not
configured or Postgres is away, so that Stripe delivers the event again later.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from meter.problems import Problem
from payments.stripe_events import receive
from portal.context import SERVICES

routes = web.RouteTableDef()


@routes.post("/stripe/webhook")
async def stripe_webhook(request: web.Request) -> web.Response:
    ctx = request.app[SERVICES].payments.ctx
    payload = await request.read()
    try:
        result = await receive(ctx, payload, request.headers.get("Stripe-Signature"))
    except Problem as exc:
        return web.Response(
            status=exc.status,
            body=orjson.dumps(exc.body(request.path)),
            content_type="application/problem+json",
        )
    return web.json_response({"received": True, "result": result})
