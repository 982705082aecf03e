"""Webhooks: the account's endpoints, their signing secrets and their delivery logs.

The add form is read into the admin API's ``WebhookEndpointIn`` (one checkbox per
event type, ``event.<type>``; none checked: every event) and saved by the service,
whose own checks (the host resolved to a public address, the per-account cap) come
back beside their fields. A new or rotated secret is rendered in that response only,
never put in a URL. Sending a test event or retrying a delivery writes a delivery
due now; the ledger worker's sender makes it, and the log shows each attempt.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin import models
from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, InvalidInput
from notifications.endpoint_records import Endpoint
from notifications.endpoints import EndpointChanges, WebhookEndpoints
from notifications.events import EVENT_TYPES
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, service_errors, validated
from portal.rendering import render, see_other
from portal.viewer import Viewer

routes = web.RouteTableDef()
RECENT_DELIVERIES = 10
EVENT_FIELD = "event."


def _events_of(form: dict[str, str]) -> list[str]:
    return [t for t in EVENT_TYPES if form.get(EVENT_FIELD + t) == "on"]


async def _page(
    request: web.Request,
    *,
    values: dict[str, Any] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
    secret: tuple[Endpoint, str] | None = None,
) -> web.Response:
    viewer, hooks = request[VIEWER], request.app[SERVICES].webhooks
    endpoints = await hooks.endpoints(viewer.account.id)
    logs = {
        e.id: (await hooks.deliveries(viewer.account.id, e.id, limit=RECENT_DELIVERIES))[0]
        for e in endpoints
    }
    return render(
        request,
        "webhooks.html",
        section="webhooks",
        status=status,
        flashes=flashes,
        endpoints=endpoints,
        logs=logs,
        event_types=EVENT_TYPES,
        values=values or {"url": "", "description": "", "event_types": []},
        errors=errors or {},
        new_secret=secret,
    )


def _writer(request: web.Request) -> tuple[Viewer, WebhookEndpoints]:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.WEBHOOKS_WRITE, viewer.account.id, "no account")
    return viewer, request.app[SERVICES].webhooks


@routes.get("/webhooks")
async def webhooks(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.WEBHOOKS_READ, viewer.account.id, "no account")
    return await _page(request)


@routes.post("/webhooks")
async def add_endpoint(request: web.Request) -> web.StreamResponse:
    viewer, hooks = _writer(request)
    form = request[FORM]
    values: dict[str, Any] = {
        "url": form.get("url", "").strip(),
        "description": form.get("description", "").strip() or None,
        "event_types": _events_of(form),
    }
    new, errors = validated(models.WebhookEndpointIn, values)
    shown = {**values, "description": values["description"] or ""}
    if new is None:
        return await _page(request, values=shown, errors=errors, status=422)
    try:
        secret = await hooks.create(
            viewer.actor,
            viewer.account.id,
            url=new.url,
            description=new.description,
            event_types=new.event_types,
        )
    except InvalidInput as exc:
        return await _page(request, values=shown, errors=service_errors(exc), status=422)
    except Conflict as exc:  # as many endpoints as allowed, or the account closed
        return await _page(request, values=shown, status=409, flashes=[("error", exc.detail)])
    # Rendered, not redirected: the secret is in this response only, never in a URL.
    return await _page(request, secret=secret)


@routes.post("/webhooks/{endpoint_id}/rotate")
async def rotate(request: web.Request) -> web.StreamResponse:
    viewer, hooks = _writer(request)
    secret = await hooks.rotate_secret(
        viewer.actor, viewer.account.id, request.match_info["endpoint_id"]
    )
    return await _page(request, secret=secret)


async def _switch(request: web.Request, enabled: bool) -> web.StreamResponse:
    viewer, hooks = _writer(request)
    endpoint_id = request.match_info["endpoint_id"]
    await hooks.patch(
        viewer.actor, viewer.account.id, endpoint_id, EndpointChanges(enabled=enabled)
    )
    return see_other(f"/webhooks?done=webhook_{'enabled' if enabled else 'disabled'}")


@routes.post("/webhooks/{endpoint_id}/enable")
async def enable(request: web.Request) -> web.StreamResponse:
    return await _switch(request, True)


@routes.post("/webhooks/{endpoint_id}/disable")
async def disable(request: web.Request) -> web.StreamResponse:
    return await _switch(request, False)


@routes.post("/webhooks/{endpoint_id}/delete")
async def delete(request: web.Request) -> web.StreamResponse:
    viewer, hooks = _writer(request)
    await hooks.delete(viewer.actor, viewer.account.id, request.match_info["endpoint_id"])
    return see_other("/webhooks?done=webhook_deleted")


@routes.post("/webhooks/{endpoint_id}/test")
async def send_test(request: web.Request) -> web.StreamResponse:
    viewer, hooks = _writer(request)
    endpoint_id = request.match_info["endpoint_id"]
    try:
        await hooks.send_test(viewer.actor, viewer.account.id, endpoint_id)
    except Conflict as exc:  # disabled
        return await _page(request, status=409, flashes=[("error", exc.detail)])
    return see_other(f"/webhooks?done=webhook_test#endpoint-{endpoint_id}")


@routes.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry")
async def retry(request: web.Request) -> web.StreamResponse:
    viewer, hooks = _writer(request)
    endpoint_id = request.match_info["endpoint_id"]
    try:
        await hooks.retry_delivery(
            viewer.actor, viewer.account.id, endpoint_id, request.match_info["delivery_id"]
        )
    except Conflict as exc:  # still pending, or the endpoint disabled
        return await _page(request, status=409, flashes=[("error", exc.detail)])
    return see_other(f"/webhooks?done=webhook_retry#endpoint-{endpoint_id}")
