"""The overview and the balance history: money as the gateway and the ledger see it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from admin.access import Permission as P
from admin.access import require_on
from ledger import history
from ledger.history_query import UsageQuery, first_of_month, transactions_query
from meter import entry_kinds
from portal.context import CLOCK, SERVICES, VIEWER
from portal.rendering import render

routes = web.RouteTableDef()
HISTORY_PAGE = 25


def _today(request: web.Request) -> datetime:
    return datetime.fromtimestamp(request.app[CLOCK](), UTC)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@routes.get("/")
async def overview(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    account_id = viewer.account.id
    require_on(viewer.principal, P.READ, account_id, "no account")
    balance = await services.provisioning.balance(account_id)
    granted, purchased = await history.credit_totals(services.pool, account_id)
    # The billing period's usage so far, as its invoice will bill it, and where it heads.
    upcoming = await services.invoices.upcoming(account_id)
    _, estimate = await services.invoices.estimated_spend(account_id)
    profile = await services.profiles.profile(account_id)
    methods = await services.payments.methods(account_id)  # our copy: no call to Stripe
    return render(
        request,
        "overview.html",
        section="overview",
        balance=balance,
        granted=granted,
        purchased=purchased,
        total_credits=granted + purchased,
        upcoming=upcoming,
        estimate=estimate,
        period_start=upcoming.period.start_at(),
        period_last_day=upcoming.period.end_at() - timedelta(days=1),
        profile=profile,
        account_status=viewer.account.public_status,
        recharge=await services.recharges.view(account_id),
        spend=await services.spend.view(account_id),
        card=next((m for m in methods if m.is_default), None),
    )


@routes.get("/balance-history")
async def balance_history(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    account_id = viewer.account.id
    require_on(viewer.principal, P.READ, account_id, "no account")
    view = "summary" if request.query.get("view") == "summary" else "detailed"
    today = _today(request).date()
    recent = await history.usage(services.pool, account_id, UsageQuery(today, today, "day"), today)
    context: dict[str, Any] = {
        "view": view,
        "today": recent["today"],
        "yesterday": recent["yesterday"],
    }
    if view == "detailed":
        params = {"limit": str(HISTORY_PAGE)}
        if "cursor" in request.query:
            params["cursor"] = request.query["cursor"]
        page = await history.transactions(services.pool, account_id, transactions_query(params))
        context["rows"] = [
            {
                "id": entry_kinds.entry_id(t.id),
                "description": t.description,
                "created_at": datetime.fromisoformat(t.created_at),
                "amount": t.amount,
            }
            for t in page.data
        ]
        context["next_cursor"] = page.next_cursor
        context["first_page"] = "cursor" not in request.query
    else:
        months = await history.usage(
            services.pool, account_id, UsageQuery(first_of_month(today, 11), today, "month"), today
        )
        by_route = await history.usage(
            services.pool, account_id, UsageQuery(first_of_month(today), today, "route"), today
        )
        context["months"] = list(reversed(months["data"]))
        context["categories"] = by_route["data"]
        context["month_start"] = _midnight(first_of_month(today))
    return render(request, "balance_history.html", section="balance_history", **context)
