"""Getting in and out: the one-time link, signing out (here or everywhere), switching."""

from __future__ import annotations

from aiohttp import web

from admin.access import Permission as P
from admin.access import require_on
from portal.context import FORM, SERVICES, SETTINGS, VIEWER
from portal.rendering import error_page, render, see_other
from portal.session import clear_cookie, request_id, set_cookie

routes = web.RouteTableDef()


@routes.get("/s/{token}")
async def redeem(request: web.Request) -> web.StreamResponse:
    redeemed = await request.app[SERVICES].portal_links.redeem(
        request.match_info["token"], request_id=request_id(request), client_addr=request.remote
    )
    if redeemed is None:
        return render(request, "link_expired.html", status=410)
    response = see_other("/")
    set_cookie(response, request.app[SETTINGS], redeemed.cookie)
    return response


@routes.get("/signed-out")
async def signed_out_page(request: web.Request) -> web.StreamResponse:
    return render(request, "signed_out.html")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def _out(request: web.Request) -> web.StreamResponse:
    response = see_other("/signed-out")
    clear_cookie(response, request.app[SETTINGS])
    return response


@routes.post("/sign-out")
async def sign_out(request: web.Request) -> web.StreamResponse:
    await request.app[SERVICES].portal_sessions.end(request[VIEWER].session)
    return _out(request)


@routes.post("/sign-out-everywhere")
async def sign_out_everywhere(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    await request.app[SERVICES].portal_sessions.end_all(viewer.actor, viewer.session)
    return _out(request)


@routes.post("/switch")
async def switch(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    target = request[FORM].get("account_id", "")
    if not await request.app[SERVICES].portal_sessions.switch(viewer.session, target):
        return error_page(request, 404, "Not found", "You are not a member of that account.")
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return see_other("/?done=switched")
