"""Where an invoice stands for the one who pays it: the Invoices page's three groups
(seed 002). Pure: ``now`` is passed in.

- ``action_required``: open and past its due date, or open after a charge of it
  failed (it is retried; paying it now ends that).
- ``upcoming``: a draft (it finalizes after its grace), or open and not yet due.
- ``history``: settled one way or another: paid, void, uncollectible.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from billing.invoices import Invoice

ACTION_REQUIRED = "action_required"
UPCOMING = "upcoming"
HISTORY = "history"
GROUPS = (ACTION_REQUIRED, UPCOMING, HISTORY)


def past_due(invoice: Invoice, now: datetime) -> bool:
    return invoice.status == "open" and invoice.due_at is not None and invoice.due_at <= now


def standing(invoice: Invoice, now: datetime) -> str:
    if invoice.status == "draft":
        return UPCOMING
    if invoice.status == "open":
        return ACTION_REQUIRED if past_due(invoice, now) or invoice.payment_attempts else UPCOMING
    return HISTORY


def grouped(invoices: Iterable[Invoice], now: datetime) -> dict[str, list[Invoice]]:
    """Each group in the order given (the service's: newest period first)."""
    groups: dict[str, list[Invoice]] = {g: [] for g in GROUPS}
    for invoice in invoices:
        groups[standing(invoice, now)].append(invoice)
    return groups
