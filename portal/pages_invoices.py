"""The Invoices pages (seeds 001 and 002): the account's invoices in three groups
(``billing.standing``), one invoice as the same HTML its PDF prints, and that PDF.

Any member reads them. The invoice page embeds ``billing.render.body`` and links the
invoice's stylesheet (``/invoice.css``, from the package, so page and PDF look alike
under the portal's ``style-src 'self'``). Another account's invoice is not found.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from admin.access import Permission as P
from admin.access import require_on
from billing import render as invoice_render
from billing import standing
from ledger.history_query import MAX_LIMIT
from portal.context import CLOCK, SERVICES, VIEWER
from portal.rendering import NO_STORE, render

routes = web.RouteTableDef()
# The path's id: only an invoice id, so "/invoices/inv_x.pdf" is the PDF's route.
_ID = "{invoice_id:inv_[0-9A-Za-z]{1,64}}"


def _now(request: web.Request) -> datetime:
    return datetime.fromtimestamp(request.app[CLOCK](), UTC)


@routes.get("/invoices")
async def invoices(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    items, more = await services.invoices.invoices(viewer.account.id, status=None, limit=MAX_LIMIT)
    return render(
        request,
        "invoices.html",
        section="invoices",
        groups=standing.grouped(items, _now(request)),
        more=more is not None,
        shown=MAX_LIMIT,
    )


@routes.get(f"/invoices/{_ID}.pdf")
async def invoice_pdf(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    invoice = await services.invoices.invoice(viewer.account.id, request.match_info["invoice_id"])
    return web.Response(
        body=await invoice_render.pdf_off_loop(invoice),
        content_type="application/pdf",
        headers={"Content-Disposition": invoice_render.content_disposition(invoice), **NO_STORE},
    )


@routes.get(f"/invoices/{_ID}")
async def invoice(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    found = await services.invoices.invoice(viewer.account.id, request.match_info["invoice_id"])
    return render(
        request,
        "invoice.html",
        section="invoices",
        invoice=found,
        title=invoice_render.title(found),
        body=invoice_render.body(found),
        standing=standing.standing(found, _now(request)),
    )


@routes.get("/invoice.css")
async def invoice_css(request: web.Request) -> web.StreamResponse:
    return web.Response(text=invoice_render.stylesheet(), content_type="text/css")
