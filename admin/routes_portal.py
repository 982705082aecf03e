"""Sign-in links to the billing portal, minted by the provider's backend."""

from __future__ import annotations

from admin import models
from admin.access import Permission as P
from admin.declared import NO_STORE, Call, Operation, Reply


async def create_portal_session(call: Call[models.NewPortalSession]) -> Reply:
    link = await call.services.portal_links.create(call.actor, call.account, call.body)
    body = models.PortalSession(url=link.url, expires_at=link.expires_at)
    return Reply(body, 201, dict(NO_STORE))


OPERATIONS = [
    Operation(
        "POST",
        "/v1/accounts/{account_id}/portal-sessions",
        "createPortalSession",
        "A one-time sign-in link to the billing portal for one member",
        create_portal_session,
        P.OPERATOR_WRITE,
        "account_id",
        {201: (models.PortalSession, "Created: the URL works once, for 5 minutes.")},
        models.NewPortalSession,
        errors=(409,),
        description="The member must belong to the account (404 otherwise); return_url must"
        " start with one of METER_PORTAL_RETURN_URLS (422 naming return_url otherwise)."
        " Redeeming the URL starts a portal session as that member.",
    ),
]
