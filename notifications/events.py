"""The events people and systems are told of, and what each one means to a reader.

``EVENT_TYPES`` is the catalogue a webhook endpoint filters on and a member opts in
to. ``EMAILED`` are mailed to the account's billing address (the invoice email of
its notification settings, else its billing email) without anyone opting in: the
ones that ask someone to act. Every other type is mailed only to members who opt in.
``PORTAL_PATHS`` gives the portal page that helps with each type.
"""

from __future__ import annotations

from typing import Any

EVENT_TYPES: dict[str, str] = {
    "usage.daily_threshold_passed": "The day's usage passed a notification threshold",
    "usage.daily_limit_reached": "The day's usage reached the daily budget",
    "balance.low": "The balance fell below the low-balance threshold",
    "balance.overage_started": "The balance went below zero (overage)",
    "credits.added": "Credits were added to the balance",
    "purchase.succeeded": "A credit purchase succeeded",
    "purchase.failed": "A credit purchase failed",
    "recharge.succeeded": "An auto-recharge succeeded",
    "recharge.failed": "An auto-recharge was declined",
    "recharge.requires_action": "An auto-recharge needs the card holder to authenticate",
    "recharge.paused": "Auto-recharge paused after repeated failures",
    "recharge.refused_by_cap": "An auto-recharge was refused by its daily caps",
    "payment.refunded": "A payment was refunded (its credits taken back)",
    "payment_method.expiring": "A card expires within a month",
    "webhook_endpoint.disabled": "A webhook endpoint was disabled",
    "invoice.finalized": "A billing period's invoice was finalized",
}
# Sent only to the endpoint a test was asked for; never filtered, never mailed.
TEST_EVENT = "webhook.test"

EMAILED = frozenset(
    {
        "usage.daily_threshold_passed",
        "usage.daily_limit_reached",
        "balance.low",
        "balance.overage_started",
        "purchase.failed",
        "recharge.failed",
        "recharge.requires_action",
        "recharge.paused",
        "recharge.refused_by_cap",
        "payment_method.expiring",
        "invoice.finalized",
    }
)
# Mailed to the account's owners rather than its billing address.
TO_OWNERS = frozenset({"webhook_endpoint.disabled"})

PORTAL_PATHS: dict[str, str] = {
    "usage.daily_threshold_passed": "/spend-management",
    "usage.daily_limit_reached": "/spend-management",
    "balance.low": "/credits",
    "balance.overage_started": "/credits",
    "credits.added": "/credits",
    "purchase.succeeded": "/credits",
    "purchase.failed": "/credits",
    "recharge.succeeded": "/auto-recharge",
    "recharge.failed": "/payment-methods",
    "recharge.requires_action": "/payment-methods",
    "recharge.paused": "/auto-recharge",
    "recharge.refused_by_cap": "/auto-recharge",
    "payment.refunded": "/balance-history",
    "payment_method.expiring": "/payment-methods",
    "webhook_endpoint.disabled": "/webhooks",
    "invoice.finalized": "/invoices",
}


def portal_link(portal_url: str | None, type_: str) -> str | None:
    path = PORTAL_PATHS.get(type_)
    if not portal_url or path is None:
        return None
    return portal_url.rstrip("/") + path


def payload(event: dict[str, Any], portal_url: str | None) -> dict[str, Any]:
    """The JSON body of a webhook (and the facts of an email): one shape for every type."""
    return {
        "id": event["id"],
        "type": event["type"],
        "account_id": event["account_id"],
        "created_at": event["occurred_at"].isoformat().replace("+00:00", "Z"),
        "data": event["data"],
        "portal_url": portal_link(portal_url, event["type"]),
    }
