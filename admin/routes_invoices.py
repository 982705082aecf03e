"""Invoices: an account's list (newest period first, by status) and one invoice.

An invoice is written once per account and billing period when the period closes
(the ledger worker, or ``meter close-period``); it is a draft during the grace
period, then open (or paid, when nothing is due), numbered and frozen. Its PDF is the
same invoice printed (``billing.render``), named by its number.
"""

from __future__ import annotations

from typing import Any

from admin import models
from admin.access import Permission as P
from admin.declared import NO_STORE, Call, Document, Operation, Reply
from admin.routes_payments import payment_model
from billing import charges, render
from billing.invoices import CARRIED_FORWARD, Invoice, usage_description
from billing.service import STATUSES
from ledger import history_query
from ledger.errors import BadQuery
from ledger.history_query import page_limit
from payments.service import PurchaseResult


def invoice_model(i: Invoice) -> models.Invoice:
    return models.Invoice(
        id=i.id,
        account_id=i.account_id,
        number=i.number,
        status=i.status,  # type: ignore[arg-type]
        period_start=i.period.start,
        period_end=i.period.end,
        currency=i.currency,
        usage=i.usage_amount,
        fee=i.fee_amount,
        carried_forward=i.carried_amount,
        credits_applied=i.credits_applied,
        amount_due=i.amount_due,
        amount_paid=i.amount_paid,
        lines=[
            models.InvoiceLine(
                kind=line.kind,  # type: ignore[arg-type]
                description=line.description,
                route=line.route,
                calls=line.calls,
                amount=line.amount,
            )
            for line in i.lines
        ],
        seller=models.InvoiceParty.model_validate(i.seller) if i.seller else None,
        buyer=models.InvoiceParty.model_validate(i.buyer) if i.buyer else None,
        created_at=i.created_at,
        finalized_at=i.finalized_at,
        due_at=i.due_at,
        paid_at=i.paid_at,
    )


async def list_invoices(call: Call[Any]) -> Reply:
    q = call.request.query
    errors: list[tuple[str, str]] = []
    limit = page_limit(
        q, errors, default=history_query.DEFAULT_LIMIT, maximum=history_query.MAX_LIMIT
    )
    cursor, status = q.get("cursor"), q.get("status")
    if cursor is not None and not cursor.startswith("inv_"):
        errors.append(("cursor", "must be the next_cursor of an earlier page"))
    if status is not None and status not in STATUSES:
        errors.append(("status", f"must be one of {', '.join(STATUSES)}"))
    if errors:
        raise BadQuery(errors)
    items, next_cursor = await call.services.invoices.invoices(
        call.account, status=status, limit=limit, before=cursor
    )
    return Reply(
        models.InvoicePage(data=[invoice_model(i) for i in items], next_cursor=next_cursor)
    )


async def get_invoice(call: Call[Any]) -> Reply:
    invoice_id = call.request.match_info["invoice_id"]
    return Reply(invoice_model(await call.services.invoices.invoice(call.account, invoice_id)))


async def pay_invoice(call: Call[models.InvoicePayment]) -> Reply:
    """Charge what the invoice owes, with the buyer present (3-D Secure possible)."""
    charge = await charges.pay(
        call.services.payments.ctx,
        call.actor,
        call.account,
        call.request.match_info["invoice_id"],
        payment_method_id=call.body.payment_method_id,
        idempotency_key=call.body.idempotency_key,
    )
    result = PurchaseResult(charge.payment, False, client_secret=charge.client_secret)
    return Reply(payment_model(charge.payment, result), 201, dict(NO_STORE))


async def void_invoice(call: Call[Any]) -> Reply:
    invoice_id = call.request.match_info["invoice_id"]
    return Reply(
        invoice_model(await call.services.invoices.close_out(call.actor, invoice_id, "void"))
    )


async def mark_uncollectible(call: Call[Any]) -> Reply:
    invoice_id = call.request.match_info["invoice_id"]
    closed = await call.services.invoices.close_out(call.actor, invoice_id, "uncollectible")
    return Reply(invoice_model(closed))


async def get_upcoming(call: Call[Any]) -> Reply:
    u = await call.services.invoices.upcoming(call.account)
    lines = [
        models.InvoiceLine(
            kind="usage",
            description=usage_description(route, calls),
            route=route,
            calls=calls,
            amount=amount,
        )
        for route, calls, amount in u.lines
    ]
    lines += [
        models.InvoiceLine(
            kind="fee", description=f.description, route=None, calls=None, amount=f.amount
        )
        for f in u.fees
    ]
    if u.due.carried:
        lines.append(
            models.InvoiceLine(
                kind="carried_forward",
                description=CARRIED_FORWARD,
                route=None,
                calls=None,
                amount=u.due.carried,
            )
        )
    return Reply(
        models.UpcomingInvoice(
            period_start=u.period.start,
            period_end=u.period.end,
            lines=lines,
            usage=u.due.usage,
            fee=u.due.fee,
            carried_forward=u.due.carried,
            credits_applied=u.due.credits_applied,
            amount_due=u.due.amount_due,
        )
    )


async def get_estimated_spend(call: Call[Any]) -> Reply:
    period, e = await call.services.invoices.estimated_spend(call.account)
    return Reply(
        models.EstimatedSpend(
            period_start=period.start,
            period_end=period.end,
            month_to_date=e.month_to_date,
            daily_rate=e.daily_rate,
            days_left=e.days_left,
            forecast=e.forecast,
            method=e.method,
        )
    )


async def get_invoice_pdf(call: Call[Any]) -> Reply:
    invoice_id = call.request.match_info["invoice_id"]
    invoice = await call.services.invoices.invoice(call.account, invoice_id)
    return Reply(
        await render.pdf_off_loop(invoice),
        content_type=PDF.media_type,
        headers={"Content-Disposition": render.content_disposition(invoice), **NO_STORE},
    )


PDF = Document("application/pdf")

_QUERY = (
    {
        "name": "status",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(STATUSES)},
        "description": "Only invoices in this status.",
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": history_query.MAX_LIMIT},
        "description": "Invoices per page.",
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": models.INVOICE_ID_PATTERN},
        "description": "next_cursor of the page before.",
    },
)

OPERATIONS = [
    Operation(
        "GET",
        "/v1/accounts/{account_id}/upcoming-invoice",
        "getUpcomingInvoice",
        "The current period's invoice so far (nothing is written)",
        get_upcoming,
        P.READ,
        "account_id",
        {200: (models.UpcomingInvoice, "The period so far.")},
    ),
    Operation(
        "GET",
        "/v1/accounts/{account_id}/estimated-spend",
        "getEstimatedSpend",
        "Month to date and a forecast of the period's usage, with the method",
        get_estimated_spend,
        P.READ,
        "account_id",
        {200: (models.EstimatedSpend, "The estimate.")},
    ),
    Operation(
        "GET",
        "/v1/accounts/{account_id}/invoices",
        "listInvoices",
        "List the account's invoices, newest period first",
        list_invoices,
        P.READ,
        "account_id",
        {200: (models.InvoicePage, "A page of invoices.")},
        errors=(400,),
        parameters=_QUERY,
    ),
    # Before getInvoice: its {invoice_id} would also match "inv_....pdf".
    Operation(
        "GET",
        "/v1/invoices/{invoice_id}.pdf",
        "getInvoicePdf",
        "The invoice as a PDF",
        get_invoice_pdf,
        P.READ,
        "invoice_id",
        {200: (PDF, "The invoice printed, named INV-000001.pdf (Content-Disposition).")},
        description="The same invoice as GET /v1/invoices/{invoice_id}, from the template of"
        " the portal's invoice page; a draft is marked DRAFT and has no number.",
    ),
    Operation(
        "GET",
        "/v1/invoices/{invoice_id}",
        "getInvoice",
        "Read an invoice with its lines",
        get_invoice,
        P.READ,
        "invoice_id",
        {200: (models.Invoice, "The invoice.")},
    ),
    Operation(
        "POST",
        "/v1/invoices/{invoice_id}/pay",
        "payInvoice",
        "Pay what an open invoice owes (the default card unless one is named)",
        pay_invoice,
        P.PAYMENTS_WRITE,
        "invoice_id",
        {201: (models.Payment, "The payment; requires_action carries next_action.")},
        models.InvoicePayment,
        errors=(402, 409, 503),
    ),
    Operation(
        "POST",
        "/v1/invoices/{invoice_id}/void",
        "voidInvoice",
        "Void an open invoice (no longer charged; what it billed stays owed on the balance)",
        void_invoice,
        P.OPERATOR_WRITE,
        "invoice_id",
        {200: (models.Invoice, "The invoice, void.")},
        errors=(409,),
    ),
    Operation(
        "POST",
        "/v1/invoices/{invoice_id}/mark-uncollectible",
        "markInvoiceUncollectible",
        "Mark an open invoice uncollectible (no longer charged)",
        mark_uncollectible,
        P.OPERATOR_WRITE,
        "invoice_id",
        {200: (models.Invoice, "The invoice, uncollectible.")},
        errors=(409,),
    ),
]
