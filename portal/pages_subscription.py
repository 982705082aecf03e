"""The Subscription page (seed 003): the current plan, what the next period brings, the
plans on offer with a button each, and cancel at period end or resume.

Every button posts a plan id (and, for cancel and resume, the current plan's) to the one
subscription service the admin API's ``PUT .../subscription`` calls; its refusals (no
card for a paid plan, a plan withdrawn) come back as a flash beside the plans, and
change nothing.
"""

from __future__ import annotations

from aiohttp import web

from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, NotFound
from billing import plans as pricing
from billing import subscriptions
from billing.subscriptions import SubscriptionChange
from portal.context import FORM, SERVICES, VIEWER
from portal.rendering import render, see_other

routes = web.RouteTableDef()
ACTIONS = {"subscribe", "cancel", "resume"}


async def _page(
    request: web.Request, *, status: int = 200, flashes: list[tuple[str, str]] | None = None
) -> web.Response:
    viewer, services = request[VIEWER], request.app[SERVICES]
    subs = services.subscriptions
    current = await subs.subscription(viewer.account.id)
    active = current if current is not None and current.status == subscriptions.ACTIVE else None
    return render(
        request,
        "subscription.html",
        section="subscription",
        status=status,
        flashes=flashes,
        subscription=current,
        active=active,
        offered=await subs.plans(offered_only=True),
        price_lines=pricing.price_lines,
        when=lambda p: (
            "now" if active is None else pricing.effective(active.plan, p, None).replace("_", " ")
        ),
    )


@routes.get("/subscription")
async def subscription(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _page(request)


@routes.post("/subscription")
async def change_subscription(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    action, plan_id = form.get("action", ""), form.get("plan_id", "")
    if action not in ACTIONS or not plan_id:
        return await _page(request, status=422, flashes=[("error", "Choose a plan.")])
    try:
        after, made = await services.subscriptions.put(
            viewer.actor,
            viewer.account.id,
            SubscriptionChange(plan_id, cancel_at_period_end=action == "cancel"),
        )
    except NotFound as exc:  # a plan id the form never offered
        return await _page(request, status=422, flashes=[("error", exc.detail)])
    except Conflict as exc:
        return await _page(request, status=409, flashes=[("error", exc.detail)])
    if action != "subscribe":
        done = "canceled" if action == "cancel" else "resumed"
    elif made:
        done = "subscribed"
    else:
        done = "scheduled" if after.next_plan is not None else "changed"
    return see_other(f"/subscription?done=plan_{done}")
