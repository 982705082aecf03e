"""What each admin write does, in order: Postgres (one transaction), then Redis, then the mark.

The customer-visible truth is Postgres. When the Redis step fails after the
commit, the write still succeeds: it is recorded, and ``admin.sync`` applies
it on its next pass (``Written.live`` tells the handler which case it was).
Reads of live money (``balance``) come from Redis, because that is where the
gateway debits; when Redis cannot answer they fail with 503 rather than show
a stale number.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from admin import ids, sync
from admin import repository as repo
from admin.errors import IdempotencyKeyReused, LiveStateUnavailable, NotFound
from admin.records import ACTIVE, SUSPENDED, Account, ApiKey, LedgerEntry, Project
from admin.validation import Credit, Limits, NewAccount, NewProject
from meter import apikeys, keys, money
from meter.live_state import LiveState, StateUnavailable

log = logging.getLogger("admin.provisioning")

T = TypeVar("T")

# After the Postgres commit, these leave the rest of a write to the sync loop.
DEFERRABLE: tuple[type[Exception], ...] = (StateUnavailable, *repo.CONNECTION_ERRORS)


@dataclass(frozen=True, slots=True)
class Written(Generic[T]):
    value: T
    live: bool  # False: committed to Postgres, Redis left to the sync loop


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    secret: str  # the API key itself: returned once, never stored


@dataclass(frozen=True, slots=True)
class CreditResult:
    entry: LedgerEntry
    replayed: bool  # the idempotency key was seen before: nothing new was credited


@dataclass(frozen=True, slots=True)
class LiveBalance:
    """An account's money as the gateway sees it now (Redis), rolled to today."""

    account_id: str
    status: str
    day: int
    balance: int
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    spent_today: int
    limit_remaining: int | None
    available: int


def live_balance(account_id: str, state: money.AccountState, now: float) -> LiveBalance:
    day = money.utc_day(now)
    state = money.rolled(state, day)
    return LiveBalance(
        account_id=account_id,
        status=SUSPENDED if state.suspended else ACTIVE,
        day=max(day, state.day),
        balance=state.balance,
        overage_line=state.overage_line,
        daily_hard_limit=state.daily_hard_limit,
        daily_notify_threshold=state.daily_notify_threshold,
        spent_today=state.spent_today,
        limit_remaining=money.limit_remaining(state),
        available=money.available(state),
    )


class Provisioning:
    def __init__(
        self, pool: asyncpg.Pool, live: LiveState, *, shards: int, clock: Callable[[], float]
    ) -> None:
        self.pool = pool
        self.live = live
        self.shards = shards
        self.clock = clock

    async def _then_redis(self, what: str, step: Awaitable[None]) -> bool:
        """Run the Redis half (and the mark) of a committed write; False (logged) if it failed.

        Either way the write stands: the row stays unmarked and the sync loop
        finishes it, so the client is not told "failed" about a recorded change.
        """
        try:
            await step
        except DEFERRABLE as exc:
            log.warning("%s committed; Redis step deferred to the sync loop: %s", what, exc)
            return False
        return True

    # -- accounts -------------------------------------------------------------------

    async def create_account(self, new: NewAccount) -> Written[Account]:
        account_id = ids.new_id(ids.ACCOUNT)
        shard = keys.shard_of(account_id, self.shards)
        account = await repo.insert_account(
            self.pool, account_id, new.name, new.billing_email, shard
        )
        live = await self._then_redis(
            f"account {account.id}", sync.apply_account(self.pool, self.live, account)
        )
        return Written(account, live)

    async def account(self, account_id: str) -> Account:
        account = await repo.get_account(self.pool, account_id)
        if account is None:
            raise NotFound(f"no account {account_id}")
        return account

    async def set_limits(self, account_id: str, limits: Limits) -> Written[Account]:
        account = await repo.update_limits(
            self.pool,
            account_id,
            overage_line=limits.overage_line,
            daily_hard_limit=limits.daily_hard_limit,
            daily_notify_threshold=limits.daily_notify_threshold,
            low_balance_threshold=limits.low_balance_threshold,
            set_low_balance_threshold=limits.low_balance_threshold_given,
        )
        return await self._config_changed(account_id, account)

    async def set_status(self, account_id: str, status: str) -> Written[Account]:
        account = await repo.set_status(self.pool, account_id, status)
        return await self._config_changed(account_id, account)

    async def _config_changed(self, account_id: str, account: Account | None) -> Written[Account]:
        if account is None:
            raise NotFound(f"no account {account_id}")
        live = await self._then_redis(
            f"config v{account.config_version} of {account.id}",
            sync.apply_account(self.pool, self.live, account),
        )
        return Written(account, live)

    async def balance(self, account_id: str) -> LiveBalance:
        account = await self.account(account_id)
        state = await self.live.read_account(account.shard, account.id)
        if state is None:
            raise LiveStateUnavailable(
                f"account {account.id} is not in the live state yet; the sync loop will add it"
            )
        return live_balance(account.id, state, self.clock())

    # -- projects and keys ---------------------------------------------------------------

    async def create_project(self, account_id: str, new: NewProject) -> Project:
        account = await self.account(account_id)  # accounts are never deleted
        return await repo.insert_project(self.pool, ids.new_id(ids.PROJECT), account.id, new.name)

    async def project(self, project_id: str) -> Project:
        project = await repo.get_project(self.pool, project_id)
        if project is None:
            raise NotFound(f"no project {project_id}")
        return project

    async def create_api_key(self, project_id: str) -> Written[NewKey]:
        project = await self.project(project_id)
        secret = apikeys.generate()
        key = await repo.insert_api_key(
            self.pool,
            ids.new_id(ids.API_KEY),
            project,
            apikeys.digest(secret),
            apikeys.visible_prefix(secret),
        )
        live = await self._then_redis(
            f"key {key.id}", sync.apply_api_key(self.pool, self.live, key)
        )
        return Written(NewKey(key, secret), live)

    async def api_keys(self, project_id: str) -> list[ApiKey]:
        project = await self.project(project_id)
        return await repo.list_api_keys(self.pool, project.id)

    async def revoke_api_key(self, key_id: str) -> Written[ApiKey]:
        key = await repo.revoke_api_key(self.pool, key_id)
        if key is None:
            raise NotFound(f"no API key {key_id}")
        live = await self._then_redis(
            f"revocation of {key.id}", sync.apply_api_key(self.pool, self.live, key)
        )
        return Written(key, live)

    # -- credits ----------------------------------------------------------------------

    async def add_credit(self, account_id: str, credit: Credit) -> Written[CreditResult]:
        """Credit once per (account, idempotency key); a replay returns the first entry.

        The account row lock serialises credits of one account, so two requests
        with the same key cannot both insert, and ``balance_after`` is exact.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id}")
            entry = await repo.entry_by_idempotency_key(conn, account.id, credit.idempotency_key)
            if entry is not None:
                if (entry.amount, entry.description, entry.kind) != (
                    credit.amount,
                    credit.description,
                    credit.kind,
                ):
                    raise IdempotencyKeyReused(
                        f"idempotency key {credit.idempotency_key!r} was used for"
                        f" {entry.credit_id} with a different amount, description or kind",
                        entry_id=entry.credit_id,
                    )
                replayed = True
            else:
                entry = await repo.insert_credit(
                    conn,
                    account,
                    amount=credit.amount,
                    kind=credit.kind,
                    description=credit.description,
                    idempotency_key=credit.idempotency_key,
                )
                replayed = False
        live = entry.redis_applied or await self._then_redis(
            f"credit {entry.credit_id}", sync.apply_credit(self.pool, self.live, entry)
        )
        return Written(CreditResult(entry, replayed), live)
