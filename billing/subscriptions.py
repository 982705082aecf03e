"""Plans and subscriptions in Postgres; ``billing.plans`` decides what they cost.

Every write holds the account's row lock. What a subscription owes is written as
``subscription_charges``, once each (unique keys): the fee of a period when the
subscription renews into it, billed on the invoice of the period before (in advance),
and a prorated start or change, billed on the invoice of the period it happens in.
``billing.invoices.close_account`` renews the account first, then bills its charges.
Included credits are credit grants (``included``, expiring at the period's end), keyed
by period and subscription version, so a renewal run twice grants once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from admin import audit, sync
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.ids import new_id
from admin.provisioning import check_etag
from admin.records import CLOSED, Account, LedgerEntry
from billing import periods, plans
from billing.periods import Period
from billing.plans import Plan, Start
from gateway.pricing import BadPrices, PriceTable, load_prices, override_spec, parse_override
from meter.live_state import LiveState
from meter.money import MICROS_PER_CENT
from notifications import spend

PLAN = "plan"
ACTIVE, CANCELED = "active", "canceled"


@dataclass(frozen=True, slots=True)
class Subscription:
    account_id: str
    plan: Plan
    status: str
    started_at: datetime
    period: Period  # the period it last renewed into
    next_plan: Plan | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    row_version: int

    @property
    def etag(self) -> str:
        return f'"u{self.row_version}"'


@dataclass(frozen=True, slots=True)
class NewPlan:
    name: str
    description: str
    monthly_fee: int
    included_credits: int
    daily_budget: int | None
    overage_line: int | None
    prices: dict[str, Any] | None = None  # parse_override's spec; None: the deployment's


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    plan_id: str
    cancel_at_period_end: bool = False
    effective: str | None = None  # plans.NOW | plans.NEXT_PERIOD; None: by the plans


def plan_of(row: Any) -> Plan:
    return Plan(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        monthly_fee=row["monthly_fee"],
        included_credits=row["included_credits"],
        daily_budget=row["daily_budget"],
        overage_line=row["overage_line"],
        active=row["active"],
        row_version=row["row_version"],
        prices=None if row["prices"] is None else orjson.loads(row["prices"]),
    )


async def get_plan(conn: repo.Conn, plan_id: str) -> Plan | None:
    row = await conn.fetchrow("select * from plans where id = $1", plan_id)
    return None if row is None else plan_of(row)


async def load(conn: repo.Conn, account_id: str, anchor: int) -> Subscription | None:
    row = await conn.fetchrow("select * from subscriptions where account_id = $1", account_id)
    if row is None:
        return None
    plan = await get_plan(conn, row["plan_id"])
    assert plan is not None  # a foreign key
    nxt = None if row["next_plan_id"] is None else await get_plan(conn, row["next_plan_id"])
    start = row["period_start"]
    return Subscription(
        account_id=account_id,
        plan=plan,
        status=row["status"],
        started_at=row["started_at"],
        period=periods.starting(start.year, start.month, anchor),
        next_plan=nxt,
        cancel_at_period_end=row["cancel_at_period_end"],
        canceled_at=row["canceled_at"],
        row_version=row["row_version"],
    )


async def _charge(
    conn: repo.Conn,
    account_id: str,
    key: str,
    plan: Plan,
    kind: str,
    description: str,
    amount: int,
    billed: Period,
) -> None:
    await conn.execute(
        "insert into subscription_charges (account_id, idempotency_key, plan_id, kind,"
        " description, amount, billed_period) values ($1, $2, $3, $4, $5, $6, $7)"
        " on conflict (account_id, idempotency_key) do nothing",
        account_id,
        key,
        plan.id,
        kind,
        description,
        amount,
        billed.start,
    )


async def _grant(
    conn: repo.Conn, account_id: str, key: str, amount: int, description: str, period: Period
) -> LedgerEntry | None:
    """Included credits, once per key; the caller holds the account's row lock."""
    if amount <= 0 or await repo.entry_by_idempotency_key(conn, account_id, key) is not None:
        return None
    account = await repo.get_account(conn, account_id, for_update=True)
    assert account is not None
    return await repo.insert_credit(
        conn,
        account,
        amount=amount,
        kind="grant",
        description=description,
        idempotency_key=key,
        grant_kind="included",
        expires_at=period.end_at(),
    )


async def _apply_limits(conn: repo.Conn, account: Account, plan: Plan) -> None:
    """The plan's limits, when it starts. An overage line an overdue invoice holds at zero
    stays held: the plan's line is what paying gives back."""
    if plan.overage_line is not None:
        held = await conn.fetchval(
            "update invoices set held_overage_line = $2 where account_id = $1"
            " and status = 'open' and overdue_at is not null and held_overage_line is not null"
            " returning id",
            account.id,
            plan.overage_line,
        )
        if held is None and account.overage_line != plan.overage_line:
            await repo.update_account(
                conn, account.id, "overage_line = $2", plan.overage_line, config=True
            )
    if plan.daily_budget is not None:
        await spend.store_budget(conn, account, True, plan.daily_budget)
    await _set_price_table(conn, account.id, plan.id if plan.prices else None)


async def _set_price_table(conn: repo.Conn, account_id: str, table: str | None) -> None:
    """The prices the gateway admits the account's calls at from now on (its live
    config): its plan's own, or (None) the deployment's."""
    current = await conn.fetchval("select price_table from accounts where id = $1", account_id)
    if current != table:
        await repo.update_account(conn, account_id, "price_table = $2", table, config=True)


async def renew(
    conn: repo.Conn, account_id: str, into: Period, *, now: datetime, anchor: int
) -> list[LedgerEntry]:
    """Roll the account's subscription forward, period by period, into ``into``: a
    pending change or cancellation takes effect, the fee of each period is recorded
    (billed on the period before's invoice) and its credits granted (a period already
    over gets none). Idempotent; the caller holds the account's row lock."""
    sub = await load(conn, account_id, anchor)
    granted: list[LedgerEntry] = []
    while sub is not None and sub.status == ACTIVE and sub.period < into:
        before, period = sub.period, sub.period.next(anchor)
        if sub.cancel_at_period_end:
            await conn.execute(
                "update subscriptions set status = 'canceled', canceled_at = $2,"
                " period_start = $3, row_version = row_version + 1, updated_at = now()"
                " where account_id = $1",
                account_id,
                period.start_at(),
                period.start,
            )
            await _set_price_table(conn, account_id, None)
            break
        plan = sub.next_plan or sub.plan
        if sub.next_plan is not None:
            account = await repo.get_account(conn, account_id, for_update=True)
            assert account is not None
            await _apply_limits(conn, account, plan)
        await conn.execute(
            "update subscriptions set plan_id = $2, next_plan_id = null, period_start = $3,"
            " row_version = row_version + 1, updated_at = now() where account_id = $1",
            account_id,
            plan.id,
            period.start,
        )
        if plan.monthly_fee:
            await _charge(
                conn,
                account_id,
                f"fee:{period.start}",
                plan,
                "fee",
                plans.fee_description(plan, period),
                plan.monthly_fee,
                before,
            )
        if period.end_at() > now:
            entry = await _grant(
                conn,
                account_id,
                f"included:{period.start}",
                plan.included_credits,
                plans.included_description(plan, period, plan.included_credits),
                period,
            )
            if entry is not None:
                granted.append(entry)
        sub = replace(sub, plan=plan, next_plan=None, period=period)
    return granted


async def unbilled(conn: repo.Conn, account_id: str, period: Period) -> list[Any]:
    """Charges the invoice of ``period`` bills (and any left from before), oldest first."""
    return list(
        await conn.fetch(
            "select * from subscription_charges where account_id = $1 and invoice_id is null"
            " and billed_period <= $2 order by billed_period, id",
            account_id,
            period.start,
        )
    )


async def tell_redis(pool: repo.Conn, live: LiveState, entries: list[LedgerEntry]) -> None:
    """The Redis half of granted credits (after the commit); the sync loop finishes it."""
    for e in entries:
        await sync.then_redis(f"included credits {e.credit_id}", sync.apply_credit(pool, live, e))


async def renew_due(
    pool: asyncpg.Pool, live: LiveState, now: datetime, anchor: int, limit: int = 200
) -> int:
    """Renew every subscription behind the current period (any number of workers: each
    account is taken under SKIP LOCKED)."""
    into = periods.at(now, anchor)
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "select a.id from accounts a join subscriptions s on s.account_id = a.id"
                " where s.status = 'active' and s.period_start < $1"
                " order by a.id limit $2 for update of a skip locked",
                into.start,
                limit,
            )
            granted: list[LedgerEntry] = []
            for r in rows:
                granted += await renew(conn, r["id"], into, now=now, anchor=anchor)
        await tell_redis(pool, live, granted)
        for r in rows:  # a plan that took effect: its limits and prices, at once
            await sync.sync_account_now(pool, live, r["id"])
        done += len(rows)
        if len(rows) < limit:
            return done


def check_plan(p: NewPlan, table: PriceTable) -> dict[str, Any] | None:
    """The plan's prices as stored (fitted to the deployment's table), or InvalidInput."""
    errors = []
    if not 1 <= len(p.name.strip()) <= 100:
        errors.append(("name", "Enter a name of 1 to 100 characters."))
    if p.monthly_fee % MICROS_PER_CENT:
        errors.append(("monthly_fee", "The fee must be whole cents (a multiple of 10,000)."))
    prices = None
    if p.prices is not None:
        try:
            prices = override_spec(parse_override(table, p.prices))
        except BadPrices as exc:
            errors.append(("prices", str(exc)))
    if errors:
        raise InvalidInput(errors)
    return prices


class Subscriptions:
    """The service the API and the portal share."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        live: LiveState,
        clock: Callable[[], float] = time.time,
        anchor: int = 1,
        prices: PriceTable | None = None,
    ) -> None:
        self.pool = pool
        self.live = live
        self.clock = clock
        self.anchor = anchor
        # The deployment's price table, which a plan's own prices must fit.
        self.prices = prices if prices is not None else load_prices(None)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def plans(self, *, offered_only: bool = False) -> list[Plan]:
        rows = await self.pool.fetch(
            "select * from plans where active or not $1 order by monthly_fee, name",
            offered_only,
        )
        return [plan_of(r) for r in rows]

    async def plan(self, plan_id: str) -> Plan:
        found = await get_plan(self.pool, plan_id)
        if found is None:
            raise NotFound(f"no plan {plan_id!r}")
        return found

    async def create_plan(self, actor: Actor, p: NewPlan) -> Plan:
        prices = check_plan(p, self.prices)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    "insert into plans (id, name, description, monthly_fee, included_credits,"
                    " daily_budget, overage_line, prices)"
                    " values ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) returning *",
                    new_id(PLAN),
                    p.name.strip(),
                    p.description,
                    p.monthly_fee,
                    p.included_credits,
                    p.daily_budget,
                    p.overage_line,
                    None if prices is None else orjson.dumps(prices).decode(),
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"a plan is already named {p.name.strip()!r}") from None
            plan = plan_of(row)
            await audit.record(
                conn, actor, "plan.create", "plan", plan.id, account_id=None, after=plan
            )
            return plan

    async def set_offered(
        self, actor: Actor, plan_id: str, active: bool, if_match: str | None = None
    ) -> Plan:
        """A plan's price never changes (make a new one); it may stop being offered, which
        leaves its subscribers on it."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("select * from plans where id = $1 for update", plan_id)
            if row is None:
                raise NotFound(f"no plan {plan_id!r}")
            before = plan_of(row)
            check_etag(plan_etag(before), if_match)
            if before.active == active:
                return before
            after = plan_of(
                await conn.fetchrow(
                    "update plans set active = $2, row_version = row_version + 1 where id = $1"
                    " returning *",
                    plan_id,
                    active,
                )
            )
            await audit.record(
                conn,
                actor,
                "plan.update",
                "plan",
                plan_id,
                account_id=None,
                before=before,
                after=after,
            )
            return after

    async def subscription(self, account_id: str) -> Subscription | None:
        async with self.pool.acquire() as conn:
            if await conn.fetchval("select 1 from accounts where id = $1", account_id) is None:
                raise NotFound(f"no account {account_id!r}")
            return await load(conn, account_id, self.anchor)

    async def put(
        self,
        actor: Actor,
        account_id: str,
        change: SubscriptionChange,
        *,
        if_match: str | None = None,
    ) -> tuple[Subscription, bool]:
        """Subscribe, change plan, cancel at period end or resume; (the subscription,
        whether it was made now)."""
        now = self.now()
        period = periods.at(now, self.anchor)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                account = await repo.get_account(conn, account_id, for_update=True)
                if account is None:
                    raise NotFound(f"no account {account_id!r}")
                if account.status == CLOSED:
                    raise Conflict(f"account {account_id} is closed")
                granted = await renew(conn, account_id, period, now=now, anchor=self.anchor)
                before = await load(conn, account_id, self.anchor)
                if before is not None:
                    check_etag(before.etag, if_match)
                plan = await get_plan(conn, change.plan_id)
                current = before.plan if before is not None and before.status == ACTIVE else None
                if plan is None:
                    raise NotFound(f"There is no plan {change.plan_id!r}.")
                if not plan.active and (current is None or plan.id != current.id):
                    raise Conflict(f"The {plan.name} plan is no longer offered.")
                if current is None:
                    granted += await self._start(conn, account, plan, change, before, period, now)
                else:
                    assert before is not None
                    granted += await self._change(conn, account, before, plan, change, period, now)
                after = await load(conn, account_id, self.anchor)
                assert after is not None
                await audit.record(
                    conn,
                    actor,
                    "subscription.create" if current is None else "subscription.update",
                    "subscription",
                    account_id,
                    account_id=account_id,
                    before=before,
                    after=after,
                )
            await tell_redis(self.pool, self.live, granted)
            await sync.sync_account_now(self.pool, self.live, account_id)
        return after, current is None

    async def _start(
        self,
        conn: repo.Conn,
        account: Account,
        plan: Plan,
        change: SubscriptionChange,
        before: Subscription | None,
        period: Period,
        now: datetime,
    ) -> list[LedgerEntry]:
        if plan.monthly_fee and not account.has_payment_method:
            raise Conflict(f"add a card before subscribing to the {plan.name} plan")
        version = await conn.fetchval(
            "insert into subscriptions as s (account_id, plan_id, status, started_at,"
            " period_start, cancel_at_period_end) values ($1, $2, 'active', $3, $4, $5)"
            " on conflict (account_id) do update set plan_id = $2, status = 'active',"
            " started_at = $3, period_start = $4, cancel_at_period_end = $5,"
            " next_plan_id = null, canceled_at = null, row_version = s.row_version + 1,"
            " updated_at = now() returning row_version",
            account.id,
            plan.id,
            now,
            period.start,
            change.cancel_at_period_end,
        )
        await _apply_limits(conn, account, plan)
        cost = plans.start(plan, period, now)
        return await self._prorate(conn, account.id, version, plan, None, cost, period, now)

    async def _change(
        self,
        conn: repo.Conn,
        account: Account,
        before: Subscription,
        plan: Plan,
        change: SubscriptionChange,
        period: Period,
        now: datetime,
    ) -> list[LedgerEntry]:
        old = before.plan
        if plan.id == old.id:  # stay: drop a pending change; cancel or resume
            await conn.execute(
                "update subscriptions set next_plan_id = null, cancel_at_period_end = $2,"
                " row_version = row_version + 1, updated_at = now() where account_id = $1",
                account.id,
                change.cancel_at_period_end,
            )
            return []
        try:
            when = plans.effective(old, plan, change.effective)
        except ValueError as exc:
            raise Conflict(str(exc)) from None
        if when == plans.NEXT_PERIOD:
            await conn.execute(
                "update subscriptions set next_plan_id = $2, cancel_at_period_end = $3,"
                " row_version = row_version + 1, updated_at = now() where account_id = $1",
                account.id,
                plan.id,
                change.cancel_at_period_end,
            )
            return []
        if plan.monthly_fee and not account.has_payment_method:
            raise Conflict(f"add a card before moving to the {plan.name} plan")
        version = await conn.fetchval(
            "update subscriptions set plan_id = $2, next_plan_id = null,"
            " cancel_at_period_end = $3, row_version = row_version + 1, updated_at = now()"
            " where account_id = $1 returning row_version",
            account.id,
            plan.id,
            change.cancel_at_period_end,
        )
        await _apply_limits(conn, account, plan)
        cost = plans.change_now(old, plan, period, now)
        return await self._prorate(conn, account.id, version, plan, old, cost, period, now)

    async def _prorate(
        self,
        conn: repo.Conn,
        account_id: str,
        version: int,
        plan: Plan,
        old: Plan | None,
        cost: Start,
        period: Period,
        now: datetime,
    ) -> list[LedgerEntry]:
        if cost.charge:
            await _charge(
                conn,
                account_id,
                f"proration:{version}",
                plan,
                "proration",
                plans.proration_description(plan, period, now, old),
                cost.charge,
                period,
            )
        entry = await _grant(
            conn,
            account_id,
            f"included:{period.start}:{version}",
            cost.credits,
            plans.included_description(plan, period, cost.credits),
            period,
        )
        return [] if entry is None else [entry]


def plan_etag(p: Plan) -> str:
    return f'"p{p.row_version}"'
