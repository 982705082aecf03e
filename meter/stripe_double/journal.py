"""What the double was asked and what it charged, for tests to count.

Outermost of the API middlewares, so it sees every ``/v1/`` request, replays and
injected faults included. Charges are read from localstripe's store.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from localstripe import resources
from localstripe.server import unflatten_data

from meter.stripe_double.faults import FAULT_APPLIED


async def params_of(request: web.Request) -> Any:
    """The parameters as localstripe parses them (form or JSON, nested keys unflattened)."""
    if request.method != "POST":
        return unflatten_data(request.query)
    if request.content_type == "application/x-www-form-urlencoded":
        return unflatten_data(await request.post())
    raw = await request.read()
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {"_body": raw.decode(errors="replace")}


def middleware(log: list[dict[str, Any]]) -> Any:
    @web.middleware
    async def journal(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "params": await params_of(request),
            "status": None,
            "object_id": None,
            "replayed": False,
            "fault": None,
        }
        log.append(entry)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            entry["status"] = e.status
            raise
        entry["status"] = response.status
        entry["replayed"] = response.headers.get("Idempotent-Replayed") == "true"
        entry["fault"] = request.get(FAULT_APPLIED)
        if response.status < 300 and isinstance(response, web.Response):
            entry["object_id"] = _object_id(response)
        return response

    return journal


def _object_id(response: web.Response) -> str | None:
    if not isinstance(response.body, bytes):
        return None
    try:
        body = json.loads(response.body)
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None


def charges() -> list[dict[str, Any]]:
    """Every charge that succeeded, oldest first, with its PaymentIntent's metadata."""
    out = []
    for key, charge in list(resources.store.items()):
        if not key.startswith("charge:") or charge.status != "succeeded":
            continue
        pi = resources.store.get("payment_intent:" + str(charge.payment_intent))
        out.append(
            {
                "id": charge.id,
                "amount": charge.amount,
                "currency": charge.currency,
                "customer": charge.customer,
                "payment_method": charge.payment_method,
                "payment_intent": charge.payment_intent,
                "captured": charge.captured,
                "amount_refunded": charge.amount_refunded,
                "metadata": dict(pi.metadata) if pi is not None else dict(charge.metadata),
                "created": charge.created,
            }
        )
    return out
