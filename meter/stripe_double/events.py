"""Webhook events: localstripe's sender, tracked, plus the events it does not send.

Every event goes through localstripe's own sender (``webhooks._send_webhook``), so
it is signed the way localstripe signs (``Stripe-Signature: t=..,v1=..``) about a
second later. Sends still waiting are remembered so a reset cancels them: a test
must not receive the previous test's events.
localstripe sends no ``payment_method.attached/detached``, ``setup_intent.succeeded``
or ``charge.refunded``; ``after_api_call`` adds them, reading its store once the
endpoint has answered, and attaches a SetupIntent's card to its customer as Stripe
does (localstripe only records it on the SetupIntent).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from localstripe import resources, webhooks

_pending: set[asyncio.Future[None]] = set()


def send_event(kind: str, obj: Any) -> None:
    """Schedule ``kind`` about ``obj`` (a localstripe object, exported now)."""
    _schedule(resources.Event(kind, obj))


def _schedule(event: Any) -> None:
    task = asyncio.ensure_future(webhooks._send_webhook(event))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


def cancel_pending() -> None:
    for task in list(_pending):
        task.cancel()
    _pending.clear()


def install() -> None:
    """Send localstripe's own events through ``_schedule`` too (it looks the name up
    in its module at each call)."""
    resources.schedule_webhook = _schedule


@web.middleware
async def after_api_call(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if request.method != "POST" or response.status != 200:
        return response
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    obj_id = request.match_info.get("id", "")
    store = resources.store
    if canonical == "/v1/payment_methods/{id}/attach":
        send_event("payment_method.attached", store["payment_method:" + obj_id])
    elif canonical == "/v1/payment_methods/{id}/detach":
        send_event("payment_method.detached", store["payment_method:" + obj_id])
    elif canonical == "/v1/setup_intents/{id}/confirm":
        _setup_succeeded(store["setup_intent:" + obj_id])
    elif canonical == "/v1/refunds" and isinstance(response, web.Response):
        refund = store.get("refund:" + _body_id(response))
        if refund is not None:
            send_event("charge.refunded", store["charge:" + refund.charge])
    return response


def _setup_succeeded(si: Any) -> None:
    if si.status != "succeeded" or getattr(si, "_double_succeeded", False):
        return
    si._double_succeeded = True
    pm = resources.PaymentMethod._api_retrieve(si.payment_method)
    pm._double_off_session = si.usage == "off_session"  # authenticated for later use
    if si.customer and pm.customer != si.customer:
        pm.customer = si.customer
        send_event("payment_method.attached", pm)
    send_event("setup_intent.succeeded", si)


def _body_id(response: web.Response) -> str:
    try:
        return str(json.loads(response.body or b"{}").get("id", ""))  # type: ignore[arg-type]
    except ValueError:
        return ""
