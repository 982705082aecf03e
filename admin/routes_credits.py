"""Credits: money in, once per idempotency key.

A replay (same account, same ``idempotency_key``, same amount, description
and kind) answers ``200`` with the entry the first request created (which
answered ``201``), plus ``Idempotent-Replayed: true``; nothing more is
credited. The same key with a different body is a ``409``.
"""

from __future__ import annotations

from admin import models
from admin.access import Permission as P
from admin.declared import PENDING, Call, Operation, Reply

REPLAYED_HEADER = "Idempotent-Replayed"


async def add_credit(call: Call[models.NewCredit]) -> Reply:
    written = await call.services.provisioning.add_credit(call.actor, call.account, call.body)
    result = written.value
    headers = {REPLAYED_HEADER: "true"} if result.replayed else {}
    entry = models.LedgerEntry.model_validate(result.entry)
    return Reply(entry, 200 if result.replayed else 201, headers, live=written.live)


OPERATIONS = [
    Operation(
        "POST",
        "/v1/accounts/{account_id}/credits",
        "addCredit",
        "Add credits, once per idempotency key",
        add_credit,
        P.OPERATOR_WRITE,
        "account_id",
        {
            201: (models.LedgerEntry, "Credited." + PENDING),
            200: (
                models.LedgerEntry,
                "Replay of an earlier request with the same idempotency key: the same entry,"
                " nothing more credited (Idempotent-Replayed: true).",
            ),
        },
        models.NewCredit,
        errors=(409,),
    )
]
