"""Members and roles, and the account's settings (rename, deletion, signing out)."""

from __future__ import annotations

from aiohttp import web

from admin import models
from admin.access import ACCOUNT_ROLES, assignable, require_on
from admin.access import Permission as P
from admin.errors import Conflict, Forbidden, InvalidInput
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, parse, service_errors
from portal.rendering import render, see_other

routes = web.RouteTableDef()
ROLE_LABELS = {
    "owner": "Owner: everything, members and deletion included",
    "admin": "Admin: limits, API keys and projects",
    "billing": "Billing: credits, invoices, billing profile",
    "viewer": "Viewer: reads everything but secrets",
}


async def _members_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
) -> web.Response:
    viewer = request[VIEWER]
    members = await request.app[SERVICES].people.members(viewer.account.id)
    roles = [(str(r), ROLE_LABELS[r]) for r in ACCOUNT_ROLES if assignable(viewer.principal, r)]
    return render(
        request,
        "members.html",
        section="members",
        status=status,
        flashes=flashes,
        members=members,
        roles=roles,
        values=values or {"email": "", "name": "", "role": "viewer"},
        errors=errors or {},
    )


@routes.get("/members")
async def members(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _members_page(request)


@routes.post("/members")
async def add_member(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.MEMBERS_WRITE, viewer.account.id, "no account")
    names = ("email", "name", "role")
    values = {n: form.get(n, "") for n in names}
    new, errors = parse(models.NewMember, form, names)
    if new is None:
        return await _members_page(request, values=values, errors=errors, status=422)
    try:
        await services.people.add_member(viewer.actor, viewer.account.id, new)
    except Conflict as exc:
        return await _members_page(request, values=values, errors={"email": exc.detail}, status=409)
    except InvalidInput as exc:
        return await _members_page(request, values=values, errors=service_errors(exc), status=422)
    return see_other("/members?done=member_added")


@routes.post("/members/{member_id}/role")
async def change_role(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.MEMBERS_WRITE, viewer.account.id, "no account")
    change, errors = parse(models.MemberChanges, form, ("role",))
    if change is None:
        return await _members_page(request, status=422, flashes=[("error", errors["role"])])
    try:
        await services.people.change_role(
            viewer.actor, viewer.account.id, request.match_info["member_id"], change.role
        )
    except (Conflict, Forbidden) as exc:
        return await _members_page(request, status=exc.status, flashes=[("error", exc.detail)])
    return see_other("/members?done=member_changed")


@routes.post("/members/{member_id}/remove")
async def remove_member(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.MEMBERS_WRITE, viewer.account.id, "no account")
    try:
        await services.people.remove_member(
            viewer.actor, viewer.account.id, request.match_info["member_id"]
        )
    except Conflict as exc:
        return await _members_page(request, status=exc.status, flashes=[("error", exc.detail)])
    return see_other("/members?done=member_removed")


# -- account settings ------------------------------------------------------------------


def _settings_page(
    request: web.Request,
    *,
    errors: Errors | None = None,
    name: str | None = None,
    status: int = 200,
) -> web.Response:
    viewer = request[VIEWER]
    return render(
        request,
        "settings.html",
        section="settings",
        status=status,
        errors=errors or {},
        name=viewer.account.name if name is None else name,
    )


@routes.get("/settings")
async def settings(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return _settings_page(request)


@routes.post("/settings/rename")
async def rename(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.ACCOUNT_WRITE, viewer.account.id, "no account")
    new, errors = parse(models.AccountChanges, form, ("name",))
    if new is None:
        return _settings_page(request, errors=errors, name=form.get("name", ""), status=422)
    await services.provisioning.rename(viewer.actor, viewer.account.id, new.name, if_match=None)
    return see_other("/settings?done=renamed")


@routes.post("/settings/deletion-request")
async def request_deletion(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.ACCOUNT_DELETE, viewer.account.id, "no account")
    await services.provisioning.request_deletion(viewer.actor, viewer.account.id)
    return see_other("/settings?done=deletion_requested")


@routes.post("/settings/deletion-request/cancel")
async def cancel_deletion(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.ACCOUNT_DELETE, viewer.account.id, "no account")
    await services.provisioning.cancel_deletion(viewer.actor, viewer.account.id)
    return see_other("/settings?done=deletion_cancelled")
