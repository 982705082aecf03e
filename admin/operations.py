"""Every operation of the admin API, and the OpenAPI document generated from them."""

from __future__ import annotations

from typing import Any

from admin import (
    declared,
    routes_accounts,
    routes_credits,
    routes_grants,
    routes_history,
    routes_invoices,
    routes_notifications,
    routes_payments,
    routes_people,
    routes_plans,
    routes_portal,
    routes_profile,
    routes_projects,
    routes_spend,
    routes_webhooks,
)

ALL: list[declared.Operation] = [
    *routes_accounts.OPERATIONS,
    *routes_history.OPERATIONS,
    *routes_credits.OPERATIONS,
    *routes_grants.OPERATIONS,
    *routes_projects.OPERATIONS,
    *routes_people.OPERATIONS,
    *routes_profile.OPERATIONS,
    *routes_portal.OPERATIONS,
    *routes_payments.OPERATIONS,
    *routes_spend.OPERATIONS,
    *routes_invoices.OPERATIONS,
    *routes_plans.OPERATIONS,
    *routes_notifications.OPERATIONS,
    *routes_webhooks.OPERATIONS,
]

INFO = {
    "title": "meter admin API",
    "version": "1",
    "description": "Provision billing accounts, projects, API keys, limits and credits (each"
    " a grant with an optional expiry, spent soonest-expiring first); members,"
    " roles and tokens; billing profiles, tax registrations and the audit log; cards, credit"
    " purchases, auto-recharge and refunds through Stripe; where billing email goes and who"
    " opts in to which; webhook endpoints and their delivery log; invoices, plans and"
    " subscriptions. Amounts are"
    ' integer micros (1 USD = 1,000,000), written as JSON integers: 5.0 and "5" are refused.'
    " Writes land in Postgres first, then in the live state the gateway reads (Redis). Each"
    " operation's x-permission names what its token's role must hold; an account token sees"
    " another account's objects as not found (404). A request body over the server's"
    " METER_ADMIN_MAX_BODY_BYTES (64 KiB by default) is refused with 413.",
}


def document() -> dict[str, Any]:
    return declared.openapi_document(ALL, INFO)
