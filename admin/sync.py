"""Bring Redis up to what Postgres has recorded: the second half of every admin write.

How this works: a write commits to Postgres first, then applies the same
change to Redis through an idempotent step, then marks the row as applied:

    accounts        sync_account(version = config_version)  -> redis_version = version
    api_keys        put_api_key (+ revoke_key if revoked)   -> redis_synced = true
    ledger_entries  credit(id = "le_<entry id>", amount)    -> redis_applied = true

A crash or a Redis outage between any two steps leaves a row unmarked;
``sync_once`` finds those rows and runs the same steps again. Re-running is
always safe: the sync script ignores a version Redis already has (so configs
land in Postgres order however late they arrive), key writes are plain sets,
and the credit script remembers the ids it applied, so a credit re-applied
after "Redis had it but the mark was lost" credits nothing more.

``sync_once`` is usable on its own (a CLI command, a test); ``sync_forever`` is
the admin API's background loop: once at start-up, then every interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from admin import repository as repo
from admin.records import Account, ApiKey, LedgerEntry
from meter.live_state import LiveState, StateUnavailable, parse_price_spec
from meter.settings import Settings

log = logging.getLogger("admin.sync")

BATCH = 500
CREDIT_APPLIED, CREDIT_ALREADY, CREDIT_NO_ACCOUNT = 1, 0, -1
# After the Postgres commit, these leave the rest of a write to the sync loop.
DEFERRABLE: tuple[type[Exception], ...] = (StateUnavailable, *repo.CONNECTION_ERRORS)


@dataclass(frozen=True, slots=True)
class SyncReport:
    """Rows one pass applied to Redis (each had been left unapplied)."""

    accounts: int = 0
    keys: int = 0
    credits: int = 0

    def counts(self) -> dict[str, int]:
        return {"account": self.accounts, "key": self.keys, "credit": self.credits}

    @property
    def total(self) -> int:
        return self.accounts + self.keys + self.credits


# -- one row each: used by the write path right after its commit, and by the loop ---


async def then_redis(what: str, step: Awaitable[None]) -> bool:
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


async def apply_account(pool: repo.Conn, live: LiveState, account: Account) -> None:
    """Limits and status at ``account.config_version`` (creates the Redis hash if missing).
    A price table the status names is written to the account's shard first: a table never
    changes, so writing it again is harmless."""
    if account.price_table is not None:
        prices = await pool.fetchval("select prices from plans where id = $1", account.price_table)
        if prices is not None:
            await live.put_price_table_on(
                account.shard, account.price_table, parse_price_spec(prices)
            )
    await live.sync_account(account.shard, account.id, account.live_config)
    await repo.mark_account_synced(pool, account.id, account.config_version)


async def sync_account_now(pool: repo.Conn, live: LiveState, account_id: str) -> None:
    """After a commit that changed the account's live config: its Redis half now (or, if
    Redis is away, by the loop)."""
    account = await repo.get_account(pool, account_id)
    if account is not None and account.redis_version < account.config_version:
        await then_redis(f"account {account_id}", apply_account(pool, live, account))


async def apply_api_key(pool: repo.Conn, live: LiveState, key: ApiKey) -> None:
    revoked = key.revoked_at is not None
    if revoked:
        # The revocation flag lives in the account hash; make sure the hash is a
        # whole account (config applied) rather than a lone flag.
        account = await repo.get_account(pool, key.account_id)
        if account is not None and account.redis_version < account.config_version:
            await apply_account(pool, live, account)
    await live.put_api_key(key.key_hash, key.live_record)
    if revoked:
        await live.revoke_key(key.shard, key.account_id, key.id)
    await repo.mark_key_synced(pool, key.id, revoked=revoked)


async def apply_credit(pool: repo.Conn, live: LiveState, entry: LedgerEntry) -> None:
    status, _ = await live.credit(entry.shard, entry.account_id, entry.credit_id, entry.amount)
    if status == CREDIT_NO_ACCOUNT:
        # Redis lacks the account (created while Redis was down, or Redis lost it):
        # apply its config, which creates it, then credit.
        account = await repo.get_account(pool, entry.account_id)
        if account is None:  # pragma: no cover - foreign key makes this impossible
            raise LookupError(f"ledger entry {entry.id} names unknown account {entry.account_id}")
        await apply_account(pool, live, account)
        status, _ = await live.credit(entry.shard, entry.account_id, entry.credit_id, entry.amount)
        if status == CREDIT_NO_ACCOUNT:
            raise StateUnavailable(f"account {entry.account_id} vanished from Redis while syncing")
    await repo.mark_entry_applied(pool, entry.id)


# -- the repair pass ----------------------------------------------------------------


async def sync_once(pool: asyncpg.Pool, live: LiveState, *, batch: int = BATCH) -> SyncReport:
    """Apply to Redis every row Postgres has not seen applied; returns what was applied.

    Accounts first (keys and credits need the account hash), then keys, then
    credits. Raises ``StateUnavailable`` (Redis) or an asyncpg/OS error
    (Postgres) and stops there; what was applied so far stays marked.
    """
    accounts = keys = credits = 0
    after_account = ""
    while rows := await repo.unsynced_accounts(pool, after_account, batch):
        for account in rows:
            await apply_account(pool, live, account)
            accounts += 1
        after_account = rows[-1].id
    after_key = ""
    while key_rows := await repo.unsynced_api_keys(pool, after_key, batch):
        for key in key_rows:
            await apply_api_key(pool, live, key)
            keys += 1
        after_key = key_rows[-1].id
    after_entry = 0
    while entry_rows := await repo.unapplied_entries(pool, after_entry, batch):
        for entry in entry_rows:
            await apply_credit(pool, live, entry)
            credits += 1
        after_entry = entry_rows[-1].id
    report = SyncReport(accounts=accounts, keys=keys, credits=credits)
    if report.total:
        log.info("sync applied rows left unapplied", extra=report.counts())
    return report


async def sync_forever(
    pool: asyncpg.Pool,
    live: LiveState,
    interval: float,
    *,
    on_report: Callable[[SyncReport], None] = lambda report: None,
    on_failure: Callable[[BaseException], None] = lambda exc: None,
) -> None:
    """Run ``sync_once`` now and then every ``interval`` seconds, until cancelled.

    A failed pass (Redis or Postgres unreachable) is logged and retried at the
    next interval; the loop itself never dies of it.
    """
    while True:
        try:
            on_report(await sync_once(pool, live))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("sync pass failed; retrying in %ss: %s", interval, exc)
            on_failure(exc)
        await asyncio.sleep(interval)


async def sync_with_settings(settings: Settings) -> SyncReport:
    """One pass with its own connections: for a command line or a one-off repair."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    live = LiveState.from_url(settings.redis_url, timeout=settings.redis_timeout)
    try:
        return await sync_once(pool, live)
    finally:
        await live.close()
        await pool.close()
