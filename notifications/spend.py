"""Spend management (seed 001): a daily budget and the thresholds that tell people.

The daily budget is the account's daily hard limit, which the admission script
enforces (429 until 00:00 UTC); switching spend management off lifts the limit and
silences the thresholds but keeps both for when it is switched on again. A change is
one transaction: the settings, the thresholds, the account's limit (synced to Redis
after commit) and the firing of any threshold already below today's spend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg

from admin import audit, sync
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.ids import new_id
from admin.provisioning import check_etag
from admin.records import Account
from meter.live_state import LiveState
from meter.money import money, utc_day
from notifications import thresholds
from notifications.thresholds import ABSOLUTE, PERCENT, Threshold

MAX_THRESHOLDS = 10
THRESHOLD = "thr"


@dataclass(frozen=True, slots=True)
class ThresholdView:
    id: str
    kind: str
    value: int
    amount: int | None  # micros; None: a percentage while there is no budget
    passed_today: bool


@dataclass(frozen=True, slots=True)
class SpendView:
    account_id: str
    enabled: bool
    daily_budget: int | None
    thresholds: tuple[ThresholdView, ...]
    spent_today: int
    spent_yesterday: int
    day: int
    version: int

    @property
    def etag(self) -> str:
        return f'"s{self.version}"'


@dataclass(frozen=True, slots=True)
class SpendChange:
    enabled: bool
    daily_budget: int | None
    thresholds: tuple[Threshold, ...]


def check(c: SpendChange) -> None:
    """Refuse what cannot work, every field at once (422)."""
    errors: list[tuple[str, str]] = []
    if c.daily_budget is not None and c.daily_budget <= 0:
        errors.append(("daily_budget", "must be above zero, or null for none"))
    if c.enabled and c.daily_budget is None and any(t.kind == PERCENT for t in c.thresholds):
        errors.append(("notify_thresholds", "a percentage needs a daily budget"))
    if len(c.thresholds) > MAX_THRESHOLDS:
        errors.append(("notify_thresholds", f"at most {MAX_THRESHOLDS}"))
    for i, t in enumerate(c.thresholds):
        where = f"notify_thresholds[{i}]"
        if t.kind == PERCENT and not 1 <= t.value <= 100:
            errors.append((where, "a percentage is a whole number from 1 to 100"))
        if t.kind == ABSOLUTE and t.value <= 0:
            errors.append((where, "an amount must be above zero"))
    if errors:
        raise InvalidInput(errors)


async def store_budget(
    conn: repo.Conn, account: Account, enabled: bool, budget: int | None
) -> Account | None:
    """The setting, and the gateway's daily limit it makes (the account as changed, or
    None when the limit was already so); the caller holds the account's row lock."""
    await conn.execute(
        "insert into spend_settings as s (account_id, enabled, daily_budget)"
        " values ($1, $2, $3) on conflict (account_id) do update set enabled = $2,"
        " daily_budget = $3, row_version = s.row_version + 1, updated_at = now()",
        account.id,
        enabled,
        budget,
    )
    limit = budget if enabled else None
    if account.daily_hard_limit == limit:
        return None
    return await repo.update_account(conn, account.id, "daily_hard_limit = $2", limit, config=True)


class SpendManagement:
    def __init__(
        self, pool: asyncpg.Pool, live: LiveState, clock: Callable[[], float] = time.time
    ) -> None:
        self.pool = pool
        self.live = live
        self.clock = clock

    async def view(self, account_id: str) -> SpendView:
        async with self.pool.acquire() as conn:
            return await self._view(conn, account_id)

    async def _view(self, conn: repo.Conn, account_id: str) -> SpendView:
        account = await repo.get_account(conn, account_id)
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        day = utc_day(self.clock())
        s = await conn.fetchrow("select * from spend_settings where account_id = $1", account_id)
        enabled = bool(s and s["enabled"])
        budget = account.daily_hard_limit
        if budget is None and s is not None and not enabled:
            budget = s["daily_budget"]
        spent = dict(
            await conn.fetch(
                "select day, sum(amount)::bigint from usage_rollups"
                " where account_id = $1 and day in ($2, $3) group by day",
                account_id,
                day,
                day - 1,
            )
        )
        fired = {
            r["amount"]
            for r in await conn.fetch(
                "select amount from spend_thresholds_passed where account_id = $1 and day = $2",
                account_id,
                day,
            )
        }
        rows = await conn.fetch(
            "select * from spend_thresholds where account_id = $1 order by kind, value",
            account_id,
        )
        views = []
        for r in rows:
            t = Threshold(r["kind"], r["value"])
            amount = t.amount(account.daily_hard_limit if enabled else budget)
            views.append(ThresholdView(r["id"], t.kind, t.value, amount, amount in fired))
        views.sort(key=lambda v: (v.amount is None, v.amount or 0, v.kind))
        return SpendView(
            account_id,
            enabled,
            budget,
            tuple(views),
            spent.get(day, 0),
            spent.get(day - 1, 0),
            day,
            s["row_version"] if s else 0,
        )

    async def put(
        self, actor: Actor, account_id: str, c: SpendChange, *, if_match: str | None = None
    ) -> SpendView:
        check(c)
        async with self.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            if account.status == "closed":
                raise Conflict(f"account {account_id} is closed")
            before = await self._view(conn, account_id)
            check_etag(before.etag, if_match)
            changed = await store_budget(conn, account, c.enabled, c.daily_budget)
            await _replace_thresholds(conn, account_id, dict.fromkeys(c.thresholds))
            await thresholds.fire(conn, [(account_id, before.day)])
            after = await self._view(conn, account_id)
            await audit.record(
                conn,
                actor,
                "spend_management.update",
                "spend_management",
                account_id,
                account_id=account_id,
                before=_audited(before),
                after=_audited(after),
            )
        if changed is not None:
            await sync.then_redis(
                f"daily budget of {account_id}", sync.apply_account(self.pool, self.live, changed)
            )
        return after


async def _replace_thresholds(
    conn: repo.Conn, account_id: str, wanted: Iterable[Threshold]
) -> None:
    """Keep the thresholds still wanted (their ids), drop the rest, add the new."""
    rows = await conn.fetch(
        "select id, kind, value from spend_thresholds where account_id = $1", account_id
    )
    have = {Threshold(r["kind"], r["value"]): r["id"] for r in rows}
    gone = [i for t, i in have.items() if t not in wanted]
    if gone:
        await conn.execute("delete from spend_thresholds where id = any($1::text[])", gone)
    for t in wanted:
        if t not in have:
            await conn.execute(
                "insert into spend_thresholds (id, account_id, kind, value)"
                " values ($1, $2, $3, $4)",
                new_id(THRESHOLD),
                account_id,
                t.kind,
                t.value,
            )


def _audited(v: SpendView) -> dict[str, object]:
    return {
        "enabled": v.enabled,
        "daily_budget": v.daily_budget,
        "notify_thresholds": [{"kind": t.kind, "value": t.value} for t in v.thresholds],
    }


def describe(t: ThresholdView) -> str:
    """A threshold as a person reads it ("80 % ($8.00)", "$5.00")."""
    if t.kind == PERCENT:
        return f"{t.value} %" + (f" ({money(t.amount)})" if t.amount is not None else "")
    return money(t.value)
