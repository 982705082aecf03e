"""The billing profile, tax registrations and the audit log of an account."""

from __future__ import annotations

from typing import Any

from admin import audit, ids, models
from admin.access import Permission as P
from admin.declared import Call, Operation, Reply
from admin.records import BillingProfile


def _profile(profile: BillingProfile) -> Reply:
    return Reply(models.BillingProfile.model_validate(profile), headers={"ETag": profile.etag})


async def get_profile(call: Call[Any]) -> Reply:
    return _profile(await call.services.profiles.profile(call.account))


async def put_profile(call: Call[models.BillingProfileIn]) -> Reply:
    return _profile(
        await call.services.profiles.put_profile(
            call.actor, call.account, call.body, if_match=call.if_match
        )
    )


async def list_tax_ids(call: Call[Any]) -> Reply:
    found = await call.services.profiles.tax_ids(call.account)
    return Reply(models.TaxIdList(data=[models.TaxId.model_validate(t) for t in found]))


async def add_tax_id(call: Call[models.NewTaxId]) -> Reply:
    tax_id = await call.services.profiles.add_tax_id(call.actor, call.account, call.body)
    return Reply(models.TaxId.model_validate(tax_id), 201)


def _tax_id(call: Call[Any]) -> str:
    return call.path("tax_id", ids.TAX_ID, "tax id")


async def delete_tax_id(call: Call[Any]) -> Reply:
    found = await call.services.profiles.delete_tax_id(call.actor, call.account, _tax_id(call))
    return Reply(models.TaxId.model_validate(found))


async def verify_tax_id(call: Call[Any]) -> Reply:
    found = await call.services.profiles.verify_tax_id(call.actor, call.account, _tax_id(call))
    return Reply(models.TaxId.model_validate(found))


async def _audit_page(call: Call[Any], account_id: str | None) -> Reply:
    limit, before = audit.page_params(call.request.query)
    found, cursor = await call.services.audit_log(account_id, limit=limit, before=before)
    return Reply(
        models.AuditPage(
            data=[models.AuditEntry.model_validate(e) for e in found], next_cursor=cursor
        )
    )


async def account_audit_log(call: Call[Any]) -> Reply:
    return await _audit_page(call, call.account)


async def audit_log(call: Call[Any]) -> Reply:
    return await _audit_page(call, None)


_PAGE = (
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": audit.MAX_LIMIT,
            "default": audit.DEFAULT_LIMIT,
        },
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^aud_[0-9]{1,18}$"},
        "description": "next_cursor of the page before.",
    },
)
A = "/v1/accounts/{account_id}"
T = A + "/tax-ids/{tax_id}"
PROFILE = {200: (models.BillingProfile, "The profile (ETag header: its version).")}
OPERATIONS = [
    Operation(
        "GET",
        A + "/billing-profile",
        "getBillingProfile",
        "The invoice address and email",
        get_profile,
        P.READ,
        "account_id",
        PROFILE,
        etag=True,
    ),
    Operation(
        "PUT",
        A + "/billing-profile",
        "putBillingProfile",
        "Replace the invoice address and email (fields left out become null)",
        put_profile,
        P.PROFILE_WRITE,
        "account_id",
        PROFILE,
        models.BillingProfileIn,
        errors=(409,),
        etag=True,
    ),
    Operation(
        "GET",
        A + "/tax-ids",
        "listTaxIds",
        "Tax registrations",
        list_tax_ids,
        P.READ,
        "account_id",
        {200: (models.TaxIdList, "The registrations.")},
    ),
    Operation(
        "POST",
        A + "/tax-ids",
        "addTaxId",
        "Register a tax id (format and check digits validated)",
        add_tax_id,
        P.PROFILE_WRITE,
        "account_id",
        {201: (models.TaxId, "Registered, unverified.")},
        models.NewTaxId,
        errors=(409,),
        description="The country must be one the type is issued in, and the value must have"
        " its type's format and check digits (python-stdnum's rules); otherwise 422"
        " invalid-input naming country or value.",
    ),
    Operation(
        "DELETE",
        T,
        "deleteTaxId",
        "Remove a tax registration",
        delete_tax_id,
        P.PROFILE_WRITE,
        "account_id",
        {200: (models.TaxId, "The registration removed.")},
    ),
    Operation(
        "POST",
        T + "/verify",
        "verifyTaxId",
        "Mark a tax registration verified (operators)",
        verify_tax_id,
        P.OPERATOR_WRITE,
        "account_id",
        {200: (models.TaxId, "Verified.")},
    ),
    Operation(
        "GET",
        A + "/audit-log",
        "getAccountAuditLog",
        "Every change to the account, newest first",
        account_audit_log,
        P.AUDIT_READ,
        "account_id",
        {200: (models.AuditPage, "One page.")},
        errors=(400,),
        parameters=_PAGE,
    ),
    Operation(
        "GET",
        "/v1/audit-log",
        "getAuditLog",
        "Every change, every account, newest first",
        audit_log,
        P.OPERATOR_READ,
        None,
        {200: (models.AuditPage, "One page.")},
        errors=(400,),
        parameters=_PAGE,
    ),
]
