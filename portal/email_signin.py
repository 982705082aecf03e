"""Sign in by email: the form on the signed-out pages, and the email sent after the answer.

The answer is the same page whether or not the address is a member's, and it comes
before anything about the address is looked up: ``admin.email_signin`` admits the
request (rate limits per address and per client), the handler answers, and a task in
the app's background finds the person's accounts, mints one link each and mails them
(``notifications.mail``, ``notifications.smtp``). Without ``METER_SMTP_URL`` the task
logs and sends nothing. The app waits for those tasks when it stops.

The form is public, so it carries no session's CSRF token; a POST a browser says comes
from another site is refused, so no other page can make a visitor's browser ask.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from admin import models
from admin.email_signin import WINDOW, address_hash
from notifications import smtp
from notifications.mail import compose_signin
from notifications.smtp import MailFailed
from portal import csp
from portal.context import CLOCK, SERVICES, SETTINGS
from portal.rendering import error_page, render, see_other
from portal.session import request_id

log = logging.getLogger("portal.email_signin")
routes = web.RouteTableDef()
TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("email_signin_tasks")
EMAIL = TypeAdapter(models.Email)
NOT_AN_EMAIL = "Enter an email address like name@example.com."


async def background(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the tasks' set, and at shutdown the wait for those still running."""
    app[TASKS] = set()
    yield
    await asyncio.gather(*app[TASKS], return_exceptions=True)


def _spawn(app: web.Application, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work, name="email-signin")
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)


def _valid_for(app: web.Application) -> str:
    minutes = max(1, round(app[SETTINGS].portal_link_ttl / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _same_origin(request: web.Request) -> bool:
    """Not a form another site submitted. Browsers say where a request comes from in
    ``Sec-Fetch-Site``; ``Origin`` is "null" here (the portal's no-referrer policy), so
    it decides only when it names a site and that header is not there."""
    fetched_from = request.headers.get("Sec-Fetch-Site")
    if fetched_from is not None:
        return fetched_from in ("same-origin", "none")
    given = request.headers.get("Origin")
    if given is None or given == "null":  # not a browser, or one that says nothing
        return True
    own = {
        csp.origin(request.app[SETTINGS].portal_public_url),
        f"{request.scheme}://{request.host}",
    }
    return given in own


@routes.get("/sign-in")
async def sign_in(request: web.Request) -> web.StreamResponse:
    return render(request, "sign_in.html")


@routes.get("/sign-in/sent")
async def sent(request: web.Request) -> web.StreamResponse:
    return render(request, "sign_in_sent.html", valid_for=_valid_for(request.app))


@routes.post("/sign-in")
async def ask(request: web.Request) -> web.StreamResponse:
    if not _same_origin(request):
        return error_page(request, 403, "This form came from another site", "Nothing was sent.")
    form = await request.post()
    typed = form.get("email")
    typed = typed if isinstance(typed, str) else ""
    try:
        address = EMAIL.validate_python(typed.strip())
    except ValidationError:
        return render(
            request, "sign_in.html", status=422, signin_email=typed, signin_error=NOT_AN_EMAIL
        )
    client = request.remote or "unknown"
    if not await request.app[SERVICES].email_signin.admit(address, client):
        wait = f"{round(WINDOW / 60)} minutes"
        response = render(request, "sign_in_limited.html", status=429, wait=wait)
        response.headers["Retry-After"] = str(int(WINDOW))
        return response
    _spawn(request.app, _send_links(request.app, address, request_id(request), client))
    return see_other("/sign-in/sent")


async def _send_links(app: web.Application, address: str, req_id: str, client: str) -> None:
    settings = app[SETTINGS]
    where = smtp.address_of(settings)
    about = {"address_hash": address_hash(address)[:16], "request_id": req_id}
    if where is None:
        log.warning("sign-in by email asked for, but METER_SMTP_URL is not set", extra=about)
        return
    try:
        links = await app[SERVICES].email_signin.links_for(
            address, request_id=req_id, client_addr=client
        )
        if not links:
            log.info("sign-in by email: no member has this address", extra=about)
            return
        message = compose_signin(
            address,
            [(link.account_name, link.url) for link in links],
            settings,
            message_id="signin_" + secrets.token_hex(12),
            now=datetime.fromtimestamp(app[CLOCK](), UTC),
        )
        await smtp.send(where, message)
        log.info("sign-in links sent", extra={**about, "accounts": len(links)})
    except MailFailed as exc:
        log.warning(
            "sign-in email not sent",
            extra={**about, "error": exc.detail, "permanent": exc.permanent},
        )
    except Exception:
        log.exception("sign-in by email failed", extra=about)
