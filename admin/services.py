"""The one service layer: what the admin API and the portal both call.

The HTTP layers only translate (requests to models, records to models); every
operation and its audit entry lives behind these objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from admin import audit
from admin.audit import Actor, AuditEntry
from admin.people import People
from admin.profiles import Profiles
from admin.provisioning import Provisioning
from meter.live_state import LiveState

__all__ = ["Actor", "Services"]


@dataclass(frozen=True, slots=True)
class Services:
    pool: asyncpg.Pool
    provisioning: Provisioning
    people: People
    profiles: Profiles
    clock: Callable[[], float]

    @classmethod
    def open(
        cls,
        pool: asyncpg.Pool,
        live: LiveState,
        *,
        shards: int,
        clock: Callable[[], float] = time.time,
    ) -> Services:
        return cls(
            pool=pool,
            provisioning=Provisioning(pool, live, shards=shards, clock=clock),
            people=People(pool),
            profiles=Profiles(pool),
            clock=clock,
        )

    async def audit_log(
        self, account_id: str | None, *, limit: int, before: int
    ) -> tuple[list[AuditEntry], str | None]:
        if account_id is not None:
            await self.provisioning.account(account_id)
        return await audit.entries(self.pool, account_id, limit, before)
