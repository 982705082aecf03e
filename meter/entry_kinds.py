"""The kinds of ledger entry, which of them start in Postgres, and an entry's public id.

An entry is ``le_<its Postgres identity number>`` wherever it is shown (the admin
API's credit response and the balance history alike) and in the credit memory
Redis keeps (``keys.credit_id``).

Credits (top-ups, grants, card purchases, recharges, refunds of payments, adjustments,
grant expiries)
are written to Postgres first and then applied to Redis by credit.lua under
``keys.credit_id(entry id)``; the admin API's sync and the ledger's reconcile/repair
must agree on this set, or a credit would be applied twice or never. Usage and refunds
start in Redis (the admission and settle scripts) and reach Postgres through the ledger
worker.
"""

from __future__ import annotations

POSTGRES_FIRST = (
    "credit",
    "grant",
    "recharge",
    "adjustment",
    "purchase",
    "payment_refund",
    "grant_expiry",  # the unspent part of a grant, removed at its expiry (grants/expiry.py)
)
REDIS_FIRST = ("usage", "refund")
ALL = POSTGRES_FIRST + REDIS_FIRST

ENTRY_ID_PATTERN = "^le_[0-9]+$"


def entry_id(ledger_entry_id: int) -> str:
    return f"le_{ledger_entry_id}"
