"""What the admin API reads from and writes to Postgres, as frozen values.

Rows come in through ``from_row`` (``admin.repository`` only returns these);
``admin.views`` turns them into JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meter import keys
from meter.live_state import AccountConfig, KeyRecord

ACTIVE = "active"
SUSPENDED = "suspended"
CLOSED = "closed"
PENDING_DELETION = "pending_deletion"  # shown, not stored: an active account with a request
# Statuses whose keys the gateway refuses (its live config says "suspended").
REFUSED_AT_GATEWAY = frozenset({SUSPENDED, CLOSED})


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    billing_email: str | None
    shard: int
    status: str
    balance: int
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    low_balance_threshold: int | None
    config_version: int
    redis_version: int
    row_version: int  # the ETag of the account's writes
    deletion_requested_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    require_payment_method: bool = False
    has_payment_method: bool = False
    price_table: str | None = None  # its plan's, when the plan has prices of its own

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Account:
        return cls(**{name: row[name] for name in cls.__slots__})

    @property
    def public_status(self) -> str:
        if self.status == ACTIVE and self.deletion_requested_at is not None:
            return PENDING_DELETION
        return self.status

    @property
    def etag(self) -> str:
        return f'"a{self.row_version}"'

    @property
    def live_config(self) -> AccountConfig:
        """The limits and status as the sync script applies them, at this row's version."""
        return AccountConfig(
            version=self.config_version,
            overage_line=self.overage_line,
            daily_hard_limit=self.daily_hard_limit,
            daily_notify_threshold=self.daily_notify_threshold,
            low_balance_threshold=self.low_balance_threshold,
            suspended=self.status in REFUSED_AT_GATEWAY,
            payment_method_required=self.require_payment_method and not self.has_payment_method,
            price_table=self.price_table,
        )


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    account_id: str
    name: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Project:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: its hash and visible prefix, never the key itself."""

    id: str
    project_id: str
    account_id: str
    shard: int  # the account's
    key_hash: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    redis_synced: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ApiKey:
        return cls(**{name: row[name] for name in cls.__slots__})

    @property
    def live_record(self) -> KeyRecord:
        return KeyRecord(
            key_id=self.id, project_id=self.project_id, account_id=self.account_id, shard=self.shard
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    account_id: str
    shard: int  # the account's
    amount: int
    balance_after: int
    kind: str
    description: str
    idempotency_key: str | None
    created_at: datetime
    redis_applied: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LedgerEntry:
        return cls(**{name: row[name] for name in cls.__slots__})

    @property
    def credit_id(self) -> str:
        """The id the credit script remembers, so a retry never credits twice."""
        return keys.credit_id(self.id)


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    account_id: str
    person_id: str
    email: str
    name: str
    role: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Member:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Token:
    """An admin API bearer token as stored: its hash and prefix, never the token."""

    id: str
    account_id: str | None  # None: an operator token
    name: str
    role: str
    prefix: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Token:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class BillingProfile:
    account_id: str
    legal_name: str | None
    address_line1: str | None
    address_line2: str | None
    city: str | None
    postal_code: str | None
    state: str | None
    country: str | None
    po_number: str | None
    invoice_email: str | None
    version: int
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BillingProfile:
        return cls(**{name: row[name] for name in cls.__slots__})

    @property
    def etag(self) -> str:
        return f'"p{self.version}"'


@dataclass(frozen=True, slots=True)
class TaxRegistration:
    id: str
    account_id: str
    type: str
    country: str
    value: str
    description: str | None
    status: str
    created_at: datetime
    verified_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaxRegistration:
        return cls(**{name: row[name] for name in cls.__slots__})
