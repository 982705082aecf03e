"""Records as the JSON the admin API answers with (the OpenAPI schemas in ``admin.openapi``).

Money is integer micros; ``null`` means "no limit" / "no threshold"; times
are RFC 3339 in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from admin.provisioning import CreditResult, LiveBalance, NewKey
from admin.records import Account, ApiKey, Project
from meter.money import SECONDS_PER_DAY


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def account(a: Account) -> dict[str, Any]:
    return {
        "id": a.id,
        "object": "account",
        "name": a.name,
        "billing_email": a.billing_email,
        "status": a.status,
        "balance": a.balance,
        "overage_line": a.overage_line,
        "daily_hard_limit": a.daily_hard_limit,
        "daily_notify_threshold": a.daily_notify_threshold,
        "low_balance_threshold": a.low_balance_threshold,
        "shard": a.shard,
        "config_version": a.config_version,
        "created_at": timestamp(a.created_at),
        "updated_at": timestamp(a.updated_at),
    }


def project(p: Project) -> dict[str, Any]:
    return {
        "id": p.id,
        "object": "project",
        "account_id": p.account_id,
        "name": p.name,
        "created_at": timestamp(p.created_at),
    }


def api_key(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "object": "api_key",
        "prefix": k.prefix,
        "project_id": k.project_id,
        "account_id": k.account_id,
        "created_at": timestamp(k.created_at),
        "revoked_at": timestamp(k.revoked_at),
    }


def new_api_key(new: NewKey) -> dict[str, Any]:
    return {**api_key(new.key), "key": new.secret}


def ledger_entry(result: CreditResult) -> dict[str, Any]:
    e = result.entry
    return {
        "id": e.credit_id,
        "object": "ledger_entry",
        "account_id": e.account_id,
        "amount": e.amount,
        "balance_after": e.balance_after,
        "kind": e.kind,
        "description": e.description,
        "idempotency_key": e.idempotency_key,
        "created_at": timestamp(e.created_at),
    }


def balance(b: LiveBalance) -> dict[str, Any]:
    return {
        "object": "balance",
        "account_id": b.account_id,
        "status": b.status,
        "balance": b.balance,
        "overage_line": b.overage_line,
        "daily_hard_limit": b.daily_hard_limit,
        "daily_notify_threshold": b.daily_notify_threshold,
        "spent_today": b.spent_today,
        "limit_remaining": b.limit_remaining,
        "available": b.available,
        "day": datetime.fromtimestamp(b.day * SECONDS_PER_DAY, UTC).date().isoformat(),
    }
