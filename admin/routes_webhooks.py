"""Webhook endpoints, their signing secrets, the delivery log, retries and test events.

A new endpoint's secret, and a rotated one, are in that answer only
(``Cache-Control: no-store``); afterwards an endpoint shows ``secret_prefix``. A
retry or a test event is a delivery due now, which the ledger worker's sender makes.
"""

from __future__ import annotations

from typing import Any

from admin import ids, models
from admin.access import Permission as P
from admin.declared import NO_STORE, Call, Operation, Reply
from ledger.errors import BadQuery
from ledger.history_query import page_limit
from notifications.endpoint_records import Delivery, Endpoint
from notifications.endpoints import UNCHANGED, EndpointChanges

A = "/v1/accounts/{account_id}/webhook-endpoints"
E = A + "/{endpoint_id}"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def endpoint_model(e: Endpoint) -> models.WebhookEndpoint:
    return models.WebhookEndpoint.model_validate(e)


def delivery_model(d: Delivery) -> models.WebhookDelivery:
    return models.WebhookDelivery.model_validate(
        {
            **{k: getattr(d, k) for k in Delivery.__slots__ if k != "attempt_log"},
            "attempt_log": [models.DeliveryAttempt.model_validate(a) for a in d.attempt_log],
        }
    )


def _with_secret(e: Endpoint, secret: str, status: int) -> Reply:
    body = models.WebhookEndpointSecret(**endpoint_model(e).model_dump(), secret=secret)
    return Reply(body, status, dict(NO_STORE))


def _endpoint_id(call: Call[Any]) -> str:
    return str(call.request.match_info["endpoint_id"])


async def list_endpoints(call: Call[Any]) -> Reply:
    found = await call.services.webhooks.endpoints(call.account)
    return Reply(models.WebhookEndpointList(data=[endpoint_model(e) for e in found]))


async def create_endpoint(call: Call[models.WebhookEndpointIn]) -> Reply:
    b = call.body
    endpoint, secret = await call.services.webhooks.create(
        call.actor,
        call.account,
        url=b.url,
        description=b.description,
        event_types=b.event_types,
        enabled=b.enabled,
    )
    return _with_secret(endpoint, secret, 201)


async def get_endpoint(call: Call[Any]) -> Reply:
    return Reply(
        endpoint_model(await call.services.webhooks.endpoint(call.account, _endpoint_id(call)))
    )


async def patch_endpoint(call: Call[models.WebhookEndpointChanges]) -> Reply:
    b = call.body
    changes = EndpointChanges(
        url=b.url,
        description=b.description if "description" in b.model_fields_set else UNCHANGED,
        event_types=b.event_types,
        enabled=b.enabled,
    )
    endpoint = await call.services.webhooks.patch(
        call.actor, call.account, _endpoint_id(call), changes
    )
    return Reply(endpoint_model(endpoint))


async def delete_endpoint(call: Call[Any]) -> Reply:
    endpoint = await call.services.webhooks.delete(call.actor, call.account, _endpoint_id(call))
    return Reply(endpoint_model(endpoint))


async def rotate_secret(call: Call[Any]) -> Reply:
    endpoint, secret = await call.services.webhooks.rotate_secret(
        call.actor, call.account, _endpoint_id(call)
    )
    return _with_secret(endpoint, secret, 200)


async def list_deliveries(call: Call[Any]) -> Reply:
    q = call.request.query
    errors: list[tuple[str, str]] = []
    limit = page_limit(q, errors, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    cursor = q.get("cursor")
    if cursor is not None and not ids.well_formed(cursor, ids.DELIVERY):
        errors.append(("cursor", "must be the next_cursor of an earlier page"))
    if errors:
        raise BadQuery(errors)
    items, next_cursor = await call.services.webhooks.deliveries(
        call.account, _endpoint_id(call), limit=limit, before=cursor
    )
    return Reply(
        models.WebhookDeliveryPage(data=[delivery_model(d) for d in items], next_cursor=next_cursor)
    )


async def retry_delivery(call: Call[Any]) -> Reply:
    delivery = await call.services.webhooks.retry_delivery(
        call.actor, call.account, _endpoint_id(call), call.request.match_info["delivery_id"]
    )
    return Reply(delivery_model(delivery))


async def send_test(call: Call[Any]) -> Reply:
    delivery = await call.services.webhooks.send_test(call.actor, call.account, _endpoint_id(call))
    return Reply(delivery_model(delivery), 201)


ENDPOINT = {200: (models.WebhookEndpoint, "The endpoint (no secret).")}
DELIVERY = {200: (models.WebhookDelivery, "The delivery, due now.")}
_PAGE = (
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        "description": f"Deliveries per page (default {DEFAULT_LIMIT}).",
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": models.DELIVERY_ID_PATTERN},
        "description": "next_cursor of the page before.",
    },
)

OPERATIONS = [
    Operation(
        "GET",
        A,
        "listWebhookEndpoints",
        "The account's webhook endpoints (no secrets)",
        list_endpoints,
        P.WEBHOOKS_READ,
        "account_id",
        {200: (models.WebhookEndpointList, "The endpoints, oldest first.")},
    ),
    Operation(
        "POST",
        A,
        "createWebhookEndpoint",
        "Add an endpoint; its signing secret is in this answer only",
        create_endpoint,
        P.WEBHOOKS_WRITE,
        "account_id",
        {201: (models.WebhookEndpointSecret, "Created: the secret is shown only here.")},
        models.WebhookEndpointIn,
        errors=(409,),
        description="At most 20 endpoints per account (409 too-many-webhook-endpoints).",
    ),
    Operation(
        "GET",
        E,
        "getWebhookEndpoint",
        "Read an endpoint (no secret)",
        get_endpoint,
        P.WEBHOOKS_READ,
        "account_id",
        ENDPOINT,
    ),
    Operation(
        "PATCH",
        E,
        "changeWebhookEndpoint",
        "Change an endpoint's URL, description, events, or enable or disable it",
        patch_endpoint,
        P.WEBHOOKS_WRITE,
        "account_id",
        ENDPOINT,
        models.WebhookEndpointChanges,
        errors=(409,),
    ),
    Operation(
        "DELETE",
        E,
        "deleteWebhookEndpoint",
        "Delete an endpoint; what was still to be sent to it is canceled",
        delete_endpoint,
        P.WEBHOOKS_WRITE,
        "account_id",
        {200: (models.WebhookEndpoint, "The endpoint deleted.")},
    ),
    Operation(
        "POST",
        E + "/rotate-secret",
        "rotateWebhookSecret",
        "A new signing secret (in this answer only); the old one signs too for 24 hours",
        rotate_secret,
        P.WEBHOOKS_WRITE,
        "account_id",
        {200: (models.WebhookEndpointSecret, "The new secret is shown only here.")},
        errors=(409,),
    ),
    Operation(
        "GET",
        E + "/deliveries",
        "listWebhookDeliveries",
        "The delivery log, newest first: each delivery and every attempt made of it",
        list_deliveries,
        P.WEBHOOKS_READ,
        "account_id",
        {200: (models.WebhookDeliveryPage, "One page.")},
        errors=(400,),
        parameters=_PAGE,
    ),
    Operation(
        "POST",
        E + "/deliveries/{delivery_id}/retry",
        "retryWebhookDelivery",
        "Send a delivery again, now (refused while it is pending or the endpoint disabled)",
        retry_delivery,
        P.WEBHOOKS_WRITE,
        "account_id",
        DELIVERY,
        errors=(409,),
    ),
    Operation(
        "POST",
        E + "/test",
        "sendWebhookTest",
        "Send a webhook.test event to this endpoint alone",
        send_test,
        P.WEBHOOKS_WRITE,
        "account_id",
        {201: (models.WebhookDelivery, "The delivery, due now.")},
        errors=(409,),
    ),
]
