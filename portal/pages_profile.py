"""The billing profile (invoice address and email) and the tax registrations."""

from __future__ import annotations

from typing import Any

import pycountry
from aiohttp import web

from admin import models
from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, InvalidInput, PreconditionFailed
from admin.profiles import PROFILE_FIELDS
from admin.records import BillingProfile
from admin.tax_registrations import TAX_ID_TYPES
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, parse, service_errors
from portal.rendering import render, see_other

routes = web.RouteTableDef()
FIELDS = (*PROFILE_FIELDS, "invoice_email")
_NAMES = sorted(
    ((c.alpha_2, str(getattr(c, "common_name", None) or c.name)) for c in pycountry.countries),
    key=lambda pair: pair[1],
)
COUNTRIES = [("", "—"), *_NAMES]
TAX_TYPES = [(name, f"{kind.label} ({name})") for name, kind in sorted(TAX_ID_TYPES.items())]
STALE = (
    "This billing profile was changed since you opened it (by someone else, or in"
    " another tab). Here it is as it is now; make your change again."
)


def _values(profile: BillingProfile) -> dict[str, str]:
    return {f: getattr(profile, f) or "" for f in FIELDS}


def _profile_page(
    request: web.Request,
    profile: BillingProfile,
    *,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
) -> web.Response:
    return render(
        request,
        "billing_profile.html",
        section="billing_profile",
        status=status,
        flashes=flashes,
        profile=profile,
        values=values if values is not None else _values(profile),
        errors=errors or {},
        countries=COUNTRIES,
    )


@routes.get("/billing-profile")
async def billing_profile(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return _profile_page(request, await request.app[SERVICES].profiles.profile(viewer.account.id))


@routes.post("/billing-profile")
async def save_billing_profile(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    account_id = viewer.account.id
    require_on(viewer.principal, P.PROFILE_WRITE, account_id, "no account")
    current = await services.profiles.profile(account_id)
    values = {f: form.get(f, "") for f in FIELDS}
    new, errors = parse(models.BillingProfileIn, form, FIELDS, optional=True)
    if new is None:
        return _profile_page(request, current, values=values, errors=errors, status=422)
    version = form.get("version", "")
    if_match = f'"p{version}"' if version.isdigit() else '"none"'
    try:
        await services.profiles.put_profile(viewer.actor, account_id, new, if_match=if_match)
    except InvalidInput as exc:
        return _profile_page(
            request, current, values=values, errors=service_errors(exc), status=422
        )
    except PreconditionFailed:
        fresh = await services.profiles.profile(account_id)
        return _profile_page(request, fresh, status=409, flashes=[("error", STALE)])
    return see_other("/billing-profile?done=profile")


async def _tax_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> web.Response:
    viewer = request[VIEWER]
    found = await request.app[SERVICES].profiles.tax_ids(viewer.account.id)
    context: dict[str, Any] = {
        "tax_ids": found,
        "values": values or {"type": "", "country": "", "value": "", "description": ""},
        "errors": errors or {},
        "tax_types": [("", "—"), *TAX_TYPES],
        "countries": COUNTRIES,
    }
    return render(request, "tax_settings.html", section="tax_settings", status=status, **context)


@routes.get("/tax-settings")
async def tax_settings(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _tax_page(request)


@routes.post("/tax-settings")
async def add_tax_id(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.PROFILE_WRITE, viewer.account.id, "no account")
    values = {n: form.get(n, "") for n in ("type", "country", "value", "description")}
    names = ("type", "country", "value") + (
        ("description",) if values["description"].strip() else ()
    )
    new, errors = parse(models.NewTaxId, form, names)
    if new is None:
        return await _tax_page(request, values=values, errors=errors, status=422)
    try:
        await services.profiles.add_tax_id(viewer.actor, viewer.account.id, new)
    except InvalidInput as exc:
        return await _tax_page(request, values=values, errors=service_errors(exc), status=422)
    except Conflict as exc:
        return await _tax_page(request, values=values, errors={"value": exc.detail}, status=409)
    return see_other("/tax-settings?done=tax_added")


@routes.post("/tax-settings/{tax_id}/delete")
async def delete_tax_id(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.PROFILE_WRITE, viewer.account.id, "no account")
    await services.profiles.delete_tax_id(
        viewer.actor, viewer.account.id, request.match_info["tax_id"]
    )
    return see_other("/tax-settings?done=tax_deleted")
