"""Rows of the payments tables as typed values (what the services return)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from payments.decisions import RechargeRule


def _from_row(cls: Any, row: Mapping[str, Any]) -> Any:
    return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    account_id: str
    purpose: str
    method: str
    amount: int
    currency: str
    status: str
    idempotency_key: str | None
    crossing: int | None
    reason: str | None
    crossed_at: datetime | None
    payment_method_id: str | None
    card_brand: str | None
    card_last4: str | None
    stripe_payment_intent: str | None
    stripe_checkout_session: str | None
    failure_code: str | None
    failure_message: str | None
    ledger_entry_id: int | None
    refunded: int
    lease_until: datetime
    attempts: int
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None
    invoice_id: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Payment:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def stripe_reference(self) -> str | None:
        return self.stripe_payment_intent or self.stripe_checkout_session

    @property
    def off_session(self) -> bool:
        """Nobody is there to authenticate it: a recharge, an invoice's scheduled charge."""
        return self.purpose == "recharge" or self.reason == "off_session"


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    id: str
    account_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    name: str | None
    is_default: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PaymentMethod:
        return _from_row(cls, row)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class AutoRecharge:
    account_id: str
    enabled: bool
    threshold: int
    amount: int | None
    target_balance: int | None
    max_per_day: int | None
    max_amount_per_day: int | None
    crossings: int
    consecutive_failures: int
    retry_at: datetime | None
    paused_at: datetime | None
    pause_reason: str | None
    row_version: int
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AutoRecharge:
        return _from_row(cls, row)  # type: ignore[no-any-return]

    @property
    def rule(self) -> RechargeRule:
        return RechargeRule(
            enabled=self.enabled,
            threshold=self.threshold,
            amount=self.amount,
            target_balance=self.target_balance,
            max_per_day=self.max_per_day,
            max_amount_per_day=self.max_amount_per_day,
            consecutive_failures=self.consecutive_failures,
            retry_at=self.retry_at,
            paused_at=self.paused_at,
        )

    @property
    def etag(self) -> str:
        return f'"r{self.row_version}"'


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    payment_id: str
    account_id: str
    amount: int
    forced: bool
    reason: str | None
    idempotency_key: str
    status: str
    stripe_refund: str | None
    failure_message: str | None
    ledger_entry_id: int | None
    created_at: datetime
    settled_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Refund:
        return _from_row(cls, row)  # type: ignore[no-any-return]
