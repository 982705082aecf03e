"""Plans (operators define them, everyone reads them) and an account's subscription.

A plan's fee is billed in advance on each period's invoice and its included credits
are granted at each period's start, expiring at its end (``billing.subscriptions``).
``PUT .../subscription`` subscribes, changes plan, cancels at period end or resumes;
its ETag is the subscription's version.
"""

from __future__ import annotations

from typing import Any

from admin import models
from admin.access import Permission as P
from admin.context import PRINCIPAL
from admin.declared import Call, Operation, Reply
from admin.errors import BadRequest, NotFound
from billing.plans import Plan
from billing.subscriptions import (
    PLAN,
    NewPlan,
    Subscription,
    SubscriptionChange,
    plan_etag,
)

SUBSCRIPTION = "/v1/accounts/{account_id}/subscription"


def plan_model(p: Plan) -> models.Plan:
    return models.Plan(
        id=p.id,
        name=p.name,
        description=p.description,
        monthly_fee=p.monthly_fee,
        included_credits=p.included_credits,
        daily_budget=p.daily_budget,
        overage_line=p.overage_line,
        active=p.active,
        prices=None
        if p.prices is None
        else {route: models.RoutePriceOut(**entry) for route, entry in p.prices.items()},
    )


def subscription_model(s: Subscription) -> models.Subscription:
    return models.Subscription(
        account_id=s.account_id,
        plan=plan_model(s.plan),
        status=s.status,  # type: ignore[arg-type]
        started_at=s.started_at,
        current_period_start=s.period.start,
        current_period_end=s.period.end,
        next_plan=None if s.next_plan is None else plan_model(s.next_plan),
        cancel_at_period_end=s.cancel_at_period_end,
        canceled_at=s.canceled_at,
    )


async def list_plans(call: Call[Any]) -> Reply:
    # A customer sees the plans on offer; an operator every plan, or ?active=true.
    operator = call.request[PRINCIPAL].is_operator
    asked = call.request.query.get("active", "false")
    if asked not in ("true", "false"):
        raise BadRequest("active must be true or false")
    offered = asked == "true" or not operator
    found = await call.services.subscriptions.plans(offered_only=offered)
    return Reply(models.PlanList(data=[plan_model(p) for p in found]))


async def get_plan(call: Call[Any]) -> Reply:
    plan = await call.services.subscriptions.plan(call.path("plan_id", PLAN, "plan"))
    return Reply(plan_model(plan), headers={"ETag": plan_etag(plan)})


async def create_plan(call: Call[models.PlanIn]) -> Reply:
    b = call.body
    plan = await call.services.subscriptions.create_plan(
        call.actor,
        NewPlan(
            b.name,
            b.description,
            b.monthly_fee,
            b.included_credits,
            b.daily_budget,
            b.overage_line,
            None if b.prices is None else {r: p.spec() for r, p in b.prices.items()},
        ),
    )
    return Reply(plan_model(plan), status=201, headers={"ETag": plan_etag(plan)})


async def patch_plan(call: Call[models.PlanPatch]) -> Reply:
    plan = await call.services.subscriptions.set_offered(
        call.actor, call.path("plan_id", PLAN, "plan"), call.body.active, call.if_match
    )
    return Reply(plan_model(plan), headers={"ETag": plan_etag(plan)})


async def get_subscription(call: Call[Any]) -> Reply:
    found = await call.services.subscriptions.subscription(call.account)
    if found is None:
        raise NotFound(f"account {call.account} has no subscription")
    return Reply(subscription_model(found), headers={"ETag": found.etag})


async def put_subscription(call: Call[models.SubscriptionIn]) -> Reply:
    b = call.body
    sub, made = await call.services.subscriptions.put(
        call.actor,
        call.account,
        SubscriptionChange(b.plan_id, b.cancel_at_period_end, b.effective),
        if_match=call.if_match,
    )
    return Reply(subscription_model(sub), status=201 if made else 200, headers={"ETag": sub.etag})


PLAN_REPLY = {200: (models.Plan, "The plan (ETag: its version).")}
SUBSCRIPTION_REPLY = {200: (models.Subscription, "The subscription (ETag: its version).")}

OPERATIONS = [
    Operation(
        "GET",
        "/v1/plans",
        "listPlans",
        "List the plans (?active=true, and for an account's token: those on offer)",
        list_plans,
        P.READ,
        None,
        {200: (models.PlanList, "Cheapest first.")},
        errors=(400,),
        any_principal=True,
        parameters=(
            {
                "name": "active",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["true", "false"]},
            },
        ),
    ),
    Operation(
        "POST",
        "/v1/plans",
        "createPlan",
        "Define a plan: a monthly fee, included credits and optional limits",
        create_plan,
        P.OPERATOR_WRITE,
        None,
        {201: (models.Plan, "The plan.")},
        models.PlanIn,
        errors=(409,),
    ),
    Operation(
        "GET",
        "/v1/plans/{plan_id}",
        "getPlan",
        "Read a plan",
        get_plan,
        P.READ,
        None,
        PLAN_REPLY,
        errors=(404,),
        etag=True,
        any_principal=True,
    ),
    Operation(
        "PATCH",
        "/v1/plans/{plan_id}",
        "updatePlan",
        "Offer a plan to new subscribers, or stop offering it",
        patch_plan,
        P.OPERATOR_WRITE,
        None,
        PLAN_REPLY,
        models.PlanPatch,
        errors=(404,),
        etag=True,
    ),
    Operation(
        "GET",
        SUBSCRIPTION,
        "getSubscription",
        "Read the account's subscription",
        get_subscription,
        P.READ,
        "account_id",
        SUBSCRIPTION_REPLY,
        etag=True,
    ),
    Operation(
        "PUT",
        SUBSCRIPTION,
        "putSubscription",
        "Subscribe, change plan, cancel at period end or resume",
        put_subscription,
        P.PAYMENTS_WRITE,
        "account_id",
        {
            200: (models.Subscription, "Changed (ETag: its version)."),
            201: (models.Subscription, "Subscribed."),
        },
        models.SubscriptionIn,
        errors=(404, 409),
        etag=True,
    ),
]
