"""One page from one template: what every page is given, and the error pages.

Every page gets the signed-in viewer (``account``, ``nav`` of the sections its role
may see, ``csrf_token``, ``memberships`` to switch between, ``may`` for the controls
it may use). Errors of the service layer (``meter.problems.Problem``: the admin and
ledger errors alike) become an error page with their status; nothing else is shown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from admin.access import Permission as P
from meter.problems import Problem
from portal.context import VIEWER

# Section -> (path, what the role must hold to see it).
SECTIONS: dict[str, tuple[str, P]] = {
    "overview": ("/", P.READ),
    "balance_history": ("/balance-history", P.READ),
    "invoices": ("/invoices", P.READ),
    "subscription": ("/subscription", P.READ),
    "payment_methods": ("/payment-methods", P.READ),
    "credits": ("/credits", P.READ),
    "auto_recharge": ("/auto-recharge", P.READ),
    "spend_management": ("/spend-management", P.READ),
    "billing_profile": ("/billing-profile", P.READ),
    "notifications": ("/notifications", P.READ),
    "tax_settings": ("/tax-settings", P.READ),
    "members": ("/members", P.READ),
    "api_keys": ("/api-keys", P.KEYS_WRITE),
    "webhooks": ("/webhooks", P.WEBHOOKS_READ),
    "settings": ("/settings", P.READ),
}
# ?done=<key> after a POST-redirect-GET: fixed messages, so nothing from the URL is echoed.
DONE = {
    "profile": "Billing profile saved.",
    "tax_added": "Tax registration added.",
    "tax_deleted": "Tax registration deleted.",
    "member_added": "Member added.",
    "member_changed": "Role changed.",
    "member_removed": "Member removed.",
    "renamed": "Account renamed.",
    "deletion_requested": "Deletion requested. You can cancel it until the account is closed.",
    "deletion_cancelled": "Deletion request cancelled.",
    "project": "Project created.",
    "key_revoked": "API key revoked.",
    "switched": "Switched account.",
    "card_added": "Card added.",
    "card_default": "Default card changed.",
    "card_deleted": "Card deleted.",
    "recharge_saved": "Auto recharge saved.",
    "webhook_enabled": "Endpoint enabled.",
    "webhook_disabled": "Endpoint disabled: nothing is sent to it until it is enabled again.",
    "webhook_deleted": "Endpoint deleted; what was still to be sent to it was canceled.",
    "webhook_test": "Test event queued: it appears in the endpoint's deliveries.",
    "webhook_retry": "Delivery queued to be sent again.",
    "spend_saved": "Spend management saved.",
    "plan_subscribed": "Subscribed.",
    "plan_changed": "Plan changed.",
    "plan_scheduled": "Plan change scheduled for the next period.",
    "plan_canceled": "The subscription ends when this period ends.",
    "plan_resumed": "The subscription continues.",
    "invoice_email": "Billing email saved.",
    "opt_ins": "Email choices saved.",
}
NO_STORE = {"Cache-Control": "no-store"}


def render(
    request: web.Request,
    template: str,
    *,
    section: str | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
    **context: Any,
) -> web.Response:
    viewer = request.get(VIEWER)
    shown = list(flashes or [])
    done = DONE.get(request.query.get("done", ""))
    if done and request.method == "GET":
        shown.insert(0, ("success", done))
    base: dict[str, Any] = {"flashes": shown, "section": section}
    if viewer is not None:
        base.update(
            account=viewer.account,
            viewer=viewer,
            nav={k: path for k, (path, need) in SECTIONS.items() if viewer.may(need)},
            csrf_token=viewer.csrf,
            memberships=viewer.memberships,
            may=viewer.may,
            return_url=viewer.session.return_url,
        )
    response = aiohttp_jinja2.render_template(template, request, {**base, **context})
    response.set_status(status)
    response.headers.update(NO_STORE)
    return response


def see_other(location: str) -> web.Response:
    """After a POST: 303, so a reload does not post again."""
    return web.Response(status=303, headers={"Location": location, **NO_STORE})


def message(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"code": status, "heading": title, "detail": detail}


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return render(request, "error.html", status=status, **message(status, title, detail))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as exc:
        title = "You may not do this" if exc.status == 403 else exc.title
        return error_page(request, exc.status, title, exc.detail)
    except web.HTTPNotFound:
        return error_page(request, 404, "Not found", "There is no such page.")
    except web.HTTPMethodNotAllowed:
        return error_page(request, 405, "Not allowed", "This page does not take that method.")
