"""Notifications (seed 001's Invoice Notifications): where billing mail goes, and what
each member is emailed about.

The invoice email is read into the admin API's ``NotificationSettingsIn`` and saved with
the version the page was rendered at (a stale one is said so, nothing changed). The
opt-ins are one form of checkboxes, ``optin`` = ``<member id>:<event type>``, with a
``member`` field per column shown: someone who may manage notifications sees and saves
every member's; anyone else only their own (``access.require_member``). Every value is
checked before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from admin import models
from admin.access import Permission as P
from admin.access import require_member, require_on
from admin.errors import InvalidInput, PreconditionFailed
from notifications.events import EMAILED, EVENT_TYPES, TO_OWNERS
from notifications.preferences import MemberSubscriptions, NotificationSettings, chosen_types
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, parse, service_errors
from portal.rendering import render, see_other

routes = web.RouteTableDef()
STALE = (
    "The invoice email was changed since you opened this page (by someone else, or in"
    " another tab). Here it is as it is now; make your change again."
)
TAMPERED = "The form had a choice this page does not offer; nothing was saved. Reload the page."


def _columns(request: web.Request, current: NotificationSettings) -> list[MemberSubscriptions]:
    """The members whose choices this viewer sees: everyone's for a manager, else their own."""
    viewer = request[VIEWER]
    everyone = viewer.may(P.NOTIFICATIONS_WRITE)
    return [m for m in current.members if everyone or m.member_id == viewer.member.id]


async def _page(
    request: web.Request,
    *,
    current: NotificationSettings | None = None,
    email: str | None = None,
    errors: Errors | None = None,
    chosen: Mapping[str, set[str]] | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
) -> web.Response:
    viewer = request[VIEWER]
    settings = current or await request.app[SERVICES].notifications.settings(viewer.account.id)
    columns = _columns(request, settings)
    return render(
        request,
        "notifications.html",
        section="notifications",
        status=status,
        flashes=flashes,
        notifications=settings,
        email=(settings.invoice_email or "") if email is None else email,
        errors=errors or {},
        columns=columns,
        chosen=chosen or {c.member_id: set(c.event_types) for c in columns},
        event_types=[(t, label, _always(t)) for t, label in EVENT_TYPES.items()],
    )


def _always(type_: str) -> str | None:
    """Who gets this type's email without choosing it (notifications.preferences)."""
    if type_ in EMAILED:
        return "to the billing email"
    if type_ in TO_OWNERS:
        return "to the owners"
    return None


@routes.get("/notifications")
async def notifications(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _page(request)


@routes.post("/notifications/invoice-email")
async def save_invoice_email(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    account_id = viewer.account.id
    require_on(viewer.principal, P.NOTIFICATIONS_WRITE, account_id, "no account")
    typed = form.get("invoice_email", "")
    new, errors = parse(models.NotificationSettingsIn, form, ("invoice_email",), optional=True)
    if new is None:
        return await _page(request, email=typed, errors=errors, status=422)
    version = form.get("version", "")
    if_match = f'"n{version}"' if version.isdigit() else '"none"'
    try:
        await services.notifications.put_settings(
            viewer.actor, account_id, new.invoice_email, if_match=if_match
        )
    except PreconditionFailed:
        return await _page(request, status=409, flashes=[("error", STALE)])
    return see_other("/notifications?done=invoice_email")


@routes.post("/notifications/opt-ins")
async def save_opt_ins(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    account_id = viewer.account.id
    posted = await request.post()  # read once by the CSRF check; several values per name
    members = [m for m in posted.getall("member", []) if isinstance(m, str)]
    for member_id in members:
        require_member(viewer.principal, P.NOTIFICATIONS_WRITE, account_id, member_id, "no member")
    current = await services.notifications.settings(account_id)
    known = {m.member_id: set(m.event_types) for m in current.members}
    wanted: dict[str, set[str]] = {m: set() for m in members}
    bad = False
    for value in posted.getall("optin", []):
        member_id, _, type_ = str(value).partition(":")
        if member_id not in wanted or type_ not in EVENT_TYPES:
            bad = True
            continue
        wanted[member_id].add(type_)
    if bad or any(m not in known for m in members):
        return await _page(
            request, current=current, chosen=wanted, status=422, errors={"opt_ins": TAMPERED}
        )
    try:
        for member_id, types in wanted.items():
            if types != known[member_id]:
                await services.notifications.put_subscriptions(
                    viewer.actor, account_id, member_id, chosen_types(types)
                )
    except InvalidInput as exc:  # checked above; kept so the service's word is shown
        return await _page(request, status=422, errors=service_errors(exc))
    return see_other("/notifications?done=opt_ins")
