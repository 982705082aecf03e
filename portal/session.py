"""The session cookie, and the middleware that turns it into the request's viewer.

Every page but the sign-in link, the sign-in (by email) and signed-out pages, the
stylesheet and the health check needs a live session. The principal is built afresh on each request
from the session and the membership as it is now, so a removed member is out at
once and a demoted one sees the lesser page. Every POST must carry the session's
CSRF token (``csrf_token`` field, compared in constant time) or is refused with 403
before any handler runs.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from admin.audit import Actor
from admin.portal_sessions import csrf_ok, principal_of
from meter.settings import Settings
from portal.context import FORM, SERVICES, SETTINGS, VIEWER
from portal.rendering import Handler, error_page, render
from portal.viewer import Viewer

PUBLIC_PREFIXES = ("/s/", "/static/")
PUBLIC_PATHS = frozenset(
    {"/healthz", "/signed-out", "/stripe/webhook", "/sign-in", "/sign-in/sent"}
)
MAX_FORM_BYTES = 64 * 1024


def cookie_name(settings: Settings) -> str:
    # __Host-: the browser keeps it only if Secure, Path=/ and no Domain (no subdomain
    # can plant one). Plain http cannot have it.
    return "__Host-meter_portal" if settings.portal_cookie_secure else "meter_portal"


def set_cookie(response: web.StreamResponse, settings: Settings, value: str) -> None:
    response.set_cookie(
        cookie_name(settings),
        value,
        max_age=int(settings.portal_session_max),
        path="/",
        secure=settings.portal_cookie_secure,
        httponly=True,
        samesite="Lax",
    )


def clear_cookie(response: web.StreamResponse, settings: Settings) -> None:
    response.del_cookie(
        cookie_name(settings),
        path="/",
        secure=settings.portal_cookie_secure,
        httponly=True,
        samesite="Lax",
    )


def request_id(request: web.Request) -> str:
    return secrets.token_hex(8)


def signed_out(request: web.Request, status: int = 401) -> web.Response:
    response = render(request, "signed_out.html", status=status)
    clear_cookie(response, request.app[SETTINGS])
    return response


@web.middleware
async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    settings, services = request.app[SETTINGS], request.app[SERVICES]
    cookie = request.cookies.get(cookie_name(settings), "")
    session = await services.portal_sessions.current(cookie) if cookie else None
    if session is None:
        return signed_out(request)
    member = await services.portal_sessions.membership(session)
    if member is None:  # removed, or the account closed, since the session started
        await services.portal_sessions.end(session)
        return signed_out(request)
    principal = principal_of(member)
    account = await services.provisioning.account(session.account_id)
    memberships = await services.people.memberships(session.person_id)
    request[VIEWER] = Viewer(
        session=session,
        cookie=cookie,
        member=member,
        principal=principal,
        actor=Actor(principal, request_id(request), request.remote),
        account=account,
        memberships=tuple((m.account_id, name) for m, name in memberships),
    )
    if request.method == "POST":
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not csrf_ok(cookie, fields.get("csrf_token")):
            return error_page(
                request,
                403,
                "This form has expired",
                "The form was missing its security token or came from another page."
                " Reload the page and try again; nothing was changed.",
            )
        request[FORM] = fields
    return await handler(request)
