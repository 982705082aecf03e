"""Where billing mail goes (the invoice email) and what each member is emailed about."""

from __future__ import annotations

from typing import Any

from admin import ids, models
from admin.access import Permission as P
from admin.declared import Call, Operation, Reply
from notifications.preferences import MemberSubscriptions, NotificationSettings


def member_model(m: MemberSubscriptions) -> models.MemberSubscriptions:
    return models.MemberSubscriptions(
        member_id=m.member_id,
        name=m.name,
        email=m.email,
        role=m.role,  # type: ignore[arg-type]
        event_types=list(m.event_types),
    )


def _settings(s: NotificationSettings) -> Reply:
    body = models.NotificationSettings(
        account_id=s.account_id,
        invoice_email=s.invoice_email,
        billing_email=s.billing_email,
        recipient=s.recipient,
        members=[member_model(m) for m in s.members],
        updated_at=s.updated_at,
    )
    return Reply(body, headers={"ETag": s.etag})


async def get_settings(call: Call[Any]) -> Reply:
    return _settings(await call.services.notifications.settings(call.account))


async def put_settings(call: Call[models.NotificationSettingsIn]) -> Reply:
    written = await call.services.notifications.put_settings(
        call.actor, call.account, call.body.invoice_email, if_match=call.if_match
    )
    return _settings(written)


async def put_subscriptions(call: Call[models.NotificationSubscriptionsIn]) -> Reply:
    # Tokens are never members, so here the route's permission decides; the portal lets
    # a member change their own row too (access.require_member).
    member_id = call.path("member_id", ids.MEMBER, "member")
    written = await call.services.notifications.put_subscriptions(
        call.actor, call.account, member_id, call.body.event_types
    )
    return Reply(member_model(written))


A = "/v1/accounts/{account_id}"
SETTINGS = {
    200: (models.NotificationSettings, "The settings and every member's opt-ins (ETag header).")
}
OPERATIONS = [
    Operation(
        "GET",
        A + "/notification-settings",
        "getNotificationSettings",
        "Where billing mail goes, and what each member is emailed about",
        get_settings,
        P.READ,
        "account_id",
        SETTINGS,
        etag=True,
    ),
    Operation(
        "PUT",
        A + "/notification-settings",
        "putNotificationSettings",
        "Set the invoice email (null: mail goes to the account's billing_email)",
        put_settings,
        P.NOTIFICATIONS_WRITE,
        "account_id",
        SETTINGS,
        models.NotificationSettingsIn,
        errors=(409,),
        etag=True,
    ),
    Operation(
        "PUT",
        A + "/members/{member_id}/notification-subscriptions",
        "putNotificationSubscriptions",
        "Replace the event types a member is emailed about",
        put_subscriptions,
        P.NOTIFICATIONS_WRITE,
        "account_id",
        {200: (models.MemberSubscriptions, "The member's opt-ins.")},
        models.NotificationSubscriptionsIn,
        errors=(409,),
        description="Mail about the event types that ask someone to act goes to the billing"
        " address anyway; an opt-in sends a member their own copy, of any type.",
    ),
]
