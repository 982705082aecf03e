"""The Invoices pages (seeds 001, 002 and 003): the account's invoices in three groups
(``billing.standing``), the payment history as invoices or as charges, one invoice as
the same HTML its PDF prints, its PDF, and paying it.

Any member reads them. The invoice page embeds ``billing.render.body`` and links the
invoice's stylesheet (``/invoice.css``, from the package, so page and PDF look alike
under the portal's ``style-src 'self'``). Another account's invoice is not found.

Pay calls ``billing.charges.pay``, as ``POST /v1/invoices/{id}/pay`` does, with the
card chosen and a random ``idempotency_key`` put in the form when it is rendered: a
double submit or a reload of the POST answers the first payment and charges once. A
card that needs 3-D Secure gets the challenge as buying credits does (``payments.js``,
then the completion route asks Stripe how it ended); a success is shown by
``GET /invoices/{id}?payment=<id>`` (POST-redirect-GET), a decline by the page again
with 402.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, InvalidInput, NotFound
from billing import charges, standing
from billing import render as invoice_render
from billing.charges import InvoiceNotPayable, PaymentUnderWay
from ledger.history_query import MAX_LIMIT
from payments.records import Payment
from payments.service import PaymentRefused
from portal.context import CLOCK, FORM, SERVICES, VIEWER
from portal.pages_payments import card_label, stripe_page
from portal.rendering import NO_STORE, render, see_other

routes = web.RouteTableDef()
# The path's id: only an invoice id, so "/invoices/inv_x.pdf" is the PDF's route.
_ID = "{invoice_id:inv_[0-9A-Za-z]{1,64}}"
# The Payment history's two views (seed 003); anything else shows the first.
VIEWS = ("invoices", "charges")
# Why an invoice is not payable, by its status (``InvoiceNotPayable``).
NOT_PAYABLE = {
    "draft": "it is still a draft, payable once it is finalized",
    "paid": "it is already paid",
    "void": "it is void",
    "uncollectible": "it was written off",
}


def _now(request: web.Request) -> datetime:
    return datetime.fromtimestamp(request.app[CLOCK](), UTC)


def _may_pay(request: web.Request) -> bool:
    """Whether the page offers Pay: Stripe is set up and the role may pay."""
    configured: bool = request.app[SERVICES].payments.configured
    return configured and request[VIEWER].may(P.PAYMENTS_WRITE)


@routes.get("/invoices")
async def invoices(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    account_id = viewer.account.id
    require_on(viewer.principal, P.READ, account_id, "no account")
    view = request.query.get("view", VIEWS[0])
    view = view if view in VIEWS else VIEWS[0]
    items, more = await services.invoices.invoices(account_id, status=None, limit=MAX_LIMIT)
    context: dict[str, Any] = {"charges": None, "more_charges": False}
    if view == "charges":
        context["charges"], later = await services.payments.payments(account_id, limit=MAX_LIMIT)
        context["more_charges"] = later is not None
    return render(
        request,
        "invoices.html",
        section="invoices",
        groups=standing.grouped(items, _now(request)),
        more=more is not None,
        shown=MAX_LIMIT,
        view=view,
        numbers={i.id: i.number for i in items},
        may_pay=_may_pay(request),
        **context,
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


async def _invoice_page(
    request: web.Request,
    *,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
    chosen: str | None = None,
    error: str | None = None,
    authenticate: charges.Charge | None = None,
) -> web.Response:
    viewer, services = request[VIEWER], request.app[SERVICES]
    account_id, invoice_id = viewer.account.id, request.match_info["invoice_id"]
    result = None
    if request.method == "GET" and "payment" in request.query:  # after a Pay
        result = (await services.payments.refresh(account_id, request.query["payment"])).payment
        if result.invoice_id != invoice_id:
            raise NotFound(f"no payment {result.id!r} of invoice {invoice_id!r}")
    found = await services.invoices.invoice(account_id, invoice_id)  # after the refresh
    context: dict[str, Any] = {"pay": None}
    if authenticate is not None:
        context.update(stripe_page(request))
    elif found.payable and _may_pay(request):
        methods = await services.payments.methods(account_id)
        default = next((m.id for m in methods if m.is_default), None)
        context["pay"] = {
            "options": [(m.id, card_label(m)) for m in methods],
            "chosen": chosen or default,
            "error": error,
            # A fresh key per rendering: the same form posted twice is one payment.
            "idempotency_key": secrets.token_urlsafe(18),
        }
    return render(
        request,
        "invoice.html",
        section="invoices",
        status=status,
        flashes=flashes,
        invoice=found,
        title=invoice_render.title(found),
        body=invoice_render.body(found),
        standing=standing.standing(found, _now(request)),
        past_due=standing.past_due(found, _now(request)),
        result=result,
        authenticate=authenticate,
        may_pay=_may_pay(request),
        **context,
    )


@routes.get(f"/invoices/{_ID}")
async def invoice(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _invoice_page(request)


def declined(message: str | None) -> str:
    why = (message or "the card was declined").rstrip(".")
    return f"The payment failed: {why}. Nothing was charged and the invoice is still open."


@routes.post(f"/invoices/{_ID}/pay")
async def pay_invoice(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    account_id = viewer.account.id
    require_on(viewer.principal, P.PAYMENTS_WRITE, account_id, "no account")
    chosen, key = form.get("payment_method", ""), form.get("idempotency_key", "")
    if not chosen or not key:
        why = "Choose a card." if not chosen else "The form was incomplete; nothing was charged."
        return await _invoice_page(request, status=422, chosen=chosen, error=why)
    try:
        charge = await charges.pay(
            services.payments.ctx,
            viewer.actor,
            account_id,
            request.match_info["invoice_id"],
            payment_method_id=chosen,
            idempotency_key=key,
        )
    except PaymentRefused as exc:
        return await _invoice_page(request, status=402, flashes=[("error", declined(exc.detail))])
    except InvalidInput as exc:  # not a card of this account
        why = exc.errors[0][1] if exc.errors else exc.detail
        return await _invoice_page(request, status=422, chosen=chosen, error=why)
    except PaymentUnderWay as exc:  # one waiting for 3-D Secure: take it up again
        waiting = await services.payments.refresh(account_id, exc.extra["payment_id"])
        return await _after_payment(request, waiting.payment, waiting.client_secret)
    except InvoiceNotPayable as exc:  # a draft, or paid meanwhile
        why = NOT_PAYABLE.get(exc.extra.get("invoice_status", ""), "nothing is left to pay")
        flash = ("error", f"This invoice cannot be paid: {why}. Nothing was charged.")
        return await _invoice_page(request, status=409, flashes=[flash])
    except Conflict as exc:  # no card at all, or the form's key used with another card
        flash = ("error", f"Nothing was charged: {exc.detail}.")
        return await _invoice_page(request, status=409, flashes=[flash])
    return await _after_payment(request, charge.payment, charge.client_secret)


async def _after_payment(
    request: web.Request,
    p: Payment,
    client_secret: str | None,
    flashes: list[tuple[str, str]] | None = None,
) -> web.StreamResponse:
    if p.status == "requires_action" and client_secret:
        return await _invoice_page(
            request, flashes=flashes, authenticate=charges.Charge(p, client_secret)
        )
    if p.status == "failed":
        return await _invoice_page(
            request, status=402, flashes=[("error", declined(p.failure_message))]
        )
    return see_other(f"/invoices/{request.match_info['invoice_id']}?payment={p.id}")


@routes.post(f"/invoices/{_ID}/payments/{{payment_id}}/complete")
async def complete_payment(request: web.Request) -> web.StreamResponse:
    """After the browser's 3-D Secure step, however it ended: settle from Stripe's word."""
    viewer, payments = request[VIEWER], request.app[SERVICES].payments
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    result = await payments.refresh(viewer.account.id, request.match_info["payment_id"])
    if result.payment.invoice_id != request.match_info["invoice_id"]:
        raise NotFound(f"no payment {result.payment.id!r} of this invoice")
    flashes = None
    if result.payment.status == "requires_action":
        flashes = [("warning", "The card's authentication was not completed. Try it again.")]
    return await _after_payment(request, result.payment, result.client_secret, flashes)


@routes.get("/invoice.css")
async def invoice_css(request: web.Request) -> web.StreamResponse:
    return web.Response(text=invoice_render.stylesheet(), content_type="text/css")
