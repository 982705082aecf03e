"""The kinds of ledger entry, and which of them start in Postgres.

Credits (top-ups, grants, recharges, adjustments) are written to Postgres first
and then applied to Redis by credit.lua under ``keys.credit_id(entry id)``; the
admin API's sync and the ledger's reconcile/repair must agree on this set, or a
credit would be applied twice or never. Usage and refunds start in Redis (the
admission and settle scripts) and reach Postgres through the ledger worker.
"""

from __future__ import annotations

POSTGRES_FIRST = ("credit", "grant", "recharge", "adjustment")
REDIS_FIRST = ("usage", "refund")
ALL = POSTGRES_FIRST + REDIS_FIRST
