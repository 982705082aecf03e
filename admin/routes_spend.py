"""Spend management (seed 001): the daily budget and the thresholds that tell people.

``PUT`` replaces the whole setting (ETag in, ETag out). The figures of ``GET`` are the
usage rollups of the ledger: this UTC day's so far, and yesterday's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from admin import models
from admin.access import Permission as P
from admin.declared import Call, Operation, Reply
from ledger.events import MS_PER_DAY
from notifications.spend import SpendChange, SpendView
from notifications.thresholds import ABSOLUTE, PERCENT, Threshold

PATH = "/v1/accounts/{account_id}/spend-management"


def spend_model(v: SpendView) -> models.SpendManagement:
    return models.SpendManagement(
        enabled=v.enabled,
        daily_budget=v.daily_budget,
        notify_thresholds=[
            models.NotifyThreshold(
                id=t.id,
                amount=t.amount,
                percent=t.value if t.kind == PERCENT else None,
                passed_today=t.passed_today,
            )
            for t in v.thresholds
        ],
        credits_consumed_today=v.spent_today,
        credits_consumed_yesterday=v.spent_yesterday,
        day=datetime.fromtimestamp(v.day * MS_PER_DAY / 1000, UTC).date(),
    )


def change_of(b: models.SpendManagementIn) -> SpendChange:
    wanted = tuple(
        Threshold(ABSOLUTE, t.amount)
        if isinstance(t, models.AmountThresholdIn)
        else Threshold(PERCENT, t.percent)
        for t in b.notify_thresholds
    )
    return SpendChange(b.enabled, b.daily_budget, wanted)


async def get_spend(call: Call[Any]) -> Reply:
    view = await call.services.spend.view(call.account)
    return Reply(spend_model(view), headers={"ETag": view.etag})


async def put_spend(call: Call[models.SpendManagementIn]) -> Reply:
    view = await call.services.spend.put(
        call.actor, call.account, change_of(call.body), if_match=call.if_match
    )
    return Reply(spend_model(view), headers={"ETag": view.etag})


SPEND = {200: (models.SpendManagement, "The settings and today's figures (ETag: their version).")}

OPERATIONS = [
    Operation(
        "GET",
        PATH,
        "getSpendManagement",
        "Read the daily budget, the thresholds and the credits consumed today and yesterday",
        get_spend,
        P.READ,
        "account_id",
        SPEND,
        etag=True,
    ),
    Operation(
        "PUT",
        PATH,
        "putSpendManagement",
        "Set the daily budget and the notification thresholds",
        put_spend,
        P.LIMITS_WRITE,
        "account_id",
        SPEND,
        models.SpendManagementIn,
        errors=(409,),
        etag=True,
    ),
]
