"""Accounts, projects, keys and credits: what each write does, in order.

Postgres first, in one transaction with the write's audit entry; then Redis;
then the mark. ``actor`` is who writes (already authorised by
``admin.access``); ``if_match`` is the ETag the write is based on, if any.

The customer-visible truth is Postgres. When the Redis step fails after the
commit, the write still succeeds: it is recorded, and ``admin.sync`` applies
it on its next pass (``Written.live`` tells the handler which case it was).
Reads of live money (``balance``) come from Redis, because that is where the
gateway debits; when Redis cannot answer they fail with 503 rather than show
a stale number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from admin import audit, ids, models, sync
from admin import repository as repo
from admin.audit import Actor
from admin.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    LiveStateUnavailable,
    NotFound,
    PreconditionFailed,
)
from admin.records import ACTIVE, CLOSED, SUSPENDED, Account, ApiKey, LedgerEntry, Project
from grants import store as grant_store
from grants.store import GrantRecord
from meter import apikeys, keys, money
from meter.live_state import LiveState

log = logging.getLogger("admin.provisioning")

T = TypeVar("T")


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


def check_etag(current: str, if_match: str | None) -> None:
    """A write based on an older read is refused (412); no If-Match: last write wins."""
    if if_match is None:
        return
    tags = {t.strip().removeprefix("W/") for t in if_match.split(",")}
    if "*" not in tags and current not in tags:
        raise PreconditionFailed(f"the object is at {current}, not {if_match}; read it again")


class Provisioning:
    def __init__(
        self, pool: asyncpg.Pool, live: LiveState, *, shards: int, clock: Callable[[], float]
    ) -> None:
        self.pool = pool
        self.live = live
        self.shards = shards
        self.clock = clock

    async def owner_of(self, table: str, object_id: str) -> str | None:
        return await repo.owner_of(self.pool, table, object_id)

    # -- accounts -------------------------------------------------------------------

    async def create_account(self, actor: Actor, new: models.NewAccount) -> Written[Account]:
        account_id = ids.new_id(ids.ACCOUNT)
        shard = keys.shard_of(account_id, self.shards)
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.insert_account(
                conn, account_id, new.name, new.billing_email, shard
            )
            await audit.record(
                conn,
                actor,
                "account.create",
                "account",
                account.id,
                account_id=account.id,
                after=account,
            )
        live = await sync.then_redis(
            f"account {account.id}", sync.apply_account(self.pool, self.live, account)
        )
        return Written(account, live)

    async def account(self, account_id: str) -> Account:
        account = await repo.get_account(self.pool, account_id)
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        return account

    async def grants(
        self, account_id: str, *, limit: int, before: int | None
    ) -> tuple[list[GrantRecord], int | None]:
        """The account's credit grants, live and past, newest first."""
        await self.account(account_id)
        return await grant_store.page(self.pool, account_id, limit=limit, before=before)

    async def live_grants(self, account_id: str) -> list[GrantRecord]:
        """The live grants in spending order: what usage draws on first comes first."""
        await self.account(account_id)
        return await grant_store.live_records(self.pool, account_id)

    async def accounts(
        self, *, after: str, limit: int, name: str | None, status: str | None
    ) -> list[Account]:
        return await repo.list_accounts(
            self.pool, after=after, limit=limit, name=name, status=status
        )

    async def _change(
        self,
        actor: Actor,
        account_id: str,
        action: str,
        decide: Callable[[Account], tuple[str, tuple[object, ...]] | None],
        *,
        config: bool,
        if_match: str | None = None,
    ) -> Written[Account]:
        """One audited change of the account row; ``decide`` gives the SQL or refuses.

        ``decide`` sees the row locked, so its checks (status, ETag) hold at commit.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            before = await repo.get_account(conn, account_id, for_update=True)
            if before is None:
                raise NotFound(f"no account {account_id!r}")
            check_etag(before.etag, if_match)
            change = decide(before)
            if change is None:  # already so: nothing written, nothing audited
                return Written(before, True)
            assignments, args = change
            after = await repo.update_account(conn, account_id, assignments, *args, config=config)
            assert after is not None
            await audit.record(
                conn,
                actor,
                action,
                "account",
                account_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        if not config:
            return Written(after, True)
        live = await sync.then_redis(
            f"config v{after.config_version} of {after.id}",
            sync.apply_account(self.pool, self.live, after),
        )
        return Written(after, live)

    async def set_limits(
        self, actor: Actor, account_id: str, limits: models.Limits, *, if_match: str | None
    ) -> Written[Account]:
        given = "low_balance_threshold" in limits.model_fields_set

        def decide(account: Account) -> tuple[str, tuple[object, ...]]:
            _open(account)
            if not actor.principal.is_operator and limits.overage_line != account.overage_line:
                raise Forbidden("the overage line is extended by the provider: ask an operator")
            return repo.LIMITS, (
                limits.overage_line,
                limits.daily_hard_limit,
                limits.daily_notify_threshold,
                limits.low_balance_threshold,
                given,
            )

        return await self._change(
            actor, account_id, "account.limits", decide, config=True, if_match=if_match
        )

    async def rename(
        self, actor: Actor, account_id: str, name: str, *, if_match: str | None
    ) -> Written[Account]:
        def decide(account: Account) -> tuple[str, tuple[object, ...]] | None:
            _open(account)
            return None if account.name == name else ("name = $2", (name,))

        return await self._change(
            actor, account_id, "account.rename", decide, config=False, if_match=if_match
        )

    async def set_status(self, actor: Actor, account_id: str, status: str) -> Written[Account]:
        def decide(account: Account) -> tuple[str, tuple[object, ...]] | None:
            _open(account)
            return None if account.status == status else ("status = $2", (status,))

        action = "account.suspend" if status == SUSPENDED else "account.resume"
        return await self._change(actor, account_id, action, decide, config=True)

    async def set_require_payment_method(
        self, actor: Actor, account_id: str, required: bool
    ) -> Written[Account]:
        """The payment gate: with it on and no card on file the gateway answers 402."""

        def decide(account: Account) -> tuple[str, tuple[object, ...]] | None:
            _open(account)
            if account.require_payment_method == required:
                return None
            return "require_payment_method = $2", (required,)

        return await self._change(
            actor, account_id, "account.require_payment_method", decide, config=True
        )

    async def request_deletion(self, actor: Actor, account_id: str) -> Written[Account]:
        def decide(account: Account) -> tuple[str, tuple[object, ...]] | None:
            _open(account)
            if account.deletion_requested_at is not None:
                return None
            return "deletion_requested_at = now()", ()

        return await self._change(
            actor, account_id, "account.deletion_request", decide, config=False
        )

    async def cancel_deletion(self, actor: Actor, account_id: str) -> Written[Account]:
        def decide(account: Account) -> tuple[str, tuple[object, ...]] | None:
            _open(account)
            if account.deletion_requested_at is None:
                return None
            return "deletion_requested_at = null", ()

        return await self._change(
            actor, account_id, "account.deletion_request_cancel", decide, config=False
        )

    async def close(self, actor: Actor, account_id: str) -> Written[Account]:
        """Final: the gateway refuses the account's keys at once; the ledger keeps everything."""

        def decide(account: Account) -> tuple[str, tuple[object, ...]] | None:
            if account.status == CLOSED:
                return None
            return "status = $2, closed_at = now()", (CLOSED,)

        return await self._change(actor, account_id, "account.close", decide, config=True)

    async def balance(self, account_id: str) -> LiveBalance:
        account = await self.account(account_id)
        state = await self.live.read_account(account.shard, account.id)
        if state is None:
            raise LiveStateUnavailable(
                f"account {account.id} is not in the live state yet; the sync loop will add it"
            )
        return live_balance(account.id, state, self.clock())

    # -- projects and keys ---------------------------------------------------------------

    async def create_project(
        self, actor: Actor, account_id: str, new: models.NewProject
    ) -> Project:
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            _open(account)
            project = await repo.insert_project(conn, ids.new_id(ids.PROJECT), account.id, new.name)
            await audit.record(
                conn,
                actor,
                "project.create",
                "project",
                project.id,
                account_id=account.id,
                after=project,
            )
        return project

    async def projects(self, account_id: str) -> list[Project]:
        await self.account(account_id)
        return await repo.list_projects(self.pool, account_id)

    async def project(self, project_id: str) -> Project:
        project = await repo.get_project(self.pool, project_id)
        if project is None:
            raise NotFound(f"no project {project_id!r}")
        return project

    async def create_api_key(self, actor: Actor, project_id: str) -> Written[NewKey]:
        secret = apikeys.generate()
        async with self.pool.acquire() as conn, conn.transaction():
            project = await repo.get_project(conn, project_id)
            if project is None:
                raise NotFound(f"no project {project_id!r}")
            account = await repo.get_account(conn, project.account_id, for_update=True)
            assert account is not None
            _open(account)
            key = await repo.insert_api_key(
                conn,
                ids.new_id(ids.API_KEY),
                project,
                apikeys.digest(secret),
                apikeys.visible_prefix(secret),
            )
            await audit.record(
                conn,
                actor,
                "api_key.create",
                "api_key",
                key.id,
                account_id=key.account_id,
                after=key,
            )
        live = await sync.then_redis(f"key {key.id}", sync.apply_api_key(self.pool, self.live, key))
        return Written(NewKey(key, secret), live)

    async def api_keys(self, project_id: str) -> list[ApiKey]:
        project = await self.project(project_id)
        return await repo.list_api_keys(self.pool, project.id)

    async def revoke_api_key(self, actor: Actor, key_id: str) -> Written[ApiKey]:
        async with self.pool.acquire() as conn, conn.transaction():
            key = await repo.revoke_api_key(conn, key_id)
            if key is None:
                raise NotFound(f"no API key {key_id!r}")
            await audit.record(
                conn,
                actor,
                "api_key.revoke",
                "api_key",
                key.id,
                account_id=key.account_id,
                after=key,
            )
        live = await sync.then_redis(
            f"revocation of {key.id}", sync.apply_api_key(self.pool, self.live, key)
        )
        return Written(key, live)

    # -- credits ----------------------------------------------------------------------

    async def add_credit(
        self, actor: Actor, account_id: str, credit: models.NewCredit
    ) -> Written[CreditResult]:
        """Credit once per (account, idempotency key); a replay returns the first entry.

        The account row lock serialises credits of one account, so two requests
        with the same key cannot both insert, and ``balance_after`` is exact.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            entry = await repo.entry_by_idempotency_key(conn, account.id, credit.idempotency_key)
            grant_kind = credit.grant_kind or grant_store.DEFAULT_KIND[credit.kind]
            expires_at = None if credit.expires_at is None else models.parse_time(credit.expires_at)
            if entry is not None:
                grant = await grant_store.grant_of_entry(conn, entry.id)
                if (entry.amount, entry.description, entry.kind) != (
                    credit.amount,
                    credit.description,
                    credit.kind,
                ) or (
                    grant is not None and (grant.kind, grant.expires_at) != (grant_kind, expires_at)
                ):
                    raise IdempotencyKeyReused(
                        f"idempotency key {credit.idempotency_key!r} was used for"
                        f" {entry.credit_id} with a different amount, description, kind,"
                        " grant kind or expiry",
                        entry_id=entry.credit_id,
                    )
                replayed = True
            else:
                _open(account)
                entry = await repo.insert_credit(
                    conn,
                    account,
                    amount=credit.amount,
                    kind=credit.kind,
                    description=credit.description,
                    idempotency_key=credit.idempotency_key,
                    grant_kind=grant_kind,
                    expires_at=expires_at,
                )
                await audit.record(
                    conn,
                    actor,
                    "credit.create",
                    "ledger_entry",
                    entry.credit_id,
                    account_id=account.id,
                    after=entry,
                )
                replayed = False
        live = entry.redis_applied or await sync.then_redis(
            f"credit {entry.credit_id}", sync.apply_credit(self.pool, self.live, entry)
        )
        return Written(CreditResult(entry, replayed), live)


def _open(account: Account) -> None:
    if account.status == CLOSED:
        raise Conflict(f"account {account.id} is closed")
