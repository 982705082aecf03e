"""An invoice as HTML and as PDF, both from ``templates/invoice.html``.

``html`` is the whole document, its stylesheet (``templates/invoice.css``) inlined;
``body`` is the template's ``invoice`` block alone, for a page with a head of its own
(the portal's, which links the same stylesheet); ``pdf`` prints ``html`` with
weasyprint. Pure but for ``pdf_off_loop``, which runs ``pdf`` in a thread.

Weasyprint is imported on the first PDF, not with this module: it loads Pango, which
only the PDF routes and the invoice email need. Renders are one at a time in a process
(``_RENDERING``): weasyprint does not say it is thread-safe, and one page takes well
under a second.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from billing.invoices import Invoice
from meter.money import money

TEMPLATE = "invoice.html"
STYLESHEET = "invoice.css"
STATUS_LABELS = {
    "draft": "Draft",
    "open": "Open",
    "paid": "Paid",
    "void": "Void",
    "uncollectible": "Uncollectible",
}
_PARTY: dict[str, Any] = {
    "name": None,
    "email": None,
    "address": [],
    "tax_id": None,
    "po_number": None,
}
_RENDERING = threading.Lock()
# By name, not strftime's %b, which follows the process's locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def day(moment: date) -> str:
    """``7 Dec 2026``: a UTC day, the month by name (a date, or an aware datetime)."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError(f"a naive datetime has no known zone: {moment!r}")
        moment = moment.astimezone(UTC)
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("billing", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, day=day)
    return env


@functools.cache
def stylesheet() -> str:
    """The invoice's CSS, as shipped in the package (the portal serves it too)."""
    return resources.files("billing").joinpath("templates", STYLESHEET).read_text()


def title(invoice: Invoice) -> str:
    return f"Invoice {invoice.number}" if invoice.number else "Draft invoice"


def filename(invoice: Invoice) -> str:
    """``INV-000001.pdf``; a draft, which has no number yet, by its id."""
    return f"{invoice.number or 'draft-' + invoice.id}.pdf"


def content_disposition(invoice: Invoice) -> str:
    """The PDF's header, as a download named by the invoice (numbers and ids are plain
    ASCII: nothing to quote)."""
    return f'attachment; filename="{filename(invoice)}"'


def _party(found: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if found is None else {**_PARTY, "tax_ids": [], **found}


def context(invoice: Invoice) -> dict[str, Any]:
    return {
        "invoice": invoice,
        "title": title(invoice),
        "draft": invoice.status == "draft",
        "status_label": STATUS_LABELS.get(invoice.status, invoice.status.title()),
        "seller": _party(invoice.seller),
        "buyer": _party(invoice.buyer),
        "last_day": invoice.period.end - timedelta(days=1),
        # Credits applied is a total of its own, below the lines.
        "charges": [line for line in invoice.lines if line.kind != "credits_applied"],
        "stylesheet": Markup(stylesheet()),
    }


def html(invoice: Invoice) -> str:
    return _environment().get_template(TEMPLATE).render(context(invoice))


def body(invoice: Invoice) -> Markup:
    """The ``invoice`` block alone: the invoice inside another page."""
    template = _environment().get_template(TEMPLATE)
    block = template.blocks["invoice"]
    return Markup("".join(block(template.new_context(context(invoice)))))


def pdf(invoice: Invoice) -> bytes:
    import weasyprint  # loads Pango: only once a PDF is asked for

    document = html(invoice)
    with _RENDERING:
        written: bytes = weasyprint.HTML(string=document).write_pdf()
    return written


async def pdf_off_loop(invoice: Invoice) -> bytes:
    """``pdf`` in a worker thread, so the event loop goes on serving meanwhile."""
    return await asyncio.to_thread(pdf, invoice)
