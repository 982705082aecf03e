"""Webhook endpoints and their deliveries as the API and the portal show them. Pure.

A signing secret is ``whsec_`` and the base64 of 32 random bytes, the form the
``standardwebhooks`` library reads. It is kept (it must be known to sign) and shown
once, when made; after that only its first characters (``secret_prefix``) are. A
rotated secret keeps signing beside its successor until ``previous_expires_at``:
``signing_secrets`` is the one rule, for the sender and the views alike.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
VISIBLE_SECRET_CHARS = len(SECRET_PREFIX) + 4
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_secrets(endpoint: Mapping[str, Any], now: datetime) -> list[str]:
    """The secrets a delivery is signed with at ``now``: the current one, and the
    previous one while its overlap lasts (a ``webhook_endpoints`` row)."""
    found = [endpoint["secret"]]
    previous, until = endpoint["previous_secret"], endpoint["previous_expires_at"]
    if previous is not None and until is not None and until > now:
        found.append(previous)
    return found


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint without its secrets: what every view (and the audit log) holds."""

    id: str
    account_id: str
    url: str
    description: str | None
    event_types: tuple[str, ...]  # empty: every event
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    secret_prefix: str
    rotating_until: datetime | None  # the previous secret still signs until then
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any], now: datetime) -> Endpoint:
        live = len(signing_secrets(row, now)) > 1
        return cls(
            id=row["id"],
            account_id=row["account_id"],
            url=row["url"],
            description=row["description"],
            event_types=tuple(row["event_types"]),
            enabled=row["enabled"],
            disabled_reason=row["disabled_reason"],
            failing_since=row["failing_since"],
            secret_prefix=row["secret"][:VISIBLE_SECRET_CHARS],
            rotating_until=row["previous_expires_at"] if live else None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a delivery, as the sender logged it."""

    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: float
    ok: bool
    error: str | None
    excerpt: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Attempt:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one endpoint, with every try made of it."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str  # pending, succeeded, failed, canceled
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: tuple[Attempt, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any], log: tuple[Attempt, ...] = ()) -> Delivery:
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            endpoint_id=row["endpoint_id"],
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            attempt_log=log,
        )
